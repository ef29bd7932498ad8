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
        "\nONNX operators (opsets 7–21):\n  {}",
        mixprec_graph::SUPPORTED_OPS.join(", ")
    );
    Ok(())
}
