//! `mixprec eval MODEL --data D`.

use super::data::{self, Scale};
use crate::progress::bar;
use anyhow::{Context, Result};
use mixprec_data::Split;
use mixprec_exec::{evaluate, Executor};

/// Arguments of `eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    pub model: String,
    /// Data set: mnist, fashion-mnist, cifar10, or mnist-1k (embedded). Default: from the
    /// model's input shape (mnist-1k for `default`).
    #[arg(long)]
    pub data: Option<String>,
    /// Split.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Evaluate only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    /// Input scaling.
    #[arg(long, value_enum, default_value = "raw")]
    pub scale: Scale,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `eval`.
pub fn run(a: Args) -> Result<()> {
    let g = crate::model::load(&a.model)?;
    let name = crate::pipeline::dataset_name(&a.model, a.data.as_deref(), &g)?;
    let split: Split = a.split.parse()?;
    let mut ds = data::load(&name, split, a.scale)?;
    if let Some(n) = a.limit {
        ds = ds.head(n);
    }
    let mut exec = Executor::new(g)?;
    exec.free_batch_dim();
    let pb = bar(ds.n as u64, "eval");
    let t0 = std::time::Instant::now();
    let r = evaluate(&exec, &ds, a.batch, None, &mut |done, _| {
        pb.set_position(done as u64)
    })
    .with_context(|| format!("evaluating {} on {name}", a.model))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "model": a.model, "data": name, "split": a.split, "correct": r.correct, "total": r.total,
            "accuracy": r.accuracy, "batch": r.batch, "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}  on {name} ({}, {} images): top-1 {:.2} % ({}/{})  [{:.1} s, batch {}]",
            a.model,
            a.split,
            r.total,
            100.0 * r.accuracy,
            r.correct,
            r.total,
            secs,
            r.batch
        );
    }
    Ok(())
}
