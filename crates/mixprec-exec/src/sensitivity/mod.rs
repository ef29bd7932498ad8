//! Per-layer sensitivity metrics: how much each layer suffers from each quantization option.
//!
//! A [`SensitivityMetric`] turns a model and a few samples into a [`SensitivityTable`]
//! `[layer × option]` (options such as `w2`, `w4`, `w8` for weights and `a4`, `a8` for input
//! activations); lower values mean the layer tolerates the option better. The table feeds the
//! allocators (DESIGN §1). Metrics are listed in the registry [`METRICS`], one file each:
//!
//! * `hessian-trace` — survey §3.2.3, HAWQ-V2 Eq. 21–23 (Hutchinson trace × quantization error);
//! * `hessian-eigen` — survey §3.2.3, HAWQ (top Hessian eigenvalue × quantization error);
//! * `fisher` — diagonal empirical Fisher ⊙ (Q(W) − W)² (survey §3.1.3 / §3.2.1, first-order
//!   proxy of the loss change);
//! * `output-mse` — survey §3.4.8, EvoQ Eq. 44 (output MSE with one layer quantized); the same
//!   quantity is OBACWA's per-layer output error, survey §3.1.3 Eq. 11 (E‖O − O_m‖² divided by
//!   the output dimension), so it has no separate entry;
//! * `kl` — survey §3.2.5, ZeroQ (KL divergence of output distributions);
//! * `sqnr` — output signal-to-quantization-noise ratio (survey §2.4), in negative dB;
//! * `aq-noise` — survey §3.2.1, AQ Eq. 18 (p_k / t_k · e^(−α b) by noise injection);
//! * `pca-significance` — survey §3.2.4, Hybrid-Net (PCA significant dimensions);
//! * `separability` — survey §3.2.2, PDB Eq. 19 (feature separability).
//!
//! Every metric is deterministic for a seed.
//!
//! Recurrent layers (RNN / GRU / LSTM): the output-based metrics (`output-mse`, `kl`, `sqnr`)
//! quantize both W and R through [`crate::FakeQuant`]; the weight-based metrics
//! ([`SensCtx::weight`], [`SensCtx::weight_error`], Hessian-vector products, Fisher)
//! see W only, the recurrence weight R is not part of their score.

pub mod aq_noise;
pub mod fisher;
pub mod hessian_eigen;
pub mod hessian_trace;
pub mod kl;
pub mod output_mse;
pub mod pca_significance;
pub mod separability;
pub mod sqnr;

use candle_core::Tensor;
use mixprec_data::Dataset;
use mixprec_graph::Layer;
use mixprec_quant::{quantize, Granularity, Policy, QScheme, QuantKind, TensorLayout};
use serde::de::DeserializeOwned;

use crate::error::{ExecError, Result};
use crate::executor::{Executor, RunOptions};
use crate::fakequant::{calibrate, weight_channel_axis, ActivationRanges, FakeQuant};
use crate::grad::loss_target;
use crate::ops::to_vec_f32;

/// What an option quantizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptionTarget {
    /// The layer's weight.
    Weight,
    /// The layer's input activation.
    Activation,
}

/// One column of a sensitivity table: a scheme for a layer's weight or input activation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SensOption {
    /// Short label (`w4`, `a8`).
    pub label: String,
    /// Weight or input activation.
    pub target: OptionTarget,
    /// The scheme applied.
    pub scheme: QScheme,
}

impl SensOption {
    /// Parses `w<bits>` (uniform symmetric weights at `granularity`) or `a<bits>` (uniform
    /// asymmetric per-tensor input activations).
    pub fn parse(label: &str, granularity: Granularity) -> Result<Self> {
        let bad = || {
            ExecError::Invalid(format!(
                "sensitivity option '{label}': expected w<bits> or a<bits> with bits in 2..=16 (e.g. w4, a8)"
            ))
        };
        let l = label.trim().to_ascii_lowercase();
        let (target, rest) = if let Some(r) = l.strip_prefix('w') {
            (OptionTarget::Weight, r)
        } else if let Some(r) = l.strip_prefix('a') {
            (OptionTarget::Activation, r)
        } else {
            return Err(bad());
        };
        let bits: u8 = rest.parse().map_err(|_| bad())?;
        let scheme = match target {
            OptionTarget::Weight => QScheme::new(QuantKind::Uniform, bits, true, granularity),
            OptionTarget::Activation => {
                QScheme::new(QuantKind::Uniform, bits, false, Granularity::Tensor)
            }
        };
        scheme
            .validate()
            .map_err(|e| ExecError::Invalid(format!("sensitivity option '{label}': {e}")))?;
        Ok(SensOption {
            label: l,
            target,
            scheme,
        })
    }

