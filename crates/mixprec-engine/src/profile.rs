//! Per-layer latency profiler: the measured latency look-up table of hardware-aware mixed
//! precision.
//!
//! Survey §4.4 (hardware awareness, guideline 1: measure latency on the target hardware rather
//! than using proxies such as BOPs) and §3.3 (HAWQ-V3, Yao et al., ICML 2021: the latency term
//! `L_j` of the ILP, Eq. 26, comes from a hand-measured table of every layer at every bit-width
//! on a T4 GPU). APQ (§3.4.4) builds the same kind of look-up table.
//!
//! For every layer of a graph (Conv, Gemm, MatMul with a constant weight) and every
//! (weight bits, activation bits) option, [`profile_layers`] builds the layer's real workload at
//! the given batch — random weights quantized to the option's bits and packed exactly as the
//! engine packs them, random quantized activations, the integer kernel, then dyadic
//! requantization of the `i32` accumulators back to `a`-bit unsigned activations (Eq. 24) — and
//! times it: warm-up runs, then rounds that run every option once each (interleaved, so slow
//! drifts of machine load hit all options alike) until the repetition count or the layer's time
//! box is reached; the reported time is the median. A float baseline (`w32a32`) runs the same
//! layer with `f32` im2col + the `gemm` crate's SGEMM (the one the float executor uses), or a
//! direct depthwise loop, plus the bias.
//!
//! Kernel choice: what [`crate::QuantModel::run`] does with the layer.
//! - On AVX-512 VNNI CPUs (unless [`ProfileConfig::generic`]) the engine runs its fast executor
//!   ([`crate::fast`]), and so does the profiler: the same padded channels-last input, the
//!   implicit-GEMM `vpdpbusd` kernel with the requantization fused into its epilogue, the same
//!   thread split. Every weight width 2..=8, int4 included, runs that int8 kernel, so all
//!   integer options of a layer cost the same and report [`KernelKind::Int8`].
//!   Depthwise convolutions (one filter per channel) run the executor's depthwise plan: the
//!   channels-last AVX-512 kernel vectorised over channels (`kernels/avx512_fused.rs`,
//!   `depthwise`) with the same fused requantization, zero-point padding and thread split, and
//!   report [`KernelKind::Int8`] too. As in the engine, a depthwise layer whose sums could
//!   saturate `i32` (so no fused epilogue), and any other grouped convolution, run the
//!   reference kernels below.
//!
//! Elsewhere (the reference executor; see [`kernel_for`], what
//! `crate::model::LayerWeights::new` prepares):
//! - 4-bit weights run the int4 kernel ([`PackedI4`], two weights per byte);
//! - every other width 2..=8 (2, 3, 5, 6, 7, 8) is stored as int8 and runs the int8 kernel
//!   ([`PackedI8`]) — the engine has no dedicated 2- or 3-bit kernel, so `w2a8` costs what
//!   `w8a8` costs;
//! - depthwise convolutions run the direct depthwise kernel for every weight width;
//! - activations of 2..=8 bits are all stored as `u8` and run the same kernel; the activation
//!   width only changes the requantization clamp, so options that differ only in activation bits
//!   show (up to noise) equal times.
//!
//! Complexity: per layer and option `O(reps · MACs)` time, `O(weights + activations + im2col
//! columns)` memory; the number of rounds is capped by [`ProfileConfig::time_box_ms`].

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mixprec_graph::{infer, input_shapes_for_batch, Graph, GraphError, Layer, LayerKind, Op};
use serde::{Deserialize, Serialize};

use crate::fast::FusedLayer;
use crate::kernels::gemm::{gemm_with, PackedWeights, PARALLEL_THRESHOLD};
use crate::kernels::{
    conv2d_with, requantize, Backend, Conv2dParams, ConvWeights, Dyadic, KernelError, OutputRange,
    PackedI4, PackedI8,
};

/// LUT key of the float baseline.
pub const FP32_KEY: &str = "w32a32";

/// Errors of the profiler; each names the option, layer or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// An option the integer engine cannot run.
    #[error("option w{w}a{a}: {reason}")]
    UnsupportedOption {
        /// Weight bits.
        w: u32,
        /// Activation bits.
        a: u32,
        /// Why.
        reason: String,
    },
    /// An option string that does not parse.
    #[error("option '{0}' is not of the form w<bits>a<bits> (e.g. w4a8) or fp32")]
    BadOption(String),
    /// A layer whose shape the profiler cannot build a workload for.
    #[error("layer '{layer}': {reason}")]
    UnsupportedLayer {
        /// Layer name.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A kernel rejected the workload of a layer.
    #[error("layer '{layer}' ({what}): {source}")]
    Kernel {
        /// Layer name.
        layer: String,
        /// Which kernel / option.
        what: String,
        /// The kernel error.
        #[source]
        source: KernelError,
    },
    /// Shape inference of the graph failed.
    #[error("shape inference for profiling: {0}")]
    Graph(#[from] GraphError),
    /// An invalid [`ProfileConfig`].
    #[error("invalid profile configuration: {0}")]
    Config(String),
}

/// Result alias of the profiler.
pub type Result<T> = std::result::Result<T, ProfileError>;

/// Settings of [`profile_layers`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Batch size of the profiled workload (≥ 1).
    pub batch: usize,
    /// Untimed warm-up runs per layer and option.
    pub warmup: usize,
    /// Timed repetitions per layer and option (≥ 1); the median is reported.
    pub reps: usize,
    /// Time box per layer (all options together), in ms: rounds stop once it is spent (at least
    /// one timed round always runs).
    pub time_box_ms: f64,
    /// Threads the kernels may use (`0` = all cores).
    pub threads: usize,
    /// Also time the float baseline (key [`FP32_KEY`]).
    pub fp32: bool,
    /// Run the portable generic integer kernels instead of the fastest available ones.
    pub generic: bool,
    /// Seed of the random weights and activations.
    pub seed: u64,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            batch: 1,
            warmup: 3,
            reps: 20,
            time_box_ms: 2000.0,
            threads: 0,
            fp32: true,
            generic: false,
            seed: 0,
        }
    }
}

