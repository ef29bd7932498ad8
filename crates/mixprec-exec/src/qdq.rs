//! QDQ ONNX export of a quantized model: the float graph with `QuantizeLinear →
//! DequantizeLinear` on the input activation of every layer whose activation the policy
//! quantizes, and integer weight initializers behind `DequantizeLinear` (per-channel `axis`)
//! for every layer whose weight it quantizes.
//!
//! * Survey §2.4, Eq. 8 and 10: `q = clamp(round(x / S) + Z, qmin, qmax)`, `x̂ = S (q − Z)`,
//!   which is exactly ONNX `QuantizeLinear` / `DequantizeLinear` (round half to even). The
//!   scales and zero points are the ones [`crate::FakeQuant`] uses, so the dequantized weights
//!   equal the fake-quantized ones bit for bit and activations are rounded the same way.
//! * Survey §3.3 (HAWQ-V3): a mixed-precision policy deployed as an integer graph; QDQ is the
//!   form ONNX Runtime and TensorRT lower to integer kernels.
//! * Codes narrower than their container (e.g. 4-bit weights in an `int8` initializer, or the
//!   restricted symmetric range `[−127, 127]`) are stored already clipped; activations whose
//!   code range is narrower than `uint8`/`int8` get a `Clip` to `[S (qmin − Z), S (qmax − Z)]`
//!   before `QuantizeLinear`. With [`QdqOptions::int4`], weights of at most 4 bits are stored
//!   as `INT4`/`UINT4` (opset 21, two codes per byte).
//!
//! Only `uniform` and `uniform-pow2` schemes with nearest rounding, per tensor or per channel,
//! are representable; anything else is a clear error naming the layer.
//!
//! Complexity: O(parameters) to quantize the weights, O(nodes) to rewrite the graph.

use std::collections::BTreeMap;
use std::path::Path;

use mixprec_graph::onnx_proto::{self as pb, attr_type, data_type};
use mixprec_graph::{Graph, Layer};
use mixprec_quant::UniformParams;
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind, Rounding, TensorLayout};
use prost::Message;

use crate::error::{ExecError, Result};
use crate::fakequant::{check_policy, weight_channel_axis, ActivationRanges};

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
    for layer in graph.layers() {
        let Some(lp) = policy.get(&layer.name) else {
            continue;
        };
        let node = &graph.nodes[layer.node];
        let mut inserted = Vec::new();
        let mut new_x = None;
        let mut new_w = None;
        if let Some(scheme) = lp.activation {
            check_representable(&layer.name, "activation", &scheme)?;
            if scheme.granularity != Granularity::Tensor {
                return Err(ExecError::Invalid(format!(
                    "layer '{}' activation: only per-tensor activation ranges are supported",
                    layer.name
                )));
            }
            let range = *ranges.get(&layer.name).ok_or_else(|| {
                ExecError::Invalid(format!(
                    "no calibrated range for the input of layer '{}'; run calibration with this policy first",
                    layer.name
                ))
            })?;
            let p =
                UniformParams::from_values(&[range.0, range.1], &TensorLayout::flat(2), &scheme)
                    .map_err(|e| {
                        ExecError::Invalid(format!("layer '{}' activation: {e}", layer.name))
                    })?;
            let x = node
                .input(0)
                .map(|v| graph.values[v].name.clone())
                .ok_or_else(|| {
                    ExecError::Invalid(format!("layer '{}' has no input activation", layer.name))
                })?;
            let dt = container(p.qmin, scheme.bits, false);
            let base = format!("{}::input", layer.name);
            let (s, z) = (p.scale[0], p.zero_point[0]);
            gp.initializer
                .push(f32_tensor(&format!("{base}_scale"), vec![], &[s]));
            gp.initializer
                .push(int_tensor(&format!("{base}_zero_point"), vec![], dt, &[z]));
            let mut q_in = x;
            if container_range(dt) != (p.qmin, p.qmax) {
                let lo = (p.qmin - z) as f32 * s;
                let hi = (p.qmax - z) as f32 * s;
                gp.initializer
                    .push(f32_tensor(&format!("{base}_clip_min"), vec![], &[lo]));
                gp.initializer
                    .push(f32_tensor(&format!("{base}_clip_max"), vec![], &[hi]));
                inserted.push(pb::NodeProto {
                    input: vec![q_in, format!("{base}_clip_min"), format!("{base}_clip_max")],
                    output: vec![format!("{base}_clipped")],
                    name: format!("{base}_clip"),
                    op_type: "Clip".into(),
                    ..Default::default()
                });
                q_in = format!("{base}_clipped");
            }
            inserted.push(pb::NodeProto {
                input: vec![q_in, format!("{base}_scale"), format!("{base}_zero_point")],
                output: vec![format!("{base}_quantized")],
                name: format!("{base}_quantize"),
                op_type: "QuantizeLinear".into(),
                ..Default::default()
            });
            inserted.push(pb::NodeProto {
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
            new_x = Some(format!("{base}_dequantized"));
        }
        if let Some(scheme) = lp.weight {
            let qw = quantize_weight(graph, &layer, &scheme)?;
            let wname = graph.values[layer.weight].name.clone();
            let base = format!("{}::weight", layer.name);
            let dt = container(qw.params.qmin, scheme.bits, opts.int4);
            int4_used |= matches!(dt, INT4 | UINT4);
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
            inserted.push(pb::NodeProto {
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
            });
            if uses[layer.weight] <= 1 {
                drop_inits.push(wname);
            }
            new_w = Some(format!("{base}_dequantized"));
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
        }
        gp.node.push(n);
    }
    if let Some((name, _)) = before.into_iter().next() {
        return Err(ExecError::Invalid(format!(
            "layer '{name}' was not found in the exported graph"
        )));
    }
    if int4_used {
        for o in &mut model.opset_import {
            if o.domain.is_empty() {
                o.version = o.version.max(21);
            }
        }
        model.ir_version = model.ir_version.max(10);
    }
    Ok(model)
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
}
