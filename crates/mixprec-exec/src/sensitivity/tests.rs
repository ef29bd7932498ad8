//! Conformance of every registered metric and an exact check of the Hutchinson estimate.

use super::*;
use crate::executor::LayerHook;
use crate::models::GraphBuilder;
use candle_core::Device;
use mixprec_graph::Op;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 1×4×4 input → fc 16→12 → ReLU → fc 12→8 → ReLU → fc 8→3.
fn mlp(seed: u64) -> Executor {
    let (mut b, x) = GraphBuilder::new("mlp", 1, 4, 4, seed);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
    let y = b.fc("fc1", y, 16, 12);
    let y = b.node("relu1", Op::Relu, vec![y]);
    let y = b.fc("fc2", y, 12, 8);
    let y = b.node("relu2", Op::Relu, vec![y]);
    let y = b.fc("fc3", y, 8, 3);
    Executor::new(b.finish(y)).unwrap()
}

/// `n` random 1×4×4 samples labelled by a fixed random linear rule; pixel 0 is always 0.
fn samples(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rule: Vec<f32> = (0..48).map(|_| rng.random_range(-1.0..1.0)).collect();
    let images: Vec<f32> = (0..n * 16)
        .map(|i| {
            let v = rng.random_range(-1.0..1.0);
            if i % 16 == 0 {
                0.0
            } else {
                v
            }
        })
        .collect();
    let labels = (0..n)
        .map(|i| {
            let x = &images[i * 16..(i + 1) * 16];
            let score = |c: usize| -> f32 { (0..16).map(|k| rule[c * 16 + k] * x[k]).sum() };
            (0..3)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap() as u32
        })
        .collect();
    let classes = ["a", "b", "c"].map(String::from).to_vec();
    Dataset::from_parts("synthetic", images, labels, n, 1, 4, 4, classes).unwrap()
}

fn layer(exec: &Executor, name: &str) -> Layer {
    exec.graph()
        .layers()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap()
}

/// Sets weight [0, 0] of `fc1` (it reads pixel 0, always 0) to 50 × the largest weight: the
/// float function is unchanged, but the outlier stretches the layer's per-tensor quantization
/// range so that its quantization error explodes.
fn damage(exec: &Executor) {
    let var = exec.var(layer(exec, "fc1").weight).unwrap();
    let mut w = to_vec_f32(var.as_tensor()).unwrap();
    w[0] = 50.0 * w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let t = Tensor::from_vec(w, var.as_tensor().dims(), &Device::Cpu).unwrap();
    var.set(&t).unwrap();
}

fn options(list: &str) -> Vec<SensOption> {
    SensOption::parse_list(list, Granularity::Tensor).unwrap()
}

#[test]
fn options_parse_and_reject_bad_labels() {
    let o = options("w2, w4,a8");
    assert_eq!(o.len(), 3);
    assert_eq!((o[1].target, o[1].scheme.bits), (OptionTarget::Weight, 4));
    assert!(o[1].scheme.symmetric);
    assert_eq!(
        (o[2].target, o[2].scheme.bits),
        (OptionTarget::Activation, 8)
    );
    for bad in ["x4", "w", "w0", "w99", ""] {
        let e = SensOption::parse_list(bad, Granularity::Tensor).unwrap_err();
        assert!(e.to_string().contains("option"), "{bad}: {e}");
    }
    let e = build_metric("hessian", &serde_json::Value::Null)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hessian-trace"), "{e}");
}

#[test]
fn every_metric_is_finite_deterministic_and_ranks_a_damaged_layer_first() {
    let data = samples(32, 1);
    let exec = mlp(7);
    damage(&exec);
    for entry in METRICS {
        let metric = (entry.build)(&serde_json::Value::Null).unwrap();
        // hessian-trace scores activations too on this piecewise-linear MLP (exact traces).
        let weight_only = matches!(entry.name, "fisher" | "hessian-eigen" | "aq-noise");
        // At 2 bits every layer of so small a net is wrecked; from 4 bits on, healthy layers
        // quantize well and only the damaged one must stand out.
        let list = if weight_only {
            "w4,w6,w8"
        } else {
            "w4,w6,w8,a8"
        };
        let run = |seed| {
            let ctx = SensCtx::new(&exec, &data, options(list), 16, seed).unwrap();
            metric.compute(&ctx).unwrap()
        };
        let t = run(3);
        assert_eq!(t.metric, entry.name);
        assert_eq!(t.layers, ["fc1", "fc2", "fc3"]);
        assert_eq!(t.values.len(), 3);
        for row in &t.values {
            assert_eq!(row.len(), t.options.len());
            assert!(row.iter().all(|v| v.is_finite()), "{}: {row:?}", entry.name);
        }
        let again = run(3);
        for (a, b) in t.values.iter().flatten().zip(again.values.iter().flatten()) {
            assert!(
                (a - b).abs() <= 1e-9 * a.abs().max(1e-30),
                "{} is not deterministic: {a} vs {b}",
                entry.name
            );
        }
        for o in 0..3 {
            assert_eq!(
                t.most_sensitive(o),
                Some(0),
                "{} column {}: {:?}",
                entry.name,
                t.options[o],
                t.values
            );
        }
        assert_eq!(t.ranking()[0], 0, "{}", entry.name);
        if weight_only {
            let ctx = SensCtx::new(&exec, &data, options("w4,a8"), 16, 0).unwrap();
            let e = metric.compute(&ctx).unwrap_err().to_string();
            assert!(e.contains("'a8'") && e.contains(entry.name), "{e}");
        }
    }
}

