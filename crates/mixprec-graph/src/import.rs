//! ONNX import (opsets 7–21): protobuf → [`Graph`], with Constant nodes turned into
//! initializers, attribute forms of older opsets normalised to input forms, topological sort,
//! and constant folding of cheap sub-graphs (so a Reshape of a weight still yields a weight).

use crate::error::{GraphError, Result};
use crate::eval::eval_host;
use crate::ir::{
    Activation, ActivationKind, AutoPad, Compare, Dim, Graph, NearestMode, Node, Op, PadMode,
    Recurrent, RecurrentKind, Reduce, Resize, ResizeCoords, ResizeMode, RnnDirection, Unary, Value,
    ValueId, Variadic, Window,
};
use crate::onnx_proto::{self as pb, data_type};
use crate::tensor::{checked_numel, Tensor, TensorData};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Operators the importer accepts.
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GRU",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "LSTM",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "PRelu",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "RNN",
    "Round",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

/// Read and import an ONNX file; tensors stored as external data (as `torch.onnx.export`
/// and `onnx.save(..., save_as_external_data=True)` write large models) are read from their
/// files next to the model.
pub fn load_onnx(path: impl AsRef<Path>) -> Result<Graph> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
        path: path.into(),
        source,
    })?;
    let decode_err = |detail: String| GraphError::Decode {
        path: path.into(),
        detail,
    };
    let mut model =
        pb::ModelProto::decode(bytes.as_slice()).map_err(|e| decode_err(e.to_string()))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    inline_external_data(&mut model, dir)?;
    import_model(&model).map_err(|e| match e {
        GraphError::Decode { detail, .. } => decode_err(detail),
        other => other,
    })
}

/// Replaces the external data of every tensor of `model` (initializers and Constant-node
/// values) by its bytes, read as the ONNX external-data layout says: the file `location`
/// relative to the model's folder `dir`, from byte `offset` (default 0), `length` bytes
/// (default: to the end of the file).
fn inline_external_data(model: &mut pb::ModelProto, dir: &Path) -> Result<()> {
    let Some(g) = model.graph.as_mut() else {
        return Ok(());
    };
    let attrs = g
        .node
        .iter_mut()
        .flat_map(|n| n.attribute.iter_mut())
        .flat_map(|a| a.t.iter_mut());
    for t in g.initializer.iter_mut().chain(attrs) {
        inline_tensor(t, dir)?;
    }
    Ok(())
}

fn inline_tensor(t: &mut pb::TensorProto, dir: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    if t.external_data.is_empty() && t.data_location != 1 {
        return Ok(());
    }
    let bad = |d: String| GraphError::BadTensor {
        name: t.name.clone(),
        detail: d,
    };
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let number = |k: &str| -> Result<Option<u64>> {
        get(k)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(format!("external data {k} '{v}' is not a byte count")))
            })
            .transpose()
    };
    let location = get("location").ok_or_else(|| bad("external data without a location".into()))?;
    let rel = Path::new(location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(format!(
            "external data location '{location}' must be a path inside the model's folder"
        )));
    }
    let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
    let file = dir.join(rel);
    let io = |source| GraphError::Io {
        path: file.clone(),
        source,
    };
    let mut f = std::fs::File::open(&file).map_err(io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = Vec::new();
    match length {
        Some(n) => {
            buf.resize(
                usize::try_from(n)
                    .map_err(|_| bad(format!("external data length {n} is too large")))?,
                0,
            );
            f.read_exact(&mut buf).map_err(|e| {
                bad(format!(
                    "{}: cannot read {n} bytes at offset {offset} ({e}); the data file is shorter than the model says",
                    file.display()
                ))
            })?;
        }
        None => {
            f.read_to_end(&mut buf).map_err(io)?;
        }
    }
    t.raw_data = buf;
    t.external_data.clear();
    t.data_location = 0;
    Ok(())
}

/// Read an ONNX `TensorProto` file (the `input_*.pb` / `output_*.pb` files of the ONNX test
/// suites); convert it with [`tensor_from_proto`].
pub fn load_tensor_proto(path: impl AsRef<Path>) -> Result<pb::TensorProto> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
        path: path.into(),
        source,
    })?;
    pb::TensorProto::decode(bytes.as_slice()).map_err(|e| GraphError::BadTensor {
        name: path.display().to_string(),
        detail: format!("not a valid ONNX TensorProto file ({e})"),
    })
}

/// Import an ONNX model from bytes (its tensors must hold their data: external data needs
/// [`load_onnx`], which knows the model's folder).
pub fn import_onnx_bytes(bytes: &[u8]) -> Result<Graph> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| GraphError::Decode {
        path: "<bytes>".into(),
        detail: e.to_string(),
    })?;
    import_model(&model)
}

