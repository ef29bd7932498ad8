//! Fake quantization on the float executor (weights and input activations of every layer,
//! straight-through gradients), activation calibration, and gradient quantization.
//!
//! * Survey §2.3: the three components a network quantizes — weights, activations, gradients.
//!   [`FakeQuant`] quantizes weights and input activations per a [`Policy`]; [`GradQuant`]
//!   quantizes gradients (refs \[77\]–\[80\]; the per-tensor max scale and unbiased stochastic
//!   rounding follow QSGD, Alistarh et al. 2017 \[79\]).
//! * Survey §2.4, Eq. 8 and Eq. 10: uniform weights and activations use
//!   [`UniformParams`]; the activation clip range `[a, b]` comes from calibration
//!   ([`calibrate`], "the choice of the clipping range, also known as calibration").
//! * Survey §2.1 / Table 1: any other weight quantizer runs through
//!   [`mixprec_quant::quantize`] on the host values; the result is cached per layer and
//!   weight and recomputed only when the weight changes. A recurrent layer (RNN / GRU /
//!   LSTM) has two weights, W `[dirs, gates·H, I]` and R `[dirs, gates·H, H]`, both
//!   quantized with the layer's scheme and cached apart; per-channel granularity uses axis 1
//!   (one block per row of gates·H, shared by the directions).
//! * Survey §2.2, Eq. 7: stochastic rounding (gradients always; weights and activations when
//!   their scheme asks for it).
//!
//! Gradients use the clipped straight-through estimator (Bengio et al. 2013; BinaryConnect,
//! Courbariaux et al. 2015 \[54\]): `y = x·m + (q − x·m).detach()` with `m` = 1 inside the clip
//! range and 0 outside, so the forward value is `q` and `∂y/∂x = m`.
//!
//! Complexity: O(n) per quantized tensor and forward pass for uniform schemes (one host copy,
//! one rounding pass); non-uniform weight quantizers cost what their method costs, once per
//! weight version. Calibration is one forward pass over the calibration set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use candle_core::Tensor;
use mixprec_data::Dataset;
use mixprec_graph::{Graph, Layer, Op, ValueId};
use mixprec_quant::{
    build_observer, quantize, rng_from_seed, Granularity, Observer, Policy, QScheme, QuantError,
    QuantKind, TensorLayout, UniformParams,
};

use crate::error::{ExecError, Result};
use crate::executor::{Executor, LayerHook, RunOptions};
use crate::ops::to_vec_f32;
use crate::train::GradTransform;

/// Calibrated clip range `(min, max)` of each layer's input activation, by layer name.
pub type ActivationRanges = BTreeMap<String, (f32, f32)>;

/// Images per forward pass during calibration.
const CALIB_BATCH: usize = 100;

fn quant_err(layer: &str, role: &str, e: QuantError) -> ExecError {
    ExecError::Invalid(format!("layer '{layer}' {role}: {e}"))
}

/// Checks the policy's schemes and that it names only layers of `graph`.
pub fn check_policy(graph: &Graph, policy: &Policy) -> Result<()> {
    let layers = graph.layers();
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    policy
        .validate(&names)
        .map_err(|e| ExecError::Invalid(format!("invalid policy: {e}")))
}

/// The axis of a layer's weight (as stored, before any transpose) that indexes output
/// channels: 0 for Conv and for Gemm with `transB`, the last axis for Gemm without `transB`
/// and for MatMul, 1 (the gates·H rows of W and R) for a recurrent layer.
pub fn weight_channel_axis(graph: &Graph, layer: &Layer) -> usize {
    let rank = graph
        .initializers
        .get(&layer.weight)
        .map(|t| t.shape.len())
        .unwrap_or(0);
    match &graph.nodes[layer.node].op {
        Op::Conv { .. } | Op::Gemm { trans_b: true, .. } => 0,
        Op::Recurrent(_) => 1.min(rank.saturating_sub(1)),
        _ => rank.saturating_sub(1),
    }
}

