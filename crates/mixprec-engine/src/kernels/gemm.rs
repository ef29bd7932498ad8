//! Integer GEMM / GEMV with `i32` accumulation.
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021), Eq. 24: the `q_W * q_a` product "accumulated in
//! INT32", here for 8-bit activations (`u8` or `i8`, layer-wise zero point) and symmetric 8-bit
//! ([`PackedI8`]) or 4-bit ([`PackedI4`]) weights. Complexity `O(M·N·K)` time,
//! `O(M·K)` scratch (the activations widened to `i16`).
//!
//! Semantics: `C[i, j] = Σ_k (A[i, k] - a_zp) · W[j, k]` with `A` `[M, K]` row-major, `W`
//! `[N, K]` row-major (output channel major), `C` `[M, N]` row-major `i32`. This equals
//! `Σ_k A[i, k]·W[j, k] - a_zp · rowsum(W[j])`; [`PackedWeights::row_sums`] exposes the row sums
//! for callers that fold the zero-point correction into a bias instead.
//!
//! Exactness (no saturation anywhere, bit-identical to the generic kernel):
//! - int8 weights: `A - a_zp` is formed in `i16` (range `[-255, 255]`), weights are
//!   sign-extended to `i16` (`vpmovsxbw`), and `vpmaddwd` multiplies and adds pairs into `i32`
//!   lanes: `|2·255·128| < 2^31`. `vpmaddubsw` is *not* used here because its `i16` pair sums
//!   saturate for full-range `u8·i8` (`2·255·127 > 32767`).
//! - int4 weights: stored offset by 8 (unsigned nibbles `w + 8` in `[0, 15]`) and multiplied with
//!   the raw unsigned activations by `vpmaddubsw`, whose pair sums are at most `2·255·15 = 7650`
//!   (two of them are added in `i16`: `15300`), then widened by `vpmaddwd` with ones; the result
//!   `Σ a·(w + 8)` is corrected by `- 8·Σa - a_zp·Σw` (`i8` activations are shifted by 128 first).
//! - `K ≤` [`super::MAX_K`] keeps the final `i32` sums exact.
//!
//! Packed layout: `N` is split into panels of [`NR`] = 16 output channels (zero-padded), each
//! panel stored contiguously over the padded `K`.
//! - [`PackedI8`]: `K` padded to even; k-pair `t` of panel `p` is 32 bytes, weight
//!   `(16p + j, 2t + e)` is byte `16·(j / 8) + 2·(j % 8) + e`. Sign-extended, one k-pair is two
//!   `vpmaddwd` operands whose eight `i32` lanes are eight output channels, so the micro-kernel
//!   (6 rows × 16 channels, 12 accumulator registers) needs no horizontal sums.
//! - [`PackedI4`]: `K` padded to a multiple of 8; 8-k step `s` of panel `p` is 64 bytes, two
//!   k-quads of 32 bytes; weight `(16p + j, 8s + 4q + e)` (`j < 16`, `q < 2`, `e < 4`) is the low
//!   (`j < 8`) or high (`j ≥ 8`) nibble of byte `32q + 4·(j % 8) + e`, holding `w + 8`.
//!   The micro-kernel is 4 rows × 16 channels.
//! - AVX-512 VNNI copy of [`PackedI8`] (built at packing time when the CPU has VNNI): `K` padded
//!   to a multiple of 4; k-quad `t` of panel `p` is 64 bytes, weight `(16p + j, 4t + e)` is byte
//!   `4j + e`, so one `vpdpbusd` covers 16 channels × 4 k. Activations enter unsigned
//!   (`a - T::MIN`, exact for `u8·i8`) and `(a_zp - T::MIN)·rowsum(W)` is subtracted after.
//!
//! Work is split over panels (output channels) across threads when `M·N·K ≥`
//! [`PARALLEL_THRESHOLD`]: the calling thread runs the first part, persistent parked workers
//! the others (waking one costs microseconds where spawning a thread costs tens). The int8
//! AVX-512 VNNI path hands out whole groups of four panels and stores each finished group
//! straight into the output, the zero-point correction applied on the way, or requantized to
//! 8-bit codes by [`gemm_requantize`] (the fused Eq. 24 epilogue).

use super::pack::PackedBits;
use super::requant::{Dyadic, OutputRange};
use super::{check_len, check_signed, Backend, KernelError, Result};

/// Output channels per packed panel.
pub const NR: usize = 16;

/// Work (`M·N·K` multiply-accumulates) from which the kernels use several threads.
pub const PARALLEL_THRESHOLD: usize = 1 << 22;

