//! Lowering a float graph plus a mixed-precision policy onto the integer-only engine.
//!
//! Survey §3.3 (HAWQ-V3: Dyadic Neural Network Quantization, Yao et al., ICML 2021): Eq. 24
//! (integer accumulation, dyadic requantization `S_W·S_a/S_o ≈ m/2^s`) and Eq. 25 (batch norm
//! folded into the preceding convolution before quantization, so inference is integer-only);
//! residual additions rescale each side to the output scale with dyadic numbers in the same
//! spirit. §4.4: the lowered model is what mixed precision is deployed as.
//!
//! Three passes:
//! 1. **Structure** (graph only): Conv / Gemm / MatMul with a constant weight become layers;
//!    a following BatchNormalization, or an Add / Sub / Mul / Div with a per-channel constant,
//!    is folded into the layer's weights and bias while the layer output has no other reader;
//!    the same constant operations on the path from the graph input to the first layer (input
//!    normalisation, e.g. `(x - mean) / std`, scalar, per channel or full) become
//!    [`crate::model::InputOp`]s of the input quantization, computed in `f32` exactly as the
//!    float graph does before quantizing (the first layer's calibrated range already lives
//!    in the normalised space);
//!    Relu / Clip are fused as a clamp into the producing layer or Add (else a standalone
//!    clamp); MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Add of two tensors (equal shape or one
//!    broadcast per channel), Concat along a non-batch axis, Mul of two tensors (equal shape or
//!    per channel), Sigmoid / Tanh / LeakyRelu (lookup tables), Transpose keeping the batch
//!    axis and a final Softmax become steps; Flatten / Reshape / Identity / Dropout / Squeeze /
//!    Unsqueeze are free (the code buffer is contiguous and batch-major). Every other operator
//!    is an error naming the node.
//! 2. **Scales**: tensors joined by scale-preserving steps (MaxPool, clamps, Transpose) share one
//!    quantization. A group read by a layer takes that layer's input quantization (policy
//!    scheme + calibrated range, computed exactly as `mixprec_exec::FakeQuant` does); if two
//!    layers read it with different quantizations the second gets a dyadic `Requant` step.
//!    Every other group (a residual branch, the input of an average pool, a Concat input, a
//!    Mul operand, a Sigmoid's input or output, the output of a residual Add that feeds no
//!    layer) needs a range of its own: from `tensor_ranges`, or
//!    measured by running the folded float graph ([`crate::reference`]) on calibration
//!    images ([`lower_with_data`]); such tensors use 8-bit asymmetric quantization (min-max).
//!    A layer whose result only reaches the model output (possibly through Softmax) is not
//!    requantized: its `i32` accumulators are dequantized directly.
//! 3. **Integers**: weights (after folding) quantized symmetric per channel or per tensor at
//!    2–8 bits with the policy's scheme (`mixprec_quant::UniformParams`, the fake-quant
//!    executor's rounding), biases to `i32` at scale `s_x·s_w`, and every multiplier to a
//!    dyadic number. 4-bit weights run the int4 kernel and 8-bit the int8 kernel; 2, 3, 5, 6
//!    and 7-bit weights are stored densely at their width (model file, [`LayerWeights`]) and
//!    unpacked onto the int8 kernel — there is no dedicated 2-bit kernel, so they save memory,
//!    not time. A channel whose folded weights (nearly) vanish gets the smallest weight scale
//!    that keeps its bias inside `±2^30`.
//!
//! Differences from the float fake-quant executor, which keeps everything between two layer
//! inputs in floating point: batch norm is folded before weight quantization (identical codes
//! per channel up to rounding, different per tensor), biases are rounded to the accumulator
//! grid, residual branches and average-pool inputs get their own 8-bit quantization, and
//! requantization rounds half away from zero with a 31-bit dyadic multiplier.
//!
//! Complexity: linear in the graph plus one quantization pass over the weights; with
//! calibration images, one float forward pass per image.

use std::collections::{BTreeMap, HashMap};

use mixprec_graph::{infer, Graph, Node, Op, Tensor, ValueId};
use mixprec_quant::{
    Granularity, Policy, QScheme, QuantKind, Rounding, TensorLayout, UniformParams,
};

use crate::error::{EngineError, Result};
use crate::kernels::{pack_bits, Conv2dParams, Dyadic};
use crate::model::{
    checked_numel, ActParams, AddStep, ConcatStep, InputOp, InputOpKind, LayerGeometry,
    LayerOutput, LayerStep, LayerWeights, LookupStep, MulStep, PoolStep, QuantModel, Step,
    TensorInfo, TransposeStep, UnaryFn,
};
use crate::reference::{conv2d_f64, gemm_f64, pool_windows, PoolGeometry};

/// Clip range `(min, max)` by name: layer name for a layer's input activation (as
/// `mixprec_exec::calibrate` returns them), tensor name for [`lower_with_ranges`].
pub type ActivationRanges = BTreeMap<String, (f32, f32)>;

/// Images per float forward pass during calibration.
const CALIB_BATCH: usize = 64;

/// Lowers `graph` under `policy` with the calibrated input range of every layer. Fails with
/// [`EngineError::MissingRange`] when some tensor needs a range of its own (residual
/// branches, average-pool inputs): use [`lower_with_data`] for those models.
pub fn lower(graph: &Graph, policy: &Policy, ranges: &ActivationRanges) -> Result<QuantModel> {
    lower_with_ranges(graph, policy, ranges, &ActivationRanges::new())
}

/// [`lower`] with the ranges of the other tensors given by tensor name (the names
/// [`EngineError::MissingRange`] reports).
pub fn lower_with_ranges(
    graph: &Graph,
    policy: &Policy,
    ranges: &ActivationRanges,
    tensor_ranges: &ActivationRanges,
) -> Result<QuantModel> {
    let plan = Plan::build(graph)?;
    plan.finish(graph, policy, ranges, tensor_ranges, None)
}

/// [`lower`] measuring the missing tensor ranges (min-max) by running the folded float graph
/// on `images` (`n` samples of the model's input shape, batch-major, preprocessed as the
/// model expects) — typically the same calibration images as the layer ranges.
pub fn lower_with_data(
    graph: &Graph,
    policy: &Policy,
    ranges: &ActivationRanges,
    images: &[f32],
    n: usize,
) -> Result<QuantModel> {
    let plan = Plan::build(graph)?;
    plan.finish(
        graph,
        policy,
        ranges,
        &ActivationRanges::new(),
        Some((images, n)),
    )
}

/// Per-channel affine map `y = k·x + t` folded into a layer.
struct Affine {
    k: Vec<f32>,
    t: Vec<f32>,
}

/// A layer before quantization.
struct FLayer {
    name: String,
    input: usize,
    output: usize,
    /// Folded float weights: `[cout, cin/g, kh, kw]` or `[n, k]`.
    w: Vec<f32>,
    wshape: Vec<usize>,
    bias: Vec<f32>,
    geometry: LayerGeometry,
    lo: Option<f32>,
    hi: Option<f32>,
    clamped: bool,
    float_out: bool,
}

struct FPool {
    name: String,
    input: usize,
    output: usize,
    geo: PoolGeometry,
    count_include_pad: bool,
}

enum FStep {
    Quantize {
        input: usize,
        output: usize,
        ops: Vec<InputOp>,
    },
    Layer(FLayer),
    Add {
        name: String,
        a: usize,
        b: usize,
        output: usize,
        lo: Option<f32>,
        hi: Option<f32>,
        b_inner: usize,
    },
    MaxPool(FPool),
    AvgPool(FPool),
    Concat {
        name: String,
        inputs: Vec<usize>,
        output: usize,
        outer: usize,
        blocks: Vec<usize>,
    },
    Lookup {
        name: String,
        input: usize,
        output: usize,
        function: UnaryFn,
    },
    Mul {
        name: String,
        a: usize,
        b: usize,
        output: usize,
        inner: usize,
    },
    Transpose(TransposeStep),
    Clamp {
        name: String,
        input: usize,
        output: usize,
        lo: Option<f32>,
        hi: Option<f32>,
    },
    Dequantize {
        input: usize,
        output: usize,
    },
    Softmax {
        name: String,
        input: usize,
        output: usize,
        outer: usize,
        len: usize,
        inner: usize,
    },
}

impl FStep {
    fn output(&self) -> usize {
        match self {
            FStep::Quantize { output, .. }
            | FStep::Add { output, .. }
            | FStep::Clamp { output, .. }
            | FStep::Dequantize { output, .. }
            | FStep::Softmax { output, .. }
            | FStep::Concat { output, .. }
            | FStep::Lookup { output, .. }
            | FStep::Mul { output, .. } => *output,
            FStep::Transpose(t) => t.output,
            FStep::Layer(l) => l.output,
            FStep::MaxPool(p) | FStep::AvgPool(p) => p.output,
        }
    }