/// Import a decoded ONNX model.
fn import_model(model: &pb::ModelProto) -> Result<Graph> {
    let gp = model.graph.as_ref().ok_or_else(|| GraphError::Decode {
        path: "<bytes>".into(),
        detail: "the model has no graph (file truncated or not an ONNX model)".into(),
    })?;
    if gp.node.is_empty() && gp.output.is_empty() {
        return Err(GraphError::Decode {
            path: "<bytes>".into(),
            detail: "the graph is empty".into(),
        });
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(13);
    let mut b = Builder {
        g: Graph {
            name: gp.name.clone(),
            opset,
            ..Default::default()
        },
        ids: HashMap::new(),
    };
    for t in &gp.initializer {
        let tensor = tensor_from_proto(t)?;
        let id = b.value(&t.name);
        b.g.values[id].elem_type = t.data_type;
        b.g.initializers.insert(id, tensor);
    }
    for vi in &gp.input {
        let id = b.value(&vi.name);
        if b.g.initializers.contains_key(&id) {
            continue;
        }
        set_type(&mut b.g.values[id], vi)?;
        b.g.inputs.push(id);
    }
    let mut used_names: HashMap<String, usize> = HashMap::new();
    for (idx, np) in gp.node.iter().enumerate() {
        if !(np.domain.is_empty() || np.domain == "ai.onnx") {
            return Err(unsupported(np, opset));
        }
        let mut name = if np.name.is_empty() {
            format!("{}_{idx}", np.op_type)
        } else {
            np.name.clone()
        };
        let count = used_names.entry(name.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            name = format!("{name}_{idx}");
        }
        b.node(np, name, opset)?;
    }
    for vi in &gp.output {
        let id = *b.ids.get(&vi.name).ok_or_else(|| {
            GraphError::Invalid(format!(
                "graph output '{}' is not produced by any node or initializer",
                vi.name
            ))
        })?;
        set_type(&mut b.g.values[id], vi)?;
        b.g.outputs.push(id);
    }
    let mut g = b.g;
    topo_sort(&mut g)?;
    fold_constants(&mut g)?;
    Ok(g)
}

fn set_type(v: &mut Value, vi: &pb::ValueInfoProto) -> Result<()> {
    if let Some(t) = &vi.r#type {
        let kind = [
            (t.sequence_type.is_some(), "a sequence"),
            (t.map_type.is_some(), "a map"),
            (t.sparse_tensor_type.is_some(), "a sparse tensor"),
            (t.optional_type.is_some(), "an optional"),
        ]
        .into_iter()
        .find_map(|(is, what)| is.then_some(what));
        if let Some(what) = kind {
            return Err(GraphError::BadTensor {
                name: vi.name.clone(),
                detail: format!(
                    "graph input or output is {what}; mixprec supports dense tensors only"
                ),
            });
        }
    }
    if let Some(tt) = vi.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) {
        v.elem_type = tt.elem_type;
        v.shape = tt.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match (d.dim_value, &d.dim_param) {
                    (Some(x), _) if x > 0 => Dim::Fixed(x as usize),
                    (_, Some(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                    _ => Dim::Symbolic("?".into()),
                })
                .collect()
        });
    }
    Ok(())
}

fn unsupported(np: &pb::NodeProto, opset: i64) -> GraphError {
    GraphError::UnsupportedOp {
        op_type: np.op_type.clone(),
        domain: np.domain.clone(),
        opset,
        node: np.name.clone(),
        supported: SUPPORTED_OPS.join(", "),
    }
}

