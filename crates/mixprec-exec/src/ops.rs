//! Operator implementations on candle tensors, independent of the graph: every function takes
//! tensors and resolved attributes and is differentiable through candle's autodiff (including
//! second order, used for Hessian-vector products).

use candle_core::{DType, Device, Tensor};
use mixprec_graph::{PadMode, Window};

/// Result of an operator; the message is wrapped with the node name by the executor.
pub type OpResult<T> = std::result::Result<T, String>;

fn c<T>(r: candle_core::Result<T>) -> OpResult<T> {
    r.map_err(|e| e.to_string())
}

/// Pad `x` along `dim` with `before`/`after` copies of `value`.
pub fn pad_const_dim(
    x: &Tensor,
    dim: usize,
    before: usize,
    after: usize,
    value: f64,
) -> OpResult<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let mut parts = Vec::with_capacity(3);
    let mut shape = x.dims().to_vec();
    if before > 0 {
        shape[dim] = before;
        parts.push(c(Tensor::full(value as f32, shape.as_slice(), x.device())
            .and_then(|t| t.to_dtype(x.dtype())))?);
    }
    parts.push(x.clone());
    if after > 0 {
        shape[dim] = after;
        parts.push(c(Tensor::full(value as f32, shape.as_slice(), x.device())
            .and_then(|t| t.to_dtype(x.dtype())))?);
    }
    c(Tensor::cat(&parts, dim))
}

/// Select positions `idx` along `dim` (differentiable gather of slices).
pub fn select(x: &Tensor, dim: usize, idx: &[usize]) -> OpResult<Tensor> {
    let t = c(Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        x.device(),
    ))?;
    c(x.contiguous().and_then(|x| x.index_select(&t, dim)))
}

/// Pooling as an elementwise maximum (or mean) over the k_h·k_w strided (and dilated) shifts
/// of the (padded) input: differentiable for overlapping windows, where candle's pooling has no
/// backward.
fn pool_shifts(
    x: &Tensor,
    k: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
    out: (usize, usize),
    max: bool,
) -> OpResult<Tensor> {
    let mut acc: Option<Tensor> = None;
    for i in 0..k.0 {
        for j in 0..k.1 {
            let rows: Vec<usize> = (0..out.0).map(|o| i * d.0 + o * s.0).collect();
            let cols: Vec<usize> = (0..out.1).map(|o| j * d.1 + o * s.1).collect();
            let v = select(&select(x, 2, &rows)?, 3, &cols)?;
            acc = Some(match acc {
                None => v,
                Some(a) if max => c(a.maximum(&v))?,
                Some(a) => c(a + v)?,
            });
        }
    }
    let acc = acc.ok_or_else(|| "empty pooling window".to_string())?;
    if max {
        Ok(acc)
    } else {
        c(acc.affine(1.0 / (k.0 * k.1) as f64, 0.0))
    }
}

/// ONNX Pad for one tensor: per-axis (begin, end), negative values crop.
pub fn pad(x: &Tensor, amounts: &[(i64, i64)], mode: PadMode, value: f64) -> OpResult<Tensor> {
    let mut y = x.clone();
    for (dim, &(b, e)) in amounts.iter().enumerate() {
        if b == 0 && e == 0 {
            continue;
        }
        let len = y.dims()[dim] as i64;
        // Crop first (negative pads).
        let (cb, ce) = ((-b).max(0), (-e).max(0));
        if cb + ce > 0 {
            if cb + ce > len {
                return Err(format!(
                    "negative padding removes more than the {len} elements of axis {dim}"
                ));
            }
            y = c(y.narrow(dim, cb as usize, (len - cb - ce) as usize))?;
        }
        let (pb, pe) = (b.max(0) as usize, e.max(0) as usize);
        if pb + pe == 0 {
            continue;
        }
        let n = y.dims()[dim];
        y = match mode {
            PadMode::Constant => pad_const_dim(&y, dim, pb, pe, value)?,
            PadMode::Edge | PadMode::Reflect => {
                if n == 0 || (mode == PadMode::Reflect && n < 2 && pb + pe > 0) {
                    return Err(format!("cannot {mode:?}-pad axis {dim} of size {n}"));
                }
                let idx: Vec<usize> = (-(pb as i64)..(n + pe) as i64)
                    .map(|i| match mode {
                        PadMode::Edge => i.clamp(0, n as i64 - 1) as usize,
                        _ => {
                            let period = 2 * (n as i64 - 1);
                            let m = i.rem_euclid(period);
                            (if m >= n as i64 { period - m } else { m }) as usize
                        }
                    })
                    .collect();
                select(&y, dim, &idx)?
            }
        };
    }
    Ok(y)
}

