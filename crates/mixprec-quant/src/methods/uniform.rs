//! Uniform affine quantization.
//!
//! Survey §2.4, Eq. 8 (`Q(r) = Int(r/S) - Z`) and Eq. 10 (`S = (b - a) / (2^bw - 1)`); the
//! symmetric / asymmetric calibration of §2.4; references \[53\] (Gholami et al. 2021) and \[81\].
//! mixprec writes the zero point with the opposite sign, as ONNX and TFLite do:
//! `q = clamp(round(r / S) + Z, qmin, qmax)`, `r̂ = S (q - Z)`, `round` = ties to even (or
//! stochastic, Eq. 7).
//!
//! * asymmetric: `[a, b] = [min(x, 0), max(x, 0)]`, `q ∈ [0, 2^bw - 1]`, `S` by Eq. 10,
//!   `Z = round(-a / S)` so that 0 is exact;
//! * symmetric: `-a = b = max|x|`, restricted signed range `q ∈ [-(2^(bw-1) - 1), 2^(bw-1) - 1]`,
//!   `Z = 0`, `S = b / (2^(bw-1) - 1)` (Eq. 10 over `2^bw - 2` steps; needs `bw >= 2`).
//!
//! Complexity O(n). Storage: `bw` bits per element, 32 bits per scale and per zero point.

use serde::{Deserialize, Serialize};

use super::{check_scheme, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::layout::{check_finite, Blocks, TensorLayout};
use crate::rounding::{round_scaled, QuantRng};
use crate::scheme::{Granularity, QScheme, QuantKind, Rounding};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "uniform",
    kind: QuantKind::Uniform,
    summary: "uniform affine quantization, symmetric or asymmetric, per tensor/channel/group",
    reference: "survey §2.4 Eq. 8, 10; Gholami et al. 2021 [53]",
    build,
};

/// Configuration (none needed; kept for a uniform JSON shape).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniformConfig {}

/// Scale and zero point per block of a uniform scheme, for building fake-quant (STE) ops and
/// integer kernels. Block `b` of [`Granularity::Channel`] is channel `b`; under
/// [`Granularity::Group`] block `c * (channel_len / g) + j` is group `j` of channel `c`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UniformParams {
    /// Step size per block.
    pub scale: Vec<f32>,
    /// Integer zero point per block (0 for symmetric schemes).
    pub zero_point: Vec<i32>,
    /// Smallest integer code.
    pub qmin: i32,
    /// Largest integer code.
    pub qmax: i32,
    /// The channel axis for per-channel / per-group parameters, `None` per tensor.
    pub axis: Option<usize>,
    /// The group size for per-group parameters.
    pub group_size: Option<usize>,
}

/// Integer code range of a uniform grid: `(qmin, qmax)`.
/// Symmetric: restricted signed `[-(2^(b-1)-1), 2^(b-1)-1]`; asymmetric: `[0, 2^b - 1]`.
pub fn code_range(bits: u8, symmetric: bool) -> (i32, i32) {
    if symmetric {
        let m = (1i32 << (bits - 1)) - 1;
        (-m, m)
    } else {
        (0, (1i32 << bits) - 1)
    }
}

fn check_bits(bits: u8, symmetric: bool) -> Result<()> {
    QScheme::new(QuantKind::Uniform, bits, symmetric, Granularity::Tensor).validate()
}

