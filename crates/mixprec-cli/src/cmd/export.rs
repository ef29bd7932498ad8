//! `mixprec export MODEL --out FILE`.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// Arguments of `export`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    pub model: String,
    /// Output file (.onnx).
    #[arg(long)]
    pub out: PathBuf,
    /// Format.
    #[arg(long, default_value = "onnx")]
    pub format: String,
}

/// Run `export`.
pub fn run(a: Args) -> Result<()> {
    if a.format != "onnx" {
        bail!("unknown export format '{}' (available: onnx)", a.format);
    }
    let g = crate::model::load(&a.model)?;
    mixprec_graph::save_onnx(&g, &a.out)?;
    println!(
        "wrote {} ({} nodes, {} parameters)",
        a.out.display(),
        g.nodes.len(),
        g.parameter_count()
    );
    Ok(())
}
