//! Quantization schemes (`QScheme`): what one tensor is quantized with.
//!
//! Survey §2.4: a scheme fixes the operator (uniform Eq. 8 / non-uniform Eq. 9), the calibration
//! symmetry (Eq. 10 with `-a = b` or not), the granularity of the scale, and the rounding
//! (deterministic §2.1 or stochastic §2.2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};

/// Largest supported bit width.
pub const MAX_BITS: u8 = 16;

/// The quantization operator (one per method file under `methods/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantKind {
    /// Uniform affine quantization, Eq. 8 and 10.
    Uniform,
    /// Uniform symmetric quantization with a power-of-two threshold (HMQ, Eq. 39).
    UniformPow2,
    /// Fixed-point `[i, f]` rounding with saturation, Eq. 2 (and WAGE k-bit integers).
    FixedPoint,
    /// Sign binarization `{-1, +1}`, Eq. 1 (stochastic: Eq. 6).
    Binary,
    /// Binary with a per-block scale `alpha = mean|w|` (BWN / XNOR-Net, Eq. 5).
    ScaledBinary,
    /// Predefined ternary codebook `{-1, 0, +1}`.
    Ternary,
    /// Ternary weight networks: threshold `0.7 mean|w|`, learned scale(s).
    ScaledTernary,
    /// Powers-of-two codebook `{0, ±s·2^-k}`.
    PowerOfTwo,
    /// Scalar vector quantization by k-means, Eq. 3.
    Kmeans,
    /// Product quantization: one k-means codebook per sub-vector space.
    Product,
    /// Product quantization with error correction (codebooks refit to the layer output).
    ProductEc,
    /// Residual quantization: k-means applied recursively to residuals.
    Residual,
    /// Weighted-entropy-based multi-bit clustering.
    EntropyMultibit,
    /// Per-parameter minimum bit widths under an error bound (optimisation form of Eq. 4).
    MinBits,
}

impl QuantKind {
    /// Every kind, in registry order.
    pub const ALL: &'static [QuantKind] = &[
        QuantKind::Uniform,
        QuantKind::UniformPow2,
        QuantKind::FixedPoint,
        QuantKind::Binary,
        QuantKind::ScaledBinary,
        QuantKind::Ternary,
        QuantKind::ScaledTernary,
        QuantKind::PowerOfTwo,
        QuantKind::Kmeans,
        QuantKind::Product,
        QuantKind::ProductEc,
        QuantKind::Residual,
        QuantKind::EntropyMultibit,
        QuantKind::MinBits,
    ];

    /// Stable kebab-case name (also the registry name).
    pub fn name(self) -> &'static str {
        match self {
            QuantKind::Uniform => "uniform",
            QuantKind::UniformPow2 => "uniform-pow2",
            QuantKind::FixedPoint => "fixed-point",
            QuantKind::Binary => "binary",
            QuantKind::ScaledBinary => "scaled-binary",
            QuantKind::Ternary => "ternary",
            QuantKind::ScaledTernary => "scaled-ternary",
            QuantKind::PowerOfTwo => "power-of-two",
            QuantKind::Kmeans => "kmeans",
            QuantKind::Product => "product",
            QuantKind::ProductEc => "product-ec",
            QuantKind::Residual => "residual",
            QuantKind::EntropyMultibit => "entropy-multibit",
            QuantKind::MinBits => "min-bits",
        }
    }

    /// The only bit width the kind can use, if it has one (binary: 1, ternary: 2).
    pub fn fixed_bits(self) -> Option<u8> {
        match self {
            QuantKind::Binary | QuantKind::ScaledBinary => Some(1),
            QuantKind::Ternary | QuantKind::ScaledTernary => Some(2),
            _ => None,
        }
    }

    /// Whether the kind implements stochastic rounding (Eq. 6 / Eq. 7).
    pub fn supports_stochastic(self) -> bool {
        !matches!(
            self,
            QuantKind::Product | QuantKind::ProductEc | QuantKind::Residual | QuantKind::MinBits
        )
    }

    /// Whether the kind works on whole-tensor codebooks only (vector quantizers).
    pub fn tensor_granularity_only(self) -> bool {
        matches!(
            self,
            QuantKind::Product | QuantKind::ProductEc | QuantKind::Residual
        )
    }
}

