//! Shape rules shared by shape inference, host evaluation and the executors: broadcasting,
//! axis normalisation, Reshape/Slice/Squeeze parameter resolution.

/// Normalise a possibly negative axis for a tensor of `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Numpy broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Output shape of Reshape given the requested shape (`0` copies unless `allowzero`, one `-1`).
pub fn reshape_target(
    input: &[usize],
    spec: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err("more than one -1 in the target shape".into());
                }
                out.push(1);
            }
            0 if !allowzero => {
                out.push(*input.get(i).ok_or_else(|| {
                    format!("0 at position {i} but input has rank {}", input.len())
                })?)
            }
            s if s < -1 => return Err(format!("invalid dimension {s} in the target shape")),
            s => out.push(usize::try_from(s).map_err(|_| format!("invalid dimension {s}"))?),
        }
    }
    let known = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("target shape {spec:?} is too large"))?;
    if let Some(i) = infer_at {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot infer -1: {total} elements into {spec:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!(
            "cannot reshape {input:?} ({total} elements) to {spec:?}"
        ));
    }
    Ok(out)
}

/// Per-axis (start, step, count) of an ONNX Slice on `shape`.
pub fn slice_ranges(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Vec<(i64, i64, usize)>, String> {
    let rank = shape.len();
    let mut out: Vec<(i64, i64, usize)> = shape.iter().map(|&d| (0, 1, d)).collect();
    if starts.len() != ends.len() {
        return Err("starts and ends differ in length".into());
    }
    for i in 0..starts.len() {
        let axis = match axes {
            Some(a) => norm_axis(*a.get(i).ok_or("axes shorter than starts")?, rank)
                .ok_or_else(|| format!("axis {} out of range", a[i]))?,
            None => i,
        };
        if axis >= rank {
            return Err(format!("slice axis {axis} out of range for rank {rank}"));
        }
        let dim = shape[axis] as i64;
        let step = steps.map(|s| s.get(i).copied().unwrap_or(1)).unwrap_or(1);
        if step == 0 {
            return Err("slice step 0".into());
        }
        let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
        let fix = |v: i64| if v < 0 { v + dim } else { v };
        let (s, e) = if step > 0 {
            (clampi(fix(starts[i]), 0, dim), clampi(fix(ends[i]), 0, dim))
        } else {
            (
                clampi(fix(starts[i]), -1, dim - 1),
                clampi(fix(ends[i]), -1, dim - 1),
            )
        };
        // Written so that no step (even i64::MIN) overflows.
        let count = if step > 0 {
            if e > s {
                (e - s - 1) / step + 1
            } else {
                0
            }
        } else if s > e {
            ((s - e - 1) as u64 / step.unsigned_abs() + 1) as i64
        } else {
            0
        };
        // With at most one element the step is irrelevant; 1 keeps offsets small.
        let step = if count <= 1 { 1 } else { step };
        let s = if count == 0 { 0 } else { s };
        out[axis] = (s, step, count as usize);
    }
    Ok(out)
}

/// Output shape of Squeeze; `axes` empty means all size-1 axes.
pub fn squeeze_shape(shape: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let mut drop = vec![false; shape.len()];
    if axes.is_empty() {
        for (i, &d) in shape.iter().enumerate() {
            drop[i] = d == 1;
        }
    } else {
        for &a in axes {
            let a = norm_axis(a, shape.len()).ok_or_else(|| format!("axis {a} out of range"))?;
            if shape[a] != 1 {
                return Err(format!("cannot squeeze axis {a} of size {}", shape[a]));
            }
            drop[a] = true;
        }
    }
    Ok(shape
        .iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(&s, _)| s)
        .collect())
}

