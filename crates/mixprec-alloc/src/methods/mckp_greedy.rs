//! `mckp-greedy` — the greedy multiple-choice-knapsack search of MPQNNCO (survey §3.3.2,
//! Eq. 32; Chen et al., "Towards Mixed-Precision Quantization of Neural Networks via Constrained
//! Optimization", ICCV 2021): filter dominated items, start every layer at its cheapest option,
//! then repeatedly apply the upgrade with the best objective gain per unit of (budget-normalised)
//! cost that keeps every budget satisfied, until none fits.
//! Complexity: `O(U · N)` for `U` upgrades over `N` items (`U ≤ N`).

use serde::{Deserialize, Serialize};

use super::{no_setting, parse_config, Allocator, AllocatorEntry, SolveCtx};
use crate::error::Result;
use crate::problem::{fits, Allocation, AllocationProblem};
use crate::reduce::Reduced;

/// Configuration of [`MckpGreedy`] (no options yet; kept for a stable JSON interface).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MckpGreedyConfig {}

/// Greedy MCKP allocator.
#[derive(Debug, Clone, Default)]
pub struct MckpGreedy;

fn norm_cost(r: &Reduced, scale: &[f64], i: usize) -> f64 {
    r.c(i).iter().zip(scale).map(|(c, s)| c / s).sum()
}

impl Allocator for MckpGreedy {
    fn solve(&self, p: &AllocationProblem, _ctx: &mut SolveCtx) -> Result<Allocation> {
        let r = Reduced::new(p)?;
        let m = r.m();
        let scale: Vec<f64> = r.caps.iter().map(|c| c.abs().max(1e-300)).collect();
        // Dominated-item filtering.
        let alive: Vec<Vec<usize>> = (0..r.n_groups())
            .map(|g| {
                let items: Vec<usize> = r.items(g).collect();
                items
                    .iter()
                    .copied()
                    .filter(|&j| {
                        !items.iter().any(|&i| {
                            i != j
                                && r.obj[i] <= r.obj[j]
                                && r.c(i).iter().zip(r.c(j)).all(|(a, b)| a <= b)
                                && (r.obj[i] < r.obj[j]
                                    || r.c(i).iter().zip(r.c(j)).any(|(a, b)| a < b)
                                    || i < j)
                        })
                    })
                    .collect()
            })
            .collect();
        let mut x: Vec<usize> = alive
            .iter()
            .map(|items| {
                *items
                    .iter()
                    .min_by(|&&a, &&b| {
                        norm_cost(&r, &scale, a)
                            .total_cmp(&norm_cost(&r, &scale, b))
                            .then(r.obj[a].total_cmp(&r.obj[b]))
                    })
                    .expect("non-empty")
            })
            .collect();
        if !r.feasible(&x) {
            return Err(no_setting(
                "mckp-greedy",
                p,
                "the cheapest option of every layer",
            ));
        }
        let (_, mut used) = r.totals(&x);
        loop {
            let mut best: Option<(f64, f64, usize, usize)> = None;
            for (g, items) in alive.iter().enumerate() {
                let cur = x[g];
                for &j in items {
                    let gain = r.obj[cur] - r.obj[j];
                    if gain <= 0.0 {
                        continue;
                    }
                    if !(0..m).all(|d| fits(used[d] + r.c(j)[d] - r.c(cur)[d], r.caps[d])) {
                        continue;
                    }
                    let dc = norm_cost(&r, &scale, j) - norm_cost(&r, &scale, cur);
                    let ratio = if dc > 0.0 { gain / dc } else { f64::INFINITY };
                    let better = match best {
                        None => true,
                        Some((br, bg, _, _)) => ratio > br || (ratio == br && gain > bg),
                    };
                    if better {
                        best = Some((ratio, gain, g, j));
                    }
                }
            }
            let Some((_, _, g, j)) = best else { break };
            for d in 0..m {
                used[d] += r.c(j)[d] - r.c(x[g])[d];
            }
            x[g] = j;
        }
        r.finish(p, &x)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    let _: MckpGreedyConfig = parse_config("mckp-greedy", v)?;
    Ok(Box::new(MckpGreedy))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "mckp-greedy",
    summary: "greedy MCKP: cheapest start, best gain-per-cost upgrades",
    reference: "survey §3.3.2 Eq. 32; Chen et al., MPQNNCO, ICCV 2021",
    exact: false,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn hand_checked_upgrades() {
        // Start 20+40+60 = 120 bits. Upgrade ratios (gain / extra bits, budget 200):
        // a 2→4: 6/20 = 0.3, b 2→4: 3/40 = 0.075, c 2→4: 0.7/60 — a first (140), then
        // a 4→8: 1.5/40 = 0.0375 vs b 2→4: 0.075 → b (180); then nothing fits but a 4→8 (220 no).
        let p = tiny(200.0);
        let a = MckpGreedy.solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![1, 1, 0]);
    }
}
