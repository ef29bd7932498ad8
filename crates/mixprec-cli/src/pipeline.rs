//! The end-to-end mixed-precision pipeline behind `quantize --budget`, `apply`, `compare` and
//! `demo` (DESIGN §1): calibrate → sensitivity table (cached on disk) → allocation problem
//! (cost tables and budgets) → allocator → policy → fake-quant evaluation → export.
//!
//! * Sensitivity: any metric of `mixprec_exec::sensitivity::METRICS` (survey §3.2).
//! * Costs: `model-size` (survey §3.3 Eq. 26 `M_j`), `bops` (Eq. 26 `B_j`) and, with a
//!   measured look-up table, `latency` (`L_j`).
//! * The allocation is HAWQ-V3 Eq. 26: minimise Σ Ω_j(b_j) subject to every budget; any
//!   allocator of `mixprec_alloc::ALLOCATORS` solves it.
//! * The Pareto front is traced by re-solving the same problem with the first budget swept
//!   from the smallest achievable cost to the cost of all layers at the highest option, and by
//!   measuring the accuracy of every distinct policy found (survey §4.1: report the whole
//!   accuracy-vs-cost trade-off, not one point).

use crate::cmd::data::{self, Scale};
use crate::progress::bar;
use anyhow::{bail, Context, Result};
use mixprec_alloc::costs::latency::LatencyLut;
use mixprec_alloc::{
    allocator, cost_model, AllocationProblem, BitOption, Budget, CostKind, LayerInfo, SolveCtx,
    Table,
};
use mixprec_data::{calibration_subset, Dataset, Split};
use mixprec_exec::sensitivity::{build_metric, SensCtx, SensOption, SensitivityTable};
use mixprec_exec::{
    calibrate, evaluate, fakequant::weight_channel_axis, ActivationRanges, Executor, FakeQuant,
};
use mixprec_graph::Layer;
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};
use std::path::{Path, PathBuf};

/// Options every pipeline command shares.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Data set: mnist, fashion-mnist, cifar10, or mnist-1k (embedded). Default: from the
    /// model's input shape (mnist-1k for `default`).
    #[arg(long)]
    pub data: Option<String>,
    /// Evaluate only the first N test images (default: the whole test split).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calibration images (a seeded class-balanced subset of the training split when the data
    /// set has one).
    #[arg(long, default_value_t = 256)]
    pub calib: usize,
    /// Calibration observer for the activation ranges (see `mixprec list`).
    #[arg(long, default_value = "min-max")]
    pub observer: String,
    /// Activation bit width of every layer's input (uniform, asymmetric, per tensor).
    #[arg(long, default_value_t = 8)]
    pub activation_bits: u8,
    /// Weight parameter sharing: channel or tensor (uniform mode also g<N>). Default: channel
    /// for mixed precision, tensor for `--uniform`.
    #[arg(long)]
    pub granularity: Option<String>,
    /// Batch size of the evaluation passes.
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    /// Input scaling.
    #[arg(long, value_enum, default_value = "raw")]
    pub scale: Scale,
    /// Seed (calibration and sensitivity samples, probes, stochastic allocators).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Everything loaded once per run: the model, the evaluated images, the calibration set and
/// the activation ranges of every layer input at the chosen activation bits.
pub struct Session {
    /// The model argument as given.
    pub model: String,
    /// Data set name.
    pub data: String,
    /// The float executor.
    pub exec: Executor,
    /// Evaluated test images.
    pub test: Dataset,
    /// Calibration images.
    pub calib: Dataset,
    /// Where the calibration images came from.
    pub calib_source: String,
    /// Calibrated input range of every layer.
    pub ranges: ActivationRanges,
    /// The quantizable layers in graph order.
    pub layers: Vec<Layer>,
    /// Activation scheme of every layer input.
    pub activation: QScheme,
    /// Weight granularity.
    pub granularity: Granularity,
    /// Evaluation batch.
    pub batch: usize,
    /// Input scaling.
    pub scale: Scale,
    /// Seed.
    pub seed: u64,
    /// Calibration observer of the activation ranges.
    pub observer: String,
}

