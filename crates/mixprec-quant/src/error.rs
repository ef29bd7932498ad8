//! The one error type of mixprec-quant.

use std::path::PathBuf;

/// Everything that can go wrong while building a scheme, quantizing a tensor, observing
/// activations or loading a policy. Variants name what was wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A bit width outside 1..=16, or one the quantizer kind cannot use.
    #[error("invalid bit width {bits} for {kind}: {reason}")]
    BadBits {
        /// The rejected bit width.
        bits: u8,
        /// Kebab-case name of the quantizer kind.
        kind: String,
        /// Which widths are allowed.
        reason: String,
    },
    /// A tensor or batch with no elements.
    #[error("empty tensor: {what} has no elements to quantize or observe")]
    EmptyTensor {
        /// What was empty (e.g. "values", "observer batch").
        what: String,
    },
    /// A NaN or infinite input value.
    #[error("non-finite value {value} at index {index} of {what}; clean the tensor (NaN/Inf cannot be quantized)")]
    NonFinite {
        /// What held the value.
        what: String,
        /// Flat index of the first bad element.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// The number of values disagrees with the layout's shape.
    #[error("shape {shape:?} has {expected} elements but {got} values were given")]
    ShapeMismatch {
        /// The layout's shape.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Length of the value slice.
        got: usize,
    },
    /// The channel axis does not exist in the shape.
    #[error("channel axis {axis} is out of range for shape {shape:?}")]
    BadAxis {
        /// The requested axis.
        axis: usize,
        /// The layout's shape.
        shape: Vec<usize>,
    },
    /// Per-group quantization with a group size that does not split each channel evenly.
    #[error("group size {group} does not divide the {len} elements of each channel; pick a divisor of {len}")]
    GroupSize {
        /// Requested group size.
        group: usize,
        /// Elements per channel.
        len: usize,
    },
    /// A combination the quantizer kind does not implement.
    #[error("{kind} does not support {what}")]
    Unsupported {
        /// Kebab-case name of the quantizer kind.
        kind: String,
        /// The unsupported feature and, where possible, the alternative.
        what: String,
    },
    /// A method configuration that does not parse or has out-of-range fields.
    #[error("invalid config for {method}: {message}")]
    Config {
        /// Name of the method or observer.
        method: String,
        /// What is wrong.
        message: String,
    },
    /// A text form of a scheme (e.g. `w4-uniform-sym-channel`) that does not parse.
    #[error("cannot parse quantization scheme '{text}': {reason}")]
    ParseScheme {
        /// The text given.
        text: String,
        /// Why it failed.
        reason: String,
    },
    /// An observer asked for a range before it saw any value.
    #[error("observer {observer} has seen no values; call observe() with calibration data first")]
    NoObservations {
        /// Name of the observer.
        observer: String,
    },
    /// A policy names a layer the model does not have.
    #[error("policy names unknown layer '{layer}' ({known} layers known{hint})")]
    UnknownLayer {
        /// The unknown layer name.
        layer: String,
        /// How many layers the model has.
        known: usize,
        /// A suggestion, e.g. ", e.g. 'conv1'".
        hint: String,
    },
    /// A policy entry holds an invalid scheme.
    #[error("policy layer '{layer}' {role} scheme: {source}")]
    LayerScheme {
        /// The layer name.
        layer: String,
        /// "weight" or "activation".
        role: &'static str,
        /// The scheme error.
        source: Box<QuantError>,
    },
    /// A policy file with a version this build does not read.
    #[error("policy version {found} is not supported (this build reads version {supported})")]
    PolicyVersion {
        /// Version in the file.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON document that does not parse into the expected type.
    #[error("{what}: invalid JSON: {message}")]
    Json {
        /// The file or document.
        what: String,
        /// serde_json's message (with line and column).
        message: String,
    },
    /// Calibration inputs or other auxiliary arguments with the wrong size.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result alias of this crate.
pub type Result<T, E = QuantError> = std::result::Result<T, E>;
