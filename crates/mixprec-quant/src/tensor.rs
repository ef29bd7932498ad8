//! The result of quantizing one tensor, with what model-size accounting needs.

use serde::Serialize;

use crate::scheme::QScheme;

/// Bits charged for each stored floating-point parameter (scale, centroid, ...).
pub const FLOAT_PARAM_BITS: u64 = 32;

/// A quantized tensor: the dequantized values plus the stored parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantizedTensor {
    /// Dequantized values in the input's layout.
    pub values: Vec<f32>,
    /// The scheme that produced it.
    pub scheme: QScheme,
    /// Scale per block (step size, binary/ternary alpha, ...); empty when the method has none.
    pub scales: Vec<f32>,
    /// Integer zero point per block (asymmetric uniform); empty otherwise.
    pub zero_points: Vec<i32>,
    /// Codebooks (per block or per subspace / stage), centroids flattened row-major.
    pub codebooks: Vec<Vec<f32>>,
    /// Bits of the per-element codes alone.
    pub code_bits: u64,
    /// All storage bits: codes plus scales, zero points, codebooks and other metadata.
    pub total_bits: u64,
}

impl QuantizedTensor {
    /// Average storage bits per element, metadata included.
    pub fn bits_per_element(&self) -> f64 {
        self.total_bits as f64 / self.values.len().max(1) as f64
    }

    /// Mean squared error against the original values.
    pub fn mse(&self, original: &[f32]) -> f64 {
        mse(original, &self.values)
    }
}

/// Mean squared error between two equally long slices (0 for empty ones).
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = (x - y) as f64;
            d * d
        })
        .sum::<f64>()
        / a.len() as f64
}
