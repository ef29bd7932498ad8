//! Shape inference for concrete input shapes, with propagation of constant integer values
//! (shape sub-graphs) through [`crate::eval::eval_host`].

use crate::error::{GraphError, Result};
use crate::eval::eval_host;
use crate::ir::{Graph, Node, Op, ValueId};
use crate::shape::{
    broadcast, conv_transpose_geometry, expand_shape, matmul_shape, norm_axis, pad_amounts,
    reduce_axes, reduced_shape, reshape_target, resize_output, slice_ranges, split_sizes,
    squeeze_shape, tile_shape, unsqueeze_shape,
};
use crate::tensor::{checked_numel, Tensor, MAX_ELEMENTS};
use std::collections::BTreeMap;

/// Shapes of every value (for concrete input shapes) and the values known at load time.
#[derive(Clone, Debug)]
pub struct Inferred {
    /// Shape of each value; `None` only for values no node produces (unused).
    pub shapes: Vec<Option<Vec<usize>>>,
    /// Values computable without runtime data: initializers plus folded shape computations.
    pub consts: BTreeMap<ValueId, Tensor>,
}

impl Inferred {
    /// Shape of a value, with an error naming it when unknown.
    pub fn shape(&self, g: &Graph, v: ValueId) -> Result<&[usize]> {
        self.shapes[v].as_deref().ok_or_else(|| {
            GraphError::Invalid(format!("shape of '{}' is unknown", g.values[v].name))
        })
    }
}

fn mismatch(n: &Node, detail: impl Into<String>) -> GraphError {
    GraphError::ShapeMismatch {
        node: n.name.clone(),
        op: n.op.onnx_name().into(),
        detail: detail.into(),
    }
}

/// The declared shape of each graph input with symbolic dims replaced by `batch`.
pub fn input_shapes_for_batch(g: &Graph, batch: usize) -> Result<Vec<Vec<usize>>> {
    g.inputs
        .iter()
        .map(|&i| {
            let v = &g.values[i];
            let dims = v.shape.as_ref().ok_or_else(|| {
                GraphError::Invalid(format!(
                    "input '{}' declares no shape; pass the shape explicitly",
                    v.name
                ))
            })?;
            Ok(dims
                .iter()
                .map(|d| match d {
                    crate::ir::Dim::Fixed(x) => *x,
                    crate::ir::Dim::Symbolic(_) => batch,
                })
                .collect())
        })
        .collect()
}

/// Infer every value's shape for the given input shapes (one per graph input, in order).
pub fn infer(g: &Graph, input_shapes: &[Vec<usize>]) -> Result<Inferred> {
    infer_with_values(g, input_shapes, &BTreeMap::new())
}

