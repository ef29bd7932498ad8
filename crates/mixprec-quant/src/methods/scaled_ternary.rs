//! Scaled ternarization (Ternary Weight Networks; TTQ-style two scales when asymmetric).
//!
//! Survey §2.1 (scaled ternary codebook, Table 1 "quantization formulated as an optimization");
//! Li et al., "Ternary weight networks", 2016 \[61\]: threshold `Δ = 0.7 · mean|w|` (the
//! approximate minimiser of `||w - α t||²` for Gaussian weights), `α = mean{|w| : |w| > Δ}`,
//! `q = α · sign(w) · [|w| > Δ]`. With `symmetric: false` the positive and negative sides get
//! their own scales `α_p = mean{w : w > Δ}`, `α_n = mean{-w : w < -Δ}` as in Zhu et al.,
//! "Trained ternary quantization", 2016 \[66\] (here fitted, not trained). Stochastic rounding
//! rounds between the neighbouring levels of `{-α_n, 0, α_p}` without bias.
//! Complexity O(n); storage 2 bits per element + one (symmetric) or two 32-bit scales per block.

use serde::{Deserialize, Serialize};

use super::{check_scheme, mean_abs, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::layout::{Blocks, TensorLayout};
use crate::rounding::{round_to_levels, QuantRng};
use crate::scheme::{QScheme, QuantKind, Rounding};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "scaled-ternary",
    kind: QuantKind::ScaledTernary,
    summary: "ternary weights with threshold 0.7 mean|w| and fitted scale(s) (TWN / TTQ)",
    reference: "survey §2.1, Table 1; Li et al. 2016 [61]; Zhu et al. 2016 [66]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaledTernaryConfig {
    /// `Δ = threshold_factor · mean|w|` (TWN: 0.7).
    pub threshold_factor: f32,
}

impl Default for ScaledTernaryConfig {
    fn default() -> Self {
        ScaledTernaryConfig {
            threshold_factor: 0.7,
        }
    }
}

/// The TWN / TTQ ternarizer.
#[derive(Debug, Clone)]
pub struct ScaledTernary {
    scheme: QScheme,
    config: ScaledTernaryConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::ScaledTernary)?;
    let config: ScaledTernaryConfig = parse_config(ENTRY.name, config)?;
    if !(config.threshold_factor >= 0.0 && config.threshold_factor.is_finite()) {
        return Err(QuantError::Config {
            method: ENTRY.name.into(),
            message: format!(
                "threshold_factor must be finite and >= 0, got {}",
                config.threshold_factor
            ),
        });
    }
    Ok(Box::new(ScaledTernary { scheme, config }))
}

fn mean_of(it: impl Iterator<Item = f32>) -> f32 {
    let (s, n) = it.fold((0.0f64, 0usize), |(s, n), v| (s + v as f64, n + 1));
    if n == 0 {
        0.0
    } else {
        (s / n as f64) as f32
    }
}

impl Quantizer for ScaledTernary {
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
        let blocks = Blocks::new(layout, s.granularity)?;
        let mut scales = Vec::new();
        let out = blocks.map(values, |_, block, out| {
            let delta = self.config.threshold_factor * mean_abs(block);
            let (a_n, a_p) = if s.symmetric {
                let a = mean_of(block.iter().map(|v| v.abs()).filter(|&v| v > delta));
                scales.push(a);
                (a, a)
            } else {
                let a_p = mean_of(block.iter().copied().filter(|&v| v > delta));
                let a_n = mean_of(block.iter().map(|v| -v).filter(|&v| v > delta));
                scales.extend([a_n, a_p]);
                (a_n, a_p)
            };
            let levels = [-a_n, 0.0, a_p];
            for (o, &x) in out.iter_mut().zip(block) {
                *o = match s.rounding {
                    Rounding::Nearest if x > delta => a_p,
                    Rounding::Nearest if x < -delta => -a_n,
                    Rounding::Nearest => 0.0,
                    Rounding::Stochastic => levels[round_to_levels(x, &levels, s.rounding, rng)],
                };
            }
            Ok(())
        })?;
        let code_bits = 2 * values.len() as u64;
        Ok(QuantizedTensor {
            values: out,
            scheme: s,
            total_bits: code_bits + FLOAT_PARAM_BITS * scales.len() as u64,
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

    #[test]
    fn twn_by_hand() {
        // mean|w| = 7.8 / 6 = 1.3, Δ = 0.91; above Δ: 1, -2, 4.
        let x = [1.0, -2.0, 0.1, 0.5, -0.2, 4.0];
        let sym = QScheme::new(QuantKind::ScaledTernary, 2, true, Granularity::Tensor);
        let q = ScaledTernary {
            scheme: sym,
            config: ScaledTernaryConfig::default(),
        }
        .quantize(&x, &TensorLayout::flat(6), 0)
        .unwrap();
        let a = 7.0 / 3.0;
        assert_eq!(q.values, vec![a, -a, 0.0, 0.0, 0.0, a]);
        // Asymmetric: α_p = (1 + 4) / 2 = 2.5, α_n = 2.
        let q = ScaledTernary {
            scheme: QScheme {
                symmetric: false,
                ..sym
            },
            config: ScaledTernaryConfig::default(),
        }
        .quantize(&x, &TensorLayout::flat(6), 0)
        .unwrap();
        assert_eq!(q.scales, vec![2.0, 2.5]);
        assert_eq!(q.values, vec![2.5, -2.0, 0.0, 0.0, 0.0, 2.5]);
    }
}
