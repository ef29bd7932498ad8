//! Integration tests of the integer engine on the real models (from `$MIXPREC_DATA`): the packed
//! kernels (AVX2 and generic) agree bit for bit with the independent `f64` simulation, the
//! engine's accuracy stays close to the float fake-quant executor, the model file round-trips
//! and rejects damaged files, and unsupported inputs are clear errors.

use mixprec_data::{calibration_subset, data_dir, Dataset, DatasetKind, Preprocess, Split};
use mixprec_engine::model::{InputOp, InputOpKind};
use mixprec_engine::{
    lower, lower_with_data, ActivationRanges, Backend, EngineError, QuantModel, Step,
};
use mixprec_exec::{calibrate, evaluate, Executor, FakeQuant};
use mixprec_graph::{load_onnx, Graph};
mod common;
use common::{odd_policy, policy};
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};

fn graph(model: &str) -> Graph {
    if model == "lenet5" {
        // mixprec's trained LeNet-5, which starts with input normalisation (Sub, Mul).
        let mut g = mixprec_exec::models::build("lenet5", 0).unwrap();
        let ckpt = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../mixprec-cli/assets/lenet5-mnist.safetensors"
        );
        mixprec_graph::load_safetensors(&mut g, ckpt).unwrap();
        return g;
    }
    load_onnx(data_dir().join("models").join(model)).unwrap()
}

fn executor(g: &Graph) -> Executor {
    let mut e = Executor::new(g.clone()).unwrap();
    e.free_batch_dim();
    e
}

/// 32×32 CIFAR images upsampled ×3 (nearest) to 96×96 and scaled to 0..1 (VWW's input).
fn vww_images(cifar: &Dataset, n: usize) -> Dataset {
    let mut images = Vec::with_capacity(n * 3 * 96 * 96);
    for i in 0..n {
        let img = cifar.image(i).unwrap();
        for c in 0..3 {
            for y in 0..96 {
                for x in 0..96 {
                    images.push(img[(c * 32 + y / 3) * 32 + x / 3] / 255.0);
                }
            }
        }
    }
    Dataset::from_parts(
        "vww-from-cifar",
        images,
        vec![0; n],
        n,
        3,
        96,
        96,
        vec!["no-person".into(), "person".into()],
    )
    .unwrap()
}

/// Deterministic pseudo-random values in [0, 1).
fn synthetic(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

struct Setup {
    graph: Graph,
    exec: Executor,
    calib: Dataset,
}

fn setup(model: &str) -> Setup {
    let g = graph(model);
    let exec = executor(&g);
    let calib = match model {
        "mnist-8.onnx" | "lenet5" => {
            let test = Dataset::load(DatasetKind::Mnist, Split::Test, Preprocess::Raw255).unwrap();
            let rest: Vec<usize> = (1000..test.n).collect();
            calibration_subset(&test.subset(&rest).unwrap(), 256, 0).unwrap()
        }
        "resnet8-cifar10.onnx" => {
            let test =
                Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255).unwrap();
            let rest: Vec<usize> = (1000..test.n).collect();
            calibration_subset(&test.subset(&rest).unwrap(), 256, 0).unwrap()
        }
        _ => {
            let test =
                Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255).unwrap();
            let rest: Vec<usize> = (9000..test.n).collect();
            vww_images(&test.subset(&rest).unwrap(), 32)
        }
    };
    Setup {
        graph: g,
        exec,
        calib,
    }
}

fn lowered(s: &Setup, p: &Policy) -> (QuantModel, ActivationRanges) {
    lowered_on(s, p, &s.calib)
}

fn lowered_on(s: &Setup, p: &Policy, calib: &Dataset) -> (QuantModel, ActivationRanges) {
    let ranges = calibrate(&s.exec, calib, "min-max", p).unwrap();
    let m = lower_with_data(&s.graph, p, &ranges, &calib.images, calib.n).unwrap();
    (m, ranges)
}

