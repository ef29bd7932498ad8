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

/// Runs the binary in `dir` with the sensitivity cache inside `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    bin()
        .args(args)
        .env("MIXPREC_CACHE", dir.join("cache"))
        .current_dir(dir)
        .output()
        .expect("runs")
}

fn json_ok(o: &Output) -> serde_json::Value {
    let (out, err) = text(o);
    assert!(o.status.success(), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The `model-size` cost of an evaluated policy in the JSON output.
fn model_size_cost(e: &serde_json::Value) -> f64 {
    e["costs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "model-size")
        .unwrap()[1]
        .as_f64()
        .unwrap()
}

const BUDGET_RUN: &[&str] = &[
    "quantize",
    "--model",
    "default",
    "--budget",
    "size=11%",
    "--limit",
    "300",
    "--samples",
    "16",
    "--pareto",
    "3",
    "--json",
];

/// `quantize --budget`: every output file, the chosen policy within budget and on the
/// allocator's options, byte-identical policy.json on a re-run, and `apply` of that policy
/// reproduces the measured accuracy.
#[test]
fn budgeted_quantize_writes_files_deterministically_and_apply_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut runs = Vec::new();
    for out in ["a", "b"] {
        let mut args = BUDGET_RUN.to_vec();
        args.extend(["--out", out]);
        runs.push(json_ok(&run_in(d, &args)));
    }
    for f in [
        "policy.json",
        "problem.json",
        "model.onnx",
        "report.json",
        "report.html",
    ] {
        assert!(d.join("a").join(f).is_file(), "{f} missing");
    }
    let pa = std::fs::read(d.join("a/policy.json")).unwrap();
    assert_eq!(pa, std::fs::read(d.join("b/policy.json")).unwrap());
    // The second run read the cached sensitivity table.
    assert_eq!(runs[1]["sensitivity_cached"], true);
    let v = &runs[0];
    let max = v["budgets"][0]["max"].as_f64().unwrap();
    let size = model_size_cost(&v["chosen"]);
    assert!(size <= max * (1.0 + 1e-9), "{size} > {max}");
    let bits: Vec<u64> = v["chosen"]["weight_bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(bits.len(), 5);
    assert!(bits.iter().all(|b| [2, 3, 4, 8].contains(b)), "{bits:?}");
    let acc = v["chosen"]["accuracy"].as_f64().unwrap();
    assert!(acc > 90.0 && acc <= 100.0, "{acc}");
    // The size budget lies between uniform w3 and w4, so the mix must beat w3's size use.
    let uniform: Vec<f64> = v["uniform"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["size_bytes"].as_f64().unwrap())
        .collect();
    let chosen_size = v["chosen"]["size_bytes"].as_f64().unwrap();
    assert!(chosen_size > uniform[1] && chosen_size < uniform[2]);

    let a = json_ok(&run_in(
        d,
        &[
            "apply",
            "--policy",
            "a/policy.json",
            "--limit",
            "300",
            "--json",
        ],
    ));
    assert!(
        (a["quantized_accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
        "apply {} vs quantize {acc}",
        a["quantized_accuracy"]
    );

    // Hand-edited policies: an unknown layer and an impossible bit width.
    let text = String::from_utf8(pa).unwrap();
    std::fs::write(d.join("typo.json"), text.replace("\"fc1\"", "\"fc_1\"")).unwrap();
    fails_clearly(
        &run_in(d, &["apply", "--policy", "typo.json", "--limit", "10"]),
        &["fc_1", "did you mean 'fc1'"],
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut bad = v.clone();
    bad["layers"]["conv2"]["weight"]["bits"] = serde_json::json!(0);
    std::fs::write(d.join("bad.json"), bad.to_string()).unwrap();
    fails_clearly(
        &run_in(d, &["apply", "--policy", "bad.json", "--limit", "10"]),
        &["conv2"],
    );
}

/// A budget below the smallest achievable size is an error stating that size; bad budget
/// syntax names the budget.
#[test]
fn infeasible_and_malformed_budgets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails_clearly(
        &run_in(
            d,
            &[
                "quantize",
                "--budget",
                "size=1%",
                "--limit",
                "10",
                "--samples",
                "8",
            ],
        ),
        &["smallest"],
    );
    fails_clearly(
        &run_in(d, &["quantize", "--budget", "speed=3"]),
        &["speed=3", "size, wbits, bops or latency"],
    );
    fails_clearly(
        &run_in(d, &["quantize", "--budget", "latency=2ms", "--limit", "10"]),
        &["--lut"],
    );
    fails_clearly(
        &run_in(
            d,
            &["quantize", "--budget", "wbits=3", "--allocator", "magic"],
        ),
        &["magic"],
    );
}

/// `compare`: one row per allocator; every policy respects the budget, and no allocator beats
/// the exact ILP on the objective it minimises.
#[test]
fn compare_runs_every_allocator_and_ilp_is_optimal() {
    let dir = tempfile::tempdir().unwrap();
    let v = json_ok(&run_in(
        dir.path(),
        &[
            "compare",
            "--budget",
            "wbits=3",
            "--limit",
            "100",
            "--samples",
            "16",
            "--json",
        ],
    ));
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.len() >= 9, "{}", rows.len());
    let max = v["budgets"][0]["max"].as_f64().unwrap();
    let ilp = rows.iter().find(|r| r["allocator"] == "ilp").unwrap()["result"]["objective"]
        .as_f64()
        .unwrap();
    for r in rows {
        if r["result"].is_null() {
            assert!(r["error"].is_string(), "{r}");
            continue;
        }
        let obj = r["result"]["objective"].as_f64().unwrap();
        assert!(
            obj >= ilp * (1.0 - 1e-9),
            "{} beat ilp: {obj} < {ilp}",
            r["allocator"]
        );
        let size = model_size_cost(&r["result"]);
        assert!(size <= max * (1.0 + 1e-9), "{} over budget", r["allocator"]);
    }
}

/// `demo` needs no data folder and writes the report.
#[test]
fn demo_runs_on_the_built_in_default() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["demo", "--samples", "16", "--pareto", "3"])
        .env("MIXPREC_DATA", dir.path().join("nowhere"))
        .env("MIXPREC_CACHE", dir.path().join("cache"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("ilp (chosen)") && out.contains("report.html"),
        "{out}"
    );
    assert!(dir.path().join("mixprec-demo/report.html").is_file());
}

/// `profile` writes a LUT for every layer and option that `quantize --budget latency=…`
/// reads; the chosen policy's LUT latency is within the budget. `report` re-renders a
/// report.json and refuses a damaged one.
#[test]
fn profile_lut_drives_a_latency_budget_and_report_rerenders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = run_in(
        d,
        &[
            "profile",
            "--model",
            "default",
            "--options",
            "w2a8,w4a8,w8a8",
            "--reps",
            "3",
            "--out",
            "lut.json",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("conv1") && out.contains("w32a32"), "{out}");
    let lut: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("lut.json")).unwrap()).unwrap();
    for l in ["conv1", "conv2", "fc1", "fc2", "fc3"] {
        for k in ["w2a8", "w4a8", "w8a8", "w32a32"] {
            let ms = lut["layers"][l][k].as_f64().unwrap();
            assert!(ms.is_finite() && ms > 0.0, "{l} {k}: {ms}");
        }
    }
    let v = json_ok(&run_in(
        d,
        &[
            "quantize",
            "--budget",
            "latency=1000%",
            "--budget",
            "size=11%",
            "--lut",
            "lut.json",
            "--options",
            "w2,w4,w8",
            "--limit",
            "100",
            "--samples",
            "8",
            "--pareto",
            "0",
            "--no-engine",
            "--out",
            "lat",
            "--json",
        ],
    ));
    let lat_max = v["budgets"][0]["max"].as_f64().unwrap();
    let lat = v["chosen"]["costs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "latency")
        .unwrap()[1]
        .as_f64()
        .unwrap();
    assert!(lat <= lat_max * (1.0 + 1e-9), "{lat} > {lat_max}");

    let o = run_in(
        d,
        &["report", "--from", "lat/report.json", "--out", "again.html"],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let html = std::fs::read_to_string(d.join("again.html")).unwrap();
    assert!(html.matches("<svg").count() >= 3 && html.contains("fc1"));
    std::fs::write(d.join("bad.json"), "{\"version\": 1, \"title\": 3}").unwrap();
    fails_clearly(
        &run_in(d, &["report", "--from", "bad.json", "--out", "bad.html"]),
        &["bad.json"],
    );
    assert!(!d.join("bad.html").exists());
}
