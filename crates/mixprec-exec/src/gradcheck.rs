//! Gradient checks: every differentiable operator's backward pass against central finite
//! differences, and the exact Hessian-vector product against a closed-form Hessian.

use crate::executor::{Executor, RunOptions};
use candle_core::{Device, Tensor, Var};
use mixprec_graph::ir::{Activation, ActivationKind, Recurrent, RecurrentKind, RnnDirection};
use mixprec_graph::{AutoPad, Dim, Graph, Node, Op, PadMode, Tensor as HostTensor, Window};
use rand::{Rng, SeedableRng};

struct Case {
    g: Graph,
    /// Values of the float graph inputs.
    inputs: Vec<Vec<f32>>,
}

/// Single-node graph builder: float inputs with shapes, integer constants, one node.
struct B {
    g: Graph,
    inputs: Vec<Vec<f32>>,
    rng: rand_chacha::ChaCha8Rng,
}

impl B {
    fn new(seed: u64) -> Self {
        Self {
            g: Graph {
                opset: 13,
                ..Default::default()
            },
            inputs: vec![],
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        }
    }
    /// A float input with values away from 0 (kinks of Relu/Abs/Clip), in ±[lo, hi].
    fn input(&mut self, shape: &[usize], lo: f32, hi: f32) -> Option<usize> {
        let id = self.g.add_value(format!("in{}", self.inputs.len()));
        self.g.values[id].shape = Some(shape.iter().map(|&d| Dim::Fixed(d)).collect());
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|_| {
                let m = self.rng.random_range(lo..hi);
                if self.rng.random_bool(0.5) {
                    m
                } else {
                    -m
                }
            })
            .collect();
        self.inputs.push(v);
        self.g.inputs.push(id);
        Some(id)
    }
    fn positive(&mut self, shape: &[usize], lo: f32, hi: f32) -> Option<usize> {
        let id = self.input(shape, lo, hi);
        let last = self.inputs.last_mut().unwrap();
        last.iter_mut().for_each(|v| *v = v.abs());
        id
    }
    fn ints(&mut self, v: &[i64]) -> Option<usize> {
        let id = self.g.add_value(format!("c{}", self.g.values.len()));
        self.g
            .initializers
            .insert(id, HostTensor::i64(vec![v.len()], v.to_vec()).unwrap());
        Some(id)
    }
    fn scalar(&mut self, v: f32) -> Option<usize> {
        let id = self.g.add_value(format!("c{}", self.g.values.len()));
        self.g
            .initializers
            .insert(id, HostTensor::f32(vec![], vec![v]).unwrap());
        Some(id)
    }
    fn node(mut self, op: Op, inputs: Vec<Option<usize>>) -> Case {
        let out = self.g.add_value("out");
        self.g.nodes.push(Node {
            name: "n".into(),
            op,
            inputs,
            outputs: vec![out],
        });
        self.g.outputs.push(out);
        Case {
            g: self.g,
            inputs: self.inputs,
        }
    }
}

fn loss(e: &Executor, xs: &[Tensor], r: &Tensor) -> Tensor {
    let out = e.run(xs, &RunOptions::default()).unwrap().outputs.remove(0);
    (out * r).unwrap().sum_all().unwrap()
}

/// Compare autodiff gradients of sum(out ⊙ R) with central differences for every input.
fn check(name: &str, case: Case, eps: f32, tol: f32) {
    let dev = Device::Cpu;
    let e = Executor::new(case.g.clone()).unwrap();
    let shapes: Vec<Vec<usize>> = case
        .g
        .inputs
        .iter()
        .map(|&i| {
            case.g.values[i]
                .shape
                .as_ref()
                .unwrap()
                .iter()
                .map(|d| if let Dim::Fixed(x) = d { *x } else { 1 })
                .collect()
        })
        .collect();
    let vars: Vec<Var> = case
        .inputs
        .iter()
        .zip(&shapes)
        .map(|(v, s)| Var::from_slice(v, s.as_slice(), &dev).unwrap())
        .collect();
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = e
        .run(&xs, &RunOptions::default())
        .unwrap()
        .outputs
        .remove(0);
    let n_out = out.elem_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let rv: Vec<f32> = (0..n_out).map(|_| rng.random_range(-1.0..1.0)).collect();
    let r = Tensor::from_vec(rv, out.dims(), &dev).unwrap();
    let grads = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (k, var) in vars.iter().enumerate() {
        let g = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            None => vec![0.0; case.inputs[k].len()],
        };
        let mut worst = 0f32;
        for i in 0..case.inputs[k].len() {
            let eval = |delta: f32| {
                let xs: Vec<Tensor> = case
                    .inputs
                    .iter()
                    .zip(&shapes)
                    .enumerate()
                    .map(|(j, (v, s))| {
                        let mut v = v.clone();
                        if j == k {
                            v[i] += delta;
                        }
                        Tensor::from_vec(v, s.as_slice(), &dev).unwrap()
                    })
                    .collect();
                loss(&e, &xs, &r).to_scalar::<f32>().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[i]).abs() / (1.0 + fd.abs().max(g[i].abs()));
            worst = worst.max(err);
        }
        assert!(
            worst < tol,
            "{name}: input {k}: worst gradient error {worst}"
        );
    }
}

