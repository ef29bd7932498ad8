//! ONNX operators beyond the convolutional core, on candle tensors: element-wise functions,
//! comparisons and selection, variadic Min/Max/Sum/Mean, Pow, Mod, PRelu, reductions,
//! ArgMax/ArgMin, layer and instance normalisation. Definitions are the ONNX operator
//! specifications (opsets 7–20).
//!
//! Float operators are built from candle operations with backward passes to first and second
//! order, so the Hessian traces of survey §3.2.3 (HAWQ-V2, Dong et al. 2020, Eqs. 21–23: the
//! Hutchinson estimate `zᵀHz` of weight and activation Hessians) see through them as through
//! Conv or Gemm. Piecewise functions never evaluate a branch that could overflow (`exp` of a
//! large positive input in Elu, Selu and Softplus), so masked gradients stay finite; rounding
//! operators have zero gradient. Boolean results are int64 tensors of 0/1, as the IR holds
//! booleans. Complexity: O(elements) for every operator (ReduceProd: one multiplication per
//! reduced element).

use candle_core::{DType, Result, Tensor};
use mixprec_graph::ir::{Compare, Reduce, Unary, Variadic};

/// Marks a candle call (kept for symmetry with `crate::ops`).
fn c<T>(r: Result<T>) -> Result<T> {
    r
}

fn msg(m: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(m.into())
}

fn is_int(t: &Tensor) -> bool {
    t.dtype() != DType::F32 && t.dtype() != DType::F64
}

/// min(x, 0) written as −relu(−x), so that exp of it never overflows.
fn neg_part(x: &Tensor) -> Result<Tensor> {
    c(x.neg().and_then(|n| n.relu()).and_then(|n| n.neg()))
}

/// ONNX Round: half to even.
fn round_half_even(x: &Tensor) -> Result<Tensor> {
    let r = c(x.round())?;
    let frac = c(c(x - c(x.floor())?)?
        .affine(1.0, -0.5)
        .and_then(|d| d.abs()))?;
    let tie = c(frac.lt(1e-7f32))?;
    let even = c(c(x.affine(0.5, 0.0))?
        .round()
        .and_then(|h| h.affine(2.0, 0.0)))?;
    c(tie.where_cond(&even, &r))
}

/// Element-wise unary function. Integer inputs keep their type for the rounding functions
/// and Sign; Not takes and returns 0/1 integers.
pub fn unary(x: &Tensor, u: Unary) -> Result<Tensor> {
    if is_int(x) {
        return match u {
            Unary::Floor | Unary::Ceil | Unary::Round => Ok(x.clone()),
            Unary::Sign => c(x.to_dtype(DType::I64).and_then(|t| t.sign())),
            Unary::Not => c(x
                .to_dtype(DType::I64)
                .and_then(|t| t.eq(0i64))
                .and_then(|m| m.to_dtype(DType::I64))),
            _ => unary(&c(x.to_dtype(DType::F32))?, u),
        };
    }
    let hard_sigmoid = |alpha: f64, beta: f64| c(x.affine(alpha, beta)?.clamp(0f32, 1f32));
    match u {
        Unary::Erf => c(x.erf()),
        Unary::Reciprocal => c(x.recip()),
        Unary::Floor => c(x.floor()),
        // −floor(−x): the same values, and a zero gradient where candle's ceil has none.
        Unary::Ceil => c(x.neg()?.floor()?.neg()),
        Unary::Round => round_half_even(x),
        Unary::Sign => c(x.sign()),
        Unary::Not => c(x.eq(0f32).and_then(|m| m.to_dtype(DType::I64))),
        Unary::Softplus => {
            // relu(x) + log(1 + e^−|x|): no overflow for large |x|.
            let tail = c(x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log())?;
            c(x.relu()? + tail)
        }
        Unary::HardSwish => c(x * hard_sigmoid(1.0 / 6.0, 0.5)?),
        Unary::HardSigmoid { alpha, beta } => hard_sigmoid(alpha as f64, beta as f64),
        Unary::Elu { alpha } | Unary::Selu { alpha, .. } => {
            let neg = c(neg_part(x)?.exp()?.affine(alpha as f64, -(alpha as f64)))?;
            let y = c(x.relu()? + neg)?;
            match u {
                Unary::Selu { gamma, .. } => c(y.affine(gamma as f64, 0.0)),
                _ => Ok(y),
            }
        }
        Unary::Softsign => c(x.broadcast_div(&c(x.abs()?.affine(1.0, 1.0))?)),
        Unary::ThresholdedRelu { alpha } => {
            let keep = c(x.gt(alpha)?.to_dtype(DType::F32))?;
            c(x * keep)
        }
        Unary::Celu { alpha } => {
            let a = alpha as f64;
            let neg = c(neg_part(x)?.affine(1.0 / a, 0.0)?.exp()?.affine(a, -a))?;
            c(x.relu()? + neg)
        }
        Unary::Gelu { tanh: true } => c(x.gelu()),
        Unary::Gelu { tanh: false } => c(x.gelu_erf()),
    }
}

