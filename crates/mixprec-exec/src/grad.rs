//! Losses, gradients and Hessian-vector products.
//!
//! The Hessian-vector product H·v of the loss with respect to one weight tensor is exact:
//! g = ∂L/∂w by a first backward pass that keeps its graph, then H·v = ∂(g·v)/∂w by a second
//! (double backward, Pearlmutter's trick). Survey §3.2.3 (HAWQ-V2, Eq. 21–23) builds its
//! Hutchinson trace estimate on these products.

use crate::error::{ExecError, Result};
use crate::executor::{Executor, LayerHook, RunOptions};
use candle_core::{DType, Tensor};
use mixprec_graph::{Op, ValueId};

/// Where the loss reads the model's prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossTarget {
    /// The value holding logits (or log-probabilities).
    pub value: ValueId,
}

/// The logits of a classifier graph: its first output, or the input of a final Softmax /
/// LogSoftmax (so the loss is computed stably from logits).
pub fn loss_target(exec: &Executor) -> Result<LossTarget> {
    let g = exec.graph();
    let out = *g
        .outputs
        .first()
        .ok_or_else(|| ExecError::Invalid("the model has no output".into()))?;
    let prod = g.producers()[out];
    if let Some(p) = prod {
        let n = &g.nodes[p];
        if let Op::Softmax { .. } | Op::LogSoftmax { .. } = n.op {
            if let Some(x) = n.input(0) {
                return Ok(LossTarget { value: x });
            }
        }
    }
    Ok(LossTarget { value: out })
}