/// `tensor`, `channel`, or `g<N>` / `group<N>` (groups of N inside each channel).
pub fn parse_granularity(s: &str) -> Result<Granularity> {
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

/// The data set name for a model: `--data`, else the embedded subset for `default`, else
/// from the model's input shape.
pub fn dataset_name(model: &str, data: Option<&str>, g: &mixprec_graph::Graph) -> Result<String> {
    Ok(match data {
        Some(d) => d.to_string(),
        None if model == crate::model::DEFAULT_MODEL => data::EMBEDDED.into(),
        None => crate::model::default_dataset(g)
            .ok_or_else(|| no_dataset_error(g))?
            .into(),
    })
}

/// No built-in data set fits `g`'s input: the error shows the input's shape and the choices.
pub fn no_dataset_error(g: &mixprec_graph::Graph) -> anyhow::Error {
    let input = g.inputs.first().map(|&v| {
        let dims = g.values[v]
            .shape
            .as_ref()
            .map_or("unknown shape".to_string(), |s| {
                let d: Vec<String> = s
                    .iter()
                    .map(|d| match d {
                        mixprec_graph::Dim::Fixed(n) => n.to_string(),
                        mixprec_graph::Dim::Symbolic(n) if n.is_empty() => "?".into(),
                        mixprec_graph::Dim::Symbolic(n) => n.clone(),
                    })
                    .collect();
                format!("[{}]", d.join(", "))
            });
        format!(" '{}' {dims}", g.values[v].name)
    });
    anyhow::anyhow!(
        "no built-in data set fits the model input{}: pass --data mnist or fashion-mnist (1×28×28), cifar10 (3×32×32), or your own arrays (--data FILE.npz with samples x [N, …] and integer labels y)",
        input.unwrap_or_default()
    )
}

/// The calibration images and where they came from: a seeded class-balanced subset of the
/// training split, else of the test images after the evaluated ones, else of the test set.
pub fn calibration_set(
    name: &str,
    scale: Scale,
    full: &Dataset,
    evaluated: usize,
    n: usize,
    seed: u64,
) -> Result<(Dataset, String)> {
    if n == 0 {
        bail!("--calib must be at least 1");
    }
    // User arrays have no separate training split: calibrate on samples of the same arrays.
    if name != data::EMBEDDED && !data::is_user_arrays(name) {
        if let Ok(train) = data::load(name, Split::Train, scale) {
            let set = calibration_subset(&train, n.min(train.n), seed)?;
            return Ok((set, "train split".into()));
        }
    }
    if full.n - evaluated >= n {
        let rest: Vec<usize> = (evaluated..full.n).collect();
        let set = calibration_subset(&full.subset(&rest)?, n, seed)?;
        return Ok((set, "test split, images after the evaluated ones".into()));
    }
    let set = calibration_subset(full, n.min(full.n), seed)?;
    Ok((set, "test split (overlaps the evaluated images)".into()))
}

impl Session {
    /// Loads the model and data and calibrates every layer input.
    pub fn open(a: &CommonArgs) -> Result<Self> {
        let granularity = parse_granularity(a.granularity.as_deref().unwrap_or("channel"))?;
        if let Granularity::Group(_) = granularity {
            bail!("--granularity: mixed precision supports channel or tensor (the size cost counts one scale per channel or per tensor)");
        }
        let activation = QScheme::new(
            QuantKind::Uniform,
            a.activation_bits,
            false,
            Granularity::Tensor,
        );
        activation
            .validate()
            .with_context(|| format!("--activation-bits {}", a.activation_bits))?;
        let g = crate::model::load(&a.model)?;
        let name = dataset_name(&a.model, a.data.as_deref(), &g)?;
        let full = data::load(&name, Split::Test, a.scale)?;
        let test = match a.limit {
            Some(0) => bail!("--limit must be at least 1"),
            Some(n) => full.head(n),
            None => full.clone(),
        };
        let (calib, calib_source) =
            calibration_set(&name, a.scale, &full, test.n, a.calib, a.seed)?;
        let mut exec = Executor::new(g)?;
        exec.free_batch_dim();
        let layers = exec.graph().layers();
        if layers.is_empty() {
            bail!(
                "{} has no Conv, Gemm, MatMul or recurrent layer with constant weights to quantize",
                a.model
            );
        }
        let mut all = Policy::new();
        for l in &layers {
            all.set_activation(&l.name, activation);
        }
        let ranges = calibrate(&exec, &calib, &a.observer, &all)
            .with_context(|| format!("calibrating on {} images of {name}", calib.n))?;
        Ok(Session {
            model: a.model.clone(),
            data: name,
            exec,
            test,
            calib,
            calib_source,
            ranges,
            layers,
            activation,
            granularity,
            batch: a.batch.max(1),
            scale: a.scale,
            seed: a.seed,
            observer: a.observer.clone(),
        })
    }

    /// The weight scheme at `bits` (uniform, symmetric, at the session's granularity).
    pub fn weight_scheme(&self, bits: u8) -> QScheme {
        QScheme::new(QuantKind::Uniform, bits, true, self.granularity)
    }

    /// The policy giving layer `i` weight bits `wbits[i]` (32 = float) and every input the
    /// session's activation scheme.
    pub fn policy(&self, wbits: &[u32]) -> Policy {
        let mut p = Policy::new();
        for (l, &b) in self.layers.iter().zip(wbits) {
            if b < 32 {
                p.set_weight(&l.name, self.weight_scheme(b as u8));
            }
            if self.activation.bits < 32 {
                p.set_activation(&l.name, self.activation);
            }
        }
        p
    }

    /// Top-1 accuracy (in %) of the float model (`None`) or of a policy, with a progress bar.
    pub fn accuracy(&self, policy: Option<&Policy>, label: &str) -> Result<f64> {
        let fq = match policy {
            Some(p) => Some(FakeQuant::new(&self.exec, p, &self.ranges, self.seed)?),
            None => None,
        };
        let pb = bar(self.test.n as u64, label);
        let r = evaluate(
            &self.exec,
            &self.test,
            self.batch,
            fq.as_ref().map(|f| f as &dyn mixprec_exec::LayerHook),
            &mut |d, _| pb.set_position(d as u64),
        )
        .with_context(|| format!("evaluating {label} on {}", self.data))?;
        pb.finish_and_clear();
        Ok(100.0 * r.accuracy)
    }

    /// Per-layer data of the allocation problem: weight elements, MACs and input activation
    /// elements for one sample, output channels, and the weight statistics OPQ needs.
    pub fn layer_infos(&self) -> Result<Vec<LayerInfo>> {
        let g = self.exec.graph();
        let stats = mixprec_graph::model_stats(g)?;
        let mut out = Vec::new();
        for l in &self.layers {
            let s = stats
                .layers
                .iter()
                .find(|s| s.name == l.name)
                .with_context(|| format!("no accounting for layer '{}'", l.name))?;
            // Statistics over every quantized weight of the layer (W and R when recurrent).
            let w: Vec<f32> = g
                .layer_weights(l)
                .iter()
                .filter_map(|v| g.initializers.get(v))
                .flat_map(|t| t.to_f32())
                .collect();
            let mut info = LayerInfo::new(l.name.clone(), s.weights, s.macs, s.input_elems);
            info.out_channels = match self.granularity {
                Granularity::Channel => {
                    let axis = weight_channel_axis(g, l);
                    s.weight_shape.get(axis).copied().unwrap_or(1).max(1) as u64
                }
                _ => 1,
            };
            let n = w.len().max(1) as f64;
            let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            info.extra.weight_std = Some(var.sqrt());
            info.extra.weight_max_abs = Some(w.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64)));
            out.push(info);
        }
        Ok(out)
    }

    /// Float parameters outside the quantized weights (biases, BatchNorm, …), which stay at
    /// 32 bits.
    pub fn unquantized_params(&self, infos: &[LayerInfo]) -> u64 {
        let total = self.exec.graph().parameter_count() as u64;
        total.saturating_sub(infos.iter().map(|l| l.params).sum())
    }
}

