//! The float executor: runs a [`Graph`] on candle tensors, with weights as trainable
//! variables so that gradients (and second-order products) flow to them.

use crate::error::{ExecError, Result};
use crate::ops;
use crate::ops_onnx;
use candle_core::{DType, Device, Tensor, Var};
use mixprec_graph::shape::{norm_axis, pad_amounts, reduce_axes, slice_ranges};
use mixprec_graph::{infer_with_values, Graph, Inferred, Layer, LayerKind, Op, ValueId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Once};

static INIT: Once = Once::new();

/// Enable exact second-order gradients in candle and run candle's element-wise kernels on the
/// calling thread. Must run before candle is used on a thread; [`Executor::new`] calls it, and
/// so should any program before it spawns threads.
///
/// `CANDLE_NUM_THREADS` defaults to 1 here (a value set by the user is kept): candle splits
/// element-wise ops of ≥ 64 Ki elements over a pool whose caller waits for its workers by
/// spinning, which collapses when the cores are shared (a `hessian-trace` run on ResNet-8 at
/// load average ≈ 4.5 on 2 cores: 135 s with 2 pool threads, 38 s with 1). The compute-bound
/// kernels (convolution, GEMM) still use every thread of rayon / `RAYON_NUM_THREADS`, which
/// defaults to the cores available to the process.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY-free in edition 2021: set once, before worker threads read them.
        if std::env::var_os("CANDLE_GRAD_DO_NOT_DETACH").is_none() {
            std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
        }
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        // candle's matrix product asks for its thread count on every call, and without
        // `RAYON_NUM_THREADS` that reads and parses /proc/cpuinfo each time (12 % of a
        // `hessian-trace` run). Rayon's own default is the same count.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    });
}

/// Changes a layer's weight or input activation during a forward pass (fake quantization,
/// noise injection, a damaged layer…). Identity by default.
pub trait LayerHook {
    /// The weight used by `layer`. `layer.weight` names the value `w` holds: for a recurrent
    /// layer this is called twice per pass, with W and then with R (node input 2).
    fn weight(&self, layer: &Layer, w: Tensor) -> Result<Tensor> {
        let _ = layer;
        Ok(w)
    }
    /// The input activation of `layer`.
    fn input(&self, layer: &Layer, x: Tensor) -> Result<Tensor> {
        let _ = layer;
        Ok(x)
    }
    /// The output of `layer` (before any following node sees it).
    fn output(&self, layer: &Layer, y: Tensor) -> Result<Tensor> {
        let _ = layer;
        Ok(y)
    }
}

/// How to run a forward pass.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Use weights as variables (gradients flow to them). Off for plain inference.
    pub track: bool,
    /// BatchNorm uses batch statistics (training); running statistics are updated by the caller.
    pub train_bn: bool,
    /// Values to return besides the graph outputs.
    pub keep: Vec<ValueId>,
    /// Per-layer hook.
    pub hook: Option<&'a dyn LayerHook>,
}

/// What a forward pass produced.
pub struct RunResult {
    /// Graph outputs in order.
    pub outputs: Vec<Tensor>,
    /// Kept values.
    pub kept: HashMap<ValueId, Tensor>,
    /// Batch statistics (mean, var) per BatchNorm running-mean value, when `train_bn`.
    pub bn_stats: Vec<(ValueId, ValueId, Tensor, Tensor)>,
}

/// Runs a graph on candle.
pub struct Executor {
    graph: Graph,
    device: Device,
    vars: BTreeMap<ValueId, Var>,
    layers_by_node: HashMap<usize, Layer>,
    infer_cache: Mutex<HashMap<InferKey, Arc<Inferred>>>,
}

/// Shape-inference cache key: input shapes plus the values of small inputs known at run time.
type InferKey = (Vec<Vec<usize>>, Vec<(ValueId, Vec<u64>)>);

/// Most cached shape inferences; the cache is cleared beyond this.
const INFER_CACHE_LIMIT: usize = 256;

/// Largest run-time integer input whose values take part in shape inference (shape
/// parameters such as a Reshape target, Slice starts or Pad pads given as inputs).
const KNOWN_INPUT_ELEMENTS: usize = 64;

fn node_err(node: &mixprec_graph::Node, detail: impl std::fmt::Display) -> ExecError {
    ExecError::Node {
        node: node.name.clone(),
        op: node.op.onnx_name().into(),
        detail: detail.to_string(),
    }
}

