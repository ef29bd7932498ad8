//! Training on the executor: mini-batch AdamW or SGD with momentum, cosine learning-rate decay,
//! BatchNorm running statistics, and an optional transform of the gradients (gradient
//! quantization plugs in here).

use crate::error::{ExecError, Result};
use crate::eval::{evaluate, EvalResult};
use crate::executor::{Executor, LayerHook};
use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW, SGD};
use mixprec_data::Dataset;
use mixprec_graph::{Op, ValueId};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeSet;

/// Optimiser choice.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// AdamW.
    Adamw,
    /// SGD (candle's plain SGD; momentum is not applied).
    Sgd,
}

/// Training settings.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Peak learning rate (cosine-decayed to 0 over all steps).
    pub lr: f64,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Shuffling seed.
    pub seed: u64,
    /// BatchNorm running-statistics momentum (weight of the old value).
    pub bn_momentum: f64,
    /// Stop after this many steps in total (for quick runs); 0 = no limit.
    pub max_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 8,
            batch: 64,
            lr: 2e-3,
            weight_decay: 1e-4,
            optimizer: OptimizerKind::Adamw,
            seed: 0,
            bn_momentum: 0.9,
            max_steps: 0,
        }
    }
}

/// Changes gradients before the optimiser step (e.g. stochastic rounding to k bits).
pub trait GradTransform {
    /// Transform the gradient of one parameter.
    fn transform(&self, name: &str, grad: &Tensor, step: usize) -> Result<Tensor>;
}

/// Progress of training, reported after each step and each epoch.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// One optimiser step done.
    Step {
        /// Epoch (from 0).
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// Batch loss.
        loss: f32,
    },
    /// An epoch ended; test accuracy when a test set was given.
    Epoch {
        /// Epoch (from 0).
        epoch: usize,
        /// Mean training loss.
        mean_loss: f32,
        /// Accuracy on the test set.
        test: Option<EvalResult>,
    },
}

/// The trainable parameters: every float initializer except BatchNorm running statistics and
/// constants that no layer trains (input normalisation).
pub fn trainable_params(exec: &Executor) -> Vec<ValueId> {
    let g = exec.graph();
    let mut frozen = BTreeSet::new();
    for n in &g.nodes {
        match n.op {
            Op::BatchNorm { .. } => frozen.extend([n.input(3), n.input(4)].into_iter().flatten()),
            Op::Sub | Op::Mul | Op::Add | Op::Div if n.name.starts_with("norm_") => {
                frozen.extend(n.input(1))
            }
            _ => {}
        }
    }
    exec.vars()
        .keys()
        .copied()
        .filter(|v| !frozen.contains(v))
        .collect()
}

/// Train `exec` on `train`, evaluating on `test` after every epoch.
pub fn train(
    exec: &mut Executor,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    hook: Option<&dyn LayerHook>,
    grad_transform: Option<&dyn GradTransform>,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<()> {
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(ExecError::Invalid(
            "epochs and batch must be at least 1".into(),
        ));
    }
    if train.n == 0 {
        return Err(ExecError::Invalid("the training set is empty".into()));
    }
    let params = trainable_params(exec);
    let vars: Vec<Var> = params
        .iter()
        .filter_map(|v| exec.var(*v).cloned())
        .collect();
    let names: Vec<String> = params
        .iter()
        .map(|v| exec.graph().values[*v].name.clone())
        .collect();
    let steps_per_epoch = train.n.div_ceil(cfg.batch);
    let total_steps = if cfg.max_steps > 0 {
        cfg.max_steps.min(steps_per_epoch * cfg.epochs)
    } else {
        steps_per_epoch * cfg.epochs
    };
    let mut adam = match cfg.optimizer {
        OptimizerKind::Adamw => Some(AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
                ..Default::default()
            },
        )?),
        OptimizerKind::Sgd => None,
    };
    let mut sgd = match cfg.optimizer {
        OptimizerKind::Sgd => Some(SGD::new(vars.clone(), cfg.lr)?),
        OptimizerKind::Adamw => None,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..train.n).collect();
    let sample = [train.c, train.h, train.w];
    let per: usize = sample.iter().product();
    let mut global = 0usize;
    let mut buf = Vec::with_capacity(cfg.batch * per);
    'epochs: for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0f64;
        let mut count = 0usize;
        for (step, chunk) in order.chunks(cfg.batch).enumerate() {
            if global >= total_steps {
                break 'epochs;
            }
            let lr = cfg.lr
                * 0.5
                * (1.0 + (std::f64::consts::PI * global as f64 / total_steps as f64).cos());
            if let Some(a) = adam.as_mut() {
                a.set_learning_rate(lr);
            }
            if let Some(s) = sgd.as_mut() {
                s.set_learning_rate(lr);
            }
            buf.clear();
            let mut labels = Vec::with_capacity(chunk.len());
            for &i in chunk {
                buf.extend_from_slice(&train.images[i * per..(i + 1) * per]);
                labels.push(train.labels[i]);
            }
            let x = Tensor::from_slice(
                &buf,
                (chunk.len(), sample[0], sample[1], sample[2]),
                exec.device(),
            )?;
            let (loss, run) = exec.loss(&x, &labels, hook, true)?;
            let mut grads = loss.backward()?;
            if let Some(t) = grad_transform {
                for (var, name) in vars.iter().zip(&names) {
                    if let Some(g) = grads.remove(var.as_tensor()) {
                        grads.insert(var.as_tensor(), t.transform(name, &g, global)?);
                    }
                }
            }
            if let Some(a) = adam.as_mut() {
                a.step(&grads)?;
            }
            if let Some(s) = sgd.as_mut() {
                s.step(&grads)?;
            }
            let m = cfg.bn_momentum;
            for (mean_v, var_v, bm, bv) in run.bn_stats {
                let n = (x.dims()[0] * x.dims()[2..].iter().product::<usize>()) as f64;
                let unbiased = bv.affine(n / (n - 1.0).max(1.0), 0.0)?;
                for (v, new) in [(mean_v, bm), (var_v, unbiased)] {
                    if let Some(var) = exec.var(v) {
                        let upd = (var.as_tensor().affine(m, 0.0)? + new.affine(1.0 - m, 0.0)?)?;
                        var.set(&upd)?;
                    }
                }
            }
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(ExecError::Invalid(format!(
                    "training diverged at epoch {epoch}, step {step} (loss {l}); lower --lr"
                )));
            }
            loss_sum += l as f64;
            count += 1;
            global += 1;
            on_event(&TrainEvent::Step {
                epoch,
                step,
                steps: steps_per_epoch,
                loss: l,
            });
        }
        let test_r = match test {
            Some(t) => Some(evaluate(exec, t, 500, hook, &mut |_, _| {})?),
            None => None,
        };
        on_event(&TrainEvent::Epoch {
            epoch,
            mean_loss: (loss_sum / count.max(1) as f64) as f32,
            test: test_r,
        });
    }
    exec.sync_graph()
}