mod sealed {
    /// A borrowed view of a packed weight matrix.
    pub struct View<'a> {
        pub n: usize,
        pub k: usize,
        pub kp: usize,
        pub bits: u32,
        pub data: &'a [u8],
        /// int8 weights in the AVX-512 VNNI layout (empty when not built).
        pub vnni: &'a [u8],
    }

    pub trait SealedWeights {
        fn view(&self) -> View<'_>;
    }

    pub trait SealedActivation {}
    impl SealedActivation for u8 {}
    impl SealedActivation for i8 {}
}
pub(crate) use sealed::View;

/// An 8-bit activation type (`u8` or `i8`).
pub trait Activation: sealed::SealedActivation + Copy + Send + Sync + 'static {
    /// Smallest value.
    const MIN: i32;
    /// Largest value.
    const MAX: i32;
    /// Type name for messages.
    const NAME: &'static str;
    /// Widens to `i32`.
    fn to_i32(self) -> i32;
    /// Narrows a value already known to lie in `[MIN, MAX]`.
    fn from_i32_unchecked(v: i32) -> Self;
}

impl Activation for u8 {
    const MIN: i32 = 0;
    const MAX: i32 = 255;
    const NAME: &'static str = "u8";
    #[inline]
    fn to_i32(self) -> i32 {
        self as i32
    }
    #[inline]
    fn from_i32_unchecked(v: i32) -> Self {
        v as u8
    }
}

impl Activation for i8 {
    const MIN: i32 = -128;
    const MAX: i32 = 127;
    const NAME: &'static str = "i8";
    #[inline]
    fn to_i32(self) -> i32 {
        self as i32
    }
    #[inline]
    fn from_i32_unchecked(v: i32) -> Self {
        v as i8
    }
}

pub(crate) fn check_zero_point<T: Activation>(what: &str, zp: i32) -> Result<()> {
    if (T::MIN..=T::MAX).contains(&zp) {
        Ok(())
    } else {
        Err(KernelError::ZeroPointOutOfRange {
            what: format!("{what} ({} activations)", T::NAME),
            zero_point: zp,
            min: T::MIN,
            max: T::MAX,
        })
    }
}

/// A weight matrix `[N, K]` packed for the GEMM kernels ([`PackedI8`] or [`PackedI4`]).
pub trait PackedWeights: sealed::SealedWeights + Send + Sync {
    /// Output channels `N`.
    fn n(&self) -> usize;
    /// Reduction length `K`.
    fn k(&self) -> usize;
    /// Bits per stored weight (8 or 4).
    fn bits(&self) -> u32;
    /// Weight `W[n, k]`; panics when out of bounds.
    fn get(&self, n: usize, k: usize) -> i8;
    /// `Σ_k W[n, k]` for every output channel `n`.
    fn row_sums(&self) -> &[i32];

    /// Row `n` of `W`, unpacked.
    fn row(&self, n: usize) -> Vec<i8> {
        (0..self.k()).map(|k| self.get(n, k)).collect()
    }

    /// The whole matrix `[N, K]` row-major, unpacked.
    fn to_row_major(&self) -> Vec<i8> {
        (0..self.n()).flat_map(|n| self.row(n)).collect()
    }
}

fn check_dims(what: &str, weights: &[i8], n: usize, k: usize) -> Result<()> {
    check_len(what, n * k, weights.len())?;
    if k > super::MAX_K {
        return Err(KernelError::ReductionTooLong {
            k,
            max: super::MAX_K,
        });
    }
    Ok(())
}

fn row_sums(weights: &[i8], n: usize, k: usize) -> Vec<i32> {
    (0..n)
        .map(|j| weights[j * k..(j + 1) * k].iter().map(|&w| w as i32).sum())
        .collect()
}

/// Symmetric signed 8-bit weights `[N, K]` in the panel layout (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedI8 {
    n: usize,
    k: usize,
    kp: usize,
    data: Vec<u8>,
    /// The VNNI layout (empty when the CPU lacks AVX-512 VNNI).
    vnni: Vec<u8>,
    row_sums: Vec<i32>,
}

impl PackedI8 {
    /// Packs `weights` (`[n, k]` row-major). Any `i8` value is allowed.
    pub fn new(weights: &[i8], n: usize, k: usize) -> Result<Self> {
        check_dims("int8 weights [N, K]", weights, n, k)?;
        let kp = k.next_multiple_of(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u8; panels * kp * NR];
        for j in 0..n {
            for kk in 0..k {
                data[Self::offset(kp, j, kk)] = weights[j * k + kk] as u8;
            }
        }
        let vnni = if super::vnni_available() {
            pack_vnni(weights, n, k)
        } else {
            Vec::new()
        };
        Ok(Self {
            n,
            k,
            kp,
            data,
            vnni,
            row_sums: row_sums(weights, n, k),
        })
    }

