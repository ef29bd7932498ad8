//! `pareto-dp` — the whole accuracy/cost frontier along one additive budget by dynamic
//! programming, as in ZeroQ (survey §3.2.5; Cai et al., "ZeroQ", CVPR 2020) and HAWQ-V2
//! (§3.2.3, Eq. 23; Dong et al., NeurIPS 2020): `D_g[c] = min_k D_{g-1}[c − w_gk] + Γ_gk`.
//!
//! Always exact (unless `approximate` is set): first Pareto-set merging — the list of
//! (cost, objective) states that no other state beats in both, extended group by group, states
//! that cannot fit pruned — while it stays under `max_states`; then, when every cost is an
//! integer and the budget range divided by the costs' gcd has at most `max_exact_cells` cells,
//! the integer DP; otherwise each requested budget is solved by the exact one-row
//! multiple-choice knapsack solver ([`crate::mckp`]: Lagrangian bound, reduced-cost fixing,
//! branch and bound). With `approximate: true` the last case instead rounds costs **up** to a
//! grid of `cells` cells (always within budget, optimal for the rounded costs only).
//! `SolveCtx` reports `dp_exact` = 1 or 0 and the method used (`dp_method`: 0 merge, 1 integer
//! DP, 2 exact solver, 3 rounded grid). Max-type budgets (DQ C3) are per-layer filters; a
//! second additive budget is not supported (use `ilp`).
//! Complexity: merging `O(S · k)` per group for `S` states; grid DP `O(G · C · k)` time and
//! `O(G · C)` memory; exact solver `O(N log N)` plus a search that is fast for one row.

use serde::{Deserialize, Serialize};

use super::{parse_config, Allocator, AllocatorEntry, SolveCtx};
use crate::error::{config_err, AllocError, Result};
use crate::problem::{fits, Aggregate, Allocation, AllocationProblem, Budget, CostKind};
use crate::reduce::{min_costs_report, Reduced};

/// Configuration of [`ParetoDp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParetoDpConfig {
    /// Grid cells when the exact integer DP is too large (raised to 16 × layers, at most 65536).
    pub cells: usize,
    /// Largest integer range (in gcd units) solved exactly.
    pub max_exact_cells: usize,
    /// Largest number of states of exact Pareto-set merging before the grid DP is used.
    pub max_states: usize,
    /// Allow the rounded-up grid DP (fast, not exact) when neither merging nor the integer DP
    /// applies; by default the exact solver is used instead.
    pub approximate: bool,
}

impl Default for ParetoDpConfig {
    fn default() -> Self {
        Self {
            cells: 4096,
            max_exact_cells: 1 << 16,
            max_states: 300_000,
            approximate: false,
        }
    }
}

/// Dynamic-programming allocator over one budget axis.
#[derive(Debug, Clone, Default)]
pub struct ParetoDp {
    /// Its configuration.
    pub config: ParetoDpConfig,
}

/// One point of a frontier: the budget and the best allocation within it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParetoPoint {
    /// Budget on the axis cost.
    pub budget: f64,
    /// Best allocation found within that budget.
    pub allocation: Allocation,
}

/// Exact Pareto-set merging along dimension 0: the final non-dominated states (cost ascending,
/// objective strictly descending) and an arena of (parent, item) for backtracking.
struct Merge {
    arena: Vec<(u32, u32)>,
    last: Vec<(f64, f64, u32)>,
}

impl Merge {
    fn build(r: &Reduced, cap: f64, max_states: usize) -> Option<Merge> {
        let g_n = r.n_groups();
        let mut suf_min = vec![0.0; g_n + 1];
        for g in (0..g_n).rev() {
            suf_min[g] =
                suf_min[g + 1] + r.items(g).map(|i| r.c(i)[0]).fold(f64::INFINITY, f64::min);
        }
        let mut arena: Vec<(u32, u32)> = Vec::new();
        let mut states: Vec<(f64, f64, u32)> = vec![(0.0, 0.0, u32::MAX)];
        let mut cand: Vec<(f64, f64, u32, u32)> = Vec::new();
        for g in 0..g_n {
            cand.clear();
            for &(c, o, idx) in &states {
                for i in r.items(g) {
                    let nc = c + r.c(i)[0];
                    if fits(nc + suf_min[g + 1], cap) {
                        cand.push((nc, o + r.obj[i], idx, i as u32));
                    }
                }
            }
            cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            states.clear();
            let mut best = f64::INFINITY;
            for &(c, o, parent, item) in &cand {
                if o < best {
                    best = o;
                    if arena.len() >= max_states || arena.len() >= u32::MAX as usize - 1 {
                        return None;
                    }
                    arena.push((parent, item));
                    states.push((c, o, (arena.len() - 1) as u32));
                }
            }
            if states.is_empty() {
                return Some(Merge {
                    arena,
                    last: states,
                });
            }
        }
        Some(Merge {
            arena,
            last: states,
        })
    }

