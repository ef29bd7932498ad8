//! AVX-512 VNNI int8 GEMM kernel (x86-64 only; callers check `avx512f`, `avx512bw` and
//! `avx512vnni` first).
//!
//! Survey §3.3 (HAWQ-V3: Dyadic Neural Network Quantization, Yao et al., ICML 2021), Eq. 24: the
//! INT32-accumulated integer products `q_W * q_a`. One `vpdpbusd` (`_mm512_dpbusd_epi32`)
//! multiplies 16 output channels × 4 consecutive `K` values (unsigned activation bytes × signed
//! weight bytes) and adds the four products of each channel to its `i32` lane without
//! saturation: 64 multiply-accumulates per instruction, exact because `4·255·128 < 2^31` and
//! `K ≤` [`super::MAX_K`] bounds the running sum. Complexity `O(M·N·K)`.
//!
//! Weight layout (built by `PackedI8` at packing time): `N` in panels of 16 channels, `K` padded
//! to a multiple of 4; k-quad `t` of panel `p` is 64 bytes and weight `(16p + j, 4t + e)` is byte
//! `4j + e`. The micro-kernel covers up to 6 rows × 4 panels (24 accumulator registers).
//!
//! The AVX-512 intrinsics and target features used here are stable since Rust 1.89.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::gemm::NR;

/// Rows per micro-kernel call.
const MR: usize = 6;
/// Panels (16 output channels each) per micro-kernel call.
pub(super) const PR: usize = 4;

/// k-quads per cache block: `PR` panels × `KC` quads of weights (32 KiB) stay in L1 while
/// every row block of the activations runs over them.
const KC: usize = 128;

/// Bytes of one k-quad of one panel.
pub(super) const QUAD_BYTES: usize = 4 * NR;

/// Columns of one panel group (`PR` panels): the row stride of the scratch block.
pub(super) const GROUP_W: usize = PR * NR;

/// Runs the given panels of the VNNI layout `w` (see the module docs) group by group (`PR`
/// panels at a time): `scratch` (`[m, GROUP_W]` row-major) receives `Σ_k a8[i, k] · W[j, k]` for
/// the group's channels, then `sink(first_panel, panels_in_group, scratch)` consumes it (zero
/// point correction, requantization, store). `a8` is `[m, kq]` row-major unsigned activations,
/// zero padded to `kq` (a multiple of 4).
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn gemm_panels_vnni<F: FnMut(usize, usize, &[i32])>(
    a8: &[u8],
    m: usize,
    kq: usize,
    w: &[u8],
    panels: Range<usize>,
    scratch: &mut [i32],
    mut sink: F,
) {
    let quads = kq / 4;
    let panel_bytes = quads * QUAD_BYTES;
    assert!(kq.is_multiple_of(4) && a8.len() == m * kq && scratch.len() == m * GROUP_W);
    assert!(panels.end * panel_bytes <= w.len());
    let mut p = panels.start;
    while p < panels.end {
        let np = (panels.end - p).min(PR);
        let b = w.as_ptr().wrapping_add(p * panel_bytes);
        let mut t0 = 0;
        while t0 < quads {
            let tq = (quads - t0).min(KC);
            let k = Kblock {
                quads: tq,
                accumulate: t0 > 0,
            };
            let bk = b.wrapping_add(t0 * QUAD_BYTES);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(MR);
                let a = a8.as_ptr().wrapping_add(i * kq + 4 * t0);
                let c = scratch.as_mut_ptr().wrapping_add(i * GROUP_W);
                // SAFETY: `rows` rows of `a8` and `scratch` exist from row `i`; k-quads
                // `t0..t0 + tq` of `np` panels exist from panel `p` (and in every row of `a8`);
                // `scratch` rows hold `GROUP_W ≥ np·NR` columns.
                unsafe {
                    match np {
                        1 => micro_rows::<1>(rows, a, kq, bk, panel_bytes, k, c, GROUP_W),
                        2 => micro_rows::<2>(rows, a, kq, bk, panel_bytes, k, c, GROUP_W),
                        3 => micro_rows::<3>(rows, a, kq, bk, panel_bytes, k, c, GROUP_W),
                        _ => micro_rows::<PR>(rows, a, kq, bk, panel_bytes, k, c, GROUP_W),
                    }
                }
                i += rows;
            }
            t0 += tq;
        }
        sink(p, np, scratch);
        p += np;
    }
}

/// Mask of the first `valid` (≤ 16) lanes.
#[inline]
fn lane_mask(valid: usize) -> u16 {
    if valid >= NR {
        u16::MAX
    } else {
        ((1u32 << valid) - 1) as u16
    }
}