    /// Packs weights stored at any width 2..=8 ([`PackedBits`] of `n·k` values) for the 8-bit
    /// kernel (low-bit weights other than int4 run through it).
    pub fn from_packed_bits(p: &PackedBits, n: usize, k: usize) -> Result<Self> {
        check_len("packed weights [N, K]", n * k, p.len())?;
        Self::new(&super::pack::unpack_bits(p), n, k)
    }

    #[inline]
    fn offset(kp: usize, j: usize, kk: usize) -> usize {
        let (p, jj) = (j / NR, j % NR);
        (p * (kp / 2) + kk / 2) * 32 + 16 * (jj / 8) + 2 * (jj % 8) + kk % 2
    }

    /// Bytes of packed storage (the panel layout plus, on AVX-512 VNNI CPUs, its VNNI copy).
    pub fn storage_bytes(&self) -> usize {
        self.data.len() + self.vnni.len()
    }
}

/// `K` padded to whole k-quads for the VNNI layout.
fn vnni_kq(k: usize) -> usize {
    k.next_multiple_of(4)
}

/// Row-major `[n, k]` int8 weights in the AVX-512 VNNI panel layout (see the module docs).
fn pack_vnni(weights: &[i8], n: usize, k: usize) -> Vec<u8> {
    let kq = vnni_kq(k);
    let panel_bytes = kq * NR;
    let mut data = vec![0u8; n.div_ceil(NR) * panel_bytes];
    for j in 0..n {
        let (p, jj) = (j / NR, j % NR);
        for (kk, &w) in weights[j * k..(j + 1) * k].iter().enumerate() {
            data[p * panel_bytes + (kk / 4) * 4 * NR + 4 * jj + kk % 4] = w as u8;
        }
    }
    data
}

impl sealed::SealedWeights for PackedI8 {
    fn view(&self) -> View<'_> {
        View {
            n: self.n,
            k: self.k,
            kp: self.kp,
            bits: 8,
            data: &self.data,
            vnni: &self.vnni,
        }
    }
}

impl PackedWeights for PackedI8 {
    fn n(&self) -> usize {
        self.n
    }
    fn k(&self) -> usize {
        self.k
    }
    fn bits(&self) -> u32 {
        8
    }
    fn get(&self, n: usize, k: usize) -> i8 {
        assert!(
            n < self.n && k < self.k,
            "PackedI8::get({n}, {k}) out of bounds"
        );
        self.data[Self::offset(self.kp, n, k)] as i8
    }
    fn row_sums(&self) -> &[i32] {
        &self.row_sums
    }
}

/// Symmetric signed 4-bit weights `[N, K]` (values in `[-8, 7]`), two per byte in the panel
/// layout, stored as `w + 8` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedI4 {
    n: usize,
    k: usize,
    kp: usize,
    data: Vec<u8>,
    row_sums: Vec<i32>,
}

impl PackedI4 {
    /// Packs `weights` (`[n, k]` row-major, each in `[-8, 7]`).
    pub fn new(weights: &[i8], n: usize, k: usize) -> Result<Self> {
        check_dims("int4 weights [N, K]", weights, n, k)?;
        check_signed("int4 weights [N, K]", weights, 4)?;
        let kp = k.next_multiple_of(8);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u8; panels * kp * NR / 2];
        for j in 0..n {
            for kk in 0..k {
                let (byte, shift) = Self::offset(kp, j, kk);
                data[byte] |= ((weights[j * k + kk] + 8) as u8) << shift;
            }
        }
        Ok(Self {
            n,
            k,
            kp,
            data,
            row_sums: row_sums(weights, n, k),
        })
    }

    /// Repacks 4-bit weights from the dense [`PackedBits`] stream (`bits == 4`, `n·k` values).
    pub fn from_packed_bits(p: &PackedBits, n: usize, k: usize) -> Result<Self> {
        if p.bits() != 4 {
            return Err(KernelError::UnsupportedBits {
                what: "PackedI4::from_packed_bits".to_string(),
                bits: p.bits(),
                supported: "4",
            });
        }
        check_len("packed int4 weights [N, K]", n * k, p.len())?;
        Self::new(&super::pack::unpack_bits(p), n, k)
    }

    #[inline]
    fn offset(kp: usize, j: usize, kk: usize) -> (usize, u32) {
        let (p, jj) = (j / NR, j % NR);
        let byte = (p * (kp / 8) + kk / 8) * 64 + 32 * ((kk % 8) / 4) + 4 * (jj % 8) + kk % 4;
        (byte, 4 * (jj / 8) as u32)
    }

    /// Bytes of packed storage.
    pub fn storage_bytes(&self) -> usize {
        self.data.len()
    }
}

