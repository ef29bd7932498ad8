//! Import, shape inference, constant folding and export of the element-wise, comparison,
//! layout, reduction and normalisation operators, on hand-built ONNX protobufs: opset-dependent
//! attribute forms, errors that name the node, symbolic batch sizes through shape
//! sub-graphs, and export → import round trips.

use mixprec_graph::ir::{Reduce, Unary};
use mixprec_graph::onnx_build::{
    self, attr_float, attr_int, attr_ints, attr_string, float_info, node, with_attrs,
};
use mixprec_graph::onnx_proto as pb;
use mixprec_graph::*;
use prost::Message;

fn fixed(dims: &[i64]) -> Vec<Option<i64>> {
    dims.iter().map(|&d| Some(d)).collect()
}

fn model(
    opset: i64,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outs: &[&str],
) -> Vec<u8> {
    let outs = outs.iter().map(|o| float_info(o, &[])).collect();
    onnx_build::model(opset, nodes, inits, inputs, outs).encode_to_vec()
}

fn ints(name: &str, v: &[i64]) -> pb::TensorProto {
    export::tensor_to_proto(name, &Tensor::i64(vec![v.len()], v.to_vec()).unwrap())
}

fn scalar_i(name: &str, v: i64) -> pb::TensorProto {
    export::tensor_to_proto(name, &Tensor::i64(vec![], vec![v]).unwrap())
}

fn shapes_of(g: &Graph, input: Vec<usize>, names: &[&str]) -> Vec<Vec<usize>> {
    let inf = infer(g, &[input]).unwrap();
    names
        .iter()
        .map(|n| inf.shapes[g.value_id(n).unwrap()].clone().unwrap())
        .collect()
}

#[test]
fn reduce_axes_attribute_and_input_forms_agree() {
    let attr_form = model(
        13,
        vec![with_attrs(
            node("ReduceMean", "rm", &["x"], &["y"]),
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
        )],
        vec![],
        vec![float_info("x", &fixed(&[2, 3, 4]))],
        &["y"],
    );
    let input_form = model(
        18,
        vec![with_attrs(
            node("ReduceMean", "rm", &["x", "ax"], &["y"]),
            vec![attr_int("keepdims", 0)],
        )],
        vec![ints("ax", &[1])],
        vec![float_info("x", &fixed(&[2, 3, 4]))],
        &["y"],
    );
    for bytes in [attr_form, input_form] {
        let g = import_onnx_bytes(&bytes).unwrap();
        assert_eq!(
            g.nodes[0].op,
            Op::Reduce {
                kind: Reduce::Mean,
                keepdims: false,
                noop_with_empty_axes: false
            }
        );
        assert_eq!(shapes_of(&g, vec![2, 3, 4], &["y"]), vec![vec![2, 4]]);
    }
    // ReduceSum took axes as an input from opset 13: an attribute there is an error.
    let bad = model(
        13,
        vec![with_attrs(
            node("ReduceSum", "rs7", &["x"], &["y"]),
            vec![attr_ints("axes", &[1])],
        )],
        vec![],
        vec![float_info("x", &fixed(&[2, 3]))],
        &["y"],
    );
    let e = import_onnx_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("rs7") && e.contains("attribute"), "{e}");
    // noop_with_empty_axes without axes is the identity; without it every axis is reduced.
    for (noop, want) in [(1, vec![2, 3]), (0, vec![1, 1])] {
        let g = import_onnx_bytes(&model(
            13,
            vec![with_attrs(
                node("ReduceSum", "rs", &["x"], &["y"]),
                vec![attr_int("noop_with_empty_axes", noop)],
            )],
            vec![],
            vec![float_info("x", &fixed(&[2, 3]))],
            &["y"],
        ))
        .unwrap();
        assert_eq!(shapes_of(&g, vec![2, 3], &["y"]), vec![want]);
    }
}