/// Convert an ONNX TensorProto to a host tensor.
pub fn tensor_from_proto(t: &pb::TensorProto) -> Result<Tensor> {
    let bad = |d: String| GraphError::BadTensor {
        name: t.name.clone(),
        detail: d,
    };
    if !t.external_data.is_empty() || t.data_location == 1 {
        return Err(bad(
            "the tensor's data is in an external file; load the model from its path (next to its data file) so that the data can be read".into(),
        ));
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<_>>()?;
    let n = checked_numel(&shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let raw = &t.raw_data;
    let width = match t.data_type {
        data_type::FLOAT | data_type::INT32 | data_type::UINT32 => 4,
        data_type::DOUBLE | data_type::INT64 | data_type::UINT64 => 8,
        data_type::FLOAT16 | data_type::BFLOAT16 | data_type::INT16 | data_type::UINT16 => 2,
        data_type::INT8 | data_type::UINT8 | data_type::BOOL => 1,
        other => return Err(bad(format!("element type {other} is not supported"))),
    };
    if !raw.is_empty() && raw.len() != n * width {
        return Err(bad(format!(
            "raw data has {} bytes, shape {shape:?} needs {}",
            raw.len(),
            n * width
        )));
    }
    let chunks = || raw.chunks_exact(width);
    let data = match t.data_type {
        data_type::FLOAT if !raw.is_empty() => TensorData::F32(
            chunks()
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        data_type::FLOAT => TensorData::F32(t.float_data.clone()),
        data_type::DOUBLE if !raw.is_empty() => TensorData::F32(
            chunks()
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        ),
        data_type::DOUBLE => TensorData::F32(t.double_data.iter().map(|&x| x as f32).collect()),
        data_type::FLOAT16 | data_type::BFLOAT16 => {
            let bits: Vec<u16> = if raw.is_empty() {
                t.int32_data.iter().map(|&x| x as u16).collect()
            } else {
                chunks().map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
            };
            TensorData::F32(
                bits.iter()
                    .map(|&h| {
                        if t.data_type == data_type::BFLOAT16 {
                            f32::from_bits((h as u32) << 16)
                        } else {
                            f16_to_f32(h)
                        }
                    })
                    .collect(),
            )
        }
        data_type::INT64 if !raw.is_empty() => TensorData::I64(
            chunks()
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        data_type::INT64 => TensorData::I64(t.int64_data.clone()),
        data_type::UINT64 if !raw.is_empty() => TensorData::I64(
            chunks()
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i64)
                .collect(),
        ),
        data_type::UINT64 => TensorData::I64(t.uint64_data.iter().map(|&x| x as i64).collect()),
        dt if !raw.is_empty() => TensorData::I64(
            chunks()
                .map(|c| match dt {
                    data_type::INT32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                    data_type::UINT32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                    data_type::INT16 => i16::from_le_bytes([c[0], c[1]]) as i64,
                    data_type::UINT16 => u16::from_le_bytes([c[0], c[1]]) as i64,
                    data_type::INT8 => c[0] as i8 as i64,
                    _ => c[0] as i64,
                })
                .collect(),
        ),
        _ => TensorData::I64(t.int32_data.iter().map(|&x| x as i64).collect()),
    };
    let len = match &data {
        TensorData::F32(v) => v.len(),
        TensorData::I64(v) => v.len(),
    };
    if len != n {
        return Err(bad(format!(
            "holds {len} values, shape {shape:?} needs {n}"
        )));
    }
    Ok(Tensor { shape, data })
}

/// IEEE half → f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let s = ((h >> 15) & 1) as u32;
    let e = ((h >> 10) & 0x1f) as u32;
    let m = (h & 0x3ff) as u32;
    let bits = if e == 0 {
        if m == 0 {
            s << 31
        } else {
            // subnormal
            let mut e2 = 127 - 15 + 1;
            let mut m2 = m;
            while m2 & 0x400 == 0 {
                m2 <<= 1;
                e2 -= 1;
            }
            (s << 31) | ((e2 as u32) << 23) | ((m2 & 0x3ff) << 13)
        }
    } else if e == 31 {
        (s << 31) | (0xff << 23) | (m << 13)
    } else {
        (s << 31) | ((e + 127 - 15) << 23) | (m << 13)
    };
    f32::from_bits(bits)
}

struct Builder {
    g: Graph,
    ids: HashMap<String, ValueId>,
}

struct Attrs<'a>(&'a [pb::AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn strings(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }
}

/// Attributes of an ONNX RNN / GRU / LSTM node, checked. `r_shape` is the shape of R when it
/// is a constant (for a missing `hidden_size`); `outputs` says which of Y, Y_h, Y_c are named.
fn recurrent_attrs(
    a: &Attrs,
    kind: RecurrentKind,
    r_shape: Option<&[usize]>,
    outputs: [bool; 3],
) -> std::result::Result<Recurrent, String> {
    let direction = match a.string("direction").as_deref().unwrap_or("forward") {
        "forward" => RnnDirection::Forward,
        "reverse" => RnnDirection::Reverse,
        "bidirectional" => RnnDirection::Bidirectional,
        o => {
            return Err(format!(
                "direction '{o}' is not one of forward, reverse, bidirectional"
            ))
        }
    };
    let hidden_size = match a.get("hidden_size") {
        Some(h) if h.i > 0 => h.i as usize,
        Some(h) => return Err(format!("hidden_size {} must be positive", h.i)),
        None => match r_shape {
            Some([_, _, h]) if *h > 0 => *h,
            _ => {
                return Err(
                    "hidden_size is missing and R is not a constant [num_directions, \
                     gates·hidden, hidden] tensor to read it from"
                        .into(),
                )
            }
        },
    };
    let layout = a.int("layout", 0);
    if layout != 0 && layout != 1 {
        return Err(format!("layout {layout} is not 0 or 1"));
    }
    let clip = match a.get("clip") {
        None => None,
        Some(c) if c.f > 0.0 && c.f.is_finite() => Some(c.f),
        Some(c) => return Err(format!("clip {} must be a positive finite threshold", c.f)),
    };
    let input_forget = a.int("input_forget", 0) != 0;
    if input_forget && kind != RecurrentKind::Lstm {
        return Err("input_forget applies to LSTM only".into());
    }
    let linear_before_reset = a.int("linear_before_reset", 0) != 0;
    if linear_before_reset && kind != RecurrentKind::Gru {
        return Err("linear_before_reset applies to GRU only".into());
    }
    if outputs[2] && kind != RecurrentKind::Lstm {
        return Err("only LSTM has a third output (Y_c)".into());
    }
    let dirs = direction.count();
    let per = kind.activation_count();
    let mut names = a.strings("activations");
    if names.is_empty() {
        let defaults: &[&str] = match kind {
            RecurrentKind::Rnn => &["Tanh"],
            RecurrentKind::Gru => &["Sigmoid", "Tanh"],
            RecurrentKind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        };
        names = (0..dirs)
            .flat_map(|_| defaults.iter().map(|s| s.to_string()))
            .collect();
    } else if kind == RecurrentKind::Rnn && dirs == 1 && names.len() == 2 {
        // The RNN schema's default lists two functions; a forward RNN uses the first.
        names.truncate(1);
    }
    if names.len() != per * dirs {
        return Err(format!(
            "{} activations given ({}); a {} {} needs {} ({} per direction)",
            names.len(),
            names.join(", "),
            direction.onnx_name(),
            kind.onnx_name(),
            per * dirs,
            per
        ));
    }
    let alphas = a.floats("activation_alpha");
    let betas = a.floats("activation_beta");
    let (mut ai, mut bi) = (alphas.iter(), betas.iter());
    let mut activations = Vec::with_capacity(names.len());
    for name in &names {
        let kind = ActivationKind::ALL
            .into_iter()
            .find(|k| k.onnx_name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "activation '{name}' is not supported ({} are)",
                    ActivationKind::ALL.map(|k| k.onnx_name()).join(", ")
                )
            })?;
        // alpha and beta are consumed in order by the functions that take them, with the
        // defaults of the ONNX operators of the same name.
        let (default_alpha, default_beta) = match kind {
            ActivationKind::LeakyRelu => (Some(0.01), None),
            ActivationKind::HardSigmoid => (Some(0.2), Some(0.5)),
            ActivationKind::Elu => (Some(1.0), None),
            _ => (None, None),
        };
        let (uses_a, uses_b) = kind.uses_alpha_beta();
        let mut act = Activation::plain(kind);
        if uses_a {
            act.alpha =
                ai.next().copied().or(default_alpha).ok_or_else(|| {
                    format!("activation {name} needs a value in activation_alpha")
                })?;
        }
        if uses_b {
            act.beta = bi
                .next()
                .copied()
                .or(default_beta)
                .ok_or_else(|| format!("activation {name} needs a value in activation_beta"))?;
        }
        activations.push(act);
    }
    Ok(Recurrent {
        kind,
        hidden_size,
        direction,
        activations,
        clip,
        input_forget,
        linear_before_reset,
        batch_first: layout == 1,
        outputs,
    })
}

