//! QDQ ONNX export of a quantized model, in two forms:
//!
//! * **Full** ([`qdq_model_full`], the form ONNX Runtime fuses into integer kernels):
//!   BatchNormalization and per-channel constant Add / Sub following a Conv / Gemm are folded
//!   into its weights and bias (MatMul + bias becomes Gemm), the folded weights are quantized
//!   with the policy's scheme (symmetric `int8` per channel, zero point 0, for the usual
//!   policies), biases become `int32` at scale `S_x · S_w`, and every tensor an integer kernel
//!   reads or writes carries `QuantizeLinear → DequantizeLinear`: each layer input, each layer
//!   output (after a following Relu / Clip, which ONNX Runtime then drops because the `uint8`
//!   zero point is the clamp), both inputs and the output of a residual Add, and the input
//!   and output of MaxPool / AveragePool / GlobalAveragePool. Tensors joined by
//!   scale-preserving operators (MaxPool, Flatten, Reshape, Squeeze, Unsqueeze, Identity,
//!   Dropout) share one quantization ([`QdqPlan`]); a group that some layer reads takes that
//!   layer's input quantization (policy scheme + calibrated range, as [`crate::FakeQuant`]);
//!   every other group (residual branches, average-pool inputs) is 8-bit asymmetric on a
//!   range calibrated for it ([`calibrate_tensors`]). These are the integer engine's choices
//!   (`mixprec-engine`'s lowering), so the export and the engine quantize the same tensors
//!   the same way. A layer whose output only reaches the graph output (through Softmax) keeps
//!   a float output (ONNX Runtime: QGemm / MatMulIntegerToFloat with float output).
//! * **Inputs** ([`qdq_model`]): the float graph with Q/DQ on the input activation of every
//!   layer whose activation the policy quantizes, and integer weight initializers behind
//!   `DequantizeLinear` (per-channel `axis`) — exactly the fake-quant executor's arithmetic,
//!   but ONNX Runtime then runs float kernels on dequantized tensors.
//!
//! Recurrent layers (RNN / GRU / LSTM) get `DequantizeLinear` on both W (input 1) and R
//! (input 2), per channel along axis 1 (the gates·H rows) or per tensor, in either form; their
//! bias B stays float and the recurrent operator itself runs in float.
//!
//! Sources:
//! * Survey §2.4, Eq. 8 and 10: `q = clamp(round(x / S) + Z, qmin, qmax)`, `x̂ = S (q − Z)`,
//!   which is exactly ONNX `QuantizeLinear` / `DequantizeLinear` (round half to even). The
//!   scales and zero points are the ones [`crate::FakeQuant`] uses, so the dequantized weights
//!   equal the fake-quantized ones bit for bit (inputs form; the full form quantizes the
//!   BN-folded weights, identical codes per channel up to float rounding) and activations are
//!   rounded the same way.
//! * Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021, Eq. 24–25): a mixed-precision policy
//!   deployed as an integer graph, batch norm folded before quantization, `int32` biases at
//!   `S_x · S_w`; QDQ is the form ONNX Runtime and TensorRT lower to integer kernels.
//! * Codes narrower than their container (e.g. 4-bit weights in an `int8` initializer, or the
//!   restricted symmetric range `[−127, 127]`) are stored already clipped; activations whose
//!   code range is narrower than `uint8`/`int8` get a `Clip` to `[S (qmin − Z), S (qmax − Z)]`
//!   before `QuantizeLinear`. With [`QdqOptions::int4`], weights of at most 4 bits are stored
//!   as `INT4`/`UINT4` (opset 21, two codes per byte).
//!
//! What ONNX Runtime (1.32, CPU) does with each form, measured by `scripts/check_qdq_ort.py`:
//! the full form at 2–8-bit weights in `int8` containers fuses completely (resnet8: 9
//! QLinearConv, 3 QLinearAdd, 1 QLinearAveragePool, 1 QGemm; mnist-8: 2 QLinearConv, uint8
//! MaxPool, 1 QGemm). `INT4` weights are not fused (it has no int4 convolution): their
//! DequantizeLinear stays and the layer runs as a float Conv, so `int4` saves file size, not
//! time. Sub-8-bit activations need the `Clip` above, which also blocks fusion.
//!
//! Only `uniform` and `uniform-pow2` schemes with nearest rounding, per tensor or per channel,
//! are representable; anything else is a clear error naming the layer.
//!
//! Complexity: O(parameters) to fold and quantize the weights, O(nodes · values) to plan and
//! rewrite the graph; tensor calibration is one float forward pass over the calibration set.

use std::collections::BTreeMap;
use std::path::Path;

use mixprec_data::Dataset;
use mixprec_graph::onnx_proto::{self as pb, attr_type, data_type};
use mixprec_graph::{Graph, Layer, LayerKind, Node, Op, Tensor, ValueId};
use mixprec_quant::build_observer;
use mixprec_quant::UniformParams;
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind, Rounding, TensorLayout};
use prost::Message;

use crate::error::{ExecError, Result};
use crate::executor::{Executor, RunOptions};
use crate::fakequant::{check_policy, weight_channel_axis, ActivationRanges};
use crate::ops::to_vec_f32;

/// ONNX `UINT4` element type (opset 21).
pub const UINT4: i32 = 21;
/// ONNX `INT4` element type (opset 21).
pub const INT4: i32 = 22;

/// Options of the QDQ export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QdqOptions {
    /// Store weights of at most 4 bits as `INT4` / `UINT4` (raises the opset to 21); otherwise
    /// they are held in `int8` / `uint8` containers.
    pub int4: bool,
}

/// A weight quantized for export: integer codes and per-block parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// Integer codes in the weight's stored layout.
    pub codes: Vec<i32>,
    /// The uniform parameters (one block per tensor or per channel along `axis`).
    pub params: UniformParams,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// The channel axis (per channel) or `None` (per tensor).
    pub axis: Option<usize>,
}

impl QuantizedWeight {
    /// The dequantized values `S (q − Z)` (what `DequantizeLinear` computes).
    pub fn dequantize(&self) -> Vec<f32> {
        let inner = self.inner();
        let channels = self.channels();
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let b = if self.axis.is_some() {
                    (i / inner) % channels
                } else {
                    0
                };
                (q - self.params.zero_point[b]) as f32 * self.params.scale[b]
            })
            .collect()
    }

    fn inner(&self) -> usize {
        match self.axis {
            Some(a) => self.shape[a + 1..].iter().product::<usize>().max(1),
            None => 1,
        }
    }

    fn channels(&self) -> usize {
        match self.axis {
            Some(a) => self.shape[a].max(1),
            None => 1,
        }
    }
}

fn check_representable(layer: &str, role: &str, s: &QScheme) -> Result<()> {
    if !matches!(s.kind, QuantKind::Uniform | QuantKind::UniformPow2) {
        return Err(ExecError::Invalid(format!(
            "layer '{layer}' {role}: {} cannot be written as QuantizeLinear/DequantizeLinear (use uniform or uniform-pow2)",
            s.kind
        )));
    }
    if s.rounding != Rounding::Nearest {
        return Err(ExecError::Invalid(format!(
            "layer '{layer}' {role}: stochastic rounding has no QDQ form (use nearest rounding)"
        )));
    }
    if s.bits > 8 {
        return Err(ExecError::Invalid(format!(
            "layer '{layer}' {role}: {} bits do not fit the 8-bit QDQ containers (use at most 8 bits)",
            s.bits
        )));
    }
    Ok(())
}

