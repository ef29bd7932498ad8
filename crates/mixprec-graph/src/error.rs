//! The error type of mixprec-graph: every variant names the file, node or value at fault.

use std::path::PathBuf;

/// Errors from importing, checking, transforming or exporting a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf.
    #[error("{path} is not a valid ONNX model ({detail}); check that the file is complete and really an .onnx file")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        detail: String,
    },
    /// An operator mixprec does not implement.
    #[error("unsupported operator {op_type} (domain '{domain}', opset {opset}) at node '{node}'; supported: {supported}")]
    UnsupportedOp {
        /// ONNX op type.
        op_type: String,
        /// ONNX domain.
        domain: String,
        /// Opset in force.
        opset: i64,
        /// Node name.
        node: String,
        /// List of supported operators.
        supported: String,
    },
    /// A node whose attributes or inputs are not valid.
    #[error("node '{node}' ({op}): {detail}")]
    BadNode {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What is wrong.
        detail: String,
    },
    /// Shapes of a node's inputs do not fit together.
    #[error("shape mismatch at node '{node}' ({op}): {detail}")]
    ShapeMismatch {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor or value in the model is malformed.
    #[error("tensor '{name}': {detail}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// The graph structure itself is malformed (dangling or cyclic references, missing outputs).
    #[error("invalid graph: {0}")]
    Invalid(String),
    /// A safetensors file could not be used.
    #[error("safetensors file {path}: {detail}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;
