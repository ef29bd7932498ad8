//! `mixprec run`: the real binary on a hand-built model whose Reshape target is a run-time
//! input, with inputs as .npy files and outputs checked inside the written .npz archive.

use mixprec_graph::onnx_proto as pb;
use prost::Message;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mixprec"))
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixprec"))
        .args(args)
        .output()
        .expect("runs")
}

fn fails_with(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' missing from: {err}");
    }
}

fn vi(name: &str, elem_type: i32, dims: &[i64]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::Dimension {
                            dim_value: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// y = Reshape(Relu(x), shape) and s = Shape(y): x float [2, 3], shape int64 [2].
fn model(dir: &Path) -> String {
    let node = |op: &str, ins: &[&str], out: &str| pb::NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: format!("{op}_node"),
        op_type: op.into(),
        ..Default::default()
    };
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 14,
        }],
        graph: Some(pb::GraphProto {
            node: vec![
                node("Relu", &["x"], "r"),
                node("Reshape", &["r", "shape"], "y"),
                node("Shape", &["y"], "s"),
            ],
            name: "g".into(),
            input: vec![vi("x", 1, &[2, 3]), vi("shape", 7, &[2])],
            output: vec![vi("y", 1, &[]), vi("s", 7, &[])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = dir.join("m.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p.to_str().unwrap().to_string()
}

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

/// Members of a stored (uncompressed) zip archive, from its local headers.
fn unzip(z: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    let u16_at = |i: usize| u16::from_le_bytes([z[i], z[i + 1]]) as usize;
    while z[at..].starts_with(b"PK\x03\x04") {
        assert_eq!(u16_at(at + 8), 0, "stored, not compressed");
        let size = u32::from_le_bytes([z[at + 18], z[at + 19], z[at + 20], z[at + 21]]) as usize;
        let (nl, el) = (u16_at(at + 26), u16_at(at + 28));
        let name = String::from_utf8(z[at + 30..at + 30 + nl].to_vec()).unwrap();
        let start = at + 30 + nl + el;
        out.push((name, z[start..start + size].to_vec()));
        at = start + size;
    }
    assert!(
        z[at..].starts_with(b"PK\x01\x02"),
        "central directory follows"
    );
    out
}

/// Data bytes of an .npy member (after the 64-byte aligned header) and its header text.
fn npy_body(b: &[u8]) -> (String, &[u8]) {
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hl) % 64, 0, "data aligned to 64 bytes");
    (
        String::from_utf8_lossy(&b[10..10 + hl]).into_owned(),
        &b[10 + hl..],
    )
}

#[test]
fn run_writes_npz_with_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let x: Vec<u8> = [-1.0f64, 2.0, -3.0, 4.0, 5.0, -6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let xp = dir.path().join("x.npy");
    std::fs::write(&xp, npy("<f8", "(2, 3)", &x)).unwrap();
    let sp = dir.path().join("shape.npy");
    let shape: Vec<u8> = [3i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&sp, npy("<i4", "(2,)", &shape)).unwrap();
    let out = dir.path().join("out.npz");
    let xa = format!("x={}", xp.display());
    let sa = format!("shape={}", sp.display());
    let o = run(&["run", &m, "-i", &xa, "-i", &sa, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let members = unzip(&std::fs::read(&out).unwrap());
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["y.npy", "s.npy"]);
    let (h, body) = npy_body(&members[0].1);
    assert!(h.contains("'<f4'") && h.contains("(3, 2)"), "{h}");
    let y: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(y, [0.0, 2.0, 0.0, 4.0, 5.0, 0.0]);
    let (h, body) = npy_body(&members[1].1);
    assert!(h.contains("'<i8'") && h.contains("(2,)"), "{h}");
    assert_eq!(&body[..8], &3i64.to_le_bytes());
    assert_eq!(&body[8..], &2i64.to_le_bytes());

    // A single output cannot hold two; a wrong extension is named.
    let one = dir.path().join("y.npy");
    let o = run(&["run", &m, "-i", &xa, "-i", &sa, "-o", one.to_str().unwrap()]);
    fails_with(&o, &["2 outputs", ".npz"]);
    assert!(!one.exists(), "nothing written on failure");
}

#[test]
fn run_input_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let xp = dir.path().join("x.npy");
    std::fs::write(&xp, npy("<f4", "(2, 3)", &[0u8; 24])).unwrap();
    let xa = format!("x={}", xp.display());
    // Missing input, listed with the model's inputs.
    fails_with(
        &run(&["run", &m, "-i", &xa]),
        &["no --input given for 'shape'", "'x' (float32 [2, 3])"],
    );
    // Unknown name.
    let o = run(&["run", &m, "-i", &xa, "-i", "nope=x.npy"]);
    fails_with(&o, &["no input named 'nope'", "'shape' (int64 [2])"]);
    // Wrong dtype: floats for the int64 shape input.
    let sa = format!("shape={}", xp.display());
    fails_with(
        &run(&["run", &m, "-i", &xa, "-i", &sa]),
        &["input 'shape'", "float32", "expects int64"],
    );
    // Wrong shape.
    let bad = dir.path().join("bad.npy");
    std::fs::write(&bad, npy("<f4", "(3, 2)", &[0u8; 24])).unwrap();
    let ba = format!("x={}", bad.display());
    let sp = dir.path().join("s.npy");
    std::fs::write(&sp, npy("<i8", "(2,)", &[0u8; 16])).unwrap();
    let sa = format!("shape={}", sp.display());
    fails_with(
        &run(&["run", &m, "-i", &ba, "-i", &sa]),
        &["input 'x'", "bad.npy", "[3, 2]", "expects [2, 3]"],
    );
    // A truncated .npy names the file.
    let tr = dir.path().join("trunc.npy");
    std::fs::write(&tr, &npy("<f4", "(2, 3)", &[0u8; 24])[..40]).unwrap();
    let ta = format!("x={}", tr.display());
    fails_with(&run(&["run", &m, "-i", &ta, "-i", &sa]), &["trunc.npy"]);
}

/// `quantize --budget` on mnist-8 writes a mixprec model file whose integer-engine accuracy
/// it reports; `mixprec run` executes that file on real MNIST images and predicts the same
/// classes as the float model for almost all of them.
#[test]
fn budgeted_quantize_writes_an_engine_model_that_run_executes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = mixprec_data::data_dir().join("models/mnist-8.onnx");
    let o = bin()
        .args([
            "quantize",
            "--model",
            m.to_str().unwrap(),
            "--data",
            "mnist",
        ])
        .args([
            "--budget",
            "wbits=4",
            "--metric",
            "output-mse",
            "--limit",
            "500",
        ])
        .args(["--samples", "16", "--pareto", "0", "--out", "q", "--json"])
        .env("MIXPREC_CACHE", d.join("cache"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let engine = v["engine_accuracy"].as_f64().expect("engine accuracy");
    let fake = v["chosen"]["accuracy"].as_f64().unwrap();
    assert!(
        (engine - fake).abs() <= 0.6,
        "engine {engine} vs fake-quant {fake}"
    );
    assert!(d.join("q/model.mpqm").is_file());

    // 20 MNIST test images as a float32 .npy (raw 0..255 pixels).
    let test = mixprec_data::Dataset::load(
        mixprec_data::DatasetKind::Mnist,
        mixprec_data::Split::Test,
        mixprec_data::Preprocess::Raw255,
    )
    .unwrap();
    let (x, y) = test.batch(0, 20);
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(d.join("x.npy"), npy("<f4", "(20, 1, 28, 28)", &bytes)).unwrap();
    let o = bin()
        .args([
            "run",
            "q/model.mpqm",
            "--input",
            "x.npy",
            "--output",
            "y.npy",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = std::fs::read(d.join("y.npy")).unwrap();
    let (h, body) = npy_body(&out);
    assert!(h.contains("(20, 10)"), "{h}");
    let logits: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let right = (0..20)
        .filter(|&i| {
            let row = &logits[i * 10..i * 10 + 10];
            let arg = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            arg == y[i] as usize
        })
        .count();
    assert!(right >= 18, "{right}/20 right");

    // A damaged model file is a clear error.
    let mut bad = std::fs::read(d.join("q/model.mpqm")).unwrap();
    bad.truncate(bad.len() / 2);
    std::fs::write(d.join("bad.mpqm"), bad).unwrap();
    fails_with(
        &bin()
            .args(["run", "bad.mpqm", "--input", "x.npy"])
            .current_dir(d)
            .output()
            .unwrap(),
        &["bad.mpqm"],
    );
}
