//! Top-1 accuracy of the integer engine against the float fake-quant executor and the float
//! model on the full MNIST (mnist-8) and CIFAR-10 (resnet8) test sets, at W8A8 and a mixed
//! policy, plus the sizes of the mixprec model files next to the float ONNX files.
//!
//! Calibration (min-max, 256 images): MNIST from the training set; CIFAR-10 has only its test
//! set here, so its ranges come from 256 test images. VWW (sizes only) is calibrated on CIFAR-10
//! images upsampled to 96×96.
//!
//! Run: `cargo run --release -p mixprec-engine --example engine_accuracy`

use std::time::Instant;

use mixprec_data::{calibration_subset, data_dir, Dataset, DatasetKind, Preprocess, Split};
use mixprec_engine::{lower_with_data, QuantModel};
use mixprec_exec::{calibrate, Executor, FakeQuant, LayerHook};
use mixprec_graph::{load_onnx, Graph};
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn policy(g: &Graph, bits: &[u8]) -> Policy {
    let mut p = Policy::new();
    for (i, l) in g.layers().iter().enumerate() {
        let b = bits[i % bits.len()];
        p.set_weight(
            &l.name,
            QScheme::new(QuantKind::Uniform, b, true, Granularity::Channel),
        );
        p.set_activation(
            &l.name,
            QScheme::new(QuantKind::Uniform, 8, false, Granularity::Tensor),
        );
    }
    p
}

fn executor(g: &Graph) -> Executor {
    let mut e = Executor::new(g.clone()).expect("executor");
    e.free_batch_dim();
    e
}

/// Predicted class of every image through the float executor (optionally fake-quantized).
fn exec_preds(exec: &Executor, data: &Dataset, hook: Option<&dyn LayerHook>) -> Res<Vec<usize>> {
    let mut preds = Vec::with_capacity(data.n);
    for start in (0..data.n).step_by(250) {
        let len = 250.min(data.n - start);
        let (x, _) = data.batch(start, len);
        let out = exec.predict(x, data.sample_shape(), hook)?;
        let v = out.flatten_all()?.to_vec1::<f32>()?;
        let k = v.len() / len;
        preds.extend(v.chunks(k).map(|r| mixprec_data::argmax(r).unwrap_or(0)));
    }
    Ok(preds)
}

fn engine_preds(m: &QuantModel, data: &Dataset) -> Res<Vec<usize>> {
    let k: usize = m.output_shape().iter().product();
    let mut preds = Vec::with_capacity(data.n);
    for start in (0..data.n).step_by(250) {
        let len = 250.min(data.n - start);
        let (x, _) = data.batch(start, len);
        let out = m.run(x, len)?;
        preds.extend(out.chunks(k).map(|r| mixprec_data::argmax(r).unwrap_or(0)));
    }
    Ok(preds)
}

fn accuracy(preds: &[usize], data: &Dataset) -> f64 {
    let ok = preds
        .iter()
        .zip(&data.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count();
    100.0 * ok as f64 / data.n as f64
}

fn vww_calib(n: usize) -> Res<Dataset> {
    let cifar = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255)?;
    let mut images = Vec::with_capacity(n * 3 * 96 * 96);
    for i in 0..n {
        let img = cifar.image(i).ok_or("image")?;
        for c in 0..3 {
            for y in 0..96 {
                for x in 0..96 {
                    images.push(img[(c * 32 + y / 3) * 32 + x / 3] / 255.0);
                }
            }
        }
    }
    Ok(Dataset::from_parts(
        "vww-from-cifar",
        images,
        vec![0; n],
        n,
        3,
        96,
        96,
        vec!["no-person".into(), "person".into()],
    )?)
}

fn main() -> Res<()> {
    let policies: [(&str, &[u8]); 2] = [("W8A8", &[8]), ("W4/W8 alternating, A8", &[4, 8])];
    println!("| model | policy | float top-1 | fake-quant top-1 | engine top-1 | engine = fake-quant argmax | engine time |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (model, kind) in [
        ("mnist-8.onnx", DatasetKind::Mnist),
        ("resnet8-cifar10.onnx", DatasetKind::Cifar10),
    ] {
        let g = load_onnx(data_dir().join("models").join(model))?;
        let exec = executor(&g);
        let test = Dataset::load(kind, Split::Test, Preprocess::Raw255)?;
        let calib_src = match kind {
            DatasetKind::Mnist => Dataset::load(kind, Split::Train, Preprocess::Raw255)?,
            _ => test.clone(),
        };
        let calib = calibration_subset(&calib_src, 256, 0)?;
        let float = accuracy(&exec_preds(&exec, &test, None)?, &test);
        for (pname, bits) in policies {
            let p = policy(&g, bits);
            let ranges = calibrate(&exec, &calib, "min-max", &p)?;
            let fq = FakeQuant::new(&exec, &p, &ranges, 0)?;
            let fq_preds = exec_preds(&exec, &test, Some(&fq))?;
            let m = lower_with_data(&g, &p, &ranges, &calib.images, calib.n)?;
            let t0 = Instant::now();
            let en_preds = engine_preds(&m, &test)?;
            let secs = t0.elapsed().as_secs_f64();
            let same = en_preds
                .iter()
                .zip(&fq_preds)
                .filter(|(a, b)| a == b)
                .count();
            println!(
                "| {model} | {pname} | {float:.2} % | {:.2} % | {:.2} % | {:.2} % | {secs:.1} s |",
                accuracy(&fq_preds, &test),
                accuracy(&en_preds, &test),
                100.0 * same as f64 / test.n as f64
            );
        }
    }

    println!();
    println!("| model | float ONNX bytes | W8A8 model file bytes | W4A8 model file bytes |");
    println!("|---|---:|---:|---:|");
    for model in [
        "mnist-8.onnx",
        "resnet8-cifar10.onnx",
        "vww-mobilenetv1-96.onnx",
    ] {
        let path = data_dir().join("models").join(model);
        let onnx = std::fs::metadata(&path)?.len();
        let g = load_onnx(&path)?;
        let exec = executor(&g);
        let calib = match model {
            "mnist-8.onnx" => calibration_subset(
                &Dataset::load(DatasetKind::Mnist, Split::Train, Preprocess::Raw255)?,
                64,
                0,
            )?,
            "resnet8-cifar10.onnx" => calibration_subset(
                &Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255)?,
                64,
                0,
            )?,
            _ => vww_calib(32)?,
        };
        let mut sizes = Vec::new();
        for bits in [8u8, 4] {
            let p = policy(&g, &[bits]);
            let ranges = calibrate(&exec, &calib, "min-max", &p)?;
            let m = lower_with_data(&g, &p, &ranges, &calib.images, calib.n)?;
            sizes.push(m.size_bytes());
        }
        println!("| {model} | {onnx} | {} | {} |", sizes[0], sizes[1]);
    }
    Ok(())
}