/// [`infer`] with the values of some graph inputs known, such as integer shape parameters (a
/// Reshape target, Slice starts, Pad pads) that a model takes as run-time inputs. Each known
/// value must have the shape given for its input.
pub fn infer_with_values(
    g: &Graph,
    input_shapes: &[Vec<usize>],
    known: &BTreeMap<ValueId, Tensor>,
) -> Result<Inferred> {
    if input_shapes.len() != g.inputs.len() {
        return Err(GraphError::Invalid(format!(
            "{} input shapes given for {} graph inputs",
            input_shapes.len(),
            g.inputs.len()
        )));
    }
    let mut shapes: Vec<Option<Vec<usize>>> = vec![None; g.values.len()];
    let mut consts = g.initializers.clone();
    for (t_id, t) in &g.initializers {
        shapes[*t_id] = Some(t.shape.clone());
    }
    for (&i, s) in g.inputs.iter().zip(input_shapes) {
        if checked_numel(s).is_none() {
            return Err(GraphError::Invalid(format!(
                "input '{}' with shape {s:?} would have more than {MAX_ELEMENTS} elements",
                g.values[i].name
            )));
        }
        shapes[i] = Some(s.clone());
    }
    for (&v, t) in known {
        let pos = g.inputs.iter().position(|&i| i == v).ok_or_else(|| {
            GraphError::Invalid(format!(
                "a value is given for '{}', which is not a graph input",
                g.values.get(v).map_or("?", |x| x.name.as_str())
            ))
        })?;
        if t.shape != input_shapes[pos] {
            return Err(GraphError::Invalid(format!(
                "the value given for input '{}' has shape {:?}, its declared shape is {:?}",
                g.values[v].name, t.shape, input_shapes[pos]
            )));
        }
        consts.insert(v, t.clone());
    }
    for n in &g.nodes {
        let ins: Vec<Option<&[usize]>> = n
            .inputs
            .iter()
            .map(|v| v.and_then(|v| shapes[v].as_deref()))
            .collect();
        for (k, v) in n.inputs.iter().enumerate() {
            if let Some(v) = v {
                if ins[k].is_none() {
                    return Err(mismatch(
                        n,
                        format!("input '{}' has no known shape", g.values[*v].name),
                    ));
                }
            }
        }
        // Constant propagation first: it also yields shapes.
        let cin: Vec<Option<&Tensor>> = n
            .inputs
            .iter()
            .map(|v| v.and_then(|v| consts.get(&v)))
            .collect();
        let all_const = n
            .inputs
            .iter()
            .zip(&cin)
            .all(|(v, c)| v.is_none() || c.is_some());
        let shape_op = matches!(n.op, Op::Shape { .. } | Op::Size);
        if all_const || shape_op {
            let host_in: Vec<Option<Tensor>>;
            let host_ref: Vec<Option<&Tensor>> = if shape_op {
                // Shape needs only the shape of its input.
                let s = ins
                    .first()
                    .copied()
                    .flatten()
                    .ok_or_else(|| mismatch(n, "missing input"))?;
                host_in = vec![Some(Tensor {
                    shape: s.to_vec(),
                    data: crate::tensor::TensorData::I64(vec![]),
                })];
                host_in.iter().map(|t| t.as_ref()).collect()
            } else {
                cin.clone()
            };
            if let Some(outs) = eval_host(&n.op, &host_ref).map_err(|e| mismatch(n, e))? {
                for (o, t) in n.outputs.iter().zip(outs) {
                    shapes[*o] = Some(t.shape.clone());
                    consts.insert(*o, t);
                }
                for o in &n.outputs {
                    if shapes[*o].is_none() {
                        // e.g. Dropout's mask output.
                        shapes[*o] = shapes[n.outputs[0]].clone();
                    }
                }
                continue;
            }
        }
        let outs = node_shapes(g, n, &ins, &consts)?;
        for (o, s) in n.outputs.iter().zip(outs) {
            if checked_numel(&s).is_none() {
                return Err(mismatch(
                    n,
                    format!("output shape {s:?} would have more than {MAX_ELEMENTS} elements"),
                ));
            }
            shapes[*o] = Some(s);
        }
    }
    for &o in &g.outputs {
        if shapes[o].is_none() {
            return Err(GraphError::Invalid(format!(
                "output '{}' is never computed",
                g.values[o].name
            )));
        }
    }
    Ok(Inferred { shapes, consts })
}

fn const_ints(
    n: &Node,
    consts: &BTreeMap<ValueId, Tensor>,
    i: usize,
    what: &str,
) -> Result<Option<Vec<i64>>> {
    match n.input(i) {
        None => Ok(None),
        Some(v) => consts.get(&v).map(|t| Some(t.to_i64())).ok_or_else(|| {
            mismatch(
                n,
                format!("{what} must be a constant (computed from shapes or initializers)"),
            )
        }),
    }
}