/// Parses `w2,w3,w4,w8` into weight bit widths.
pub fn parse_weight_options(list: &str) -> Result<Vec<u32>> {
    let mut bits = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let b: u32 = s
            .strip_prefix('w')
            .and_then(|b| b.parse().ok())
            .filter(|b| (2..=16).contains(b))
            .with_context(|| {
                format!("--options {list}: '{s}' is not w<bits> with bits in 2..=16 (e.g. w4)")
            })?;
        if !bits.contains(&b) {
            bits.push(b);
        }
    }
    if bits.is_empty() {
        bail!("--options {list}: give at least one weight option, e.g. w2,w3,w4,w8");
    }
    bits.sort_unstable();
    Ok(bits)
}

/// FNV-1a hash of the running mixprec executable (0 when it cannot be read), computed once: part
/// of every sensitivity cache key, so a table computed by another build of the metrics is never
/// reused.
pub fn build_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        std::env::current_exe()
            .and_then(std::fs::read)
            .map(|b| fnv1a(&b, 0xcbf2_9ce4_8422_2325))
            .unwrap_or(0)
    })
}

/// FNV-1a, 64-bit.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bytes that identify a model argument (the file, or the built-in weights).
pub fn model_bytes(model: &str) -> Result<Vec<u8>> {
    if model == crate::model::DEFAULT_MODEL {
        Ok(crate::model::DEFAULT_WEIGHTS.to_vec())
    } else {
        std::fs::read(model).with_context(|| format!("reading {model}"))
    }
}

/// Where sensitivity tables are cached: `$MIXPREC_CACHE`, else `$XDG_CACHE_HOME/mixprec`, else
/// `~/.cache/mixprec`, else `.mixprec-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MIXPREC_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("mixprec");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("mixprec");
    }
    PathBuf::from(".mixprec-cache")
}

/// How a sensitivity table was obtained.
pub struct SensitivityRun {
    /// The `[layer × option]` table (options `w<bits>`).
    pub table: SensitivityTable,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Seconds spent (0 when cached).
    pub seconds: f64,
}

