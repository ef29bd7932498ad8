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
const PR: usize = 4;

/// k-quads per cache block: `PR` panels × `KC` quads of weights (32 KiB) stay in L1 while
/// every row block of the activations runs over them.
const KC: usize = 128;

/// Bytes of one k-quad of one panel.
pub(super) const QUAD_BYTES: usize = 4 * NR;

/// Fills `out` (`[m, panels.len()·NR]` row-major) with `Σ_k a8[i, k] · W[j, k]` for the given
/// panels of the VNNI layout `w` (see the module docs). `a8` is `[m, kq]` row-major unsigned
/// activations, zero padded to `kq` (a multiple of 4); the caller applies the zero point.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn gemm_panels_vnni(
    a8: &[u8],
    m: usize,
    kq: usize,
    w: &[u8],
    panels: Range<usize>,
    out: &mut [i32],
) {
    let quads = kq / 4;
    let width = panels.len() * NR;
    let panel_bytes = quads * QUAD_BYTES;
    assert!(kq.is_multiple_of(4) && a8.len() == m * kq && out.len() == m * width);
    assert!(panels.end * panel_bytes <= w.len());
    let mut p = panels.start;
    while p < panels.end {
        let np = (panels.end - p).min(PR);
        let b = w.as_ptr().wrapping_add(p * panel_bytes);
        let col = (p - panels.start) * NR;
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
                let c = out.as_mut_ptr().wrapping_add(i * width + col);
                // SAFETY: `rows` rows of `a8` and `out` exist from row `i`; k-quads
                // `t0..t0 + tq` of `np` panels exist from panel `p` (and in every row of `a8`);
                // `out` has `np·NR` columns from `col`.
                unsafe {
                    match np {
                        1 => micro_rows::<1>(rows, a, kq, bk, panel_bytes, k, c, width),
                        2 => micro_rows::<2>(rows, a, kq, bk, panel_bytes, k, c, width),
                        3 => micro_rows::<3>(rows, a, kq, bk, panel_bytes, k, c, width),
                        _ => micro_rows::<PR>(rows, a, kq, bk, panel_bytes, k, c, width),
                    }
                }
                i += rows;
            }
            t0 += tq;
        }
        p += np;
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
