//! `mixprec sensitivity --model M --data D --metric NAME`: the per-layer sensitivity table
//! `[layer × option]` of one metric of `mixprec_exec::sensitivity::METRICS` (survey §3.2.3
//! HAWQ-V2, §3.2.5 ZeroQ, §3.4.8 EvoQ …) on a seeded class-balanced sample of the data, or on
//! ZeroQ distilled data (`--data distilled`, survey §3.2.5). `--additivity` checks OBACWA's
//! Eq. 12 (survey §3.1.3): the sum of single-layer output errors against the output error with
//! every layer quantized.

use super::data::{self, Scale};
use crate::pipeline::parse_granularity;
use anyhow::{bail, Context, Result};
use mixprec_data::Dataset;
use mixprec_data::{calibration_subset, Split};
use mixprec_exec::sensitivity::output_mse::mse;
use mixprec_exec::sensitivity::{
    build_metric, OptionTarget, SensCtx, SensOption, SensitivityTable, METRICS,
};
use mixprec_exec::{distill, evaluate, DistillConfig, Executor, FakeQuant};
use mixprec_quant::Policy;

/// Arguments of `sensitivity`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    #[arg(long, required_unless_present = "list")]
    pub model: Option<String>,
    /// Data set: mnist, fashion-mnist, cifar10, mnist-1k (embedded), or `distilled` (ZeroQ
    /// data synthesised from the model's BatchNormalization statistics, --samples of them;
    /// --validate then uses the test split of the data set that fits the model's input).
    /// Default: from the model's input shape (mnist-1k for `default`).
    #[arg(long)]
    pub data: Option<String>,
    /// Adam steps per batch of `--data distilled` (ZeroQ uses 500; initial inputs: Gaussian
    /// around the middle of the --scale range, 127.5 ± 64 for raw, 0.5 ± 0.25 for unit).
    #[arg(long, default_value_t = 200)]
    pub distill_steps: usize,
    /// Also report OBACWA Eq. 12 additivity: per option, the sum over layers of the output
    /// error (Eq. 11) with one layer quantized, against the error with all layers quantized.
    #[arg(long)]
    pub additivity: bool,
    /// Metric name (see --list).
    #[arg(long, default_value = "hessian-trace")]
    pub metric: String,
    /// Metric configuration as JSON (e.g. '{"tol": 0.02}'); unknown fields are an error.
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// Stop once every layer's relative standard error is below this (the metric's `tol`,
    /// e.g. hessian-trace, default 0.05); overrides --config.
    #[arg(long)]
    pub tol: Option<f64>,
    /// Most probes per layer (the metric's `max_probes`, e.g. hessian-trace, default 64);
    /// overrides --config.
    #[arg(long)]
    pub max_probes: Option<usize>,
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
    /// Check the table: draw K random mixed policies (one option per layer), and report the
    /// Spearman rank correlation between their summed sensitivity and their measured top-1
    /// accuracy drop on the test split.
    #[arg(long, value_name = "K")]
    pub validate: Option<usize>,
    /// Test images used by --validate.
    #[arg(long, default_value_t = 1000)]
    pub validate_images: usize,
    /// Cache tables in this folder, keyed by a hash of the model file, metric, config, data,
    /// samples, seed, options, granularity and the mixprec build; a hit skips the computation.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<std::path::PathBuf>,
    /// List the metrics and exit.
    #[arg(long)]
    pub list: bool,
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
    let config = metric_config(&a)?;
    let metric = build_metric(&a.metric, &config)?;
    let options = SensOption::parse_list(&a.options, parse_granularity(&a.granularity)?)?;
    let g = crate::model::load(&model)?;
    let distilled = a.data.as_deref() == Some(DISTILLED);
    let name = match &a.data {
        Some(d) if d != DISTILLED => d.clone(),
        None if model == crate::model::DEFAULT_MODEL => data::EMBEDDED.into(),
        _ => match crate::model::default_dataset(&g) {
            Some(d) => d.into(),
            None if distilled => String::new(),
            None => return Err(crate::pipeline::no_dataset_error(&g)),
        },
    };
    let mut exec = Executor::new(g)?;
    exec.free_batch_dim();
    let (samples, data_label) = if distilled {
        let t = std::time::Instant::now();
        let (init_mean, init_std) = match a.scale {
            Scale::Raw => (127.5, 64.0),
            Scale::Unit => (0.5, 0.25),
        };
        let cfg = DistillConfig {
            samples: a.samples,
            batch: a.batch,
            steps: a.distill_steps,
            init_mean,
            init_std,
            seed: a.seed,
            ..Default::default()
        };
        let d = distill(&exec, &cfg, None, &mut |_, _| {})
            .with_context(|| format!("distilling {} samples from {model}", a.samples))?;
        if !a.json {
            println!(
                "distilled {} samples in {:.1} s: BatchNormalization statistics loss {:.4e} → {:.4e}",
                d.data.n,
                t.elapsed().as_secs_f64(),
                d.initial_loss,
                d.final_loss
            );
        }
        (d.data, DISTILLED.to_string())
    } else {
        let source = if name == data::EMBEDDED {
            data::load(&name, Split::Test, a.scale)?
        } else {
            data::load(&name, Split::Train, a.scale)
                .or_else(|_| data::load(&name, Split::Test, a.scale))?
        };
        (
            calibration_subset(&source, a.samples.min(source.n), a.seed)?,
            name.clone(),
        )
    };
    let t0 = std::time::Instant::now();
    let ctx = SensCtx::new(&exec, &samples, options, a.batch, a.seed)
        .with_context(|| format!("preparing {} samples of {data_label}", samples.n))?;
    let cache_file = match &a.cache {
        Some(dir) => Some(dir.join(format!("{}.json", cache_key(&a, &model, &data_label)?))),
        None => None,
    };
    let cached: Option<SensitivityTable> = cache_file
        .as_ref()
        .filter(|f| f.exists())
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str::<SensitivityTable>(&t).ok())
        .filter(|t| {
            // A stale or damaged entry is recomputed.
            t.layers.iter().eq(ctx.layers.iter().map(|l| &l.name))
                && t.options.iter().eq(ctx.options.iter().map(|o| &o.label))
                && t.values.iter().all(|r| r.len() == t.options.len())
                && t.values.len() == t.layers.len()
        });
    let from_cache = cached.is_some();
    let table = match cached {
        Some(t) => t,
        None => {
            let t = metric
                .compute(&ctx)
                .with_context(|| format!("computing {} on {model}", a.metric))?;
            if let Some(f) = &cache_file {
                if let Some(dir) = f.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating cache folder {}", dir.display()))?;
                }
                std::fs::write(f, serde_json::to_string(&t)?)
                    .with_context(|| format!("writing cache file {}", f.display()))?;
            }
            t
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let ranking = table.ranking();
    let validation = match a.validate {
        Some(_) if name.is_empty() => {
            bail!("--validate needs a labelled test set, and no data set fits this model's input")
        }
        Some(k) => {
            let test = data::load(&name, Split::Test, a.scale)?.head(a.validate_images);
            Some(validate(&ctx, &table, &test, k, a.batch, a.seed)?)
        }
        None => None,
    };
    let additivity = if a.additivity {
        Some(additivity(&ctx, &table, a.seed)?)
    } else {
        None
    };
    if a.json {
        let v = serde_json::json!({
            "model": model, "data": data_label, "samples": samples.n, "seed": a.seed,
            "seconds": secs, "cached": from_cache, "table": table,
            "ranking": ranking.iter().map(|&i| table.layers[i].clone()).collect::<Vec<_>>(),
            "validation": validation, "additivity": additivity,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} sensitivity of {model} on {} samples of {data_label} (lower = less sensitive) [{secs:.1} s{}]",
        table.metric,
        samples.n,
        if from_cache { ", cached" } else { "" }
    );
    let width = table
        .layers
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let detail_names: Vec<&String> = table
        .details
        .first()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    print!("{:<width$}", "layer");
    for o in &table.options {
        print!(" {o:>11}");
    }
    print!(" {:>5}", "rank");
    for d in &detail_names {
        print!(" {d:>11}");
    }
    println!();
    for (i, l) in table.layers.iter().enumerate() {
        print!("{l:<width$}");
        for v in &table.values[i] {
            print!(" {v:>11.4e}");
        }
        let rank = ranking.iter().position(|&r| r == i).unwrap_or(0) + 1;
        print!(" {rank:>5}");
        for d in &detail_names {
            let v = table.details.get(i).and_then(|m| m.get(*d)).copied();
            print!(" {:>11.4e}", v.unwrap_or(f64::NAN));
        }
        println!();
    }
    println!(
        "most sensitive (sum over options): {}",
        ranking
            .iter()
            .map(|&i| table.layers[i].as_str())
            .collect::<Vec<_>>()
            .join(" > ")
    );
    if let Some(v) = validation {
        println!(
            "validation: Spearman ρ = {:.3} between summed sensitivity and top-1 drop over {} random policies on {} test images (float top-1 {:.2} %)",
            v.spearman,
            v.policies.len(),
            v.images,
            100.0 * v.float_accuracy
        );
    }
    if let Some(rows) = additivity {
        println!("additivity (OBACWA Eq. 12; output error = Eq. 11, MSE of the logits):");
        println!(
            "  {:<7} {:>16} {:>16} {:>8}",
            "option", "Σ single-layer", "all layers", "ratio"
        );
        for r in rows {
            println!(
                "  {:<7} {:>16.4e} {:>16.4e} {:>8.3}",
                r.option, r.sum_single, r.all_layers, r.ratio
            );
        }
    }
    Ok(())
}

/// `--data` value that selects ZeroQ distilled data.
const DISTILLED: &str = "distilled";

/// One option's row of `--additivity`.
#[derive(serde::Serialize)]
struct Additivity {
    option: String,
    /// Σ_i Error_i with only layer i quantized (Eq. 11 each).
    sum_single: f64,
    /// Error_t with every layer quantized (Eq. 12 left side).
    all_layers: f64,
    /// all_layers / sum_single (1 when the errors add up).
    ratio: f64,
}

/// OBACWA Eq. 12 per option: the single-layer output errors (Eq. 11, the `output-mse`
/// table; reused when `table` is one) summed over layers, against the output error with every
/// layer quantized by the option.
fn additivity(ctx: &SensCtx, table: &SensitivityTable, seed: u64) -> Result<Vec<Additivity>> {
    let single = if table.metric == "output-mse" {
        table.clone()
    } else {
        build_metric("output-mse", &serde_json::Value::Null)?
            .compute(ctx)
            .context("computing single-layer output errors for --additivity")?
    };
    let flat = |rows: Vec<(Vec<f32>, usize)>| -> Vec<f32> {
        rows.into_iter().flat_map(|(v, _)| v).collect()
    };
    let float = flat(ctx.logits(None)?);
    let mut out = Vec::with_capacity(ctx.options.len());
    for (o, opt) in ctx.options.iter().enumerate() {
        let mut p = Policy::new();
        for l in &ctx.layers {
            match opt.target {
                OptionTarget::Weight => p.set_weight(&l.name, opt.scheme),
                OptionTarget::Activation => p.set_activation(&l.name, opt.scheme),
            };
        }
        let fq = FakeQuant::new(ctx.exec, &p, &ctx.ranges, seed)?;
        let all_layers = mse(&float, &flat(ctx.logits(Some(&fq))?));
        let sum_single: f64 = single.values.iter().map(|r| r[o]).sum();
        out.push(Additivity {
            option: opt.label.clone(),
            sum_single,
            all_layers,
            ratio: if sum_single > 0.0 {
                all_layers / sum_single
            } else {
                f64::NAN
            },
        });
    }
    Ok(out)
}

/// The metric configuration: --config with --tol / --max-probes merged in.
fn metric_config(a: &Args) -> Result<serde_json::Value> {
    let mut config: serde_json::Value = match &a.config {
        Some(c) => serde_json::from_str(c).with_context(|| format!("--config {c}"))?,
        None => serde_json::Value::Null,
    };
    let extra = [
        ("tol", a.tol.map(serde_json::Value::from)),
        ("max_probes", a.max_probes.map(serde_json::Value::from)),
    ];
    for (key, v) in extra {
        let Some(v) = v else { continue };
        if config.is_null() {
            config = serde_json::json!({});
        }
        let obj = config.as_object_mut().with_context(|| {
            format!(
                "--config must be a JSON object to take --{}",
                key.replace('_', "-")
            )
        })?;
        obj.insert(key.into(), v);
    }
    Ok(config)
}

/// FNV-1a (64-bit) of the model bytes and every argument that changes the table, in hex.
fn cache_key(a: &Args, model: &str, data: &str) -> Result<String> {
    let bytes = crate::pipeline::model_bytes(model)?;
    let args = format!(
        "{}|{}|{data}|{:?}|{}|{}|{}|{}|{}|{}|{:016x}",
        a.metric,
        metric_config(a)?,
        a.scale,
        a.samples,
        a.batch,
        a.seed,
        a.options,
        a.granularity,
        if data == DISTILLED {
            a.distill_steps
        } else {
            0
        },
        crate::pipeline::build_id()
    );
    let h = [&bytes[..], &[0u8], args.as_bytes()]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, part| {
            crate::pipeline::fnv1a(part, h)
        });
    Ok(format!("{}-{h:016x}", a.metric))
}