/// The weight-option sensitivity table of `metric` on `samples` class-balanced calibration
/// images, read from / written to `cache` (keyed by a hash of the model bytes, metric, config,
/// data, options, granularity, samples, seed and the mixprec build).
pub fn sensitivity(
    s: &Session,
    metric: &str,
    config: &serde_json::Value,
    wbits: &[u32],
    samples: usize,
    cache: Option<&Path>,
) -> Result<SensitivityRun> {
    if samples == 0 {
        bail!("--samples must be at least 1");
    }
    let m = build_metric(metric, config)?;
    let labels: Vec<String> = wbits.iter().map(|b| format!("w{b}")).collect();
    let options = SensOption::parse_list(&labels.join(","), s.granularity)?;
    let key = {
        let mut h = fnv1a(&model_bytes(&s.model)?, 0xcbf2_9ce4_8422_2325);
        let desc = format!(
            "{metric}|{config}|{}|{}|{:?}|{samples}|{}|{:?}|{:016x}",
            s.data,
            labels.join(","),
            s.granularity,
            s.seed,
            s.scale,
            build_id()
        );
        h = fnv1a(desc.as_bytes(), h);
        format!("{metric}-{h:016x}.json")
    };
    let file = cache.map(|d| d.join(&key));
    if let Some(f) = &file {
        if let Some(t) = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| serde_json::from_str::<SensitivityTable>(&t).ok())
            .filter(|t| {
                t.layers.iter().eq(s.layers.iter().map(|l| &l.name))
                    && t.options == labels
                    && t.values.len() == t.layers.len()
                    && t.values.iter().all(|r| r.len() == labels.len())
            })
        {
            return Ok(SensitivityRun {
                table: t,
                cached: true,
                seconds: 0.0,
            });
        }
    }
    let t0 = std::time::Instant::now();
    // A fresh class-balanced draw from the whole calibration source (not only the calibration
    // images), like `mixprec sensitivity`.
    let sample_set = calibration_set(&s.data, s.scale, &s.test, s.test.n, samples, s.seed)?.0;
    let ctx = SensCtx::new(&s.exec, &sample_set, options, 32, s.seed)?;
    let table = m
        .compute(&ctx)
        .with_context(|| format!("computing the {metric} sensitivity of {}", s.model))?;
    if table
        .values
        .iter()
        .all(|r| r.iter().all(|v| *v == 0.0 || !v.is_finite()))
    {
        bail!(
            "the {metric} sensitivity of every layer is zero or not finite on these {} samples, so it cannot rank layers (for Hessian metrics this happens when the model is so confident that its softmax saturates and the Hessian underflows in f32); try more --samples, another --seed, or another --metric such as output-mse or kl",
            sample_set.n
        );
    }
    if let Some(f) = &file {
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the cache folder {}", dir.display()))?;
        }
        mixprec_graph::write_atomic(f, serde_json::to_string(&table)?.as_bytes())
            .with_context(|| format!("writing the cache file {}", f.display()))?;
    }
    Ok(SensitivityRun {
        table,
        cached: false,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One `--budget` as given and as resolved against the model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BudgetSpec {
    /// The text given (`size=25%`).
    pub text: String,
    /// The bounded cost.
    pub cost: CostKind,
    /// Limit on the quantized layers' cost, in the table's unit.
    pub max: f64,
    /// A readable statement of the budget.
    pub describe: String,
}

/// Costs of the model that do not depend on the allocation, used to resolve budgets.
pub struct Reference {
    /// Bits of the parameters that stay float.
    pub rest_bits: f64,
    /// Size in bits of the whole float model.
    pub float_bits: f64,
    /// BOPs of the float model (MACs × 32 × 32).
    pub float_bops: f64,
    /// Latency of the float layers from the LUT (`w32a32`), when present.
    pub float_latency: Option<f64>,
}

fn parse_amount(v: &str, what: &str) -> Result<f64> {
    let v = v.trim();
    let (num, mult) = [
        ("kb", 8e3),
        ("mb", 8e6),
        ("kib", 8192.0),
        ("mib", 8.0 * 1048576.0),
        ("b", 8.0),
        ("k", 1e3),
        ("m", 1e6),
        ("g", 1e9),
        ("ms", 1.0),
    ]
    .iter()
    .filter(|(suffix, _)| v.to_ascii_lowercase().ends_with(suffix))
    .max_by_key(|(suffix, _)| suffix.len())
    .map(|(suffix, m)| (&v[..v.len() - suffix.len()], *m))
    .unwrap_or((v, 1.0));
    let x: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x > 0.0)
        .with_context(|| format!("--budget {what}={v}: not a positive number"))?;
    Ok(x * mult)
}

/// Parses one `--budget`: `size=25%` (of the float model), `size=40KB`, `wbits=3` (the size of
/// the model with every layer at 3-bit weights), `bops=25%`, `bops=1.5G`, `latency=2ms` or
/// `latency=80%` (of the float latency in the LUT).
pub fn parse_budget(
    text: &str,
    infos: &[LayerInfo],
    size_model: &dyn mixprec_alloc::CostModel,
    abits: u32,
    r: &Reference,
) -> Result<BudgetSpec> {
    let (key, val) = text.split_once('=').with_context(|| {
        format!(
            "--budget {text}: expected KEY=VALUE, e.g. size=25%, wbits=3, bops=30%, latency=2ms"
        )
    })?;
    let pct = val.trim().strip_suffix('%').map(|p| {
        p.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
            .with_context(|| format!("--budget {text}: not a positive percentage"))
    });
    let spec = |cost: CostKind, max: f64, describe: String| BudgetSpec {
        text: text.to_string(),
        cost,
        max,
        describe,
    };
    match key.trim() {
        "size" => {
            let total = match pct {
                Some(p) => p? / 100.0 * r.float_bits,
                None => parse_amount(val, key)?,
            };
            Ok(spec(
                CostKind::ModelSize,
                total - r.rest_bits,
                format!("model size ≤ {} ({text})", human_bytes(total / 8.0)),
            ))
        }
        "wbits" | "avg-bits" => {
            let b: u32 = val
                .trim()
                .parse()
                .ok()
                .filter(|b| (2..=16).contains(b))
                .with_context(|| format!("--budget {text}: weight bits must be 2..=16"))?;
            let t = size_model.table(infos, &[BitOption::new(b, abits)])?;
            let layers: f64 = (0..infos.len()).map(|i| t.get(i, 0)).sum();
            Ok(spec(
                CostKind::ModelSize,
                layers,
                format!(
                    "model size ≤ {} (= every layer at {b}-bit weights)",
                    human_bytes((layers + r.rest_bits) / 8.0)
                ),
            ))
        }
        "bops" => {
            let max = match pct {
                Some(p) => p? / 100.0 * r.float_bops,
                None => parse_amount(val, key)?,
            };
            Ok(spec(
                CostKind::Bops,
                max,
                format!("BOPs ≤ {} ({text})", crate::cmd::si(max as u64)),
            ))
        }
        "latency" => {
            let max = match pct {
                Some(p) => {
                    let f = r.float_latency.with_context(|| {
                        format!("--budget {text}: the latency LUT has no w32a32 (float) entries to take a percentage of; give milliseconds")
                    })?;
                    p? / 100.0 * f
                }
                None => parse_amount(val, key)?,
            };
            Ok(spec(
                CostKind::Latency,
                max,
                format!("latency ≤ {max:.3} ms ({text})"),
            ))
        }
        k => bail!("--budget {text}: unknown budget '{k}'; use size, wbits, bops or latency"),
    }
}

/// Bytes as `12.3 KB`.
pub fn human_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// The allocation problem of a session: weight options `wbits` at the session's activation
/// bits, the sensitivity table, size and BOPs tables (+ latency from `lut`), and budgets.
pub struct ProblemSetup {
    /// The problem.
    pub problem: AllocationProblem,
    /// The budgets as resolved.
    pub budgets: Vec<BudgetSpec>,
    /// Model-wide reference costs.
    pub reference: Reference,
}

/// Builds the allocation problem (HAWQ-V3 Eq. 26) of a session; budgets that no choice of
/// the options can meet are an error stating the smallest achievable cost.
pub fn build_problem(
    s: &Session,
    table: Option<&SensitivityTable>,
    wbits: &[u32],
    budgets: &[String],
    lut: Option<&LatencyLut>,
    fix_ends: bool,
) -> Result<ProblemSetup> {
    let infos = s.layer_infos()?;
    let abits = s.activation.bits as u32;
    let options: Vec<BitOption> = wbits.iter().map(|&b| BitOption::new(b, abits)).collect();
    // Without a table (checking budgets before the sensitivity pass) every option scores 0.
    let sens = match table {
        Some(t) => Table::from_rows(t.values.clone())
            .context("the sensitivity table is not rectangular")?,
        None => Table::filled(infos.len(), options.len(), 0.0),
    };
    let mut p = AllocationProblem::new(infos.clone(), options.clone(), sens);
    let size_model = cost_model(
        "model-size",
        &serde_json::json!({
            "zero_point_bits": 0,
            "per_channel": s.granularity == Granularity::Channel,
        }),
    )?;
    p.set_cost(CostKind::ModelSize, size_model.table(&infos, &options)?);
    let bops = cost_model("bops", &serde_json::Value::Null)?;
    p.set_cost(CostKind::Bops, bops.table(&infos, &options)?);
    let mut float_latency = None;
    if let Some(lut) = lut {
        let lat = cost_model("latency", &serde_json::json!({ "inline": lut }))?;
        p.set_cost(CostKind::Latency, lat.table(&infos, &options)?);
        let f: Option<f64> = infos
            .iter()
            .map(|l| {
                lut.layers
                    .get(&l.name)
                    .and_then(|m| m.get("w32a32"))
                    .copied()
            })
            .sum();
        float_latency = f;
    }
    let rest = s.unquantized_params(&infos);
    let weights: u64 = infos.iter().map(|l| l.params).sum();
    let reference = Reference {
        rest_bits: 32.0 * rest as f64,
        float_bits: 32.0 * (weights + rest) as f64,
        float_bops: infos.iter().map(|l| l.macs as f64 * 1024.0).sum(),
        float_latency,
    };
    let mut specs = Vec::new();
    for b in budgets {
        let spec = parse_budget(b, &infos, size_model.as_ref(), abits, &reference)?;
        if spec.cost == CostKind::Latency && lut.is_none() {
            bail!("--budget {b}: a latency budget needs --lut FILE (measure one with `mixprec profile`)");
        }
        if let Some(t) = p.cost_table(&spec.cost) {
            let least = spec.cost.combine(layer_extremes(&p, t, false));
            if least > spec.max * (1.0 + mixprec_alloc::BUDGET_RTOL) {
                let smallest = match spec.cost {
                    CostKind::ModelSize => {
                        let b = least + reference.rest_bits;
                        format!(
                            "{} ({:.1} % of the float model)",
                            human_bytes(b / 8.0),
                            100.0 * b / reference.float_bits
                        )
                    }
                    CostKind::Bops => format!(
                        "{} BOPs ({:.2} % of float)",
                        crate::cmd::si(least as u64),
                        100.0 * least / reference.float_bops
                    ),
                    _ => format!("{least:.4}"),
                };
                bail!(
                    "--budget {b} cannot be met: the smallest achievable with options {} is {smallest}; raise the budget or add lower-bit options",
                    options.iter().map(|o| o.label()).collect::<Vec<_>>().join(",")
                );
            }
        }
        p.budgets.push(Budget {
            cost: spec.cost.clone(),
            max: spec.max,
        });
        specs.push(spec);
    }
    if fix_ends && infos.len() > 2 {
        let top = options.len() - 1;
        p.fixed.push((0, top));
        p.fixed.push((infos.len() - 1, top));
    }
    p.validate()?;
    Ok(ProblemSetup {
        problem: p,
        budgets: specs,
        reference,
    })
}

/// Allocators that need per-layer measurements besides the sensitivity table.
pub const NEEDS_EXTRAS: &[&str] = &["aq", "pdb", "hybrid-net"];

/// Measures what the heuristic allocators read from `LayerInfo::extra` — AQ's p_k and t_k
/// (§3.2.1 Eq. 18), PDB's separability (§3.2.2 Eq. 19) and Hybrid-Net's PCA significance
/// (§3.2.4) — for those of `allocators` that need them, on `samples` calibration-source images.
pub fn add_layer_extras(
    s: &Session,
    p: &mut AllocationProblem,
    allocators: &[String],
    samples: usize,
) -> Result<()> {
    let wants = |n: &str| allocators.iter().any(|a| a == n);
    if !NEEDS_EXTRAS.iter().any(|n| wants(n)) {
        return Ok(());
    }
    use mixprec_exec::sensitivity::{aq_noise, pca_significance, separability};
    let sample_set = calibration_set(&s.data, s.scale, &s.test, s.test.n, samples, s.seed)?.0;
    let options = SensOption::parse_list("w8", s.granularity)?;
    let ctx = SensCtx::new(&s.exec, &sample_set, options, 32, s.seed)?;
    if wants("aq") {
        let stage = crate::progress::stage("measuring AQ p_k and t_k");
        let q = aq_noise::aq_quantities(&ctx).context("measuring AQ's p_k and t_k")?;
        stage.finish_and_clear();
        for (l, (pk, tk)) in p.layers.iter_mut().zip(q) {
            l.extra.aq_p = Some(pk);
            l.extra.aq_t = Some(tk);
        }
    }
    if wants("pdb") {
        let stage = crate::progress::stage("measuring PDB separability");
        let sep = separability::layer_separability(&ctx, 128).context("measuring separability")?;
        stage.finish_and_clear();
        for (l, v) in p.layers.iter_mut().zip(sep) {
            l.extra.separability = Some(v);
        }
    }
    if wants("hybrid-net") {
        let stage = crate::progress::stage("measuring PCA significance");
        let (pca, _) = pca_significance::pca_components(&ctx, &pca_significance::Config::default())
            .context("measuring PCA significance")?;
        stage.finish_and_clear();
        for (l, v) in p.layers.iter_mut().zip(pca) {
            l.extra.significant = Some(v.significant);
        }
    }
    Ok(())
}

/// Per layer, the cost in `t` of its cheapest (or, with `dearest`, its most expensive)
/// allowed option.
fn layer_extremes(p: &AllocationProblem, t: &Table, dearest: bool) -> Vec<f64> {
    (0..p.layers.len())
        .map(|l| {
            let costs = (0..p.options.len())
                .filter(|&o| p.mask_allows(l, o))
                .map(|o| t.get(l, o));
            if dearest {
                costs.fold(f64::NEG_INFINITY, f64::max)
            } else {
                costs.fold(f64::INFINITY, f64::min)
            }
        })
        .collect()
}

/// The weight bits per layer of a choice.
pub fn choice_bits(p: &AllocationProblem, choice: &[usize]) -> Vec<u32> {
    choice.iter().map(|&o| p.options[o].weight_bits).collect()
}

/// One solved and evaluated policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluated {
    /// Label (allocator, budget point or uniform option).
    pub label: String,
    /// Weight bits per layer.
    pub weight_bits: Vec<u32>,
    /// Summed sensitivity.
    pub objective: f64,
    /// Every cost of the problem for this choice (layers only; size adds the float rest).
    pub costs: Vec<(CostKind, f64)>,
    /// Top-1 accuracy in %.
    pub accuracy: f64,
    /// Weight bits per element, averaged over the quantized layers' weights.
    pub avg_bits: f64,
    /// Stored size in bytes: the layers' weights, scales and the parameters that stay float.
    pub size_bytes: f64,
}