/// Bring tensors to one dtype: f32 when any is a float, else int64.
fn common(ts: &[Tensor]) -> Result<Vec<Tensor>> {
    let dt = if ts.iter().any(|t| !is_int(t)) {
        DType::F32
    } else {
        DType::I64
    };
    ts.iter().map(|t| c(t.to_dtype(dt))).collect()
}

/// Element-wise comparison with broadcasting; 0/1 int64 result.
pub fn compare(a: &Tensor, b: &Tensor, kind: Compare) -> Result<Tensor> {
    if matches!(kind, Compare::And | Compare::Or | Compare::Xor) {
        let (p, q) = (
            c(a.to_dtype(DType::F32)?.ne(0f32))?,
            c(b.to_dtype(DType::F32)?.ne(0f32))?,
        );
        let (p, q) = (c(p.to_dtype(DType::I64))?, c(q.to_dtype(DType::I64))?);
        let r = match kind {
            Compare::And => c(p.broadcast_mul(&q))?,
            Compare::Or => c(p.broadcast_add(&q)?.gt(0i64)?.to_dtype(DType::I64))?,
            _ => c(p.broadcast_ne(&q)?.to_dtype(DType::I64))?,
        };
        return Ok(r);
    }
    let v = common(&[a.clone(), b.clone()])?;
    let (a, b) = (&v[0], &v[1]);
    let m = match kind {
        Compare::Equal => a.broadcast_eq(b),
        Compare::Less => a.broadcast_lt(b),
        Compare::LessOrEqual => a.broadcast_le(b),
        Compare::Greater => a.broadcast_gt(b),
        Compare::GreaterOrEqual => a.broadcast_ge(b),
        Compare::And | Compare::Or | Compare::Xor => unreachable_logic(),
    };
    c(m.and_then(|m| m.to_dtype(DType::I64)))
}

/// The logical operators return before the comparison match.
fn unreachable_logic() -> Result<Tensor> {
    Err(msg("logical operator reached the comparison path"))
}

/// Where: `x` where `cond` is non-zero, else `y`, all broadcast to `shape`.
pub fn select_where(cond: &Tensor, x: &Tensor, y: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let m = c(cond.to_dtype(DType::F32)?.ne(0f32))?;
    let m = c(m.broadcast_as(shape))?;
    let v = common(&[x.clone(), y.clone()])?;
    let (x, y) = (c(v[0].broadcast_as(shape))?, c(v[1].broadcast_as(shape))?);
    c(m.where_cond(&x, &y))
}