impl sealed::SealedWeights for PackedI4 {
    fn view(&self) -> View<'_> {
        View {
            n: self.n,
            k: self.k,
            kp: self.kp,
            bits: 4,
            data: &self.data,
            vnni: &[],
        }
    }
}

impl PackedWeights for PackedI4 {
    fn n(&self) -> usize {
        self.n
    }
    fn k(&self) -> usize {
        self.k
    }
    fn bits(&self) -> u32 {
        4
    }
    fn get(&self, n: usize, k: usize) -> i8 {
        assert!(
            n < self.n && k < self.k,
            "PackedI4::get({n}, {k}) out of bounds"
        );
        let (byte, shift) = Self::offset(self.kp, n, k);
        ((self.data[byte] >> shift) & 0xF) as i8 - 8
    }
    fn row_sums(&self) -> &[i32] {
        &self.row_sums
    }
}

/// `C = (A - a_zp)·Wᵀ` with the fastest available backend; `a` is `[m, K]` row-major, the result
/// `[m, N]` row-major.
pub fn gemm<T: Activation, W: PackedWeights + ?Sized>(
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
) -> Result<Vec<i32>> {
    gemm_with(Backend::best(), a, m, a_zp, w)
}

/// Matrix-vector product `c = W·(a - a_zp)` (`gemm` with `m = 1`); `a` has `K` elements, the
/// result `N`.
pub fn gemv<T: Activation, W: PackedWeights + ?Sized>(
    a: &[T],
    a_zp: i32,
    w: &W,
) -> Result<Vec<i32>> {
    gemm(a, 1, a_zp, w)
}

/// [`gemm`] on an explicit backend (fails when the CPU lacks it).
pub fn gemm_with<T: Activation, W: PackedWeights + ?Sized>(
    backend: Backend,
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
) -> Result<Vec<i32>> {
    let backend = backend.check()?;
    let view = w.view();
    check_len("gemm activations [M, K]", m * view.k, a.len())?;
    check_zero_point::<T>("gemm activation zero point", a_zp)?;
    let (n, k) = (view.n, view.k);
    if m == 0 || n == 0 {
        return Ok(Vec::new());
    }
    if k == 0 {
        return Ok(vec![0; m * n]);
    }
    match backend {
        Backend::Generic => Ok(gemm_generic(a, m, a_zp, w)),
        Backend::Avx512Vnni if view.bits == 8 => {
            // Left uninitialised: `vnni_gemm` writes every element.
            let mut c: Vec<i32> = Vec::with_capacity(m * n);
            vnni_gemm(a, m, a_zp, w, VnniOut::I32(c.spare_capacity_mut()));
            // SAFETY: every panel goes to exactly one thread, which stores all `m` rows of its
            // valid columns, so all `m·n` values are written.
            unsafe { c.set_len(m * n) };
            Ok(c)
        }
        Backend::Avx2 | Backend::Avx512Vnni if view.bits == 4 => {
            // Raw unsigned activations `a - T::MIN` (u8), rows zero-padded to `kp`; the kernel
            // returns Σ a·(w + 8), corrected below by `- 8·Σa - zp·Σw`.
            let kp = view.kp;
            let zp = a_zp - T::MIN;
            let mut a8 = vec![0u8; m * kp];
            let mut a_sums = vec![0i32; m];
            for ((dst, src), sum) in a8
                .chunks_exact_mut(kp)
                .zip(a.chunks_exact(k))
                .zip(&mut a_sums)
            {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = (s.to_i32() - T::MIN) as u8;
                    *sum += *d as i32;
                }
            }
            let mut c = run_panels(m, &view, |panels, out| {
                dispatch_avx2_i4(&a8, m, &view, panels, out)
            });
            let w_sums = w.row_sums();
            for (row, &sa) in c.chunks_exact_mut(n).zip(&a_sums) {
                for (x, &sw) in row.iter_mut().zip(w_sums) {
                    *x -= 8 * sa + zp * sw;
                }
            }
            Ok(c)
        }
        Backend::Avx2 | Backend::Avx512Vnni => {
            // `(a - a_zp)` widened to i16, rows padded to the even length `kp`.
            let kp = view.kp;
            let mut a16 = vec![0i16; m * kp];
            for (dst, src) in a16.chunks_exact_mut(kp).zip(a.chunks_exact(k)) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = (s.to_i32() - a_zp) as i16;
                }
            }
            Ok(run_panels(m, &view, |panels, out| {
                dispatch_avx2(&a16, m, &view, panels, out)
            }))
        }
    }
}