/// Stores one finished group as `i32`: `out[i, c] = block[i, c] - corr[c]` for the first `valid`
/// columns (`c < np·NR`), rows `0..m`, `out` row stride `ldc`.
///
/// # Safety
/// AVX-512F; `block` is `[m, GROUP_W]`; `corr` has `np·NR` readable values; `out` row `i`
/// has `valid` writable `i32` from `out + i·ldc`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store_i32(
    block: &[i32],
    m: usize,
    np: usize,
    corr: *const i32,
    out: *mut i32,
    ldc: usize,
    valid: usize,
) {
    debug_assert!(block.len() >= m * GROUP_W && valid <= np * NR);
    for q in 0..np {
        let cols = valid.saturating_sub(q * NR);
        if cols == 0 {
            break;
        }
        let mask = lane_mask(cols);
        // SAFETY: caller contract: `corr` has `np·NR` values, `out` rows `valid` columns.
        unsafe {
            let cv = _mm512_loadu_si512(corr.add(q * NR) as *const __m512i);
            for i in 0..m {
                let v = _mm512_loadu_si512(block.as_ptr().add(i * GROUP_W + q * NR) as *const _);
                _mm512_mask_storeu_epi32(out.add(i * ldc + q * NR), mask, _mm512_sub_epi32(v, cv));
            }
        }
    }
}

/// `clamp(zp + round_half_away(p / 2^s), lo, hi)` per `i64` lane (the rounding of
/// [`super::rounding_shift`]: round `|p|` half up, restore the sign).
#[target_feature(enable = "avx512f")]
#[inline]
fn round_clamp(p: __m512i, half: __m512i, s: __m512i, zlh: &[__m512i; 3]) -> __m512i {
    let sign = _mm512_srai_epi64(p, 63);
    let mag = _mm512_srlv_epi64(_mm512_add_epi64(_mm512_abs_epi64(p), half), s);
    let r = _mm512_sub_epi64(_mm512_xor_si512(mag, sign), sign);
    _mm512_min_epi64(
        _mm512_max_epi64(_mm512_add_epi64(r, zlh[0]), zlh[1]),
        zlh[2],
    )
}

/// Requantizes one finished group to bytes, code for code [`super::requantize`]:
/// `out[i, c] = clamp(zp + round_half_away(sat_i32(block[i, c] + bias_c - corr_c) · m_c / 2^s_c),
/// lo, hi)` for the first `valid` columns. Even and odd `i32` lanes are sign-extended to `i64`
/// apart, the offset `bias - corr` is added and the sum clamped to the `i32` range in `i64` (the
/// saturating bias add of the generic path, applied to the zero-point-corrected accumulator),
/// `vpmuldq` forms the exact `i64` product, and both halves are joined and narrowed to bytes.
///
/// # Safety
/// AVX-512F; `block` is `[m, GROUP_W]`; `chan = [bias, corr, m, s]` each point at `np·NR`
/// readable `i32` (multipliers in `(0, 2^31)`, shifts in `0..=62`); `out` row `i` has `valid`
/// writable bytes from `out + i·ldc`; `zlh = [zp, lo, hi]` with `lo..=hi` inside the output
/// type's range.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn store_requant(
    block: &[i32],
    m: usize,
    np: usize,
    chan: [*const i32; 4],
    zlh: [i64; 3],
    out: *mut u8,
    ldc: usize,
    valid: usize,
) {
    debug_assert!(block.len() >= m * GROUP_W && valid <= np * NR);
    let zlh = zlh.map(|v| _mm512_set1_epi64(v));
    let i32_lo = _mm512_set1_epi64(i32::MIN as i64);
    let i32_hi = _mm512_set1_epi64(i32::MAX as i64);
    let low = _mm512_set1_epi64(0xFFFF_FFFF);
    let one = _mm512_set1_epi64(1);
    // Even `i32` lanes sign-extended to `i64`, and the odd ones.
    let even = |v: __m512i| _mm512_srai_epi64(_mm512_slli_epi64(v, 32), 32);
    let odd = |v: __m512i| _mm512_srai_epi64(v, 32);
    for q in 0..np {
        let cols = valid.saturating_sub(q * NR);
        if cols == 0 {
            break;
        }
        let mask = lane_mask(cols);
        // SAFETY: caller contract (`np·NR` channel values, `valid` bytes per output row).
        unsafe {
            let ld = |p: *const i32| _mm512_loadu_si512(p.add(q * NR) as *const __m512i);
            let (bias, corr, mv, sv) = (ld(chan[0]), ld(chan[1]), ld(chan[2]), ld(chan[3]));
            let off_e = _mm512_sub_epi64(even(bias), even(corr));
            let off_o = _mm512_sub_epi64(odd(bias), odd(corr));
            // `vpmuldq` reads the low `i32` of each lane: the even multipliers in place.
            let m_o = _mm512_srli_epi64(mv, 32);
            let s_e = _mm512_and_si512(sv, low);
            let s_o = _mm512_srli_epi64(sv, 32);
            // `2^(s-1)`, 0 for `s = 0`.
            let h_e = _mm512_srli_epi64(_mm512_sllv_epi64(one, s_e), 1);
            let h_o = _mm512_srli_epi64(_mm512_sllv_epi64(one, s_o), 1);
            for i in 0..m {
                let acc = _mm512_loadu_si512(block.as_ptr().add(i * GROUP_W + q * NR) as *const _);
                let xe = _mm512_add_epi64(even(acc), off_e);
                let xo = _mm512_add_epi64(odd(acc), off_o);
                let xe = _mm512_min_epi64(_mm512_max_epi64(xe, i32_lo), i32_hi);
                let xo = _mm512_min_epi64(_mm512_max_epi64(xo, i32_lo), i32_hi);
                let ve = round_clamp(_mm512_mul_epi32(xe, mv), h_e, s_e, &zlh);
                let vo = round_clamp(_mm512_mul_epi32(xo, m_o), h_o, s_o, &zlh);
                let v = _mm512_mask_blend_epi32(0xAAAA, ve, _mm512_slli_epi64(vo, 32));
                _mm512_mask_cvtepi32_storeu_epi8(out.add(i * ldc + q * NR) as *mut i8, mask, v);
            }
        }
    }
}