    fn inputs(&self) -> Vec<usize> {
        match self {
            FStep::Quantize { input, .. }
            | FStep::Clamp { input, .. }
            | FStep::Dequantize { input, .. }
            | FStep::Softmax { input, .. }
            | FStep::Lookup { input, .. } => vec![*input],
            FStep::Add { a, b, .. } | FStep::Mul { a, b, .. } => vec![*a, *b],
            FStep::Concat { inputs, .. } => inputs.clone(),
            FStep::Transpose(t) => vec![t.input],
            FStep::Layer(l) => vec![l.input],
            FStep::MaxPool(p) | FStep::AvgPool(p) => vec![p.input],
        }
    }
}

struct FTensor {
    name: String,
    shape: Vec<usize>,
    float: bool,
}

/// Adds tensor `t` (read `n_uses` times) and the step `step(t's index)` that writes it;
/// returns the tensor's index.
fn produce(
    p: &mut Plan,
    slot_uses: &mut Vec<usize>,
    producer: &mut Vec<Option<usize>>,
    t: FTensor,
    n_uses: usize,
    step: impl FnOnce(usize) -> FStep,
) -> usize {
    p.tensors.push(t);
    slot_uses.push(n_uses);
    let o = p.tensors.len() - 1;
    producer.push(Some(p.steps.len()));
    p.steps.push(step(o));
    o
}

/// The structure pass's result.
struct Plan {
    name: String,
    tensors: Vec<FTensor>,
    steps: Vec<FStep>,
    input: usize,
    output: usize,
}

fn unsupported(node: &Node, detail: impl Into<String>) -> EngineError {
    EngineError::Unsupported {
        node: node.name.clone(),
        op: node.op.onnx_name().to_string(),
        detail: detail.into(),
    }
}

const SUPPORTED: &str = "the integer engine runs Conv, Gemm and MatMul with constant weights \
     (BatchNormalization and constant Add/Sub/Mul/Div folded into them), Relu, Clip, MaxPool, \
     AveragePool, GlobalAveragePool, GlobalMaxPool, Add of two tensors (equal shape or one per channel), \
     Concat, Sigmoid, Tanh, \
     LeakyRelu, Mul of two tensors (equal shape or one per channel), Transpose (keeping the \
     batch axis), Flatten, Reshape, Identity, Dropout, Squeeze, Unsqueeze and a final Softmax";

/// Per-channel values of constant `t` broadcast against `out` (batch-1 shape), when `t` is
/// constant along every axis but `axis`.
fn per_channel(t: &Tensor, out: &[usize], axis: usize) -> Option<Vec<f32>> {
    let v = t.to_f32();
    if t.shape.len() > out.len() || v.is_empty() {
        return None;
    }
    let lead = out.len() - t.shape.len();
    for (i, &d) in t.shape.iter().enumerate() {
        if d != 1 && d != out[lead + i] {
            return None;
        }
    }
    let channels = out[axis];
    let mut res: Vec<Option<f32>> = vec![None; channels];
    let tstr = mixprec_graph::tensor::strides(&t.shape);
    let total: usize = out.iter().product();
    let ostr = mixprec_graph::tensor::strides(out);
    for i in 0..total {
        let mut src = 0;
        let mut c = 0;
        for (ax, (&d, &s)) in out.iter().zip(&ostr).enumerate() {
            let idx = (i / s) % d;
            if ax == axis {
                c = idx;
            }
            if ax >= lead {
                let td = t.shape[ax - lead];
                if td != 1 {
                    src += idx * tstr[ax - lead];
                }
            }
        }
        match res[c] {
            None => res[c] = Some(v[src]),
            Some(x) if x == v[src] => {}
            Some(_) => return None,
        }
    }
    res.into_iter().collect()
}

/// Elements of `big` sharing one element of `small` when `small` broadcasts against `big` per
/// leading block: `small` equals `big`'s first dimensions followed by ones (same shape: 1;
/// `[C, 1, 1]` against `[C, H, W]`: `H·W`). `None` for any other broadcast.
/// Orders the two operands of an element-wise node so that the second one is the operand
/// broadcast per channel (or both have one shape): `(a, b, elements per channel)`, or an error
/// naming the node and what the engine `verb`s.
fn broadcast_pair(
    node: &Node,
    (a, sa): (usize, &[usize]),
    (b, sb): (usize, &[usize]),
    verb: &str,
) -> Result<(usize, usize, usize)> {
    if let Some(i) = broadcast_runs(sa, sb) {
        Ok((a, b, i))
    } else if let Some(i) = broadcast_runs(sb, sa) {
        Ok((b, a, i))
    } else {
        Err(unsupported(
            node,
            format!(
                "the engine {verb} tensors of equal shape or broadcasts one per channel \
                 ([C, 1, 1] against [C, H, W]); got {sa:?} and {sb:?}"
            ),
        ))
    }
}

fn broadcast_runs(big: &[usize], small: &[usize]) -> Option<usize> {
    if big.len() != small.len() {
        return None;
    }
    let k = (0..=small.len())
        .rev()
        .find(|&k| small[..k] == big[..k])
        .unwrap_or(0);
    small[k..]
        .iter()
        .all(|&d| d == 1)
        .then(|| big[k..].iter().product())
}

/// Constant `t` broadcast against `out` (batch-1 shape) as `(values, inner)`: element `i` of
/// a sample takes `values[i / inner]`, with the longest runs the shape allows (one value for a
/// scalar, one per channel, ...). `None` when `t` does not broadcast to `out`.
fn input_constant(t: &Tensor, out: &[usize]) -> Option<(Vec<f32>, usize)> {
    let v = t.to_f32();
    if t.shape.len() > out.len() || v.is_empty() || out.first() != Some(&1) {
        return None;
    }
    let lead = out.len() - t.shape.len();
    for (i, &d) in t.shape.iter().enumerate() {
        if d != 1 && d != out[lead + i] {
            return None;
        }
    }
    let total = checked_numel(out)?;
    let tstr = mixprec_graph::tensor::strides(&t.shape);
    let ostr = mixprec_graph::tensor::strides(out);
    let full: Vec<f32> = (0..total)
        .map(|i| {
            let mut src = 0;
            for (ax, (&d, &s)) in out.iter().zip(&ostr).enumerate().skip(lead) {
                if t.shape[ax - lead] != 1 {
                    src += ((i / s) % d) * tstr[ax - lead];
                }
            }
            v[src]
        })
        .collect();
    // Longest runs first: the whole sample, then per dimension.
    for k in 1..=out.len() {
        let inner: usize = out[k..].iter().product();
        if inner == 0 {
            return None;
        }
        if full
            .chunks(inner)
            .all(|c| c.iter().all(|x| x.to_bits() == c[0].to_bits()))
        {
            return Some((full.iter().step_by(inner).copied().collect(), inner));
        }
    }
    None
}

