//! `mixprec quantize --budget …`: the whole mixed-precision job (DESIGN §1) — calibrate →
//! sensitivity (cached) → allocate under the budgets (HAWQ-V3 Eq. 26 or any other registered
//! allocator) → apply → evaluate → export, with the accuracy-vs-cost front of the allocator
//! next to the uniform baselines (survey §4.1). Writes `policy.json`, `problem.json` (the
//! allocation problem, replayable by any allocator), `model.onnx` (QDQ), `report.json` and
//! `report.html` into `--out`.

use crate::pipeline::{
    self, build_problem, evaluate_choice, frontier_choices, human_bytes, parse_weight_options,
    sensitivity, solve, write_file, CommonArgs, Evaluated, Session,
};
use anyhow::{Context, Result};
use mixprec_alloc::costs::latency::LatencyLut;
use mixprec_alloc::CostKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of a budgeted mixed-precision run.
#[derive(clap::Args, Clone, Debug)]
pub struct MixedArgs {
    /// Budget (repeatable, all must hold): size=25% (of the float model), size=40KB,
    /// wbits=3 (the size of the model with every layer at 3-bit weights), bops=30%,
    /// bops=1.5G, latency=2ms or latency=80% (needs --lut).
    #[arg(long, value_name = "KEY=VALUE")]
    pub budget: Vec<String>,
    /// Sensitivity metric (see `mixprec list`).
    #[arg(long, default_value = "hessian-trace")]
    pub metric: String,
    /// Metric configuration as JSON.
    #[arg(long, value_name = "JSON")]
    pub metric_config: Option<String>,
    /// Allocator (see `mixprec list`).
    #[arg(long, default_value = "ilp")]
    pub allocator: String,
    /// Allocator configuration as JSON.
    #[arg(long, value_name = "JSON")]
    pub allocator_config: Option<String>,
    /// Weight bit-width options of every layer.
    #[arg(long, default_value = "w2,w3,w4,w8")]
    pub options: String,
    /// Sensitivity samples (class-balanced, from the calibration images).
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
    /// Latency look-up table (JSON from `mixprec profile`); adds the latency cost.
    #[arg(long, value_name = "FILE")]
    pub lut: Option<PathBuf>,
    /// Budget points of the allocator's accuracy-vs-cost front (0 = no front).
    #[arg(long, default_value_t = 8)]
    pub pareto: usize,
    /// Keep the first and last layer at the highest option (as HAWQ-V3 and HAQ do).
    #[arg(long)]
    pub fix_ends: bool,
    /// Cache folder of sensitivity tables (default: $MIXPREC_CACHE or ~/.cache/mixprec).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Do not read or write the sensitivity cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Store ≤ 4-bit weights of the QDQ model as ONNX INT4 (opset 21).
    #[arg(long)]
    pub int4: bool,
    /// Skip lowering onto the integer engine (no model.mpqm, no integer accuracy).
    #[arg(long)]
    pub no_engine: bool,
}

impl MixedArgs {
    /// Parsed `--metric-config`.
    pub fn metric_config(&self) -> Result<serde_json::Value> {
        json_arg(self.metric_config.as_deref(), "--metric-config")
    }

    /// Parsed `--allocator-config`.
    pub fn allocator_config(&self) -> Result<serde_json::Value> {
        json_arg(self.allocator_config.as_deref(), "--allocator-config")
    }

    /// The cache folder, if caching.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        (!self.no_cache).then(|| {
            self.cache
                .clone()
                .unwrap_or_else(pipeline::default_cache_dir)
        })
    }

    /// The latency LUT, if given.
    pub fn load_lut(&self) -> Result<Option<LatencyLut>> {
        self.lut
            .as_ref()
            .map(|p| LatencyLut::from_file(p).with_context(|| format!("--lut {}", p.display())))
            .transpose()
    }
}

