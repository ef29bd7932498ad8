//! ONNX LSTM / GRU / RNN: the executor against hand-computed values and a scalar reference of
//! the ONNX equations written here (f64 loops, independent of the candle code), second-order
//! gradients through an LSTM, import / export round trips, import errors, shape inference with
//! symbolic axes, MAC accounting, and quantizable layers next to a recurrent one.

use candle_core::{Device, Tensor};
use mixprec_exec::Executor;
use mixprec_graph::ir::{Activation, ActivationKind, Recurrent, RecurrentKind, RnnDirection};
use mixprec_graph::onnx_build::{
    self, attr_float, attr_floats, attr_int, attr_string, attr_strings,
};
use mixprec_graph::onnx_proto as pb;
use mixprec_graph::{
    import_onnx_bytes, infer, model_stats, to_model_proto, Dim, Graph, LayerKind, Node, Op,
    Tensor as HostTensor, ValueId,
};
use prost::Message;

// ---------------------------------------------------------------------------------------------
// Scalar reference of the ONNX equations.

fn act(a: &Activation, x: f64) -> f64 {
    let (al, be) = (a.alpha as f64, a.beta as f64);
    match a.kind {
        ActivationKind::Relu => x.max(0.0),
        ActivationKind::Tanh => x.tanh(),
        ActivationKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        ActivationKind::Affine => al * x + be,
        ActivationKind::LeakyRelu => {
            if x >= 0.0 {
                x
            } else {
                al * x
            }
        }
        ActivationKind::ThresholdedRelu => {
            if x > al {
                x
            } else {
                0.0
            }
        }
        ActivationKind::ScaledTanh => al * (be * x).tanh(),
        ActivationKind::HardSigmoid => (al * x + be).clamp(0.0, 1.0),
        ActivationKind::Elu => {
            if x >= 0.0 {
                x
            } else {
                al * (x.exp() - 1.0)
            }
        }
        ActivationKind::Softsign => x / (1.0 + x.abs()),
        ActivationKind::Softplus => (1.0 + x.exp()).ln(),
    }
}

/// Test data in the time-major (layout 0) form.
#[derive(Clone)]
struct Data {
    seq: usize,
    batch: usize,
    input: usize,
    /// [seq, batch, input]
    x: Vec<f32>,
    w: Vec<f32>,
    r: Vec<f32>,
    b: Option<Vec<f32>>,
    lens: Option<Vec<usize>>,
    /// [dirs, batch, hidden]
    h0: Option<Vec<f32>>,
    c0: Option<Vec<f32>>,
    p: Option<Vec<f32>>,
}

/// Outputs in the time-major form: Y [seq, dirs, batch, hidden], Y_h, Y_c [dirs, batch, hidden].
type Outs = (Vec<f64>, Vec<f64>, Vec<f64>);

fn reference(s: &Recurrent, d: &Data) -> Outs {
    let (hs, g, dirs) = (s.hidden_size, s.kind.gates(), s.direction.count());
    let per = s.kind.activation_count();
    let (seq, batch, inp) = (d.seq, d.batch, d.input);
    let clip = |v: f64| match s.clip {
        Some(c) => v.clamp(-c as f64, c as f64),
        None => v,
    };
    let mut y = vec![0.0; seq * dirs * batch * hs];
    let mut yh = vec![0.0; dirs * batch * hs];
    let mut yc = vec![0.0; dirs * batch * hs];
    for dir in 0..dirs {
        let acts = &s.activations[dir * per..(dir + 1) * per];
        let w = |k: usize, i: usize| d.w[(dir * g * hs + k) * inp + i] as f64;
        let r = |k: usize, j: usize| d.r[(dir * g * hs + k) * hs + j] as f64;
        let wb = |k: usize| d.b.as_ref().map_or(0.0, |b| b[dir * 2 * g * hs + k] as f64);
        let rb = |k: usize| {
            d.b.as_ref()
                .map_or(0.0, |b| b[dir * 2 * g * hs + g * hs + k] as f64)
        };
        let reverse = s.direction == RnnDirection::Reverse || dir == 1;
        for bi in 0..batch {
            let len = d.lens.as_ref().map_or(seq, |l| l[bi]);
            let st = |v: &Option<Vec<f32>>, j: usize| {
                v.as_ref()
                    .map_or(0.0, |v| v[(dir * batch + bi) * hs + j] as f64)
            };
            let mut h: Vec<f64> = (0..hs).map(|j| st(&d.h0, j)).collect();
            let mut c: Vec<f64> = (0..hs).map(|j| st(&d.c0, j)).collect();
            let steps: Vec<usize> = if reverse {
                (0..len).rev().collect()
            } else {
                (0..len).collect()
            };
            for t in steps {
                let xw = |k: usize| -> f64 {
                    (0..inp)
                        .map(|i| w(k, i) * d.x[(t * batch + bi) * inp + i] as f64)
                        .sum::<f64>()
                        + wb(k)
                };
                let rh = |k: usize, v: &[f64]| -> f64 { (0..hs).map(|j| r(k, j) * v[j]).sum() };
                let hn: Vec<f64> = match s.kind {
                    RecurrentKind::Rnn => (0..hs)
                        .map(|j| act(&acts[0], clip(xw(j) + rh(j, &h) + rb(j))))
                        .collect(),
                    RecurrentKind::Gru => {
                        let z: Vec<f64> = (0..hs)
                            .map(|j| act(&acts[0], clip(xw(j) + rh(j, &h) + rb(j))))
                            .collect();
                        let rg: Vec<f64> = (0..hs)
                            .map(|j| act(&acts[0], clip(xw(hs + j) + rh(hs + j, &h) + rb(hs + j))))
                            .collect();
                        let rh_prod: Vec<f64> = (0..hs).map(|j| rg[j] * h[j]).collect();
                        (0..hs)
                            .map(|j| {
                                let k = 2 * hs + j;
                                let pre = if s.linear_before_reset {
                                    xw(k) + rg[j] * (rh(k, &h) + rb(k))
                                } else {
                                    xw(k) + rh(k, &rh_prod) + rb(k)
                                };
                                let cand = act(&acts[1], clip(pre));
                                (1.0 - z[j]) * cand + z[j] * h[j]
                            })
                            .collect()
                    }
                    RecurrentKind::Lstm => {
                        let pp = |k: usize, j: usize| {
                            d.p.as_ref()
                                .map_or(0.0, |p| p[dir * 3 * hs + k * hs + j] as f64)
                        };
                        let pre = |gate: usize, j: usize| {
                            let k = gate * hs + j;
                            xw(k) + rh(k, &h) + rb(k)
                        };
                        let mut hn = vec![0.0; hs];
                        for j in 0..hs {
                            let i = act(&acts[0], clip(pre(0, j) + pp(0, j) * c[j]));
                            let f = if s.input_forget {
                                1.0 - i
                            } else {
                                act(&acts[0], clip(pre(2, j) + pp(2, j) * c[j]))
                            };
                            let cc = act(&acts[1], clip(pre(3, j)));
                            c[j] = f * c[j] + i * cc;
                            let o = act(&acts[0], clip(pre(1, j) + pp(1, j) * c[j]));
                            hn[j] = o * act(&acts[2], c[j]);
                        }
                        hn
                    }
                };
                h = hn;
                for j in 0..hs {
                    y[((t * dirs + dir) * batch + bi) * hs + j] = h[j];
                }
            }
            for j in 0..hs {
                let at = (dir * batch + bi) * hs + j;
                yh[at] = if len > 0 { h[j] } else { 0.0 };
                yc[at] = if len > 0 { c[j] } else { 0.0 };
            }
        }
    }
    (y, yh, yc)
}

