//! Recurrent operators on candle: ONNX RNN, GRU and LSTM (opsets 7 and 14), differentiable to
//! second order through candle's autodiff, so sensitivity metrics and training see through them.
//!
//! Equations are the ONNX operator definitions (gate order LSTM i, o, f, c; GRU z, r, h):
//! LSTM `i = f(Xi·Wiᵀ + H·Riᵀ + Pi⊙C + b)`, `f` likewise (or `1 − i` with `input_forget`),
//! `c = g(…)`, `C' = f⊙C + i⊙c`, `o = f(… + Po⊙C')`, `H' = o⊙h(C')`; GRU
//! `z, r = f(…)`, `h = g(Xh·Whᵀ + (r⊙H)·Rhᵀ + Rbh + Wbh)` (or `r⊙(H·Rhᵀ + Rbh)` with
//! `linear_before_reset`), `H' = (1 − z)⊙h + z⊙H`; RNN `H' = f(X·Wᵀ + H·Rᵀ + Wb + Rb)`.
//! `clip` clamps every gate pre-activation (bias included) before its activation; the LSTM cell
//! state is not clipped before `h` (as ONNX Runtime does). Per-batch `sequence_lens` are
//! honoured: steps past a sequence's length leave its state unchanged and write zeros to Y, the
//! reverse direction starts at the sequence's own last step, and Y_h / Y_c hold the last valid
//! step (zeros for an empty sequence, as ONNX Runtime's LSTM and GRU give).
//!
//! Not a method of the survey: recurrent weights stay float (they are not quantizable layers),
//! so models with LSTM / GRU / RNN run under mixed-precision policies for their Conv, Gemm and
//! MatMul layers. Complexity per direction: one (seq·batch × I) · (I × gates·H) product for the
//! inputs, then per step one (batch × H) · (H × gates·H) product and O(batch·H) element-wise
//! work.

use crate::ops::{self, OpResult};
use candle_core::{DType, Tensor};
use mixprec_graph::ir::{Activation, ActivationKind, Recurrent, RecurrentKind, RnnDirection};

type CResult<T> = candle_core::Result<T>;

fn msg(s: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(s.into())
}

fn op<T>(r: OpResult<T>) -> CResult<T> {
    r.map_err(msg)
}

/// Inputs of a recurrent node in ONNX order (sequence lengths already read as integers).
pub struct RecurrentInputs<'a> {
    /// X: [seq, batch, input], or [batch, seq, input] with `layout = 1`.
    pub x: &'a Tensor,
    /// W: [directions, gates·hidden, input].
    pub w: &'a Tensor,
    /// R: [directions, gates·hidden, hidden].
    pub r: &'a Tensor,
    /// B: [directions, 2·gates·hidden] (Wb then Rb).
    pub b: Option<&'a Tensor>,
    /// Valid steps per batch entry.
    pub sequence_lens: Option<&'a [usize]>,
    /// Initial hidden state: [directions, batch, hidden] (layout 1: [batch, directions, hidden]).
    pub initial_h: Option<&'a Tensor>,
    /// LSTM initial cell state, shaped like `initial_h`.
    pub initial_c: Option<&'a Tensor>,
    /// LSTM peepholes: [directions, 3·hidden] (i, o, f).
    pub p: Option<&'a Tensor>,
}

/// Outputs of a recurrent node.
pub struct RecurrentOutputs {
    /// Y: [seq, directions, batch, hidden] (layout 1: [batch, seq, directions, hidden]).
    pub y: Tensor,
    /// Y_h: last hidden state, [directions, batch, hidden] (layout 1: [batch, directions, hidden]).
    pub y_h: Tensor,
    /// Y_c: last LSTM cell state, shaped like Y_h; `None` for GRU and RNN.
    pub y_c: Option<Tensor>,
}

/// An activation function of the recurrent operators, element-wise and differentiable.
pub fn activation(a: &Activation, x: &Tensor) -> OpResult<Tensor> {
    activation_c(a, x).map_err(|e| e.to_string())
}

