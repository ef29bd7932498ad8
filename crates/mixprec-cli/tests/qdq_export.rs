//! `mixprec export --format onnx-qdq` (full activation QDQ) on the real resnet8 and mnist-8:
//! the structure ONNX Runtime needs to fuse integer kernels (Q/DQ on every Conv / Gemm input
//! and output, residual Add and pooling; BatchNormalization folded; int32 biases at
//! `S_x · S_w`), and an ONNX-Runtime-free round trip: the exported integers turned back into
//! float initializers, loaded by mixprec's own importer and run by its executor, reproduce
//! the weight-quantized model.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use candle_core::Tensor;
use mixprec_data::{data_dir, Dataset, DatasetKind, Preprocess, Split};
use mixprec_exec::{ActivationRanges, Executor, FakeQuant};
use mixprec_graph::onnx_proto::{self as pb, data_type};
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};
use prost::Message;

fn w8a8(model: &Path) -> Policy {
    let g = mixprec_graph::load_onnx(model).unwrap();
    let mut p = Policy::new();
    for l in g.layers() {
        p.set_weight(
            &l.name,
            QScheme::new(QuantKind::Uniform, 8, true, Granularity::Channel),
        );
        p.set_activation(
            &l.name,
            QScheme::new(QuantKind::Uniform, 8, false, Granularity::Tensor),
        );
    }
    p
}

/// Exports `model` under `policy` in full QDQ form and decodes the file.
fn export(dir: &Path, model: &Path, policy: &Policy, data: &str) -> pb::ModelProto {
    let pp = dir.join("policy.json");
    policy.save(&pp).unwrap();
    let out = dir.join("qdq.onnx");
    let o = Command::new(env!("CARGO_BIN_EXE_mixprec"))
        .arg("export")
        .arg(model)
        .args(["--format", "onnx-qdq", "--data", data, "--calib", "64"])
        .arg("--policy")
        .arg(&pp)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pb::ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap()
}

struct View<'a> {
    g: &'a pb::GraphProto,
    producer: BTreeMap<&'a str, &'a pb::NodeProto>,
    readers: BTreeMap<&'a str, Vec<&'a pb::NodeProto>>,
    init: BTreeMap<&'a str, &'a pb::TensorProto>,
}

