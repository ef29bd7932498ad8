//! `aq-noise`: the accuracy measure of Adaptive Quantization, measured by noise injection.
//!
//! Survey §3.2.1 (AQ, Zhou et al. 2018, "Adaptive Quantization for Deep Neural Network",
//! AAAI), Eq. 16–18: quantizing layer k to b_k bits adds noise to its weights whose effect on
//! the last feature map (here the logits) has mean power p_k·e^{−α b_k}, α = ln 4 (each bit
//! quarters the noise power); the accuracy measure is m_total = Σ_k (p_k / t_k)·e^{−α b_k}.
//!
//! * p_k: the layer's weights are quantized at a fixed bit-width b (`bits`, uniform
//!   symmetric at the granularity of the weight options) with every other layer in float; the
//!   mean over samples of ‖z̃ − z‖² on the logits z is recorded and p_k = that · e^{α b}.
//! * t_k: the ratio of the mean output noise power to the mean adversarial noise power when
//!   the accuracy degradation equals the bound C (`bound`). Gaussian noise σ·rms(W_k)·ε with a
//!   fixed seeded direction ε is added to the layer's weights and σ is searched (bracketing
//!   by factors of 4 from σ = 1, then bisection in log σ) for the smallest value at which a fraction C of the samples change
//!   their top-1 prediction against the float model (the degradation measured without labels,
//!   so distilled data works too); the output noise power at that σ is divided by the mean
//!   adversarial noise power, here the squared minimum logit perturbation that flips a sample,
//!   (z_top − z_second)² / 2, averaged over the samples.
//! * Table value per weight option of b bits: m_k(b) = p_k / t_k · e^{−α b}.
//!
//! The raw p_k and t_k feed `LayerExtra::aq_p` / `aq_t` of the `aq` allocator
//! ([`aq_quantities`]).
//!
//! Complexity: per layer, one pass for p_k and typically 3–5 + `steps` passes for t_k over
//! the samples (at most 13 + `steps`); O(1) per option.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::{
    layer_seed, parse_config, sq_norm, MetricEntry, OptionTarget, SensCtx, SensOption,
    SensitivityMetric, SensitivityTable,
};
use crate::error::{ExecError, Result};
use crate::executor::LayerHook;
use mixprec_graph::Layer;
use mixprec_quant::{Granularity, QScheme, QuantKind};

/// Configuration of `aq-noise`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Fixed weight bit-width b at which p_k is measured.
    pub bits: u8,
    /// Accuracy bound C: fraction of samples whose top-1 prediction changes, in (0, 1].
    pub bound: f64,
    /// Exponent α of Eq. 18 (ln 4).
    pub alpha: f64,
    /// Bisection steps of the noise scale search after bracketing it within a factor of 4
    /// (6 steps: within a factor 4^(1/64) ≈ 1.02).
    pub steps: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bits: 8,
            bound: 0.1,
            alpha: 4f64.ln(),
            steps: 6,
        }
    }
}

/// The AQ quantities of one layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AqLayer {
    /// p_k: output noise power at `bits` bits, times e^{α·bits}.
    pub p: f64,
    /// t_k: output noise power at the accuracy bound / mean adversarial noise power.
    pub t: f64,
    /// Relative weight noise σ (in units of rms(W)) found for the bound.
    pub sigma: f64,
    /// Fraction of samples whose prediction changed at `sigma` (≥ bound unless the search
    /// hit its largest σ).
    pub flips: f64,
}

/// The AQ noise-injection metric.
#[derive(Clone, Debug, PartialEq)]
pub struct AqNoise {
    cfg: Config,
}

/// Adds `noise` to the weight `weight` of the layer at node `node` (W only for a recurrent
/// layer: its R passes unchanged).
struct WeightNoise {
    node: usize,
    weight: mixprec_graph::ValueId,
    noise: Tensor,
}

impl LayerHook for WeightNoise {
    fn weight(&self, layer: &Layer, w: Tensor) -> Result<Tensor> {
        if layer.node == self.node && layer.weight == self.weight {
            Ok(w.broadcast_add(&self.noise)?)
        } else {
            Ok(w)
        }
    }
}

/// Logits of all samples as rows.
struct Rows {
    values: Vec<f32>,
    classes: usize,
}

impl Rows {
    fn of(ctx: &SensCtx, hook: Option<&dyn LayerHook>) -> Result<Self> {
        let mut values = Vec::new();
        let mut classes = 1;
        for (v, c) in ctx.logits(hook)? {
            values.extend(v);
            classes = c.max(1);
        }
        Ok(Rows { values, classes })
    }

    fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.values.chunks(self.classes)
    }
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// Mean over rows of the squared minimum logit perturbation that changes the top-1 class:
/// (z_top − z_second)² / 2.
pub fn adversarial_power(logits: &[f32], classes: usize) -> Result<f64> {
    if classes < 2 {
        return Err(ExecError::Invalid(
            "aq-noise needs at least 2 output classes for the adversarial noise".into(),
        ));
    }
    let rows = logits.len() / classes;
    let mut total = 0.0;
    for row in logits.chunks(classes) {
        let top = argmax(row);
        let second = (0..classes)
            .filter(|&c| c != top)
            .map(|c| row[c] as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        total += (row[top] as f64 - second).powi(2) / 2.0;
    }
    Ok(total / rows.max(1) as f64)
}

/// Mean over rows of ‖q − f‖².
pub fn output_noise_power(float: &[f32], quant: &[f32], classes: usize) -> f64 {
    let rows = (float.len() / classes.max(1)).max(1);
    float
        .iter()
        .zip(quant)
        .map(|(&f, &q)| (q as f64 - f as f64).powi(2))
        .sum::<f64>()
        / rows as f64
}

/// Fraction of rows whose top-1 class differs.
fn flip_fraction(float: &Rows, quant: &Rows) -> f64 {
    let n = float.rows().count().max(1);
    let flips = float
        .rows()
        .zip(quant.rows())
        .filter(|(f, q)| argmax(f) != argmax(q))
        .count();
    flips as f64 / n as f64
}

/// Unit Gaussian values (Box–Muller) from a seeded generator.
pub(crate) fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

impl AqNoise {
    /// A metric with a checked configuration.
    pub fn new(cfg: Config) -> Result<Self> {
        let bad = |m: &str| {
            Err(ExecError::Invalid(format!(
                "config of metric aq-noise: {m}"
            )))
        };
        if !(cfg.bound > 0.0 && cfg.bound <= 1.0) {
            return bad("bound must be in (0, 1]");
        }
        if cfg.alpha.is_nan() || cfg.alpha <= 0.0 {
            return bad("alpha must be positive");
        }
        if !(2..=16).contains(&cfg.bits) {
            return bad("bits must be in 2..=16");
        }
        if cfg.steps == 0 {
            return bad("steps must be at least 1");
        }
        Ok(AqNoise { cfg })
    }

    /// The fixed-bit scheme of p_k, at the granularity of the first weight option.
    fn fixed_option(&self, ctx: &SensCtx) -> Result<SensOption> {
        let granularity = ctx
            .options
            .iter()
            .find(|o| o.target == OptionTarget::Weight)
            .map(|o| o.scheme.granularity)
            .unwrap_or(Granularity::Tensor);
        let scheme = QScheme::new(QuantKind::Uniform, self.cfg.bits, true, granularity);
        Ok(SensOption {
            label: format!("w{}", self.cfg.bits),
            target: OptionTarget::Weight,
            scheme,
        })
    }

    /// p_k, t_k (and the search result) of every layer, and the mean adversarial noise power.
    pub fn quantities(&self, ctx: &SensCtx) -> Result<(Vec<AqLayer>, f64)> {
        let float = Rows::of(ctx, None)?;
        let adv = adversarial_power(&float.values, float.classes)?;
        if adv <= 0.0 {
            return Err(ExecError::Invalid(
                "aq-noise: every sample has tied top logits, the adversarial noise is zero".into(),
            ));
        }
        let fixed = self.fixed_option(ctx)?;
        let mut out = Vec::with_capacity(ctx.layers.len());
        for (i, layer) in ctx.layers.iter().enumerate() {
            let hook = ctx.single_layer_hook(layer, &fixed)?;
            let quant = Rows::of(ctx, Some(&hook))?;
            let p = output_noise_power(&float.values, &quant.values, float.classes)
                * (self.cfg.alpha * self.cfg.bits as f64).exp();
            let (w, dims) = ctx.weight(layer)?;
            let rms = (sq_norm(&w) / w.len().max(1) as f64).sqrt();
            let rms = if rms > 0.0 { rms } else { 1.0 };
            let eps = Tensor::from_vec(
                gaussian(w.len(), layer_seed(ctx.seed, i)),
                dims.as_slice(),
                ctx.exec.device(),
            )?;
            // (flip fraction, output noise power) at relative noise σ.
            let probe = |sigma: f64| -> Result<(f64, f64)> {
                let hook = WeightNoise {
                    node: layer.node,
                    weight: layer.weight,
                    noise: eps.affine(sigma * rms, 0.0)?,
                };
                let noisy = Rows::of(ctx, Some(&hook))?;
                Ok((
                    flip_fraction(&float, &noisy),
                    output_noise_power(&float.values, &noisy.values, float.classes),
                ))
            };
            // Bracket the bound by factors of 4 from σ = 1, then bisect in log σ.
            let mut hi = 1.0;
            let mut at_hi = probe(hi)?;
            let mut lo = None;
            if at_hi.0 >= self.cfg.bound {
                for _ in 0..12 {
                    let s = hi / 4.0;
                    let at = probe(s)?;
                    if at.0 >= self.cfg.bound {
                        (hi, at_hi) = (s, at);
                    } else {
                        lo = Some(s);
                        break;
                    }
                }
            } else {
                for _ in 0..8 {
                    lo = Some(hi);
                    hi *= 4.0;
                    at_hi = probe(hi)?;
                    if at_hi.0 >= self.cfg.bound {
                        break;
                    }
                }
            }
            if let (Some(mut lo), true) = (lo, at_hi.0 >= self.cfg.bound) {
                for _ in 0..self.cfg.steps {
                    let mid = (lo * hi).sqrt();
                    let at_mid = probe(mid)?;
                    if at_mid.0 >= self.cfg.bound {
                        (hi, at_hi) = (mid, at_mid);
                    } else {
                        lo = mid;
                    }
                }
            }
            let t = at_hi.1 / adv;
            if !(t > 0.0 && t.is_finite()) {
                return Err(ExecError::Invalid(format!(
                    "aq-noise: layer '{}' has no effect on the output (output noise {} at weight noise σ = {hi}·rms), t_k is undefined",
                    layer.name, at_hi.1
                )));
            }
            out.push(AqLayer {
                p,
                t,
                sigma: hi,
                flips: at_hi.0,
            });
        }
        Ok((out, adv))
    }
}

/// (p_k, t_k) of every layer of `ctx` with the default configuration, for
/// `LayerExtra::aq_p` / `aq_t`.
pub fn aq_quantities(ctx: &SensCtx) -> Result<Vec<(f64, f64)>> {
    let (layers, _) = AqNoise::new(Config::default())?.quantities(ctx)?;
    Ok(layers.into_iter().map(|l| (l.p, l.t)).collect())
}

impl SensitivityMetric for AqNoise {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        ctx.require_weight_options(ENTRY.name)?;
        let (layers, adv) = self.quantities(ctx)?;
        let values = layers
            .iter()
            .map(|l| {
                ctx.options
                    .iter()
                    .map(|o| l.p / l.t * (-self.cfg.alpha * o.scheme.bits as f64).exp())
                    .collect()
            })
            .collect();
        let mut t = ctx.table(ENTRY.name, values);
        t.details = layers
            .iter()
            .map(|l| {
                [
                    ("p".to_string(), l.p),
                    ("t".to_string(), l.t),
                    ("sigma".to_string(), l.sigma),
                    ("flips".to_string(), l.flips),
                    ("adversarial".to_string(), adv),
                ]
                .into_iter()
                .collect()
            })
            .collect();
        Ok(t)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    Ok(Box::new(AqNoise::new(parse_config(ENTRY.name, v)?)?))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "aq-noise",
    summary: "AQ accuracy measure p_k/t_k·e^(−α b) from weight-noise injection (weights)",
    reference: "survey §3.2.1, Eq. 16–18; Zhou et al. 2018, AQ",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adversarial_and_noise_power_by_hand() {
        // Rows (3, 1, 0) and (0, 2, 2.5): margins 2 and 0.5 → (4/2 + 0.25/2) / 2 = 1.0625.
        let a = adversarial_power(&[3.0, 1.0, 0.0, 0.0, 2.0, 2.5], 3).unwrap();
        assert!((a - 1.0625).abs() < 1e-12, "{a}");
        assert!(adversarial_power(&[1.0, 2.0], 1).is_err());
        // Two rows, squared distances 1 + 4 and 0 → 2.5.
        let n = output_noise_power(&[0.0, 0.0, 1.0, 1.0], &[1.0, 2.0, 1.0, 1.0], 2);
        assert_eq!(n, 2.5);
    }

    #[test]
    fn gaussian_draws_have_unit_variance() {
        let g = gaussian(20_000, 3);
        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
        let var = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / g.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        assert_eq!(g, gaussian(20_000, 3));
    }

    #[test]
    fn config_is_checked() {
        for bad in [
            serde_json::json!({"bound": 0.0}),
            serde_json::json!({"alpha": -1.0}),
            serde_json::json!({"bits": 1}),
            serde_json::json!({"tol": 1.0}),
        ] {
            assert!(build(&bad).is_err(), "{bad}");
        }
    }
}
