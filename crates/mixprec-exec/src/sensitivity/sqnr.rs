//! `sqnr`: output signal-to-quantization-noise ratio with only one layer quantized, reported
//! as −SQNR in dB so that lower = less sensitive.
//!
//! Survey §2.4 (uniform quantization noise; the SQNR view of per-layer sensitivity used by
//! SQNR-based bit allocation, Lin et al. 2016, "Fixed Point Quantization of Deep
//! Convolutional Networks"): value = 10·log10(‖M̃(x) − M(x)‖² / ‖M(x)‖²) over the logits of
//! all samples. An unchanged output scores the floor −300 dB.
//!
//! Complexity: one float pass plus one pass per (layer, option) over the samples.

use serde::Deserialize;

use super::{parse_config, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable};
use crate::error::Result;

/// Configuration of `sqnr` (no parameters).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {}

/// The SQNR metric.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sqnr;

/// Value reported when the quantized output equals the float one.
pub const FLOOR_DB: f64 = -300.0;

/// 10·log10(noise / signal), floored at [`FLOOR_DB`].
pub fn neg_sqnr_db(float: &[f32], quant: &[f32]) -> f64 {
    let signal: f64 = float.iter().map(|&f| (f as f64).powi(2)).sum();
    let noise: f64 = float
        .iter()
        .zip(quant)
        .map(|(&f, &q)| (q as f64 - f as f64).powi(2))
        .sum();
    if noise == 0.0 {
        return FLOOR_DB;
    }
    (10.0 * (noise / signal.max(f64::MIN_POSITIVE)).log10()).max(FLOOR_DB)
}

impl SensitivityMetric for Sqnr {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        ctx.perturbation_table(ENTRY.name, &|f, q, _| neg_sqnr_db(f, q))
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    let _: Config = parse_config(ENTRY.name, v)?;
    Ok(Box::new(Sqnr))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "sqnr",
    summary: "−SQNR (dB) of the logits with only this layer quantized",
    reference: "survey §2.4; Lin et al. 2016, SQNR-based allocation",
    build,
};

#[cfg(test)]
mod tests {
    #[test]
    fn sqnr_by_hand() {
        // Signal 3² + 4² = 25, noise 0.25² → 10·log10(0.0025) = −26.02 dB.
        let v = super::neg_sqnr_db(&[3.0, 4.0], &[3.25, 4.0]);
        assert!((v - 10.0 * 0.0025f64.log10()).abs() < 1e-9, "{v}");
        assert_eq!(super::neg_sqnr_db(&[1.0], &[1.0]), super::FLOOR_DB);
    }
}
