//! `mixprec compare --budget …`: every registered allocator (and every metric asked for) on
//! the same model, data, options and budgets, each policy measured on the same test images —
//! one table (accuracy, size, BOPs, latency, search time) and one chart. Survey §4.1 notes
//! that its frameworks were never compared on equal terms; this command does that.

use super::mixed::{cost_of, MixedArgs};
use crate::pipeline::{
    self, build_problem, evaluate_choice, human_bytes, parse_weight_options, sensitivity, solve,
    write_file, CommonArgs, Evaluated, Session,
};
use anyhow::{Context, Result};
use mixprec_alloc::{CostKind, ALLOCATORS};
use std::path::PathBuf;

/// Arguments of `compare`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub mixed: MixedArgs,
    /// Allocators to compare, comma-separated, or `all`.
    #[arg(long, default_value = "all")]
    pub allocators: String,
    /// Metrics to compare, comma-separated (default: --metric).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Write compare.json and report.html into this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One row of the comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// Allocator.
    pub allocator: String,
    /// Metric.
    pub metric: String,
    /// The measured policy, or `None` when the allocator failed.
    pub result: Option<Evaluated>,
    /// Search time (s).
    pub search_seconds: f64,
    /// Why the allocator gave no policy.
    pub error: Option<String>,
}

/// Everything `compare` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Comparison {
    /// Model argument.
    pub model: String,
    /// Data set.
    pub data: String,
    /// Test images.
    pub images: usize,
    /// Budgets as resolved.
    pub budgets: Vec<crate::pipeline::BudgetSpec>,
    /// Float top-1 (%).
    pub float_accuracy: f64,
    /// Uniform baselines (per option; those over budget included, marked by their costs).
    pub uniform: Vec<Evaluated>,
    /// One row per (metric, allocator).
    pub rows: Vec<Row>,
}

/// Runs every allocator of `names` for every metric of `metrics`.
pub fn compare(
    c: &CommonArgs,
    m: &MixedArgs,
    names: &[String],
    metrics: &[String],
) -> Result<(Comparison, Option<crate::report::Report>)> {
    if m.budget.is_empty() {
        anyhow::bail!("give at least one --budget, e.g. --budget wbits=3");
    }
    let wbits = parse_weight_options(&m.options)?;
    let metric_config = m.metric_config()?;
    let alloc_config = m.allocator_config()?;
    for n in names {
        mixprec_alloc::allocator(n, &serde_json::Value::Null)
            .with_context(|| format!("--allocators {n}"))?;
    }
    for n in metrics {
        mixprec_exec::sensitivity::build_metric(n, &metric_config)
            .with_context(|| format!("--metrics {n}"))?;
    }
    let lut = m.load_lut()?;
    let s = Session::open(c)?;
    build_problem(&s, None, &wbits, &m.budget, lut.as_ref(), m.fix_ends)?;
    let float = s.accuracy(None, "float")?;
    let mut rows = Vec::new();
    let mut uniform = Vec::new();
    let mut measured: Vec<(Vec<u32>, Evaluated)> = Vec::new();
    let mut budgets = Vec::new();
    let mut first_problem = None;
    let mut extras: Option<Vec<mixprec_alloc::LayerInfo>> = None;
    for metric in metrics {
        let stage = crate::progress::stage(&format!("sensitivity ({metric})"));
        let sens = sensitivity(
            &s,
            metric,
            &metric_config,
            &wbits,
            m.samples,
            m.cache_dir().as_deref(),
        )?;
        stage.finish_and_clear();
        let mut setup = build_problem(
            &s,
            Some(&sens.table),
            &wbits,
            &m.budget,
            lut.as_ref(),
            m.fix_ends,
        )?;
        match &extras {
            Some(e) => setup.problem.layers = e.clone(),
            None => {
                pipeline::add_layer_extras(&s, &mut setup.problem, names, m.samples)?;
                extras = Some(setup.problem.layers.clone());
            }
        }
        let p = &setup.problem;
        let rest = setup.reference.rest_bits;
        if first_problem.is_none() {
            first_problem = Some(p.clone());
        }
        if uniform.is_empty() {
            budgets = setup.budgets.clone();
            for (o, opt) in p.options.iter().enumerate() {
                let e = evaluate_choice(
                    &s,
                    p,
                    &vec![o; p.layers.len()],
                    &format!("uniform {}", opt.label()),
                    rest,
                )?;
                uniform.push(e);
            }
        }
        for name in names {
            // The allocator's own configuration applies only when it alone is compared.
            let cfg = if names.len() == 1 {
                alloc_config.clone()
            } else {
                serde_json::Value::Null
            };
            match solve(p, name, &cfg, c.seed) {
                Ok((a, secs)) => {
                    let bits = crate::pipeline::choice_bits(p, &a.choice);
                    let e = match measured.iter().find(|(b, _)| *b == bits) {
                        Some((_, e)) => {
                            let mut e = e.clone();
                            e.objective = a.objective;
                            e
                        }
                        None => {
                            let e = evaluate_choice(&s, p, &a.choice, name, rest)?;
                            measured.push((bits, e.clone()));
                            e
                        }
                    };
                    let mut e = e;
                    e.label = format!("{name} / {metric}");
                    rows.push(Row {
                        allocator: name.clone(),
                        metric: metric.clone(),
                        result: Some(e),
                        search_seconds: secs,
                        error: None,
                    });
                }
                Err(err) => rows.push(Row {
                    allocator: name.clone(),
                    metric: metric.clone(),
                    result: None,
                    search_seconds: 0.0,
                    error: Some(format!("{:#}", err)),
                }),
            }
        }
    }
    let cmp = Comparison {
        model: s.model.clone(),
        data: s.data.clone(),
        images: s.test.n,
        budgets,
        float_accuracy: float,
        uniform,
        rows,
    };
    let report = first_problem.and_then(|p| crate::report_data::comparison(&s, &p, &cmp));
    Ok((cmp, report))
}

