//! The mixprec model file: a lowered [`QuantModel`] on disk.
//!
//! Survey §4.4 (deployment) and §3.3 (HAWQ-V3's packed low-bit weights, dyadic
//! requantization parameters, Eq. 24–25): the file holds exactly what integer inference needs
//! — no float weights.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 4 | magic `MPQM` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 8 | header length `h` |
//! | `h` | JSON header: name, tensors (shapes, scales, zero points), steps (geometry, `i32` biases, dyadic multipliers `{m, s}`, clamps), weight table (shape, groups, bits, byte offset and length) |
//! | 8 | weight blob length `b` |
//! | `b` | packed weight codes, each layer as an LSB-first bit stream at its own width |
//! | 8 | FNV-1a 64 checksum of everything before it |
//!
//! Version 2 adds the input normalisation of the input quantization step (`ops` of
//! [`Step::Quantize`], see [`crate::model::InputOp`]); version 3 adds the Concat, Lookup
//! (Sigmoid / Tanh / LeakyRelu tables), Mul and Transpose steps and the per-channel broadcast
//! of an Add (`b_inner`). A model is written with the
//! oldest version that holds it (a model without those features as version 1, byte for byte
//! what earlier builds wrote), so older builds still read what they can run and reject the
//! rest by its version. This build reads all three; a file whose version is too old for the
//! steps it carries is rejected.
//!
//! Reading checks the magic, version, every length, the checksum and then the whole model
//! ([`QuantModel::validate`]), so a truncated or corrupt file is an error, never a panic.
//! Complexity: linear in the file size.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::kernels::pack::PackedBits;
use crate::model::{
    checked_numel, KernelWeights, LayerGeometry, LayerOutput, LayerWeights, QuantModel, Step,
    TensorInfo,
};

/// First four bytes of a mixprec model file.
pub const MAGIC: &[u8; 4] = b"MPQM";

/// The newest format version this build reads and writes. Version 2 adds the input
/// normalisation of the input quantization step (`ops`), version 3 the Concat, Lookup, Mul and
/// Transpose steps and broadcast Adds; a model without them is written as version 1, which every build reads.
/// Versions 1 to 3 are read.
pub const FORMAT_VERSION: u32 = 3;

/// Oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

impl QuantModel {
    /// Whether the input quantization carries input normalisation (needs format version 2).
    fn has_input_ops(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Quantize { ops, .. } if !ops.is_empty()))
    }

    /// Whether the model has a step kind of format version 3.
    fn has_v3_steps(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s,
                Step::Concat(_) | Step::Lookup(_) | Step::Mul(_) | Step::Transpose(_)
            ) || matches!(s, Step::Add(a) if a.b_inner != 1)
        })
    }

    /// The format version this model is written with: the oldest that holds it.
    pub fn format_version(&self) -> u32 {
        if self.has_v3_steps() {
            3
        } else if self.has_input_ops() {
            2
        } else {
            1
        }
    }
}

/// Largest header accepted (bytes).
const MAX_HEADER: u64 = 1 << 30;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightMeta {
    shape: Vec<usize>,
    groups: usize,
    bits: u32,
    offset: u64,
    len: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    tensors: Vec<TensorInfo>,
    steps: Vec<Step>,
    weights: Vec<WeightMeta>,
    input: usize,
    output: usize,
}