/// Min / Max / Sum / Mean of one or more tensors with broadcasting.
pub fn variadic(ts: &[Tensor], kind: Variadic) -> Result<Tensor> {
    let v = common(ts)?;
    let mut it = v.iter();
    let mut acc = it.next().ok_or_else(|| msg("no inputs"))?.clone();
    for t in it {
        acc = c(match kind {
            Variadic::Min => acc.broadcast_minimum(t),
            Variadic::Max => acc.broadcast_maximum(t),
            Variadic::Sum | Variadic::Mean => acc.broadcast_add(t),
        })?;
    }
    if kind == Variadic::Mean && v.len() > 1 {
        if is_int(&acc) {
            return Err(msg("Mean of integer tensors is not supported"));
        }
        acc = c(acc.affine(1.0 / v.len() as f64, 0.0))?;
    }
    Ok(acc)
}

/// Pow with broadcasting; the result has the type of `x`. `scalar_exponent` is the exponent
/// when it is a known single value (then x^e directly, exact for negative bases).
pub fn pow(x: &Tensor, y: &Tensor, scalar_exponent: Option<f32>) -> Result<Tensor> {
    let out_int = is_int(x);
    let xf = c(x.to_dtype(DType::F32))?;
    let r = if let Some(e) = scalar_exponent {
        if e == 1.0 {
            xf
        } else if e == 2.0 {
            c(xf.sqr())?
        } else {
            // Broadcast a single-element exponent of higher rank.
            let yr = y.rank();
            let r = c(xf.powf(e as f64))?;
            if yr > r.rank() {
                let mut shape = vec![1; yr - r.rank()];
                shape.extend_from_slice(r.dims());
                c(r.reshape(shape))?
            } else {
                r
            }
        }
    } else {
        // |x|^y, times (−1)^y for a negative x (NaN unless y is an integer), with x^0 = 1.
        let yf = c(y.to_dtype(DType::F32))?;
        let mag = c(yf.broadcast_mul(&c(xf.abs()?.log())?)?.exp())?;
        let shape = mag.dims().to_vec();
        let odd = c(yf.affine(0.5, 0.0)?.floor()?.affine(-2.0, 0.0)? + &yf)?;
        let parity = c(odd.affine(-2.0, 1.0))?;
        let integer = c(yf.eq(&c(yf.round())?))?;
        let nan = c(Tensor::full(f32::NAN, yf.dims(), x.device()))?;
        let sign = c(integer.where_cond(&parity, &nan))?;
        let neg = c(xf.lt(0f32))?;
        let ones = c(Tensor::ones(shape.as_slice(), DType::F32, x.device()))?;
        let sign = c(c(neg.broadcast_as(shape.as_slice()))?
            .where_cond(&c(sign.broadcast_as(shape.as_slice()))?, &ones))?;
        let v = c(mag * sign)?;
        let zero_exp = c(c(yf.eq(0f32))?.broadcast_as(shape.as_slice()))?;
        c(zero_exp.where_cond(&ones, &v))?
    };
    if out_int {
        c(r.round().and_then(|t| t.to_dtype(DType::I64)))
    } else {
        Ok(r)
    }
}

/// Mod with broadcasting to `shape`. Integers: Python-style modulo (sign of the divisor), or
/// C `fmod` (sign of the dividend) when `fmod`; division by zero is an error. Floats need
/// `fmod` and compute a − b·trunc(a / b) with the truncated quotient held constant, so
/// ∂/∂a = 1 and ∂/∂b = −trunc(a / b).
pub fn modulo(a: &Tensor, b: &Tensor, fmod: bool, shape: &[usize]) -> Result<Tensor> {
    let v = common(&[a.clone(), b.clone()])?;
    let (x, y) = (c(v[0].broadcast_as(shape))?, c(v[1].broadcast_as(shape))?);
    if is_int(&x) {
        let p = c(x.flatten_all()?.to_vec1::<i64>())?;
        let q = c(y.flatten_all()?.to_vec1::<i64>())?;
        let r = p
            .iter()
            .zip(&q)
            .map(|(&p, &q)| mixprec_graph::eval::int_mod(p, q, fmod).map_err(msg))
            .collect::<Result<Vec<i64>>>()?;
        return c(Tensor::from_vec(r, shape, a.device()));
    }
    if !fmod {
        return Err(msg(
            "Mod with fmod=0 needs integer inputs; floating-point inputs need fmod=1",
        ));
    }
    let (xd, yd) = (x.detach(), y.detach());
    let q = c(&xd / &yd)?;
    let pos = c(q.ge(0f32))?;
    let t = c(pos.where_cond(&c(q.floor())?, &c(q.ceil())?))?;
    // Rounding of the f32 quotient can reach the next integer (the remainder then has the
    // sign opposite to a): step the quotient back by one toward zero there.
    let r0 = c(&xd - c(&yd * &t)?)?;
    let wrong = c(c(&r0 * &xd)?.lt(0f32)?.to_dtype(DType::F32))?;
    let step = c(pos.to_dtype(DType::F32)?.affine(2.0, -1.0))?;
    let t = c(&t - c(wrong * step)?)?;
    c(&x - c(&y * &t)?)
}

