//! Where the time of the integer engine goes: median wall-clock time of every step of the fast
//! executor ([`mixprec_engine::QuantModel::step_times`]) on resnet8-cifar10, mnist-8 and
//! vww-mobilenetv1-96 at W8A8 (per-channel int8 weights, u8 activations; survey §3.3, HAWQ-V3
//! Eq. 24–25), batch 1 and 32, one thread, next to the whole `run` call. There is no visual wake
//! words data set here: vww-mobilenetv1-96 is calibrated and timed on seeded uniform random
//! images in its input range `[0, 1]` (timing only).
//!
//! Run: `cargo run --release -p mixprec-engine --example engine_steps [-- --threads T]
//! [--model NAME] [--save DIR]` (`NAME` a substring of the model file names). With `--save` it
//! times nothing: it writes every selected model's engine file `DIR/<model>-w8a8.mpqm` and its
//! calibration images `DIR/<model>-calib.f32` (`f32` little-endian, `[64, C, H, W]`), so that
//! `scripts/bench_engine_vs_ort.py` can calibrate ONNX Runtime on the same images.

use std::time::Instant;

use mixprec_data::{calibration_subset, data_dir, Dataset, DatasetKind, Preprocess, Split};
use mixprec_engine::kernels::set_max_threads;
use mixprec_engine::{lower_with_data, Backend, Step};
use mixprec_exec::{calibrate, Executor};
use mixprec_graph::load_onnx;
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let mut threads = 1;
    let mut only = String::new();
    let mut save: Option<std::path::PathBuf> = None;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--threads", Some(v)) => threads = v.parse()?,
            ("--model", Some(v)) => only = v,
            ("--save", Some(v)) => save = Some(v.into()),
            _ => {
                return Err(
                    format!("unknown option {a} (--threads T, --model NAME, --save DIR)").into(),
                );
            }
        }
    }
    set_max_threads(threads);
    if !Backend::Avx512Vnni.is_available() {
        return Err("the fast executor needs an AVX-512 VNNI CPU".into());
    }
    for (file, kind, shape) in [
        (
            "resnet8-cifar10.onnx",
            DatasetKind::Cifar10,
            [3usize, 32, 32],
        ),
        ("mnist-8.onnx", DatasetKind::Mnist, [1, 28, 28]),
        // The kind is unused: random images stand in for the visual wake words data.
        ("vww-mobilenetv1-96.onnx", DatasetKind::Cifar10, [3, 96, 96]),
    ] {
        if !file.contains(&only) {
            continue;
        }
        let g = load_onnx(data_dir().join("models").join(file))?;
        let mut exec = Executor::new(g.clone())?;
        exec.free_batch_dim();
        let (test, calib) = if file.starts_with("vww") {
            (random_images(32, shape, 2)?, random_images(64, shape, 1)?)
        } else {
            let test = Dataset::load(kind, Split::Test, Preprocess::Raw255)?;
            let calib = calibration_subset(&test, 64, 0)?;
            (test, calib)
        };
        let mut p = Policy::new();
        for l in g.layers() {
            p.set_weight(
                &l.name,
                QScheme::new(QuantKind::Uniform, 8, true, Granularity::Channel),
            );
            p.set_activation(
                &l.name,
                QScheme::new(QuantKind::Uniform, 8, false, Granularity::Tensor),
            );
        }
        let ranges = calibrate(&exec, &calib, "min-max", &p)?;
        let m = lower_with_data(&g, &p, &ranges, &calib.images, calib.n)?;
        if let Some(dir) = &save {
            let stem = file.trim_end_matches(".onnx");
            std::fs::create_dir_all(dir)?;
            let mpqm = dir.join(format!("{stem}-w8a8.mpqm"));
            m.save(&mpqm)?;
            let bytes: Vec<u8> = calib.images.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(dir.join(format!("{stem}-calib.f32")), bytes)?;
            println!("wrote {}", mpqm.display());
            continue;
        }
        for batch in [1usize, 32] {
            let (x, _) = test.batch(0, batch);
            let reps = if batch == 1 { 400 } else { 40 };
            let mut run = Vec::with_capacity(reps);
            for _ in 0..reps {
                let s = Instant::now();
                std::hint::black_box(m.run(x, batch)?);
                run.push(s.elapsed().as_secs_f64());
            }
            run.sort_by(f64::total_cmp);
            let times = m.step_times(x, batch, reps)?;
            let total: f64 = times.iter().map(|t| t.1).sum();
            println!(
                "\n{file} batch {batch} ({} per sample {:?}, threads {threads}): run {:.3} ms, \
                 sum of steps {:.3} ms",
                m.name(),
                shape,
                run[reps / 2] * 1e3,
                total * 1e3
            );
            for ((name, t), st) in times.iter().zip(m.steps()) {
                let kind = match st {
                    Step::Layer(_) => "layer",
                    Step::Add(_) => "add",
                    Step::MaxPool(_) => "maxpool",
                    Step::AvgPool(_) => "avgpool",
                    Step::Quantize { .. } => "quantize",
                    Step::Dequantize { .. } => "dequantize",
                    Step::Softmax { .. } => "softmax",
                    Step::Clamp { .. } => "clamp",
                    Step::Requant { .. } => "requant",
                    Step::Concat(_) => "concat",
                    Step::Lookup(_) => "lookup",
                    Step::Mul(_) => "mul",
                    Step::Transpose(_) => "transpose",
                };
                println!(
                    "  {:>8.1} us {:>5.1}%  {kind:<10} {name}",
                    t * 1e6,
                    100.0 * t / total
                );
            }
        }
    }
    Ok(())
}

/// `n` seeded uniform random images of `shape` in `[0, 1)`.
fn random_images(n: usize, shape: [usize; 3], seed: u64) -> Res<Dataset> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = n * shape.iter().product::<usize>();
    let images = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let [c, h, w] = shape;
    let classes = vec!["no-person".into(), "person".into()];
    Ok(Dataset::from_parts(
        "random",
        images,
        vec![0; n],
        n,
        c,
        h,
        w,
        classes,
    )?)
}