/// Engine (every available backend) == simulation, code for code, on every tensor.
fn check_bit_exact(model: &str, inputs: &[f32], batch: usize) {
    let s = setup(model);
    let n_layers = s.graph.layers().len();
    let policies = [
        ("W8A8", policy(&s.graph, &[8])),
        ("W4/W8", policy(&s.graph, &[4, 8])),
        ("W8/W4/W2", policy(&s.graph, &[8, 4, 2])),
        ("per-tensor W8/W6/W3, A8/A7-signed", odd_policy(&s.graph)),
    ];
    // Exactness does not depend on the ranges: a small calibration set keeps this fast.
    let calib = s.calib.head(64);
    for (bits, p) in &policies {
        let (m, _) = lowered_on(&s, p, &calib);
        let requants = m
            .steps()
            .iter()
            .filter(|st| matches!(st, Step::Requant { .. }))
            .count();
        eprintln!(
            "{model} {bits}: {} steps, {requants} requantization steps",
            m.steps().len()
        );
        let sim = m.simulate(inputs, batch).unwrap();
        let n_code_tensors = m.tensors().iter().filter(|t| t.params.is_some()).count();
        assert_eq!(sim.codes.len(), n_code_tensors);
        assert!(sim.codes.len() >= n_layers, "{model}: {}", sim.codes.len());
        for backend in [Backend::Generic, Backend::Avx2, Backend::Avx512Vnni] {
            if !backend.is_available() {
                eprintln!("{backend:?} not available on this CPU");
                continue;
            }
            let t = m.trace(backend, inputs, batch).unwrap();
            for (name, want) in &sim.codes {
                let got = &t.codes[name];
                let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
                assert_eq!(
                    diff,
                    0,
                    "{model} {bits:?} {backend:?}: tensor '{name}' differs in {diff} of {} codes",
                    want.len()
                );
            }
            assert_eq!(t.output, sim.output, "{model} {bits:?} {backend:?}: output");
            assert_eq!(m.run_with(backend, inputs, batch).unwrap(), t.output);
        }
        // The codes are not degenerate: at W8A8 every layer output uses several code values
        // (low-bit per-tensor weights may legitimately zero out whole depthwise layers).
        for st in m.steps().iter().filter(|_| *bits == "W8A8") {
            if let Step::Layer(l) = st {
                if let Some(c) = sim.codes.get(&m.tensors()[l.output].name) {
                    let mut v = c.clone();
                    v.sort_unstable();
                    v.dedup();
                    assert!(
                        v.len() > 2,
                        "{model}: layer '{}' output is degenerate",
                        l.name
                    );
                }
            }
        }
    }
}

#[test]
fn mnist8_engine_matches_simulation_bit_exactly() {
    let test = Dataset::load(DatasetKind::Mnist, Split::Test, Preprocess::Raw255).unwrap();
    let (x, _) = test.batch(0, 5);
    check_bit_exact("mnist-8.onnx", x, 5);
}

#[test]
fn resnet8_engine_matches_simulation_bit_exactly() {
    let test = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255).unwrap();
    let (x, _) = test.batch(0, 4);
    check_bit_exact("resnet8-cifar10.onnx", x, 4);
}

#[test]
fn mobilenet_engine_matches_simulation_bit_exactly() {
    let test = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255).unwrap();
    let mut x = vww_images(&test.head(2), 2).images;
    x.extend(synthetic(3 * 96 * 96, 7));
    check_bit_exact("vww-mobilenetv1-96.onnx", &x, 3);
}

/// Top-1 accuracy of the engine on `data`.
fn engine_accuracy(m: &QuantModel, data: &Dataset) -> (f64, Vec<usize>) {
    let classes: usize = m.output_shape().iter().product();
    let mut preds = Vec::with_capacity(data.n);
    let mut correct = 0;
    for start in (0..data.n).step_by(100) {
        let len = 100.min(data.n - start);
        let (x, y) = data.batch(start, len);
        let out = m.run(x, len).unwrap();
        for (row, &label) in out.chunks(classes).zip(y) {
            let p = mixprec_data::argmax(row).unwrap();
            correct += usize::from(p == label as usize);
            preds.push(p);
        }
    }
    (correct as f64 / data.n as f64, preds)
}

