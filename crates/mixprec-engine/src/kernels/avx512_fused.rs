//! AVX-512 VNNI implicit-GEMM convolution with a fused requantization epilogue (x86-64 only;
//! callers check `avx512f`, `avx512bw`, `avx512dq`, `avx512vl` and `avx512vnni` first).
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021), Eq. 24: `q_o = clamp(z_o + round(acc·m/2^s))`
//! on the INT32 accumulators of Eq. 25's folded convolution. The activations are a channels-last
//! `u8` tensor (padded with the zero point where the convolution pads); a row of the implicit
//! im2col matrix is a few contiguous segments of that tensor, read in place (no im2col copy):
//! output row `r` starts at byte `base[r]` and reads `quads` k-quads at each of `segs` offsets.
//! One `vpdpbusd` multiplies 16 output channels × 4 `K` values; `R` rows × `P` panels of 16
//! channels accumulate in registers over the whole `K` and are then either requantized in
//! registers (dyadic multiply with `vpmuldq`, rounding half away from zero, clamp, narrow to
//! `u8`) or stored as raw `i32` sums. Complexity `O(M·N·K)`.
//!
//! Exactness: the products are exact (`4·255·128 < 2^31`, `K ≤` [`super::MAX_K`]); the fused
//! epilogue adds one per-channel constant `bias - z_x·Σw` in `i32`, which the caller only allows
//! when no sum can leave the `i32` range (so it equals the reference's saturating bias add); the
//! multiply runs in `i64` and the rounding shift either as in [`super::Dyadic::apply`] or, for
//! shifts in `32..=62`, as the equivalent `floor((p + 2^(s-1) + z_o·2^s - [p < 0]) / 2^s)`
//! ([`requant16`]). The residual Add ([`add_codes`]) is `Σ m·(q - z)` rounded the same way, in
//! `i64` lanes or, for shifts in `16..=31`, split into exact 16-bit halves of the multipliers
//! (two `vpmaddwd` per 16 codes).
//!
//! Depthwise convolutions (survey §3.3 as above; MobileNetV1's depthwise-separable layers, Howard
//! et al., arXiv:1704.04861) have one filter per channel, so there is no reduction over channels
//! to feed `vpdpbusd`: [`depthwise`] vectorises over channels instead (16 per register, `u8` codes
//! widened to `i32`, one exact `vpdpwssd` product per lane and tap) with the same epilogue.
//! Complexity `O(M·C·kh·kw)`.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use crate::fast::mode;
pub(crate) use crate::fast::PanelEpilogue;

/// What a micro-kernel call writes.
#[derive(Clone, Copy)]
pub(crate) enum Sink {
    /// Requantized `u8` codes: `ep` for the first panel, output range `[z, lo, hi]`, and the
    /// number of valid channels of the last panel (1..=16).
    Codes {
        ep: *const PanelEpilogue,
        zlh: [i64; 3],
        last: usize,
    },
    /// Raw `i32` sums, `P·16` per row.
    Raw,
}

/// `R` output rows × `P` panels over all of `K`.
///
/// `base[r]` points at row `r`'s first activation byte; segment `j` starts `segs[j]` bytes after
/// it and holds `quads` k-quads. `w` points at the first panel's weights (panel `q` starts
/// `q·panel_bytes` later; its k-quads are consecutive 64-byte groups). `out[r]` receives `P·16`
/// bytes (codes, requantized by [`requant16`] in rounding mode `MODE`) or `P·16` `i32` (raw).
///
/// # Safety
/// CPU features as in the module docs; every pointer range described above must be valid.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro<const R: usize, const P: usize, const MODE: u8>(
    base: &[*const u8; R],
    segs: &[usize],
    quads: usize,
    w: *const u8,
    panel_bytes: usize,
    sink: Sink,
    out: &[*mut u8; R],
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    let mut wp = w;
    for &off in segs {
        let mut ap = [std::ptr::null::<u8>(); R];
        for (a, &b) in ap.iter_mut().zip(base) {
            *a = b.wrapping_add(off);
        }
        for t in 0..quads {
            // SAFETY: quad `t` of this segment lies inside every row's activations and inside
            // every panel's weights (caller contract).
            unsafe {
                let mut bv = [_mm512_setzero_si512(); P];
                for (q, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(wp.add(q * panel_bytes + t * 64) as *const __m512i);
                }
                for (acc_r, a) in acc.iter_mut().zip(&ap) {
                    let av = _mm512_set1_epi32((a.add(4 * t) as *const i32).read_unaligned());
                    for (x, &v) in acc_r.iter_mut().zip(&bv) {
                        *x = _mm512_dpbusd_epi32(*x, av, v);
                    }
                }
            }
        }
        wp = wp.wrapping_add(quads * 64);
    }
    match sink {
        Sink::Raw => {
            for (acc_r, &o) in acc.iter().zip(out) {
                for (q, &v) in acc_r.iter().enumerate() {
                    // SAFETY: `out[r]` holds `P·16` i32 (caller contract).
                    unsafe { _mm512_storeu_si512((o as *mut i32).add(16 * q) as *mut __m512i, v) };
                }
            }
        }
        Sink::Codes { ep, zlh, last } => {
            for q in 0..P {
                let mask: u16 = if q + 1 == P && last < 16 {
                    ((1u32 << last) - 1) as u16
                } else {
                    0xFFFF
                };
                // SAFETY: `ep` has `P` panels (caller contract).
                let k = EpRegs::new(unsafe { &*ep.add(q) }, zlh, mask);
                for (acc_r, &o) in acc.iter().zip(out) {
                    let bytes = requant16::<MODE>(acc_r[q], &k);
                    // SAFETY: `out[r]` holds the valid channels of these panels.
                    unsafe { _mm_mask_storeu_epi8(o.add(16 * q) as *mut i8, mask, bytes) };
                }
            }
        }
    }
}