/// Output shapes of one node given its input shapes.
fn node_shapes(
    g: &Graph,
    n: &Node,
    ins: &[Option<&[usize]>],
    consts: &BTreeMap<ValueId, Tensor>,
) -> Result<Vec<Vec<usize>>> {
    let x = ins
        .first()
        .copied()
        .flatten()
        .ok_or_else(|| mismatch(n, "missing first input"))?;
    let input = |i: usize| {
        ins.get(i)
            .copied()
            .flatten()
            .ok_or_else(|| mismatch(n, format!("missing input {i}")))
    };
    let same = || Ok(vec![x.to_vec(); n.outputs.len()]);
    match &n.op {
        Op::Conv { window, group } => {
            let w = input(1)?;
            if x.len() < 3 || w.len() != x.len() {
                return Err(mismatch(
                    n,
                    format!("input {x:?} and weight {w:?} ranks do not fit"),
                ));
            }
            if *group == 0 || x[1] != w[1] * group || w[0] % group != 0 {
                return Err(mismatch(
                    n,
                    format!(
                        "input has {} channels, weight {w:?} with group {group} expects {}",
                        x[1],
                        w[1] * group
                    ),
                ));
            }
            if let Some(b) = ins.get(2).copied().flatten() {
                if b != [w[0]] {
                    return Err(mismatch(
                        n,
                        format!("bias shape {b:?} does not match {} output channels", w[0]),
                    ));
                }
            }
            let mut win = window.clone();
            if win.kernel.is_empty() {
                win.kernel = w[2..].to_vec();
            }
            let (_, _, out) = win
                .resolve(&x[2..])
                .ok_or_else(|| mismatch(n, format!("window does not fit input {x:?}")))?;
            let mut s = vec![x[0], w[0]];
            s.extend(out);
            Ok(vec![s])
        }
        Op::MaxPool(win) | Op::AveragePool { window: win, .. } => {
            if x.len() < 3 {
                return Err(mismatch(
                    n,
                    format!("pooling needs N×C×spatial input, got {x:?}"),
                ));
            }
            let (_, _, out) = win
                .resolve(&x[2..])
                .ok_or_else(|| mismatch(n, format!("window does not fit input {x:?}")))?;
            let mut s = vec![x[0], x[1]];
            s.extend(out);
            Ok(vec![s; n.outputs.len()])
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            if x.len() < 3 {
                return Err(mismatch(
                    n,
                    format!("global pooling needs N×C×spatial input, got {x:?}"),
                ));
            }
            let mut s = x[..2].to_vec();
            s.extend(std::iter::repeat_n(1, x.len() - 2));
            Ok(vec![s])
        }
        Op::Gemm {
            trans_a, trans_b, ..
        } => {
            let b = input(1)?;
            if x.len() != 2 || b.len() != 2 {
                return Err(mismatch(
                    n,
                    format!("Gemm needs 2-D inputs, got {x:?} and {b:?}"),
                ));
            }
            let (m, k) = if *trans_a { (x[1], x[0]) } else { (x[0], x[1]) };
            let (k2, nn) = if *trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
            if k != k2 {
                return Err(mismatch(n, format!("inner dimensions differ: A {x:?} (transA={trans_a}), B {b:?} (transB={trans_b})")));
            }
            if let Some(c) = ins.get(2).copied().flatten() {
                if broadcast(c, &[m, nn]).as_deref() != Some(&[m, nn][..]) {
                    return Err(mismatch(
                        n,
                        format!("C {c:?} does not broadcast to [{m}, {nn}]"),
                    ));
                }
            }
            Ok(vec![vec![m, nn]])
        }
        Op::MatMul => {
            let b = input(1)?;
            Ok(vec![matmul_shape(x, b).ok_or_else(|| {
                mismatch(n, format!("cannot multiply {x:?} by {b:?}"))
            })?])
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let b = input(1)?;
            Ok(vec![broadcast(x, b).ok_or_else(|| {
                mismatch(n, format!("cannot broadcast {x:?} with {b:?}"))
            })?])
        }
        Op::Relu
        | Op::LeakyRelu { .. }
        | Op::Clip
        | Op::Sigmoid
        | Op::Tanh
        | Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Neg
        | Op::Abs => same(),
        Op::Identity | Op::Dropout | Op::Cast { .. } => same(),
        Op::Softmax { axis, .. } | Op::LogSoftmax { axis, .. } => {
            norm_axis(*axis, x.len())
                .ok_or_else(|| mismatch(n, format!("axis {axis} out of range for {x:?}")))?;
            same()
        }
        Op::BatchNorm { .. } => {
            if x.len() < 2 {
                return Err(mismatch(n, format!("input {x:?} has no channel axis")));
            }
            for i in 1..5 {
                let p = input(i)?;
                if p != [x[1]] {
                    return Err(mismatch(
                        n,
                        format!("parameter {i} has shape {p:?}, expected [{}]", x[1]),
                    ));
                }
            }
            same()
        }
        Op::Flatten { axis } => {
            let r = x.len() as i64;
            let a = if *axis < 0 { axis + r } else { *axis };
            if !(0..=r).contains(&a) {
                return Err(mismatch(n, format!("axis {axis} out of range for {x:?}")));
            }
            let a = a as usize;
            Ok(vec![vec![x[..a].iter().product(), x[a..].iter().product()]])
        }
        Op::Reshape { allowzero } => {
            let spec = const_ints(n, consts, 1, "the target shape")?
                .ok_or_else(|| mismatch(n, "missing shape input"))?;
            Ok(vec![
                reshape_target(x, &spec, *allowzero).map_err(|e| mismatch(n, e))?
            ])
        }
        Op::Transpose { perm } => {
            let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..x.len()).rev().collect());
            if perm.len() != x.len() || (0..x.len()).any(|i| !perm.contains(&i)) {
                return Err(mismatch(
                    n,
                    format!("invalid permutation {perm:?} for {x:?}"),
                ));
            }
            Ok(vec![perm.iter().map(|&p| x[p]).collect()])
        }
        Op::Concat { axis } => {
            let a = norm_axis(*axis, x.len())
                .ok_or_else(|| mismatch(n, format!("axis {axis} out of range for {x:?}")))?;
            let mut s = x.to_vec();
            for i in 1..n.inputs.len() {
                let y = input(i)?;
                if y.len() != x.len() || (0..x.len()).any(|d| d != a && y[d] != x[d]) {
                    return Err(mismatch(
                        n,
                        format!("cannot concatenate {x:?} with {y:?} on axis {a}"),
                    ));
                }
                s[a] += y[a];
            }
            Ok(vec![s])
        }
        Op::Pad { .. } => {
            let pads =
                const_ints(n, consts, 1, "pads")?.ok_or_else(|| mismatch(n, "missing pads"))?;
            let axes = const_ints(n, consts, 3, "axes")?;
            let amounts =
                pad_amounts(x.len(), &pads, axes.as_deref()).map_err(|e| mismatch(n, e))?;
            let s: Vec<i64> = x
                .iter()
                .zip(&amounts)
                .map(|(&d, (b, e))| (d as i64).saturating_add(*b).saturating_add(*e))
                .collect();
            if s.iter().any(|&d| d < 0) {
                return Err(mismatch(
                    n,
                    format!("padding {pads:?} makes a negative size from {x:?}"),
                ));
            }
            Ok(vec![s.iter().map(|&d| d as usize).collect()])
        }
        Op::Squeeze => {
            let axes = const_ints(n, consts, 1, "axes")?.unwrap_or_default();
            Ok(vec![squeeze_shape(x, &axes).map_err(|e| mismatch(n, e))?])
        }
        Op::Unsqueeze => {
            let axes =
                const_ints(n, consts, 1, "axes")?.ok_or_else(|| mismatch(n, "missing axes"))?;
            Ok(vec![unsqueeze_shape(x, &axes).map_err(|e| mismatch(n, e))?])
        }
        Op::Gather { axis } => {
            let idx = input(1)?;
            let a = norm_axis(*axis, x.len())
                .ok_or_else(|| mismatch(n, format!("axis {axis} out of range for {x:?}")))?;
            let mut s = x[..a].to_vec();
            s.extend_from_slice(idx);
            s.extend_from_slice(&x[a + 1..]);
            Ok(vec![s])
        }
        Op::Slice => {
            let st =
                const_ints(n, consts, 1, "starts")?.ok_or_else(|| mismatch(n, "missing starts"))?;
            let en =
                const_ints(n, consts, 2, "ends")?.ok_or_else(|| mismatch(n, "missing ends"))?;
            let axes = const_ints(n, consts, 3, "axes")?;
            let steps = const_ints(n, consts, 4, "steps")?;
            let r = slice_ranges(x, &st, &en, axes.as_deref(), steps.as_deref())
                .map_err(|e| mismatch(n, e))?;
            Ok(vec![r.iter().map(|r| r.2).collect()])
        }
        Op::ConstantOfShape { .. } => {
            let dims = const_ints(n, consts, 0, "the shape")?
                .ok_or_else(|| mismatch(n, "missing shape input"))?;
            let shape = dims
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| mismatch(n, format!("negative dimension {d}")))
                })
                .collect::<Result<Vec<usize>>>()?;
            checked_numel(&shape).ok_or_else(|| {
                mismatch(
                    n,
                    format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"),
                )
            })?;
            Ok(vec![shape])
        }
        Op::Recurrent(r) => recurrent_shapes(n, r, ins),
        Op::Unary(_) | Op::InstanceNorm { .. } => {
            if matches!(n.op, Op::InstanceNorm { .. }) {
                if x.len() < 3 {
                    return Err(mismatch(
                        n,
                        format!("input {x:?} needs N, C and spatial axes"),
                    ));
                }
                for i in 1..3 {
                    let p = input(i)?;
                    if p != [x[1]] {
                        return Err(mismatch(
                            n,
                            format!("parameter {i} has shape {p:?}, expected [{}]", x[1]),
                        ));
                    }
                }
            }
            same()
        }
        Op::Compare(_) | Op::Pow | Op::Mod { .. } | Op::Where | Op::Variadic(_) => {
            let mut s = x.to_vec();
            for i in 1..n.inputs.len() {
                let y = input(i)?;
                s = broadcast(&s, y).ok_or_else(|| {
                    mismatch(n, format!("cannot broadcast the inputs {s:?} and {y:?}"))
                })?;
            }
            Ok(vec![s])
        }
        Op::PRelu => {
            let slope = input(1)?;
            if broadcast(x, slope).as_deref() != Some(x) {
                return Err(mismatch(
                    n,
                    format!("slope {slope:?} does not broadcast to the input {x:?}"),
                ));
            }
            same()
        }
        Op::Expand => {
            let t = const_ints(n, consts, 1, "the target shape")?
                .ok_or_else(|| mismatch(n, "missing shape input"))?;
            Ok(vec![expand_shape(x, &t).map_err(|e| mismatch(n, e))?])
        }
        Op::Tile => {
            let r = const_ints(n, consts, 1, "repeats")?
                .ok_or_else(|| mismatch(n, "missing repeats input"))?;
            Ok(vec![tile_shape(x, &r).map_err(|e| mismatch(n, e))?])
        }
        Op::Range => Err(mismatch(
            n,
            "start, limit and delta must be constants (computed from shapes or initializers)",
        )),
        Op::Split { axis, num_outputs } => {
            let a = norm_axis(*axis, x.len())
                .ok_or_else(|| mismatch(n, format!("axis {axis} out of range for {x:?}")))?;
            let sp = const_ints(n, consts, 1, "split")?;
            let sizes = split_sizes(x[a], sp.as_deref(), n.outputs.len(), *num_outputs)
                .map_err(|e| mismatch(n, e))?;
            Ok(sizes
                .into_iter()
                .map(|k| {
                    let mut s = x.to_vec();
                    s[a] = k;
                    s
                })
                .collect())
        }
        Op::Reduce {
            keepdims,
            noop_with_empty_axes,
            ..
        } => {
            let axes = const_ints(n, consts, 1, "axes")?.unwrap_or_default();
            match reduce_axes(x.len(), &axes, *noop_with_empty_axes).map_err(|e| mismatch(n, e))? {
                None => same(),
                Some(ax) => Ok(vec![reduced_shape(x, &ax, *keepdims)]),
            }
        }
        Op::ArgExtreme { axis, keepdims, .. } => {
            let a = norm_axis(*axis, x.len())
                .ok_or_else(|| mismatch(n, format!("axis {axis} out of range for {x:?}")))?;
            if x[a] == 0 {
                return Err(mismatch(n, format!("axis {a} of {x:?} is empty")));
            }
            Ok(vec![reduced_shape(x, &[a], *keepdims)])
        }
        Op::ConvTranspose {
            window,
            group,
            output_padding,
            output_shape,
        } => {
            let w = input(1)?;
            if x.len() < 3 || w.len() != x.len() {
                return Err(mismatch(
                    n,
                    format!("input {x:?} and weight {w:?} ranks do not fit"),
                ));
            }
            if x.len() > 4 {
                return Err(mismatch(
                    n,
                    format!(
                        "{}-D ConvTranspose is not supported (1-D and 2-D are)",
                        x.len() - 2
                    ),
                ));
            }
            if *group == 0 || x[1] != w[0] || w[0] % group != 0 {
                return Err(mismatch(
                    n,
                    format!(
                        "input has {} channels, weight {w:?} (C_in first) with group {group} \
                         expects {}",
                        x[1], w[0]
                    ),
                ));
            }
            let c_out = w[1] * group;
            if let Some(b) = ins.get(2).copied().flatten() {
                if b != [c_out] {
                    return Err(mismatch(
                        n,
                        format!("bias shape {b:?} does not match {c_out} output channels"),
                    ));
                }
            }
            if !window.kernel.is_empty() && window.kernel != w[2..] {
                return Err(mismatch(
                    n,
                    format!(
                        "kernel_shape {:?} differs from the weight's {:?}",
                        window.kernel,
                        &w[2..]
                    ),
                ));
            }
            let kernel = w[2..].to_vec();
            let geo = conv_transpose_geometry(
                &x[2..],
                &kernel,
                window,
                output_padding,
                output_shape.as_deref(),
            )
            .map_err(|e| mismatch(n, e))?;
            let mut s = vec![x[0], c_out];
            s.extend(geo.iter().map(|g| g.2));
            Ok(vec![s])
        }
        Op::Resize(r) => {
            let scales = match n.input(2) {
                Some(v) => Some(
                    consts
                        .get(&v)
                        .ok_or_else(|| mismatch(n, "scales must be a constant"))?
                        .to_f32(),
                ),
                None => None,
            };
            let sizes = const_ints(n, consts, 3, "sizes")?;
            let (out, _) = resize_output(x, scales.as_deref(), sizes.as_deref(), r.axes.as_deref())
                .map_err(|e| mismatch(n, e))?;
            Ok(vec![out])
        }
        Op::LayerNorm { axis, .. } => {
            let a = norm_axis(*axis, x.len())
                .ok_or_else(|| mismatch(n, format!("axis {axis} out of range for {x:?}")))?;
            for i in 1..3 {
                if let Some(p) = ins.get(i).copied().flatten() {
                    if broadcast(&x[a..], p).as_deref() != Some(&x[a..]) {
                        return Err(mismatch(
                            n,
                            format!(
                                "parameter {i} has shape {p:?}, which does not broadcast to the \
                                 normalised shape {:?}",
                                &x[a..]
                            ),
                        ));
                    }
                }
            }
            let mut stat = x[..a].to_vec();
            stat.extend(std::iter::repeat_n(1, x.len() - a));
            let mut outs = vec![x.to_vec()];
            outs.extend(std::iter::repeat_n(stat, n.outputs.len().saturating_sub(1)));
            Ok(outs)
        }
        Op::Shape { .. } | Op::Size => {
            let _ = g;
            Err(mismatch(
                n,
                "its input must be a constant or have a known shape",
            ))
        }
    }
}