/// Bring a 3-D (N, C, L) tensor to 4-D (N, C, 1, L) so 1-D windows reuse the 2-D kernels.
fn to_4d(x: &Tensor) -> OpResult<(Tensor, bool)> {
    match x.rank() {
        3 => Ok((c(x.unsqueeze(2))?, true)),
        4 => Ok((x.clone(), false)),
        r => Err(format!(
            "{}-D spatial windows are not supported (1-D and 2-D are)",
            r.saturating_sub(2)
        )),
    }
}

fn window_2d(win: &Window, spatial: &[usize]) -> OpResult<(Window, Vec<usize>)> {
    // Express a 1-D window as 2-D with a leading unit dimension.
    if spatial.len() == 2 {
        return Ok((win.clone(), spatial.to_vec()));
    }
    let one = |v: &Vec<usize>, d: usize| if v.is_empty() { vec![] } else { vec![d, v[0]] };
    let mut w = win.clone();
    w.kernel = vec![1, win.kernel[0]];
    w.strides = one(&win.strides, 1);
    w.dilations = one(&win.dilations, 1);
    w.pads = if win.pads.len() == 2 {
        vec![0, win.pads[0], 0, win.pads[1]]
    } else {
        vec![]
    };
    Ok((w, vec![1, spatial[0]]))
}

/// ONNX Conv (1-D or 2-D, any groups, asymmetric padding, strides, dilations).
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    window: &Window,
    group: usize,
) -> OpResult<Tensor> {
    let cv = Conv2d::new(x, w, window)?;
    let mut y = c(crate::conv2d::conv2d(
        &cv.x,
        &cv.w,
        cv.stride,
        cv.pads,
        cv.dilation,
        group,
    ))?;
    if let Some(b) = b {
        y = if !b.track_op() && lean(&y) && b.elem_count() == y.dims()[1] {
            // y · 1 + b: the same values, one pass forward and backward.
            let ones = vec![1f32; b.elem_count()];
            c(crate::pointwise::channel_affine(
                &y,
                None,
                ones,
                Some(c(to_vec_f32(b))?),
            ))?
        } else {
            c(y.broadcast_add(&c(b.reshape((1, b.elem_count(), 1, 1)))?))?
        };
    }
    if cv.squeezed {
        y = c(y.squeeze(2))?;
    }
    Ok(y)
}

/// An ONNX convolution (1-D or 2-D) as a 2-D one: 4-D operands and resolved geometry.
pub struct Conv2d {
    /// Input, [N, C, H, W].
    pub x: Tensor,
    /// Weight, [M, C/groups, KH, KW].
    pub w: Tensor,
    /// (height, width).
    pub stride: (usize, usize),
    /// [top, left, bottom, right].
    pub pads: [usize; 4],
    /// (height, width).
    pub dilation: (usize, usize),
    /// A 1-D convolution was given (its output needs `squeeze(2)`).
    pub squeezed: bool,
}

impl Conv2d {
    /// Resolves `window` (kernel from the weight when absent, `auto_pad`) for input `x`.
    pub fn new(x: &Tensor, w: &Tensor, window: &Window) -> OpResult<Self> {
        let mut win = window.clone();
        if win.kernel.is_empty() {
            win.kernel = w.dims()[2..].to_vec();
        }
        let spatial = &x.dims()[2..];
        let (win2, sp2) = window_2d(&win, spatial)?;
        let (x4, squeezed) = to_4d(x)?;
        let w4 = if squeezed {
            c(w.unsqueeze(2))?
        } else {
            w.clone()
        };
        let (begin, end, _) = win2
            .resolve(&sp2)
            .ok_or("the window does not fit the input")?;
        let get = |v: &Vec<usize>, i| v.get(i).copied().unwrap_or(1);
        Ok(Conv2d {
            x: x4,
            w: w4,
            stride: (get(&win2.strides, 0), get(&win2.strides, 1)),
            pads: [begin[0], begin[1], end[0], end[1]],
            dilation: (get(&win2.dilations, 0), get(&win2.dilations, 1)),
            squeezed,
        })
    }
}

