//! AVX2 kernels (x86-64 only; callers check `is_x86_feature_detected!("avx2")` first).
//!
//! Survey §3.3 (HAWQ-V3), Eq. 24: the INT32-accumulated integer products. int8: operands widened
//! to `i16`, `vpmaddwd`; int4: offset nibbles × `u8` with `vpmaddubsw` (exact, see `gemm`'s docs);
//! depthwise rows: `vpmullw` (exact, `|255·128| < 2^15`). Complexity as the callers.

use std::arch::x86_64::*;
use std::ops::Range;

use super::gemm::{View, NR};

/// Rows per int8 micro-kernel call (12 accumulator registers).
const MR: usize = 6;

/// Fills `out` (`[m, panels.len()·NR]` row-major) with `A16 · Wᵀ` for the given int8 panels.
/// `a16` is `[m, kp]` row-major `i16` (activation minus zero point, zero padded).
///
/// # Safety
/// The CPU must support AVX2; `view.bits == 8`, `a16.len() == m·kp`,
/// `out.len() == m·panels.len()·NR` and the panels must exist in `view`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm_panels(
    a16: &[i16],
    m: usize,
    view: &View,
    panels: Range<usize>,
    out: &mut [i32],
) {
    let kp = view.kp;
    let pairs = kp / 2;
    let width = panels.len() * NR;
    let panel_bytes = pairs * 32;
    assert!(view.bits == 8 && a16.len() == m * kp && out.len() == m * width);
    assert!(panels.end * panel_bytes <= view.data.len());
    for (pi, p) in panels.enumerate() {
        let b = view.data.as_ptr().add(p * panel_bytes);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(MR);
            let a = a16.as_ptr().add(i * kp);
            let c = out.as_mut_ptr().add(i * width + pi * NR);
            // SAFETY: `rows` rows of `a16` and `out` exist from row `i`; the panel holds `pairs`
            // k-pairs.
            unsafe {
                match rows {
                    1 => micro_i8::<1>(a, kp, b, pairs, c, width),
                    2 => micro_i8::<2>(a, kp, b, pairs, c, width),
                    3 => micro_i8::<3>(a, kp, b, pairs, c, width),
                    4 => micro_i8::<4>(a, kp, b, pairs, c, width),
                    5 => micro_i8::<5>(a, kp, b, pairs, c, width),
                    _ => micro_i8::<MR>(a, kp, b, pairs, c, width),
                }
            }
            i += rows;
        }
    }
}

/// int8 micro-kernel: `R` rows × 16 output channels over all k-pairs of one panel
/// (`vpmovsxbw` + `vpmaddwd`, exact).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn micro_i8<const R: usize>(
    a: *const i16,
    lda: usize,
    b: *const u8,
    pairs: usize,
    c: *mut i32,
    ldc: usize,
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for t in 0..pairs {
        // SAFETY: `t < pairs`, so the k-pair lies inside the panel and inside every row of `a`.
        unsafe {
            let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(t * 32) as *const __m128i));
            let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(t * 32 + 16) as *const __m128i));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let pair = (a.add(r * lda + 2 * t) as *const i32).read_unaligned();
                let av = _mm256_set1_epi32(pair);
                acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(av, b0));
                acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(av, b1));
            }
        }
    }
    store_rows(&acc, c, ldc);
}

#[target_feature(enable = "avx2")]
#[inline]
fn store_rows<const R: usize>(acc: &[[__m256i; 2]; R], c: *mut i32, ldc: usize) {
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: callers guarantee row `r` of the output block has 16 columns from `c`.
        unsafe {
            _mm256_storeu_si256(c.add(r * ldc) as *mut __m256i, acc_r[0]);
            _mm256_storeu_si256(c.add(r * ldc + 8) as *mut __m256i, acc_r[1]);
        }
    }
}

/// Rows per int4 micro-kernel call.
const MR_I4: usize = 4;