/// Scale and zero point of one block with observed range `[lo, hi]`.
pub(crate) fn block_params(lo: f32, hi: f32, qmin: i32, qmax: i32, symmetric: bool) -> (f32, i32) {
    if symmetric {
        let m = lo.abs().max(hi.abs());
        let s = m / qmax as f32;
        (if s > 0.0 { s } else { 1.0 }, 0)
    } else {
        let (a, b) = (lo.min(0.0), hi.max(0.0));
        let s = (b - a) / (qmax - qmin) as f32;
        let s = if s > 0.0 { s } else { 1.0 };
        let z = (qmin as f32 - a / s).round_ties_even() as i32;
        (s, z.clamp(qmin, qmax))
    }
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

impl UniformParams {
    /// Per-tensor parameters from an observed clip range `[min, max]` (e.g. an observer's).
    pub fn from_range(min: f32, max: f32, bits: u8, symmetric: bool) -> Result<Self> {
        Self::from_ranges(&[(min, max)], bits, symmetric, None)
    }

    /// Parameters from one clip range per block (`axis` = channel axis when per channel).
    pub fn from_ranges(
        ranges: &[(f32, f32)],
        bits: u8,
        symmetric: bool,
        axis: Option<usize>,
    ) -> Result<Self> {
        check_bits(bits, symmetric)?;
        if ranges.is_empty() {
            return Err(QuantError::EmptyTensor {
                what: "clip ranges".into(),
            });
        }
        let (qmin, qmax) = code_range(bits, symmetric);
        let mut scale = Vec::with_capacity(ranges.len());
        let mut zero_point = Vec::with_capacity(ranges.len());
        for (i, &(lo, hi)) in ranges.iter().enumerate() {
            if !lo.is_finite() || !hi.is_finite() || lo > hi {
                return Err(QuantError::InvalidArgument(format!(
                    "clip range {i} = [{lo}, {hi}] must be finite with min <= max"
                )));
            }
            let (s, z) = block_params(lo, hi, qmin, qmax, symmetric);
            scale.push(s);
            zero_point.push(z);
        }
        Ok(UniformParams {
            scale,
            zero_point,
            qmin,
            qmax,
            axis,
            group_size: None,
        })
    }

    /// Parameters of a `uniform` (or `uniform-pow2`) scheme computed from the values
    /// (min / max per block).
    pub fn from_values(values: &[f32], layout: &TensorLayout, scheme: &QScheme) -> Result<Self> {
        layout.check(values)?;
        scheme.validate()?;
        let pow2 = match scheme.kind {
            QuantKind::Uniform => false,
            QuantKind::UniformPow2 => true,
            other => {
                return Err(QuantError::Unsupported {
                    kind: other.name().into(),
                    what: "uniform parameters (only uniform and uniform-pow2 have them)".into(),
                })
            }
        };
        let blocks = Blocks::new(layout, scheme.granularity)?;
        let mut buf = Vec::new();
        let ranges: Vec<(f32, f32)> = (0..blocks.count)
            .map(|b| {
                blocks.gather(values, b, &mut buf);
                min_max(&buf)
            })
            .collect();
        let mut p = if pow2 {
            super::uniform_pow2::params_from_ranges(&ranges, scheme.bits, scheme.symmetric)
        } else {
            Self::from_ranges(&ranges, scheme.bits, scheme.symmetric, None)?
        };
        let (axis, group) = match scheme.granularity {
            Granularity::Tensor => (None, None),
            Granularity::Channel => (Some(layout.channel_axis), None),
            Granularity::Group(n) => (Some(layout.channel_axis), Some(n)),
        };
        p.axis = axis;
        p.group_size = group;
        Ok(p)
    }

    /// Integer code of `x` in block `block` (nearest rounding).
    pub fn quantize_value(&self, x: f32, block: usize) -> i32 {
        let q = (x / self.scale[block]).round_ties_even() as i64 + self.zero_point[block] as i64;
        q.clamp(self.qmin as i64, self.qmax as i64) as i32
    }

    /// Real value of code `q` in block `block`.
    pub fn dequantize_value(&self, q: i32, block: usize) -> f32 {
        (q - self.zero_point[block]) as f32 * self.scale[block]
    }

    /// Fake-quantizes a tensor with these parameters (the layout must match the one they were
    /// computed for).
    pub fn fake_quantize(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rounding: Rounding,
        rng: &mut QuantRng,
    ) -> Result<Vec<f32>> {
        layout.check(values)?;
        let granularity = match (self.axis, self.group_size) {
            (None, _) => Granularity::Tensor,
            (Some(_), None) => Granularity::Channel,
            (Some(_), Some(n)) => Granularity::Group(n),
        };
        let blocks = Blocks::new(layout, granularity)?;
        if blocks.count != self.scale.len() || blocks.count != self.zero_point.len() {
            return Err(QuantError::InvalidArgument(format!(
                "uniform parameters hold {} scales but the layout {:?} has {} blocks",
                self.scale.len(),
                layout.shape,
                blocks.count
            )));
        }
        blocks.map(values, |b, block, out| {
            let (s, z) = (self.scale[b], self.zero_point[b] as f32);
            let (lo, hi) = (self.qmin as f32, self.qmax as f32);
            for (o, &x) in out.iter_mut().zip(block) {
                let q = (round_scaled(x / s, rounding, rng) + z).clamp(lo, hi);
                *o = (q - z) * s;
            }
            Ok(())
        })
    }
}

/// The uniform affine quantizer.
#[derive(Debug, Clone)]
pub struct Uniform {
    scheme: QScheme,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::Uniform)?;
    let _: UniformConfig = parse_config(ENTRY.name, config)?;
    Ok(Box::new(Uniform { scheme }))
}