/// Quantizes `layer`'s weight of `graph` under `scheme` exactly as [`crate::FakeQuant`] does
/// (same parameters, same nearest-even rounding and clamp).
pub fn quantize_weight(graph: &Graph, layer: &Layer, scheme: &QScheme) -> Result<QuantizedWeight> {
    check_representable(&layer.name, "weight", scheme)?;
    if matches!(scheme.granularity, Granularity::Group(_)) {
        return Err(ExecError::Invalid(format!(
            "layer '{}' weight: per-group scales have no opset-13 QDQ form (use tensor or channel)",
            layer.name
        )));
    }
    let w = graph.initializers.get(&layer.weight).ok_or_else(|| {
        ExecError::Invalid(format!("layer '{}' has no weight initializer", layer.name))
    })?;
    let values = w
        .as_f32()
        .ok_or_else(|| ExecError::Invalid(format!("layer '{}' weight is not float", layer.name)))?;
    let axis = weight_channel_axis(graph, layer);
    let layout = TensorLayout::new(w.shape.clone(), axis);
    let params = UniformParams::from_values(values, &layout, scheme)
        .map_err(|e| ExecError::Invalid(format!("layer '{}' weight: {e}", layer.name)))?;
    let mut qw = QuantizedWeight {
        codes: Vec::new(),
        axis: params.axis,
        params,
        shape: w.shape.clone(),
    };
    let (inner, channels) = (qw.inner(), qw.channels());
    let p = &qw.params;
    let (lo, hi) = (p.qmin as f32, p.qmax as f32);
    qw.codes = values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let b = if p.axis.is_some() {
                (i / inner) % channels
            } else {
                0
            };
            let z = p.zero_point[b] as f32;
            ((x / p.scale[b]).round_ties_even() + z).clamp(lo, hi) as i32
        })
        .collect();
    Ok(qw)
}

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: Vec<i64>, v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims,
        data_type: data_type::FLOAT,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An integer tensor of element type `dt` (INT8, UINT8, INT4, UINT4) holding `codes`.
fn int_tensor(name: &str, dims: Vec<i64>, dt: i32, codes: &[i32]) -> pb::TensorProto {
    let raw_data = match dt {
        INT4 | UINT4 => codes
            .chunks(2)
            .map(|c| {
                let lo = (c[0] as u8) & 0x0f;
                let hi = c.get(1).map_or(0, |&v| (v as u8) & 0x0f);
                lo | (hi << 4)
            })
            .collect(),
        _ => codes.iter().map(|&c| c as i8 as u8).collect(),
    };
    pb::TensorProto {
        name: name.into(),
        dims,
        data_type: dt,
        raw_data,
        ..Default::default()
    }
}

/// The container element type of codes in `[qmin, qmax]` with `bits` bits.
fn container(qmin: i32, bits: u8, int4: bool) -> i32 {
    match (qmin < 0, int4 && bits <= 4) {
        (true, true) => INT4,
        (false, true) => UINT4,
        (true, false) => data_type::INT8,
        (false, false) => data_type::UINT8,
    }
}

fn container_range(dt: i32) -> (i32, i32) {
    match dt {
        INT4 => (-8, 7),
        UINT4 => (0, 15),
        data_type::INT8 => (-128, 127),
        _ => (0, 255),
    }
}

/// Builds the QDQ ONNX model of `graph` under `policy`, with the activation clip ranges from
/// [`crate::calibrate`].
pub fn qdq_model(
    graph: &Graph,
    policy: &Policy,
    ranges: &ActivationRanges,
    opts: QdqOptions,
) -> Result<pb::ModelProto> {
    check_policy(graph, policy)?;
    let mut model = mixprec_graph::to_model_proto(graph)?;
    let mut int4_used = false;
    let uses = graph.use_counts();
    let gp = model
        .graph
        .as_mut()
        .ok_or_else(|| ExecError::Invalid("exported model has no graph".into()))?;
    let mut drop_inits: Vec<String> = Vec::new();
    // Q/DQ nodes to insert before the node of the given name.
    let mut before: BTreeMap<String, Vec<pb::NodeProto>> = BTreeMap::new();
    let mut rewires: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    // New name of a recurrent layer's R (node input 2).
    let mut r_rewires: BTreeMap<String, String> = BTreeMap::new();
    for layer in graph.layers() {
        let Some(lp) = policy.get(&layer.name) else {
            continue;
        };
        let node = &graph.nodes[layer.node];
        let mut inserted = Vec::new();
        let mut new_x = None;
        let mut new_w = None;
        if lp.activation.is_some() {
            let (p, bits) = layer_input_params(policy, ranges, &layer.name)?;
            let x = input_name(graph, node, &layer.name)?;
            let (nodes, dq) = act_qdq(gp, &format!("{}::input", layer.name), &x, &p, bits);
            inserted.extend(nodes);
            new_x = Some(dq);
        }
        if let Some(scheme) = lp.weight {
            let (_, dq, int4) = weight_dq(gp, graph, &layer, &scheme, opts.int4)?;
            int4_used |= int4;
            new_w = Some(dq.output[0].clone());
            inserted.push(dq);
            if uses[layer.weight] <= 1 {
                drop_inits.push(graph.values[layer.weight].name.clone());
            }
            if let Some((dq, int4, drop)) =
                recurrence_dq(gp, graph, &layer, &scheme, opts.int4, &uses)?
            {
                int4_used |= int4;
                r_rewires.insert(node.name.clone(), dq.output[0].clone());
                inserted.push(dq);
                drop_inits.extend(drop);
            }
        }
        if !inserted.is_empty() {
            before.insert(node.name.clone(), inserted);
            rewires.insert(node.name.clone(), (new_x, new_w));
        }
    }
    gp.initializer.retain(|t| !drop_inits.contains(&t.name));
    let old = std::mem::take(&mut gp.node);
    for mut n in old {
        if let Some(ins) = before.remove(&n.name) {
            gp.node.extend(ins);
            let (x, w) = &rewires[&n.name];
            if let Some(x) = x {
                n.input[0] = x.clone();
            }
            if let Some(w) = w {
                n.input[1] = w.clone();
            }
            if let Some(r) = r_rewires.get(&n.name) {
                n.input[2] = r.clone();
            }
        }
        gp.node.push(n);
    }
    if let Some((name, _)) = before.into_iter().next() {
        return Err(ExecError::Invalid(format!(
            "layer '{name}' was not found in the exported graph"
        )));
    }
    if int4_used {
        require_int4_opset(&mut model);
    }
    Ok(model)
}

/// Raises the model to opset 21 / IR 10, the first with INT4 / UINT4 tensors.
fn require_int4_opset(model: &mut pb::ModelProto) {
    for o in &mut model.opset_import {
        if o.domain.is_empty() {
            o.version = o.version.max(21);
        }
    }
    model.ir_version = model.ir_version.max(10);
}

/// Writes the QDQ model of [`qdq_model`] to `path` (atomically).
pub fn save_qdq(
    graph: &Graph,
    policy: &Policy,
    ranges: &ActivationRanges,
    opts: QdqOptions,
    path: &Path,
) -> Result<()> {
    let model = qdq_model(graph, policy, ranges, opts)?;
    mixprec_graph::write_atomic(path, &model.encode_to_vec())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Full activation QDQ: the form ONNX Runtime fuses into integer kernels.
// ---------------------------------------------------------------------------------------------

/// How the quantization of one activation tensor of a [`QdqPlan`] is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorSource {
    /// The input quantization of this layer (policy scheme and calibrated range), as
    /// [`crate::FakeQuant`] applies it.
    Layer(String),
    /// 8-bit asymmetric with a calibrated range of its own ([`calibrate_tensors`]).
    OwnRange,
}

