//! The graph IR: values, nodes with typed operators, named initializers.
//!
//! Operator attributes from older opsets that later moved to inputs (Clip min/max, Pad pads,
//! Squeeze/Unsqueeze axes, Reshape shape, Dropout ratio) are normalised at import to the input
//! form, so the rest of mixprec sees one form per operator.

use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// Index of a value (tensor edge) in [`Graph::values`].
pub type ValueId = usize;

/// A dimension of a declared input or output shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named or unknown size, such as the batch.
    Symbolic(String),
}

/// A tensor edge of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Name, unique in the graph.
    pub name: String,
    /// Declared shape, when the model declares one (graph inputs and outputs).
    pub shape: Option<Vec<Dim>>,
    /// ONNX element type (see [`crate::onnx_proto::data_type`]); 1 = float.
    pub elem_type: i32,
}

/// `auto_pad` of Conv and pooling operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AutoPad {
    /// Explicit `pads`.
    #[default]
    NotSet,
    /// Output size ceil(in / stride), extra padding at the end.
    SameUpper,
    /// Output size ceil(in / stride), extra padding at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

/// Spatial attributes shared by Conv, MaxPool and AveragePool.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Window {
    /// Kernel size per spatial dimension (for Conv taken from the weight when absent).
    pub kernel: Vec<usize>,
    /// Strides per spatial dimension.
    pub strides: Vec<usize>,
    /// Padding: all begins, then all ends (ONNX order).
    pub pads: Vec<usize>,
    /// Dilations per spatial dimension.
    pub dilations: Vec<usize>,
    /// `auto_pad`.
    pub auto_pad: AutoPad,
    /// Pooling only: output size rounded up.
    pub ceil_mode: bool,
}

impl Window {
    /// Resolve padding (including `auto_pad`) for a concrete input spatial shape. Returns
    /// (pads begin, pads end, output spatial shape).
    pub fn resolve(&self, input: &[usize]) -> Option<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        let n = input.len();
        if self.kernel.len() != n {
            return None;
        }
        let get = |v: &Vec<usize>, i: usize| v.get(i).copied().unwrap_or(1);
        let mut begin = vec![0; n];
        let mut end = vec![0; n];
        let mut out = vec![0; n];
        for i in 0..n {
            let (s, d, k) = (
                get(&self.strides, i),
                get(&self.dilations, i),
                self.kernel[i],
            );
            if s == 0 || d == 0 || k == 0 {
                return None;
            }
            let ek = (k - 1).checked_mul(d)?.checked_add(1)?;
            match self.auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let o = input[i].div_ceil(s);
                    let total = o
                        .saturating_sub(1)
                        .checked_mul(s)?
                        .checked_add(ek)?
                        .saturating_sub(input[i]);
                    let small = total / 2;
                    let big = total - small;
                    if self.auto_pad == AutoPad::SameUpper {
                        begin[i] = small;
                        end[i] = big;
                    } else {
                        begin[i] = big;
                        end[i] = small;
                    }
                    out[i] = o;
                    continue;
                }
                AutoPad::Valid => {}
                AutoPad::NotSet => {
                    begin[i] = self.pads.get(i).copied().unwrap_or(0);
                    end[i] = self.pads.get(i + n).copied().unwrap_or(0);
                }
            }
            let padded = input[i].checked_add(begin[i])?.checked_add(end[i])?;
            if padded < ek {
                return None;
            }
            let span = padded - ek;
            out[i] = if self.ceil_mode {
                span.div_ceil(s) + 1
            } else {
                span / s + 1
            };
            if self.ceil_mode && (out[i] - 1) * s >= input[i] + begin[i] {
                // ONNX/PyTorch: the last window must start inside the input or left padding.
                out[i] -= 1;
            }
        }
        Some((begin, end, out))
    }
}

/// Padding mode of Pad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// Fill with a constant.
    Constant,
    /// Mirror without repeating the edge.
    Reflect,
    /// Repeat the edge.
    Edge,
}

/// Cell of a recurrent operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecurrentKind {
    /// Elman RNN: `Ht = f(Xt·Wᵀ + Ht-1·Rᵀ + Wb + Rb)`.
    Rnn,
    /// GRU, gates in ONNX order z, r, h.
    Gru,
    /// LSTM, gates in ONNX order i, o, f, c.
    Lstm,
}