/// Output shape of Unsqueeze.
pub fn unsqueeze_shape(shape: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let rank = shape.len() + axes.len();
    let mut ins = vec![false; rank];
    for &a in axes {
        let a = norm_axis(a, rank).ok_or_else(|| format!("axis {a} out of range"))?;
        if ins[a] {
            return Err(format!("axis {a} repeated"));
        }
        ins[a] = true;
    }
    let mut it = shape.iter();
    Ok(ins
        .iter()
        .map(|&i| if i { 1 } else { *it.next().unwrap_or(&1) })
        .collect())
}

/// Output shape of numpy matmul.
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return None;
    }
    let mut out = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Some(out)
}

/// Resolve Pad's `pads` (and optional `axes`) into per-axis (begin, end) for `rank`.
pub fn pad_amounts(
    rank: usize,
    pads: &[i64],
    axes: Option<&[i64]>,
) -> Result<Vec<(i64, i64)>, String> {
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&x| norm_axis(x, rank).ok_or_else(|| format!("pad axis {x} out of range")))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!(
            "pads has {} values, expected {}",
            pads.len(),
            2 * axes.len()
        ));
    }
    let mut out = vec![(0, 0); rank];
    for (i, &a) in axes.iter().enumerate() {
        out[a] = (pads[i], pads[i + axes.len()]);
    }
    Ok(out)
}

/// Sizes of the parts of Split along an axis of size `dim`: the `split` input when given,
/// else `n_out` chunks, equal when `num_outputs` is absent (the axis must divide), or of
/// ceil(dim / n) with a smaller last one (opset 18 `num_outputs`).
pub fn split_sizes(
    dim: usize,
    split: Option<&[i64]>,
    n_out: usize,
    num_outputs: Option<usize>,
) -> Result<Vec<usize>, String> {
    if let Some(sp) = split {
        if sp.len() != n_out {
            return Err(format!(
                "split {sp:?} has {} entries for {n_out} outputs",
                sp.len()
            ));
        }
        let sizes = sp
            .iter()
            .map(|&s| usize::try_from(s).map_err(|_| format!("negative split size {s}")))
            .collect::<Result<Vec<usize>, String>>()?;
        let total = sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b));
        if total != Some(dim) {
            return Err(format!(
                "split {sp:?} does not add up to the axis size {dim}"
            ));
        }
        return Ok(sizes);
    }
    if n_out == 0 {
        return Err("no outputs".into());
    }
    if num_outputs.is_some() {
        let chunk = dim.div_ceil(n_out);
        if chunk * (n_out - 1) > dim {
            return Err(format!(
                "{dim} elements cannot be split into {n_out} chunks of {chunk}"
            ));
        }
        let mut v = vec![chunk; n_out];
        v[n_out - 1] = dim - chunk * (n_out - 1);
        return Ok(v);
    }
    if !dim.is_multiple_of(n_out) {
        return Err(format!(
            "axis of size {dim} does not split evenly into {n_out} outputs (give split sizes)"
        ));
    }
    Ok(vec![dim / n_out; n_out])
}

