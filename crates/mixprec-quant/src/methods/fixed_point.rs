//! Fixed-point rounding `[i, f]` with saturation, and k-bit integer rounding.
//!
//! Survey §2.1, Eq. 2 (Gupta et al., "Deep learning with limited numerical precision", ICML 2015
//! \[55\]): with `i` integer bits (sign included) and `f = bw - i` fractional bits the grid step is
//! `eps = 2^-f`; a value rounds down to `floor_eps(r)` when `r <= floor_eps(r) + eps/2` and up
//! otherwise (ties go down, as Eq. 2 is written), or stochastically (Gupta et al.'s stochastic
//! rounding, Eq. 7). Values outside the representable range saturate to its bounds:
//! `[-2^(i-1), 2^(i-1) - eps]` (two's complement, `symmetric: false`) or
//! `[-(2^(i-1) - eps), 2^(i-1) - eps]` (`symmetric: true`).
//!
//! `integer_bits: 1` with `symmetric: true` is WAGE's k-bit integer rounding
//! `Q(x, k) = clip(σ·round(x/σ), -1 + σ, 1 - σ)`, `σ = 2^(1-k)` (Wu et al. 2018 \[56\]).
//! Without `integer_bits` the split is chosen per block from `max|x|` (dynamic fixed point:
//! `i = ceil(log2 max|x|) + 1`, which may be negative, so `f` may exceed `bw`).
//!
//! Complexity O(n). Storage: `bw` bits per element + an 8-bit exponent per block.

use serde::{Deserialize, Serialize};

use super::{check_scheme, max_abs, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::layout::{Blocks, TensorLayout};
use crate::rounding::{round_scaled, QuantRng};
use crate::scheme::{QScheme, QuantKind, Rounding};
use crate::tensor::QuantizedTensor;

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "fixed-point",
    kind: QuantKind::FixedPoint,
    summary: "fixed-point [i, f] rounding with saturation (Eq. 2); WAGE k-bit integers with i = 1",
    reference: "survey §2.1 Eq. 2; Gupta et al. 2015 [55]; Wu et al. 2018 [56]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedPointConfig {
    /// Integer bits `i` (sign included); `None` picks them per block from `max|x|`.
    pub integer_bits: Option<i32>,
}

/// The fixed-point quantizer.
#[derive(Debug, Clone)]
pub struct FixedPoint {
    scheme: QScheme,
    config: FixedPointConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::FixedPoint)?;
    let config: FixedPointConfig = parse_config(ENTRY.name, config)?;
    if let Some(i) = config.integer_bits {
        if !(-64..=scheme.bits as i32).contains(&i) {
            return Err(QuantError::Config {
                method: ENTRY.name.into(),
                message: format!("integer_bits {i} must lie in -64..={}", scheme.bits),
            });
        }
    }
    Ok(Box::new(FixedPoint { scheme, config }))
}

/// Rounds `r / eps` per Eq. 2: down on ties.
fn round_eq2(x: f32) -> f32 {
    let f = x.floor();
    if x - f > 0.5 {
        f + 1.0
    } else {
        f
    }
}

impl Quantizer for FixedPoint {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let s = self.scheme;
        let bits = s.bits as i32;
        let blocks = Blocks::new(layout, s.granularity)?;
        let mut scales = Vec::with_capacity(blocks.count);
        let out = blocks.map(values, |_, block, out| {
            let int_bits = self.config.integer_bits.unwrap_or_else(|| {
                let m = max_abs(block);
                if m > 0.0 {
                    m.log2().ceil() as i32 + 1
                } else {
                    1
                }
            });
            // Kept normal so that `x / eps` stays finite for denormal blocks.
            let eps = ((int_bits - bits) as f32).exp2().max(f32::MIN_POSITIVE);
            // Codes: two's complement [-2^(bw-1), 2^(bw-1) - 1], symmetric drops the lowest.
            let qmax = ((1i64 << (bits - 1)) - 1) as f32;
            let qmin = if s.symmetric { -qmax } else { -qmax - 1.0 };
            for (o, &x) in out.iter_mut().zip(block) {
                let q = match s.rounding {
                    Rounding::Nearest => round_eq2(x / eps),
                    Rounding::Stochastic => round_scaled(x / eps, s.rounding, rng),
                };
                *o = q.clamp(qmin, qmax) * eps;
            }
            scales.push(eps);
            Ok(())
        })?;
        let code_bits = s.bits as u64 * values.len() as u64;
        Ok(QuantizedTensor {
            values: out,
            scheme: s,
            total_bits: code_bits + 8 * scales.len() as u64,
            scales,
            zero_points: Vec::new(),
            codebooks: Vec::new(),
            code_bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Granularity;

    fn run(x: &[f32], bits: u8, symmetric: bool, int_bits: Option<i32>) -> QuantizedTensor {
        let scheme = QScheme::new(QuantKind::FixedPoint, bits, symmetric, Granularity::Tensor);
        let q = FixedPoint {
            scheme,
            config: FixedPointConfig {
                integer_bits: int_bits,
            },
        };
        q.quantize(x, &TensorLayout::flat(x.len()), 0).unwrap()
    }

    #[test]
    fn eq2_by_hand() {
        // [i, f] = [2, 2]: eps = 0.25, range [-2, 1.75]; ties (0.375, -0.125) round down.
        let x = [0.3, 0.375, 0.376, 5.0, -3.0, -0.125];
        let q = run(&x, 4, false, Some(2));
        assert_eq!(q.values, vec![0.25, 0.25, 0.5, 1.75, -2.0, -0.25]);
        assert_eq!(q.scales, vec![0.25]);
        let q = run(&x, 4, true, Some(2));
        assert_eq!(q.values[4], -1.75);
    }

    #[test]
    fn wage_integer_and_dynamic_split() {
        // WAGE k = 3: σ = 1/4, clip to [-0.75, 0.75].
        let q = run(&[0.9, -0.9, 0.3], 3, true, Some(1));
        assert_eq!(q.values, vec![0.75, -0.75, 0.25]);
        // Dynamic: max|x| = 0.9 -> i = 1, f = 3, eps = 1/8.
        let q = run(&[0.3, -0.9], 4, false, None);
        assert_eq!(q.values, vec![0.25, -0.875]);
    }
}
