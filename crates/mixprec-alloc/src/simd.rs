//! Vector kernels of the allocation tables (min-plus rows), kept apart from the solvers' logic,
//! and the dispatch that compiles a table builder twice: for AVX2 and portable.

/// Calls `$impl(args…)` compiled with AVX2 when the CPU has it (the same code, 4-lane vectors;
/// min and add are exact IEEE operations, so the values do not change), else the portable
/// build. Expands to `return …` in the calling function.
macro_rules! dispatch_avx2 {
    ($impl:path, ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) -> $ret {
                $impl($($arg),*)
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { avx2($($arg),*) };
            }
        }
        return $impl($($arg),*);
    }};
}
pub(crate) use dispatch_avx2;

/// `dst[j] = min(dst[j], src[j] + v)` over the common length (no NaN anywhere: the tables
/// hold sums and +inf); with AVX2, four lanes of `vminpd` at a time.
#[inline(always)]
pub(crate) fn min_add_into(dst: &mut [f64], src: &[f64], v: f64) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(dst: &mut [f64], src: &[f64], v: f64) {
            use std::arch::x86_64::*;
            let n = dst.len();
            let vv = _mm256_set1_pd(v);
            let mut j = 0;
            while j + 8 <= n {
                // SAFETY: j + 8 <= n = dst.len() = src.len().
                unsafe {
                    let (pd, ps) = (dst.as_mut_ptr().add(j), src.as_ptr().add(j));
                    let x = _mm256_add_pd(_mm256_loadu_pd(ps), vv);
                    let y = _mm256_add_pd(_mm256_loadu_pd(ps.add(4)), vv);
                    _mm256_storeu_pd(pd, _mm256_min_pd(_mm256_loadu_pd(pd), x));
                    _mm256_storeu_pd(pd.add(4), _mm256_min_pd(_mm256_loadu_pd(pd.add(4)), y));
                }
                j += 8;
            }
            for (slot, &s) in dst[j..].iter_mut().zip(&src[j..]) {
                *slot = slot.min(s + v);
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { avx2(dst, src, v) };
            return;
        }
    }
    for (slot, &s) in dst.iter_mut().zip(src) {
        *slot = slot.min(s + v);
    }
}

/// `min_j a[j] + b[j]` over the common length (with AVX2, eight lanes at a time; the
/// minimum of exact sums does not depend on the order).
pub(crate) fn min_sum(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(a: &[f64], b: &[f64]) -> f64 {
            use std::arch::x86_64::*;
            let n = a.len();
            let mut lo = _mm256_set1_pd(f64::INFINITY);
            let mut hi = lo;
            let mut j = 0;
            while j + 8 <= n {
                // SAFETY: j + 8 <= n = a.len() = b.len().
                unsafe {
                    let (pa, pb) = (a.as_ptr().add(j), b.as_ptr().add(j));
                    let x = _mm256_add_pd(_mm256_loadu_pd(pa), _mm256_loadu_pd(pb));
                    let y = _mm256_add_pd(_mm256_loadu_pd(pa.add(4)), _mm256_loadu_pd(pb.add(4)));
                    lo = _mm256_min_pd(lo, x);
                    hi = _mm256_min_pd(hi, y);
                }
                j += 8;
            }
            let mut lanes = [0.0f64; 4];
            // SAFETY: `lanes` holds four f64.
            unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_min_pd(lo, hi)) };
            let mut best = lanes.iter().fold(f64::INFINITY, |m, &v| m.min(v));
            for (x, y) in a[j..].iter().zip(&b[j..]) {
                best = best.min(x + y);
            }
            best
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(a, b) };
        }
    }
    a.iter()
        .zip(b)
        .fold(f64::INFINITY, |m, (x, y)| m.min(x + y))
}
