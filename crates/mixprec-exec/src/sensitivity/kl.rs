//! `kl`: Kullback–Leibler divergence between the float model's output distribution and that
//! of the model with only one layer quantized.
//!
//! Survey §3.2.5 (ZeroQ, Cai et al. 2020, "ZeroQ: A Novel Zero Shot Quantization Framework"):
//! Ω_i(k) = (1/N) Σ_j KL(M(θ; x_j) ‖ M(θ̃_i(k); x_j)), with θ̃_i(k) the model whose layer i is
//! quantized to k bits. ZeroQ evaluates it on distilled data; here on the given samples.
//! Softmax of the logits in f64 (log-sum-exp).
//!
//! Complexity: one float pass plus one pass per (layer, option) over the samples.

use serde::Deserialize;

use super::{parse_config, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable};
use crate::error::Result;

/// Configuration of `kl` (no parameters).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {}

/// The ZeroQ KL metric.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kl;

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// Mean over rows of KL(softmax(float) ‖ softmax(quant)); rows have `classes` entries.
pub fn mean_kl(float: &[f32], quant: &[f32], classes: usize) -> f64 {
    let classes = classes.max(1);
    let rows = float.len() / classes;
    let mut total = 0.0;
    for r in 0..rows {
        let lp = log_softmax(&float[r * classes..(r + 1) * classes]);
        let lq = log_softmax(&quant[r * classes..(r + 1) * classes]);
        total += lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>()
            .max(0.0);
    }
    total / rows.max(1) as f64
}

impl SensitivityMetric for Kl {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        ctx.perturbation_table(ENTRY.name, &mean_kl)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    let _: Config = parse_config(ENTRY.name, v)?;
    Ok(Box::new(Kl))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "kl",
    summary: "KL divergence of output distributions, float vs only this layer quantized",
    reference: "survey §3.2.5; Cai et al. 2020, ZeroQ",
    build,
};

#[cfg(test)]
mod tests {
    #[test]
    fn kl_by_hand() {
        // Logits (0, 0) → (½, ½); (ln 3, 0) → (¾, ¼). KL = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3).
        let k = super::mean_kl(&[0.0, 0.0], &[3f32.ln(), 0.0], 2);
        assert!((k - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-7, "{k}");
        assert_eq!(super::mean_kl(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 3), 0.0);
    }
}
