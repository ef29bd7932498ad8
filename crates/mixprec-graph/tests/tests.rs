//! Integration tests of mixprec-graph on the real models and on hand-built protobufs.

use mixprec_graph::onnx_build::{self, node};
use mixprec_graph::onnx_proto as pb;
use mixprec_graph::*;
use prost::Message;
use std::path::PathBuf;

fn data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MIXPREC_DATA") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn model(name: &str) -> PathBuf {
    data_dir().join("models").join(name)
}

#[test]
fn mnist8_imports_with_folded_weight() {
    let g = load_onnx(model("mnist-8.onnx")).unwrap();
    assert_eq!(g.opset, 8);
    let layers = g.layers();
    assert_eq!(
        layers.len(),
        3,
        "two convs and the MatMul whose weight was a Reshape of an initializer"
    );
    assert_eq!(g.initializers[&layers[2].weight].shape, vec![256, 10]);
    let st = model_stats(&g).unwrap();
    assert_eq!(st.total_params, 200 + 8 + 3200 + 16 + 2560 + 10);
    // conv1: 28×28×8 outputs × 25 MACs; conv2: 14×14×16 × 200; fc: 2560.
    assert_eq!(st.layers[0].macs, 28 * 28 * 8 * 25);
    assert_eq!(st.layers[1].macs, 14 * 14 * 16 * 200);
    assert_eq!(st.layers[2].macs, 2560);
    assert_eq!(st.layers[1].output_shape, vec![1, 16, 14, 14]);
}

#[test]
fn resnet8_and_mobilenet_import() {
    let g = load_onnx(model("resnet8-cifar10.onnx")).unwrap();
    let st = model_stats(&g).unwrap();
    assert_eq!(st.layers.len(), 10, "9 convs + 1 gemm");
    assert_eq!(st.total_params, 78_666);
    let g = load_onnx(model("vww-mobilenetv1-96.onnx")).unwrap();
    let st = model_stats(&g).unwrap();
    assert_eq!(st.layers.len(), 28, "27 convs + 1 gemm");
    assert_eq!(st.total_params, 221_794);
    let dw = st
        .layers
        .iter()
        .filter(|l| l.weight_shape[1] == 1 && l.weight_shape[2] == 3)
        .count();
    assert_eq!(dw, 13);
}

