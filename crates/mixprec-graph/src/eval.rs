//! Host evaluation of cheap operators on constant tensors. Used for constant folding at import
//! (a Reshape or Transpose of a weight, shape sub-graphs such as Shape→Gather→Concat) and for
//! integer shape values during shape inference. Heavy float operators (Conv, MatMul, pooling…)
//! are never evaluated here.

use crate::ir::{Compare, Op, Reduce, Unary, Variadic};
use crate::shape::{
    broadcast, expand_shape, norm_axis, range_len, reduce_axes, reduced_shape, reshape_target,
    slice_ranges, split_sizes, squeeze_shape, tile_shape, unsqueeze_shape,
};
use crate::tensor::{strides, Tensor, TensorData};

/// Largest tensor the host evaluator produces; bigger results are left to the executor.
pub const MAX_FOLD_ELEMENTS: usize = 1 << 24;

fn map_data(t: &Tensor, f32f: impl Fn(f32) -> f32, i64f: impl Fn(i64) -> i64) -> TensorData {
    match &t.data {
        TensorData::F32(v) => TensorData::F32(v.iter().map(|&x| f32f(x)).collect()),
        TensorData::I64(v) => TensorData::I64(v.iter().map(|&x| i64f(x)).collect()),
    }
}

/// Gather elements of `t` at flat source indices `idx` into a tensor of `shape`.
fn take(t: &Tensor, idx: &[usize], shape: Vec<usize>) -> Tensor {
    let data = match &t.data {
        TensorData::F32(v) => TensorData::F32(idx.iter().map(|&i| v[i]).collect()),
        TensorData::I64(v) => TensorData::I64(idx.iter().map(|&i| v[i]).collect()),
    };
    Tensor { shape, data }
}