fn win(kernel: &[usize], strides: &[usize], pads: &[usize], dil: &[usize]) -> Window {
    Window {
        kernel: kernel.to_vec(),
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dil.to_vec(),
        ..Default::default()
    }
}

const EPS: f32 = 1e-2;
const TOL: f32 = 1e-2;

#[test]
fn conv_gradients() {
    let mut b = B::new(1);
    let (x, w, bias) = (
        b.input(&[2, 4, 7, 6], 0.1, 1.0),
        b.input(&[6, 2, 3, 2], 0.1, 1.0),
        b.input(&[6], 0.1, 1.0),
    );
    check(
        "conv grouped strided asym-pad",
        b.node(
            Op::Conv {
                window: win(&[], &[2, 1], &[1, 0, 0, 1], &[]),
                group: 2,
            },
            vec![x, w, bias],
        ),
        EPS,
        TOL,
    );
    let mut b = B::new(2);
    let (x, w) = (
        b.input(&[1, 3, 8, 8], 0.1, 1.0),
        b.input(&[3, 1, 3, 3], 0.1, 1.0),
    );
    let mut wd = win(&[3, 3], &[1, 1], &[], &[2, 2]);
    wd.auto_pad = AutoPad::SameUpper;
    check(
        "depthwise dilated same",
        b.node(
            Op::Conv {
                window: wd,
                group: 3,
            },
            vec![x, w],
        ),
        EPS,
        TOL,
    );
    let mut b = B::new(3);
    let (x, w) = (b.input(&[2, 3, 9], 0.1, 1.0), b.input(&[4, 3, 3], 0.1, 1.0));
    check(
        "conv1d",
        b.node(
            Op::Conv {
                window: win(&[3], &[2], &[1, 1], &[]),
                group: 1,
            },
            vec![x, w],
        ),
        EPS,
        TOL,
    );
}

#[test]
fn dense_gradients() {
    let mut b = B::new(4);
    let (a, w, c) = (
        b.input(&[3, 5], 0.1, 1.0),
        b.input(&[4, 5], 0.1, 1.0),
        b.input(&[4], 0.1, 1.0),
    );
    check(
        "gemm transB",
        b.node(
            Op::Gemm {
                alpha: 0.5,
                beta: 2.0,
                trans_a: false,
                trans_b: true,
            },
            vec![a, w, c],
        ),
        EPS,
        TOL,
    );
    let mut b = B::new(5);
    let (a, w) = (b.input(&[2, 3, 5], 0.1, 1.0), b.input(&[5, 4], 0.1, 1.0));
    check("matmul batched", b.node(Op::MatMul, vec![a, w]), EPS, TOL);
    let mut b = B::new(6);
    let (a, w) = (b.input(&[2, 3, 5], 0.1, 1.0), b.input(&[2, 5, 4], 0.1, 1.0));
    check("matmul 3d x 3d", b.node(Op::MatMul, vec![a, w]), EPS, TOL);
}

