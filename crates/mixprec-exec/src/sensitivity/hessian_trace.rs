//! `hessian-trace`: average Hessian trace × weight quantization error.
//!
//! Survey §3.2.3 (HAWQ-V2, Dong et al. 2020, "HAWQ-V2: Hessian Aware trace-Weighted
//! Quantization of Neural Networks"):
//! * Eq. 21: Hutchinson's estimator Tr(H) ≈ (1/m) Σ_j z_jᵀ H z_j with Rademacher probes z_j;
//! * Eq. 22: each z_jᵀ H z_j is the batch-average of the per-sample products (here: one
//!   batch of samples per pass, cycling through the samples);
//! * Eq. 23: Ω_i = Tr(H_i)/n_i · ‖Q(W_i) − W_i‖², n_i = number of weights of layer i.
//!
//! Estimators (`estimator`):
//! * `exact` ([`crate::ggn`]): when every operator between a layer and the logits is piecewise
//!   linear, the layer's Hessian block is its Gauss–Newton block, and Tr(H_i) is a sum of
//!   squared per-(sample, class) gradient norms: one forward and backward pass per class, no
//!   probes and no estimator error. It also gives the traces for input activations (Eq. 22),
//!   so activation options (`a4`, `a8`) are scored with Ω = Tr(H_x)/n_x · E‖Q(x) − x‖².
//! * `logit-hutchinson` ([`crate::Executor::probed_layer_traces`]): Hutchinson's estimator
//!   (Eq. 21) on the same factorisation, with Rademacher probes ε_n ∈ {±1}^C in the logit space
//!   of every sample (Tr(H_i) = (1/N) Σ_n E‖J_nᵀ U_n ε_n‖², U_nU_nᵀ the softmax Hessian): one
//!   row per sample and probe instead of one per class, a fresh probe per sample. Same
//!   preconditions as `exact`, weights and activations; rounds are drawn until every layer's
//!   relative standard error (of the weight trace, and of the input trace when activation
//!   options are scored) is below `tol`, after at least `min_probes`, at most `max_probes`.
//! * `hutchinson`: the estimator below, for any twice-differentiable model.
//! * `auto` (default): for every layer followed by a piecewise-linear network, `exact` when the
//!   class count C is at most 4·`min_probes` (C rows per sample against at least `min_probes`),
//!   else `logit-hutchinson`; `hutchinson` for the other layers (e.g. the layers before a
//!   Sigmoid gate), and for every layer when the factorisation fails.
//!
//! Hutchinson: H·z is exact: double backward ([`crate::grad::GradGraph::hvp`]) on a first-order graph kept
//! per sample batch, of a model copy whose only tracked parameters are the weights probed
//! ([`crate::Executor::second_order`], [`crate::grad::SecondOrder::restrict`]: BatchNorm
//! parameters, biases and the other layers' weights cost no gradients). A layer probed alone
//! has a copy of its own in which only its weight is tracked, so its passes run backward only
//! through the layers from it to the loss. Probes are drawn until the relative standard error
//! of a layer's estimate drops below `tol` (after at least `min_probes`) or `max_probes` is
//! reached; a finished layer leaves the probe. The trace may be negative away from a minimum;
//! Ω keeps its sign.
//!
//! Input activations (Eq. 22), when activation options are scored: a zero variable is added
//! to each layer's input in the copy over all layers ([`crate::grad::SecondOrder::grad_graph_tapped`]),
//! and the same estimator (joint, then alone) probes those blocks on one tapped first-order graph
//! per sample batch. The Hessian of the mean loss in the batch activation is block-diagonal
//! over the samples (BatchNorm in inference mode), so its trace is the mean per-sample trace
//! Tr ∇²_{x_n} L_n, the quantity `exact` computes.
//!
//! Joint probes (`joint`): one Rademacher vector z = (z_1, …, z_L) over all layers' weights and
//! one double-backward pass give (Hz)_i = Σ_j H_ij z_j for every
//! layer at once; z_iᵀ(Hz)_i is an unbiased sample of Tr(H_ii) because the cross terms
//! z_iᵀH_ij z_j (j ≠ i) have zero mean. They add variance ‖H_ij‖²_F per other layer, which can
//! swamp a layer with a small trace (a 1×1 shortcut, the classifier): once a layer's estimate
//! is predicted to need more than `max_probes` probes (m·(rel. error/tol)², checked from
//! `min_probes` on), its joint samples are dropped and it is probed alone (z_j = 0 for j ≠ i).
//!
//! Complexity: per block of `probes_per_pass` rounds on one sample batch, one forward + backward
//! pass and up to `probes_per_pass` double-backward passes for the joint layers, and the same
//! for each layer probed alone over the part of the network from that layer on; one
//! first-order graph is alive at a time, and the copies share the parameter tensors (extra
//! memory O(n_i) for layer i's copy). The quantization error is O(n_i) per option.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use std::collections::HashMap;
use std::sync::Mutex;

