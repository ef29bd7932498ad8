//! `hessian-trace`: average Hessian trace × weight quantization error.
//!
//! Survey §3.2.3 (HAWQ-V2, Dong et al. 2020, "HAWQ-V2: Hessian Aware trace-Weighted
//! Quantization of Neural Networks"):
//! * Eq. 21: Hutchinson's estimator Tr(H) ≈ (1/m) Σ_j z_jᵀ H z_j with Rademacher probes z_j;
//! * Eq. 22: each z_jᵀ H z_j is the batch-average of the per-sample products (here: one
//!   batch of samples per pass, cycling through the samples);
//! * Eq. 23: Ω_i = Tr(H_i)/n_i · ‖Q(W_i) − W_i‖², n_i = number of weights of layer i.
//!
//! H·z is exact: double backward ([`crate::grad::GradGraph::hvp`]) on a first-order graph kept
//! per sample batch, of a model copy whose only tracked parameters are the layer weights
//! ([`crate::Executor::second_order`]: BatchNorm parameters and biases cost no gradients). Probes are drawn until the relative standard error of a
//! layer's estimate drops below `tol` (after at least `min_probes`) or `max_probes` is reached;
//! a finished layer leaves the probe. The trace may be negative away from a minimum; Ω keeps
//! its sign.
//!
//! Joint probes (`joint`): one Rademacher vector z = (z_1, …, z_L) over all layers' weights and
//! one double-backward pass give (Hz)_i = Σ_j H_ij z_j for every
//! layer at once; z_iᵀ(Hz)_i is an unbiased sample of Tr(H_ii) because the cross terms
//! z_iᵀH_ij z_j (j ≠ i) have zero mean. They add variance ‖H_ij‖²_F per other layer, which can
//! swamp a layer with a small trace (a 1×1 shortcut, the classifier): once a layer's estimate
//! is predicted to need more than `max_probes` probes (m·(rel. error/tol)², checked from
//! `min_probes` on), its joint samples are dropped and it is probed alone (z_j = 0 for j ≠ i).
//!
//! Complexity: one forward + backward pass per sample batch visited, then per round one
//! double-backward pass for the joint layers plus one per layer probed alone; the quantization
//! error is O(n_i) per option.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::{
    layer_seed, parse_config, sq_norm, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable,
};
use crate::error::{ExecError, Result};
use crate::grad::GradGraph;
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
    /// Probes drawn on one sample batch before the next (they share one first-order pass).
    pub probes_per_pass: usize,
    /// Probe all layers jointly (one double-backward pass per probe for every layer) until a
    /// layer's estimate is predicted to need more than `max_probes`; `false`: every layer alone.
    pub joint: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tol: 0.05,
            min_probes: 8,
            max_probes: 64,
            probes_per_pass: 4,
            joint: true,
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
    /// Whether the probes were shared with other layers.
    pub joint: bool,
    /// Joint probes drawn before the layer was probed alone (not in the estimate).
    pub dropped: usize,
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

    /// Hutchinson estimates of Tr(H_i) for every layer of `ctx` (Eq. 21–22): joint probes over
    /// all layers first, layers whose estimate cannot converge that way probed alone (see the
    /// module doc).
    pub fn traces(&self, ctx: &SensCtx) -> Result<Vec<TraceEstimate>> {
        let cfg = &self.cfg;
        let weights: Vec<_> = ctx.layers.iter().map(|l| l.weight).collect();
        let mut st = Vec::with_capacity(ctx.layers.len());
        for (i, layer) in ctx.layers.iter().enumerate() {
            st.push(LayerState {
                dims: ctx.weight(layer)?.1,
                rng: ChaCha8Rng::seed_from_u64(layer_seed(ctx.seed, i)),
                samples: Vec::new(),
                joint: cfg.joint && ctx.layers.len() > 1,
                dropped: 0,
                done: None,
            });
        }
        let model = ctx
            .exec
            .second_order(&weights)
            .map_err(|e| second_order_error(ctx, e))?;
        let mut graph: Option<(usize, GradGraph)> = None;
        let mut round = 0usize;
        while st.iter().any(|s| s.done.is_none()) {
            // Round r reads batch (r / probes_per_pass) mod #batches (Eq. 22); the first-order
            // graph of a batch serves every probe on it.
            let b = (round / cfg.probes_per_pass) % ctx.batches.len();
            let g = match graph.take() {
                Some((gb, g)) if gb == b => g,
                old => {
                    drop(old); // free the previous batch's graph first
                    let (x, labels) = &ctx.batches[b];
                    model
                        .grad_graph(x, labels)
                        .map_err(|e| second_order_error(ctx, e))?
                }
            };
            // One pass for the layers probed jointly, one per layer probed alone.
            let active = |s: &LayerState, joint: bool| s.done.is_none() && s.joint == joint;
            let mut groups: Vec<Vec<usize>> = Vec::new();
            let joint: Vec<usize> = (0..st.len()).filter(|&i| active(&st[i], true)).collect();
            if !joint.is_empty() {
                groups.push(joint);
            }
            groups.extend(
                (0..st.len())
                    .filter(|&i| active(&st[i], false))
                    .map(|i| vec![i]),
            );
            for group in groups {
                let mut probes: Vec<Option<Tensor>> = vec![None; st.len()];
                let mut signs: Vec<(usize, Vec<f32>)> = Vec::with_capacity(group.len());
                for &i in &group {
                    let z = st[i].draw();
                    probes[i] = Some(Tensor::from_slice(
                        &z,
                        st[i].dims.as_slice(),
                        ctx.exec.device(),
                    )?);
                    signs.push((i, z));
                }
                let blocks: Vec<Option<&Tensor>> = probes.iter().map(Option::as_ref).collect();
                let hz = g.hvp(&blocks).map_err(|e| second_order_error(ctx, e))?;
                for (i, z) in signs {
                    let h = to_vec_f32(&hz[i])?;
                    let sample = z.iter().zip(&h).map(|(a, b)| (a * b) as f64).sum();
                    st[i].samples.push(sample);
                }
            }
            graph = Some((b, g));
            round += 1;
            let n_joint = st.iter().filter(|s| active(s, true)).count();
            for (s, layer) in st.iter_mut().zip(&ctx.layers) {
                if s.done.is_some() {
                    continue;
                }
                let est = estimate(&s.samples);
                let m = s.samples.len();
                if m >= cfg.max_probes || (m >= cfg.min_probes && est.rel_stderr < cfg.tol) {
                    if !est.trace.is_finite() {
                        return Err(ExecError::Invalid(format!(
                            "layer '{}': the Hessian trace estimate is not finite",
                            layer.name
                        )));
                    }
                    s.done = Some(TraceEstimate {
                        joint: s.joint,
                        dropped: s.dropped,
                        ..est
                    });
                } else if s.joint && n_joint > 1 && m >= cfg.min_probes {
                    // Probes still needed at this variance: m·(rel/tol)². Beyond the budget,
                    // the cross terms of the other layers dominate: probe this layer alone.
                    let need = m as f64 * (est.rel_stderr / cfg.tol).powi(2);
                    if need.is_nan() || need > cfg.max_probes as f64 {
                        s.joint = false;
                        s.dropped = m;
                        s.samples.clear();
                    }
                }
            }
        }
        Ok(st.into_iter().flat_map(|s| s.done).collect())
    }
}

/// Probing state of one layer.
struct LayerState {
    dims: Vec<usize>,
    rng: ChaCha8Rng,
    samples: Vec<f64>,
    joint: bool,
    dropped: usize,
    done: Option<TraceEstimate>,
}

impl LayerState {
    /// A Rademacher probe shaped like the layer's weight.
    fn draw(&mut self) -> Vec<f32> {
        let n: usize = self.dims.iter().product();
        (0..n)
            .map(|_| if self.rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect()
    }
}

/// Names the failing step and the metrics that need no second-order gradients.
fn second_order_error(ctx: &SensCtx, e: ExecError) -> ExecError {
    let names: Vec<&str> = ctx.layers.iter().map(|l| l.name.as_str()).collect();
    ExecError::Invalid(format!(
        "exact Hessian-vector products over layers {} failed ({e}); the executor cannot take second-order gradients through this model, use output-mse, kl, sqnr or fisher",
        names.join(", ")
    ))
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
        joint: false,
        dropped: 0,
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
                    ("joint".to_string(), f64::from(u8::from(e.joint))),
                    ("dropped_probes".to_string(), e.dropped as f64),
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
