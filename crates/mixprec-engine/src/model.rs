//! The lowered, integer-only model and its executor.
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021), Eq. 24 (`q_o = INT(S_W·S_a/S_o·(q_W * q_a))`
//! with a dyadic `S_W·S_a/S_o`) and Eq. 25 (batch norm folded away, so only integer
//! convolution / GEMM, dyadic requantization, pooling and residual additions remain); §4.4
//! (deployment: what a mixed-precision policy buys only shows on integer hardware kernels).
//!
//! A [`QuantModel`] is a list of [`Step`]s over numbered tensors ([`TensorInfo`]). Every tensor
//! between the input quantization and the output dequantization holds `u8` codes with a
//! per-tensor scale and zero point ([`ActParams`]); signed activation schemes are stored offset
//! by 128 (code `q` is held as `q + 128`, zero point 128), which leaves `q - zero_point`, and so
//! every result, unchanged. Weights are symmetric signed 2–8 bit codes, packed densely.
//!
//! At run time (no floating point between the input quantization and the output
//! dequantization, no division):
//! - `Quantize`: `q = clamp(round_half_even(x / s) + z)` on the `f32` input — the same
//!   expression as the fake-quant executor, so the first codes agree exactly — after the
//!   graph's input normalisation ([`InputOp`]: Sub / Div / Mul / Add by scalar, per-channel or
//!   full constants), which runs in `f32` before quantization, as in the float graph;
//! - `Layer` (Conv / Gemm / MatMul): `i32` accumulation of `(q_x - z_x)·q_w` by the packed
//!   kernels, `+ bias` (`i32` at scale `s_x·s_w`), then Eq. 24: `clamp(z_o + D_c(acc))` with one
//!   dyadic `D_c ≈ s_x·s_w[c]/s_o` per output channel and the clamp fusing ReLU / ReLU6 / Clip.
//!   A layer whose result only feeds the model output (possibly through Softmax) skips the
//!   requantization: `y = (acc + bias)·s_x·s_w[c]` is dequantized to `f32` directly;
//! - `Add` (residual): `clamp(z_o + round((m_a·(q_a - z_a) + m_b·(q_b - z_b)) / 2^s))`, both
//!   sides rescaled to the output scale with one shared shift (the spirit of Eq. 25); `b` may
//!   be broadcast per channel (`[C, 1, 1]` against `[C, H, W]`);
//! - `Concat` (Inception / DenseNet / SqueezeNet): each input requantized to the output's
//!   parameters with its own dyadic `s_i/s_o` (`clamp(z_o + D_i(q - z_i))`, as a residual Add
//!   rescales each operand), or copied when its parameters are the output's;
//! - `Mul` of two activations (squeeze-and-excitation gates, SiLU `x·sigmoid(x)`): the exact
//!   `i32` product `(q_a - z_a)(q_b - z_b)` then Eq. 24 with the dyadic `s_a·s_b/s_o`, the
//!   same shape or `b` broadcast per channel;
//! - `Lookup`: Sigmoid / Tanh / LeakyRelu as a 256-entry table `input code → output code`
//!   built at lowering time in `f64` from both tensors' parameters — exact by construction
//!   for 8-bit codes, no floating point at run time;
//! - `Transpose`: a permutation of the per-sample axes, codes moved unchanged;
//! - `MaxPool` on codes (max commutes with the monotone quantizer); `AvgPool` /
//!   `GlobalAveragePool`: the sum of `q - z_in` times the dyadic `s_in/(s_o·count)`;
//! - `Clamp` (a ReLU / Clip that could not be fused), `Requant` (a tensor read by two layers
//!   with different input quantizations), `Dequantize` (`(q - z)·s`) and a trailing `Softmax`,
//!   the only step that computes in floating point besides the final dequantization.
//!
//! This module's executor (channels-first tensors, one allocation per step) is the reference;
//! on AVX-512 VNNI CPUs [`QuantModel::run`] takes the fast executor of [`crate::fast`], which
//! computes the same codes.
//!
//! Complexity: that of the kernels ([`crate::kernels`]); every other step is linear in its
//! tensor (pooling: times the window).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{kernel, EngineError, Result};
use crate::kernels::{
    conv2d_with, gemm_with, pack::PackedBits, requantize, rounding_shift, unpack_bits, Backend,
    Conv2dParams, ConvWeights, Dyadic, OutputRange, PackedI4, PackedI8,
};

/// Largest number of elements of one tensor (per sample) a model may declare.
pub const MAX_TENSOR_ELEMS: usize = 1 << 28;

/// Quantization of an activation tensor held as `u8` codes: real value `(q - zero_point)·scale`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActParams {
    /// Step size.
    pub scale: f32,
    /// Zero point (stored domain).
    pub zero_point: i32,
    /// Smallest stored code.
    pub qmin: i32,
    /// Largest stored code.
    pub qmax: i32,
    /// 128 when the scheme's codes are signed (stored = code + 128), else 0.
    pub offset: i32,
}

impl ActParams {
    /// From the uniform parameters of a per-tensor scheme of at most 8 bits.
    pub fn from_uniform(p: &mixprec_quant::UniformParams) -> Result<Self> {
        let (Some(&scale), Some(&zp)) = (p.scale.first(), p.zero_point.first()) else {
            return Err(EngineError::Invalid(
                "activation parameters without a scale".into(),
            ));
        };
        let offset = if p.qmin < 0 { 128 } else { 0 };
        let a = ActParams {
            scale,
            zero_point: zp + offset,
            qmin: p.qmin + offset,
            qmax: p.qmax + offset,
            offset,
        };
        a.check()?;
        Ok(a)
    }

    pub(crate) fn check(&self) -> Result<()> {
        let ok = self.scale.is_finite()
            && self.scale > 0.0
            && (0..=255).contains(&self.qmin)
            && self.qmin <= self.qmax
            && self.qmax <= 255
            && (self.qmin..=self.qmax).contains(&self.zero_point);
        if ok {
            Ok(())
        } else {
            Err(EngineError::Invalid(format!(
                "activation quantization {self:?} does not fit 8-bit codes (needs scale > 0 and \
                 0 <= qmin <= zero_point <= qmax <= 255)"
            )))
        }
    }

