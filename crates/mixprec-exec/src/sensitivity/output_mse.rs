//! `output-mse`: mean squared error between the float outputs and the outputs of the model
//! with only one layer quantized.
//!
//! Survey §3.4.8 (EvoQ, Yuan et al. 2020, "EvoQ: Mixed Precision Quantization of DNNs via
//! Sensitivity Guided Evolutionary Search"), Eq. 44: E = (1/N) Σ_i (Q(x_i) − M(x_i))², here
//! with a single layer quantized per cell (the per-layer sensitivity EvoQ samples) and the
//! logits as outputs, averaged over samples and classes.
//!
//! Complexity: one float pass plus one pass per (layer, option) over the samples.

use serde::Deserialize;

use super::{parse_config, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable};
use crate::error::Result;

/// Configuration of `output-mse` (no parameters).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {}

/// The EvoQ output-MSE metric.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputMse;

/// Mean of (q − f)² in f64.
pub fn mse(float: &[f32], quant: &[f32]) -> f64 {
    let n = float.len().max(1) as f64;
    float
        .iter()
        .zip(quant)
        .map(|(&f, &q)| (q as f64 - f as f64).powi(2))
        .sum::<f64>()
        / n
}

impl SensitivityMetric for OutputMse {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        ctx.perturbation_table(ENTRY.name, &|f, q, _| mse(f, q))
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    let _: Config = parse_config(ENTRY.name, v)?;
    Ok(Box::new(OutputMse))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "output-mse",
    summary: "MSE between float logits and logits with only this layer quantized",
    reference: "survey §3.4.8, Eq. 44; Yuan et al. 2020, EvoQ",
    build,
};

#[cfg(test)]
mod tests {
    #[test]
    fn mse_by_hand() {
        assert_eq!(super::mse(&[1.0, 2.0], &[1.0, 4.0]), 2.0);
    }
}