/// Quantizes with uniform parameters and charges `meta_bits` per block.
pub(crate) fn quantize_uniform(
    values: &[f32],
    layout: &TensorLayout,
    scheme: &QScheme,
    rng: &mut QuantRng,
    meta_bits: u64,
) -> Result<QuantizedTensor> {
    check_finite(values, "values")?;
    let params = UniformParams::from_values(values, layout, scheme)?;
    let out = params.fake_quantize(values, layout, scheme.rounding, rng)?;
    let code_bits = scheme.bits as u64 * values.len() as u64;
    let blocks = params.scale.len() as u64;
    Ok(QuantizedTensor {
        values: out,
        scheme: *scheme,
        total_bits: code_bits + blocks * meta_bits,
        code_bits,
        scales: params.scale,
        zero_points: params.zero_point,
        codebooks: Vec::new(),
    })
}

impl Quantizer for Uniform {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let meta = if self.scheme.symmetric {
            FLOAT_PARAM_BITS
        } else {
            2 * FLOAT_PARAM_BITS
        };
        quantize_uniform(values, layout, &self.scheme, rng, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(bits: u8, symmetric: bool) -> QScheme {
        QScheme::new(QuantKind::Uniform, bits, symmetric, Granularity::Tensor)
    }

    #[test]
    fn two_bit_symmetric_by_hand() {
        // max|x| = 1, qmax = 2^(2-1) - 1 = 1, S = 1: levels {-1, 0, 1};
        // 0.2 -> 0, 0.5 -> 0 (tie to even), 1 -> 1.
        let x = [-1.0, 0.2, 0.5, 1.0];
        let q = Uniform {
            scheme: scheme(2, true),
        }
        .quantize(&x, &TensorLayout::flat(4), 0)
        .unwrap();
        assert_eq!(q.values, vec![-1.0, 0.0, 0.0, 1.0]);
        assert_eq!(q.scales, vec![1.0]);
        assert_eq!(q.total_bits, 4 * 2 + 32);
    }

    #[test]
    fn two_bit_asymmetric_by_hand() {
        // [a, b] = [0, 3]: S = 3/3 = 1, Z = 0, levels {0, 1, 2, 3}.
        let x = [0.0, 0.4, 1.6, 3.0, 2.5];
        let q = Uniform {
            scheme: scheme(2, false),
        }
        .quantize(&x, &TensorLayout::flat(5), 0)
        .unwrap();
        assert_eq!(q.values, vec![0.0, 0.0, 2.0, 3.0, 2.0]);
        // [a, b] = [-1, 2]: S = 1, Z = 1: codes 0..3 mean -1, 0, 1, 2.
        let y = [-1.0, -0.4, 0.6, 2.0];
        let p = UniformParams::from_range(-1.0, 2.0, 2, false).unwrap();
        assert_eq!(
            (p.scale[0], p.zero_point[0], p.qmin, p.qmax),
            (1.0, 1, 0, 3)
        );
        let q = Uniform {
            scheme: scheme(2, false),
        }
        .quantize(&y, &TensorLayout::flat(4), 0)
        .unwrap();
        assert_eq!(q.values, vec![-1.0, 0.0, 1.0, 2.0]);
    }

    #[test]
    fn per_channel_scales_follow_each_channel() {
        // Two channels of a [2, 3] weight: max 1 and max 4, 3-bit symmetric: qmax = 3.
        let x = [1.0, -0.5, 0.2, 4.0, -4.0, 2.0];
        let s = QScheme::new(QuantKind::Uniform, 3, true, Granularity::Channel);
        let p = UniformParams::from_values(&x, &TensorLayout::weight(&[2, 3]), &s).unwrap();
        assert_eq!(p.scale, vec![1.0 / 3.0, 4.0 / 3.0]);
        assert_eq!(p.axis, Some(0));
        assert_eq!(p.quantize_value(-0.5, 0), -2); // -1.5 ties to even
        assert_eq!(p.dequantize_value(3, 1), 4.0);
    }
}