fn check_accuracy(model: &str, kind: DatasetKind) {
    let eval = Dataset::load(kind, Split::Test, Preprocess::Raw255)
        .unwrap()
        .head(1000);
    check_accuracy_on(model, &eval);
}

fn check_accuracy_on(model: &str, eval: &Dataset) {
    let s = setup(model);
    let p = policy(&s.graph, &[8]);
    let (m, ranges) = lowered(&s, &p);
    let fq = FakeQuant::new(&s.exec, &p, &ranges, 0).unwrap();
    let fake = evaluate(&s.exec, eval, 250, Some(&fq), &mut |_, _| {}).unwrap();
    let float = evaluate(&s.exec, eval, 250, None, &mut |_, _| {}).unwrap();
    let (acc, _) = engine_accuracy(&m, eval);
    eprintln!(
        "{model} W8A8, first 1000 images: float {:.4}, fake-quant {:.4}, engine {acc:.4}",
        float.accuracy, fake.accuracy
    );
    assert!(
        (acc - fake.accuracy).abs() <= 0.005,
        "{model}: engine {acc} vs fake-quant {}",
        fake.accuracy
    );
    assert!(acc > 0.5, "{model}: engine accuracy {acc}");
}

#[test]
fn mnist8_w8a8_engine_accuracy_within_half_a_point_of_fake_quant() {
    check_accuracy("mnist-8.onnx", DatasetKind::Mnist);
}

#[test]
fn resnet8_w8a8_engine_accuracy_within_half_a_point_of_fake_quant() {
    check_accuracy("resnet8-cifar10.onnx", DatasetKind::Cifar10);
}

/// The input normalisation steps of the input quantization.
fn input_ops(m: &QuantModel) -> Vec<InputOp> {
    match m.steps().first() {
        Some(Step::Quantize { ops, .. }) => ops.clone(),
        other => panic!("first step is not the input quantization: {other:?}"),
    }
}

#[test]
fn lenet5_input_normalisation_runs_in_the_input_quantization() {
    let s = setup("lenet5");
    let p = policy(&s.graph, &[8]);
    let (m, _) = lowered(&s, &p);
    // norm_sub and norm_mul (scalar constants for the one channel) became input operations.
    let ops = input_ops(&m);
    let kinds: Vec<(&str, InputOpKind, usize, usize)> = ops
        .iter()
        .map(|o| (o.name.as_str(), o.kind, o.values.len(), o.inner))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("norm_sub", InputOpKind::Sub, 1, 784),
            ("norm_mul", InputOpKind::Mul, 1, 784)
        ]
    );
    // The first codes are exactly the quantized normalised input, as the float graph computes
    // it: (x - 0.1307·255) · 1/(0.3081·255) in f32.
    let data = Dataset::embedded_mnist_subset_with(Preprocess::Raw255).unwrap();
    let (x, _) = data.batch(0, 5);
    let t = m.trace(Backend::best(), x, 5).unwrap();
    let q = m.steps()[0].output();
    let qp = m.tensors()[q].params.unwrap();
    let (mean, inv) = (0.1307f32 * 255.0, 1.0 / (0.3081f32 * 255.0));
    let want: Vec<u8> = x.iter().map(|&v| qp.quantize((v - mean) * inv)).collect();
    assert_eq!(t.codes[&m.tensors()[q].name], want);
    // Background pixels (0) map to a negative value: the codes are not those of the raw input.
    assert!(qp.dequantize(want[0]) < -0.3, "{}", qp.dequantize(want[0]));

    // The model file keeps them (version 2) and round-trips; models without input
    // normalisation stay version 1, and a version-1 header with them is rejected.
    let bytes = m.to_bytes();
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 2);
    let back = QuantModel::from_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.run(x, 5).unwrap(), m.run(x, 5).unwrap());
    let mut v1 = bytes.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let end = v1.len() - 8;
    let sum = v1[..end].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    v1[end..].copy_from_slice(&sum.to_le_bytes());
    let e = QuantModel::from_bytes(&v1).unwrap_err().to_string();
    assert!(
        e.contains("version 1") && e.contains("normalisation"),
        "{e}"
    );
    let mnist = setup("mnist-8.onnx");
    let (m8, _) = lowered(&mnist, &policy(&mnist.graph, &[8]));
    assert!(input_ops(&m8).is_empty());
    assert_eq!(m8.to_bytes()[4..8], 1u32.to_le_bytes());
}