// ---------------------------------------------------------------------------------------------
// Graphs for the executor.

fn vals(n: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 1.0) * 0.7548 + seed * 1.913).sin() * scale)
        .collect()
}

fn spec(kind: RecurrentKind, hidden: usize, direction: RnnDirection) -> Recurrent {
    let defaults: Vec<ActivationKind> = match kind {
        RecurrentKind::Rnn => vec![ActivationKind::Tanh],
        RecurrentKind::Gru => vec![ActivationKind::Sigmoid, ActivationKind::Tanh],
        RecurrentKind::Lstm => vec![
            ActivationKind::Sigmoid,
            ActivationKind::Tanh,
            ActivationKind::Tanh,
        ],
    };
    Recurrent {
        kind,
        hidden_size: hidden,
        direction,
        activations: (0..direction.count())
            .flat_map(|_| defaults.iter().map(|&k| Activation::plain(k)))
            .collect(),
        clip: None,
        input_forget: false,
        linear_before_reset: false,
        batch_first: false,
        outputs: [true, true, kind == RecurrentKind::Lstm],
    }
}

fn data(s: &Recurrent, seq: usize, batch: usize, input: usize, seed: f32) -> Data {
    let (hs, g, dirs) = (s.hidden_size, s.kind.gates(), s.direction.count());
    Data {
        seq,
        batch,
        input,
        x: vals(seq * batch * input, seed, 1.2),
        w: vals(dirs * g * hs * input, seed + 1.0, 0.7),
        r: vals(dirs * g * hs * hs, seed + 2.0, 0.7),
        b: Some(vals(dirs * 2 * g * hs, seed + 3.0, 0.5)),
        lens: None,
        h0: None,
        c0: None,
        p: None,
    }
}

/// Transpose the first two axes of a row-major [a, b, rest] array.
fn swap01(v: &[f32], a: usize, b: usize, rest: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            for k in 0..rest {
                out[(j * a + i) * rest + k] = v[(i * b + j) * rest + k];
            }
        }
    }
    out
}

fn host(shape: Vec<usize>, v: Vec<f32>) -> HostTensor {
    HostTensor::f32(shape, v).unwrap()
}

/// A graph with one recurrent node. X (and initial_h, when given) are graph inputs with
/// symbolic sequence / batch axes; W, R, B, sequence_lens, initial_c and P are initializers.
fn graph(s: &Recurrent, d: &Data) -> (Graph, Vec<Tensor>) {
    let (hs, g, dirs) = (s.hidden_size, s.kind.gates(), s.direction.count());
    let mut gr = Graph {
        opset: 14,
        ..Default::default()
    };
    let dev = Device::Cpu;
    let mut feeds = Vec::new();
    let x = gr.add_value("X");
    let (xs, xv) = if s.batch_first {
        (
            vec![d.batch, d.seq, d.input],
            swap01(&d.x, d.seq, d.batch, d.input),
        )
    } else {
        (vec![d.seq, d.batch, d.input], d.x.clone())
    };
    gr.values[x].shape = Some(if s.batch_first {
        vec![
            Dim::Symbolic("batch".into()),
            Dim::Symbolic("seq".into()),
            Dim::Fixed(d.input),
        ]
    } else {
        vec![
            Dim::Symbolic("seq".into()),
            Dim::Symbolic("batch".into()),
            Dim::Fixed(d.input),
        ]
    });
    gr.inputs.push(x);
    feeds.push(Tensor::from_vec(xv, xs, &dev).unwrap());
    let constant = |gr: &mut Graph, name: &str, t: HostTensor| {
        let v = gr.add_value(name);
        gr.initializers.insert(v, t);
        Some(v)
    };
    let w = constant(&mut gr, "W", host(vec![dirs, g * hs, d.input], d.w.clone()));
    let r = constant(&mut gr, "R", host(vec![dirs, g * hs, hs], d.r.clone()));
    let b =
        d.b.as_ref()
            .and_then(|b| constant(&mut gr, "B", host(vec![dirs, 2 * g * hs], b.clone())));
    let lens = d.lens.as_ref().and_then(|l| {
        let t = HostTensor::i64(vec![l.len()], l.iter().map(|&n| n as i64).collect()).unwrap();
        constant(&mut gr, "sequence_lens", t)
    });
    let state = |v: &[f32]| {
        if s.batch_first {
            (vec![d.batch, dirs, hs], swap01(v, dirs, d.batch, hs))
        } else {
            (vec![dirs, d.batch, hs], v.to_vec())
        }
    };
    let h0 = d.h0.as_ref().map(|v| {
        let id = gr.add_value("initial_h");
        let (shape, data) = state(v);
        gr.inputs.push(id);
        feeds.push(Tensor::from_vec(data, shape, &dev).unwrap());
        id
    });
    let c0 = d.c0.as_ref().and_then(|v| {
        let (shape, data) = state(v);
        constant(&mut gr, "initial_c", host(shape, data))
    });
    let p =
        d.p.as_ref()
            .and_then(|p| constant(&mut gr, "P", host(vec![dirs, 3 * hs], p.clone())));
    let mut inputs = vec![Some(x), w, r, b, lens, h0, c0, p];
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    let outputs: Vec<ValueId> = ["Y", "Y_h", "Y_c"]
        .iter()
        .zip(s.outputs)
        .filter(|(_, on)| *on)
        .map(|(n, _)| gr.add_value(*n))
        .collect();
    gr.outputs = outputs.clone();
    gr.nodes.push(Node {
        name: "rnn_node".into(),
        op: Op::Recurrent(s.clone()),
        inputs,
        outputs,
    });
    (gr, feeds)
}