fn activation_c(a: &Activation, x: &Tensor) -> CResult<Tensor> {
    let (al, be) = (a.alpha as f64, a.beta as f64);
    let relu_neg = || x.neg().and_then(|n| n.relu());
    match a.kind {
        ActivationKind::Relu => x.relu(),
        ActivationKind::Tanh => x.tanh(),
        ActivationKind::Sigmoid => op(ops::sigmoid(x)),
        ActivationKind::Affine => x.affine(al, be),
        ActivationKind::LeakyRelu => x.relu()? - relu_neg()?.affine(al, 0.0)?,
        ActivationKind::ThresholdedRelu => {
            let keep = x.gt(al).and_then(|m| m.to_dtype(x.dtype()))?;
            x.mul(&keep)
        }
        ActivationKind::ScaledTanh => x.affine(be, 0.0)?.tanh()?.affine(al, 0.0),
        ActivationKind::HardSigmoid => {
            // clamp(y, 0, 1) = relu(y) − relu(y − 1), differentiable almost everywhere.
            let y = x.affine(al, be)?;
            y.relu()? - y.affine(1.0, -1.0)?.relu()?
        }
        ActivationKind::Elu => {
            // relu(x) + alpha·(exp(min(x, 0)) − 1).
            let neg = relu_neg()?.neg()?.exp()?.affine(al, -al)?;
            x.relu()? + neg
        }
        ActivationKind::Softsign => x.div(&x.abs()?.affine(1.0, 1.0)?),
        ActivationKind::Softplus => {
            // relu(x) + log(1 + exp(−|x|)): no overflow for large |x|.
            let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
            x.relu()? + tail
        }
    }
}

/// Clamp to ±`clip` when set.
fn clip(x: Tensor, clip: Option<f32>) -> CResult<Tensor> {
    match clip {
        None => Ok(x),
        Some(b) => {
            let lo = Tensor::new(-b, x.device())?;
            let hi = Tensor::new(b, x.device())?;
            x.broadcast_maximum(&lo)?.broadcast_minimum(&hi)
        }
    }
}