#[test]
fn lenet5_engine_matches_simulation_bit_exactly() {
    let data = Dataset::embedded_mnist_subset_with(Preprocess::Raw255).unwrap();
    let (x, _) = data.batch(0, 5);
    check_bit_exact("lenet5", x, 5);
}

#[test]
fn lenet5_w8a8_engine_accuracy_within_half_a_point_of_fake_quant() {
    let data = Dataset::embedded_mnist_subset_with(Preprocess::Raw255).unwrap();
    assert_eq!(data.n, 1000);
    check_accuracy_on("lenet5", &data);
}

#[test]
fn per_channel_input_normalisation_matches_the_float_graph() {
    // ResNet-20 (untrained) normalises each of its three channels with its own constants.
    let g = mixprec_exec::models::build("resnet20", 0).unwrap();
    let exec = executor(&g);
    let test = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255).unwrap();
    let calib = test.head(16);
    let p = policy(&g, &[8, 4]);
    let ranges = calibrate(&exec, &calib, "min-max", &p).unwrap();
    let m = lower_with_data(&g, &p, &ranges, &calib.images, calib.n).unwrap();
    let ops = input_ops(&m);
    assert_eq!(ops.len(), 2);
    assert!(ops
        .iter()
        .all(|o| o.values.len() == 3 && o.inner == 32 * 32));
    let (x, _) = test.batch(100, 2);
    let t = m.trace(Backend::best(), x, 2).unwrap();
    let q = m.steps()[0].output();
    let qp = m.tensors()[q].params.unwrap();
    let (mean, std) = ([0.4914f32, 0.4822, 0.4465], [0.2470f32, 0.2435, 0.2616]);
    let want: Vec<u8> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / 1024) % 3;
            qp.quantize((v - mean[c] * 255.0) * (1.0 / (std[c] * 255.0)))
        })
        .collect();
    assert_eq!(t.codes[&m.tensors()[q].name], want);
    // And the rest of the model agrees with the simulation.
    let sim = m.simulate(x, 2).unwrap();
    assert_eq!(sim.codes, t.codes);
    assert_eq!(sim.output, t.output);
}