/// PRelu: x where x ≥ 0, else slope·x (slope broadcast to x).
pub fn prelu(x: &Tensor, slope: &Tensor) -> Result<Tensor> {
    let neg = neg_part(x)?;
    c(x.relu()? + neg.broadcast_mul(&c(slope.to_dtype(x.dtype()))?)?)
}

/// Reduce over sorted `axes`, keeping them with size 1 (the caller reshapes).
pub fn reduce(x: &Tensor, axes: &[usize], kind: Reduce) -> Result<Tensor> {
    if is_int(x)
        && matches!(
            kind,
            Reduce::Mean | Reduce::L2 | Reduce::LogSum | Reduce::LogSumExp
        )
    {
        let f = reduce(&c(x.to_dtype(DType::F32))?, axes, kind)?;
        return c(f.round().and_then(|t| t.to_dtype(DType::I64)));
    }
    let x = if is_int(x) {
        c(x.to_dtype(DType::I64))?
    } else {
        x.clone()
    };
    if axes.iter().any(|&a| x.dims()[a] == 0) {
        return Err(msg("reducing an empty axis is not supported"));
    }
    match kind {
        Reduce::Sum => c(x.sum_keepdim(axes)),
        Reduce::Mean => c(x.mean_keepdim(axes)),
        Reduce::SumSquare => c(x.sqr()?.sum_keepdim(axes)),
        Reduce::L2 => c(x.sqr()?.sum_keepdim(axes)?.sqrt()),
        Reduce::L1 => c(x.abs()?.sum_keepdim(axes)),
        Reduce::LogSum => c(x.sum_keepdim(axes)?.log()),
        Reduce::LogSumExp => {
            // m + log Σ e^(x − m) with the maximum m held constant (its gradient cancels).
            let mut m = x.detach();
            for &a in axes {
                m = c(m.max_keepdim(a))?;
            }
            c(x.broadcast_sub(&m)?
                .exp()?
                .sum_keepdim(axes)?
                .log()?
                .broadcast_add(&m))
        }
        Reduce::Max | Reduce::Min => {
            let mut y = x;
            for &a in axes {
                y = c(if kind == Reduce::Max {
                    y.max_keepdim(a)
                } else {
                    y.min_keepdim(a)
                })?;
            }
            Ok(y)
        }
        Reduce::Prod => {
            // Products of slices: exact, and differentiable to any order.
            let mut y = x;
            for &a in axes {
                let mut acc = c(y.narrow(a, 0, 1))?;
                for i in 1..y.dims()[a] {
                    acc = c(acc * c(y.narrow(a, i, 1))?)?;
                }
                y = acc;
            }
            Ok(y)
        }
    }
}

/// Index (int64) of the maximum or minimum along `axis`, kept with size 1; the first index on
/// ties, or the last with `last`.
pub fn arg_extreme(x: &Tensor, axis: usize, max: bool, last: bool) -> Result<Tensor> {
    let x = c(x.to_dtype(DType::F32))?;
    let d = x.dims()[axis];
    let src = if last { c(x.flip(&[axis]))? } else { x };
    let idx = c(if max {
        src.argmax_keepdim(axis)
    } else {
        src.argmin_keepdim(axis)
    })?;
    let idx = c(idx.to_dtype(DType::I64))?;
    if last {
        c(idx.affine(-1.0, (d - 1) as f64))
    } else {
        Ok(idx)
    }
}