/// The exact trace of one layer's Hessian block: Σ_k e_kᵀ H e_k with basis probes.
fn exact_trace(ctx: &SensCtx, l: &Layer) -> f64 {
    let (_, dims) = ctx.weight(l).unwrap();
    let n: usize = dims.iter().product();
    let basis: Vec<Tensor> = (0..n)
        .map(|k| {
            let mut e = vec![0f32; n];
            e[k] = 1.0;
            Tensor::from_vec(e, dims.as_slice(), &Device::Cpu).unwrap()
        })
        .collect();
    let (x, labels) = &ctx.batches[0];
    let cols = ctx.exec.hvp(x, labels, l.weight, &basis).unwrap();
    cols.iter()
        .enumerate()
        .map(|(k, c)| c.flatten_all().unwrap().to_vec1::<f32>().unwrap()[k] as f64)
        .sum()
}

#[test]
fn hutchinson_trace_matches_the_exact_trace_of_each_layer() {
    let data = samples(24, 2);
    let exec = mlp(11);
    // One batch: every probe sees the same Hessian.
    let ctx = SensCtx::new(&exec, &data, options("w2,w4"), 24, 5).unwrap();
    let exact: Vec<f64> = ctx.layers.iter().map(|l| exact_trace(&ctx, l)).collect();
    let mut cfg = hessian_trace::Config {
        tol: 0.03,
        min_probes: 16,
        max_probes: 3000,
        probes_per_pass: 50,
        joint: false,
        estimator: hessian_trace::Estimator::Hutchinson,
        exact_rows: 64,
    };
    // Layers probed alone, then jointly (one pass for all layers, cross terms averaging out).
    let mut runs = Vec::new();
    for joint in [false, true] {
        cfg.joint = joint;
        let metric = hessian_trace::HessianTrace::new(cfg.clone()).unwrap();
        let est = metric.traces(&ctx).unwrap();
        for ((l, e), &exact) in ctx.layers.iter().zip(&est).zip(&exact) {
            let se = e.rel_stderr * e.trace.abs();
            assert!(exact > 0.0, "{}: {exact}", l.name);
            assert!(e.probes >= cfg.min_probes && e.probes <= cfg.max_probes);
            assert!(e.rel_stderr < cfg.tol, "{}: {e:?}", l.name);
            assert!(
                (e.trace - exact).abs() <= 4.0 * se + 1e-6 * exact,
                "{} (joint {joint}): Hutchinson {} ± {se} vs exact {exact} ({} probes)",
                l.name,
                e.trace,
                e.probes
            );
            if !joint {
                assert!(!e.joint && e.dropped == 0, "{e:?}");
            }
        }
        // Deterministic for a seed.
        assert_eq!(metric.traces(&ctx).unwrap(), est);
        runs.push((metric, est));
    }
    // The budget check sends a layer whose joint estimate cannot converge to single probes:
    // with a budget of 20 probes at 3 %, at least one layer is probed alone.
    let tight = hessian_trace::HessianTrace::new(hessian_trace::Config {
        max_probes: 20,
        joint: true,
        ..cfg.clone()
    })
    .unwrap();
    let est = tight.traces(&ctx).unwrap();
    assert!(
        est.iter().any(|e| !e.joint && e.dropped == cfg.min_probes),
        "{est:?}"
    );
    let (metric, est) = runs.remove(1);
    // Ω = Tr(H)/n · ‖Q(W) − W‖² (Eq. 23) for every cell.
    let t = metric.compute(&ctx).unwrap();
    assert_eq!(t.details.len(), 3);
    assert_eq!(t.details[1]["trace"], est[1].trace);
    for (i, l) in ctx.layers.iter().enumerate() {
        for (o, opt) in ctx.options.iter().enumerate() {
            let err = ctx.weight_error(l, &opt.scheme).unwrap();
            let want = est[i].trace / err.len() as f64 * sq_norm(&err);
            assert!(
                (t.values[i][o] - want).abs() <= 1e-12 * want.abs(),
                "{}",
                l.name
            );
        }
        // Fewer bits, larger error, larger Ω.
        assert!(
            t.values[i][0] > t.values[i][1],
            "{}: {:?}",
            l.name,
            t.values[i]
        );
    }
}

/// A small CNN: conv → BatchNorm → ReLU → max pool → conv (bias) → + pool output → ReLU →
/// depthwise conv → global average pool → flatten → fc → ReLU → fc (4 classes).
fn small_cnn(seed: u64) -> Executor {
    let (mut b, x) = GraphBuilder::new("cnn", 1, 4, 4, seed);
    let y = b.conv("conv1", x, 1, 3, 3, 1, 1, false);
    let y = b.bn("bn1", y, 3);
    let y = b.node("relu1", Op::Relu, vec![y]);
    let window = mixprec_graph::Window {
        kernel: vec![2, 2],
        strides: vec![1, 1],
        ..Default::default()
    };
    let p = b.node("pool", Op::MaxPool(window), vec![y]);
    let y = b.conv("conv2", p, 3, 3, 3, 1, 1, true);
    let y = b.node("add", Op::Add, vec![y, p]);
    let y = b.node("relu2", Op::Relu, vec![y]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let dw: Vec<f32> = (0..3 * 4).map(|_| rng.random_range(-0.8..0.8)).collect();
    let dw = b.constant(
        "dw.weight",
        mixprec_graph::Tensor::f32(vec![3, 1, 2, 2], dw).unwrap(),
    );
    let window = mixprec_graph::Window {
        kernel: vec![2, 2],
        strides: vec![1, 1],
        pads: vec![1, 0, 0, 1],
        ..Default::default()
    };
    let y = b.node("dw", Op::Conv { window, group: 3 }, vec![y, dw]);
    let y = b.node("gap", Op::GlobalAveragePool, vec![y]);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![y]);
    let y = b.fc("fc1", y, 3, 5);
    let y = b.node("relu3", Op::Relu, vec![y]);
    let y = b.fc("fc2", y, 5, 4);
    Executor::new(b.finish(y)).unwrap()
}

