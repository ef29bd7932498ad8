//! Hand-checked executor results for cases the ONNX node tests leave out: Gelu (opset 20),
//! Pow of negative bases with a tensor exponent, overflow-free Softplus / Elu /
//! ReduceLogSumExp and their gradients, rounding operators on the gradient tape, uneven Split
//! with num_outputs, Where / Expand / Tile on run-time inputs with a symbolic batch, MatMul
//! broadcasting of batch dimensions, and Mod (integer sign conventions, float fmod and its
//! gradients, folding in an int64 shape sub-graph, the fmod attribute through export and
//! import).

use candle_core::{DType, Device, Tensor, Var};
use mixprec_exec::executor::RunOptions;
use mixprec_exec::Executor;
use mixprec_graph::ir::{Compare, Reduce, Unary};
use mixprec_graph::{Dim, Graph, Node, Op, Tensor as HostTensor};

/// A graph with float inputs of the given shapes (`None` = symbolic batch), integer
/// constants, and `nodes` given as (op, input names, output names); outputs named last.
struct G {
    g: Graph,
}

impl G {
    fn new() -> Self {
        Self {
            g: Graph {
                opset: 20,
                ..Default::default()
            },
        }
    }
    fn id(&mut self, name: &str) -> usize {
        self.g
            .value_id(name)
            .unwrap_or_else(|| self.g.add_value(name))
    }
    fn input(mut self, name: &str, dims: &[Option<usize>]) -> Self {
        let v = self.id(name);
        self.g.values[v].shape = Some(
            dims.iter()
                .map(|d| match d {
                    Some(x) => Dim::Fixed(*x),
                    None => Dim::Symbolic("N".into()),
                })
                .collect(),
        );
        self.g.inputs.push(v);
        self
    }
    fn init(mut self, name: &str, t: HostTensor) -> Self {
        let v = self.id(name);
        self.g.initializers.insert(v, t);
        self
    }
    fn node(mut self, op: Op, ins: &[&str], outs: &[&str]) -> Self {
        let inputs = ins.iter().map(|n| Some(self.id(n))).collect();
        let outputs = outs.iter().map(|n| self.id(n)).collect();
        let name = format!("n{}", self.g.nodes.len());
        self.g.nodes.push(Node {
            name,
            op,
            inputs,
            outputs,
        });
        self
    }
    fn outputs(mut self, outs: &[&str]) -> Executor {
        for o in outs {
            let v = self.id(o);
            self.g.outputs.push(v);
        }
        Executor::new(self.g).unwrap()
    }
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn gelu_exact_and_tanh_match_reference_values() {
    // Φ(1) = 0.841344746, Φ(−1) = 0.158655254; tanh form at ±1: 0.841191990.
    let e = G::new()
        .input("x", &[Some(3)])
        .node(Op::Unary(Unary::Gelu { tanh: false }), &["x"], &["a"])
        .node(Op::Unary(Unary::Gelu { tanh: true }), &["x"], &["b"])
        .outputs(&["a", "b"]);
    let out = e.forward(&[t(&[1.0, -1.0, 0.0], &[3])]).unwrap();
    close(&vals(&out[0]), &[0.841_344_7, -0.158_655_26, 0.0], 1e-5);
    close(&vals(&out[1]), &[0.841_192, -0.158_808, 0.0], 1e-5);
}

#[test]
fn pow_of_negative_bases_with_a_tensor_exponent() {
    let e = G::new()
        .input("x", &[Some(5)])
        .input("y", &[Some(5)])
        .node(Op::Pow, &["x", "y"], &["z"])
        .outputs(&["z"]);
    let out = e
        .forward(&[
            t(&[-2.0, -3.0, 0.0, 2.0, -4.0], &[5]),
            t(&[3.0, 2.0, 0.0, -1.0, 0.5], &[5]),
        ])
        .unwrap();
    let z = vals(&out[0]);
    close(&z[..4], &[-8.0, 9.0, 1.0, 0.5], 1e-5);
    // A negative base to a fractional power has no real value.
    assert!(z[4].is_nan(), "{}", z[4]);
}

/// Softplus, Elu and ReduceLogSumExp at large |x|: finite values and finite gradients.
#[test]
fn large_inputs_neither_overflow_nor_poison_gradients() {
    let e = G::new()
        .input("x", &[Some(4)])
        .init("ax", HostTensor::i64(vec![1], vec![0]).unwrap())
        .node(Op::Unary(Unary::Softplus), &["x"], &["sp"])
        .node(Op::Unary(Unary::Elu { alpha: 1.0 }), &["x"], &["elu"])
        .node(
            Op::Reduce {
                kind: Reduce::LogSumExp,
                keepdims: false,
                noop_with_empty_axes: false,
            },
            &["x", "ax"],
            &["lse"],
        )
        .outputs(&["sp", "elu", "lse"]);
    let xv = Var::from_vec(vec![200.0f32, 200.0, -200.0, 0.5], 4, &Device::Cpu).unwrap();
    let out = e
        .run(&[xv.as_tensor().clone()], &RunOptions::default())
        .unwrap()
        .outputs;
    close(
        &vals(&out[0]),
        &[200.0, 200.0, 0.0, (1.0f32 + 0.5f32.exp()).ln()],
        1e-5,
    );
    close(&vals(&out[1]), &[200.0, 200.0, -1.0, 0.5], 1e-5);
    close(&vals(&out[2]), &[200.0 + 2f32.ln()], 1e-5);
    let loss = out
        .iter()
        .map(|o| o.sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let g = vals(loss.backward().unwrap().get(xv.as_tensor()).unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    // d/dx: softplus' = σ(x), elu' = 1 for x > 0, lse' = softmax.
    let s = 1.0 / (1.0 + (-0.5f32).exp());
    close(&g, &[1.0 + 1.0 + 0.5, 2.5, 0.0, s + 1.0], 1e-4);
}

#[test]
fn rounding_operators_have_zero_gradients_on_the_tape() {
    let e = G::new()
        .input("x", &[Some(4)])
        .node(Op::Unary(Unary::Ceil), &["x"], &["c"])
        .node(Op::Unary(Unary::Floor), &["x"], &["f"])
        .node(Op::Unary(Unary::Round), &["x"], &["r"])
        .node(Op::Unary(Unary::Sign), &["x"], &["s"])
        .node(
            Op::Variadic(mixprec_graph::ir::Variadic::Sum),
            &["c", "f", "r", "s", "x"],
            &["y"],
        )
        .outputs(&["y", "c", "r"]);
    let xv = Var::from_vec(vec![-1.5f32, 0.5, 2.5, 0.2], 4, &Device::Cpu).unwrap();
    let opts = RunOptions {
        track: true,
        ..Default::default()
    };
    let out = e.run(&[xv.as_tensor().clone()], &opts).unwrap().outputs;
    close(&vals(&out[1]), &[-1.0, 1.0, 3.0, 1.0], 0.0);
    close(&vals(&out[2]), &[-2.0, 0.0, 2.0, 0.0], 0.0);
    let g = out[0].sum_all().unwrap().backward().unwrap();
    close(&vals(g.get(xv.as_tensor()).unwrap()), &[1.0; 4], 0.0);
}

#[test]
fn split_with_num_outputs_and_runtime_where_expand_tile() {
    let e = G::new()
        .input("x", &[None, Some(7)])
        .node(
            Op::Split {
                axis: 1,
                num_outputs: Some(3),
            },
            &["x"],
            &["a", "b", "c"],
        )
        .outputs(&["a", "b", "c"]);
    let x: Vec<f32> = (0..14).map(|v| v as f32).collect();
    let out = e.forward(&[t(&x, &[2, 7])]).unwrap();
    assert_eq!(out[0].dims(), &[2, 3]);
    assert_eq!(out[2].dims(), &[2, 1]);
    close(&vals(&out[2]), &[6.0, 13.0], 0.0);
    // m = x > 0; y = Where(m, x, b) with b [3]; e = Expand(b, [N, 3]); t = Tile(x, [1, 2]).
    let e = G::new()
        .input("x", &[None, Some(3)])
        .init("zero", HostTensor::f32(vec![], vec![0.0]).unwrap())
        .init(
            "b",
            HostTensor::f32(vec![3], vec![10.0, 20.0, 30.0]).unwrap(),
        )
        .init("reps", HostTensor::i64(vec![2], vec![1, 2]).unwrap())
        .node(
            Op::Shape {
                start: 0,
                end: None,
            },
            &["x"],
            &["s"],
        )
        .node(Op::Compare(Compare::Greater), &["x", "zero"], &["m"])
        .node(Op::Where, &["m", "x", "b"], &["y"])
        .node(Op::Expand, &["b", "s"], &["e"])
        .node(Op::Tile, &["x", "reps"], &["t"])
        .outputs(&["m", "y", "e", "t"]);
    for n in [1usize, 3] {
        let xv: Vec<f32> = (0..3 * n).map(|k| k as f32 - 2.0).collect();
        let out = e.forward(&[t(&xv, &[n, 3])]).unwrap();
        assert_eq!(
            out[0].dtype(),
            DType::I64,
            "a comparison yields 0/1 integers"
        );
        let want_y: Vec<f32> = xv
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                if v > 0.0 {
                    v
                } else {
                    [10.0, 20.0, 30.0][k % 3]
                }
            })
            .collect();
        close(&vals(&out[1]), &want_y, 0.0);
        assert_eq!(out[2].dims(), &[n, 3]);
        assert_eq!(out[3].dims(), &[n, 6]);
        close(
            &vals(&out[3])[..6],
            &[-2.0, -1.0, 0.0, -2.0, -1.0, 0.0],
            0.0,
        );
    }
}

/// MatMul broadcasts batch dimensions: [2, 1, 3, 4] × [5, 4, 6] → [2, 5, 3, 6].
#[test]
fn matmul_broadcasts_batch_dimensions() {
    let e = G::new()
        .input("a", &[Some(2), Some(1), Some(3), Some(4)])
        .input("b", &[Some(5), Some(4), Some(6)])
        .node(Op::MatMul, &["a", "b"], &["y"])
        .outputs(&["y"]);
    let av: Vec<f32> = (0..24).map(|v| (v as f32 * 0.37).sin()).collect();
    let bv: Vec<f32> = (0..120).map(|v| (v as f32 * 0.11).cos()).collect();
    let y = e
        .forward(&[t(&av, &[2, 1, 3, 4]), t(&bv, &[5, 4, 6])])
        .unwrap()
        .remove(0);
    assert_eq!(y.dims(), &[2, 5, 3, 6]);
    let got = vals(&y);
    for (i, j, m, n) in [(0, 0, 0, 0), (1, 4, 2, 5), (1, 2, 1, 3)] {
        let want: f32 = (0..4)
            .map(|k| av[i * 12 + m * 4 + k] * bv[j * 24 + k * 6 + n])
            .sum();
        let at = ((i * 5 + j) * 3 + m) * 6 + n;
        assert!((got[at] - want).abs() < 1e-5, "{} vs {want}", got[at]);
    }
}

/// Mod: Python-style integer modulo takes the sign of the divisor (−7 mod 3 = 2,
/// 7 mod −3 = −2), fmod the sign of the dividend (−7 fmod 3 = −1); float fmod has
/// ∂/∂a = 1 and ∂/∂b = −trunc(a / b).
#[test]
fn mod_integer_signs_float_fmod_and_gradients() {
    let e = G::new()
        .input("a", &[Some(4)])
        .input("b", &[Some(4)])
        .node(Op::Cast { to: 7 }, &["a"], &["ai"])
        .node(Op::Cast { to: 7 }, &["b"], &["bi"])
        .node(Op::Mod { fmod: false }, &["ai", "bi"], &["m"])
        .node(Op::Mod { fmod: true }, &["ai", "bi"], &["fi"])
        .node(Op::Mod { fmod: true }, &["a", "b"], &["f"])
        .outputs(&["m", "fi", "f"]);
    let av = Var::from_vec(vec![-7.0f32, 7.0, 5.5, -4.3], 4, &Device::Cpu).unwrap();
    let bv = Var::from_vec(vec![3.0f32, -3.0, 2.0, 2.1], 4, &Device::Cpu).unwrap();
    let opts = RunOptions {
        track: true,
        ..Default::default()
    };
    let out = e
        .run(&[av.as_tensor().clone(), bv.as_tensor().clone()], &opts)
        .unwrap()
        .outputs;
    assert_eq!(out[0].dtype(), DType::I64);
    // Cast truncates 5.5 → 5 and −4.3 → −4: 5 mod 2 = 1, −4 mod 2 = 0.
    assert_eq!(out[0].to_vec1::<i64>().unwrap(), vec![2, -2, 1, 0]);
    assert_eq!(out[1].to_vec1::<i64>().unwrap(), vec![-1, 1, 1, 0]);
    close(&vals(&out[2]), &[-1.0, 1.0, 1.5, -0.1], 1e-6);
    let g = out[2].sum_all().unwrap().backward().unwrap();
    close(&vals(g.get(av.as_tensor()).unwrap()), &[1.0; 4], 0.0);
    // trunc(a / b) = [−2, −2, 2, −2].
    close(
        &vals(g.get(bv.as_tensor()).unwrap()),
        &[2.0, 2.0, -2.0, 2.0],
        0.0,
    );
    // Integer modulo by zero is an error naming the node, not a panic.
    let z = e.forward(&[t(&[1.0; 4], &[4]), t(&[0.0; 4], &[4])]);
    let msg = z.unwrap_err().to_string();
    assert!(msg.contains("n2") && msg.contains("zero"), "{msg}");
    // fmod=0 is integer-only.
    let e = G::new()
        .input("a", &[Some(2)])
        .node(Op::Mod { fmod: false }, &["a", "a"], &["m"])
        .outputs(&["m"]);
    let msg = e.forward(&[t(&[1.0, 2.0], &[2])]).unwrap_err().to_string();
    assert!(msg.contains("fmod"), "{msg}");
}

/// Mod in an int64 shape sub-graph with a symbolic batch folds to constants per batch size
/// and drives a Reshape, as in exported attention blocks.
#[test]
fn mod_folds_in_an_int64_shape_subgraph() {
    let e = G::new()
        .input("x", &[None, Some(6)])
        .init("neg4", HostTensor::i64(vec![1], vec![-4]).unwrap())
        .init("four", HostTensor::i64(vec![], vec![4]).unwrap())
        .init("one", HostTensor::i64(vec![1], vec![1]).unwrap())
        .init("minus1", HostTensor::i64(vec![1], vec![-1]).unwrap())
        .node(
            Op::Shape {
                start: 0,
                end: None,
            },
            &["x"],
            &["s"],
        )
        .node(Op::Mod { fmod: false }, &["s", "neg4"], &["m"])
        .node(Op::Mod { fmod: true }, &["s", "neg4"], &["f"])
        .node(Op::Gather { axis: 0 }, &["s", "one"], &["d"])
        .node(Op::Mod { fmod: false }, &["d", "four"], &["k"])
        .node(Op::Concat { axis: 0 }, &["minus1", "k"], &["shape"])
        .node(Op::Reshape { allowzero: false }, &["x", "shape"], &["y"])
        .outputs(&["y"]);
    let id = |n: &str| e.graph().value_id(n).unwrap();
    for n in [5usize, 8] {
        let inf = e.inferred(vec![vec![n, 6]]).unwrap();
        let n = n as i64;
        // Python-style: the sign of −4; fmod: the sign of the dimension.
        let py = |v: i64| v.rem_euclid(4) - if v % 4 == 0 { 0 } else { 4 };
        assert_eq!(inf.consts[&id("m")].to_i64(), vec![py(n), py(6)]);
        assert_eq!(inf.consts[&id("f")].to_i64(), vec![n % 4, 2]);
        assert_eq!(inf.consts[&id("shape")].to_i64(), vec![-1, 2]);
        assert_eq!(inf.shapes[id("y")], Some(vec![3 * n as usize, 2]));
        let xv: Vec<f32> = (0..6 * n).map(|v| v as f32).collect();
        let y = e.forward(&[t(&xv, &[n as usize, 6])]).unwrap().remove(0);
        assert_eq!(y.dims(), &[3 * n as usize, 2]);
        close(&vals(&y), &xv, 0.0);
    }
}

/// The fmod attribute survives export → import; fmod outside {0, 1} is rejected naming the
/// node.
#[test]
fn mod_fmod_attribute_round_trips_and_is_checked() {
    use prost::Message;
    let e = G::new()
        .input("a", &[Some(2)])
        .input("b", &[Some(2)])
        .node(Op::Mod { fmod: true }, &["a", "b"], &["f"])
        .node(Op::Cast { to: 7 }, &["f"], &["fi"])
        .node(Op::Mod { fmod: false }, &["fi", "fi"], &["m"])
        .outputs(&["f", "m"]);
    let mut proto = mixprec_graph::to_model_proto(e.graph()).unwrap();
    let g = mixprec_graph::import::import_onnx_bytes(&proto.encode_to_vec()).unwrap();
    let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
    assert_eq!(ops[0], &Op::Mod { fmod: true });
    assert_eq!(ops[2], &Op::Mod { fmod: false });
    let graph = proto.graph.as_mut().unwrap();
    graph.node[0].attribute[0].i = 2;
    let err = mixprec_graph::import::import_onnx_bytes(&proto.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(err.contains("n0") && err.contains("fmod"), "{err}");
    // fmod=0 (the default) on float inputs is rejected at import.
    let graph = proto.graph.as_mut().unwrap();
    graph.node[0].attribute.clear();
    let err = mixprec_graph::import::import_onnx_bytes(&proto.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(err.contains("n0") && err.contains("fmod=0"), "{err}");
}