#[test]
fn export_reimport_roundtrip() {
    for m in [
        "mnist-8.onnx",
        "resnet8-cifar10.onnx",
        "vww-mobilenetv1-96.onnx",
    ] {
        let g = load_onnx(model(m)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        save_onnx(&g, &p).unwrap();
        let g2 = load_onnx(&p).unwrap();
        assert_eq!(g.nodes.len(), g2.nodes.len(), "{m}");
        assert_eq!(g.initializers.len(), g2.initializers.len(), "{m}");
        assert_eq!(model_stats(&g).unwrap(), model_stats(&g2).unwrap(), "{m}");
        for (a, b) in g.initializers.values().zip(g2.initializers.values()) {
            assert_eq!(a, b);
        }
    }
}

#[test]
fn truncated_and_random_bytes_are_clear_errors() {
    let bytes = std::fs::read(model("mnist-8.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trunc.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_onnx(&p).unwrap_err().to_string();
    assert!(
        e.contains("trunc.onnx") && e.contains("not a valid ONNX model"),
        "{e}"
    );
    let p = dir.path().join("random.onnx");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&p, noise).unwrap();
    let e = load_onnx(&p).unwrap_err().to_string();
    assert!(e.contains("random.onnx"), "{e}");
    let e = load_onnx(dir.path().join("missing.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.onnx"), "{e}");
}

fn vi(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    onnx_build::value_info(name, 1, dims.iter().map(|&d| onnx_build::dim(d)))
}

fn model_with(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    out: &str,
) -> Vec<u8> {
    onnx_build::model(13, nodes, inits, inputs, vec![vi(out, &[])]).encode_to_vec()
}

#[test]
fn unsupported_op_names_op_node_and_opset() {
    let bytes = model_with(
        vec![node("NonMaxSuppression", "nms0", &["x"], &["y"])],
        vec![],
        vec![vi("x", &[1, 4])],
        "y",
    );
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("NonMaxSuppression") && e.contains("nms0") && e.contains("opset 13"),
        "{e}"
    );
}

#[test]
fn shape_mismatch_names_node() {
    let w = export::tensor_to_proto("w", &Tensor::f32(vec![5, 3], vec![0.0; 15]).unwrap());
    let bytes = model_with(
        vec![node("MatMul", "fc", &["x", "w"], &["y"])],
        vec![w],
        vec![vi("x", &[1, 4])],
        "y",
    );
    let g = import_onnx_bytes(&bytes).unwrap();
    let e = infer(&g, &[vec![1, 4]]).unwrap_err().to_string();
    assert!(
        e.contains("'fc'") && e.contains("MatMul") && e.contains("[1, 4]"),
        "{e}"
    );
}

#[test]
fn constant_node_weights_are_layer_weights() {
    let w = export::tensor_to_proto(
        "",
        &Tensor::f32(vec![3, 4], (0..12).map(|x| x as f32).collect()).unwrap(),
    );
    let c = pb::NodeProto {
        output: vec!["wt".into()],
        name: "c".into(),
        op_type: "Constant".into(),
        attribute: vec![pb::AttributeProto {
            name: "value".into(),
            r#type: 4,
            t: Some(w),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut tr = node("Transpose", "t", &["wt"], &["w"]);
    tr.attribute.push(pb::AttributeProto {
        name: "perm".into(),
        r#type: 7,
        ints: vec![1, 0],
        ..Default::default()
    });
    let bytes = model_with(
        vec![c, tr, node("MatMul", "fc", &["x", "w"], &["y"])],
        vec![],
        vec![vi("x", &[2, 3])],
        "y",
    );
    let g = import_onnx_bytes(&bytes).unwrap();
    let layers = g.layers();
    assert_eq!(layers.len(), 1);
    assert_eq!(g.initializers[&layers[0].weight].shape, vec![4, 3]);
    assert_eq!(g.nodes.len(), 1, "Constant and Transpose are folded away");
}

#[test]
fn cycle_is_an_error() {
    let bytes = model_with(
        vec![
            node("Relu", "a", &["x", "z"], &["y"]),
            node("Relu", "b", &["y"], &["z"]),
        ],
        vec![],
        vec![vi("x", &[1])],
        "y",
    );
    // "z" is read before any node defines it in file order: reported clearly.
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("'a'") && e.contains("'z'"), "{e}");
}

fn init(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type,
        raw_data: raw,
        ..Default::default()
    }
}

fn i64_init(name: &str, v: &[i64]) -> pb::TensorProto {
    init(
        name,
        &[v.len() as i64],
        7,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

#[test]
fn huge_tensor_claims_fail_before_allocating() {
    // 10^12 elements declared, 4 bytes given.
    let bytes = model_with(
        vec![node("Relu", "r", &["w"], &["y"])],
        vec![init("w", &[1_000_000, 1_000_000], 1, vec![0; 4])],
        vec![],
        "y",
    );
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("'w'") && e.contains("too large"), "{e}");
    // 2^30 elements (under the cap) declared, 4 bytes given: a size error, not a 4 GiB buffer.
    let bytes = model_with(
        vec![node("Relu", "r", &["w"], &["y"])],
        vec![init("w", &[1 << 30], 1, vec![0; 4])],
        vec![],
        "y",
    );
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("raw data has 4 bytes"), "{e}");
    // ConstantOfShape to 10^12 elements, folded at import.
    let bytes = model_with(
        vec![node("ConstantOfShape", "cos", &["s"], &["y"])],
        vec![i64_init("s", &[1_000_000, 1_000_000])],
        vec![],
        "y",
    );
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("'cos'") && e.contains("too large"), "{e}");
    // ConstantOfShape of a run-time shape: caught by shape inference.
    let bytes = model_with(
        vec![
            node("Shape", "sh", &["x"], &["s"]),
            node("ConstantOfShape", "cos", &["s"], &["y"]),
        ],
        vec![],
        vec![vi("x", &[1 << 20, 1 << 20])],
        "y",
    );
    let g = import_onnx_bytes(&bytes).unwrap();
    let e = infer(&g, &[vec![1 << 20, 1 << 20]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 2147483648 elements"), "{e}");
    // Reshape of a weight to 2^80 elements: an overflow-checked error.
    let bytes = model_with(
        vec![node("Reshape", "rs", &["w", "s"], &["y"])],
        vec![
            init("w", &[2], 1, vec![0; 8]),
            i64_init("s", &[1 << 40, 1 << 40]),
        ],
        vec![],
        "y",
    );
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("'rs'") && e.contains("too large"), "{e}");
    // Two small constants broadcasting to 2^40 elements are not folded at import, and shape
    // inference names the node.
    let bytes = model_with(
        vec![node("Add", "big", &["a", "b"], &["y"])],
        vec![
            init("a", &[1 << 20, 1], 1, vec![0; 4 << 20]),
            init("b", &[1, 1 << 20], 1, vec![0; 4 << 20]),
        ],
        vec![],
        "y",
    );
    let g = import_onnx_bytes(&bytes).unwrap();
    assert_eq!(g.nodes.len(), 1);
    let e = infer(&g, &[]).unwrap_err().to_string();
    assert!(e.contains("'big'") && e.contains("more than"), "{e}");
}

#[test]
fn chain_of_100k_nodes_imports_and_infers() {
    let n = 100_000;
    let nodes: Vec<pb::NodeProto> = (0..n)
        .map(|i| {
            let a = if i == 0 { "x".into() } else { format!("v{i}") };
            let b = if i + 1 == n {
                "y".into()
            } else {
                format!("v{}", i + 1)
            };
            node("Relu", &format!("r{i}"), &[&a], &[&b])
        })
        .collect();
    let bytes = model_with(nodes, vec![], vec![vi("x", &[1, 4])], "y");
    // (No recursion over the chain: a recursive walk would overflow the test thread's stack.)
    let g = import_onnx_bytes(&bytes).unwrap();
    assert_eq!(g.nodes.len(), n);
    let inf = infer(&g, &[vec![1, 4]]).unwrap();
    assert_eq!(inf.shapes[g.outputs[0]], Some(vec![1, 4]));
}

#[test]
fn cycles_and_reassigned_values_are_errors() {
    // A node writing its own input would close a cycle through one node.
    let bytes = model_with(
        vec![node("Relu", "loop", &["x"], &["x"])],
        vec![],
        vec![vi("x", &[1])],
        "x",
    );
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("'loop'") && e.contains("already defines"), "{e}");
    // Two nodes writing the same value.
    let bytes = model_with(
        vec![
            node("Relu", "a", &["x"], &["y"]),
            node("Neg", "b", &["x"], &["y"]),
        ],
        vec![],
        vec![vi("x", &[1])],
        "y",
    );
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("'b'") && e.contains("'y'"), "{e}");
    // A graph built in memory with a cycle: the sort reports the nodes.
    let mut g = Graph::default();
    let (x, y, z) = (g.add_value("x"), g.add_value("y"), g.add_value("z"));
    g.inputs.push(x);
    g.outputs.push(y);
    for (name, ins, out) in [("a", vec![x, z], y), ("b", vec![y], z)] {
        g.nodes.push(Node {
            name: name.into(),
            op: Op::Add,
            inputs: ins.into_iter().map(Some).collect(),
            outputs: vec![out],
        });
    }
    let e = import::topo_sort(&mut g).unwrap_err().to_string();
    assert!(e.contains("cycle") && e.contains("\"a\""), "{e}");
}

