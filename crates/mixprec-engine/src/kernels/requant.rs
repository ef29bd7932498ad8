//! Dyadic requantization of `i32` accumulators.
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021), Eq. 24: `q_o = INT(S_W·S_a/S_o · acc)`. The real
//! multiplier `M = S_W·S_a/S_o` is replaced by a dyadic number `m / 2^s` with `m` a positive
//! 31-bit integer, so requantization is one `i64` multiply, one rounding shift, an add of the
//! output zero point and a clamp — no floating point and no division at inference time.
//!
//! Rounding: **round half away from zero** (`2.5 → 3`, `-2.5 → -3`), computed as
//! `sign(p) · ((|p| + 2^(s-1)) >> s)` with `p = acc · m` in `i64` (`|p| < 2^62`, no overflow).
//! With `m` normalised to `[2^30, 2^31)` the relative error of `m/2^s` against `M` is below
//! `2^-31`, so results differ from the exact real rounding by at most one step (and only when
//! `acc·M` lies within `|acc|·M·2^-31` of a rounding tie). Complexity `O(1)` per element.

use super::gemm::Activation;
use super::{check_len, KernelError, Result};

/// Largest shift a [`Dyadic`] may use (keeps `acc·m` and the rounding term inside `i64`).
pub const MAX_SHIFT: u32 = 62;

/// A dyadic multiplier `m / 2^s` (`m > 0`, `s ≤ 62`). Serialized as `{"m": .., "s": ..}` and
/// checked again when deserialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "DyadicParts", into = "DyadicParts")]
pub struct Dyadic {
    m: i32,
    s: u32,
}

/// Serialized form of a [`Dyadic`].
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DyadicParts {
    m: i32,
    s: u32,
}

impl TryFrom<DyadicParts> for Dyadic {
    type Error = KernelError;
    fn try_from(p: DyadicParts) -> Result<Self> {
        Dyadic::new(p.m, p.s)
    }
}

impl From<Dyadic> for DyadicParts {
    fn from(d: Dyadic) -> Self {
        DyadicParts { m: d.m, s: d.s }
    }
}

/// `round_half_away_from_zero(p / 2^s)` for `s ≤ 62` and `|p| < 2^62` (the rounding of
/// [`Dyadic::apply`], shared by the engine's multi-operand rescaling).
#[inline]
pub fn rounding_shift(p: i64, s: u32) -> i64 {
    if s == 0 {
        return p;
    }
    // Branch-free: round |p| half up, then restore the sign (`sign` is 0 or -1).
    let half = 1i64 << (s - 1);
    let sign = p >> 63;
    let mag = ((p ^ sign) - sign + half) >> s;
    (mag ^ sign) - sign
}

impl Dyadic {
    /// Builds `m / 2^s` from its parts; `m` must be positive and `s ≤ 62`.
    pub fn new(m: i32, s: u32) -> Result<Self> {
        if m <= 0 || s > MAX_SHIFT {
            return Err(KernelError::InvalidMultiplier {
                value: m as f64 / 2f64.powi(s as i32),
                reason: "dyadic parts need m > 0 and shift s <= 62",
            });
        }
        Ok(Self { m, s })
    }

    /// The closest dyadic number to a real multiplier `M > 0`: `m = round(M·2^s)` with `m` in
    /// `[2^30, 2^31)` whenever `s ≤ 62` allows it (so `M` in `[2^-32, 2^31)` keeps full 31-bit
    /// precision; smaller `M` down to `2^-63` keep fewer bits). Fails for `M ≥ 2^31 - 0.5`,
    /// `M < 2^-63`, zero, negative or non-finite `M`.
    pub fn from_real(multiplier: f64) -> Result<Self> {
        let bad = |reason| KernelError::InvalidMultiplier {
            value: multiplier,
            reason,
        };
        if !multiplier.is_finite() || multiplier <= 0.0 {
            return Err(bad("must be finite and > 0"));
        }
        const LO: f64 = (1u64 << 30) as f64;
        const HI: f64 = (1u64 << 31) as f64;
        // Scaling by powers of two is exact in f64 over this range.
        let mut s: i32 = 0;
        let mut scaled = multiplier;
        while scaled >= HI {
            scaled /= 2.0;
            s -= 1;
        }
        while scaled < LO && s < MAX_SHIFT as i32 {
            scaled *= 2.0;
            s += 1;
        }
        let mut m = scaled.round();
        if m >= HI {
            m = (scaled / 2.0).round();
            s -= 1;
        }
        if s < 0 {
            return Err(bad(
                "must be below 2^31 (the multiplier must fit a 31-bit integer)",
            ));
        }
        if m < 1.0 {
            return Err(bad("must be at least 2^-63"));
        }
        Ok(Self {
            m: m as i32,
            s: s as u32,
        })
    }

