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
//! Work is split over panels (output channels) across threads with `std::thread::scope` when
//! `M·N·K ≥` [`PARALLEL_THRESHOLD`].

use super::pack::PackedBits;
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
            // Raw unsigned activations `a - T::MIN`, rows zero-padded to whole k-quads; the kernel
            // returns Σ a·w, corrected below by `- (a_zp - T::MIN)·Σw`.
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
            let mut c = run_panels(m, &view, |panels, out| {
                dispatch_vnni(&a8, m, kq, packed, panels, out)
            });
            let zp = a_zp - T::MIN;
            if zp != 0 {
                let w_sums = w.row_sums();
                for row in c.chunks_exact_mut(n) {
                    for (x, &sw) in row.iter_mut().zip(w_sums) {
                        *x -= zp * sw;
                    }
                }
            }
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

#[cfg(target_arch = "x86_64")]
fn dispatch_vnni(
    a8: &[u8],
    m: usize,
    kq: usize,
    packed: &[u8],
    panels: std::ops::Range<usize>,
    out: &mut [i32],
) {
    // SAFETY: callers reach this only after `Backend::Avx512Vnni.check()` confirmed AVX-512F/BW
    // and VNNI support.
    unsafe { super::avx512::gemm_panels_vnni(a8, m, kq, packed, panels, out) }
}

#[cfg(not(target_arch = "x86_64"))]
fn dispatch_vnni(_: &[u8], _: usize, _: usize, _: &[u8], _: std::ops::Range<usize>, _: &mut [i32]) {
    unreachable!("AVX-512 VNNI is never available off x86-64")
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
    let blocks: Vec<Vec<i32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|r| {
                let r = r.clone();
                let kernel = &kernel;
                scope.spawn(move || {
                    let mut block = vec![0i32; m * r.len() * NR];
                    kernel(r, &mut block);
                    block
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for (r, block) in ranges.into_iter().zip(&blocks) {
        gather(&mut c, r, block);
    }
    c
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
