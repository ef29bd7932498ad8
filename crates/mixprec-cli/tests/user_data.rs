//! `--data FILE.npz` / `--data FOLDER`: a sequence classifier (MatMul → Transpose → LSTM →
//! Squeeze → Gemm, input [N, T, F]) evaluated, scored and quantized on the user's own arrays
//! through the real binary.

use mixprec_graph::onnx_build::{
    self, attr_int, attr_ints, float_info, float_tensor, int64_tensor, node, with_attrs,
};
use prost::Message;
use std::path::Path;
use std::process::{Command, Output};

const N: usize = 24;
const T: usize = 5;
const F: usize = 3;
const H: usize = 4;
const C: usize = 3;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixprec"))
        .args(args)
        .output()
        .expect("runs")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic weights in (−s, s).
fn weights(n: usize, seed: u32, s: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 40_503)
                >> 8;
            s * ((v % 2001) as f32 / 1000.0 - 1.0)
        })
        .collect()
}

/// `seq_major`: the LSTM reads the model input directly as [T, N, F] (no Transpose).
fn model(dir: &Path, seq_major: bool) -> String {
    let (f, h, c) = (F as i64, H as i64, C as i64);
    let lstm = |x: &str| {
        with_attrs(
            node("LSTM", "lstm_node", &[x, "w", "r", "b"], &["", "yh"]),
            vec![attr_int("hidden_size", h)],
        )
    };
    let (nodes, input, output) = if seq_major {
        (
            vec![lstm("x")],
            float_info("x", &[Some(T as i64), None, Some(f)]),
            float_info("yh", &[Some(1), None, Some(h)]),
        )
    } else {
        (
            vec![
                node("MatMul", "matmul_node", &["x", "wp"], &["xp"]),
                with_attrs(
                    node("Transpose", "transpose_node", &["xp"], &["xt"]),
                    vec![attr_ints("perm", &[1, 0, 2])],
                ),
                lstm("xt"),
                node("Squeeze", "squeeze_node", &["yh", "axes"], &["hn"]),
                with_attrs(
                    node("Gemm", "gemm_node", &["hn", "wh", "bh"], &["logits"]),
                    vec![attr_int("transB", 1)],
                ),
            ],
            float_info("x", &[None, Some(T as i64), Some(f)]),
            float_info("logits", &[None, Some(c)]),
        )
    };
    let m = onnx_build::model(
        14,
        nodes,
        vec![
            float_tensor("wp", &[f, f], weights(F * F, 1, 0.8)),
            float_tensor("w", &[1, 4 * h, f], weights(4 * H * F, 2, 0.6)),
            float_tensor("r", &[1, 4 * h, h], weights(4 * H * H, 3, 0.5)),
            float_tensor("b", &[1, 8 * h], weights(8 * H, 4, 0.1)),
            float_tensor("wh", &[c, h], weights(C * H, 5, 1.5)),
            float_tensor("bh", &[c], vec![0.0; C]),
            int64_tensor("axes", &[1], vec![0]),
        ],
        vec![input],
        vec![output],
    );
    let p = dir.join(if seq_major {
        "seq_major.onnx"
    } else {
        "seq.onnx"
    });
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p.to_str().unwrap().to_string()
}

