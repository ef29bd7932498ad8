//! Evaluation on a data set: batched forward passes, top-1 accuracy.

use crate::error::{ExecError, Result};
use crate::executor::{Executor, LayerHook, RunOptions};
use candle_core::Tensor;
use mixprec_data::Dataset;
use mixprec_graph::{Dim, Op};

/// Accuracy of a model on a data set.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalResult {
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Images evaluated.
    pub total: usize,
    /// correct / total.
    pub accuracy: f64,
    /// Batch size actually used.
    pub batch: usize,
}

/// Let the first dimension of every graph input vary (models exported with a fixed batch of 1
/// often still run at any batch). Returns whether anything changed.
pub fn free_batch_dim(exec: &mut Executor) -> bool {
    exec.free_batch_dim()
}

impl Executor {
    /// See [`free_batch_dim`].
    pub fn free_batch_dim(&mut self) -> bool {
        let mut changed = false;
        let inputs = self.graph().inputs.clone();
        let g = self.graph_mut();
        for v in inputs {
            if let Some(Some(d0)) = g.values[v].shape.as_mut().map(|s| s.first_mut()) {
                if matches!(d0, Dim::Fixed(_)) {
                    *d0 = Dim::Symbolic("N".into());
                    changed = true;
                }
            }
        }
        changed
    }

    /// A graph input read as the [sequence, batch, features] input of a recurrent operator in
    /// layout 0: batch-major data would be taken as sequences. The error names input and node.
    fn check_batch_major(&self) -> Result<()> {
        let g = self.graph();
        let producers = g.producers();
        for n in &g.nodes {
            let Op::Recurrent(r) = &n.op else { continue };
            if r.batch_first {
                continue;
            }
            let mut v = n.input(0);
            // Through operators that keep every axis in place.
            while let Some(p) = v.and_then(|v| producers[v]) {
                match g.nodes[p].op {
                    Op::Identity | Op::Dropout | Op::Cast { .. } => v = g.nodes[p].input(0),
                    _ => break,
                }
            }
            if let Some(v) = v.filter(|v| g.inputs.contains(v)) {
                return Err(ExecError::Invalid(format!(
                    "model input '{}' is the [sequence, batch, features] input of {} node '{}' (layout 0), but data sets are batch-major [batch, …]; export the model batch-first (PyTorch batch_first=True, or a Transpose in front of the node) to evaluate, score or quantize it on data",
                    g.values[v].name,
                    n.op.onnx_name(),
                    n.name
                )));
            }
        }
        Ok(())
    }

    /// The largest batch ≤ `want` the graph accepts (its shape sub-graphs may pin the batch).
    /// Fails for a model whose input is sequence-major (see `check_batch_major`).
    pub fn usable_batch(&self, sample_shape: &[usize], want: usize) -> Result<usize> {
        self.check_batch_major()?;
        let shape = |b: usize| {
            let mut s = vec![b];
            s.extend_from_slice(sample_shape);
            s
        };
        if self.inferred(vec![shape(want)]).is_ok() {
            return Ok(want);
        }
        self.inferred(vec![shape(1)]).map(|_| 1)
    }

    /// Logits (or probabilities — whatever the graph outputs first) for one batch of images.
    pub fn predict(
        &self,
        images: &[f32],
        sample_shape: &[usize],
        hook: Option<&dyn LayerHook>,
    ) -> Result<Tensor> {
        let per: usize = sample_shape.iter().product();
        if per == 0 || !images.len().is_multiple_of(per) {
            return Err(ExecError::Invalid(format!(
                "{} values do not form images of shape {sample_shape:?}",
                images.len()
            )));
        }
        let mut shape = vec![images.len() / per];
        shape.extend_from_slice(sample_shape);
        let x = Tensor::from_slice(images, shape.as_slice(), self.device())?;
        let opts = RunOptions {
            hook,
            ..Default::default()
        };
        let out = self.run(&[x], &opts)?.outputs;
        out.into_iter()
            .next()
            .ok_or_else(|| ExecError::Invalid("the model has no output".into()))
    }
}

/// `[n, sample…]`: the shape of a batch of `n` samples.
pub fn batch_shape(n: usize, sample: &[usize]) -> Vec<usize> {
    let mut s = Vec::with_capacity(1 + sample.len());
    s.push(n);
    s.extend_from_slice(sample);
    s
}

/// Top-1 accuracy of `exec` on `data`, `batch` images at a time; `progress(done, total)` after
/// each batch.
pub fn evaluate(
    exec: &Executor,
    data: &Dataset,
    batch: usize,
    hook: Option<&dyn LayerHook>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalResult> {
    let sample = data.sample_shape();
    let batch = exec.usable_batch(sample, batch.max(1).min(data.n.max(1)))?;
    let mut correct = 0usize;
    let mut start = 0;
    while start < data.n {
        let len = batch.min(data.n - start);
        let b = if len == batch {
            batch
        } else {
            exec.usable_batch(sample, len)?
        };
        let len = len.min(b);
        let (x, y) = data.batch(start, len);
        let out = exec.predict(x, sample, hook)?;
        let out = out.flatten_from(1)?;
        let classes = out.dims()[1];
        let v = out.flatten_all()?.to_vec1::<f32>()?;
        for (i, &label) in y.iter().enumerate() {
            let row = &v[i * classes..(i + 1) * classes];
            if mixprec_data::argmax(row) == Some(label as usize) {
                correct += 1;
            }
        }
        start += len;
        progress(start, data.n);
    }
    Ok(EvalResult {
        correct,
        total: data.n,
        accuracy: correct as f64 / data.n.max(1) as f64,
        batch,
    })
}