/// Index of the parameter block of flat element `i` under `granularity` (matches the block
/// numbering of [`UniformParams`]).
fn block_of(i: usize, shape: &[usize], axis: usize, granularity: Granularity) -> usize {
    if granularity == Granularity::Tensor || shape.is_empty() {
        return 0;
    }
    let channels = shape[axis].max(1);
    let inner: usize = shape[axis + 1..].iter().product::<usize>().max(1);
    let c = (i / inner) % channels;
    match granularity {
        Granularity::Tensor => 0,
        Granularity::Channel => c,
        Granularity::Group(n) => {
            let channel_len = shape.iter().product::<usize>() / channels;
            let pos = (i / (inner * channels)) * inner + i % inner;
            c * (channel_len / n.max(1)) + pos / n.max(1)
        }
    }
}

/// 1 where `values[i]` lies inside its block's clip range `[(qmin − z)·s, (qmax − z)·s]`, else 0.
fn clip_mask(values: &[f32], p: &UniformParams, layout: &TensorLayout, g: Granularity) -> Vec<f32> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let b = block_of(i, &layout.shape, layout.channel_axis, g);
            let (s, z) = (p.scale[b], p.zero_point[b]);
            let lo = (p.qmin - z) as f32 * s;
            let hi = (p.qmax - z) as f32 * s;
            if v >= lo && v <= hi {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// Clipped straight-through estimator: forward value `q`, gradient `mask` (1 when `None`).
/// Without gradient tracking the quantized tensor is returned as is.
fn straight_through(x: &Tensor, q: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(q.clone());
    }
    let xm = match mask {
        Some(m) => x.mul(m)?,
        None => x.clone(),
    };
    let delta = q.sub(&xm)?.detach();
    Ok(xm.add(&delta)?)
}

/// What the fake quantizer did to one layer (for reports and model-size accounting).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerQuantInfo {
    /// Layer name.
    pub layer: String,
    /// Elements of the weight.
    pub weight_elems: usize,
    /// The weight scheme (`None` = float).
    pub weight_scheme: Option<QScheme>,
    /// Storage bits of the weight: codes plus scales, zero points and codebooks
    /// (`32 · weight_elems` when float).
    pub weight_bits: u64,
    /// Mean squared error of the quantized weight.
    pub weight_mse: f64,
    /// The input-activation scheme (`None` = float).
    pub activation_scheme: Option<QScheme>,
    /// The calibrated clip range of the input activation.
    pub activation_range: Option<(f32, f32)>,
}

/// A weight quantized for one version of its values.
struct WeightEntry {
    original: Vec<f32>,
    q: Tensor,
    mask: Option<Tensor>,
    bits: u64,
    mse: f64,
}

/// Input-activation quantizer of one layer.
struct ActQuant {
    scheme: QScheme,
    range: (f32, f32),
    params: UniformParams,
}

/// Per-layer setup.
struct LayerSpec {
    index: usize,
    weight: Option<QScheme>,
    axis: usize,
    act: Option<ActQuant>,
}

/// Fake quantization of weights and input activations as a [`LayerHook`]: a [`Policy`] plus
/// calibrated activation ranges (see [`calibrate`]). Layers the policy does not name stay
/// float. Weights: uniform kinds through [`UniformParams`] (min-max per block, clipped STE),
/// other kinds through [`mixprec_quant::quantize`] (plain STE); results are cached per layer.
/// Activations: `uniform` or `uniform-pow2`, per tensor, with the calibrated range.
pub struct FakeQuant {
    layers: HashMap<String, LayerSpec>,
    order: Vec<(String, usize)>,
    seed: u64,
    calls: AtomicU64,
    /// Quantized weights by (layer name, weight value): two entries for a recurrent layer.
    cache: Mutex<HashMap<(String, ValueId), WeightEntry>>,
    /// The weight values of each policy layer, in [`Graph::layer_weights`] order.
    weights: HashMap<String, Vec<ValueId>>,
}

impl std::fmt::Debug for FakeQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeQuant")
            .field("layers", &self.order)
            .field("seed", &self.seed)
            .finish()
    }
}