/// Run `compare`.
pub fn run(a: Args) -> Result<()> {
    let t0 = std::time::Instant::now();
    let names: Vec<String> = if a.allocators == "all" {
        ALLOCATORS.iter().map(|e| e.name.to_string()).collect()
    } else {
        a.allocators
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let metrics: Vec<String> = a
        .metrics
        .as_deref()
        .unwrap_or(&a.mixed.metric)
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let (cmp, report) = compare(&a.common, &a.mixed, &names, &metrics)?;
    let mut files = Vec::new();
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output folder {}", dir.display()))?;
        files.push(write_file(
            dir,
            "compare.json",
            (serde_json::to_string_pretty(&cmp)? + "\n").as_bytes(),
        )?);
        if let Some(r) = &report {
            let (json, html) = crate::report::write_report(dir, r)?;
            files.extend([json, html]);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&cmp)?);
        return Ok(());
    }
    print_comparison(&cmp);
    println!("[{:.1} s]", t0.elapsed().as_secs_f64());
    for f in &files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// Prints the comparison table.
pub fn print_comparison(c: &Comparison) {
    println!(
        "{} on {} ({} test images), float top-1 {:.2} %",
        c.model, c.data, c.images, c.float_accuracy
    );
    for b in &c.budgets {
        println!("budget: {}", b.describe);
    }
    println!(
        "{:<30} {:>8} {:>10} {:>8} {:>9} {:>10} {:>10} {:>12}",
        "allocator / metric", "top-1 %", "size", "bits", "BOPs", "latency", "search ms", "Σ sens"
    );
    let line = |label: &str, e: &Evaluated, ms: Option<f64>| {
        let lat = cost_of(e, &CostKind::Latency).map_or("-".to_string(), |v| format!("{v:.3} ms"));
        let bops =
            cost_of(e, &CostKind::Bops).map_or("-".to_string(), |v| crate::cmd::si(v as u64));
        println!(
            "{:<30} {:>8.2} {:>10} {:>8.2} {:>9} {:>10} {:>10} {:>12.4e}",
            label,
            e.accuracy,
            human_bytes(e.size_bytes),
            e.avg_bits,
            bops,
            lat,
            ms.map_or("-".into(), |m| format!("{:.2}", 1e3 * m)),
            e.objective
        );
    };
    for u in &c.uniform {
        line(&u.label, u, None);
    }
    for r in &c.rows {
        let label = format!("{} / {}", r.allocator, r.metric);
        match (&r.result, &r.error) {
            (Some(e), _) => line(&label, e, Some(r.search_seconds)),
            (None, Some(err)) => {
                let short: String = err.chars().take(90).collect();
                println!("{label:<30} n/a: {short}");
            }
            (None, None) => println!("{label:<30} n/a"),
        }
    }
}