/// JSON text of an optional argument (`null` when absent).
pub fn json_arg(text: Option<&str>, what: &str) -> Result<serde_json::Value> {
    match text {
        Some(t) => serde_json::from_str(t).with_context(|| format!("{what} {t}: not JSON")),
        None => Ok(serde_json::Value::Null),
    }
}

/// Seconds spent per stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StageTimes {
    /// Loading and calibration.
    pub load_calibrate: f64,
    /// Sensitivity (0 when cached).
    pub sensitivity: f64,
    /// The allocator on the requested budgets.
    pub allocate: f64,
    /// All accuracy evaluations (float, uniform, front, chosen).
    pub evaluate: f64,
    /// Export of every file.
    pub export: f64,
    /// Everything.
    pub total: f64,
}

/// Everything a budgeted run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// Model argument.
    pub model: String,
    /// Data set.
    pub data: String,
    /// Test images evaluated.
    pub images: usize,
    /// Calibration images and where they came from.
    pub calibration: String,
    /// Metric.
    pub metric: String,
    /// Whether the sensitivity table came from the cache.
    pub sensitivity_cached: bool,
    /// Allocator.
    pub allocator: String,
    /// The budgets as resolved.
    pub budgets: Vec<pipeline::BudgetSpec>,
    /// Layer names.
    pub layers: Vec<String>,
    /// Float top-1 (%).
    pub float_accuracy: f64,
    /// Size of the float model in bytes.
    pub float_bytes: f64,
    /// The chosen policy.
    pub chosen: Evaluated,
    /// Top-1 (%) of the chosen policy on the integer-only engine (`None` when skipped or
    /// when the model cannot be lowered; see `engine_error`).
    pub engine_accuracy: Option<f64>,
    /// Why the integer engine could not run the policy.
    pub engine_error: Option<String>,
    /// Size of the mixprec model file in bytes.
    pub engine_file_bytes: Option<u64>,
    /// Search time of the allocator on the requested budgets (s).
    pub search_seconds: f64,
    /// Uniform baselines, one per option.
    pub uniform: Vec<Evaluated>,
    /// The allocator's front.
    pub frontier: Vec<Evaluated>,
    /// More summary rows (e.g. the integer engine's accuracy).
    pub extra_summary: Vec<(String, String)>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Stage times.
    pub seconds: StageTimes,
}

/// One cost of an evaluated choice.
pub fn cost_of(e: &Evaluated, kind: &CostKind) -> Option<f64> {
    e.costs.iter().find(|(k, _)| k == kind).map(|(_, v)| *v)
}