/// The axes a reduction reduces: `None` for the identity (no axes and
/// `noop_with_empty_axes`), all axes when none are given, else the normalised, sorted ones.
pub fn reduce_axes(rank: usize, axes: &[i64], noop: bool) -> Result<Option<Vec<usize>>, String> {
    if axes.is_empty() {
        return Ok((!noop).then(|| (0..rank).collect()));
    }
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n =
            norm_axis(a, rank).ok_or_else(|| format!("axis {a} out of range for rank {rank}"))?;
        if out.contains(&n) {
            return Err(format!("axis {a} repeated"));
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(Some(out))
}

/// Shape after reducing `axes` (sorted), kept as size 1 or removed.
pub fn reduced_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// Number of elements of Range(start, limit, delta): max(ceil((limit − start) / delta), 0).
pub fn range_len(start: f64, limit: f64, delta: f64) -> Result<usize, String> {
    if delta == 0.0 || !delta.is_finite() || !start.is_finite() || !limit.is_finite() {
        return Err(format!(
            "Range needs finite start, limit and a non-zero delta (got {start}, {limit}, {delta})"
        ));
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if n > crate::tensor::MAX_ELEMENTS as f64 {
        return Err(format!("Range would have {n} elements"));
    }
    Ok(n as usize)
}

/// Output shape of Tile.
pub fn tile_shape(shape: &[usize], repeats: &[i64]) -> Result<Vec<usize>, String> {
    if repeats.len() != shape.len() {
        return Err(format!(
            "repeats {repeats:?} has {} entries for an input of rank {}",
            repeats.len(),
            shape.len()
        ));
    }
    shape
        .iter()
        .zip(repeats)
        .map(|(&d, &r)| {
            let r = usize::try_from(r).map_err(|_| format!("negative repeat {r}"))?;
            d.checked_mul(r)
                .ok_or_else(|| "tiled shape overflows".to_string())
        })
        .collect()
}

/// Output shape of Expand: the input broadcast with the requested shape.
pub fn expand_shape(shape: &[usize], target: &[i64]) -> Result<Vec<usize>, String> {
    let t = target
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d} in {target:?}")))
        .collect::<Result<Vec<usize>, String>>()?;
    broadcast(shape, &t).ok_or_else(|| format!("cannot expand {shape:?} to {target:?}"))
}

/// Geometry of ConvTranspose on one input: per spatial axis (padding begin, padding end,
/// output size), with padding from `pads`, `auto_pad` or a requested `output_shape` (then
/// derived as the ONNX reference does; negative padding enlarges the output).
pub fn conv_transpose_geometry(
    input: &[usize],
    kernel: &[usize],
    window: &crate::ir::Window,
    output_padding: &[usize],
    output_shape: Option<&[usize]>,
) -> Result<Vec<(i64, i64, usize)>, String> {
    use crate::ir::AutoPad;
    let n = input.len();
    if kernel.len() != n {
        return Err(format!(
            "kernel {kernel:?} does not fit {n} spatial dimensions"
        ));
    }
    let get = |v: &[usize], i: usize, d: usize| v.get(i).copied().unwrap_or(d) as i64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (x, k) = (input[i] as i64, kernel[i] as i64);
        let (s, d) = (get(&window.strides, i, 1), get(&window.dilations, i, 1));
        let op = get(output_padding, i, 0);
        if s == 0 || d == 0 || k == 0 || x == 0 {
            return Err("zero stride, dilation, kernel or input size".into());
        }
        let full = s * (x - 1) + op + (k - 1) * d + 1;
        let target = match (output_shape, window.auto_pad) {
            (Some(o), _) => Some(
                *o.get(i)
                    .ok_or_else(|| format!("output_shape {o:?} is shorter than the input rank"))?
                    as i64,
            ),
            (None, AutoPad::SameUpper | AutoPad::SameLower) => Some(x * s),
            _ => None,
        };
        let (pb, pe) = match target {
            Some(t) => {
                let total = full - t;
                let half = total.div_euclid(2);
                if window.auto_pad == AutoPad::SameUpper {
                    (half, total - half)
                } else {
                    (total - half, half)
                }
            }
            None if window.auto_pad == AutoPad::Valid => (0, 0),
            None => (get(&window.pads, i, 0), get(&window.pads, i + n, 0)),
        };
        let size = full - pb - pe;
        if size <= 0 {
            return Err(format!("output size {size} on spatial axis {i}"));
        }
        out.push((pb, pe, size as usize));
    }
    Ok(out)
}