/// Whether `x` can take the operators of [`crate::pointwise`] (f32 on the CPU, a channel
/// dimension).
pub fn lean(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu() && x.rank() >= 2
}

/// Max or average pooling (1-D, 2-D or 3-D) with ONNX padding, dilations, ceil mode and
/// `count_include_pad`.
pub fn pool(x: &Tensor, window: &Window, max: bool, count_include_pad: bool) -> OpResult<Tensor> {
    if x.rank() == 5 {
        return pool_3d(x, window, max, count_include_pad);
    }
    let spatial = x.dims()[2..].to_vec();
    let (win, sp) = window_2d(window, &spatial)?;
    let (x4, squeezed) = to_4d(x)?;
    let (begin, end, out) = win
        .resolve(&sp)
        .ok_or("the window does not fit the input")?;
    let (kh, kw) = (win.kernel[0], win.kernel[1]);
    let get = |v: &Vec<usize>, i| v.get(i).copied().unwrap_or(1);
    let (sh, sw) = (get(&win.strides, 0), get(&win.strides, 1));
    let (dh, dw) = (get(&win.dilations, 0), get(&win.dilations, 1));
    if out.contains(&0) {
        return Err(format!(
            "the pooling output would be empty (output size {out:?})"
        ));
    }
    // Extra end padding so floor-mode pooling yields the (possibly ceil-mode) output size.
    let need = |o: usize, s: usize, k: usize, d: usize| (o - 1) * s + (k - 1) * d + 1;
    let extra_h = need(out[0], sh, kh, dh).saturating_sub(sp[0] + begin[0] + end[0]);
    let extra_w = need(out[1], sw, kw, dw).saturating_sub(sp[1] + begin[1] + end[1]);
    let fill = if max { f32::NEG_INFINITY as f64 } else { 0.0 };
    let padded = pad_const_dim(
        &pad_const_dim(&x4, 2, begin[0], end[0] + extra_h, fill)?,
        3,
        begin[1],
        end[1] + extra_w,
        fill,
    )?;
    // Windows that overlap, leave gaps or are dilated go through the shift formulation.
    let overlapping = (kh, kw) != (sh, sw) || (dh, dw) != (1, 1);
    // Tiling windows: drop the rows and columns floor mode never reads, so candle's pooling
    // backward (which upsamples by an integer factor) applies, to first and second order.
    let padded =
        if !overlapping && (padded.dims()[2] > out[0] * kh || padded.dims()[3] > out[1] * kw) {
            c(padded
                .narrow(2, 0, out[0] * kh)
                .and_then(|p| p.narrow(3, 0, out[1] * kw)))?
        } else {
            padded
        };
    let (k2, s2, d2, o2) = ((kh, kw), (sh, sw), (dh, dw), (out[0], out[1]));
    let mut y = if max && overlapping {
        pool_shifts(&padded, k2, s2, d2, o2, true)?
    } else if max {
        c(padded.max_pool2d_with_stride((kh, kw), (sh, sw)))?
    } else {
        let avg = if overlapping {
            pool_shifts(&padded, k2, s2, d2, o2, false)?
        } else {
            c(padded.avg_pool2d_with_stride((kh, kw), (sh, sw)))?
        };
        let any_pad = begin.iter().chain(&end).any(|&p| p > 0) || extra_h + extra_w > 0;
        if !any_pad {
            avg
        } else {
            // Divide window sums by the number of counted positions.
            let (hp, wp) = (
                sp[0] + begin[0] + end[0] + extra_h,
                sp[1] + begin[1] + end[1] + extra_w,
            );
            let mut mask = vec![0f32; hp * wp];
            for i in 0..hp {
                for j in 0..wp {
                    let inside = i >= begin[0]
                        && i < begin[0] + sp[0]
                        && j >= begin[1]
                        && j < begin[1] + sp[1];
                    let in_pads = i < sp[0] + begin[0] + end[0] && j < sp[1] + begin[1] + end[1];
                    if inside || (count_include_pad && in_pads) {
                        mask[i * wp + j] = 1.0;
                    }
                }
            }
            let m = c(Tensor::from_vec(mask, (1, 1, hp, wp), x.device()))?;
            let counts = if overlapping {
                pool_shifts(&m, k2, s2, d2, o2, false)?
            } else {
                c(m.avg_pool2d_with_stride((kh, kw), (sh, sw)))?
            };
            c(avg.broadcast_div(&counts))?
        }
    };
    if squeezed {
        y = c(y.squeeze(2))?;
    }
    Ok(y)
}

