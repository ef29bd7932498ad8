//! ZeroQ distilled data: synthetic inputs whose BatchNormalization statistics match the
//! model's.
//!
//! Survey §3.2.5 (ZeroQ, Cai et al. 2020, "ZeroQ: A Novel Zero Shot Quantization
//! Framework"): starting from Gaussian noise, the inputs x are optimised so that, at the input
//! of every BatchNormalization layer i, the per-channel batch mean μ̃_i and standard deviation
//! σ̃_i match the layer's running statistics μ_i, σ_i = √(var_i + ε):
//! min_x Σ_i ‖μ̃_i − μ_i‖² / C_i + ‖σ̃_i − σ_i‖² / C_i (ZeroQ's loss, each term divided by
//! the channel count as in its reference code). Statistics are taken over the batch and the
//! spatial positions. The model runs in inference mode (running statistics), only the
//! input is a variable, and Adam updates it (cosine learning-rate decay). Labels of the result are the float model's own
//! top-1 predictions, so metrics that need labels can use it.
//!
//! Models whose BatchNormalization was folded into the convolutions have no statistics to
//! match: [`distill`] then returns an error saying so.
//!
//! Complexity: `steps` forward and backward passes (with respect to the input) per batch.

use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use mixprec_data::Dataset;
use mixprec_graph::{Dim, Op, ValueId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::error::{ExecError, Result};
use crate::executor::{Executor, RunOptions};
use crate::grad::loss_target;
use crate::ops::to_vec_f32;

/// Configuration of [`distill`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Number of distilled samples.
    pub samples: usize,
    /// Samples optimised together (the batch whose statistics are matched).
    pub batch: usize,
    /// Adam steps per batch.
    pub steps: usize,
    /// Initial Adam learning rate, in units of `init_std` (cosine decay to 0 over the steps).
    pub lr: f64,
    /// Mean of the initial Gaussian inputs.
    pub init_mean: f32,
    /// Standard deviation of the initial Gaussian inputs (the scale of the model's input).
    pub init_std: f32,
    /// Seed of the initial inputs.
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            samples: 64,
            batch: 32,
            steps: 500,
            lr: 0.2,
            init_mean: 0.0,
            init_std: 1.0,
            seed: 0,
        }
    }
}

/// Distilled samples and how well their statistics match.
#[derive(Clone, Debug)]
pub struct Distilled {
    /// The samples, labelled by the float model's predictions.
    pub data: Dataset,
    /// BN-statistics loss before optimisation, averaged over the batches.
    pub initial_loss: f64,
    /// BN-statistics loss after optimisation, averaged over the batches.
    pub final_loss: f64,
}

/// The running statistics one BatchNormalization input must match.
struct BnTarget {
    input: ValueId,
    mean: Tensor,
    std: Tensor,
    epsilon: f64,
}

/// The BatchNormalization layers of the model and their running mean and standard deviation.
fn bn_targets(exec: &Executor) -> Result<Vec<BnTarget>> {
    let g = exec.graph();
    let mut out = Vec::new();
    for node in &g.nodes {
        let Op::BatchNorm { epsilon } = node.op else {
            continue;
        };
        let stat = |i: usize, what: &str| -> Result<Tensor> {
            let v = node.input(i).ok_or_else(|| {
                ExecError::Invalid(format!("BatchNormalization '{}' has no {what}", node.name))
            })?;
            match exec.var(v) {
                Some(var) => Ok(var.as_tensor().detach().flatten_all()?),
                None => Err(ExecError::Invalid(format!(
                    "BatchNormalization '{}': the {what} is not a constant tensor",
                    node.name
                ))),
            }
        };
        let input = node.input(0).ok_or_else(|| {
            ExecError::Invalid(format!("BatchNormalization '{}' has no input", node.name))
        })?;
        let mean = stat(3, "running mean")?;
        let std = stat(4, "running variance")?
            .affine(1.0, epsilon as f64)?
            .sqrt()?;
        out.push(BnTarget {
            input,
            mean,
            std,
            epsilon: epsilon as f64,
        });
    }
    if out.is_empty() {
        return Err(ExecError::Invalid(format!(
            "model '{}' has no BatchNormalization node (folded into the convolutions, or never \
             had one): distilled data matches BatchNormalization statistics, so use real samples \
             (e.g. --data mnist) for this model",
            g.name
        )));
    }
    Ok(out)
}

