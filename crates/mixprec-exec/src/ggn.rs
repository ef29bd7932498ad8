//! Exact per-layer Hessian traces of piecewise-linear classifiers (Gauss–Newton factorisation).
//!
//! Survey §3.2.3 (HAWQ-V2, Eq. 21–22) estimates Tr(H_i), the trace of the diagonal Hessian
//! block of layer i's weight W_i, with Hutchinson probes. When every operator between layer i's
//! output and the logits is piecewise linear (convolution / GEMM with fixed weights, BatchNorm
//! in inference mode, ReLU, clamps, max / average pooling, additions, reshapes, …), the logits
//! z_n of sample n are a piecewise-linear function of W_i, so their second derivative vanishes
//! almost everywhere and the block is exactly the Gauss–Newton block (Schraudolph 2002;
//! Martens 2014):
//!
//!   H_ii = (1/N) Σ_n J_nᵀ (diag(p_n) − p_n p_nᵀ) J_n,   J_n = ∂z_n/∂W_i,
//!
//! for the mean softmax cross-entropy, whose Hessian in the logits is diag(p) − ppᵀ =
//! Σ_c p_c (e_c − p)(e_c − p)ᵀ. Hence, with u_nc = √p_nc (e_c − p_n),
//!
//!   Tr(H_ii) = (1/N) Σ_n Σ_c ‖J_nᵀ u_nc‖²,
//!
//! the squared norms of per-sample, per-class weight gradients: one backward pass of the
//! linear "loss" Σ_r u_rᵀ z_r over the batch replicated once per class gives, for every layer
//! at once, the output gradient δ_r of each (sample, class) row r; the per-row weight gradient
//! is then the layer's own weight gradient for that row alone (one weight-gradient pass per
//! row, or an outer product for GEMM / MatMul). The trace is exact (no estimator noise) and
//! independent of the labels.
//!
//! The same pass gives the per-sample traces for the layer's input activation x_n (Eq. 22
//! for activations): the layer is linear in its input too, so Tr ∇²_{x_n} L_n =
//! Σ_c ‖∂(u_ncᵀ z_n)/∂x_n‖², the squared norms of the per-row input gradients, averaged over
//! the samples. Autograd's double backward returns the same zᵀHz for
//! these models (it also drops the kink terms of ReLU), so this equals the Hutchinson
//! estimate's expectation.
//!
//! Complexity: C·N rows (C classes, N samples) of one forward and one input-gradient backward
//! pass, plus one weight-gradient pass per layer and row; rows are processed `rows` at a time
//! (a chunk of samples × a chunk of classes), so the extra memory is that of the forward and
//! backward passes of a batch of `rows` samples.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor, Var};
use mixprec_graph::{Graph, Layer, Op, ValueId};

use crate::error::{ExecError, Result};
use crate::executor::{Executor, LayerHook, RunOptions};
use crate::grad::loss_target;
use crate::ops::{self, to_vec_f32};