/// Two convolution branches (one clipped to [0, 0.5] like ReLU6, one LeakyReLU) concatenated
/// on channels → average pool → flatten → MatMul weight → + bias.
fn branchy_cnn(seed: u64) -> Executor {
    let (mut b, x) = GraphBuilder::new("branchy", 1, 4, 4, seed);
    let a = b.conv("conv_a", x, 1, 2, 3, 1, 1, true);
    let lo = b.constant("lo", mixprec_graph::Tensor::f32(vec![], vec![0.0]).unwrap());
    let hi = b.constant("hi", mixprec_graph::Tensor::f32(vec![], vec![0.5]).unwrap());
    let a = b.node("clip", Op::Clip, vec![a, lo, hi]);
    let c = b.conv("conv_b", x, 1, 2, 3, 1, 1, false);
    let c = b.node("leaky", Op::LeakyRelu { alpha: 0.1 }, vec![c]);
    let y = b.node("cat", Op::Concat { axis: 1 }, vec![a, c]);
    let window = mixprec_graph::Window {
        kernel: vec![2, 2],
        strides: vec![2, 2],
        ..Default::default()
    };
    let y = b.node(
        "avg",
        Op::AveragePool {
            window,
            count_include_pad: false,
        },
        vec![y],
    );
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![y]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 7);
    let w: Vec<f32> = (0..16 * 3).map(|_| rng.random_range(-0.9..0.9)).collect();
    let w = b.constant(
        "head.weight",
        mixprec_graph::Tensor::f32(vec![16, 3], w).unwrap(),
    );
    let y = b.node("head", Op::MatMul, vec![y, w]);
    let bias = b.constant(
        "head.bias",
        mixprec_graph::Tensor::f32(vec![3], vec![0.1, -0.2, 0.05]).unwrap(),
    );
    let y = b.node("bias", Op::Add, vec![y, bias]);
    Executor::new(b.finish(y)).unwrap()
}

#[test]
fn exact_traces_equal_the_trace_of_each_hessian_block() {
    // Against Σ_k e_kᵀ H e_k by double backward, on an MLP and on a CNN with BatchNorm, a max
    // pool, a residual Add and a depthwise convolution; two batches weigh by their sizes.
    for (exec, cnn) in [
        (mlp(11), false),
        (small_cnn(4), true),
        (branchy_cnn(2), false),
    ] {
        let data = samples(10, 2);
        let ctx = SensCtx::new(&exec, &data, options("w4"), 10, 5).unwrap();
        if cnn {
            assert_eq!(ctx.layers.len(), 5);
        }
        let want: Vec<f64> = ctx.layers.iter().map(|l| exact_trace(&ctx, l)).collect();
        for rows in [1, 7, 64] {
            let got = exec
                .exact_layer_traces(&ctx.layers, &ctx.batches[0].0, rows)
                .unwrap();
            for ((l, g), w) in ctx.layers.iter().zip(&got).zip(&want) {
                let g = g.weight;
                assert!(*w > 0.0, "{}: {w}", l.name);
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs() + 1e-7,
                    "{} (rows {rows}): exact {g} vs Σ eᵀHe {w}",
                    l.name
                );
            }
        }
        // The metric picks the exact computation by itself and reports it.
        let metric = hessian_trace::HessianTrace::new(hessian_trace::Config::default()).unwrap();
        assert!(metric.use_exact(&ctx).unwrap());
        let est = metric.traces(&ctx).unwrap();
        for (e, w) in est.iter().zip(&want) {
            assert!(e.exact && e.probes == 0, "{e:?}");
            assert!((e.trace - w).abs() <= 1e-4 * w.abs() + 1e-7);
        }
        // Batches of 6 and 4: sample-weighted mean of the per-batch traces.
        let ctx2 = SensCtx::new(&exec, &data, options("w4"), 6, 5).unwrap();
        let parts: Vec<Vec<f64>> = ctx2
            .batches
            .iter()
            .map(|(x, _)| {
                let rows = hessian_trace::Config::default().exact_rows;
                let t = exec.exact_layer_traces(&ctx2.layers, x, rows).unwrap();
                t.iter().map(|t| t.weight).collect()
            })
            .collect();
        let est2 = metric.traces(&ctx2).unwrap();
        for (k, e) in est2.iter().enumerate() {
            let mean = (6.0 * parts[0][k] + 4.0 * parts[1][k]) / 10.0;
            assert!(
                (e.trace - mean).abs() <= 1e-9 * mean.abs(),
                "{e:?} vs {mean}"
            );
            assert!((e.trace - want[k]).abs() <= 1e-4 * want[k].abs() + 1e-7);
        }
    }
}

