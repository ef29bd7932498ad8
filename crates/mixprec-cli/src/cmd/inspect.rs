//! `mixprec inspect MODEL`.

use super::si;
use anyhow::Result;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    pub model: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run `inspect`.
pub fn run(a: Args) -> Result<()> {
    let g = crate::model::load(&a.model)?;
    let st = mixprec_graph::model_stats(&g)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    let mut ops: std::collections::BTreeMap<&str, usize> = Default::default();
    for n in &g.nodes {
        *ops.entry(n.op.onnx_name()).or_default() += 1;
    }
    println!("model {}  (opset {}, {} nodes)", a.model, g.opset, st.nodes);
    println!(
        "{:<28} {:<6} {:<16} {:>9} {:>10} {:>10}",
        "layer", "op", "weight shape", "params", "MACs", "out act"
    );
    for l in &st.layers {
        let shape = l
            .weight_shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<28} {:<6} {:<16} {:>9} {:>10} {:>10}",
            l.name,
            l.op,
            shape,
            l.params,
            si(l.macs),
            l.output_elems
        );
    }
    println!(
        "{:<28} {:<6} {:<16} {:>9} {:>10} {:>10}",
        format!("total ({} layers)", st.layers.len()),
        "",
        "",
        st.layers.iter().map(|l| l.params).sum::<u64>(),
        si(st.total_macs),
        st.total_output_elems
    );
    for r in &st.recurrent {
        // Recurrent operators run in float: listed for their size and work, not quantized.
        println!(
            "{:<28} {:<6} {:<16} {:>9} {:>10} {:>10}",
            r.name,
            r.op,
            format!("float, {} step(s)", r.steps),
            r.params,
            si(r.macs),
            ""
        );
    }
    println!(
        "all parameters (incl. BatchNorm and constants): {}   operators: {}",
        st.total_params,
        ops.iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
