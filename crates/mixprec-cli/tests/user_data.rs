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
    // Hessian traces: the projection before the LSTM by Hutchinson (weights and input
    // activations), the head exactly.
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
    assert_eq!(layers, ["matmul_node", "gemm_node"]);
    let d = &t["details"];
    assert_eq!(d[0]["exact"], 0.0);
    assert_eq!(d[1]["exact"], 1.0);
    for k in 0..2 {
        assert!(d[k]["trace"].as_f64().unwrap() > 0.0, "{d}");
        assert!(d[k]["input_trace"].as_f64().unwrap() > 0.0, "{d}");
    }
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