/// Result of `--validate`.
#[derive(serde::Serialize)]
struct Validation {
    spearman: f64,
    float_accuracy: f64,
    images: usize,
    /// (option label per layer, summed sensitivity, accuracy drop).
    policies: Vec<(Vec<String>, f64, f64)>,
}

/// Draws `k` random policies (one table option per layer), sums their sensitivities and
/// measures their accuracy drop on `test`.
fn validate(
    ctx: &SensCtx,
    table: &SensitivityTable,
    test: &Dataset,
    k: usize,
    batch: usize,
    seed: u64,
) -> Result<Validation> {
    if k < 3 {
        bail!("--validate needs at least 3 policies for a rank correlation");
    }
    let float = evaluate(ctx.exec, test, batch, None, &mut |_, _| {})?.accuracy;
    let mut state = seed ^ 0x5eed_0f7a_11d0_0001;
    let mut policies = Vec::with_capacity(k);
    for _ in 0..k {
        let pick: Vec<usize> = (0..ctx.layers.len())
            .map(|_| (splitmix(&mut state) % ctx.options.len() as u64) as usize)
            .collect();
        let mut p = Policy::new();
        let mut predicted = 0.0;
        for (i, (l, &o)) in ctx.layers.iter().zip(&pick).enumerate() {
            let opt = &ctx.options[o];
            match opt.target {
                OptionTarget::Weight => p.set_weight(&l.name, opt.scheme),
                OptionTarget::Activation => p.set_activation(&l.name, opt.scheme),
            };
            predicted += table.values[i][o];
        }
        let fq = FakeQuant::new(ctx.exec, &p, &ctx.ranges, seed)?;
        let acc = evaluate(ctx.exec, test, batch, Some(&fq), &mut |_, _| {})?.accuracy;
        let labels = pick.iter().map(|&o| ctx.options[o].label.clone()).collect();
        policies.push((labels, predicted, float - acc));
    }
    let x: Vec<f64> = policies.iter().map(|p| p.1).collect();
    let y: Vec<f64> = policies.iter().map(|p| p.2).collect();
    Ok(Validation {
        spearman: spearman(&x, &y),
        float_accuracy: float,
        images: test.n,
        policies,
    })
}

