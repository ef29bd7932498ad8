//! `mixprec run MODEL --input name=file.npy … [--output out.npz]`: one forward pass of a model
//! on inputs from `.npy` files or ONNX `TensorProto` (`.pb`) files, outputs to `.npz` / `.npy`.
//! A mixprec model file (`.mpqm`) runs on the integer-only engine.
//! With `--policy P.json` the pass is fake-quantized (survey §2.4, Eq. 8 and 10) with activation
//! ranges calibrated as `export --format onnx-qdq` calibrates them.

use super::export::{policy_and_ranges, CalibArgs};
use crate::npy::{encode_npy, encode_zip, parse_npy, NpyArray, NpyData, NpyType};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use mixprec_exec::{Executor, FakeQuant, LayerHook, RunOptions};
use mixprec_graph::onnx_proto::data_type;
use mixprec_graph::{Dim, Graph, TensorData};
use std::path::{Path, PathBuf};

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, `default`, or a mixprec model file
    /// (.mpqm, from `quantize --budget`), which runs on the integer-only engine.
    pub model: String,
    /// An input as NAME=FILE (.npy, or an ONNX TensorProto .pb); a bare FILE when the model
    /// has one input. Repeat for each input.
    #[arg(long = "input", short = 'i')]
    pub inputs: Vec<String>,
    /// Write the outputs: .npz (every output, by name) or .npy (a single output).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Fake-quantize with this policy JSON (the batch dimension of the inputs is then free;
    /// activation ranges are calibrated with the options below).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Calibration options (with --policy).
    #[command(flatten)]
    pub calib: CalibArgs,
}

/// Runs a single-input graph with a hook, in the largest batches the graph accepts.
fn forward_hooked(exec: &Executor, inputs: &[Tensor], hook: &dyn LayerHook) -> Result<Vec<Tensor>> {
    let opts = RunOptions {
        hook: Some(hook),
        ..Default::default()
    };
    let n = inputs
        .first()
        .map_or(0, |x| x.dims().first().copied().unwrap_or(0));
    let batch = match inputs {
        [x] if n > 1 => exec.usable_batch(&x.dims()[1..], n)?,
        _ => n,
    };
    if batch >= n || batch == 0 {
        return Ok(exec.run(inputs, &opts)?.outputs);
    }
    let mut parts: Vec<Vec<Tensor>> = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let x = inputs[0].narrow(0, start, len)?;
        parts.push(exec.run(&[x], &opts)?.outputs);
        start += len;
    }
    let count = parts[0].len();
    (0..count)
        .map(|k| {
            let ts: Vec<&Tensor> = parts.iter().map(|p| &p[k]).collect();
            Ok(Tensor::cat(&ts, 0)?)
        })
        .collect()
}

/// How a value's ONNX element type is fed and written.
fn is_float_type(t: i32) -> bool {
    matches!(
        t,
        data_type::FLOAT | data_type::DOUBLE | data_type::FLOAT16 | data_type::BFLOAT16
    )
}

fn type_name(t: i32) -> &'static str {
    match t {
        data_type::FLOAT => "float32",
        data_type::DOUBLE => "float64",
        data_type::FLOAT16 => "float16",
        data_type::BFLOAT16 => "bfloat16",
        data_type::INT64 => "int64",
        data_type::INT32 => "int32",
        data_type::INT16 => "int16",
        data_type::INT8 => "int8",
        data_type::UINT8 => "uint8",
        data_type::UINT16 => "uint16",
        data_type::UINT32 => "uint32",
        data_type::UINT64 => "uint64",
        data_type::BOOL => "bool",
        data_type::STRING => "string",
        _ => "unknown",
    }
}

fn shape_text(dims: &[Dim]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(x) => x.to_string(),
            Dim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", d.join(", "))
}

/// A loaded input file: whether it holds floats, its shape and elements.
struct Loaded {
    float: bool,
    type_name: &'static str,
    shape: Vec<usize>,
    data: TensorData,
}