    fn best_within(&self, r: &Reduced, budget: f64) -> Option<Vec<usize>> {
        let s = self.last.iter().rev().find(|s| fits(s.0, budget))?;
        let mut items = vec![0; r.n_groups()];
        let mut idx = s.2;
        for g in (0..r.n_groups()).rev() {
            let (parent, item) = self.arena[idx as usize];
            items[g] = item as usize;
            idx = parent;
        }
        Some(items)
    }
}

/// DP table over one dimension of a reduced problem.
struct Dp {
    unit: f64,
    base: f64,
    cap_cells: usize,
    /// cells per item (usize::MAX = does not fit)
    w: Vec<usize>,
    /// last layer values
    last: Vec<f64>,
    /// chosen item per (group, cell)
    /// Item offset within its group (u8: at most 255 options per group).
    choice: Vec<u8>,
    exact: bool,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Dp {
    /// The DP, or `None` when it would not be exact and `cfg.approximate` is off.
    fn build(r: &Reduced, hi: f64, cfg: &ParetoDpConfig) -> Result<Option<Dp>> {
        let g_n = r.n_groups();
        let gmin: Vec<f64> = (0..g_n)
            .map(|g| r.items(g).map(|i| r.c(i)[0]).fold(f64::INFINITY, f64::min))
            .collect();
        let base: f64 = gmin.iter().sum();
        let range = (hi - base).max(0.0);
        let n_items = r.option.len();
        // Exact integer mode?
        let mut g_all = 0u64;
        let mut integral = true;
        for g in 0..g_n {
            for i in r.items(g) {
                let d = r.c(i)[0] - gmin[g];
                let rd = d.round();
                if (d - rd).abs() > 1e-9 * d.abs().max(1.0) || rd > 9.0e15 {
                    integral = false;
                    break;
                }
                g_all = gcd(g_all, rd as u64);
            }
        }
        // Rounding wastes under one cell per group: keep the grid well above the group count.
        let grid = cfg.cells.max(16 * g_n).min(1 << 16);
        let mut exact = false;
        let (unit, cap_cells) = if integral && g_all > 0 {
            let cells = ((range + 1e-9 * range.max(1.0)) / g_all as f64).floor();
            if cells <= cfg.max_exact_cells as f64 && (cells + 1.0) * g_n as f64 <= 6.0e7 {
                exact = true;
                (g_all as f64, cells as usize)
            } else {
                (range / grid as f64, grid)
            }
        } else if range <= 0.0 || (integral && g_all == 0) {
            exact = true;
            (0.0, 0)
        } else {
            (range / grid as f64, grid)
        };
        if cfg.cells == 0 {
            return Err(config_err("pareto-dp", "cells must be positive"));
        }
        if !exact && !cfg.approximate {
            return Ok(None);
        }
        if (0..g_n).any(|g| r.items(g).len() > 255) {
            return Err(config_err(
                "pareto-dp",
                "the grid DP supports at most 255 options",
            ));
        }
        let mut w = vec![usize::MAX; n_items];
        for g in 0..g_n {
            for i in r.items(g) {
                let d = r.c(i)[0] - gmin[g];
                let cells = if unit > 0.0 {
                    if exact {
                        (d / unit).round()
                    } else {
                        (d / unit - 1e-9).ceil().max(0.0)
                    }
                } else if d <= 1e-9 * r.c(i)[0].abs().max(1.0) {
                    0.0
                } else {
                    f64::INFINITY
                };
                if cells <= cap_cells as f64 {
                    w[i] = cells as usize;
                }
            }
        }
        let width = cap_cells + 1;
        let mut prev = vec![f64::INFINITY; width];
        prev[0] = 0.0;
        let mut cur = vec![f64::INFINITY; width];
        let mut choice = vec![u8::MAX; g_n * width];
        for g in 0..g_n {
            cur.iter_mut().for_each(|v| *v = f64::INFINITY);
            let row = &mut choice[g * width..(g + 1) * width];
            for i in r.items(g) {
                let wi = w[i];
                if wi == usize::MAX {
                    continue;
                }
                let o = r.obj[i];
                for c in 0..width - wi {
                    let v = prev[c] + o;
                    if v < cur[c + wi] {
                        cur[c + wi] = v;
                        row[c + wi] = (i - r.starts[g]) as u8;
                    }
                }
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        Ok(Some(Dp {
            unit,
            base,
            cap_cells,
            w,
            last: prev,
            choice,
            exact,
        }))
    }

    /// Best item choice with total axis cost ≤ `budget`, if any.
    fn best_within(&self, r: &Reduced, budget: f64) -> Option<Vec<usize>> {
        let avail = budget - self.base;
        if avail < -1e-9 * budget.abs().max(1.0) {
            return None;
        }
        let lim = if self.unit > 0.0 {
            ((avail.max(0.0) / self.unit) + 1e-9).floor()
        } else {
            0.0
        };
        let lim = (lim.max(0.0) as usize).min(self.cap_cells);
        let mut best = f64::INFINITY;
        let mut bc = usize::MAX;
        for c in 0..=lim {
            if self.last[c] < best {
                best = self.last[c];
                bc = c;
            }
        }
        if bc == usize::MAX {
            return None;
        }
        let width = self.cap_cells + 1;
        let mut items = vec![0; r.n_groups()];
        let mut c = bc;
        for g in (0..r.n_groups()).rev() {
            let i = r.starts[g] + self.choice[g * width + c] as usize;
            items[g] = i;
            c -= self.w[i];
        }
        Some(items)
    }
}

impl Allocator for ParetoDp {
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation> {
        let r = Reduced::new(p)?;
        match r.m() {
            0 => {
                let items: Vec<usize> = (0..r.n_groups())
                    .map(|g| {
                        r.items(g)
                            .min_by(|&a, &b| r.obj[a].total_cmp(&r.obj[b]))
                            .expect("non-empty")
                    })
                    .collect();
                r.finish(p, &items)
            }
            1 => {
                if let Some(mg) = Merge::build(&r, r.caps[0], self.config.max_states) {
                    ctx.note("dp_exact", 1.0);
                    ctx.note("dp_method", 0.0);
                    ctx.note("dp_states", mg.arena.len() as f64);
                    return match mg.best_within(&r, r.caps[0]) {
                        Some(items) => r.finish(p, &items),
                        None => Err(AllocError::Infeasible {
                            detail: min_costs_report(p),
                        }),
                    };
                }
                match Dp::build(&r, r.caps[0], &self.config)? {
                    Some(dp) => {
                        ctx.note("dp_exact", if dp.exact { 1.0 } else { 0.0 });
                        ctx.note("dp_method", if dp.exact { 1.0 } else { 3.0 });
                        ctx.note("dp_cells", dp.cap_cells as f64);
                        match dp.best_within(&r, r.caps[0]) {
                            Some(items) => r.finish(p, &items),
                            None => Err(super::no_setting(
                                "pareto-dp",
                                p,
                                &format!("a {}-cell grid with costs rounded up", dp.cap_cells),
                            )),
                        }
                    }
                    None => {
                        ctx.note("dp_exact", 1.0);
                        ctx.note("dp_method", 2.0);
                        let items =
                            exact_within(&r, r.caps[0])?.ok_or_else(|| AllocError::Infeasible {
                                detail: min_costs_report(p),
                            })?;
                        r.finish(p, &items)
                    }
                }
            }
            m => Err(config_err(
                "pareto-dp",
                format!("it handles one additive budget but the problem has {m}; use `ilp`"),
            )),
        }
    }
}

/// `n_points` frontier points with the default [`ParetoDpConfig`]; see [`pareto_with`].
pub fn pareto(p: &AllocationProblem, n_points: usize) -> Result<Vec<ParetoPoint>> {
    pareto_with(p, n_points, &ParetoDpConfig::default())
}

/// The frontier along the problem's single additive budget (or, without one, its first additive
/// cost table): one DP over the whole range, then `n_points` budgets evenly spaced from the
/// smallest achievable cost to the cost of the unconstrained optimum, each backtracked.
pub fn pareto_with(
    p: &AllocationProblem,
    n_points: usize,
    cfg: &ParetoDpConfig,
) -> Result<Vec<ParetoPoint>> {
    p.validate()?;
    let additive: Vec<&Budget> = p
        .budgets
        .iter()
        .filter(|b| b.cost.aggregate() == Aggregate::Sum)
        .collect();
    let axis: CostKind = match additive.as_slice() {
        [b] => b.cost.clone(),
        [] => p
            .costs
            .iter()
            .map(|(k, _)| k)
            .find(|k| k.aggregate() == Aggregate::Sum)
            .cloned()
            .ok_or_else(|| {
                AllocError::Invalid("no additive cost table for a Pareto axis".into())
            })?,
        more => {
            return Err(config_err(
                "pareto-dp",
                format!(
                    "a frontier needs one additive budget axis but the problem has {}",
                    more.len()
                ),
            ))
        }
    };
    let mut q = p.clone();
    q.budgets.retain(|b| b.cost != axis);
    q.budgets.push(Budget {
        cost: axis.clone(),
        max: f64::INFINITY,
    });
    let last = q.budgets.len() - 1;
    let r0 = {
        // Unconstrained optimum fixes the top of the range.
        let mut q0 = q.clone();
        q0.budgets.pop();
        let r = Reduced::new(&q0)?;
        let items: Vec<usize> = (0..r.n_groups())
            .map(|g| {
                r.items(g)
                    .min_by(|&a, &b| r.obj[a].total_cmp(&r.obj[b]))
                    .expect("non-empty")
            })
            .collect();
        r.finish(&q0, &items)?
    };
    let hi = r0.cost(&axis).expect("axis present");
    q.budgets[last].max = hi;
    let r = Reduced::new(&q).map_err(|e| match e {
        AllocError::Infeasible { .. } => AllocError::Infeasible {
            detail: min_costs_report(p),
        },
        e => e,
    })?;
    let lo: f64 = (0..r.n_groups())
        .map(|g| r.items(g).map(|i| r.c(i)[0]).fold(f64::INFINITY, f64::min))
        .sum();
    let merged = Merge::build(&r, hi, cfg.max_states);
    let dp = match merged {
        Some(_) => None,
        None => Dp::build(&r, hi, cfg)?,
    };
    let n = n_points.max(1);
    let mut out: Vec<ParetoPoint> = Vec::with_capacity(n);
    for k in 0..n {
        let budget = if n == 1 {
            hi
        } else {
            lo + (hi - lo) * k as f64 / (n - 1) as f64
        };
        let found = match (&merged, &dp) {
            (Some(mg), _) => mg.best_within(&r, budget),
            (None, Some(dp)) => dp.best_within(&r, budget),
            (None, None) => exact_within(&r, budget)?,
        };
        if let Some(items) = found {
            out.push(ParetoPoint {
                budget,
                allocation: r.finish(p, &items)?,
            });
        }
    }
    Ok(out)
}

/// Best items within `budget` on the single additive row by the exact solver; `None` when no
/// choice fits.
fn exact_within(r: &Reduced, budget: f64) -> Result<Option<Vec<usize>>> {
    let mut q = r.clone();
    q.caps[0] = budget;
    match crate::mckp::solve(&q, &crate::mckp::Limits::default()).0 {
        Ok(items) => Ok(Some(items)),
        Err(crate::mckp::Failure::Infeasible) => Ok(None),
        Err(crate::mckp::Failure::Limit { nodes, best, bound }) => Err(AllocError::Limit {
            method: "pareto-dp",
            nodes,
            best,
            bound,
        }),
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(ParetoDp {
        config: parse_config("pareto-dp", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "pareto-dp",
    summary: "exact frontier along one budget axis (Pareto merging, integer DP or exact solver)",
    reference: "survey §3.2.5 (ZeroQ, CVPR 2020) and §3.2.3 Eq. 23 (HAWQ-V2, NeurIPS 2020)",
    exact: true,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn matches_hand_checked_optimum_exactly() {
        let p = tiny(200.0);
        let mut ctx = SolveCtx::new(0);
        let a = ParetoDp::default().solve(&p, &mut ctx).unwrap();
        assert_eq!(a.choice, vec![1, 1, 0]);
        assert_eq!(ctx.stat("dp_exact"), Some(1.0));
    }

    #[test]
    fn frontier_is_monotone() {
        let p = tiny(1e9);
        let pts = pareto(&p, 5).unwrap();
        assert_eq!(pts.len(), 5);
        // Smallest budget = all w2 (120 bits), largest = all w8 (480 bits).
        assert_eq!(pts[0].budget, 120.0);
        assert_eq!(pts[0].allocation.choice, vec![0, 0, 0]);
        assert_eq!(pts[4].allocation.choice, vec![2, 2, 2]);
        for w in pts.windows(2) {
            assert!(w[1].allocation.objective <= w[0].allocation.objective);
        }
    }
}