/// `round_half_away_from_zero(p / 2^s)` per `i64` lane (`half = 2^(s-1)`, 0 for `s = 0`).
#[target_feature(enable = "avx512f")]
#[inline]
fn round(p: __m512i, half: __m512i, s: __m512i) -> __m512i {
    let sign = _mm512_srai_epi64(p, 63);
    let mag = _mm512_srlv_epi64(_mm512_add_epi64(_mm512_abs_epi64(p), half), s);
    _mm512_sub_epi64(_mm512_xor_si512(mag, sign), sign)
}

/// `clamp(v + z, lo, hi)` per `i64` lane.
#[target_feature(enable = "avx512f")]
#[inline]
fn clamp(v: __m512i, z: __m512i, lo: __m512i, hi: __m512i) -> __m512i {
    _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(v, z), lo), hi)
}

/// Residual Add of two code vectors: `clamp(z_o + round_half_away((m_a·(a - z_a) + m_b·(b -
/// z_b)) / 2^s))`, `m_a`, `m_b` in `[0, 2^31)`; `k = [z_a, z_b, m_a, m_b]`, `zlh = [z_o, lo, hi]`.
///
/// With `s = m_a·(a - z_a) + m_b·(b - z_b)` and `h = 2^(shift-1)`, rounding half away from zero
/// is `floor((s + h - [s < 0]) / 2^shift)` (`shift > 0`), so every lane is two `i64` products
/// plus one constant (`h`, the zero points and, when it fits, `z_o·2^shift` folded in), a
/// compare-and-decrement and one arithmetic shift: 8 codes per register, read and written as
/// bytes.
///
/// # Safety
/// CPU features as in the module docs; `a`, `b`, `out` of equal length.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
pub(crate) unsafe fn add_codes(
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    k: [i32; 4],
    shift: u32,
    zlh: [i64; 3],
) {
    let n = out.len().min(a.len()).min(b.len());
    if shift > 62 {
        // Outside the Add plans' range (`shift <= 62`): the 16-lane form.
        // SAFETY: as for this function.
        unsafe { add_codes16(&a[..n], &b[..n], &mut out[..n], k, shift, zlh) };
        return;
    }
    if let Some(c) = AddPairs::new(k, shift, zlh) {
        // SAFETY: as for this function.
        unsafe { add_codes_pairs(a, b, out, n, &c) };
        return;
    }
    let (ma, mb) = (k[2] as i64, k[3] as i64);
    let half = if shift == 0 { 0 } else { 1i64 << (shift - 1) };
    // `z_o·2^shift` folded into the constant while it stays far from overflow (|s| < 2^41).
    let fold = shift <= 54 && (0..256).contains(&zlh[0]);
    // The full `u8` range: clamp by a signed saturating narrowing of `v - 128`.
    let sat = fold && zlh[1] == 0 && zlh[2] == 255;
    let zf = match (fold, sat) {
        (true, true) => (zlh[0] - 128) << shift,
        (true, false) => zlh[0] << shift,
        _ => 0,
    };
    let konst = half + zf - ma * k[0] as i64 - mb * k[1] as i64;
    // `s < 0` exactly when `p = s + half + zf < half + zf`; no lane is below `i64::MIN`.
    let thr = if shift == 0 { i64::MIN } else { half + zf };
    let post = if fold { 0 } else { zlh[0] };
    let c = Add8 {
        ma: _mm512_set1_epi64(ma),
        mb: _mm512_set1_epi64(mb),
        konst: _mm512_set1_epi64(konst),
        thr: _mm512_set1_epi64(thr),
        one: _mm512_set1_epi64(1),
        s: _mm_set1_epi64x(shift as i64),
        post: _mm512_set1_epi64(post),
        lo: _mm512_set1_epi64(zlh[1]),
        hi: _mm512_set1_epi64(zlh[2]),
    };
    // SAFETY: as for this function.
    unsafe {
        match (fold, sat) {
            (true, true) => add_codes8::<true, true>(a, b, out, n, &c),
            (true, false) => add_codes8::<true, false>(a, b, out, n, &c),
            _ => add_codes8::<false, false>(a, b, out, n, &c),
        }
    }
}

