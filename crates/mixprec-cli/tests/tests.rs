//! CLI tests: the real binary in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mixprec"))
}

fn data() -> PathBuf {
    mixprec_data::data_dir()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A failing run: non-zero exit, a message containing every `needle`, and no panic.
fn fails_clearly(o: &Output, needles: &[&str]) {
    let (out, err) = text(o);
    assert!(!o.status.success(), "expected failure, got success: {out}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' missing from: {err}");
    }
}

#[test]
fn inspect_mnist8_table_and_json() {
    let m = data().join("models/mnist-8.onnx");
    let o = run(&["inspect", m.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("Convolution28")
            && out.contains("8x1x5x5")
            && out.contains("total (3 layers)"),
        "{out}"
    );
    let o = run(&["inspect", m.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["total_macs"],
        28 * 28 * 8 * 25 + 14 * 14 * 16 * 200 + 2560
    );
}

#[test]
fn default_model_runs_without_shared_data() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["eval", "default", "--json"])
        .env("MIXPREC_DATA", dir.path().join("nothing"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 1000);
    assert!(v["accuracy"].as_f64().unwrap() >= 0.98, "{out}");
}

#[test]
fn export_then_inspect_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lenet.onnx");
    let o = run(&["export", "default", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = run(&[
        "eval",
        out.to_str().unwrap(),
        "--data",
        "mnist-1k",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o2 = run(&["eval", "default", "--json"]);
    let v2: serde_json::Value = serde_json::from_slice(&o2.stdout).unwrap();
    assert_eq!(v["correct"], v2["correct"]);
}

#[test]
fn truncated_and_random_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(data().join("models/resnet8-cifar10.onnx")).unwrap();
    let t = dir.path().join("cut.onnx");
    std::fs::write(&t, &bytes[..bytes.len() / 3]).unwrap();
    fails_clearly(
        &run(&["inspect", t.to_str().unwrap()]),
        &["cut.onnx", "not a valid ONNX model"],
    );
    let r = dir.path().join("noise.onnx");
    std::fs::write(
        &r,
        (0..10_000u32)
            .map(|i| (i.wrapping_mul(2246822519) >> 7) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    fails_clearly(
        &run(&["eval", r.to_str().unwrap(), "--data", "mnist"]),
        &["noise.onnx"],
    );
    fails_clearly(
        &run(&["inspect", "no/such/model.onnx"]),
        &["no/such/model.onnx", "does not exist"],
    );
}

fn write_model(path: &Path, op: &str, w_shape: &[i64]) {
    use mixprec_graph::onnx_proto as pb;
    use prost::Message;
    let vi = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type: 1,
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
    };
    let n: i64 = w_shape.iter().product();
    let w = pb::TensorProto {
        dims: w_shape.to_vec(),
        data_type: 1,
        name: "w".into(),
        float_data: vec![0.5; n as usize],
        ..Default::default()
    };
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                name: "layer_7".into(),
                op_type: op.into(),
                ..Default::default()
            }],
            initializer: vec![w],
            input: vec![vi("x", &[1, 784])],
            output: vec![vi("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

#[test]
fn unsupported_op_and_shape_mismatch_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("einsum.onnx");
    write_model(&p, "Einsum", &[784, 10]);
    fails_clearly(
        &run(&["inspect", p.to_str().unwrap()]),
        &["Einsum", "layer_7", "opset 17"],
    );
    let p = dir.path().join("mismatch.onnx");
    write_model(&p, "MatMul", &[783, 10]);
    fails_clearly(
        &run(&["inspect", p.to_str().unwrap()]),
        &["layer_7", "MatMul", "[1, 784]", "[783, 10]"],
    );
}

#[test]
fn missing_data_folder_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let m = data().join("models/mnist-8.onnx");
    let o = bin()
        .args(["eval", m.to_str().unwrap(), "--data", "mnist"])
        .env("MIXPREC_DATA", dir.path().join("absent"))
        .output()
        .unwrap();
    fails_clearly(&o, &["MNIST", "absent", "MIXPREC_DATA"]);
}

#[test]
fn list_names_architectures_and_ops() {
    let o = run(&["list"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(
        out.contains("lenet5")
            && out.contains("resnet20")
            && out.contains("BatchNormalization")
            && out.contains("cifar10")
    );
}

#[test]
fn quantize_default_w8a8_reports_accuracy_size_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let o = bin()
        .args(["quantize", "--model", "default", "--data", "mnist-1k"])
        .args(["--uniform", "w8a8", "--json", "--policy-out"])
        .arg(&policy)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["images"], 1000);
    assert_eq!(v["quantizer"], "uniform");
    assert_eq!(v["weight_scheme"]["bits"], 8);
    assert_eq!(v["activation_scheme"]["bits"], 8);
    assert_eq!(v["activation_scheme"]["symmetric"], false);
    let float = v["float_accuracy"].as_f64().unwrap();
    let quant = v["quantized_accuracy"].as_f64().unwrap();
    assert!(float >= 0.98, "{out}");
    assert!((float - quant).abs() <= 0.005, "{out}");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5);
    assert!(layers
        .iter()
        .all(|l| l["weight_mse"].as_f64().unwrap() > 0.0
            && l["activation_range"].as_array().unwrap().len() == 2));
    // 8-bit codes plus one 32-bit scale per tensor: just under 4x smaller weights.
    let size = &v["size"];
    let bpe = size["weight_bits_per_element"].as_f64().unwrap();
    assert!(bpe > 8.0 && bpe < 8.05, "{size}");
    let ratio = size["compression"].as_f64().unwrap();
    assert!(ratio > 3.5 && ratio < 4.0, "{size}");
    assert!(size["quantized_bytes"].as_u64().unwrap() < size["float_bytes"].as_u64().unwrap());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&policy).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["layers"].as_object().unwrap().len(), 5);
    assert_eq!(saved["layers"]["conv1"]["weight"]["bits"], 8);
    // Bad specifications fail with a clear message.
    let o = run(&[
        "quantize",
        "--model",
        "default",
        "--uniform",
        "w4a8",
        "--quantizer",
        "fuzzy",
    ]);
    fails_clearly(&o, &["fuzzy", "kmeans"]);
    let o = run(&[
        "quantize",
        "--model",
        "default",
        "--uniform",
        "w4a8",
        "--quantizer",
        "binary",
    ]);
    fails_clearly(&o, &["binary", "1 bit"]);
    let o = run(&["quantize", "--model", "default", "--uniform", "4a8"]);
    fails_clearly(&o, &["w<bits>a<bits>"]);
}