/// One block of k-quads: its length and whether the output already holds earlier blocks' sums.
#[derive(Clone, Copy)]
struct Kblock {
    quads: usize,
    accumulate: bool,
}

/// Dispatches on the row count (`1..=MR`) for `P` panels.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn micro_rows<const P: usize>(
    rows: usize,
    a: *const u8,
    lda: usize,
    b: *const u8,
    ldb: usize,
    kb: Kblock,
    c: *mut i32,
    ldc: usize,
) {
    // SAFETY: forwarded from `gemm_panels_vnni`.
    unsafe {
        match rows {
            1 => micro::<1, P>(a, lda, b, ldb, kb, c, ldc),
            2 => micro::<2, P>(a, lda, b, ldb, kb, c, ldc),
            3 => micro::<3, P>(a, lda, b, ldb, kb, c, ldc),
            4 => micro::<4, P>(a, lda, b, ldb, kb, c, ldc),
            5 => micro::<5, P>(a, lda, b, ldb, kb, c, ldc),
            _ => micro::<MR, P>(a, lda, b, ldb, kb, c, ldc),
        }
    }
}

/// Micro-kernel: `R` rows × `P` panels (16 channels each) over one block of k-quads, added to
/// the output when `kb.accumulate`. `b` points at the block in the first panel; panel `q` starts
/// `q·ldb` bytes later.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn micro<const R: usize, const P: usize>(
    a: *const u8,
    lda: usize,
    b: *const u8,
    ldb: usize,
    kb: Kblock,
    c: *mut i32,
    ldc: usize,
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    if kb.accumulate {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (q, v) in acc_r.iter_mut().enumerate() {
                // SAFETY: callers guarantee row `r` of the output block has `P·NR` columns.
                *v = unsafe { _mm512_loadu_si512(c.add(r * ldc + q * NR) as *const __m512i) };
            }
        }
    }
    for t in 0..kb.quads {
        // SAFETY: `t < kb.quads`, so the k-quad lies inside the block of each of the `P` panels
        // and inside every row of `a`.
        unsafe {
            let mut bv = [_mm512_setzero_si512(); P];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(b.add(q * ldb + t * QUAD_BYTES) as *const __m512i);
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let quad = (a.add(r * lda + 4 * t) as *const i32).read_unaligned();
                let av = _mm512_set1_epi32(quad);
                for (acc_rq, &v) in acc_r.iter_mut().zip(&bv) {
                    *acc_rq = _mm512_dpbusd_epi32(*acc_rq, av, v);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (q, &v) in acc_r.iter().enumerate() {
            // SAFETY: callers guarantee row `r` of the output block has `P·NR` columns from `c`.
            unsafe { _mm512_storeu_si512(c.add(r * ldc + q * NR) as *mut __m512i, v) };
        }
    }
}