#[test]
fn elementwise_gradients() {
    for (name, op) in [("add", Op::Add), ("sub", Op::Sub), ("mul", Op::Mul)] {
        let mut b = B::new(8);
        let (x, y) = (b.input(&[2, 3, 4], 0.1, 1.0), b.input(&[3, 1], 0.1, 1.0));
        check(name, b.node(op, vec![x, y]), EPS, TOL);
    }
    let mut b = B::new(9);
    let (x, y) = (b.input(&[2, 3], 0.1, 1.0), b.positive(&[3], 0.5, 1.5));
    check("div", b.node(Op::Div, vec![x, y]), 1e-3, TOL);
    for (name, op) in [
        ("relu", Op::Relu),
        ("leaky", Op::LeakyRelu { alpha: 0.1 }),
        ("sigmoid", Op::Sigmoid),
        ("tanh", Op::Tanh),
        ("exp", Op::Exp),
        ("neg", Op::Neg),
        ("abs", Op::Abs),
        ("identity", Op::Identity),
        ("dropout", Op::Dropout),
        ("cast", Op::Cast { to: 1 }),
    ] {
        let mut b = B::new(10);
        let x = b.input(&[3, 4], 0.1, 1.5);
        check(name, b.node(op, vec![x]), 1e-3, TOL);
    }
    for (name, op) in [("log", Op::Log), ("sqrt", Op::Sqrt)] {
        let mut b = B::new(11);
        let x = b.positive(&[3, 4], 0.5, 2.0);
        check(name, b.node(op, vec![x]), 1e-3, TOL);
    }
    let mut b = B::new(12);
    let x = b.input(&[3, 4], 0.1, 2.0);
    let (lo, hi) = (b.scalar(-0.5), b.scalar(0.7));
    // Keep inputs off the clip points.
    let case = b.node(Op::Clip, vec![x, lo, hi]);
    let mut case = case;
    for v in case.inputs[0].iter_mut() {
        if (*v + 0.5).abs() < 0.05 || (*v - 0.7).abs() < 0.05 {
            *v += 0.2;
        }
    }
    check("clip", case, 1e-3, TOL);
}

#[test]
fn normalisation_and_softmax_gradients() {
    let mut b = B::new(13);
    let (x, s, bias, m) = (
        b.input(&[2, 3, 2, 2], 0.1, 1.0),
        b.input(&[3], 0.5, 1.5),
        b.input(&[3], 0.1, 1.0),
        b.input(&[3], 0.1, 1.0),
    );
    let v = b.positive(&[3], 0.5, 1.5);
    check(
        "batchnorm",
        b.node(Op::BatchNorm { epsilon: 1e-3 }, vec![x, s, bias, m, v]),
        1e-3,
        TOL,
    );
    for (name, op) in [
        (
            "softmax",
            Op::Softmax {
                axis: -1,
                legacy: false,
            },
        ),
        (
            "logsoftmax",
            Op::LogSoftmax {
                axis: 1,
                legacy: false,
            },
        ),
        (
            "softmax legacy",
            Op::Softmax {
                axis: 1,
                legacy: true,
            },
        ),
    ] {
        let mut b = B::new(14);
        let x = b.input(&[2, 3, 4], 0.1, 1.0);
        check(name, b.node(op, vec![x]), 1e-3, TOL);
    }
}

#[test]
fn pooling_gradients() {
    let mut b = B::new(15);
    let x = b.input(&[2, 2, 7, 7], 0.1, 1.0);
    let mut w = win(&[3, 3], &[2, 2], &[1, 1, 0, 0], &[]);
    w.ceil_mode = true;
    check(
        "maxpool pad ceil",
        b.node(Op::MaxPool(w.clone()), vec![x]),
        1e-3,
        TOL,
    );
    for cip in [false, true] {
        let mut b = B::new(16);
        let x = b.input(&[2, 2, 7, 7], 0.1, 1.0);
        check(
            "avgpool",
            b.node(
                Op::AveragePool {
                    window: w.clone(),
                    count_include_pad: cip,
                },
                vec![x],
            ),
            EPS,
            TOL,
        );
    }
    for op in [Op::GlobalAveragePool, Op::GlobalMaxPool] {
        let mut b = B::new(17);
        let x = b.input(&[2, 3, 4, 5], 0.1, 1.0);
        check("global pool", b.node(op, vec![x]), 1e-3, TOL);
    }
}