/// Why the Gauss–Newton block of `layer` may differ from its Hessian block: the first node on
/// the way from the layer's output to `logits` that is not piecewise linear in it, or that
/// multiplies two values both depending on it; `None` when the block is exact.
pub fn non_linear_tail(g: &Graph, layer: &Layer, logits: ValueId) -> Option<String> {
    let node = &g.nodes[layer.node];
    // A recurrent layer's output is not linear in its own weights (gates and state feedback).
    if matches!(node.op, Op::Recurrent(_)) {
        return Some(format!(
            "the layer itself ({}) is not linear in its weights",
            node.op.onnx_name()
        ));
    }
    let mut reach = vec![false; g.values.len()];
    for &o in &node.outputs {
        reach[o] = true;
    }
    if g.nodes
        .iter()
        .enumerate()
        .any(|(i, n)| i != layer.node && n.inputs.iter().flatten().any(|&v| v == layer.weight))
    {
        return Some(format!(
            "its weight '{}' is also used by other nodes",
            g.values[layer.weight].name
        ));
    }
    // Values the logits depend on: only nodes between the layer and the logits matter.
    let mut feeds = vec![false; g.values.len()];
    feeds[logits] = true;
    for n in g.nodes.iter().rev() {
        if n.outputs.iter().any(|&o| feeds[o]) {
            for &v in n.inputs.iter().flatten() {
                feeds[v] = true;
            }
        }
    }
    for n in g.nodes.iter().skip(layer.node + 1) {
        let r: Vec<bool> = n
            .inputs
            .iter()
            .map(|v| v.is_some_and(|v| reach[v]))
            .collect();
        let nr = r.iter().filter(|&&b| b).count();
        if nr == 0 || !n.outputs.iter().any(|&o| feeds[o]) {
            continue;
        }
        let first_only = nr == 1 && r[0];
        let ok = match n.op {
            Op::Add
            | Op::Sub
            | Op::Concat { .. }
            | Op::Relu
            | Op::LeakyRelu { .. }
            | Op::Neg
            | Op::Abs
            | Op::Identity
            | Op::Dropout
            | Op::MaxPool(_)
            | Op::AveragePool { .. }
            | Op::GlobalAveragePool
            | Op::GlobalMaxPool
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Transpose { .. }
            | Op::Pad { .. }
            | Op::Gather { .. }
            | Op::Slice => true,
            // Linear in each input: one of the two factors may depend on the layer.
            Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul | Op::Mul => {
                r.iter().take(2).filter(|&&b| b).count() == 1
            }
            Op::Div | Op::Clip | Op::BatchNorm { .. } => first_only,
            // Integer results carry no derivative.
            Op::Shape { .. } => {
                continue;
            }
            _ => false,
        };
        if !ok {
            return Some(format!(
                "node '{}' ({}) after it is not piecewise linear in its weight",
                n.name,
                n.op.onnx_name()
            ));
        }
        for &o in &n.outputs {
            reach[o] = true;
        }
    }
    if !reach[logits] {
        return Some("the logits do not depend on it".into());
    }
    None
}

/// Exact traces of one layer's Hessian blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerTraces {
    /// Tr(H) of the mean loss with respect to the layer's weight.
    pub weight: f64,
    /// Per-sample Tr(∇²_x L_n) with respect to the layer's input activation, averaged over
    /// the samples.
    pub input: f64,
}

/// Records each layer's input and adds zero variables to its input and output, so that one
/// backward pass yields the gradients with respect to every layer's input and output.
struct OutputTaps {
    layers: HashMap<usize, usize>,
    inputs: Mutex<Vec<Option<(Tensor, Var)>>>,
    taps: Mutex<Vec<Option<Var>>>,
}

impl LayerHook for OutputTaps {
    fn input(&self, layer: &Layer, x: Tensor) -> Result<Tensor> {
        let Some(&k) = self.layers.get(&layer.node) else {
            return Ok(x);
        };
        let z = Var::zeros(x.dims(), x.dtype(), x.device())?;
        let out = (&x + z.as_tensor())?;
        lock(&self.inputs)?[k] = Some((x, z));
        Ok(out)
    }

    fn output(&self, layer: &Layer, y: Tensor) -> Result<Tensor> {
        let Some(&k) = self.layers.get(&layer.node) else {
            return Ok(y);
        };
        let z = Var::zeros(y.dims(), y.dtype(), y.device())?;
        let out = (&y + z.as_tensor())?;
        lock(&self.taps)?[k] = Some(z);
        Ok(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| ExecError::Invalid("a layer tap was poisoned by a failed thread".into()))
}

impl Executor {
    /// Exact Hessian traces of the mean cross-entropy over the batch `x` for the weight and the
    /// input of every layer of `layers` (see the module doc); `rows` bounds the (sample,
    /// class) rows per pass. Fails, naming the layer and the node, when a layer's Hessian
    /// block is not its Gauss–Newton block.
    pub fn exact_layer_traces(
        &self,
        layers: &[Layer],
        x: &Tensor,
        rows: usize,
    ) -> Result<Vec<LayerTraces>> {
        let (target, n, c, p) = self.factor_setup(layers, x)?;
        // Row r = cls·n + s: u_{s,cls} = √p_{s,cls} (e_cls − p_s).
        let norms = self.factor_rows(layers, x, target, n * c, rows, |r, u| {
            let (cls, s) = (r / n, r % n);
            let ps = &p[s * c..(s + 1) * c];
            let k = ps[cls].max(0.0).sqrt();
            u.extend((0..c).map(|j| k * (f32::from(u8::from(j == cls)) - ps[j])));
            s
        })?;
        Ok(mean_over_rows(&norms, layers.len(), n, 1)
            .pop()
            .unwrap_or_default())
    }