impl RecurrentKind {
    /// Gates stacked in W and R (1, 3, 4).
    pub fn gates(self) -> usize {
        match self {
            RecurrentKind::Rnn => 1,
            RecurrentKind::Gru => 3,
            RecurrentKind::Lstm => 4,
        }
    }
    /// Activation functions per direction (f; f, g; f, g, h).
    pub fn activation_count(self) -> usize {
        match self {
            RecurrentKind::Rnn => 1,
            RecurrentKind::Gru => 2,
            RecurrentKind::Lstm => 3,
        }
    }
    /// ONNX operator name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            RecurrentKind::Rnn => "RNN",
            RecurrentKind::Gru => "GRU",
            RecurrentKind::Lstm => "LSTM",
        }
    }
}

/// `direction` of a recurrent operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RnnDirection {
    /// First to last step.
    Forward,
    /// Last to first step.
    Reverse,
    /// Both; outputs stack forward then reverse on the direction axis.
    Bidirectional,
}

impl RnnDirection {
    /// 1, or 2 when bidirectional.
    pub fn count(self) -> usize {
        if self == RnnDirection::Bidirectional {
            2
        } else {
            1
        }
    }
    /// ONNX attribute value.
    pub fn onnx_name(self) -> &'static str {
        match self {
            RnnDirection::Forward => "forward",
            RnnDirection::Reverse => "reverse",
            RnnDirection::Bidirectional => "bidirectional",
        }
    }
}

/// Activation functions of the recurrent operators (ONNX names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationKind {
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// alpha·x + beta.
    Affine,
    /// x if x ≥ 0 else alpha·x.
    LeakyRelu,
    /// x if x > alpha else 0.
    ThresholdedRelu,
    /// alpha·tanh(beta·x).
    ScaledTanh,
    /// min(max(alpha·x + beta, 0), 1).
    HardSigmoid,
    /// x if x ≥ 0 else alpha·(e^x − 1).
    Elu,
    /// x / (1 + |x|).
    Softsign,
    /// log(1 + e^x).
    Softplus,
}

impl ActivationKind {
    /// Every kind, in ONNX's order.
    pub const ALL: [ActivationKind; 11] = [
        ActivationKind::Relu,
        ActivationKind::Tanh,
        ActivationKind::Sigmoid,
        ActivationKind::Affine,
        ActivationKind::LeakyRelu,
        ActivationKind::ThresholdedRelu,
        ActivationKind::ScaledTanh,
        ActivationKind::HardSigmoid,
        ActivationKind::Elu,
        ActivationKind::Softsign,
        ActivationKind::Softplus,
    ];
    /// ONNX name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            ActivationKind::Relu => "Relu",
            ActivationKind::Tanh => "Tanh",
            ActivationKind::Sigmoid => "Sigmoid",
            ActivationKind::Affine => "Affine",
            ActivationKind::LeakyRelu => "LeakyRelu",
            ActivationKind::ThresholdedRelu => "ThresholdedRelu",
            ActivationKind::ScaledTanh => "ScaledTanh",
            ActivationKind::HardSigmoid => "HardSigmoid",
            ActivationKind::Elu => "Elu",
            ActivationKind::Softsign => "Softsign",
            ActivationKind::Softplus => "Softplus",
        }
    }
    /// Whether the function takes `alpha` and `beta` from `activation_alpha` / `activation_beta`.
    pub fn uses_alpha_beta(self) -> (bool, bool) {
        match self {
            ActivationKind::Affine | ActivationKind::ScaledTanh | ActivationKind::HardSigmoid => {
                (true, true)
            }
            ActivationKind::LeakyRelu | ActivationKind::ThresholdedRelu | ActivationKind::Elu => {
                (true, false)
            }
            _ => (false, false),
        }
    }
}

/// One activation function with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Activation {
    /// The function.
    pub kind: ActivationKind,
    /// `alpha` (unused by functions without one).
    pub alpha: f32,
    /// `beta` (unused by functions without one).
    pub beta: f32,
}