    /// `clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`, in `f32` exactly as the
    /// fake-quant executor computes it.
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        ((x / self.scale).round_ties_even() + self.zero_point as f32)
            .clamp(self.qmin as f32, self.qmax as f32) as u8
    }

    /// Real value of a stored code.
    #[inline]
    pub fn dequantize(&self, q: u8) -> f32 {
        (q as i32 - self.zero_point) as f32 * self.scale
    }

    /// The code range for requantization.
    pub fn range(&self) -> OutputRange {
        OutputRange {
            zero_point: self.zero_point,
            qmin: self.qmin,
            qmax: self.qmax,
        }
    }

    /// The range clamped further by real bounds (a fused ReLU / Clip).
    pub fn clamped_range(&self, lo: Option<f32>, hi: Option<f32>) -> OutputRange {
        let mut r = self.range();
        if let Some(lo) = lo {
            r.qmin = r.qmin.max(self.quantize(lo) as i32);
        }
        if let Some(hi) = hi {
            r.qmax = r.qmax.min(self.quantize(hi) as i32);
        }
        if r.qmin > r.qmax {
            r.qmax = r.qmin;
        }
        r
    }
}

/// A tensor of the lowered model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    /// Name of the graph value it holds (the last one of a fused chain).
    pub name: String,
    /// Shape of one sample (the batch dimension removed).
    pub shape: Vec<usize>,
    /// Quantization of its `u8` codes; `None` for `f32` tensors (input, outputs).
    pub params: Option<ActParams>,
}

impl TensorInfo {
    /// Elements per sample.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Geometry of a layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerGeometry {
    /// 2-D convolution: input `[C, H, W]`, output `[Cout, Ho, Wo]` per sample.
    Conv {
        /// Input `[C, H, W]`.
        input: [usize; 3],
        /// Output `[Cout, Ho, Wo]`.
        output: [usize; 3],
        /// Strides, pads, dilations, groups.
        params: Conv2dParams,
    },
    /// Matrix product: `rows` rows of `k` inputs per sample, `n` outputs per row.
    Gemm {
        /// Rows per sample.
        rows: usize,
        /// Reduction length.
        k: usize,
        /// Output channels.
        n: usize,
    },
}

/// What a layer does with its `i32` accumulators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerOutput {
    /// Eq. 24: `clamp(z_o + D_c(acc + bias))` into `u8` codes.
    Codes {
        /// One dyadic multiplier per output channel (or one for all).
        multipliers: Vec<Dyadic>,
        /// Output zero point and clamp (a fused ReLU / Clip narrows it).
        range: OutputRange,
    },
    /// `y = (acc + bias)·scale_c`, clamped to the real bounds, as `f32` (model outputs only).
    Float {
        /// `s_x·s_w[c]` per output channel.
        scales: Vec<f64>,
        /// Lower bound of a fused ReLU / Clip.
        lo: Option<f32>,
        /// Upper bound of a fused Clip.
        hi: Option<f32>,
    },
}

/// A Conv, Gemm or MatMul with folded bias / batch norm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerStep {
    /// Layer (node) name.
    pub name: String,
    /// Input tensor.
    pub input: usize,
    /// Output tensor.
    pub output: usize,
    /// Index into the model's weights.
    pub weights: usize,
    /// `i32` bias at scale `s_x·s_w[c]`, one per output channel.
    pub bias: Vec<i32>,
    /// Geometry.
    pub geometry: LayerGeometry,
    /// Requantization or dequantization.
    pub out: LayerOutput,
}

/// Max or average pooling over 2-D windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolStep {
    /// Node name.
    pub name: String,
    /// Input tensor.
    pub input: usize,
    /// Output tensor.
    pub output: usize,
    /// Input `[C, H, W]`.
    pub in_shape: [usize; 3],
    /// Output `[Ho, Wo]`.
    pub out_hw: [usize; 2],
    /// Window `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Strides.
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Dilations (max pooling).
    pub dilations: [usize; 2],
    /// Average pooling: whether padded positions count in the divisor.
    pub count_include_pad: bool,
    /// Average pooling: the dyadic `s_in/(s_o·n)` for `n` = 1, 2, … window elements; empty for
    /// max pooling.
    pub multipliers: Vec<Dyadic>,
}

/// Residual addition of two quantized tensors of equal shape, or with `b` broadcast per
/// channel (element `i` of a sample of `a` plus element `i / b_inner` of `b`'s sample).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddStep {
    /// Node name.
    pub name: String,
    /// First operand.
    pub a: usize,
    /// Second operand.
    pub b: usize,
    /// Output tensor.
    pub output: usize,
    /// `round(s_a/s_o·2^shift)`.
    pub ma: i64,
    /// `round(s_b/s_o·2^shift)`.
    pub mb: i64,
    /// Shared shift.
    pub shift: u32,
    /// Output zero point and clamp.
    pub range: OutputRange,
    /// Consecutive elements of `a` sharing one element of `b` (1: equal shapes).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub b_inner: usize,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// Concatenation of code tensors along one axis (per sample: `outer` blocks, each the
/// concatenation of one block of every input). An input whose quantization differs from the
/// output's is requantized on the way, `clamp(z_o + D_i(q - z_i))` with `D_i ≈ s_i/s_o`;
/// otherwise its codes are copied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcatStep {
    /// Node name.
    pub name: String,
    /// Input tensors, in order.
    pub inputs: Vec<usize>,
    /// Output tensor.
    pub output: usize,
    /// Product of the per-sample dimensions before the axis.
    pub outer: usize,
    /// Per input: elements of one block (its axis length times the dimensions after it).
    pub blocks: Vec<usize>,
    /// Per input: the dyadic `s_i/s_o`, or `None` when its codes are copied unchanged.
    pub multipliers: Vec<Option<Dyadic>>,
}

