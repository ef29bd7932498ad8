//! `hessian-eigen`: top Hessian eigenvalue × weight quantization error.
//!
//! Survey §3.2.3: HAWQ (Dong et al. 2019, "HAWQ: Hessian AWare Quantization of Neural
//! Networks with Mixed-Precision") ranks layers by the top eigenvalue of their Hessian block;
//! HAWQ-V2's ablation weights ‖Q(W_i) − W_i‖² with it instead of the average trace (Eq. 23 with
//! Tr(H_i)/n_i replaced by λ_max(H_i)). λ_max by power iteration on exact Hessian-vector
//! products of the loss averaged over the first `batches` sample batches; the first-order graph
//! of each of those batches is built once and kept for every layer and iteration.
//!
//! Complexity: `batches` × (one forward + one backward pass), then per layer at most
//! `max_iter` × `batches` double-backward passes; memory: `batches` kept graphs.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::{
    layer_seed, parse_config, sq_norm, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable,
};
use crate::error::{ExecError, Result};
use crate::ops::to_vec_f32;

/// Configuration of `hessian-eigen`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Stop when the eigenvalue changes by less than `tol` · |λ| between iterations.
    pub tol: f64,
    /// Power iterations at most.
    pub max_iter: usize,
    /// Sample batches the Hessian is averaged over.
    pub batches: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tol: 1e-3,
            max_iter: 20,
            batches: 1,
        }
    }
}

/// The HAWQ top-eigenvalue metric.
#[derive(Clone, Debug, PartialEq)]
pub struct HessianEigen {
    cfg: Config,
}

impl HessianEigen {
    /// The dominant eigenvalue (largest |λ|) of every layer's Hessian block.
    pub fn eigenvalues(&self, ctx: &SensCtx) -> Result<Vec<f64>> {
        if self.cfg.max_iter == 0
            || self.cfg.batches == 0
            || self.cfg.tol.is_nan()
            || self.cfg.tol <= 0.0
        {
            return Err(ExecError::Invalid(
                "hessian-eigen: max_iter and batches must be at least 1 and tol > 0".into(),
            ));
        }
        let batches = self.cfg.batches.min(ctx.batches.len());
        // One first-order graph per batch serves every layer and iteration.
        let weights: Vec<_> = ctx.layers.iter().map(|l| l.weight).collect();
        let graphs = ctx
            .exec
            .second_order(&weights)
            .and_then(|model| {
                ctx.batches[..batches]
                    .iter()
                    .map(|(x, labels)| model.grad_graph(x, labels))
                    .collect::<Result<Vec<_>>>()
            })
            .map_err(|e| {
                ExecError::Invalid(format!(
                    "hessian-eigen: exact Hessian-vector products failed ({e}); the executor cannot take second-order gradients through this model, use output-mse, kl, sqnr or fisher"
                ))
            })?;
        let mut out = Vec::with_capacity(ctx.layers.len());
        for (i, layer) in ctx.layers.iter().enumerate() {
            let (_, dims) = ctx.weight(layer)?;
            let n: usize = dims.iter().product();
            let mut rng = ChaCha8Rng::seed_from_u64(layer_seed(ctx.seed, i));
            let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            normalize(&mut v);
            let mut lambda = 0.0f64;
            for it in 0..self.cfg.max_iter {
                let t = Tensor::from_slice(&v, dims.as_slice(), ctx.exec.device())?;
                let mut hv = vec![0f32; n];
                let mut blocks: Vec<Option<&Tensor>> = vec![None; weights.len()];
                blocks[i] = Some(&t);
                for g in &graphs {
                    let h = g.hvp(&blocks).map_err(|e| {
                        ExecError::Invalid(format!(
                            "layer '{}': exact Hessian-vector product failed ({e})",
                            layer.name
                        ))
                    })?;
                    for (a, b) in hv.iter_mut().zip(to_vec_f32(&h[i])?) {
                        *a += b / batches as f32;
                    }
                }
                let new: f64 = v.iter().zip(&hv).map(|(a, b)| (a * b) as f64).sum();
                v = hv;
                let norm = normalize(&mut v);
                let converged = it > 0 && (new - lambda).abs() <= self.cfg.tol * new.abs();
                lambda = new;
                if converged || norm == 0.0 {
                    break;
                }
            }
            if !lambda.is_finite() {
                return Err(ExecError::Invalid(format!(
                    "layer '{}': the top Hessian eigenvalue is not finite",
                    layer.name
                )));
            }
            out.push(lambda);
        }
        Ok(out)
    }
}

/// Scales `v` to unit length; returns the old length.
fn normalize(v: &mut [f32]) -> f64 {
    let norm = sq_norm(v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
    norm
}

impl SensitivityMetric for HessianEigen {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        ctx.require_weight_options(ENTRY.name)?;
        let eig = self.eigenvalues(ctx)?;
        let mut values = Vec::with_capacity(ctx.layers.len());
        for (layer, lambda) in ctx.layers.iter().zip(&eig) {
            let mut row = Vec::with_capacity(ctx.options.len());
            for opt in &ctx.options {
                row.push(lambda * sq_norm(&ctx.weight_error(layer, &opt.scheme)?));
            }
            values.push(row);
        }
        let mut t = ctx.table(ENTRY.name, values);
        t.details = eig
            .iter()
            .map(|&l| [("lambda_max".to_string(), l)].into())
            .collect();
        Ok(t)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    Ok(Box::new(HessianEigen {
        cfg: parse_config(ENTRY.name, v)?,
    }))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "hessian-eigen",
    summary: "top Hessian eigenvalue (power iteration) × ‖Q(W) − W‖² (weights)",
    reference: "survey §3.2.3; Dong et al. 2019, HAWQ",
    build,
};