/// Output shape of Resize and the scale of every axis, from `scales` or `sizes` (one of them)
/// over `axes` (all axes when `None`).
pub fn resize_output(
    shape: &[usize],
    scales: Option<&[f32]>,
    sizes: Option<&[i64]>,
    axes: Option<&[i64]>,
) -> Result<(Vec<usize>, Vec<f64>), String> {
    let rank = shape.len();
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&x| norm_axis(x, rank).ok_or_else(|| format!("axis {x} out of range")))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    let mut out = shape.to_vec();
    let mut sc = vec![1f64; rank];
    match (
        scales.filter(|s| !s.is_empty()),
        sizes.filter(|s| !s.is_empty()),
    ) {
        (Some(_), Some(_)) => return Err("give scales or sizes, not both".into()),
        (None, None) => return Err("needs scales or sizes".into()),
        (Some(s), None) => {
            if s.len() != axes.len() {
                return Err(format!("{} scales for {} axes", s.len(), axes.len()));
            }
            for (&a, &v) in axes.iter().zip(s) {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(format!("scale {v} must be positive"));
                }
                sc[a] = v as f64;
                out[a] = (shape[a] as f64 * v as f64).floor() as usize;
            }
        }
        (None, Some(s)) => {
            if s.len() != axes.len() {
                return Err(format!("{} sizes for {} axes", s.len(), axes.len()));
            }
            for (&a, &v) in axes.iter().zip(s) {
                let v = usize::try_from(v).map_err(|_| format!("negative size {v}"))?;
                if shape[a] == 0 {
                    return Err(format!("cannot resize the empty axis {a}"));
                }
                sc[a] = v as f64 / shape[a] as f64;
                out[a] = v;
            }
        }
    }
    crate::tensor::checked_numel(&out).ok_or_else(|| format!("output {out:?} is too large"))?;
    Ok((out, sc))
}