impl Builder {
    fn value(&mut self, name: &str) -> ValueId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.g.add_value(name);
        self.ids.insert(name.to_string(), id);
        id
    }

    /// Values are assigned once (SSA): a node output must not redefine an existing value.
    fn check_new(&self, value: &str, node: &str, op: &str) -> Result<()> {
        if self.ids.contains_key(value) {
            return Err(GraphError::Invalid(format!(
                "node '{node}' ({op}) writes '{value}', which an earlier node, graph input or \
                 initializer already defines (each value must be assigned once)"
            )));
        }
        Ok(())
    }

    fn constant(&mut self, name: String, t: Tensor) -> ValueId {
        let id = self.value(&name);
        self.g.values[id].elem_type = if t.is_float() {
            data_type::FLOAT
        } else {
            data_type::INT64
        };
        self.g.initializers.insert(id, t);
        id
    }

    fn node(&mut self, np: &pb::NodeProto, name: String, opset: i64) -> Result<()> {
        let a = Attrs(&np.attribute);
        let bad = |d: &str| GraphError::BadNode {
            node: name.clone(),
            op: np.op_type.clone(),
            detail: d.into(),
        };
        let mut inputs: Vec<Option<ValueId>> = Vec::with_capacity(np.input.len());
        for s in &np.input {
            inputs.push(if s.is_empty() {
                None
            } else {
                Some(*self.ids.get(s).ok_or_else(|| {
                    GraphError::Invalid(format!(
                        "node '{name}' ({}) reads '{s}', which no earlier node, input or initializer defines",
                        np.op_type
                    ))
                })?)
            });
        }
        let window = |a: &Attrs| -> Result<Window> {
            let to_us = |v: Option<Vec<i64>>| -> Result<Vec<usize>> {
                v.unwrap_or_default()
                    .iter()
                    .map(|&x| {
                        usize::try_from(x)
                            .map_err(|_| bad(&format!("negative window attribute {x}")))
                    })
                    .collect()
            };
            let auto_pad = match a.string("auto_pad").as_deref() {
                None | Some("NOTSET") | Some("") => AutoPad::NotSet,
                Some("SAME_UPPER") => AutoPad::SameUpper,
                Some("SAME_LOWER") => AutoPad::SameLower,
                Some("VALID") => AutoPad::Valid,
                Some(o) => return Err(bad(&format!("unknown auto_pad '{o}'"))),
            };
            Ok(Window {
                kernel: to_us(a.ints("kernel_shape"))?,
                strides: to_us(a.ints("strides"))?,
                pads: to_us(a.ints("pads"))?,
                dilations: to_us(a.ints("dilations"))?,
                auto_pad,
                ceil_mode: a.int("ceil_mode", 0) != 0,
            })
        };
        // Inputs `min..=max` given, the first `min` of them non-empty.
        let need = |inputs: &[Option<ValueId>], min: usize, max: usize| -> Result<()> {
            if inputs.len() < min || inputs.len() > max || inputs[..min].iter().any(|i| i.is_none())
            {
                return Err(bad(&format!(
                    "has {} inputs; {} takes {}",
                    inputs.len(),
                    np.op_type,
                    if min == max {
                        format!("{min}")
                    } else {
                        format!("{min} to {max}")
                    }
                )));
            }
            Ok(())
        };
        let ints_const = |this: &mut Self, suffix: &str, v: Vec<i64>| {
            let n = v.len();
            Some(this.constant(
                format!("{name}::{suffix}"),
                Tensor {
                    shape: vec![n],
                    data: TensorData::I64(v),
                },
            ))
        };
        let op = match np.op_type.as_str() {
            "Constant" => {
                let t = if let Some(t) = a.get("value").and_then(|x| x.t.as_ref()) {
                    tensor_from_proto(t)?
                } else if let Some(x) = a.get("value_float") {
                    Tensor {
                        shape: vec![],
                        data: TensorData::F32(vec![x.f]),
                    }
                } else if let Some(x) = a.get("value_floats") {
                    Tensor {
                        shape: vec![x.floats.len()],
                        data: TensorData::F32(x.floats.clone()),
                    }
                } else if let Some(x) = a.get("value_int") {
                    Tensor {
                        shape: vec![],
                        data: TensorData::I64(vec![x.i]),
                    }
                } else if let Some(x) = a.get("value_ints") {
                    Tensor {
                        shape: vec![x.ints.len()],
                        data: TensorData::I64(x.ints.clone()),
                    }
                } else {
                    return Err(bad("Constant without a supported value attribute (sparse and string constants are not supported)"));
                };
                let out = np.output.first().ok_or_else(|| bad("no output"))?;
                self.check_new(out, &name, &np.op_type)?;
                self.constant(out.clone(), t);
                return Ok(());
            }
            "Conv" => {
                let group = a.int("group", 1);
                if group < 1 {
                    return Err(bad("group must be ≥ 1"));
                }
                Op::Conv {
                    window: window(&a)?,
                    group: group as usize,
                }
            }
            "ConvTranspose" => {
                need(&inputs, 2, 3)?;
                let group = a.int("group", 1);
                if group < 1 {
                    return Err(bad("group must be ≥ 1"));
                }
                let to_us = |name: &str| -> Result<Option<Vec<usize>>> {
                    a.ints(name)
                        .map(|v| {
                            v.iter()
                                .map(|&x| {
                                    usize::try_from(x)
                                        .map_err(|_| bad(&format!("negative {name} value {x}")))
                                })
                                .collect()
                        })
                        .transpose()
                };
                let output_shape = to_us("output_shape")?;
                Op::ConvTranspose {
                    window: window(&a)?,
                    group: group as usize,
                    output_padding: to_us("output_padding")?.unwrap_or_default(),
                    output_shape,
                }
            }
            "Gemm" => Op::Gemm {
                alpha: a.float("alpha", 1.0),
                beta: a.float("beta", 1.0),
                trans_a: a.int("transA", 0) != 0,
                trans_b: a.int("transB", 0) != 0,
            },
            "MatMul" => Op::MatMul,
            "Add" | "Sub" | "Mul" | "Div" => {
                if opset < 7 && a.int("broadcast", 0) != 0 {
                    return Err(bad("legacy (opset < 7) broadcast attribute is not supported; convert the model to opset ≥ 7"));
                }
                match np.op_type.as_str() {
                    "Add" => Op::Add,
                    "Sub" => Op::Sub,
                    "Mul" => Op::Mul,
                    _ => Op::Div,
                }
            }
            "Relu" => Op::Relu,
            "LeakyRelu" => Op::LeakyRelu {
                alpha: a.float("alpha", 0.01),
            },
            "Sigmoid" => Op::Sigmoid,
            "Tanh" => Op::Tanh,
            "Exp" => Op::Exp,
            "Log" => Op::Log,
            "Sqrt" => Op::Sqrt,
            "Neg" => Op::Neg,
            "Abs" => Op::Abs,
            "Clip" => {
                if opset < 11 {
                    let lo = a.float("min", f32::MIN);
                    let hi = a.float("max", f32::MAX);
                    inputs.truncate(1);
                    let min = self.constant(
                        format!("{name}::min"),
                        Tensor {
                            shape: vec![],
                            data: TensorData::F32(vec![lo]),
                        },
                    );
                    let max = self.constant(
                        format!("{name}::max"),
                        Tensor {
                            shape: vec![],
                            data: TensorData::F32(vec![hi]),
                        },
                    );
                    inputs.push(Some(min));
                    inputs.push(Some(max));
                }
                Op::Clip
            }
            "BatchNormalization" => {
                if np.output.len() > 1 && a.int("training_mode", 0) != 0 {
                    return Err(bad("training-mode BatchNormalization is not supported; export the model for inference"));
                }
                if inputs.len() != 5 {
                    return Err(bad("expects 5 inputs (X, scale, B, mean, var)"));
                }
                Op::BatchNorm {
                    epsilon: a.float("epsilon", 1e-5),
                }
            }
            "MaxPool" => {
                if a.int("storage_order", 0) != 0 {
                    return Err(bad("storage_order=1 is not supported"));
                }
                let w = window(&a)?;
                if np.output.len() > 1 {
                    return Err(bad("the Indices output of MaxPool is not supported"));
                }
                Op::MaxPool(w)
            }
            "AveragePool" => Op::AveragePool {
                window: window(&a)?,
                count_include_pad: a.int("count_include_pad", 0) != 0,
            },
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "GlobalMaxPool" => Op::GlobalMaxPool,
            "Flatten" => Op::Flatten {
                axis: a.int("axis", 1),
            },
            "Reshape" => {
                if opset < 5 {
                    let shape = a
                        .ints("shape")
                        .ok_or_else(|| bad("missing shape attribute"))?;
                    inputs.truncate(1);
                    inputs.push(ints_const(self, "shape", shape));
                }
                Op::Reshape {
                    allowzero: a.int("allowzero", 0) != 0,
                }
            }
            "Transpose" => Op::Transpose {
                perm: a
                    .ints("perm")
                    .map(|p| {
                        p.iter()
                            .map(|&x| usize::try_from(x).map_err(|_| bad("negative perm")))
                            .collect::<Result<_>>()
                    })
                    .transpose()?,
            },
            "Concat" => Op::Concat {
                axis: a.int("axis", if opset < 4 { 1 } else { 0 }),
            },
            "Softmax" | "LogSoftmax" => {
                let legacy = opset < 13;
                let axis = a.int("axis", if legacy { 1 } else { -1 });
                if np.op_type == "Softmax" {
                    Op::Softmax { axis, legacy }
                } else {
                    Op::LogSoftmax { axis, legacy }
                }
            }
            "Identity" => Op::Identity,
            "Dropout" => Op::Dropout,
            "Pad" => {
                let mode = match a.string("mode").as_deref().unwrap_or("constant") {
                    "constant" => PadMode::Constant,
                    "reflect" => PadMode::Reflect,
                    "edge" => PadMode::Edge,
                    o => {
                        return Err(bad(&format!(
                            "pad mode '{o}' is not supported (constant, reflect, edge are)"
                        )))
                    }
                };
                if opset < 11 {
                    let pads = a
                        .ints("pads")
                        .or_else(|| a.ints("paddings"))
                        .ok_or_else(|| bad("missing pads"))?;
                    let value = a.float("value", 0.0);
                    inputs.truncate(1);
                    inputs.push(ints_const(self, "pads", pads));
                    let v = self.constant(
                        format!("{name}::value"),
                        Tensor {
                            shape: vec![],
                            data: TensorData::F32(vec![value]),
                        },
                    );
                    inputs.push(Some(v));
                }
                Op::Pad { mode }
            }
            "Squeeze" | "Unsqueeze" => {
                if opset < 13 {
                    if let Some(axes) = a.ints("axes") {
                        inputs.truncate(1);
                        inputs.push(ints_const(self, "axes", axes));
                    } else if np.op_type == "Unsqueeze" {
                        return Err(bad("missing axes"));
                    }
                }
                if np.op_type == "Squeeze" {
                    Op::Squeeze
                } else {
                    Op::Unsqueeze
                }
            }
            "Shape" => Op::Shape {
                start: a.int("start", 0),
                end: a.get("end").map(|x| x.i),
            },
            "Gather" => Op::Gather {
                axis: a.int("axis", 0),
            },
            "Slice" => {
                if opset < 10 {
                    let starts = a.ints("starts").ok_or_else(|| bad("missing starts"))?;
                    let ends = a.ints("ends").ok_or_else(|| bad("missing ends"))?;
                    let axes = a.ints("axes");
                    inputs.truncate(1);
                    inputs.push(ints_const(self, "starts", starts));
                    inputs.push(ints_const(self, "ends", ends));
                    if let Some(ax) = axes {
                        inputs.push(ints_const(self, "axes", ax));
                    }
                }
                Op::Slice
            }
            "ConstantOfShape" => {
                let value = match a.get("value").and_then(|x| x.t.as_ref()) {
                    Some(t) => tensor_from_proto(t)?,
                    None => Tensor {
                        shape: vec![1],
                        data: TensorData::F32(vec![0.0]),
                    },
                };
                Op::ConstantOfShape { value }
            }
            "Cast" => Op::Cast {
                to: a.int("to", 1) as i32,
            },
            "RNN" | "GRU" | "LSTM" => {
                let kind = match np.op_type.as_str() {
                    "RNN" => RecurrentKind::Rnn,
                    "GRU" => RecurrentKind::Gru,
                    _ => RecurrentKind::Lstm,
                };
                let max_inputs = if kind == RecurrentKind::Lstm { 8 } else { 6 };
                if inputs.len() < 3 || inputs[..3].iter().any(|i| i.is_none()) {
                    return Err(bad("needs inputs X, W and R"));
                }
                if inputs.len() > max_inputs {
                    return Err(bad(&format!(
                        "has {} inputs, {} takes at most {max_inputs}",
                        inputs.len(),
                        np.op_type
                    )));
                }
                if np.output.len() > 3 {
                    return Err(bad("has more than three outputs"));
                }
                let mut outputs = [false; 3];
                for (k, o) in np.output.iter().enumerate() {
                    outputs[k] = !o.is_empty();
                }
                let r_shape = inputs[2]
                    .and_then(|r| self.g.initializers.get(&r))
                    .map(|t| t.shape.clone());
                Op::Recurrent(
                    recurrent_attrs(&a, kind, r_shape.as_deref(), outputs).map_err(|d| bad(&d))?,
                )
            }
            "Erf" | "Reciprocal" | "Floor" | "Ceil" | "Round" | "Sign" | "Softplus" | "Not"
            | "HardSwish" | "Elu" | "Selu" | "HardSigmoid" | "Gelu" | "Softsign"
            | "ThresholdedRelu" | "Celu" => {
                let u = match np.op_type.as_str() {
                    "Erf" => Unary::Erf,
                    "Reciprocal" => Unary::Reciprocal,
                    "Floor" => Unary::Floor,
                    "Ceil" => Unary::Ceil,
                    "Round" => Unary::Round,
                    "Sign" => Unary::Sign,
                    "Softplus" => Unary::Softplus,
                    "Not" => Unary::Not,
                    "HardSwish" => Unary::HardSwish,
                    "Softsign" => Unary::Softsign,
                    "ThresholdedRelu" => Unary::ThresholdedRelu {
                        alpha: a.float("alpha", 1.0),
                    },
                    "Celu" => {
                        let alpha = a.float("alpha", 1.0);
                        if alpha == 0.0 || !alpha.is_finite() {
                            return Err(bad(&format!("alpha {alpha} must be non-zero and finite")));
                        }
                        Unary::Celu { alpha }
                    }
                    "Elu" => Unary::Elu {
                        alpha: a.float("alpha", 1.0),
                    },
                    "Selu" => Unary::Selu {
                        alpha: a.float("alpha", 1.673_263_2),
                        gamma: a.float("gamma", 1.050_701),
                    },
                    "HardSigmoid" => Unary::HardSigmoid {
                        alpha: a.float("alpha", 0.2),
                        beta: a.float("beta", 0.5),
                    },
                    _ => Unary::Gelu {
                        tanh: match a.string("approximate").as_deref().unwrap_or("none") {
                            "none" => false,
                            "tanh" => true,
                            o => {
                                return Err(bad(&format!(
                                    "approximate '{o}' is not one of none, tanh"
                                )))
                            }
                        },
                    },
                };
                need(&inputs, 1, 1)?;
                Op::Unary(u)
            }
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or"
            | "Xor" => {
                need(&inputs, 2, 2)?;
                Op::Compare(match np.op_type.as_str() {
                    "Equal" => Compare::Equal,
                    "Less" => Compare::Less,
                    "LessOrEqual" => Compare::LessOrEqual,
                    "Greater" => Compare::Greater,
                    "And" => Compare::And,
                    "Or" => Compare::Or,
                    "Xor" => Compare::Xor,
                    _ => Compare::GreaterOrEqual,
                })
            }
            "Min" | "Max" | "Sum" | "Mean" => {
                if inputs.is_empty() || inputs.iter().any(|i| i.is_none()) {
                    return Err(bad("needs one or more inputs, none of them empty"));
                }
                Op::Variadic(match np.op_type.as_str() {
                    "Min" => Variadic::Min,
                    "Max" => Variadic::Max,
                    "Sum" => Variadic::Sum,
                    _ => Variadic::Mean,
                })
            }
            "Pow" => {
                need(&inputs, 2, 2)?;
                Op::Pow
            }
            "Mod" => {
                need(&inputs, 2, 2)?;
                let fmod = match a.int("fmod", 0) {
                    0 => false,
                    1 => true,
                    f => return Err(bad(&format!("fmod must be 0 or 1, got {f}"))),
                };
                let float_input = inputs.iter().flatten().any(|&v| {
                    matches!(
                        self.g.values[v].elem_type,
                        data_type::FLOAT
                            | data_type::DOUBLE
                            | data_type::FLOAT16
                            | data_type::BFLOAT16
                    )
                });
                if !fmod && float_input {
                    return Err(bad(
                        "fmod=0 (integer modulo) on floating-point inputs; floats need fmod=1",
                    ));
                }
                Op::Mod { fmod }
            }
            "PRelu" => {
                need(&inputs, 2, 2)?;
                Op::PRelu
            }
            "Where" => {
                need(&inputs, 3, 3)?;
                Op::Where
            }
            "Expand" => {
                need(&inputs, 2, 2)?;
                Op::Expand
            }
            "Tile" => {
                need(&inputs, 2, 2)?;
                Op::Tile
            }
            "Range" => {
                need(&inputs, 3, 3)?;
                Op::Range
            }
            "Split" => {
                if inputs.first().copied().flatten().is_none() || inputs.len() > 2 {
                    return Err(bad("takes the input X and an optional split input"));
                }
                if opset < 13 {
                    if let Some(sp) = a.ints("split") {
                        inputs.truncate(1);
                        inputs.push(ints_const(self, "split", sp));
                    }
                }
                let n_out = np.output.len();
                let num_outputs = match a.get("num_outputs") {
                    None => None,
                    Some(k) if k.i >= 1 && k.i as usize == n_out => Some(n_out),
                    Some(k) => {
                        return Err(bad(&format!(
                            "num_outputs {} does not match the node's {n_out} outputs",
                            k.i
                        )))
                    }
                };
                if num_outputs.is_some() && inputs.get(1).copied().flatten().is_some() {
                    return Err(bad(
                        "num_outputs and the split input are mutually exclusive",
                    ));
                }
                if np.output.iter().any(|o| o.is_empty()) {
                    return Err(bad("every output of Split must be named"));
                }
                Op::Split {
                    axis: a.int("axis", 0),
                    num_outputs,
                }
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
            | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => {
                let kind = Reduce::ALL
                    .into_iter()
                    .find(|k| k.onnx_name() == np.op_type)
                    .unwrap_or(Reduce::Sum);
                // ReduceSum takes axes as an input from opset 13, the others from opset 18.
                let input_form = opset >= if kind == Reduce::Sum { 13 } else { 18 };
                if inputs.first().copied().flatten().is_none() || inputs.len() > 2 {
                    return Err(bad("takes the data input and an optional axes input"));
                }
                if !input_form {
                    if inputs.len() > 1 {
                        return Err(bad(&format!(
                            "takes axes as an attribute in opset {opset}, not as an input"
                        )));
                    }
                    if let Some(ax) = a.ints("axes") {
                        inputs.push(ints_const(self, "axes", ax));
                    }
                } else if a.get("axes").is_some() {
                    return Err(bad(&format!(
                        "takes axes as an input in opset {opset}, not as an attribute"
                    )));
                }
                let noop = a.int("noop_with_empty_axes", 0) != 0;
                Op::Reduce {
                    kind,
                    keepdims: a.int("keepdims", 1) != 0,
                    noop_with_empty_axes: noop,
                }
            }
            "Resize" | "Upsample" => {
                let legacy = np.op_type == "Upsample" || opset < 11;
                let mode = match a.string("mode").as_deref().unwrap_or("nearest") {
                    "nearest" => ResizeMode::Nearest,
                    "linear" | "bilinear" => ResizeMode::Linear,
                    "cubic" if !legacy => ResizeMode::Cubic,
                    o => return Err(bad(&format!("mode '{o}' is not supported"))),
                };
                if a.int("antialias", 0) != 0 {
                    return Err(bad("antialias=1 is not supported"));
                }
                match a.string("keep_aspect_ratio_policy").as_deref() {
                    None | Some("stretch") => {}
                    Some(o) => {
                        return Err(bad(&format!(
                            "keep_aspect_ratio_policy '{o}' is not supported (stretch is)"
                        )))
                    }
                }
                let coords = if legacy {
                    ResizeCoords::Asymmetric
                } else {
                    match a
                        .string("coordinate_transformation_mode")
                        .as_deref()
                        .unwrap_or("half_pixel")
                    {
                        "half_pixel" => ResizeCoords::HalfPixel,
                        "pytorch_half_pixel" => ResizeCoords::PytorchHalfPixel,
                        "align_corners" => ResizeCoords::AlignCorners,
                        "asymmetric" => ResizeCoords::Asymmetric,
                        "tf_half_pixel_for_nn" => ResizeCoords::TfHalfPixelForNn,
                        o => {
                            return Err(bad(&format!(
                                "coordinate_transformation_mode '{o}' is not supported \
                                 (half_pixel, pytorch_half_pixel, align_corners, asymmetric, \
                                 tf_half_pixel_for_nn are)"
                            )))
                        }
                    }
                };
                let nearest = if legacy {
                    NearestMode::Floor
                } else {
                    match a
                        .string("nearest_mode")
                        .as_deref()
                        .unwrap_or("round_prefer_floor")
                    {
                        "round_prefer_floor" => NearestMode::RoundPreferFloor,
                        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                        "floor" => NearestMode::Floor,
                        "ceil" => NearestMode::Ceil,
                        o => return Err(bad(&format!("nearest_mode '{o}' is not supported"))),
                    }
                };
                if inputs.first().copied().flatten().is_none() {
                    return Err(bad("missing data input"));
                }
                if legacy {
                    // Upsample (scales attribute before opset 9) and opset-10 Resize: X, scales.
                    let scales = if let Some(s) = a.get("scales").filter(|_| inputs.len() < 2) {
                        Some(self.constant(
                            format!("{name}::scales"),
                            Tensor {
                                shape: vec![s.floats.len()],
                                data: TensorData::F32(s.floats.clone()),
                            },
                        ))
                    } else {
                        inputs.get(1).copied().flatten()
                    };
                    if scales.is_none() || inputs.len() > 2 {
                        return Err(bad("takes X and scales"));
                    }
                    inputs = vec![inputs[0], None, scales];
                } else if inputs.len() > 4 {
                    return Err(bad("takes at most 4 inputs (X, roi, scales, sizes)"));
                }
                Op::Resize(Resize {
                    mode,
                    coords,
                    nearest,
                    cubic_a: a.float("cubic_coeff_a", -0.75),
                    exclude_outside: a.int("exclude_outside", 0) != 0,
                    axes: a.ints("axes"),
                })
            }
            "Size" => {
                need(&inputs, 1, 1)?;
                Op::Size
            }
            "ArgMax" | "ArgMin" => {
                need(&inputs, 1, 1)?;
                Op::ArgExtreme {
                    max: np.op_type == "ArgMax",
                    axis: a.int("axis", 0),
                    keepdims: a.int("keepdims", 1) != 0,
                    select_last_index: a.int("select_last_index", 0) != 0,
                }
            }
            "LayerNormalization" => {
                need(&inputs, 2, 3)?;
                if np.output.len() > 3 {
                    return Err(bad("has more than three outputs (Y, Mean, InvStdDev)"));
                }
                if np.output.first().is_none_or(|o| o.is_empty()) {
                    return Err(bad("the output Y must be named"));
                }
                if np.output.iter().skip(1).any(|o| o.is_empty())
                    && np.output.last().is_some_and(|o| !o.is_empty())
                {
                    return Err(bad(
                        "an omitted Mean output with a named InvStdDev is not supported",
                    ));
                }
                Op::LayerNorm {
                    axis: a.int("axis", -1),
                    epsilon: a.float("epsilon", 1e-5),
                }
            }
            "InstanceNormalization" => {
                need(&inputs, 3, 3)?;
                Op::InstanceNorm {
                    epsilon: a.float("epsilon", 1e-5),
                }
            }
            _ => return Err(unsupported(np, opset)),
        };
        if matches!(
            op,
            Op::Slice | Op::Reshape { .. } | Op::Pad { .. } | Op::Squeeze | Op::Unsqueeze
        ) && inputs.is_empty()
        {
            return Err(bad("missing data input"));
        }
        let mut outputs: Vec<ValueId> = Vec::with_capacity(np.output.len());
        for s in np.output.iter().filter(|s| !s.is_empty()) {
            self.check_new(s, &name, &np.op_type)?;
            outputs.push(self.value(s));
        }
        if outputs.is_empty() {
            return Err(bad("node has no outputs"));
        }
        let out_type = match op {
            Op::Cast { to } => Some(to),
            Op::Compare(_) | Op::Unary(Unary::Not) => Some(data_type::BOOL),
            Op::ArgExtreme { .. } | Op::Size => Some(data_type::INT64),
            _ => None,
        };
        if let Some(to) = out_type {
            for &o in &outputs {
                self.g.values[o].elem_type = to;
            }
        }
        self.g.nodes.push(Node {
            name,
            op,
            inputs,
            outputs,
        });
        Ok(())
    }
}

