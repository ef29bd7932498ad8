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
    fn matmul_rules() {
        assert_eq!(matmul_shape(&[5, 2, 3], &[3, 4]), Some(vec![5, 2, 4]));
        assert_eq!(matmul_shape(&[3], &[3, 4]), Some(vec![4]));
    }
}
