//! Wall-clock time of the integer engine against the float executor on resnet8-cifar10 at batch
//! 1 and 32 (W8A8 per channel and W4A8), median of several runs: the fast executor (AVX-512
//! VNNI, channels-last, fused kernels; what `QuantModel::run` uses on such CPUs), the reference
//! executor on the AVX2 kernels, and on the generic ones.
//!
//! Run: `cargo run --release -p mixprec-engine --example engine_bench`

use std::time::Instant;

use mixprec_data::{calibration_subset, data_dir, Dataset, DatasetKind, Preprocess, Split};
use mixprec_engine::{lower_with_data, Backend};
use mixprec_exec::{calibrate, Executor};
use mixprec_graph::load_onnx;
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Median seconds of `reps` runs of `f` (after one warm-up run).
fn median(reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[reps / 2])
}

fn main() -> Res<()> {
    let g = load_onnx(data_dir().join("models/resnet8-cifar10.onnx"))?;
    let mut exec = Executor::new(g.clone())?;
    exec.free_batch_dim();
    let test = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255)?;
    let calib = calibration_subset(&test, 256, 0)?;
    println!(
        "| policy | batch | float executor | engine fast (VNNI) | engine AVX2 | engine generic | \
         speed-up (fast vs float) | speed-up (AVX2 vs float) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for bits in [8u8, 4] {
        let mut p = Policy::new();
        for l in g.layers() {
            p.set_weight(
                &l.name,
                QScheme::new(QuantKind::Uniform, bits, true, Granularity::Channel),
            );
            p.set_activation(
                &l.name,
                QScheme::new(QuantKind::Uniform, 8, false, Granularity::Tensor),
            );
        }
        let ranges = calibrate(&exec, &calib, "min-max", &p)?;
        let m = lower_with_data(&g, &p, &ranges, &calib.images, calib.n)?;
        for batch in [1usize, 32] {
            let (x, _) = test.batch(0, batch);
            let reps = if batch == 1 { 50 } else { 10 };
            let float = median(reps, || {
                exec.predict(x, &[3, 32, 32], None)?;
                Ok(())
            })?;
            let fast = if Backend::Avx512Vnni.is_available() {
                Some(median(reps, || {
                    m.run_with(Backend::Avx512Vnni, x, batch)?;
                    Ok(())
                })?)
            } else {
                None
            };
            let avx2 = if Backend::Avx2.is_available() {
                Some(median(reps, || {
                    m.run_with(Backend::Avx2, x, batch)?;
                    Ok(())
                })?)
            } else {
                None
            };
            let generic = median(reps, || {
                m.run_with(Backend::Generic, x, batch)?;
                Ok(())
            })?;
            let ms = |s: f64| format!("{:.2} ms", s * 1e3);
            let ratio = |t: Option<f64>| t.map_or("n/a".into(), |a| format!("{:.2}x", float / a));
            println!(
                "| W{bits}A8 | {batch} | {} | {} | {} | {} | {} | {} |",
                ms(float),
                fast.map_or("n/a".into(), ms),
                avx2.map_or("n/a".into(), ms),
                ms(generic),
                ratio(fast),
                ratio(avx2),
            );
        }
    }
    Ok(())
}