/// Total of cost `kind` for a choice.
pub fn total_cost(p: &AllocationProblem, kind: &CostKind, choice: &[usize]) -> Option<f64> {
    let t = p.cost_table(kind)?;
    Some(kind.combine(choice.iter().enumerate().map(|(l, &o)| t.get(l, o))))
}

/// All costs of a choice.
pub fn all_costs(p: &AllocationProblem, choice: &[usize]) -> Vec<(CostKind, f64)> {
    p.costs
        .iter()
        .filter_map(|(k, _)| total_cost(p, k, choice).map(|v| (k.clone(), v)))
        .collect()
}

/// Solves `p` with a registered allocator (`config` as JSON, `null` = defaults).
pub fn solve(
    p: &AllocationProblem,
    name: &str,
    config: &serde_json::Value,
    seed: u64,
) -> Result<(mixprec_alloc::Allocation, f64)> {
    let a = allocator(name, config)?;
    let t0 = std::time::Instant::now();
    let mut ctx = SolveCtx::new(seed);
    let r = a
        .solve(p, &mut ctx)
        .with_context(|| format!("allocator {name}"))?;
    Ok((r, t0.elapsed().as_secs_f64()))
}

/// The allocator's accuracy-vs-cost front along the first budget's cost: `points` budgets
/// evenly spaced from the smallest achievable cost to the cost of every layer at the highest
/// option, each solved by `name` (other budgets stay) — distinct choices only, cheapest first.
pub fn frontier_choices(
    p: &AllocationProblem,
    name: &str,
    config: &serde_json::Value,
    seed: u64,
    points: usize,
) -> Result<Vec<Vec<usize>>> {
    let Some(axis) = p.budgets.first().map(|b| b.cost.clone()) else {
        return Ok(Vec::new());
    };
    let t = p.cost_table(&axis).context("no table for the front axis")?;
    let lo: f64 = layer_extremes(p, t, false).iter().sum();
    let hi: f64 = layer_extremes(p, t, true).iter().sum();
    let mut out: Vec<Vec<usize>> = Vec::new();
    let n = points.max(2);
    for i in 0..n {
        let budget = lo + (hi - lo) * i as f64 / (n - 1) as f64;
        let mut q = p.clone();
        q.budgets[0].max = budget * (1.0 + 1e-12);
        if let Ok((a, _)) = solve(&q, name, config, seed) {
            if !out.contains(&a.choice) {
                out.push(a.choice);
            }
        }
    }
    out.sort_by(|a, b| {
        let ca = total_cost(p, &axis, a).unwrap_or(0.0);
        let cb = total_cost(p, &axis, b).unwrap_or(0.0);
        ca.total_cmp(&cb)
    });
    Ok(out)
}