    /// Parses a comma-separated list (`w2,w4,a8`).
    pub fn parse_list(list: &str, granularity: Granularity) -> Result<Vec<Self>> {
        let opts: Vec<Self> = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| Self::parse(s, granularity))
            .collect::<Result<_>>()?;
        if opts.is_empty() {
            return Err(ExecError::Invalid(
                "no sensitivity options given (e.g. w2,w4,w8)".into(),
            ));
        }
        Ok(opts)
    }
}

/// A `[layer × option]` table; lower = less sensitive.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SensitivityTable {
    /// The metric that produced it.
    pub metric: String,
    /// Layer names in graph order.
    pub layers: Vec<String>,
    /// Option labels.
    pub options: Vec<String>,
    /// `values[layer][option]`.
    pub values: Vec<Vec<f64>>,
    /// Per-layer quantities the metric measured on the way (e.g. `trace`, `probes`), by name;
    /// empty when it has none.
    #[serde(default)]
    pub details: Vec<std::collections::BTreeMap<String, f64>>,
}

impl SensitivityTable {
    /// Layer indices ordered from most to least sensitive by the sum over options.
    pub fn ranking(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.layers.len()).collect();
        let total = |i: usize| self.values[i].iter().sum::<f64>();
        idx.sort_by(|&a, &b| total(b).total_cmp(&total(a)));
        idx
    }

    /// The most sensitive layer for option column `o`.
    pub fn most_sensitive(&self, o: usize) -> Option<usize> {
        (0..self.layers.len()).max_by(|&a, &b| self.values[a][o].total_cmp(&self.values[b][o]))
    }
}

/// Everything a metric may use: the model, samples, the options and a seed.
pub struct SensCtx<'a> {
    /// The model (weights are read, never changed).
    pub exec: &'a Executor,
    /// Layers scored (graph order).
    pub layers: Vec<Layer>,
    /// Table columns.
    pub options: Vec<SensOption>,
    /// Samples as batches of (images [N, C, H, W], labels).
    pub batches: Vec<(Tensor, Vec<u32>)>,
    /// Calibrated input ranges for activation options (min-max over the samples).
    pub ranges: ActivationRanges,
    /// Seed of every random choice.
    pub seed: u64,
}

impl<'a> SensCtx<'a> {
    /// Splits `data` into batches of at most `batch` samples and calibrates input ranges when
    /// an activation option is asked for.
    pub fn new(
        exec: &'a Executor,
        data: &Dataset,
        options: Vec<SensOption>,
        batch: usize,
        seed: u64,
    ) -> Result<Self> {
        if data.n == 0 {
            return Err(ExecError::Invalid(format!(
                "sensitivity samples {} are empty",
                data.name
            )));
        }
        if options.is_empty() {
            return Err(ExecError::Invalid(
                "no sensitivity options given (e.g. w2,w4,w8)".into(),
            ));
        }
        let layers = exec.graph().layers();
        if layers.is_empty() {
            return Err(ExecError::Invalid(
                "the model has no Conv / Gemm / MatMul / recurrent layer with a weight to score"
                    .into(),
            ));
        }
        let sample = data.sample_shape();
        let batch = exec.usable_batch(sample, batch.max(1).min(data.n))?;
        let mut batches = Vec::new();
        let mut start = 0;
        while start < data.n {
            let len = batch.min(data.n - start);
            let (x, y) = data.batch(start, len);
            let x = Tensor::from_slice(
                x,
                crate::eval::batch_shape(len, data.sample_shape()).as_slice(),
                exec.device(),
            )?;
            batches.push((x, y.to_vec()));
            start += len;
        }
        let ranges = match options
            .iter()
            .find(|o| o.target == OptionTarget::Activation)
        {
            Some(o) => {
                let mut p = Policy::new();
                for l in &layers {
                    p.set_activation(&l.name, o.scheme);
                }
                calibrate(exec, data, "min-max", &p)?
            }
            None => ActivationRanges::new(),
        };
        Ok(SensCtx {
            exec,
            layers,
            options,
            batches,
            ranges,
            seed,
        })
    }

    /// The current float values and shape of a layer's weight (W only for a recurrent layer).
    pub fn weight(&self, layer: &Layer) -> Result<(Vec<f32>, Vec<usize>)> {
        let var = self.exec.var(layer.weight).ok_or_else(|| {
            ExecError::Invalid(format!("layer '{}' has no float weight", layer.name))
        })?;
        Ok((
            to_vec_f32(var.as_tensor())?,
            var.as_tensor().dims().to_vec(),
        ))
    }