/// Tr(∇²_X L) of the mean loss with respect to the whole input batch X: Σ_k e_kᵀ H e_k by
/// double backward, one basis vector per input element.
fn exact_input_trace(exec: &Executor, x: &Tensor, labels: &[u32]) -> f64 {
    let xv = candle_core::Var::from_tensor(x).unwrap();
    let (loss, _) = exec.loss(xv.as_tensor(), labels, None, false).unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(xv.as_tensor())
        .unwrap()
        .clone();
    let n = x.elem_count();
    (0..n)
        .map(|k| {
            let mut e = vec![0f32; n];
            e[k] = 1.0;
            let e = Tensor::from_vec(e, x.dims(), &Device::Cpu).unwrap();
            let hv = (&g * &e).unwrap().sum_all().unwrap().backward().unwrap();
            let hv = hv.get(xv.as_tensor()).unwrap().flatten_all().unwrap();
            hv.to_vec1::<f32>().unwrap()[k] as f64
        })
        .sum()
}

#[test]
fn exact_input_traces_equal_the_trace_of_the_input_hessian() {
    // The first layer of each model reads the model input: its per-sample input trace,
    // averaged over the batch, is the trace of the mean loss's Hessian in the whole batch.
    for exec in [mlp(11), small_cnn(4)] {
        let data = samples(6, 2);
        let ctx = SensCtx::new(&exec, &data, options("w4"), 6, 5).unwrap();
        let (x, labels) = &ctx.batches[0];
        let want = exact_input_trace(&exec, x, labels);
        let got = exec.exact_layer_traces(&ctx.layers, x, 5).unwrap();
        assert!(want > 0.0);
        assert!(
            (got[0].input - want).abs() <= 1e-4 * want,
            "{}: {} vs {want}",
            ctx.layers[0].name,
            got[0].input
        );
        assert!(got.iter().all(|t| t.input > 0.0), "{got:?}");
    }
}

/// Mean and standard error of the mean of `v`.
fn mean_and_se(v: &[f64]) -> (f64, f64) {
    let m = v.len() as f64;
    let mean = v.iter().sum::<f64>() / m;
    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (m - 1.0);
    (mean, (var / m).sqrt())
}

#[test]
fn logit_probes_are_unbiased_for_the_exact_traces() {
    // Rademacher probes in the logit space (one row per sample and round): the mean over
    // many rounds equals the exact weight and input traces within 4 standard errors, and
    // single rounds scatter (the probes are random).
    for exec in [mlp(11), small_cnn(4), branchy_cnn(2)] {
        let data = samples(10, 2);
        let ctx = SensCtx::new(&exec, &data, options("w4"), 10, 5).unwrap();
        let x = &ctx.batches[0].0;
        let exact = exec.exact_layer_traces(&ctx.layers, x, 64).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let rounds = exec
            .probed_layer_traces(&ctx.layers, x, 7, 400, &mut rng)
            .unwrap();
        assert_eq!(rounds.len(), 400);
        for (k, l) in ctx.layers.iter().enumerate() {
            let w: Vec<f64> = rounds.iter().map(|r| r[k].weight).collect();
            let i: Vec<f64> = rounds.iter().map(|r| r[k].input).collect();
            for (what, v, want) in [("weight", w, exact[k].weight), ("input", i, exact[k].input)] {
                let (mean, se) = mean_and_se(&v);
                assert!(v.iter().all(|&a| a >= 0.0), "{}: {what}", l.name);
                assert!(se > 1e-6 * want, "{} {what}: no scatter", l.name);
                assert!(
                    (mean - want).abs() <= 4.0 * se,
                    "{} {what}: probed {mean} ± {se} vs exact {want}",
                    l.name
                );
            }
        }
    }
}