/// `requantize(gemm(a, m, a_zp, w), [m, N, 1], bias, multipliers, range)` in one pass, code for
/// code: on AVX-512 VNNI CPUs the zero-point correction, bias, dyadic multiply with rounding
/// half away from zero, clamp and narrowing run on each finished block of output channels
/// while it is still in cache (see [`super::requantize`] for the formula and the arguments).
pub fn gemm_requantize<T: Activation, O: Activation, W: PackedWeights + ?Sized>(
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
    bias: Option<&[i32]>,
    multipliers: &[Dyadic],
    range: OutputRange,
) -> Result<Vec<O>> {
    gemm_requantize_with(Backend::best(), a, m, a_zp, w, bias, multipliers, range)
}

/// [`gemm_requantize`] on an explicit backend (fails when the CPU lacks it).
#[allow(clippy::too_many_arguments)]
pub fn gemm_requantize_with<T: Activation, O: Activation, W: PackedWeights + ?Sized>(
    backend: Backend,
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
    bias: Option<&[i32]>,
    multipliers: &[Dyadic],
    range: OutputRange,
) -> Result<Vec<O>> {
    let backend = backend.check()?;
    let view = w.view();
    let (n, k) = (view.n, view.k);
    check_len("gemm activations [M, K]", m * k, a.len())?;
    check_zero_point::<T>("gemm activation zero point", a_zp)?;
    super::requant::check_args::<O>(m * n, [m, n, 1], bias, multipliers, range)?;
    let fused = backend == Backend::Avx512Vnni && view.bits == 8 && m > 0 && n > 0 && k > 0;
    if !fused {
        let acc = gemm_with(backend, a, m, a_zp, w)?;
        return super::requantize::<O>(&acc, [m, n, 1], bias, multipliers, range);
    }
    // Left uninitialised: `vnni_gemm` writes every element.
    let mut out: Vec<O> = Vec::with_capacity(m * n);
    let zlh = [range.zero_point, range.qmin, range.qmax].map(i64::from);
    let spare = out.spare_capacity_mut();
    // SAFETY: `O` is `u8` or `i8` (sealed): one byte, so the spare capacity is `m·n` bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            spare.as_mut_ptr() as *mut std::mem::MaybeUninit<u8>,
            spare.len(),
        )
    };
    vnni_gemm(
        a,
        m,
        a_zp,
        w,
        VnniOut::Bytes {
            out: bytes,
            bias,
            multipliers,
            zlh,
        },
    );
    // SAFETY: as for the `i32` output, all `m·n` codes are written; `O` is `u8` or `i8`
    // (sealed), one byte.
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// Where the VNNI kernel's finished blocks go.
enum VnniOut<'a> {
    /// `C [m, N]` as `i32` (zero point corrected).
    I32(&'a mut [std::mem::MaybeUninit<i32>]),
    /// Requantized codes `[m, N]` (as [`super::requantize`] with these arguments; `zlh` is
    /// `[zero point, qmin, qmax]`).
    Bytes {
        out: &'a mut [std::mem::MaybeUninit<u8>],
        bias: Option<&'a [i32]>,
        multipliers: &'a [Dyadic],
        zlh: [i64; 3],
    },
}

/// A pointer that threads writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct SharedPtr<P>(*mut P);
// SAFETY: every thread writes only its own output channels (disjoint columns).
unsafe impl<P> Send for SharedPtr<P> {}
// SAFETY: as above.
unsafe impl<P> Sync for SharedPtr<P> {}

