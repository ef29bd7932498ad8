//! mixprec-engine: the integer-only inference engine of mixprec.
//!
//! Survey §3.3 (HAWQ-V3: Dyadic Neural Network Quantization, Yao et al., ICML 2021), Eq. 24–25,
//! and §4.4 (deployment). A float graph plus a mixed-precision [`mixprec_quant::Policy`] and
//! calibrated activation ranges is lowered ([`lower`], [`lower_with_data`]) into a
//! [`QuantModel`]: batch norm and constant bias adds folded into the layers, symmetric 2–8 bit
//! packed weights, `u8` activations with per-tensor scale and zero point, `i32` accumulation,
//! dyadic requantization, fused ReLU / Clip clamps, integer pooling and residual additions.
//! [`QuantModel::run`] executes it: on AVX-512 VNNI CPUs with the fast executor ([`fast`]:
//! channels-last `u8` codes, implicit-GEMM `vpdpbusd` convolutions with the requantization fused
//! into the epilogue, buffers reused across runs), elsewhere step by step on the packed kernels
//! of [`kernels`] (AVX2 when the CPU has it); [`QuantModel::simulate`] is an independent `f64`
//! reference that all of them must agree with bit for bit;
//! [`QuantModel::save`] / [`QuantModel::load`] store it in the mixprec model file
//! ([`model_file`]).
//!
//! ```no_run
//! use mixprec_engine::{lower_with_data, ActivationRanges, QuantModel};
//!
//! /// Lowers, runs one sample, saves and reloads.
//! fn deploy(
//!     graph: &mixprec_graph::Graph,
//!     policy: &mixprec_quant::Policy,
//!     ranges: &ActivationRanges, // per layer, e.g. from `mixprec_exec::calibrate`
//!     calib: &[f32],             // calibration images, batch-major
//!     n: usize,
//! ) -> mixprec_engine::Result<Vec<f32>> {
//!     let model = lower_with_data(graph, policy, ranges, calib, n)?;
//!     let per_sample: usize = model.input_shape().iter().product();
//!     model.save("model.mpqm")?;
//!     let model = QuantModel::load("model.mpqm")?;
//!     model.run(&calib[..per_sample], 1)
//! }
//! ```

pub mod error;
pub mod fast;
pub mod kernels;
pub mod lower;
pub mod model;
pub mod model_file;
pub mod profile;
pub mod reference;
pub mod simulate;

pub use error::{EngineError, Result};
pub use kernels::Backend;
pub use lower::{lower, lower_with_data, lower_with_ranges, ActivationRanges};
pub use model::{ActParams, InputOp, InputOpKind, QuantModel, Step, TensorInfo, Trace};