    /// The integer multiplier `m`.
    pub fn multiplier(self) -> i32 {
        self.m
    }

    /// The right shift `s`.
    pub fn shift(self) -> u32 {
        self.s
    }

    /// The real value `m / 2^s`.
    pub fn to_f64(self) -> f64 {
        self.m as f64 / 2f64.powi(self.s as i32)
    }

    /// `round_half_away_from_zero(acc · m / 2^s)`, exact integer arithmetic.
    #[inline]
    pub fn apply(self, acc: i32) -> i64 {
        rounding_shift(acc as i64 * self.m as i64, self.s)
    }

    /// Eq. 24 with saturation: `clamp(apply(acc) + zero_point, qmin, qmax)`.
    #[inline]
    pub fn requant(self, acc: i32, range: OutputRange) -> i32 {
        (self.apply(acc) + range.zero_point as i64).clamp(range.qmin as i64, range.qmax as i64)
            as i32
    }

    /// Requantizes to `u8` (`[0, 255]`, saturating).
    #[inline]
    pub fn requant_u8(self, acc: i32, zero_point: i32) -> u8 {
        (self.apply(acc) + zero_point as i64).clamp(0, 255) as u8
    }

    /// Requantizes to `i8` (`[-128, 127]`, saturating).
    #[inline]
    pub fn requant_i8(self, acc: i32, zero_point: i32) -> i8 {
        (self.apply(acc) + zero_point as i64).clamp(-128, 127) as i8
    }
}

/// Output zero point and clamp range of a requantization (the clamp also implements a fused
/// ReLU/ReLU6 and activation widths below 8 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRange {
    /// Output zero point.
    pub zero_point: i32,
    /// Smallest output value.
    pub qmin: i32,
    /// Largest output value.
    pub qmax: i32,
}

impl OutputRange {
    /// Full `u8` range with a zero point.
    pub fn u8(zero_point: i32) -> Self {
        Self::unsigned(8, zero_point)
    }

    /// Full `i8` range with a zero point.
    pub fn i8(zero_point: i32) -> Self {
        Self::signed(8, zero_point)
    }

    /// `[0, 2^bits - 1]`.
    pub fn unsigned(bits: u32, zero_point: i32) -> Self {
        Self {
            zero_point,
            qmin: 0,
            qmax: (1i32 << bits) - 1,
        }
    }

    /// `[-2^(bits-1), 2^(bits-1) - 1]`.
    pub fn signed(bits: u32, zero_point: i32) -> Self {
        let (qmin, qmax) = super::signed_range(bits);
        Self {
            zero_point,
            qmin,
            qmax,
        }
    }

    /// The same range with a fused ReLU (nothing below the zero point).
    pub fn relu(self) -> Self {
        Self {
            qmin: self.qmin.max(self.zero_point),
            ..self
        }
    }
}

/// Requantizes a block of accumulators laid out `[outer, channels, inner]` (a GEMM output
/// `[M, N]` is `[M, N, 1]`; an NCHW conv output is `[N, C, H·W]`): for channel `c`,
/// `out = clamp(apply_c(acc + bias[c]) + zp, qmin, qmax)` where `apply_c` uses `multipliers[c]`
/// (or `multipliers[0]` for all channels when one is given). `acc + bias` saturates in `i32`.
pub fn requantize<T: Activation>(
    acc: &[i32],
    shape: [usize; 3],
    bias: Option<&[i32]>,
    multipliers: &[Dyadic],
    range: OutputRange,
) -> Result<Vec<T>> {
    check_args::<T>(acc.len(), shape, bias, multipliers, range)?;
    let [_, channels, inner] = shape;
    let mut out = Vec::with_capacity(acc.len());
    if acc.is_empty() {
        return Ok(out);
    }
    for block in acc.chunks_exact(channels * inner) {
        for (c, row) in block.chunks_exact(inner).enumerate() {
            let d = multipliers[if multipliers.len() == 1 { 0 } else { c }];
            let b = bias.map_or(0, |b| b[c]);
            out.extend(
                row.iter()
                    .map(|&x| T::from_i32_unchecked(d.requant(x.saturating_add(b), range))),
            );
        }
    }
    Ok(out)
}