/// Reads consecutive fields of a byte slice with bounds checks.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(
        &mut self,
        n: u64,
        fmt: impl Fn(String) -> EngineError,
        what: &str,
    ) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                fmt(format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.pos,
                    self.bytes.len()
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        fmt: impl Fn(String) -> EngineError,
        what: &str,
    ) -> Result<[u8; N]> {
        let s = self.take(N as u64, fmt, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl QuantModel {
    /// The model in the file format (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut blob = Vec::new();
        let weights = self
            .weights
            .iter()
            .map(|w| {
                let bytes = w.codes.as_bytes();
                let meta = WeightMeta {
                    shape: w.shape.clone(),
                    groups: w.groups,
                    bits: w.codes.bits(),
                    offset: blob.len() as u64,
                    len: bytes.len() as u64,
                };
                blob.extend_from_slice(bytes);
                meta
            })
            .collect();
        let header = Header {
            name: self.name.clone(),
            tensors: self.tensors.clone(),
            steps: self.steps.clone(),
            weights,
            input: self.input,
            output: self.output,
        };
        let json = serde_json::to_vec(&header).expect("model headers always serialize");
        let mut out = Vec::with_capacity(32 + json.len() + blob.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.format_version().to_le_bytes());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
        out.extend_from_slice(&blob);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Size of the model file in bytes.
    pub fn size_bytes(&self) -> usize {
        self.to_bytes().len()
    }

    /// Writes the model file atomically (a temporary file in the same folder, then a rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| EngineError::Io {
            path: path.into(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, self.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    /// Reads a model file written by [`QuantModel::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<QuantModel> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bytes_at(&bytes, path)
    }

    /// Parses the bytes of a model file.
    pub fn from_bytes(bytes: &[u8]) -> Result<QuantModel> {
        Self::from_bytes_at(bytes, Path::new("<memory>"))
    }

    fn from_bytes_at(bytes: &[u8], path: &Path) -> Result<QuantModel> {
        let fmt = |detail: String| EngineError::Format {
            path: PathBuf::from(path),
            detail,
        };
        if bytes.len() < 4 || &bytes[..4] != MAGIC {
            return Err(fmt("it does not start with the magic bytes MPQM".into()));
        }
        let mut cur = Cursor { bytes, pos: 4 };
        let version = u32::from_le_bytes(cur.array(fmt, "the version")?);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(fmt(format!(
                "format version {version}; this build reads versions {MIN_FORMAT_VERSION} to \
                 {FORMAT_VERSION} (a newer mixprec wrote it?)"
            )));
        }
        let hlen = u64::from_le_bytes(cur.array(fmt, "the header length")?);
        if hlen > MAX_HEADER {
            return Err(fmt(format!("header length {hlen} is implausible")));
        }
        let json = cur.take(hlen, fmt, "the header")?;
        let blen = u64::from_le_bytes(cur.array(fmt, "the weight length")?);
        let blob = cur.take(blen, fmt, "the weights")?;
        let body_end = cur.pos;
        let sum = u64::from_le_bytes(cur.array(fmt, "the checksum")?);
        if cur.pos != bytes.len() {
            return Err(fmt(format!(
                "{} unexpected bytes after the checksum",
                bytes.len() - cur.pos
            )));
        }
        if fnv1a(&bytes[..body_end]) != sum {
            return Err(fmt("checksum mismatch: the file is corrupt".into()));
        }
        let header: Header =
            serde_json::from_slice(json).map_err(|e| fmt(format!("header is not valid: {e}")))?;
        let weights = header
            .weights
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let numel = checked_numel(&m.shape)
                    .ok_or_else(|| fmt(format!("weight {i}: shape {:?} too large", m.shape)))?;
                let end = m
                    .offset
                    .checked_add(m.len)
                    .filter(|&e| e <= blob.len() as u64)
                    .ok_or_else(|| fmt(format!("weight {i}: bytes outside the weight blob")))?;
                let data = blob[m.offset as usize..end as usize].to_vec();
                let codes = PackedBits::from_raw(m.bits, numel, data)
                    .map_err(|e| fmt(format!("weight {i}: {e}")))?;
                LayerWeights::new(m.shape.clone(), m.groups, codes)
                    .map_err(|e| fmt(format!("weight {i}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let model = QuantModel {
            name: header.name,
            tensors: header.tensors,
            steps: header.steps,
            weights,
            input: header.input,
            output: header.output,
            fast: Default::default(),
        };
        model.validate().map_err(|e| fmt(e.to_string()))?;
        if version < model.format_version() {
            return Err(fmt(format!(
                "format version {version} cannot hold {} (needs version {})",
                if model.has_v3_steps() {
                    "Concat / Lookup / Mul / Transpose steps or broadcast Adds"
                } else {
                    "input normalisation"
                },
                model.format_version()
            )));
        }
        Ok(model)
    }

    /// Checks that every index, shape, length and parameter fits together, so that running
    /// the model cannot go out of bounds (done after lowering and after loading).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Invalid(m));
        let nt = self.tensors.len();
        if self.input >= nt || self.output >= nt {
            return bad("input or output tensor index out of range".into());
        }
        const MAX_GEOM: usize = 1 << 16;
        let mut numel = Vec::with_capacity(nt);
        for t in &self.tensors {
            let Some(n) = checked_numel(&t.shape).filter(|&n| n > 0) else {
                return bad(format!(
                    "tensor '{}': shape {:?} empty or too large",
                    t.name, t.shape
                ));
            };
            numel.push(n);
            if let Some(p) = t.params {
                p.check()?;
            }
        }
        let is_codes = |t: usize| self.tensors[t].params.is_some();
        if is_codes(self.input) || is_codes(self.output) {
            return bad("the input and output must be float tensors".into());
        }
        let mut written = vec![false; nt];
        written[self.input] = true;
        for s in &self.steps {
            let name = s.name().to_string();
            let err = |m: &str| bad(format!("step '{name}': {m}"));
            let out = s.output();
            if out >= nt || s.inputs().iter().any(|&i| i >= nt) {
                return err("tensor index out of range");
            }
            if s.inputs().iter().any(|&i| !written[i]) {
                return err("reads a tensor before it is computed");
            }
            if written[out] {
                return err("writes a tensor twice");
            }
            written[out] = true;
            let codes_io = |ins: &[usize], out_codes: bool| {
                ins.iter().all(|&i| is_codes(i)) && is_codes(out) == out_codes
            };
            match s {
                Step::Quantize { input, ops, .. } => {
                    if is_codes(*input) || !is_codes(out) || numel[*input] != numel[out] {
                        return err("quantizes a float tensor into codes of the same size");
                    }
                    for op in ops {
                        if op.inner == 0
                            || op.values.len().checked_mul(op.inner) != Some(numel[*input])
                        {
                            return err(&format!(
                                "input operation '{}': {} values of {} elements each do not \
                                 cover the {} input elements",
                                op.name,
                                op.values.len(),
                                op.inner,
                                numel[*input]
                            ));
                        }
                    }
                }
                Step::Dequantize { input, .. } => {
                    if !is_codes(*input) || is_codes(out) || numel[*input] != numel[out] {
                        return err("dequantizes codes into a float tensor of the same size");
                    }
                }
                Step::Clamp { input, lo, hi, .. } => {
                    if !codes_io(&[*input], true)
                        || numel[*input] != numel[out]
                        || !(0 <= *lo && lo <= hi && *hi <= 255)
                    {
                        return err("bad clamp");
                    }
                }
                Step::Requant { input, .. } => {
                    if !codes_io(&[*input], true) || numel[*input] != numel[out] {
                        return err("bad requantization");
                    }
                }
                Step::Add(a) => {
                    if !codes_io(&[a.a, a.b], true)
                        || numel[a.a] != numel[out]
                        || a.b_inner == 0
                        || numel[a.b].checked_mul(a.b_inner) != Some(numel[out])
                        || a.shift > 62
                        || !(0..=1i64 << 31).contains(&a.ma)
                        || !(0..=1i64 << 31).contains(&a.mb)
                    {
                        return err("bad residual Add");
                    }
                }
                Step::Concat(c) => {
                    let n = c.inputs.len();
                    let sizes_ok = c
                        .inputs
                        .iter()
                        .zip(&c.blocks)
                        .all(|(&i, &b)| c.outer.checked_mul(b) == Some(numel[i]) && b > 0);
                    let total = c
                        .blocks
                        .iter()
                        .try_fold(0usize, |a, &b| a.checked_add(b))
                        .and_then(|b| b.checked_mul(c.outer));
                    if n == 0
                        || c.blocks.len() != n
                        || c.multipliers.len() != n
                        || !codes_io(&c.inputs, true)
                        || !sizes_ok
                        || total != Some(numel[out])
                    {
                        return err("bad concatenation");
                    }
                }
                Step::Lookup(l) => {
                    if !codes_io(&[l.input], true)
                        || numel[l.input] != numel[out]
                        || l.table.len() != 256
                    {
                        return err("bad lookup table");
                    }
                }
                Step::Mul(m) => {
                    if !codes_io(&[m.a, m.b], true)
                        || m.inner == 0
                        || numel[m.a] != numel[out]
                        || numel[m.b].checked_mul(m.inner) != Some(numel[m.a])
                        || !(0 <= m.range.qmin
                            && m.range.qmin <= m.range.qmax
                            && m.range.qmax <= 255)
                    {
                        return err("bad product");
                    }
                }
                Step::Transpose(t) => {
                    let rank = t.in_shape.len();
                    let mut seen = vec![false; rank];
                    let perm_ok = t.perm.len() == rank
                        && t.perm
                            .iter()
                            .all(|&a| a < rank && !std::mem::replace(&mut seen[a], true));
                    let out_shape: Vec<usize> = if perm_ok {
                        t.perm.iter().map(|&a| t.in_shape[a]).collect()
                    } else {
                        Vec::new()
                    };
                    if !perm_ok
                        || !codes_io(&[t.input], true)
                        || checked_numel(&t.in_shape) != Some(numel[t.input])
                        || self.tensors[out].shape != out_shape
                        || self.tensors[t.input].params != self.tensors[out].params
                    {
                        return err("bad transpose");
                    }
                }
                Step::Softmax {
                    input,
                    outer,
                    len,
                    inner,
                    ..
                } => {
                    let n = outer.checked_mul(*len).and_then(|x| x.checked_mul(*inner));
                    if is_codes(*input)
                        || is_codes(out)
                        || n != Some(numel[out])
                        || numel[*input] != numel[out]
                    {
                        return err("bad softmax");
                    }
                }
                Step::MaxPool(p) | Step::AvgPool(p) => {
                    let [c, h, w] = p.in_shape;
                    let [ho, wo] = p.out_hw;
                    let geom = p
                        .kernel
                        .iter()
                        .chain(&p.strides)
                        .chain(&p.dilations)
                        .all(|&v| (1..=MAX_GEOM).contains(&v))
                        && p.pads.iter().all(|&v| v <= MAX_GEOM);
                    let ok = geom
                        && codes_io(&[p.input], true)
                        && checked_numel(&[c, h, w]) == Some(numel[p.input])
                        && checked_numel(&[c, ho, wo]) == Some(numel[out])
                        && match s {
                            Step::AvgPool(_) => {
                                p.multipliers.len() == p.kernel[0] * p.kernel[1]
                                    && p.dilations == [1, 1]
                            }
                            _ => self.tensors[p.input].params == self.tensors[out].params,
                        };
                    if !ok {
                        return err("bad pooling geometry");
                    }
                }
                Step::Layer(l) => {
                    let Some(w) = self.weights.get(l.weights) else {
                        return err("weight index out of range");
                    };
                    let cout = match (&l.geometry, &w.kernel) {
                        (
                            LayerGeometry::Conv {
                                input: [c, h, wd],
                                output: [co, ho, wo],
                                params,
                            },
                            KernelWeights::Conv(cw),
                        ) => {
                            let [wco, cig, kh, kw] = cw.shape();
                            let geom = params
                                .strides
                                .iter()
                                .chain(&params.dilations)
                                .all(|&v| (1..=MAX_GEOM).contains(&v))
                                && params.pads.iter().all(|&v| v <= MAX_GEOM);
                            let ok = geom
                                && wco == *co
                                && params.groups == cw.groups()
                                && cig.checked_mul(params.groups) == Some(*c)
                                && checked_numel(&[*c, *h, *wd]) == Some(numel[l.input])
                                && checked_numel(&[*co, *ho, *wo]) == Some(numel[out])
                                && params.output_hw(*h, *wd, kh, kw).ok() == Some([*ho, *wo]);
                            if !ok {
                                return err("convolution geometry does not fit its weights");
                            }
                            *co
                        }
                        (LayerGeometry::Gemm { rows, k, n }, kw) => {
                            let (wn, wk) = match kw {
                                KernelWeights::Gemm8(p) => (
                                    crate::kernels::PackedWeights::n(p),
                                    crate::kernels::PackedWeights::k(p),
                                ),
                                KernelWeights::Gemm4(p) => (
                                    crate::kernels::PackedWeights::n(p),
                                    crate::kernels::PackedWeights::k(p),
                                ),
                                KernelWeights::Conv(_) => (0, 0),
                            };
                            if (wn, wk) != (*n, *k)
                                || rows.checked_mul(*k) != Some(numel[l.input])
                                || rows.checked_mul(*n) != Some(numel[out])
                            {
                                return err("matrix geometry does not fit its weights");
                            }
                            *n
                        }
                        _ => return err("weights do not match the layer kind"),
                    };
                    if !is_codes(l.input) || l.bias.len() != cout {
                        return err("bad input or bias");
                    }
                    match &l.out {
                        LayerOutput::Codes { multipliers, range } => {
                            if !is_codes(out)
                                || !(multipliers.len() == 1 || multipliers.len() == cout)
                                || !(0 <= range.qmin
                                    && range.qmin <= range.qmax
                                    && range.qmax <= 255)
                            {
                                return err("bad requantization parameters");
                            }
                        }
                        LayerOutput::Float { scales, .. } => {
                            if is_codes(out) || scales.len() != cout {
                                return err("bad dequantization parameters");
                            }
                        }
                    }
                }
            }
        }
        if !written[self.output] {
            return bad("no step computes the output".into());
        }
        Ok(())
    }
}