/// SplitMix64 step: a small seeded generator for the policy draws.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Ranks with ties averaged (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &t in &idx[i..=j] {
            r[t] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: the Pearson correlation of the ranks (0 when either side is constant).
fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spearman_by_hand() {
        assert_eq!(
            super::ranks(&[3.0, 1.0, 3.0, 2.0]),
            vec![3.5, 1.0, 3.5, 2.0]
        );
        assert!((super::spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((super::spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // d = (0, 1, −1): ρ = 1 − 6·2 / (3·8) = 0.5.
        assert!((super::spearman(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 0.5).abs() < 1e-12);
        assert_eq!(super::spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
    }

    /// `n` samples of 1×2×2 with pixel values from a fixed formula, labels `i % 3`.
    fn data(n: usize) -> mixprec_data::Dataset {
        let images = (0..n * 4)
            .map(|i| ((i * 7919) % 23) as f32 / 23.0 - 0.5)
            .collect();
        let labels = (0..n as u32).map(|i| i % 3).collect();
        let classes = ["a", "b", "c"].map(String::from).to_vec();
        mixprec_data::Dataset::from_parts("t", images, labels, n, 1, 2, 2, classes).unwrap()
    }

    #[test]
    fn additivity_is_exact_for_one_layer_and_compares_every_option() {
        use mixprec_exec::models::GraphBuilder;
        use mixprec_exec::sensitivity::{build_metric, SensCtx, SensOption};
        use mixprec_graph::Op;
        use mixprec_quant::Granularity;
        // One layer: quantizing "all layers" is quantizing that layer, so Eq. 12 holds exactly.
        let (mut b, x) = GraphBuilder::new("one", 1, 2, 2, 1);
        let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
        let y = b.fc("fc", y, 4, 3);
        let exec = mixprec_exec::Executor::new(b.finish(y)).unwrap();
        let opts = SensOption::parse_list("w2,w4,a4", Granularity::Tensor).unwrap();
        let ctx = SensCtx::new(&exec, &data(30), opts, 8, 0).unwrap();
        let kl = build_metric("kl", &serde_json::Value::Null)
            .unwrap()
            .compute(&ctx)
            .unwrap();
        let rows = super::additivity(&ctx, &kl, 0).unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert!(r.sum_single > 0.0, "{}", r.option);
            assert!((r.ratio - 1.0).abs() < 1e-9, "{}: {}", r.option, r.ratio);
        }
        assert!(rows[0].all_layers > rows[1].all_layers);
        // Two layers: the sum is over both single-layer errors of the output-mse table.
        let (mut b, x) = GraphBuilder::new("two", 1, 2, 2, 2);
        let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![x]);
        let y = b.fc("fc1", y, 4, 5);
        let y = b.node("relu", Op::Relu, vec![y]);
        let y = b.fc("fc2", y, 5, 3);
        let exec = mixprec_exec::Executor::new(b.finish(y)).unwrap();
        let opts = SensOption::parse_list("w3", Granularity::Tensor).unwrap();
        let ctx = SensCtx::new(&exec, &data(30), opts, 8, 0).unwrap();
        let mse = build_metric("output-mse", &serde_json::Value::Null)
            .unwrap()
            .compute(&ctx)
            .unwrap();
        let rows = super::additivity(&ctx, &mse, 0).unwrap();
        assert_eq!(rows[0].sum_single, mse.values[0][0] + mse.values[1][0]);
        assert!(rows[0].all_layers > 0.0 && rows[0].ratio.is_finite());
    }
}