/// ZeroQ's BN-statistics loss of the batch `x` (a scalar tensor, differentiable in `x`).
fn bn_loss(exec: &Executor, x: &Tensor, targets: &[BnTarget]) -> Result<Tensor> {
    let r = exec.run(
        std::slice::from_ref(x),
        &RunOptions {
            keep: targets.iter().map(|t| t.input).collect(),
            ..Default::default()
        },
    )?;
    let mut total: Option<Tensor> = None;
    for t in targets {
        let a = r.kept.get(&t.input).ok_or_else(|| {
            ExecError::Invalid("a BatchNormalization input was not produced".into())
        })?;
        let c = t.mean.dims1()?;
        if a.rank() < 2 || a.dims()[1] != c {
            return Err(ExecError::Invalid(format!(
                "a BatchNormalization input has shape {:?}, its statistics have {c} channels",
                a.dims()
            )));
        }
        // [C, N·spatial] per channel.
        let per_channel = a.transpose(0, 1)?.contiguous()?.flatten_from(1)?;
        let mean = per_channel.mean_keepdim(1)?;
        let batch_std = per_channel
            .broadcast_sub(&mean)?
            .sqr()?
            .mean(1)?
            .affine(1.0, t.epsilon)?
            .sqrt()?;
        let term = ((mean.flatten_all()? - &t.mean)?.sqr()?.sum_all()?
            + (batch_std - &t.std)?.sqr()?.sum_all()?)?
        .affine(1.0 / c as f64, 0.0)?;
        total = Some(match total {
            Some(s) => (s + term)?,
            None => term,
        });
    }
    total.ok_or_else(|| ExecError::Invalid("no BatchNormalization statistics to match".into()))
}

