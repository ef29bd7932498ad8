//! Integer kernels of the integer-only engine.
//!
//! Survey §3.3 (HAWQ-V3: Dyadic Neural Network Quantization, Yao et al., ICML 2021), Eq. 24
//! (`q_o = INT(S_W·S_a/S_o · (q_W * q_a))` with the real scale replaced by a dyadic number
//! `m / 2^s`) and Eq. 25 (batch norm folded into the convolution, so only integer GEMM/conv plus
//! dyadic requantization remain at inference time).
//!
//! Contents:
//! - [`pack`]: dense packing of symmetric signed 2–8 bit weights (LSB-first bit stream) and
//!   HAWQ-V3's "eight 4-bit values per `i32`" layout.
//! - [`requant`]: dyadic multipliers ([`Dyadic`]) and saturating integer-only requantization.
//! - [`gemm`](mod@gemm): `C[M,N] (i32) = (A - a_zp)·Bᵀ` for 8-bit activations (`u8` or `i8`) and 8-bit
//!   ([`PackedI8`]) or 4-bit ([`PackedI4`]) weights, generic, AVX2 and AVX-512 VNNI (selected
//!   at run time); [`gemm_requantize`] adds the Eq. 24 requantization to 8-bit codes, fused into
//!   the AVX-512 VNNI kernel's output path.
//! - [`conv`]: 2-D convolution through im2col + GEMM, and a direct depthwise kernel.
//! - `avx512_fused` (crate-internal): the fast executor's implicit-GEMM `vpdpbusd` kernel with
//!   the dyadic requantization in its epilogue, and the vector residual Add
//!   (see [`crate::fast`]).
//!
//! Exactness: int8 weights are sign-extended to `i16` and multiplied with `vpmaddwd`
//! (`_mm256_madd_epi16`) against `i16` activations minus zero point — never `vpmaddubsw`, whose
//! `i16` pair sums saturate for full-range `u8·i8`. int4 weights use `vpmaddubsw` only because
//! their offset nibbles (`w + 8 ≤ 15`) keep every pair sum far below saturation (see [`mod@gemm`]).
//! The AVX-512 VNNI int8 kernel uses `vpdpbusd` (`u8 × i8`, four products summed into an `i32`
//! lane without saturation) on the unsigned activations and subtracts `a_zp·rowsum(W)` after.
//! The `i32` accumulator is exact as long as `K ≤` [`MAX_K`] (larger `K` is rejected). The AVX2,
//! AVX-512 VNNI and generic kernels are bit-identical (property-tested).
//!
//! Complexity: GEMM `O(M·N·K)`; im2col conv `O(N·Cout·Ho·Wo·Cin/g·kh·kw)` time and
//! `O(Ho·Wo·Cin/g·kh·kw)` extra memory per image and group; depthwise `O(N·Cout·Ho·Wo·kh·kw)`.

pub mod conv;
pub mod gemm;
pub mod pack;
pub mod requant;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_fused;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use conv::{conv2d, conv2d_with, Conv2dParams, ConvOutput, ConvWeights};
pub use gemm::{
    gemm, gemm_requantize, gemm_requantize_with, gemm_with, gemv, Activation, PackedI4, PackedI8,
    PackedWeights,
};
pub use pack::{pack_bits, pack_int4_x8_i32, unpack_bits, unpack_int4_x8_i32, PackedBits};
pub use requant::{requantize, rounding_shift, Dyadic, OutputRange};

/// Largest reduction length `K` whose `i32` accumulation is exact for every 8-bit input:
/// `|a - a_zp| ≤ 255`, `|w| ≤ 128`, so `K · 255 · 128 ≤ i32::MAX`.
pub const MAX_K: usize = (i32::MAX as usize) / (255 * 128);

