//! Host evaluation of cheap operators on constant tensors. Used for constant folding at import
//! (a Reshape or Transpose of a weight, shape sub-graphs such as Shape→Gather→Concat) and for
//! integer shape values during shape inference. Heavy float operators (Conv, MatMul, pooling…)
//! are never evaluated here.

use crate::ir::Op;
use crate::shape::{
    broadcast, norm_axis, reshape_target, slice_ranges, squeeze_shape, unsqueeze_shape,
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

/// True when a result of `shape` is beyond what the host evaluator produces.
fn too_big(shape: &[usize]) -> bool {
    crate::tensor::checked_numel(shape).is_none_or(|n| n > MAX_FOLD_ELEMENTS)
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