fn load_input(path: &Path) -> Result<Loaded> {
    let is_pb = path.extension().and_then(|e| e.to_str()) == Some("pb");
    if is_pb {
        let t = mixprec_graph::load_tensor_proto(path)?;
        let dt = t.data_type;
        let h = mixprec_graph::tensor_from_proto(&t)
            .with_context(|| format!("reading the tensor in {}", path.display()))?;
        return Ok(Loaded {
            float: is_float_type(dt),
            type_name: type_name(dt),
            shape: h.shape,
            data: h.data,
        });
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read input {}", path.display()))?;
    let a = parse_npy(&bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok(Loaded {
        float: a.dtype.is_float(),
        type_name: a.dtype.name(),
        shape: a.shape,
        data: match a.data {
            NpyData::F32(v) => TensorData::F32(v),
            NpyData::I64(v) => TensorData::I64(v),
        },
    })
}

/// Match `--input` arguments to the model's inputs; returns one file per graph input.
fn assign_inputs(g: &Graph, args: &[String]) -> Result<Vec<PathBuf>> {
    let names: Vec<&str> = g
        .inputs
        .iter()
        .map(|&v| g.values[v].name.as_str())
        .collect();
    let listing = || {
        g.inputs
            .iter()
            .map(|&v| {
                let val = &g.values[v];
                format!(
                    "'{}' ({} {})",
                    val.name,
                    type_name(val.elem_type),
                    val.shape.as_deref().map_or("[?]".into(), shape_text)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut files: Vec<Option<PathBuf>> = vec![None; names.len()];
    for a in args {
        let (name, file) = match a.split_once('=') {
            Some((n, f)) if names.contains(&n) || !Path::new(a).exists() => (n, f),
            _ if names.len() == 1 => (names[0], a.as_str()),
            _ => bail!(
                "--input {a}: give NAME=FILE, the model has {} inputs: {}",
                names.len(),
                listing()
            ),
        };
        let Some(i) = names.iter().position(|&n| n == name) else {
            bail!(
                "--input {a}: the model has no input named '{name}'; its inputs: {}",
                listing()
            );
        };
        if files[i].replace(PathBuf::from(file)).is_some() {
            bail!("input '{name}' is given twice");
        }
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&files)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        bail!(
            "no --input given for {}; the model's inputs: {} (pass --input NAME=FILE.npy)",
            missing
                .iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", "),
            listing()
        );
    }
    Ok(files.into_iter().flatten().collect())
}

/// Check a loaded file against the model's declaration of input `v` and make a tensor.
fn to_tensor(g: &Graph, v: usize, file: &Path, x: Loaded) -> Result<Tensor> {
    let val = &g.values[v];
    let want_float = is_float_type(val.elem_type);
    if want_float != x.float {
        bail!(
            "input '{}' from {} is {}, the model expects {} (convert it, e.g. numpy's astype)",
            val.name,
            file.display(),
            x.type_name,
            type_name(val.elem_type)
        );
    }
    if let Some(decl) = &val.shape {
        let fits = decl.len() == x.shape.len()
            && decl.iter().zip(&x.shape).all(|(d, &s)| match d {
                Dim::Fixed(f) => *f == s,
                Dim::Symbolic(_) => true,
            });
        if !fits {
            bail!(
                "input '{}' from {} has shape {:?}, the model expects {}",
                val.name,
                file.display(),
                x.shape,
                shape_text(decl)
            );
        }
    }
    let dev = Device::Cpu;
    Ok(match x.data {
        TensorData::F32(d) => Tensor::from_vec(d, x.shape.as_slice(), &dev)?,
        TensorData::I64(d) => Tensor::from_vec(d, x.shape.as_slice(), &dev)?,
    })
}

/// An output tensor as an array, typed by the model's declaration where it says bool.
fn to_array(t: &Tensor, elem_type: i32) -> Result<NpyArray> {
    let shape = t.dims().to_vec();
    Ok(match t.dtype() {
        DType::I64 | DType::U32 | DType::U8 => {
            let v = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            let dtype = if elem_type == data_type::BOOL {
                NpyType::Bool
            } else {
                NpyType::I64
            };
            NpyArray {
                dtype,
                shape,
                data: NpyData::I64(v),
            }
        }
        _ => NpyArray {
            dtype: NpyType::F32,
            shape,
            data: NpyData::F32(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        },
    })
}

fn summary(a: &NpyArray) -> String {
    match &a.data {
        NpyData::F32(v) if !v.is_empty() => {
            let min = v.iter().copied().fold(f32::INFINITY, f32::min);
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            format!("min {min:.6}  max {max:.6}  mean {mean:.6}")
        }
        NpyData::I64(v) if !v.is_empty() => {
            let head: Vec<String> = v.iter().take(8).map(|x| x.to_string()).collect();
            format!(
                "[{}{}]",
                head.join(", "),
                if v.len() > 8 { ", …" } else { "" }
            )
        }
        _ => "(empty)".into(),
    }
}

/// A zip member name for an output (no folders, `.npy` suffix).
fn member_name(name: &str, k: usize) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | ':') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if clean.is_empty() {
        format!("output_{k}.npy")
    } else {
        format!("{clean}.npy")
    }
}

/// Writes output arrays to an `.npy` (one output) or `.npz` file, atomically.
fn write_outputs(out: &Path, names: &[String], arrays: &[NpyArray], secs: f64) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    let bytes = match ext {
        "npy" => {
            if arrays.len() != 1 {
                bail!(
                    "the model has {} outputs; write them to an .npz file instead of {}",
                    arrays.len(),
                    out.display()
                );
            }
            encode_npy(&arrays[0])?
        }
        "npz" => {
            let mut members = Vec::with_capacity(arrays.len());
            for (k, (name, arr)) in names.iter().zip(arrays).enumerate() {
                let m = member_name(name, k);
                if members.iter().any(|(n, _): &(String, Vec<u8>)| *n == m) {
                    bail!("two outputs map to the archive member {m}");
                }
                members.push((m, encode_npy(arr)?));
            }
            encode_zip(&members)?
        }
        _ => bail!(
            "cannot tell the output format of {}: use an .npz or .npy file name",
            out.display()
        ),
    };
    mixprec_graph::write_atomic(out, &bytes)?;
    println!(
        "wrote {} ({} output{}, forward {:.3} s)",
        out.display(),
        arrays.len(),
        if arrays.len() == 1 { "" } else { "s" },
        secs
    );
    Ok(())
}

/// `run` on a mixprec model file (`.mpqm`, written by `quantize --budget`): the integer-only
/// engine (survey §3.3, Eq. 24–25) on one float input holding whole samples.
fn run_engine(a: &Args) -> Result<()> {
    let path = Path::new(&a.model);
    let model = mixprec_engine::QuantModel::load(path)
        .with_context(|| format!("loading the mixprec model file {}", a.model))?;
    if a.policy.is_some() {
        bail!(
            "{} is already quantized; --policy applies only to float models",
            a.model
        );
    }
    let file = match a.inputs.as_slice() {
        [one] => PathBuf::from(one.split_once('=').map_or(one.as_str(), |(_, f)| f)),
        _ => bail!(
            "{} has one input; give exactly one --input FILE (.npy or .pb)",
            a.model
        ),
    };
    let x = load_input(&file)?;
    let data = match x.data {
        TensorData::F32(v) => v,
        TensorData::I64(_) => bail!(
            "{} holds {} values; the engine takes float input",
            file.display(),
            x.type_name
        ),
    };
    let per: usize = model.input_shape().iter().product::<usize>().max(1);
    if data.is_empty() || data.len() % per != 0 {
        bail!(
            "{} has {} values ({:?}), not a whole number of samples of shape {:?}",
            file.display(),
            data.len(),
            x.shape,
            model.input_shape()
        );
    }
    let batch = data.len() / per;
    let t0 = std::time::Instant::now();
    let out = model
        .run(&data, batch)
        .with_context(|| format!("running {}", a.model))?;
    let secs = t0.elapsed().as_secs_f64();
    let mut shape = vec![batch];
    shape.extend_from_slice(model.output_shape());
    let arr = NpyArray {
        dtype: NpyType::F32,
        shape,
        data: NpyData::F32(out),
    };
    println!(
        "output: {} {:?}  {}  (integer engine)",
        arr.dtype.name(),
        arr.shape,
        summary(&arr)
    );
    if let Some(o) = &a.output {
        write_outputs(o, &["output".to_string()], &[arr], secs)?;
    }
    Ok(())
}

/// Run `run`.
pub fn run(a: Args) -> Result<()> {
    if a.model.ends_with(".mpqm") {
        return run_engine(&a);
    }
    let g = crate::model::load(&a.model)?;
    let files = assign_inputs(&g, &a.inputs)?;
    let mut exec = Executor::new(g)?;
    let fq = match &a.policy {
        Some(p) => {
            exec.free_batch_dim();
            let (policy, ranges) = policy_and_ranges(&exec, &a.model, p, &a.calib)?;
            Some(FakeQuant::new(&exec, &policy, &ranges, a.calib.seed)?)
        }
        None => None,
    };
    let g = exec.graph();
    let mut inputs = Vec::with_capacity(files.len());
    for (&v, f) in g.inputs.iter().zip(&files) {
        let x = load_input(f)?;
        inputs.push(to_tensor(g, v, f, x)?);
    }
    let outs_meta: Vec<(String, i32)> = g
        .outputs
        .iter()
        .map(|&o| (g.values[o].name.clone(), g.values[o].elem_type))
        .collect();
    let t0 = std::time::Instant::now();
    let outs = match &fq {
        Some(fq) => forward_hooked(&exec, &inputs, fq),
        None => Ok(exec.forward(&inputs)?),
    }
    .with_context(|| format!("running {}", a.model))?;
    let secs = t0.elapsed().as_secs_f64();
    let arrays: Vec<NpyArray> = outs
        .iter()
        .zip(&outs_meta)
        .map(|(t, (_, et))| to_array(t, *et))
        .collect::<Result<_>>()?;
    for ((name, _), arr) in outs_meta.iter().zip(&arrays) {
        println!(
            "{name}: {} {:?}  {}",
            arr.dtype.name(),
            arr.shape,
            summary(arr)
        );
    }
    if let Some(out) = &a.output {
        let names: Vec<String> = outs_meta.iter().map(|(n, _)| n.clone()).collect();
        write_outputs(out, &names, &arrays, secs)?;
    }
    Ok(())
}