/// Elementwise function of a [`LookupStep`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum UnaryFn {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `x` if `x ≥ 0`, else `alpha·x`.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
}

impl UnaryFn {
    /// The function in `f64`.
    pub fn eval(self, x: f64) -> f64 {
        match self {
            UnaryFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryFn::Tanh => x.tanh(),
            UnaryFn::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha as f64 * x
                }
            }
        }
    }

    /// The 256-entry table `input code → output code` for `u8` codes quantized with `input`
    /// and `output`: `clamp(round_half_even(f((q - z_i)·s_i) / s_o) + z_o)`, in `f64`.
    pub fn table(self, input: &ActParams, output: &ActParams) -> Vec<u8> {
        (0..256)
            .map(|q: i32| {
                let x = (q - input.zero_point) as f64 * input.scale as f64;
                let y = (self.eval(x) / output.scale as f64).round_ties_even()
                    + output.zero_point as f64;
                y.clamp(output.qmin as f64, output.qmax as f64) as u8
            })
            .collect()
    }
}

/// An elementwise function of one code tensor as a lookup table computed at lowering time
/// (Sigmoid, Tanh, LeakyRelu): exact by construction for 8-bit codes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupStep {
    /// Node name.
    pub name: String,
    /// Input tensor.
    pub input: usize,
    /// Output tensor.
    pub output: usize,
    /// The function the table holds.
    pub function: UnaryFn,
    /// Output code of every input code (256 entries).
    pub table: Vec<u8>,
}

/// Product of two code tensors: `clamp(z_o + D((q_a - z_a)·(q_b - z_b)))` with
/// `D ≈ s_a·s_b/s_o`, the product exact in `i32`. `b` may be broadcast per channel: element `i`
/// of a sample of `a` is multiplied by element `i / inner` of the same sample of `b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MulStep {
    /// Node name.
    pub name: String,
    /// The full-size operand.
    pub a: usize,
    /// The operand broadcast over runs of `inner` elements (1: same shape).
    pub b: usize,
    /// Output tensor.
    pub output: usize,
    /// Consecutive elements of `a` sharing one element of `b`.
    pub inner: usize,
    /// `s_a·s_b/s_o`.
    pub multiplier: Dyadic,
    /// Output zero point and clamp.
    pub range: OutputRange,
}

/// Permutation of the per-sample axes of a code tensor (pure data movement).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransposeStep {
    /// Node name.
    pub name: String,
    /// Input tensor.
    pub input: usize,
    /// Output tensor (same quantization).
    pub output: usize,
    /// Per-sample input shape.
    pub in_shape: Vec<usize>,
    /// Output axis `k` is input axis `perm[k]` (per-sample axes).
    pub perm: Vec<usize>,
}

impl TransposeStep {
    /// Moves one sample's elements (any element type).
    pub fn apply<T: Copy>(&self, x: &[T], out: &mut Vec<T>) {
        let rank = self.in_shape.len();
        let out_shape: Vec<usize> = self.perm.iter().map(|&a| self.in_shape[a]).collect();
        let in_strides = mixprec_graph::tensor::strides(&self.in_shape);
        let total: usize = out_shape.iter().product();
        let mut idx = vec![0usize; rank];
        for _ in 0..total {
            let src: usize = (0..rank).map(|k| idx[k] * in_strides[self.perm[k]]).sum();
            out.push(x[src]);
            for k in (0..rank).rev() {
                idx[k] += 1;
                if idx[k] < out_shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
    }
}

/// Which elementwise operation an [`InputOp`] applies to the input `x` and its constant `c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputOpKind {
    /// `x + c`.
    Add,
    /// `x - c`.
    Sub,
    /// `c - x`.
    SubFrom,
    /// `x · c`.
    Mul,
    /// `x / c`.
    Div,
    /// `c / x`.
    DivInto,
}

/// An elementwise operation with a constant on the path from the graph input to the first
/// quantized tensor (input normalisation such as `(x - mean) / std`). It runs in `f32` inside
/// the input quantization, exactly as the float graph computes it, so it costs no accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputOp {
    /// Graph node it comes from.
    pub name: String,
    /// The operation.
    pub kind: InputOpKind,
    /// The constant, broadcast over one sample: element `i` of a sample uses
    /// `values[i / inner]` (one value: a scalar; one per channel: `inner = H·W`).
    pub values: Vec<f32>,
    /// Consecutive elements sharing one value.
    pub inner: usize,
}

impl InputOp {
    /// Applies the operation in place to batch-major samples of `values.len() · inner`
    /// elements each.
    pub fn apply(&self, x: &mut [f32]) {
        let (n, inner) = (self.values.len(), self.inner.max(1));
        if n == 0 {
            return;
        }
        for chunk in x.chunks_mut(n * inner) {
            for (run, &c) in chunk.chunks_mut(inner).zip(&self.values) {
                for v in run {
                    *v = match self.kind {
                        InputOpKind::Add => *v + c,
                        InputOpKind::Sub => *v - c,
                        InputOpKind::SubFrom => c - *v,
                        InputOpKind::Mul => *v * c,
                        InputOpKind::Div => *v / c,
                        InputOpKind::DivInto => c / *v,
                    };
                }
            }
        }
    }
}