/// The integer-deployment form of a graph under a policy: the folded graph and the activation
/// tensors that carry Q/DQ. Tensors joined by scale-preserving operators (MaxPool, Flatten,
/// Reshape, Squeeze, Unsqueeze, Identity, Dropout) share one quantization, as in the integer
/// engine's lowering.
#[derive(Debug, Clone)]
pub struct QdqPlan {
    /// The graph with BatchNormalization and per-channel constant Add / Sub folded into the
    /// preceding integer layer (layer names unchanged, folded nodes removed).
    pub graph: Graph,
    /// Names of the nodes folded into layers.
    pub folded: Vec<String>,
    /// Quantized activation tensors (names in the folded graph) with the group each joins.
    pub tensors: Vec<(String, usize)>,
    /// Per group: where its quantization comes from.
    pub groups: Vec<TensorSource>,
}

/// True for a layer whose weight and input activation are both quantized (an integer kernel).
fn is_integer_layer(policy: &Policy, name: &str) -> bool {
    policy
        .get(name)
        .is_some_and(|lp| lp.weight.is_some() && lp.activation.is_some())
}

/// Per-output-channel affine `y = k x + t` of a node following a layer with `cout` channels,
/// when `node` is BatchNormalization or Add / Sub of a constant per channel (or scalar).
fn channel_affine(g: &Graph, node: &Node, x: ValueId, cout: usize, conv: bool) -> Option<Affine> {
    let konst = |i: usize| node.input(i).and_then(|v| g.initializers.get(&v));
    match &node.op {
        Op::BatchNorm { epsilon } => {
            if node.input(0) != Some(x) {
                return None;
            }
            let get = |i: usize| {
                konst(i)
                    .and_then(|t| t.as_f32())
                    .filter(|v| v.len() == cout)
            };
            let (scale, b, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let k: Vec<f32> = (0..cout)
                .map(|c| scale[c] / (var[c] + epsilon).sqrt())
                .collect();
            let t = (0..cout).map(|c| b[c] - mean[c] * k[c]).collect();
            Some(Affine { k, t })
        }
        Op::Add | Op::Sub => {
            let other = match (node.input(0), node.input(1)) {
                (Some(a), Some(b)) if a == x && b != x => b,
                (Some(a), Some(b)) if b == x && a != x && matches!(node.op, Op::Add) => a,
                _ => return None,
            };
            let c = g.initializers.get(&other)?;
            let v = c.as_f32()?;
            let dims: Vec<usize> = c.shape.iter().copied().skip_while(|&d| d == 1).collect();
            let per_channel = if conv {
                // NCHW output: [C, 1, 1] (or [1, C, 1, 1]) broadcasts per channel.
                dims.first() == Some(&cout)
                    && dims[1..].iter().all(|&d| d == 1)
                    && c.shape.len() >= 3
            } else {
                dims == [cout]
            };
            let t: Vec<f32> = if v.len() == 1 {
                vec![v[0]; cout]
            } else if per_channel && v.len() == cout {
                v.to_vec()
            } else {
                return None;
            };
            let t = if matches!(node.op, Op::Sub) {
                t.iter().map(|x| -x).collect()
            } else {
                t
            };
            Some(Affine {
                k: vec![1.0; cout],
                t,
            })
        }
        _ => None,
    }
}

/// Per-output-channel affine map folded into a layer.
struct Affine {
    k: Vec<f32>,
    t: Vec<f32>,
}

/// Folds BatchNormalization and per-channel constant Add / Sub into every integer layer
/// (Conv, Gemm) whose output they alone read. Returns the folded graph and the removed nodes.
fn fold_into_layers(graph: &Graph, policy: &Policy) -> Result<(Graph, Vec<String>)> {
    let mut g = graph.clone();
    let mut removed = vec![false; g.nodes.len()];
    let shapes = mixprec_graph::input_shapes_for_batch(graph, 1)
        .ok()
        .and_then(|s| mixprec_graph::infer(graph, &s).ok());
    let rank2 = |l: &Layer| {
        let node = &graph.nodes[l.node];
        let a = node
            .input(0)
            .and_then(|v| shapes.as_ref()?.shapes[v].clone());
        let w = graph.initializers.get(&l.weight).map(|t| t.shape.len());
        a.is_some_and(|s| s.len() == 2) && w == Some(2)
    };
    let mut folded = Vec::new();
    for layer in graph.layers() {
        if !is_integer_layer(policy, &layer.name) {
            continue;
        }
        let (conv, trans_b, beta) = match &g.nodes[layer.node].op {
            Op::Conv { .. } => (true, true, 1.0),
            Op::Gemm {
                trans_a: false,
                trans_b,
                beta,
                ..
            } => (false, *trans_b, *beta),
            // MatMul of a 2-D activation by a 2-D weight becomes Gemm when a bias folds in.
            Op::MatMul if rank2(&layer) => (false, false, 1.0),
            _ => continue,
        };
        let Some(w) = g.initializers.get(&layer.weight).cloned() else {
            continue;
        };
        let Some(wv) = w.as_f32().map(|v| v.to_vec()) else {
            continue;
        };
        if w.shape.len() < 2 {
            continue;
        }
        let cout = if trans_b {
            w.shape[0]
        } else {
            w.shape[w.shape.len() - 1]
        };
        let mut wv = wv;
        let bias_in = g.nodes[layer.node].input(2);
        let mut bias: Vec<f32> = match bias_in.and_then(|b| g.initializers.get(&b)) {
            None if bias_in.is_some() => continue,
            None => vec![0.0; cout],
            Some(b) => match b.as_f32() {
                Some(v) if v.len() == cout && b.shape.iter().filter(|&&d| d != 1).count() <= 1 => {
                    v.iter().map(|x| x * beta).collect()
                }
                Some(v) if v.len() == 1 => vec![v[0] * beta; cout],
                _ => continue,
            },
        };
        let mut changed = false;
        loop {
            let out = g.nodes[layer.node].outputs[0];
            if g.outputs.contains(&out) {
                break;
            }
            let readers: Vec<usize> = (0..g.nodes.len())
                .filter(|&i| !removed[i] && g.nodes[i].inputs.iter().flatten().any(|&v| v == out))
                .collect();
            let [r] = readers[..] else { break };
            let Some(a) = channel_affine(&g, &g.nodes[r], out, cout, conv) else {
                break;
            };
            let per = w.shape[1..].iter().product::<usize>().max(1);
            for (i, x) in wv.iter_mut().enumerate() {
                let c = if trans_b { i / per } else { i % cout };
                *x *= a.k[c];
            }
            for ((b, k), t) in bias.iter_mut().zip(&a.k).zip(&a.t) {
                *b = *b * k + t;
            }
            let new_out = g.nodes[r].outputs[0];
            g.nodes[layer.node].outputs[0] = new_out;
            removed[r] = true;
            folded.push(g.nodes[r].name.clone());
            changed = true;
        }
        if !changed {
            continue;
        }
        let wid = g.add_value(format!("{}::folded_weight", layer.name));
        g.initializers.insert(
            wid,
            Tensor::f32(w.shape.clone(), wv).map_err(ExecError::from)?,
        );
        let bid = g.add_value(format!("{}::folded_bias", layer.name));
        g.initializers
            .insert(bid, Tensor::f32(vec![cout], bias).map_err(ExecError::from)?);
        let node = &mut g.nodes[layer.node];
        node.inputs[1] = Some(wid);
        if node.inputs.len() < 3 {
            node.inputs.resize(3, None);
        }
        node.inputs[2] = Some(bid);
        match &mut node.op {
            Op::Gemm { beta, .. } => *beta = 1.0,
            op @ Op::MatMul => {
                *op = Op::Gemm {
                    alpha: 1.0,
                    beta: 1.0,
                    trans_a: false,
                    trans_b: false,
                }
            }
            _ => {}
        }
    }
    let mut i = 0;
    g.nodes.retain(|_| {
        i += 1;
        !removed[i - 1]
    });
    Ok((g, folded))
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Operators that move codes without changing them: their input and output share a
/// quantization.
fn scale_preserving(op: &Op) -> bool {
    matches!(
        op,
        Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Identity
            | Op::Dropout
            | Op::MaxPool(_)
    )
}

/// The full-activation QDQ plan of `graph` under `policy` (see [`QdqPlan`]).
pub fn qdq_plan(graph: &Graph, policy: &Policy) -> Result<QdqPlan> {
    check_policy(graph, policy)?;
    let (g, folded) = fold_into_layers(graph, policy)?;
    let layer_of: BTreeMap<usize, String> = g
        .layers()
        .into_iter()
        .filter(|l| is_integer_layer(policy, &l.name))
        .map(|l| (l.node, l.name))
        .collect();
    let is_const = |v: ValueId| g.initializers.contains_key(&v);
    // Tensors read by integer kernels.
    let mut quantized: Vec<bool> = vec![false; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let reads: Vec<ValueId> = match &n.op {
            _ if layer_of.contains_key(&i) => n.input(0).into_iter().collect(),
            Op::Add => match (n.input(0), n.input(1)) {
                (Some(a), Some(b)) if !is_const(a) && !is_const(b) => vec![a, b],
                _ => vec![],
            },
            Op::MaxPool(_) | Op::AveragePool { .. } | Op::GlobalAveragePool => {
                n.input(0).into_iter().collect()
            }
            _ => vec![],
        };
        for v in reads {
            quantized[v] = true;
        }
    }
    if layer_of.is_empty() {
        quantized.iter_mut().for_each(|q| *q = false);
    }
    // Scale-preserving producers pass the quantization back to their input.
    let mut parent: Vec<usize> = (0..g.values.len()).collect();
    for n in g.nodes.iter().rev() {
        if !scale_preserving(&n.op) {
            continue;
        }
        let (Some(x), Some(&y)) = (n.input(0), n.outputs.first()) else {
            continue;
        };
        if quantized[y] && !is_const(x) {
            quantized[x] = true;
            let (a, b) = (find(&mut parent, x), find(&mut parent, y));
            parent[b] = a;
        }
    }
    // Group sources: the first integer layer reading the group, else a range of its own.
    let mut source: BTreeMap<usize, TensorSource> = BTreeMap::new();
    for (&node, name) in &layer_of {
        if let Some(x) = g.nodes[node].input(0) {
            let r = find(&mut parent, x);
            source
                .entry(r)
                .or_insert_with(|| TensorSource::Layer(name.clone()));
        }
    }
    let mut group_index: BTreeMap<usize, usize> = BTreeMap::new();
    let mut groups = Vec::new();
    let mut tensors = Vec::new();
    // Graph inputs first, then node outputs in order: the emission order.
    let mut order: Vec<ValueId> = g.inputs.clone();
    for n in &g.nodes {
        order.extend(n.outputs.iter().copied());
    }
    for v in order {
        if !quantized[v] || is_const(v) {
            continue;
        }
        let r = find(&mut parent, v);
        let gi = *group_index.entry(r).or_insert_with(|| {
            groups.push(source.get(&r).cloned().unwrap_or(TensorSource::OwnRange));
            groups.len() - 1
        });
        tensors.push((g.values[v].name.clone(), gi));
    }
    Ok(QdqPlan {
        graph: g,
        folded,
        tensors,
        groups,
    })
}

impl QdqPlan {
    /// Names of the tensors that need a calibrated range of their own (8-bit asymmetric):
    /// every member of a group no integer layer reads.
    pub fn own_range_tensors(&self) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|(_, gi)| self.groups[*gi] == TensorSource::OwnRange)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Calibrated `(min, max)` of the named tensors of `exec`'s graph over `data` (float forward
/// passes), through observer `observer` at 8 bits asymmetric — the ranges of
/// [`QdqPlan::own_range_tensors`].
pub fn calibrate_tensors(
    exec: &Executor,
    data: &Dataset,
    observer: &str,
    names: &[String],
) -> Result<ActivationRanges> {
    if names.is_empty() {
        return Ok(ActivationRanges::new());
    }
    if data.n == 0 {
        return Err(ExecError::Invalid(format!(
            "calibration set {} is empty",
            data.name
        )));
    }
    let graph = exec.graph();
    let mut watched = Vec::new();
    for name in names {
        let v = graph.value_id(name).ok_or_else(|| {
            ExecError::Invalid(format!("tensor '{name}' is not in the model's graph"))
        })?;
        let obs = build_observer(observer, &serde_json::Value::Null)
            .map_err(|e| ExecError::Invalid(format!("calibration observer: {e}")))?;
        watched.push((name.clone(), v, obs));
    }
    let keep: Vec<ValueId> = watched.iter().map(|w| w.1).collect();
    let sample = data.sample_shape();
    let batch = exec.usable_batch(sample, CALIB_BATCH.min(data.n))?;
    let mut start = 0;
    while start < data.n {
        let len = batch.min(data.n - start);
        let (images, _) = data.batch(start, len);
        let x = candle_core::Tensor::from_slice(
            images,
            crate::eval::batch_shape(len, data.sample_shape()).as_slice(),
            exec.device(),
        )?;
        let run = exec.run(
            &[x],
            &RunOptions {
                keep: keep.clone(),
                ..Default::default()
            },
        )?;
        for (name, v, obs) in &mut watched {
            let t = run
                .kept
                .get(v)
                .ok_or_else(|| ExecError::Invalid(format!("tensor '{name}' was not produced")))?;
            obs.observe(&to_vec_f32(t)?)
                .map_err(|e| ExecError::Invalid(format!("tensor '{name}' calibration: {e}")))?;
        }
        start += len;
    }
    watched
        .into_iter()
        .map(|(name, _, obs)| {
            let r = obs
                .range(8, false)
                .map_err(|e| ExecError::Invalid(format!("tensor '{name}' calibration: {e}")))?;
            Ok((name, r))
        })
        .collect()
}

/// Layer input ranges ([`crate::calibrate`]) and the plan's own tensor ranges
/// ([`calibrate_tensors`]) on the same calibration images.
pub fn calibrate_full(
    exec: &Executor,
    data: &Dataset,
    observer: &str,
    policy: &Policy,
) -> Result<(ActivationRanges, ActivationRanges)> {
    let ranges = crate::calibrate(exec, data, observer, policy)?;
    let plan = qdq_plan(exec.graph(), policy)?;
    let tensors = calibrate_tensors(exec, data, observer, &plan.own_range_tensors())?;
    Ok((ranges, tensors))
}

/// Images per forward pass during tensor calibration.
const CALIB_BATCH: usize = 100;

/// Inserts `Clip? → QuantizeLinear → DequantizeLinear` on `input` with parameters `p`
/// (`bits` wide), pushing the scale / zero-point initializers; returns the nodes and the
/// dequantized tensor's name.
fn act_qdq(
    gp: &mut pb::GraphProto,
    base: &str,
    input: &str,
    p: &UniformParams,
    bits: u8,
) -> (Vec<pb::NodeProto>, String) {
    let dt = container(p.qmin, bits, false);
    let (s, z) = (p.scale[0], p.zero_point[0]);
    gp.initializer
        .push(f32_tensor(&format!("{base}_scale"), vec![], &[s]));
    gp.initializer
        .push(int_tensor(&format!("{base}_zero_point"), vec![], dt, &[z]));
    let mut nodes = Vec::new();
    let mut q_in = input.to_string();
    if container_range(dt) != (p.qmin, p.qmax) {
        let lo = (p.qmin - z) as f32 * s;
        let hi = (p.qmax - z) as f32 * s;
        gp.initializer
            .push(f32_tensor(&format!("{base}_clip_min"), vec![], &[lo]));
        gp.initializer
            .push(f32_tensor(&format!("{base}_clip_max"), vec![], &[hi]));
        nodes.push(pb::NodeProto {
            input: vec![q_in, format!("{base}_clip_min"), format!("{base}_clip_max")],
            output: vec![format!("{base}_clipped")],
            name: format!("{base}_clip"),
            op_type: "Clip".into(),
            ..Default::default()
        });
        q_in = format!("{base}_clipped");
    }
    nodes.push(pb::NodeProto {
        input: vec![q_in, format!("{base}_scale"), format!("{base}_zero_point")],
        output: vec![format!("{base}_quantized")],
        name: format!("{base}_quantize"),
        op_type: "QuantizeLinear".into(),
        ..Default::default()
    });
    nodes.push(pb::NodeProto {
        input: vec![
            format!("{base}_quantized"),
            format!("{base}_scale"),
            format!("{base}_zero_point"),
        ],
        output: vec![format!("{base}_dequantized")],
        name: format!("{base}_dequantize"),
        op_type: "DequantizeLinear".into(),
        ..Default::default()
    });
    (nodes, format!("{base}_dequantized"))
}

/// Adds `layer`'s quantized weight (codes, scales, zero points, in an int8 / int4 container) to
/// `gp`; returns the quantized weight, its DequantizeLinear node (per-channel `axis` when the
/// scheme has one) and whether an int4 type was used.
fn weight_dq(
    gp: &mut pb::GraphProto,
    graph: &Graph,
    layer: &Layer,
    scheme: &QScheme,
    int4: bool,
) -> Result<(QuantizedWeight, pb::NodeProto, bool)> {
    let qw = quantize_weight(graph, layer, scheme)?;
    // A recurrent layer's second weight (R, node input 2) gets names of its own.
    let role = if graph.nodes[layer.node].input(2) == Some(layer.weight)
        && layer.kind == LayerKind::Recurrent
    {
        "recurrence"
    } else {
        "weight"
    };
    let base = format!("{}::{role}", layer.name);
    let dt = container(qw.params.qmin, scheme.bits, int4);
    let dims: Vec<i64> = qw.shape.iter().map(|&d| d as i64).collect();
    let pdims = if qw.axis.is_some() {
        vec![qw.params.scale.len() as i64]
    } else {
        vec![]
    };
    gp.initializer.push(int_tensor(
        &format!("{base}_quantized"),
        dims,
        dt,
        &qw.codes,
    ));
    gp.initializer.push(f32_tensor(
        &format!("{base}_scale"),
        pdims.clone(),
        &qw.params.scale,
    ));
    gp.initializer.push(int_tensor(
        &format!("{base}_zero_point"),
        pdims,
        dt,
        &qw.params.zero_point,
    ));
    let dq = pb::NodeProto {
        input: vec![
            format!("{base}_quantized"),
            format!("{base}_scale"),
            format!("{base}_zero_point"),
        ],
        output: vec![format!("{base}_dequantized")],
        name: format!("{base}_dequantize"),
        op_type: "DequantizeLinear".into(),
        attribute: qw
            .axis
            .map(|a| attr_i("axis", a as i64))
            .into_iter()
            .collect(),
        ..Default::default()
    };
    Ok((qw, dq, matches!(dt, INT4 | UINT4)))
}

/// For a recurrent layer: the DequantizeLinear of its recurrence weight R (quantized with
/// the layer's scheme, like W), the int4 flag, and whether R's float initializer can be
/// dropped. `None` for other layers.
fn recurrence_dq(
    gp: &mut pb::GraphProto,
    graph: &Graph,
    layer: &Layer,
    scheme: &QScheme,
    int4: bool,
    uses: &[usize],
) -> Result<Option<(pb::NodeProto, bool, Option<String>)>> {
    if layer.kind != LayerKind::Recurrent {
        return Ok(None);
    }
    let Some(r) = graph.nodes[layer.node].input(2) else {
        return Ok(None);
    };
    let lr = Layer {
        weight: r,
        ..layer.clone()
    };
    let (_, dq, int4) = weight_dq(gp, graph, &lr, scheme, int4)?;
    let drop = (uses[r] <= 1).then(|| graph.values[r].name.clone());
    Ok(Some((dq, int4, drop)))
}

/// Name of the input activation of `layer`'s node.
fn input_name(graph: &Graph, node: &Node, layer: &str) -> Result<String> {
    node.input(0)
        .map(|v| graph.values[v].name.clone())
        .ok_or_else(|| ExecError::Invalid(format!("layer '{layer}' has no input activation")))
}

/// The input quantization of an integer layer: policy scheme and calibrated range.
fn layer_input_params(
    policy: &Policy,
    ranges: &ActivationRanges,
    layer: &str,
) -> Result<(UniformParams, u8)> {
    let scheme = policy
        .get(layer)
        .and_then(|lp| lp.activation)
        .ok_or_else(|| ExecError::Invalid(format!("layer '{layer}' has no activation scheme")))?;
    check_representable(layer, "activation", &scheme)?;
    if scheme.granularity != Granularity::Tensor {
        return Err(ExecError::Invalid(format!(
            "layer '{layer}' activation: only per-tensor activation ranges are supported"
        )));
    }
    let range = *ranges.get(layer).ok_or_else(|| {
        ExecError::Invalid(format!(
            "no calibrated range for the input of layer '{layer}'; run calibration with this policy first"
        ))
    })?;
    let p = UniformParams::from_values(&[range.0, range.1], &TensorLayout::flat(2), &scheme)
        .map_err(|e| ExecError::Invalid(format!("layer '{layer}' activation: {e}")))?;
    Ok((p, scheme.bits))
}

/// Builds the full-activation QDQ model (the "full" form of the module documentation):
/// `ranges` are the layer input ranges of [`crate::calibrate`], `tensor_ranges` the ranges of
/// [`QdqPlan::own_range_tensors`] by tensor name ([`calibrate_full`] computes both).
/// Weights are quantized after folding (the integer engine's order); biases of integer
/// layers become `int32` at scale `S_x · S_w` (zero point 0), as QLinearConv / QGemm read them.
pub fn qdq_model_full(
    graph: &Graph,
    policy: &Policy,
    ranges: &ActivationRanges,
    tensor_ranges: &ActivationRanges,
    opts: QdqOptions,
) -> Result<pb::ModelProto> {
    let plan = qdq_plan(graph, policy)?;
    let g = &plan.graph;
    let mut model = mixprec_graph::to_model_proto(g)?;
    let uses = g.use_counts();
    let gp = model
        .graph
        .as_mut()
        .ok_or_else(|| ExecError::Invalid("exported model has no graph".into()))?;
    // Parameters of every group.
    let mut group_params: Vec<(UniformParams, u8)> = Vec::with_capacity(plan.groups.len());
    for (gi, src) in plan.groups.iter().enumerate() {
        group_params.push(match src {
            TensorSource::Layer(l) => layer_input_params(policy, ranges, l)?,
            TensorSource::OwnRange => {
                let mut lo = f32::INFINITY;
                let mut hi = f32::NEG_INFINITY;
                let mut names = Vec::new();
                for (n, _) in plan.tensors.iter().filter(|(_, g)| *g == gi) {
                    names.push(n.as_str());
                    if let Some(&(a, b)) = tensor_ranges.get(n) {
                        lo = lo.min(a);
                        hi = hi.max(b);
                    }
                }
                if lo > hi {
                    return Err(ExecError::Invalid(format!(
                        "no calibrated range for tensor '{}' (it feeds a residual Add or a pooling, \
                         not a layer); calibrate it with qdq::calibrate_full",
                        names.first().copied().unwrap_or("?")
                    )));
                }
                let p = UniformParams::from_range(lo, hi, 8, false).map_err(|e| {
                    ExecError::Invalid(format!("tensor '{}': {e}", names.join("', '")))
                })?;
                (p, 8)
            }
        });
    }
    // Q/DQ after the producer of each quantized tensor; its readers take the DQ output.
    let mut after: BTreeMap<String, Vec<pb::NodeProto>> = BTreeMap::new();
    let mut head: Vec<pb::NodeProto> = Vec::new();
    let mut rename: BTreeMap<String, String> = BTreeMap::new();
    let producer: BTreeMap<String, String> = gp
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.name.clone())))
        .collect();
    let mut tensor_group: BTreeMap<String, usize> = BTreeMap::new();
    let mut pending = Vec::new();
    for (name, gi) in &plan.tensors {
        let (p, bits) = &group_params[*gi];
        let (nodes, dq) = act_qdq(gp, &format!("{name}::act"), name, p, *bits);
        pending.push((name.clone(), nodes));
        rename.insert(name.clone(), dq);
        tensor_group.insert(name.clone(), *gi);
    }
    for (name, nodes) in pending {
        match producer.get(&name) {
            Some(p) => after.entry(p.clone()).or_default().extend(nodes),
            None => head.extend(nodes),
        }
    }
    // Layers: quantized weights, int32 biases, and a requantization pair when the layer's
    // input quantization differs from its tensor's group.
    let mut before: BTreeMap<String, Vec<pb::NodeProto>> = BTreeMap::new();
    // New names of a layer's input, weight and bias.
    type Rewire = (Option<String>, Option<String>, Option<String>);
    let mut rewires: BTreeMap<String, Rewire> = BTreeMap::new();
    // New name of a recurrent layer's R (node input 2).
    let mut r_rewires: BTreeMap<String, String> = BTreeMap::new();
    let mut drop_inits: Vec<String> = Vec::new();
    let mut int4_used = false;
    for layer in g.layers() {
        let Some(lp) = policy.get(&layer.name) else {
            continue;
        };
        let node = &g.nodes[layer.node];
        let mut inserted = Vec::new();
        let (mut new_x, mut new_w, mut new_b) = (None, None, None);
        let mut sx = None;
        if lp.activation.is_some() {
            let (p, bits) = layer_input_params(policy, ranges, &layer.name)?;
            let x = input_name(g, node, &layer.name)?;
            let shared = tensor_group
                .get(&x)
                .is_some_and(|&gi| group_params[gi].0 == p);
            if !shared {
                let src = rename.get(&x).cloned().unwrap_or(x);
                let (nodes, dq) = act_qdq(gp, &format!("{}::input", layer.name), &src, &p, bits);
                inserted.extend(nodes);
                new_x = Some(dq);
            }
            sx = Some(p.scale[0]);
        }
        if let Some(scheme) = lp.weight {
            let (qw, dq, int4) = weight_dq(gp, g, &layer, &scheme, opts.int4)?;
            int4_used |= int4;
            new_w = Some(dq.output[0].clone());
            inserted.push(dq);
            if uses[layer.weight] <= 1 {
                drop_inits.push(g.values[layer.weight].name.clone());
            }
            if let Some((dq, int4, drop)) = recurrence_dq(gp, g, &layer, &scheme, opts.int4, &uses)?
            {
                int4_used |= int4;
                r_rewires.insert(node.name.clone(), dq.output[0].clone());
                inserted.push(dq);
                drop_inits.extend(drop);
            }
            // int32 bias at S_x · S_w per output channel (a recurrent layer's B, which
            // holds input and recurrence biases of every gate, stays float).
            let bias = layer
                .bias
                .filter(|_| layer.kind != LayerKind::Recurrent)
                .and_then(|b| g.initializers.get(&b).map(|t| (b, t)));
            if let (Some(sx), Some((bid, bt))) = (sx, bias) {
                let cout = qw.shape[weight_channel_axis(g, &layer)];
                if let Some(bv) = bt.as_f32().filter(|v| v.len() == cout) {
                    let base = format!("{}::bias", layer.name);
                    let scales: Vec<f32> = (0..cout)
                        .map(|c| sx * qw.params.scale[if qw.axis.is_some() { c } else { 0 }])
                        .collect();
                    let codes: Vec<i32> = bv
                        .iter()
                        .zip(&scales)
                        .map(|(&b, &s)| {
                            let q = (b / s).round_ties_even();
                            q.clamp(-(i32::MAX as f32), i32::MAX as f32) as i32
                        })
                        .collect();
                    gp.initializer.push(pb::TensorProto {
                        name: format!("{base}_quantized"),
                        dims: vec![cout as i64],
                        data_type: data_type::INT32,
                        raw_data: codes.iter().flat_map(|c| c.to_le_bytes()).collect(),
                        ..Default::default()
                    });
                    gp.initializer.push(f32_tensor(
                        &format!("{base}_scale"),
                        vec![cout as i64],
                        &scales,
                    ));
                    inserted.push(pb::NodeProto {
                        input: vec![format!("{base}_quantized"), format!("{base}_scale")],
                        output: vec![format!("{base}_dequantized")],
                        name: format!("{base}_dequantize"),
                        op_type: "DequantizeLinear".into(),
                        attribute: vec![attr_i("axis", 0)],
                        ..Default::default()
                    });
                    if uses[bid] <= 1 {
                        drop_inits.push(g.values[bid].name.clone());
                    }
                    new_b = Some(format!("{base}_dequantized"));
                }
            }
        }
        if !inserted.is_empty() {
            before.insert(node.name.clone(), inserted);
        }
        rewires.insert(node.name.clone(), (new_x, new_w, new_b));
    }
    let old = std::mem::take(&mut gp.node);
    gp.node.extend(head);
    for mut n in old {
        for i in n.input.iter_mut() {
            if let Some(r) = rename.get(i.as_str()) {
                *i = r.clone();
            }
        }
        if let Some(ins) = before.remove(&n.name) {
            gp.node.extend(ins);
        }
        if let Some((x, w, b)) = rewires.get(&n.name) {
            if let Some(x) = x {
                n.input[0] = x.clone();
            }
            if let Some(w) = w {
                n.input[1] = w.clone();
            }
            if let Some(b) = b {
                if n.input.len() < 3 {
                    n.input.resize(3, String::new());
                }
                n.input[2] = b.clone();
            }
            if let Some(r) = r_rewires.get(&n.name) {
                n.input[2] = r.clone();
            }
        }
        let name = n.name.clone();
        gp.node.push(n);
        if let Some(ins) = after.remove(&name) {
            gp.node.extend(ins);
        }
    }
    // Float weights replaced by codes, and folded BatchNormalization parameters, go.
    let read: std::collections::BTreeSet<&str> = gp
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(|s| s.as_str()))
        .chain(gp.output.iter().map(|o| o.name.as_str()))
        .collect();
    let keep: Vec<bool> = gp
        .initializer
        .iter()
        .map(|t| read.contains(t.name.as_str()) && !drop_inits.contains(&t.name))
        .collect();
    let mut k = keep.iter();
    gp.initializer.retain(|_| *k.next().unwrap_or(&true));
    if int4_used {
        require_int4_opset(&mut model);
    }
    Ok(model)
}

