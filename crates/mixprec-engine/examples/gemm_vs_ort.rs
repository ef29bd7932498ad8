//! Micro-benchmark of the integer GEMM / GEMV kernels (survey §3.3, HAWQ-V3 Eq. 24: `i32`
//! accumulation of `q_W * q_a`, then dyadic requantization), meant to be compared with ONNX
//! Runtime by `scripts/bench_gemm_vs_ort.py`.
//!
//! For weights `[N, K]` (default 4096 × 4096) and every `M` in `--m` (default 1, 16, 128) it times
//! - `int8`: [`PackedI8`] weights × `u8` activations (zero point 128) → `i32` (`gemm_ms`), and
//! - `int4`: [`PackedI4`] weights (values in `[-8, 7]`) × the same activations → `i32`,
//!
//! and the same product requantized to `u8` (per-channel [`Dyadic`] multipliers + bias) by
//! [`gemm_requantize_with`], which fuses the requantization into the GEMM (`fused_ms`;
//! `requant_ms = fused_ms - gemm_ms` is the extra cost of the requantization, so `gemm_ms +
//! requant_ms` is the fused call; `requant_separate_ms` times [`requantize`] on the `i32` output
//! alone, and the two `u8` results are checked to be equal). `gemm_ms` includes everything one
//! call does (widening the activations, threads, allocating the output).
//! Weight packing is done once, outside the timing. Each figure is the median of `--reps` timed
//! calls after `--warmup` untimed ones. One JSON object per line on stdout:
//! `{"kernel","m","n","k","threads","backend","reps","gemm_ms","requant_ms","fused_ms",
//! "requant_separate_ms","gops"}` with
//! `gops = 2·M·N·K / gemm_ms` (giga-operations per second, one multiply-add = 2 operations).
//!
//! Run: `cargo run --release -p mixprec-engine --example gemm_vs_ort -- --threads 2`
//! Options: `--threads T` (kernel thread cap, default 1), `--m 1,16,128`, `--n 4096`, `--k 4096`,
//! `--kernels int8,int4`, `--backend avx512vnni|avx2|generic` (default: the best one), `--reps R` (default:
//! a count per `M` that keeps each figure near a quarter second), `--warmup W` (default 2).

use std::time::Instant;

use mixprec_engine::kernels::{
    gemm_requantize_with, gemm_with, max_threads, requantize, set_max_threads, Dyadic, OutputRange,
    PackedI4, PackedI8, PackedWeights,
};
use mixprec_engine::Backend;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Activation zero point used throughout (`u8` activations, as ONNX Runtime's fast int8 path).
const A_ZP: i32 = 128;

/// Command-line options.
struct Opts {
    threads: usize,
    ms: Vec<usize>,
    n: usize,
    k: usize,
    kernels: Vec<String>,
    backend: Backend,
    reps: Option<usize>,
    warmup: usize,
}

fn parse_list(flag: &str, v: &str) -> Res<Vec<usize>> {
    v.split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|e| format!("{flag}: cannot read {s:?} as a count ({e})").into())
        })
        .collect()
}

fn parse_one(flag: &str, v: &str) -> Res<usize> {
    v.trim()
        .parse::<usize>()
        .map_err(|e| format!("{flag}: cannot read {v:?} as a count ({e})").into())
}

fn parse_args() -> Res<Opts> {
    let mut o = Opts {
        threads: 1,
        ms: vec![1, 16, 128],
        n: 4096,
        k: 4096,
        kernels: vec!["int8".into(), "int4".into()],
        backend: Backend::best(),
        reps: None,
        warmup: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see the example's doc comment)"))?;
        match flag.as_str() {
            "--threads" => o.threads = parse_one(&flag, &value)?,
            "--m" => o.ms = parse_list(&flag, &value)?,
            "--n" => o.n = parse_one(&flag, &value)?,
            "--k" => o.k = parse_one(&flag, &value)?,
            "--reps" => o.reps = Some(parse_one(&flag, &value)?.max(1)),
            "--warmup" => o.warmup = parse_one(&flag, &value)?,
            "--kernels" => {
                o.kernels = value.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = o.kernels.iter().find(|s| *s != "int8" && *s != "int4") {
                    return Err(format!("--kernels: unknown kernel {bad:?} (use int8,int4)").into());
                }
            }
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
    if o.threads == 0 || o.n == 0 || o.k == 0 || o.ms.contains(&0) {
        return Err("--threads, --n, --k and every --m must be at least 1".into());
    }
    if !o.backend.is_available() {
        return Err(format!("backend {:?} is not available on this CPU", o.backend).into());
    }
    Ok(o)
}

/// Deterministic pseudo-random bytes (64-bit LCG, high byte).
fn lcg_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 56) as u8
        })
        .collect()
}

