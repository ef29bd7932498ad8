//! Powers-of-two codebook `{0, ±s, ±s/2, ±s/4, ...}`.
//!
//! Survey §2.1 (predefined codebook `{..., -2^-2, -2^-1, -1, 0, 1, 2^-1, 2^-2, ...}`), Tang &
//! Kwan, "Multilayer feedforward neural networks with single powers-of-two weights", 1993 \[67\];
//! the power-of-two quantizer of DQ (§3.1.2). With `bw` bits: one sign bit and `2^(bw-1) - 1`
//! magnitudes `s · 2^-j` plus zero (for `bw = 1`: `{-s, +s}`); at most 64 magnitudes are used.
//! The scale `s` is `2^ceil(log2 max|x|)` per block (every level a pure power of two, the
//! HMQ-style threshold of Eq. 39) or, with `pow2_scale: false`, `max|x|`. Rounding is to the
//! nearest level in the linear domain (stochastic: unbiased between neighbours).
//! Complexity O(n log L); storage `bw` bits per element + 8 (or 32) bits per block.

use serde::{Deserialize, Serialize};

use super::uniform_pow2::pow2_ceil;
use super::{
    check_scheme, max_abs, parse_config, quantize_on_codebooks, Quantizer, QuantizerEntry,
};
use crate::error::Result;
use crate::layout::TensorLayout;
use crate::rounding::QuantRng;
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "power-of-two",
    kind: QuantKind::PowerOfTwo,
    summary: "codebook {0, ±s·2^-k}: multiplications become shifts",
    reference: "survey §2.1, Table 1; Tang & Kwan 1993 [67]; DQ §3.1.2",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerOfTwoConfig {
    /// Round the per-block scale up to a power of two (default true).
    pub pow2_scale: bool,
}

impl Default for PowerOfTwoConfig {
    fn default() -> Self {
        PowerOfTwoConfig { pow2_scale: true }
    }
}

/// The powers-of-two quantizer.
#[derive(Debug, Clone)]
pub struct PowerOfTwo {
    scheme: QScheme,
    config: PowerOfTwoConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::PowerOfTwo)?;
    let config = parse_config(ENTRY.name, config)?;
    Ok(Box::new(PowerOfTwo { scheme, config }))
}

/// Sorted levels of the powers-of-two codebook with scale `s`.
pub(crate) fn pow2_levels(s: f32, bits: u8) -> Vec<f32> {
    let mags: Vec<f32> = if bits == 1 {
        vec![s]
    } else {
        let n = ((1u64 << (bits - 1)) - 1).min(64) as i32;
        (0..n).map(|j| s * (-j as f32).exp2()).collect()
    };
    let mut levels: Vec<f32> = mags.iter().map(|m| -m).collect();
    if bits > 1 {
        levels.push(0.0);
    }
    levels.extend(mags.iter().rev());
    levels
}

impl Quantizer for PowerOfTwo {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let pow2 = self.config.pow2_scale;
        let bits = self.scheme.bits;
        let mut scales = Vec::new();
        let mut q = quantize_on_codebooks(values, layout, &self.scheme, rng, |block, _| {
            let m = max_abs(block);
            let s = if pow2 {
                pow2_ceil(m)
            } else if m > 0.0 {
                m
            } else {
                1.0
            };
            scales.push(s);
            Ok(pow2_levels(s, bits))
        })?;
        q.codebooks.clear();
        let per_block = if pow2 { 8 } else { FLOAT_PARAM_BITS };
        q.total_bits = q.code_bits + per_block * scales.len() as u64;
        q.scales = scales;
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Granularity;

    #[test]
    fn levels_and_rounding_by_hand() {
        assert_eq!(pow2_levels(1.0, 2), vec![-1.0, 0.0, 1.0]);
        assert_eq!(
            pow2_levels(1.0, 3),
            vec![-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
        );
        // max|x| = 0.7 -> s = 1; 0.7 -> 0.5, -0.3 -> -0.25, 0.05 -> 0, 0.2 -> 0.25.
        let s = QScheme::new(QuantKind::PowerOfTwo, 3, true, Granularity::Tensor);
        let q = PowerOfTwo {
            scheme: s,
            config: PowerOfTwoConfig::default(),
        }
        .quantize(&[0.7, -0.3, 0.05, 0.2], &TensorLayout::flat(4), 0)
        .unwrap();
        assert_eq!(q.values, vec![0.5, -0.25, 0.0, 0.25]);
        assert_eq!(q.scales, vec![1.0]);
    }
}