impl FakeQuant {
    /// Builds the hook for `exec`'s model and quantizes every policy weight once (so that bad
    /// schemes fail here, naming the layer). `ranges` must hold a range for every layer whose
    /// activation the policy quantizes; `seed` drives stochastic rounding and seeded
    /// initialisations (e.g. k-means).
    pub fn new(
        exec: &Executor,
        policy: &Policy,
        ranges: &ActivationRanges,
        seed: u64,
    ) -> Result<Self> {
        let graph = exec.graph();
        check_policy(graph, policy)?;
        let mut layers = HashMap::new();
        let mut order = Vec::new();
        let mut weights = HashMap::new();
        for (index, l) in graph.layers().iter().enumerate() {
            let Some(lp) = policy.get(&l.name) else {
                continue;
            };
            let act = match lp.activation {
                None => None,
                Some(scheme) => Some(Self::act_quant(&l.name, scheme, ranges)?),
            };
            let ws = graph.layer_weights(l);
            let numel = ws
                .iter()
                .filter_map(|w| graph.initializers.get(w))
                .map(|t| t.len())
                .sum();
            weights.insert(l.name.clone(), ws);
            order.push((l.name.clone(), numel));
            layers.insert(
                l.name.clone(),
                LayerSpec {
                    index,
                    weight: lp.weight,
                    axis: weight_channel_axis(graph, l),
                    act,
                },
            );
        }
        let fq = FakeQuant {
            layers,
            order,
            seed,
            calls: AtomicU64::new(0),
            cache: Mutex::new(HashMap::new()),
            weights,
        };
        for l in graph.layers() {
            for w in graph.layer_weights(&l) {
                if let Some(var) = exec.var(w) {
                    let lw = Layer {
                        weight: w,
                        ..l.clone()
                    };
                    fq.weight(&lw, var.as_tensor().detach())?;
                }
            }
        }
        Ok(fq)
    }

    fn act_quant(layer: &str, scheme: QScheme, ranges: &ActivationRanges) -> Result<ActQuant> {
        let role = "activation";
        if !matches!(scheme.kind, QuantKind::Uniform | QuantKind::UniformPow2) {
            return Err(ExecError::Invalid(format!(
                "layer '{layer}' activation: {} is not supported for activations (use uniform or uniform-pow2)",
                scheme.kind
            )));
        }
        if scheme.granularity != Granularity::Tensor {
            return Err(ExecError::Invalid(format!(
                "layer '{layer}' activation: only per-tensor activation ranges are supported (use granularity \"tensor\")"
            )));
        }
        let range = *ranges.get(layer).ok_or_else(|| {
            ExecError::Invalid(format!(
                "no calibrated range for the input of layer '{layer}'; run calibration with this policy first"
            ))
        })?;
        let params =
            UniformParams::from_values(&[range.0, range.1], &TensorLayout::flat(2), &scheme)
                .map_err(|e| quant_err(layer, role, e))?;
        Ok(ActQuant {
            scheme,
            range,
            params,
        })
    }

    /// The seed of weight quantization for layer `index`.
    fn layer_seed(&self, index: usize) -> u64 {
        splitmix(self.seed ^ splitmix(index as u64 + 1))
    }

    /// Quantizes host weight values of `layer` (uniform kinds also get their clip mask).
    /// `second` marks a recurrent layer's R (its own seed, and named in errors).
    fn quantize_weight(
        &self,
        layer: &str,
        spec: &LayerSpec,
        scheme: &QScheme,
        values: Vec<f32>,
        w: &Tensor,
        second: bool,
    ) -> Result<WeightEntry> {
        let role = if second {
            "recurrence weight R"
        } else {
            "weight"
        };
        let seed = if second {
            splitmix(self.layer_seed(spec.index) ^ 0x52)
        } else {
            self.layer_seed(spec.index)
        };
        let dims = w.dims().to_vec();
        if !dims.is_empty() && spec.axis >= dims.len() {
            return Err(ExecError::Invalid(format!(
                "layer '{layer}' {role}: channel axis {} does not exist in shape {dims:?}",
                spec.axis
            )));
        }
        let layout = TensorLayout::new(dims.clone(), spec.axis);
        let qt = quantize(&values, &layout, scheme, seed).map_err(|e| quant_err(layer, role, e))?;
        let mask = match scheme.kind {
            QuantKind::Uniform | QuantKind::UniformPow2 => {
                let p = UniformParams::from_values(&values, &layout, scheme)
                    .map_err(|e| quant_err(layer, role, e))?;
                let m = clip_mask(&values, &p, &layout, scheme.granularity);
                if m.iter().all(|&v| v == 1.0) {
                    None
                } else {
                    Some(Tensor::from_vec(m, dims.as_slice(), w.device())?)
                }
            }
            _ => None,
        };
        let mse = qt.mse(&values);
        Ok(WeightEntry {
            q: Tensor::from_vec(qt.values, dims.as_slice(), w.device())?,
            mask,
            bits: qt.total_bits,
            mse,
            original: values,
        })
    }

