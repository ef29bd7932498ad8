//! End-to-end wall-clock time of the integer engine ([`QuantModel::run`]: dyadic requantization,
//! survey §3.3, HAWQ-V3 Eq. 24–25; deployment, §4.4) on a saved `.mpqm` model, meant to be
//! compared with ONNX Runtime by `scripts/bench_engine_vs_ort.py`.
//!
//! The input is fixed pseudo-random raw pixels in `0..=255` (the input range of mnist-8 and
//! resnet8-cifar10, and of models quantized with `--scale raw`), `batch × input_shape` values,
//! generated once outside the timing. Each figure is the median (and minimum) of `--reps` timed
//! `run` calls after `--warmup` untimed ones; a call includes quantizing the `f32` input,
//! every layer, and dequantizing the output. One JSON object per batch on stdout:
//! `{"model","batch","threads","backend","reps","median_ms","min_ms"}`.
//!
//! Run: `cargo run --release -p mixprec-engine --example engine_vs_ort -- --model DIR/model.mpqm`
//! Options: `--batch 1,32` (default), `--threads T` (kernel thread cap, default 1),
//! `--backend avx512vnni|avx2|generic` (default: the best one), `--reps R` (default: a count that
//! keeps each figure near a third of a second, 5 to 500), `--warmup W` (default 3).

use std::time::Instant;

use mixprec_engine::kernels::{max_threads, set_max_threads};
use mixprec_engine::{Backend, QuantModel};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Command-line options.
struct Opts {
    model: String,
    batches: Vec<usize>,
    threads: usize,
    backend: Backend,
    reps: Option<usize>,
    warmup: usize,
}

fn parse_one(flag: &str, v: &str) -> Res<usize> {
    v.trim()
        .parse::<usize>()
        .map_err(|e| format!("{flag}: cannot read {v:?} as a count ({e})").into())
}

fn parse_args() -> Res<Opts> {
    let mut o = Opts {
        model: String::new(),
        batches: vec![1, 32],
        threads: 1,
        backend: Backend::best(),
        reps: None,
        warmup: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see the example's doc comment)"))?;
        match flag.as_str() {
            "--model" => o.model = value,
            "--batch" => {
                o.batches = value
                    .split(',')
                    .map(|s| parse_one(&flag, s))
                    .collect::<Res<_>>()?
            }
            "--threads" => o.threads = parse_one(&flag, &value)?,
            "--reps" => o.reps = Some(parse_one(&flag, &value)?.max(1)),
            "--warmup" => o.warmup = parse_one(&flag, &value)?,
            "--backend" => {
                o.backend = match value.as_str() {
                    "avx512vnni" => Backend::Avx512Vnni,
                    "avx2" => Backend::Avx2,
                    "generic" => Backend::Generic,
                    other => {
                        return Err(format!(
                            "--backend: unknown {other:?} (use avx512vnni, avx2 or generic)"
                        )
                        .into())
                    }
                }
            }
            other => return Err(format!("unknown option {other} (see the doc comment)").into()),
        }
    }
    if o.model.is_empty() {
        return Err(
            "--model PATH.mpqm is required (written by `mixprec quantize --out DIR`)".into(),
        );
    }
    if o.threads == 0 || o.batches.is_empty() || o.batches.contains(&0) {
        return Err("--threads and every --batch must be at least 1".into());
    }
    if !o.backend.is_available() {
        return Err(format!("backend {:?} is not available on this CPU", o.backend).into());
    }
    Ok(o)
}

/// Deterministic pseudo-random raw pixels in `0..=255` (64-bit LCG, high byte).
fn lcg_pixels(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            f32::from((s >> 56) as u8)
        })
        .collect()
}

fn main() -> Res<()> {
    let o = parse_args()?;
    set_max_threads(o.threads);
    if max_threads() < o.threads {
        eprintln!(
            "note: {} threads asked, the machine offers {}",
            o.threads,
            max_threads()
        );
    }
    let model = QuantModel::load(&o.model).map_err(|e| format!("cannot load {}: {e}", o.model))?;
    let per_sample: usize = model.input_shape().iter().product();
    let backend_name = match o.backend {
        Backend::Avx512Vnni => "avx512vnni",
        Backend::Avx2 => "avx2",
        Backend::Generic => "generic",
    };
    for &batch in &o.batches {
        let x = lcg_pixels(batch * per_sample, 1);
        let call = || -> Res<f64> {
            let s = Instant::now();
            let y = model.run_with(o.backend, &x, batch)?;
            let dt = s.elapsed().as_secs_f64();
            std::hint::black_box(y);
            Ok(dt)
        };
        let mut first = f64::INFINITY;
        for _ in 0..o.warmup.max(1) {
            first = first.min(call()?);
        }
        let reps = o
            .reps
            .unwrap_or_else(|| ((0.33 / first.max(1e-6)).round() as usize).clamp(5, 500));
        let mut t = (0..reps).map(|_| call()).collect::<Res<Vec<f64>>>()?;
        t.sort_by(f64::total_cmp);
        let median = if reps % 2 == 1 {
            t[reps / 2]
        } else {
            0.5 * (t[reps / 2 - 1] + t[reps / 2])
        };
        let line = serde_json::json!({
            "model": o.model,
            "batch": batch,
            "threads": max_threads(),
            "backend": backend_name,
            "reps": reps,
            "median_ms": median * 1e3,
            "min_ms": t[0] * 1e3,
        });
        println!("{line}");
    }
    Ok(())
}