    /// `Q(W) − W` of a layer's weight under `scheme`, flattened.
    pub fn weight_error(&self, layer: &Layer, scheme: &QScheme) -> Result<Vec<f32>> {
        let (w, dims) = self.weight(layer)?;
        let axis = weight_channel_axis(self.exec.graph(), layer).min(dims.len().saturating_sub(1));
        let q = quantize(&w, &TensorLayout::new(dims, axis), scheme, self.seed)
            .map_err(|e| ExecError::Invalid(format!("layer '{}' weight: {e}", layer.name)))?;
        Ok(q.values.iter().zip(&w).map(|(q, w)| q - w).collect())
    }

    /// Exact Hessian-vector products of the loss on batch `b` for `layer`'s weight; a failure
    /// names the layer.
    pub fn hvp(&self, layer: &Layer, b: usize, probes: &[Tensor]) -> Result<Vec<Tensor>> {
        let (x, labels) = &self.batches[b % self.batches.len()];
        self.exec
            .hvp(x, labels, layer.weight, probes)
            .map_err(|e| {
                ExecError::Invalid(format!(
                    "layer '{}': exact Hessian-vector product failed ({e}); the executor cannot take second-order gradients through this model, use output-mse, kl, sqnr or fisher",
                    layer.name
                ))
            })
    }

    /// Fails unless every option quantizes weights (for metrics defined on weights only).
    pub fn require_weight_options(&self, metric: &str) -> Result<()> {
        match self
            .options
            .iter()
            .find(|o| o.target != OptionTarget::Weight)
        {
            Some(o) => Err(ExecError::Invalid(format!(
                "metric {metric} scores weight options only; drop '{}' from the options or use output-mse, kl or sqnr",
                o.label
            ))),
            None => Ok(()),
        }
    }

    /// Logits of every batch with `hook` applied (float when `None`), flattened to
    /// `[N, classes]` rows.
    pub fn logits(&self, hook: Option<&dyn crate::LayerHook>) -> Result<Vec<(Vec<f32>, usize)>> {
        let target = loss_target(self.exec)?;
        self.batches
            .iter()
            .map(|(x, _)| {
                let r = self.exec.run(
                    std::slice::from_ref(x),
                    &RunOptions {
                        keep: vec![target.value],
                        hook,
                        ..Default::default()
                    },
                )?;
                let t = r
                    .kept
                    .get(&target.value)
                    .ok_or_else(|| ExecError::Invalid("logits were not produced".into()))?
                    .flatten_from(1)?;
                let classes = t.dims()[1];
                Ok((to_vec_f32(&t)?, classes))
            })
            .collect()
    }

    /// A fake quantizer that quantizes only `layer` with `option`.
    pub fn single_layer_hook(&self, layer: &Layer, option: &SensOption) -> Result<FakeQuant> {
        let mut p = Policy::new();
        match option.target {
            OptionTarget::Weight => p.set_weight(&layer.name, option.scheme),
            OptionTarget::Activation => p.set_activation(&layer.name, option.scheme),
        };
        FakeQuant::new(self.exec, &p, &self.ranges, self.seed)
    }