    /// Per-layer report in graph order (layers the policy names).
    pub fn layer_info(&self) -> Vec<LayerQuantInfo> {
        let cache = self.cache.lock().ok();
        self.order
            .iter()
            .map(|(name, numel)| {
                let spec = &self.layers[name];
                let entries: Vec<&WeightEntry> = match (&cache, self.weights.get(name)) {
                    (Some(c), Some(ws)) => ws
                        .iter()
                        .filter_map(|w| c.get(&(name.clone(), *w)))
                        .collect(),
                    _ => Vec::new(),
                };
                let (bits, mse) = match spec.weight {
                    Some(_) if !entries.is_empty() => {
                        // Element-weighted mean squared error over W (and R).
                        let n: usize = entries.iter().map(|e| e.original.len()).sum();
                        let se: f64 = entries
                            .iter()
                            .map(|e| e.mse * e.original.len() as f64)
                            .sum();
                        (entries.iter().map(|e| e.bits).sum(), se / n.max(1) as f64)
                    }
                    _ => (32 * *numel as u64, 0.0),
                };
                LayerQuantInfo {
                    layer: name.clone(),
                    weight_elems: *numel,
                    weight_scheme: spec.weight,
                    weight_bits: bits,
                    weight_mse: mse,
                    activation_scheme: spec.act.as_ref().map(|a| a.scheme),
                    activation_range: spec.act.as_ref().map(|a| a.range),
                }
            })
            .collect()
    }
}

impl LayerHook for FakeQuant {
    fn weight(&self, layer: &Layer, w: Tensor) -> Result<Tensor> {
        let Some(spec) = self.layers.get(&layer.name) else {
            return Ok(w);
        };
        let Some(scheme) = spec.weight else {
            return Ok(w);
        };
        let values = to_vec_f32(&w)?;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| ExecError::Invalid("fake-quant weight cache poisoned".into()))?;
        let key = (layer.name.clone(), layer.weight);
        let fresh = cache
            .get(&key)
            .is_some_and(|e| e.original == values && e.q.dims() == w.dims());
        if !fresh {
            let second = self
                .weights
                .get(&layer.name)
                .is_some_and(|ws| ws.first() != Some(&layer.weight));
            let entry = self.quantize_weight(&layer.name, spec, &scheme, values, &w, second)?;
            cache.insert(key.clone(), entry);
        }
        let e = &cache[&key];
        straight_through(&w, &e.q, e.mask.as_ref())
    }

    fn input(&self, layer: &Layer, x: Tensor) -> Result<Tensor> {
        let Some(act) = self.layers.get(&layer.name).and_then(|s| s.act.as_ref()) else {
            return Ok(x);
        };
        let values = to_vec_f32(&x)?;
        let layout = TensorLayout::flat(values.len());
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = rng_from_seed(splitmix(self.seed ^ splitmix(call)));
        let q = act
            .params
            .fake_quantize(&values, &layout, act.scheme.rounding, &mut rng)
            .map_err(|e| quant_err(&layer.name, "input activation", e))?;
        let q = Tensor::from_vec(q, x.dims(), x.device())?;
        let mask = if x.track_op() {
            let m = clip_mask(&values, &act.params, &layout, Granularity::Tensor);
            Some(Tensor::from_vec(m, x.dims(), x.device())?)
        } else {
            None
        };
        straight_through(&x, &q, mask.as_ref())
    }
}