    /// Hutchinson samples of the same traces with Rademacher probes in the logit space of the
    /// factorisation: Tr(H_ii) = (1/N) Σ_n Tr(U_nᵀ J_n J_nᵀ U_n) with U_n = [u_n1 … u_nC], so
    /// for ε_n ∈ {±1}^C, r_n = U_n ε_n = √p_n ⊙ ε_n − p_n (√p_n · ε_n) and
    /// E‖J_nᵀ r_n‖² = Tr(J_nᵀ U_n U_nᵀ J_n). One sample (`rounds` of them, a fresh ε_n per
    /// sample and round) costs one row per sample instead of C; the same rows give the input
    /// traces. Same preconditions and errors as [`Self::exact_layer_traces`].
    pub fn probed_layer_traces<R: rand::Rng>(
        &self,
        layers: &[Layer],
        x: &Tensor,
        rows: usize,
        rounds: usize,
        rng: &mut R,
    ) -> Result<Vec<Vec<LayerTraces>>> {
        if rounds == 0 {
            return Ok(Vec::new());
        }
        let (target, n, c, p) = self.factor_setup(layers, x)?;
        let sqrt_p: Vec<f32> = p.iter().map(|&v| v.max(0.0).sqrt()).collect();
        // Row r = round·n + s, drawn in order (the passes visit the rows in order).
        let norms = self.factor_rows(layers, x, target, n * rounds, rows, |r, u| {
            let s = r % n;
            let (ps, qs) = (&p[s * c..(s + 1) * c], &sqrt_p[s * c..(s + 1) * c]);
            let start = u.len();
            let mut dot = 0f32;
            for &q in qs {
                let e = if rng.random::<bool>() { q } else { -q };
                dot += e;
                u.push(e);
            }
            for (v, &pj) in u[start..].iter_mut().zip(ps) {
                *v -= pj * dot;
            }
            s
        })?;
        Ok(mean_over_rows(&norms, layers.len(), n, rounds))
    }

    /// Checks the layers, runs the float model on `x` and returns the loss target, the batch
    /// size, the class count and the softmax probabilities (row-major N × C).
    fn factor_setup(
        &self,
        layers: &[Layer],
        x: &Tensor,
    ) -> Result<(ValueId, usize, usize, Vec<f32>)> {
        let g = self.graph();
        let target = loss_target(self)?;
        for l in layers {
            if let Some(why) = non_linear_tail(g, l, target.value) {
                return Err(ExecError::Invalid(format!(
                    "layer '{}': the Gauss–Newton factorisation of the Hessian needs a piecewise-linear network after the layer, but {why}",
                    l.name
                )));
            }
        }
        let opts = RunOptions {
            keep: vec![target.value],
            ..RunOptions::default()
        };
        let r = self.run(std::slice::from_ref(x), &opts)?;
        let logits = r
            .kept
            .get(&target.value)
            .ok_or_else(|| ExecError::Invalid("the logits were not kept".into()))?
            .flatten_from(1)?;
        let (n, c) = logits.dims2()?;
        let p = to_vec_f32(&ops::softmax(&logits, 1, false).map_err(ExecError::Invalid)?)?;
        Ok((target.value, n, c, p))
    }