impl Plan {
    fn build(g: &Graph) -> Result<Plan> {
        if g.inputs.len() != 1 || g.outputs.len() != 1 {
            return Err(EngineError::Input(format!(
                "the integer engine runs models with one input and one output; '{}' has {} \
                 inputs and {} outputs",
                g.name,
                g.inputs.len(),
                g.outputs.len()
            )));
        }
        let in_v = g.inputs[0];
        let mut shape1 = mixprec_graph::input_shapes_for_batch(g, 1)?;
        if shape1[0].is_empty() {
            return Err(EngineError::Input(format!(
                "input '{}' is a scalar; the engine needs a leading batch dimension",
                g.values[in_v].name
            )));
        }
        shape1[0][0] = 1;
        let mut shape2 = shape1.clone();
        shape2[0][0] = 2;
        let inf1 = infer(g, &shape1)?;
        let inf2 = infer(g, &shape2)?;
        // Per-sample shape of a value: the batch must stay the leading dimension.
        let sample = |v: ValueId| -> Result<Vec<usize>> {
            let (a, b) = (inf1.shape(g, v)?, inf2.shape(g, v)?);
            if a.is_empty() || a[0] != 1 || b.len() != a.len() || b[0] != 2 || a[1..] != b[1..] {
                return Err(EngineError::Input(format!(
                    "tensor '{}' does not keep the batch as its leading dimension (shape {a:?} \
                     at batch 1, {b:?} at batch 2); the integer engine needs batch-major tensors",
                    g.values[v].name
                )));
            }
            Ok(a[1..].to_vec())
        };
        let uses = g.use_counts();
        let layers: HashMap<usize, mixprec_graph::Layer> =
            g.layers().into_iter().map(|l| (l.node, l)).collect();
        let mut p = Plan {
            name: g.name.clone(),
            tensors: Vec::new(),
            steps: Vec::new(),
            input: 0,
            output: 0,
        };
        let mut slot: HashMap<ValueId, usize> = HashMap::new();
        let mut slot_uses: Vec<usize> = Vec::new();
        let mut producer: Vec<Option<usize>> = Vec::new();
        let new_tensor = |p: &mut Plan,
                          slot_uses: &mut Vec<usize>,
                          producer: &mut Vec<Option<usize>>,
                          name: String,
                          shape: Vec<usize>,
                          float: bool,
                          n_uses: usize| {
            p.tensors.push(FTensor { name, shape, float });
            slot_uses.push(n_uses);
            producer.push(None);
            p.tensors.len() - 1
        };
        // The code tensor written by a node's output value `v`.
        let out_tensor = |v: ValueId, shape: Vec<usize>| FTensor {
            name: g.values[v].name.clone(),
            shape,
            float: false,
        };
        let in_name = g.values[in_v].name.clone();
        let in_shape = sample(in_v)?;
        p.input = new_tensor(
            &mut p,
            &mut slot_uses,
            &mut producer,
            in_name.clone(),
            in_shape.clone(),
            true,
            1,
        );
        let q = new_tensor(
            &mut p,
            &mut slot_uses,
            &mut producer,
            format!("{in_name}:q"),
            in_shape,
            false,
            uses[in_v],
        );
        producer[q] = Some(0);
        p.steps.push(FStep::Quantize {
            input: p.input,
            output: q,
            ops: Vec::new(),
        });
        slot.insert(in_v, q);

        for (ni, node) in g.nodes.iter().enumerate() {
            let out_v = *node
                .outputs
                .first()
                .ok_or_else(|| unsupported(node, "the node has no output"))?;
            if node.outputs[1..].iter().any(|&o| uses[o] > 0) {
                return Err(unsupported(node, "only its first output can be used"));
            }
            // Runtime (non-constant) inputs and their slots.
            let rt: Vec<(usize, ValueId, usize)> = node
                .inputs
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i, v)))
                .filter(|(_, v)| !inf1.consts.contains_key(v))
                .map(|(i, v)| {
                    slot.get(&v).map(|&s| (i, v, s)).ok_or_else(|| {
                        unsupported(
                            node,
                            format!(
                                "its input '{}' is not computed by the engine",
                                g.values[v].name
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            if rt.is_empty() {
                return Err(unsupported(node, "all of its inputs are constants"));
            }
            for &(_, _, s) in &rt {
                if p.tensors[s].float && !matches!(node.op, Op::Softmax { .. }) {
                    return Err(unsupported(
                        node,
                        "it reads a floating-point tensor (a Softmax output); only the model \
                         output may be computed in floating point",
                    ));
                }
            }
            let const_in = |i: usize| node.input(i).and_then(|v| inf1.consts.get(&v));
            let out_shape = sample(out_v)?;
            let mut full_out = vec![1];
            full_out.extend_from_slice(&out_shape);
            // A fusable producer: the single runtime input is the whole output of a step that
            // nobody else reads.
            let fusable = |p: &Plan, slot_uses: &[usize], producer: &[Option<usize>]| {
                let &[(_, _, s)] = rt.as_slice() else {
                    return None;
                };
                let pi = producer[s]?;
                (slot_uses[s] == 1 && p.steps[pi].output() == s).then_some((pi, s))
            };
            let rename = |p: &mut Plan, slot_uses: &mut [usize], s: usize| {
                p.tensors[s].name = g.values[out_v].name.clone();
                slot_uses[s] = uses[out_v];
            };
            match &node.op {
                Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul => {
                    let layer = layers.get(&ni).ok_or_else(|| {
                        unsupported(
                            node,
                            "its weight is not a float constant; the engine quantizes constant \
                             weights only",
                        )
                    })?;
                    let &[(0, x_v, x_s)] = rt.as_slice() else {
                        return Err(unsupported(node, "only the data input may be non-constant"));
                    };
                    let fl = build_layer(g, node, layer, x_v, x_s, &sample(x_v)?, &out_shape)?;
                    let o = produce(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        out_tensor(out_v, out_shape),
                        uses[out_v],
                        |o| FStep::Layer(FLayer { output: o, ..fl }),
                    );
                    slot.insert(out_v, o);
                }
                Op::BatchNorm { epsilon } => {
                    let Some((pi, s)) = fusable(&p, &slot_uses, &producer) else {
                        return Err(unsupported(
                            node,
                            "BatchNormalization is supported only directly after a Conv / Gemm \
                             / MatMul whose output it alone reads (it is folded into the weights)",
                        ));
                    };
                    let prm: Vec<Vec<f32>> = (1..5)
                        .map(|i| {
                            const_in(i).map(|t| t.to_f32()).ok_or_else(|| {
                                unsupported(
                                    node,
                                    "scale, bias, mean and variance must be constants",
                                )
                            })
                        })
                        .collect::<Result<_>>()?;
                    let c = out_shape.first().copied().unwrap_or(0);
                    if prm.iter().any(|v| v.len() != c) {
                        return Err(unsupported(
                            node,
                            format!("parameters must have {c} elements"),
                        ));
                    }
                    let k: Vec<f32> = (0..c)
                        .map(|i| prm[0][i] / (prm[3][i] + epsilon).sqrt())
                        .collect();
                    let t: Vec<f32> = (0..c).map(|i| prm[1][i] - prm[2][i] * k[i]).collect();
                    fold_affine(&mut p.steps[pi], node, Affine { k, t })?;
                    rename(&mut p, &mut slot_uses, s);
                    slot.insert(out_v, s);
                }
                Op::Add | Op::Sub | Op::Mul | Op::Div if rt.len() == 1 => {
                    let (xi, _, _) = rt[0];
                    let ci = 1 - xi;
                    let cst = const_in(ci).ok_or_else(|| unsupported(node, "missing constant"))?;
                    let Some((pi, s)) = fusable(&p, &slot_uses, &producer) else {
                        return Err(unsupported(
                            node,
                            format!(
                                "{} with a constant is supported only right after a Conv / Gemm \
                                 / MatMul whose output it alone reads (it is folded into the \
                                 bias or weights), or on the path from the graph input to the \
                                 first layer (applied in float before the input quantization)",
                                node.op.onnx_name()
                            ),
                        ));
                    };
                    if let FStep::Quantize { ops, .. } = &mut p.steps[pi] {
                        // Input normalisation: runs in f32 before quantization.
                        if sample(rt[0].1)? != out_shape {
                            return Err(unsupported(
                                node,
                                format!(
                                    "its constant of shape {:?} changes the input's shape",
                                    cst.shape
                                ),
                            ));
                        }
                        let (values, inner) = input_constant(cst, &full_out).ok_or_else(|| {
                            unsupported(
                                node,
                                format!(
                                    "the constant of shape {:?} does not broadcast to {:?}",
                                    cst.shape, full_out
                                ),
                            )
                        })?;
                        let kind = match (&node.op, ci) {
                            (Op::Add, _) => InputOpKind::Add,
                            (Op::Sub, 1) => InputOpKind::Sub,
                            (Op::Sub, _) => InputOpKind::SubFrom,
                            (Op::Mul, _) => InputOpKind::Mul,
                            (Op::Div, 1) => InputOpKind::Div,
                            _ => InputOpKind::DivInto,
                        };
                        ops.push(InputOp {
                            name: node.name.clone(),
                            kind,
                            values,
                            inner,
                        });
                        rename(&mut p, &mut slot_uses, s);
                        slot.insert(out_v, s);
                        continue;
                    }
                    let FStep::Layer(fl) = &p.steps[pi] else {
                        return Err(unsupported(
                            node,
                            "a constant operand can only be folded into a Conv / Gemm / MatMul",
                        ));
                    };
                    let axis = match fl.geometry {
                        LayerGeometry::Conv { .. } => 1,
                        LayerGeometry::Gemm { .. } => full_out.len() - 1,
                    };
                    let v = per_channel(cst, &full_out, axis).ok_or_else(|| {
                        unsupported(
                            node,
                            format!(
                                "the constant of shape {:?} is not per output channel",
                                cst.shape
                            ),
                        )
                    })?;
                    let n = v.len();
                    let aff = match (&node.op, ci) {
                        (Op::Add, _) => Affine {
                            k: vec![1.0; n],
                            t: v,
                        },
                        (Op::Sub, 1) => Affine {
                            k: vec![1.0; n],
                            t: v.iter().map(|x| -x).collect(),
                        },
                        (Op::Sub, _) => Affine {
                            k: vec![-1.0; n],
                            t: v,
                        },
                        (Op::Mul, _) => Affine {
                            k: v,
                            t: vec![0.0; n],
                        },
                        (Op::Div, 1) => Affine {
                            k: v.iter().map(|x| 1.0 / x).collect(),
                            t: vec![0.0; n],
                        },
                        _ => {
                            return Err(unsupported(
                                node,
                                "dividing a constant by a tensor is not linear",
                            ))
                        }
                    };
                    fold_affine(&mut p.steps[pi], node, aff)?;
                    rename(&mut p, &mut slot_uses, s);
                    slot.insert(out_v, s);
                }
                Op::Add | Op::Mul => {
                    let &[(_, av, a), (_, bv, b)] = rt.as_slice() else {
                        return Err(unsupported(node, "needs two operands"));
                    };
                    let (sa, sb) = (sample(av)?, sample(bv)?);
                    let add = matches!(node.op, Op::Add);
                    let verb = if add { "adds" } else { "multiplies" };
                    let (a, b, inner) = broadcast_pair(node, (a, &sa), (b, &sb), verb)?;
                    let name = node.name.clone();
                    let o = produce(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        out_tensor(out_v, out_shape),
                        uses[out_v],
                        |output| {
                            if add {
                                FStep::Add {
                                    name,
                                    a,
                                    b,
                                    output,
                                    lo: None,
                                    hi: None,
                                    b_inner: inner,
                                }
                            } else {
                                FStep::Mul {
                                    name,
                                    a,
                                    b,
                                    output,
                                    inner,
                                }
                            }
                        },
                    );
                    slot.insert(out_v, o);
                }
                Op::Concat { axis } => {
                    if rt.len() != node.inputs.iter().flatten().count() {
                        return Err(unsupported(
                            node,
                            "the engine concatenates computed tensors only (no constant inputs)",
                        ));
                    }
                    let rank = out_shape.len() + 1;
                    let ax = mixprec_graph::shape::norm_axis(*axis, rank)
                        .filter(|&a| a >= 1)
                        .ok_or_else(|| {
                            unsupported(node, "the concat axis must not be the batch")
                        })?;
                    let outer: usize = out_shape[..ax - 1].iter().product();
                    let mut blocks = Vec::with_capacity(rt.len());
                    for &(_, v, _) in &rt {
                        let sh = sample(v)?;
                        if sh.len() != out_shape.len() || sh[..ax - 1] != out_shape[..ax - 1] {
                            return Err(unsupported(
                                node,
                                format!("input shape {sh:?} does not fit output {out_shape:?}"),
                            ));
                        }
                        blocks.push(sh[ax - 1..].iter().product::<usize>());
                    }
                    if outer * blocks.iter().sum::<usize>() != out_shape.iter().product::<usize>() {
                        return Err(unsupported(node, "input sizes do not add up to the output"));
                    }
                    let o = produce(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        out_tensor(out_v, out_shape),
                        uses[out_v],
                        |o| FStep::Concat {
                            name: node.name.clone(),
                            inputs: rt.iter().map(|&(_, _, s)| s).collect(),
                            output: o,
                            outer,
                            blocks,
                        },
                    );
                    slot.insert(out_v, o);
                }
                Op::Sigmoid | Op::Tanh | Op::LeakyRelu { .. } => {
                    let function = match node.op {
                        Op::Sigmoid => UnaryFn::Sigmoid,
                        Op::Tanh => UnaryFn::Tanh,
                        Op::LeakyRelu { alpha } => UnaryFn::LeakyRelu { alpha },
                        _ => return Err(unsupported(node, SUPPORTED)),
                    };
                    let (_, _, s_in) = rt[0];
                    let o = produce(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        out_tensor(out_v, out_shape),
                        uses[out_v],
                        |o| FStep::Lookup {
                            name: node.name.clone(),
                            input: s_in,
                            output: o,
                            function,
                        },
                    );
                    slot.insert(out_v, o);
                }
                Op::Transpose { perm } => {
                    let (_, x_v, s_in) = rt[0];
                    let ish = sample(x_v)?;
                    let rank = ish.len() + 1;
                    let perm: Vec<usize> =
                        perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                    if perm.len() != rank || perm[0] != 0 {
                        return Err(unsupported(
                            node,
                            "the permutation must keep the batch as the first axis",
                        ));
                    }
                    let perm: Vec<usize> = perm[1..].iter().map(|&a| a.saturating_sub(1)).collect();
                    let mut seen = vec![false; ish.len()];
                    if perm
                        .iter()
                        .any(|&a| a >= ish.len() || std::mem::replace(&mut seen[a], true))
                        || perm.iter().map(|&a| ish[a]).collect::<Vec<_>>() != out_shape
                    {
                        return Err(unsupported(node, "invalid permutation"));
                    }
                    let o = produce(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        out_tensor(out_v, out_shape),
                        uses[out_v],
                        |o| {
                            FStep::Transpose(TransposeStep {
                                name: node.name.clone(),
                                input: s_in,
                                output: o,
                                in_shape: ish,
                                perm,
                            })
                        },
                    );
                    slot.insert(out_v, o);
                }
                Op::Relu | Op::Clip => {
                    let (lo, hi) = if matches!(node.op, Op::Relu) {
                        (Some(0.0), None)
                    } else {
                        let bound = |i: usize| -> Result<Option<f32>> {
                            match node.input(i) {
                                None => Ok(None),
                                Some(v) => inf1
                                    .consts
                                    .get(&v)
                                    .and_then(|t| t.to_f32().first().copied())
                                    .map(Some)
                                    .ok_or_else(|| {
                                        unsupported(node, "Clip bounds must be constants")
                                    }),
                            }
                        };
                        (bound(1)?, bound(2)?)
                    };
                    let (_, _, s_in) = rt[0];
                    match fusable(&p, &slot_uses, &producer) {
                        Some((pi, s)) if fuse_clamp(&mut p.steps[pi], lo, hi) => {
                            rename(&mut p, &mut slot_uses, s);
                            slot.insert(out_v, s);
                        }
                        _ => {
                            let o = produce(
                                &mut p,
                                &mut slot_uses,
                                &mut producer,
                                out_tensor(out_v, out_shape),
                                uses[out_v],
                                |o| FStep::Clamp {
                                    name: node.name.clone(),
                                    input: s_in,
                                    output: o,
                                    lo,
                                    hi,
                                },
                            );
                            slot.insert(out_v, o);
                        }
                    }
                }
                Op::MaxPool(_)
                | Op::AveragePool { .. }
                | Op::GlobalAveragePool
                | Op::GlobalMaxPool => {
                    let (_, x_v, s_in) = rt[0];
                    let ish = sample(x_v)?;
                    let &[c, h, w] = ish.as_slice() else {
                        return Err(unsupported(node, "only 2-D pooling of NCHW tensors"));
                    };
                    let (window, count_include_pad) = match &node.op {
                        Op::MaxPool(win) => (win.clone(), false),
                        Op::AveragePool {
                            window,
                            count_include_pad,
                        } => (window.clone(), *count_include_pad),
                        _ => (
                            mixprec_graph::Window {
                                kernel: vec![h, w],
                                ..Default::default()
                            },
                            false,
                        ),
                    };
                    let (b, e, o) = window
                        .resolve(&[h, w])
                        .ok_or_else(|| unsupported(node, "invalid pooling window"))?;
                    let get = |v: &Vec<usize>, i: usize| v.get(i).copied().unwrap_or(1);
                    let geo = PoolGeometry {
                        in_shape: [c, h, w],
                        out_hw: [o[0], o[1]],
                        kernel: [window.kernel[0], window.kernel[1]],
                        strides: [get(&window.strides, 0), get(&window.strides, 1)],
                        pads: [b[0], b[1], e[0], e[1]],
                        dilations: [get(&window.dilations, 0), get(&window.dilations, 1)],
                    };
                    if out_shape != [c, o[0], o[1]] {
                        return Err(unsupported(
                            node,
                            format!("output shape {out_shape:?} disagrees with the window"),
                        ));
                    }
                    let is_max = matches!(node.op, Op::MaxPool(_) | Op::GlobalMaxPool);
                    if !is_max && geo.dilations != [1, 1] {
                        return Err(unsupported(node, "dilated average pooling"));
                    }
                    let o = new_tensor(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        g.values[out_v].name.clone(),
                        out_shape,
                        false,
                        uses[out_v],
                    );
                    producer[o] = Some(p.steps.len());
                    let fp = FPool {
                        name: node.name.clone(),
                        input: s_in,
                        output: o,
                        geo,
                        count_include_pad,
                    };
                    p.steps.push(if is_max {
                        FStep::MaxPool(fp)
                    } else {
                        FStep::AvgPool(fp)
                    });
                    slot.insert(out_v, o);
                }
                Op::Flatten { .. }
                | Op::Reshape { .. }
                | Op::Identity
                | Op::Dropout
                | Op::Squeeze
                | Op::Unsqueeze => {
                    let (_, _, s) = rt[0];
                    slot_uses[s] = slot_uses[s] + uses[out_v] - 1;
                    slot.insert(out_v, s);
                }
                Op::Softmax { axis, legacy } => {
                    let (_, x_v, s_in) = rt[0];
                    let ish = sample(x_v)?;
                    let rank = ish.len() + 1;
                    let ax = mixprec_graph::shape::norm_axis(*axis, rank)
                        .filter(|&a| a >= 1)
                        .ok_or_else(|| {
                            unsupported(node, "the softmax axis must not be the batch axis")
                        })?;
                    let (outer, len, inner) = if *legacy {
                        (
                            ish[..ax - 1].iter().product(),
                            ish[ax - 1..].iter().product(),
                            1,
                        )
                    } else {
                        (
                            ish[..ax - 1].iter().product(),
                            ish[ax - 1],
                            ish[ax..].iter().product(),
                        )
                    };
                    let input = if p.tensors[s_in].float {
                        s_in
                    } else if let Some((pi, s)) = fusable(&p, &slot_uses, &producer)
                        .filter(|&(pi, _)| matches!(p.steps[pi], FStep::Layer(_)))
                    {
                        if let FStep::Layer(l) = &mut p.steps[pi] {
                            l.float_out = true;
                        }
                        p.tensors[s].float = true;
                        s
                    } else {
                        let fname = format!("{}:f", p.tensors[s_in].name);
                        let f = new_tensor(
                            &mut p,
                            &mut slot_uses,
                            &mut producer,
                            fname,
                            ish.clone(),
                            true,
                            1,
                        );
                        producer[f] = Some(p.steps.len());
                        p.steps.push(FStep::Dequantize {
                            input: s_in,
                            output: f,
                        });
                        f
                    };
                    let o = produce(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        FTensor {
                            name: g.values[out_v].name.clone(),
                            shape: out_shape,
                            float: true,
                        },
                        uses[out_v],
                        |o| FStep::Softmax {
                            name: node.name.clone(),
                            input,
                            output: o,
                            outer,
                            len,
                            inner,
                        },
                    );
                    slot.insert(out_v, o);
                }
                _ => return Err(unsupported(node, SUPPORTED)),
            }
        }
        let out_v = g.outputs[0];
        let s = *slot.get(&out_v).ok_or_else(|| {
            EngineError::Input(format!(
                "output '{}' is not computed from the input",
                g.values[out_v].name
            ))
        })?;
        p.output = if p.tensors[s].float {
            s
        } else {
            let readers = p.steps.iter().filter(|st| st.inputs().contains(&s)).count();
            match producer[s] {
                Some(pi) if readers == 0 && matches!(p.steps[pi], FStep::Layer(_)) => {
                    if let FStep::Layer(l) = &mut p.steps[pi] {
                        l.float_out = true;
                    }
                    p.tensors[s].float = true;
                    s
                }
                _ => {
                    let (fname, fshape) = (
                        format!("{}:f", p.tensors[s].name),
                        p.tensors[s].shape.clone(),
                    );
                    let f = new_tensor(
                        &mut p,
                        &mut slot_uses,
                        &mut producer,
                        fname,
                        fshape,
                        true,
                        1,
                    );
                    p.steps.push(FStep::Dequantize {
                        input: s,
                        output: f,
                    });
                    f
                }
            }
        };
        Ok(p)
    }

    /// Runs the folded float graph on `images` and returns `(min, max)` of every tensor.
    fn float_ranges(&self, images: &[f32], n: usize) -> Result<Vec<(f32, f32)>> {
        let per = self.tensors[self.input].shape.iter().product::<usize>();
        if n == 0 || n.checked_mul(per) != Some(images.len()) {
            return Err(EngineError::Input(format!(
                "{} calibration values do not form {n} samples of shape {:?}",
                images.len(),
                self.tensors[self.input].shape
            )));
        }
        let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); self.tensors.len()];
        for (chunk_i, chunk) in images.chunks(CALIB_BATCH * per).enumerate() {
            let _ = chunk_i;
            let b = chunk.len() / per;
            let mut vals: Vec<Option<Vec<f64>>> = vec![None; self.tensors.len()];
            vals[self.input] = Some(chunk.iter().map(|&x| x as f64).collect());
            for st in &self.steps {
                let get = |t: usize| {
                    vals[t]
                        .as_deref()
                        .ok_or_else(|| EngineError::Invalid("tensor read before written".into()))
                };
                let out = match st {
                    FStep::Quantize { input, ops, .. } => {
                        let mut x: Vec<f32> = get(*input)?.iter().map(|&v| v as f32).collect();
                        for op in ops {
                            op.apply(&mut x);
                        }
                        x.iter().map(|&v| v as f64).collect()
                    }
                    FStep::Dequantize { input, .. } => get(*input)?.to_vec(),
                    FStep::Layer(l) => {
                        let w: Vec<f64> = l.w.iter().map(|&v| v as f64).collect();
                        let x = get(l.input)?;
                        let (mut y, ch, inner) = match &l.geometry {
                            LayerGeometry::Conv {
                                input,
                                output,
                                params,
                            } => {
                                let ws = [l.wshape[0], l.wshape[1], l.wshape[2], l.wshape[3]];
                                (
                                    conv2d_f64(
                                        x,
                                        b,
                                        *input,
                                        &w,
                                        ws,
                                        params,
                                        [output[1], output[2]],
                                    ),
                                    output[0],
                                    output[1] * output[2],
                                )
                            }
                            LayerGeometry::Gemm { rows, k, n } => {
                                (gemm_f64(x, b * rows, *k, &w, *n), *n, 1)
                            }
                        };
                        for blk in y.chunks_exact_mut(ch * inner) {
                            for (c, row) in blk.chunks_exact_mut(inner).enumerate() {
                                for v in row {
                                    *v = clamp_f64(*v + l.bias[c] as f64, l.lo, l.hi);
                                }
                            }
                        }
                        y
                    }
                    FStep::Add {
                        a,
                        b: bb,
                        lo,
                        hi,
                        b_inner,
                        ..
                    } => {
                        let y = get(*bb)?;
                        get(*a)?
                            .iter()
                            .enumerate()
                            .map(|(i, x)| clamp_f64(x + y[i / b_inner], *lo, *hi))
                            .collect()
                    }
                    FStep::Clamp { input, lo, hi, .. } => get(*input)?
                        .iter()
                        .map(|&x| clamp_f64(x, *lo, *hi))
                        .collect(),
                    FStep::Lookup {
                        input, function, ..
                    } => get(*input)?.iter().map(|&x| function.eval(x)).collect(),
                    FStep::Mul {
                        a, b: bb, inner, ..
                    } => {
                        let y = get(*bb)?;
                        get(*a)?
                            .iter()
                            .enumerate()
                            .map(|(i, x)| x * y[i / inner])
                            .collect()
                    }
                    FStep::Concat {
                        inputs,
                        outer,
                        blocks,
                        ..
                    } => {
                        let ins = inputs.iter().map(|&t| get(t)).collect::<Result<Vec<_>>>()?;
                        let mut out = Vec::new();
                        for s in 0..b {
                            for o in 0..*outer {
                                for (x, &blk) in ins.iter().zip(blocks) {
                                    let start = (s * outer + o) * blk;
                                    out.extend_from_slice(&x[start..start + blk]);
                                }
                            }
                        }
                        out
                    }
                    FStep::Transpose(t) => {
                        let x = get(t.input)?;
                        let per: usize = t.in_shape.iter().product();
                        let mut out = Vec::with_capacity(x.len());
                        for sample in x.chunks_exact(per.max(1)) {
                            t.apply(sample, &mut out);
                        }
                        out
                    }
                    FStep::MaxPool(fp) => pool_windows(get(fp.input)?, b, &fp.geo, |v, _| {
                        v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x))
                    }),
                    FStep::AvgPool(fp) => {
                        let cip = fp.count_include_pad;
                        pool_windows(get(fp.input)?, b, &fp.geo, |v, padded| {
                            let n = if cip { padded } else { v.len() };
                            v.iter().sum::<f64>() / n.max(1) as f64
                        })
                    }
                    FStep::Softmax {
                        input,
                        outer,
                        len,
                        inner,
                        ..
                    } => {
                        let mut v: Vec<f32> = get(*input)?.iter().map(|&x| x as f32).collect();
                        crate::model::softmax(&mut v, *outer, *len, *inner);
                        v.iter().map(|&x| x as f64).collect()
                    }
                };
                let r = &mut ranges[st.output()];
                for &v in &out {
                    r.0 = r.0.min(v as f32);
                    r.1 = r.1.max(v as f32);
                }
                vals[st.output()] = Some(out);
            }
        }
        Ok(ranges)
    }

    /// Passes 2 and 3 (see the module docs).
    fn finish(
        self,
        g: &Graph,
        policy: &Policy,
        ranges: &ActivationRanges,
        tensor_ranges: &ActivationRanges,
        data: Option<(&[f32], usize)>,
    ) -> Result<QuantModel> {
        let names: Vec<String> = g.layers().into_iter().map(|l| l.name).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        policy.validate(&refs).map_err(|e| EngineError::Quant {
            what: "policy".into(),
            source: e,
        })?;
        // Groups of code tensors that share one quantization.
        let nt = self.tensors.len();
        let mut parent: Vec<usize> = (0..nt).collect();
        fn find(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        let mut head: Vec<bool> = vec![true; nt];
        for st in &self.steps {
            if let FStep::MaxPool(FPool { input, output, .. })
            | FStep::Clamp { input, output, .. }
            | FStep::Transpose(TransposeStep { input, output, .. }) = st
            {
                let (a, b) = (find(&mut parent, *input), find(&mut parent, *output));
                parent[b] = a;
                head[*output] = false;
            }
        }
        // Requirements of the layers, in step order.
        let mut group_params: HashMap<usize, ActParams> = HashMap::new();
        let mut layer_in: HashMap<String, ActParams> = HashMap::new();
        let mut weight_schemes: HashMap<String, QScheme> = HashMap::new();
        for st in &self.steps {
            let FStep::Layer(l) = st else { continue };
            let lp = policy.get(&l.name);
            let wscheme = lp
                .and_then(|p| p.weight)
                .ok_or_else(|| EngineError::Layer {
                    layer: l.name.clone(),
                    detail: "its weight is not quantized by the policy; the integer engine needs \
                         every layer's weight quantized (set a uniform symmetric 2-8 bit weight \
                         scheme for it)"
                        .into(),
                })?;
            let ascheme = lp
                .and_then(|p| p.activation)
                .ok_or_else(|| EngineError::Layer {
                    layer: l.name.clone(),
                    detail: "its input activation is not quantized by the policy; the integer \
                         engine needs every layer's input quantized (set e.g. a uniform 8-bit \
                         activation scheme for it)"
                        .into(),
                })?;
            check_scheme(&l.name, "activation", &ascheme)?;
            check_scheme(&l.name, "weight", &wscheme)?;
            let range = *ranges.get(&l.name).ok_or_else(|| EngineError::Layer {
                layer: l.name.clone(),
                detail: "no calibrated range for its input activation; run calibration with \
                         this policy first"
                    .into(),
            })?;
            let up =
                UniformParams::from_values(&[range.0, range.1], &TensorLayout::flat(2), &ascheme)
                    .map_err(|e| EngineError::Quant {
                    what: format!("layer '{}' input activation", l.name),
                    source: e,
                })?;
            let ap = ActParams::from_uniform(&up).map_err(|e| EngineError::Layer {
                layer: l.name.clone(),
                detail: e.to_string(),
            })?;
            let gi = find(&mut parent, l.input);
            group_params.entry(gi).or_insert(ap);
            layer_in.insert(l.name.clone(), ap);
            weight_schemes.insert(l.name.clone(), wscheme);
        }
        // Groups without a layer reader need ranges of their own.
        let mut missing: Vec<(usize, String)> = Vec::new();
        for (t, &is_head) in head.iter().enumerate() {
            if self.tensors[t].float || !is_head {
                continue;
            }
            let gi = find(&mut parent, t);
            if group_params.contains_key(&gi) {
                continue;
            }
            match tensor_ranges.get(&self.tensors[t].name) {
                Some(&(lo, hi)) => {
                    group_params.insert(gi, tensor_params(&self.tensors[t].name, lo, hi)?);
                }
                None => missing.push((t, why(&self, t))),
            }
        }
        if !missing.is_empty() {
            let Some((images, n)) = data else {
                let (t, why) = &missing[0];
                return Err(EngineError::MissingRange {
                    tensor: self.tensors[*t].name.clone(),
                    why: why.clone(),
                });
            };
            let measured = self.float_ranges(images, n)?;
            for (t, _) in &missing {
                let (lo, hi) = measured[*t];
                let gi = find(&mut parent, *t);
                group_params.insert(gi, tensor_params(&self.tensors[*t].name, lo, hi)?);
            }
        }
        // Pass 3: integer steps.
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(nt);
        for t in 0..nt {
            let params = if self.tensors[t].float {
                None
            } else {
                let gi = find(&mut parent, t);
                Some(*group_params.get(&gi).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "tensor '{}' got no quantization",
                        self.tensors[t].name
                    ))
                })?)
            };
            tensors.push(TensorInfo {
                name: self.tensors[t].name.clone(),
                shape: self.tensors[t].shape.clone(),
                params,
            });
        }
        let p_of = |tensors: &[TensorInfo], t: usize| -> Result<ActParams> {
            tensors[t].params.ok_or_else(|| {
                EngineError::Invalid(format!("tensor '{}' holds no codes", tensors[t].name))
            })
        };
        let mut steps = Vec::with_capacity(self.steps.len());
        let mut weights = Vec::new();
        for st in self.steps {
            match st {
                FStep::Quantize { input, output, ops } => {
                    steps.push(Step::Quantize { input, output, ops })
                }
                FStep::Dequantize { input, output } => {
                    steps.push(Step::Dequantize { input, output })
                }
                FStep::Softmax {
                    name,
                    input,
                    output,
                    outer,
                    len,
                    inner,
                } => steps.push(Step::Softmax {
                    name,
                    input,
                    output,
                    outer,
                    len,
                    inner,
                }),
                FStep::Clamp {
                    name,
                    input,
                    output,
                    lo,
                    hi,
                } => {
                    let r = p_of(&tensors, output)?.clamped_range(lo, hi);
                    steps.push(Step::Clamp {
                        name,
                        input,
                        output,
                        lo: r.qmin,
                        hi: r.qmax,
                    });
                }
                FStep::MaxPool(fp) => steps.push(Step::MaxPool(pool_step(fp, Vec::new()))),
                FStep::Transpose(t) => steps.push(Step::Transpose(t)),
                FStep::Lookup {
                    name,
                    input,
                    output,
                    function,
                } => {
                    let table = function.table(&p_of(&tensors, input)?, &p_of(&tensors, output)?);
                    steps.push(Step::Lookup(LookupStep {
                        name,
                        input,
                        output,
                        function,
                        table,
                    }));
                }
                FStep::Mul {
                    name,
                    a,
                    b,
                    output,
                    inner,
                } => {
                    let (pa, pb, po) = (
                        p_of(&tensors, a)?,
                        p_of(&tensors, b)?,
                        p_of(&tensors, output)?,
                    );
                    let m = pa.scale as f64 * pb.scale as f64 / po.scale as f64;
                    steps.push(Step::Mul(MulStep {
                        multiplier: dyadic(&name, m)?,
                        range: po.range(),
                        name,
                        a,
                        b,
                        output,
                        inner,
                    }));
                }
                FStep::Concat {
                    name,
                    inputs,
                    output,
                    outer,
                    blocks,
                } => {
                    let po = p_of(&tensors, output)?;
                    let multipliers = inputs
                        .iter()
                        .map(|&t| {
                            let pi = p_of(&tensors, t)?;
                            if pi == po {
                                Ok(None)
                            } else {
                                dyadic(&name, pi.scale as f64 / po.scale as f64).map(Some)
                            }
                        })
                        .collect::<Result<_>>()?;
                    steps.push(Step::Concat(ConcatStep {
                        name,
                        inputs,
                        output,
                        outer,
                        blocks,
                        multipliers,
                    }));
                }
                FStep::AvgPool(fp) => {
                    let (si, so) = (
                        p_of(&tensors, fp.input)?.scale,
                        p_of(&tensors, fp.output)?.scale,
                    );
                    let win = fp.geo.kernel[0] * fp.geo.kernel[1];
                    let mults = (1..=win)
                        .map(|n| dyadic(&fp.name, si as f64 / (so as f64 * n as f64)))
                        .collect::<Result<_>>()?;
                    steps.push(Step::AvgPool(pool_step(fp, mults)));
                }
                FStep::Add {
                    name,
                    a,
                    b,
                    output,
                    lo,
                    hi,
                    b_inner,
                } => {
                    let (pa, pb, po) = (
                        p_of(&tensors, a)?,
                        p_of(&tensors, b)?,
                        p_of(&tensors, output)?,
                    );
                    let (ma, mb) = (
                        pa.scale as f64 / po.scale as f64,
                        pb.scale as f64 / po.scale as f64,
                    );
                    let shift = dyadic(&name, ma.max(mb))?.shift();
                    let scale = 2f64.powi(shift as i32);
                    steps.push(Step::Add(AddStep {
                        range: po.clamped_range(lo, hi),
                        name,
                        a,
                        b,
                        output,
                        ma: (ma * scale).round() as i64,
                        mb: (mb * scale).round() as i64,
                        shift,
                        b_inner,
                    }));
                }
                FStep::Layer(l) => {
                    let want = layer_in[&l.name];
                    let mut input = l.input;
                    let have = p_of(&tensors, input)?;
                    if have != want {
                        let t = tensors.len();
                        tensors.push(TensorInfo {
                            name: format!("{}:in", l.name),
                            shape: tensors[input].shape.clone(),
                            params: Some(want),
                        });
                        steps.push(Step::Requant {
                            name: l.name.clone(),
                            input,
                            output: t,
                            multiplier: dyadic(&l.name, have.scale as f64 / want.scale as f64)?,
                        });
                        input = t;
                    }
                    let out = if l.float_out {
                        None
                    } else {
                        Some(p_of(&tensors, l.output)?)
                    };
                    let (step, w) =
                        quantize_layer(l, input, want, &weight_schemes, out, weights.len())?;
                    weights.push(w);
                    steps.push(Step::Layer(step));
                }
            }
        }
        let model = QuantModel {
            name: self.name,
            tensors,
            steps,
            weights,
            input: self.input,
            output: self.output,
            fast: Default::default(),
        };
        model.validate()?;
        Ok(model)
    }
}