/// Clip ranges of the input activations of every layer whose activation `policy` quantizes:
/// runs `exec` (float) over `data` in batches with [`RunOptions::keep`] = those inputs, feeds
/// each to a fresh observer `observer` (see `mixprec_quant::OBSERVERS`), and asks it for the
/// range at the layer's activation bit width and symmetry.
pub fn calibrate(
    exec: &Executor,
    data: &Dataset,
    observer: &str,
    policy: &Policy,
) -> Result<ActivationRanges> {
    let graph = exec.graph();
    check_policy(graph, policy)?;
    let mut watched: Vec<(String, ValueId, QScheme, Box<dyn Observer>)> = Vec::new();
    for l in graph.layers() {
        let Some(scheme) = policy.get(&l.name).and_then(|p| p.activation) else {
            continue;
        };
        let input = graph.nodes[l.node].input(0).ok_or_else(|| {
            ExecError::Invalid(format!("layer '{}' has no input activation", l.name))
        })?;
        let obs = build_observer(observer, &serde_json::Value::Null)
            .map_err(|e| ExecError::Invalid(format!("calibration observer: {e}")))?;
        watched.push((l.name.clone(), input, scheme, obs));
    }
    if watched.is_empty() {
        return Ok(ActivationRanges::new());
    }
    if data.n == 0 {
        return Err(ExecError::Invalid(format!(
            "calibration set {} is empty",
            data.name
        )));
    }
    let keep: Vec<ValueId> = watched
        .iter()
        .map(|w| w.1)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let sample = data.sample_shape();
    let batch = exec.usable_batch(sample, CALIB_BATCH.min(data.n))?;
    let mut start = 0;
    while start < data.n {
        let len = batch.min(data.n - start);
        let len = if len == batch {
            len
        } else {
            exec.usable_batch(sample, len)?.min(len)
        };
        let (images, _) = data.batch(start, len);
        let x = Tensor::from_slice(
            images,
            crate::eval::batch_shape(len, data.sample_shape()).as_slice(),
            exec.device(),
        )?;
        let run = exec.run(
            &[x],
            &RunOptions {
                keep: keep.clone(),
                ..Default::default()
            },
        )?;
        for (name, v, _, obs) in &mut watched {
            let t = run.kept.get(v).ok_or_else(|| {
                ExecError::Invalid(format!("the input of layer '{name}' was not produced"))
            })?;
            obs.observe(&to_vec_f32(t)?)
                .map_err(|e| quant_err(name, "input activation calibration", e))?;
        }
        start += len;
    }
    watched
        .into_iter()
        .map(|(name, _, scheme, obs)| {
            let r = obs
                .range(scheme.bits, scheme.symmetric)
                .map_err(|e| quant_err(&name, "input activation calibration", e))?;
            Ok((name, r))
        })
        .collect()
}

/// SplitMix64 finaliser: decorrelates seeds built from small integers.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a parameter name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Gradient quantization (survey §2.3, refs \[77\]–\[80\]): every gradient tensor is
/// stochastically rounded (Eq. 7) onto a symmetric `bits`-bit grid whose step is
/// `max|g| / (2^(bits−1) − 1)` — unbiased, `E[q] = g`, as in QSGD \[79\]. Random draws depend
/// only on the seed, the step and the parameter name, so training is reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradQuant {
    bits: u8,
    seed: u64,
}

impl GradQuant {
    /// A gradient quantizer with `bits` in 2..=16.
    pub fn new(bits: u8, seed: u64) -> Result<Self> {
        QScheme::new(QuantKind::Uniform, bits, true, Granularity::Tensor)
            .validate()
            .map_err(|e| ExecError::Invalid(format!("gradient quantization: {e}")))?;
        Ok(GradQuant { bits, seed })
    }

    /// The bit width.
    pub fn bits(&self) -> u8 {
        self.bits
    }
}