impl Executor {
    /// Build an executor for `graph` on the CPU.
    pub fn new(graph: Graph) -> Result<Self> {
        init();
        let device = Device::Cpu;
        let mut vars = BTreeMap::new();
        for (v, t) in &graph.initializers {
            if t.is_float() {
                vars.insert(*v, Var::from_tensor(&ops::from_host(t, &device)?)?);
            }
        }
        let layers_by_node = graph.layers().into_iter().map(|l| (l.node, l)).collect();
        Ok(Self {
            graph,
            device,
            vars,
            layers_by_node,
            infer_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The graph (with initializers as loaded; see [`Executor::sync_graph`]).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Mutable graph access for structural tweaks that keep weights (e.g. input shapes).
    pub(crate) fn graph_mut(&mut self) -> &mut Graph {
        self.infer_cache.get_mut().map(|c| c.clear()).ok();
        &mut self.graph
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The variable holding a float initializer.
    pub fn var(&self, v: ValueId) -> Option<&Var> {
        self.vars.get(&v)
    }

    /// All variables (float initializers), by value id.
    pub fn vars(&self) -> &BTreeMap<ValueId, Var> {
        &self.vars
    }

    /// Copy the current variable values back into the graph's initializers.
    pub fn sync_graph(&mut self) -> Result<()> {
        for (v, var) in &self.vars {
            let data = ops::to_vec_f32(var.as_tensor())?;
            if let Some(t) = self.graph.initializers.get_mut(v) {
                t.data = mixprec_graph::TensorData::F32(data);
            }
        }
        Ok(())
    }

    /// A copy of the graph with the current weights.
    pub fn graph_with_weights(&self) -> Result<Graph> {
        let mut g = self.graph.clone();
        for (v, var) in &self.vars {
            if let Some(t) = g.initializers.get_mut(v) {
                t.data = mixprec_graph::TensorData::F32(ops::to_vec_f32(var.as_tensor())?);
            }
        }
        Ok(g)
    }

    /// Shapes and constants for these input shapes (cached).
    pub fn inferred(&self, input_shapes: Vec<Vec<usize>>) -> Result<Arc<Inferred>> {
        self.inferred_with(input_shapes, BTreeMap::new())
    }

    /// [`Executor::inferred`] with the values of some inputs known (cached by value).
    fn inferred_with(
        &self,
        input_shapes: Vec<Vec<usize>>,
        known: BTreeMap<ValueId, mixprec_graph::Tensor>,
    ) -> Result<Arc<Inferred>> {
        let mut cache = self
            .infer_cache
            .lock()
            .map_err(|_| ExecError::Invalid("shape cache poisoned".into()))?;
        let key: InferKey = (
            input_shapes,
            known
                .iter()
                .map(|(v, t)| {
                    let bits = match &t.data {
                        mixprec_graph::TensorData::F32(d) => {
                            d.iter().map(|x| u64::from(x.to_bits())).collect()
                        }
                        mixprec_graph::TensorData::I64(d) => d.iter().map(|&x| x as u64).collect(),
                    };
                    (*v, bits)
                })
                .collect(),
        );
        if let Some(i) = cache.get(&key) {
            return Ok(i.clone());
        }
        let inf = Arc::new(infer_with_values(&self.graph, &key.0, &known)?);
        if cache.len() >= INFER_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, inf.clone());
        Ok(inf)
    }

    /// Values of run-time inputs that shape inference may use: small integer or boolean
    /// tensors (rank ≤ 1), such as shape parameters or a Dropout training flag.
    fn known_inputs(&self, inputs: &[Tensor]) -> Result<BTreeMap<ValueId, mixprec_graph::Tensor>> {
        let mut known = BTreeMap::new();
        for (x, &v) in inputs.iter().zip(&self.graph.inputs) {
            let shape = x.dims().to_vec();
            let t = match x.dtype() {
                DType::I64 | DType::U32 | DType::U8
                    if x.rank() <= 1 && x.elem_count() <= KNOWN_INPUT_ELEMENTS =>
                {
                    let d = x.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
                    mixprec_graph::Tensor::i64(shape, d)?
                }
                // Float scalars and scales that set an output shape.
                DType::F32 | DType::F64
                    if x.rank() <= 1
                        && x.elem_count() <= KNOWN_INPUT_ELEMENTS
                        && self.sets_shape(v) =>
                {
                    let d = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    mixprec_graph::Tensor::f32(shape, d)?
                }
                _ => continue,
            };
            known.insert(v, t);
        }
        Ok(known)
    }

    /// Whether float value `v` sets an output shape: an input of Range or the scales of
    /// Resize.
    fn sets_shape(&self, v: ValueId) -> bool {
        self.graph.nodes.iter().any(|n| match n.op {
            Op::Range => n.inputs.contains(&Some(v)),
            Op::Resize(_) => n.input(2) == Some(v),
            _ => false,
        })
    }

    /// Plain inference: graph outputs for the given inputs.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(self.run(inputs, &RunOptions::default())?.outputs)
    }

    /// Run the graph.
    pub fn run(&self, inputs: &[Tensor], opts: &RunOptions) -> Result<RunResult> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(ExecError::Invalid(format!(
                "the model has {} inputs, {} given",
                g.inputs.len(),
                inputs.len()
            )));
        }
        for (x, &v) in inputs.iter().zip(&g.inputs) {
            if let Some(decl) = &g.values[v].shape {
                let ok = decl.len() == x.rank()
                    && decl.iter().zip(x.dims()).all(|(d, &s)| match d {
                        mixprec_graph::Dim::Fixed(f) => *f == s,
                        mixprec_graph::Dim::Symbolic(_) => true,
                    });
                if !ok {
                    return Err(ExecError::Invalid(format!(
                        "input '{}' has shape {:?}, the model declares {:?}",
                        g.values[v].name,
                        x.dims(),
                        decl
                    )));
                }
            }
        }
        let inf = self.inferred_with(
            inputs.iter().map(|x| x.dims().to_vec()).collect(),
            self.known_inputs(inputs)?,
        )?;
        let mut remaining = g.use_counts();
        for &k in &opts.keep {
            remaining[k] += 1;
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for (x, &v) in inputs.iter().zip(&g.inputs) {
            vals[v] = Some(x.clone());
        }
        let mut bn_stats = Vec::new();
        let mut kept = HashMap::new();
        // With gradients on, values computed from weights stay on the tape even when shape
        // inference knows them (e.g. a Gather of a weight at indices given as an input).
        let mut taped = vec![false; g.values.len()];
        if opts.track {
            for v in self.vars.keys() {
                taped[*v] = true;
            }
        }
        for (ni, node) in g.nodes.iter().enumerate() {
            let on_tape = node.inputs.iter().flatten().any(|v| taped[*v]);
            let ints_only = node
                .outputs
                .iter()
                .all(|o| inf.consts.get(o).is_some_and(|t| !t.is_float()));
            // Values known before run time (shape sub-graphs) need no computation.
            if node.outputs.iter().all(|o| inf.consts.contains_key(o)) && (ints_only || !on_tape) {
                for &o in &node.outputs {
                    if remaining[o] > 0 {
                        vals[o] = Some(self.constant(o, &inf, opts.track)?);
                    }
                }
                continue;
            }
            let mut ins: Vec<Option<Tensor>> = Vec::with_capacity(node.inputs.len());
            for v in &node.inputs {
                ins.push(match v {
                    None => None,
                    Some(v) => Some(match &vals[*v] {
                        Some(t) => t.clone(),
                        None => self
                            .constant(*v, &inf, opts.track)
                            .map_err(|e| node_err(node, e))?,
                    }),
                });
            }
            let layer = self.layers_by_node.get(&ni);
            if let (Some(l), Some(hook)) = (layer, opts.hook) {
                if let Some(x) = ins[0].take() {
                    ins[0] = Some(hook.input(l, x)?);
                }
                if let Some(w) = ins[1].take() {
                    ins[1] = Some(hook.weight(l, w)?);
                }
                // A recurrent layer's recurrence weight R is quantized like W; the hook sees
                // it as the weight of a copy of the layer whose `weight` names R.
                if l.kind == LayerKind::Recurrent {
                    if let (Some(r_id), Some(r)) = (node.input(2), ins[2].take()) {
                        let lr = Layer {
                            weight: r_id,
                            ..l.clone()
                        };
                        ins[2] = Some(hook.weight(&lr, r)?);
                    }
                }
            }
            let mut outs = self.eval_node(node, &ins, &inf, opts, &mut bn_stats)?;
            if let (Some(l), Some(hook), Some(y)) = (layer, opts.hook, outs.first_mut()) {
                *y = hook.output(l, y.clone())?;
            }
            for (o, t) in node.outputs.iter().zip(outs) {
                vals[*o] = Some(t);
                taped[*o] = on_tape;
            }
            for v in node.inputs.iter().flatten() {
                remaining[*v] = remaining[*v].saturating_sub(1);
                if remaining[*v] == 0 {
                    vals[*v] = None;
                }
            }
            for &k in &opts.keep {
                if let Some(t) = node.outputs.contains(&k).then(|| vals[k].clone()).flatten() {
                    kept.insert(k, t);
                }
            }
        }
        for &k in &opts.keep {
            if let std::collections::hash_map::Entry::Vacant(slot) = kept.entry(k) {
                let t = match &vals[k] {
                    Some(t) => t.clone(),
                    None => self.constant(k, &inf, opts.track)?,
                };
                slot.insert(t);
            }
        }
        let outputs = g
            .outputs
            .iter()
            .map(|&o| match &vals[o] {
                Some(t) => Ok(t.clone()),
                None => self.constant(o, &inf, opts.track),
            })
            .collect::<Result<_>>()?;
        Ok(RunResult {
            outputs,
            kept,
            bn_stats,
        })
    }

    fn constant(&self, v: ValueId, inf: &Inferred, track: bool) -> Result<Tensor> {
        if let Some(var) = self.vars.get(&v) {
            return Ok(if track {
                var.as_tensor().clone()
            } else {
                var.as_tensor().detach()
            });
        }
        let t = inf.consts.get(&v).ok_or_else(|| {
            ExecError::Invalid(format!(
                "value '{}' is not available",
                self.graph.values[v].name
            ))
        })?;
        Ok(ops::from_host(t, &self.device)?)
    }

    fn host_ints(
        &self,
        node: &mixprec_graph::Node,
        inf: &Inferred,
        i: usize,
        what: &str,
    ) -> Result<Option<Vec<i64>>> {
        match node.input(i) {
            None => Ok(None),
            Some(v) => inf
                .consts
                .get(&v)
                .map(|t| Some(t.to_i64()))
                .ok_or_else(|| node_err(node, format!("{what} must be constant"))),
        }
    }

    fn eval_node(
        &self,
        node: &mixprec_graph::Node,
        ins: &[Option<Tensor>],
        inf: &Inferred,
        opts: &RunOptions,
        bn_stats: &mut Vec<(ValueId, ValueId, Tensor, Tensor)>,
    ) -> Result<Vec<Tensor>> {
        let e = |d: String| node_err(node, d);
        let ce = |d: candle_core::Error| node_err(node, d);
        let x = ins
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| e("missing input".into()))?;
        let input = |i: usize| {
            ins.get(i)
                .cloned()
                .flatten()
                .ok_or_else(|| node_err(node, format!("missing input {i}")))
        };
        let out_shape = |k: usize| {
            inf.shapes[node.outputs[k]]
                .clone()
                .ok_or_else(|| node_err(node, "unknown output shape"))
        };
        let one = |t: Tensor| Ok(vec![t]);
        let bin = |f: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| -> Result<Vec<Tensor>> {
            let (a, b) = ops::align(&x, &input(1)?).map_err(e)?;
            one(f(&a, &b).map_err(ce)?)
        };
        match &node.op {
            Op::Conv { window, group } => {
                let w = input(1)?;
                one(
                    ops::conv(&x, &w, ins.get(2).and_then(|b| b.as_ref()), window, *group)
                        .map_err(e)?,
                )
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let a = if *trans_a {
                    x.t().map_err(ce)?
                } else {
                    x.clone()
                };
                let b = input(1)?;
                let b = if *trans_b { b.t().map_err(ce)? } else { b };
                let mut y = ops::matmul(&a, &b).map_err(e)?;
                if *alpha != 1.0 {
                    y = y.affine(*alpha as f64, 0.0).map_err(ce)?;
                }
                if let Some(cb) = ins.get(2).cloned().flatten() {
                    let cb = if *beta != 1.0 {
                        cb.affine(*beta as f64, 0.0).map_err(ce)?
                    } else {
                        cb
                    };
                    y = y.broadcast_add(&cb).map_err(ce)?;
                }
                one(y)
            }
            Op::MatMul => one(ops::matmul(&x, &input(1)?).map_err(e)?),
            Op::Add => bin(Tensor::broadcast_add),
            Op::Sub => bin(Tensor::broadcast_sub),
            Op::Mul => bin(Tensor::broadcast_mul),
            Op::Div => bin(Tensor::broadcast_div),
            Op::Relu if ops::lean(&x) => one(crate::pointwise::relu(&x).map_err(ce)?),
            Op::Relu => one(x.relu().map_err(ce)?),
            Op::LeakyRelu { alpha } => {
                let neg = x
                    .neg()
                    .and_then(|n| n.relu())
                    .and_then(|n| n.affine(*alpha as f64, 0.0))
                    .map_err(ce)?;
                one((x.relu().map_err(ce)? - neg).map_err(ce)?)
            }
            Op::Clip => {
                let mut y = x.clone();
                if let Some(lo) = ins.get(1).cloned().flatten() {
                    y = y
                        .broadcast_maximum(&lo.to_dtype(y.dtype()).map_err(ce)?)
                        .map_err(ce)?;
                }
                if let Some(hi) = ins.get(2).cloned().flatten() {
                    y = y
                        .broadcast_minimum(&hi.to_dtype(y.dtype()).map_err(ce)?)
                        .map_err(ce)?;
                }
                one(y)
            }
            Op::Sigmoid => one(ops::sigmoid(&x).map_err(e)?),
            Op::Tanh => one(x.tanh().map_err(ce)?),
            Op::Exp => one(x.exp().map_err(ce)?),
            Op::Log => one(x.log().map_err(ce)?),
            Op::Sqrt => one(x.sqrt().map_err(ce)?),
            Op::Neg => one(x.neg().map_err(ce)?),
            Op::Abs => one(x.abs().map_err(ce)?),
            Op::BatchNorm { epsilon } => {
                let (s, b, m, v) = (input(1)?, input(2)?, input(3)?, input(4)?);
                if opts.train_bn {
                    let (y, bm, bv) = ops::batch_norm_train(&x, &s, &b, *epsilon).map_err(e)?;
                    if let (Some(mv), Some(vv)) = (node.input(3), node.input(4)) {
                        bn_stats.push((mv, vv, bm.detach(), bv.detach()));
                    }
                    one(y)
                } else {
                    one(ops::batch_norm(&x, &s, &b, &m, &v, *epsilon).map_err(e)?)
                }
            }
            Op::MaxPool(w) => one(ops::pool(&x, w, true, false).map_err(e)?),
            Op::AveragePool {
                window,
                count_include_pad,
            } => one(ops::pool(&x, window, false, *count_include_pad).map_err(e)?),
            Op::GlobalAveragePool | Op::GlobalMaxPool => {
                let flat = x.flatten_from(2).map_err(ce)?;
                let r = if matches!(node.op, Op::GlobalMaxPool) {
                    flat.max_keepdim(2)
                } else {
                    flat.mean_keepdim(2)
                };
                let shape = out_shape(0)?;
                one(r.and_then(|r| r.reshape(shape.as_slice())).map_err(ce)?)
            }
            Op::Dropout if ins.get(2).cloned().flatten().is_some() => {
                // Training mode with a non-zero ratio draws a random mask: not supported.
                let scalar = |t: &Tensor| -> Result<f32> {
                    Ok(ops::to_vec_f32(t)
                        .map_err(ce)?
                        .first()
                        .copied()
                        .unwrap_or(0.0))
                };
                let training = match ins.get(2).cloned().flatten() {
                    Some(t) => scalar(&t)? != 0.0,
                    None => false,
                };
                let ratio = match ins.get(1).cloned().flatten() {
                    Some(t) => scalar(&t)?,
                    None => 0.5,
                };
                if training && ratio != 0.0 {
                    return Err(e(format!(
                        "training-mode Dropout (ratio {ratio}) draws a random mask; mixprec \
                         runs Dropout for inference only (set training_mode to false)"
                    )));
                }
                let y = x.clone();
                if node.outputs.len() > 1 {
                    let mask = Tensor::ones(y.dims(), DType::I64, &self.device).map_err(ce)?;
                    return Ok(vec![y, mask]);
                }
                one(y)
            }
            Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Identity
            | Op::Dropout => {
                let y = x.reshape(out_shape(0)?.as_slice()).map_err(ce)?;
                if node.outputs.len() > 1 {
                    let mask = Tensor::ones(y.dims(), DType::I64, &self.device).map_err(ce)?;
                    return Ok(vec![y, mask]);
                }
                one(y)
            }
            Op::Transpose { perm } => {
                let perm: Vec<usize> = perm
                    .clone()
                    .unwrap_or_else(|| (0..x.rank()).rev().collect());
                one(x.permute(perm).and_then(|t| t.contiguous()).map_err(ce)?)
            }
            Op::Concat { axis } => {
                let a = norm_axis(*axis, x.rank())
                    .ok_or_else(|| e(format!("axis {axis} out of range")))?;
                let ts: Vec<Tensor> = ins.iter().flatten().cloned().collect();
                let any_f = ts.iter().any(|t| t.dtype() == DType::F32);
                let ts: Vec<Tensor> = if any_f {
                    ts.iter()
                        .map(|t| t.to_dtype(DType::F32))
                        .collect::<candle_core::Result<_>>()
                        .map_err(ce)?
                } else {
                    ts
                };
                one(Tensor::cat(&ts, a).map_err(ce)?)
            }
            Op::Softmax { axis, legacy } | Op::LogSoftmax { axis, legacy } => {
                let log = matches!(node.op, Op::LogSoftmax { .. });
                let a = norm_axis(*axis, x.rank())
                    .ok_or_else(|| e(format!("axis {axis} out of range")))?;
                if *legacy && a + 1 != x.rank() {
                    let dims = x.dims().to_vec();
                    let flat = x
                        .reshape((
                            dims[..a].iter().product::<usize>(),
                            dims[a..].iter().product::<usize>(),
                        ))
                        .map_err(ce)?;
                    let y = ops::softmax(&flat, 1, log).map_err(e)?;
                    return one(y.reshape(dims).map_err(ce)?);
                }
                one(ops::softmax(&x, a, log).map_err(e)?)
            }
            Op::Pad { mode } => {
                let pads = self.host_ints(node, inf, 1, "pads")?.unwrap_or_default();
                let axes = self.host_ints(node, inf, 3, "axes")?;
                let amounts = pad_amounts(x.rank(), &pads, axes.as_deref()).map_err(e)?;
                // The fill value may be a run-time input as well as a constant.
                let value = match ins.get(2).cloned().flatten() {
                    Some(t) => ops::to_vec_f32(&t)
                        .map_err(ce)?
                        .first()
                        .copied()
                        .unwrap_or(0.0) as f64,
                    None => 0.0,
                };
                one(ops::pad(&x, &amounts, *mode, value).map_err(e)?)
            }
            Op::Gather { axis } => {
                let a = norm_axis(*axis, x.rank())
                    .ok_or_else(|| e(format!("axis {axis} out of range")))?;
                let idx_t = input(1)?;
                let dim = x.dims()[a] as i64;
                let raw: Vec<i64> = idx_t
                    .to_dtype(DType::I64)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<i64>())
                    .map_err(ce)?;
                let idx: Vec<usize> = raw
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + dim } else { i };
                        (0..dim)
                            .contains(&j)
                            .then_some(j as usize)
                            .ok_or_else(|| e(format!("index {i} out of range for size {dim}")))
                    })
                    .collect::<Result<_>>()?;
                let y = ops::select(&x, a, &idx).map_err(e)?;
                one(y.reshape(out_shape(0)?.as_slice()).map_err(ce)?)
            }
            Op::Slice => {
                let st = self.host_ints(node, inf, 1, "starts")?.unwrap_or_default();
                let en = self.host_ints(node, inf, 2, "ends")?.unwrap_or_default();
                let axes = self.host_ints(node, inf, 3, "axes")?;
                let steps = self.host_ints(node, inf, 4, "steps")?;
                let ranges = slice_ranges(x.dims(), &st, &en, axes.as_deref(), steps.as_deref())
                    .map_err(e)?;
                let mut y = x.clone();
                for (dim, (start, step, count)) in ranges.into_iter().enumerate() {
                    if step == 1 && start == 0 && count == x.dims()[dim] {
                        continue;
                    }
                    y = if step == 1 {
                        y.narrow(dim, start as usize, count).map_err(ce)?
                    } else {
                        let idx: Vec<usize> = (0..count as i64)
                            .map(|k| (start + k * step) as usize)
                            .collect();
                        ops::select(&y, dim, &idx).map_err(e)?
                    };
                }
                one(y)
            }
            Op::Cast { to } => one(ops::cast(&x, *to).map_err(e)?),
            Op::ConstantOfShape { value } => {
                let shape = out_shape(0)?;
                let t = match &value.data {
                    mixprec_graph::TensorData::F32(v) => Tensor::full(
                        v.first().copied().unwrap_or(0.0),
                        shape.as_slice(),
                        &self.device,
                    ),
                    mixprec_graph::TensorData::I64(v) => Tensor::full(
                        v.first().copied().unwrap_or(0),
                        shape.as_slice(),
                        &self.device,
                    ),
                };
                one(t.map_err(ce)?)
            }
            Op::Recurrent(spec) => {
                let lens = ins
                    .get(4)
                    .cloned()
                    .flatten()
                    .map(|t| crate::rnn::sequence_lengths(&t))
                    .transpose()
                    .map_err(e)?;
                let arg = |i: usize| ins.get(i).and_then(|t| t.as_ref());
                let outs = crate::rnn::recurrent(
                    spec,
                    &crate::rnn::RecurrentInputs {
                        x: &x,
                        w: &input(1)?,
                        r: &input(2)?,
                        b: arg(3),
                        sequence_lens: lens.as_deref(),
                        initial_h: arg(5),
                        initial_c: arg(6),
                        p: arg(7),
                    },
                )
                .map_err(e)?;
                let all = [Some(outs.y), Some(outs.y_h), outs.y_c];
                all.into_iter()
                    .zip(spec.outputs)
                    .filter(|(_, produced)| *produced)
                    .map(|(t, _)| t.ok_or_else(|| e("only LSTM has a Y_c output".into())))
                    .collect()
            }
            Op::Unary(u) => one(ops_onnx::unary(&x, *u).map_err(ce)?),
            Op::Compare(k) => one(ops_onnx::compare(&x, &input(1)?, *k).map_err(ce)?),
            Op::Variadic(k) => {
                let ts: Vec<Tensor> = ins.iter().flatten().cloned().collect();
                one(ops_onnx::variadic(&ts, *k).map_err(ce)?)
            }
            Op::Pow => {
                // A known single-element exponent (x², x^0.5…) takes the direct path.
                let scalar = node
                    .input(1)
                    .and_then(|v| inf.consts.get(&v))
                    .filter(|t| t.len() == 1)
                    .map(|t| t.to_f32()[0]);
                let y = ops_onnx::pow(&x, &input(1)?, scalar).map_err(ce)?;
                one(y.reshape(out_shape(0)?.as_slice()).map_err(ce)?)
            }
            Op::Mod { fmod } => {
                let shape = out_shape(0)?;
                one(ops_onnx::modulo(&x, &input(1)?, *fmod, &shape).map_err(ce)?)
            }
            Op::PRelu => one(ops_onnx::prelu(&x, &input(1)?).map_err(ce)?),
            Op::Where => {
                let shape = out_shape(0)?;
                one(ops_onnx::select_where(&x, &input(1)?, &input(2)?, &shape).map_err(ce)?)
            }
            Op::Expand => {
                let shape = out_shape(0)?;
                let y = x.broadcast_as(shape.as_slice()).map_err(ce)?;
                one(y.contiguous().map_err(ce)?)
            }
            Op::Tile => {
                let reps = self.host_ints(node, inf, 1, "repeats")?.unwrap_or_default();
                let reps: Vec<usize> = reps.iter().map(|&r| r.max(0) as usize).collect();
                one(x.repeat(reps.as_slice()).map_err(ce)?)
            }
            Op::Range => Err(e(
                "start, limit and delta must be known before the run (constants, shape values \
                 or scalar inputs)"
                    .into(),
            )),
            Op::Split { axis, .. } => {
                let a = norm_axis(*axis, x.rank())
                    .ok_or_else(|| e(format!("axis {axis} out of range")))?;
                let mut start = 0;
                let mut outs = Vec::with_capacity(node.outputs.len());
                for k in 0..node.outputs.len() {
                    let len = out_shape(k)?[a];
                    outs.push(x.narrow(a, start, len).map_err(ce)?);
                    start += len;
                }
                Ok(outs)
            }
            Op::Reduce {
                kind,
                noop_with_empty_axes,
                ..
            } => {
                let axes = self.host_ints(node, inf, 1, "axes")?.unwrap_or_default();
                match reduce_axes(x.rank(), &axes, *noop_with_empty_axes).map_err(e)? {
                    None => one(x.clone()),
                    Some(ax) => {
                        let y = ops_onnx::reduce(&x, &ax, *kind).map_err(ce)?;
                        one(y.reshape(out_shape(0)?.as_slice()).map_err(ce)?)
                    }
                }
            }
            Op::ArgExtreme {
                max,
                axis,
                select_last_index,
                ..
            } => {
                let a = norm_axis(*axis, x.rank())
                    .ok_or_else(|| e(format!("axis {axis} out of range")))?;
                let y = ops_onnx::arg_extreme(&x, a, *max, *select_last_index).map_err(ce)?;
                one(y.reshape(out_shape(0)?.as_slice()).map_err(ce)?)
            }
            Op::LayerNorm { axis, epsilon } => {
                let a = norm_axis(*axis, x.rank())
                    .ok_or_else(|| e(format!("axis {axis} out of range")))?;
                let bias = ins.get(2).cloned().flatten();
                let (y, m, inv) =
                    ops_onnx::layer_norm(&x, &input(1)?, bias.as_ref(), a, *epsilon).map_err(ce)?;
                Ok([y, m, inv].into_iter().take(node.outputs.len()).collect())
            }
            Op::ConvTranspose {
                window,
                group,
                output_padding,
                output_shape,
            } => {
                let w = input(1)?;
                let kernel = if window.kernel.is_empty() {
                    w.dims().get(2..).unwrap_or_default().to_vec()
                } else {
                    window.kernel.clone()
                };
                let geo = mixprec_graph::shape::conv_transpose_geometry(
                    x.dims().get(2..).unwrap_or_default(),
                    &kernel,
                    window,
                    output_padding,
                    output_shape.as_deref(),
                )
                .map_err(e)?;
                let b = ins.get(2).cloned().flatten();
                one(
                    ops_onnx::conv_transpose(&x, &w, b.as_ref(), window, *group, &geo)
                        .map_err(ce)?,
                )
            }
            Op::Resize(r) => {
                let scales = match node.input(2) {
                    Some(v) => Some(
                        inf.consts
                            .get(&v)
                            .ok_or_else(|| e("scales must be constant".into()))?
                            .to_f32(),
                    ),
                    None => None,
                };
                let sizes = self.host_ints(node, inf, 3, "sizes")?;
                let (out, sc) = mixprec_graph::shape::resize_output(
                    x.dims(),
                    scales.as_deref(),
                    sizes.as_deref(),
                    r.axes.as_deref(),
                )
                .map_err(e)?;
                one(ops_onnx::resize(&x, &out, &sc, r).map_err(ce)?)
            }
            Op::InstanceNorm { epsilon } => {
                one(ops_onnx::instance_norm(&x, &input(1)?, &input(2)?, *epsilon).map_err(ce)?)
            }
            Op::Shape { .. } | Op::Size => Err(e(
                "expected a value computable from shapes; the input shape could not be inferred"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = Gather(w, idx) with `idx` a run-time int64 input that shape inference sees by value.
    fn gather_graph() -> Graph {
        let mut g = Graph::default();
        let w = g.add_value("w");
        let idx = g.add_value("idx");
        let y = g.add_value("y");
        g.values[idx].elem_type = 7;
        g.initializers.insert(
            w,
            mixprec_graph::Tensor::f32(vec![4, 2], (0..8).map(|x| x as f32).collect()).unwrap(),
        );
        g.inputs.push(idx);
        g.outputs.push(y);
        g.nodes.push(mixprec_graph::Node {
            name: "gather".into(),
            op: Op::Gather { axis: 0 },
            inputs: vec![Some(w), Some(idx)],
            outputs: vec![y],
        });
        g
    }

    #[test]
    fn known_int_inputs_are_keyed_by_value_and_keep_gradients() {
        let exec = Executor::new(gather_graph()).unwrap();
        let dev = Device::Cpu;
        let rows = |v: Vec<i64>| -> Vec<f32> {
            let idx = Tensor::new(v.as_slice(), &dev).unwrap();
            ops::to_vec_f32(&exec.forward(&[idx]).unwrap()[0]).unwrap()
        };
        assert_eq!(rows(vec![3, 1]), vec![6.0, 7.0, 2.0, 3.0]);
        assert_eq!(
            rows(vec![0, 2]),
            vec![0.0, 1.0, 4.0, 5.0],
            "not a stale cache"
        );
        // With gradients on, the gathered rows of the weight receive gradient.
        let idx = Tensor::new(&[3i64, 1], &dev).unwrap();
        let opts = RunOptions {
            track: true,
            ..Default::default()
        };
        let y = exec.run(&[idx], &opts).unwrap().outputs.remove(0);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let w = exec.vars().values().next().unwrap();
        let gw = ops::to_vec_f32(grads.get(w.as_tensor()).expect("gradient reaches w")).unwrap();
        assert_eq!(gw, vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
    }
}