/// Which kernel family runs an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// `i8` weights (widths 2, 3, 5..=8), [`PackedI8`].
    Int8,
    /// Two 4-bit weights per byte, [`PackedI4`].
    Int4,
    /// `f32` SGEMM / direct depthwise loop.
    Fp32,
}

/// The kernel the engine runs for `w_bits`-bit weights and `a_bits`-bit activations (see the
/// module docs); `(32, 32)` is the float baseline. Other combinations are not executable by the
/// integer engine and return an error.
pub fn kernel_for(w_bits: u32, a_bits: u32) -> Result<KernelKind> {
    match (w_bits, a_bits) {
        (32, 32) => Ok(KernelKind::Fp32),
        (2..=8, 2..=8) if w_bits == 4 => Ok(KernelKind::Int4),
        (2..=8, 2..=8) => Ok(KernelKind::Int8),
        _ => Err(ProfileError::UnsupportedOption {
            w: w_bits,
            a: a_bits,
            reason: "the integer engine runs 2..=8-bit weights with 2..=8-bit activations; \
                     w32a32 is the float baseline"
                .to_string(),
        }),
    }
}

/// The LUT key of an option (`w4a8`), matching the allocator's option labels.
pub fn option_key(w_bits: u32, a_bits: u32) -> String {
    format!("w{w_bits}a{a_bits}")
}

/// Parses a comma-separated option list such as `w2a8,w4a8,w8a8` (`fp32` = `w32a32`).
pub fn parse_options(s: &str) -> Result<Vec<(u32, u32)>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if t.eq_ignore_ascii_case("fp32") {
                return Ok((32, 32));
            }
            let bad = || ProfileError::BadOption(t.to_string());
            let rest = t.strip_prefix('w').ok_or_else(bad)?;
            let (w, a) = rest.split_once('a').ok_or_else(bad)?;
            let w: u32 = w.parse().map_err(|_| bad())?;
            let a: u32 = a.parse().map_err(|_| bad())?;
            kernel_for(w, a)?;
            Ok((w, a))
        })
        .collect()
}

/// Machine and settings a profile was measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileMeta {
    /// CPU model (`model name` of `/proc/cpuinfo`, or the architecture when unknown).
    pub cpu: String,
    /// Whether the CPU has AVX2.
    pub avx2: bool,
    /// Whether the CPU has AVX-512 VNNI (the int8 kernels use it when present).
    pub avx512_vnni: bool,
    /// Integer backend used (`avx512vnni`, `avx2` or `generic`).
    pub backend: String,
    /// Threads the kernels were allowed to use.
    pub threads: usize,
    /// Profiled batch size.
    pub batch: usize,
    /// Warm-up runs per layer and option.
    pub warmup: usize,
    /// Requested timed repetitions per layer and option.
    pub reps: usize,
    /// Time box per layer in ms.
    pub time_box_ms: f64,
    /// UTC time of the measurement, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
    /// mixprec version.
    pub version: String,
}

/// Timing of one layer at one option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionTiming {
    /// Median time in ms.
    pub ms: f64,
    /// Fastest run in ms.
    pub min_ms: f64,
    /// Timed repetitions actually run (fewer than requested when the time box ran out).
    pub reps: usize,
    /// Kernel family that ran.
    pub kernel: KernelKind,
}

/// Measured times of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerProfile {
    /// Layer (node) name.
    pub name: String,
    /// ONNX operator.
    pub op: String,
    /// Workload shape, e.g. `im2col conv 1x16x32x32 * 32x16x3x3 s2` or `gemm M=1 N=10 K=64`.
    pub workload: String,
    /// Multiply-accumulates of the workload at the profiled batch.
    pub macs: u64,
    /// Option key (`w4a8`, [`FP32_KEY`]) → timing.
    pub times: BTreeMap<String, OptionTiming>,
}

/// A latency look-up table in the format of the allocator's `latency` cost model:
/// `{ "layers": { "<layer>": { "w4a8": ms, … } } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyLutFile {
    /// Layer name → option key → milliseconds.
    pub layers: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Result of [`profile_layers`]: per-layer timings plus how they were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyProfile {
    /// Machine and settings.
    pub meta: ProfileMeta,
    /// Option keys in the order they were requested (the float baseline last).
    pub options: Vec<String>,
    /// One entry per layer, in graph order.
    pub layers: Vec<LayerProfile>,
}

impl LatencyProfile {
    /// The LUT (median ms per layer and option) for the `latency` cost model.
    pub fn lut(&self) -> LatencyLutFile {
        LatencyLutFile {
            layers: self
                .layers
                .iter()
                .map(|l| {
                    let row = l.times.iter().map(|(k, t)| (k.clone(), t.ms)).collect();
                    (l.name.clone(), row)
                })
                .collect(),
        }
    }