/// Checks the arguments of [`requantize`] (`len` accumulators of `shape`).
pub(crate) fn check_args<T: Activation>(
    len: usize,
    shape: [usize; 3],
    bias: Option<&[i32]>,
    multipliers: &[Dyadic],
    range: OutputRange,
) -> Result<()> {
    let [outer, channels, inner] = shape;
    check_len("requantize accumulators", outer * channels * inner, len)?;
    if let Some(b) = bias {
        check_len("requantize bias", channels, b.len())?;
    }
    if multipliers.len() != 1 {
        check_len("requantize multipliers", channels, multipliers.len())?;
    }
    if range.qmin > range.qmax || range.qmin < T::MIN || range.qmax > T::MAX {
        return Err(KernelError::ZeroPointOutOfRange {
            what: format!(
                "requantize output range [{}, {}] (must be inside [{}, {}])",
                range.qmin,
                range.qmax,
                T::MIN,
                T::MAX
            ),
            zero_point: range.zero_point,
            min: T::MIN,
            max: T::MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_real_hand_checked() {
        let d = Dyadic::from_real(0.5).unwrap();
        assert_eq!((d.multiplier(), d.shift()), (1 << 30, 31));
        let d = Dyadic::from_real(1.0).unwrap();
        assert_eq!((d.multiplier(), d.shift()), (1 << 30, 30));
        let d = Dyadic::from_real(0.75).unwrap();
        assert_eq!((d.multiplier(), d.shift()), (3 << 29, 31));
        // 1/3 = 0x5555_5555 / 2^32 after rounding 0x5555_5555.55…
        let d = Dyadic::from_real(1.0 / 3.0).unwrap();
        assert_eq!((d.multiplier(), d.shift()), (0x5555_5555, 32));
        // Rounds up to 2^31 and must renormalise.
        let d = Dyadic::from_real(1.0 - 1e-12).unwrap();
        assert_eq!((d.multiplier(), d.shift()), (1 << 30, 30));
        let d = Dyadic::from_real(1000.0).unwrap();
        assert_eq!(d.to_f64(), 1000.0);
        assert!(Dyadic::from_real(0.0).is_err());
        assert!(Dyadic::from_real(-1.0).is_err());
        assert!(Dyadic::from_real(f64::NAN).is_err());
        assert!(Dyadic::from_real(3e9).is_err());
        assert!(Dyadic::from_real(1e-30).is_err());
        // Tiny multipliers keep fewer bits but stay exact powers of two here.
        let d = Dyadic::from_real(2f64.powi(-40)).unwrap();
        assert_eq!((d.multiplier(), d.shift()), (1 << 22, 62));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let half = Dyadic::new(1, 1).unwrap(); // 0.5
        assert_eq!(half.apply(5), 3); // 2.5 -> 3
        assert_eq!(half.apply(-5), -3); // -2.5 -> -3
        assert_eq!(half.apply(3), 2); // 1.5 -> 2
        assert_eq!(half.apply(-3), -2);
        assert_eq!(half.apply(4), 2);
        let q = Dyadic::new(1, 2).unwrap(); // 0.25
        assert_eq!(q.apply(5), 1); // 1.25
        assert_eq!(q.apply(7), 2); // 1.75
        assert_eq!(q.apply(-7), -2);
        assert_eq!(q.apply(-6), -2); // -1.5
        assert_eq!(Dyadic::new(3, 0).unwrap().apply(-7), -21);
    }

    #[test]
    fn requant_saturates() {
        let d = Dyadic::from_real(0.1).unwrap();
        assert_eq!(d.requant_u8(1000, 10), 110);
        assert_eq!(d.requant_u8(100_000, 10), 255);
        assert_eq!(d.requant_u8(-1000, 10), 0);
        assert_eq!(d.requant_i8(-1000, 3), -97);
        assert_eq!(d.requant_i8(i32::MIN, 0), -128);
        assert_eq!(d.requant_i8(i32::MAX, 0), 127);
        assert_eq!(d.requant(-50, OutputRange::u8(7).relu()), 7);
        assert_eq!(d.requant(1000, OutputRange::unsigned(4, 0)), 15);
    }

    #[test]
    fn requantize_block_per_channel() {
        let acc = [10, 20, 30, 40, -10, -20];
        let mult = [
            Dyadic::from_real(0.5).unwrap(),
            Dyadic::from_real(0.25).unwrap(),
        ];
        // [outer=1, channels=2, inner=3]
        let out: Vec<u8> =
            requantize(&acc, [1, 2, 3], Some(&[2, -2]), &mult, OutputRange::u8(100)).unwrap();
        // ch0: (12,22,32)*0.5 = 6,11,16 ; ch1: (38,-12,-22)*0.25 = 9.5->10, -3, -5.5->-6
        assert_eq!(out, vec![106, 111, 116, 110, 97, 94]);
        assert!(requantize::<u8>(&acc, [1, 2, 2], None, &mult, OutputRange::u8(0)).is_err());
        assert!(requantize::<u8>(&acc, [1, 2, 3], None, &mult, OutputRange::i8(0)).is_err());
    }
}