/// For a fixed seed, the policy, the QDQ export and a sensitivity table are byte-identical
/// across runs and across 1 vs 2 threads (candle's pool and rayon's).
#[test]
fn outputs_are_byte_identical_across_runs_and_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let run_with = |threads: &str, tag: &str| -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let policy = dir.path().join(format!("policy-{tag}.json"));
        let model = dir.path().join(format!("model-{tag}.onnx"));
        let cmd = |args: &[&str]| {
            let o = bin()
                .args(args)
                .env("CANDLE_NUM_THREADS", threads)
                .env("RAYON_NUM_THREADS", threads)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(o.status.success(), "{args:?}: {}", text(&o).1);
            o.stdout
        };
        let p = policy.to_str().unwrap();
        cmd(&[
            "quantize",
            "--model",
            "default",
            "--data",
            "mnist-1k",
            "--uniform",
            "w4a8",
            "--granularity",
            "channel",
            "--limit",
            "200",
            "--policy-out",
            p,
        ]);
        cmd(&[
            "export",
            "default",
            "--format",
            "onnx-qdq",
            "--policy",
            p,
            "--data",
            "mnist-1k",
            "--out",
            model.to_str().unwrap(),
        ]);
        let sens = cmd(&[
            "sensitivity",
            "--model",
            "default",
            "--data",
            "mnist-1k",
            "--metric",
            "hessian-trace",
            "--options",
            "w2,w4",
            "--samples",
            "32",
            "--json",
        ]);
        // The table, not the whole report: the report also states the wall time.
        let v: serde_json::Value = serde_json::from_slice(&sens).unwrap();
        let table = serde_json::to_vec(&v["table"]).unwrap();
        (
            std::fs::read(&policy).unwrap(),
            std::fs::read(&model).unwrap(),
            table,
        )
    };
    let a = run_with("1", "a");
    let b = run_with("1", "b");
    let c = run_with("2", "c");
    for (name, x, y, z) in [
        ("policy", &a.0, &b.0, &c.0),
        ("qdq model", &a.1, &b.1, &c.1),
        ("sensitivity table", &a.2, &b.2, &c.2),
    ] {
        assert!(!x.is_empty(), "{name} is empty");
        let show = |v: &[u8]| {
            String::from_utf8_lossy(v)
                .chars()
                .take(2000)
                .collect::<String>()
        };
        assert!(
            x == y,
            "{name} differs between two runs:\n{}\n{}",
            show(x),
            show(y)
        );
        assert!(
            x == z,
            "{name} differs between 1 and 2 threads:\n{}\n{}",
            show(x),
            show(z)
        );
    }
}