/// Flat source index for each output position of a strided view.
fn view_indices(out_shape: &[usize], src_offset: usize, src_strides: &[isize]) -> Vec<usize> {
    let n: usize = out_shape.iter().product();
    let mut idx = Vec::with_capacity(n);
    let mut pos = vec![0usize; out_shape.len()];
    for _ in 0..n {
        let mut off = src_offset as isize;
        for (p, s) in pos.iter().zip(src_strides) {
            off += *p as isize * s;
        }
        idx.push(off as usize);
        for d in (0..out_shape.len()).rev() {
            pos[d] += 1;
            if pos[d] < out_shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    idx
}

/// Broadcast-expand `t` to `shape` (flat indices).
fn broadcast_indices(from: &[usize], to: &[usize]) -> Vec<usize> {
    let st = strides(from);
    let off = to.len() - from.len();
    let s: Vec<isize> = (0..to.len())
        .map(|i| {
            if i < off || from[i - off] == 1 {
                0
            } else {
                st[i - off] as isize
            }
        })
        .collect();
    view_indices(to, 0, &s)
}

fn binary(a: &Tensor, b: &Tensor, op: &Op) -> Option<Tensor> {
    let shape = broadcast(&a.shape, &b.shape)?;
    if too_big(&shape) {
        // Left to the executor (a broadcast of two small constants can be huge).
        return None;
    }
    let ia = broadcast_indices(&a.shape, &shape);
    let ib = broadcast_indices(&b.shape, &shape);
    let data = match (&a.data, &b.data) {
        (TensorData::I64(x), TensorData::I64(y)) => {
            let f = |p: i64, q: i64| -> Option<i64> {
                Some(match op {
                    Op::Add => p.wrapping_add(q),
                    Op::Sub => p.wrapping_sub(q),
                    Op::Mul => p.wrapping_mul(q),
                    Op::Div => p.checked_div(q)?,
                    _ => return None,
                })
            };
            TensorData::I64(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| f(x[i], y[j]))
                    .collect::<Option<_>>()?,
            )
        }
        _ => {
            let (x, y) = (a.to_f32(), b.to_f32());
            let f = |p: f32, q: f32| match op {
                Op::Add => p + q,
                Op::Sub => p - q,
                Op::Mul => p * q,
                _ => p / q,
            };
            TensorData::F32(ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect())
        }
    };
    Some(Tensor { shape, data })
}

/// ONNX Mod of two integers: C `fmod` (sign of the dividend) when `fmod`, otherwise
/// Python-style modulo with the sign of the divisor. Division by zero is an error.
pub fn int_mod(a: i64, b: i64, fmod: bool) -> Result<i64, String> {
    if b == 0 {
        return Err(format!("integer Mod of {a} by zero"));
    }
    // wrapping_rem: i64::MIN % -1 is 0 rather than an overflow.
    let r = a.wrapping_rem(b);
    Ok(if !fmod && r != 0 && (r < 0) != (b < 0) {
        r + b
    } else {
        r
    })
}

/// True when a result of `shape` is beyond what the host evaluator produces.
fn too_big(shape: &[usize]) -> bool {
    crate::tensor::checked_numel(shape).is_none_or(|n| n > MAX_FOLD_ELEMENTS)
}

/// A broadcast result shape and, per operand, the flat source index of each element.
type Broadcast = (Vec<usize>, Vec<Vec<usize>>);

/// Broadcast shape of several tensors and, for each, the flat source index of every output
/// element. `None` when the shapes do not broadcast or the result is too large to fold.
fn broadcast_all(ts: &[&Tensor]) -> Result<Option<Broadcast>, String> {
    let mut shape: Vec<usize> = Vec::new();
    for t in ts {
        shape = broadcast(&shape, &t.shape).ok_or_else(|| {
            format!(
                "cannot broadcast the inputs {:?}",
                ts.iter().map(|t| &t.shape).collect::<Vec<_>>()
            )
        })?;
    }
    if too_big(&shape) {
        return Ok(None);
    }
    let idx = ts
        .iter()
        .map(|t| broadcast_indices(&t.shape, &shape))
        .collect();
    Ok(Some((shape, idx)))
}

/// Scalar form of the element-wise unary functions that fold on the host (`None`: not
/// folded, such as Erf and Gelu, left to the executor).
fn unary_f32(u: Unary) -> Option<Box<dyn Fn(f32) -> f32>> {
    Some(match u {
        Unary::Reciprocal => Box::new(|v: f32| 1.0 / v),
        Unary::Floor => Box::new(f32::floor),
        Unary::Ceil => Box::new(f32::ceil),
        Unary::Round => Box::new(f32::round_ties_even),
        Unary::Sign => Box::new(|v: f32| {
            if v == 0.0 || v.is_nan() {
                v
            } else {
                v.signum()
            }
        }),
        Unary::Softplus => Box::new(|v: f32| v.max(0.0) + (-v.abs()).exp().ln_1p()),
        Unary::HardSwish => Box::new(|v: f32| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        Unary::Elu { alpha } => {
            Box::new(move |v: f32| if v > 0.0 { v } else { alpha * v.exp_m1() })
        }
        Unary::Selu { alpha, gamma } => {
            Box::new(move |v: f32| gamma * if v > 0.0 { v } else { alpha * v.exp_m1() })
        }
        Unary::HardSigmoid { alpha, beta } => {
            Box::new(move |v: f32| (alpha * v + beta).clamp(0.0, 1.0))
        }
        Unary::Softsign => Box::new(|v: f32| v / (1.0 + v.abs())),
        Unary::ThresholdedRelu { alpha } => Box::new(move |v: f32| if v > alpha { v } else { 0.0 }),
        Unary::Celu { alpha } => {
            Box::new(move |v: f32| v.max(0.0) + (alpha * (v / alpha).exp_m1()).min(0.0))
        }
        Unary::Erf | Unary::Gelu { .. } | Unary::Not => return None,
    })
}

/// Reduce `x` over sorted `axes` with the ONNX reduction `kind`.
fn reduce_host(x: &Tensor, axes: &[usize], keepdims: bool, kind: Reduce) -> Tensor {
    let shape = reduced_shape(&x.shape, axes, keepdims);
    let kept: Vec<usize> = (0..x.shape.len()).filter(|a| !axes.contains(a)).collect();
    let out_n: usize = kept.iter().map(|&a| x.shape[a]).product();
    // Output index of each input element.
    let ost = strides(&kept.iter().map(|&a| x.shape[a]).collect::<Vec<_>>());
    let n = x.len();
    let mut target = Vec::with_capacity(n);
    let mut pos = vec![0usize; x.shape.len()];
    for _ in 0..n {
        target.push(
            kept.iter()
                .zip(&ost)
                .map(|(&a, &s)| pos[a] * s)
                .sum::<usize>(),
        );
        for d in (0..x.shape.len()).rev() {
            pos[d] += 1;
            if pos[d] < x.shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    let count = (n / out_n.max(1)).max(1);
    match (&x.data, kind) {
        (
            TensorData::I64(v),
            Reduce::Sum | Reduce::Prod | Reduce::Max | Reduce::Min | Reduce::SumSquare | Reduce::L1,
        ) => {
            let init = match kind {
                Reduce::Prod => 1,
                Reduce::Max => i64::MIN,
                Reduce::Min => i64::MAX,
                _ => 0,
            };
            let mut acc = vec![init; out_n];
            for (&t, &e) in target.iter().zip(v) {
                acc[t] = match kind {
                    Reduce::Sum => acc[t].wrapping_add(e),
                    Reduce::SumSquare => acc[t].wrapping_add(e.wrapping_mul(e)),
                    Reduce::L1 => acc[t].wrapping_add(e.wrapping_abs()),
                    Reduce::Prod => acc[t].wrapping_mul(e),
                    Reduce::Max => acc[t].max(e),
                    _ => acc[t].min(e),
                };
            }
            Tensor {
                shape,
                data: TensorData::I64(acc),
            }
        }
        _ => {
            let v = x.to_f32();
            let init = match kind {
                Reduce::Prod => 1.0,
                Reduce::Max => f32::NEG_INFINITY,
                Reduce::Min => f32::INFINITY,
                _ => 0.0,
            };
            // Log-sum-exp subtracts the per-output maximum first.
            let mut peak = vec![f32::NEG_INFINITY; out_n];
            if kind == Reduce::LogSumExp {
                for (&t, &e) in target.iter().zip(&v) {
                    peak[t] = peak[t].max(e);
                }
                peak.iter_mut()
                    .filter(|p| !p.is_finite())
                    .for_each(|p| *p = 0.0);
            }
            let mut acc = vec![init; out_n];
            for (&t, &e) in target.iter().zip(&v) {
                acc[t] = match kind {
                    Reduce::Sum | Reduce::Mean | Reduce::LogSum => acc[t] + e,
                    Reduce::L1 => acc[t] + e.abs(),
                    Reduce::LogSumExp => acc[t] + (e - peak[t]).exp(),
                    Reduce::SumSquare | Reduce::L2 => acc[t] + e * e,
                    Reduce::Prod => acc[t] * e,
                    Reduce::Max => acc[t].max(e),
                    Reduce::Min => acc[t].min(e),
                };
            }
            match kind {
                Reduce::Mean => acc.iter_mut().for_each(|a| *a /= count as f32),
                Reduce::L2 => acc.iter_mut().for_each(|a| *a = a.sqrt()),
                Reduce::LogSum => acc.iter_mut().for_each(|a| *a = a.ln()),
                Reduce::LogSumExp => acc.iter_mut().zip(&peak).for_each(|(a, p)| *a = a.ln() + p),
                _ => {}
            }
            Tensor {
                shape,
                data: TensorData::F32(acc),
            }
        }
    }
}

/// Evaluate `op` on constant inputs. Returns `Ok(None)` when the operator is not host-evaluable
/// (or the result would be too large), `Err` with a message when the inputs are invalid.
pub fn eval_host(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Option<Vec<Tensor>>, String> {
    let out = eval_inner(op, inputs)?;
    for t in out.iter().flatten() {
        // Even an empty result must not carry dimensions whose product overflows.
        if crate::tensor::checked_numel(&t.shape).is_none() {
            return Err(format!(
                "result shape {:?} is too large (more than {} elements)",
                t.shape,
                crate::tensor::MAX_ELEMENTS
            ));
        }
    }
    Ok(out)
}

fn eval_inner(op: &Op, inputs: &[Option<&Tensor>]) -> Result<Option<Vec<Tensor>>, String> {
    let x = match inputs.first().copied().flatten() {
        Some(x) => x,
        None => {
            return Ok(None);
        }
    };
    let ints = |i: usize| inputs.get(i).copied().flatten().map(|t| t.to_i64());
    let one = |t: Tensor| Ok(Some(vec![t]));
    match op {
        Op::Dropout if ints(2).is_some_and(|t| t.iter().any(|&b| b != 0)) => {
            // Training mode: left to the executor, which rejects a non-zero ratio.
            Ok(None)
        }
        Op::Identity | Op::Dropout => one(x.clone()),
        Op::Cast { to } => {
            let data = match *to {
                1 | 10 | 11 | 16 => TensorData::F32(x.to_f32()),
                9 => TensorData::I64(x.to_f32().iter().map(|&v| (v != 0.0) as i64).collect()),
                _ => TensorData::I64(x.to_i64()),
            };
            one(Tensor {
                shape: x.shape.clone(),
                data,
            })
        }
        Op::Shape { start, end } => {
            let r = x.shape.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clamp(*start), clamp(end.unwrap_or(r)));
            let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
            one(Tensor {
                shape: vec![dims.len()],
                data: TensorData::I64(dims),
            })
        }
        Op::Size => one(Tensor {
            shape: vec![],
            data: TensorData::I64(vec![x.shape.iter().product::<usize>() as i64]),
        }),
        Op::Neg | Op::Abs | Op::Relu | Op::Sqrt | Op::Exp | Op::Log => {
            let data = match op {
                Op::Neg => map_data(x, |v| -v, |v| v.wrapping_neg()),
                Op::Abs => map_data(x, f32::abs, i64::wrapping_abs),
                Op::Relu => map_data(x, |v| v.max(0.0), |v| v.max(0)),
                Op::Sqrt => TensorData::F32(x.to_f32().iter().map(|v| v.sqrt()).collect()),
                Op::Exp => TensorData::F32(x.to_f32().iter().map(|v| v.exp()).collect()),
                _ => TensorData::F32(x.to_f32().iter().map(|v| v.ln()).collect()),
            };
            one(Tensor {
                shape: x.shape.clone(),
                data,
            })
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let Some(b) = inputs.get(1).copied().flatten() else {
                return Ok(None);
            };
            if broadcast(&x.shape, &b.shape).is_some_and(|s| too_big(&s)) {
                return Ok(None);
            }
            match binary(x, b, op) {
                Some(t) => one(t),
                None => Err(format!(
                    "cannot broadcast {:?} with {:?} (or integer division by zero)",
                    x.shape, b.shape
                )),
            }
        }
        Op::Reshape { allowzero } => {
            let Some(spec) = ints(1) else { return Ok(None) };
            let shape = reshape_target(&x.shape, &spec, *allowzero)?;
            one(Tensor {
                shape,
                data: x.data.clone(),
            })
        }
        Op::Flatten { axis } => {
            let r = x.shape.len();
            let a = if *axis < 0 { *axis + r as i64 } else { *axis };
            if a < 0 || a as usize > r {
                return Err(format!("flatten axis {axis} out of range for rank {r}"));
            }
            let a = a as usize;
            let shape = vec![x.shape[..a].iter().product(), x.shape[a..].iter().product()];
            one(Tensor {
                shape,
                data: x.data.clone(),
            })
        }
        Op::Squeeze => {
            let axes = ints(1).unwrap_or_default();
            one(Tensor {
                shape: squeeze_shape(&x.shape, &axes)?,
                data: x.data.clone(),
            })
        }
        Op::Unsqueeze => {
            let Some(axes) = ints(1) else { return Ok(None) };
            one(Tensor {
                shape: unsqueeze_shape(&x.shape, &axes)?,
                data: x.data.clone(),
            })
        }
        Op::Transpose { perm } => {
            let r = x.shape.len();
            let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..r).rev().collect());
            if perm.len() != r || (0..r).any(|i| !perm.contains(&i)) {
                return Err(format!("invalid permutation {perm:?} for rank {r}"));
            }
            let st = strides(&x.shape);
            let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
            let s: Vec<isize> = perm.iter().map(|&p| st[p] as isize).collect();
            one(take(x, &view_indices(&shape, 0, &s), shape))
        }
        Op::Concat { axis } => {
            let ts: Vec<&Tensor> = inputs
                .iter()
                .copied()
                .collect::<Option<_>>()
                .ok_or("missing input")?;
            let r = x.shape.len();
            let a =
                norm_axis(*axis, r).ok_or_else(|| format!("concat axis {axis} out of range"))?;
            let mut shape = x.shape.clone();
            shape[a] = 0;
            for t in &ts {
                if t.shape.len() != r || (0..r).any(|i| i != a && t.shape[i] != x.shape[i]) {
                    return Err(format!(
                        "cannot concatenate {:?} with {:?} on axis {a}",
                        x.shape, t.shape
                    ));
                }
                shape[a] += t.shape[a];
            }
            let outer: usize = shape[..a].iter().product();
            let all_int = ts.iter().all(|t| !t.is_float());
            let (mut fo, mut io) = (Vec::new(), Vec::new());
            for o in 0..outer {
                for t in &ts {
                    let chunk: usize = t.shape[a..].iter().product();
                    let r = o * chunk..(o + 1) * chunk;
                    if all_int {
                        io.extend_from_slice(&t.to_i64()[r]);
                    } else {
                        fo.extend_from_slice(&t.to_f32()[r]);
                    }
                }
            }
            let data = if all_int {
                TensorData::I64(io)
            } else {
                TensorData::F32(fo)
            };
            one(Tensor { shape, data })
        }
        Op::Gather { axis } => {
            let Some(idx_t) = inputs.get(1).copied().flatten() else {
                return Ok(None);
            };
            let r = x.shape.len();
            let a =
                norm_axis(*axis, r).ok_or_else(|| format!("gather axis {axis} out of range"))?;
            let dim = x.shape[a] as i64;
            let idx: Vec<usize> = idx_t
                .to_i64()
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + dim } else { i };
                    (0..dim)
                        .contains(&j)
                        .then_some(j as usize)
                        .ok_or(format!("index {i} out of range for size {dim}"))
                })
                .collect::<Result<_, _>>()?;
            let outer: usize = x.shape[..a].iter().product();
            let inner: usize = x.shape[a + 1..].iter().product();
            if too_big(&[outer, idx.len(), inner]) {
                return Ok(None);
            }
            let mut flat = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    let base = (o * x.shape[a] + i) * inner;
                    flat.extend(base..base + inner);
                }
            }
            let mut shape = x.shape[..a].to_vec();
            shape.extend_from_slice(&idx_t.shape);
            shape.extend_from_slice(&x.shape[a + 1..]);
            one(take(x, &flat, shape))
        }
        Op::Slice => {
            let (Some(st), Some(en)) = (ints(1), ints(2)) else {
                return Ok(None);
            };
            let axes = ints(3);
            let steps = ints(4);
            let ranges = slice_ranges(&x.shape, &st, &en, axes.as_deref(), steps.as_deref())?;
            let xs = strides(&x.shape);
            let shape: Vec<usize> = ranges.iter().map(|r| r.2).collect();
            let off: i64 = ranges
                .iter()
                .zip(&xs)
                .map(|(r, &s)| if r.2 > 0 { r.0 * s as i64 } else { 0 })
                .sum();
            let s: Vec<isize> = ranges
                .iter()
                .zip(&xs)
                .map(|(r, &s)| (r.1 * s as i64) as isize)
                .collect();
            one(take(x, &view_indices(&shape, off as usize, &s), shape))
        }
        Op::ConstantOfShape { value } => {
            let shape: Vec<usize> = x.to_i64().iter().map(|&d| d.max(0) as usize).collect();
            let n =
                crate::tensor::checked_numel(&shape).ok_or("ConstantOfShape result too large")?;
            if n > MAX_FOLD_ELEMENTS {
                return Ok(None);
            }
            let data = match &value.data {
                TensorData::F32(v) => TensorData::F32(vec![v.first().copied().unwrap_or(0.0); n]),
                TensorData::I64(v) => TensorData::I64(vec![v.first().copied().unwrap_or(0); n]),
            };
            one(Tensor { shape, data })
        }
        Op::Unary(Unary::Not) => one(Tensor {
            shape: x.shape.clone(),
            data: TensorData::I64(x.to_i64().iter().map(|&v| (v == 0) as i64).collect()),
        }),
        Op::Unary(u) => {
            let Some(f) = unary_f32(*u) else {
                return Ok(None);
            };
            let data = match (&x.data, u) {
                (TensorData::I64(v), Unary::Sign) => {
                    TensorData::I64(v.iter().map(|e| e.signum()).collect())
                }
                (TensorData::I64(v), Unary::Floor | Unary::Ceil | Unary::Round) => {
                    TensorData::I64(v.clone())
                }
                _ => TensorData::F32(x.to_f32().into_iter().map(f).collect()),
            };
            one(Tensor {
                shape: x.shape.clone(),
                data,
            })
        }
        Op::Compare(_) | Op::Pow | Op::Mod { .. } | Op::Where | Op::Variadic(_) | Op::PRelu => {
            let ts: Vec<&Tensor> = inputs
                .iter()
                .copied()
                .collect::<Option<_>>()
                .ok_or("missing input")?;
            let Some((shape, idx)) = broadcast_all(&ts)? else {
                return Ok(None);
            };
            let len: usize = shape.iter().product();
            if let Op::PRelu = op {
                if shape != x.shape {
                    return Err(format!("slope does not broadcast to {:?}", x.shape));
                }
            }
            let all_int = ts.iter().all(|t| !t.is_float());
            let data = match op {
                Op::Where => {
                    let c = ts[0].to_i64();
                    let (a, b) = (ts[1], ts[2]);
                    // Element k takes a or b at their broadcast positions, by c.
                    fn pick<T: Copy>(
                        c: &[i64],
                        a: &[T],
                        b: &[T],
                        idx: &[Vec<usize>],
                        len: usize,
                    ) -> Vec<T> {
                        (0..len)
                            .map(|k| {
                                if c[idx[0][k]] != 0 {
                                    a[idx[1][k]]
                                } else {
                                    b[idx[2][k]]
                                }
                            })
                            .collect()
                    }
                    if !a.is_float() && !b.is_float() {
                        TensorData::I64(pick(&c, &a.to_i64(), &b.to_i64(), &idx, len))
                    } else {
                        TensorData::F32(pick(&c, &a.to_f32(), &b.to_f32(), &idx, len))
                    }
                }
                Op::Compare(cmp) => {
                    let logic = |p: bool, q: bool| match cmp {
                        Compare::And => Some(p && q),
                        Compare::Or => Some(p || q),
                        Compare::Xor => Some(p != q),
                        _ => None,
                    };
                    let f = |o: std::cmp::Ordering| match cmp {
                        Compare::And | Compare::Or | Compare::Xor => false,
                        Compare::Equal => o.is_eq(),
                        Compare::Less => o.is_lt(),
                        Compare::LessOrEqual => o.is_le(),
                        Compare::Greater => o.is_gt(),
                        Compare::GreaterOrEqual => o.is_ge(),
                    };
                    let res: Vec<i64> = if logic(false, false).is_some() {
                        let (a, b) = (ts[0].to_f32(), ts[1].to_f32());
                        (0..len)
                            .map(|k| {
                                logic(a[idx[0][k]] != 0.0, b[idx[1][k]] != 0.0).unwrap_or(false)
                                    as i64
                            })
                            .collect()
                    } else if all_int {
                        let (a, b) = (ts[0].to_i64(), ts[1].to_i64());
                        (0..len)
                            .map(|k| f(a[idx[0][k]].cmp(&b[idx[1][k]])) as i64)
                            .collect()
                    } else {
                        let (a, b) = (ts[0].to_f32(), ts[1].to_f32());
                        (0..len)
                            .map(|k| a[idx[0][k]].partial_cmp(&b[idx[1][k]]).is_some_and(f) as i64)
                            .collect()
                    };
                    TensorData::I64(res)
                }
                Op::Pow if !x.is_float() => {
                    let (a, b) = (x.to_i64(), ts[1].to_f32());
                    TensorData::I64(
                        (0..len)
                            .map(|k| (a[idx[0][k]] as f64).powf(b[idx[1][k]] as f64) as i64)
                            .collect(),
                    )
                }
                Op::Pow => {
                    let (a, b) = (x.to_f32(), ts[1].to_f32());
                    TensorData::F32((0..len).map(|k| a[idx[0][k]].powf(b[idx[1][k]])).collect())
                }
                Op::Mod { fmod } if all_int => {
                    let (a, b) = (x.to_i64(), ts[1].to_i64());
                    TensorData::I64(
                        (0..len)
                            .map(|k| int_mod(a[idx[0][k]], b[idx[1][k]], *fmod))
                            .collect::<Result<_, _>>()?,
                    )
                }
                Op::Mod { fmod: false } => {
                    return Err("Mod with fmod=0 needs integer inputs; floats need fmod=1".into())
                }
                Op::Mod { fmod: true } => {
                    let (a, b) = (x.to_f32(), ts[1].to_f32());
                    TensorData::F32((0..len).map(|k| a[idx[0][k]] % b[idx[1][k]]).collect())
                }
                Op::PRelu => {
                    let (a, b) = (x.to_f32(), ts[1].to_f32());
                    TensorData::F32(
                        (0..len)
                            .map(|k| {
                                let v = a[idx[0][k]];
                                if v < 0.0 {
                                    v * b[idx[1][k]]
                                } else {
                                    v
                                }
                            })
                            .collect(),
                    )
                }
                Op::Variadic(kind) if all_int && *kind != Variadic::Mean => {
                    let vs: Vec<Vec<i64>> = ts.iter().map(|t| t.to_i64()).collect();
                    TensorData::I64(
                        (0..len)
                            .map(|k| {
                                let mut it = vs.iter().zip(&idx).map(|(v, i)| v[i[k]]);
                                let first = it.next().unwrap_or(0);
                                it.fold(first, |a, b| match kind {
                                    Variadic::Min => a.min(b),
                                    Variadic::Max => a.max(b),
                                    _ => a.wrapping_add(b),
                                })
                            })
                            .collect(),
                    )
                }
                Op::Variadic(kind) => {
                    let vs: Vec<Vec<f32>> = ts.iter().map(|t| t.to_f32()).collect();
                    TensorData::F32(
                        (0..len)
                            .map(|k| {
                                let mut it = vs.iter().zip(&idx).map(|(v, i)| v[i[k]]);
                                let first = it.next().unwrap_or(0.0);
                                let r = it.fold(first, |a, b| match kind {
                                    Variadic::Min => a.min(b),
                                    Variadic::Max => a.max(b),
                                    _ => a + b,
                                });
                                if *kind == Variadic::Mean {
                                    r / vs.len() as f32
                                } else {
                                    r
                                }
                            })
                            .collect(),
                    )
                }
                _ => return Ok(None),
            };
            one(Tensor { shape, data })
        }
        Op::Expand => {
            let Some(t) = ints(1) else { return Ok(None) };
            let shape = expand_shape(&x.shape, &t)?;
            if too_big(&shape) {
                return Ok(None);
            }
            one(take(x, &broadcast_indices(&x.shape, &shape), shape))
        }
        Op::Tile => {
            let Some(r) = ints(1) else { return Ok(None) };
            let shape = tile_shape(&x.shape, &r)?;
            if too_big(&shape) {
                return Ok(None);
            }
            let xs = strides(&x.shape);
            let n: usize = shape.iter().product();
            let mut idx = Vec::with_capacity(n);
            let mut pos = vec![0usize; shape.len()];
            for _ in 0..n {
                idx.push(
                    pos.iter()
                        .zip(&x.shape)
                        .zip(&xs)
                        .map(|((&p, &d), &s)| (p % d) * s)
                        .sum(),
                );
                for d in (0..shape.len()).rev() {
                    pos[d] += 1;
                    if pos[d] < shape[d] {
                        break;
                    }
                    pos[d] = 0;
                }
            }
            one(take(x, &idx, shape))
        }
        Op::Range => {
            let ts: Vec<&Tensor> = inputs
                .iter()
                .copied()
                .collect::<Option<_>>()
                .ok_or("missing input")?;
            if ts.len() != 3 || ts.iter().any(|t| t.len() != 1) {
                return Err("start, limit and delta must be scalars".into());
            }
            let all_int = ts.iter().all(|t| !t.is_float());
            let data = if all_int {
                let (s, l, d) = (ts[0].to_i64()[0], ts[1].to_i64()[0], ts[2].to_i64()[0]);
                let n = range_len(s as f64, l as f64, d as f64)?;
                if n > MAX_FOLD_ELEMENTS {
                    return Ok(None);
                }
                TensorData::I64((0..n as i64).map(|k| s + k * d).collect())
            } else {
                let (s, l, d) = (ts[0].to_f32()[0], ts[1].to_f32()[0], ts[2].to_f32()[0]);
                let n = range_len(s as f64, l as f64, d as f64)?;
                if n > MAX_FOLD_ELEMENTS {
                    return Ok(None);
                }
                TensorData::F32((0..n).map(|k| s + k as f32 * d).collect())
            };
            let n = match &data {
                TensorData::I64(v) => v.len(),
                TensorData::F32(v) => v.len(),
            };
            one(Tensor {
                shape: vec![n],
                data,
            })
        }
        Op::Split { axis, num_outputs } => {
            let a = norm_axis(*axis, x.shape.len())
                .ok_or_else(|| format!("split axis {axis} out of range"))?;
            // The number of outputs is known from the split sizes or num_outputs only.
            let split = ints(1);
            let n_out = match (&split, num_outputs) {
                (Some(s), _) => s.len(),
                (None, Some(n)) => *n,
                (None, None) => return Ok(None),
            };
            let sizes = split_sizes(x.shape[a], split.as_deref(), n_out, *num_outputs)?;
            let xs = strides(&x.shape);
            let st: Vec<isize> = xs.iter().map(|&s| s as isize).collect();
            let mut start = 0;
            let mut outs = Vec::with_capacity(sizes.len());
            for k in sizes {
                let mut shape = x.shape.clone();
                shape[a] = k;
                outs.push(take(x, &view_indices(&shape, start * xs[a], &st), shape));
                start += k;
            }
            Ok(Some(outs))
        }
        Op::Reduce {
            kind,
            keepdims,
            noop_with_empty_axes,
        } => {
            let axes = match inputs.get(1).copied().flatten() {
                Some(t) => t.to_i64(),
                None => vec![],
            };
            match reduce_axes(x.shape.len(), &axes, *noop_with_empty_axes)? {
                None => one(x.clone()),
                Some(ax) => one(reduce_host(x, &ax, *keepdims, *kind)),
            }
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn i(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        Tensor::i64(shape, v).unwrap()
    }
    #[test]
    fn integer_mod_sign_conventions() {
        // Python-style: the sign of the divisor; fmod: the sign of the dividend.
        let a = i(vec![4], vec![-7, 7, -7, 7]);
        let b = i(vec![4], vec![3, -3, -3, 3]);
        let m = |fmod: bool| {
            eval_host(&Op::Mod { fmod }, &[Some(&a), Some(&b)])
                .unwrap()
                .unwrap()[0]
                .to_i64()
        };
        assert_eq!(m(false), vec![2, -2, -1, 1]);
        assert_eq!(m(true), vec![-1, 1, -1, 1]);
        assert_eq!(int_mod(i64::MIN, -1, false), Ok(0));
        assert_eq!(int_mod(6, -3, false), Ok(0));
        let zero = i(vec![], vec![0]);
        let err = eval_host(&Op::Mod { fmod: false }, &[Some(&a), Some(&zero)]).unwrap_err();
        assert!(err.contains("by zero"), "{err}");
        let f = Tensor::f32(vec![1], vec![-7.5]).unwrap();
        let r = eval_host(&Op::Mod { fmod: true }, &[Some(&f), Some(&b)])
            .unwrap()
            .unwrap();
        assert_eq!(r[0].to_f32(), vec![-1.5, -1.5, -1.5, -1.5]);
        assert!(eval_host(&Op::Mod { fmod: false }, &[Some(&f), Some(&b)]).is_err());
    }
    #[test]
    fn gather_concat_shape_chain() {
        let shp = i(vec![4], vec![8, 3, 5, 5]);
        let g = eval_host(
            &Op::Gather { axis: 0 },
            &[Some(&shp), Some(&i(vec![], vec![0]))],
        )
        .unwrap()
        .unwrap();
        assert_eq!(g[0].shape, Vec::<usize>::new());
        assert_eq!(g[0].to_i64(), vec![8]);
        let u = eval_host(&Op::Unsqueeze, &[Some(&g[0]), Some(&i(vec![1], vec![0]))])
            .unwrap()
            .unwrap();
        let c = eval_host(
            &Op::Concat { axis: 0 },
            &[Some(&u[0]), Some(&i(vec![1], vec![-1]))],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c[0].to_i64(), vec![8, -1]);
    }
    #[test]
    fn transpose_and_slice() {
        let t = Tensor::f32(vec![2, 3], vec![0., 1., 2., 3., 4., 5.]).unwrap();
        let r = eval_host(&Op::Transpose { perm: None }, &[Some(&t)])
            .unwrap()
            .unwrap();
        assert_eq!(r[0].shape, vec![3, 2]);
        assert_eq!(r[0].to_f32(), vec![0., 3., 1., 4., 2., 5.]);
        let s = eval_host(
            &Op::Slice,
            &[
                Some(&t),
                Some(&i(vec![1], vec![-1])),
                Some(&i(vec![1], vec![-4])),
                Some(&i(vec![1], vec![1])),
                Some(&i(vec![1], vec![-1])),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s[0].shape, vec![2, 3]);
        assert_eq!(s[0].to_f32(), vec![2., 1., 0., 5., 4., 3.]);
    }
    #[test]
    fn broadcast_add() {
        let a = Tensor::f32(vec![2, 1], vec![1., 2.]).unwrap();
        let b = Tensor::f32(vec![3], vec![10., 20., 30.]).unwrap();
        let r = eval_host(&Op::Add, &[Some(&a), Some(&b)]).unwrap().unwrap();
        assert_eq!(r[0].to_f32(), vec![11., 21., 31., 12., 22., 32.]);
    }
}