#[test]
fn logit_hutchinson_metric_reaches_its_tolerance() {
    // Two batches (6 + 4 samples), weight and activation options: every layer stops below
    // the tolerance on both traces and lands near the exact traces; the table is finite.
    let exec = small_cnn(4);
    let data = samples(10, 2);
    let ctx = SensCtx::new(&exec, &data, options("w4,a8"), 6, 5).unwrap();
    let exact = hessian_trace::HessianTrace::new(hessian_trace::Config {
        estimator: hessian_trace::Estimator::Exact,
        ..hessian_trace::Config::default()
    })
    .unwrap()
    .traces(&ctx)
    .unwrap();
    let tol = 0.03;
    let metric = hessian_trace::HessianTrace::new(hessian_trace::Config {
        estimator: hessian_trace::Estimator::LogitHutchinson,
        tol,
        max_probes: 100_000,
        ..hessian_trace::Config::default()
    })
    .unwrap();
    assert!(!metric.use_exact(&ctx).unwrap());
    let est = metric.traces(&ctx).unwrap();
    for ((e, x), l) in est.iter().zip(&exact).zip(&ctx.layers) {
        assert!(
            !e.exact && e.probes >= 8 && e.rel_stderr < tol,
            "{}: {e:?}",
            l.name
        );
        assert!(
            (e.trace - x.trace).abs() <= 4.0 * tol * x.trace,
            "{}: {} vs exact {}",
            l.name,
            e.trace,
            x.trace
        );
        let (got, want) = (e.input_trace.unwrap(), x.input_trace.unwrap());
        assert!(
            (got - want).abs() <= 4.0 * tol * want,
            "{} input: {got} vs exact {want}",
            l.name
        );
    }
    // Deterministic for a seed.
    assert_eq!(metric.traces(&ctx).unwrap(), est);
    let t = metric.compute(&ctx).unwrap();
    assert!(t.values.iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn activation_options_use_the_input_trace() {
    // Ω = Tr(H_x)/n_x · E‖Q(x) − x‖² (Eq. 23 for the input activation), by hand for the first
    // layer of the MLP, whose input is the (flattened) model input.
    let exec = mlp(11);
    let data = samples(12, 2);
    let ctx = SensCtx::new(&exec, &data, options("w4,a2,a8"), 12, 5).unwrap();
    let metric = hessian_trace::HessianTrace::new(hessian_trace::Config::default()).unwrap();
    let t = metric.compute(&ctx).unwrap();
    let est = metric.traces(&ctx).unwrap();
    let fc1 = &ctx.layers[0];
    let x = ctx.batches[0].0.flatten_from(1).unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for o in [1, 2] {
        let hook = ctx.single_layer_hook(fc1, &ctx.options[o]).unwrap();
        let q = hook.input(fc1, x.clone()).unwrap();
        let q = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err: f64 = q
            .iter()
            .zip(&xv)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let want = est[0].input_trace.unwrap() / 16.0 * err / 12.0;
        assert!(
            (t.values[0][o] - want).abs() <= 1e-9 * want,
            "{} vs {want}",
            t.values[0][o]
        );
    }
    for row in &t.values {
        assert!(row[1] > row[2] && row[2] > 0.0, "{row:?}");
    }
    assert!(t.details[0]["input_trace"] > 0.0);
    // Hutchinson probes the input activations through taps: within 4 standard errors of the
    // exact input traces, every layer below the tolerance.
    let hutch = hessian_trace::HessianTrace::new(hessian_trace::Config {
        estimator: hessian_trace::Estimator::Hutchinson,
        tol: 0.05,
        max_probes: 4096,
        ..Default::default()
    })
    .unwrap();
    let h = hutch.traces(&ctx).unwrap();
    for ((e, x), l) in h.iter().zip(&est).zip(&ctx.layers) {
        let (got, rel) = (e.input_trace.unwrap(), e.input_rel_stderr.unwrap());
        let want = x.input_trace.unwrap();
        assert!(!e.exact && rel < 0.05, "{}: {e:?}", l.name);
        assert!(
            (got - want).abs() <= 4.0 * rel * got.abs(),
            "{} input: {got} ± {rel} vs exact {want}",
            l.name
        );
    }
    let th = hutch.compute(&ctx).unwrap();
    assert!(th.values.iter().flatten().all(|v| v.is_finite()));
    // Weight-only options draw no input probes.
    let ctx_w = SensCtx::new(&exec, &data, options("w4"), 12, 5).unwrap();
    assert!(hutch
        .traces(&ctx_w)
        .unwrap()
        .iter()
        .all(|e| e.input_trace.is_none()));
}

#[test]
fn exact_traces_refuse_a_network_that_is_not_piecewise_linear() {
    let (mut b, x) = GraphBuilder::new("sig", 1, 4, 4, 3);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
    let y = b.fc("fc1", y, 16, 6);
    let y = b.node("act", Op::Sigmoid, vec![y]);
    let y = b.fc("fc2", y, 6, 3);
    let exec = Executor::new(b.finish(y)).unwrap();
    let data = samples(8, 3);
    let ctx = SensCtx::new(&exec, &data, options("w4"), 8, 0).unwrap();
    let e = exec
        .exact_layer_traces(&ctx.layers, &ctx.batches[0].0, 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc1") && e.contains("'act' (Sigmoid)"), "{e}");
    // fc2 alone is exact (only the softmax follows it).
    let fc2 = layer(&exec, "fc2");
    let got = exec
        .exact_layer_traces(std::slice::from_ref(&fc2), &ctx.batches[0].0, 64)
        .unwrap();
    let want = exact_trace(&ctx, &fc2);
    assert!(
        (got[0].weight - want).abs() <= 1e-4 * want,
        "{got:?} vs {want}"
    );
    // `auto`: fc1 (Sigmoid after it) by Hutchinson probes, fc2 exactly; `exact` is an error.
    let auto = hessian_trace::HessianTrace::new(hessian_trace::Config::default()).unwrap();
    assert!(!auto.use_exact(&ctx).unwrap());
    assert_eq!(
        auto.factored_layers(&ctx).unwrap(),
        (vec![false, true], true)
    );
    let est = auto.traces(&ctx).unwrap();
    assert!(!est[0].exact && est[0].probes > 0, "{est:?}");
    assert!(
        est[1].exact && (est[1].trace - want).abs() <= 1e-4 * want,
        "{est:?}"
    );
    // fc1's probes match the exact trace of its block within the estimate's error.
    let want1 = exact_trace(&ctx, &ctx.layers[0]);
    let se = est[0].rel_stderr * est[0].trace.abs();
    assert!(
        (est[0].trace - want1).abs() <= 4.0 * se,
        "{:?} vs {want1}",
        est[0]
    );
    // Activation options: fc1's input trace (the model input, through the Sigmoid) comes from
    // tapped Hutchinson probes and matches the trace of the input Hessian by double backward
    // with basis vectors within 4 standard errors; fc2's is exact.
    let ctx_a = SensCtx::new(&exec, &data, options("w4,a8"), 8, 0).unwrap();
    let est_a = auto.traces(&ctx_a).unwrap();
    let (x, labels) = &ctx_a.batches[0];
    let want_in = exact_input_trace(&exec, x, labels);
    let (got_in, rel_in) = (
        est_a[0].input_trace.unwrap(),
        est_a[0].input_rel_stderr.unwrap(),
    );
    assert!(!est_a[0].exact && est_a[1].exact, "{est_a:?}");
    assert!(
        rel_in > 0.0 && (got_in - want_in).abs() <= 4.0 * rel_in * got_in.abs(),
        "fc1 input: {got_in} ± {rel_in} vs {want_in}"
    );
    assert!(auto.compute(&ctx_a).is_ok());
    let forced = hessian_trace::HessianTrace::new(hessian_trace::Config {
        estimator: hessian_trace::Estimator::Exact,
        ..Default::default()
    })
    .unwrap();
    assert!(forced.traces(&ctx).is_err());
}

#[test]
fn second_order_copy_gives_the_same_hessian_vector_products() {
    // conv → BatchNorm → ReLU → conv (bias) → flatten → fc: BatchNorm parameters and biases
    // leave the tape of the copy; the Hessian-vector products with respect to the weights stay.
    let (mut b, x) = GraphBuilder::new("bn", 2, 5, 5, 4);
    let x = b.normalize(x, &[0.5, 0.4], &[0.2, 0.3]);
    let y = b.conv("conv1", x, 2, 3, 3, 1, 1, false);
    let y = b.bn("bn1", y, 3);
    let y = b.node("relu", Op::Relu, vec![y]);
    let y = b.conv("conv2", y, 3, 2, 3, 2, 1, true);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![y]);
    let y = b.fc("fc", y, 18, 3);
    let exec = Executor::new(b.finish(y)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = 6;
    let images: Vec<f32> = (0..n * 50).map(|_| rng.random_range(0.0..255.0)).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    let xt = Tensor::from_vec(images, (n, 2, 5, 5), &Device::Cpu).unwrap();
    let weights: Vec<_> = exec.graph().layers().iter().map(|l| l.weight).collect();
    let probes: Vec<Tensor> = weights
        .iter()
        .map(|w| {
            let t = exec.var(*w).unwrap().as_tensor();
            let v: Vec<f32> = (0..t.elem_count())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        })
        .collect();
    let blocks: Vec<Option<&Tensor>> = probes.iter().map(Some).collect();
    let full = exec.grad_graph(&xt, &labels, &weights).unwrap();
    let model = exec.second_order(&weights).unwrap();
    let lean = model.grad_graph(&xt, &labels).unwrap();
    let (a, b) = (full.hvp(&blocks).unwrap(), lean.hvp(&blocks).unwrap());
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        let (a, b) = (to_vec_f32(a).unwrap(), to_vec_f32(b).unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "layer {i}: zero product");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * scale, "layer {i}: {x} vs {y}");
        }
        let (ga, gb) = (
            to_vec_f32(&full.grad(i).unwrap()).unwrap(),
            to_vec_f32(&lean.grad(i).unwrap()).unwrap(),
        );
        assert_eq!(ga, gb, "layer {i} gradient");
    }
    // One block only: the other blocks of H·v are H_ji v_i (not zero in general), the block of
    // a single-layer product equals Executor::hvp.
    let mut one: Vec<Option<&Tensor>> = vec![None; weights.len()];
    one[1] = Some(&probes[1]);
    let h = lean.hvp(&one).unwrap();
    let want = exec
        .hvp(&xt, &labels, weights[1], std::slice::from_ref(&probes[1]))
        .unwrap();
    let (h, want) = (to_vec_f32(&h[1]).unwrap(), to_vec_f32(&want[0]).unwrap());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (x, y) in h.iter().zip(&want) {
        assert!((x - y).abs() <= 1e-5 * scale, "{x} vs {y}");
    }
    // A copy for one weight (made from the model or restricted from the copy for all weights)
    // keeps only that weight on the tape (the other layers' weights are fixed inputs) and gives
    // the same gradient and diagonal block H_ii·v_i.
    let singles = weights.iter().enumerate().flat_map(|(i, w)| {
        let w = std::slice::from_ref(w);
        [
            (i, exec.second_order(w).unwrap()),
            (i, model.restrict(w).unwrap()),
        ]
    });
    for (i, single) in singles {
        assert_eq!(single.tracked_count(), 1, "layer {i}");
        let g = single.grad_graph(&xt, &labels).unwrap();
        let mut one: Vec<Option<&Tensor>> = vec![None; weights.len()];
        one[i] = Some(&probes[i]);
        let want = to_vec_f32(&lean.hvp(&one).unwrap()[i]).unwrap();
        let got = to_vec_f32(&g.hvp(&[Some(&probes[i])]).unwrap()[0]).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "layer {i}: zero product");
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-5 * scale, "layer {i}: {x} vs {y}");
        }
        let (ga, gb) = (
            to_vec_f32(&lean.grad(i).unwrap()).unwrap(),
            to_vec_f32(&g.grad(0).unwrap()).unwrap(),
        );
        let scale = ga.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in ga.iter().zip(&gb) {
            assert!(
                (x - y).abs() <= 1e-6 * scale,
                "layer {i} gradient: {x} vs {y}"
            );
        }
    }
    let e = model
        .restrict(&[weights[0]])
        .unwrap()
        .restrict(&[weights[1]]);
    let e = e.err().expect("weight not in the copy").to_string();
    assert!(e.contains("not tracked"), "{e}");
}