use mixprec_graph::Layer;

use super::{
    layer_seed, parse_config, sq_norm, MetricEntry, OptionTarget, SensCtx, SensitivityMetric,
    SensitivityTable,
};
use crate::error::{ExecError, Result};
use crate::executor::LayerHook;
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
    /// How the traces are computed.
    pub estimator: Estimator,
    /// (sample, logit-space vector) rows per pass of `exact` and `logit-hutchinson`: their
    /// memory grows linearly with them (≈ 17 MB per row on ResNet-8 and 34 MB on ResNet-20 at 32×32), and 8 was
    /// also the fastest there.
    pub exact_rows: usize,
}

/// How `hessian-trace` computes Tr(H_i).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// The Gauss–Newton factorisation ([`crate::ggn`]) for the layers followed by a
    /// piecewise-linear network (exact for at most 4·`min_probes` classes, else probed in the
    /// logit space), weight-space Hutchinson for the others.
    Auto,
    /// Exact traces through the Gauss–Newton factorisation; an error for other networks.
    Exact,
    /// Hutchinson's estimator with Rademacher probes in the logit space of the Gauss–Newton
    /// factorisation; an error for networks `exact` cannot take.
    #[serde(rename = "logit-hutchinson")]
    LogitHutchinson,
    /// Hutchinson's estimator (Eq. 21–22) with Rademacher probes.
    Hutchinson,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tol: 0.05,
            min_probes: 8,
            max_probes: 64,
            probes_per_pass: 4,
            joint: true,
            estimator: Estimator::Auto,
            exact_rows: 8,
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
    /// Computed exactly (no probes, no estimator error).
    pub exact: bool,
    /// Per-sample trace of the Hessian with respect to the layer's input activation,
    /// averaged over the samples (computed when activation options are scored, and always
    /// through the Gauss–Newton factorisation).
    pub input_trace: Option<f64>,
    /// Relative standard error of `input_trace` (0 when exact).
    pub input_rel_stderr: Option<f64>,
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
        if cfg.exact_rows == 0 {
            return Err(ExecError::Invalid(
                "hessian-trace: exact_rows must be at least 1".into(),
            ));
        }
        if cfg.probes_per_pass == 0 {
            return Err(ExecError::Invalid(
                "hessian-trace: probes_per_pass must be at least 1".into(),
            ));
        }
        Ok(HessianTrace { cfg })
    }

    /// Estimates of Tr(H_i) for every layer of `ctx` (Eq. 21–22): through the Gauss–Newton
    /// factorisation for the layers [`Self::factored_layers`] picks (exact or probed in the
    /// logit space), Hutchinson's estimate (joint probes over the other layers first, layers
    /// whose estimate cannot converge that way probed alone; see the module doc) for the others.
    pub fn traces(&self, ctx: &SensCtx) -> Result<Vec<TraceEstimate>> {
        let (factored, exact) = self.factored_layers(ctx)?;
        if factored.iter().all(|&e| !e) {
            return self.hutchinson(ctx);
        }
        let pick = |want: bool| -> Vec<Layer> {
            ctx.layers
                .iter()
                .zip(&factored)
                .filter(|(_, &e)| e == want)
                .map(|(l, _)| l.clone())
                .collect()
        };
        let fact_est = if exact {
            self.exact_traces(ctx, &pick(true))
        } else {
            self.logit_hutchinson(ctx, &pick(true))
        };
        let fact_est = match fact_est {
            Ok(t) => t,
            // `auto`: a model the factorisation cannot take gets Hutchinson everywhere.
            Err(_) if self.cfg.estimator == Estimator::Auto => return self.hutchinson(ctx),
            Err(e) => return Err(e),
        };
        let rest = pick(false);
        let mut probed = if rest.is_empty() {
            Vec::new()
        } else {
            let sub = SensCtx {
                exec: ctx.exec,
                layers: rest,
                options: ctx.options.clone(),
                batches: ctx.batches.clone(),
                ranges: ctx.ranges.clone(),
                seed: ctx.seed,
            };
            self.hutchinson(&sub)?
        }
        .into_iter();
        let mut fact_est = fact_est.into_iter();
        factored
            .iter()
            .map(|&e| {
                if e { fact_est.next() } else { probed.next() }.ok_or_else(|| {
                    ExecError::Invalid("hessian-trace: a layer has no estimate".into())
                })
            })
            .collect()
    }

    /// Whether every layer's trace is computed exactly on `ctx`.
    pub fn use_exact(&self, ctx: &SensCtx) -> Result<bool> {
        let (factored, exact) = self.factored_layers(ctx)?;
        Ok(exact && factored.iter().all(|&e| e))
    }

    /// The layers whose traces the configured estimator computes through the Gauss–Newton
    /// factorisation, and whether exactly (else probed in the logit space): none with
    /// `hutchinson`, all with `exact` and `logit-hutchinson`; with `auto`, the layers followed
    /// by a piecewise-linear network ([`crate::ggn::non_linear_tail`]), exactly when the class
    /// count is at most 4·`min_probes`.
    pub fn factored_layers(&self, ctx: &SensCtx) -> Result<(Vec<bool>, bool)> {
        let n = ctx.layers.len();
        match self.cfg.estimator {
            Estimator::Hutchinson => return Ok((vec![false; n], false)),
            Estimator::Exact => return Ok((vec![true; n], true)),
            Estimator::LogitHutchinson => return Ok((vec![true; n], false)),
            Estimator::Auto => {}
        }
        let g = ctx.exec.graph();
        let target = crate::grad::loss_target(ctx.exec)?;
        let classes = match ctx.batches.first() {
            Some((x, _)) => {
                let x1 = x.narrow(0, 0, 1)?;
                let opts = crate::RunOptions {
                    keep: vec![target.value],
                    ..crate::RunOptions::default()
                };
                let r = ctx.exec.run(std::slice::from_ref(&x1), &opts)?;
                r.kept
                    .get(&target.value)
                    .map_or(usize::MAX, |z| z.elem_count())
            }
            None => usize::MAX,
        };
        let factored = ctx
            .layers
            .iter()
            .map(|l| crate::ggn::non_linear_tail(g, l, target.value).is_none())
            .collect();
        Ok((factored, classes <= 4 * self.cfg.min_probes))
    }

    /// Exact traces ([`crate::ggn`]) of `layers`, averaged over the samples of every batch.
    fn exact_traces(&self, ctx: &SensCtx, layers: &[Layer]) -> Result<Vec<TraceEstimate>> {
        let mut sums = vec![(0f64, 0f64); layers.len()];
        let mut total = 0usize;
        for (x, _) in &ctx.batches {
            let n = x.dims().first().copied().unwrap_or(0);
            let t = ctx
                .exec
                .exact_layer_traces(layers, x, self.cfg.exact_rows)?;
            for (s, v) in sums.iter_mut().zip(t) {
                s.0 += v.weight * n as f64;
                s.1 += v.input * n as f64;
            }
            total += n;
        }
        sums.into_iter()
            .zip(layers)
            .map(|((s, si), l)| {
                let trace = s / total.max(1) as f64;
                let input_trace = si / total.max(1) as f64;
                if !trace.is_finite() || !input_trace.is_finite() {
                    return Err(ExecError::Invalid(format!(
                        "layer '{}': the Hessian trace is not finite",
                        l.name
                    )));
                }
                Ok(TraceEstimate {
                    trace,
                    probes: 0,
                    rel_stderr: 0.0,
                    joint: false,
                    dropped: 0,
                    exact: true,
                    input_trace: Some(input_trace),
                    input_rel_stderr: Some(0.0),
                })
            })
            .collect()
    }

    /// Hutchinson's estimate in the logit space of the Gauss–Newton factorisation
    /// ([`crate::Executor::probed_layer_traces`]) of `layers`: each round draws a fresh probe
    /// per sample of every batch and gives one sample of every unfinished layer's weight and
    /// input traces; rounds are drawn in blocks of the number predicted to reach `tol`, at most doubling.
    fn logit_hutchinson(&self, ctx: &SensCtx, layers: &[Layer]) -> Result<Vec<TraceEstimate>> {
        let cfg = &self.cfg;
        let need_input = ctx
            .options
            .iter()
            .any(|o| o.target == OptionTarget::Activation);
        let total: usize = ctx
            .batches
            .iter()
            .map(|(x, _)| x.dims().first().copied().unwrap_or(0))
            .sum();
        let mut rng = ChaCha8Rng::seed_from_u64(layer_seed(ctx.seed, layers.len()));
        let mut samples = vec![(Vec::new(), Vec::new()); layers.len()];
        let mut done: Vec<Option<TraceEstimate>> = vec![None; layers.len()];
        let (mut drawn, mut rounds) = (0usize, cfg.min_probes);
        loop {
            let active: Vec<usize> = (0..layers.len()).filter(|&i| done[i].is_none()).collect();
            if active.is_empty() {
                break;
            }
            let sub: Vec<Layer> = active.iter().map(|&i| layers[i].clone()).collect();
            let mut acc = vec![vec![(0f64, 0f64); sub.len()]; rounds];
            for (x, _) in &ctx.batches {
                let n = x.dims().first().copied().unwrap_or(0) as f64;
                let t = ctx
                    .exec
                    .probed_layer_traces(&sub, x, cfg.exact_rows, rounds, &mut rng)?;
                for (a, round) in acc.iter_mut().zip(t) {
                    for (a, v) in a.iter_mut().zip(round) {
                        a.0 += v.weight * n;
                        a.1 += v.input * n;
                    }
                }
            }
            for round in acc {
                for (&i, (w, x)) in active.iter().zip(round) {
                    samples[i].0.push(w / total.max(1) as f64);
                    samples[i].1.push(x / total.max(1) as f64);
                }
            }
            drawn += rounds;
            let mut more = 1usize;
            for &i in &active {
                let (w, x) = (estimate(&samples[i].0), estimate(&samples[i].1));
                let rel = if need_input {
                    w.rel_stderr.max(x.rel_stderr)
                } else {
                    w.rel_stderr
                };
                if drawn >= cfg.max_probes || rel < cfg.tol {
                    if !w.trace.is_finite() || !x.trace.is_finite() {
                        return Err(ExecError::Invalid(format!(
                            "layer '{}': the Hessian trace estimate is not finite",
                            layers[i].name
                        )));
                    }
                    done[i] = Some(TraceEstimate {
                        input_trace: Some(x.trace),
                        input_rel_stderr: Some(x.rel_stderr),
                        joint: layers.len() > 1,
                        ..w
                    });
                } else {
                    // Rounds still needed at this variance: m·(rel/tol)² − m.
                    let need = drawn as f64 * (rel / cfg.tol).powi(2);
                    more = more.max((need.ceil() as usize).saturating_sub(drawn));
                }
            }
            // At most double the rounds: early variance estimates of these heavy-tailed
            // samples are noisy, and an overestimate would overshoot `tol`.
            rounds = more
                .min(drawn)
                .min(cfg.max_probes.saturating_sub(drawn))
                .max(1);
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// Hutchinson's estimate (see the module doc); of the input activations' traces too when
    /// `ctx` has activation options.
    fn hutchinson(&self, ctx: &SensCtx) -> Result<Vec<TraceEstimate>> {
        let cfg = &self.cfg;
        let need_input = ctx
            .options
            .iter()
            .any(|o| o.target == OptionTarget::Activation);
        let weights: Vec<_> = ctx.layers.iter().map(|l| l.weight).collect();
        let mut st = Vec::with_capacity(ctx.layers.len());
        for i in 0..ctx.layers.len() {
            st.push(LayerState::new(
                layer_seed(ctx.seed, i),
                cfg.joint && ctx.layers.len() > 1,
            ));
        }
        // Input activations (Eq. 22), when activation options are scored: probed on `model`
        // with a zero tap on every layer input (its Hessian in the batch activation is
        // block-diagonal over the samples, so its trace is the mean per-sample trace).
        let mut ist: Vec<LayerState> = if need_input {
            (0..ctx.layers.len())
                .map(|i| {
                    LayerState::new(
                        layer_seed(ctx.seed ^ INPUT_SEED, i),
                        cfg.joint && ctx.layers.len() > 1,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let model = ctx
            .exec
            .second_order(&weights)
            .map_err(|e| second_order_error(ctx, e))?;
        // The copy over the layers still probed jointly (rebuilt when one leaves) and one copy
        // per layer probed alone, whose backward passes skip the layers before it.
        // (layers, copy); no copy: `model` itself, while every layer is still joint.
        let mut joint_model: Option<(Vec<usize>, Option<crate::grad::SecondOrder>)> = None;
        let mut alone_model: Vec<Option<crate::grad::SecondOrder>> =
            (0..st.len()).map(|_| None).collect();
        let restrict = |layers: &[usize]| {
            let w: Vec<_> = layers.iter().map(|&i| weights[i]).collect();
            model.restrict(&w).map_err(|e| second_order_error(ctx, e))
        };
        let mut block = 0usize;
        while st.iter().chain(&ist).any(|s| s.done.is_none()) {
            // Block k reads batch k mod #batches (Eq. 22): `probes_per_pass` rounds share the
            // first-order graph of a batch, one graph alive at a time.
            let (x, labels) = &ctx.batches[block % ctx.batches.len()];
            block += 1;
            let joint: Vec<usize> = (0..st.len()).filter(|&i| st[i].active(true)).collect();
            if !joint.is_empty() {
                if joint_model.as_ref().is_none_or(|(set, _)| *set != joint) {
                    drop(joint_model.take()); // free the previous copy first
                    let copy = if joint.len() == st.len() {
                        None
                    } else {
                        Some(restrict(&joint)?)
                    };
                    joint_model = Some((joint.clone(), copy));
                }
                let (set, copy) = joint_model.as_ref().ok_or_else(|| {
                    ExecError::Invalid("hessian-trace: no joint model copy".into())
                })?;
                let g = copy
                    .as_ref()
                    .unwrap_or(&model)
                    .grad_graph(x, labels)
                    .map_err(|e| second_order_error(ctx, e))?;
                for _ in 0..cfg.probes_per_pass {
                    // (block of the copy, layer) for every layer still probed jointly.
                    let members: Vec<(usize, usize)> = set
                        .iter()
                        .enumerate()
                        .filter(|(_, &i)| st[i].active(true))
                        .map(|(k, &i)| (k, i))
                        .collect();
                    if members.is_empty() {
                        break;
                    }
                    probe(ctx, &mut st, &g, set.len(), &members)?;
                    let n_joint = members.len();
                    for &(_, i) in &members {
                        st[i].update(cfg, &ctx.layers[i].name, n_joint)?;
                    }
                }
            }
            for i in 0..st.len() {
                if !st[i].active(false) {
                    continue;
                }
                if alone_model[i].is_none() {
                    alone_model[i] = Some(restrict(&[i])?);
                }
                let copy = alone_model[i].as_ref().ok_or_else(|| {
                    ExecError::Invalid("hessian-trace: no single-layer model copy".into())
                })?;
                let g = copy
                    .grad_graph(x, labels)
                    .map_err(|e| second_order_error(ctx, e))?;
                for _ in 0..cfg.probes_per_pass {
                    if !st[i].active(false) {
                        break;
                    }
                    probe(ctx, &mut st, &g, 1, &[(0, i)])?;
                    st[i].update(cfg, &ctx.layers[i].name, 0)?;
                }
                if st[i].done.is_some() {
                    alone_model[i] = None;
                }
            }
            let open: Vec<usize> = (0..ist.len()).filter(|&i| ist[i].done.is_none()).collect();
            if !open.is_empty() {
                // One tapped first-order graph of the batch serves the joint probe over the
                // inputs still probed jointly and one probe per input probed alone.
                let taps: Vec<Layer> = open.iter().map(|&i| ctx.layers[i].clone()).collect();
                let g = model
                    .grad_graph_tapped(x, labels, &taps)
                    .map_err(|e| second_order_error(ctx, e))?;
                let nw = model.weights().len();
                let blocks = nw + taps.len();
                let names: Vec<String> = ctx
                    .layers
                    .iter()
                    .map(|l| format!("input of {}", l.name))
                    .collect();
                for _ in 0..cfg.probes_per_pass {
                    let members: Vec<(usize, usize)> = open
                        .iter()
                        .enumerate()
                        .filter(|(_, &i)| ist[i].active(true))
                        .map(|(k, &i)| (nw + k, i))
                        .collect();
                    if !members.is_empty() {
                        probe(ctx, &mut ist, &g, blocks, &members)?;
                        for &(_, i) in &members {
                            ist[i].update(cfg, &names[i], members.len())?;
                        }
                    }
                    for (k, &i) in open.iter().enumerate() {
                        if ist[i].active(false) {
                            probe(ctx, &mut ist, &g, blocks, &[(nw + k, i)])?;
                            ist[i].update(cfg, &names[i], 0)?;
                        }
                    }
                }
            }
        }
        let mut inputs = ist.into_iter().map(|s| s.done);
        st.into_iter()
            .map(|s| {
                let mut e = s.done.ok_or_else(|| {
                    ExecError::Invalid("hessian-trace: a layer has no estimate".into())
                })?;
                if let Some(x) = inputs.next().flatten() {
                    e.input_trace = Some(x.trace);
                    e.input_rel_stderr = Some(x.rel_stderr);
                }
                Ok(e)
            })
            .collect()
    }
}

/// Seed offset of the input-activation probes.
const INPUT_SEED: u64 = 0x1A7E_5EED_0000_0001;

/// Probing state of one layer's weight or input activation.
struct LayerState {
    rng: ChaCha8Rng,
    samples: Vec<f64>,
    joint: bool,
    dropped: usize,
    done: Option<TraceEstimate>,
}

impl LayerState {
    fn new(seed: u64, joint: bool) -> Self {
        LayerState {
            rng: ChaCha8Rng::seed_from_u64(seed),
            samples: Vec::new(),
            joint,
            dropped: 0,
            done: None,
        }
    }

    /// Still probed, jointly (`joint`) or alone.
    fn active(&self, joint: bool) -> bool {
        self.done.is_none() && self.joint == joint
    }

    /// After a new sample: finish the layer once its estimate is accurate enough or the
    /// budget is spent; or, probed jointly with `n_joint` − 1 other layers, leave the joint
    /// probe once it is predicted to need more than `max_probes` probes.
    fn update(&mut self, cfg: &Config, name: &str, n_joint: usize) -> Result<()> {
        if self.done.is_some() {
            return Ok(());
        }
        let est = estimate(&self.samples);
        let m = self.samples.len();
        if m >= cfg.max_probes || (m >= cfg.min_probes && est.rel_stderr < cfg.tol) {
            if !est.trace.is_finite() {
                return Err(ExecError::Invalid(format!(
                    "layer '{name}': the Hessian trace estimate is not finite"
                )));
            }
            self.done = Some(TraceEstimate {
                joint: self.joint,
                dropped: self.dropped,
                ..est
            });
        } else if self.joint && n_joint > 1 && m >= cfg.min_probes {
            // Probes still needed at this variance: m·(rel/tol)². Beyond the budget, the
            // cross terms of the other layers dominate: probe this layer alone.
            let need = m as f64 * (est.rel_stderr / cfg.tol).powi(2);
            if need.is_nan() || need > cfg.max_probes as f64 {
                self.joint = false;
                self.dropped = m;
                self.samples.clear();
            }
        }
        Ok(())
    }

    /// A Rademacher probe of `n` elements.
    fn draw(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| if self.rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect()
    }
}

/// One double-backward pass on `g` (over `blocks` blocks) with a fresh Rademacher probe for
/// each `(block, entry)` of `members` (zero elsewhere): adds z_iᵀ(Hz)_i to each entry's samples.
fn probe(
    ctx: &SensCtx,
    st: &mut [LayerState],
    g: &GradGraph,
    blocks: usize,
    members: &[(usize, usize)],
) -> Result<()> {
    let mut probes: Vec<Option<Tensor>> = vec![None; blocks];
    let mut signs = Vec::with_capacity(members.len());
    for &(k, i) in members {
        let dims = g.block_dims(k)?;
        let z = st[i].draw(dims.iter().product());
        probes[k] = Some(Tensor::from_slice(&z, dims, ctx.exec.device())?);
        signs.push((k, i, z));
    }
    let refs: Vec<Option<&Tensor>> = probes.iter().map(Option::as_ref).collect();
    let hz = g.hvp(&refs).map_err(|e| second_order_error(ctx, e))?;
    for (k, i, z) in signs {
        let h = to_vec_f32(&hz[k])?;
        st[i]
            .samples
            .push(z.iter().zip(&h).map(|(a, b)| (a * b) as f64).sum());
    }
    Ok(())
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
        exact: false,
        input_trace: None,
        input_rel_stderr: None,
    }
}

/// Records every layer's float input activation.
struct InputRecorder(Mutex<HashMap<usize, Tensor>>);

impl LayerHook for InputRecorder {
    fn input(&self, layer: &Layer, x: Tensor) -> Result<Tensor> {
        self.0
            .lock()
            .map_err(|_| ExecError::Invalid("input recorder poisoned".into()))?
            .insert(layer.node, x.clone());
        Ok(x)
    }
}

/// Every layer's float input activation on the batch `x`, by node.
fn record_inputs(ctx: &SensCtx, x: &Tensor) -> Result<HashMap<usize, Tensor>> {
    let rec = InputRecorder(Mutex::new(HashMap::new()));
    ctx.exec.run(
        std::slice::from_ref(x),
        &crate::RunOptions {
            hook: Some(&rec),
            ..Default::default()
        },
    )?;
    rec.0
        .into_inner()
        .map_err(|_| ExecError::Invalid("input recorder poisoned".into()))
}

/// E_n ‖Q(x_n) − x_n‖² of every layer's input under every activation option (`None` for
/// weight options), over the samples of every batch.
fn input_errors(ctx: &SensCtx) -> Result<Vec<Vec<Option<f64>>>> {
    let mut sums = vec![vec![None; ctx.options.len()]; ctx.layers.len()];
    let mut total = 0usize;
    for (x, _) in &ctx.batches {
        let inputs = record_inputs(ctx, x)?;
        for (l, layer) in ctx.layers.iter().enumerate() {
            let xin = inputs
                .get(&layer.node)
                .ok_or_else(|| ExecError::Invalid(format!("layer '{}' did not run", layer.name)))?;
            let xv = to_vec_f32(xin)?;
            for (o, opt) in ctx.options.iter().enumerate() {
                if opt.target != OptionTarget::Activation {
                    continue;
                }
                let q = ctx
                    .single_layer_hook(layer, opt)?
                    .input(layer, xin.clone())?;
                let e: f64 = to_vec_f32(&q)?
                    .iter()
                    .zip(&xv)
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                    .sum();
                *sums[l][o].get_or_insert(0.0) += e;
            }
        }
        total += x.dims().first().copied().unwrap_or(0);
    }
    for row in &mut sums {
        for v in row.iter_mut().flatten() {
            *v /= total.max(1) as f64;
        }
    }
    Ok(sums)
}

/// Elements of each layer's input activation per sample.
fn input_sizes(ctx: &SensCtx) -> Result<Vec<usize>> {
    let (x, _) = ctx
        .batches
        .first()
        .ok_or_else(|| ExecError::Invalid("no samples".into()))?;
    let inputs = record_inputs(ctx, &x.narrow(0, 0, 1)?)?;
    Ok(ctx
        .layers
        .iter()
        .map(|l| inputs.get(&l.node).map_or(1, |t| t.elem_count().max(1)))
        .collect())
}

impl SensitivityMetric for HessianTrace {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        let act = ctx
            .options
            .iter()
            .find(|o| o.target == OptionTarget::Activation);
        let traces = self.traces(ctx)?;
        if let (Some(o), Some((l, _))) = (
            act,
            ctx.layers
                .iter()
                .zip(&traces)
                .find(|(_, t)| t.input_trace.is_none()),
        ) {
            return Err(ExecError::Invalid(format!(
                "metric {}: layer '{}' has no input-activation trace to score '{}' with",
                ENTRY.name, l.name, o.label
            )));
        }
        let (in_err, in_size) = if act.is_some() {
            (input_errors(ctx)?, input_sizes(ctx)?)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut values = Vec::with_capacity(ctx.layers.len());
        for (l, (layer, t)) in ctx.layers.iter().zip(&traces).enumerate() {
            let mut row = Vec::with_capacity(ctx.options.len());
            for (o, opt) in ctx.options.iter().enumerate() {
                row.push(match opt.target {
                    OptionTarget::Weight => {
                        let err = ctx.weight_error(layer, &opt.scheme)?;
                        t.trace / err.len().max(1) as f64 * sq_norm(&err)
                    }
                    // Eq. 23 for the input activation: Tr(H_x)/n_x · E‖Q(x) − x‖².
                    OptionTarget::Activation => {
                        t.input_trace.unwrap_or(0.0) / in_size[l] as f64
                            * in_err[l][o].unwrap_or(0.0)
                    }
                });
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
                    ("exact".to_string(), f64::from(u8::from(e.exact))),
                ]
                .into_iter()
                .chain(e.input_trace.map(|v| ("input_trace".to_string(), v)))
                .chain(
                    e.input_rel_stderr
                        .map(|v| ("input_rel_stderr".to_string(), v)),
                )
                .collect()
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
    summary: "average Hessian trace (exact Gauss–Newton or Hutchinson) × ‖Q(x) − x‖² (weights, activations)",
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