/// Median seconds of `reps` timed calls of `f` after `warmup` untimed ones.
fn median(warmup: usize, reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(if reps % 2 == 1 {
        t[reps / 2]
    } else {
        0.5 * (t[reps / 2 - 1] + t[reps / 2])
    })
}

/// Default repetitions for one figure: about a quarter second of work at ~20 GOP/s per thread.
fn default_reps(m: usize, n: usize, k: usize, threads: usize) -> usize {
    let est_s = 2.0 * (m * n * k) as f64 / (20e9 * threads as f64);
    ((0.25 / est_s).round() as usize).clamp(5, 50)
}

fn bench<W: PackedWeights>(
    o: &Opts,
    name: &str,
    w: &W,
    a: &[u8],
    mults: &[Dyadic],
    bias: &[i32],
) -> Res<()> {
    let (n, k) = (w.n(), w.k());
    for &m in &o.ms {
        let a = &a[..m * k];
        let reps = o
            .reps
            .unwrap_or_else(|| default_reps(m, n, k, max_threads()));
        let mut acc = Vec::new();
        let gemm_s = median(o.warmup, reps, || {
            acc = gemm_with(o.backend, a, m, A_ZP, w)?;
            Ok(())
        })?;
        let fused_s = median(o.warmup, reps, || {
            let q: Vec<u8> = gemm_requantize_with(
                o.backend,
                a,
                m,
                A_ZP,
                w,
                Some(bias),
                mults,
                OutputRange::u8(0),
            )?;
            std::hint::black_box(q);
            Ok(())
        })?;
        let separate_s = median(o.warmup, reps, || {
            let q: Vec<u8> = requantize(&acc, [m, n, 1], Some(bias), mults, OutputRange::u8(0))?;
            std::hint::black_box(q);
            Ok(())
        })?;
        let fused: Vec<u8> = gemm_requantize_with(
            o.backend,
            a,
            m,
            A_ZP,
            w,
            Some(bias),
            mults,
            OutputRange::u8(0),
        )?;
        let separate: Vec<u8> = requantize(&acc, [m, n, 1], Some(bias), mults, OutputRange::u8(0))?;
        if fused != separate {
            return Err(
                format!("{name} m={m}: fused requantization differs from requantize").into(),
            );
        }
        let line = serde_json::json!({
            "kernel": name,
            "m": m,
            "n": n,
            "k": k,
            "threads": max_threads(),
            "backend": match o.backend {
                Backend::Avx512Vnni => "avx512vnni",
                Backend::Avx2 => "avx2",
                Backend::Generic => "generic",
            },
            "reps": reps,
            "gemm_ms": gemm_s * 1e3,
            "requant_ms": (fused_s - gemm_s) * 1e3,
            "fused_ms": fused_s * 1e3,
            "requant_separate_ms": separate_s * 1e3,
            "gops": 2.0 * (m * n * k) as f64 / gemm_s / 1e9,
        });
        println!("{line}");
    }
    Ok(())
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
    let (n, k) = (o.n, o.k);
    let m_max = o.ms.iter().copied().max().unwrap_or(1);
    let a = lcg_bytes(m_max * k, 1);
    let raw = lcg_bytes(n * k, 2);
    // Per-channel requantization as the engine lowers it: a dyadic multiplier and an i32 bias.
    let mults: Vec<Dyadic> = (0..n)
        .map(|j| Dyadic::from_real(1e-4 * (1.0 + (j % 7) as f64 / 7.0)))
        .collect::<Result<_, _>>()?;
    let bias: Vec<i32> = (0..n as i32).map(|j| (j % 101 - 50) * 64).collect();
    for kernel in &o.kernels {
        if kernel == "int8" {
            let w: Vec<i8> = raw.iter().map(|&b| b as i8).collect();
            bench(&o, "int8", &PackedI8::new(&w, n, k)?, &a, &mults, &bias)?;
        } else {
            let w: Vec<i8> = raw.iter().map(|&b| (b as i8) >> 4).collect();
            bench(&o, "int4", &PackedI4::new(&w, n, k)?, &a, &mults, &bias)?;
        }
    }
    Ok(())
}
