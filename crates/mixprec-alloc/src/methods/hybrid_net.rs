//! `hybrid-net` — Hybrid-Net (survey §3.2.4; Chakraborty et al., "Constructing energy-efficient
//! mixed-precision neural networks through principal component analysis for edge
//! intelligence", Nature Machine Intelligence 2020): start from an all-binary network and raise
//! the layers that PCA marks significant (`layers[k].extra.significant`) to `k_b1`-bit weights
//! and `k_b2`-bit activations, `(k_b1, k_b2) ∈ {2, 4}`. Bit-widths map to the largest admissible
//! option not above them (the smallest available when none is). With `k` unset, the first of
//! (4,4), (4,2), (2,4), (2,2) that meets every budget is used, then all-binary.
//! Complexity: `O(N)` per setting.

use serde::{Deserialize, Serialize};

use super::{items_for_targets, no_setting, parse_config, Allocator, AllocatorEntry, SolveCtx};
use crate::error::{config_err, AllocError, Result};
use crate::problem::{Allocation, AllocationProblem};
use crate::reduce::Reduced;

/// Configuration of [`HybridNet`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridNetConfig {
    /// `(k_b1, k_b2)` for significant layers, each 2 or 4; absent = largest that fits.
    #[serde(default)]
    pub k: Option<(u32, u32)>,
}

/// Hybrid-Net allocator.
#[derive(Debug, Clone, Default)]
pub struct HybridNet {
    /// Its configuration.
    pub config: HybridNetConfig,
}

impl Allocator for HybridNet {
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation> {
        let sig: Vec<bool> = p
            .layers
            .iter()
            .enumerate()
            .map(|(k, l)| {
                l.extra.significant.ok_or_else(|| AllocError::MissingExtra {
                    method: "hybrid-net",
                    layer: k,
                    name: l.name.clone(),
                    field: "significant",
                    hint: "whether PCA marks the layer significant (Hybrid-Net §3.2.4)",
                })
            })
            .collect::<Result<_>>()?;
        let settings: Vec<(u32, u32)> = match self.config.k {
            Some((a, b)) if [2, 4].contains(&a) && [2, 4].contains(&b) => vec![(a, b)],
            Some(k) => {
                return Err(config_err(
                    "hybrid-net",
                    format!("k = {k:?}; each of (k_b1, k_b2) must be 2 or 4"),
                ))
            }
            None => vec![(4, 4), (4, 2), (2, 4), (2, 2), (1, 1)],
        };
        let r = Reduced::new(p)?;
        for &(kw, ka) in &settings {
            let tw: Vec<f64> = sig.iter().map(|&s| if s { kw } else { 1 } as f64).collect();
            let ta: Vec<f64> = sig.iter().map(|&s| if s { ka } else { 1 } as f64).collect();
            let x = items_for_targets(&r, p, &tw, Some(&ta));
            if r.feasible(&x) {
                ctx.note("k_b1", kw as f64);
                ctx.note("k_b2", ka as f64);
                return r.finish(p, &x);
            }
        }
        Err(no_setting("hybrid-net", p, &format!("{settings:?}")))
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(HybridNet {
        config: parse_config("hybrid-net", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "hybrid-net",
    summary:
        "all-binary, significant layers raised to (k_b1, k_b2) in {2,4} (needs extra.significant)",
    reference: "survey §3.2.4; Chakraborty et al., Hybrid-Net, Nat. Mach. Intell. 2020",
    exact: false,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;
    use crate::problem::BitOption;

    #[test]
    fn significant_layers_raised() {
        let mut p = tiny(1e9);
        // Options: w1a1, w2a2, w4a4 instead of the tiny ones.
        p.options = vec![
            BitOption::new(1, 1),
            BitOption::new(2, 2),
            BitOption::new(4, 4),
        ];
        for (l, s) in p.layers.iter_mut().zip([false, true, false]) {
            l.extra.significant = Some(s);
        }
        let h = HybridNet {
            config: HybridNetConfig { k: Some((2, 2)) },
        };
        let a = h.solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![0, 1, 0]);
        // Default picks (4,4) when it fits (cost table says w bits of tiny: 2/4/8 × params).
        let a = HybridNet::default()
            .solve(&p, &mut SolveCtx::new(0))
            .unwrap();
        assert_eq!(a.choice, vec![0, 2, 0]);
    }
}