/// The int8 AVX-512 VNNI GEMM (`m, N, K > 0`, the backend checked by the caller): unsigned
/// activations `a - T::MIN` padded to whole k-quads, panel groups split over threads, each
/// finished group corrected by `(a_zp - T::MIN)·Σw` and stored (or requantized) at once.
#[cfg(target_arch = "x86_64")]
fn vnni_gemm<T: Activation, W: PackedWeights + ?Sized>(
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
    out: VnniOut<'_>,
) {
    use super::avx512::{GROUP_W, PR};
    let view = w.view();
    let (n, k) = (view.n, view.k);
    let kq = vnni_kq(k);
    let built;
    let packed = if view.vnni.is_empty() {
        built = pack_vnni(&w.to_row_major(), n, k);
        &built[..]
    } else {
        view.vnni
    };
    let mut a8 = vec![0u8; m * kq];
    for (dst, src) in a8.chunks_exact_mut(kq).zip(a.chunks_exact(k)) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s.to_i32() - T::MIN) as u8;
        }
    }
    let n_panels = n.div_ceil(NR);
    let zp = a_zp - T::MIN;
    let mut corr = vec![0i32; n_panels * NR];
    for (c, &sw) in corr.iter_mut().zip(w.row_sums()) {
        *c = zp * sw;
    }
    let (i32_out, byte_out) = match out {
        VnniOut::I32(c) => (Some(SharedPtr(c.as_mut_ptr() as *mut i32)), None),
        VnniOut::Bytes {
            out,
            bias,
            multipliers,
            zlh,
        } => (
            None,
            Some((
                SharedPtr(out.as_mut_ptr() as *mut u8),
                bias,
                multipliers,
                zlh,
            )),
        ),
    };
    let groups = n_panels.div_ceil(PR);
    let threads = if m * n * k >= PARALLEL_THRESHOLD {
        super::max_threads().min(groups).max(1)
    } else {
        1
    };
    // Threads take chunks of panel groups from a shared counter, so a thread that starts late
    // (or is descheduled on a busy machine) leaves its share to the others. From 8 rows on one
    // group is enough work per take (and the threads finish within one group of each other);
    // fewer rows take about an eighth of a thread's share at once.
    let chunk = if m >= 8 {
        1
    } else {
        (groups / (8 * threads)).max(1)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = |_: usize| {
        let mut scratch = vec![0i32; m * GROUP_W];
        let mut sink = |p: usize, np: usize, block: &[i32]| {
            let valid = (n - p * NR).min(np * NR);
            // SAFETY: AVX-512 F/BW/VNNI checked by the caller; `corr` and the constants cover
            // every panel; only this thread took panels `p..p + np` from the counter, so it
            // alone writes columns `p·NR..p·NR + valid` of the `[m, n]` output.
            unsafe {
                if let Some(c) = i32_out {
                    super::avx512::store_i32(
                        block,
                        m,
                        np,
                        corr.as_ptr().add(p * NR),
                        c.0.add(p * NR),
                        n,
                        valid,
                    );
                }
                if let Some((o, bias, mults, zlh)) = byte_out {
                    // The group's bias, multipliers and shifts (zero past `valid`).
                    let mut chan = [[0i32; GROUP_W]; 3];
                    let [cb, cm, cs] = &mut chan;
                    let lanes = cb.iter_mut().zip(cm.iter_mut()).zip(cs.iter_mut());
                    for (c, ((b, mm), sh)) in (p * NR..p * NR + valid).zip(lanes) {
                        let d = mults[if mults.len() == 1 { 0 } else { c }];
                        *b = bias.map_or(0, |b| b[c]);
                        *mm = d.multiplier();
                        *sh = d.shift() as i32;
                    }
                    super::avx512::store_requant(
                        block,
                        m,
                        np,
                        [
                            chan[0].as_ptr(),
                            corr.as_ptr().add(p * NR),
                            chan[1].as_ptr(),
                            chan[2].as_ptr(),
                        ],
                        zlh,
                        o.0.add(p * NR),
                        n,
                        valid,
                    );
                }
            }
        };
        loop {
            let g = next.fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
            if g >= groups {
                break;
            }
            let panels = g * PR..((g + chunk) * PR).min(n_panels);
            // SAFETY: callers reach this only after `Backend::Avx512Vnni.check()` confirmed
            // AVX-512F/BW and VNNI support.
            unsafe {
                super::avx512::gemm_panels_vnni(&a8, m, kq, packed, panels, &mut scratch, &mut sink)
            }
        }
    };
    pool::run(threads, &run);
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni_gemm<T: Activation, W: PackedWeights + ?Sized>(
    _: &[T],
    _: usize,
    _: i32,
    _: &W,
    _: VnniOut<'_>,
) {
    unreachable!("AVX-512 VNNI is never available off x86-64")
}

#[cfg(target_arch = "x86_64")]
fn dispatch_avx2(
    a16: &[i16],
    m: usize,
    view: &View,
    panels: std::ops::Range<usize>,
    out: &mut [i32],
) {
    // SAFETY: callers reach this only after `Backend::Avx2.check()` confirmed AVX2 support.
    unsafe { super::avx2::gemm_panels(a16, m, view, panels, out) }
}

#[cfg(target_arch = "x86_64")]
fn dispatch_avx2_i4(
    a8: &[u8],
    m: usize,
    view: &View,
    panels: std::ops::Range<usize>,
    out: &mut [i32],
) {
    // SAFETY: callers reach this only after `Backend::Avx2.check()` confirmed AVX2 support.
    unsafe { super::avx2::gemm_panels_i4(a8, m, view, panels, out) }
}

#[cfg(not(target_arch = "x86_64"))]
fn dispatch_avx2(_: &[i16], _: usize, _: &View, _: std::ops::Range<usize>, _: &mut [i32]) {
    unreachable!("AVX2 is never available off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
fn dispatch_avx2_i4(_: &[u8], _: usize, _: &View, _: std::ops::Range<usize>, _: &mut [i32]) {
    unreachable!("AVX2 is never available off x86-64")
}

/// Portable reference: every weight row is unpacked once, each output is a plain dot product.
fn gemm_generic<T: Activation, W: PackedWeights + ?Sized>(
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
) -> Vec<i32> {
    let (n, k) = (w.n(), w.k());
    let a32: Vec<i32> = a.iter().map(|&x| x.to_i32() - a_zp).collect();
    let mut c = vec![0i32; m * n];
    for j in 0..n {
        let row: Vec<i32> = w.row(j).into_iter().map(i32::from).collect();
        for i in 0..m {
            let ai = &a32[i * k..(i + 1) * k];
            c[i * n + j] = ai.iter().zip(&row).map(|(&x, &y)| x * y).sum();
        }
    }
    c
}

/// Splits the panels of `view` over threads; `kernel(panels, out)` fills `out`, a row-major
/// `[m, panels.len()·NR]` block; the valid columns are gathered into `C [m, N]`.
fn run_panels<F>(m: usize, view: &View, kernel: F) -> Vec<i32>
where
    F: Fn(std::ops::Range<usize>, &mut [i32]) + Sync,
{
    let n = view.n;
    let n_panels = n.div_ceil(NR);
    let work = m * n * view.k;
    let threads = if work >= PARALLEL_THRESHOLD {
        super::max_threads().min(n_panels).max(1)
    } else {
        1
    };
    if threads == 1 && n == n_panels * NR {
        // Whole panels only: the kernel's block is `C` itself.
        let mut c = vec![0i32; m * n];
        kernel(0..n_panels, &mut c);
        return c;
    }
    let mut c = vec![0i32; m * n];
    let gather = |c: &mut [i32], panels: std::ops::Range<usize>, block: &[i32]| {
        let width = panels.len() * NR;
        let col0 = panels.start * NR;
        let cols = (n - col0).min(width);
        for i in 0..m {
            c[i * n + col0..i * n + col0 + cols]
                .copy_from_slice(&block[i * width..i * width + cols]);
        }
    };
    if threads == 1 {
        let mut block = vec![0i32; m * n_panels * NR];
        kernel(0..n_panels, &mut block);
        gather(&mut c, 0..n_panels, &block);
        return c;
    }
    let chunk = n_panels.div_ceil(threads);
    let ranges: Vec<_> = (0..n_panels)
        .step_by(chunk)
        .map(|s| s..(s + chunk).min(n_panels))
        .collect();
    let blocks: Vec<std::sync::Mutex<Vec<i32>>> = ranges
        .iter()
        .map(|_| std::sync::Mutex::new(Vec::new()))
        .collect();
    pool::run(ranges.len(), &|t: usize| {
        let r = ranges[t].clone();
        let mut block = vec![0i32; m * r.len() * NR];
        kernel(r, &mut block);
        *blocks[t].lock().unwrap_or_else(|e| e.into_inner()) = block;
    });
    let blocks: Vec<Vec<i32>> = blocks
        .into_iter()
        .map(|b| b.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    for (r, block) in ranges.into_iter().zip(&blocks) {
        gather(&mut c, r, block);
    }
    c
}

/// A small persistent pool for the GEMM's panel split: the calling thread runs part 0, parked
/// workers (started on first use, kept for later calls) run the others; a part no worker has
/// picked up by the time the caller is done is taken back and run by the caller. Waking a
/// parked thread costs a few microseconds where spawning one costs tens, which matters for GEMV.
mod pool {
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, TryLockError};
    use std::thread::{self, Thread};
    use std::time::{Duration, Instant};

    /// How long an idle worker or a waiting caller spins before parking.
    const SPIN: Duration = Duration::from_micros(50);

    /// One part of a run, lent to a worker; the caller keeps it alive until `pending` is 0.
    struct Task {
        f: &'static (dyn Fn(usize) + Sync),
        index: usize,
        pending: &'static AtomicUsize,
        panicked: &'static AtomicBool,
        caller: Thread,
    }

    struct Worker {
        slot: Arc<AtomicPtr<Task>>,
        thread: Thread,
    }

    static WORKERS: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

    fn spawn_worker() -> Option<Worker> {
        let slot = Arc::new(AtomicPtr::<Task>::new(std::ptr::null_mut()));
        let mine = Arc::clone(&slot);
        let handle = thread::Builder::new()
            .name("mixprec-gemm".into())
            .spawn(move || loop {
                let start = Instant::now();
                let task = loop {
                    let t = mine.swap(std::ptr::null_mut(), Ordering::Acquire);
                    if !t.is_null() {
                        break t;
                    }
                    if start.elapsed() < SPIN {
                        std::hint::spin_loop();
                    } else {
                        thread::park();
                    }
                };
                // SAFETY: the caller keeps the task alive until `pending` drops to 0 below.
                let task = unsafe { &*task };
                let caller = task.caller.clone();
                let f = task.f;
                let index = task.index;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index)));
                if r.is_err() {
                    task.panicked.store(true, Ordering::Relaxed);
                }
                // Last touch of the task: the caller may free it as soon as this lands.
                task.pending.fetch_sub(1, Ordering::Release);
                caller.unpark();
            })
            .ok()?;
        Some(Worker {
            slot,
            thread: handle.thread().clone(),
        })
    }

    /// Waits (spin, then park) until `pending` is 0, also when unwinding.
    struct WaitAll<'a>(&'a AtomicUsize);

    impl Drop for WaitAll<'_> {
        fn drop(&mut self) {
            let start = Instant::now();
            while self.0.load(Ordering::Acquire) != 0 {
                if start.elapsed() < SPIN {
                    std::hint::spin_loop();
                } else {
                    thread::park();
                }
            }
        }
    }

    /// Runs `f(0), …, f(parts - 1)`, each part on its own thread (part 0 on the caller), and
    /// returns when all are done. Falls back to scoped threads when the pool is busy.
    pub(super) fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
        if parts <= 1 {
            if parts == 1 {
                f(0);
            }
            return;
        }
        let mut workers = match WORKERS.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return run_scoped(parts, f),
        };
        while workers.len() < parts - 1 {
            match spawn_worker() {
                Some(w) => workers.push(w),
                None => {
                    drop(workers);
                    return run_scoped(parts, f);
                }
            }
        }
        let pending = AtomicUsize::new(parts - 1);
        let panicked = AtomicBool::new(false);
        // SAFETY (lifetime erasure): `WaitAll` below does not return, even when unwinding,
        // before every worker has finished with its task, `f`, `pending` and `panicked`.
        let (f_s, pending_s, panicked_s) = unsafe {
            (
                std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f),
                &*(&pending as *const AtomicUsize),
                &*(&panicked as *const AtomicBool),
            )
        };
        let tasks: Vec<Task> = (1..parts)
            .map(|index| Task {
                f: f_s,
                index,
                pending: pending_s,
                panicked: panicked_s,
                caller: thread::current(),
            })
            .collect();
        let wait = WaitAll(&pending);
        for (task, w) in tasks.iter().zip(workers.iter()) {
            w.slot
                .store(task as *const Task as *mut Task, Ordering::Release);
            w.thread.unpark();
        }
        f(0);
        // Parts no worker has picked up yet (a busy machine may not have scheduled it) are
        // taken back and run here instead of waiting for the worker.
        for (task, w) in tasks.iter().zip(workers.iter()) {
            let ptr = task as *const Task as *mut Task;
            let revoked = w
                .slot
                .compare_exchange(
                    ptr,
                    std::ptr::null_mut(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
            if revoked {
                pending.fetch_sub(1, Ordering::Release);
                f(task.index);
            }
        }
        drop(wait);
        drop(tasks);
        drop(workers);
        if panicked.load(Ordering::Relaxed) {
            panic!("a GEMM worker thread panicked");
        }
    }

    fn run_scoped(parts: usize, f: &(dyn Fn(usize) + Sync)) {
        thread::scope(|s| {
            for index in 1..parts {
                s.spawn(move || f(index));
            }
            f(0);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_get_matches_input() {
        let (n, k) = (19, 7);
        let w: Vec<i8> = (0..n * k).map(|i| ((i * 37) % 256) as u8 as i8).collect();
        let p = PackedI8::new(&w, n, k).unwrap();
        assert_eq!(p.to_row_major(), w);
        let w4: Vec<i8> = w.iter().map(|&x| x >> 4).collect();
        let p4 = PackedI4::new(&w4, n, k).unwrap();
        assert_eq!(p4.to_row_major(), w4);
        assert_eq!(p4.storage_bytes(), 2 * 64); // 2 panels × one 8-k step × 64 bytes
        assert_eq!(
            p4.row_sums()[0],
            w4[..k].iter().map(|&x| x as i32).sum::<i32>()
        );
        assert!(PackedI4::new(&w, n, k).is_err());
        assert!(PackedI8::new(&w, n, k + 1).is_err());
    }

    #[test]
    fn hand_checked_gemm() {
        // A = [[1, 2, 3], [255, 0, 7]], zp = 1; W = [[1, 0, -1], [-128, 127, 2]]
        let a = [1u8, 2, 3, 255, 0, 7];
        let w = PackedI8::new(&[1, 0, -1, -128, 127, 2], 2, 3).unwrap();
        let expect = vec![-2, 127 + 4, 254 - 6, -254 * 128 - 127 + 12];
        for b in [Backend::Generic, Backend::best()] {
            assert_eq!(gemm_with(b, &a, 2, 1, &w).unwrap(), expect);
        }
        assert!(gemm(&a, 2, 256, &w).is_err());
        assert!(gemm(&a[..5], 2, 0, &w).is_err());
    }
}