/// One operation of a lowered model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// `f32` → codes with the output tensor's parameters, after the graph's elementwise input
    /// preprocessing (`ops`, applied in order in `f32`).
    Quantize {
        /// `f32` tensor.
        input: usize,
        /// Code tensor.
        output: usize,
        /// Input normalisation (Sub / Div / Mul / Add by constants) folded from the graph.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ops: Vec<InputOp>,
    },
    /// Conv / Gemm / MatMul.
    Layer(LayerStep),
    /// Residual Add.
    Add(AddStep),
    /// Concatenation along an axis.
    Concat(ConcatStep),
    /// Elementwise function by table lookup.
    Lookup(LookupStep),
    /// Product of two code tensors.
    Mul(MulStep),
    /// Axis permutation.
    Transpose(TransposeStep),
    /// Max pooling on codes.
    MaxPool(PoolStep),
    /// Average pooling with dyadic rescaling.
    AvgPool(PoolStep),
    /// Clamp of codes (a standalone ReLU / Clip).
    Clamp {
        /// Node name.
        name: String,
        /// Input tensor.
        input: usize,
        /// Output tensor (same parameters).
        output: usize,
        /// Lowest code.
        lo: i32,
        /// Highest code.
        hi: i32,
    },
    /// Codes → codes at another scale: `clamp(z_o + D(q - z_i))`.
    Requant {
        /// What it feeds.
        name: String,
        /// Input tensor.
        input: usize,
        /// Output tensor.
        output: usize,
        /// `s_i / s_o`.
        multiplier: Dyadic,
    },
    /// Codes → `f32`.
    Dequantize {
        /// Input tensor.
        input: usize,
        /// Output tensor.
        output: usize,
    },
    /// `f32` softmax over one axis: per sample `[outer, len, inner]`.
    Softmax {
        /// Node name.
        name: String,
        /// Input tensor.
        input: usize,
        /// Output tensor.
        output: usize,
        /// Product of the dimensions before the axis.
        outer: usize,
        /// Axis length.
        len: usize,
        /// Product of the dimensions after the axis.
        inner: usize,
    },
}

impl Step {
    /// Input tensors.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Step::Quantize { input, .. }
            | Step::Clamp { input, .. }
            | Step::Requant { input, .. }
            | Step::Dequantize { input, .. }
            | Step::Softmax { input, .. } => vec![*input],
            Step::Layer(l) => vec![l.input],
            Step::Add(a) => vec![a.a, a.b],
            Step::Concat(c) => c.inputs.clone(),
            Step::Lookup(l) => vec![l.input],
            Step::Mul(m) => vec![m.a, m.b],
            Step::Transpose(t) => vec![t.input],
            Step::MaxPool(p) | Step::AvgPool(p) => vec![p.input],
        }
    }

    /// Output tensor.
    pub fn output(&self) -> usize {
        match self {
            Step::Quantize { output, .. }
            | Step::Clamp { output, .. }
            | Step::Requant { output, .. }
            | Step::Dequantize { output, .. }
            | Step::Softmax { output, .. } => *output,
            Step::Layer(l) => l.output,
            Step::Add(a) => a.output,
            Step::Concat(c) => c.output,
            Step::Lookup(l) => l.output,
            Step::Mul(m) => m.output,
            Step::Transpose(t) => t.output,
            Step::MaxPool(p) | Step::AvgPool(p) => p.output,
        }
    }

    /// A name for messages.
    pub fn name(&self) -> &str {
        match self {
            Step::Quantize { .. } => "input quantization",
            Step::Dequantize { .. } => "output dequantization",
            Step::Clamp { name, .. } | Step::Requant { name, .. } | Step::Softmax { name, .. } => {
                name
            }
            Step::Layer(l) => &l.name,
            Step::Add(a) => &a.name,
            Step::Concat(c) => &c.name,
            Step::Lookup(l) => &l.name,
            Step::Mul(m) => &m.name,
            Step::Transpose(t) => &t.name,
            Step::MaxPool(p) | Step::AvgPool(p) => &p.name,
        }
    }
}

/// Kernel-ready form of a layer's weights.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KernelWeights {
    Conv(ConvWeights),
    Gemm8(PackedI8),
    Gemm4(PackedI4),
}

/// Symmetric signed weight codes of one layer: `[Cout, Cin/groups, kh, kw]` for a convolution,
/// `[N, K]` for a matrix product. Widths 4 and 8 run on the int4 / int8 kernels; 2, 3, 5, 6, 7
/// are stored densely at their width and unpacked to the int8 kernel when loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// Shape.
    pub shape: Vec<usize>,
    /// Convolution groups (1 for matrix products).
    pub groups: usize,
    /// Dense storage at the layer's bit width.
    pub codes: PackedBits,
    pub(crate) kernel: KernelWeights,
    /// The fast executor's packing (AVX-512 VNNI CPUs, ungrouped layers).
    pub(crate) fast: Option<crate::fast::FastWeights>,
}

impl LayerWeights {
    /// Prepares the kernel form of `codes` (`shape` of rank 4 = convolution, 2 = matrix).
    pub fn new(shape: Vec<usize>, groups: usize, codes: PackedBits) -> Result<Self> {
        let err = |e| EngineError::Invalid(format!("weights {shape:?}: {e}"));
        let numel = checked_numel(&shape)
            .ok_or_else(|| EngineError::Invalid(format!("weight shape {shape:?} is too large")))?;
        if numel != codes.len() {
            return Err(EngineError::Invalid(format!(
                "weights {shape:?} need {numel} codes, the file holds {}",
                codes.len()
            )));
        }
        let values = unpack_bits(&codes);
        let kernel = match *shape.as_slice() {
            [o, i, kh, kw] => KernelWeights::Conv(
                ConvWeights::new(&values, [o, i, kh, kw], groups, codes.bits()).map_err(err)?,
            ),
            [n, k] if codes.bits() == 4 => {
                KernelWeights::Gemm4(PackedI4::new(&values, n, k).map_err(err)?)
            }
            [n, k] => KernelWeights::Gemm8(PackedI8::new(&values, n, k).map_err(err)?),
            _ => {
                return Err(EngineError::Invalid(format!(
                    "weight shape {shape:?} must have rank 4 (convolution) or 2 (matrix)"
                )))
            }
        };
        let fast = crate::fast::FastWeights::new(&values, &shape, groups);
        Ok(Self {
            shape,
            groups,
            codes,
            kernel,
            fast,
        })
    }

    /// Bit width.
    pub fn bits(&self) -> u32 {
        self.codes.bits()
    }

    /// The codes, unpacked, row-major in [`LayerWeights::shape`].
    pub fn values(&self) -> Vec<i8> {
        unpack_bits(&self.codes)
    }
}

/// Product of dims, `None` on overflow or above [`MAX_TENSOR_ELEMS`].
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_ELEMS)
}