#[test]
fn hessian_metrics_pass_pools_that_do_not_divide_the_input() {
    // A 2×2 stride-2 max pool on 5×5 (like mnist-8's 3×3 stride-3 pool on 14×14): second-order
    // gradients must pass it, so the Hessian metrics give finite values for every layer.
    let (mut b, x) = GraphBuilder::new("pool", 1, 4, 4, 0);
    let y = b.conv("conv", x, 1, 2, 2, 1, 1, true);
    let window = mixprec_graph::Window {
        kernel: vec![2, 2],
        strides: vec![2, 2],
        ..Default::default()
    };
    let y = b.node("pool", Op::MaxPool(window), vec![y]);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![y]);
    let y = b.fc("fc", y, 8, 3);
    let exec = Executor::new(b.finish(y)).unwrap();
    let data = samples(8, 3);
    let ctx = SensCtx::new(&exec, &data, options("w4"), 8, 0).unwrap();
    for name in ["hessian-trace", "hessian-eigen", "fisher"] {
        let t = build_metric(name, &serde_json::Value::Null)
            .unwrap()
            .compute(&ctx)
            .unwrap();
        assert!(t.values.iter().flatten().all(|v| v.is_finite()), "{name}");
        assert!(t.values.iter().flatten().any(|v| *v > 0.0), "{name}");
    }
}