/// Runs the whole job; files go to `out`.
pub fn run_mixed(c: &CommonArgs, m: &MixedArgs, out: &Path) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut times = StageTimes::default();
    if m.budget.is_empty() {
        anyhow::bail!("give at least one --budget, e.g. --budget size=25% or --budget wbits=3");
    }
    let wbits = parse_weight_options(&m.options)?;
    let metric_config = m.metric_config()?;
    let alloc_config = m.allocator_config()?;
    // Fail early on unknown names, before any expensive stage.
    mixprec_exec::sensitivity::build_metric(&m.metric, &metric_config)?;
    mixprec_alloc::allocator(&m.allocator, &alloc_config)?;
    let lut = m.load_lut()?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating the output folder {}", out.display()))?;

    let stage = crate::progress::stage("calibrating");
    let s = Session::open(c)?;
    stage.finish_and_clear();
    times.load_calibrate = t0.elapsed().as_secs_f64();
    // Budgets are checked before the (expensive) sensitivity pass.
    build_problem(&s, None, &wbits, &m.budget, lut.as_ref(), m.fix_ends)?;

    let stage = crate::progress::stage(&format!("sensitivity ({})", m.metric));
    let sens = sensitivity(
        &s,
        &m.metric,
        &metric_config,
        &wbits,
        m.samples,
        m.cache_dir().as_deref(),
    )?;
    stage.finish_and_clear();
    times.sensitivity = sens.seconds;

    let mut setup = build_problem(
        &s,
        Some(&sens.table),
        &wbits,
        &m.budget,
        lut.as_ref(),
        m.fix_ends,
    )?;
    pipeline::add_layer_extras(
        &s,
        &mut setup.problem,
        std::slice::from_ref(&m.allocator),
        m.samples,
    )?;
    let p = &setup.problem;
    let rest = setup.reference.rest_bits;
    let stage = crate::progress::stage(&format!("allocating ({})", m.allocator));
    let (alloc, search) = solve(p, &m.allocator, &alloc_config, c.seed)?;
    let front = if m.pareto > 0 {
        frontier_choices(p, &m.allocator, &alloc_config, c.seed, m.pareto)?
    } else {
        Vec::new()
    };
    stage.finish_and_clear();
    times.allocate = search;

    let te = Instant::now();
    let float_accuracy = s.accuracy(None, "float")?;
    let mut uniform = Vec::new();
    for (o, opt) in p.options.iter().enumerate() {
        let choice = vec![o; p.layers.len()];
        uniform.push(evaluate_choice(
            &s,
            p,
            &choice,
            &format!("uniform {}", opt.label()),
            rest,
        )?);
    }
    let mut cache: Vec<(Vec<usize>, Evaluated)> = Vec::new();
    let mut eval_cached = |choice: &[usize], label: &str| -> Result<Evaluated> {
        if let Some((_, e)) = cache.iter().find(|(c, _)| c == choice) {
            let mut e = e.clone();
            e.label = label.to_string();
            return Ok(e);
        }
        let e = evaluate_choice(&s, p, choice, label, rest)?;
        cache.push((choice.to_vec(), e.clone()));
        Ok(e)
    };
    let chosen = eval_cached(&alloc.choice, &m.allocator)?;
    let mut frontier = Vec::new();
    for (i, ch) in front.iter().enumerate() {
        frontier.push(eval_cached(ch, &format!("front {}", i + 1))?);
    }
    times.evaluate = te.elapsed().as_secs_f64();

    let tx = Instant::now();
    let policy = s.policy(&chosen.weight_bits);
    let mut files = Vec::new();
    files.push(write_file(
        out,
        "policy.json",
        (policy.to_json() + "\n").as_bytes(),
    )?);
    files.push(write_file(
        out,
        "problem.json",
        (p.to_json() + "\n").as_bytes(),
    )?);
    let onnx = out.join("model.onnx");
    if let Some(warning) = pipeline::save_qdq(&s, &policy, &s.ranges, m.int4, &onnx)? {
        eprintln!("warning: {warning}");
    }
    files.push(onnx);

    let (mut engine_accuracy, mut engine_error, mut engine_file_bytes) = (None, None, None);
    if !m.no_engine {
        let stage = crate::progress::stage("lowering onto the integer engine");
        let lowered = pipeline::lower_policy(&s, &policy);
        stage.finish_and_clear();
        match lowered {
            Ok(model) => {
                let te = Instant::now();
                engine_accuracy = Some(pipeline::engine_accuracy(&s, &model)?);
                times.evaluate += te.elapsed().as_secs_f64();
                let f = out.join("model.mpqm");
                model
                    .save(&f)
                    .with_context(|| format!("writing {}", f.display()))?;
                engine_file_bytes = std::fs::metadata(&f).ok().map(|m| m.len());
                files.push(f);
            }
            Err(e) => engine_error = Some(format!("{e:#}")),
        }
    }

    let outcome = Outcome {
        model: s.model.clone(),
        data: s.data.clone(),
        images: s.test.n,
        calibration: format!("{} images of the {}", s.calib.n, s.calib_source),
        metric: m.metric.clone(),
        sensitivity_cached: sens.cached,
        allocator: m.allocator.clone(),
        budgets: setup.budgets.clone(),
        layers: s.layers.iter().map(|l| l.name.clone()).collect(),
        float_accuracy,
        float_bytes: setup.reference.float_bits / 8.0,
        chosen,
        engine_accuracy,
        engine_error: engine_error.clone(),
        engine_file_bytes,
        search_seconds: search,
        uniform,
        frontier,
        extra_summary: match (engine_accuracy, &engine_error) {
            (Some(a), _) => vec![
                ("integer engine top-1".into(), format!("{a:.2} %")),
                (
                    "mixprec model file".into(),
                    engine_file_bytes.map_or("-".into(), |b| human_bytes(b as f64)),
                ),
            ],
            (None, Some(e)) => vec![("integer engine".into(), format!("n/a: {e}"))],
            (None, None) => Vec::new(),
        },
        files: Vec::new(),
        seconds: times.clone(),
    };
    let report = crate::report_data::single_run(&s, p, &setup.budgets, &outcome);
    let (json, html) = crate::report::write_report(out, &report)?;
    files.extend([json, html]);
    let mut outcome = outcome;
    outcome.seconds.export = tx.elapsed().as_secs_f64();
    outcome.seconds.total = t0.elapsed().as_secs_f64();
    outcome.files = files;
    Ok(outcome)
}