/// LayerNormalization over axes `axis..`: (Y, Mean, InvStdDev), statistics kept with size 1.
pub fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: usize,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let axes: Vec<usize> = (axis..x.rank()).collect();
    let mean = c(x.mean_keepdim(axes.as_slice()))?;
    let centered = c(x.broadcast_sub(&mean))?;
    let var = c(centered.sqr()?.mean_keepdim(axes.as_slice()))?;
    let inv = c((var + eps as f64)?.sqrt()?.recip())?;
    let mut y = c(centered.broadcast_mul(&inv)?.broadcast_mul(scale))?;
    if let Some(b) = bias {
        y = c(y.broadcast_add(b))?;
    }
    Ok((y, mean, inv))
}

/// InstanceNormalization: each (sample, channel) normalised over the spatial axes, then
/// scaled and shifted per channel.
pub fn instance_norm(x: &Tensor, scale: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let axes: Vec<usize> = (2..x.rank()).collect();
    let mean = c(x.mean_keepdim(axes.as_slice()))?;
    let centered = c(x.broadcast_sub(&mean))?;
    let var = c(centered.sqr()?.mean_keepdim(axes.as_slice()))?;
    let inv = c((var + eps as f64)?.sqrt()?.recip())?;
    let mut shape = vec![1usize; x.rank()];
    shape[1] = x.dims()[1];
    let s = c(scale.reshape(shape.as_slice()))?;
    let b = c(bias.reshape(shape.as_slice()))?;
    c(centered
        .broadcast_mul(&inv)?
        .broadcast_mul(&s)?
        .broadcast_add(&b))
}

/// Resize: separable interpolation, one axis at a time, as a weighted sum of gathered slices
/// (differentiable in `x`). `scales` are per axis; `out` is the output shape.
pub fn resize(
    x: &Tensor,
    out: &[usize],
    scales: &[f64],
    r: &mixprec_graph::ir::Resize,
) -> Result<Tensor> {
    let int = is_int(x);
    let mut y = c(x.to_dtype(DType::F32))?;
    for axis in 0..x.rank() {
        let (input, output) = (x.dims()[axis], out[axis]);
        if input == output && scales[axis] == 1.0 {
            continue;
        }
        if input == 0 {
            return Err(msg(format!("cannot resize the empty axis {axis}")));
        }
        let mut wshape = vec![1usize; x.rank()];
        wshape[axis] = output;
        let mut acc: Option<Tensor> = None;
        for (idx, w) in mixprec_graph::shape::resize_taps(input, output, scales[axis], r) {
            if w.iter().all(|&v| v == 0.0) {
                continue;
            }
            let ids = c(Tensor::from_vec(
                idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                output,
                x.device(),
            ))?;
            let part = c(y.contiguous()?.index_select(&ids, axis))?;
            let part = if w.iter().all(|&v| v == 1.0) {
                part
            } else {
                let wt = c(Tensor::from_vec(w, wshape.as_slice(), x.device()))?;
                c(part.broadcast_mul(&wt))?
            };
            acc = Some(match acc {
                None => part,
                Some(a) => c(a + part)?,
            });
        }
        y = match acc {
            Some(a) => a,
            None => c(Tensor::zeros(
                {
                    let mut s = y.dims().to_vec();
                    s[axis] = output;
                    s
                },
                DType::F32,
                x.device(),
            ))?,
        };
    }
    if int {
        c(y.round()?.to_dtype(DType::I64))
    } else {
        Ok(y)
    }
}