/// The loop of [`add_codes`] over the first `n` codes (`FOLD`: `z_o` is in the constant; `SAT`:
/// so is `-128`, and the output range is all of `0..=255`).
///
/// # Safety
/// As [`add_codes`]; `n` no longer than any of the three slices.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn add_codes8<const FOLD: bool, const SAT: bool>(
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    n: usize,
    c: &Add8,
) {
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: 32 bytes exist from `i` in all three slices.
        unsafe {
            for j in [0, 8, 16, 24] {
                let x = _mm512_cvtepu8_epi64(_mm_loadl_epi64(pa.add(i + j) as *const _));
                let y = _mm512_cvtepu8_epi64(_mm_loadl_epi64(pb.add(i + j) as *const _));
                _mm_storel_epi64(po.add(i + j) as *mut _, add8::<FOLD, SAT>(x, y, c));
            }
        }
        i += 32;
    }
    while i < n {
        let len = (n - i).min(8);
        let mask = ((1u32 << len) - 1) as u8;
        // SAFETY: `len` bytes exist from `i` in all three slices.
        unsafe {
            let x = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(mask as u16, pa.add(i) as *const i8));
            let y = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(mask as u16, pb.add(i) as *const i8));
            _mm_mask_storeu_epi8(
                po.add(i) as *mut i8,
                mask as u16,
                add8::<FOLD, SAT>(x, y, c),
            );
        }
        i += len;
    }
}

/// Constants of the Add on 16-bit pairs ([`add_codes_pairs`]).
pub(crate) struct AddPairs {
    /// Per `i32` lane the `i16` pair `(mh_a, mh_b)`, and `(ml_a, ml_b)`: `m = mh·2^16 + ml`,
    /// `ml` in `[-2^15, 2^15)`.
    mh: __m512i,
    ml: __m512i,
    /// `K = 2^(s-1) + z_o·2^s - m_a·z_a - m_b·z_b = kh·2^16 + kl`, `kl` in `[0, 2^16)`.
    kh: __m512i,
    kl: __m512i,
    /// `s - 16`.
    s16: __m128i,
    /// Output `lo`, `hi` as `i16` lanes.
    lo: __m512i,
    hi: __m512i,
}

impl AddPairs {
    /// The constants of the Add `k = [z_a, z_b, m_a, m_b]`, `shift`, `zlh = [z_o, lo, hi]`, or
    /// `None` outside the pair form's range: shift in `16..=31`, `m_a`, `m_b` in
    /// `[0, 2^31 - 2^15)`, zero points and `[lo, hi]` in `0..=255` and `lo ≥ z_o` (negative sums
    /// then end at `lo` whichever way they round, so no sign correction is needed).
    #[target_feature(enable = "avx512f")]
    pub(crate) fn new(k: [i32; 4], shift: u32, zlh: [i64; 3]) -> Option<Self> {
        let [za, zb, ma, mb] = k.map(|v| v as i64);
        let [zo, lo, hi] = zlh;
        let byte = 0..256;
        let m_ok = |m: i64| (0..(1i64 << 31) - (1 << 15)).contains(&m);
        let ok = (16..=31).contains(&shift)
            && m_ok(ma)
            && m_ok(mb)
            && [za, zb, zo, lo, hi].iter().all(|v| byte.contains(v))
            && lo >= zo
            && lo <= hi;
        if !ok {
            return None;
        }
        let split = |m: i64| {
            let h = (m + (1 << 15)) >> 16;
            (h, m - (h << 16))
        };
        let ((ha, la), (hb, lb)) = (split(ma), split(mb));
        let pair = |x: i64, y: i64| ((x as u16 as u32) | ((y as u16 as u32) << 16)) as i32;
        let konst = (1i64 << (shift - 1)) + (zo << shift) - ma * za - mb * zb;
        let (kh, kl) = (konst >> 16, konst & 0xFFFF);
        Some(Self {
            mh: _mm512_set1_epi32(pair(ha, hb)),
            ml: _mm512_set1_epi32(pair(la, lb)),
            kh: _mm512_set1_epi32(kh as i32),
            kl: _mm512_set1_epi32(kl as i32),
            s16: _mm_set1_epi64x(shift as i64 - 16),
            lo: _mm512_set1_epi16(lo as i16),
            hi: _mm512_set1_epi16(hi as i16),
        })
    }
}