/// The float graph of a QDQ export: weight and bias `DequantizeLinear` nodes (int8 / int32
/// codes, per tensor or per `axis`) become float initializers, activation Q/DQ pairs are bypassed. Also returns
/// the innermost rows of the dequantized tensor `rows_of`.
fn strip_qdq(
    g: &mixprec_graph::onnx_proto::GraphProto,
    rows_of: &str,
) -> (mixprec_graph::onnx_proto::GraphProto, Vec<Vec<f32>>) {
    use mixprec_graph::onnx_proto as pb;
    use std::collections::BTreeMap;
    let inits: BTreeMap<String, pb::TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut out = g.clone();
    out.node.clear();
    let mut alias: BTreeMap<String, String> = BTreeMap::new();
    let mut rows = Vec::new();
    for n in &g.node {
        match n.op_type.as_str() {
            "QuantizeLinear" => {
                alias.insert(n.output[0].clone(), n.input[0].clone());
            }
            "DequantizeLinear" if inits.contains_key(&n.input[0]) => {
                let q = &inits[&n.input[0]];
                let codes: Vec<i64> = match q.data_type {
                    pb::data_type::INT8 => q.raw_data.iter().map(|&b| b as i8 as i64).collect(),
                    pb::data_type::INT32 => q
                        .raw_data
                        .chunks(4)
                        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                        .collect(),
                    other => panic!("{}: unexpected code type {other}", q.name),
                };
                let scale: Vec<f32> = inits[&n.input[1]]
                    .raw_data
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let zp: Vec<i64> = n.input.get(2).map_or(vec![0; scale.len()], |z| {
                    inits[z].raw_data.iter().map(|&b| b as i8 as i64).collect()
                });
                let dims: Vec<usize> = q.dims.iter().map(|&d| d as usize).collect();
                let axis = n
                    .attribute
                    .iter()
                    .find(|a| a.name == "axis")
                    .map(|a| a.i as usize)
                    .unwrap_or(1);
                let inner: usize = dims.get(axis + 1..).map_or(1, |d| d.iter().product());
                let vals: Vec<f32> = codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let b = if scale.len() == 1 {
                            0
                        } else {
                            (i / inner) % dims[axis]
                        };
                        (c - zp[b]) as f32 * scale[b]
                    })
                    .collect();
                if n.output[0] == rows_of {
                    rows = vals
                        .chunks(*dims.last().unwrap())
                        .map(|r| r.to_vec())
                        .collect();
                }
                out.initializer.push(pb::TensorProto {
                    name: n.output[0].clone(),
                    dims: q.dims.clone(),
                    data_type: pb::data_type::FLOAT,
                    raw_data: vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ..Default::default()
                });
            }
            "DequantizeLinear" => {
                let src = alias[&n.input[0]].clone();
                alias.insert(n.output[0].clone(), src);
            }
            _ => {
                let mut n = n.clone();
                for i in &mut n.input {
                    if let Some(a) = alias.get(i) {
                        *i = a.clone();
                    }
                }
                out.node.push(n);
            }
        }
    }
    (out, rows)
}