#[test]
fn claimed_lengths_beyond_the_data_and_deep_nesting_are_decode_errors() {
    // Field 7 (graph), length-delimited, claiming 2 GiB, followed by 3 bytes.
    let mut bytes = vec![0x3a, 0x80, 0x80, 0x80, 0x80, 0x08];
    bytes.extend_from_slice(&[0x0a, 0x01, 0x00]);
    let e = import_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("not a valid ONNX model"), "{e}");
    // A raw_data field inside an initializer claiming 2 GiB.
    let ok = model_with(
        vec![node("Relu", "r", &["w"], &["y"])],
        vec![init("w", &[1], 1, vec![0; 4])],
        vec![],
        "y",
    );
    let mut bad = ok.clone();
    let at = bad
        .windows(6)
        .position(|w| w == [0x4a, 0x04, 0, 0, 0, 0])
        .expect("raw_data field of w");
    bad.splice(at + 1..at + 2, [0xff, 0xff, 0xff, 0xff, 0x07]);
    assert!(import_onnx_bytes(&ok).is_ok());
    let e = import_onnx_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("not a valid ONNX model"), "{e}");
    // 100k nested groups of an unknown field: a recursion-limit error, not a stack overflow.
    let mut deep = vec![0xa3, 0x06]; // field 100, start group
    deep = deep.repeat(100_000);
    let e = import_onnx_bytes(&deep).unwrap_err().to_string();
    assert!(e.contains("not a valid ONNX model"), "{e}");
}

