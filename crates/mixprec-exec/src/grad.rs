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
        let var = self
            .var(w)
            .ok_or_else(|| ExecError::Invalid(format!("value {w} is not a weight")))?;
        let (loss, _) = self.loss(x, labels, None, false)?;
        let grads = loss.backward()?;
        let g = grads.get(var.as_tensor()).ok_or_else(|| {
            ExecError::Invalid(format!(
                "the loss does not depend on '{}'",
                self.graph().values[w].name
            ))
        })?;
        let mut out = Vec::with_capacity(vs.len());
        for v in vs {
            if v.dims() != g.dims() {
                return Err(ExecError::Invalid(format!(
                    "probe shape {:?} differs from the weight's {:?}",
                    v.dims(),
                    g.dims()
                )));
            }
            let s = (g * v.detach())?.sum_all()?;
            let g2 = s.backward()?;
            out.push(match g2.get(var.as_tensor()) {
                Some(h) => h.detach(),
                None => var.as_tensor().zeros_like()?,
            });
        }
        Ok(out)
    }
}