impl Activation {
    /// A function without parameters.
    pub fn plain(kind: ActivationKind) -> Self {
        Self {
            kind,
            alpha: 0.0,
            beta: 0.0,
        }
    }
}

/// Attributes of ONNX RNN, GRU and LSTM (opsets 7 and 14). Inputs X, W, R, optional B,
/// sequence_lens, initial_h, and for LSTM initial_c and P.
#[derive(Clone, Debug, PartialEq)]
pub struct Recurrent {
    /// The cell.
    pub kind: RecurrentKind,
    /// Hidden units per direction.
    pub hidden_size: usize,
    /// Direction.
    pub direction: RnnDirection,
    /// `activation_count()` functions per direction (f, g, h), forward direction first.
    pub activations: Vec<Activation>,
    /// Pre-activations of the gates are clamped to ±clip.
    pub clip: Option<f32>,
    /// LSTM: forget gate f = 1 − i.
    pub input_forget: bool,
    /// GRU: apply R_h (and its bias) before multiplying by the reset gate.
    pub linear_before_reset: bool,
    /// `layout = 1`: X [batch, seq, input], Y [batch, seq, dir, hidden], states [batch, dir, hidden].
    pub batch_first: bool,
    /// Which of Y, Y_h, Y_c the node produces; [`Node::outputs`] lists the produced ones in
    /// this order (ONNX marks the others with empty names).
    pub outputs: [bool; 3],
}

impl Recurrent {
    /// Index in [`Node::outputs`] of output slot `k` (0 = Y, 1 = Y_h, 2 = Y_c), if produced.
    pub fn output_index(&self, k: usize) -> Option<usize> {
        (k < 3 && self.outputs[k]).then(|| self.outputs[..k].iter().filter(|&&b| b).count())
    }
}

/// Element-wise unary functions (one input, same shape out).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// Gauss error function.
    Erf,
    /// 1 / x.
    Reciprocal,
    /// Round toward −∞.
    Floor,
    /// Round toward +∞.
    Ceil,
    /// Round half to even.
    Round,
    /// −1, 0 or 1.
    Sign,
    /// log(1 + eˣ).
    Softplus,
    /// Logical negation of a boolean (0/1) tensor.
    Not,
    /// x·max(0, min(1, x/6 + 1/2)).
    HardSwish,
    /// x if x > 0 else alpha·(eˣ − 1).
    Elu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// gamma·(x if x > 0 else alpha·(eˣ − 1)).
    Selu {
        /// Scale of the negative part.
        alpha: f32,
        /// Overall scale.
        gamma: f32,
    },
    /// max(0, min(1, alpha·x + beta)).
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// x·Φ(x), exactly or with the tanh approximation.
    Gelu {
        /// `approximate = "tanh"`.
        tanh: bool,
    },
    /// x / (1 + |x|).
    Softsign,
    /// x if x > alpha else 0.
    ThresholdedRelu {
        /// Threshold.
        alpha: f32,
    },
    /// max(0, x) + min(0, alpha·(e^(x/alpha) − 1)).
    Celu {
        /// Scale.
        alpha: f32,
    },
}

impl Unary {
    /// ONNX operator name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            Unary::Erf => "Erf",
            Unary::Reciprocal => "Reciprocal",
            Unary::Floor => "Floor",
            Unary::Ceil => "Ceil",
            Unary::Round => "Round",
            Unary::Sign => "Sign",
            Unary::Softplus => "Softplus",
            Unary::Not => "Not",
            Unary::HardSwish => "HardSwish",
            Unary::Elu { .. } => "Elu",
            Unary::Selu { .. } => "Selu",
            Unary::HardSigmoid { .. } => "HardSigmoid",
            Unary::Gelu { .. } => "Gelu",
            Unary::Softsign => "Softsign",
            Unary::ThresholdedRelu { .. } => "ThresholdedRelu",
            Unary::Celu { .. } => "Celu",
        }
    }
}

/// Element-wise comparisons with broadcasting; the result is boolean (held as 0/1 integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// a = b.
    Equal,
    /// a < b.
    Less,
    /// a ≤ b.
    LessOrEqual,
    /// a > b.
    Greater,
    /// a ≥ b.
    GreaterOrEqual,
    /// Logical and of booleans.
    And,
    /// Logical or of booleans.
    Or,
    /// Logical exclusive or of booleans.
    Xor,
}