#[test]
fn lowering_folds_batch_norm_and_biases_and_fuses_relu() {
    let s = setup("resnet8-cifar10.onnx");
    let g = &s.graph;
    let count = |op: &str| g.nodes.iter().filter(|n| n.op.onnx_name() == op).count();
    assert_eq!((count("BatchNormalization"), count("Conv")), (7, 9));
    let (m, _) = lowered(&s, &policy(g, &[8]));
    let kinds: Vec<&str> = m
        .steps()
        .iter()
        .map(|st| match st {
            Step::Quantize { .. } => "quantize",
            Step::Layer(_) => "layer",
            Step::Add(_) => "add",
            Step::MaxPool(_) => "maxpool",
            Step::AvgPool(_) => "avgpool",
            Step::Clamp { .. } => "clamp",
            Step::Requant { .. } => "requant",
            Step::Dequantize { .. } => "dequantize",
            Step::Softmax { .. } => "softmax",
            Step::Concat(_) => "concat",
            Step::Lookup(_) => "lookup",
            Step::Mul(_) => "mul",
            Step::Transpose(_) => "transpose",
        })
        .collect();
    // 9 convs + 1 gemm with BN / ReLU folded in, 3 residual adds (ReLU fused), the pool, the
    // input quantization and a float softmax on the dequantized logits.
    assert_eq!(kinds.iter().filter(|k| **k == "layer").count(), 10);
    assert_eq!(kinds.iter().filter(|k| **k == "add").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "clamp").count(), 0);
    assert_eq!(kinds.first(), Some(&"quantize"));
    assert_eq!(&kinds[kinds.len() - 2..], &["layer", "softmax"]);
    assert_eq!(m.input_shape(), &[3, 32, 32]);
    assert_eq!(m.output_shape(), &[10]);
    // Probabilities sum to one.
    let (x, _) = s.calib.batch(0, 2);
    let out = m.run(x, 2).unwrap();
    for row in out.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn model_file_round_trips_and_rejects_damage() {
    let s = setup("mnist-8.onnx");
    let p = policy(&s.graph, &[4, 8, 2]);
    let (m, _) = lowered(&s, &p);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnist.mpqm");
    m.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), m.size_bytes());
    assert_eq!(&bytes[..4], b"MPQM");
    let back = QuantModel::load(&path).unwrap();
    assert_eq!(back, m);
    let (x, _) = s.calib.batch(0, 3);
    assert_eq!(back.run(x, 3).unwrap(), m.run(x, 3).unwrap());
    // Weights are packed at their widths: far below 4 bytes per parameter.
    let params: usize = m.weights().iter().map(|w| w.codes.len()).sum();
    assert!(m.weight_bytes() * 8 <= params * 8, "{}", m.weight_bytes());
    assert!(m.weight_bytes() < params);

    // Every truncation is an error naming the file.
    for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = QuantModel::load(&path).unwrap_err();
        assert!(matches!(e, EngineError::Format { .. }), "cut {cut}: {e}");
        assert!(e.to_string().contains("mnist.mpqm"), "{e}");
    }
    // Random bytes, with and without the magic.
    for seed in 0..20u64 {
        let mut junk: Vec<u8> = synthetic(200 + 37 * seed as usize, seed)
            .iter()
            .map(|v| (v * 256.0) as u8)
            .collect();
        if seed % 2 == 0 {
            junk[..4].copy_from_slice(b"MPQM");
        }
        assert!(QuantModel::from_bytes(&junk).is_err());
    }
    // A flipped byte anywhere is caught by the checksum.
    for at in (4..bytes.len()).step_by(131) {
        let mut b = bytes.clone();
        b[at] ^= 0x5A;
        assert!(QuantModel::from_bytes(&b).is_err(), "flip at {at}");
    }
    // A header that parses but does not fit together is rejected by validation.
    let reseal = |mutate: &dyn Fn(&mut serde_json::Value)| {
        let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + hlen]).unwrap();
        mutate(&mut header);
        let json = serde_json::to_vec(&header).unwrap();
        let mut out = bytes[..8].to_vec();
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&bytes[16 + hlen..bytes.len() - 8]);
        let sum = out.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        out.extend_from_slice(&sum.to_le_bytes());
        QuantModel::from_bytes(&out)
    };
    assert!(reseal(&|_| {}).is_ok());
    let e = reseal(&|h| h["output"] = 999.into()).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = reseal(&|h| h["tensors"][1]["shape"] = serde_json::json!([1, 28, 27])).unwrap_err();
    assert!(matches!(e, EngineError::Format { .. }), "{e}");
    let e = reseal(&|h| h["weights"][0]["offset"] = 1_000_000.into()).unwrap_err();
    assert!(e.to_string().contains("weight 0"), "{e}");
    let e = reseal(&|h| h["steps"][1]["layer"]["out"]["codes"]["multipliers"][0]["m"] = 0.into())
        .unwrap_err();
    assert!(matches!(e, EngineError::Format { .. }), "{e}");

    // Any single number of the header replaced by an awkward value: loading and running
    // either work or fail cleanly, never panic.
    fn leaves(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Number(_) => out.push(path.clone()),
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate().take(3) {
                    path.push(i.to_string());
                    leaves(x, path, out);
                    path.pop();
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    path.push(k.clone());
                    leaves(x, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + hlen]).unwrap();
    let mut paths = Vec::new();
    leaves(&header, &mut Vec::new(), &mut paths);
    assert!(paths.len() > 50, "{}", paths.len());
    let awkward: [serde_json::Value; 7] = [
        0.into(),
        1.into(),
        2.into(),
        255.into(),
        65_537.into(),
        (-1).into(),
        (1u64 << 40).into(),
    ];
    let mut loaded = 0;
    for (i, path) in paths.iter().enumerate() {
        for v in awkward.iter().skip(i % 3).step_by(3) {
            let r = reseal(&|h| {
                let mut node = h;
                for key in path {
                    node = match node {
                        serde_json::Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
                        other => &mut other[key.as_str()],
                    };
                }
                *node = v.clone();
            });
            if let Ok(m2) = r {
                loaded += 1;
                let _ = m2.run(x, 3);
                let _ = m2.simulate(x, 3);
            }
        }
    }
    eprintln!(
        "{} header numbers mutated, {loaded} mutated models loaded and ran",
        paths.len()
    );
    assert!(loaded > 0);
}