/// [`add_codes`] on 16-bit pairs, 32 codes per step: `a` and `b` widened to `i16` and
/// interleaved as `(a, b)` pairs, so that one `vpmaddwd` gives `mh_a·a + mh_b·b` and another
/// `ml_a·a + ml_b·b` for 16 codes (exact: both below `2^24` in magnitude). With the sum plus
/// rounding constant `y = (A + kh)·2^16 + (B + kl)`, `floor(y / 2^16) = A + kh + ((B + kl) >> 16)`
/// fits an `i32` (`|kh| < 2^25` for `s ≤ 31`), and `floor(y / 2^s)` is that shifted right by
/// `s - 16`: the rounded sum plus `z_o` (rounding half up; negative sums end at `lo` either way,
/// see [`AddPairs::new`]). A saturating pack to `i16` restores the order the interleave split
/// (per 128-bit lane) and keeps the clamp exact; then clamp and narrow.
///
/// # Safety
/// As [`add_codes`]; `n` no longer than any of the three slices.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn add_codes_pairs(a: &[u8], b: &[u8], out: &mut [u8], n: usize, c: &AddPairs) {
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let sums = |p: __m512i| {
        let hi = _mm512_madd_epi16(p, c.mh);
        let lo = _mm512_srai_epi32(_mm512_add_epi32(_mm512_madd_epi16(p, c.ml), c.kl), 16);
        _mm512_sra_epi32(_mm512_add_epi32(_mm512_add_epi32(hi, c.kh), lo), c.s16)
    };
    let step = |x: __m256i, y: __m256i| {
        let (x, y) = (_mm512_cvtepu8_epi16(x), _mm512_cvtepu8_epi16(y));
        let v = _mm512_packs_epi32(
            sums(_mm512_unpacklo_epi16(x, y)),
            sums(_mm512_unpackhi_epi16(x, y)),
        );
        _mm512_cvtepi16_epi8(_mm512_min_epi16(_mm512_max_epi16(v, c.lo), c.hi))
    };
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: 32 bytes exist from `i` in all three slices.
        unsafe {
            let x = _mm256_loadu_si256(pa.add(i) as *const __m256i);
            let y = _mm256_loadu_si256(pb.add(i) as *const __m256i);
            _mm256_storeu_si256(po.add(i) as *mut __m256i, step(x, y));
        }
        i += 32;
    }
    if i < n {
        let mask = ((1u64 << (n - i)) - 1) as u32;
        // SAFETY: `n - i` bytes exist from `i` in all three slices (masked).
        unsafe {
            let x = _mm256_maskz_loadu_epi8(mask, pa.add(i) as *const i8);
            let y = _mm256_maskz_loadu_epi8(mask, pb.add(i) as *const i8);
            _mm256_mask_storeu_epi8(po.add(i) as *mut i8, mask, step(x, y));
        }
    }
}

/// Broadcast constants of the 8-lane Add.
struct Add8 {
    ma: __m512i,
    mb: __m512i,
    konst: __m512i,
    thr: __m512i,
    one: __m512i,
    s: __m128i,
    post: __m512i,
    lo: __m512i,
    hi: __m512i,
}

/// 8 codes of each operand (as `i64` lanes) → 8 result codes (low 8 bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
#[inline]
fn add8<const FOLD: bool, const SAT: bool>(x: __m512i, y: __m512i, c: &Add8) -> __m128i {
    let p = _mm512_add_epi64(
        _mm512_add_epi64(_mm512_mul_epi32(x, c.ma), _mm512_mul_epi32(y, c.mb)),
        c.konst,
    );
    let neg = _mm512_cmplt_epi64_mask(p, c.thr);
    let q = _mm512_sra_epi64(_mm512_mask_sub_epi64(p, neg, p, c.one), c.s);
    if SAT {
        return _mm_xor_si128(_mm512_cvtsepi64_epi8(q), _mm_set1_epi8(-128));
    }
    let v = if FOLD { q } else { _mm512_add_epi64(q, c.post) };
    _mm512_cvtepi64_epi8(_mm512_min_epi64(_mm512_max_epi64(v, c.lo), c.hi))
}

/// The 16-lane form of [`add_codes`] (any `shift` below 64).
///
/// # Safety
/// As [`add_codes`].
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn add_codes16(a: &[u8], b: &[u8], out: &mut [u8], k: [i32; 4], shift: u32, zlh: [i64; 3]) {
    let n = out.len().min(a.len()).min(b.len());
    let c = AddConsts::new(k, shift, zlh);
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let len = (n - i).min(16);
        let mask: u16 = if len == 16 {
            0xFFFF
        } else {
            ((1u32 << len) - 1) as u16
        };
        // SAFETY: `len` bytes exist from `i` in all three slices.
        unsafe {
            let x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, pa.add(i) as *const i8));
            let y = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, pb.add(i) as *const i8));
            let v = add16(x, y, &c);
            _mm_mask_storeu_epi8(po.add(i) as *mut i8, mask, v);
        }
        i += len;
    }
}

/// Broadcast constants of [`add_codes`].
struct AddConsts {
    za: __m512i,
    zb: __m512i,
    ma: __m512i,
    mb: __m512i,
    half: __m512i,
    s: __m512i,
    z: __m512i,
    lo: __m512i,
    hi: __m512i,
}