impl Compare {
    /// ONNX operator name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            Compare::Equal => "Equal",
            Compare::Less => "Less",
            Compare::LessOrEqual => "LessOrEqual",
            Compare::Greater => "Greater",
            Compare::GreaterOrEqual => "GreaterOrEqual",
            Compare::And => "And",
            Compare::Or => "Or",
            Compare::Xor => "Xor",
        }
    }
}

/// Variadic element-wise operators with broadcasting (one or more inputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variadic {
    /// Element-wise minimum.
    Min,
    /// Element-wise maximum.
    Max,
    /// Element-wise sum.
    Sum,
    /// Element-wise mean.
    Mean,
}

impl Variadic {
    /// ONNX operator name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            Variadic::Min => "Min",
            Variadic::Max => "Max",
            Variadic::Sum => "Sum",
            Variadic::Mean => "Mean",
        }
    }
}

/// Reductions over axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Mean.
    Mean,
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// Product.
    Prod,
    /// Euclidean norm.
    L2,
    /// Sum of squares.
    SumSquare,
    /// Sum of absolute values.
    L1,
    /// Log of the sum.
    LogSum,
    /// Log of the sum of exponentials.
    LogSumExp,
}

impl Reduce {
    /// ONNX operator name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            Reduce::Mean => "ReduceMean",
            Reduce::Sum => "ReduceSum",
            Reduce::Max => "ReduceMax",
            Reduce::Min => "ReduceMin",
            Reduce::Prod => "ReduceProd",
            Reduce::L2 => "ReduceL2",
            Reduce::SumSquare => "ReduceSumSquare",
            Reduce::L1 => "ReduceL1",
            Reduce::LogSum => "ReduceLogSum",
            Reduce::LogSumExp => "ReduceLogSumExp",
        }
    }
    /// Every kind.
    pub const ALL: [Reduce; 10] = [
        Reduce::Mean,
        Reduce::Sum,
        Reduce::Max,
        Reduce::Min,
        Reduce::Prod,
        Reduce::L2,
        Reduce::SumSquare,
        Reduce::L1,
        Reduce::LogSum,
        Reduce::LogSumExp,
    ];
}

/// Interpolation of Resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Nearest neighbour.
    Nearest,
    /// (Multi-)linear.
    Linear,
    /// Cubic convolution.
    Cubic,
}

/// `coordinate_transformation_mode` of Resize: where output index x samples the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeCoords {
    /// (x + 0.5) / scale − 0.5.
    HalfPixel,
    /// As half_pixel, but −0.5 when the output has length 1.
    PytorchHalfPixel,
    /// x · (in − 1) / (out − 1).
    AlignCorners,
    /// x / scale (Upsample and opset-10 Resize).
    Asymmetric,
    /// (x + 0.5) / scale, for nearest only.
    TfHalfPixelForNn,
}

/// `nearest_mode` of Resize: how a fractional source position picks its neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestMode {
    /// Round, halves down.
    RoundPreferFloor,
    /// Round, halves up.
    RoundPreferCeil,
    /// Round down.
    Floor,
    /// Round up.
    Ceil,
}

/// Attributes of Resize (and of Upsample, imported as Resize).
#[derive(Clone, Debug, PartialEq)]
pub struct Resize {
    /// Interpolation.
    pub mode: ResizeMode,
    /// Coordinate transformation.
    pub coords: ResizeCoords,
    /// Neighbour choice of nearest mode.
    pub nearest: NearestMode,
    /// The `a` of cubic convolution.
    pub cubic_a: f32,
    /// Taps outside the input get weight 0 and the rest are renormalised.
    pub exclude_outside: bool,
    /// Opset 18 `axes`: the axes that scales / sizes refer to (all when absent).
    pub axes: Option<Vec<i64>>,
}