/// Writes the model of [`qdq_model_full`] to `path` (atomically).
pub fn save_qdq_full(
    graph: &Graph,
    policy: &Policy,
    ranges: &ActivationRanges,
    tensor_ranges: &ActivationRanges,
    opts: QdqOptions,
    path: &Path,
) -> Result<()> {
    let model = qdq_model_full(graph, policy, ranges, tensor_ranges, opts)?;
    mixprec_graph::write_atomic(path, &model.encode_to_vec())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::LayerHook;
    use crate::{Executor, FakeQuant};
    use candle_core::Tensor;

    fn uniform(bits: u8, symmetric: bool, g: Granularity) -> QScheme {
        QScheme::new(QuantKind::Uniform, bits, symmetric, g)
    }

    #[test]
    fn dequantized_weights_equal_fake_quant_bit_for_bit() {
        let exec = Executor::new(crate::models::lenet5(3)).unwrap();
        let g = exec.graph();
        let mut p = Policy::new();
        p.set_weight("conv1", uniform(8, true, Granularity::Channel));
        p.set_weight("conv2", uniform(4, true, Granularity::Channel));
        p.set_weight("fc1", uniform(3, false, Granularity::Tensor));
        p.set_weight(
            "fc2",
            QScheme::new(QuantKind::UniformPow2, 5, true, Granularity::Channel),
        );
        let fq = FakeQuant::new(&exec, &p, &ActivationRanges::new(), 0).unwrap();
        for l in g.layers().iter().filter(|l| p.get(&l.name).is_some()) {
            let qw = quantize_weight(g, l, &p.get(&l.name).unwrap().weight.unwrap()).unwrap();
            let w = &g.initializers[&l.weight];
            let t =
                Tensor::from_slice(w.as_f32().unwrap(), w.shape.as_slice(), exec.device()).unwrap();
            let want = fq
                .weight(l, t)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = qw.dequantize();
            assert_eq!(got.len(), want.len());
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "layer {}", l.name);
            let (lo, hi) = (qw.params.qmin, qw.params.qmax);
            assert!(qw.codes.iter().all(|&c| (lo..=hi).contains(&c)));
        }
        // conv2 at 4 bits: codes in [-7, 7], 16 channels.
        let conv2 = g.layers().into_iter().find(|l| l.name == "conv2").unwrap();
        let qw = quantize_weight(g, &conv2, &uniform(4, true, Granularity::Channel)).unwrap();
        assert_eq!((qw.params.qmin, qw.params.qmax, qw.axis), (-7, 7, Some(0)));
        assert_eq!(qw.params.scale.len(), 16);
        assert!(qw.codes.contains(&7) || qw.codes.contains(&-7));
    }

    #[test]
    fn model_has_qdq_pairs_int4_packing_and_clear_errors() {
        let exec = Executor::new(crate::models::lenet5(3)).unwrap();
        let g = exec.graph();
        let mut p = Policy::new();
        p.set_weight("conv1", uniform(8, true, Granularity::Channel));
        p.set_activation("conv1", uniform(8, false, Granularity::Tensor));
        p.set_weight("fc1", uniform(4, true, Granularity::Channel));
        p.set_activation("fc1", uniform(4, false, Granularity::Tensor));
        let ranges: ActivationRanges = [
            ("conv1".to_string(), (-0.5f32, 2.5f32)),
            ("fc1".to_string(), (0.0, 3.0)),
        ]
        .into();
        let m = qdq_model(g, &p, &ranges, QdqOptions::default()).unwrap();
        let gp = m.graph.as_ref().unwrap();
        let count = |op: &str| gp.node.iter().filter(|n| n.op_type == op).count();
        // Two activation Q/DQ pairs, two weight DQ; a Clip only for the 4-bit activation.
        assert_eq!(count("QuantizeLinear"), 2);
        assert_eq!(count("DequantizeLinear"), 4);
        assert_eq!(count("Clip"), 1);
        assert_eq!(m.opset_import[0].version, 13);
        let init = |n: &str| gp.initializer.iter().find(|t| t.name == n).unwrap();
        let w = init("fc1::weight_quantized");
        assert_eq!(w.data_type, data_type::INT8);
        // 4-bit asymmetric on [0, 3]: S = 3 / 15, Z = 0, codes clipped at 15 by the Clip.
        let clip_max = init("fc1::input_clip_max");
        let hi = f32::from_le_bytes(clip_max.raw_data[..4].try_into().unwrap());
        assert_eq!(hi, 15.0 * (3.0f32 / 15.0));
        // The layer reads the dequantized tensors; the float weight is gone.
        let fc1 = gp.node.iter().find(|n| n.name == "fc1").unwrap();
        assert_eq!(fc1.input[0], "fc1::input_dequantized");
        assert_eq!(fc1.input[1], "fc1::weight_dequantized");
        let fc1_layer = g.layers().into_iter().find(|l| l.name == "fc1").unwrap();
        let wname = &g.values[fc1_layer.weight].name;
        assert!(gp.initializer.iter().all(|t| &t.name != wname));
        // Every node input is produced or an initializer / graph input.
        let mut known: Vec<&str> = gp.initializer.iter().map(|t| t.name.as_str()).collect();
        known.extend(gp.input.iter().map(|v| v.name.as_str()));
        for n in &gp.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                assert!(known.contains(&i.as_str()), "{} reads unknown {i}", n.name);
            }
            known.extend(n.output.iter().map(|o| o.as_str()));
        }

        // INT4: two codes per byte, low nibble first, opset 21.
        let m4 = qdq_model(g, &p, &ranges, QdqOptions { int4: true }).unwrap();
        assert_eq!(m4.opset_import[0].version, 21);
        let gp4 = m4.graph.as_ref().unwrap();
        let w4 = gp4
            .initializer
            .iter()
            .find(|t| t.name == "fc1::weight_quantized")
            .unwrap();
        assert_eq!(w4.data_type, INT4);
        let qw = quantize_weight(g, &fc1_layer, &uniform(4, true, Granularity::Channel)).unwrap();
        assert_eq!(w4.raw_data.len(), qw.codes.len().div_ceil(2));
        let unpack = |b: u8| ((b << 4) as i8 >> 4) as i32;
        assert_eq!(unpack(w4.raw_data[0]), qw.codes[0]);
        assert_eq!(((w4.raw_data[0] as i8) >> 4) as i32, qw.codes[1]);
        // conv1 stays at 8 bits.
        let w8 = gp4
            .initializer
            .iter()
            .find(|t| t.name == "conv1::weight_quantized")
            .unwrap();
        assert_eq!(w8.data_type, data_type::INT8);

        // Unrepresentable schemes and missing ranges name the layer.
        let mut bad = p.clone();
        bad.set_weight("fc2", uniform(4, true, Granularity::Group(4)));
        let e = qdq_model(g, &bad, &ranges, QdqOptions::default()).unwrap_err();
        assert!(e.to_string().contains("'fc2'"), "{e}");
        let mut bad = p.clone();
        bad.set_weight(
            "fc2",
            QScheme::new(QuantKind::Kmeans, 3, true, Granularity::Tensor),
        );
        let e = qdq_model(g, &bad, &ranges, QdqOptions::default()).unwrap_err();
        assert!(e.to_string().contains("'fc2'") && e.to_string().contains("uniform"));
        let e = qdq_model(g, &p, &ActivationRanges::new(), QdqOptions::default()).unwrap_err();
        assert!(e.to_string().contains("calibrat"), "{e}");
    }

    #[test]
    fn mnist8_w8a8_file_holds_the_fake_quant_weights_and_ranges() {
        use mixprec_data::{calibration_subset, data_dir, Dataset, DatasetKind, Preprocess, Split};
        let g = mixprec_graph::load_onnx(data_dir().join("models/mnist-8.onnx")).unwrap();
        let mut exec = Executor::new(g).unwrap();
        exec.free_batch_dim();
        let test = Dataset::load(DatasetKind::Mnist, Split::Test, Preprocess::Raw255).unwrap();
        let calib = calibration_subset(&test, 128, 0).unwrap();
        let mut p = Policy::new();
        for l in exec.graph().layers() {
            p.set_weight(&l.name, uniform(8, true, Granularity::Channel));
            p.set_activation(&l.name, uniform(8, false, Granularity::Tensor));
        }
        let ranges = crate::calibrate(&exec, &calib, "min-max", &p).unwrap();
        let fq = FakeQuant::new(&exec, &p, &ranges, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnist8-qdq.onnx");
        save_qdq(exec.graph(), &p, &ranges, QdqOptions::default(), &path).unwrap();
        let m = pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let gp = m.graph.unwrap();
        let count = |op: &str| gp.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!((count("QuantizeLinear"), count("DequantizeLinear")), (3, 6));
        // The graph keeps its single float input.
        assert_eq!(gp.input.len(), 1);
        let init = |n: &str| gp.initializer.iter().find(|t| t.name == n).unwrap();
        let f32s = |t: &pb::TensorProto| -> Vec<f32> {
            t.raw_data
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        for l in exec.graph().layers() {
            let q = init(&format!("{}::weight_quantized", l.name));
            assert_eq!(q.data_type, data_type::INT8);
            let scale = f32s(init(&format!("{}::weight_scale", l.name)));
            let dq = gp
                .node
                .iter()
                .find(|n| n.name == format!("{}::weight_dequantize", l.name))
                .unwrap();
            let axis = dq.attribute.iter().find(|a| a.name == "axis").unwrap().i as usize;
            let shape: Vec<usize> = q.dims.iter().map(|&d| d as usize).collect();
            assert_eq!(scale.len(), shape[axis]);
            let inner: usize = shape[axis + 1..].iter().product();
            let got: Vec<f32> = q
                .raw_data
                .iter()
                .enumerate()
                .map(|(i, &b)| (b as i8) as f32 * scale[(i / inner) % shape[axis]])
                .collect();
            let w = &exec.graph().initializers[&l.weight];
            let t =
                Tensor::from_slice(w.as_f32().unwrap(), w.shape.as_slice(), exec.device()).unwrap();
            let want = fq.weight(&l, t).unwrap().flatten_all().unwrap();
            assert_eq!(got, want.to_vec1::<f32>().unwrap(), "layer {}", l.name);
            // Activation scale and zero point are the calibrated range's (Eq. 10).
            let s = f32s(init(&format!("{}::input_scale", l.name)))[0];
            let z = init(&format!("{}::input_zero_point", l.name));
            assert_eq!(z.data_type, data_type::UINT8);
            let (lo, hi) = ranges[&l.name];
            let want = UniformParams::from_range(lo, hi, 8, false).unwrap();
            assert_eq!(
                (s, z.raw_data[0] as i32),
                (want.scale[0], want.zero_point[0])
            );
        }
    }

    #[test]
    fn full_plan_folds_batch_norm_exactly_and_calibrates_residual_tensors() {
        use mixprec_data::{DatasetKind, Preprocess, Split};
        let mut g = crate::models::resnet20(2);
        // Non-trivial BN statistics, some negative scales.
        let bns: Vec<Vec<ValueId>> = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BatchNorm { .. }))
            .map(|n| n.inputs.iter().flatten().copied().collect())
            .collect();
        for ins in &bns {
            for (j, v) in ins[1..].iter().enumerate() {
                let t = g.initializers.get_mut(v).unwrap();
                let c = t.len();
                let vals: Vec<f32> = (0..c)
                    .map(|i| match j {
                        0 if i % 5 == 0 => -0.7,
                        0 => 0.5 + 0.1 * (i % 7) as f32,
                        1 => 0.02 * (i % 4) as f32 - 0.03,
                        2 => 0.1 * (i % 3) as f32,
                        _ => 0.5 + 0.05 * (i % 9) as f32,
                    })
                    .collect();
                *t = mixprec_graph::Tensor::f32(t.shape.clone(), vals).unwrap();
            }
        }
        let exec = Executor::new(g).unwrap();
        let g = exec.graph();
        let mut p = Policy::new();
        for l in g.layers() {
            p.set_weight(&l.name, uniform(8, true, Granularity::Channel));
            p.set_activation(&l.name, uniform(8, false, Granularity::Tensor));
        }
        let plan = qdq_plan(g, &p).unwrap();
        assert_eq!(plan.folded.len(), bns.len());
        assert!(plan
            .graph
            .nodes
            .iter()
            .all(|n| !matches!(n.op, Op::BatchNorm { .. })));
        // The folded float graph computes the same function.
        let folded = Executor::new(plan.graph.clone()).unwrap();
        let data = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255)
            .unwrap()
            .head(16);
        let (x, _) = data.batch(0, 8);
        let a = exec.predict(x, &[3, 32, 32], None).unwrap();
        let b = folded.predict(x, &[3, 32, 32], None).unwrap();
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = a.sub(&b).unwrap().abs().unwrap().max_all().unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert!(
            scale > 0.0 && d <= 1e-4 * scale,
            "folding changed outputs by {d} of {scale}"
        );
        // Residual branches (the Add inputs that no layer reads) and the pooling input need
        // ranges of their own; all of them are calibrated.
        let own = plan.own_range_tensors();
        assert!(own.iter().any(|n| n.contains("bn2")), "{own:?}");
        let (ranges, tensors) = calibrate_full(&exec, &data, "min-max", &p).unwrap();
        assert_eq!(tensors.len(), own.len());
        let m = qdq_model_full(g, &p, &ranges, &tensors, QdqOptions::default()).unwrap();
        let gp = m.graph.unwrap();
        let count = |op: &str| gp.node.iter().filter(|n| n.op_type == op).count();
        // One Q per quantized tensor (every layer shares its input tensor's quantization).
        assert_eq!(count("QuantizeLinear"), plan.tensors.len());
        assert_eq!(count("BatchNormalization"), 0);
        // Own-range tensors: 8-bit asymmetric on the calibrated range.
        let name = &own[0];
        let s = gp
            .initializer
            .iter()
            .find(|t| t.name == format!("{name}::act_scale"))
            .unwrap();
        let s = f32::from_le_bytes(s.raw_data[..4].try_into().unwrap());
        let (lo, hi) = tensors[name];
        assert_eq!(
            s,
            UniformParams::from_range(lo, hi, 8, false).unwrap().scale[0]
        );
        // A missing residual range is a clear error naming the tensor.
        let e = qdq_model_full(
            g,
            &p,
            &ranges,
            &ActivationRanges::new(),
            QdqOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("calibrat") && e.contains('\''), "{e}");
        let e = calibrate_tensors(&exec, &data, "min-max", &["no_such".to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'no_such'"), "{e}");
    }
}