impl AddConsts {
    #[target_feature(enable = "avx512f")]
    fn new(k: [i32; 4], shift: u32, zlh: [i64; 3]) -> Self {
        Self {
            za: _mm512_set1_epi32(k[0]),
            zb: _mm512_set1_epi32(k[1]),
            ma: _mm512_set1_epi64(k[2] as i64),
            mb: _mm512_set1_epi64(k[3] as i64),
            half: _mm512_set1_epi64(if shift == 0 { 0 } else { 1i64 << (shift - 1) }),
            s: _mm512_set1_epi64(shift as i64),
            z: _mm512_set1_epi64(zlh[0]),
            lo: _mm512_set1_epi64(zlh[1]),
            hi: _mm512_set1_epi64(zlh[2]),
        }
    }
}

/// The Add of [`add_codes`] on 16 codes of each operand (as `i32` lanes); 16 result codes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
#[inline]
fn add16(a: __m512i, b: __m512i, c: &AddConsts) -> __m128i {
    let x = _mm512_sub_epi32(a, c.za);
    let y = _mm512_sub_epi32(b, c.zb);
    let se = _mm512_add_epi64(_mm512_mul_epi32(x, c.ma), _mm512_mul_epi32(y, c.mb));
    let so = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64(x, 32), c.ma),
        _mm512_mul_epi32(_mm512_srli_epi64(y, 32), c.mb),
    );
    let ve = clamp(round(se, c.half, c.s), c.z, c.lo, c.hi);
    let vo = clamp(round(so, c.half, c.s), c.z, c.lo, c.hi);
    _mm512_cvtepi32_epi8(_mm512_mask_blend_epi32(
        0xAAAA,
        ve,
        _mm512_slli_epi64(vo, 32),
    ))
}

/// Geometry of a depthwise convolution on a channels-last `u8` input already padded with the
/// zero point (`[Hp, Wp, C]` per image).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DwGeom {
    /// `[Hp, Wp, C]` of the padded input.
    pub hwc: [usize; 3],
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub strides: [usize; 2],
    /// `[dh, dw]`.
    pub dilations: [usize; 2],
    /// `[Ho, Wo]`.
    pub out_hw: [usize; 2],
}

/// Depthwise convolution (one filter per channel) of output pixels `rows` (numbered over the
/// whole batch, `b·Ho·Wo + oy·Wo + ox`) with the fused requantization of [`micro`] in rounding
/// mode `round` (one of [`mode`]).
///
/// Vectorised over channels: 16 channels of one pixel per register, the `u8` codes widened to
/// `i32` lanes and multiplied with `vpdpwssd` against weights stored as `i32` lanes that hold
/// the `i16` code in their low half (the high halves are zero, so each lane gets exactly one
/// product). Up to eight output pixels of a row share each weight load; for 3-wide undilated
/// kernels with stride 1 or 2 each input column is also widened once per kernel row and shared
/// by the pixels that read it. The accumulators are `Σ x·w` over the `kh·kw` taps; the
/// epilogue's `bz` removes `z_x·Σw`.
///
/// `w` holds `kh·kw` rows of `cp = ⌈C/16⌉·16` lanes (zeros past `C`, except that when `C`
/// divides 16 lane `l` holds channel `l mod C`); `ep` one panel per 16 channels (lanes repeating
/// with period `C` likewise); pixel `r` is written at `out + (r - rows.start)·C`. With stride 1
/// and `C` in {1, 2, 4, 8} a register holds `16/C` whole pixels.
///
/// # Safety
/// CPU features as in the module docs; every window of `rows` inside `x` (`batch` padded
/// images); `w`, `ep` and `out` as described.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn depthwise(
    x: &[u8],
    g: &DwGeom,
    w: &[i32],
    ep: &[PanelEpilogue],
    zlh: [i64; 3],
    round: u8,
    rows: std::ops::Range<usize>,
    out: *mut u8,
) {
    // SAFETY: forwarded.
    unsafe {
        // The floor modes: `FLOOR` with any of the `SIGNED`, `ZADD` and `SAT` flags.
        match round {
            1 => depthwise_in::<1>(x, g, w, ep, zlh, rows, out),
            3 => depthwise_in::<3>(x, g, w, ep, zlh, rows, out),
            5 => depthwise_in::<5>(x, g, w, ep, zlh, rows, out),
            7 => depthwise_in::<7>(x, g, w, ep, zlh, rows, out),
            9 => depthwise_in::<9>(x, g, w, ep, zlh, rows, out),
            11 => depthwise_in::<11>(x, g, w, ep, zlh, rows, out),
            13 => depthwise_in::<13>(x, g, w, ep, zlh, rows, out),
            15 => depthwise_in::<15>(x, g, w, ep, zlh, rows, out),
            _ => depthwise_in::<{ mode::EXACT }>(x, g, w, ep, zlh, rows, out),
        }
    }
}