/// Measures the accuracy of a choice.
pub fn evaluate_choice(
    s: &Session,
    p: &AllocationProblem,
    choice: &[usize],
    label: &str,
    rest_bits: f64,
) -> Result<Evaluated> {
    let bits = choice_bits(p, choice);
    let acc = s.accuracy(Some(&s.policy(&bits)), label)?;
    Ok(Evaluated {
        label: label.to_string(),
        avg_bits: average_bits(p, &bits),
        weight_bits: bits,
        objective: choice
            .iter()
            .enumerate()
            .map(|(l, &o)| p.sensitivity.get(l, o))
            .sum(),
        costs: all_costs(p, choice),
        accuracy: acc,
        size_bytes: (total_cost(p, &CostKind::ModelSize, choice).unwrap_or(0.0) + rest_bits) / 8.0,
    })
}

/// Average weight bits of a choice, weighted by weight elements.
pub fn average_bits(p: &AllocationProblem, bits: &[u32]) -> f64 {
    let n: u64 = p.layers.iter().map(|l| l.params).sum();
    let b: u64 = p
        .layers
        .iter()
        .zip(bits)
        .map(|(l, &b)| l.params * b as u64)
        .sum();
    b as f64 / n.max(1) as f64
}

/// The policy lowered onto the integer-only engine (BN folded, dyadic requantization, packed
/// weights; survey §3.3 Eq. 24–25), with the extra tensor ranges measured on the calibration
/// images.
pub fn lower_policy(s: &Session, policy: &Policy) -> Result<mixprec_engine::QuantModel> {
    let (images, _) = s.calib.batch(0, s.calib.n);
    let model =
        mixprec_engine::lower_with_data(s.exec.graph(), policy, &s.ranges, images, s.calib.n)?;
    Ok(model)
}

