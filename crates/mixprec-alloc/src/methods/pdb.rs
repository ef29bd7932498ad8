//! `pdb` — Progressively Decreasing Bit-width (survey §3.2.2, Eq. 19–20; Chu et al.,
//! "Mixed-Precision Quantized Neural Networks with Progressively Decreasing Bitwidth", Pattern
//! Recognition 2021): weight bits from the feature separability `s` of each layer
//! (`layers[k].extra.separability`, Eq. 19) by Eq. 20: `4h` if `s ≤ 0.8`, `2h` if
//! `0.8 < s ≤ 0.85`, `h` otherwise (the equation's two last cases overlap at `s = 0.85`; the
//! first matching case wins). Activations use one fixed bit-width (`activation_bits`, or the
//! lowest-sensitivity option). With `h` unset, the largest integer `h` whose allocation meets
//! every budget is used. Complexity: `O(H · N)` for `H` scale values tried.

use serde::{Deserialize, Serialize};

use super::{items_for_targets, no_setting, parse_config, Allocator, AllocatorEntry, SolveCtx};
use crate::error::{config_err, AllocError, Result};
use crate::problem::{Allocation, AllocationProblem};
use crate::reduce::Reduced;

/// Configuration of [`Pdb`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PdbConfig {
    /// Scale `h` of Eq. 20; absent = largest that fits the budgets.
    pub h: Option<u32>,
    /// Fixed activation bit-width; absent = lowest-sensitivity option per layer.
    pub activation_bits: Option<u32>,
    /// Lower separability threshold (0.8).
    pub low: f64,
    /// Upper separability threshold (0.85).
    pub high: f64,
}

impl Default for PdbConfig {
    fn default() -> Self {
        Self {
            h: None,
            activation_bits: None,
            low: 0.8,
            high: 0.85,
        }
    }
}

/// PDB separability-threshold allocator.
#[derive(Debug, Clone, Default)]
pub struct Pdb {
    /// Its configuration.
    pub config: PdbConfig,
}

impl Pdb {
    /// Multiplier of `h` (4, 2 or 1) for each layer, Eq. 20.
    pub fn multipliers(&self, p: &AllocationProblem) -> Result<Vec<u32>> {
        let c = &self.config;
        if c.low.is_nan() || c.high.is_nan() || c.low > c.high {
            return Err(config_err("pdb", "thresholds need low <= high"));
        }
        p.layers
            .iter()
            .enumerate()
            .map(|(k, l)| {
                let s = l
                    .extra
                    .separability
                    .ok_or_else(|| AllocError::MissingExtra {
                        method: "pdb",
                        layer: k,
                        name: l.name.clone(),
                        field: "separability",
                        hint: "feature separability s of PDB Eq. 19",
                    })?;
                Ok(if s <= c.low {
                    4
                } else if s <= c.high {
                    2
                } else {
                    1
                })
            })
            .collect()
    }
}

impl Allocator for Pdb {
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation> {
        let mult = self.multipliers(p)?;
        let r = Reduced::new(p)?;
        let ta: Option<Vec<f64>> = self
            .config
            .activation_bits
            .map(|a| vec![a as f64; p.layers.len()]);
        let alloc = |h: u32| -> Vec<usize> {
            let tw: Vec<f64> = mult.iter().map(|&m| (m * h) as f64).collect();
            items_for_targets(&r, p, &tw, ta.as_deref())
        };
        let hs: Vec<u32> = match self.config.h {
            Some(0) => return Err(config_err("pdb", "h must be at least 1")),
            Some(h) => vec![h],
            None => {
                let wmax = p.options.iter().map(|o| o.weight_bits).max().unwrap_or(8);
                (1..=wmax).rev().collect()
            }
        };
        for &h in &hs {
            let x = alloc(h);
            if r.feasible(&x) {
                ctx.note("h", h as f64);
                return r.finish(p, &x);
            }
        }
        Err(no_setting("pdb", p, &format!("h in {hs:?}")))
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(Pdb {
        config: parse_config("pdb", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "pdb",
    summary: "weight bits 4h/2h/h by separability thresholds 0.8/0.85 (needs extra.separability)",
    reference: "survey §3.2.2 Eq. 19–20; Chu et al., PDB, Pattern Recognition 2021",
    exact: false,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn thresholds_by_hand() {
        let mut p = tiny(1e9);
        for (l, s) in p.layers.iter_mut().zip([0.5, 0.82, 0.9]) {
            l.extra.separability = Some(s);
        }
        let pdb = Pdb {
            config: PdbConfig {
                h: Some(2),
                ..PdbConfig::default()
            },
        };
        assert_eq!(pdb.multipliers(&p).unwrap(), vec![4, 2, 1]);
        // h = 2 → 8, 4, 2 bits.
        let a = pdb.solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![2, 1, 0]);
        // Budget 200 bits: h = 2 needs 80+80+60 = 220; h = 1 → 4,2,1→w2: 40+40+60 = 140.
        let mut p2 = p.clone();
        p2.budgets[0].max = 200.0;
        let mut ctx = SolveCtx::new(0);
        let a = Pdb::default().solve(&p2, &mut ctx).unwrap();
        assert_eq!(a.choice, vec![1, 0, 0]);
        assert_eq!(ctx.stat("h"), Some(1.0));
    }
}