/// A quantized model lowered for the integer engine (see the module docs). Build one with
/// [`crate::lower`] / [`crate::lower_with_data`], run it with [`QuantModel::run`], store it
/// with [`QuantModel::save`].
#[derive(Clone, Debug, PartialEq)]
pub struct QuantModel {
    pub(crate) name: String,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) steps: Vec<Step>,
    pub(crate) weights: Vec<LayerWeights>,
    pub(crate) input: usize,
    pub(crate) output: usize,
    /// The fast executor's plan and reusable buffers (built on the first fast run).
    pub(crate) fast: crate::fast::FastCache,
}

/// Every code tensor of one run (by tensor name) and the model output.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Stored `u8` codes of every quantized tensor, batch-major.
    pub codes: BTreeMap<String, Vec<u8>>,
    /// The model output (`f32`), batch-major.
    pub output: Vec<f32>,
}

pub(crate) enum Buf {
    Codes(Vec<u8>),
    Float(Vec<f32>),
}

impl QuantModel {
    /// Model name (from the graph).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shape of one input sample (without the batch dimension).
    pub fn input_shape(&self) -> &[usize] {
        &self.tensors[self.input].shape
    }

    /// Shape of one output sample (without the batch dimension).
    pub fn output_shape(&self) -> &[usize] {
        &self.tensors[self.output].shape
    }

    /// The tensors.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The steps, in execution order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The layers' weights (indexed by [`LayerStep::weights`]).
    pub fn weights(&self) -> &[LayerWeights] {
        &self.weights
    }

    /// Bytes of packed weight codes.
    pub fn weight_bytes(&self) -> usize {
        self.weights.iter().map(|w| w.codes.as_bytes().len()).sum()
    }