#[test]
fn shape_op_gradients() {
    let mut b = B::new(18);
    let x = b.input(&[2, 3, 4], 0.1, 1.0);
    let s = b.ints(&[0, -1]);
    check(
        "reshape",
        b.node(Op::Reshape { allowzero: false }, vec![x, s]),
        EPS,
        TOL,
    );
    let mut b = B::new(19);
    let x = b.input(&[2, 3, 4], 0.1, 1.0);
    check(
        "flatten",
        b.node(Op::Flatten { axis: 2 }, vec![x]),
        EPS,
        TOL,
    );
    let mut b = B::new(20);
    let x = b.input(&[2, 3, 4], 0.1, 1.0);
    check(
        "transpose",
        b.node(
            Op::Transpose {
                perm: Some(vec![2, 0, 1]),
            },
            vec![x],
        ),
        EPS,
        TOL,
    );
    let mut b = B::new(21);
    let (x, y) = (b.input(&[2, 3, 4], 0.1, 1.0), b.input(&[2, 1, 4], 0.1, 1.0));
    check(
        "concat",
        b.node(Op::Concat { axis: 1 }, vec![x, y]),
        EPS,
        TOL,
    );
    for mode in [PadMode::Constant, PadMode::Reflect, PadMode::Edge] {
        let mut b = B::new(22);
        let x = b.input(&[1, 2, 4, 5], 0.1, 1.0);
        let p = b.ints(&[0, 0, 2, 1, 0, 0, 1, -1]);
        let val = b.scalar(0.5);
        check("pad", b.node(Op::Pad { mode }, vec![x, p, val]), EPS, TOL);
    }
    let mut b = B::new(23);
    let x = b.input(&[2, 1, 4], 0.1, 1.0);
    let a = b.ints(&[1]);
    check("squeeze", b.node(Op::Squeeze, vec![x, a]), EPS, TOL);
    let mut b = B::new(24);
    let x = b.input(&[2, 4], 0.1, 1.0);
    let a = b.ints(&[0, 3]);
    check("unsqueeze", b.node(Op::Unsqueeze, vec![x, a]), EPS, TOL);
    let mut b = B::new(25);
    let x = b.input(&[5, 3], 0.1, 1.0);
    let i = b.g.add_value("idx");
    b.g.initializers
        .insert(i, HostTensor::i64(vec![2, 2], vec![4, 0, -1, 2]).unwrap());
    check(
        "gather (embedding)",
        b.node(Op::Gather { axis: 0 }, vec![x, Some(i)]),
        EPS,
        TOL,
    );
    let mut b = B::new(26);
    let x = b.input(&[3, 8], 0.1, 1.0);
    let (s, e, a, st) = (
        b.ints(&[1, -1]),
        b.ints(&[3, 0]),
        b.ints(&[0, 1]),
        b.ints(&[1, -3]),
    );
    check(
        "slice with negative step",
        b.node(Op::Slice, vec![x, s, e, a, st]),
        EPS,
        TOL,
    );
}

fn recurrent(kind: RecurrentKind, direction: RnnDirection, acts: &[ActivationKind]) -> Recurrent {
    Recurrent {
        kind,
        hidden_size: 2,
        direction,
        activations: (0..direction.count())
            .flat_map(|_| acts.iter().map(|&k| Activation::plain(k)))
            .collect(),
        clip: None,
        input_forget: false,
        linear_before_reset: false,
        batch_first: false,
        outputs: [true, false, false],
    }
}

#[test]
fn recurrent_gradients() {
    use ActivationKind::{Sigmoid, Tanh};
    // Bidirectional LSTM with peepholes, initial states and per-batch lengths: gradients
    // with respect to X, W, R, B, initial_h, initial_c and P.
    let lstm = recurrent(
        RecurrentKind::Lstm,
        RnnDirection::Bidirectional,
        &[Sigmoid, Tanh, Tanh],
    );
    let mut b = B::new(30);
    let (x, w, r, bias) = (
        b.input(&[3, 2, 3], 0.1, 1.0),
        b.input(&[2, 8, 3], 0.1, 0.8),
        b.input(&[2, 8, 2], 0.1, 0.8),
        b.input(&[2, 16], 0.1, 0.5),
    );
    let lens = b.ints(&[3, 2]);
    let (h0, c0, p) = (
        b.input(&[2, 2, 2], 0.1, 1.0),
        b.input(&[2, 2, 2], 0.1, 1.0),
        b.input(&[2, 6], 0.1, 0.5),
    );
    check(
        "lstm",
        b.node(
            Op::Recurrent(lstm.clone()),
            vec![x, w, r, bias, lens, h0, c0, p],
        ),
        EPS,
        TOL,
    );
    // Batch-first LSTM, last hidden state only.
    let mut bf = recurrent(
        RecurrentKind::Lstm,
        RnnDirection::Reverse,
        &[Sigmoid, Tanh, Tanh],
    );
    bf.batch_first = true;
    bf.outputs = [false, true, false];
    let mut b = B::new(31);
    let (x, w, r) = (
        b.input(&[2, 3, 3], 0.1, 1.0),
        b.input(&[1, 8, 3], 0.1, 0.8),
        b.input(&[1, 8, 2], 0.1, 0.8),
    );
    check(
        "lstm batch-first Y_h",
        b.node(Op::Recurrent(bf), vec![x, w, r]),
        EPS,
        TOL,
    );
    for lbr in [false, true] {
        let mut gru = recurrent(
            RecurrentKind::Gru,
            RnnDirection::Bidirectional,
            &[Sigmoid, Tanh],
        );
        gru.linear_before_reset = lbr;
        let mut b = B::new(32);
        let (x, w, r, bias) = (
            b.input(&[3, 2, 3], 0.1, 1.0),
            b.input(&[2, 6, 3], 0.1, 0.8),
            b.input(&[2, 6, 2], 0.1, 0.8),
            b.input(&[2, 12], 0.1, 0.5),
        );
        let lens = b.ints(&[2, 3]);
        let h0 = b.input(&[2, 2, 2], 0.1, 1.0);
        check(
            &format!("gru linear_before_reset={lbr}"),
            b.node(Op::Recurrent(gru), vec![x, w, r, bias, lens, h0]),
            EPS,
            TOL,
        );
    }
    let rnn = recurrent(RecurrentKind::Rnn, RnnDirection::Forward, &[Tanh]);
    let mut b = B::new(33);
    let (x, w, r, bias) = (
        b.input(&[3, 2, 3], 0.1, 1.0),
        b.input(&[1, 2, 3], 0.1, 0.8),
        b.input(&[1, 2, 2], 0.1, 0.8),
        b.input(&[1, 4], 0.1, 0.5),
    );
    check(
        "rnn",
        b.node(Op::Recurrent(rnn), vec![x, w, r, bias]),
        EPS,
        TOL,
    );
}