/// Mean cross-entropy of `logits` [N, C] against integer `labels`.
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let logits = logits.flatten_from(1)?;
    let (n, c) = logits.dims2()?;
    if labels.len() != n {
        return Err(ExecError::Invalid(format!(
            "{} labels for a batch of {n}",
            labels.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= c) {
        return Err(ExecError::Invalid(format!(
            "label {bad} is out of range for {c} classes"
        )));
    }
    let logp = crate::ops::softmax(&logits, 1, true).map_err(ExecError::Invalid)?;
    let idx = Tensor::from_slice(labels, (n, 1), logits.device())?;
    let picked = logp.gather(&idx, 1)?;
    Ok(picked.sum_all()?.affine(-1.0 / n as f64, 0.0)?)
}

impl Executor {
    /// The loss of one batch, with weights tracked for gradients.
    pub fn loss(
        &self,
        x: &Tensor,
        labels: &[u32],
        hook: Option<&dyn LayerHook>,
        train_bn: bool,
    ) -> Result<(Tensor, crate::RunResult)> {
        let target = loss_target(self)?;
        let opts = RunOptions {
            track: true,
            train_bn,
            keep: vec![target.value],
            hook,
        };
        let r = self.run(std::slice::from_ref(x), &opts)?;
        let logits = r
            .kept
            .get(&target.value)
            .ok_or_else(|| ExecError::Invalid("logits were not produced".into()))?;
        Ok((cross_entropy(logits, labels)?, r))
    }

    /// Loss value and the gradient of the loss with respect to each listed weight.
    pub fn loss_and_grads(
        &self,
        x: &Tensor,
        labels: &[u32],
        weights: &[ValueId],
    ) -> Result<(f32, Vec<Tensor>)> {
        let (loss, _) = self.loss(x, labels, None, false)?;
        let grads = loss.backward()?;
        let mut out = Vec::with_capacity(weights.len());
        for w in weights {
            let var = self
                .var(*w)
                .ok_or_else(|| ExecError::Invalid(format!("value {w} is not a weight")))?;
            out.push(match grads.get(var.as_tensor()) {
                Some(g) => g.detach(),
                None => var.as_tensor().zeros_like()?,
            });
        }
        Ok((loss.to_dtype(DType::F32)?.to_scalar::<f32>()?, out))
    }

    /// Exact Hessian-vector products H_w·v_k of the batch loss with respect to the weight `w`,
    /// for several probe vectors `vs` sharing one first-order pass.
    pub fn hvp(
        &self,
        x: &Tensor,
        labels: &[u32],
        w: ValueId,
        vs: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        let graph = self.grad_graph(x, labels, &[w])?;
        vs.iter()
            .map(|v| {
                let mut hv = graph.hvp(&[Some(v)])?;
                Ok(hv.remove(0))
            })
            .collect()
    }

    /// The gradients of the batch loss with respect to `weights`, with their graph kept, so
    /// that any number of Hessian-vector products can follow without another forward or
    /// first backward pass (see [`GradGraph::hvp`]). Every other parameter stays on the tape;
    /// [`Executor::second_order`] leaves the cheap ones off.
    pub fn grad_graph(&self, x: &Tensor, labels: &[u32], weights: &[ValueId]) -> Result<GradGraph> {
        let (loss, _) = self.loss(x, labels, None, false)?;
        self.grads_of(&loss, weights)
    }

    /// The gradients of `loss` with respect to `weights`, graph kept.
    fn grads_of(&self, loss: &Tensor, weights: &[ValueId]) -> Result<GradGraph> {
        self.grads_of_with(loss, weights, Vec::new())
    }

    /// As [`Self::grads_of`], followed by blocks for the extra (name, variable) pairs.
    fn grads_of_with(
        &self,
        loss: &Tensor,
        weights: &[ValueId],
        extra: Vec<(String, Tensor)>,
    ) -> Result<GradGraph> {
        let mut vars = Vec::with_capacity(weights.len() + extra.len());
        for &w in weights {
            let var = self
                .var(w)
                .ok_or_else(|| ExecError::Invalid(format!("value {w} is not a weight")))?;
            vars.push(var.as_tensor().clone());
        }
        let mut names: Vec<String> = weights
            .iter()
            .map(|&w| self.graph().values[w].name.clone())
            .collect();
        for (name, var) in extra {
            names.push(name);
            vars.push(var);
        }
        let grads = loss.backward()?;
        let mut out = Vec::with_capacity(vars.len());
        for (name, var) in names.iter().zip(&vars) {
            out.push(grads.get(var).cloned().ok_or_else(|| {
                ExecError::Invalid(format!("the loss does not depend on '{name}'"))
            })?);
        }
        Ok(GradGraph {
            names,
            vars,
            grads: out,
        })
    }

    /// A copy of the model for second-order derivatives with respect to `weights` only: the
    /// other float parameters that feed BatchNormalization, layer weights and biases
    /// (Conv / Gemm / MatMul) or element-wise Add / Sub / Mul / Div become fixed inputs, so no
    /// backward pass spends time on their gradients (per-channel reductions over the whole
    /// batch in both the first and the second backward pass), and a copy for one layer's weight
    /// runs its backward passes only through the layers from that one on. Derivatives with
    /// respect to `weights` are unchanged. Takes the current weights.
    pub fn second_order(&self, weights: &[ValueId]) -> Result<SecondOrder> {
        let mut g = self.graph_with_weights()?;
        let movable = movable_parameters(&g, weights);
        let fixed: Vec<ValueId> = g
            .initializers
            .iter()
            .filter(|(v, t)| movable[**v] && t.is_float())
            .map(|(v, _)| *v)
            .collect();
        let mut tensors = Vec::with_capacity(fixed.len());
        for &v in &fixed {
            let t = take_initializer(&mut g, v)?;
            tensors.push(crate::ops::from_host(&t, self.device())?);
        }
        Ok(SecondOrder {
            exec: Executor::new(g)?,
            fixed: tensors,
            weights: weights.to_vec(),
        })
    }
}

/// Which values may become fixed inputs of a second-order copy for `weights`: float
/// parameters read only by BatchNormalization, element-wise Add / Sub / Mul / Div or as the
/// weight / bias of Conv / Gemm / MatMul (ops that take any run-time tensor there), never a
/// listed weight or a graph output.
fn movable_parameters(g: &mixprec_graph::Graph, weights: &[ValueId]) -> Vec<bool> {
    let mut movable = vec![true; g.values.len()];
    for &w in weights {
        movable[w] = false;
    }
    for n in &g.nodes {
        for (k, v) in n.inputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            let ok = match n.op {
                Op::BatchNorm { .. } | Op::Add | Op::Sub | Op::Mul | Op::Div => true,
                // The weight (k = 1) of a layer not listed is fixed as well: candle's
                // backward then skips the layers before the first listed one and the
                // weight gradients of the others.
                Op::Conv { .. } | Op::Gemm { .. } => k == 1 || k == 2,
                Op::MatMul => k == 1,
                _ => false,
            };
            if !ok {
                movable[v] = false;
            }
        }
    }
    for &o in &g.outputs {
        movable[o] = false;
    }
    movable
}

/// Removes initializer `v` from `g` and makes it a graph input of the same fixed shape.
fn take_initializer(g: &mut mixprec_graph::Graph, v: ValueId) -> Result<mixprec_graph::Tensor> {
    let t = g
        .initializers
        .remove(&v)
        .ok_or_else(|| ExecError::Invalid(format!("initializer {v} vanished")))?;
    g.values[v].shape = Some(
        t.shape
            .iter()
            .map(|&d| mixprec_graph::Dim::Fixed(d))
            .collect(),
    );
    g.inputs.push(v);
    Ok(t)
}

/// A model copy whose only tracked parameters are the chosen weights (see
/// [`Executor::second_order`]).
pub struct SecondOrder {
    exec: Executor,
    fixed: Vec<Tensor>,
    weights: Vec<ValueId>,
}

impl SecondOrder {
    /// Number of parameters left on the tape (the listed weights).
    pub fn tracked_count(&self) -> usize {
        self.exec.vars().len()
    }

    /// The listed weights, in the order of [`GradGraph`]'s blocks.
    pub fn weights(&self) -> &[ValueId] {
        &self.weights
    }

    /// A copy for a subset of this copy's weights (e.g. one layer probed alone): the others
    /// become fixed inputs as in [`Executor::second_order`], sharing this copy's tensors (no
    /// parameter is copied on the device). Derivatives with respect to `weights` are unchanged.
    pub fn restrict(&self, weights: &[ValueId]) -> Result<SecondOrder> {
        if let Some(w) = weights.iter().find(|w| !self.weights.contains(w)) {
            return Err(ExecError::Invalid(format!(
                "weight '{}' is not tracked by this second-order copy",
                self.exec.graph().values[*w].name
            )));
        }
        let mut g = self.exec.graph().clone();
        let movable = movable_parameters(&g, weights);
        let mut fixed = self.fixed.clone();
        for &v in &self.weights {
            if !movable[v] {
                continue;
            }
            let var = self.exec.var(v).ok_or_else(|| {
                ExecError::Invalid(format!("value {v} is not a weight of the copy"))
            })?;
            // The copy's variables are never changed, so sharing their storage is safe.
            fixed.push(var.as_tensor().detach());
            take_initializer(&mut g, v)?;
        }
        Ok(SecondOrder {
            exec: Executor::new(g)?,
            fixed,
            weights: weights.to_vec(),
        })
    }

    /// The kept first-order graph of one batch (as [`Executor::grad_graph`]).
    pub fn grad_graph(&self, x: &Tensor, labels: &[u32]) -> Result<GradGraph> {
        self.grad_graph_tapped(x, labels, &[])
    }

    /// As [`Self::grad_graph`], with a zero variable added to the input activation of each
    /// layer of `taps` (matched by node; each must be a layer of this copy, i.e. its weight is
    /// tracked): the graph's blocks are the listed weights, then one block per tap shaped like
    /// that input for this batch, so [`GradGraph::hvp`] also gives H·v with respect to the
    /// layers' input activations (survey Eq. 22).
    pub fn grad_graph_tapped(
        &self,
        x: &Tensor,
        labels: &[u32],
        taps: &[mixprec_graph::Layer],
    ) -> Result<GradGraph> {
        let target = loss_target(&self.exec)?;
        let hook = InputTaps {
            nodes: taps.iter().enumerate().map(|(k, l)| (l.node, k)).collect(),
            vars: std::sync::Mutex::new(vec![None; taps.len()]),
        };
        let mut inputs = Vec::with_capacity(1 + self.fixed.len());
        inputs.push(x.clone());
        inputs.extend(self.fixed.iter().cloned());
        let r = self.exec.run(
            &inputs,
            &RunOptions {
                track: true,
                train_bn: false,
                keep: vec![target.value],
                hook: (!taps.is_empty()).then_some(&hook as &dyn LayerHook),
            },
        )?;
        let logits = r
            .kept
            .get(&target.value)
            .ok_or_else(|| ExecError::Invalid("logits were not produced".into()))?;
        let loss = cross_entropy(logits, labels)?;
        let vars = hook
            .vars
            .into_inner()
            .map_err(|_| ExecError::Invalid("an input tap was poisoned".into()))?;
        let mut tapped = Vec::with_capacity(taps.len());
        for (l, v) in taps.iter().zip(vars) {
            let v = v.ok_or_else(|| {
                ExecError::Invalid(format!(
                    "layer '{}' is not a tracked layer of this second-order copy",
                    l.name
                ))
            })?;
            tapped.push((format!("input of {}", l.name), v.as_tensor().clone()));
        }
        self.exec.grads_of_with(&loss, &self.weights, tapped)
    }
}

/// Adds a zero variable to the input activation of the listed layers (by node).
struct InputTaps {
    nodes: std::collections::HashMap<usize, usize>,
    vars: std::sync::Mutex<Vec<Option<candle_core::Var>>>,
}

impl LayerHook for InputTaps {
    fn input(&self, layer: &mixprec_graph::Layer, x: Tensor) -> Result<Tensor> {
        let Some(&k) = self.nodes.get(&layer.node) else {
            return Ok(x);
        };
        let z = candle_core::Var::zeros(x.dims(), x.dtype(), x.device())?;
        let out = (&x + z.as_tensor())?;
        self.vars
            .lock()
            .map_err(|_| ExecError::Invalid("an input tap was poisoned".into()))?[k] = Some(z);
        Ok(out)
    }
}

/// First-order gradients g_i = ∂L/∂w_i of one batch whose autodiff graph is kept: each
/// [`GradGraph::hvp`] is then one double-backward pass.
pub struct GradGraph {
    names: Vec<String>,
    vars: Vec<Tensor>,
    grads: Vec<Tensor>,
}

impl GradGraph {
    /// Number of weights.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// True when no weight is listed.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The shape of block `i` (a weight or an input tap).
    pub fn block_dims(&self, i: usize) -> Result<&[usize]> {
        self.vars
            .get(i)
            .map(Tensor::dims)
            .ok_or_else(|| ExecError::Invalid(format!("block index {i} out of range")))
    }

    /// The detached first-order gradient of weight `i`.
    pub fn grad(&self, i: usize) -> Result<Tensor> {
        self.grads
            .get(i)
            .map(Tensor::detach)
            .ok_or_else(|| ExecError::Invalid(format!("weight index {i} out of range")))
    }

    /// Exact H·v for the block vector v = (v_1, …, v_k) over the listed weights (`None` = a zero
    /// block): one pass computes ∂(Σ_i g_i·v_i)/∂w_j = Σ_i H_ji v_i for every weight j
    /// (Pearlmutter's trick). Returns one tensor per weight, shaped like it.
    pub fn hvp(&self, vs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        if vs.len() != self.vars.len() {
            return Err(ExecError::Invalid(format!(
                "{} probe blocks for {} weights",
                vs.len(),
                self.vars.len()
            )));
        }
        let mut s: Option<Tensor> = None;
        for ((v, g), name) in vs.iter().zip(&self.grads).zip(&self.names) {
            let Some(v) = v else { continue };
            if v.dims() != g.dims() {
                return Err(ExecError::Invalid(format!(
                    "probe shape {:?} differs from the shape {:?} of weight '{name}'",
                    v.dims(),
                    g.dims()
                )));
            }
            let term = (g * v.detach())?.sum_all()?;
            s = Some(match s {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        let Some(s) = s else {
            return self.vars.iter().map(|v| Ok(v.zeros_like()?)).collect();
        };
        let g2 = s.backward()?;
        self.vars
            .iter()
            .map(|var| {
                Ok(match g2.get(var) {
                    Some(h) => h.detach(),
                    None => var.zeros_like()?,
                })
            })
            .collect()
    }
}