/// [`depthwise`] with the epilogue's rounding mode `MODE`.
///
/// # Safety
/// As [`depthwise`].
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn depthwise_in<const MODE: u8>(
    x: &[u8],
    g: &DwGeom,
    w: &[i32],
    ep: &[PanelEpilogue],
    zlh: [i64; 3],
    rows: std::ops::Range<usize>,
    out: *mut u8,
) {
    let [hp, wp, c] = g.hwc;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.strides;
    let [dh, dw] = g.dilations;
    let [ho, wo] = g.out_hw;
    let cp = c.div_ceil(16) * 16;
    let taps = kh * kw;
    // Byte offset of every tap from a window's first byte.
    let mut tap_off = [0usize; 64];
    let many;
    let offs: &[usize] = if taps <= 64 {
        for ky in 0..kh {
            for kx in 0..kw {
                tap_off[ky * kw + kx] = (ky * dh * wp + kx * dw) * c;
            }
        }
        &tap_off[..taps]
    } else {
        many = (0..kh)
            .flat_map(|ky| (0..kw).map(move |kx| (ky * dh * wp + kx * dw) * c))
            .collect::<Vec<_>>();
        &many
    };
    // Byte offset of every kernel row (3-wide kernels only).
    let mut row_off = [0usize; 64];
    if kw == 3 {
        for (ky, o) in row_off.iter_mut().enumerate().take(kh.min(64)) {
            *o = ky * dh * wp * c;
        }
    }
    let xp = x.as_ptr();
    let per_img = ho * wo;
    let packed = sw == 1 && c < 16 && 16 % c == 0;
    let mut r = rows.start;
    while r < rows.end {
        let (b, pix) = (r / per_img, r % per_img);
        let (oy, ox0) = (pix / wo, pix % wo);
        let len = (wo - ox0).min(rows.end - r);
        let row0 = (b * hp * wp + oy * sh * wp) * c;
        if packed {
            // Stride 1 and `C` dividing 16: the row's `len·C` output codes are contiguous and
            // lane `l` of each 16-byte block reads the codes `l` bytes after the block's window
            // start, so a register holds `16/C` whole pixels (weights and constants repeat with
            // period `C`).
            let lanes = len * c;
            let (full, rem) = (lanes / 16, lanes % 16);
            let x0 = xp.wrapping_add(row0 + ox0 * c);
            let o0 = out.wrapping_add((r - rows.start) * c);
            let mut k = EpRegs::new(&ep[0], zlh, 0xFFFF);
            let wb = w.as_ptr();
            let mut j = 0;
            while j < full {
                let cnt = (full - j).min(8);
                let (xj, oj) = (x0.wrapping_add(16 * j), o0.wrapping_add(16 * j));
                // SAFETY: the blocks cover exactly this row's windows and outputs (caller
                // contract).
                unsafe {
                    match cnt {
                        8 => dw_pixels::<8, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                        7 => dw_pixels::<7, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                        6 => dw_pixels::<6, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                        5 => dw_pixels::<5, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                        4 => dw_pixels::<4, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                        3 => dw_pixels::<3, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                        2 => dw_pixels::<2, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                        _ => dw_pixels::<1, MODE>(xj, 16, offs, wb, cp, &k, oj, 16),
                    }
                }
                j += cnt;
            }
            if rem > 0 {
                k.mask = ((1u32 << rem) - 1) as u16;
                let (xj, oj) = (x0.wrapping_add(16 * full), o0.wrapping_add(16 * full));
                // SAFETY: as above, the last `rem` lanes (masked loads and stores).
                unsafe { dw_pixels::<1, MODE>(xj, 16, offs, wb, cp, &k, oj, 16) };
            }
            r += len;
            continue;
        }
        for (cb, e) in ep.iter().enumerate().take(cp / 16) {
            let left = c - cb * 16;
            let mask: u16 = if left >= 16 {
                0xFFFF
            } else {
                ((1u32 << left) - 1) as u16
            };
            let k = EpRegs::new(e, zlh, mask);
            let wb = w.as_ptr().wrapping_add(cb * 16);
            let mut j = 0;
            // 3-wide undilated kernels (MobileNet's): each input column widened once per kernel
            // row and shared by the output pixels that read it.
            if kw == 3 && kh <= 64 && dw == 1 && (sw == 1 || sw == 2) {
                let group = if sw == 1 { 8 } else { 6 };
                while len - j >= group {
                    let x0 = xp.wrapping_add(row0 + (ox0 + j) * sw * c + cb * 16);
                    let o0 = out.wrapping_add((r + j - rows.start) * c + cb * 16);
                    // SAFETY: the columns of these pixels' windows are those the general path
                    // reads (caller contract).
                    unsafe {
                        if sw == 1 {
                            dw_cols3::<8, 1, 10, MODE>(x0, c, &row_off[..kh], wb, cp, &k, o0);
                        } else {
                            dw_cols3::<6, 2, 13, MODE>(x0, c, &row_off[..kh], wb, cp, &k, o0);
                        }
                    }
                    j += group;
                }
            }
            while j < len {
                let cnt = (len - j).min(8);
                let x0 = xp.wrapping_add(row0 + (ox0 + j) * sw * c + cb * 16);
                let o0 = out.wrapping_add((r + j - rows.start) * c + cb * 16);
                let (xs, os) = (sw * c, c);
                // SAFETY: forwarded (caller contract).
                unsafe {
                    match cnt {
                        8 => dw_pixels::<8, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                        7 => dw_pixels::<7, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                        6 => dw_pixels::<6, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                        5 => dw_pixels::<5, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                        4 => dw_pixels::<4, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                        3 => dw_pixels::<3, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                        2 => dw_pixels::<2, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                        _ => dw_pixels::<1, MODE>(x0, xs, offs, wb, cp, &k, o0, os),
                    }
                }
                j += cnt;
            }
        }
        r += len;
    }
}