    /// The LUT as pretty JSON.
    pub fn lut_json(&self) -> String {
        // Serialising maps of strings to finite floats cannot fail.
        serde_json::to_string_pretty(&self.lut()).unwrap_or_default()
    }

    /// Sum over layers of the median time of option `key`, or `None` if a layer lacks it.
    pub fn total_ms(&self, key: &str) -> Option<f64> {
        self.layers
            .iter()
            .map(|l| l.times.get(key).map(|t| t.ms))
            .sum()
    }
}

/// Profiles every layer of `graph` at every `(weight bits, activation bits)` option (plus the
/// float baseline when [`ProfileConfig::fp32`] is set). See the module docs. The integer
/// kernels' process-wide thread cap ([`crate::kernels::set_max_threads`]) is set to
/// [`ProfileConfig::threads`] while it runs and restored afterwards.
pub fn profile_layers(
    graph: &Graph,
    options: &[(u32, u32)],
    cfg: &ProfileConfig,
) -> Result<LatencyProfile> {
    profile_layers_with(graph, options, cfg, &mut |_, _, _| {})
}

/// [`profile_layers`] calling `progress(done, total, layer)` before each layer.
pub fn profile_layers_with(
    graph: &Graph,
    options: &[(u32, u32)],
    cfg: &ProfileConfig,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<LatencyProfile> {
    check_config(cfg)?;
    let mut opts: Vec<(u32, u32)> = Vec::new();
    for &(w, a) in options {
        kernel_for(w, a)?;
        if (w, a) != (32, 32) && !opts.contains(&(w, a)) {
            opts.push((w, a));
        }
    }
    if cfg.fp32 || options.contains(&(32, 32)) {
        opts.push((32, 32));
    }
    if opts.is_empty() {
        return Err(ProfileError::Config(
            "no options to profile: give at least one option or enable fp32".to_string(),
        ));
    }
    let backend = if cfg.generic {
        Backend::Generic
    } else {
        Backend::best()
    };
    let layers = graph.layers();
    let workloads = workloads(graph, &layers, cfg.batch)?;

    // The kernels' thread cap is process-wide: set it for the measurement, restore it after
    // ("all cores" is restored as 0 so that it keeps following the machine).
    let hw = std::thread::available_parallelism().map_or(1, |n| n.get());
    let previous_threads = match crate::kernels::max_threads() {
        n if n == hw => 0,
        n => n,
    };
    crate::kernels::set_max_threads(cfg.threads);
    let threads = crate::kernels::max_threads();
    let result: Result<Vec<LayerProfile>> = (|| {
        let mut rng = SplitMix(cfg.seed);
        let mut out = Vec::with_capacity(layers.len());
        for (i, (layer, wl)) in layers.iter().zip(&workloads).enumerate() {
            progress(i, layers.len(), &layer.name);
            let mut benches = opts
                .iter()
                .map(|&(w, a)| Bench::new(&layer.name, wl, w, a, backend, threads, &mut rng))
                .collect::<Result<Vec<_>>>()?;
            let timings = time_layer(&layer.name, &mut benches, cfg)?;
            out.push(LayerProfile {
                name: layer.name.clone(),
                op: graph.nodes[layer.node].op.onnx_name().to_string(),
                workload: wl.describe(),
                macs: wl.macs(),
                times: opts
                    .iter()
                    .zip(benches.iter().zip(timings))
                    .map(|(&(w, a), (b, t))| {
                        let timing = OptionTiming {
                            ms: t.median_ms,
                            min_ms: t.min_ms,
                            reps: t.reps,
                            kernel: b.kind,
                        };
                        (option_key(w, a), timing)
                    })
                    .collect(),
            });
        }
        progress(layers.len(), layers.len(), "");
        Ok(out)
    })();
    crate::kernels::set_max_threads(previous_threads);
    let layers = result?;

    Ok(LatencyProfile {
        meta: ProfileMeta {
            cpu: cpu_model(),
            avx2: Backend::Avx2.is_available(),
            avx512_vnni: avx512_vnni(),
            backend: match backend {
                Backend::Avx2 => "avx2",
                Backend::Avx512Vnni => "avx512vnni",
                Backend::Generic => "generic",
            }
            .to_string(),
            threads,
            batch: cfg.batch,
            warmup: cfg.warmup,
            reps: cfg.reps,
            time_box_ms: cfg.time_box_ms,
            date: utc_now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        options: opts.iter().map(|&(w, a)| option_key(w, a)).collect(),
        layers,
    })
}

fn check_config(cfg: &ProfileConfig) -> Result<()> {
    if cfg.batch == 0 {
        return Err(ProfileError::Config("batch must be >= 1".to_string()));
    }
    if cfg.reps == 0 {
        return Err(ProfileError::Config("reps must be >= 1".to_string()));
    }
    if !cfg.time_box_ms.is_finite() || cfg.time_box_ms <= 0.0 {
        return Err(ProfileError::Config(format!(
            "time_box_ms = {} must be a positive number of milliseconds",
            cfg.time_box_ms
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

/// The computation of one layer at the profiled batch.
#[derive(Debug, Clone, PartialEq)]
enum Workload {
    /// 2-D convolution (1-D convolutions are mapped to height 1).
    Conv {
        input: [usize; 4],
        weight: [usize; 4],
        params: Conv2dParams,
        out_hw: [usize; 2],
    },
    /// `C[m, n] = A[m, k] · W[n, k]ᵀ`.
    Gemm { m: usize, n: usize, k: usize },
}

impl Workload {
    fn macs(&self) -> u64 {
        match *self {
            Workload::Conv {
                input,
                weight,
                out_hw,
                ..
            } => {
                let [n, ..] = input;
                let [cout, cin_g, kh, kw] = weight;
                (n * cout * out_hw[0] * out_hw[1] * cin_g * kh * kw) as u64
            }
            Workload::Gemm { m, n, k } => (m * n * k) as u64,
        }
    }

    fn is_depthwise(&self) -> bool {
        matches!(self, Workload::Conv { weight, params, .. } if weight[1] == 1 && params.groups > 1)
    }

    fn describe(&self) -> String {
        let dims = |d: &[usize]| {
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        match self {
            Workload::Conv {
                input,
                weight,
                params,
                ..
            } => {
                let kind = if self.is_depthwise() {
                    "depthwise"
                } else {
                    "im2col"
                };
                let mut s = format!("{kind} conv {} * {}", dims(input), dims(weight));
                if params.strides != [1, 1] {
                    s += &format!(" s{}", dims(&params.strides));
                }
                if params.groups > 1 && !self.is_depthwise() {
                    s += &format!(" g{}", params.groups);
                }
                s
            }
            Workload::Gemm { m, n, k } => {
                let kind = if *m == 1 { "gemv" } else { "gemm" };
                format!("{kind} M={m} N={n} K={k}")
            }
        }
    }
}

fn unsupported(layer: &str, reason: impl Into<String>) -> ProfileError {
    ProfileError::UnsupportedLayer {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

/// Workloads of all layers at `batch`. Shapes are inferred at the model's smallest batch (the
/// declared input shapes with symbolic dimensions set to 1); every layer's leading (batch)
/// extent is then scaled from the first input's batch dimension to `batch`, which also works
/// for models whose ONNX file fixes the batch (e.g. a Reshape to `[1, 256]`).
fn workloads(g: &Graph, layers: &[Layer], batch: usize) -> Result<Vec<Workload>> {
    let shapes = input_shapes_for_batch(g, 1)?;
    let base = shapes
        .first()
        .and_then(|s| s.first())
        .copied()
        .filter(|&b| b > 0)
        .unwrap_or(1);
    let inf = infer(g, &shapes)?;
    let scale = |layer: &str, rows: usize| -> Result<usize> {
        if !rows.is_multiple_of(base) {
            return Err(unsupported(
                layer,
                format!(
                    "its leading extent {rows} is not a multiple of the model's batch {base}, \
                     so it cannot be scaled to batch {batch}"
                ),
            ));
        }
        Ok(rows / base * batch)
    };
    layers
        .iter()
        .map(|l| {
            let node = &g.nodes[l.node];
            let name = l.name.as_str();
            let x_id = node
                .input(0)
                .ok_or_else(|| unsupported(name, "the node has no data input"))?;
            let x = inf.shape(g, x_id)?.to_vec();
            let w = g.initializers[&l.weight].shape.clone();
            match (&node.op, l.kind) {
                (Op::Conv { window, group }, LayerKind::Conv) => {
                    conv_workload(name, &x, &w, window, *group, &scale)
                }
                (
                    Op::Gemm {
                        trans_a, trans_b, ..
                    },
                    _,
                ) => {
                    if x.len() != 2 || w.len() != 2 {
                        return Err(unsupported(
                            name,
                            format!("Gemm needs 2-D operands, got input {x:?} and weight {w:?}"),
                        ));
                    }
                    let (m, k) = if *trans_a { (x[1], x[0]) } else { (x[0], x[1]) };
                    let (kw, n) = if *trans_b { (w[1], w[0]) } else { (w[0], w[1]) };
                    if k != kw {
                        return Err(unsupported(
                            name,
                            format!("Gemm input {x:?} does not fit weight {w:?}"),
                        ));
                    }
                    Ok(Workload::Gemm {
                        m: scale(name, m)?,
                        n,
                        k,
                    })
                }
                (Op::MatMul, _) => {
                    if w.len() != 2 || x.is_empty() {
                        return Err(unsupported(
                            name,
                            format!(
                                "MatMul is profiled only with a 2-D weight, got input {x:?} and \
                                 weight {w:?}"
                            ),
                        ));
                    }
                    let k = x[x.len() - 1];
                    if k != w[0] {
                        return Err(unsupported(
                            name,
                            format!("MatMul input {x:?} does not fit weight {w:?}"),
                        ));
                    }
                    let rows: usize = x[..x.len() - 1].iter().product();
                    let m = if x.len() == 1 { 1 } else { scale(name, rows)? };
                    Ok(Workload::Gemm { m, n: w[1], k })
                }
                (op, _) => Err(unsupported(
                    name,
                    format!("operator {} is not a profiled layer", op.onnx_name()),
                )),
            }
        })
        .collect()
}

fn conv_workload(
    name: &str,
    x: &[usize],
    w: &[usize],
    window: &mixprec_graph::Window,
    group: usize,
    scale: &dyn Fn(&str, usize) -> Result<usize>,
) -> Result<Workload> {
    if !matches!(x.len(), 3 | 4) || w.len() != x.len() {
        return Err(unsupported(
            name,
            format!("only 1-D and 2-D convolutions are profiled, got input {x:?} and weight {w:?}"),
        ));
    }
    let mut win = window.clone();
    if win.kernel.is_empty() {
        win.kernel = w[2..].to_vec();
    }
    let (begin, end, out) = win
        .resolve(&x[2..])
        .ok_or_else(|| unsupported(name, format!("window does not fit input {x:?}")))?;
    let get = |v: &[usize], i: usize| v.get(i).copied().unwrap_or(1);
    let n = scale(name, x[0])?;
    let (input, weight, params, out_hw) = if x.len() == 3 {
        (
            [n, x[1], 1, x[2]],
            [w[0], w[1], 1, w[2]],
            Conv2dParams {
                strides: [1, get(&win.strides, 0)],
                pads: [0, begin[0], 0, end[0]],
                dilations: [1, get(&win.dilations, 0)],
                groups: group,
            },
            [1, out[0]],
        )
    } else {
        (
            [n, x[1], x[2], x[3]],
            [w[0], w[1], w[2], w[3]],
            Conv2dParams {
                strides: [get(&win.strides, 0), get(&win.strides, 1)],
                pads: [begin[0], begin[1], end[0], end[1]],
                dilations: [get(&win.dilations, 0), get(&win.dilations, 1)],
                groups: group,
            },
            [out[0], out[1]],
        )
    };
    if group == 0 || input[1] != weight[1] * group || weight[0] % group != 0 {
        return Err(unsupported(
            name,
            format!("input {x:?} and weight {w:?} do not fit group = {group}"),
        ));
    }
    Ok(Workload::Conv {
        input,
        weight,
        params,
        out_hw,
    })
}

// ---------------------------------------------------------------------------------------------
// Benchmarks of one layer at one option
// ---------------------------------------------------------------------------------------------

/// Deterministic splitmix64 generator for the random weights and activations.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `[lo, hi]`.
    fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u64) as i32
    }

    /// Uniform float in `[-1, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

type RunFn = Box<dyn FnMut() -> std::result::Result<(), KernelError>>;

/// A prepared workload: data allocated and weights packed, `run` does one timed execution.
struct Bench {
    kind: KernelKind,
    what: String,
    run: RunFn,
}

impl Bench {
    fn new(
        layer: &str,
        wl: &Workload,
        w_bits: u32,
        a_bits: u32,
        backend: Backend,
        threads: usize,
        rng: &mut SplitMix,
    ) -> Result<Self> {
        let mut kind = kernel_for(w_bits, a_bits)?;
        // On AVX-512 VNNI CPUs `QuantModel::run` takes the fast executor, whose fused int8
        // kernel runs every weight width (int4 included).
        let fast =
            kind != KernelKind::Fp32 && backend == Backend::Avx512Vnni && backend.is_available();
        if fast {
            kind = KernelKind::Int8;
        }
        let what = format!("{} kernel, {}", option_key(w_bits, a_bits), kind_name(kind));
        let kerr = |source| ProfileError::Kernel {
            layer: layer.to_string(),
            what: what.clone(),
            source,
        };
        let run: RunFn = match (kind, wl) {
            (KernelKind::Fp32, _) => float_bench(wl, threads, rng),
            (
                _,
                &Workload::Conv {
                    input,
                    weight,
                    params,
                    out_hw,
                },
            ) => {
                let (wq, amax, bias, mults, range) = int_data(
                    layer,
                    weight.iter().product(),
                    weight[0],
                    w_bits,
                    a_bits,
                    rng,
                )?;
                let x: Vec<u8> = (0..input.iter().product::<usize>())
                    .map(|_| rng.int(0, amax) as u8)
                    .collect();
                // The executor's choice: the implicit-GEMM kernel for one group, the
                // channels-last depthwise kernel for one filter per channel.
                let fused = if fast {
                    FusedLayer::conv(
                        &wq,
                        weight,
                        &params,
                        input,
                        out_hw,
                        x.clone(),
                        0,
                        bias.clone(),
                        mults.clone(),
                        range,
                    )
                } else {
                    None
                };
                if let Some(mut fl) = fused {
                    return Bench::checked(
                        layer,
                        kind,
                        what,
                        Box::new(move || fl.run().map_err(KernelError::InvalidConv)),
                    );
                }
                if fast {
                    // Grouped layers (and depthwise ones the fused epilogue cannot take): the
                    // engine runs the reference kernels.
                    kind = kernel_for(w_bits, a_bits)?;
                }
                let cw = ConvWeights::new(&wq, weight, params.groups, w_bits).map_err(kerr)?;
                let shape3 = [input[0], weight[0], out_hw[0] * out_hw[1]];
                Box::new(move || {
                    let acc = conv2d_with(backend, &x, input, 0, &cw, &params)?;
                    let y = requantize::<u8>(&acc.data, shape3, Some(&bias), &mults, range)?;
                    black_box(y);
                    Ok(())
                })
            }
            (_, &Workload::Gemm { m, n, k }) => {
                let (wq, amax, bias, mults, range) =
                    int_data(layer, n * k, n, w_bits, a_bits, rng)?;
                let x: Vec<u8> = (0..m * k).map(|_| rng.int(0, amax) as u8).collect();
                let fused = if fast {
                    FusedLayer::gemm(&wq, n, k, m, x.clone(), bias.clone(), mults.clone(), range)
                } else {
                    None
                };
                if let Some(mut fl) = fused {
                    return Bench::checked(
                        layer,
                        kind,
                        what,
                        Box::new(move || fl.run().map_err(KernelError::InvalidConv)),
                    );
                }
                let pw: Box<dyn PackedWeights> = if kind == KernelKind::Int4 {
                    Box::new(PackedI4::new(&wq, n, k).map_err(kerr)?)
                } else {
                    Box::new(PackedI8::new(&wq, n, k).map_err(kerr)?)
                };
                Box::new(move || {
                    let acc = gemm_with(backend, &x, m, 0, pw.as_ref())?;
                    black_box(requantize::<u8>(
                        &acc,
                        [m, n, 1],
                        Some(&bias),
                        &mults,
                        range,
                    )?);
                    Ok(())
                })
            }
        };
        Self::checked(layer, kind, what, run)
    }

    /// One checked run so that kernel errors (e.g. a too long reduction) name the layer.
    fn checked(layer: &str, kind: KernelKind, what: String, run: RunFn) -> Result<Self> {
        let mut b = Bench { kind, what, run };
        (b.run)().map_err(|source| ProfileError::Kernel {
            layer: layer.to_string(),
            what: b.what.clone(),
            source,
        })?;
        Ok(b)
    }
}

fn kind_name(k: KernelKind) -> &'static str {
    match k {
        KernelKind::Int8 => "int8",
        KernelKind::Int4 => "int4",
        KernelKind::Fp32 => "fp32",
    }
}

type IntData = (Vec<i8>, i32, Vec<i32>, Vec<Dyadic>, OutputRange);

/// Random `w_bits` weights, the activation maximum, per-channel bias, per-channel dyadic
/// multipliers and the `a_bits` unsigned output range.
fn int_data(
    layer: &str,
    len: usize,
    channels: usize,
    w_bits: u32,
    a_bits: u32,
    rng: &mut SplitMix,
) -> Result<IntData> {
    let (wmin, wmax) = (-(1i32 << (w_bits - 1)), (1i32 << (w_bits - 1)) - 1);
    let wq: Vec<i8> = (0..len).map(|_| rng.int(wmin, wmax) as i8).collect();
    let amax = (1i32 << a_bits) - 1;
    let bias: Vec<i32> = (0..channels).map(|_| rng.int(-4096, 4096)).collect();
    let mults = (0..channels)
        .map(|c| Dyadic::from_real(1e-3 * (1.0 + (c % 7) as f64)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| ProfileError::Kernel {
            layer: layer.to_string(),
            what: "dyadic requantization multiplier".to_string(),
            source,
        })?;
    Ok((wq, amax, bias, mults, OutputRange::unsigned(a_bits, 0)))
}

fn float_bench(wl: &Workload, threads: usize, rng: &mut SplitMix) -> RunFn {
    match *wl {
        Workload::Conv {
            input,
            weight,
            params,
            out_hw,
        } => {
            let x: Vec<f32> = (0..input.iter().product::<usize>())
                .map(|_| rng.unit())
                .collect();
            let w: Vec<f32> = (0..weight.iter().product::<usize>())
                .map(|_| rng.unit())
                .collect();
            let bias: Vec<f32> = (0..weight[0]).map(|_| rng.unit()).collect();
            let geo = FloatConv {
                input,
                weight,
                params,
                out_hw,
                threads,
            };
            let mut cols = Vec::new();
            Box::new(move || {
                black_box(geo.run(&x, &w, &bias, &mut cols));
                Ok(())
            })
        }
        Workload::Gemm { m, n, k } => {
            let a: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
            Box::new(move || {
                let mut c = vec![0f32; m * n];
                // C[m, n] = A[m, k] · Wᵀ, W stored [n, k] row-major.
                sgemm(
                    (m, n, k),
                    &mut c,
                    n,
                    &a,
                    (k, 1),
                    &w,
                    (1, k),
                    par(m * n * k, threads),
                );
                for row in c.chunks_exact_mut(n) {
                    for (y, b) in row.iter_mut().zip(&bias) {
                        *y += b;
                    }
                }
                black_box(c);
                Ok(())
            })
        }
    }
}

fn par(work: usize, threads: usize) -> gemm::Parallelism {
    if threads > 1 && work >= PARALLEL_THRESHOLD {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst[m×n] (row stride dst_rs) = lhs[m×k] · rhs[k×n]`, operands with (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            dst[r * dst_rs..r * dst_rs + n].fill(0.0);
        }
        return;
    }
    let span = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(span(m, n, dst_rs, 1) < dst.len(), "sgemm: dst too short");
    assert!(
        span(m, k, lhs_rs, lhs_cs) < lhs.len(),
        "sgemm: lhs too short"
    );
    assert!(
        span(k, n, rhs_rs, rhs_cs) < rhs.len(),
        "sgemm: rhs too short"
    );
    // SAFETY: every accessed element lies inside the slices (checked above) and `dst` is
    // borrowed exclusively.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Float NCHW convolution: im2col + SGEMM per image and group (the input itself is the column
/// matrix for 1×1 stride-1 unpadded kernels), a direct loop for depthwise; plus bias.
#[derive(Debug, Clone, Copy)]
struct FloatConv {
    input: [usize; 4],
    weight: [usize; 4],
    params: Conv2dParams,
    out_hw: [usize; 2],
    threads: usize,
}

impl FloatConv {
    fn run(&self, x: &[f32], w: &[f32], bias: &[f32], cols: &mut Vec<f32>) -> Vec<f32> {
        let [n, cin, h, wd] = self.input;
        let [cout, cin_g, kh, kw] = self.weight;
        let [ho, wo] = self.out_hw;
        let groups = self.params.groups;
        let (cout_g, k, pix) = (cout / groups, cin_g * kh * kw, ho * wo);
        let mut y = vec![0f32; n * cout * pix];
        if cin_g == 1 && groups > 1 {
            self.depthwise(x, w, &mut y);
        } else {
            let identity =
                kh == 1 && kw == 1 && self.params.strides == [1, 1] && self.params.pads == [0; 4];
            let par = par(pix * cout_g * k, self.threads);
            for b in 0..n {
                for gi in 0..groups {
                    let xg = &x[(b * cin + gi * cin_g) * h * wd..][..cin_g * h * wd];
                    let colm: &[f32] = if identity {
                        xg
                    } else {
                        cols.resize(k * pix, 0.0);
                        self.im2col(xg, cols);
                        cols
                    };
                    let wg = &w[gi * cout_g * k..][..cout_g * k];
                    let yg = &mut y[(b * cout + gi * cout_g) * pix..][..cout_g * pix];
                    sgemm((cout_g, pix, k), yg, pix, wg, (k, 1), colm, (pix, 1), par);
                }
            }
        }
        for img in y.chunks_exact_mut(cout * pix) {
            for (plane, b) in img.chunks_exact_mut(pix).zip(bias) {
                for v in plane {
                    *v += b;
                }
            }
        }
        y
    }

    /// Columns `[Cin/g·kh·kw, Ho·Wo]` of one image and group, zero outside the input.
    fn im2col(&self, xg: &[f32], cols: &mut [f32]) {
        let [_, _, h, w] = self.input;
        let [_, cin_g, kh, kw] = self.weight;
        let [ho, wo] = self.out_hw;
        let [sh, sw] = self.params.strides;
        let [dh, dw] = self.params.dilations;
        let [pt, pl, _, _] = self.params.pads;
        let mut rows = cols.chunks_exact_mut(ho * wo);
        for c in 0..cin_g {
            let plane = &xg[c * h * w..(c + 1) * h * w];
            for ky in 0..kh {
                for kx in 0..kw {
                    let Some(row) = rows.next() else { return };
                    for oy in 0..ho {
                        let dst = &mut row[oy * wo..(oy + 1) * wo];
                        let iy = (oy * sh + ky * dh).checked_sub(pt).filter(|&i| i < h);
                        let Some(iy) = iy else {
                            dst.fill(0.0);
                            continue;
                        };
                        let src = &plane[iy * w..(iy + 1) * w];
                        for (ox, d) in dst.iter_mut().enumerate() {
                            *d = (ox * sw + kx * dw)
                                .checked_sub(pl)
                                .filter(|&i| i < w)
                                .map_or(0.0, |ix| src[ix]);
                        }
                    }
                }
            }
        }
    }

    /// Direct depthwise convolution over a zero-padded plane, one output row at a time.
    fn depthwise(&self, x: &[f32], w: &[f32], y: &mut [f32]) {
        let [n, cin, h, wd] = self.input;
        let [cout, _, kh, kw] = self.weight;
        let [ho, wo] = self.out_hw;
        let mult = cout / cin;
        let [sh, sw] = self.params.strides;
        let [dh, dw] = self.params.dilations;
        let [pt, pl, pb, pr] = self.params.pads;
        let (hp, wp) = (h + pt + pb, wd + pl + pr);
        let channel = |xc: &[f32], wc: &[f32], yc: &mut [f32]| {
            let mut plane = vec![0f32; hp * wp];
            for (iy, row) in xc.chunks_exact(wd).enumerate() {
                plane[(iy + pt) * wp + pl..][..wd].copy_from_slice(row);
            }
            for m in 0..mult {
                let wm = &wc[m * kh * kw..(m + 1) * kh * kw];
                for oy in 0..ho {
                    let acc = &mut yc[(m * ho + oy) * wo..][..wo];
                    for ky in 0..kh {
                        let src_row = &plane[(oy * sh + ky * dh) * wp..][..wp];
                        for kx in 0..kw {
                            let wv = wm[ky * kw + kx];
                            let src = &src_row[kx * dw..];
                            if sw == 1 {
                                for (a, &s) in acc.iter_mut().zip(src) {
                                    *a += s * wv;
                                }
                            } else {
                                for (ox, a) in acc.iter_mut().enumerate() {
                                    *a += src[ox * sw] * wv;
                                }
                            }
                        }
                    }
                }
            }
        };
        let plane_out = mult * ho * wo;
        let work = n * cout * ho * wo * kh * kw;
        let threads = if work >= PARALLEL_THRESHOLD {
            self.threads.min(cin).max(1)
        } else {
            1
        };
        for (xb, yb) in x
            .chunks_exact(cin * h * wd)
            .zip(y.chunks_exact_mut(cout * ho * wo))
        {
            let run = |c0: usize, chunk: &mut [f32]| {
                for (ci, yc) in chunk.chunks_exact_mut(plane_out).enumerate() {
                    let c = c0 + ci;
                    channel(
                        &xb[c * h * wd..(c + 1) * h * wd],
                        &w[c * mult * kh * kw..(c + 1) * mult * kh * kw],
                        yc,
                    );
                }
            };
            if threads == 1 {
                run(0, yb);
                continue;
            }
            let per = cin.div_ceil(threads);
            std::thread::scope(|s| {
                for (t, chunk) in yb.chunks_mut(per * plane_out).enumerate() {
                    let run = &run;
                    s.spawn(move || run(t * per, chunk));
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------

struct Timing {
    median_ms: f64,
    min_ms: f64,
    reps: usize,
}

/// Warm-up, then interleaved rounds (each option once per round) until `reps` rounds or the
/// layer's time box; median per option.
fn time_layer(layer: &str, benches: &mut [Bench], cfg: &ProfileConfig) -> Result<Vec<Timing>> {
    let fail = |b: &Bench, source| ProfileError::Kernel {
        layer: layer.to_string(),
        what: b.what.clone(),
        source,
    };
    let start = Instant::now();
    let budget = Duration::from_secs_f64(cfg.time_box_ms / 1e3);
    for _ in 0..cfg.warmup {
        for b in benches.iter_mut() {
            (b.run)().map_err(|e| fail(b, e))?;
        }
        if start.elapsed() >= budget / 4 {
            break;
        }
    }
    let start = Instant::now();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(cfg.reps); benches.len()];
    for round in 0..cfg.reps {
        if round > 0 && start.elapsed() >= budget {
            break;
        }
        for (b, s) in benches.iter_mut().zip(&mut samples) {
            let t = Instant::now();
            (b.run)().map_err(|e| fail(b, e))?;
            s.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            let mid = s.len() / 2;
            let median = if s.len() % 2 == 1 {
                s[mid]
            } else {
                0.5 * (s[mid - 1] + s[mid])
            };
            Timing {
                // A run faster than the clock's resolution still gets a positive time.
                median_ms: median.max(1e-6),
                min_ms: s[0].max(1e-6),
                reps: s.len(),
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Machine description
// ---------------------------------------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(target_arch = "x86_64")]
fn avx512_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_vnni() -> bool {
    false
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, H. Hinnant's algorithm).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive float convolution for checking [`FloatConv`].
    fn naive(fc: &FloatConv, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let [n, cin, h, wd] = fc.input;
        let [cout, cin_g, kh, kw] = fc.weight;
        let [ho, wo] = fc.out_hw;
        let g = fc.params.groups;
        let (cout_g, [sh, sw], [dh, dw]) = (cout / g, fc.params.strides, fc.params.dilations);
        let [pt, pl, _, _] = fc.params.pads;
        let mut y = vec![0f32; n * cout * ho * wo];
        for b in 0..n {
            for oc in 0..cout {
                let gi = oc / cout_g;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bias[oc];
                        for c in 0..cin_g {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * sh + ky * dh) as isize - pt as isize;
                                    let ix = (ox * sw + kx * dw) as isize - pl as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((b * cin + gi * cin_g + c) * h + iy as usize) * wd
                                        + ix as usize;
                                    acc += x[xi] * w[((oc * cin_g + c) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        y[((b * cout + oc) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn float_conv_matches_naive() {
        let cases = [
            // (input, weight, strides, pads, dilations, groups)
            ([2, 3, 9, 8], [4, 3, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
            ([1, 4, 10, 7], [6, 2, 3, 2], [2, 1], [0, 1, 2, 0], [1, 2], 2),
            ([2, 5, 6, 6], [7, 5, 1, 1], [1, 1], [0; 4], [1, 1], 1),
            ([1, 4, 9, 9], [8, 1, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 4),
            ([2, 3, 7, 8], [3, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 3),
        ];
        let mut rng = SplitMix(7);
        for (input, weight, strides, pads, dilations, groups) in cases {
            let params = Conv2dParams {
                strides,
                pads,
                dilations,
                groups,
            };
            let out_hw = params
                .output_hw(input[2], input[3], weight[2], weight[3])
                .unwrap();
            let fc = FloatConv {
                input,
                weight,
                params,
                out_hw,
                threads: 1,
            };
            let x: Vec<f32> = (0..input.iter().product()).map(|_| rng.unit()).collect();
            let w: Vec<f32> = (0..weight.iter().product()).map(|_| rng.unit()).collect();
            let bias: Vec<f32> = (0..weight[0]).map(|_| rng.unit()).collect();
            let got = fc.run(&x, &w, &bias, &mut Vec::new());
            let want = naive(&fc, &x, &w, &bias);
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4,
                    "case {input:?}/{weight:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn float_gemm_matches_naive() {
        let (m, n, k) = (5, 7, 19);
        let mut rng = SplitMix(3);
        let a: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
        let mut c = vec![0f32; m * n];
        sgemm(
            (m, n, k),
            &mut c,
            n,
            &a,
            (k, 1),
            &w,
            (1, k),
            gemm::Parallelism::None,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * w[j * k + t]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn kernel_mapping_and_option_parsing() {
        assert_eq!(kernel_for(4, 8).unwrap(), KernelKind::Int4);
        for w in [2, 3, 5, 6, 7, 8] {
            assert_eq!(kernel_for(w, 8).unwrap(), KernelKind::Int8);
        }
        assert_eq!(kernel_for(32, 32).unwrap(), KernelKind::Fp32);
        assert!(kernel_for(16, 16).is_err());
        assert!(kernel_for(4, 32).is_err());
        assert_eq!(
            parse_options("w2a8, w4a8,fp32").unwrap(),
            vec![(2, 8), (4, 8), (32, 32)]
        );
        let e = parse_options("w4b8").unwrap_err().to_string();
        assert!(e.contains("w4b8"), "{e}");
        let e = parse_options("w1a8").unwrap_err().to_string();
        assert!(e.contains("w1a8"), "{e}");
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(format_utc(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