/// Run the node and return its outputs in the time-major form.
fn run(s: &Recurrent, d: &Data) -> Outs {
    let (g, feeds) = graph(s, d);
    let outs = Executor::new(g).unwrap().forward(&feeds).unwrap();
    let dirs = s.direction.count();
    let hs = s.hidden_size;
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let mut y = flat(&outs[0]);
    let mut yh = flat(&outs[1]);
    if s.batch_first {
        assert_eq!(outs[0].dims(), &[d.batch, d.seq, dirs, hs]);
        assert_eq!(outs[1].dims(), &[d.batch, dirs, hs]);
        y = swap01(&y, d.batch, d.seq * dirs, hs);
        // [seq, dirs, batch, h] from [seq·dirs, batch, h]
        yh = swap01(&yh, d.batch, dirs, hs);
    } else {
        assert_eq!(outs[0].dims(), &[d.seq, dirs, d.batch, hs]);
        assert_eq!(outs[1].dims(), &[dirs, d.batch, hs]);
    }
    let mut yc = vec![];
    if s.kind == RecurrentKind::Lstm {
        yc = flat(&outs[2]);
        if s.batch_first {
            yc = swap01(&yc, d.batch, dirs, hs);
        }
    }
    let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect();
    (f(y), f(yh), f(yc))
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() < 2e-5,
            "{what}: element {i} is {a}, the reference gives {b}"
        );
    }
}