#[test]
fn unsupported_graphs_and_policies_are_clear_errors() {
    let s = setup("mnist-8.onnx");
    let p = policy(&s.graph, &[8]);
    let ranges = calibrate(&s.exec, &s.calib, "min-max", &p).unwrap();
    // mnist-8 needs no extra ranges: plain `lower` works.
    assert!(lower(&s.graph, &p, &ranges).is_ok());

    // A float layer.
    let first = s.graph.layers()[0].name.clone();
    let mut q = p.clone();
    q.layers.get_mut(&first).unwrap().activation = None;
    let e = lower(&s.graph, &q, &ranges).unwrap_err().to_string();
    assert!(e.contains(&first) && e.contains("activation"), "{e}");
    let mut q = p.clone();
    q.layers.remove(&first);
    let e = lower(&s.graph, &q, &ranges).unwrap_err().to_string();
    assert!(e.contains(&first) && e.contains("weight"), "{e}");
    // Non-uniform weights.
    let mut q = p.clone();
    q.set_weight(
        &first,
        QScheme::new(QuantKind::Kmeans, 4, true, Granularity::Tensor),
    );
    let e = lower(&s.graph, &q, &ranges).unwrap_err().to_string();
    assert!(e.contains(&first) && e.contains("kmeans"), "{e}");
    // An operator the engine lacks.
    let mut g = s.graph.clone();
    let relu = g
        .nodes
        .iter_mut()
        .find(|n| n.op.onnx_name() == "Relu")
        .unwrap();
    relu.op = mixprec_graph::Op::Exp;
    let name = relu.name.clone();
    let e = lower(&g, &p, &ranges).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("Exp"), "{e}");

    // resnet8's residual branches need their own ranges.
    let r = setup("resnet8-cifar10.onnx");
    let p = policy(&r.graph, &[8]);
    let ranges = calibrate(&r.exec, &r.calib.head(16), "min-max", &p).unwrap();
    let e = lower(&r.graph, &p, &ranges).unwrap_err();
    assert!(matches!(e, EngineError::MissingRange { .. }), "{e}");
    assert!(e.to_string().contains("lower_with_data"), "{e}");

    // Wrong input length.
    let (m, _) = lowered(&s, &policy(&s.graph, &[8]));
    let e = m.run(&[0.0; 100], 1).unwrap_err().to_string();
    assert!(e.contains("[1, 28, 28]"), "{e}");
}