/// Errors of the integer kernels. Each message names the offending argument.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A buffer's length does not match the shape it was given with.
    #[error("{what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: String,
        /// Element count implied by the shape.
        expected: usize,
        /// Element count actually passed.
        got: usize,
    },
    /// A bit width outside the supported range.
    #[error("unsupported bit width {bits} for {what}: supported {supported}")]
    UnsupportedBits {
        /// Which argument.
        what: String,
        /// The bit width asked for.
        bits: u32,
        /// Human-readable list of supported widths.
        supported: &'static str,
    },
    /// A value does not fit the signed range of its bit width.
    #[error(
        "{what}: value {value} at index {index} is outside the signed {bits}-bit range [{min}, {max}]"
    )]
    ValueOutOfRange {
        /// Which argument.
        what: String,
        /// Offending value.
        value: i32,
        /// Its position in the flat buffer.
        index: usize,
        /// Bit width.
        bits: u32,
        /// Smallest allowed value.
        min: i32,
        /// Largest allowed value.
        max: i32,
    },
    /// A zero point that the activation type cannot represent.
    #[error("zero point {zero_point} is outside [{min}, {max}] for {what}")]
    ZeroPointOutOfRange {
        /// Which argument.
        what: String,
        /// The zero point.
        zero_point: i32,
        /// Smallest allowed value.
        min: i32,
        /// Largest allowed value.
        max: i32,
    },
    /// A real multiplier that cannot be turned into a dyadic number.
    #[error("invalid requantization multiplier {value}: {reason}")]
    InvalidMultiplier {
        /// The real multiplier.
        value: f64,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The reduction length is too long for exact `i32` accumulation.
    #[error(
        "reduction length K = {k} exceeds {max} (exact i32 accumulation limit); split the layer"
    )]
    ReductionTooLong {
        /// The reduction length.
        k: usize,
        /// [`MAX_K`].
        max: usize,
    },
    /// Invalid convolution geometry.
    #[error("invalid convolution: {0}")]
    InvalidConv(String),
    /// The requested backend is not available on this CPU.
    #[error("backend {0:?} is not available on this CPU (use Backend::best())")]
    BackendUnavailable(Backend),
}

/// Result alias of the kernels.
pub type Result<T> = std::result::Result<T, KernelError>;

/// Which implementation runs a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable scalar Rust; the reference every other backend must match bit for bit.
    Generic,
    /// x86-64 AVX2 (`vpmovsxbw` + `vpmaddwd`), chosen at run time.
    Avx2,
    /// x86-64 AVX-512 VNNI (`vpdpbusd`, 64 multiply-accumulates per instruction) for int8
    /// weights; int4 weights and the depthwise convolution run the AVX2 kernels.
    Avx512Vnni,
}

impl Backend {
    /// The fastest backend this CPU supports.
    pub fn best() -> Backend {
        if Backend::Avx512Vnni.is_available() {
            Backend::Avx512Vnni
        } else if Backend::Avx2.is_available() {
            Backend::Avx2
        } else {
            Backend::Generic
        }
    }

    /// Whether this backend can run on the current CPU.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Generic => true,
            Backend::Avx2 => avx2_available(),
            Backend::Avx512Vnni => vnni_available(),
        }
    }

    pub(crate) fn check(self) -> Result<Self> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(KernelError::BackendUnavailable(self))
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// AVX-512 VNNI kernels also need AVX2 (int4 weights and depthwise rows run the AVX2 kernels).
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn vnni_available() -> bool {
    false
}

static MAX_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Caps the number of threads the kernels use (`0` = all available cores, the default).
pub fn set_max_threads(n: usize) {
    MAX_THREADS.store(n, Ordering::Relaxed);
}

/// Number of threads the kernels will use for large problems.
pub fn max_threads() -> usize {
    // `available_parallelism` reads cgroup files on Linux (tens of µs): ask once.
    static HW: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let hw = *HW.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    match MAX_THREADS.load(Ordering::Relaxed) {
        0 => hw,
        n => n.min(hw),
    }
}

pub(crate) fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch {
            what: what.to_string(),
            expected,
            got,
        })
    }
}

/// Signed range `[min, max]` of a two's-complement `bits`-bit integer.
pub(crate) fn signed_range(bits: u32) -> (i32, i32) {
    (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1)
}

pub(crate) fn check_signed(what: &str, values: &[i8], bits: u32) -> Result<()> {
    let (min, max) = signed_range(bits);
    if let Some((index, &v)) = values
        .iter()
        .enumerate()
        .find(|(_, &v)| (v as i32) < min || (v as i32) > max)
    {
        return Err(KernelError::ValueOutOfRange {
            what: what.to_string(),
            value: v as i32,
            index,
            bits,
            min,
            max,
        });
    }
    Ok(())
}
