//! `mixprec profile --model M`: per-layer latency of the integer engine's kernels at each
//! bit-width option and of an fp32 baseline, written as the latency LUT of the allocator's
//! `latency` cost model (survey §4.4, guideline 1; §3.3, HAWQ-V3 Eq. 26).

use super::si;
use anyhow::{Context, Result};
use mixprec_engine::profile::{
    parse_options, profile_layers_with, LatencyProfile, ProfileConfig, FP32_KEY,
};
use std::path::PathBuf;

/// Arguments of `profile`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    #[arg(long)]
    pub model: String,
    /// Batch size of the profiled workload.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Bit-width options, comma-separated `w<bits>a<bits>` (the fp32 baseline `w32a32` is always
    /// added). 4-bit weights run the int4 kernel, other widths 2..=8 the int8 kernel.
    #[arg(long, default_value = "w2a8,w4a8,w8a8")]
    pub options: String,
    /// Timed repetitions per layer and option (median reported).
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Untimed warm-up runs per layer and option.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Time box per layer (all options together) in ms; fewer repetitions run when it is spent.
    #[arg(long, default_value_t = 2000.0)]
    pub time_box_ms: f64,
    /// Threads the kernels may use (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Run the portable generic integer kernels instead of AVX2.
    #[arg(long)]
    pub generic: bool,
    /// Write the LUT JSON ({ "layers": { name: { "w4a8": ms } } }) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the full profile (LUT plus machine, settings, MACs, kernels, repetitions) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the full profile as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run `profile`.
pub fn run(a: Args) -> Result<()> {
    let options = parse_options(&a.options).context("parsing --options")?;
    let g = crate::model::load(&a.model)?;
    let cfg = ProfileConfig {
        batch: a.batch,
        warmup: a.warmup,
        reps: a.reps,
        time_box_ms: a.time_box_ms,
        threads: a.threads,
        fp32: true,
        generic: a.generic,
        seed: 0,
    };
    let n_layers = g.layers().len();
    let pb = crate::progress::bar(n_layers as u64, "profiling");
    let profile = profile_layers_with(&g, &options, &cfg, &mut |done, _, layer| {
        pb.set_position(done as u64);
        pb.set_message(layer.to_string());
    })
    .with_context(|| format!("profiling {}", a.model))?;
    pb.finish_and_clear();

    if let Some(out) = &a.out {
        mixprec_graph::write_atomic(out, profile.lut_json().as_bytes())
            .with_context(|| format!("writing the latency LUT {}", out.display()))?;
    }
    if let Some(path) = &a.report {
        let text = serde_json::to_string_pretty(&profile)?;
        mixprec_graph::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing the profile report {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&profile)?);
    } else {
        print_table(&a.model, &profile);
        if let Some(out) = &a.out {
            println!("latency LUT written to {}", out.display());
        }
    }
    Ok(())
}

fn print_table(model: &str, p: &LatencyProfile) {
    let m = &p.meta;
    println!(
        "model {model}  batch {}  cpu {}  backend {} (avx2 {}, avx512-vnni {})  threads {}  \
         median of ≤{} reps",
        m.batch,
        m.cpu,
        m.backend,
        yes(m.avx2),
        yes(m.avx512_vnni),
        m.threads,
        m.reps
    );
    let name_w = p
        .layers
        .iter()
        .map(|l| l.name.chars().count())
        .chain([format!("total ({} layers)", p.layers.len()).chars().count()])
        .max()
        .unwrap_or(5)
        .clamp(5, 40);
    let mut header = format!("{:<name_w$} {:<6} {:>9}", "layer", "op", "MACs");
    for k in &p.options {
        header += &format!(" {:>16}", format!("{k} ms"));
    }
    println!("{header}");
    for l in &p.layers {
        let fp32 = l.times.get(FP32_KEY).map(|t| t.ms);
        let mut row = format!("{:<name_w$} {:<6} {:>9}", l.name, l.op, si(l.macs));
        for k in &p.options {
            row += &format!(" {:>16}", cell(l.times.get(k).map(|t| t.ms), fp32, k));
        }
        println!("{row}");
    }
    let fp32 = p.total_ms(FP32_KEY);
    let mut total = format!(
        "{:<name_w$} {:<6} {:>9}",
        format!("total ({} layers)", p.layers.len()),
        "",
        si(p.layers.iter().map(|l| l.macs).sum())
    );
    for k in &p.options {
        total += &format!(" {:>16}", cell(p.total_ms(k), fp32, k));
    }
    println!("{total}");
    println!("(×N = speed-up over fp32; >1 means faster than fp32)");
}

/// `0.123 (1.84×)`: time and speed-up over fp32.
fn cell(ms: Option<f64>, fp32: Option<f64>, key: &str) -> String {
    match (ms, fp32) {
        (Some(ms), _) if key == FP32_KEY => format!("{ms:.4}"),
        (Some(ms), Some(f)) => format!("{ms:.4} ({:.2}×)", f / ms),
        (Some(ms), None) => format!("{ms:.4}"),
        (None, _) => "-".to_string(),
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