/// 3-D pooling as 2-D pooling over (H, W) followed by 1-D pooling over D. Both maximum and
/// average are separable: the window is a box, so the divisor of an average (counted positions,
/// with or without padding) is the product of per-axis counts.
fn pool_3d(x: &Tensor, window: &Window, max: bool, count_include_pad: bool) -> OpResult<Tensor> {
    let (n, ch, d, h, w) = c(x.dims5())?;
    if window.kernel.len() != 3 {
        return Err(format!(
            "kernel_shape {:?} does not fit a 3-D spatial input",
            window.kernel
        ));
    }
    let pick = |v: &Vec<usize>, idx: &[usize]| -> Vec<usize> {
        if v.is_empty() {
            vec![]
        } else {
            idx.iter()
                .map(|&i| v.get(i).copied().unwrap_or(1))
                .collect()
        }
    };
    let pads = |axes: &[usize]| -> Vec<usize> {
        if window.pads.len() != 6 {
            return vec![];
        }
        let mut p: Vec<usize> = axes.iter().map(|&a| window.pads[a]).collect();
        p.extend(axes.iter().map(|&a| window.pads[a + 3]));
        p
    };
    let hw = Window {
        kernel: window.kernel[1..].to_vec(),
        strides: pick(&window.strides, &[1, 2]),
        pads: pads(&[1, 2]),
        dilations: pick(&window.dilations, &[1, 2]),
        auto_pad: window.auto_pad,
        ceil_mode: window.ceil_mode,
    };
    let y = pool(
        &c(x.reshape((n, ch * d, h, w)))?,
        &hw,
        max,
        count_include_pad,
    )?;
    let (_, _, h2, w2) = c(y.dims4())?;
    // D as the first of two spatial axes, the second of window size 1.
    let mut dp = pads(&[0]);
    if dp.len() == 2 {
        dp = vec![dp[0], 0, dp[1], 0];
    }
    let dw = Window {
        kernel: vec![window.kernel[0], 1],
        strides: if window.strides.is_empty() {
            vec![]
        } else {
            vec![window.strides[0], 1]
        },
        pads: dp,
        dilations: if window.dilations.is_empty() {
            vec![]
        } else {
            vec![window.dilations[0], 1]
        },
        auto_pad: window.auto_pad,
        ceil_mode: window.ceil_mode,
    };
    let y = pool(
        &c(y.reshape((n, ch, d, h2 * w2)))?,
        &dw,
        max,
        count_include_pad,
    )?;
    let d2 = y.dims()[2];
    c(y.reshape((n, ch, d2, h2, w2)))
}

/// Inference batch normalisation over axis 1.
pub fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> OpResult<Tensor> {
    let mut shape = vec![1usize; x.rank()];
    shape[1] = x.dims()[1];
    let r = |t: &Tensor| c(t.reshape(shape.as_slice()));
    let inv = c(c((var + eps as f64).and_then(|v| v.sqrt()))?.recip())?;
    let k = c(scale * inv)?;
    let constant = [scale, bias, mean, var].iter().all(|t| !t.track_op());
    if constant && lean(x) && k.elem_count() == x.dims()[1] {
        // Same values, one pass forward and backward (crate::pointwise).
        let host = |t: &Tensor| c(to_vec_f32(t));
        return c(crate::pointwise::channel_affine(
            x,
            Some(host(mean)?),
            host(&k)?,
            Some(host(bias)?),
        ));
    }
    let y = c(x.broadcast_sub(&r(mean)?))?;
    c(c(y.broadcast_mul(&r(&k)?))?.broadcast_add(&r(bias)?))
}

