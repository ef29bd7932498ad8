//! `lagrangian` — rate–distortion allocation of OBACWA (survey §3.1.3, Eq. 13–14; Zhe et al.,
//! "Optimizing the Bit Allocation for Compression of Weights and Activations of Deep Neural
//! Networks", ICIP 2019): each layer independently minimises `Error_i + λ · R_i` (Eq. 14) and
//! `λ` is found by bisection as the smallest multiplier whose allocation meets the rate budget
//! (Eq. 13). With several budgets the rate is `Σ_d c_d / A_d` (each cost over its budget).
//! The result is optimal for the budget it actually uses (a point on the lower convex hull),
//! not necessarily for the given one. Complexity: `O(I · N)` for `I` bisection steps.

use serde::{Deserialize, Serialize};

use super::{no_setting, parse_config, Allocator, AllocatorEntry, SolveCtx};
use crate::error::Result;
use crate::problem::{Allocation, AllocationProblem};
use crate::reduce::Reduced;

/// Configuration of [`Lagrangian`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagrangianConfig {
    /// Bisection steps on λ.
    pub iterations: usize,
}

impl Default for LagrangianConfig {
    fn default() -> Self {
        Self { iterations: 100 }
    }
}

/// Lagrange-multiplier bisection allocator.
#[derive(Debug, Clone, Default)]
pub struct Lagrangian {
    /// Its configuration.
    pub config: LagrangianConfig,
}

fn argmin(r: &Reduced, rate: &[f64], lam: f64) -> Vec<usize> {
    (0..r.n_groups())
        .map(|g| {
            r.items(g)
                .min_by(|&a, &b| {
                    (r.obj[a] + lam * rate[a])
                        .total_cmp(&(r.obj[b] + lam * rate[b]))
                        .then(rate[a].total_cmp(&rate[b]))
                })
                .expect("non-empty")
        })
        .collect()
}

impl Allocator for Lagrangian {
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation> {
        let r = Reduced::new(p)?;
        let scale: Vec<f64> = r.caps.iter().map(|c| c.abs().max(1e-300)).collect();
        let rate: Vec<f64> = (0..r.option.len())
            .map(|i| r.c(i).iter().zip(&scale).map(|(c, s)| c / s).sum())
            .collect();
        let x0 = argmin(&r, &rate, 0.0);
        if r.feasible(&x0) {
            ctx.note("lambda", 0.0);
            return r.finish(p, &x0);
        }
        let mut hi = 1.0;
        let mut xh = argmin(&r, &rate, hi);
        let mut doublings = 0;
        while !r.feasible(&xh) {
            hi *= 2.0;
            doublings += 1;
            if doublings > 1100 || !hi.is_finite() {
                return Err(no_setting("lagrangian", p, "λ up to the largest float"));
            }
            xh = argmin(&r, &rate, hi);
        }
        let mut lo = 0.0;
        for _ in 0..self.config.iterations {
            let mid = 0.5 * (lo + hi);
            let x = argmin(&r, &rate, mid);
            if r.feasible(&x) {
                hi = mid;
                xh = x;
            } else {
                lo = mid;
            }
        }
        ctx.note("lambda", hi);
        r.finish(p, &xh)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(Lagrangian {
        config: parse_config("lagrangian", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "lagrangian",
    summary: "per-layer min of error + λ·rate, bisection on λ",
    reference: "survey §3.1.3 Eq. 13–14; Zhe et al., OBACWA, ICIP 2019",
    exact: false,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn finds_hull_point_within_budget() {
        // Budget 200 bits. The hull points of the tiny problem: as λ grows layers drop bits in
        // order of smallest error increase per bit saved; at the smallest feasible λ the
        // allocation is a=w4, b=w4, c=w2 (180 bits), which is also the optimum here.
        let p = tiny(200.0);
        let a = Lagrangian::default()
            .solve(&p, &mut SolveCtx::new(0))
            .unwrap();
        assert_eq!(a.choice, vec![1, 1, 0]);
    }
}