impl<'a> View<'a> {
    fn new(g: &'a pb::GraphProto) -> Self {
        let mut producer = BTreeMap::new();
        let mut readers: BTreeMap<&str, Vec<&pb::NodeProto>> = BTreeMap::new();
        for n in &g.node {
            for o in &n.output {
                producer.insert(o.as_str(), n);
            }
            for i in &n.input {
                readers.entry(i.as_str()).or_default().push(n);
            }
        }
        let init = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        View {
            g,
            producer,
            readers,
            init,
        }
    }
    fn op_of(&self, v: &str) -> Option<&str> {
        self.producer.get(v).map(|n| n.op_type.as_str())
    }
    fn count(&self, op: &str) -> usize {
        self.g.node.iter().filter(|n| n.op_type == op).count()
    }
    /// The tensor `v` reaches a QuantizeLinear, directly or through one Relu.
    fn quantized_after(&self, v: &str) -> bool {
        let rs = self.readers.get(v).cloned().unwrap_or_default();
        match rs.as_slice() {
            [r] if r.op_type == "QuantizeLinear" => true,
            [r] if r.op_type == "Relu" => self.quantized_after(&r.output[0]),
            _ => false,
        }
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.init[name]
            .raw_data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

#[test]
fn resnet8_full_qdq_has_integer_kernel_structure() {
    let model = data_dir().join("models/resnet8-cifar10.onnx");
    let dir = tempfile::tempdir().unwrap();
    let m = export(dir.path(), &model, &w8a8(&model), "cifar10");
    let g = m.graph.as_ref().unwrap();
    let v = View::new(g);
    assert_eq!(v.count("BatchNormalization"), 0, "BN must be folded");
    assert_eq!(
        (v.count("Conv"), v.count("Gemm"), v.count("Add")),
        (9, 1, 3)
    );
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "Gemm")
    {
        // DQ(x), DQ(w int8 per channel), DQ(b int32) -> layer.
        let dq = |i: usize| v.producer[n.input[i].as_str()];
        assert!(
            (0..3).all(|i| dq(i).op_type == "DequantizeLinear"),
            "{}",
            n.name
        );
        let x_zp = v.init[dq(0).input[2].as_str()];
        assert_eq!(x_zp.data_type, data_type::UINT8, "{}", n.name);
        let w = v.init[dq(1).input[0].as_str()];
        assert_eq!(w.data_type, data_type::INT8);
        assert!(v.init[dq(1).input[2].as_str()]
            .raw_data
            .iter()
            .all(|&z| z == 0));
        let b = v.init[dq(2).input[0].as_str()];
        assert_eq!(b.data_type, data_type::INT32);
        // Bias scale = S_x · S_w per output channel.
        let sx = v.f32s(&dq(0).input[1])[0];
        let sw = v.f32s(&dq(1).input[1]);
        let sb = v.f32s(&dq(2).input[1]);
        assert_eq!(sb.len(), sw.len());
        assert!(sb.iter().zip(&sw).all(|(b, w)| *b == sx * w), "{}", n.name);
        // Conv outputs are quantized (after their Relu); the classifier's logits stay float.
        if n.op_type == "Conv" {
            assert!(v.quantized_after(&n.output[0]), "{} output", n.name);
        } else {
            assert_eq!(v.readers[n.output[0].as_str()][0].op_type, "Softmax");
        }
    }
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type == "Add" || n.op_type == "AveragePool")
    {
        assert!(
            n.input
                .iter()
                .all(|i| v.op_of(i) == Some("DequantizeLinear")),
            "{} inputs",
            n.name
        );
        assert!(v.quantized_after(&n.output[0]), "{} output", n.name);
    }
    // Q/DQ pairs: 15 activation tensors, 10 weights and 10 biases behind DQ.
    assert_eq!(v.count("QuantizeLinear"), 15);
    assert_eq!(v.count("DequantizeLinear"), 35);
    // No float weight or BN parameter is left behind.
    assert!(g
        .initializer
        .iter()
        .all(|t| t.data_type != data_type::FLOAT || t.dims.len() <= 1));
}

#[test]
fn mnist8_full_qdq_folds_bias_adds_and_turns_matmul_into_gemm() {
    let model = data_dir().join("models/mnist-8.onnx");
    let dir = tempfile::tempdir().unwrap();
    let m = export(dir.path(), &model, &w8a8(&model), "mnist");
    let v = View::new(m.graph.as_ref().unwrap());
    // Conv + Add(bias) folded; MatMul + Add(bias) became one Gemm with an int32 bias.
    assert_eq!(
        (
            v.count("Conv"),
            v.count("Gemm"),
            v.count("MatMul"),
            v.count("Add")
        ),
        (2, 1, 0, 0)
    );
    // Q on both Relu outputs (shared with the MaxPool outputs' quantization), the pools,
    // the Reshape output and the graph input.
    assert_eq!(v.count("QuantizeLinear"), 6);
    for n in v.g.node.iter().filter(|n| n.op_type == "MaxPool") {
        let q_in = v.producer[n.input[0].as_str()];
        let q_out = v.readers[n.output[0].as_str()][0];
        // The same scale on both sides: ONNX Runtime runs the pool on uint8 codes.
        assert_eq!(
            v.f32s(&q_in.input[1]),
            v.f32s(&q_out.input[1]),
            "{}",
            n.name
        );
    }
}

