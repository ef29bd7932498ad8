//! `uniform` — the fixed-precision baseline every mixed-precision paper compares with (survey
//! §4.1; e.g. HAWQ-V3 §3.3 INT4/INT8): one option for all layers (fixed layers keep theirs) —
//! the named option, or the lowest-sensitivity option that fits every budget.
//! Complexity: `O(k · N)`.

use serde::{Deserialize, Serialize};

use super::{no_setting, parse_config, Allocator, AllocatorEntry, SolveCtx};
use crate::error::Result;
use crate::problem::{Allocation, AllocationProblem};
use crate::reduce::Reduced;

/// Configuration of [`Uniform`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniformConfig {
    /// Option label (`w4a8`) or index; absent = best uniform option within budget.
    #[serde(default)]
    pub option: Option<String>,
}

/// Uniform-precision baseline.
#[derive(Debug, Clone, Default)]
pub struct Uniform {
    /// Its configuration.
    pub config: UniformConfig,
}

/// Items using option `o` in every group that admits it (groups forced to a single option by a
/// fixed layer keep it); `None` if some other group excludes `o`.
fn uniform_items(r: &Reduced, p: &AllocationProblem, o: usize) -> Option<Vec<usize>> {
    let fixed: Vec<usize> = p.fixed.iter().map(|&(l, _)| l).collect();
    (0..r.n_groups())
        .map(|g| {
            r.items(g).find(|&i| r.option[i] == o).or_else(|| {
                let forced = r.groups[g].iter().any(|l| fixed.contains(l));
                (forced && r.items(g).len() == 1).then(|| r.starts[g])
            })
        })
        .collect()
}

impl Allocator for Uniform {
    fn solve(&self, p: &AllocationProblem, _ctx: &mut SolveCtx) -> Result<Allocation> {
        let r = Reduced::new(p)?;
        let candidates: Vec<usize> = match &self.config.option {
            Some(name) => vec![p.option_by_name(name)?],
            None => (0..p.options.len()).collect(),
        };
        let mut best: Option<(f64, Vec<usize>)> = None;
        for &o in &candidates {
            let Some(x) = uniform_items(&r, p, o) else {
                continue;
            };
            if !r.feasible(&x) {
                continue;
            }
            let (obj, _) = r.totals(&x);
            if best.as_ref().is_none_or(|(b, _)| obj < *b) {
                best = Some((obj, x));
            }
        }
        match best {
            Some((_, x)) => r.finish(p, &x),
            None => Err(no_setting(
                "uniform",
                p,
                &format!(
                    "{} uniform option(s): {}",
                    candidates.len(),
                    candidates
                        .iter()
                        .map(|&o| p.options[o].label())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(Uniform {
        config: parse_config("uniform", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "uniform",
    summary: "same option for every layer: named, or the most accurate that fits",
    reference: "survey §4.1 baseline; fixed INT4/INT8 of HAWQ-V3 §3.3",
    exact: false,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn best_fitting_and_named() {
        // All w4 = 240 bits > 200; all w2 = 120 fits.
        let p = tiny(200.0);
        let a = Uniform::default().solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![0, 0, 0]);
        let p = tiny(240.0);
        let a = Uniform::default().solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![1, 1, 1]);
        let u = Uniform {
            config: UniformConfig {
                option: Some("w8a8".into()),
            },
        };
        assert!(u.solve(&p, &mut SolveCtx::new(0)).is_err());
    }
}