/// Training batch normalisation: normalises with the batch statistics; returns the output and
/// the batch mean and (biased) variance per channel.
pub fn batch_norm_train(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> OpResult<(Tensor, Tensor, Tensor)> {
    let axes: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
    let mean = c(x.mean_keepdim(axes.as_slice()))?;
    let centered = c(x.broadcast_sub(&mean))?;
    let var = c(c(centered.sqr())?.mean_keepdim(axes.as_slice()))?;
    let mut shape = vec![1usize; x.rank()];
    shape[1] = x.dims()[1];
    let inv = c(c((&var + eps as f64).and_then(|v| v.sqrt()))?.recip())?;
    let y = c(centered.broadcast_mul(&inv))?;
    let y = c(c(y.broadcast_mul(&c(scale.reshape(shape.as_slice()))?))?
        .broadcast_add(&c(bias.reshape(shape.as_slice()))?))?;
    Ok((y, c(mean.flatten_all())?, c(var.flatten_all())?))
}

/// Numerically stable softmax or log-softmax along `dim`.
pub fn softmax(x: &Tensor, dim: usize, log: bool) -> OpResult<Tensor> {
    let m = c(x.max_keepdim(dim))?.detach();
    let z = c(x.broadcast_sub(&m))?;
    let e = c(z.exp())?;
    let s = c(e.sum_keepdim(dim))?;
    if log {
        c(z.broadcast_sub(&c(s.log())?))
    } else {
        c(e.broadcast_div(&s))
    }
}

/// Logistic function as 0.5·(tanh(x/2) + 1): stable for large |x| and twice differentiable.
pub fn sigmoid(x: &Tensor) -> OpResult<Tensor> {
    c(c(c(x.affine(0.5, 0.0))?.tanh())?.affine(0.5, 0.5))
}

/// Matrix product with numpy semantics (1-D promotion, batch broadcasting).
pub fn matmul(a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
    let a1 = a.rank() == 1;
    let b1 = b.rank() == 1;
    let a2 = if a1 { c(a.unsqueeze(0))? } else { a.clone() };
    let b2 = if b1 { c(b.unsqueeze(1))? } else { b.clone() };
    let mut y = if a2.rank() == 2 && b2.rank() == 2 {
        c(a2.contiguous().and_then(|a| a.matmul(&b2.contiguous()?)))?
    } else if b2.rank() == 2 {
        // (…, M, K) × (K, N): fold the batch into M for one large product.
        let dims = a2.dims().to_vec();
        let k = dims[dims.len() - 1];
        let flat = c(a2.contiguous().and_then(|a| a.reshape(((), k))))?;
        let y = c(flat.matmul(&c(b2.contiguous())?))?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(b2.dims()[1]);
        c(y.reshape(out.as_slice()))?
    } else {
        c(a2.contiguous()
            .and_then(|a| a.broadcast_matmul(&b2.contiguous()?)))?
    };
    if a1 {
        y = c(y.squeeze(y.rank() - 2))?;
    }
    if b1 {
        y = c(y.squeeze(y.rank() - 1))?;
    }
    Ok(y)
}

/// Cast to the candle type used for an ONNX element type (floats → f32, others → i64).
pub fn cast(x: &Tensor, onnx_type: i32) -> OpResult<Tensor> {
    match onnx_type {
        1 | 10 | 11 | 16 => c(x.to_dtype(DType::F32)),
        9 => c(x
            .to_dtype(DType::F32)
            .and_then(|f| f.ne(0f32))
            .and_then(|m| m.to_dtype(DType::I64))),
        _ => c(x.to_dtype(DType::I64)),
    }
}

/// Bring two operands to a common dtype (f32 wins).
pub fn align(a: &Tensor, b: &Tensor) -> OpResult<(Tensor, Tensor)> {
    if a.dtype() == b.dtype() {
        return Ok((a.clone(), b.clone()));
    }
    Ok((c(a.to_dtype(DType::F32))?, c(b.to_dtype(DType::F32))?))
}

/// A host tensor of mixprec-graph as a candle tensor.
pub fn from_host(t: &mixprec_graph::Tensor, device: &Device) -> candle_core::Result<Tensor> {
    match &t.data {
        mixprec_graph::TensorData::F32(v) => {
            Tensor::from_vec(v.clone(), t.shape.as_slice(), device)
        }
        mixprec_graph::TensorData::I64(v) => {
            Tensor::from_vec(v.clone(), t.shape.as_slice(), device)
        }
    }
}

/// Flatten a tensor to `Vec<f32>`.
pub fn to_vec_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}