/// A version-1 .npy file of row-major data.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn sequence_model_on_user_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path(), false);
    let x = weights(N * T * F, 9, 2.0);
    let arrays = dir.path().join("arrays");
    std::fs::create_dir(&arrays).unwrap();
    let xf = arrays.join("x.npy");
    std::fs::write(&xf, npy("<f4", &[N, T, F], &f32_bytes(&x))).unwrap();
    // Labels: the float model's own top-1 (from `mixprec run` on the same batch).
    let logits = dir.path().join("logits.npy");
    ok(&run(&[
        "run",
        &m,
        "--input",
        &format!("x={}", xf.display()),
        "--output",
        logits.to_str().unwrap(),
    ]));
    let b = std::fs::read(&logits).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let z: Vec<f32> = b[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(z.len(), N * C);
    let y: Vec<i64> = z
        .chunks(C)
        .map(|r| (0..C).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap() as i64)
        .collect();
    let classes: std::collections::BTreeSet<i64> = y.iter().copied().collect();
    assert!(classes.len() >= 2, "labels {y:?}");
    let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(arrays.join("y.npy"), npy("<i8", &[N], &yb)).unwrap();
    // The folder gives 100 % (every sample in its place: a shuffled batch or a wrong
    // sample shape would not).
    let out = ok(&run(&["eval", &m, "--data", arrays.to_str().unwrap()]));
    assert!(out.contains("top-1 100.00 %"), "{out}");
    // Hessian traces: the projection before the LSTM and the LSTM (a layer: W and R are
    // constant) by Hutchinson (weights and input activations), the head exactly.
    let out = ok(&run(&[
        "sensitivity",
        "--model",
        &m,
        "--data",
        arrays.to_str().unwrap(),
        "--samples",
        "16",
        "--metric",
        "hessian-trace",
        "--options",
        "w4,a8",
        "--json",
    ]));
    let j: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let t = &j["table"];
    let layers: Vec<&str> = t["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(layers, ["matmul_node", "lstm_node", "gemm_node"]);
    let d = &t["details"];
    assert_eq!(d[0]["exact"], 0.0);
    assert_eq!(d[1]["exact"], 0.0);
    assert_eq!(d[2]["exact"], 1.0);
    for k in 0..3 {
        assert!(d[k]["trace"].as_f64().unwrap() > 0.0, "{d}");
        assert!(d[k]["input_trace"].as_f64().unwrap() > 0.0, "{d}");
    }
    // Mixed precision with the LSTM as a layer: its W and R take the chosen bit-width.
    let qdir = dir.path().join("quantized");
    ok(&run(&[
        "quantize",
        "--model",
        &m,
        "--data",
        arrays.to_str().unwrap(),
        "--budget",
        "wbits=4",
        "--options",
        "w2,w4,w8",
        "--metric",
        "kl",
        "--out",
        qdir.to_str().unwrap(),
    ]));
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(qdir.join("policy.json")).unwrap()).unwrap();
    let ptext = policy.to_string();
    for l in ["matmul_node", "lstm_node", "gemm_node"] {
        assert!(ptext.contains(l), "{l} missing from {ptext}");
    }
    // The QDQ export dequantizes both LSTM weights and loads back with mixprec.
    let qm = qdir.join("model.onnx");
    let proto =
        mixprec_graph::onnx_proto::ModelProto::decode(std::fs::read(&qm).unwrap().as_slice())
            .unwrap();
    let gp = proto.graph.clone().unwrap();
    let lstm = gp.node.iter().find(|n| n.op_type == "LSTM").unwrap();
    assert_eq!(lstm.input[1], "lstm_node::weight_dequantized");
    assert_eq!(lstm.input[2], "lstm_node::recurrence_dequantized");
    // mixprec reads float graphs: with the weight codes dequantized into float initializers
    // and the activation Q/DQ pairs bypassed, the export loads and evaluates.
    let (float, r_rows) = strip_qdq(&gp, "lstm_node::recurrence_dequantized");
    // R [1, 4H, H] holds quantized values: not the float ones, within half a step (at
    // most half the largest magnitude, for 2 to 8 bits symmetric) of them.
    assert_eq!(r_rows.len(), 4 * H);
    let rq: Vec<f32> = r_rows.concat();
    let rf = weights(4 * H * H, 3, 0.5);
    assert_ne!(rq, rf);
    let max = rf.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (q, f) in rq.iter().zip(&rf) {
        assert!((q - f).abs() <= 0.5 * max + 1e-6, "{q} vs {f}");
    }
    let mut m2 = proto.clone();
    m2.graph = Some(float);
    let sp = dir.path().join("stripped.onnx");
    std::fs::write(&sp, m2.encode_to_vec()).unwrap();
    let back = mixprec_graph::load_onnx(&sp).unwrap();
    assert!(back.nodes.iter().any(|n| n.op.onnx_name() == "LSTM"));
    let out = ok(&run(&[
        "eval",
        sp.to_str().unwrap(),
        "--data",
        arrays.to_str().unwrap(),
    ]));
    assert!(out.contains("top-1"), "{out}");
    // A model whose input is [sequence, batch, features] (LSTM layout 0 on the input) is an
    // error naming the input and the node, not sequences cut from the batch axis.
    let sm = model(dir.path(), true);
    let o = run(&["eval", &sm, "--data", arrays.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("'x'")
            && err.contains("lstm_node")
            && err.contains("batch_first"),
        "{err}"
    );
    // A missing label array is an error that names the file and says what to add.
    std::fs::remove_file(arrays.join("y.npy")).unwrap();
    let o = run(&["eval", &m, "--data", arrays.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("'y'") && !err.contains("panicked"),
        "{err}"
    );
}