fn check(what: &str, s: &Recurrent, d: &Data) {
    let (y, yh, yc) = run(s, d);
    let (ry, ryh, ryc) = reference(s, d);
    assert_close(&format!("{what} Y"), &y, &ry);
    assert_close(&format!("{what} Y_h"), &yh, &ryh);
    if s.kind == RecurrentKind::Lstm {
        assert_close(&format!("{what} Y_c"), &yc, &ryc);
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-computed values.

#[test]
fn rnn_by_hand() {
    // hidden 1, input 1: h1 = tanh(0.5·1 + 0.1 + 0.2), h2 = tanh(0.5·2 − h1 + 0.3).
    let s = spec(RecurrentKind::Rnn, 1, RnnDirection::Forward);
    let d = Data {
        seq: 2,
        batch: 1,
        input: 1,
        x: vec![1.0, 2.0],
        w: vec![0.5],
        r: vec![-1.0],
        b: Some(vec![0.1, 0.2]),
        lens: None,
        h0: None,
        c0: None,
        p: None,
    };
    let h1 = 0.8f64.tanh();
    let h2 = (1.0 - h1 + 0.3).tanh();
    let (y, yh, _) = run(&s, &d);
    assert_close("rnn Y", &y, &[h1, h2]);
    assert_close("rnn Y_h", &yh, &[h2]);
    // Reverse: the second input first.
    let mut s = s;
    s.direction = RnnDirection::Reverse;
    let g1 = (1.0f64 + 0.3).tanh();
    let g0 = (0.5 - g1 + 0.3).tanh();
    let (y, yh, _) = run(&s, &d);
    assert_close("reverse rnn Y", &y, &[g0, g1]);
    assert_close("reverse rnn Y_h", &yh, &[g0]);
}

#[test]
fn lstm_by_hand_with_peepholes_and_initial_state() {
    // hidden 1, input 1, one step; gates i, o, f, c with W = [1, 2, 3, 4], R = [0.5, …],
    // no bias, x = 0.5, h0 = 0.2, c0 = −1, P = [pi, po, pf] = [0.1, 0.2, 0.3].
    let mut s = spec(RecurrentKind::Lstm, 1, RnnDirection::Forward);
    let d = Data {
        seq: 1,
        batch: 1,
        input: 1,
        x: vec![0.5],
        w: vec![1.0, 2.0, 3.0, 4.0],
        r: vec![0.5, -0.5, 0.25, 1.0],
        b: None,
        lens: None,
        h0: Some(vec![0.2]),
        c0: Some(vec![-1.0]),
        p: Some(vec![0.1, 0.2, 0.3]),
    };
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let c0 = -1.0;
    let i = sig(0.5 + 0.1 + 0.1 * c0);
    let f = sig(1.5 + 0.05 + 0.3 * c0);
    let c = (2.0f64 + 0.2).tanh();
    let c1 = f * c0 + i * c;
    let o = sig(1.0 - 0.1 + 0.2 * c1);
    let h1 = o * c1.tanh();
    let (y, yh, yc) = run(&s, &d);
    assert_close("lstm Y", &y, &[h1]);
    assert_close("lstm Y_h", &yh, &[h1]);
    assert_close("lstm Y_c", &yc, &[c1]);
    // input_forget: f = 1 − i; clip 0.3 clamps every gate pre-activation (not the cell).
    s.input_forget = true;
    s.clip = Some(0.3);
    let i = sig(0.3f64.min(0.5));
    let c = 0.3f64.tanh();
    let c1 = (1.0 - i) * c0 + i * c;
    let o = sig((0.9 + 0.2 * c1).clamp(-0.3, 0.3));
    let h1 = o * c1.tanh();
    let (y, _, yc) = run(&s, &d);
    assert_close("lstm input_forget clip Y", &y, &[h1]);
    assert_close("lstm input_forget clip Y_c", &yc, &[c1]);
}

#[test]
fn gru_by_hand_both_reset_modes() {
    // hidden 1, input 1, one step, x = 1, h0 = 0.5; W = [wz, wr, wh] = [0.2, −0.4, 0.6],
    // R = [0.3, 0.7, −0.8], Wb = [0.1, 0.1, 0.1], Rb = [0, 0, 0.5].
    let mut s = spec(RecurrentKind::Gru, 1, RnnDirection::Forward);
    let d = Data {
        seq: 1,
        batch: 1,
        input: 1,
        x: vec![1.0],
        w: vec![0.2, -0.4, 0.6],
        r: vec![0.3, 0.7, -0.8],
        b: Some(vec![0.1, 0.1, 0.1, 0.0, 0.0, 0.5]),
        lens: None,
        h0: Some(vec![0.5]),
        c0: None,
        p: None,
    };
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let z = sig(0.2 + 0.15 + 0.1);
    let r = sig(-0.4 + 0.35 + 0.1);
    for lbr in [false, true] {
        s.linear_before_reset = lbr;
        let pre = if lbr {
            0.6 + 0.1 + r * (-0.8 * 0.5 + 0.5)
        } else {
            0.6 + 0.1 + -0.8 * (r * 0.5) + 0.5
        };
        let h = (1.0 - z) * pre.tanh() + z * 0.5;
        let (y, yh, _) = run(&s, &d);
        assert_close(&format!("gru lbr={lbr} Y"), &y, &[h]);
        assert_close(&format!("gru lbr={lbr} Y_h"), &yh, &[h]);
    }
}

// ---------------------------------------------------------------------------------------------
// Against the scalar reference.

#[test]
fn lstm_matches_reference_for_every_option() {
    let dirs = [
        RnnDirection::Forward,
        RnnDirection::Reverse,
        RnnDirection::Bidirectional,
    ];
    let mut n = 0;
    for dir in dirs {
        for batch_first in [false, true] {
            for (peep, clip, input_forget, initial, lens) in [
                (false, None, false, false, None),
                (true, None, false, true, None),
                (true, Some(0.6), false, true, Some(vec![3, 1])),
                (false, None, true, false, Some(vec![2, 3])),
                (true, Some(1.5), true, true, Some(vec![0, 2])),
            ] {
                let mut s = spec(RecurrentKind::Lstm, 2, dir);
                s.batch_first = batch_first;
                s.clip = clip;
                s.input_forget = input_forget;
                let mut d = data(&s, 3, 2, 3, n as f32);
                let nd = dir.count();
                if peep {
                    d.p = Some(vals(nd * 6, n as f32 + 5.0, 0.8));
                }
                if initial {
                    d.h0 = Some(vals(nd * 2 * 2, n as f32 + 6.0, 0.9));
                    d.c0 = Some(vals(nd * 2 * 2, n as f32 + 7.0, 1.5));
                }
                d.lens = lens;
                check(
                    &format!(
                        "lstm {dir:?} batch_first={batch_first} peep={peep} clip={clip:?} \
                         input_forget={input_forget} initial={initial} lens={:?}",
                        d.lens
                    ),
                    &s,
                    &d,
                );
                n += 1;
            }
        }
    }
}

#[test]
fn gru_and_rnn_match_reference() {
    let dirs = [
        RnnDirection::Forward,
        RnnDirection::Reverse,
        RnnDirection::Bidirectional,
    ];
    let mut n = 0;
    for dir in dirs {
        for batch_first in [false, true] {
            for lbr in [false, true] {
                for (lens, initial, clip) in
                    [(None, false, None), (Some(vec![3, 1, 2]), true, Some(0.8))]
                {
                    let mut s = spec(RecurrentKind::Gru, 2, dir);
                    s.batch_first = batch_first;
                    s.linear_before_reset = lbr;
                    s.clip = clip;
                    let mut d = data(&s, 3, 3, 2, n as f32);
                    d.lens = lens.clone();
                    if initial {
                        d.h0 = Some(vals(dir.count() * 3 * 2, n as f32 + 4.0, 0.9));
                    }
                    check(&format!("gru {dir:?} {batch_first} lbr={lbr}"), &s, &d);
                    let mut s = spec(RecurrentKind::Rnn, 3, dir);
                    s.batch_first = batch_first;
                    s.clip = clip;
                    let mut d = data(&s, 3, 3, 2, n as f32 + 0.5);
                    d.lens = lens;
                    if initial {
                        d.h0 = Some(vals(dir.count() * 3 * 3, n as f32 + 4.5, 0.9));
                    }
                    check(&format!("rnn {dir:?} {batch_first}"), &s, &d);
                    n += 1;
                }
            }
        }
    }
}

#[test]
fn every_activation_matches_its_formula() {
    let xs: Vec<f32> = vec![-2.5, -0.7, -0.1, 0.05, 0.4, 1.3, 3.0];
    let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
    for kind in ActivationKind::ALL {
        let a = Activation {
            kind,
            alpha: 0.35,
            beta: 0.6,
        };
        let got: Vec<f32> = mixprec_exec::rnn::activation(&a, &t)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (x, g) in xs.iter().zip(got) {
            let want = act(&a, *x as f64);
            assert!(
                (g as f64 - want).abs() < 1e-6,
                "{kind:?}({x}) = {g}, expected {want}"
            );
        }
    }
    // The same functions inside an RNN and a GRU.
    for kind in ActivationKind::ALL {
        let mut s = spec(RecurrentKind::Rnn, 2, RnnDirection::Bidirectional);
        s.activations = vec![
            Activation {
                kind,
                alpha: 0.4,
                beta: 0.3
            };
            2
        ];
        check(&format!("rnn {kind:?}"), &s, &data(&s, 3, 2, 2, 9.0));
        let mut s = spec(RecurrentKind::Gru, 2, RnnDirection::Forward);
        s.activations[1] = Activation {
            kind,
            alpha: 0.7,
            beta: 0.2,
        };
        check(&format!("gru {kind:?}"), &s, &data(&s, 3, 2, 2, 10.0));
    }
}

#[test]
fn sequence_lengths_pad_with_zeros_and_keep_last_valid_state() {
    let mut s = spec(RecurrentKind::Lstm, 2, RnnDirection::Bidirectional);
    s.batch_first = true;
    let mut d = data(&s, 4, 3, 2, 3.0);
    d.lens = Some(vec![4, 2, 0]);
    let (y, yh, yc) = run(&s, &d);
    let (dirs, batch, hs) = (2, 3, 2);
    for t in 0..4 {
        for dir in 0..dirs {
            for b in 0..batch {
                let at = ((t * dirs + dir) * batch + b) * hs;
                let padded = t >= [4, 2, 0][b];
                assert_eq!(
                    y[at..at + hs].iter().all(|&v| v == 0.0),
                    padded,
                    "Y at step {t}, direction {dir}, batch {b}"
                );
            }
        }
    }
    // Forward Y_h = Y at the last valid step; reverse Y_h = Y at step 0; empty → 0.
    let y_at = |t: usize, dir: usize, b: usize| {
        let at = ((t * dirs + dir) * batch + b) * hs;
        y[at..at + hs].to_vec()
    };
    let h_at = |dir: usize, b: usize| yh[(dir * batch + b) * hs..][..hs].to_vec();
    assert_eq!(h_at(0, 1), y_at(1, 0, 1));
    assert_eq!(h_at(1, 1), y_at(0, 1, 1));
    assert_eq!(h_at(0, 0), y_at(3, 0, 0));
    assert!(h_at(0, 2).iter().chain(&h_at(1, 2)).all(|&v| v == 0.0));
    assert!(yc[(2 * hs)..(3 * hs)].iter().all(|&v| v == 0.0));
    check("lstm lens", &s, &d);
    // Lengths beyond the sequence are an error naming the node.
    d.lens = Some(vec![5, 1, 1]);
    let (g, feeds) = graph(&s, &d);
    let err = Executor::new(g)
        .unwrap()
        .forward(&feeds)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("rnn_node") && err.contains("sequence_lens"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Second order through an LSTM.

/// X [3, N, 2] → LSTM (hidden 3) → Y_h → Reshape [N, 3] → Gemm head (2 classes).
fn lstm_classifier() -> (Graph, ValueId, ValueId) {
    let s = {
        let mut s = spec(RecurrentKind::Lstm, 3, RnnDirection::Forward);
        s.outputs = [false, true, false];
        s
    };
    let d = data(&s, 3, 4, 2, 1.0);
    let (mut g, _) = graph(&s, &d);
    let yh = g.outputs[0];
    let shape = g.add_value("shape");
    g.initializers
        .insert(shape, HostTensor::i64(vec![2], vec![-1, 3]).unwrap());
    let flat = g.add_value("flat");
    g.nodes.push(Node {
        name: "flatten".into(),
        op: Op::Reshape { allowzero: false },
        inputs: vec![Some(yh), Some(shape)],
        outputs: vec![flat],
    });
    let hw = g.add_value("head.weight");
    g.initializers
        .insert(hw, host(vec![2, 3], vals(6, 4.0, 0.9)));
    let hb = g.add_value("head.bias");
    g.initializers.insert(hb, host(vec![2], vec![0.1, -0.1]));
    let logits = g.add_value("logits");
    g.nodes.push(Node {
        name: "head".into(),
        op: Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        },
        inputs: vec![Some(flat), Some(hw), Some(hb)],
        outputs: vec![logits],
    });
    g.outputs = vec![logits];
    let r = g.value_id("R").unwrap();
    (g, r, hw)
}

#[test]
fn hessian_vector_product_through_lstm_matches_finite_differences() {
    let (g, r, _) = lstm_classifier();
    let r0 = g.initializers[&r].to_f32();
    let e = Executor::new(g).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::from_vec(vals(3 * 4 * 2, 2.0, 1.0), (3, 4, 2), &dev).unwrap();
    let labels = [0u32, 1, 1, 0];
    let v: Vec<f32> = vals(r0.len(), 8.0, 1.0);
    let vt = Tensor::from_vec(v.clone(), (1, 12, 3), &dev).unwrap();
    let hv: Vec<f32> = e
        .hvp(&x, &labels, r, &[vt])
        .unwrap()
        .remove(0)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(hv.iter().any(|v| v.abs() > 1e-4), "HVP is zero: {hv:?}");
    let eps = 1e-2f32;
    let grad_at = |sign: f32| -> Vec<f32> {
        let shifted: Vec<f32> = r0.iter().zip(&v).map(|(a, b)| a + sign * eps * b).collect();
        e.var(r)
            .unwrap()
            .set(&Tensor::from_vec(shifted, (1, 12, 3), &dev).unwrap())
            .unwrap();
        e.loss_and_grads(&x, &labels, &[r])
            .unwrap()
            .1
            .remove(0)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (gp, gm) = (grad_at(1.0), grad_at(-1.0));
    for i in 0..hv.len() {
        let fd = (gp[i] - gm[i]) / (2.0 * eps);
        assert!(
            (fd - hv[i]).abs() < 2e-3 * (1.0 + fd.abs()),
            "R HVP[{i}] {} vs finite differences {fd}",
            hv[i]
        );
    }
}

#[test]
fn second_order_copy_for_the_head_keeps_the_lstm_on_the_tape() {
    // The sensitivity metrics' reduced second-order copy (only the listed layer weights
    // tracked) gives the same HVP for the head as the full executor.
    let (g, _, hw) = lstm_classifier();
    let e = Executor::new(g).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::from_vec(vals(3 * 4 * 2, 2.0, 1.0), (3, 4, 2), &dev).unwrap();
    let labels = [1u32, 0, 1, 1];
    let v = Tensor::from_vec(vals(6, 3.0, 1.0), (2, 3), &dev).unwrap();
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let full = flat(&e.hvp(&x, &labels, hw, std::slice::from_ref(&v)).unwrap()[0]);
    let so = e.second_order(&[hw]).unwrap();
    let reduced = flat(
        &so.grad_graph(&x, &labels)
            .unwrap()
            .hvp(&[Some(&v)])
            .unwrap()[0],
    );
    assert!(full.iter().any(|v| v.abs() > 1e-4), "{full:?}");
    for (a, b) in full.iter().zip(&reduced) {
        assert!((a - b).abs() < 1e-5, "{full:?} vs {reduced:?}");
    }
}

/// Replaces every layer weight by zeros (the layer hook fake quantization uses).
struct ZeroWeights;

impl mixprec_exec::LayerHook for ZeroWeights {
    fn weight(&self, _: &mixprec_graph::Layer, w: Tensor) -> mixprec_exec::Result<Tensor> {
        Ok(w.zeros_like()?)
    }
}

#[test]
fn lstm_and_head_are_layers_with_recurrent_accounting() {
    let (mut g, r, hw) = lstm_classifier();
    let w = g.value_id("W").unwrap();
    let b = g.value_id("B").unwrap();
    // The executor hands the head's weight to layer hooks: zero weights leave the bias.
    let e = Executor::new(g.clone()).unwrap();
    let x = Tensor::from_vec(vals(3 * 4 * 2, 2.0, 1.0), (3, 4, 2), &Device::Cpu).unwrap();
    let opts = mixprec_exec::RunOptions {
        hook: Some(&ZeroWeights),
        ..Default::default()
    };
    let y: Vec<f32> = e.run(&[x], &opts).unwrap().outputs[0]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(y, [0.1, -0.1].repeat(4));
    // The LSTM (constant W and R) is a layer: weight W, bias B; R is its second weight.
    let layers = g.layers();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].name, "rnn_node");
    assert_eq!(layers[0].kind, LayerKind::Recurrent);
    assert_eq!((layers[0].weight, layers[0].bias), (w, Some(b)));
    assert_eq!(g.layer_weights(&layers[0]), [w, r]);
    assert_eq!(layers[1].name, "head");
    assert_eq!(layers[1].kind, LayerKind::Gemm);
    assert_eq!(layers[1].weight, hw);
    assert_eq!(g.layer_weights(&layers[1]), [hw]);
    // A MatMul head is found as well.
    let head = g.nodes.iter().position(|n| n.name == "head").unwrap();
    let mw = g.add_value("mm.weight");
    g.initializers
        .insert(mw, host(vec![3, 2], vals(6, 1.5, 0.5)));
    g.nodes[head].op = Op::MatMul;
    g.nodes[head].inputs = vec![g.nodes[head].inputs[0], Some(mw)];
    let layers = g.layers();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1].kind, LayerKind::MatMul);
    // Accounting by hand: H = 3, I = 2, 4 gates. W [1, 12, 2] + R [1, 12, 3] = 60 weights,
    // + B [1, 24] = 84 parameters; 4·H·(I + H) = 60 MACs per step, one step (symbolic
    // sequence axis), one direction. The head: [1, 3] × [3, 2] = 6 MACs.
    let st = model_stats(&g).unwrap();
    assert_eq!(st.layers.len(), 2);
    let ls = &st.layers[0];
    assert_eq!((ls.name.as_str(), ls.op.as_str()), ("rnn_node", "LSTM"));
    assert_eq!(ls.kind, LayerKind::Recurrent);
    assert_eq!(ls.weight_shape, [1, 12, 2]);
    assert_eq!((ls.weights, ls.params, ls.macs), (60, 84, 60));
    assert_eq!(ls.input_elems, 2);
    assert_eq!(st.layers[1].macs, 6);
    assert_eq!(st.total_macs, 66);
    assert!(st.recurrent.is_empty());
    assert_eq!(st.recurrent_macs, 0);
    // A recurrent node whose R is not constant stays float: not a layer, listed apart.
    let mut g2 = g.clone();
    let rt = g2.initializers.remove(&r).unwrap();
    g2.values[r].shape = Some(rt.shape.iter().map(|&d| Dim::Fixed(d)).collect());
    g2.inputs.push(r);
    let layers = g2.layers();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].kind, LayerKind::MatMul);
    let st = model_stats(&g2).unwrap();
    assert_eq!(st.layers.len(), 1);
    assert_eq!(st.recurrent.len(), 1);
    let rs = &st.recurrent[0];
    assert_eq!(rs.op, "LSTM");
    assert_eq!(rs.macs_per_step, 4 * 3 * (2 + 3));
    assert_eq!((rs.steps, rs.directions, rs.macs), (1, 1, 60));
    assert_eq!(rs.params, (12 * 2 + 24) as u64);
    assert_eq!((st.total_macs, st.recurrent_macs), (6, 60));
    // The executor runs the whole model.
    let e = Executor::new(g).unwrap();
    let x = Tensor::from_vec(vals(5 * 7 * 2, 3.0, 1.0), (5, 7, 2), &Device::Cpu).unwrap();
    assert_eq!(e.forward(&[x]).unwrap()[0].dims(), &[7, 2]);
}

