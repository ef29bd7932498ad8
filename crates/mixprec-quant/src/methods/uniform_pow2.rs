//! Uniform quantization with a power-of-two threshold, as in HMQ's hardware-friendly block.
//!
//! Survey §3.4.6, Eq. 39: thresholds `T = 2^k` with `k = min{k : 2^k >= max|I|}`; the grid is
//! uniform with step `S = T / 2^(bw-1)` (signed, codes `[-2^(bw-1), 2^(bw-1) - 1]`) when
//! `symmetric`, or `S = T / 2^bw` (unsigned, codes `[0, 2^bw - 1]`, negatives clip to 0, for
//! post-ReLU activations) otherwise. Scales are powers of two, so requantization is a shift.
//! Original paper: Habi et al., "HMQ: Hardware Friendly Mixed Precision Quantization Block for
//! CNNs", ECCV 2020 \[87\]. Complexity O(n); storage `bw` bits per element + an 8-bit exponent
//! per block.

use super::uniform::{quantize_uniform, UniformConfig, UniformParams};
use super::{check_scheme, parse_config, Quantizer, QuantizerEntry};
use crate::error::Result;
use crate::layout::TensorLayout;
use crate::rounding::QuantRng;
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::QuantizedTensor;

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "uniform-pow2",
    kind: QuantKind::UniformPow2,
    summary: "uniform grid whose threshold (and step) is a power of two (HMQ)",
    reference: "survey §3.4.6 Eq. 39; Habi et al. 2020 [87]",
    build,
};

/// Bits charged for one stored power-of-two exponent.
const EXPONENT_BITS: u64 = 8;

/// The smallest power of two `>= m` (1 for `m = 0`).
pub(crate) fn pow2_ceil(m: f32) -> f32 {
    if m > 0.0 {
        m.log2().ceil().exp2()
    } else {
        1.0
    }
}

/// Power-of-two parameters for one `(min, max)` range per block (bits >= 2 assumed valid).
pub(crate) fn params_from_ranges(
    ranges: &[(f32, f32)],
    bits: u8,
    symmetric: bool,
) -> UniformParams {
    let (qmin, qmax, div) = if symmetric {
        let h = 1i32 << (bits - 1);
        (-h, h - 1, h as f32)
    } else {
        (0, (1i32 << bits) - 1, (1u32 << bits) as f32)
    };
    let scale = ranges
        .iter()
        .map(|&(lo, hi)| {
            let m = if symmetric {
                lo.abs().max(hi.abs())
            } else {
                hi.max(0.0)
            };
            pow2_ceil(m) / div
        })
        .collect();
    UniformParams {
        scale,
        zero_point: vec![0; ranges.len()],
        qmin,
        qmax,
        axis: None,
        group_size: None,
    }
}

/// The power-of-two-threshold uniform quantizer.
#[derive(Debug, Clone)]
pub struct UniformPow2 {
    scheme: QScheme,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::UniformPow2)?;
    let _: UniformConfig = parse_config(ENTRY.name, config)?;
    Ok(Box::new(UniformPow2 { scheme }))
}

impl Quantizer for UniformPow2 {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        quantize_uniform(values, layout, &self.scheme, rng, EXPONENT_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Granularity;

    #[test]
    fn threshold_rounds_up_to_power_of_two() {
        // max|x| = 0.7 -> T = 1, 3 bits signed: S = 1/4, codes [-4, 3].
        let x = [0.7, -0.7, 0.1, 0.3];
        let s = QScheme::new(QuantKind::UniformPow2, 3, true, Granularity::Tensor);
        let q = UniformPow2 { scheme: s }
            .quantize(&x, &TensorLayout::flat(4), 0)
            .unwrap();
        assert_eq!(q.scales, vec![0.25]);
        assert_eq!(q.values, vec![0.75, -0.75, 0.0, 0.25]);
        // Unsigned: max 3 -> T = 4, 2 bits: S = 1, levels {0, 1, 2, 3}; negatives clip to 0.
        let u = QScheme::new(QuantKind::UniformPow2, 2, false, Granularity::Tensor);
        let q = UniformPow2 { scheme: u }
            .quantize(&[3.0, -1.0, 1.4], &TensorLayout::flat(3), 0)
            .unwrap();
        assert_eq!(q.values, vec![3.0, 0.0, 1.0]);
    }
}
