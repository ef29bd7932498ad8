//! `opq` — One-shot Pruning-Quantization (survey §3.3.1, Eq. 27–31; Hu et al., "OPQ:
//! Compressing Deep Neural Networks with One-shot Pruning-Quantization", AAAI 2021).
//!
//! Pruning (Eq. 27–29): minimising the total pruning error for a target pruning rate gives one
//! shared symmetric range `b_j* = √λ` for all layers (Eq. 28); the Lagrange multiplier `λ` is
//! found by Newton–Raphson (bracketed, with bisection fallback) on
//! `Σ_j N_j F_j(√λ) = rate · Σ_j N_j`, where `F_j(τ) = ∫_{−τ}^{τ} p_j` is the weight mass of
//! layer `j` inside `[−τ, τ]` (Eq. 29) under a zero-mean Gaussian or Laplace model with the
//! layer's standard deviation (`extra.weight_std`). The pruning ratio of layer `j` is `F_j(√λ)`.
//!
//! Quantization (Eq. 30–31): one quantization step shared by all layers,
//! `Δ = Σ_j N_unpruned_j α_j / (2^{B−1} N_unpruned)`, with `α_j` the layer's largest absolute
//! weight (`extra.weight_max_abs`; Eq. 31 uses per-channel maxima, we use the per-layer one),
//! so layer `j` needs `⌈log2(α_j / Δ) + 1⌉` bits to cover `[−α_j, α_j]`. OPQ quantizes weights
//! only: the activation option is the lowest-sensitivity one with those weight bits. With
//! `target_bits` (B) unset, the largest `B` whose allocation meets every budget is found by
//! bisection. Costs are those of the tables (pruning is reported, not subtracted).
//! Complexity: `O(L · I)` for `I` Newton / bisection steps.

use serde::{Deserialize, Serialize};

use super::{
    bisect_knob, items_for_targets, no_setting, parse_config, Allocator, AllocatorEntry, SolveCtx,
};
use crate::error::{config_err, AllocError, Result};
use crate::problem::{Allocation, AllocationProblem};
use crate::reduce::Reduced;

/// Weight distribution model used for Eq. 29.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightDistribution {
    /// Zero-mean Gaussian.
    #[default]
    Gaussian,
    /// Zero-mean Laplace.
    Laplace,
}

/// Configuration of [`Opq`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpqConfig {
    /// Target fraction of all weights pruned, in [0, 1).
    pub prune_rate: f64,
    /// Target bits `B` of Eq. 31; absent = largest that fits the budgets.
    pub target_bits: Option<f64>,
    /// Weight distribution model.
    pub distribution: WeightDistribution,
}

/// OPQ allocator (pruning ratios + bits).
#[derive(Debug, Clone, Default)]
pub struct Opq {
    /// Its configuration.
    pub config: OpqConfig,
}

/// Error function (W. J. Cody's rational approximations via erfc; |error| < 1.2e-7).
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

impl WeightDistribution {
    /// Mass inside `[−τ, τ]` and its derivative in `τ`, for standard deviation `s`.
    fn mass(self, tau: f64, s: f64) -> (f64, f64) {
        match self {
            WeightDistribution::Gaussian => {
                let f = erf(tau / (s * std::f64::consts::SQRT_2));
                let pdf = (-(tau * tau) / (2.0 * s * s)).exp()
                    / (s * (2.0 * std::f64::consts::PI).sqrt());
                (f, 2.0 * pdf)
            }
            WeightDistribution::Laplace => {
                let b = s / std::f64::consts::SQRT_2;
                let e = (-tau / b).exp();
                (1.0 - e, e / b)
            }
        }
    }
}

impl Opq {
    /// Shared pruning range `τ = √λ` (Eq. 28) and per-layer pruning ratios (Eq. 29).
    pub fn pruning(&self, p: &AllocationProblem) -> Result<(f64, Vec<f64>)> {
        let rate = self.config.prune_rate;
        if !(0.0..1.0).contains(&rate) {
            return Err(config_err(
                "opq",
                format!("prune_rate {rate} must be in [0, 1)"),
            ));
        }
        if rate == 0.0 {
            return Ok((0.0, vec![0.0; p.layers.len()]));
        }
        let mut sd = Vec::with_capacity(p.layers.len());
        for (k, l) in p.layers.iter().enumerate() {
            match l.extra.weight_std {
                Some(s) if s > 0.0 => sd.push(s),
                _ => return Err(AllocError::MissingExtra {
                    method: "opq",
                    layer: k,
                    name: l.name.clone(),
                    field: "weight_std",
                    hint: "positive standard deviation of the weights (needed when prune_rate > 0)",
                }),
            }
        }
        let n: Vec<f64> = p.layers.iter().map(|l| l.params as f64).collect();
        let total: f64 = n.iter().sum();
        if total <= 0.0 {
            return Err(config_err("opq", "pruning needs layers with params > 0"));
        }
        let dist = self.config.distribution;
        let h = |lam: f64| -> (f64, f64) {
            let tau = lam.max(0.0).sqrt();
            let (mut f, mut df) = (0.0, 0.0);
            for (nj, s) in n.iter().zip(&sd) {
                let (m, dm) = dist.mass(tau, *s);
                f += nj * m;
                df += nj * dm;
            }
            // d/dλ F(√λ) = F'(τ) / (2τ)
            (f - rate * total, df / (2.0 * tau.max(1e-300)))
        };
        let smax = sd.iter().copied().fold(0.0, f64::max);
        let (mut lo, mut hi) = (0.0, (40.0 * smax).powi(2));
        let mut lam = (smax * rate).powi(2).max(1e-300);
        for _ in 0..200 {
            let (f, df) = h(lam);
            if f.abs() <= 1e-12 * total {
                break;
            }
            if f > 0.0 {
                hi = lam;
            } else {
                lo = lam;
            }
            let newton = lam - f / df;
            lam = if df > 0.0 && newton > lo && newton < hi {
                newton
            } else {
                0.5 * (lo + hi)
            };
        }
        let tau = lam.sqrt();
        Ok((tau, sd.iter().map(|s| dist.mass(tau, *s).0).collect()))
    }