/// Sort nodes topologically; errors on cycles or values read before any definition.
pub fn topo_sort(g: &mut Graph) -> Result<()> {
    let producers = g.producers();
    let n = g.nodes.len();
    let mut indeg = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in node.inputs.iter().flatten() {
            if let Some(p) = producers[*v] {
                indeg[i] += 1;
                users[p].push(i);
            }
        }
    }
    let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push_back(u);
            }
        }
    }
    if order.len() != n {
        let stuck: Vec<&str> = (0..n)
            .filter(|&i| indeg[i] > 0)
            .take(5)
            .map(|i| g.nodes[i].name.as_str())
            .collect();
        return Err(GraphError::Invalid(format!(
            "the graph has a cycle through nodes {stuck:?}"
        )));
    }
    let mut old: Vec<Option<Node>> = std::mem::take(&mut g.nodes).into_iter().map(Some).collect();
    g.nodes = order.into_iter().filter_map(|i| old[i].take()).collect();
    Ok(())
}

/// Replace nodes whose inputs are all constants by their (host-evaluated) results, and drop
/// initializers nothing uses any more.
pub fn fold_constants(g: &mut Graph) -> Result<()> {
    let mut kept = Vec::with_capacity(g.nodes.len());
    for node in std::mem::take(&mut g.nodes) {
        let all_const = node
            .inputs
            .iter()
            .flatten()
            .all(|v| g.initializers.contains_key(v));
        if all_const && node.inputs.iter().flatten().next().is_some() {
            let ins: Vec<Option<&Tensor>> = node
                .inputs
                .iter()
                .map(|v| v.and_then(|v| g.initializers.get(&v)))
                .collect();
            let res = eval_host(&node.op, &ins).map_err(|detail| GraphError::ShapeMismatch {
                node: node.name.clone(),
                op: node.op.onnx_name().into(),
                detail,
            })?;
            if let Some(outs) = res.filter(|o| o.len() == node.outputs.len()) {
                for (o, t) in node.outputs.iter().zip(outs) {
                    g.values[*o].elem_type = if t.is_float() {
                        data_type::FLOAT
                    } else {
                        data_type::INT64
                    };
                    g.initializers.insert(*o, t);
                }
                continue;
            }
        }
        kept.push(node);
    }
    g.nodes = kept;
    let counts = g.use_counts();
    let used: BTreeMap<ValueId, Tensor> = std::mem::take(&mut g.initializers)
        .into_iter()
        .filter(|(v, _)| counts[*v] > 0)
        .collect();
    g.initializers = used;
    Ok(())
}
