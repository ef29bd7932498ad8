//! mixprec-exec: the float executor of mixprec on candle — batched forward for every supported
//! ONNX operator, gradients with respect to weights and inputs, Hessian-vector products,
//! evaluation on data sets and training.

pub mod conv2d;
pub mod distill;
pub mod error;
pub mod eval;
pub mod executor;
pub mod fakequant;
pub mod ggn;
pub mod grad;
#[cfg(test)]
mod gradcheck;
pub mod models;
pub mod ops;
pub mod ops_onnx;
pub mod pointwise;
pub mod qdq;
pub mod rnn;
pub mod sensitivity;
pub mod train;

pub use distill::{distill, DistillConfig, Distilled};
pub use error::{ExecError, Result};
pub use eval::{evaluate, free_batch_dim, EvalResult};
pub use executor::{init, Executor, LayerHook, RunOptions, RunResult};
pub use fakequant::{
    calibrate, check_policy, ActivationRanges, FakeQuant, GradQuant, LayerQuantInfo,
};
pub use grad::{cross_entropy, loss_target, LossTarget};
pub use train::{train, trainable_params, GradTransform, OptimizerKind, TrainConfig, TrainEvent};
