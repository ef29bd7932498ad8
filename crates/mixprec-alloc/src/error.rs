//! The one error type of `mixprec-alloc`: every variant names the layer, option, cost or file
//! involved and, where possible, what to do about it.

use std::path::PathBuf;

/// Errors of problem validation, cost models and allocators.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The problem file or value is malformed (shape, NaN, unknown name, version …).
    #[error("invalid allocation problem: {0}")]
    Invalid(String),
    /// The budgets cannot be met by any allocation using the options given.
    #[error("infeasible budgets: {detail}")]
    Infeasible {
        /// Which budgets fail and the smallest cost achievable for each.
        detail: String,
    },
    /// A heuristic allocator found no setting of its own knob that satisfies the budgets,
    /// although an exact allocator might (the smallest costs achievable are stated).
    #[error("{method}: no setting satisfies the budgets ({detail}); try the `ilp` allocator")]
    NoFeasibleSetting {
        /// Allocator name.
        method: &'static str,
        /// What was tried.
        detail: String,
    },
    /// An allocator needs per-layer extra data that the problem lacks.
    #[error("{method} needs `layers[{layer}].extra.{field}` (layer `{name}`): {hint}")]
    MissingExtra {
        /// Allocator name.
        method: &'static str,
        /// Layer index.
        layer: usize,
        /// Layer name.
        name: String,
        /// Missing field.
        field: &'static str,
        /// What the field means.
        hint: &'static str,
    },
    /// A configuration value (allocator or cost model) is wrong.
    #[error("invalid configuration for `{what}`: {detail}")]
    Config {
        /// Allocator or cost-model name.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// No allocator or cost model of this name is registered.
    #[error("unknown {family} `{name}`; known: {known}")]
    Unknown {
        /// "allocator" or "cost model".
        family: &'static str,
        /// The name asked for.
        name: String,
        /// Comma-separated registered names.
        known: String,
    },
    /// The latency look-up table lacks an entry.
    #[error("latency LUT {file}: no entry for layer `{layer}` key `{key}`; measure it or remove option {key} from this layer's allowed options")]
    LutMissing {
        /// File (or `<inline>`).
        file: String,
        /// Layer name.
        layer: String,
        /// Key such as `w4a8`.
        key: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// JSON (de)serialisation failed.
    #[error("JSON error in {what}: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// The solver hit its node or time limit before proving optimality.
    #[error("{method}: search limit reached after {nodes} nodes (best objective so far {best}, proven lower bound {bound}, so at most {} above the optimum); raise `node_limit` / `time_limit_ms`", best - bound)]
    Limit {
        /// Allocator name.
        method: &'static str,
        /// Nodes explored.
        nodes: u64,
        /// Best objective found (inf if none).
        best: f64,
        /// Proven lower bound on the optimum.
        bound: f64,
    },
}

/// Result alias of this crate.
pub type Result<T, E = AllocError> = std::result::Result<T, E>;

pub(crate) fn invalid(msg: impl Into<String>) -> AllocError {
    AllocError::Invalid(msg.into())
}

pub(crate) fn config_err(what: &str, detail: impl Into<String>) -> AllocError {
    AllocError::Config {
        what: what.to_string(),
        detail: detail.into(),
    }
}
