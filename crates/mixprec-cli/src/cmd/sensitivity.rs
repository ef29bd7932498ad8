//! `mixprec sensitivity --model M --data D --metric NAME`: the per-layer sensitivity table
//! `[layer × option]` of one metric of `mixprec_exec::sensitivity::METRICS` (survey §3.2.3
//! HAWQ-V2, §3.2.5 ZeroQ, §3.4.8 EvoQ …) on a seeded class-balanced sample of the data.

use super::data::{self, Scale};
use anyhow::{bail, Context, Result};
use mixprec_data::{calibration_subset, Split};
use mixprec_exec::sensitivity::{build_metric, SensCtx, SensOption, METRICS};
use mixprec_exec::Executor;
use mixprec_quant::Granularity;

/// Arguments of `sensitivity`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    #[arg(long, required_unless_present = "list")]
    pub model: Option<String>,
    /// Data set: mnist, fashion-mnist, cifar10, or mnist-1k (embedded). Default: from the
    /// model's input shape (mnist-1k for `default`).
    #[arg(long)]
    pub data: Option<String>,
    /// Metric name (see --list).
    #[arg(long, default_value = "hessian-trace")]
    pub metric: String,
    /// Metric configuration as JSON (e.g. '{"tol": 0.02}'); unknown fields are an error.
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// Table columns: w<bits> (weights) and a<bits> (input activations).
    #[arg(long, default_value = "w2,w3,w4,w8")]
    pub options: String,
    /// Weight parameter sharing of the w options: tensor, channel, or g<N>.
    #[arg(long, default_value = "tensor")]
    pub granularity: String,
    /// Samples (class-balanced, from the training split when the data set has one).
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
    /// Batch size of the passes.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Input scaling.
    #[arg(long, value_enum, default_value = "raw")]
    pub scale: Scale,
    /// Seed (sample choice, probes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List the metrics and exit.
    #[arg(long)]
    pub list: bool,
}

fn parse_granularity(s: &str) -> Result<Granularity> {
    Ok(match s {
        "tensor" => Granularity::Tensor,
        "channel" => Granularity::Channel,
        g => match g
            .strip_prefix("group")
            .or_else(|| g.strip_prefix('g'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0)
        {
            Some(n) => Granularity::Group(n),
            None => bail!("--granularity {s}: use tensor, channel or g<N> (e.g. g16)"),
        },
    })
}

/// Run `sensitivity`.
pub fn run(a: Args) -> Result<()> {
    if a.list {
        for e in METRICS {
            println!("  {:<14} {}  [{}]", e.name, e.summary, e.reference);
        }
        return Ok(());
    }
    let model = a.model.clone().context("--model is required")?;
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let config: serde_json::Value = match &a.config {
        Some(c) => serde_json::from_str(c).with_context(|| format!("--config {c}"))?,
        None => serde_json::Value::Null,
    };
    let metric = build_metric(&a.metric, &config)?;
    let options = SensOption::parse_list(&a.options, parse_granularity(&a.granularity)?)?;
    let g = crate::model::load(&model)?;
    let name = match &a.data {
        Some(d) => d.clone(),
        None if model == crate::model::DEFAULT_MODEL => data::EMBEDDED.into(),
        None => crate::model::default_dataset(&g)
            .context("cannot tell which data set fits this model's input; pass --data")?
            .into(),
    };
    let source = if name == data::EMBEDDED {
        data::load(&name, Split::Test, a.scale)?
    } else {
        data::load(&name, Split::Train, a.scale)
            .or_else(|_| data::load(&name, Split::Test, a.scale))?
    };
    let samples = calibration_subset(&source, a.samples.min(source.n), a.seed)?;
    let mut exec = Executor::new(g)?;
    exec.free_batch_dim();
    let t0 = std::time::Instant::now();
    let ctx = SensCtx::new(&exec, &samples, options, a.batch, a.seed)
        .with_context(|| format!("preparing {} samples of {name}", samples.n))?;
    let table = metric
        .compute(&ctx)
        .with_context(|| format!("computing {} on {model}", a.metric))?;
    let secs = t0.elapsed().as_secs_f64();
    let ranking = table.ranking();
    if a.json {
        let v = serde_json::json!({
            "model": model, "data": name, "samples": samples.n, "seed": a.seed,
            "seconds": secs, "table": table,
            "ranking": ranking.iter().map(|&i| table.layers[i].clone()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} sensitivity of {model} on {} samples of {name} (lower = less sensitive) [{secs:.1} s]",
        table.metric, samples.n
    );
    let width = table
        .layers
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap_or(5)
        .max(5);
    print!("{:<width$}", "layer");
    for o in &table.options {
        print!(" {o:>11}");
    }
    println!(" {:>5}", "rank");
    for (i, l) in table.layers.iter().enumerate() {
        print!("{l:<width$}");
        for v in &table.values[i] {
            print!(" {v:>11.4e}");
        }
        let rank = ranking.iter().position(|&r| r == i).unwrap_or(0) + 1;
        println!(" {rank:>5}");
    }
    println!(
        "most sensitive (sum over options): {}",
        ranking
            .iter()
            .map(|&i| table.layers[i].as_str())
            .collect::<Vec<_>>()
            .join(" > ")
    );
    Ok(())
}