/// The model's input sample shape `[C, H, W]` (fixed dimensions after the batch one).
fn input_shape(exec: &Executor) -> Result<[usize; 3]> {
    let g = exec.graph();
    if g.inputs.len() != 1 {
        return Err(ExecError::Invalid(format!(
            "distilled data needs a model with one input, '{}' has {}",
            g.name,
            g.inputs.len()
        )));
    }
    let v = &g.values[g.inputs[0]];
    let dims: Vec<usize> = v
        .shape
        .as_ref()
        .map(|s| {
            s.iter()
                .skip(1)
                .filter_map(|d| match d {
                    Dim::Fixed(f) => Some(*f),
                    Dim::Symbolic(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match (v.shape.as_ref().map(|s| s.len()), dims.as_slice()) {
        (Some(4), &[c, h, w]) => Ok([c, h, w]),
        _ => Err(ExecError::Invalid(format!(
            "distilled data needs an image input [N, C, H, W] with fixed C, H, W; input '{}' is {:?}",
            v.name, v.shape
        ))),
    }
}

/// Distils `cfg.samples` inputs whose BatchNormalization statistics match the model's
/// running statistics. `classes` names the labels (default `0`, `1`, …); `on_step` sees the
/// global step and the current batch loss.
pub fn distill(
    exec: &Executor,
    cfg: &DistillConfig,
    classes: Option<Vec<String>>,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<Distilled> {
    if cfg.samples == 0 || cfg.batch == 0 || cfg.steps == 0 {
        return Err(ExecError::Invalid(
            "distillation needs samples, batch and steps of at least 1".into(),
        ));
    }
    if !(cfg.lr > 0.0 && cfg.init_std > 0.0) {
        return Err(ExecError::Invalid(
            "distillation needs a positive lr and init_std".into(),
        ));
    }
    let targets = bn_targets(exec)?;
    let [c, h, w] = input_shape(exec)?;
    let logits_at = loss_target(exec)?.value;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let (mut first, mut last, mut batches) = (0.0, 0.0, 0usize);
    let mut n_classes = 0;
    let mut step = 0;
    let mut start = 0;
    while start < cfg.samples {
        let n = cfg.batch.min(cfg.samples - start);
        let init: Vec<f32> = (0..n * c * h * w)
            .map(|_| {
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                cfg.init_mean + cfg.init_std * z as f32
            })
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(init, (n, c, h, w), exec.device())?)?;
        let mut opt = AdamW::new(
            vec![x.clone()],
            ParamsAdamW {
                lr: cfg.lr * cfg.init_std as f64,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        for s in 0..cfg.steps {
            let loss = bn_loss(exec, x.as_tensor(), &targets)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(ExecError::Invalid(format!(
                    "distillation diverged at step {s} (loss {value}); lower lr"
                )));
            }
            if s == 0 {
                first += value;
            }
            on_step(step, value);
            step += 1;
            let decay = 0.5 * (1.0 + (std::f64::consts::PI * s as f64 / cfg.steps as f64).cos());
            opt.set_learning_rate(cfg.lr * cfg.init_std as f64 * decay);
            opt.backward_step(&loss)?;
        }
        let x = x.as_tensor().detach();
        last += bn_loss(exec, &x, &targets)?.to_scalar::<f32>()? as f64;
        let r = exec.run(
            std::slice::from_ref(&x),
            &RunOptions {
                keep: vec![logits_at],
                ..Default::default()
            },
        )?;
        let logits = r
            .kept
            .get(&logits_at)
            .ok_or_else(|| ExecError::Invalid("logits were not produced".into()))?
            .flatten_from(1)?;
        n_classes = logits.dims()[1];
        let vals = to_vec_f32(&logits)?;
        for row in vals.chunks(n_classes.max(1)) {
            let top = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            labels.push(top as u32);
        }
        images.extend(to_vec_f32(&x)?);
        batches += 1;
        start += n;
    }
    let classes = match classes {
        Some(names) if names.len() >= n_classes => names,
        Some(names) => {
            return Err(ExecError::Invalid(format!(
                "{} class names for a model with {n_classes} outputs",
                names.len()
            )))
        }
        None => (0..n_classes).map(|i| i.to_string()).collect(),
    };
    let data = Dataset::from_parts(
        format!("distilled-{}", exec.graph().name),
        images,
        labels,
        cfg.samples,
        c,
        h,
        w,
        classes,
    )?;
    Ok(Distilled {
        data,
        initial_loss: first / batches as f64,
        final_loss: last / batches as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::GraphBuilder;
    use mixprec_graph::Graph;

    /// 6×5×5 → conv 6→3 (3×3, pad 1, bias) → BN with non-trivial running statistics → ReLU →
    /// flatten → fc 75→3. More input than BN channels, so every channel's statistics can be
    /// matched.
    fn bn_model() -> Graph {
        let (mut b, x) = GraphBuilder::new("bn-net", 6, 5, 5, 5);
        let y = b.conv("conv", x, 6, 3, 3, 1, 1, true);
        let y = b.bn("bn", y, 3);
        let y = b.node("relu", Op::Relu, vec![y]);
        let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![y]);
        let y = b.fc("fc", y, 75, 3);
        let mut g = b.finish(y);
        for (name, vals) in [
            ("bn.running_mean", [0.5f32, -1.0, 2.0]),
            ("bn.running_var", [2.0f32, 0.5, 3.0]),
        ] {
            let v = g.values.iter().position(|v| v.name == name).unwrap();
            g.initializers.insert(
                v,
                mixprec_graph::Tensor::f32(vec![3], vals.to_vec()).unwrap(),
            );
        }
        g
    }

    #[test]
    fn distillation_matches_bn_statistics() {
        let exec = Executor::new(bn_model()).unwrap();
        let cfg = DistillConfig {
            samples: 12,
            batch: 8,
            steps: 150,
            seed: 3,
            ..Default::default()
        };
        let mut seen = 0;
        let d = distill(&exec, &cfg, None, &mut |_, _| seen += 1).unwrap();
        assert_eq!(seen, 2 * 150);
        assert!(
            d.final_loss * 10.0 <= d.initial_loss,
            "loss {} → {}",
            d.initial_loss,
            d.final_loss
        );
        assert_eq!(d.data.shape(), [12, 6, 5, 5]);
        assert_eq!(d.data.classes, ["0", "1", "2"]);
        assert!(d.data.images.iter().all(|v| v.is_finite()));
        // The loss restated by hand on the first batch: per-channel batch mean and std of the
        // conv output against the running statistics.
        let targets = bn_targets(&exec).unwrap();
        let x = Tensor::from_slice(&d.data.images[..8 * 150], (8, 6, 5, 5), exec.device()).unwrap();
        let loss = bn_loss(&exec, &x, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let conv = exec.graph().nodes[0].outputs[0];
        let r = exec
            .run(
                std::slice::from_ref(&x),
                &RunOptions {
                    keep: vec![conv],
                    ..Default::default()
                },
            )
            .unwrap();
        let a = to_vec_f32(&r.kept[&conv]).unwrap();
        let (rm, rv) = ([0.5f64, -1.0, 2.0], [2.0f64, 0.5, 3.0]);
        let mut want = 0.0;
        for ch in 0..3 {
            let vals: Vec<f64> = (0..8)
                .flat_map(|n| (0..25).map(move |p| (n, p)))
                .map(|(n, p)| a[n * 75 + ch * 25 + p] as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64;
            want += (m - rm[ch]).powi(2) + ((v + 1e-5).sqrt() - (rv[ch] + 1e-5).sqrt()).powi(2);
        }
        want /= 3.0;
        assert!(
            (loss - want).abs() <= 1e-4 * want.max(1e-3),
            "{loss} vs {want}"
        );
        // Deterministic for a seed.
        let again = distill(&exec, &cfg, None, &mut |_, _| {}).unwrap();
        assert_eq!(again.data.images, d.data.images);
    }

    #[test]
    fn models_without_batch_norm_are_refused() {
        let (mut b, x) = GraphBuilder::new("plain", 1, 4, 4, 0);
        let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
        let y = b.fc("fc", y, 16, 3);
        let exec = Executor::new(b.finish(y)).unwrap();
        let e = distill(&exec, &DistillConfig::default(), None, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no BatchNormalization") && e.contains("folded"),
            "{e}"
        );
    }
}