impl GradTransform for GradQuant {
    fn transform(&self, name: &str, grad: &Tensor, step: usize) -> Result<Tensor> {
        let values = to_vec_f32(grad)?;
        if values.is_empty() {
            return Ok(grad.clone());
        }
        let m = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = |e: QuantError| ExecError::Invalid(format!("gradient of '{name}': {e}"));
        let params = UniformParams::from_range(-m, m, self.bits, true).map_err(err)?;
        let seed = splitmix(self.seed ^ splitmix(step as u64) ^ name_hash(name));
        let q = params
            .fake_quantize(
                &values,
                &TensorLayout::flat(values.len()),
                mixprec_quant::Rounding::Stochastic,
                &mut rng_from_seed(seed),
            )
            .map_err(err)?;
        Ok(Tensor::from_vec(q, grad.dims(), grad.device())?.to_dtype(grad.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate;
    use candle_core::{Device, Var};
    use mixprec_data::{calibration_subset, data_dir, DatasetKind, Preprocess, Split};

    fn uniform(bits: u8, symmetric: bool, g: Granularity) -> QScheme {
        QScheme::new(QuantKind::Uniform, bits, symmetric, g)
    }

    fn lenet() -> Executor {
        Executor::new(crate::models::lenet5(3)).unwrap()
    }

    fn layer(exec: &Executor, name: &str) -> Layer {
        exec.graph()
            .layers()
            .into_iter()
            .find(|l| l.name == name)
            .unwrap()
    }

    #[test]
    fn activation_ste_passes_inside_and_blocks_outside_the_clip_range() {
        let exec = lenet();
        let mut p = Policy::new();
        // 2-bit asymmetric on [0, 3]: step 1, levels {0, 1, 2, 3}.
        p.set_activation("fc1", uniform(2, false, Granularity::Tensor));
        let ranges: ActivationRanges = [("fc1".to_string(), (0.0, 3.0))].into();
        let fq = FakeQuant::new(&exec, &p, &ranges, 0).unwrap();
        let x = Var::new(&[-0.5f32, 0.2, 1.4, 2.6, 3.0, 4.5], &Device::Cpu).unwrap();
        let y = fq
            .input(&layer(&exec, "fc1"), x.as_tensor().clone())
            .unwrap();
        assert_eq!(
            y.to_vec1::<f32>().unwrap(),
            vec![0.0, 0.0, 1.0, 3.0, 3.0, 3.0]
        );
        let c = Tensor::new(&[1f32, 2., 3., 4., 5., 6.], &Device::Cpu).unwrap();
        let grads = y.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // d/dx = c inside [0, 3], 0 outside.
        assert_eq!(g, vec![0.0, 2.0, 3.0, 4.0, 5.0, 0.0]);
        // Without gradient tracking the quantized tensor comes back directly.
        let plain = Tensor::new(&[1.4f32], &Device::Cpu).unwrap();
        let q = fq.input(&layer(&exec, "fc1"), plain).unwrap();
        assert!(!q.track_op());
        assert_eq!(q.to_vec1::<f32>().unwrap(), vec![1.0]);
    }

    #[test]
    fn weight_ste_clips_pow2_grid_and_cache_follows_weight_changes() {
        let exec = lenet();
        let mut p = Policy::new();
        // uniform-pow2 symmetric 3 bits: threshold 2^ceil(log2 max|w|), codes [-4, 3]:
        // the top code is one step short of the threshold, so w = 2 (= threshold) clips.
        p.set_weight(
            "fc3",
            QScheme::new(QuantKind::UniformPow2, 3, true, Granularity::Tensor),
        );
        let fq = FakeQuant::new(&exec, &p, &ActivationRanges::new(), 0).unwrap();
        let l = layer(&exec, "fc3");
        let mut vals = vec![0.1f32; 840];
        vals[0] = 2.0;
        vals[1] = -2.0;
        vals[2] = 0.6;
        let w = Var::from_vec(vals, (10, 84), &Device::Cpu).unwrap();
        let y = fq.weight(&l, w.as_tensor().clone()).unwrap();
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // step = 2 / 4 = 0.5: 2 -> 1.5 (clipped), -2 -> -2, 0.6 -> 0.5, 0.1 -> 0.
        assert_eq!(&yv[..4], &[1.5, -2.0, 0.5, 0.0]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(w.as_tensor()).unwrap();
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&g[..4], &[0.0, 1.0, 1.0, 1.0]);
        assert!(g[4..].iter().all(|&v| v == 1.0));
        // A changed weight is quantized anew.
        w.set(&w.as_tensor().affine(0.5, 0.0).unwrap()).unwrap();
        let y2 = fq.weight(&l, w.as_tensor().clone()).unwrap();
        let y2v = y2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // threshold 1, step 0.25: 1 -> 0.75, -1 -> -1, 0.3 -> 0.25, 0.05 -> 0.
        assert_eq!(&y2v[..4], &[0.75, -1.0, 0.25, 0.0]);
    }

    #[test]
    fn per_channel_weights_and_codebook_kinds() {
        let exec = lenet();
        let mut p = Policy::new();
        p.set_weight("conv1", uniform(4, true, Granularity::Channel));
        p.set_weight(
            "conv2",
            QScheme::new(QuantKind::Kmeans, 3, true, Granularity::Tensor),
        );
        p.set_weight("fc1", uniform(4, true, Granularity::Group(25)));
        let fq = FakeQuant::new(&exec, &p, &ActivationRanges::new(), 1).unwrap();
        let info = fq.layer_info();
        assert_eq!(info.len(), 3);
        let conv1 = &info[0];
        // 150 codes of 4 bits + 6 scales of 32 bits.
        assert_eq!(
            (conv1.weight_elems, conv1.weight_bits),
            (150, 150 * 4 + 6 * 32)
        );
        let conv2 = &info[1];
        // 2,400 codes of 3 bits + an 8-entry codebook.
        assert_eq!(conv2.weight_bits, 2400 * 3 + 8 * 32);
        // fc1: 48,000 codes + one scale per group of 25.
        assert_eq!(info[2].weight_bits, 48_000 * 4 + 48_000 / 25 * 32);
        // k-means weights take at most 8 distinct values.
        let l = layer(&exec, "conv2");
        let w = exec.var(l.weight).unwrap().as_tensor().detach();
        let q = fq.weight(&l, w).unwrap();
        let mut v = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.sort_by(f32::total_cmp);
        v.dedup();
        assert!(v.len() <= 8 && v.len() > 1, "{} levels", v.len());
        // Group block numbering agrees with per-element quantization on a weight whose
        // groups have very different ranges.
        assert_eq!(block_of(26, &[3, 50], 0, Granularity::Group(25)), 1);
        assert_eq!(block_of(7, &[2, 3, 4], 1, Granularity::Channel), 1);
        // Channel 0 of [2, 3, 4] along axis 1 is elements 0..4 then 12..16: 13 sits in group 2.
        assert_eq!(block_of(13, &[2, 3, 4], 1, Granularity::Group(2)), 2);
    }

    #[test]
    fn unknown_layers_and_missing_ranges_are_clear_errors() {
        let exec = lenet();
        let mut p = Policy::new();
        p.set_weight("conv_1", uniform(8, true, Granularity::Tensor));
        let e = FakeQuant::new(&exec, &p, &ActivationRanges::new(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'conv_1'") && e.contains("did you mean 'conv1'"),
            "{e}"
        );
        let data = Dataset::embedded_mnist_subset().unwrap().head(10);
        let e = calibrate(&exec, &data, "min-max", &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'conv_1'"), "{e}");
        let mut p = Policy::new();
        p.set_activation("fc2", uniform(8, false, Granularity::Tensor));
        let e = FakeQuant::new(&exec, &p, &ActivationRanges::new(), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'fc2'") && e.contains("calibrat"), "{e}");
        let e = calibrate(&exec, &data, "no-such-observer", &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("min-max"), "{e}");
        p.set_activation(
            "fc2",
            QScheme::new(QuantKind::Kmeans, 3, true, Granularity::Tensor),
        );
        let ranges: ActivationRanges = [("fc2".to_string(), (0.0, 1.0))].into();
        let e = FakeQuant::new(&exec, &p, &ranges, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'fc2'") && e.contains("uniform"), "{e}");
    }

    #[test]
    fn calibration_ranges_are_the_observed_extremes() {
        let exec = lenet();
        let data = Dataset::embedded_mnist_subset().unwrap().head(64);
        let mut p = Policy::new();
        p.set_activation("conv1", uniform(8, false, Granularity::Tensor));
        p.set_activation("fc3", uniform(8, true, Granularity::Tensor));
        let r = calibrate(&exec, &data, "min-max", &p).unwrap();
        assert_eq!(r.len(), 2);
        // conv1 sees the normalised raw pixels (x - 255·0.1307) / (255·0.3081): exactly the
        // data's extremes after normalisation.
        let (lo, hi) = r["conv1"];
        let (dmin, dmax) = data
            .images
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let norm = |v: f32| (v - 0.1307 * 255.0) / (0.3081 * 255.0);
        assert!((lo - norm(dmin)).abs() < 1e-4 && (hi - norm(dmax)).abs() < 1e-4);
        // fc3's input follows a ReLU; the symmetric range is ±max.
        let (a, b) = r["fc3"];
        assert!(a == -b && b > 0.0);
    }

    #[test]
    fn w8a8_mnist8_keeps_float_accuracy_on_1000_images() {
        let g = mixprec_graph::load_onnx(data_dir().join("models/mnist-8.onnx")).unwrap();
        let mut exec = Executor::new(g).unwrap();
        exec.free_batch_dim();
        let test = Dataset::load(DatasetKind::Mnist, Split::Test, Preprocess::Raw255).unwrap();
        let eval_set = test.head(1000);
        let rest: Vec<usize> = (1000..test.n).collect();
        let calib = calibration_subset(&test.subset(&rest).unwrap(), 256, 0).unwrap();
        let mut p = Policy::new();
        for l in exec.graph().layers() {
            p.set_weight(&l.name, uniform(8, true, Granularity::Channel));
            p.set_activation(&l.name, uniform(8, false, Granularity::Tensor));
        }
        assert_eq!(p.layers.len(), 3);
        let ranges = calibrate(&exec, &calib, "min-max", &p).unwrap();
        let fq = FakeQuant::new(&exec, &p, &ranges, 0).unwrap();
        let float = evaluate(&exec, &eval_set, 250, None, &mut |_, _| {}).unwrap();
        let quant = evaluate(&exec, &eval_set, 250, Some(&fq), &mut |_, _| {}).unwrap();
        assert!(float.accuracy > 0.97, "{float:?}");
        assert!(
            (quant.accuracy - float.accuracy).abs() <= 0.005,
            "float {} vs W8A8 {}",
            float.accuracy,
            quant.accuracy
        );
        // The hook really changes the computation.
        let (x, _) = eval_set.batch(0, 50);
        let a = exec.predict(x, &[1, 28, 28], None).unwrap();
        let b = exec.predict(x, &[1, 28, 28], Some(&fq)).unwrap();
        let max_abs = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let (d, scale) = (max_abs(&a.sub(&b).unwrap()), max_abs(&a));
        // mnist-8 logits reach the thousands on raw pixels; 8 bits move them by a few percent.
        assert!(
            d > 0.0 && d < 0.05 * scale,
            "max logit change {d} of {scale}"
        );
        assert!(fq.layer_info().iter().all(|i| i.weight_mse > 0.0));
    }

    #[test]
    fn gradient_quantization_is_unbiased_on_a_k_bit_grid() {
        let g = Tensor::new(&[0.3f32, -1.0, 0.05, 0.0, 0.77], &Device::Cpu).unwrap();
        let gq = GradQuant::new(3, 5).unwrap();
        // 3 bits: qmax = 3, step = max|g| / 3 = 1/3.
        let step = 1.0 / 3.0;
        let runs = 4000;
        let mut mean = [0f64; 5];
        for s in 0..runs {
            let q = gq.transform("fc1.weight", &g, s).unwrap();
            let v = q.to_vec1::<f32>().unwrap();
            for (i, &x) in v.iter().enumerate() {
                let k = x / step;
                assert!((k - k.round()).abs() < 1e-4, "{x} is off the grid");
                mean[i] += x as f64 / runs as f64;
            }
            assert!((v[1] + 1.0).abs() < 1e-6, "{}", v[1]);
            assert_eq!(v[3], 0.0);
        }
        for (m, t) in mean.iter().zip([0.3, -1.0, 0.05, 0.0, 0.77]) {
            assert!((m - t).abs() < 0.01, "mean {m} vs {t}");
        }
        // Reproducible for (seed, step, name); other names draw differently.
        let a = gq.transform("w", &g, 7).unwrap().to_vec1::<f32>().unwrap();
        let b = gq.transform("w", &g, 7).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        let differs = (0..20).any(|s| {
            gq.transform("w", &g, s).unwrap().to_vec1::<f32>().unwrap()
                != gq.transform("v", &g, s).unwrap().to_vec1::<f32>().unwrap()
        });
        assert!(differs);
        assert!(GradQuant::new(1, 0).is_err());
        let zero = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let z = gq
            .transform("w", &zero, 0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(z, vec![0.0; 4]);
    }
}