/// Writes `policy` as a QDQ ONNX model at `path` and says which form it has. The full form (Q/DQ
/// on every activation tensor, calibrated on the session's images) is the one ONNX Runtime fuses
/// into integer kernels; when the graph cannot take it, the inputs-only form (Q/DQ on weights and
/// layer inputs) is written instead and the reason is returned.
pub fn save_qdq(
    s: &Session,
    policy: &Policy,
    ranges: &ActivationRanges,
    int4: bool,
    path: &Path,
) -> Result<Option<String>> {
    use mixprec_exec::qdq::{self, QdqOptions};
    let opts = QdqOptions { int4 };
    let full = qdq::qdq_plan(s.exec.graph(), policy)
        .map_err(anyhow::Error::from)
        .and_then(|plan| {
            let own = plan.own_range_tensors();
            let tensors = qdq::calibrate_tensors(&s.exec, &s.calib, &s.observer, &own)?;
            qdq::save_qdq_full(s.exec.graph(), policy, ranges, &tensors, opts, path)?;
            Ok(())
        });
    match full {
        Ok(()) => Ok(None),
        Err(e) => {
            qdq::save_qdq(s.exec.graph(), policy, ranges, opts, path)
                .with_context(|| format!("exporting {}", path.display()))?;
            Ok(Some(format!(
                "{} has Q/DQ on weights and layer inputs only, which ONNX Runtime runs in float \
                 (the fully quantized form failed: {e:#})",
                path.display()
            )))
        }
    }
}

