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
//! multiply and rounding shift run in `i64` as in [`super::Dyadic::apply`].
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

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
/// bytes (codes) or `P·16` `i32` (raw).
///
/// # Safety
/// CPU features as in the module docs; every pointer range described above must be valid.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro<const R: usize, const P: usize>(
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
            let z = _mm512_set1_epi64(zlh[0]);
            let lo = _mm512_set1_epi64(zlh[1]);
            let hi = _mm512_set1_epi64(zlh[2]);
            for q in 0..P {
                // SAFETY: `ep` has `P` panels (caller contract).
                let e = unsafe { &*ep.add(q) };
                // SAFETY: reading the aligned constant rows.
                let (bz, m, se, so, he, ho) = unsafe {
                    (
                        _mm512_load_si512(e.bz.as_ptr() as *const __m512i),
                        _mm512_load_si512(e.m.as_ptr() as *const __m512i),
                        _mm512_load_si512(e.sh_even.as_ptr() as *const __m512i),
                        _mm512_load_si512(e.sh_odd.as_ptr() as *const __m512i),
                        _mm512_load_si512(e.half_even.as_ptr() as *const __m512i),
                        _mm512_load_si512(e.half_odd.as_ptr() as *const __m512i),
                    )
                };
                let m_odd = _mm512_srli_epi64(m, 32);
                let mask: u16 = if q + 1 == P && last < 16 {
                    ((1u32 << last) - 1) as u16
                } else {
                    0xFFFF
                };
                for (acc_r, &o) in acc.iter().zip(out) {
                    let x = _mm512_add_epi32(acc_r[q], bz);
                    let pe = _mm512_mul_epi32(x, m);
                    let po = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), m_odd);
                    let ve = clamp(round(pe, he, se), z, lo, hi);
                    let vo = clamp(round(po, ho, so), z, lo, hi);
                    let v = _mm512_mask_blend_epi32(0xAAAA, ve, _mm512_slli_epi64(vo, 32));
                    let bytes = _mm512_cvtepi32_epi8(v);
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
            let x =
                _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, a.as_ptr().add(i) as *const i8));
            let y =
                _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, b.as_ptr().add(i) as *const i8));
            let v = add16(x, y, k, shift, zlh);
            _mm_mask_storeu_epi8(out.as_mut_ptr().add(i) as *mut i8, mask, v);
        }
        i += len;
    }
}

/// The Add of [`add_codes`] on 16 codes of each operand (as `i32` lanes); 16 result codes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
#[inline]
fn add16(a: __m512i, b: __m512i, k: [i32; 4], shift: u32, zlh: [i64; 3]) -> __m128i {
    let x = _mm512_sub_epi32(a, _mm512_set1_epi32(k[0]));
    let y = _mm512_sub_epi32(b, _mm512_set1_epi32(k[1]));
    let (ma, mb) = (
        _mm512_set1_epi64(k[2] as i64),
        _mm512_set1_epi64(k[3] as i64),
    );
    let half = _mm512_set1_epi64(if shift == 0 { 0 } else { 1i64 << (shift - 1) });
    let s = _mm512_set1_epi64(shift as i64);
    let (z, lo, hi) = (
        _mm512_set1_epi64(zlh[0]),
        _mm512_set1_epi64(zlh[1]),
        _mm512_set1_epi64(zlh[2]),
    );
    let se = _mm512_add_epi64(_mm512_mul_epi32(x, ma), _mm512_mul_epi32(y, mb));
    let so = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64(x, 32), ma),
        _mm512_mul_epi32(_mm512_srli_epi64(y, 32), mb),
    );
    let ve = clamp(round(se, half, s), z, lo, hi);
    let vo = clamp(round(so, half, s), z, lo, hi);
    _mm512_cvtepi32_epi8(_mm512_mask_blend_epi32(
        0xAAAA,
        ve,
        _mm512_slli_epi64(vo, 32),
    ))
}
