//! ONNX export: [`Graph`] → protobuf, at opset 13 or the lowest later opset the graph needs.
//! The file is written to a temporary name and renamed, so a failed export leaves nothing.

use crate::error::{GraphError, Result};
use crate::ir::{
    AutoPad, Dim, Graph, NearestMode, Op, PadMode, Recurrent, RecurrentKind, Reduce, ResizeCoords,
    ResizeMode, Unary, ValueId, Window,
};
use crate::onnx_proto::{self as pb, attr_type, data_type};
use crate::tensor::{Tensor, TensorData};
use prost::Message;
use std::path::Path;

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}
fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f,
        ..Default::default()
    }
}
fn attr_ints(name: &str, v: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}
fn attr_s(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: attr_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Encode a host tensor as a TensorProto (floats as FLOAT, integers as INT64).
pub fn tensor_to_proto(name: &str, t: &Tensor) -> pb::TensorProto {
    let (data_type, raw_data) = match &t.data {
        TensorData::F32(v) => (
            data_type::FLOAT,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        TensorData::I64(v) => (
            data_type::INT64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    pb::TensorProto {
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type,
        name: name.into(),
        raw_data,
        ..Default::default()
    }
}

fn window_attrs(w: &Window, out: &mut Vec<pb::AttributeProto>) {
    if !w.kernel.is_empty() {
        out.push(attr_ints("kernel_shape", &w.kernel));
    }
    if !w.strides.is_empty() {
        out.push(attr_ints("strides", &w.strides));
    }
    if !w.dilations.is_empty() {
        out.push(attr_ints("dilations", &w.dilations));
    }
    match w.auto_pad {
        AutoPad::NotSet => {
            if !w.pads.is_empty() {
                out.push(attr_ints("pads", &w.pads));
            }
        }
        AutoPad::SameUpper => out.push(attr_s("auto_pad", "SAME_UPPER")),
        AutoPad::SameLower => out.push(attr_s("auto_pad", "SAME_LOWER")),
        AutoPad::Valid => out.push(attr_s("auto_pad", "VALID")),
    }
    if w.ceil_mode {
        out.push(attr_i("ceil_mode", 1));
    }
}

fn recurrent_attrs(r: &Recurrent, out: &mut Vec<pb::AttributeProto>) {
    out.push(attr_i("hidden_size", r.hidden_size as i64));
    out.push(attr_s("direction", r.direction.onnx_name()));
    out.push(pb::AttributeProto {
        name: "activations".into(),
        r#type: attr_type::STRINGS,
        strings: r
            .activations
            .iter()
            .map(|a| a.kind.onnx_name().as_bytes().to_vec())
            .collect(),
        ..Default::default()
    });
    let mut alphas = Vec::new();
    let mut betas = Vec::new();
    for a in &r.activations {
        let (ua, ub) = a.kind.uses_alpha_beta();
        if ua {
            alphas.push(a.alpha);
        }
        if ub {
            betas.push(a.beta);
        }
    }
    for (name, v) in [("activation_alpha", alphas), ("activation_beta", betas)] {
        if !v.is_empty() {
            out.push(pb::AttributeProto {
                name: name.into(),
                r#type: attr_type::FLOATS,
                floats: v,
                ..Default::default()
            });
        }
    }
    if let Some(c) = r.clip {
        out.push(attr_f("clip", c));
    }
    if r.input_forget {
        out.push(attr_i("input_forget", 1));
    }
    if r.kind == RecurrentKind::Gru {
        out.push(attr_i("linear_before_reset", r.linear_before_reset as i64));
    }
    if r.batch_first {
        out.push(attr_i("layout", 1));
    }
}

fn value_info(g: &Graph, v: ValueId) -> pb::ValueInfoProto {
    let val = &g.values[v];
    let shape = val.shape.as_ref().map(|s| pb::TensorShapeProto {
        dim: s
            .iter()
            .map(|d| match d {
                Dim::Fixed(x) => pb::Dimension {
                    dim_value: Some(*x as i64),
                    ..Default::default()
                },
                Dim::Symbolic(p) => pb::Dimension {
                    dim_param: Some(p.clone()),
                    ..Default::default()
                },
            })
            .collect(),
    });
    pb::ValueInfoProto {
        name: val.name.clone(),
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type: val.elem_type.max(1),
                shape,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Build the ONNX model message for a graph.
pub fn to_model_proto(g: &Graph) -> Result<pb::ModelProto> {
    let mut opset = 13i64;
    let name = |v: ValueId| g.values[v].name.clone();
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let mut attribute = Vec::new();
        let op_type = n.op.onnx_name().to_string();
        match &n.op {
            Op::Conv { window, group } => {
                window_attrs(window, &mut attribute);
                attribute.push(attr_i("group", *group as i64));
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                attribute.extend([attr_f("alpha", *alpha), attr_f("beta", *beta)]);
                attribute.extend([
                    attr_i("transA", *trans_a as i64),
                    attr_i("transB", *trans_b as i64),
                ]);
            }
            Op::LeakyRelu { alpha } => attribute.push(attr_f("alpha", *alpha)),
            Op::BatchNorm { epsilon } => attribute.push(attr_f("epsilon", *epsilon)),
            Op::MaxPool(w) => window_attrs(w, &mut attribute),
            Op::AveragePool {
                window,
                count_include_pad,
            } => {
                window_attrs(window, &mut attribute);
                attribute.push(attr_i("count_include_pad", *count_include_pad as i64));
            }
            Op::Flatten { axis } => attribute.push(attr_i("axis", *axis)),
            Op::Reshape { allowzero: true } => {
                opset = opset.max(14);
                attribute.push(attr_i("allowzero", 1));
            }
            Op::Transpose { perm: Some(p) } => attribute.push(attr_ints("perm", p)),
            Op::Concat { axis } => attribute.push(attr_i("axis", *axis)),
            Op::Softmax { axis, legacy } | Op::LogSoftmax { axis, legacy } => {
                if *legacy {
                    // Opset < 13 semantics: softmax over the input flattened to 2-D at `axis`.
                    let x = n.input(0).map(name).unwrap_or_default();
                    let base = format!("{}::legacy", n.name);
                    nodes.push(pb::NodeProto {
                        input: vec![x.clone()],
                        output: vec![format!("{base}_flat")],
                        name: format!("{base}_flatten"),
                        op_type: "Flatten".into(),
                        attribute: vec![attr_i("axis", *axis)],
                        ..Default::default()
                    });
                    nodes.push(pb::NodeProto {
                        input: vec![x],
                        output: vec![format!("{base}_shape")],
                        name: format!("{base}_shape"),
                        op_type: "Shape".into(),
                        ..Default::default()
                    });
                    nodes.push(pb::NodeProto {
                        input: vec![format!("{base}_flat")],
                        output: vec![format!("{base}_sm")],
                        name: n.name.clone(),
                        op_type: op_type.clone(),
                        attribute: vec![attr_i("axis", 1)],
                        ..Default::default()
                    });
                    nodes.push(pb::NodeProto {
                        input: vec![format!("{base}_sm"), format!("{base}_shape")],
                        output: n.outputs.iter().map(|&o| name(o)).collect(),
                        name: format!("{base}_reshape"),
                        op_type: "Reshape".into(),
                        ..Default::default()
                    });
                    continue;
                }
                attribute.push(attr_i("axis", *axis));
            }
            Op::Pad { mode } => {
                if n.input(3).is_some() {
                    opset = opset.max(18);
                }
                let m = match mode {
                    PadMode::Constant => "constant",
                    PadMode::Reflect => "reflect",
                    PadMode::Edge => "edge",
                };
                attribute.push(attr_s("mode", m));
            }
            Op::Shape { start, end } if *start != 0 || end.is_some() => {
                opset = opset.max(15);
                attribute.push(attr_i("start", *start));
                if let Some(e) = end {
                    attribute.push(attr_i("end", *e));
                }
            }
            Op::Gather { axis } => attribute.push(attr_i("axis", *axis)),
            Op::ConstantOfShape { value } => attribute.push(pb::AttributeProto {
                name: "value".into(),
                r#type: attr_type::TENSOR,
                t: Some(tensor_to_proto("", value)),
                ..Default::default()
            }),
            Op::Cast { to } => attribute.push(attr_i("to", *to as i64)),
            Op::Mod { fmod: true } => attribute.push(attr_i("fmod", 1)),
            Op::Unary(u) => match *u {
                Unary::Elu { alpha } => attribute.push(attr_f("alpha", alpha)),
                Unary::Selu { alpha, gamma } => {
                    attribute.extend([attr_f("alpha", alpha), attr_f("gamma", gamma)])
                }
                Unary::HardSigmoid { alpha, beta } => {
                    attribute.extend([attr_f("alpha", alpha), attr_f("beta", beta)])
                }
                Unary::HardSwish => opset = opset.max(14),
                Unary::ThresholdedRelu { alpha } | Unary::Celu { alpha } => {
                    attribute.push(attr_f("alpha", alpha))
                }
                Unary::Gelu { tanh } => {
                    opset = opset.max(20);
                    attribute.push(attr_s("approximate", if tanh { "tanh" } else { "none" }));
                }
                _ => {}
            },
            Op::Split { axis, num_outputs } => {
                attribute.push(attr_i("axis", *axis));
                if let Some(k) = num_outputs {
                    opset = opset.max(18);
                    attribute.push(attr_i("num_outputs", *k as i64));
                }
            }
            Op::Reduce {
                kind,
                keepdims,
                noop_with_empty_axes,
            } => {
                // Axes as an input: ReduceSum from opset 13, the others from opset 18.
                if *kind != Reduce::Sum && (n.input(1).is_some() || *noop_with_empty_axes) {
                    opset = opset.max(18);
                }
                attribute.push(attr_i("keepdims", *keepdims as i64));
                if *noop_with_empty_axes {
                    attribute.push(attr_i("noop_with_empty_axes", 1));
                }
            }
            Op::ArgExtreme {
                axis,
                keepdims,
                select_last_index,
                ..
            } => attribute.extend([
                attr_i("axis", *axis),
                attr_i("keepdims", *keepdims as i64),
                attr_i("select_last_index", *select_last_index as i64),
            ]),
            Op::ConvTranspose {
                window,
                group,
                output_padding,
                output_shape,
            } => {
                window_attrs(window, &mut attribute);
                attribute.push(attr_i("group", *group as i64));
                if !output_padding.is_empty() {
                    attribute.push(attr_ints("output_padding", output_padding));
                }
                if let Some(o) = output_shape {
                    attribute.push(attr_ints("output_shape", o));
                }
            }
            Op::Resize(r) => {
                opset = opset.max(if r.axes.is_some() { 18 } else { 13 });
                let mode = match r.mode {
                    ResizeMode::Nearest => "nearest",
                    ResizeMode::Linear => "linear",
                    ResizeMode::Cubic => "cubic",
                };
                let coords = match r.coords {
                    ResizeCoords::HalfPixel => "half_pixel",
                    ResizeCoords::PytorchHalfPixel => "pytorch_half_pixel",
                    ResizeCoords::AlignCorners => "align_corners",
                    ResizeCoords::Asymmetric => "asymmetric",
                    ResizeCoords::TfHalfPixelForNn => "tf_half_pixel_for_nn",
                };
                let nearest = match r.nearest {
                    NearestMode::RoundPreferFloor => "round_prefer_floor",
                    NearestMode::RoundPreferCeil => "round_prefer_ceil",
                    NearestMode::Floor => "floor",
                    NearestMode::Ceil => "ceil",
                };
                attribute.extend([
                    attr_s("mode", mode),
                    attr_s("coordinate_transformation_mode", coords),
                    attr_s("nearest_mode", nearest),
                    attr_f("cubic_coeff_a", r.cubic_a),
                    attr_i("exclude_outside", r.exclude_outside as i64),
                ]);
                if let Some(ax) = &r.axes {
                    attribute.push(pb::AttributeProto {
                        name: "axes".into(),
                        r#type: attr_type::INTS,
                        ints: ax.clone(),
                        ..Default::default()
                    });
                }
            }
            Op::LayerNorm { axis, epsilon } => {
                opset = opset.max(17);
                attribute.extend([attr_i("axis", *axis), attr_f("epsilon", *epsilon)]);
            }
            Op::InstanceNorm { epsilon } => attribute.push(attr_f("epsilon", *epsilon)),
            Op::Recurrent(r) => {
                recurrent_attrs(r, &mut attribute);
                if r.batch_first {
                    opset = opset.max(14);
                }
                // Omitted outputs keep their positions as empty names.
                let mut output = Vec::with_capacity(3);
                let mut produced = n.outputs.iter();
                for k in 0..3 {
                    if r.outputs[k] {
                        output.push(produced.next().map(|&o| name(o)).unwrap_or_default());
                    } else if r.outputs[k..].iter().any(|&b| b) {
                        output.push(String::new());
                    }
                }
                nodes.push(pb::NodeProto {
                    input: n
                        .inputs
                        .iter()
                        .map(|v| v.map(name).unwrap_or_default())
                        .collect(),
                    output,
                    name: n.name.clone(),
                    op_type,
                    attribute,
                    ..Default::default()
                });
                continue;
            }
            _ => {}
        }
        nodes.push(pb::NodeProto {
            input: n
                .inputs
                .iter()
                .map(|v| v.map(name).unwrap_or_default())
                .collect(),
            output: n.outputs.iter().map(|&o| name(o)).collect(),
            name: n.name.clone(),
            op_type,
            attribute,
            ..Default::default()
        });
    }
    let initializer: Vec<pb::TensorProto> = g
        .initializers
        .iter()
        .map(|(v, t)| tensor_to_proto(&name(*v), t))
        .collect();
    let graph = pb::GraphProto {
        node: nodes,
        name: if g.name.is_empty() {
            "mixprec".into()
        } else {
            g.name.clone()
        },
        initializer,
        input: g.inputs.iter().map(|&v| value_info(g, v)).collect(),
        output: g.outputs.iter().map(|&v| value_info(g, v)).collect(),
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "mixprec".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    })
}

/// Write `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| GraphError::Io {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Export a graph as an ONNX file.
pub fn save_onnx(g: &Graph, path: impl AsRef<Path>) -> Result<()> {
    let model = to_model_proto(g)?;
    write_atomic(path.as_ref(), &model.encode_to_vec())
}