/// Turns a QDQ model back into a float model: weight / bias DequantizeLinear nodes become
/// float initializers, activation Q/DQ pairs are bypassed.
fn strip_qdq(m: &pb::ModelProto) -> pb::ModelProto {
    let mut m = m.clone();
    let g = m.graph.as_mut().unwrap();
    let inits: BTreeMap<String, pb::TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut alias: BTreeMap<String, String> = BTreeMap::new();
    let mut new_inits = Vec::new();
    let mut nodes = Vec::new();
    for n in &g.node {
        match n.op_type.as_str() {
            "QuantizeLinear" => {
                alias.insert(n.output[0].clone(), n.input[0].clone());
            }
            "DequantizeLinear" if inits.contains_key(&n.input[0]) => {
                let q = &inits[&n.input[0]];
                let scale: Vec<f32> = inits[&n.input[1]]
                    .raw_data
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let codes: Vec<i64> = match q.data_type {
                    data_type::INT32 => q
                        .raw_data
                        .chunks(4)
                        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                        .collect(),
                    data_type::INT8 => q.raw_data.iter().map(|&b| b as i8 as i64).collect(),
                    other => panic!("unexpected weight type {other}"),
                };
                let zp: Vec<i64> = n
                    .input
                    .get(2)
                    .map(|z| inits[z].raw_data.iter().map(|&b| b as i8 as i64).collect())
                    .unwrap_or_else(|| vec![0; scale.len()]);
                let inner: usize = q.dims[1..].iter().product::<i64>().max(1) as usize;
                let vals: Vec<f32> = codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let b = if scale.len() == 1 { 0 } else { i / inner };
                        (c - zp[b]) as f32 * scale[b]
                    })
                    .collect();
                new_inits.push(pb::TensorProto {
                    name: n.output[0].clone(),
                    dims: q.dims.clone(),
                    data_type: data_type::FLOAT,
                    raw_data: vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ..Default::default()
                });
            }
            "DequantizeLinear" => {
                let src = alias.get(&n.input[0]).cloned().unwrap();
                alias.insert(n.output[0].clone(), src);
            }
            _ => {
                let mut n = n.clone();
                for i in &mut n.input {
                    if let Some(a) = alias.get(i) {
                        *i = a.clone();
                    }
                }
                nodes.push(n);
            }
        }
    }
    g.node = nodes;
    g.initializer.extend(new_inits);
    m
}

#[test]
fn resnet8_full_qdq_round_trips_through_mixprecs_importer() {
    let model = data_dir().join("models/resnet8-cifar10.onnx");
    let dir = tempfile::tempdir().unwrap();
    let policy = w8a8(&model);
    let m = export(dir.path(), &model, &policy, "cifar10");
    let float = strip_qdq(&m);
    let g = mixprec_graph::import_onnx_bytes(&float.encode_to_vec()).unwrap();
    assert!(g
        .nodes
        .iter()
        .all(|n| n.op.onnx_name() != "BatchNormalization"));
    let mut back = Executor::new(g).unwrap();
    back.free_batch_dim();
    // The reference: the original model with the same weights fake-quantized (activations
    // float, as the stripped model has them).
    let mut orig = Executor::new(mixprec_graph::load_onnx(&model).unwrap()).unwrap();
    orig.free_batch_dim();
    let mut wonly = policy.clone();
    for lp in wonly.layers.values_mut() {
        lp.activation = None;
    }
    let fq = FakeQuant::new(&orig, &wonly, &ActivationRanges::new(), 0).unwrap();
    let test = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255).unwrap();
    let (x, _) = test.batch(0, 32);
    let shape = [3, 32, 32];
    let got = back.predict(x, &shape, None).unwrap();
    let want = orig.predict(x, &shape, Some(&fq)).unwrap();
    let plain = orig.predict(x, &shape, None).unwrap();
    let max_abs = |a: &Tensor, b: &Tensor| {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let d = max_abs(&got, &want);
    // Folding before quantization and int32 biases move the softmax outputs by float noise
    // only; quantizing the weights moves them far more.
    // Measured: 9.8e-4 against an effect of 7.9e-2 on these 32 images.
    assert!(d < 4e-3, "round trip vs weight fake-quant: max |Δ| {d}");
    let dq = max_abs(&plain, &want);
    assert!(
        dq > 10.0 * d,
        "quantization effect {dq} vs round-trip error {d}"
    );
    let am = |t: &Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(am(&got), am(&want));
}