fn why(p: &Plan, t: usize) -> String {
    let readers: Vec<&FStep> = p.steps.iter().filter(|s| s.inputs().contains(&t)).collect();
    if readers.iter().any(|s| matches!(s, FStep::AvgPool(_))) {
        "it is the input of an average pool".into()
    } else if readers.iter().any(|s| matches!(s, FStep::Add { .. })) {
        "it is an operand of a residual Add".into()
    } else if readers.iter().any(|s| matches!(s, FStep::Concat { .. })) {
        "it is an input of a Concat".into()
    } else if readers.iter().any(|s| matches!(s, FStep::Mul { .. })) {
        "it is an operand of a Mul".into()
    } else if readers.iter().any(|s| matches!(s, FStep::Lookup { .. })) {
        "it is the input of a Sigmoid / Tanh / LeakyRelu table".into()
    } else {
        "no layer reads it".into()
    }
}

fn clamp_f64(v: f64, lo: Option<f32>, hi: Option<f32>) -> f64 {
    let v = lo.map_or(v, |l| v.max(l as f64));
    hi.map_or(v, |h| v.min(h as f64))
}

fn dyadic(name: &str, m: f64) -> Result<Dyadic> {
    Dyadic::from_real(m).map_err(|e| EngineError::Layer {
        layer: name.to_string(),
        detail: format!("scale ratio cannot be a dyadic multiplier: {e}"),
    })
}

