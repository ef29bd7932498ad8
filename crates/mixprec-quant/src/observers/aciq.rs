//! ACIQ: analytical clipping for integer quantization.
//!
//! Banner, Nahshan & Soudry, "Post training 4-bit quantization of convolutional networks for
//! rapid-deployment", NeurIPS 2019 (arXiv:1810.05723, "ACIQ"); survey §2.4 (calibration
//! \[84\]–\[86\]). Assuming a Laplace(μ, b) or Gaussian(μ, σ) distribution, the expected squared
//! error of clipping to `[μ - α, μ + α]` and rounding onto `2^M` levels is
//! * Laplace: `E(α) ≈ 2 b² e^{-α/b} + α² / (3 · 4^M)`;
//! * Gaussian: `E(α) ≈ (α² + σ²)(1 - erf(α / (√2 σ))) - √(2/π) α σ e^{-α²/(2σ²)} + α² / (3 · 4^M)`.
//!
//! `α*` is found by golden-section search on the closed form and scales linearly with `b` or
//! `σ`; the published optima are `α*/b = 2.83, 3.89, 5.03, 6.2, 7.41, 8.64, 9.89` (Laplace) and
//! `α*/σ = 1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92` (Gaussian) for `M = 2..8`.
//! `b = mean|x - μ|` (per batch, weighted by batch size), `σ` from running moments.
//! O(n) per batch, O(1) per range query.

use serde::{Deserialize, Serialize};

use super::{check_batch, check_bits, parse_config, Extremes, Observer, ObserverEntry};
use crate::error::Result;

/// Registry entry.
pub const ENTRY: ObserverEntry = ObserverEntry {
    name: "aciq",
    summary: "analytical Laplace/Gaussian clipping that minimises the expected MSE for b bits",
    reference: "survey §2.4; Banner et al. 2019 (ACIQ)",
    build: |config| Ok(Box::new(Aciq::new(parse_config("aciq", config)?))),
};

/// The assumed distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Laplace(μ, b).
    #[default]
    Laplace,
    /// Gaussian(μ, σ).
    Gaussian,
}

/// Configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AciqConfig {
    /// Distribution assumed for the activations.
    pub distribution: Distribution,
}

/// The ACIQ observer.
#[derive(Debug, Clone)]
pub struct Aciq {
    distribution: Distribution,
    extremes: Extremes,
    n: f64,
    sum: f64,
    sum_sq: f64,
    sum_abs_dev: f64,
}

impl Aciq {
    /// A new observer.
    pub fn new(config: AciqConfig) -> Self {
        Aciq {
            distribution: config.distribution,
            extremes: Extremes::default(),
            n: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            sum_abs_dev: 0.0,
        }
    }
}

/// Complementary error function (Numerical Recipes `erfcc`, fractional error < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

fn golden_min(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..200 {
        let (c, d) = (hi - g * (hi - lo), lo + g * (hi - lo));
        if f(c) < f(d) {
            hi = d;
        } else {
            lo = c;
        }
    }
    0.5 * (lo + hi)
}

/// Optimal clip `α*` for `bits`-bit quantization of Laplace data with scale `b`.
pub fn laplace_clip(bits: u8, b: f64) -> f64 {
    let q = 3.0 * 4f64.powi(bits as i32);
    b * golden_min(|a| 2.0 * (-a).exp() + a * a / q, 0.0, 64.0)
}

/// Optimal clip `α*` for `bits`-bit quantization of Gaussian data with deviation `sigma`.
pub fn gaussian_clip(bits: u8, sigma: f64) -> f64 {
    let q = 3.0 * 4f64.powi(bits as i32);
    let err = |a: f64| {
        (a * a + 1.0) * erfc(a / 2f64.sqrt())
            - (2.0 / std::f64::consts::PI).sqrt() * a * (-a * a / 2.0).exp()
            + a * a / q
    };
    sigma * golden_min(err, 0.0, 16.0)
}

impl Observer for Aciq {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn observe(&mut self, values: &[f32]) -> Result<()> {
        check_batch(values)?;
        let n = values.len() as f64;
        let s: f64 = values.iter().map(|&v| v as f64).sum();
        let mu = s / n;
        self.sum_abs_dev += values.iter().map(|&v| (v as f64 - mu).abs()).sum::<f64>();
        self.sum += s;
        self.sum_sq += values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        self.n += n;
        self.extremes.update(values);
        Ok(())
    }

    fn range(&self, bits: u8, symmetric: bool) -> Result<(f32, f32)> {
        check_bits(ENTRY.name, bits)?;
        let e = &self.extremes;
        e.require(ENTRY.name)?;
        let mu = self.sum / self.n;
        let alpha = match self.distribution {
            Distribution::Laplace => laplace_clip(bits, self.sum_abs_dev / self.n),
            Distribution::Gaussian => {
                let var = (self.sum_sq / self.n - mu * mu).max(0.0);
                gaussian_clip(bits, var.sqrt())
            }
        };
        Ok(if symmetric {
            let t = ((mu.abs() + alpha) as f32).min(e.max_abs());
            (-t, t)
        } else {
            (
                e.min.max((mu - alpha) as f32),
                e.max.min((mu + alpha) as f32),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_constants() {
        let laplace = [2.83, 3.89, 5.03, 6.2, 7.41, 8.64, 9.89];
        let gauss = [1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92];
        for (m, (l, g)) in (2u8..=8).zip(laplace.iter().zip(gauss)) {
            let (al, ag) = (laplace_clip(m, 1.0), gaussian_clip(m, 1.0));
            assert!((al - l).abs() / l < 0.005, "laplace M={m}: {al} vs {l}");
            assert!((ag - g).abs() / g < 0.005, "gaussian M={m}: {ag} vs {g}");
        }
        // Linear in the scale: b = 2 doubles α*.
        assert!((laplace_clip(8, 2.0) - 2.0 * laplace_clip(8, 1.0)).abs() < 1e-9);
    }

    #[test]
    fn erfc_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
    }
}