/// [batch, 1] float mask of `keep(len)` per batch entry.
fn batch_mask(lens: &[usize], keep: impl Fn(usize) -> bool, x: &Tensor) -> CResult<Tensor> {
    let v: Vec<f32> = lens
        .iter()
        .map(|&l| if keep(l) { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (lens.len(), 1), x.device()).and_then(|t| t.to_dtype(x.dtype()))
}

/// `old + m⊙(new − old)`: the new value where the mask is 1.
fn blend(old: &Tensor, new: &Tensor, m: &Tensor) -> CResult<Tensor> {
    old.broadcast_add(&(new - old)?.broadcast_mul(m)?)
}

/// Run an ONNX RNN / GRU / LSTM.
pub fn recurrent(spec: &Recurrent, inp: &RecurrentInputs) -> OpResult<RecurrentOutputs> {
    recurrent_c(spec, inp).map_err(|e| e.to_string())
}

fn recurrent_c(spec: &Recurrent, inp: &RecurrentInputs) -> CResult<RecurrentOutputs> {
    let hs = spec.hidden_size;
    let gates = spec.kind.gates();
    let dirs = spec.direction.count();
    let per = spec.kind.activation_count();
    if spec.activations.len() != per * dirs {
        return Err(msg(format!(
            "{} activation functions for {dirs} direction(s), expected {}",
            spec.activations.len(),
            per * dirs
        )));
    }
    if inp.x.rank() != 3 {
        return Err(msg(format!("X must be 3-D, got {:?}", inp.x.dims())));
    }
    let to_time_major = |t: &Tensor| -> CResult<Tensor> {
        if spec.batch_first {
            t.transpose(0, 1).and_then(|t| t.contiguous())
        } else {
            Ok(t.clone())
        }
    };
    let x = to_time_major(inp.x)?;
    let (seq, batch, input) = x.dims3()?;
    if seq == 0 || batch == 0 {
        return Err(msg(format!(
            "X has shape {:?}: no time steps or no batch",
            inp.x.dims()
        )));
    }
    let h0 = inp.initial_h.map(to_time_major).transpose()?;
    let c0 = inp.initial_c.map(to_time_major).transpose()?;
    let lens = match inp.sequence_lens {
        Some(l) if l.len() != batch => {
            return Err(msg(format!(
                "sequence_lens has {} entries for batch {batch}",
                l.len()
            )))
        }
        Some(l) if l.iter().any(|&n| n > seq) => {
            return Err(msg(format!(
                "sequence_lens {l:?} has a length above the {seq} steps of X"
            )))
        }
        // Lengths all equal to the sequence length change nothing.
        Some(l) if l.iter().any(|&n| n != seq) => Some(l),
        _ => None,
    };
    let lstm = spec.kind == RecurrentKind::Lstm;
    let x2 = x.reshape((seq * batch, input))?;
    let (mut ys, mut last_h, mut last_c) = (Vec::new(), Vec::new(), Vec::new());
    for d in 0..dirs {
        let reverse = spec.direction == RnnDirection::Reverse || d == 1;
        let acts = &spec.activations[d * per..(d + 1) * per];
        let w = inp.w.get(d)?;
        let r = inp.r.get(d)?;
        // All steps' input products in one matrix product.
        let mut xw = op(ops::matmul(&x2, &w.t()?))?;
        let mut rb_h = None;
        if let Some(b) = inp.b {
            let b = b.get(d)?;
            let wb = b.narrow(0, 0, gates * hs)?;
            let rb = b.narrow(0, gates * hs, gates * hs)?;
            let bias = if spec.kind == RecurrentKind::Gru && spec.linear_before_reset {
                // Rb_h is applied inside the reset gate product.
                rb_h = Some(rb.narrow(0, 2 * hs, hs)?);
                let zr = (wb.narrow(0, 0, 2 * hs)? + rb.narrow(0, 0, 2 * hs)?)?;
                Tensor::cat(&[zr, wb.narrow(0, 2 * hs, hs)?], 0)?
            } else {
                (wb + rb)?
            };
            xw = xw.broadcast_add(&bias)?;
        }
        let xw = xw.reshape((seq, batch, gates * hs))?;
        // Recurrent weights transposed once: [hidden, gates·hidden] (GRU split z r | h).
        let (rt, rt_h) = if spec.kind == RecurrentKind::Gru {
            (
                r.narrow(0, 0, 2 * hs)?.t()?.contiguous()?,
                Some(r.narrow(0, 2 * hs, hs)?.t()?.contiguous()?),
            )
        } else {
            (r.t()?.contiguous()?, None)
        };
        let zeros = || Tensor::zeros((batch, hs), x.dtype(), x.device());
        let mut h = match &h0 {
            Some(t) => t.get(d)?,
            None => zeros()?,
        };
        let mut cell = match (&c0, lstm) {
            (Some(t), true) => Some(t.get(d)?),
            (None, true) => Some(zeros()?),
            _ => None,
        };
        let peep = match inp.p {
            Some(p) if lstm => {
                let p = p.get(d)?;
                Some([
                    p.narrow(0, 0, hs)?,
                    p.narrow(0, hs, hs)?,
                    p.narrow(0, 2 * hs, hs)?,
                ])
            }
            _ => None,
        };
        let mut out: Vec<Option<Tensor>> = vec![None; seq];
        let order: Vec<usize> = if reverse {
            (0..seq).rev().collect()
        } else {
            (0..seq).collect()
        };
        for t in order {
            let gx = xw.get(t)?;
            let (h_new, c_new) = match spec.kind {
                RecurrentKind::Rnn => {
                    let pre = (gx + op(ops::matmul(&h, &rt))?)?;
                    (activation_c(&acts[0], &clip(pre, spec.clip)?)?, None)
                }
                RecurrentKind::Gru => {
                    let zr = (gx.narrow(1, 0, 2 * hs)? + op(ops::matmul(&h, &rt))?)?;
                    let z = activation_c(&acts[0], &clip(zr.narrow(1, 0, hs)?, spec.clip)?)?;
                    let rg = activation_c(&acts[0], &clip(zr.narrow(1, hs, hs)?, spec.clip)?)?;
                    let gh = gx.narrow(1, 2 * hs, hs)?;
                    let rh = rt_h.as_ref().ok_or_else(|| msg("missing GRU weights"))?;
                    let pre = if spec.linear_before_reset {
                        let mut lin = op(ops::matmul(&h, rh))?;
                        if let Some(b) = &rb_h {
                            lin = lin.broadcast_add(b)?;
                        }
                        (gh + (rg * lin)?)?
                    } else {
                        (gh + op(ops::matmul(&(&rg * &h)?, rh))?)?
                    };
                    let cand = activation_c(&acts[1], &clip(pre, spec.clip)?)?;
                    // (1 − z)⊙h̃ + z⊙H = h̃ + z⊙(H − h̃)
                    ((&cand + (z * (&h - &cand)?)?)?, None)
                }
                RecurrentKind::Lstm => {
                    let cp = cell
                        .as_ref()
                        .ok_or_else(|| msg("missing LSTM cell state"))?;
                    let all = (gx + op(ops::matmul(&h, &rt))?)?;
                    let part = |k: usize| all.narrow(1, k * hs, hs);
                    let (mut gi, mut go, mut gf, gc) = (part(0)?, part(1)?, part(2)?, part(3)?);
                    if let Some([pi, _, pf]) = &peep {
                        gi = (gi + cp.broadcast_mul(pi)?)?;
                        gf = (gf + cp.broadcast_mul(pf)?)?;
                    }
                    let i = activation_c(&acts[0], &clip(gi, spec.clip)?)?;
                    let f = if spec.input_forget {
                        i.affine(-1.0, 1.0)?
                    } else {
                        activation_c(&acts[0], &clip(gf, spec.clip)?)?
                    };
                    let g = activation_c(&acts[1], &clip(gc, spec.clip)?)?;
                    let c_new = ((f * cp)? + (&i * g)?)?;
                    if let Some([_, po, _]) = &peep {
                        go = (go + c_new.broadcast_mul(po)?)?;
                    }
                    let o = activation_c(&acts[0], &clip(go, spec.clip)?)?;
                    let h_new = (o * activation_c(&acts[2], &c_new)?)?;
                    (h_new, Some(c_new))
                }
            };
            match lens {
                Some(l) => {
                    let m = batch_mask(l, |n| t < n, &x)?;
                    out[t] = Some(h_new.broadcast_mul(&m)?);
                    h = blend(&h, &h_new, &m)?;
                    if let (Some(cp), Some(cn)) = (&cell, &c_new) {
                        cell = Some(blend(cp, cn, &m)?);
                    }
                }
                None => {
                    out[t] = Some(h_new.clone());
                    h = h_new;
                    if c_new.is_some() {
                        cell = c_new;
                    }
                }
            }
        }
        if let Some(l) = lens.filter(|l| l.contains(&0)) {
            // An empty sequence has zero final states.
            let m = batch_mask(l, |n| n > 0, &x)?;
            h = h.broadcast_mul(&m)?;
            if let Some(cp) = &cell {
                cell = Some(cp.broadcast_mul(&m)?);
            }
        }
        let steps: Vec<Tensor> = out.into_iter().flatten().collect();
        ys.push(Tensor::stack(&steps, 0)?);
        last_h.push(h);
        last_c.extend(cell);
    }
    let mut y = Tensor::stack(&ys, 1)?;
    let mut y_h = Tensor::stack(&last_h, 0)?;
    let mut y_c = if lstm {
        Some(Tensor::stack(&last_c, 0)?)
    } else {
        None
    };
    if spec.batch_first {
        y = y.permute((2, 0, 1, 3)).and_then(|t| t.contiguous())?;
        let bf = |t: Tensor| t.transpose(0, 1).and_then(|t| t.contiguous());
        y_h = bf(y_h)?;
        y_c = y_c.map(bf).transpose()?;
    }
    Ok(RecurrentOutputs { y, y_h, y_c })
}

/// Sequence lengths from the `sequence_lens` tensor (int32 / int64 values).
pub fn sequence_lengths(t: &Tensor) -> OpResult<Vec<usize>> {
    let v: Vec<i64> = (t
        .to_dtype(DType::I64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1()))
    .map_err(|e| e.to_string())?;
    v.iter()
        .map(|&n| usize::try_from(n).map_err(|_| format!("negative sequence length {n}")))
        .collect()
}
