//! `fisher`: diagonal empirical Fisher information ⊙ squared weight quantization error.
//!
//! Survey §3.1.3 / §3.2.1: the loss change under a small weight perturbation δ is, to second
//! order, ½ δᵀ H δ (AQ, §3.2.1, likewise relates the accuracy loss to each layer's
//! quantization noise). With the Hessian replaced by the empirical Fisher F = E[g gᵀ]
//! (g = per-sample loss gradient) and F by its diagonal (Kirkpatrick et al. 2017,
//! "Overcoming catastrophic forgetting in neural networks"),
//! Ω_i = Σ_k F_kk · (Q(W_i) − W_i)_k².
//!
//! `per_sample = true` (default) averages squared per-sample gradients (the exact empirical
//! Fisher); `false` averages squared mini-batch gradients (cheaper, biased low).
//!
//! Complexity: one forward + backward pass per sample (or batch) for all layers together,
//! plus O(n_i) per layer and option.

use serde::Deserialize;

use super::{parse_config, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable};
use crate::error::Result;
use crate::ops::to_vec_f32;

/// Configuration of `fisher`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Per-sample gradients (true) or mini-batch gradients (false).
    pub per_sample: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { per_sample: true }
    }
}

/// The diagonal-Fisher metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Fisher {
    cfg: Config,
}

impl Fisher {
    /// Diagonal of the empirical Fisher of every layer's weight (flattened).
    pub fn diagonals(&self, ctx: &SensCtx) -> Result<Vec<Vec<f64>>> {
        let weights: Vec<_> = ctx.layers.iter().map(|l| l.weight).collect();
        let mut acc: Vec<Vec<f64>> = Vec::with_capacity(weights.len());
        for l in &ctx.layers {
            acc.push(vec![0.0; ctx.weight(l)?.0.len()]);
        }
        let mut count = 0usize;
        let mut add = |x: &candle_core::Tensor, labels: &[u32]| -> Result<()> {
            let (_, grads) = ctx.exec.loss_and_grads(x, labels, &weights)?;
            for (a, g) in acc.iter_mut().zip(&grads) {
                for (a, g) in a.iter_mut().zip(to_vec_f32(g)?) {
                    *a += g as f64 * g as f64;
                }
            }
            count += 1;
            Ok(())
        };
        for (x, labels) in &ctx.batches {
            if self.cfg.per_sample {
                for (i, label) in labels.iter().enumerate() {
                    add(&x.narrow(0, i, 1)?, std::slice::from_ref(label))?;
                }
            } else {
                add(x, labels)?;
            }
        }
        let c = count.max(1) as f64;
        for a in &mut acc {
            a.iter_mut().for_each(|v| *v /= c);
        }
        Ok(acc)
    }
}

impl SensitivityMetric for Fisher {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        ctx.require_weight_options(ENTRY.name)?;
        let diag = self.diagonals(ctx)?;
        let mut values = Vec::with_capacity(ctx.layers.len());
        for (layer, f) in ctx.layers.iter().zip(&diag) {
            let mut row = Vec::with_capacity(ctx.options.len());
            for opt in &ctx.options {
                let err = ctx.weight_error(layer, &opt.scheme)?;
                row.push(
                    f.iter()
                        .zip(&err)
                        .map(|(f, &e)| f * e as f64 * e as f64)
                        .sum(),
                );
            }
            values.push(row);
        }
        Ok(ctx.table(ENTRY.name, values))
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    Ok(Box::new(Fisher {
        cfg: parse_config(ENTRY.name, v)?,
    }))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "fisher",
    summary: "diagonal empirical Fisher ⊙ (Q(W) − W)², summed per layer (weights)",
    reference: "survey §3.1.3, §3.2.1; Kirkpatrick et al. 2017 (diagonal Fisher)",
    build,
};