/// Output shapes of RNN / GRU / LSTM (the produced ones among Y, Y_h, Y_c), after checking
/// every input's shape against X, `hidden_size`, the direction count and the layout.
fn recurrent_shapes(
    n: &Node,
    r: &crate::ir::Recurrent,
    ins: &[Option<&[usize]>],
) -> Result<Vec<Vec<usize>>> {
    let x = ins.first().copied().flatten().unwrap_or(&[]);
    if x.len() != 3 {
        return Err(mismatch(
            n,
            format!(
                "X must be 3-D ({}), got {x:?}",
                if r.batch_first {
                    "[batch, seq, input] for layout 1"
                } else {
                    "[seq, batch, input]"
                }
            ),
        ));
    }
    let (seq, batch, input) = if r.batch_first {
        (x[1], x[0], x[2])
    } else {
        (x[0], x[1], x[2])
    };
    let (h, d, g) = (r.hidden_size, r.direction.count(), r.kind.gates());
    // Gate rows (W, R) and bias length; a huge hidden_size must not overflow.
    let (gh, bias) = g
        .checked_mul(h)
        .and_then(|gh| Some((gh, gh.checked_mul(2)?)))
        .ok_or_else(|| mismatch(n, format!("hidden_size {h} is too large")))?;
    let peep = h
        .checked_mul(3)
        .ok_or_else(|| mismatch(n, format!("hidden_size {h} is too large")))?;
    let state = if r.batch_first {
        vec![batch, d, h]
    } else {
        vec![d, batch, h]
    };
    let expect: [(usize, &str, Vec<usize>); 7] = [
        (1, "W", vec![d, gh, input]),
        (2, "R", vec![d, gh, h]),
        (3, "B", vec![d, bias]),
        (4, "sequence_lens", vec![batch]),
        (5, "initial_h", state.clone()),
        (6, "initial_c", state.clone()),
        (7, "P", vec![d, peep]),
    ];
    for (i, name, want) in expect {
        if let Some(s) = ins.get(i).copied().flatten() {
            if s != want.as_slice() {
                return Err(mismatch(
                    n,
                    format!(
                        "{name} has shape {s:?}, expected {want:?} (hidden_size {h}, {d} \
                         direction(s), input size {input}, batch {batch})"
                    ),
                ));
            }
        }
    }
    if n.input(1).is_none() || n.input(2).is_none() {
        return Err(mismatch(n, "W and R are required"));
    }
    let y = if r.batch_first {
        vec![batch, seq, d, h]
    } else {
        vec![seq, d, batch, h]
    };
    let all = [y, state.clone(), state];
    Ok((0..3)
        .filter(|&k| r.outputs[k])
        .map(|k| all[k].clone())
        .collect())
}