/// 8-bit asymmetric min-max quantization of a tensor without a layer reader.
fn tensor_params(name: &str, lo: f32, hi: f32) -> Result<ActParams> {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 0.0) };
    let up = UniformParams::from_range(lo, hi, 8, false).map_err(|e| EngineError::Quant {
        what: format!("tensor '{name}'"),
        source: e,
    })?;
    ActParams::from_uniform(&up)
}

fn check_scheme(layer: &str, role: &str, s: &QScheme) -> Result<()> {
    let bad = |d: String| {
        Err(EngineError::Layer {
            layer: layer.to_string(),
            detail: format!("{role} scheme {s}: {d}"),
        })
    };
    if !matches!(s.kind, QuantKind::Uniform | QuantKind::UniformPow2) {
        return bad(format!(
            "{} has no integer kernel; the engine runs uniform and uniform-pow2 schemes",
            s.kind
        ));
    }
    if s.rounding != Rounding::Nearest {
        return bad("stochastic rounding is for training; use nearest rounding".into());
    }
    if !(2..=8).contains(&s.bits) {
        return bad("the engine supports 2 to 8 bits".into());
    }
    match (role, s.granularity) {
        ("weight", Granularity::Group(_)) => {
            bad("per-group weights are not supported; use per channel or per tensor".into())
        }
        ("weight", _) if !s.symmetric => {
            bad("the integer kernels need symmetric weights (zero point 0)".into())
        }
        ("activation", g) if g != Granularity::Tensor => {
            bad("activations must be quantized per tensor".into())
        }
        _ => Ok(()),
    }
}

