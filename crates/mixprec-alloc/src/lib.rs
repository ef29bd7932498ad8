//! # mixprec-alloc
//!
//! Bit-width allocation for mixed-precision networks on plain tables (no tensors): the
//! [`AllocationProblem`] (survey §3.3 Eq. 26), cost models (model size, BOPs, DQ's C1–C3,
//! energy, latency LUT; [`costs`]), and allocators ([`methods`]) from exact ILP / Pareto DP to
//! the heuristic rules of AQ, PDB, Hybrid-Net and OPQ.
//!
//! ```
//! use mixprec_alloc::{allocator, AllocationProblem, SolveCtx};
//! let json = r#"{
//!   "version": 1,
//!   "layers": [{"name": "conv1", "params": 100}, {"name": "fc", "params": 300}],
//!   "options": [{"weight_bits": 4, "activation_bits": 8}, {"weight_bits": 8, "activation_bits": 8}],
//!   "sensitivity": [[1.0, 0.1], [0.5, 0.2]],
//!   "costs": [["model-size", [[400, 800], [1200, 2400]]]],
//!   "budgets": [{"cost": "model-size", "max": 2000}]
//! }"#;
//! let p = AllocationProblem::from_json(json).unwrap();
//! let a = allocator("ilp", &serde_json::Value::Null).unwrap()
//!     .solve(&p, &mut SolveCtx::new(0)).unwrap();
//! assert_eq!(a.choice, vec![1, 0]);
//! ```

// Index loops over parallel per-dimension / per-group arrays read more clearly than zips.
#![allow(clippy::needless_range_loop)]

mod core_dp;
pub mod costs;
mod error;
pub mod mckp;
pub mod methods;
mod problem;
pub mod random;
pub mod reduce;
mod simd;
mod table;

pub use costs::{cost_model, CostModel, CostModelEntry, COST_MODELS};
pub use error::{AllocError, Result};
pub use methods::{
    allocator, pareto, pareto_exact, Allocator, AllocatorEntry, ParetoPoint, SolveCtx, ALLOCATORS,
};
pub use problem::{
    fits, Aggregate, Allocation, AllocationProblem, BitOption, Budget, CostKind, LayerExtra,
    LayerInfo, BUDGET_RTOL, PROBLEM_VERSION,
};
pub use table::Table;

/// Helpers shared by the unit tests of the solvers.
#[cfg(test)]
pub(crate) mod test_support {
    /// Advances `pick` (one index per level; level `t` has `len(t)` choices) to the next
    /// combination, the first level fastest; false after the last one.
    pub(crate) fn next_choice(pick: &mut [usize], len: impl Fn(usize) -> usize) -> bool {
        for t in 0..pick.len() {
            pick[t] += 1;
            if pick[t] < len(t) {
                return true;
            }
            pick[t] = 0;
        }
        false
    }

    /// Multipliers for two rows drawn from `range` times the objective's spread over each
    /// row's cost spread (the scale of the trade-off, deliberately not the optimal ones).
    pub(crate) fn random_multipliers(
        r: &crate::reduce::Reduced,
        rng: &mut impl rand::Rng,
        range: std::ops::Range<f64>,
    ) -> Vec<f64> {
        let spread = |f: &dyn Fn(usize) -> f64| {
            let (lo, hi) = (0..r.obj.len()).fold((f64::INFINITY, 0.0f64), |(a, b), i| {
                (a.min(f(i)), b.max(f(i)))
            });
            (hi - lo).max(1e-12)
        };
        let so = spread(&|i| r.obj[i]);
        (0..2)
            .map(|d| rng.random_range(range.clone()) * so / spread(&|i| r.c(i)[d]))
            .collect()
    }

    /// Asserts that the forced bound `f` of an item is at most `best`, the best feasible
    /// objective through the item; true when it lies above the optimum `opt` (the item
    /// would be fixed out).
    pub(crate) fn check_forced(f: f64, best: f64, opt: f64, what: &str) -> bool {
        assert!(
            f <= best + 1e-9 * best.abs().max(1.0),
            "{what}: forced {f} above best {best}"
        );
        opt.is_finite() && f > opt + 1e-9 * opt.abs().max(1.0)
    }
}
