//! Per-parameter minimum bit widths under an error bound.
//!
//! Survey §2.1 Eq. 4: `min Σ_k N_min(w_k)` subject to `loss(w) <= U.B.`; Khoram & Li, "Adaptive
//! quantization of neural networks", ICLR 2018 \[63\]. The loss is modelled by the squared
//! quantization error (a second-order proxy with unit curvature), so the problem becomes
//! `min Σ_k n_k  s.t.  Σ_k (w_k - q_{n_k}(w_k))² <= U.B.` with `n_k ∈ {0, 2, 3, ..., bw}`:
//! `q_0 = 0` (pruned) and `q_n` the symmetric uniform grid of the block with `2^(n-1) - 1`
//! positive levels up to `max|w|`. It is solved by Lagrangian relaxation: for a multiplier λ
//! every weight independently picks `argmin_n n + λ e_k(n)`; λ is bisected (in log space) to the
//! smallest value that meets the bound. The bound is `max_mse · n` when given, else
//! `error_factor` times the error of quantizing every weight at `bw` bits.
//! Complexity O(60 · n · bw); storage `Σ n_k` bits + a `ceil(log2 bw)`-bit width tag per
//! element + a 32-bit scale per block.

use serde::{Deserialize, Serialize};

use super::{check_scheme, max_abs, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::layout::{Blocks, TensorLayout};
use crate::rounding::QuantRng;
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "min-bits",
    kind: QuantKind::MinBits,
    summary: "per-parameter minimum bit widths under a quantization-error bound (Eq. 4)",
    reference: "survey §2.1 Eq. 4; Khoram & Li 2018 [63]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinBitsConfig {
    /// Bound = `error_factor` × (error with every weight at the full bit width); >= 1.
    pub error_factor: f64,
    /// Absolute bound on the mean squared error; overrides `error_factor` when set.
    pub max_mse: Option<f64>,
}

impl Default for MinBitsConfig {
    fn default() -> Self {
        MinBitsConfig {
            error_factor: 2.0,
            max_mse: None,
        }
    }
}

/// The minimum-bit quantizer.
#[derive(Debug, Clone)]
pub struct MinBits {
    scheme: QScheme,
    config: MinBitsConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::MinBits)?;
    let config: MinBitsConfig = parse_config(ENTRY.name, config)?;
    let bad_mse = config.max_mse.is_some_and(|m| !(m >= 0.0 && m.is_finite()));
    if !(config.error_factor >= 1.0 && config.error_factor.is_finite()) || bad_mse {
        return Err(QuantError::Config {
            method: ENTRY.name.into(),
            message: "error_factor must be finite and >= 1, max_mse finite and >= 0".into(),
        });
    }
    Ok(Box::new(MinBits { scheme, config }))
}

/// Value of `x` on the `n`-bit symmetric grid reaching `m` (`n = 0`: 0).
fn grid(x: f32, n: u8, m: f32) -> f32 {
    if n == 0 || m == 0.0 {
        return 0.0;
    }
    let qmax = ((1u32 << (n - 1)) - 1) as f32;
    let s = m / qmax;
    (x / s).round_ties_even().clamp(-qmax, qmax) * s
}

impl Quantizer for MinBits {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        _rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let bits = self.scheme.bits;
        let widths: Vec<u8> = std::iter::once(0).chain(2..=bits).collect();
        let blocks = Blocks::new(layout, self.scheme.granularity)?;
        // Per element (channel-major): the block's max and the error of each width.
        let data = blocks.channel_major(values);
        let scales: Vec<f32> = data.chunks_exact(blocks.len).map(max_abs).collect();
        let m_of = |i: usize| scales[i / blocks.len];
        let errs: Vec<Vec<f64>> = data
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                widths
                    .iter()
                    .map(|&n| ((x - grid(x, n, m_of(i))) as f64).powi(2))
                    .collect()
            })
            .collect();
        let pick = |lambda: f64, e: &[f64]| {
            (0..widths.len())
                .min_by(|&a, &b| {
                    let ca = widths[a] as f64 + lambda * e[a];
                    let cb = widths[b] as f64 + lambda * e[b];
                    ca.total_cmp(&cb)
                })
                .unwrap_or(widths.len() - 1)
        };
        let total = |lambda: f64| errs.iter().map(|e| e[pick(lambda, e)]).sum::<f64>();
        let full: f64 = errs.iter().map(|e| e[widths.len() - 1]).sum();
        let bound = match self.config.max_mse {
            Some(m) => (m * data.len() as f64).max(full),
            None => full * self.config.error_factor,
        };
        // Bisection on log10 λ: total(λ) does not increase with λ; at λ = 1e30 every weight
        // takes its smallest-error width, whose total is <= `full` <= bound.
        let (mut lo, mut hi) = (-30.0f64, 30.0f64);
        if total(10f64.powf(lo)) > bound {
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if total(10f64.powf(mid)) <= bound {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
        } else {
            hi = lo;
        }
        let lambda = 10f64.powf(hi);
        let mut code_bits = 0u64;
        let recon: Vec<f32> = data
            .iter()
            .zip(&errs)
            .enumerate()
            .map(|(i, (&x, e))| {
                let n = widths[pick(lambda, e)];
                code_bits += n as u64;
                grid(x, n, m_of(i))
            })
            .collect();
        let tag_bits = (usize::BITS - (widths.len() - 1).leading_zeros()) as u64;
        let total_bits =
            code_bits + tag_bits * values.len() as u64 + FLOAT_PARAM_BITS * scales.len() as u64;
        Ok(QuantizedTensor {
            values: blocks.restore_order(&recon),
            scheme: self.scheme,
            scales,
            zero_points: Vec::new(),
            codebooks: Vec::new(),
            code_bits,
            total_bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Granularity;

    #[test]
    fn widths_by_hand() {
        // bw = 3, bound = error at 3 bits (factor 1). Grids with m = 1: n=2 {0, ±1},
        // n=3 {0, ±1/3, ±2/3, ±1}. 1 and -1 are exact at 2 bits, 0 at 0 bits; 0.5 needs 3 bits
        // (error (1/6)² = the whole budget; 2 or 0 bits would cost 0.25).
        let s = QScheme::new(QuantKind::MinBits, 3, true, Granularity::Tensor);
        let q = MinBits {
            scheme: s,
            config: MinBitsConfig {
                error_factor: 1.0,
                max_mse: None,
            },
        }
        .quantize(&[1.0, 0.0, 0.5, -1.0], &TensorLayout::flat(4), 0)
        .unwrap();
        assert_eq!(q.values, vec![1.0, 0.0, 2.0 / 3.0, -1.0]);
        assert_eq!(q.code_bits, 2 + 3 + 2); // 0 bits for the pruned 0.0
                                            // Widths {0, 2, 3}: 2-bit tags.
        assert_eq!(q.total_bits, 7 + 2 * 4 + 32);
    }
}