    /// Per-row (‖∂(u_rᵀ z_s)/∂W‖², ‖∂(u_rᵀ z_s)/∂x_s‖²) of every layer, `[row][layer]`, for
    /// `count` rows; `row(r, u)` appends row r's logit-space vector u_r to `u` and returns
    /// its sample s. At most `chunk` rows per pass.
    fn factor_rows(
        &self,
        layers: &[Layer],
        x: &Tensor,
        logits: ValueId,
        count: usize,
        chunk: usize,
        mut row: impl FnMut(usize, &mut Vec<f32>) -> usize,
    ) -> Result<Vec<Vec<(f64, f64)>>> {
        let chunk = chunk.max(1);
        let mut out = Vec::with_capacity(count);
        let mut u = Vec::new();
        for r0 in (0..count).step_by(chunk) {
            let r1 = (r0 + chunk).min(count);
            u.clear();
            let idx: Vec<u32> = (r0..r1).map(|r| row(r, &mut u) as u32).collect();
            let c = u.len() / (r1 - r0);
            let idx = Tensor::from_slice(&idx, idx.len(), x.device())?;
            let xr = x.index_select(&idx, 0)?;
            let ut = Tensor::from_slice(&u, (r1 - r0, c), x.device())?;
            out.extend(self.row_gradient_norms(layers, &xr, &ut, logits)?);
        }
        Ok(out)
    }

    /// Per-row (‖∂(u_rᵀ z_r)/∂W‖², ‖∂(u_rᵀ z_r)/∂x_r‖²) of every layer, `[row][layer]`, for the
    /// rows of the input `x` with logits z_r.
    fn row_gradient_norms(
        &self,
        layers: &[Layer],
        x: &Tensor,
        u: &Tensor,
        logits: ValueId,
    ) -> Result<Vec<Vec<(f64, f64)>>> {
        let taps = OutputTaps {
            layers: layers
                .iter()
                .enumerate()
                .map(|(k, l)| (l.node, k))
                .collect(),
            inputs: Mutex::new(vec![None; layers.len()]),
            taps: Mutex::new(vec![None; layers.len()]),
        };
        let opts = RunOptions {
            keep: vec![logits],
            hook: Some(&taps),
            ..RunOptions::default()
        };
        let r = self.run(std::slice::from_ref(x), &opts)?;
        let z = r
            .kept
            .get(&logits)
            .ok_or_else(|| ExecError::Invalid("the logits were not kept".into()))?
            .flatten_from(1)?;
        let rows = z.dims()[0];
        let grads = (z * u)?.sum_all()?.backward()?;
        drop(r);
        let inputs = std::mem::take(&mut *lock(&taps.inputs)?);
        let tap_vars = std::mem::take(&mut *lock(&taps.taps)?);
        let mut out = vec![Vec::with_capacity(layers.len()); rows];
        for ((l, xin), tap) in layers.iter().zip(inputs).zip(tap_vars) {
            let (Some((xin, xtap)), Some(tap)) = (xin, tap) else {
                return Err(ExecError::Invalid(format!(
                    "layer '{}' did not run in the forward pass",
                    l.name
                )));
            };
            let delta = match grads.get(tap.as_tensor()) {
                Some(d) => d.clone(),
                None => Tensor::zeros(tap.as_tensor().dims(), DType::F32, x.device())?,
            };
            let dx = match grads.get(xtap.as_tensor()) {
                Some(d) => row_sq_norms(d)?,
                None => vec![0.0; rows],
            };
            let dw = self.row_weight_gradient_norms(l, &xin, &delta)?;
            if dw.len() != rows || dx.len() != rows {
                return Err(ExecError::Invalid(format!(
                    "layer '{}': {} weight-gradient and {} input-gradient rows for {rows} rows",
                    l.name,
                    dw.len(),
                    dx.len()
                )));
            }
            for (o, (w, i)) in out.iter_mut().zip(dw.into_iter().zip(dx)) {
                o.push((w, i));
            }
        }
        Ok(out)
    }