/// Typed operators. Inputs are listed in ONNX order, after the normalisation described above.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Convolution; inputs X, W, optional B.
    Conv {
        /// Window attributes.
        window: Window,
        /// Groups (channels for depthwise).
        group: usize,
    },
    /// General matrix multiply; inputs A, B, optional C.
    Gemm {
        /// Scales A·B.
        alpha: f32,
        /// Scales C.
        beta: f32,
        /// Transpose A.
        trans_a: bool,
        /// Transpose B.
        trans_b: bool,
    },
    /// Numpy-style matrix product.
    MatMul,
    /// Elementwise with broadcasting.
    Add,
    /// Elementwise with broadcasting.
    Sub,
    /// Elementwise with broadcasting.
    Mul,
    /// Elementwise with broadcasting.
    Div,
    /// max(x, 0).
    Relu,
    /// x if x ≥ 0 else alpha·x.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// Clamp; inputs X, optional min, optional max.
    Clip,
    /// Logistic function.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// Exponential.
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// Negation.
    Neg,
    /// Absolute value.
    Abs,
    /// Inference batch normalisation; inputs X, scale, B, mean, var.
    BatchNorm {
        /// Added to the variance.
        epsilon: f32,
    },
    /// Max pooling.
    MaxPool(Window),
    /// Average pooling.
    AveragePool {
        /// Window attributes.
        window: Window,
        /// Count padded zeros in the divisor.
        count_include_pad: bool,
    },
    /// Mean over all spatial dimensions, kept as size 1.
    GlobalAveragePool,
    /// Max over all spatial dimensions, kept as size 1.
    GlobalMaxPool,
    /// Reshape to 2-D at `axis`.
    Flatten {
        /// Split point.
        axis: i64,
    },
    /// Reshape; inputs X, shape.
    Reshape {
        /// A 0 in the shape means 0 rather than "copy".
        allowzero: bool,
    },
    /// Permute axes.
    Transpose {
        /// Permutation; reversed axes when absent.
        perm: Option<Vec<usize>>,
    },
    /// Join along an axis.
    Concat {
        /// Axis (negative counts from the end).
        axis: i64,
    },
    /// Softmax.
    Softmax {
        /// Axis.
        axis: i64,
        /// Opset < 13: input coerced to 2-D at `axis`.
        legacy: bool,
    },
    /// Log of softmax.
    LogSoftmax {
        /// Axis.
        axis: i64,
        /// Opset < 13: input coerced to 2-D at `axis`.
        legacy: bool,
    },
    /// Copy.
    Identity,
    /// Inference dropout (identity); inputs X, optional ratio, optional training_mode.
    Dropout,
    /// Pad; inputs X, pads, optional constant value, optional axes.
    Pad {
        /// Mode.
        mode: PadMode,
    },
    /// Remove size-1 axes; inputs X, optional axes.
    Squeeze,
    /// Insert size-1 axes; inputs X, axes.
    Unsqueeze,
    /// Shape of the input as int64, `[start, end)`.
    Shape {
        /// First axis.
        start: i64,
        /// One past the last axis.
        end: Option<i64>,
    },
    /// Gather along an axis; inputs data, indices.
    Gather {
        /// Axis.
        axis: i64,
    },
    /// Slice; inputs data, starts, ends, optional axes, optional steps.
    Slice,
    /// Tensor of a shape filled with a value; input shape.
    ConstantOfShape {
        /// The fill value.
        value: Tensor,
    },
    /// Type conversion.
    Cast {
        /// Target ONNX element type.
        to: i32,
    },
    /// RNN, GRU or LSTM (float only: their weights are not quantizable layers).
    Recurrent(Recurrent),
    /// Element-wise unary function.
    Unary(Unary),
    /// Element-wise comparison; inputs A, B.
    Compare(Compare),
    /// Min / Max / Sum / Mean of one or more inputs.
    Variadic(Variadic),
    /// Element-wise power with broadcasting; inputs X, Y.
    Pow,
    /// Element-wise remainder with broadcasting; inputs A, B.
    Mod {
        /// C `fmod` (result has the sign of the dividend; the only form for floats) rather
        /// than integer modulo with the sign of the divisor.
        fmod: bool,
    },
    /// x if x ≥ 0 else slope·x; inputs X, slope (broadcast to X).
    PRelu,
    /// Select by a boolean condition; inputs condition, X, Y (broadcast together).
    Where,
    /// Broadcast to a shape; inputs X, shape.
    Expand,
    /// Repeat along each axis; inputs X, repeats.
    Tile,
    /// 1-D sequence start, start + delta, … below limit; inputs start, limit, delta.
    Range,
    /// Split along an axis; inputs X, optional split (sizes). Older opsets' `split`
    /// attribute is normalised to the input.
    Split {
        /// Axis.
        axis: i64,
        /// Opset 18 `num_outputs`: without a split input, chunks of ceil(size / n), the
        /// last one smaller. Without either, the axis must divide evenly.
        num_outputs: Option<usize>,
    },
    /// Reduction; inputs X, optional axes (attribute forms are normalised to the input).
    Reduce {
        /// The reduction.
        kind: Reduce,
        /// Keep reduced axes with size 1.
        keepdims: bool,
        /// With no axes: identity rather than reducing every axis.
        noop_with_empty_axes: bool,
    },
    /// Index of the maximum or minimum along an axis (int64).
    ArgExtreme {
        /// ArgMax (true) or ArgMin.
        max: bool,
        /// Axis.
        axis: i64,
        /// Keep the reduced axis with size 1.
        keepdims: bool,
        /// On ties take the last index rather than the first.
        select_last_index: bool,
    },
    /// Number of elements of the input, as an int64 scalar.
    Size,
    /// Transposed convolution (1-D or 2-D); inputs X, W [C_in, C_out / group, k…], optional
    /// B. Float only: its weight is not a quantizable layer.
    ConvTranspose {
        /// Kernel (from W when empty), strides, pads, dilations, `auto_pad`.
        window: Window,
        /// Groups.
        group: usize,
        /// Extra size at the end of each spatial axis.
        output_padding: Vec<usize>,
        /// Requested spatial output shape (padding is derived from it).
        output_shape: Option<Vec<usize>>,
    },
    /// Resize; inputs X, optional roi, optional scales, optional sizes (Upsample and opset-10
    /// Resize are normalised to this form).
    Resize(Resize),
    /// Layer normalisation over axes `axis..`; inputs X, Scale, optional B.
    LayerNorm {
        /// First normalised axis.
        axis: i64,
        /// Added to the variance.
        epsilon: f32,
    },
    /// Instance normalisation over the spatial axes; inputs X, scale, B (per channel).
    InstanceNorm {
        /// Added to the variance.
        epsilon: f32,
    },
}