fn pool_step(fp: FPool, multipliers: Vec<Dyadic>) -> PoolStep {
    PoolStep {
        name: fp.name,
        input: fp.input,
        output: fp.output,
        in_shape: fp.geo.in_shape,
        out_hw: fp.geo.out_hw,
        kernel: fp.geo.kernel,
        strides: fp.geo.strides,
        pads: fp.geo.pads,
        dilations: fp.geo.dilations,
        count_include_pad: fp.count_include_pad,
        multipliers,
    }
}

/// Folds `y = k·x + t` (per output channel) into a layer.
fn fold_affine(step: &mut FStep, node: &Node, a: Affine) -> Result<()> {
    let FStep::Layer(l) = step else {
        return Err(unsupported(
            node,
            "it can only be folded into a Conv / Gemm / MatMul",
        ));
    };
    if l.clamped {
        return Err(unsupported(
            node,
            "it follows a Relu / Clip already fused into the layer and cannot be folded",
        ));
    }
    let cout = l.wshape[0];
    if a.k.len() != cout || a.t.len() != cout {
        return Err(unsupported(
            node,
            format!("its parameters do not have one value per output channel ({cout})"),
        ));
    }
    let per = l.w.len() / cout.max(1);
    for (c, row) in l.w.chunks_exact_mut(per.max(1)).enumerate() {
        for w in row {
            *w *= a.k[c];
        }
        l.bias[c] = l.bias[c] * a.k[c] + a.t[c];
    }
    Ok(())
}

