//! `hessian-trace`: average Hessian trace × weight quantization error.
//!
//! Survey §3.2.3 (HAWQ-V2, Dong et al. 2020, "HAWQ-V2: Hessian Aware trace-Weighted
//! Quantization of Neural Networks"):
//! * Eq. 21: Hutchinson's estimator Tr(H) ≈ (1/m) Σ_j z_jᵀ H z_j with Rademacher probes z_j;
//! * Eq. 22: each z_jᵀ H z_j is the batch-average of the per-sample products (here: one
//!   batch of samples per pass, cycling through the samples);
//! * Eq. 23: Ω_i = Tr(H_i)/n_i · ‖Q(W_i) − W_i‖², n_i = number of weights of layer i.
//!
//! H·z is exact (double backward, [`crate::Executor::hvp`]). Probes are drawn until the relative
//! standard error of the trace estimate drops below `tol` (after at least `min_probes`) or
//! `max_probes` is reached. The trace may be negative away from a minimum; Ω keeps its sign.
//!
//! Complexity: per layer, m probes × (one forward + two backward passes) / `probes_per_pass`
//! shared first-order passes; the quantization error is O(n_i) per option.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::{
    layer_seed, parse_config, sq_norm, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable,
};
use crate::error::{ExecError, Result};
use crate::ops::to_vec_f32;

/// Configuration of `hessian-trace`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Stop once the relative standard error of a layer's trace is below this.
    pub tol: f64,
    /// Probes drawn at least.
    pub min_probes: usize,
    /// Probes drawn at most.
    pub max_probes: usize,
    /// Probes sharing one first-order pass.
    pub probes_per_pass: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tol: 0.05,
            min_probes: 8,
            max_probes: 64,
            probes_per_pass: 4,
        }
    }
}

/// One layer's Hutchinson estimate.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TraceEstimate {
    /// Estimated Tr(H).
    pub trace: f64,
    /// Probes used.
    pub probes: usize,
    /// Standard error of the estimate divided by |trace|.
    pub rel_stderr: f64,
}

/// The HAWQ-V2 metric.
#[derive(Clone, Debug, PartialEq)]
pub struct HessianTrace {
    cfg: Config,
}

impl HessianTrace {
    /// A metric with `cfg` (checked).
    pub fn new(cfg: Config) -> Result<Self> {
        if cfg.tol.is_nan()
            || cfg.tol <= 0.0
            || cfg.min_probes < 2
            || cfg.max_probes < cfg.min_probes
        {
            return Err(ExecError::Invalid(format!(
                "hessian-trace: need tol > 0 and 2 <= min_probes <= max_probes (got tol {}, min {}, max {})",
                cfg.tol, cfg.min_probes, cfg.max_probes
            )));
        }
        if cfg.probes_per_pass == 0 {
            return Err(ExecError::Invalid(
                "hessian-trace: probes_per_pass must be at least 1".into(),
            ));
        }
        Ok(HessianTrace { cfg })
    }

    /// Hutchinson estimates of Tr(H_i) for every layer of `ctx` (Eq. 21–22).
    pub fn traces(&self, ctx: &SensCtx) -> Result<Vec<TraceEstimate>> {
        let mut out = Vec::with_capacity(ctx.layers.len());
        let mut pass = 0usize;
        for (i, layer) in ctx.layers.iter().enumerate() {
            let (_, dims) = ctx.weight(layer)?;
            let n: usize = dims.iter().product();
            let mut rng = ChaCha8Rng::seed_from_u64(layer_seed(ctx.seed, i));
            let mut samples: Vec<f64> = Vec::new();
            loop {
                let k = self
                    .cfg
                    .probes_per_pass
                    .min(self.cfg.max_probes - samples.len());
                let probes: Vec<Vec<f32>> = (0..k)
                    .map(|_| {
                        (0..n)
                            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                            .collect()
                    })
                    .collect();
                let tensors = probes
                    .iter()
                    .map(|p| Tensor::from_slice(p, dims.as_slice(), ctx.exec.device()))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let hz = ctx.hvp(layer, pass, &tensors)?;
                pass += 1;
                for (z, h) in probes.iter().zip(&hz) {
                    let h = to_vec_f32(h)?;
                    samples.push(z.iter().zip(&h).map(|(a, b)| (a * b) as f64).sum());
                }
                let est = estimate(&samples);
                let done = samples.len() >= self.cfg.max_probes
                    || (samples.len() >= self.cfg.min_probes && est.rel_stderr < self.cfg.tol);
                if done {
                    if !est.trace.is_finite() {
                        return Err(ExecError::Invalid(format!(
                            "layer '{}': the Hessian trace estimate is not finite",
                            layer.name
                        )));
                    }
                    out.push(est);
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Mean and relative standard error of Hutchinson samples.
fn estimate(samples: &[f64]) -> TraceEstimate {
    let m = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / m;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (m - 1.0).max(1.0);
    let se = (var / m).sqrt();
    let rel = if mean != 0.0 {
        se / mean.abs()
    } else if se == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    TraceEstimate {
        trace: mean,
        probes: samples.len(),
        rel_stderr: rel,
    }
}

impl SensitivityMetric for HessianTrace {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        ctx.require_weight_options(ENTRY.name)?;
        let traces = self.traces(ctx)?;
        let mut values = Vec::with_capacity(ctx.layers.len());
        for (layer, t) in ctx.layers.iter().zip(&traces) {
            let mut row = Vec::with_capacity(ctx.options.len());
            for opt in &ctx.options {
                let err = ctx.weight_error(layer, &opt.scheme)?;
                row.push(t.trace / err.len().max(1) as f64 * sq_norm(&err));
            }
            values.push(row);
        }
        let mut t = ctx.table(ENTRY.name, values);
        t.details = traces
            .iter()
            .map(|e| {
                [
                    ("trace".to_string(), e.trace),
                    ("probes".to_string(), e.probes as f64),
                    ("rel_stderr".to_string(), e.rel_stderr),
                ]
                .into()
            })
            .collect();
        Ok(t)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    Ok(Box::new(HessianTrace::new(parse_config(ENTRY.name, v)?)?))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "hessian-trace",
    summary: "Hutchinson estimate of the average Hessian trace × ‖Q(W) − W‖² (weights)",
    reference: "survey §3.2.3, Eq. 21–23; Dong et al. 2020, HAWQ-V2",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_of_constant_samples_has_zero_error() {
        let e = estimate(&[2.0, 2.0, 2.0]);
        assert_eq!((e.trace, e.rel_stderr, e.probes), (2.0, 0.0, 3));
        // Samples 1, 3: mean 2, sample variance 2, standard error 1 → 50 %.
        let e = estimate(&[1.0, 3.0]);
        assert!((e.rel_stderr - 0.5).abs() < 1e-12);
        assert!(HessianTrace::new(Config {
            min_probes: 1,
            ..Config::default()
        })
        .is_err());
        let e = parse_config::<Config>("hessian-trace", &serde_json::json!({"tolerance": 0.1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tolerance"), "{e}");
    }
}
