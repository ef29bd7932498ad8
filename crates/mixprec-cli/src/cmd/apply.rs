//! `mixprec apply --policy P`: re-applies a policy — hand-edited, or from another run — to a
//! model (DESIGN §5: policies are hand-editable and re-appliable): checks that it names only
//! layers of the model and only possible schemes, calibrates the activation ranges it asks
//! for, measures float and quantized top-1 and the stored size, and with `--out` writes the
//! QDQ model and the policy next to it.

use crate::pipeline::{self, human_bytes, write_file, CommonArgs, Session};
use anyhow::{Context, Result};
use mixprec_exec::{calibrate, check_policy, evaluate, FakeQuant, LayerQuantInfo};
use mixprec_quant::Policy;
use std::path::PathBuf;

/// Arguments of `apply`.
#[derive(clap::Args)]
pub struct Args {
    /// Policy JSON (from `mixprec quantize`, or written by hand).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Write model.onnx (QDQ) and policy.json into this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Store ≤ 4-bit weights of the QDQ model as ONNX INT4 (opset 21).
    #[arg(long)]
    pub int4: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `apply`.
pub fn run(a: Args) -> Result<()> {
    let t0 = std::time::Instant::now();
    let policy = Policy::load(&a.policy)
        .with_context(|| format!("reading the policy {}", a.policy.display()))?;
    let s = Session::open(&a.common)?;
    check_policy(s.exec.graph(), &policy)
        .with_context(|| format!("applying {} to {}", a.policy.display(), s.model))?;
    let ranges = calibrate(&s.exec, &s.calib, &a.common.observer, &policy).with_context(|| {
        format!(
            "calibrating the activations {} asks for",
            a.policy.display()
        )
    })?;
    let fq = FakeQuant::new(&s.exec, &policy, &ranges, s.seed)
        .with_context(|| format!("applying {}", a.policy.display()))?;
    let float = s.accuracy(None, "float")?;
    let pb = crate::progress::bar(s.test.n as u64, "quantized");
    let q = evaluate(&s.exec, &s.test, s.batch, Some(&fq), &mut |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let quant = 100.0 * q.accuracy;
    let info: Vec<LayerQuantInfo> = fq.layer_info();
    let params = s.exec.graph().parameter_count() as u64;
    let weight_elems: u64 = info.iter().map(|i| i.weight_elems as u64).sum();
    let weight_bits: u64 = info.iter().map(|i| i.weight_bits).sum();
    let float_bytes = 4.0 * params as f64;
    let quant_bytes = (weight_bits + 32 * params.saturating_sub(weight_elems)) as f64 / 8.0;
    let mut files = Vec::new();
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output folder {}", dir.display()))?;
        files.push(write_file(
            dir,
            "policy.json",
            (policy.to_json() + "\n").as_bytes(),
        )?);
        let onnx = dir.join("model.onnx");
        if let Some(warning) = pipeline::save_qdq(&s, &policy, &ranges, a.int4, &onnx)? {
            eprintln!("warning: {warning}");
        }
        files.push(onnx);
    }
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "model": s.model, "data": s.data, "images": s.test.n,
            "policy": a.policy, "float_accuracy": float, "quantized_accuracy": quant,
            "float_bytes": float_bytes, "quantized_bytes": quant_bytes,
            "layers": info, "files": files, "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} applied to {} on {} ({} test images)",
        a.policy.display(),
        s.model,
        s.data,
        s.test.n
    );
    println!(
        "{:<24} {:>22} {:>12} {:>22}",
        "layer", "weight scheme", "bits/elem", "activation"
    );
    for i in &info {
        println!(
            "{:<24} {:>22} {:>12.3} {:>22}",
            i.layer,
            i.weight_scheme.map_or("float".into(), |s| s.to_string()),
            i.weight_bits as f64 / i.weight_elems.max(1) as f64,
            i.activation_scheme
                .map_or("float".into(), |s| s.to_string()),
        );
    }
    println!(
        "top-1: float {float:.2} %  quantized {quant:.2} %  (change {:+.2} points)",
        quant - float
    );
    println!(
        "size: float {}  quantized {}  ({:.2}x smaller)  [{secs:.1} s]",
        human_bytes(float_bytes),
        human_bytes(quant_bytes),
        float_bytes / quant_bytes.max(1.0)
    );
    for f in &files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