/// Sets a layer's weight to `w` (row-major, its current shape).
fn set_weight(exec: &Executor, name: &str, w: Vec<f32>) {
    let var = exec.var(layer(exec, name).weight).unwrap();
    let t = Tensor::from_vec(w, var.as_tensor().dims(), &Device::Cpu).unwrap();
    var.set(&t).unwrap();
}

/// Row-major `x · Wᵀ + b` for `fc` layer weights `[out, in]`.
fn affine(x: &[f32], w: &[f32], b: &[f32], fin: usize) -> Vec<f64> {
    let fout = b.len();
    x.chunks(fin)
        .flat_map(|row| {
            (0..fout).map(move |o| {
                b[o] as f64
                    + (0..fin)
                        .map(|i| w[o * fin + i] as f64 * row[i] as f64)
                        .sum::<f64>()
            })
        })
        .collect()
}

#[test]
fn local_error_of_the_first_layer_by_hand() {
    // fc1 sees the samples directly: y = x W1ᵀ + b1 and y_q − y = x (Q(W1) − W1)ᵀ.
    let data = samples(20, 4);
    let exec = mlp(2);
    let ctx = SensCtx::new(&exec, &data, options("w3,w6"), 8, 0).unwrap();
    let table = ctx.local_error_table().unwrap();
    let l = layer(&exec, "fc1");
    let (w, _) = ctx.weight(&l).unwrap();
    let b = to_vec_f32(exec.var(l.bias.unwrap()).unwrap().as_tensor()).unwrap();
    let y = affine(&data.images, &w, &b, 16);
    let signal: f64 = y.iter().map(|v| v * v).sum();
    for (o, opt) in ctx.options.iter().enumerate() {
        let err = ctx.weight_error(&l, &opt.scheme).unwrap();
        let noise: f64 = affine(&data.images, &err, &[0.0; 12], 16)
            .iter()
            .map(|v| v * v)
            .sum();
        let got = table[0][o];
        assert!(
            (got - noise / signal).abs() <= 1e-4 * got,
            "{}: {got} vs {}",
            opt.label,
            noise / signal
        );
    }
    assert!(table.iter().all(|r| r[0] > r[1]), "{table:?}");
}

#[test]
fn aq_noise_on_a_linear_model_by_hand() {
    // A single fc layer: logits z = x Wᵀ + b, so the 8-bit output noise is x (Q(W) − W)ᵀ and
    // the adversarial noise follows from z directly.
    let (mut b, x) = GraphBuilder::new("linear", 1, 4, 4, 3);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
    let y = b.fc("fc", y, 16, 3);
    let exec = Executor::new(b.finish(y)).unwrap();
    let data = samples(40, 6);
    let ctx = SensCtx::new(&exec, &data, options("w2,w4"), 16, 1).unwrap();
    let metric = aq_noise::AqNoise::new(aq_noise::Config::default()).unwrap();
    let (q, adv) = metric.quantities(&ctx).unwrap();
    let l = layer(&exec, "fc");
    let (w, _) = ctx.weight(&l).unwrap();
    let bias = to_vec_f32(exec.var(l.bias.unwrap()).unwrap().as_tensor()).unwrap();
    let z = affine(&data.images, &w, &bias, 16);
    let want_adv = z
        .chunks(3)
        .map(|r| {
            let mut s = r.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            (s[0] - s[1]).powi(2) / 2.0
        })
        .sum::<f64>()
        / 40.0;
    assert!(
        (adv - want_adv).abs() <= 1e-5 * want_adv,
        "{adv} vs {want_adv}"
    );
    let w8 = SensOption::parse("w8", Granularity::Tensor).unwrap();
    let err = ctx.weight_error(&l, &w8.scheme).unwrap();
    let noise = affine(&data.images, &err, &[0.0; 3], 16)
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        / 40.0;
    let want_p = noise * 4f64.powi(8);
    assert!(
        (q[0].p - want_p).abs() <= 1e-3 * want_p,
        "{} vs {want_p}",
        q[0].p
    );
    // The bound was reached, and t is the output noise there, x (σ·rms(W)·ε)ᵀ with the
    // layer's seeded direction ε, over the adversarial noise.
    assert!(q[0].flips >= 0.1 && q[0].t > 0.0, "{:?}", q[0]);
    let rms = (sq_norm(&w) / 48.0).sqrt();
    let eps: Vec<f32> = aq_noise::gaussian(48, layer_seed(1, 0))
        .iter()
        .map(|e| (q[0].sigma * rms) as f32 * e)
        .collect();
    let out_noise = affine(&data.images, &eps, &[0.0; 3], 16)
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        / 40.0;
    let want_t = out_noise / want_adv;
    assert!(
        (q[0].t - want_t).abs() <= 1e-3 * want_t,
        "{} vs {want_t}",
        q[0].t
    );
    let t = metric.compute(&ctx).unwrap();
    for (o, bits) in [2, 4].into_iter().enumerate() {
        let want = q[0].p / q[0].t * (-(4f64.ln()) * bits as f64).exp();
        assert!((t.values[0][o] - want).abs() <= 1e-12 * want);
    }
    assert_eq!(t.details[0]["p"], q[0].p);
    assert_eq!(
        aq_noise::aq_quantities(&ctx).unwrap(),
        vec![(q[0].p, q[0].t)]
    );
}

