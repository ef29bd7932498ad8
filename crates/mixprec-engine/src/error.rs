//! The error type of mixprec-engine: every variant names the node, layer, tensor or file at
//! fault and, where there is one, what to do about it.

use std::path::PathBuf;

use crate::kernels::KernelError;

/// Errors from lowering a graph, running a quantized model or reading a model file.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An operator (or a use of one) the integer engine does not implement.
    #[error("node '{node}' ({op}) cannot run on the integer engine: {detail}")]
    Unsupported {
        /// Node name.
        node: String,
        /// ONNX operator name.
        op: String,
        /// Why, and what to do instead.
        detail: String,
    },
    /// A layer whose policy entry the engine cannot execute (float weight or activation,
    /// non-uniform scheme, unsupported width or granularity).
    #[error("layer '{layer}': {detail}")]
    Layer {
        /// Layer (node) name.
        layer: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// A quantized tensor without a clip range.
    #[error(
        "tensor '{tensor}' needs a clip range that the layer ranges do not give ({why}); \
         lower with calibration images (`lower_with_data`) or pass its range under this name"
    )]
    MissingRange {
        /// Value name of the tensor.
        tensor: String,
        /// Why it needs its own range.
        why: String,
    },
    /// The graph itself could not be analysed (shape inference and the like).
    #[error("graph: {0}")]
    Graph(#[from] mixprec_graph::GraphError),
    /// A quantization parameter could not be computed.
    #[error("{what}: {source}")]
    Quant {
        /// Which tensor.
        what: String,
        /// The cause.
        source: mixprec_quant::QuantError,
    },
    /// An integer kernel refused its arguments.
    #[error("step '{step}': {source}")]
    Kernel {
        /// The step (node) that ran the kernel.
        step: String,
        /// The cause.
        source: KernelError,
    },
    /// Input data that does not fit the model.
    #[error("input: {0}")]
    Input(String),
    /// A model file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A model file that is truncated, corrupt or of another version.
    #[error("{path} is not a valid mixprec model file: {detail}")]
    Format {
        /// The file (empty for in-memory bytes).
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A model whose internal description is inconsistent (a corrupt file that parsed).
    #[error("invalid quantized model: {0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn kernel(step: &str) -> impl FnOnce(KernelError) -> EngineError + '_ {
    move |source| EngineError::Kernel {
        step: step.to_string(),
        source,
    }
}
