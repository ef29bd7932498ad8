//! `mixprec list`.

use anyhow::Result;

/// Arguments of `list`.
#[derive(clap::Args)]
pub struct Args {}

/// Run `list`.
pub fn run(_: Args) -> Result<()> {
    println!("architectures (mixprec train --arch NAME):");
    for (name, summary) in mixprec_exec::models::ARCHITECTURES {
        println!("  {name:<12} {summary}");
    }
    println!("\ndata sets (--data NAME, read from $MIXPREC_DATA, default ../shared/data):");
    for k in mixprec_data::DatasetKind::ALL {
        let (c, h, w) = k.image_shape();
        println!("  {:<14} {} ({c}×{h}×{w})", k.as_str(), k.display_name());
    }
    println!(
        "  {:<14} the embedded 1,000-image MNIST test subset (1×28×28)\n  {:<14} your own arrays: x (samples, batch first, any shape and numeric type) and y (integer labels); or a folder with x.npy and y.npy",
        crate::cmd::data::EMBEDDED,
        "FILE.npz"
    );
    println!(
        "\nONNX operators (opsets 7–21):\n  {}",
        mixprec_graph::SUPPORTED_OPS.join(", ")
    );
    let q = mixprec_quant::QUANTIZERS
        .iter()
        .map(|e| (e.name, e.summary, e.reference));
    registry("quantizers (--quantizer NAME)", q);
    let o = mixprec_quant::OBSERVERS
        .iter()
        .map(|e| (e.name, e.summary, e.reference));
    registry("calibration observers (--observer NAME)", o);
    let m = mixprec_exec::sensitivity::METRICS
        .iter()
        .map(|e| (e.name, e.summary, e.reference));
    registry("sensitivity metrics (mixprec sensitivity --metric NAME)", m);
    let c = mixprec_alloc::COST_MODELS
        .iter()
        .map(|e| (e.name, e.summary, e.reference));
    registry("cost models", c);
    let a = mixprec_alloc::ALLOCATORS
        .iter()
        .map(|e| (e.name, e.summary, e.reference));
    registry("allocators", a);
    Ok(())
}

/// Print one registry: name, summary and reference of each entry.
fn registry<'a>(title: &str, entries: impl Iterator<Item = (&'a str, &'a str, &'a str)>) {
    println!("\n{title}:");
    for (name, summary, reference) in entries {
        println!("  {name:<24} {summary}\n  {:<24} [{reference}]", "");
    }
}