    /// Runs `batch` samples (`input` holds `batch · input_shape` values, batch-major) on the
    /// fastest kernels of this CPU; returns `batch · output_shape` values.
    pub fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.run_with(Backend::best(), input, batch)
    }

    /// [`QuantModel::run`] on an explicit kernel backend (`Backend::Generic` forces the
    /// portable kernels).
    ///
    /// On [`Backend::Avx512Vnni`] this is the fast executor ([`crate::fast`]: channels-last
    /// codes, fused im2col + GEMM + requantization, buffers reused across calls); the other
    /// backends run the step-by-step reference executor. Both give the same result bit for bit.
    pub fn run_with(&self, backend: Backend, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        if self.uses_fast_path(backend) {
            return Ok(self.execute_fast(input, batch, false)?.output);
        }
        Ok(self.execute(backend, input, batch, false)?.output)
    }

    /// [`QuantModel::run_with`] keeping the codes of every quantized tensor.
    pub fn trace(&self, backend: Backend, input: &[f32], batch: usize) -> Result<Trace> {
        if self.uses_fast_path(backend) {
            return self.execute_fast(input, batch, true);
        }
        self.execute(backend, input, batch, true)
    }

    /// The step-by-step reference executor on `backend`'s kernels (channels-first tensors,
    /// one allocation per step), whatever the backend.
    pub fn trace_reference(&self, backend: Backend, input: &[f32], batch: usize) -> Result<Trace> {
        self.execute(backend, input, batch, true)
    }

    pub(crate) fn check_input(&self, input: &[f32], batch: usize) -> Result<()> {
        let per = self.tensors[self.input].numel();
        if batch == 0 || batch.checked_mul(per) != Some(input.len()) {
            return Err(EngineError::Input(format!(
                "{} values given for batch {batch} of samples of shape {:?} ({per} values each)",
                input.len(),
                self.input_shape()
            )));
        }
        Ok(())
    }

    fn execute(&self, backend: Backend, input: &[f32], batch: usize, keep: bool) -> Result<Trace> {
        self.check_input(input, batch)?;
        let mut bufs: Vec<Option<Buf>> = (0..self.tensors.len()).map(|_| None).collect();
        bufs[self.input] = Some(Buf::Float(input.to_vec()));
        for step in &self.steps {
            let out = self.exec_step(backend, step, &bufs, batch)?;
            bufs[step.output()] = Some(out);
        }
        let output = match bufs[self.output].take() {
            Some(Buf::Float(v)) => v,
            _ => {
                return Err(EngineError::Invalid(
                    "the model output is not a float tensor".into(),
                ))
            }
        };
        let mut codes = BTreeMap::new();
        if keep {
            for (t, b) in self.tensors.iter().zip(bufs) {
                if let Some(Buf::Codes(c)) = b {
                    codes.insert(t.name.clone(), c);
                }
            }
        }
        Ok(Trace { codes, output })
    }

    pub(crate) fn params(&self, t: usize) -> Result<ActParams> {
        self.tensors[t].params.ok_or_else(|| {
            EngineError::Invalid(format!("tensor '{}' holds no codes", self.tensors[t].name))
        })
    }

    pub(crate) fn exec_step(
        &self,
        backend: Backend,
        step: &Step,
        bufs: &[Option<Buf>],
        batch: usize,
    ) -> Result<Buf> {
        let codes = |t: usize| -> Result<&[u8]> {
            match &bufs[t] {
                Some(Buf::Codes(c)) => Ok(c),
                _ => Err(EngineError::Invalid(format!(
                    "step '{}' reads tensor '{}', which holds no codes",
                    step.name(),
                    self.tensors[t].name
                ))),
            }
        };
        let floats = |t: usize| -> Result<&[f32]> {
            match &bufs[t] {
                Some(Buf::Float(c)) => Ok(c),
                _ => Err(EngineError::Invalid(format!(
                    "step '{}' reads tensor '{}', which is not a float tensor",
                    step.name(),
                    self.tensors[t].name
                ))),
            }
        };
        Ok(match step {
            Step::Quantize { input, output, ops } => {
                let p = self.params(*output)?;
                let x = floats(*input)?;
                if ops.is_empty() {
                    Buf::Codes(x.iter().map(|&x| p.quantize(x)).collect())
                } else {
                    let mut x = x.to_vec();
                    for op in ops {
                        op.apply(&mut x);
                    }
                    Buf::Codes(x.iter().map(|&x| p.quantize(x)).collect())
                }
            }
            Step::Dequantize { input, output: _ } => {
                let p = self.params(*input)?;
                Buf::Float(codes(*input)?.iter().map(|&q| p.dequantize(q)).collect())
            }
            Step::Layer(l) => self.exec_layer(backend, l, codes(l.input)?, batch)?,
            Step::Add(a) => {
                let (x, y) = (codes(a.a)?, codes(a.b)?);
                let (za, zb) = (self.params(a.a)?.zero_point, self.params(a.b)?.zero_point);
                if a.b_inner == 0 || x.len() != y.len() * a.b_inner {
                    return Err(EngineError::Invalid(format!(
                        "Add '{}' operands differ in length",
                        a.name
                    )));
                }
                Buf::Codes(
                    x.iter()
                        .enumerate()
                        .map(|(i, &p)| {
                            let q = y[i / a.b_inner];
                            let s = a.ma * (p as i32 - za) as i64 + a.mb * (q as i32 - zb) as i64;
                            (rounding_shift(s, a.shift) + a.range.zero_point as i64)
                                .clamp(a.range.qmin as i64, a.range.qmax as i64)
                                as u8
                        })
                        .collect(),
                )
            }
            Step::Concat(c) => {
                let zo = self.params(c.output)?.range();
                let ins = c
                    .inputs
                    .iter()
                    .map(|&t| Ok((codes(t)?, self.params(t)?.zero_point)))
                    .collect::<Result<Vec<_>>>()?;
                let per: usize = c.outer * c.blocks.iter().sum::<usize>();
                let mut out = Vec::with_capacity(batch * per);
                for s in 0..batch {
                    for o in 0..c.outer {
                        for (((x, zi), &blk), m) in ins.iter().zip(&c.blocks).zip(&c.multipliers) {
                            let start = (s * c.outer + o) * blk;
                            let src = x.get(start..start + blk).ok_or_else(|| {
                                EngineError::Invalid(format!(
                                    "Concat '{}': an input is shorter than its blocks",
                                    c.name
                                ))
                            })?;
                            match m {
                                None => out.extend_from_slice(src),
                                Some(d) => out.extend(
                                    src.iter().map(|&q| d.requant(q as i32 - zi, zo) as u8),
                                ),
                            }
                        }
                    }
                }
                Buf::Codes(out)
            }
            Step::Lookup(l) => {
                if l.table.len() != 256 {
                    return Err(EngineError::Invalid(format!(
                        "'{}': the lookup table has {} entries, not 256",
                        l.name,
                        l.table.len()
                    )));
                }
                Buf::Codes(
                    codes(l.input)?
                        .iter()
                        .map(|&q| l.table[q as usize])
                        .collect(),
                )
            }
            Step::Mul(m) => {
                let (x, y) = (codes(m.a)?, codes(m.b)?);
                let (za, zb) = (self.params(m.a)?.zero_point, self.params(m.b)?.zero_point);
                if m.inner == 0 || x.len() != y.len() * m.inner {
                    return Err(EngineError::Invalid(format!(
                        "Mul '{}': operands of {} and {} codes do not broadcast with runs of {}",
                        m.name,
                        x.len(),
                        y.len(),
                        m.inner
                    )));
                }
                Buf::Codes(
                    x.iter()
                        .enumerate()
                        .map(|(i, &p)| {
                            let v = (p as i32 - za) * (y[i / m.inner] as i32 - zb);
                            m.multiplier.requant(v, m.range) as u8
                        })
                        .collect(),
                )
            }
            Step::Transpose(t) => {
                let x = codes(t.input)?;
                let per = checked_numel(&t.in_shape).unwrap_or(0);
                if per == 0 || x.len() != per * batch {
                    return Err(EngineError::Invalid(format!(
                        "Transpose '{}': {} codes for samples of shape {:?}",
                        t.name,
                        x.len(),
                        t.in_shape
                    )));
                }
                let mut out = Vec::with_capacity(x.len());
                for sample in x.chunks_exact(per) {
                    t.apply(sample, &mut out);
                }
                Buf::Codes(out)
            }
            Step::MaxPool(p) => Buf::Codes(max_pool(p, codes(p.input)?, batch)),
            Step::AvgPool(p) => {
                let range = self.params(p.output)?.range();
                let zin = self.params(p.input)?.zero_point;
                Buf::Codes(avg_pool(p, codes(p.input)?, batch, zin, range)?)
            }
            Step::Clamp { input, lo, hi, .. } => Buf::Codes(
                codes(*input)?
                    .iter()
                    .map(|&q| (q as i32).clamp(*lo, *hi) as u8)
                    .collect(),
            ),
            Step::Requant {
                input,
                output,
                multiplier,
                ..
            } => {
                let zi = self.params(*input)?.zero_point;
                let r = self.params(*output)?.range();
                Buf::Codes(
                    codes(*input)?
                        .iter()
                        .map(|&q| multiplier.requant(q as i32 - zi, r) as u8)
                        .collect(),
                )
            }
            Step::Softmax {
                input,
                outer,
                len,
                inner,
                ..
            } => {
                let mut v = floats(*input)?.to_vec();
                softmax(&mut v, *outer, *len, *inner);
                Buf::Float(v)
            }
        })
    }

    fn exec_layer(&self, backend: Backend, l: &LayerStep, x: &[u8], batch: usize) -> Result<Buf> {
        let zp = self.params(l.input)?.zero_point;
        let w = &self.weights[l.weights];
        let (acc, shape) = match (&l.geometry, &w.kernel) {
            (
                LayerGeometry::Conv {
                    input: [c, h, wd],
                    output: [co, ho, wo],
                    params,
                },
                KernelWeights::Conv(cw),
            ) => {
                let r = conv2d_with(backend, x, [batch, *c, *h, *wd], zp, cw, params)
                    .map_err(kernel(&l.name))?;
                (r.data, [batch, *co, ho * wo])
            }
            (LayerGeometry::Gemm { rows, n, .. }, KernelWeights::Gemm8(pw)) => (
                gemm_with(backend, x, batch * rows, zp, pw).map_err(kernel(&l.name))?,
                [batch * rows, *n, 1],
            ),
            (LayerGeometry::Gemm { rows, n, .. }, KernelWeights::Gemm4(pw)) => (
                gemm_with(backend, x, batch * rows, zp, pw).map_err(kernel(&l.name))?,
                [batch * rows, *n, 1],
            ),
            _ => {
                return Err(EngineError::Invalid(format!(
                    "layer '{}': weights do not match its geometry",
                    l.name
                )))
            }
        };
        Ok(match &l.out {
            LayerOutput::Codes { multipliers, range } => Buf::Codes(
                requantize::<u8>(&acc, shape, Some(&l.bias), multipliers, *range)
                    .map_err(kernel(&l.name))?,
            ),
            LayerOutput::Float { scales, lo, hi } => {
                let [_, ch, inner] = shape;
                let mut out = Vec::with_capacity(acc.len());
                for block in acc.chunks_exact(ch * inner) {
                    for (c, row) in block.chunks_exact(inner).enumerate() {
                        let (b, s) = (l.bias[c], scales[c]);
                        out.extend(row.iter().map(|&a| {
                            let y = ((a as i64 + b as i64) as f64 * s) as f32;
                            clamp_f32(y, *lo, *hi)
                        }));
                    }
                }
                Buf::Float(out)
            }
        })
    }
}