#[test]
fn pca_significance_by_construction() {
    // Input [N, 1, 1, 4] (one channel: 1 component). fc1 = identity on data whose 4 values have
    // standard deviations 10, 7, 0.1, 0.05: 2 components explain 99 % → significant. fc2 has
    // rank 1: 1 component → not significant.
    let (mut b, x) = GraphBuilder::new("pca", 1, 1, 4, 0);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
    let y = b.fc("fc1", y, 4, 4);
    let y = b.fc("fc2", y, 4, 4);
    let y = b.node("relu", Op::Relu, vec![y]);
    let y = b.fc("fc3", y, 4, 3);
    let exec = Executor::new(b.finish(y)).unwrap();
    let mut eye = vec![0f32; 16];
    (0..4).for_each(|i| eye[i * 5] = 1.0);
    set_weight(&exec, "fc1", eye);
    let u = [1.0f32, -2.0, 0.5, 1.5];
    let v = [0.3f32, 0.7, -0.2, 0.4];
    set_weight(&exec, "fc2", (0..16).map(|k| u[k / 4] * v[k % 4]).collect());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = 60;
    let images: Vec<f32> = (0..n * 4)
        .map(|i| [10.0f32, 7.0, 0.1, 0.05][i % 4] * rng.random_range(-1.7f32..1.7))
        .collect();
    let labels = (0..n as u32).map(|i| i % 3).collect();
    let classes = ["a", "b", "c"].map(String::from).to_vec();
    let data = Dataset::from_parts("pca", images, labels, n, 1, 1, 4, classes).unwrap();
    let ctx = SensCtx::new(&exec, &data, options("w4,w8"), 32, 0).unwrap();
    let cfg = pca_significance::Config::default();
    let (pca, input) = pca_significance::pca_components(&ctx, &cfg).unwrap();
    assert_eq!(input, 1);
    assert_eq!((pca[0].components, pca[0].significant), (2, true));
    assert_eq!((pca[1].components, pca[1].significant), (1, false));
    assert_eq!(pca[0].dims, 4);
    // Table = own-output error, doubled for significant layers.
    let t = build_metric("pca-significance", &serde_json::Value::Null)
        .unwrap()
        .compute(&ctx)
        .unwrap();
    let local = ctx.local_error_table().unwrap();
    for (i, l) in pca.iter().enumerate() {
        let f = if l.significant { 2.0 } else { 1.0 };
        for (got, want) in t.values[i].iter().zip(&local[i]) {
            assert_eq!(*got, f * want);
        }
        assert_eq!(t.details[i]["components"], l.components as f64);
    }
    // A larger Δ marks nothing.
    let strict = pca_significance::Config { delta: 5.0, ..cfg };
    let (pca, _) = pca_significance::pca_components(&ctx, &strict).unwrap();
    assert!(pca.iter().all(|l| !l.significant));
}

#[test]
fn separability_of_clustered_outputs_by_hand() {
    // fc1 = identity on 1×1×2 inputs: class 0 at (0, 0) and (1, 0), class 1 at (10, 0) and
    // (11, 0) → s = (1/110.5 + 1/90.5) / 2 as in the 1-D hand example.
    let (mut b, x) = GraphBuilder::new("sep", 1, 1, 2, 0);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
    let y = b.fc("fc1", y, 2, 2);
    let y = b.fc("fc2", y, 2, 2);
    let exec = Executor::new(b.finish(y)).unwrap();
    set_weight(&exec, "fc1", vec![1.0, 0.0, 0.0, 1.0]);
    let bias = exec.var(layer(&exec, "fc1").bias.unwrap()).unwrap();
    bias.set(&Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let images = vec![0.0, 0.0, 1.0, 0.0, 10.0, 0.0, 11.0, 0.0];
    let classes = ["a", "b"].map(String::from).to_vec();
    let data = Dataset::from_parts("sep", images, vec![0, 0, 1, 1], 4, 1, 1, 2, classes).unwrap();
    let ctx = SensCtx::new(&exec, &data, options("w4"), 4, 0).unwrap();
    let s = separability::layer_separability(&ctx, 128).unwrap();
    let want = (1.0 / 110.5 + 1.0 / 90.5) / 2.0;
    assert!((s[0] - want).abs() < 1e-12, "{} vs {want}", s[0]);
    let t = build_metric("separability", &serde_json::Value::Null)
        .unwrap()
        .compute(&ctx)
        .unwrap();
    let local = ctx.local_error_table().unwrap();
    assert_eq!(t.values[1][0], s[1] * local[1][0]);
    assert_eq!(t.details[0]["separability"], s[0]);
    // One class only: an error that names the layer.
    let one = Dataset::from_parts(
        "one",
        vec![0.0; 8],
        vec![0; 4],
        4,
        1,
        1,
        2,
        vec!["a".into()],
    )
    .unwrap();
    let ctx = SensCtx::new(&exec, &one, options("w4"), 4, 0).unwrap();
    let e = separability::layer_separability(&ctx, 128)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc1") && e.contains("two classes"), "{e}");
}
