//! mixprec-quant: the quantizers of survey Table 1 (§2.1–2.4) and calibration observers, on plain
//! `&[f32]` slices with a [`TensorLayout`].
//!
//! * [`QScheme`] / [`Policy`]: what each tensor is quantized with (DESIGN §5);
//! * [`Quantizer`] and the registry [`QUANTIZERS`] (one file per technique under `methods/`);
//!   [`quantize`] / [`fake_quantize`] dispatch a scheme through it;
//! * [`UniformParams`]: scale / zero point per channel for straight-through fake-quant and
//!   integer kernels;
//! * [`Observer`] and the registry [`OBSERVERS`]: activation clip ranges.

pub mod error;
mod kmeans;
pub mod layout;
pub mod methods;
pub mod observers;
pub mod policy;
pub mod rounding;
pub mod scheme;
pub mod tensor;

pub use error::{QuantError, Result};
pub use layout::TensorLayout;
pub use methods::uniform::{code_range, UniformParams};
pub use methods::{
    build_quantizer, fake_quantize, quantize, quantizer_entry, Quantizer, QuantizerEntry,
    QUANTIZERS,
};
pub use observers::{build_observer, Observer, ObserverEntry, OBSERVERS};
pub use policy::{LayerPolicy, Policy, POLICY_VERSION};
pub use rounding::{rng_from_seed, QuantRng};
pub use scheme::{Granularity, QScheme, QuantKind, Rounding, MAX_BITS};
pub use tensor::{mse, QuantizedTensor, FLOAT_PARAM_BITS};
