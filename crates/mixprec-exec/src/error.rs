//! The error type of mixprec-exec.

/// Errors from executing, differentiating or training a graph.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A graph-level problem (import, shape inference, export).
    #[error(transparent)]
    Graph(#[from] mixprec_graph::GraphError),
    /// A data-set problem.
    #[error(transparent)]
    Data(#[from] mixprec_data::DataError),
    /// A tensor operation failed while running a node.
    #[error("node '{node}' ({op}): {detail}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What failed.
        detail: String,
    },
    /// The caller passed something unusable.
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation outside any node failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T, E = ExecError> = std::result::Result<T, E>;