impl EpRegs {
    /// The constants of panel `e`, output `[z, lo, hi]` and the valid-lane mask.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn new(e: &PanelEpilogue, zlh: [i64; 3], mask: u16) -> Self {
        // SAFETY: the aligned constant rows of one panel.
        unsafe {
            let m = _mm512_load_si512(e.m.as_ptr() as *const __m512i);
            let ld = |p: *const u64| _mm512_load_si512(p as *const __m512i);
            Self {
                bz: _mm512_load_si512(e.bz.as_ptr() as *const __m512i),
                m,
                m_odd: _mm512_srli_epi64(m, 32),
                se: ld(e.sh_even.as_ptr()),
                so: ld(e.sh_odd.as_ptr()),
                he: ld(e.half_even.as_ptr() as *const u64),
                ho: ld(e.half_odd.as_ptr() as *const u64),
                so32: ld(e.sh_odd32.as_ptr()),
                hze: ld(e.hz_even.as_ptr() as *const u64),
                hzo: ld(e.hz_odd.as_ptr() as *const u64),
                z: _mm512_set1_epi64(zlh[0]),
                lo: _mm512_set1_epi64(zlh[1]),
                hi: _mm512_set1_epi64(zlh[2]),
                z32: _mm512_set1_epi32(zlh[0] as i32),
                z32s: _mm512_set1_epi32(zlh[0] as i32 - 128),
                lo32: _mm512_set1_epi32(zlh[1] as i32),
                hi32: _mm512_set1_epi32(zlh[2] as i32),
                mask,
            }
        }
    }
}

/// The epilogue constants of one panel of 16 channels, in registers.
pub(crate) struct EpRegs {
    bz: __m512i,
    m: __m512i,
    m_odd: __m512i,
    se: __m512i,
    so: __m512i,
    he: __m512i,
    ho: __m512i,
    /// `s - 32` of the odd channels.
    so32: __m512i,
    /// `2^(s-1) + z·2^s` of the even / odd channels (`z` the folded output zero point).
    hze: __m512i,
    hzo: __m512i,
    z: __m512i,
    lo: __m512i,
    hi: __m512i,
    z32: __m512i,
    /// `z_o - 128` ([`mode::SAT`] with [`mode::ZADD`]).
    z32s: __m512i,
    lo32: __m512i,
    hi32: __m512i,
    /// Valid channels of the panel.
    mask: u16,
}

/// Eq. 24 on 16 accumulators (one panel): `clamp(z_o + round_half_away((acc + bz)·m / 2^s),
/// lo, hi)` as 16 bytes, code for code the reference's [`super::Dyadic::apply`].
///
/// `p = (acc + bz)·m` is an exact `i64` product per lane (even and odd `i32` lanes apart).
/// [`mode::EXACT`] rounds `|p|` half up and restores the sign, then adds `z_o` and clamps, all in
/// `i64`. The floor modes use `round_half_away(p / 2^s) + z_o = floor((p + 2^(s-1) + z_o·2^s -
/// [p < 0]) / 2^s)`: one add of a per-channel constant and one arithmetic shift (no overflow:
/// `|p| < 2^62`, and the constant is below `2^62` — `z_o` is added after the shift instead
/// ([`mode::ZADD`]) when a shift exceeds 54). With `s ≥ 32` the quotient fits an `i32`, and the
/// odd lanes are shifted by `s - 32` only, which leaves the quotient in their high half: one
/// blend joins both halves and the clamp runs on 16 `i32` lanes. Without [`mode::SIGNED`] the
/// `- [p < 0]` is dropped: with `lo ≥ z_o` every negative product ends at `lo` either way (both
/// quotients are `≤ 0`). With [`mode::SAT`] (`lo = 0`, `hi = 255`) the lanes hold `q + z_o - 128`
/// and the clamp is the signed saturating narrowing to bytes, then `+ 128` (a sign-bit flip).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
#[inline]
pub(crate) fn requant16<const MODE: u8>(acc: __m512i, k: &EpRegs) -> __m128i {
    let x = _mm512_add_epi32(acc, k.bz);
    let pe = _mm512_mul_epi32(x, k.m);
    let po = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), k.m_odd);
    if MODE & mode::FLOOR == 0 {
        let ve = clamp(round(pe, k.he, k.se), k.z, k.lo, k.hi);
        let vo = clamp(round(po, k.ho, k.so), k.z, k.lo, k.hi);
        let v = _mm512_mask_blend_epi32(0xAAAA, ve, _mm512_slli_epi64(vo, 32));
        return _mm512_cvtepi32_epi8(v);
    }
    let mut ye = _mm512_add_epi64(pe, k.hze);
    let mut yo = _mm512_add_epi64(po, k.hzo);
    if MODE & mode::SIGNED != 0 {
        ye = _mm512_add_epi64(ye, _mm512_srai_epi64(pe, 63));
        yo = _mm512_add_epi64(yo, _mm512_srai_epi64(po, 63));
    }
    let mut v = _mm512_mask_blend_epi32(
        0xAAAA,
        _mm512_srav_epi64(ye, k.se),
        _mm512_srav_epi64(yo, k.so32),
    );
    if MODE & mode::SAT != 0 {
        if MODE & mode::ZADD != 0 {
            v = _mm512_add_epi32(v, k.z32s);
        }
        return _mm_xor_si128(_mm512_cvtsepi32_epi8(v), _mm_set1_epi8(-128));
    }
    if MODE & mode::ZADD != 0 {
        v = _mm512_add_epi32(v, k.z32);
    }
    _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(v, k.lo32), k.hi32))
}