/// HVP w.r.t. the output layer of a tanh MLP equals the closed-form Hessian of softmax
/// cross-entropy: H[(c,j),(c',j')] = mean_n h_nj h_nj' (p_nc δ_cc' − p_nc p_nc').
/// The exact HVP of the loss with respect to weight `w` ([h, d]) in direction `v` is not all
/// zero and agrees with central differences of exact gradients (ε = 1e-2), within
/// `tol·(1 + |fd|)`.
fn hvp_matches_finite_differences(
    e: &Executor,
    xt: &Tensor,
    labels: &[u32],
    w: mixprec_graph::ValueId,
    (h, d): (usize, usize),
    v: &[f32],
    tol: f32,
) {
    let vt = Tensor::from_vec(v.to_vec(), (h, d), &Device::Cpu).unwrap();
    let hv = e
        .hvp(xt, labels, w, &[vt])
        .unwrap()
        .remove(0)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(hv.iter().any(|x| x.abs() > 1e-4), "the HVP is not all zero");
    let w0 = e
        .var(w)
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let eps = 1e-2f32;
    let grad_at = |sign: f32| {
        let shifted: Vec<f32> = w0.iter().zip(v).map(|(a, b)| a + sign * eps * b).collect();
        e.var(w)
            .unwrap()
            .set(&Tensor::from_vec(shifted, (h, d), &Device::Cpu).unwrap())
            .unwrap();
        e.loss_and_grads(xt, labels, &[w])
            .unwrap()
            .1
            .remove(0)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (gp, gm) = (grad_at(1.0), grad_at(-1.0));
    e.var(w)
        .unwrap()
        .set(&Tensor::from_vec(w0, (h, d), &Device::Cpu).unwrap())
        .unwrap();
    for i in 0..h * d {
        let fd = (gp[i] - gm[i]) / (2.0 * eps);
        assert!(
            (fd - hv[i]).abs() < tol * (1.0 + fd.abs()),
            "HVP[{i}] {} vs finite differences {fd}",
            hv[i]
        );
    }
}

#[test]
fn hvp_matches_exact_hessian_of_mlp() {
    let (n, d, h, c) = (5usize, 4usize, 3usize, 3usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut r = |k: usize| {
        (0..k)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>()
    };
    let (w1v, w2v, xv) = (r(h * d), r(c * h), r(n * d));
    let mut g = Graph {
        opset: 13,
        ..Default::default()
    };
    let x = g.add_value("x");
    g.values[x].shape = Some(vec![Dim::Symbolic("N".into()), Dim::Fixed(d)]);
    g.inputs.push(x);
    let w1 = g.add_value("w1");
    let w2 = g.add_value("w2");
    g.initializers
        .insert(w1, HostTensor::f32(vec![h, d], w1v.clone()).unwrap());
    g.initializers
        .insert(w2, HostTensor::f32(vec![c, h], w2v.clone()).unwrap());
    let (a1, t1, y) = (g.add_value("a1"), g.add_value("t1"), g.add_value("y"));
    let gemm = Op::Gemm {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: true,
    };
    g.nodes.push(Node {
        name: "fc1".into(),
        op: gemm.clone(),
        inputs: vec![Some(x), Some(w1)],
        outputs: vec![a1],
    });
    g.nodes.push(Node {
        name: "act".into(),
        op: Op::Tanh,
        inputs: vec![Some(a1)],
        outputs: vec![t1],
    });
    g.nodes.push(Node {
        name: "fc2".into(),
        op: gemm,
        inputs: vec![Some(t1), Some(w2)],
        outputs: vec![y],
    });
    g.outputs.push(y);
    let e = Executor::new(g).unwrap();
    let labels = [0u32, 2, 1, 1, 0];
    let xt = Tensor::from_vec(xv.clone(), (n, d), &Device::Cpu).unwrap();
    // Closed form.
    let mut hid = vec![0f32; n * h];
    for i in 0..n {
        for j in 0..h {
            hid[i * h + j] = (0..d)
                .map(|k| w1v[j * d + k] * xv[i * d + k])
                .sum::<f32>()
                .tanh();
        }
    }
    let mut p = vec![0f32; n * c];
    for i in 0..n {
        let z: Vec<f32> = (0..c)
            .map(|cc| (0..h).map(|j| w2v[cc * h + j] * hid[i * h + j]).sum())
            .collect();
        let m = z.iter().cloned().fold(f32::MIN, f32::max);
        let s: f32 = z.iter().map(|v| (v - m).exp()).sum();
        for cc in 0..c {
            p[i * c + cc] = (z[cc] - m).exp() / s;
        }
    }
    let dim = c * h;
    let mut exact = vec![0f32; dim * dim];
    for i in 0..n {
        for (a, b) in (0..dim).flat_map(|a| (0..dim).map(move |b| (a, b))) {
            let (ca, ja, cb, jb) = (a / h, a % h, b / h, b % h);
            let pc = p[i * c + ca];
            let kron = if ca == cb { pc } else { 0.0 };
            exact[a * dim + b] +=
                hid[i * h + ja] * hid[i * h + jb] * (kron - pc * p[i * c + cb]) / n as f32;
        }
    }
    let probes: Vec<Tensor> = (0..dim)
        .map(|k| {
            let mut v = vec![0f32; dim];
            v[k] = 1.0;
            Tensor::from_vec(v, (c, h), &Device::Cpu).unwrap()
        })
        .collect();
    let cols = e.hvp(&xt, &labels, w2, &probes).unwrap();
    for (k, col) in cols.iter().enumerate() {
        let col = col.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for a in 0..dim {
            assert!(
                (col[a] - exact[a * dim + k]).abs() < 1e-5,
                "H[{a},{k}] = {} vs exact {}",
                col[a],
                exact[a * dim + k]
            );
        }
    }
    // First layer: the HVP agrees with central differences of exact gradients.
    let v: Vec<f32> = (0..h * d)
        .map(|i| ((i * 7 % 5) as f32 - 2.0) / 2.0)
        .collect();
    hvp_matches_finite_differences(&e, &xt, &labels, w1, (h, d), &v, 2e-3);
}

#[test]
fn onnx_unary_and_binary_gradients() {
    use mixprec_graph::ir::{Unary, Variadic};
    for (name, u) in [
        ("erf", Unary::Erf),
        ("softplus", Unary::Softplus),
        ("elu", Unary::Elu { alpha: 0.7 }),
        (
            "selu",
            Unary::Selu {
                alpha: 1.673_263_2,
                gamma: 1.050_701,
            },
        ),
        ("hardswish", Unary::HardSwish),
        (
            "hardsigmoid",
            Unary::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
        ),
        ("gelu", Unary::Gelu { tanh: false }),
        ("gelu tanh", Unary::Gelu { tanh: true }),
        ("softsign", Unary::Softsign),
        ("celu", Unary::Celu { alpha: 1.5 }),
    ] {
        let mut b = B::new(40);
        let x = b.input(&[3, 4], 0.1, 2.0);
        check(name, b.node(Op::Unary(u), vec![x]), 1e-3, TOL);
    }
    let mut b = B::new(41);
    let x = b.positive(&[3, 4], 0.5, 2.0);
    check(
        "reciprocal",
        b.node(Op::Unary(Unary::Reciprocal), vec![x]),
        1e-3,
        TOL,
    );
    // Pow with a tensor exponent (the general path) and with a known scalar exponent.
    let mut b = B::new(42);
    let (x, y) = (b.positive(&[2, 3], 0.5, 2.0), b.input(&[3], 0.2, 1.5));
    check(
        "pow tensor exponent",
        b.node(Op::Pow, vec![x, y]),
        1e-3,
        TOL,
    );
    let mut b = B::new(43);
    let x = b.input(&[2, 3], 0.2, 1.5);
    let e = b.scalar(3.0);
    check(
        "pow scalar exponent",
        b.node(Op::Pow, vec![x, e]),
        1e-3,
        TOL,
    );
    let mut b = B::new(44);
    let (x, s) = (b.input(&[2, 3, 4], 0.1, 1.0), b.input(&[3, 1], 0.1, 1.0));
    check("prelu", b.node(Op::PRelu, vec![x, s]), 1e-3, TOL);
    for k in [Variadic::Sum, Variadic::Mean, Variadic::Max, Variadic::Min] {
        let mut b = B::new(45);
        let (x, y, z) = (
            b.input(&[2, 3], 0.1, 1.0),
            b.input(&[3], 0.1, 1.0),
            b.input(&[2, 1], 0.1, 1.0),
        );
        check(
            k.onnx_name(),
            b.node(Op::Variadic(k), vec![x, y, z]),
            1e-3,
            TOL,
        );
    }
    // Where with a constant condition: gradients reach both branches.
    let mut b = B::new(46);
    let (x, y) = (b.input(&[2, 3], 0.1, 1.0), b.input(&[3], 0.1, 1.0));
    let cond = b.g.add_value("cond");
    b.g.initializers
        .insert(cond, HostTensor::i64(vec![2, 1], vec![1, 0]).unwrap());
    check("where", b.node(Op::Where, vec![Some(cond), x, y]), EPS, TOL);
}

#[test]
fn onnx_reduction_norm_and_layout_gradients() {
    use mixprec_graph::ir::Reduce;
    for (kind, keepdims) in [
        (Reduce::Mean, true),
        (Reduce::Sum, false),
        (Reduce::L2, true),
        (Reduce::SumSquare, false),
        (Reduce::Max, true),
        (Reduce::Prod, false),
        (Reduce::LogSumExp, true),
        (Reduce::L1, false),
    ] {
        let mut b = B::new(50);
        let x = b.input(&[2, 3, 4], 0.3, 1.2);
        let axes = b.ints(&[-1, 1]);
        let op = Op::Reduce {
            kind,
            keepdims,
            noop_with_empty_axes: false,
        };
        check(kind.onnx_name(), b.node(op, vec![x, axes]), 1e-3, TOL);
    }
    let mut b = B::new(51);
    let (x, s, bias) = (
        b.input(&[2, 3, 4], 0.1, 1.0),
        b.input(&[4], 0.5, 1.5),
        b.input(&[4], 0.1, 1.0),
    );
    check(
        "layer norm",
        b.node(
            Op::LayerNorm {
                axis: -1,
                epsilon: 1e-5,
            },
            vec![x, s, bias],
        ),
        1e-3,
        2e-2,
    );
    let mut b = B::new(52);
    let (x, s, bias) = (
        b.input(&[2, 3, 5], 0.1, 1.0),
        b.input(&[3], 0.5, 1.5),
        b.input(&[3], 0.1, 1.0),
    );
    check(
        "instance norm",
        b.node(Op::InstanceNorm { epsilon: 1e-5 }, vec![x, s, bias]),
        1e-3,
        2e-2,
    );
    let mut b = B::new(53);
    let x = b.input(&[3, 1], 0.1, 1.0);
    let shape = b.ints(&[2, 3, 4]);
    check("expand", b.node(Op::Expand, vec![x, shape]), EPS, TOL);
    let mut b = B::new(54);
    let x = b.input(&[2, 3], 0.1, 1.0);
    let reps = b.ints(&[2, 3]);
    check("tile", b.node(Op::Tile, vec![x, reps]), EPS, TOL);
    // Split into two parts, joined again in swapped order.
    let mut b = B::new(55);
    let x = b.input(&[2, 5], 0.1, 1.0);
    let sizes = b.ints(&[2, 3]);
    let mut case = b.node(
        Op::Split {
            axis: 1,
            num_outputs: None,
        },
        vec![x, sizes],
    );
    let second = case.g.add_value("second");
    case.g.nodes[0].outputs.push(second);
    let joined = case.g.add_value("joined");
    let first = case.g.nodes[0].outputs[0];
    case.g.nodes.push(Node {
        name: "join".into(),
        op: Op::Concat { axis: 1 },
        inputs: vec![Some(second), Some(first)],
        outputs: vec![joined],
    });
    case.g.outputs = vec![joined];
    check("split", case, EPS, TOL);
}

/// Second order through the new operators: the Hessian-vector product of a
/// Gemm → LayerNorm → Gelu → Softplus → Gemm classifier w.r.t. the first weight agrees with
/// central differences of exact gradients.
#[test]
fn hvp_through_layer_norm_gelu_softplus() {
    use mixprec_graph::ir::Unary;
    let (n, d, h, c) = (4usize, 5usize, 6usize, 3usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut r = |k: usize| {
        (0..k)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>()
    };
    let (w1v, w2v, xv, sv) = (r(h * d), r(c * h), r(n * d), r(h));
    let mut g = Graph {
        opset: 17,
        ..Default::default()
    };
    let x = g.add_value("x");
    g.values[x].shape = Some(vec![Dim::Symbolic("N".into()), Dim::Fixed(d)]);
    g.inputs.push(x);
    let (w1, w2, s) = (g.add_value("w1"), g.add_value("w2"), g.add_value("s"));
    g.initializers
        .insert(w1, HostTensor::f32(vec![h, d], w1v.clone()).unwrap());
    g.initializers
        .insert(w2, HostTensor::f32(vec![c, h], w2v).unwrap());
    g.initializers.insert(
        s,
        HostTensor::f32(vec![h], sv.iter().map(|v| 1.0 + 0.5 * v).collect()).unwrap(),
    );
    let vals: Vec<usize> = ["a1", "ln", "ge", "sp", "y"]
        .iter()
        .map(|v| g.add_value(*v))
        .collect();
    let gemm = Op::Gemm {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: true,
    };
    let steps: [(Op, Vec<Option<usize>>); 5] = [
        (gemm.clone(), vec![Some(x), Some(w1)]),
        (
            Op::LayerNorm {
                axis: -1,
                epsilon: 1e-5,
            },
            vec![Some(vals[0]), Some(s)],
        ),
        (Op::Unary(Unary::Gelu { tanh: false }), vec![Some(vals[1])]),
        (Op::Unary(Unary::Softplus), vec![Some(vals[2])]),
        (gemm, vec![Some(vals[3]), Some(w2)]),
    ];
    for (k, (op, inputs)) in steps.into_iter().enumerate() {
        g.nodes.push(Node {
            name: format!("n{k}"),
            op,
            inputs,
            outputs: vec![vals[k]],
        });
    }
    g.outputs.push(vals[4]);
    let e = Executor::new(g).unwrap();
    let labels = [0u32, 2, 1, 1];
    let xt = Tensor::from_vec(xv, (n, d), &Device::Cpu).unwrap();
    // Not of the form 1·bᵀ, to which layer normalisation of x·W1ᵀ is invariant.
    let v: Vec<f32> = (0..h * d)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
        .collect();
    hvp_matches_finite_differences(&e, &xt, &labels, w1, (h, d), &v, 5e-3);
}

#[test]
fn resize_gradients() {
    use mixprec_graph::ir::{NearestMode, Resize, ResizeCoords, ResizeMode};
    for (mode, coords, sizes) in [
        (ResizeMode::Linear, ResizeCoords::HalfPixel, [1i64, 2, 5, 7]),
        (ResizeMode::Cubic, ResizeCoords::AlignCorners, [1, 2, 2, 3]),
        (ResizeMode::Nearest, ResizeCoords::Asymmetric, [1, 2, 6, 8]),
    ] {
        let mut b = B::new(60);
        let x = b.input(&[1, 2, 3, 4], 0.1, 1.0);
        let s = b.ints(&sizes);
        let op = Op::Resize(Resize {
            mode,
            coords,
            nearest: NearestMode::Floor,
            cubic_a: -0.75,
            exclude_outside: false,
            axes: None,
        });
        check(
            &format!("resize {mode:?}"),
            b.node(op, vec![x, None, None, s]),
            EPS,
            TOL,
        );
    }
}

#[test]
fn conv_transpose_gradients() {
    let mut b = B::new(61);
    let (x, w, bias) = (
        b.input(&[2, 4, 3, 4], 0.1, 1.0),
        b.input(&[4, 3, 3, 2], 0.1, 1.0),
        b.input(&[6], 0.1, 1.0),
    );
    check(
        "conv transpose grouped strided asym-pad output_padding",
        b.node(
            Op::ConvTranspose {
                window: win(&[], &[2, 3], &[1, 0, 0, 1], &[1, 2]),
                group: 2,
                output_padding: vec![1, 0],
                output_shape: None,
            },
            vec![x, w, bias],
        ),
        EPS,
        TOL,
    );
    let mut b = B::new(62);
    let (x, w) = (b.input(&[1, 2, 5], 0.1, 1.0), b.input(&[2, 3, 3], 0.1, 1.0));
    let mut wd = win(&[3], &[2], &[], &[]);
    wd.auto_pad = AutoPad::SameUpper;
    check(
        "conv transpose 1d same",
        b.node(
            Op::ConvTranspose {
                window: wd,
                group: 1,
                output_padding: vec![],
                output_shape: None,
            },
            vec![x, w],
        ),
        EPS,
        TOL,
    );
}
