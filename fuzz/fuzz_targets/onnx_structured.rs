//! Structure-aware ONNX fuzzing: the input bytes choose a small but well-formed model (graph
//! inputs, initializers, up to eight nodes of supported operators with attributes drawn from
//! each operator's real attribute names, including hostile values), which then goes through
//! import, shape inference, accounting and an export/re-import round trip. Reaches the
//! operator-specific code that random protobuf bytes rarely get to.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mixprec_graph::onnx_proto as pb;
use prost::Message;

const INT_ATTRS: &[&str] = &[
    "axis",
    "group",
    "transA",
    "transB",
    "ceil_mode",
    "count_include_pad",
    "allowzero",
    "start",
    "end",
    "to",
    "storage_order",
    "training_mode",
    "keepdims",
];
const INTS_ATTRS: &[&str] = &[
    "kernel_shape",
    "strides",
    "pads",
    "dilations",
    "perm",
    "axes",
    "shape",
    "starts",
    "ends",
];
const FLOAT_ATTRS: &[&str] = &["alpha", "beta", "epsilon", "min", "max", "ratio", "value"];

fn small_int(u: &mut Unstructured) -> Result<i64> {
    Ok(match u.int_in_range(0..=9)? {
        0 => i64::MAX,
        1 => i64::MIN,
        2 => 1 << 40,
        _ => u.int_in_range(-4..=8)?,
    })
}

fn dims(u: &mut Unstructured) -> Result<Vec<i64>> {
    let r = u.int_in_range(0..=4)?;
    (0..r)
        .map(|_| {
            Ok(if u.ratio(1, 20)? {
                small_int(u)?
            } else {
                u.int_in_range(0..=5)?
            })
        })
        .collect()
}

fn tensor(u: &mut Unstructured, name: String) -> Result<pb::TensorProto> {
    let d = dims(u)?;
    let n: i64 = d.iter().map(|&x| x.clamp(0, 64)).product::<i64>().min(256);
    let float = u.arbitrary::<bool>()?;
    let mut t = pb::TensorProto {
        name,
        dims: d,
        data_type: if float { 1 } else { 7 },
        ..Default::default()
    };
    // Sometimes the wrong number of elements, on purpose.
    let n = if u.ratio(1, 10)? { n + 1 } else { n };
    for _ in 0..n {
        if float {
            t.float_data.push(u.arbitrary()?);
        } else {
            t.int64_data.push(small_int(u)?);
        }
    }
    Ok(t)
}

fn value_info(u: &mut Unstructured, name: String) -> Result<pb::ValueInfoProto> {
    let d = dims(u)?;
    Ok(pb::ValueInfoProto {
        name,
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type: if u.ratio(1, 4)? { 7 } else { 1 },
                shape: Some(pb::TensorShapeProto {
                    dim: d
                        .into_iter()
                        .map(|x| pb::Dimension {
                            dim_value: Some(x),
                            ..Default::default()
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn model(u: &mut Unstructured) -> Result<pb::ModelProto> {
    let opset = *u.choose(&[7i64, 9, 10, 11, 12, 13, 14, 15, 18])?;
    let mut names: Vec<String> = Vec::new();
    let mut input = Vec::new();
    for i in 0..u.int_in_range(0..=2)? {
        let n = format!("in{i}");
        input.push(value_info(u, n.clone())?);
        names.push(n);
    }
    let mut initializer = Vec::new();
    for i in 0..u.int_in_range(0..=3)? {
        let n = format!("w{i}");
        initializer.push(tensor(u, n.clone())?);
        names.push(n);
    }
    let mut node = Vec::new();
    for k in 0..u.int_in_range(1..=8)? {
        let op = *u.choose(mixprec_graph::SUPPORTED_OPS)?;
        let n_in = u.int_in_range(0..=5)?;
        let mut ins = Vec::new();
        for _ in 0..n_in {
            ins.push(if names.is_empty() || u.ratio(1, 12)? {
                String::new()
            } else {
                u.choose(&names)?.clone()
            });
        }
        let mut attribute = Vec::new();
        for _ in 0..u.int_in_range(0..=4)? {
            let a = match u.int_in_range(0..=4)? {
                0 | 1 => pb::AttributeProto {
                    name: u.choose(INT_ATTRS)?.to_string(),
                    r#type: 2,
                    i: small_int(u)?,
                    ..Default::default()
                },
                2 => pb::AttributeProto {
                    name: u.choose(INTS_ATTRS)?.to_string(),
                    r#type: 7,
                    ints: (0..u.int_in_range(0..=6)?)
                        .map(|_| small_int(u))
                        .collect::<Result<_>>()?,
                    ..Default::default()
                },
                3 => pb::AttributeProto {
                    name: u.choose(FLOAT_ATTRS)?.to_string(),
                    r#type: 1,
                    f: u.arbitrary()?,
                    ..Default::default()
                },
                _ => {
                    let (name, vals): (&str, &[&str]) = *u.choose(&[
                        (
                            "auto_pad",
                            &["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "X"][..],
                        ),
                        ("mode", &["constant", "reflect", "edge", "wrap"][..]),
                    ])?;
                    let t = if u.ratio(1, 3)? {
                        Some(tensor(u, String::new())?)
                    } else {
                        None
                    };
                    pb::AttributeProto {
                        name: if t.is_some() {
                            "value".into()
                        } else {
                            name.into()
                        },
                        r#type: if t.is_some() { 4 } else { 3 },
                        s: u.choose(vals)?.as_bytes().to_vec(),
                        t,
                        ..Default::default()
                    }
                }
            };
            attribute.push(a);
        }
        let n_out = if u.ratio(1, 6)? { 2 } else { 1 };
        let outs: Vec<String> = (0..n_out).map(|j| format!("v{k}_{j}")).collect();
        names.extend(outs.iter().cloned());
        node.push(pb::NodeProto {
            input: ins,
            output: outs,
            name: format!("n{k}"),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
    }
    let last = names.last().cloned().unwrap_or_default();
    let output = vec![value_info(u, last)?];
    Ok(pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(pb::GraphProto {
            node,
            name: "fuzz".into(),
            initializer,
            input,
            output,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(m) = model(&mut u) else { return };
    let bytes = m.encode_to_vec();
    // Reproducing a crash: `MIXPREC_FUZZ_DUMP=model.onnx cargo fuzz run onnx_structured FILE`
    // writes the generated model, which becomes a regression file of mixprec-graph.
    if let Some(p) = std::env::var_os("MIXPREC_FUZZ_DUMP") {
        let _ = std::fs::write(p, &bytes);
    }
    let Ok(g) = mixprec_graph::import_onnx_bytes(&bytes) else {
        return;
    };
    if let Ok(shapes) = mixprec_graph::input_shapes_for_batch(&g, 1) {
        let _ = mixprec_graph::infer(&g, &shapes);
    }
    let _ = mixprec_graph::model_stats(&g);
    if let Ok(m2) = mixprec_graph::to_model_proto(&g) {
        let _ = mixprec_graph::import_onnx_bytes(&m2.encode_to_vec());
    }
});