    /// ‖∂⟨y_r, δ_r⟩/∂W‖² of every row r of one layer with per-row input `x` and output
    /// gradient `delta`.
    fn row_weight_gradient_norms(&self, l: &Layer, x: &Tensor, delta: &Tensor) -> Result<Vec<f64>> {
        let node = &self.graph().nodes[l.node];
        let w = self
            .var(l.weight)
            .ok_or_else(|| ExecError::Invalid(format!("layer '{}' has no float weight", l.name)))?
            .as_tensor();
        let rows = delta.dims().first().copied().unwrap_or(0);
        let bad = |what: &str| {
            ExecError::Invalid(format!(
                "layer '{}': {what} (input {:?}, output gradient {:?})",
                l.name,
                x.dims(),
                delta.dims()
            ))
        };
        let g: Tensor = match &node.op {
            Op::Conv { window, group } => {
                let cv = ops::Conv2d::new(x, w, window).map_err(|e| bad(&e))?;
                let d = if cv.squeezed {
                    delta.unsqueeze(2)?
                } else {
                    delta.clone()
                };
                let (_, _, kh, kw) = cv.w.dims4()?;
                let norms = crate::conv2d::sample_weight_gradient_sq_norms(
                    &cv.x,
                    &d,
                    (kh, kw),
                    cv.stride,
                    cv.pads,
                    cv.dilation,
                    *group,
                )?;
                return Ok(norms);
            }
            Op::Gemm { alpha, trans_a, .. } => {
                // ‖α δ_r a_rᵀ‖² = α² ‖δ_r‖² ‖a_r‖².
                let a = if *trans_a { x.t()? } else { x.clone() };
                if a.rank() != 2 || a.dims()[0] != rows || delta.rank() != 2 {
                    return Err(bad("a GEMM layer needs one input row per sample"));
                }
                let na = a.sqr()?.sum(1)?;
                let nd = delta.sqr()?.sum(1)?;
                let a2 = (*alpha as f64).powi(2);
                return Ok(to_vec_f32(&(na * nd)?)?
                    .into_iter()
                    .map(|v| f64::from(v) * a2)
                    .collect());
            }
            Op::MatMul => {
                // Σ over the positions of a row: A_rᵀ Δ_r.
                if x.rank() < 2 || delta.rank() != x.rank() || w.rank() != 2 {
                    return Err(bad("a MatMul layer needs a 2-D weight and [N, …, K] input"));
                }
                let (a, d) = if x.rank() == 2 {
                    (x.unsqueeze(1)?, delta.unsqueeze(1)?)
                } else {
                    let k = x.dims()[x.rank() - 1];
                    let m = delta.dims()[delta.rank() - 1];
                    (x.reshape((rows, (), k))?, delta.reshape((rows, (), m))?)
                };
                a.transpose(1, 2)?
                    .contiguous()?
                    .matmul(&d.contiguous()?)?
                    .reshape((rows, ()))?
            }
            _ => return Err(bad("not a Conv / Gemm / MatMul layer")),
        };
        row_sq_norms(&g)
    }
}

/// Σ over the non-leading axes of the squares of `t`, one value per leading index.
fn row_sq_norms(t: &Tensor) -> Result<Vec<f64>> {
    let rows = t.dims().first().copied().unwrap_or(0);
    let v = to_vec_f32(t)?;
    let per = v.len().checked_div(rows).unwrap_or(0);
    Ok((0..rows)
        .map(|r| {
            v[r * per..(r + 1) * per]
                .iter()
                .map(|&a| f64::from(a) * f64::from(a))
                .sum()
        })
        .collect())
}

/// `[round][layer]` sums over each of `rounds` equal consecutive blocks of the per-row norms
/// `[row][layer]`, divided by the `n` samples.
fn mean_over_rows(
    norms: &[Vec<(f64, f64)>],
    layers: usize,
    n: usize,
    rounds: usize,
) -> Vec<Vec<LayerTraces>> {
    let rounds = rounds.max(1);
    let per = norms.len().div_ceil(rounds).max(1);
    let mut out = vec![vec![LayerTraces::default(); layers]; rounds];
    for (r, row) in norms.iter().enumerate() {
        for (t, &(w, i)) in out[r / per].iter_mut().zip(row) {
            t.weight += w;
            t.input += i;
        }
    }
    for t in out.iter_mut().flatten() {
        t.weight /= n.max(1) as f64;
        t.input /= n.max(1) as f64;
    }
    out
}