impl fmt::Display for QuantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantKind {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.replace('_', "-");
        QuantKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == norm)
            .ok_or_else(|| QuantError::ParseScheme {
                text: s.to_string(),
                reason: format!(
                    "unknown quantizer kind; known: {}",
                    QuantKind::ALL
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

/// Which elements share one scale / zero point / codebook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One set of parameters for the whole tensor.
    #[default]
    Tensor,
    /// One set per slice along the layout's channel axis.
    Channel,
    /// One set per run of `n` consecutive elements inside each channel.
    Group(usize),
}

/// How a real value is mapped to one of its two neighbouring levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Deterministic, to the nearest level (§2.1).
    #[default]
    Nearest,
    /// Unbiased random rounding between the two neighbouring levels (§2.2, Eq. 6 and 7).
    Stochastic,
}

fn default_true() -> bool {
    true
}

/// A complete quantization scheme for one tensor (DESIGN §5).
///
/// JSON: `{"bits": 4, "kind": "uniform", "symmetric": true, "granularity": "channel",
/// "rounding": "nearest"}`; a group is `{"group": 64}`. `symmetric` defaults to true,
/// `granularity` to `tensor`, `rounding` to `nearest`.
/// Text form (Display / FromStr): `w4-uniform-sym-channel`, `w3-kmeans-asym-g64-sr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QScheme {
    /// Bit width per code, 1..=16.
    pub bits: u8,
    /// The quantization operator.
    pub kind: QuantKind,
    /// Symmetric (`-a = b`) or asymmetric clip range (Eq. 10). Other uses: scaled-ternary
    /// asymmetric = two scales (TTQ); uniform-pow2 asymmetric = unsigned grid; fixed-point
    /// asymmetric = two's-complement range. Ignored by the codebook kinds (binary, ternary,
    /// power-of-two, k-means, product, residual, entropy, min-bits).
    #[serde(default = "default_true")]
    pub symmetric: bool,
    /// Parameter sharing.
    #[serde(default)]
    pub granularity: Granularity,
    /// Deterministic or stochastic rounding.
    #[serde(default)]
    pub rounding: Rounding,
}

impl QScheme {
    /// A scheme with nearest rounding; call [`QScheme::validate`] before use.
    pub fn new(kind: QuantKind, bits: u8, symmetric: bool, granularity: Granularity) -> Self {
        QScheme {
            bits,
            kind,
            symmetric,
            granularity,
            rounding: Rounding::Nearest,
        }
    }