impl Op {
    /// ONNX operator name.
    pub fn onnx_name(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Relu => "Relu",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Clip => "Clip",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Exp => "Exp",
            Op::Log => "Log",
            Op::Sqrt => "Sqrt",
            Op::Neg => "Neg",
            Op::Abs => "Abs",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool { .. } => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::Identity => "Identity",
            Op::Dropout => "Dropout",
            Op::Pad { .. } => "Pad",
            Op::Squeeze => "Squeeze",
            Op::Unsqueeze => "Unsqueeze",
            Op::Shape { .. } => "Shape",
            Op::Gather { .. } => "Gather",
            Op::Slice => "Slice",
            Op::ConstantOfShape { .. } => "ConstantOfShape",
            Op::Cast { .. } => "Cast",
            Op::Recurrent(r) => r.kind.onnx_name(),
            Op::Unary(u) => u.onnx_name(),
            Op::Compare(c) => c.onnx_name(),
            Op::Variadic(v) => v.onnx_name(),
            Op::Pow => "Pow",
            Op::Mod { .. } => "Mod",
            Op::PRelu => "PRelu",
            Op::Where => "Where",
            Op::Expand => "Expand",
            Op::Tile => "Tile",
            Op::Range => "Range",
            Op::Split { .. } => "Split",
            Op::Reduce { kind, .. } => kind.onnx_name(),
            Op::ArgExtreme { max: true, .. } => "ArgMax",
            Op::ArgExtreme { max: false, .. } => "ArgMin",
            Op::Size => "Size",
            Op::ConvTranspose { .. } => "ConvTranspose",
            Op::Resize(_) => "Resize",
            Op::LayerNorm { .. } => "LayerNormalization",
            Op::InstanceNorm { .. } => "InstanceNormalization",
        }
    }
}