/// Prints the human summary of a run.
pub fn print_outcome(o: &Outcome) {
    println!(
        "{} on {} ({} test images): metric {}{}, allocator {}",
        o.model,
        o.data,
        o.images,
        o.metric,
        if o.sensitivity_cached {
            " (cached)"
        } else {
            ""
        },
        o.allocator
    );
    println!("calibration: {}", o.calibration);
    for b in &o.budgets {
        println!("budget: {}", b.describe);
    }
    println!(
        "{:<16} {:>9} {:>11} {:>9} {:>10}",
        "policy", "top-1 %", "size", "avg bits", "BOPs"
    );
    println!(
        "{:<16} {:>9.2} {:>11} {:>9} {:>10}",
        "float",
        o.float_accuracy,
        human_bytes(o.float_bytes),
        "32",
        "-"
    );
    for e in o.uniform.iter().chain(std::iter::once(&o.chosen)) {
        println!(
            "{:<16} {:>9.2} {:>11} {:>9.2} {:>10}",
            if e.label == o.allocator {
                format!("{} (chosen)", e.label)
            } else {
                e.label.clone()
            },
            e.accuracy,
            human_bytes(e.size_bytes),
            e.avg_bits,
            cost_of(e, &CostKind::Bops).map_or("-".into(), |b| crate::cmd::si(b as u64)),
        );
    }
    match (o.engine_accuracy, &o.engine_error) {
        (Some(a), _) => println!(
            "integer engine (dyadic, packed weights): top-1 {a:.2} %  model file {}",
            o.engine_file_bytes
                .map_or("-".into(), |b| human_bytes(b as f64))
        ),
        (None, Some(e)) => println!("integer engine: not run ({e})"),
        (None, None) => {}
    }
    println!(
        "weight bits per layer: {}",
        o.layers
            .iter()
            .zip(&o.chosen.weight_bits)
            .map(|(l, b)| format!("{l}={b}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !o.frontier.is_empty() {
        println!(
            "front of {} ({} points): {}",
            o.allocator,
            o.frontier.len(),
            o.frontier
                .iter()
                .map(|e| format!("{} {:.2} %", human_bytes(e.size_bytes), e.accuracy))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for f in &o.files {
        println!("wrote {}", f.display());
    }
    println!(
        "time: {:.1} s (calibrate {:.1}, sensitivity {:.1}, allocate {:.3}, evaluate {:.1}, export {:.1})",
        o.seconds.total,
        o.seconds.load_calibrate,
        o.seconds.sensitivity,
        o.seconds.allocate,
        o.seconds.evaluate,
        o.seconds.export
    );
}