/// Fills `out` (`[m, panels.len()·NR]` row-major) with `Σ_k a8[i, k] · (W[j, k] + 8)` for the
/// given int4 panels (stored offset by 8, i.e. as unsigned nibbles). `a8` is `[m, kp]` row-major
/// unsigned activations, zero padded; the caller subtracts `8·Σa` and the zero-point term.
///
/// Products are formed with `vpmaddubsw` (u8 × i8 → i16 pair sums): with weights in `[0, 15]` a
/// pair sum is at most `2·255·15 = 7650` and two of them `15300`, far below the `i16` saturation
/// point, so this is exact; `vpmaddwd` with ones then widens to `i32`.
///
/// # Safety
/// The CPU must support AVX2; `view.bits == 4`, `a8.len() == m·kp`,
/// `out.len() == m·panels.len()·NR` and the panels must exist in `view`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm_panels_i4(
    a8: &[u8],
    m: usize,
    view: &View,
    panels: Range<usize>,
    out: &mut [i32],
) {
    let kp = view.kp;
    let steps = kp / 8;
    let width = panels.len() * NR;
    let panel_bytes = steps * 64;
    assert!(view.bits == 4 && kp.is_multiple_of(8) && a8.len() == m * kp && out.len() == m * width);
    assert!(panels.end * panel_bytes <= view.data.len());
    for (pi, p) in panels.enumerate() {
        let b = view.data.as_ptr().add(p * panel_bytes);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(MR_I4);
            let a = a8.as_ptr().add(i * kp);
            let c = out.as_mut_ptr().add(i * width + pi * NR);
            // SAFETY: `rows` rows of `a8` and `out` exist from row `i`; the panel holds `steps`
            // 8-k steps.
            unsafe {
                match rows {
                    1 => micro_i4::<1>(a, kp, b, steps, c, width),
                    2 => micro_i4::<2>(a, kp, b, steps, c, width),
                    3 => micro_i4::<3>(a, kp, b, steps, c, width),
                    _ => micro_i4::<MR_I4>(a, kp, b, steps, c, width),
                }
            }
            i += rows;
        }
    }
}

/// int4 micro-kernel: `R` rows × 16 output channels, 8 k per step (two k-quads of 32 bytes).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn micro_i4<const R: usize>(
    a: *const u8,
    lda: usize,
    b: *const u8,
    steps: usize,
    c: *mut i32,
    ldc: usize,
) {
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for s in 0..steps {
        // SAFETY: `s < steps`, so both quads lie inside the panel and inside every row of `a`.
        unsafe {
            let v0 = _mm256_loadu_si256(b.add(s * 64) as *const __m256i);
            let v1 = _mm256_loadu_si256(b.add(s * 64 + 32) as *const __m256i);
            // Low nibbles: channels 0..8, high nibbles: channels 8..16 (4 k per channel).
            let b00 = _mm256_and_si256(v0, mask);
            let b01 = _mm256_and_si256(_mm256_srli_epi16::<4>(v0), mask);
            let b10 = _mm256_and_si256(v1, mask);
            let b11 = _mm256_and_si256(_mm256_srli_epi16::<4>(v1), mask);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let row = a.add(r * lda + 8 * s);
                let a0 = _mm256_set1_epi32((row as *const i32).read_unaligned());
                let a1 = _mm256_set1_epi32((row.add(4) as *const i32).read_unaligned());
                let t0 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(a0, b00), _mm256_maddubs_epi16(a1, b10));
                let t1 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(a0, b01), _mm256_maddubs_epi16(a1, b11));
                acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(t0, ones));
                acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(t1, ones));
            }
        }
    }
    store_rows(&acc, c, ldc);
}

/// Depthwise accumulation of one output row for stride 1:
/// `acc[x] += w · src[x]` for `x < acc.len()`, with `src` the zero-point-corrected `i16` row.
///
/// # Safety
/// The CPU must support AVX2 and `src.len() >= acc.len()`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn axpy_i16_i32(acc: &mut [i32], src: &[i16], w: i16) {
    let n = acc.len();
    debug_assert!(src.len() >= n);
    let wv = _mm256_set1_epi16(w);
    let mut x = 0;
    while x + 16 <= n {
        // SAFETY: `x + 16 <= n <= src.len()`; products of |src| ≤ 255 and |w| ≤ 128 fit i16.
        unsafe {
            let s = _mm256_loadu_si256(src.as_ptr().add(x) as *const __m256i);
            let p = _mm256_mullo_epi16(s, wv);
            let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p));
            let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(p));
            let d0 = acc.as_mut_ptr().add(x) as *mut __m256i;
            let d1 = acc.as_mut_ptr().add(x + 8) as *mut __m256i;
            _mm256_storeu_si256(d0, _mm256_add_epi32(_mm256_loadu_si256(d0), lo));
            _mm256_storeu_si256(d1, _mm256_add_epi32(_mm256_loadu_si256(d1), hi));
        }
        x += 16;
    }
    for (a, &s) in acc[x..].iter_mut().zip(&src[x..n]) {
        *a += s as i32 * w as i32;
    }
}