/// Fuses a clamp into a Layer or Add step; false if the step cannot take one.
fn fuse_clamp(step: &mut FStep, lo: Option<f32>, hi: Option<f32>) -> bool {
    let (slo, shi) = match step {
        FStep::Layer(l) => {
            l.clamped = true;
            (&mut l.lo, &mut l.hi)
        }
        FStep::Add { lo, hi, .. } => (lo, hi),
        _ => return false,
    };
    if let Some(lo) = lo {
        *slo = Some(slo.map_or(lo, |s| s.max(lo)));
    }
    if let Some(hi) = hi {
        *shi = Some(shi.map_or(hi, |s| s.min(hi)));
    }
    true
}

/// The layer of node `node` before quantization: weights as `[cout, cin/g, kh, kw]` or
/// `[n, k]` (Gemm's `alpha` folded in), bias per output channel (Gemm's `beta·C`).
fn build_layer(
    g: &Graph,
    node: &Node,
    layer: &mixprec_graph::Layer,
    _x_v: ValueId,
    x_s: usize,
    x_shape: &[usize],
    out_shape: &[usize],
) -> Result<FLayer> {
    let wt = &g.initializers[&layer.weight];
    let wv = wt.to_f32();
    let bias_t = layer.bias.and_then(|b| g.initializers.get(&b));
    let base = |geometry, w: Vec<f32>, wshape: Vec<usize>, bias: Vec<f32>| FLayer {
        name: layer.name.clone(),
        input: x_s,
        output: 0,
        w,
        wshape,
        bias,
        geometry,
        lo: None,
        hi: None,
        clamped: false,
        float_out: false,
    };
    match &node.op {
        Op::Conv { window, group } => {
            let (&[co, cig, kh, kw], &[c, h, w]) = (wt.shape.as_slice(), x_shape) else {
                return Err(unsupported(
                    node,
                    "only 2-D convolutions of NCHW tensors (weight [Cout, Cin/g, kh, kw])",
                ));
            };
            let mut win = window.clone();
            if win.kernel.is_empty() {
                win.kernel = vec![kh, kw];
            }
            let (b, e, o) = win
                .resolve(&[h, w])
                .ok_or_else(|| unsupported(node, "invalid convolution window"))?;
            let get = |v: &Vec<usize>, i: usize| v.get(i).copied().unwrap_or(1);
            let params = Conv2dParams {
                strides: [get(&win.strides, 0), get(&win.strides, 1)],
                pads: [b[0], b[1], e[0], e[1]],
                dilations: [get(&win.dilations, 0), get(&win.dilations, 1)],
                groups: *group,
            };
            if out_shape != [co, o[0], o[1]] || *group == 0 || c != cig * group {
                return Err(unsupported(
                    node,
                    format!("output {out_shape:?} / groups {group} disagree with the weights"),
                ));
            }
            let bias = match bias_t {
                Some(t) if t.len() == co => t.to_f32(),
                Some(_) => return Err(unsupported(node, "bias must have Cout elements")),
                None => vec![0.0; co],
            };
            Ok(base(
                LayerGeometry::Conv {
                    input: [c, h, w],
                    output: [co, o[0], o[1]],
                    params,
                },
                wv,
                vec![co, cig, kh, kw],
                bias,
            ))
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            if *trans_a {
                return Err(unsupported(node, "transA = 1 is not supported"));
            }
            let &[r0, r1] = wt.shape.as_slice() else {
                return Err(unsupported(node, "the weight must be 2-D"));
            };
            let (n, k) = if *trans_b { (r0, r1) } else { (r1, r0) };
            if x_shape != [k] || out_shape != [n] {
                return Err(unsupported(
                    node,
                    format!("input {x_shape:?} / output {out_shape:?} per sample do not fit [{k}] -> [{n}]"),
                ));
            }
            let mut w = if *trans_b { wv } else { transpose(&wv, k, n) };
            w.iter_mut().for_each(|v| *v *= alpha);
            let bias = match node.input(2).and_then(|v| g.initializers.get(&v)) {
                None => vec![0.0; n],
                Some(t) => per_channel(t, &[1, n], 1)
                    .ok_or_else(|| unsupported(node, "C must broadcast per output channel"))?
                    .into_iter()
                    .map(|b| b * beta)
                    .collect(),
            };
            Ok(base(
                LayerGeometry::Gemm { rows: 1, k, n },
                w,
                vec![n, k],
                bias,
            ))
        }
        _ => {
            let &[k, n] = wt.shape.as_slice() else {
                return Err(unsupported(node, "the constant weight must be 2-D"));
            };
            if x_shape.last() != Some(&k) || out_shape.last() != Some(&n) {
                return Err(unsupported(node, "shapes do not fit the weight"));
            }
            let rows = x_shape[..x_shape.len() - 1].iter().product();
            Ok(base(
                LayerGeometry::Gemm { rows, k, n },
                transpose(&wv, k, n),
                vec![n, k],
                vec![0.0; n],
            ))
        }
    }
}