/// Insert `s − 1` zeros between neighbouring elements along `axis` (differentiable).
fn zero_stuff(x: &Tensor, axis: usize, s: usize) -> Result<Tensor> {
    let n = x.dims()[axis];
    if s == 1 || n == 0 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    let y = x.unsqueeze(axis + 1)?;
    let mut zshape = y.dims().to_vec();
    zshape[axis + 1] = s - 1;
    let zeros = Tensor::zeros(zshape.as_slice(), x.dtype(), x.device())?;
    let y = Tensor::cat(&[&y, &zeros], axis + 1)?;
    dims[axis] = n * s;
    y.reshape(dims.as_slice())?.narrow(axis, 0, (n - 1) * s + 1)
}

/// ConvTranspose (1-D or 2-D) as a stride-1 convolution of the zero-stuffed input with the
/// spatially flipped, in/out-swapped kernel: padding `d·(k − 1) − pads` (cropping where
/// negative), dilation `d`, the same groups. `geometry` is per spatial axis (padding begin,
/// padding end, output size) from [`mixprec_graph::shape::conv_transpose_geometry`].
pub fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    window: &mixprec_graph::Window,
    group: usize,
    geometry: &[(i64, i64, usize)],
) -> Result<Tensor> {
    let spatial = x.rank().saturating_sub(2);
    if !(1..=2).contains(&spatial) || w.rank() != x.rank() || geometry.len() != spatial {
        return Err(msg(format!(
            "{spatial}-D ConvTranspose is not supported (1-D and 2-D are)"
        )));
    }
    let get = |v: &[usize], i: usize| v.get(i).copied().unwrap_or(1);
    // Work in 2-D: a 1-D problem gets a leading spatial axis of size 1.
    let (x4, w4, squeezed) = if spatial == 1 {
        (x.unsqueeze(2)?, w.unsqueeze(2)?, true)
    } else {
        (x.clone(), w.clone(), false)
    };
    let off = if squeezed { 1 } else { 0 };
    let (c_in, c_out_g) = (w4.dims()[0], w4.dims()[1]);
    let kernel = [w4.dims()[2], w4.dims()[3]];
    let mut strides = [1usize; 2];
    let mut dil = [1usize; 2];
    let mut geo = [(0i64, 0i64, 1usize); 2];
    for i in 0..spatial {
        strides[i + off] = get(&window.strides, i);
        dil[i + off] = get(&window.dilations, i);
        geo[i + off] = geometry[i];
    }
    if squeezed {
        geo[0] = (0, 0, 1);
    }
    // Kernel: [C_in, C_out/g, kh, kw] → flipped [C_out, C_in/g, kh, kw].
    let g = group;
    let wk = w4
        .reshape((g, c_in / g, c_out_g, kernel[0], kernel[1]))?
        .transpose(1, 2)?
        .reshape((g * c_out_g, c_in / g, kernel[0], kernel[1]))?;
    let wk = wk.contiguous()?.flip(&[2, 3])?;
    let mut xs = x4.contiguous()?;
    let mut pads = [0usize; 4];
    for a in 0..2 {
        xs = zero_stuff(&xs, a + 2, strides[a])?;
        let reach = (dil[a] * (kernel[a] - 1)) as i64;
        let (pb, _, size) = geo[a];
        let begin = reach - pb;
        let len = xs.dims()[a + 2] as i64;
        // End padding so that the stride-1 convolution yields exactly `size` outputs.
        let end = size as i64 + reach - begin - len;
        let (cb, ce) = ((-begin).max(0), (-end).max(0));
        if cb + ce > 0 {
            if cb + ce >= len {
                return Err(msg("the padding crops the whole input"));
            }
            xs = xs.narrow(a + 2, cb as usize, (len - cb - ce) as usize)?;
        }
        pads[a] = begin.max(0) as usize;
        pads[a + 2] = end.max(0) as usize;
    }
    let mut y = crate::conv2d::conv2d(&xs, &wk, (1, 1), pads, (dil[0], dil[1]), group)?;
    if let Some(b) = b {
        y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?;
    }
    if squeezed {
        y = y.squeeze(2)?;
    }
    Ok(y)
}