/// One operator application.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique node name (generated as `<op>_<index>` when the model leaves it empty).
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Inputs; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs.
    pub outputs: Vec<ValueId>,
}

impl Node {
    /// Input `i` if present.
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
}

/// A graph: values, topologically ordered nodes and constant initializers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// Every value.
    pub values: Vec<Value>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Runtime inputs (initializers excluded).
    pub inputs: Vec<ValueId>,
    /// Outputs.
    pub outputs: Vec<ValueId>,
    /// Constant tensors: initializers and folded Constant nodes.
    pub initializers: BTreeMap<ValueId, Tensor>,
    /// The default-domain opset the model was written for.
    pub opset: i64,
}

/// Which operator family a quantizable layer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Convolution (any groups).
    Conv,
    /// Gemm.
    Gemm,
    /// MatMul with a constant right-hand side.
    MatMul,
    /// RNN / GRU / LSTM with constant input (W) and recurrence (R) weights; both are
    /// quantized at the layer's bit-width. `Layer::weight` is W, `Layer::bias` is B.
    Recurrent,
}

/// A layer with weights: the unit mixed precision assigns bit-widths to.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Layer name (the node name).
    pub name: String,
    /// Index in [`Graph::nodes`].
    pub node: usize,
    /// Operator family.
    pub kind: LayerKind,
    /// The weight initializer.
    pub weight: ValueId,
    /// The bias initializer, if any.
    pub bias: Option<ValueId>,
}

impl Graph {
    /// Add a value and return its id.
    pub fn add_value(&mut self, name: impl Into<String>) -> ValueId {
        self.values.push(Value {
            name: name.into(),
            shape: None,
            elem_type: 1,
        });
        self.values.len() - 1
    }

    /// Find a value by name.
    pub fn value_id(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name)
    }

    /// Index of the node producing each value (`None` for inputs and initializers).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &o in &n.outputs {
                p[o] = Some(i);
            }
        }
        p
    }

    /// Number of consumers of each value (graph outputs count as one).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.values.len()];
        for n in &self.nodes {
            for v in n.inputs.iter().flatten() {
                c[*v] += 1;
            }
        }
        for &o in &self.outputs {
            c[o] += 1;
        }
        c
    }

    /// The layers with weights (Conv, Gemm, MatMul whose right operand is constant, and
    /// RNN / GRU / LSTM whose W and R are both constant), in node order.
    pub fn layers(&self) -> Vec<Layer> {
        let mut out = Vec::new();
        let is_float_const = |v: &ValueId| self.initializers.get(v).is_some_and(|t| t.is_float());
        for (i, n) in self.nodes.iter().enumerate() {
            let (kind, w, b) = match n.op {
                Op::Conv { .. } => (LayerKind::Conv, n.input(1), n.input(2)),
                Op::Gemm { .. } => (LayerKind::Gemm, n.input(1), n.input(2)),
                Op::MatMul => (LayerKind::MatMul, n.input(1), None),
                Op::Recurrent(_) => {
                    if !n.input(2).is_some_and(|r| is_float_const(&r)) {
                        continue;
                    }
                    (LayerKind::Recurrent, n.input(1), n.input(3))
                }
                _ => continue,
            };
            let Some(w) = w.filter(is_float_const) else {
                continue;
            };
            let b = b.filter(|b| self.initializers.contains_key(b));
            out.push(Layer {
                name: n.name.clone(),
                node: i,
                kind,
                weight: w,
                bias: b,
            });
        }
        out
    }

    /// Every weight of `layer` that is quantized at its bit-width: `[W]` for Conv, Gemm and
    /// MatMul; `[W, R]` (input and recurrence weights) for a recurrent layer.
    pub fn layer_weights(&self, layer: &Layer) -> Vec<ValueId> {
        let mut out = vec![layer.weight];
        if layer.kind == LayerKind::Recurrent {
            out.extend(self.nodes[layer.node].input(2));
        }
        out
    }

    /// Total number of float parameters in initializers used by nodes.
    pub fn parameter_count(&self) -> usize {
        self.initializers
            .values()
            .filter(|t| t.is_float())
            .map(|t| t.len())
            .sum()
    }
}