    /// Shared quantization step `Δ` of Eq. 31 for target bits `b` and pruning ratios.
    pub fn step(&self, p: &AllocationProblem, alpha: &[f64], ratios: &[f64], b: f64) -> f64 {
        let mut num = 0.0;
        let mut den = 0.0;
        for ((l, a), r) in p.layers.iter().zip(alpha).zip(ratios) {
            let nu = l.params as f64 * (1.0 - r);
            num += nu * a;
            den += nu;
        }
        num / (2f64.powf(b - 1.0) * den.max(1e-300))
    }
}

impl Allocator for Opq {
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation> {
        let alpha: Vec<f64> = p
            .layers
            .iter()
            .enumerate()
            .map(|(k, l)| match l.extra.weight_max_abs {
                Some(a) if a > 0.0 => Ok(a),
                _ => Err(AllocError::MissingExtra {
                    method: "opq",
                    layer: k,
                    name: l.name.clone(),
                    field: "weight_max_abs",
                    hint: "positive largest absolute weight α of OPQ Eq. 31",
                }),
            })
            .collect::<Result<_>>()?;
        let (tau, ratios) = self.pruning(p)?;
        let r = Reduced::new(p)?;
        let alloc = |b: f64| -> Vec<usize> {
            let delta = self.step(p, &alpha, &ratios, b);
            let tw: Vec<f64> = alpha
                .iter()
                .map(|a| ((a / delta).log2() + 1.0 - 1e-9).ceil().max(1.0))
                .collect();
            items_for_targets(&r, p, &tw, None)
        };
        let (b, x) = match self.config.target_bits {
            Some(b) => {
                let x = alloc(b);
                if !r.feasible(&x) {
                    return Err(no_setting(
                        "opq",
                        p,
                        &format!("the configured target_bits = {b}"),
                    ));
                }
                (b, x)
            }
            None => bisect_knob(&r, 1.0, 33.0, 60, alloc)
                .ok_or_else(|| no_setting("opq", p, "target bits B from 1 to 33"))?,
        };
        ctx.note("target_bits", b);
        ctx.note("prune_threshold", tau);
        let mut a = r.finish(p, &x)?;
        a.pruning = Some(ratios);
        Ok(a)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(Opq {
        config: parse_config("opq", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "opq",
    summary: "one-shot pruning ranges (Newton on λ) + shared step Δ (needs extra.weight_max_abs)",
    reference: "survey §3.3.1 Eq. 27–31; Hu et al., OPQ, AAAI 2021",
    exact: false,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn erf_values() {
        assert!((erf(0.5) - 0.520_499_877_8).abs() < 2e-7);
        assert!((erf(-1.0) + 0.842_700_792_9).abs() < 2e-7);
        assert!((erf(2.0) - 0.995_322_265).abs() < 2e-7);
    }

    #[test]
    fn shared_threshold_and_step_by_hand() {
        let mut p = tiny(1e9);
        // Equal std: the shared threshold prunes the same fraction everywhere = the rate.
        for (l, a) in p.layers.iter_mut().zip([1.0, 2.0, 4.0]) {
            l.extra.weight_std = Some(0.5);
            l.extra.weight_max_abs = Some(a);
        }
        let opq = Opq {
            config: OpqConfig {
                prune_rate: 0.3,
                target_bits: Some(4.0),
                distribution: WeightDistribution::Gaussian,
            },
        };
        let (tau, r) = opq.pruning(&p).unwrap();
        for v in &r {
            assert!((v - 0.3).abs() < 1e-9);
        }
        // Gaussian: erf(τ/(0.5√2)) = 0.3 → τ ≈ 0.5 · 0.385320 = 0.19266
        assert!((tau - 0.5 * 0.385_320_5).abs() < 1e-5, "{tau}");
        // Δ = Σ N α / (2^3 Σ N) with N = 10,20,30 (same ratio): (10+40+120)/60/8 = 0.3541667
        let d = opq.step(&p, &[1.0, 2.0, 4.0], &r, 4.0);
        assert!((d - 170.0 / 60.0 / 8.0).abs() < 1e-12);
        // bits: ceil(log2(α/Δ)+1): α=1 → 2.49→3 (→w2, largest ≤3), 2 → 3.49→4, 4 → 4.49→5 (→w4)
        let a = opq.solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![0, 1, 1]);
        assert_eq!(a.pruning.as_ref().map(Vec::len), Some(3));
    }
}
