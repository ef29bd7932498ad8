//! mixprec-graph: the graph IR of mixprec, ONNX import (opsets 7–21) and export, shape
//! inference with constant propagation, per-layer accounting (parameters, MACs, activation
//! sizes) and safetensors weight I/O.

pub mod accounting;
pub mod error;
pub mod eval;
pub mod export;
pub mod import;
pub mod infer;
pub mod ir;
pub mod onnx_build;
pub mod onnx_proto;
pub mod shape;
pub mod tensor;
pub mod weights;

pub use accounting::{model_stats, LayerStats, ModelStats};
pub use error::{GraphError, Result};
pub use export::{save_onnx, to_model_proto, write_atomic};
pub use import::{
    import_onnx_bytes, load_onnx, load_tensor_proto, tensor_from_proto, SUPPORTED_OPS,
};
pub use infer::{infer, infer_with_values, input_shapes_for_batch, Inferred};
pub use ir::{AutoPad, Dim, Graph, Layer, LayerKind, Node, Op, PadMode, Value, ValueId, Window};
pub use tensor::{Tensor, TensorData};
pub use weights::{load_safetensors, safetensors_metadata, save_safetensors};