/// Top-1 accuracy (%) of an integer-engine model on the session's test images.
pub fn engine_accuracy(s: &Session, model: &mixprec_engine::QuantModel) -> Result<f64> {
    let classes: usize = model.output_shape().iter().product::<usize>().max(1);
    let pb = bar(s.test.n as u64, "integer engine");
    let mut correct = 0usize;
    let mut start = 0;
    let batch = s.batch.clamp(1, 64);
    while start < s.test.n {
        let len = batch.min(s.test.n - start);
        let (x, y) = s.test.batch(start, len);
        let out = model
            .run(x, len)
            .with_context(|| format!("running the integer engine on {}", s.data))?;
        for (i, &label) in y.iter().enumerate() {
            let row = &out[i * classes..(i + 1) * classes];
            let pred = mixprec_data::argmax(row);
            correct += usize::from(pred == Some(label as usize));
        }
        start += len;
        pb.set_position(start as u64);
    }
    pb.finish_and_clear();
    Ok(100.0 * correct as f64 / s.test.n.max(1) as f64)
}

/// Writes `bytes` to `dir/name` atomically.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let p = dir.join(name);
    mixprec_graph::write_atomic(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_options_parse() {
        assert_eq!(parse_amount("40KB", "size").unwrap(), 320e3);
        assert_eq!(parse_amount("1.5G", "bops").unwrap(), 1.5e9);
        assert_eq!(parse_amount("2ms", "latency").unwrap(), 2.0);
        assert_eq!(parse_amount("100", "size").unwrap(), 100.0);
        assert!(parse_amount("-3", "size").is_err());
        assert!(parse_amount("abc", "size").is_err());
        assert_eq!(parse_weight_options("w8,w2,w4,w2").unwrap(), vec![2, 4, 8]);
        assert!(parse_weight_options("w1").is_err() && parse_weight_options("").is_err());
    }

    #[test]
    fn fnv_is_the_reference_hash() {
        // FNV-1a 64 of "a" (reference value from the FNV specification).
        assert_eq!(fnv1a(b"a", 0xcbf2_9ce4_8422_2325), 0xaf63_dc4c_8601_ec8c);
    }
}
