//! Building ONNX protobufs by hand: value infos, nodes, attributes, tensors and models, for
//! tests and tools that write small ONNX graphs without an ONNX library. Survey: none (file
//! format only). Cost: O(size of what is built).

use crate::onnx_proto::{self as pb, attr_type};

/// A fixed dimension.
pub fn dim(v: i64) -> pb::Dimension {
    pb::Dimension {
        dim_value: Some(v),
        ..Default::default()
    }
}

/// A symbolic dimension named `name` (e.g. the batch).
pub fn sym(name: &str) -> pb::Dimension {
    pb::Dimension {
        dim_param: Some(name.into()),
        ..Default::default()
    }
}

/// A tensor value of element type `elem_type` (1 = float, 7 = int64, …) and shape `dims`.
pub fn value_info(
    name: &str,
    elem_type: i32,
    dims: impl IntoIterator<Item = pb::Dimension>,
) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: dims.into_iter().collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float value whose `None` dimensions are the symbolic batch `N`.
pub fn float_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    value_info(
        name,
        1,
        dims.iter().map(|d| d.map_or_else(|| sym("N"), dim)),
    )
}

/// A node of operator `op` in the default domain.
pub fn node(op: &str, name: &str, ins: &[&str], outs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        ..Default::default()
    }
}

/// `n` with `attrs`.
pub fn with_attrs(mut n: pb::NodeProto, attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    n.attribute = attrs;
    n
}

fn attr(name: &str, kind: i32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: kind,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        i,
        ..attr(name, attr_type::INT)
    }
}

/// A float attribute.
pub fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        f,
        ..attr(name, attr_type::FLOAT)
    }
}

/// A string attribute.
pub fn attr_string(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        s: s.as_bytes().to_vec(),
        ..attr(name, attr_type::STRING)
    }
}

/// An integer-list attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: v.to_vec(),
        ..attr(name, attr_type::INTS)
    }
}

/// A float-list attribute.
pub fn attr_floats(name: &str, v: &[f32]) -> pb::AttributeProto {
    pb::AttributeProto {
        floats: v.to_vec(),
        ..attr(name, attr_type::FLOATS)
    }
}

/// A string-list attribute.
pub fn attr_strings(name: &str, v: &[&str]) -> pb::AttributeProto {
    pb::AttributeProto {
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attr(name, attr_type::STRINGS)
    }
}

/// A float tensor of shape `dims`.
pub fn float_tensor(name: &str, dims: &[i64], v: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: v,
        ..Default::default()
    }
}

/// An int64 tensor of shape `dims`.
pub fn int64_tensor(name: &str, dims: &[i64], v: Vec<i64>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 7,
        int64_data: v,
        ..Default::default()
    }
}

/// A model of the default-domain `opset` with one graph.
pub fn model(
    opset: i64,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}