/// Models found by fuzzing (`fuzz/`, target onnx_structured) that once made the importer,
/// shape inference, accounting or export panic. Each must now give a result or an error.
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in &files {
        let outcome = std::panic::catch_unwind(|| {
            let Ok(g) = load_onnx(f) else { return };
            if let Ok(shapes) = input_shapes_for_batch(&g, 1) {
                let _ = infer(&g, &shapes);
            }
            let _ = model_stats(&g);
            if let Ok(m) = to_model_proto(&g) {
                let _ = import_onnx_bytes(&m.encode_to_vec());
            }
        });
        assert!(outcome.is_ok(), "{} panics", f.display());
    }
}

/// A tensor whose data lives in `file` at `offset` (external data).
fn external(name: &str, dims: &[i64], file: &str, offset: usize, len: usize) -> pb::TensorProto {
    let kv = |k: &str, v: String| pb::StringStringEntryProto {
        key: k.into(),
        value: v,
    };
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        data_location: 1,
        external_data: vec![
            kv("location", file.into()),
            kv("offset", offset.to_string()),
            kv("length", len.to_string()),
        ],
        ..Default::default()
    }
}

#[test]
fn external_data_is_read_next_to_the_model() {
    // A MatMul weight [3, 2] and a Constant-node bias [2] in one data file (at offsets 16 and
    // 64, as exporters align them), read relative to the model's folder.
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<f32> = vec![1.0, -2.0, 0.5, 4.0, 3.0, -1.5];
    let b: Vec<f32> = vec![0.25, -0.75];
    let mut blob = vec![0u8; 16];
    blob.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    blob.resize(64, 0);
    blob.extend(b.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("m.onnx.data"), &blob).unwrap();
    let c = pb::NodeProto {
        output: vec!["b".into()],
        name: "bias_const".into(),
        op_type: "Constant".into(),
        attribute: vec![pb::AttributeProto {
            name: "value".into(),
            r#type: 4,
            t: Some(external("bv", &[2], "m.onnx.data", 64, 8)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let write = |inits: Vec<pb::TensorProto>, c: pb::NodeProto| {
        let bytes = model_with(
            vec![
                c,
                node("MatMul", "fc", &["x", "w"], &["y0"]),
                node("Add", "add", &["y0", "b"], &["y"]),
            ],
            inits,
            vec![vi("x", &[1, 3])],
            "y",
        );
        let p = dir.path().join("m.onnx");
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let p = write(
        vec![external("w", &[3, 2], "m.onnx.data", 16, 24)],
        c.clone(),
    );
    let g = load_onnx(&p).unwrap();
    let layers = g.layers();
    assert_eq!(layers.len(), 1);
    assert_eq!(g.initializers[&layers[0].weight].to_f32(), w);
    let bias = g.values.iter().position(|v| v.name == "b").unwrap();
    assert_eq!(g.initializers[&bias].to_f32(), b);
    // From bytes there is no folder to read from: an error that says to load from the path.
    let e = import_onnx_bytes(&std::fs::read(&p).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'w'") && e.contains("external file"), "{e}");
    // A file that is too short, a missing file and a location outside the folder are errors
    // naming the tensor or the file.
    let p = write(
        vec![external("w", &[3, 2], "m.onnx.data", 60, 24)],
        c.clone(),
    );
    let e = load_onnx(&p).unwrap_err().to_string();
    assert!(e.contains("'w'") && e.contains("shorter"), "{e}");
    let p = write(vec![external("w", &[3, 2], "gone.data", 0, 24)], c.clone());
    let e = load_onnx(&p).unwrap_err().to_string();
    assert!(e.contains("gone.data"), "{e}");
    let p = write(vec![external("w", &[3, 2], "../m.onnx.data", 16, 24)], c);
    let e = load_onnx(&p).unwrap_err().to_string();
    assert!(e.contains("inside the model's folder"), "{e}");
}