/// `[r, c]` → `[c, r]`.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}

/// Pass 3 for one layer: weight codes, `i32` bias, multipliers.
fn quantize_layer(
    l: FLayer,
    input: usize,
    x: ActParams,
    schemes: &HashMap<String, QScheme>,
    out: Option<ActParams>,
    index: usize,
) -> Result<(LayerStep, LayerWeights)> {
    let scheme = schemes[&l.name];
    let lerr = |d: String| EngineError::Layer {
        layer: l.name.clone(),
        detail: d,
    };
    let cout = l.wshape[0];
    let mut up = UniformParams::from_values(&l.w, &TensorLayout::new(l.wshape.clone(), 0), &scheme)
        .map_err(|e| EngineError::Quant {
            what: format!("layer '{}' weight", l.name),
            source: e,
        })?;
    // A (near-)dead channel after batch-norm folding has a vanishing weight scale, which would
    // push its bias beyond i32 (or its multiplier below 2^-63): raise such scales to the
    // smallest one that keeps |bias| <= 2^30 and the multiplier >= 2^-50. Its weights then
    // round to (almost) zero, which they are anyway.
    let sx = x.scale as f64;
    let n_blocks = up.scale.len();
    for (b, s) in up.scale.iter_mut().enumerate() {
        let chans = if n_blocks == 1 { 0..cout } else { b..b + 1 };
        let bmax = chans.map(|c| l.bias[c].abs() as f64).fold(0.0, f64::max);
        let mut floor = bmax / (sx * (1u64 << 30) as f64);
        if let Some(o) = out {
            floor = floor.max(o.scale as f64 * 2f64.powi(-50) / sx);
        }
        if (*s as f64) < floor {
            *s = (floor * (1.0 + 1e-6)) as f32;
        }
    }
    if up.zero_point.iter().any(|&z| z != 0) {
        return Err(lerr("weight zero point must be 0 (symmetric)".into()));
    }
    let per = l.w.len() / cout.max(1);
    let block = |i: usize| {
        if up.scale.len() == 1 {
            0
        } else {
            i / per.max(1)
        }
    };
    let codes: Vec<i8> =
        l.w.iter()
            .enumerate()
            .map(|(i, &v)| up.quantize_value(v, block(i)) as i8)
            .collect();
    let sw: Vec<f64> = (0..cout)
        .map(|c| up.scale[if up.scale.len() == 1 { 0 } else { c }] as f64)
        .collect();
    let bias = l
        .bias
        .iter()
        .zip(&sw)
        .map(|(&b, &s)| {
            let q = (b as f64 / (sx * s)).round();
            if q.abs() < i32::MAX as f64 {
                Ok(q as i32)
            } else {
                Err(lerr(format!(
                    "bias {b} does not fit an i32 at scale {}",
                    sx * s
                )))
            }
        })
        .collect::<Result<Vec<i32>>>()?;
    let out = match out {
        None => LayerOutput::Float {
            scales: sw.iter().map(|s| sx * s).collect(),
            lo: l.lo,
            hi: l.hi,
        },
        Some(o) => LayerOutput::Codes {
            multipliers: sw
                .iter()
                .map(|s| dyadic(&l.name, sx * s / o.scale as f64))
                .collect::<Result<_>>()?,
            range: o.clamped_range(l.lo, l.hi),
        },
    };
    let groups = match &l.geometry {
        LayerGeometry::Conv { params, .. } => params.groups,
        LayerGeometry::Gemm { .. } => 1,
    };
    checked_numel(&l.wshape).ok_or_else(|| lerr("weight too large".into()))?;
    let packed = pack_bits(&codes, scheme.bits as u32).map_err(|e| lerr(e.to_string()))?;
    let weights = LayerWeights::new(l.wshape.clone(), groups, packed)?;
    Ok((
        LayerStep {
            name: l.name,
            input,
            output: l.output,
            weights: index,
            bias,
            geometry: l.geometry,
            out,
        },
        weights,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_constants_follow_broadcasting() {
        let c = Tensor::f32(vec![3, 1, 1], vec![1.0, 2.0, 3.0]).unwrap();
        assert_eq!(per_channel(&c, &[1, 3, 2, 2], 1), Some(vec![1.0, 2.0, 3.0]));
        // [3] broadcasts along W, not along channels.
        let c = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        assert_eq!(per_channel(&c, &[1, 3, 2, 3], 1), None);
        assert_eq!(per_channel(&c, &[1, 3], 1), Some(vec![1.0, 2.0, 3.0]));
        // A scalar is the same for every channel.
        let c = Tensor::f32(vec![], vec![0.5]).unwrap();
        assert_eq!(per_channel(&c, &[1, 2, 4, 4], 1), Some(vec![0.5, 0.5]));
        let c = Tensor::f32(vec![2, 2], vec![1.0; 4]).unwrap();
        assert_eq!(per_channel(&c, &[1, 3], 1), None);
    }

    #[test]
    fn input_constants_take_the_longest_runs_and_apply_in_f32() {
        let out = [1, 2, 2, 3];
        let c = Tensor::f32(vec![], vec![2.0]).unwrap();
        assert_eq!(input_constant(&c, &out), Some((vec![2.0], 12)));
        let c = Tensor::f32(vec![1, 2, 1, 1], vec![1.0, 4.0]).unwrap();
        assert_eq!(input_constant(&c, &out), Some((vec![1.0, 4.0], 6)));
        // Along W: every element has its own value.
        let c = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        let (v, inner) = input_constant(&c, &out).unwrap();
        assert_eq!((v.len(), inner), (12, 1));
        assert_eq!(&v[..4], &[1.0, 2.0, 3.0, 1.0]);
        // Not broadcastable, or broadcasting over the batch.
        let c = Tensor::f32(vec![4], vec![1.0; 4]).unwrap();
        assert_eq!(input_constant(&c, &out), None);
        let c = Tensor::f32(vec![2, 1, 1, 1], vec![1.0; 2]).unwrap();
        assert_eq!(input_constant(&c, &out), None);

        let op = |kind| InputOp {
            name: "n".into(),
            kind,
            values: vec![2.0, 4.0],
            inner: 2,
        };
        // Two samples of [2 channels, 2 elements].
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let run = |kind| {
            let mut v = x.to_vec();
            op(kind).apply(&mut v);
            v
        };
        assert_eq!(run(InputOpKind::Add), [3., 4., 7., 8., 7., 8., 11., 12.]);
        assert_eq!(run(InputOpKind::Sub), [-1., 0., -1., 0., 3., 4., 3., 4.]);
        assert_eq!(
            run(InputOpKind::SubFrom),
            [1., 0., 1., 0., -3., -4., -3., -4.]
        );
        assert_eq!(
            run(InputOpKind::Mul),
            [2., 4., 12., 16., 10., 12., 28., 32.]
        );
        assert_eq!(
            run(InputOpKind::Div),
            [0.5, 1., 0.75, 1., 2.5, 3., 1.75, 2.]
        );
        assert_eq!(
            run(InputOpKind::DivInto),
            [2., 1., 4. / 3., 1., 0.4, 2. / 6., 4. / 7., 0.5]
        );
    }

    #[test]
    fn schemes_without_integer_kernels_are_rejected_with_the_reason() {
        let ok = QScheme::new(QuantKind::Uniform, 4, true, Granularity::Channel);
        assert!(check_scheme("fc", "weight", &ok).is_ok());
        let asym = QScheme::new(QuantKind::Uniform, 4, false, Granularity::Channel);
        let e = check_scheme("fc", "weight", &asym).unwrap_err().to_string();
        assert!(e.contains("'fc'") && e.contains("symmetric"), "{e}");
        let wide = QScheme::new(QuantKind::Uniform, 12, false, Granularity::Tensor);
        let e = check_scheme("fc", "activation", &wide)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 to 8 bits"), "{e}");
        let grp = QScheme::new(QuantKind::Uniform, 4, true, Granularity::Group(8));
        assert!(check_scheme("fc", "weight", &grp).is_err());
        let ch = QScheme::new(QuantKind::Uniform, 8, false, Granularity::Channel);
        assert!(check_scheme("fc", "activation", &ch).is_err());
    }
}