/// `P` consecutive output pixels of one row, one panel of 16 channels: pixel `i`'s window
/// starts at `x0 + i·xs`, its codes go to `o0 + i·os`.
///
/// # Safety
/// As [`depthwise`].
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_pixels<const P: usize, const MODE: u8>(
    x0: *const u8,
    xs: usize,
    offs: &[usize],
    wb: *const i32,
    cp: usize,
    k: &EpRegs,
    o0: *mut u8,
    os: usize,
) {
    let mut acc = [_mm512_setzero_si512(); P];
    for (t, &off) in offs.iter().enumerate() {
        // SAFETY: tap `t`'s weights (`cp` lanes per tap) and the windows' codes lie inside
        // the buffers (caller contract); the code loads are masked to the valid channels.
        unsafe {
            let wv = _mm512_loadu_si512(wb.add(t * cp) as *const __m512i);
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                    k.mask,
                    x0.wrapping_add(i * xs + off) as *const i8,
                ));
                *a = _mm512_dpwssd_epi32(*a, xv, wv);
            }
        }
    }
    for (i, &a) in acc.iter().enumerate() {
        // SAFETY: pixel `i`'s output holds this panel's valid channels.
        unsafe { dw_store::<MODE>(a, k, o0.wrapping_add(i * os)) };
    }
}

/// `P` consecutive output pixels of one row of a 3-wide, undilated kernel with stride `SW`:
/// per kernel row, the `N = (P - 1)·SW + 3` input columns the pixels read are widened once
/// and shared. Pixel `i`'s window starts at `x0 + i·SW·c`; kernel row `ky` is `rows[ky]` bytes
/// further; its codes go to `o0 + i·c`.
///
/// # Safety
/// As [`depthwise`]; `N = (P - 1)·SW + 3`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_cols3<const P: usize, const SW: usize, const N: usize, const MODE: u8>(
    x0: *const u8,
    c: usize,
    rows: &[usize],
    wb: *const i32,
    cp: usize,
    k: &EpRegs,
    o0: *mut u8,
) {
    debug_assert_eq!(N, (P - 1) * SW + 3);
    let mut acc = [_mm512_setzero_si512(); P];
    for (ky, &off) in rows.iter().enumerate() {
        let mut col = [_mm512_setzero_si512(); N];
        for (j, v) in col.iter_mut().enumerate() {
            // SAFETY: column `j` of this kernel row lies inside the input (caller contract);
            // the load is masked to the valid channels.
            *v = unsafe {
                _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                    k.mask,
                    x0.wrapping_add(off + j * c) as *const i8,
                ))
            };
        }
        for kx in 0..3 {
            // SAFETY: tap `(ky, kx)`'s `cp` weight lanes lie inside the weights.
            let wv = unsafe { _mm512_loadu_si512(wb.add((ky * 3 + kx) * cp) as *const __m512i) };
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm512_dpwssd_epi32(*a, col[i * SW + kx], wv);
            }
        }
    }
    for (i, &a) in acc.iter().enumerate() {
        // SAFETY: pixel `i`'s output holds this panel's valid channels.
        unsafe { dw_store::<MODE>(a, k, o0.wrapping_add(i * c)) };
    }
}

/// The fused requantization of one accumulator register (16 channels of one pixel), stored as
/// the panel's valid codes at `o`.
///
/// # Safety
/// CPU features as in the module docs; `o` holds the panel's valid channels.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
#[inline]
unsafe fn dw_store<const MODE: u8>(acc: __m512i, k: &EpRegs, o: *mut u8) {
    let bytes = requant16::<MODE>(acc, k);
    // SAFETY: caller contract.
    unsafe { _mm_mask_storeu_epi8(o as *mut i8, k.mask, bytes) };
}
