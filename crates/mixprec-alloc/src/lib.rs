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