    /// A table built by comparing float logits with the logits of the model with one layer
    /// quantized at a time: `score(float, quantized, classes)` per cell (survey §3.2.5,
    /// §3.4.8).
    pub fn perturbation_table(
        &self,
        metric: &str,
        score: &OutputScore,
    ) -> Result<SensitivityTable> {
        let float = self.logits(None)?;
        let mut values = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let mut row = Vec::with_capacity(self.options.len());
            for opt in &self.options {
                let hook = self.single_layer_hook(layer, opt)?;
                let quant = self.logits(Some(&hook))?;
                let (mut f_all, mut q_all) = (Vec::new(), Vec::new());
                let mut classes = 0;
                for ((f, c), (q, _)) in float.iter().zip(&quant) {
                    f_all.extend_from_slice(f);
                    q_all.extend_from_slice(q);
                    classes = *c;
                }
                row.push(score(&f_all, &q_all, classes));
            }
            values.push(row);
        }
        Ok(self.table(metric, values))
    }

    /// The value written by a layer's node: its output before any activation function.
    pub fn layer_output(&self, layer: &Layer) -> Result<mixprec_graph::ValueId> {
        self.exec
            .graph()
            .nodes
            .get(layer.node)
            .and_then(|n| n.outputs.first().copied())
            .ok_or_else(|| ExecError::Invalid(format!("layer '{}' has no output", layer.name)))
    }

    /// The outputs of `layers` on every batch with `hook` applied (float when `None`), per
    /// layer concatenated over the batches: `(values [N × rest], rest)` with `rest` the
    /// per-sample dimensions.
    pub fn layer_outputs(
        &self,
        layers: &[&Layer],
        hook: Option<&dyn crate::LayerHook>,
    ) -> Result<Vec<(Vec<f32>, Vec<usize>)>> {
        let ids: Vec<_> = layers
            .iter()
            .map(|l| self.layer_output(l))
            .collect::<Result<_>>()?;
        let mut out: Vec<(Vec<f32>, Vec<usize>)> = vec![(Vec::new(), Vec::new()); ids.len()];
        for (x, _) in &self.batches {
            let r = self.exec.run(
                std::slice::from_ref(x),
                &RunOptions {
                    keep: ids.clone(),
                    hook,
                    ..Default::default()
                },
            )?;
            for ((id, l), (vals, rest)) in ids.iter().zip(layers).zip(out.iter_mut()) {
                let t = r.kept.get(id).ok_or_else(|| {
                    ExecError::Invalid(format!("the output of layer '{}' was not produced", l.name))
                })?;
                *rest = t.dims().get(1..).unwrap_or_default().to_vec();
                vals.extend(to_vec_f32(t)?);
            }
        }
        Ok(out)
    }

    /// Relative error of each layer's own output, ‖y_q − y‖² / ‖y‖², with only that layer
    /// quantized by each option (its input comes from the float layers before it), in layer ×
    /// option order.
    pub fn local_error_table(&self) -> Result<Vec<Vec<f64>>> {
        let mut values = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let float = self.layer_outputs(&[layer], None)?.remove(0).0;
            let signal = sq_norm(&float).max(f64::MIN_POSITIVE);
            let mut row = Vec::with_capacity(self.options.len());
            for opt in &self.options {
                let hook = self.single_layer_hook(layer, opt)?;
                let quant = self.layer_outputs(&[layer], Some(&hook))?.remove(0).0;
                let noise: f64 = float
                    .iter()
                    .zip(&quant)
                    .map(|(&f, &q)| (q as f64 - f as f64).powi(2))
                    .sum();
                row.push(noise / signal);
            }
            values.push(row);
        }
        Ok(values)
    }

    /// Wraps values computed in layer × option order into a table.
    pub fn table(&self, metric: &str, values: Vec<Vec<f64>>) -> SensitivityTable {
        SensitivityTable {
            metric: metric.into(),
            layers: self.layers.iter().map(|l| l.name.clone()).collect(),
            options: self.options.iter().map(|o| o.label.clone()).collect(),
            values,
            details: Vec::new(),
        }
    }
}

/// Scores a quantized output against the float one: `(float, quantized, classes) -> value`.
pub type OutputScore = dyn Fn(&[f32], &[f32], usize) -> f64;

/// A sensitivity metric: one table per model, samples and options.
pub trait SensitivityMetric {
    /// Scores every layer of `ctx` under every option; lower = less sensitive.
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable>;
}

/// A registry entry.
pub struct MetricEntry {
    /// Stable kebab-case name.
    pub name: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Survey section and original paper.
    pub reference: &'static str,
    /// Builds the metric from a JSON config (`Null` = defaults).
    pub build: fn(&serde_json::Value) -> Result<Box<dyn SensitivityMetric>>,
}

/// Every metric, in order of preference.
pub const METRICS: &[MetricEntry] = &[
    hessian_trace::ENTRY,
    output_mse::ENTRY,
    kl::ENTRY,
    sqnr::ENTRY,
    fisher::ENTRY,
    hessian_eigen::ENTRY,
    aq_noise::ENTRY,
    pca_significance::ENTRY,
    separability::ENTRY,
];

/// Builds metric `name` with a JSON config (`Null` = defaults).
pub fn build_metric(name: &str, config: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    let e = METRICS.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = METRICS.iter().map(|e| e.name).collect();
        ExecError::Invalid(format!(
            "unknown sensitivity metric '{name}' (known: {})",
            names.join(", ")
        ))
    })?;
    (e.build)(config)
}

/// Parses a metric config: `Null` gives the defaults, unknown fields are an error.
pub(crate) fn parse_config<T: DeserializeOwned + Default>(
    metric: &str,
    v: &serde_json::Value,
) -> Result<T> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v.clone())
        .map_err(|e| ExecError::Invalid(format!("config of metric {metric}: {e}")))
}

/// Σ x² in f64.
pub(crate) fn sq_norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum()
}

/// Seed of layer `i` derived from the run seed (SplitMix64).
pub(crate) fn layer_seed(seed: u64, i: usize) -> u64 {
    let mut z =
        (seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