/// Interpolation taps of Resize along one axis: for each tap, the source index and weight of
/// every output position (the ONNX reference: source position from the coordinate mode,
/// neighbours clamped to the edge, `exclude_outside` renormalisation).
pub fn resize_taps(
    input: usize,
    output: usize,
    scale: f64,
    r: &crate::ir::Resize,
) -> Vec<(Vec<usize>, Vec<f32>)> {
    use crate::ir::{NearestMode, ResizeCoords, ResizeMode};
    let n = match r.mode {
        ResizeMode::Nearest | ResizeMode::Linear => 2,
        ResizeMode::Cubic => 4,
    };
    let mut taps = vec![(Vec::with_capacity(output), Vec::with_capacity(output)); n];
    let out_w = scale * input as f64;
    let a = r.cubic_a as f64;
    let cubic = |t: f64| -> f64 {
        let t = t.abs();
        if t <= 1.0 {
            ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        } else if t < 2.0 {
            ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
        } else {
            0.0
        }
    };
    for x in 0..output {
        let xf = x as f64;
        let src = match r.coords {
            ResizeCoords::HalfPixel => (xf + 0.5) / scale - 0.5,
            ResizeCoords::PytorchHalfPixel if out_w == 1.0 => -0.5,
            ResizeCoords::PytorchHalfPixel => (xf + 0.5) / scale - 0.5,
            ResizeCoords::AlignCorners if out_w == 1.0 => 0.0,
            ResizeCoords::AlignCorners => xf * (input as f64 - 1.0) / (out_w - 1.0),
            ResizeCoords::Asymmetric => xf / scale,
            ResizeCoords::TfHalfPixelForNn => (xf + 0.5) / scale,
        };
        // Left neighbour strictly below the position (ratio in (0, 1]).
        let base = src.ceil() - 1.0;
        let ratio = src - base;
        let mut w: Vec<f64> = match r.mode {
            ResizeMode::Linear => vec![1.0 - ratio, ratio],
            ResizeMode::Nearest => {
                let right = ratio == 1.0
                    || match r.nearest {
                        NearestMode::RoundPreferFloor => ratio > 0.5,
                        NearestMode::RoundPreferCeil => ratio >= 0.5,
                        NearestMode::Floor => false,
                        NearestMode::Ceil => true,
                    };
                vec![(!right) as u8 as f64, right as u8 as f64]
            }
            ResizeMode::Cubic => (0..4).map(|k| cubic(ratio + 1.0 - k as f64)).collect(),
        };
        let first = base as i64 - if n == 4 { 1 } else { 0 };
        let idx: Vec<i64> = (0..n as i64).map(|k| first + k).collect();
        if r.exclude_outside {
            for (wk, &i) in w.iter_mut().zip(&idx) {
                if i < 0 || i >= input as i64 {
                    *wk = 0.0;
                }
            }
            let s: f64 = w.iter().sum();
            if s != 0.0 {
                w.iter_mut().for_each(|v| *v /= s);
            }
        }
        for (k, (&i, &wk)) in idx.iter().zip(&w).enumerate() {
            taps[k]
                .0
                .push(i.clamp(0, input.saturating_sub(1) as i64) as usize);
            taps[k].1.push(wk as f32);
        }
    }
    taps
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast(&[2, 1, 3], &[4, 1]), Some(vec![2, 4, 3]));
        assert_eq!(broadcast(&[2, 3], &[4, 3]), None);
    }
    #[test]
    fn reshape_rules() {
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert!(reshape_target(&[2, 3, 4], &[5, -1], false).is_err());
    }
    #[test]
    fn slice_rules() {
        let r = slice_ranges(&[10], &[-3], &[i64::MAX], None, None).unwrap();
        assert_eq!(r, vec![(7, 1, 3)]);
        let r = slice_ranges(&[5], &[-1], &[i64::MIN], None, Some(&[-2])).unwrap();
        assert_eq!(r, vec![(4, -2, 3)]);
        // Extreme steps neither overflow nor matter for a single element.
        let r = slice_ranges(&[5], &[0], &[5], None, Some(&[i64::MAX])).unwrap();
        assert_eq!(r, vec![(0, 1, 1)]);
        let r = slice_ranges(&[5], &[4], &[-10], None, Some(&[i64::MIN])).unwrap();
        assert_eq!(r, vec![(4, 1, 1)]);
        let r = slice_ranges(&[5], &[-1], &[9], None, Some(&[-1])).unwrap();
        assert_eq!(r, vec![(0, 1, 0)]);
    }
    #[test]
    fn split_reduce_range_rules() {
        assert_eq!(split_sizes(6, None, 3, None).unwrap(), vec![2, 2, 2]);
        assert!(split_sizes(7, None, 3, None).is_err());
        assert_eq!(split_sizes(7, None, 3, Some(3)).unwrap(), vec![3, 3, 1]);
        assert_eq!(split_sizes(7, Some(&[2, 5]), 2, None).unwrap(), vec![2, 5]);
        assert!(split_sizes(7, Some(&[2, 4]), 2, None).is_err());
        assert_eq!(reduce_axes(3, &[-1, 0], false).unwrap(), Some(vec![0, 2]));
        assert_eq!(reduce_axes(3, &[], true).unwrap(), None);
        assert_eq!(reduce_axes(2, &[], false).unwrap(), Some(vec![0, 1]));
        assert_eq!(reduced_shape(&[2, 3, 4], &[1], false), vec![2, 4]);
        assert_eq!(reduced_shape(&[2, 3, 4], &[1], true), vec![2, 1, 4]);
        assert_eq!(range_len(1.0, 5.0, 2.0).unwrap(), 2);
        assert_eq!(range_len(10.0, 6.0, -3.0).unwrap(), 2);
        assert_eq!(range_len(5.0, 1.0, 1.0).unwrap(), 0);
        assert_eq!(expand_shape(&[3, 1], &[2, 1, 6]).unwrap(), vec![2, 3, 6]);
        assert_eq!(tile_shape(&[2, 3], &[2, 1]).unwrap(), vec![4, 3]);
    }
    #[test]
    fn matmul_rules() {
        assert_eq!(matmul_shape(&[5, 2, 3], &[3, 4]), Some(vec![5, 2, 4]));
        assert_eq!(matmul_shape(&[3], &[3, 4]), Some(vec![4]));
    }
}
