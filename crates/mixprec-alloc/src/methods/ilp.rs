//! `ilp` — exact allocation, HAWQ-V3 (survey §3.3, Eq. 26; Yao et al., "HAWQ-V3: Dyadic Neural
//! Network Quantization", ICML 2021): minimise `Σ_j Γ_j^(b_j)` subject to any number of additive
//! budgets (`Σ_j M_j ≤ A1`, `Σ_j B_j ≤ A2`, `Σ_j L_j ≤ A3`, …), max-type budgets (DQ C3), tie
//! groups and fixed layers (HAWQ-V3 and HAQ keep the first and last layer at 8 bits).
//!
//! HAWQ-V3 hands the ILP to PuLP/CBC; here it is our own multiple-choice knapsack solver
//! ([`crate::mckp`]): dominance presolve, Lagrangian (= LP) bound, greedy incumbent,
//! reduced-cost fixing, iterative widening and depth-first search with per-row
//! dynamic-programming and LP bounds, and for two budgets a best-first dominance search over
//! the core (module `core_dp`). Exact up to a relative tolerance of 1e-9; a node or time
//! limit ends in [`AllocError::Limit`] with the best objective and a proven lower bound, never
//! in a silent guess. `SolveCtx` notes `proven_bound` (the optimum when solved), `lower_bound`
//! (Lagrangian), `nodes`, `core_groups`, `first_incumbent`.
//! Complexity: `O(N log N)` bounding per multiplier update (N = layers × options), worst-case
//! exponential search. Measured (`examples/solve_bench.rs` on the instances of
//! `bench/alloc/pulp_compare.py`, 2-core machine shared with other builds, load 1.5–3): one
//! budget, 2000 × 6 in ~30 ms; two budgets (size + BOPs), 54 × 4 in ~1.0 ms, 560 × 6 in
//! ~25–35 ms and 2000 × 6 in ~28–40 ms (PuLP + CBC: 74 ms, 1.8 s, 52 s).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{parse_config, Allocator, AllocatorEntry, ParetoPoint, SolveCtx};
use crate::error::{AllocError, Result};
use crate::mckp::{self, Failure, Limits};
use crate::problem::{Aggregate, Allocation, AllocationProblem, Budget, CostKind};
use crate::reduce::{min_costs_report, Reduced};

/// Configuration of [`Ilp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IlpConfig {
    /// Maximum branch-and-bound nodes (plus states of the core programme with two budgets)
    /// before giving up with [`AllocError::Limit`].
    pub node_limit: u64,
    /// Optional wall-clock limit in milliseconds.
    pub time_limit_ms: Option<u64>,
}

impl Default for IlpConfig {
    fn default() -> Self {
        Self {
            node_limit: 50_000_000,
            time_limit_ms: None,
        }
    }
}

/// Exact branch-and-bound allocator.
#[derive(Debug, Clone, Default)]
pub struct Ilp {
    /// Its configuration.
    pub config: IlpConfig,
}

impl Ilp {
    /// An exact allocator with default limits.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Allocator for Ilp {
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation> {
        let r = Reduced::new(p)?;
        let ms = self
            .config
            .time_limit_ms
            .map(Duration::from_millis)
            .into_iter()
            .chain(ctx.time_limit)
            .min();
        let limits = Limits {
            node_limit: self.config.node_limit,
            deadline: ms.map(|d| Instant::now() + d),
            ..Limits::default()
        };
        let (out, stats) = mckp::solve(&r, &limits);
        ctx.note("nodes", stats.nodes as f64);
        ctx.note("lower_bound", stats.lower_bound);
        ctx.note("first_incumbent", stats.first_incumbent);
        ctx.note("proven_bound", stats.proven_bound);
        ctx.note("root_lp", stats.root_lp);
        ctx.note("core_groups", stats.core_groups as f64);
        ctx.note("items_after_presolve", stats.items_after_presolve as f64);
        ctx.note("refinements", stats.refinements as f64);
        ctx.note("fixed_by_tables", stats.fixed_by_tables as f64);
        match out {
            Ok(items) => r.finish(p, &items),
            Err(Failure::Infeasible) => Err(AllocError::Infeasible {
                detail: min_costs_report(p),
            }),
            Err(Failure::Limit { nodes, best, bound }) => Err(AllocError::Limit {
                method: "ilp",
                nodes,
                best,
                bound,
            }),
        }
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(Ilp {
        config: parse_config("ilp", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "ilp",
    summary: "exact branch-and-bound MCKP: several budgets, ties, fixed layers",
    reference: "survey §3.3 Eq. 26; Yao et al., HAWQ-V3, ICML 2021",
    exact: true,
    build,
};

/// Exact Pareto sweep along one additive cost `axis`: `n_points` budgets evenly spaced from the
/// smallest achievable `axis` cost to the `axis` cost of the optimum without an `axis` budget,
/// each solved exactly by [`Ilp`] (the problem's other budgets stay in force).
pub fn pareto_exact(
    p: &AllocationProblem,
    axis: &CostKind,
    n_points: usize,
) -> Result<Vec<ParetoPoint>> {
    if axis.aggregate() != Aggregate::Sum {
        return Err(AllocError::Invalid(format!(
            "Pareto axis `{axis}` must be an additive cost"
        )));
    }
    if p.cost_table(axis).is_none() {
        return Err(AllocError::Invalid(format!(
            "Pareto axis `{axis}` has no cost table in the problem"
        )));
    }
    let mut base = p.clone();
    base.budgets.retain(|b| &b.cost != axis);
    let ilp = Ilp::new();
    let mut ctx = SolveCtx::new(0);
    let top = ilp.solve(&base, &mut ctx)?;
    let hi = top.cost(axis).expect("axis present");
    base.budgets.push(Budget {
        cost: axis.clone(),
        max: f64::INFINITY,
    });
    let last = base.budgets.len() - 1;
    base.budgets[last].max = hi;
    let lo = crate::reduce::min_achievable(&base)[last];
    let n = n_points.max(1);
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let budget = if n == 1 {
            hi
        } else {
            lo + (hi - lo) * k as f64 / (n - 1) as f64
        };
        base.budgets[last].max = budget;
        match ilp.solve(&base, &mut ctx) {
            Ok(a) => out.push(ParetoPoint {
                budget,
                allocation: a,
            }),
            // The smallest axis value can be jointly infeasible with other budgets.
            Err(AllocError::Infeasible { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn hand_checked_optimum() {
        // Sizes: a 20/40/80, b 40/80/160, c 60/120/240; budget 200.
        // Best: a=w4, b=w4, c=w2 → 180 bits, objective 2 + 1 + 1 = 4.
        let p = tiny(200.0);
        let a = Ilp::new().solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![1, 1, 0]);
        assert!((a.objective - 4.0).abs() < 1e-12);
        assert_eq!(a.cost(&CostKind::ModelSize), Some(180.0));
    }

    #[test]
    fn infeasible_budget_states_smallest_cost() {
        let p = tiny(100.0); // smallest achievable is 120
        let e = Ilp::new().solve(&p, &mut SolveCtx::new(0)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("smallest achievable 120"), "{msg}");
    }

    #[test]
    fn fixed_and_ties_are_respected() {
        let mut p = tiny(300.0);
        p.fixed.push((0, 2));
        p.tie_groups.push(vec![1, 2]);
        let a = Ilp::new().solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice[0], 2);
        assert_eq!(a.choice[1], a.choice[2]);
        // a=80 leaves 220 for b+c tied: w2 → 100, w4 → 200 fits, w8 → 400 no.
        assert_eq!(a.choice, vec![2, 1, 1]);
    }
}
