//! The fused GEMM + dyadic requantization (`gemm_requantize_with`, survey §3.3, HAWQ-V3 Eq. 24)
//! must equal `requantize(gemm(..))` code for code on every backend: random multipliers and
//! shifts (0..=62), zero points, clamp ranges, biases up to the `i32` extremes (the saturating
//! bias add), exact rounding ties, partial panels and the multi-threaded split.

use mixprec_engine::kernels::{
    gemm_requantize_with, gemm_with, requantize, Activation, Dyadic, OutputRange, PackedI4,
    PackedI8, PackedWeights,
};
use mixprec_engine::Backend;
use proptest::prelude::*;

fn backends() -> Vec<Backend> {
    [Backend::Generic, Backend::Avx2, Backend::Avx512Vnni]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

/// Reference: the generic GEMM followed by the generic requantization.
#[allow(clippy::too_many_arguments)]
fn reference<T: Activation, O: Activation, W: PackedWeights>(
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
    bias: Option<&[i32]>,
    mults: &[Dyadic],
    range: OutputRange,
) -> Vec<O> {
    let acc = gemm_with(Backend::Generic, a, m, a_zp, w).unwrap();
    requantize::<O>(&acc, [m, w.n(), 1], bias, mults, range).unwrap()
}

/// Checks every backend against [`reference`].
#[allow(clippy::too_many_arguments)]
fn check_all<T: Activation, O: Activation + PartialEq + std::fmt::Debug, W: PackedWeights>(
    a: &[T],
    m: usize,
    a_zp: i32,
    w: &W,
    bias: Option<&[i32]>,
    mults: &[Dyadic],
    range: OutputRange,
) -> Result<(), TestCaseError> {
    let expect: Vec<O> = reference(a, m, a_zp, w, bias, mults, range);
    for b in backends() {
        let got: Vec<O> = gemm_requantize_with(b, a, m, a_zp, w, bias, mults, range).unwrap();
        prop_assert_eq!(&got, &expect, "backend {:?}", b);
    }
    Ok(())
}

fn dyadic() -> impl Strategy<Value = Dyadic> {
    prop_oneof![
        // Small shifts make exact ties (`x.5`) frequent.
        (1i32..8, 0u32..4),
        (1i32..=i32::MAX, 0u32..=62),
        (1i32 << 30..=i32::MAX, 20u32..=40),
    ]
    .prop_map(|(m, s)| Dyadic::new(m, s).unwrap())
}

fn bias_value() -> impl Strategy<Value = i32> {
    prop_oneof![
        -5000i32..5000,
        Just(i32::MAX),
        Just(i32::MIN),
        (i32::MAX - 100_000)..=i32::MAX,
        i32::MIN..=(i32::MIN + 100_000),
        any::<i32>(),
    ]
}

/// A clamp range inside `[lo, hi]` and a zero point (sometimes far outside it).
fn out_range(lo: i32, hi: i32) -> impl Strategy<Value = OutputRange> {
    (lo..=hi, lo..=hi, prop_oneof![lo..=hi, -100_000i32..100_000]).prop_map(|(x, y, zp)| {
        OutputRange {
            zero_point: zp,
            qmin: x.min(y),
            qmax: x.max(y),
        }
    })
}

type Case = (usize, usize, usize, Vec<u8>, Vec<i8>, Vec<i32>, Vec<Dyadic>);

/// `(m, n, k, activations, weights, bias, per-channel multipliers)`.
fn case(max_m: usize, max_n: usize, max_k: usize) -> impl Strategy<Value = Case> {
    (1..=max_m, 1..=max_n, 1..=max_k).prop_flat_map(|(m, n, k)| {
        (
            Just(m),
            Just(n),
            Just(k),
            prop::collection::vec(any::<u8>(), m * k),
            prop::collection::vec(any::<i8>(), n * k),
            prop::collection::vec(bias_value(), n),
            prop::collection::vec(dyadic(), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn fused_u8_matches_requantize(
        (m, n, k, a, w, bias, mults) in case(14, 70, 300),
        a_zp in 0i32..=255,
        range in out_range(0, 255),
        per_channel in any::<bool>(),
        with_bias in any::<bool>(),
    ) {
        let w = PackedI8::new(&w, n, k).unwrap();
        let mults = if per_channel { &mults[..] } else { &mults[..1] };
        let bias = with_bias.then_some(&bias[..]);
        check_all::<u8, u8, _>(&a, m, a_zp, &w, bias, mults, range)?;
    }

    #[test]
    fn fused_i8_in_and_out_matches_requantize(
        (m, n, k, a, w, bias, mults) in case(9, 40, 200),
        a_zp in -128i32..=127,
        range in out_range(-128, 127),
    ) {
        let a: Vec<i8> = a.iter().map(|&x| x as i8).collect();
        let w = PackedI8::new(&w, n, k).unwrap();
        check_all::<i8, i8, _>(&a, m, a_zp, &w, Some(&bias), &mults, range)?;
    }

    #[test]
    fn fused_int4_weights_match_requantize(
        (m, n, k, a, w, bias, mults) in case(7, 40, 100),
        a_zp in 0i32..=255,
        range in out_range(0, 255),
    ) {
        let w: Vec<i8> = w.iter().map(|&x| x >> 4).collect();
        let w = PackedI4::new(&w, n, k).unwrap();
        check_all::<u8, u8, _>(&a, m, a_zp, &w, Some(&bias), &mults, range)?;
    }
}

/// Deterministic pseudo-random bytes.
fn lcg(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 56) as u8
        })
        .collect()
}

/// Large enough for the threaded split (`M·N·K` above the threshold), with a partial last panel
/// and a `K` spanning several cache blocks; the `i32` output is checked too.
#[test]
fn fused_threaded_partial_panels_match_requantize() {
    let (m, n, k) = (37, 333, 1030);
    let a = lcg(m * k, 3);
    let w: Vec<i8> = lcg(n * k, 4).into_iter().map(|b| b as i8).collect();
    let w = PackedI8::new(&w, n, k).unwrap();
    let bias: Vec<i32> = (0..n as i32).map(|j| (j % 17 - 8) * 1000).collect();
    let mults: Vec<Dyadic> = (0..n)
        .map(|j| Dyadic::from_real(2e-4 * (1.0 + (j % 5) as f64)).unwrap())
        .collect();
    let range = OutputRange::u8(3);
    let expect_acc = gemm_with(Backend::Generic, &a, m, 77, &w).unwrap();
    let expect: Vec<u8> = requantize(&expect_acc, [m, n, 1], Some(&bias), &mults, range).unwrap();
    // Not all saturated: the test would pass trivially otherwise.
    assert!(expect.iter().any(|&x| x != 0 && x != 255));
    for b in backends() {
        assert_eq!(gemm_with(b, &a, m, 77, &w).unwrap(), expect_acc, "{b:?}");
        let got: Vec<u8> =
            gemm_requantize_with(b, &a, m, 77, &w, Some(&bias), &mults, range).unwrap();
        assert_eq!(got, expect, "{b:?}");
    }
}

/// Hand-checked ties and saturation: `acc · 1/2` rounds half away from zero; a bias of
/// `i32::MAX` saturates before the multiply.
#[test]
fn fused_hand_checked_ties_and_saturation() {
    // A = [[1, 2, 3]], zp = 0; W rows [1, 0, 0], [0, 1, 1], [-1, 0, 0], [1, 1, 1]
    let a = [1u8, 2, 3];
    let w = PackedI8::new(&[1, 0, 0, 0, 1, 1, -1, 0, 0, 1, 1, 1], 4, 3).unwrap();
    // acc = [1, 5, -1, 6]; bias = [0, 0, 0, MAX] -> [1, 5, -1, MAX]
    let half = Dyadic::new(1, 1).unwrap();
    let bias = [0, 0, 0, i32::MAX];
    let range = OutputRange::i8(0);
    // 0.5 -> 1, 2.5 -> 3, -0.5 -> -1, (2^31 - 1)/2 -> 127 after the clamp
    let expect: Vec<i8> = vec![1, 3, -1, 127];
    for b in backends() {
        let got: Vec<i8> =
            gemm_requantize_with(b, &a, 1, 0, &w, Some(&bias), &[half], range).unwrap();
        assert_eq!(got, expect, "{b:?}");
    }
    // Wrong-length multipliers and an output range outside the type are errors.
    let two = [half, half];
    assert!(gemm_requantize_with::<u8, u8, _>(
        Backend::Generic,
        &a,
        1,
        0,
        &w,
        None,
        &two,
        OutputRange::u8(0)
    )
    .is_err());
    assert!(gemm_requantize_with::<u8, u8, _>(
        Backend::best(),
        &a,
        1,
        0,
        &w,
        None,
        &[half],
        OutputRange::i8(0)
    )
    .is_err());
}

/// Several callers at once (the worker pool serves one, the others fall back to scoped threads)
/// and repeated calls (parts taken back from workers that were not scheduled in time) all give
/// the generic result.
#[test]
fn concurrent_threaded_calls_match_generic() {
    let (m, n, k) = (16, 300, 1024);
    let a = lcg(m * k, 5);
    let w: Vec<i8> = lcg(n * k, 6).into_iter().map(|b| b as i8).collect();
    let w8 = PackedI8::new(&w, n, k).unwrap();
    let w4: Vec<i8> = w.iter().map(|&x| x >> 4).collect();
    let w4 = PackedI4::new(&w4, n, k).unwrap();
    let expect8 = gemm_with(Backend::Generic, &a, m, 9, &w8).unwrap();
    let expect4 = gemm_with(Backend::Generic, &a, m, 9, &w4).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(gemm_with(Backend::best(), &a, m, 9, &w8).unwrap(), expect8);
                    assert_eq!(gemm_with(Backend::best(), &a, m, 9, &w4).unwrap(), expect4);
                }
            });
        }
    });
}