#[test]
fn fake_quant_quantizes_lstm_w_and_r_at_the_layer_bits() {
    use mixprec_quant::{quantize, Granularity, Policy, QScheme, QuantKind, TensorLayout};
    let (g, r, _) = lstm_classifier();
    let w = g.value_id("W").unwrap();
    let x = Tensor::from_vec(vals(3 * 4 * 2, 2.0, 1.0), (3, 4, 2), &Device::Cpu).unwrap();
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    for granularity in [Granularity::Tensor, Granularity::Channel] {
        let scheme = QScheme::new(QuantKind::Uniform, 4, true, granularity);
        let mut p = Policy::new();
        p.set_weight("rnn_node", scheme);
        let e = Executor::new(g.clone()).unwrap();
        let fq = mixprec_exec::FakeQuant::new(&e, &p, &Default::default(), 7).unwrap();
        let opts = mixprec_exec::RunOptions {
            hook: Some(&fq),
            ..Default::default()
        };
        let yq = flat(&e.run(std::slice::from_ref(&x), &opts).unwrap().outputs[0]);
        // A second pass reuses the cached W and R and gives the same result.
        let yq2 = flat(&e.run(std::slice::from_ref(&x), &opts).unwrap().outputs[0]);
        assert_eq!(yq, yq2);
        let yf = flat(&e.forward(std::slice::from_ref(&x)).unwrap()[0]);
        let diff = yq
            .iter()
            .zip(&yf)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff > 1e-3,
            "4-bit LSTM weights change nothing: {yq:?} vs {yf:?}"
        );
        // Reference: the float model with W and R replaced by their 4-bit values (per row of
        // gates·H, axis 1, for per-channel).
        let mut gq = g.clone();
        for v in [w, r] {
            let t = &g.initializers[&v];
            let q = quantize(
                &t.to_f32(),
                &TensorLayout::new(t.shape.clone(), 1),
                &scheme,
                0,
            )
            .unwrap();
            assert_ne!(q.values, t.to_f32());
            gq.initializers.insert(v, host(t.shape.clone(), q.values));
        }
        let yr = flat(
            &Executor::new(gq)
                .unwrap()
                .forward(std::slice::from_ref(&x))
                .unwrap()[0],
        );
        for (a, b) in yq.iter().zip(&yr) {
            assert!((a - b).abs() < 1e-5, "{granularity:?}: {yq:?} vs {yr:?}");
        }
        // The report counts W and R.
        let info = fq.layer_info();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].weight_elems, 60);
        assert!(info[0].weight_bits >= 60 * 4, "{:?}", info[0]);
        assert!(info[0].weight_mse > 0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// ONNX import / export.

fn tensor(name: &str, dims: &[usize], v: Vec<f32>) -> pb::TensorProto {
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    onnx_build::float_tensor(name, &dims, v)
}

fn value_info(name: &str, dims: &[Result<usize, &str>]) -> pb::ValueInfoProto {
    onnx_build::value_info(
        name,
        1,
        dims.iter().map(|d| match d {
            Ok(v) => onnx_build::dim(*v as i64),
            Err(p) => onnx_build::sym(p),
        }),
    )
}

/// A bidirectional batch-first LSTM as an exporter writes it: Y omitted (empty name), Y_h and
/// Y_c produced, symbolic batch and sequence axes, non-default attributes.
fn lstm_onnx(attrs: Vec<pb::AttributeProto>, outputs: &[&str]) -> Vec<u8> {
    let (h, i) = (2usize, 3usize);
    let node = pb::NodeProto {
        name: "lstm_1".into(),
        op_type: "LSTM".into(),
        input: vec!["X", "W", "R", "B", "", "", "", "P"]
            .into_iter()
            .map(String::from)
            .collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "g".into(),
        node: vec![node],
        initializer: vec![
            tensor("W", &[2, 4 * h, i], vals(2 * 4 * h * i, 1.0, 0.6)),
            tensor("R", &[2, 4 * h, h], vals(2 * 4 * h * h, 2.0, 0.6)),
            tensor("B", &[2, 8 * h], vals(2 * 8 * h, 3.0, 0.4)),
            tensor("P", &[2, 3 * h], vals(2 * 3 * h, 4.0, 0.4)),
        ],
        input: vec![value_info("X", &[Err("batch"), Err("seq"), Ok(i)])],
        output: outputs
            .iter()
            .filter(|o| !o.is_empty())
            .map(|&o| {
                if o == "Y" {
                    value_info(o, &[Err("batch"), Err("seq"), Ok(2), Ok(h)])
                } else {
                    value_info(o, &[Err("batch"), Ok(2), Ok(h)])
                }
            })
            .collect(),
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 14,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

fn full_attrs() -> Vec<pb::AttributeProto> {
    vec![
        attr_int("hidden_size", 2),
        attr_string("direction", "bidirectional"),
        attr_int("layout", 1),
        attr_float("clip", 2.5),
        attr_int("input_forget", 1),
        attr_strings(
            "activations",
            &[
                "HardSigmoid",
                "tanh",
                "LeakyRelu",
                "Sigmoid",
                "Elu",
                "Softsign",
            ],
        ),
        attr_floats("activation_alpha", &[0.3, 0.05, 0.9]),
        attr_floats("activation_beta", &[0.45]),
    ]
}

#[test]
fn import_export_roundtrip_keeps_attributes_and_results() {
    let g = import_onnx_bytes(&lstm_onnx(full_attrs(), &["", "Y_h", "Y_c"])).unwrap();
    let Op::Recurrent(r) = &g.nodes[0].op else {
        panic!("not imported as a recurrent op: {:?}", g.nodes[0].op)
    };
    assert_eq!(r.kind, RecurrentKind::Lstm);
    assert_eq!(r.hidden_size, 2);
    assert_eq!(r.direction, RnnDirection::Bidirectional);
    assert!(r.batch_first && r.input_forget);
    assert_eq!(r.clip, Some(2.5));
    assert_eq!(r.outputs, [false, true, true]);
    assert_eq!(
        (r.output_index(0), r.output_index(1), r.output_index(2)),
        (None, Some(0), Some(1))
    );
    let kinds: Vec<ActivationKind> = r.activations.iter().map(|a| a.kind).collect();
    use ActivationKind as K;
    assert_eq!(
        kinds,
        [
            K::HardSigmoid,
            K::Tanh,
            K::LeakyRelu,
            K::Sigmoid,
            K::Elu,
            K::Softsign
        ]
    );
    // alpha / beta are consumed in order by the functions that take them.
    assert_eq!((r.activations[0].alpha, r.activations[0].beta), (0.3, 0.45));
    assert_eq!(r.activations[2].alpha, 0.05);
    assert_eq!(r.activations[4].alpha, 0.9);
    // Shape inference with the symbolic axes set.
    let inf = infer(&g, &[vec![5, 7, 3]]).unwrap();
    assert_eq!(inf.shapes[g.outputs[0]], Some(vec![5, 2, 2]));
    // Export, re-import: same operator, same outputs.
    let bytes = to_model_proto(&g).unwrap().encode_to_vec();
    let back = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let node = &back.graph.as_ref().unwrap().node[0];
    assert_eq!(node.op_type, "LSTM");
    assert_eq!(node.output, vec!["", "Y_h", "Y_c"]);
    assert!(back.opset_import[0].version >= 14, "layout needs opset 14");
    let g2 = import_onnx_bytes(&bytes).unwrap();
    assert_eq!(g2.nodes[0].op, g.nodes[0].op);
    let x = Tensor::from_vec(vals(5 * 7 * 3, 5.0, 1.0), (5, 7, 3), &Device::Cpu).unwrap();
    let a = Executor::new(g)
        .unwrap()
        .forward(std::slice::from_ref(&x))
        .unwrap();
    let b = Executor::new(g2).unwrap().forward(&[x]).unwrap();
    assert_eq!(a.len(), 2);
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.dims(), &[5, 2, 2]);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
    }
    // Defaults survive too (forward, no attributes but hidden_size): default activations.
    let g = import_onnx_bytes(&lstm_onnx(
        vec![
            attr_int("hidden_size", 2),
            attr_string("direction", "bidirectional"),
        ],
        &["Y"],
    ))
    .unwrap();
    let bytes = to_model_proto(&g).unwrap().encode_to_vec();
    assert_eq!(
        import_onnx_bytes(&bytes).unwrap().nodes[0].op,
        g.nodes[0].op
    );
}

#[test]
fn unsupported_attributes_are_clear_import_errors() {
    let with = |extra: Vec<pb::AttributeProto>| {
        let mut attrs = vec![
            attr_int("hidden_size", 2),
            attr_string("direction", "bidirectional"),
        ];
        for e in extra {
            attrs.retain(|a| a.name != e.name);
            attrs.push(e);
        }
        import_onnx_bytes(&lstm_onnx(attrs, &["Y"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    for (extra, needle) in [
        (
            vec![attr_string("direction", "sideways")],
            "direction 'sideways'",
        ),
        (vec![attr_int("layout", 2)], "layout 2"),
        (
            vec![attr_strings(
                "activations",
                &["Gelu", "Tanh", "Tanh", "Sigmoid", "Tanh", "Tanh"],
            )],
            "activation 'Gelu' is not supported",
        ),
        (
            vec![attr_strings("activations", &["Sigmoid", "Tanh", "Tanh"])],
            "needs 6",
        ),
        (
            vec![attr_strings(
                "activations",
                &["Affine", "Tanh", "Tanh", "Sigmoid", "Tanh", "Tanh"],
            )],
            "activation_alpha",
        ),
        (vec![attr_float("clip", -1.0)], "clip"),
        (vec![attr_int("linear_before_reset", 1)], "GRU only"),
        (vec![attr_int("hidden_size", 0)], "hidden_size"),
    ] {
        let err = with(extra);
        assert!(
            err.contains("lstm_1") && err.contains(needle),
            "expected an error naming the node and '{needle}', got '{err}'"
        );
    }
    // hidden_size is read from R when absent.
    let g = import_onnx_bytes(&lstm_onnx(
        vec![attr_string("direction", "bidirectional")],
        &["Y"],
    ))
    .unwrap();
    let Op::Recurrent(r) = &g.nodes[0].op else {
        panic!()
    };
    assert_eq!(r.hidden_size, 2);
    // A W of the wrong shape is a shape error naming the node.
    let mut g = g;
    let w = g.value_id("W").unwrap();
    g.initializers.insert(w, host(vec![2, 8, 4], vec![0.0; 64]));
    let err = infer(&g, &[vec![5, 7, 3]]).unwrap_err().to_string();
    assert!(
        err.contains("lstm_1") && err.contains("W has shape"),
        "{err}"
    );
}