pub(crate) fn clamp_f32(y: f32, lo: Option<f32>, hi: Option<f32>) -> f32 {
    let y = lo.map_or(y, |l| y.max(l));
    hi.map_or(y, |h| y.min(h))
}

/// Input coordinate of output `o`, tap `t`, or `None` in the padding.
#[inline]
pub(crate) fn src(
    o: usize,
    t: usize,
    stride: usize,
    dil: usize,
    pad: usize,
    len: usize,
) -> Option<usize> {
    (o * stride + t * dil).checked_sub(pad).filter(|&i| i < len)
}

fn max_pool(p: &PoolStep, x: &[u8], batch: usize) -> Vec<u8> {
    let [c, h, w] = p.in_shape;
    let [ho, wo] = p.out_hw;
    let mut out = Vec::with_capacity(batch * c * ho * wo);
    for plane in x.chunks_exact(h * w).take(batch * c) {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = 0u8;
                for ky in 0..p.kernel[0] {
                    let Some(iy) = src(oy, ky, p.strides[0], p.dilations[0], p.pads[0], h) else {
                        continue;
                    };
                    for kx in 0..p.kernel[1] {
                        if let Some(ix) = src(ox, kx, p.strides[1], p.dilations[1], p.pads[1], w) {
                            m = m.max(plane[iy * w + ix]);
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

/// Number of window positions counted in the divisor of average pooling at `(oy, ox)`, and
/// the sum of `q - zp` over the valid ones.
pub(crate) fn avg_window(
    p: &PoolStep,
    plane: &[u8],
    oy: usize,
    ox: usize,
    zp: i32,
) -> (i64, usize) {
    let [_, h, w] = p.in_shape;
    let mut sum = 0i64;
    let mut valid = 0usize;
    let mut padded = 0usize;
    for ky in 0..p.kernel[0] {
        let y = oy * p.strides[0] + ky;
        let in_pad_y = y < h + p.pads[0] + p.pads[2];
        let iy = src(oy, ky, p.strides[0], 1, p.pads[0], h);
        for kx in 0..p.kernel[1] {
            let x = ox * p.strides[1] + kx;
            if in_pad_y && x < w + p.pads[1] + p.pads[3] {
                padded += 1;
            }
            if let (Some(iy), Some(ix)) = (iy, src(ox, kx, p.strides[1], 1, p.pads[1], w)) {
                sum += (plane[iy * w + ix] as i32 - zp) as i64;
                valid += 1;
            }
        }
    }
    (sum, if p.count_include_pad { padded } else { valid })
}

fn avg_pool(p: &PoolStep, x: &[u8], batch: usize, zp: i32, r: OutputRange) -> Result<Vec<u8>> {
    let [c, h, w] = p.in_shape;
    let [ho, wo] = p.out_hw;
    let mut out = Vec::with_capacity(batch * c * ho * wo);
    for plane in x.chunks_exact(h * w).take(batch * c) {
        for oy in 0..ho {
            for ox in 0..wo {
                let (sum, n) = avg_window(p, plane, oy, ox, zp);
                let d = n
                    .checked_sub(1)
                    .and_then(|i| p.multipliers.get(i))
                    .ok_or_else(|| {
                        EngineError::Invalid(format!(
                            "AveragePool '{}': no multiplier for a window of {n} elements",
                            p.name
                        ))
                    })?;
                let v = rounding_shift(sum * d.multiplier() as i64, d.shift());
                out.push((v + r.zero_point as i64).clamp(r.qmin as i64, r.qmax as i64) as u8);
            }
        }
    }
    Ok(out)
}

pub(crate) fn softmax(v: &mut [f32], outer: usize, len: usize, inner: usize) {
    let per = outer * len * inner;
    if per == 0 {
        return;
    }
    for sample in v.chunks_exact_mut(per) {
        for o in 0..outer {
            for i in 0..inner {
                let idx = |k: usize| (o * len + k) * inner + i;
                let m = (0..len).fold(f32::NEG_INFINITY, |m, k| m.max(sample[idx(k)]));
                let mut total = 0f32;
                for k in 0..len {
                    let e = (sample[idx(k)] - m).exp();
                    sample[idx(k)] = e;
                    total += e;
                }
                for k in 0..len {
                    sample[idx(k)] /= total;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixprec_quant::UniformParams;

    #[test]
    fn activation_params_match_the_uniform_quantizer() {
        // Asymmetric 8-bit on [-1, 3]: s = 4/255, z = round(1/s) = round(63.75) = 64.
        let up = UniformParams::from_range(-1.0, 3.0, 8, false).unwrap();
        let a = ActParams::from_uniform(&up).unwrap();
        assert_eq!((a.zero_point, a.qmin, a.qmax, a.offset), (64, 0, 255, 0));
        for x in [-2.0f32, -1.0, -0.3, 0.0, 0.01, 1.7, 3.0, 9.0] {
            assert_eq!(a.quantize(x) as i32, up.quantize_value(x, 0), "{x}");
        }
        assert_eq!(a.quantize(0.0), 64);
        assert_eq!(a.dequantize(64), 0.0);
        // ReLU clamps at the zero point, ReLU6 at the code of 6 (beyond the range: 255).
        let r = a.clamped_range(Some(0.0), Some(6.0));
        assert_eq!((r.qmin, r.qmax), (64, 255));
        let r = a.clamped_range(Some(0.0), Some(1.0));
        assert_eq!((r.qmin, r.qmax), (64, 64 + 64));
        // Signed symmetric codes are stored offset by 128.
        let up = UniformParams::from_range(-2.0, 1.0, 8, true).unwrap();
        let s = ActParams::from_uniform(&up).unwrap();
        assert_eq!((s.zero_point, s.qmin, s.qmax, s.offset), (128, 1, 255, 128));
        assert_eq!(s.quantize(-2.0), 1);
        assert_eq!(s.quantize(2.0), 255);
        assert_eq!(s.quantize(-1.0) as i32 - 128, up.quantize_value(-1.0, 0));
    }

    #[test]
    fn average_pool_rounds_half_away_from_zero() {
        // 2x2 window over one 2x2 plane, equal input and output scale: out = round(sum / 4).
        let mults: Vec<Dyadic> = (1..=4)
            .map(|n| Dyadic::from_real(1.0 / n as f64).unwrap())
            .collect();
        let p = PoolStep {
            name: "pool".into(),
            input: 0,
            output: 1,
            in_shape: [1, 2, 2],
            out_hw: [1, 1],
            kernel: [2, 2],
            strides: [2, 2],
            pads: [0; 4],
            dilations: [1, 1],
            count_include_pad: false,
            multipliers: mults,
        };
        let r = OutputRange::u8(10);
        // (q - 10) = 1, 2, 3, 5: sum 11, 11/4 = 2.75 -> 3.
        assert_eq!(avg_pool(&p, &[11, 12, 13, 15], 1, 10, r).unwrap(), vec![13]);
        // (q - 10) = -1, -2, -3, 0: -6/4 = -1.5 -> -2.
        assert_eq!(avg_pool(&p, &[9, 8, 7, 10], 1, 10, r).unwrap(), vec![8]);
        // Max pooling on codes.
        assert_eq!(max_pool(&p, &[9, 8, 17, 10], 1), vec![17]);
        // Padding outside the divisor: a 2x2 window at stride 1 with one pad on the right and
        // bottom sees 4, 2, 2 and 1 valid elements.
        let p = PoolStep {
            out_hw: [2, 2],
            strides: [1, 1],
            pads: [0, 0, 1, 1],
            ..p
        };
        assert_eq!(
            avg_pool(&p, &[11, 13, 15, 17], 1, 10, r).unwrap(),
            vec![10 + 4, 10 + 5, 10 + 6, 10 + 7]
        );
    }

    #[test]
    fn lookup_tables_round_half_to_even_and_saturate() {
        let p = |scale: f32, zero_point: i32| ActParams {
            scale,
            zero_point,
            qmin: 0,
            qmax: 255,
            offset: 0,
        };
        // Sigmoid from [-12.8, 12.7] (step 0.1) onto [0, 255/256] (step 1/256).
        let t = UnaryFn::Sigmoid.table(&p(0.1, 128), &p(1.0 / 256.0, 0));
        assert_eq!(t.len(), 256);
        assert_eq!((t[0], t[128], t[255]), (0, 128, 255));
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        // LeakyRelu(0.5) at step 1 around 128: -28 -> -14; -1 -> -0.5 rounds to even (0).
        let t = UnaryFn::LeakyRelu { alpha: 0.5 }.table(&p(1.0, 128), &p(1.0, 128));
        assert_eq!((t[100], t[127], t[125], t[200]), (114, 128, 126, 200));
        // Tanh saturates at the output range.
        let t = UnaryFn::Tanh.table(&p(0.1, 128), &p(0.5 / 127.0, 128));
        assert_eq!((t[0], t[128], t[255]), (0, 128, 255));
    }

    #[test]
    fn transpose_moves_each_element_to_its_permuted_index() {
        let t = TransposeStep {
            name: "t".into(),
            input: 0,
            output: 1,
            in_shape: vec![2, 3],
            perm: vec![1, 0],
        };
        let mut out = Vec::new();
        t.apply(&[1u8, 2, 3, 4, 5, 6], &mut out);
        assert_eq!(out, vec![1, 4, 2, 5, 3, 6]);
        // [2, 1, 2] -> perm [2, 0, 1] -> [2, 2, 1].
        let t = TransposeStep {
            in_shape: vec![2, 1, 2],
            perm: vec![2, 0, 1],
            ..t
        };
        let mut out = Vec::new();
        t.apply(&[1u8, 2, 3, 4], &mut out);
        assert_eq!(out, vec![1, 3, 2, 4]);
    }

    #[test]
    fn softmax_over_the_middle_axis() {
        // Per sample [outer = 1, len = 2, inner = 2]: columns are independent.
        let mut v = vec![0.0f32, 1.0, 0.0, 1.0];
        softmax(&mut v, 1, 2, 2);
        assert_eq!(v, vec![0.5; 4]);
        let mut v = vec![1.0f32, 0.0, 2.0f32.ln(), 0.0];
        // Two samples of [1, 2, 1]: e / (e + 1) and 2 / (2 + 1).
        softmax(&mut v, 1, 2, 1);
        assert!((v[0] - 0.731_058_6).abs() < 1e-6, "{v:?}");
        assert!((v[2] - 2.0 / 3.0).abs() < 1e-6, "{v:?}");
    }
}