#[test]
fn split_forms_by_opset() {
    let outs = ["a", "b"];
    let cases = [
        model(
            11,
            vec![with_attrs(
                node("Split", "sp", &["x"], &outs),
                vec![attr_int("axis", 1), attr_ints("split", &[1, 3])],
            )],
            vec![],
            vec![float_info("x", &fixed(&[2, 4]))],
            &outs,
        ),
        model(
            13,
            vec![with_attrs(
                node("Split", "sp", &["x", "s"], &outs),
                vec![attr_int("axis", -1)],
            )],
            vec![ints("s", &[1, 3])],
            vec![float_info("x", &fixed(&[2, 4]))],
            &outs,
        ),
    ];
    for bytes in cases {
        let g = import_onnx_bytes(&bytes).unwrap();
        assert_eq!(
            shapes_of(&g, vec![2, 4], &outs),
            vec![vec![2, 1], vec![2, 3]]
        );
    }
    // Opset 18 num_outputs: chunks of ceil(7 / 3), the last one smaller.
    let three = ["a", "b", "c"];
    let g = import_onnx_bytes(&model(
        18,
        vec![with_attrs(
            node("Split", "sp", &["x"], &three),
            vec![attr_int("num_outputs", 3)],
        )],
        vec![],
        vec![float_info("x", &fixed(&[7]))],
        &three,
    ))
    .unwrap();
    assert_eq!(
        shapes_of(&g, vec![7], &three),
        vec![vec![3], vec![3], vec![1]]
    );
    let e = import_onnx_bytes(&model(
        18,
        vec![with_attrs(
            node("Split", "split_bad", &["x"], &outs),
            vec![attr_int("num_outputs", 3)],
        )],
        vec![],
        vec![float_info("x", &fixed(&[7]))],
        &outs,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("split_bad") && e.contains("num_outputs"), "{e}");
    // Without sizes, an uneven axis is a shape error naming the node.
    let g = import_onnx_bytes(&model(
        13,
        vec![node("Split", "sp_uneven", &["x"], &outs)],
        vec![],
        vec![float_info("x", &fixed(&[5]))],
        &outs,
    ))
    .unwrap();
    let e = infer(&g, &[vec![5]]).unwrap_err().to_string();
    assert!(e.contains("sp_uneven") && e.contains("evenly"), "{e}");
}

/// x [N, 3]: n = ReduceProd(Shape(x)); r = Range(0, n, 1); m = Less(r, 4);
/// w = Where(m, r, 0); e = Expand(b, Shape(x)); t = Tile(x, [2, 1]).
#[test]
fn symbolic_batch_flows_through_shape_subgraphs() {
    let bytes = model(
        13,
        vec![
            node("Shape", "shape", &["x"], &["s"]),
            with_attrs(
                node("ReduceProd", "numel", &["s"], &["n"]),
                vec![attr_int("keepdims", 0)],
            ),
            node("Range", "range", &["zero", "n", "one"], &["r"]),
            node("Less", "less", &["r", "four"], &["m"]),
            node("Where", "where", &["m", "r", "zero"], &["w"]),
            node("Expand", "expand", &["b", "s"], &["e"]),
            node("Tile", "tile", &["x", "reps"], &["t"]),
        ],
        vec![
            scalar_i("zero", 0),
            scalar_i("one", 1),
            scalar_i("four", 4),
            export::tensor_to_proto("b", &Tensor::f32(vec![3], vec![1., 2., 3.]).unwrap()),
            ints("reps", &[2, 1]),
        ],
        vec![float_info("x", &[None, Some(3)])],
        &["w", "e", "t"],
    );
    let g = import_onnx_bytes(&bytes).unwrap();
    for batch in [2usize, 5] {
        let inf = infer(&g, &input_shapes_for_batch(&g, batch).unwrap()).unwrap();
        let id = |n: &str| g.value_id(n).unwrap();
        let w = &inf.consts[&id("w")];
        let want: Vec<i64> = (0..3 * batch as i64)
            .map(|k| if k < 4 { k } else { 0 })
            .collect();
        assert_eq!(w.to_i64(), want, "batch {batch}");
        assert_eq!(inf.shapes[id("e")], Some(vec![batch, 3]));
        assert_eq!(inf.shapes[id("t")], Some(vec![2 * batch, 3]));
    }
}

#[test]
fn constant_subgraphs_fold_at_import() {
    // Every input is an initializer: the chain folds into one initializer.
    let bytes = model(
        13,
        vec![
            node("Range", "range", &["zero", "six", "one"], &["r"]),
            node("Cast", "cast", &["r"], &["rf"]),
            node("GreaterOrEqual", "ge", &["rf", "thr"], &["m"]),
            node("Not", "not", &["m"], &["nm"]),
            node("Where", "where", &["nm", "rf", "neg"], &["w"]),
            node("Pow", "pow", &["w", "two"], &["p"]),
            with_attrs(
                node("ReduceSum", "sum", &["p", "ax"], &["y"]),
                vec![attr_int("keepdims", 0)],
            ),
        ],
        vec![
            scalar_i("zero", 0),
            scalar_i("six", 6),
            scalar_i("one", 1),
            export::tensor_to_proto("thr", &Tensor::f32(vec![], vec![3.0]).unwrap()),
            export::tensor_to_proto("neg", &Tensor::f32(vec![], vec![-1.0]).unwrap()),
            export::tensor_to_proto("two", &Tensor::f32(vec![], vec![2.0]).unwrap()),
            ints("ax", &[0]),
        ],
        vec![],
        &["y"],
    );
    // Cast needs its `to`; rebuild the node with it.
    let mut m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let gp = m.graph.as_mut().unwrap();
    gp.node[1].attribute = vec![attr_int("to", 1)];
    let g = import_onnx_bytes(&m.encode_to_vec()).unwrap();
    assert!(g.nodes.is_empty(), "left: {:?}", g.nodes);
    let y = &g.initializers[&g.value_id("y").unwrap()];
    // 0² + 1² + 2² + 3 × (−1)².
    assert_eq!(y.to_f32(), vec![8.0]);
}

#[test]
fn attribute_errors_name_the_node() {
    let cases: [(pb::NodeProto, &str); 3] = [
        (
            with_attrs(
                node("Gelu", "gelu_fast", &["x"], &["y"]),
                vec![attr_string("approximate", "fast")],
            ),
            "approximate",
        ),
        (node("Where", "where_two", &["x", "x"], &["y"]), "inputs"),
        (
            node(
                "LayerNormalization",
                "ln_gap",
                &["x", "x"],
                &["y", "", "inv"],
            ),
            "InvStdDev",
        ),
    ];
    for (n, what) in cases {
        let name = n.name.clone();
        let e = import_onnx_bytes(&model(
            20,
            vec![n],
            vec![],
            vec![float_info("x", &fixed(&[2]))],
            &["y"],
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(&name) && e.contains(what), "{e}");
    }
}

#[test]
fn export_round_trip_keeps_operators_and_attributes() {
    let nodes = vec![
        with_attrs(
            node("Elu", "elu", &["x"], &["a"]),
            vec![attr_float("alpha", 0.5)],
        ),
        with_attrs(
            node("Gelu", "gelu", &["a"], &["b"]),
            vec![attr_string("approximate", "tanh")],
        ),
        with_attrs(
            node("HardSigmoid", "hs", &["b"], &["c"]),
            vec![attr_float("alpha", 0.3), attr_float("beta", 0.4)],
        ),
        with_attrs(
            node("LayerNormalization", "ln", &["c", "scale"], &["d"]),
            vec![attr_int("axis", -1), attr_float("epsilon", 1e-3)],
        ),
        with_attrs(
            node("Split", "split", &["d"], &["e", "f"]),
            vec![attr_int("axis", 1), attr_int("num_outputs", 2)],
        ),
        node("Max", "max", &["e", "f", "c"], &["g"]),
        with_attrs(
            node("ReduceL2", "l2", &["g", "ax"], &["h"]),
            vec![attr_int("keepdims", 0)],
        ),
        with_attrs(
            node("ArgMax", "am", &["g"], &["i"]),
            vec![attr_int("axis", 1), attr_int("select_last_index", 1)],
        ),
        node("PRelu", "prelu", &["h", "slope"], &["j"]),
    ];
    let bytes = model(
        20,
        nodes,
        vec![
            export::tensor_to_proto("scale", &Tensor::f32(vec![4], vec![1.0; 4]).unwrap()),
            export::tensor_to_proto("slope", &Tensor::f32(vec![1], vec![0.1]).unwrap()),
            ints("ax", &[-1]),
        ],
        vec![float_info("x", &[None, Some(2), Some(4)])],
        &["i", "j"],
    );
    let g = import_onnx_bytes(&bytes).unwrap();
    assert_eq!(g.nodes[1].op, Op::Unary(Unary::Gelu { tanh: true }));
    let inf = infer(&g, &[vec![3, 2, 4]]).unwrap();
    let id = |n: &str| g.value_id(n).unwrap();
    assert_eq!(inf.shapes[id("e")], Some(vec![3, 1, 4]));
    assert_eq!(inf.shapes[id("i")], Some(vec![3, 1, 4]));
    assert_eq!(inf.shapes[id("j")], Some(vec![3, 2]));
    let proto = to_model_proto(&g).unwrap();
    assert!(proto.opset_import[0].version >= 20, "Gelu needs opset 20");
    let g2 = import_onnx_bytes(&proto.encode_to_vec()).unwrap();
    let ops = |g: &Graph| g.nodes.iter().map(|n| n.op.clone()).collect::<Vec<_>>();
    assert_eq!(ops(&g), ops(&g2));
    let inf2 = infer(&g2, &[vec![3, 2, 4]]).unwrap();
    for n in ["e", "g", "h", "i", "j"] {
        assert_eq!(
            inf.shapes[id(n)],
            inf2.shapes[g2.value_id(n).unwrap()],
            "{n}"
        );
    }
    // Opset 13 attribute forms re-export in the input form at the opset that reads it.
    let g = import_onnx_bytes(&model(
        13,
        vec![with_attrs(
            node("ReduceMax", "rmax", &["x"], &["y"]),
            vec![attr_ints("axes", &[0])],
        )],
        vec![],
        vec![float_info("x", &fixed(&[2, 3]))],
        &["y"],
    ))
    .unwrap();
    let proto = to_model_proto(&g).unwrap();
    assert_eq!(proto.opset_import[0].version, 18);
    let g2 = import_onnx_bytes(&proto.encode_to_vec()).unwrap();
    assert_eq!(
        infer(&g2, &[vec![2, 3]]).unwrap().shapes[g2.value_id("y").unwrap()],
        Some(vec![1, 3])
    );
}

#[test]
fn upsample_and_resize_forms_import_infer_and_round_trip() {
    let af32 = |name: &str, v: &[f32]| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attr_type::FLOATS,
        floats: v.to_vec(),
        ..Default::default()
    };
    // Opset 7 Upsample with a scales attribute: nearest, asymmetric, floor.
    let g = import_onnx_bytes(&model(
        7,
        vec![with_attrs(
            node("Upsample", "up", &["x"], &["y"]),
            vec![af32("scales", &[1.0, 1.0, 2.0, 3.0])],
        )],
        vec![],
        vec![float_info("x", &[None, Some(2), Some(3), Some(4)])],
        &["y"],
    ))
    .unwrap();
    assert_eq!(
        shapes_of(&g, vec![2, 2, 3, 4], &["y"]),
        vec![vec![2, 2, 6, 12]]
    );
    let Op::Resize(r) = &g.nodes[0].op else {
        panic!("{:?}", g.nodes[0].op)
    };
    assert_eq!(r.coords, ir::ResizeCoords::Asymmetric);
    assert_eq!(r.nearest, ir::NearestMode::Floor);
    // Opset 13 Resize with sizes, exported and imported again.
    let g = import_onnx_bytes(&model(
        13,
        vec![with_attrs(
            node("Resize", "rs", &["x", "", "", "sz"], &["y"]),
            vec![
                attr_string("mode", "cubic"),
                attr_string("coordinate_transformation_mode", "align_corners"),
                attr_float("cubic_coeff_a", -0.5),
                attr_int("exclude_outside", 1),
            ],
        )],
        vec![ints("sz", &[1, 2, 5, 9])],
        vec![float_info("x", &fixed(&[1, 2, 3, 4]))],
        &["y"],
    ))
    .unwrap();
    let g2 = import_onnx_bytes(&to_model_proto(&g).unwrap().encode_to_vec()).unwrap();
    assert_eq!(g.nodes[0].op, g2.nodes[0].op);
    assert_eq!(
        shapes_of(&g2, vec![1, 2, 3, 4], &["y"]),
        vec![vec![1, 2, 5, 9]]
    );
    // Unsupported modes are import errors naming the node.
    let e = import_onnx_bytes(&model(
        13,
        vec![with_attrs(
            node("Resize", "crop7", &["x", "roi", "sc"], &["y"]),
            vec![attr_string(
                "coordinate_transformation_mode",
                "tf_crop_and_resize",
            )],
        )],
        vec![],
        vec![
            float_info("x", &fixed(&[1, 4])),
            float_info("roi", &fixed(&[4])),
            float_info("sc", &fixed(&[2])),
        ],
        &["y"],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("crop7") && e.contains("tf_crop_and_resize"),
        "{e}"
    );
}

#[test]
fn conv_transpose_shapes_and_round_trip() {
    let w = export::tensor_to_proto("w", &Tensor::f32(vec![4, 3, 3, 3], vec![0.1; 108]).unwrap());
    let g = import_onnx_bytes(&model(
        13,
        vec![with_attrs(
            node("ConvTranspose", "up", &["x", "w"], &["y"]),
            vec![
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 0, 0]),
                attr_ints("output_padding", &[1, 0]),
                attr_int("group", 2),
            ],
        )],
        vec![w],
        vec![float_info("x", &[None, Some(4), Some(5), Some(6)])],
        &["y"],
    ))
    .unwrap();
    // (in − 1)·s + (k − 1) + 1 − pads + output_padding; C_out = 3 · group.
    let want = vec![2, 6, 2 * 4 + 3 - 1 + 1, 2 * 5 + 3 - 1];
    assert_eq!(shapes_of(&g, vec![2, 4, 5, 6], &["y"]), vec![want.clone()]);
    let g2 = import_onnx_bytes(&to_model_proto(&g).unwrap().encode_to_vec()).unwrap();
    assert_eq!(g.nodes[0].op, g2.nodes[0].op);
    assert_eq!(shapes_of(&g2, vec![2, 4, 5, 6], &["y"]), vec![want]);
    // A weight whose C_in differs from the input's channels is a shape error naming the node.
    let e = infer(&g, &[vec![2, 3, 5, 6]]).unwrap_err().to_string();
    assert!(e.contains("'up'") && e.contains("channels"), "{e}");
}