    /// The same scheme with another rounding mode.
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// Checks bit width, fixed-width kinds, group size and supported combinations.
    pub fn validate(&self) -> Result<()> {
        let kind = self.kind.name().to_string();
        let bad = |reason: String| QuantError::BadBits {
            bits: self.bits,
            kind: kind.clone(),
            reason,
        };
        if self.bits == 0 || self.bits > MAX_BITS {
            return Err(bad(format!("bit widths must lie in 1..={MAX_BITS}")));
        }
        if let Some(fixed) = self.kind.fixed_bits() {
            if self.bits != fixed {
                return Err(bad(format!("{kind} always uses {fixed} bit(s)")));
            }
        }
        let sym_uniform = matches!(self.kind, QuantKind::Uniform) && self.symmetric;
        let needs_two = matches!(
            self.kind,
            QuantKind::UniformPow2 | QuantKind::MinBits | QuantKind::FixedPoint
        );
        if (sym_uniform || needs_two) && self.bits < 2 {
            return Err(bad(
                "signed grids with a zero level need at least 2 bits; use scaled-binary for 1 bit"
                    .into(),
            ));
        }
        if self.granularity == Granularity::Group(0) {
            return Err(QuantError::GroupSize { group: 0, len: 0 });
        }
        if self.rounding == Rounding::Stochastic && !self.kind.supports_stochastic() {
            return Err(QuantError::Unsupported {
                kind,
                what: "stochastic rounding (use rounding \"nearest\")".into(),
            });
        }
        if self.kind.tensor_granularity_only() && self.granularity != Granularity::Tensor {
            return Err(QuantError::Unsupported {
                kind,
                what: format!(
                    "granularity {:?}; vector quantizers share codebooks over the whole tensor (use \"tensor\")",
                    self.granularity
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Display for QScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "w{}-{}-{}-",
            self.bits,
            self.kind.name(),
            if self.symmetric { "sym" } else { "asym" }
        )?;
        match self.granularity {
            Granularity::Tensor => f.write_str("tensor")?,
            Granularity::Channel => f.write_str("channel")?,
            Granularity::Group(n) => write!(f, "g{n}")?,
        }
        if self.rounding == Rounding::Stochastic {
            f.write_str("-sr")?;
        }
        Ok(())
    }
}

impl FromStr for QScheme {
    type Err = QuantError;

    /// Parses the Display form, e.g. `w4-uniform-sym-channel` or `w2-ternary-sym-tensor-sr`.
    /// The result is validated.
    fn from_str(s: &str) -> Result<Self> {
        let err = |reason: &str| QuantError::ParseScheme {
            text: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s.strip_prefix('w').ok_or_else(|| {
            err("expected 'w<bits>-<kind>-<sym|asym>-<tensor|channel|g<n>>[-sr]'")
        })?;
        let mut parts: Vec<&str> = rest.split('-').collect();
        let rounding = if parts.last() == Some(&"sr") {
            parts.pop();
            Rounding::Stochastic
        } else {
            Rounding::Nearest
        };
        if parts.len() < 4 {
            return Err(err(
                "expected 'w<bits>-<kind>-<sym|asym>-<tensor|channel|g<n>>[-sr]'",
            ));
        }
        let bits: u8 = parts[0]
            .parse()
            .map_err(|_| err("bit width must be an integer"))?;
        let granularity = match parts.pop().unwrap_or_default() {
            "tensor" => Granularity::Tensor,
            "channel" => Granularity::Channel,
            g => Granularity::Group(
                g.strip_prefix('g')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| err("granularity must be tensor, channel or g<n>"))?,
            ),
        };
        let symmetric = match parts.pop().unwrap_or_default() {
            "sym" => true,
            "asym" => false,
            _ => return Err(err("symmetry must be 'sym' or 'asym'")),
        };
        let kind: QuantKind = parts[1..].join("-").parse()?;
        let scheme = QScheme {
            bits,
            kind,
            symmetric,
            granularity,
            rounding,
        };
        scheme.validate()?;
        Ok(scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let s = QScheme::new(QuantKind::Uniform, 4, true, Granularity::Channel);
        assert_eq!(s.to_string(), "w4-uniform-sym-channel");
        let p = QScheme::new(QuantKind::PowerOfTwo, 3, false, Granularity::Group(64))
            .with_rounding(Rounding::Stochastic);
        assert_eq!(p.to_string(), "w3-power-of-two-asym-g64-sr");
        for s in [s, p] {
            assert_eq!(s.to_string().parse::<QScheme>().unwrap(), s);
        }
    }

    #[test]
    fn json_is_snake_case_with_defaults() {
        let s: QScheme = serde_json::from_str(r#"{"bits": 3, "kind": "scaled_ternary"}"#).unwrap();
        assert_eq!(s.kind, QuantKind::ScaledTernary);
        assert!(s.symmetric);
        let g = QScheme::new(QuantKind::Kmeans, 3, false, Granularity::Group(8));
        let text = serde_json::to_string(&g).unwrap();
        assert!(text.contains(r#""granularity":{"group":8}"#), "{text}");
        assert_eq!(serde_json::from_str::<QScheme>(&text).unwrap(), g);
        assert!(
            serde_json::from_str::<QScheme>(r#"{"bits":4,"kind":"uniform","bogus":1}"#).is_err()
        );
    }

    #[test]
    fn validation_rejects_bad_combinations() {
        let mut s = QScheme::new(QuantKind::Binary, 2, true, Granularity::Tensor);
        assert!(matches!(s.validate(), Err(QuantError::BadBits { .. })));
        s.bits = 1;
        s.validate().unwrap();
        let p = QScheme::new(QuantKind::Product, 4, true, Granularity::Channel);
        assert!(matches!(p.validate(), Err(QuantError::Unsupported { .. })));
        let r = QScheme::new(QuantKind::Residual, 4, true, Granularity::Tensor)
            .with_rounding(Rounding::Stochastic);
        assert!(matches!(r.validate(), Err(QuantError::Unsupported { .. })));
    }
}
