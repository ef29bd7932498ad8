//! Property tests of the integer kernels: packing round trips, dyadic requantization against an
//! f64 reference, AVX2 and AVX-512 VNNI against generic (bit-exact), convolution against a naive
//! 7-loop reference.

use mixprec_engine::kernels::pack::PackedBits;
use mixprec_engine::kernels::{
    conv2d_with, gemm, gemm_with, pack_bits, pack_int4_x8_i32, requantize, unpack_bits,
    unpack_int4_x8_i32, Activation, Backend, Conv2dParams, ConvWeights, Dyadic, KernelError,
    OutputRange, PackedI4, PackedI8, PackedWeights, MAX_K,
};
use proptest::prelude::*;

fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Generic];
    if Backend::Avx2.is_available() {
        b.push(Backend::Avx2);
    } else {
        eprintln!("AVX2 not available: only the generic backend is tested");
    }
    if Backend::Avx512Vnni.is_available() {
        b.push(Backend::Avx512Vnni);
    } else {
        eprintln!("AVX-512 VNNI not available: its backend is not tested");
    }
    b
}

/// Weights with extra weight on the extremes of the `bits`-bit range.
fn weight_values(bits: u32) -> impl Strategy<Value = i8> {
    let lo = -(1i32 << (bits - 1));
    let hi = (1i32 << (bits - 1)) - 1;
    prop_oneof![
        1 => Just(lo as i8),
        1 => Just(hi as i8),
        4 => (lo..=hi).prop_map(|v| v as i8),
    ]
}

fn u8_values() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0u8), 1 => Just(255u8), 4 => any::<u8>()]
}

/// `Σ_k (a[i,k] - zp)·w[j,k]` straight from row-major inputs.
fn naive_gemm<T: Activation>(a: &[T], m: usize, zp: i32, w: &[i8], n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            for kk in 0..k {
                c[i * n + j] += (a[i * k + kk].to_i32() - zp) * w[j * k + kk] as i32;
            }
        }
    }
    c
}

fn round_half_away(x: f64) -> f64 {
    x.round()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pack_round_trip(bits in 2u32..=8, seed in prop::collection::vec(any::<i8>(), 0..200)) {
        let shift = 8 - bits;
        let values: Vec<i8> = seed.iter().map(|&v| v >> shift).collect();
        let p = pack_bits(&values, bits).unwrap();
        prop_assert_eq!(p.as_bytes().len(), (values.len() * bits as usize).div_ceil(8));
        prop_assert_eq!(unpack_bits(&p), values.clone());
        let again = PackedBits::from_raw(bits, values.len(), p.as_bytes().to_vec()).unwrap();
        prop_assert_eq!(&again, &p);
        if bits == 4 {
            let words = pack_int4_x8_i32(&values).unwrap();
            prop_assert_eq!(words.len(), values.len().div_ceil(8));
            prop_assert_eq!(unpack_int4_x8_i32(&words, values.len()).unwrap(), values.clone());
            // Same nibble order as the byte stream: word t is bytes 4t..4t+4 little-endian.
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            prop_assert_eq!(&bytes[..p.as_bytes().len()], p.as_bytes());
        }
        if bits != 4 && !values.is_empty() {
            let w = PackedI8::from_packed_bits(&p, 1, values.len()).unwrap();
            prop_assert_eq!(w.to_row_major(), values);
        }
    }

    #[test]
    fn requant_within_one_lsb_of_f64(
        log_m in -20.0f64..4.0,
        acc in prop_oneof![any::<i32>(), -100_000i32..100_000, -2000i32..2000],
        zp in 0i32..=255,
    ) {
        let real = 2f64.powf(log_m);
        let d = Dyadic::from_real(real).unwrap();
        prop_assert!(d.multiplier() >= 1 << 30);
        prop_assert!(((d.to_f64() - real) / real).abs() <= 2f64.powi(-31));
        let reference = (round_half_away(acc as f64 * real) + zp as f64).clamp(0.0, 255.0);
        let got = d.requant_u8(acc, zp) as f64;
        prop_assert!((got - reference).abs() <= 1.0, "M={real} acc={acc} zp={zp}: {got} vs {reference}");
        let reference_i8 = (round_half_away(acc as f64 * real) + (zp - 128) as f64).clamp(-128.0, 127.0);
        prop_assert!((d.requant_i8(acc, zp - 128) as f64 - reference_i8).abs() <= 1.0);
    }

    #[test]
    fn requant_exact_for_dyadic_multipliers(
        m in 1i32..=i32::MAX, s in 0u32..=62, acc in -(1i32 << 21)..(1i32 << 21),
    ) {
        // acc·m < 2^52, so the f64 product is exact and so is the reference rounding.
        let d = Dyadic::new(m, s).unwrap();
        let exact = round_half_away(acc as f64 * m as f64 / 2f64.powi(s as i32));
        prop_assert_eq!(d.apply(acc) as f64, exact);
    }

    #[test]
    fn gemm_backends_match_naive(
        m in 1usize..14, n in 1usize..40, k in 1usize..80, zp in 0i32..=255,
        seed_a in prop::collection::vec(u8_values(), 14 * 80),
        seed_w in prop::collection::vec(weight_values(8), 40 * 80),
    ) {
        let a = &seed_a[..m * k];
        let w = &seed_w[..n * k];
        let w4: Vec<i8> = w.iter().map(|&x| x >> 4).collect();
        let p8 = PackedI8::new(w, n, k).unwrap();
        let p4 = PackedI4::new(&w4, n, k).unwrap();
        let expect8 = naive_gemm(a, m, zp, w, n, k);
        let expect4 = naive_gemm(a, m, zp, &w4, n, k);
        let a_i8: Vec<i8> = a.iter().map(|&x| (x as i32 - 128) as i8).collect();
        for b in backends() {
            prop_assert_eq!(&gemm_with(b, a, m, zp, &p8).unwrap(), &expect8, "{:?} int8", b);
            prop_assert_eq!(&gemm_with(b, a, m, zp, &p4).unwrap(), &expect4, "{:?} int4", b);
            // Shifting both activations and zero point by 128 leaves a - zp unchanged.
            prop_assert_eq!(&gemm_with(b, &a_i8, m, zp - 128, &p8).unwrap(), &expect8);
            prop_assert_eq!(&gemm_with(b, &a_i8, m, zp - 128, &p4).unwrap(), &expect4);
        }
    }

    #[test]
    fn conv_matches_naive_reference(
        batch in 1usize..3, groups in 1usize..4, cin_g in 1usize..4, cout_g in 1usize..4,
        h in 1usize..10, w in 1usize..10, kh in 1usize..4, kw in 1usize..4,
        strides in (1usize..4, 1usize..4), dils in (1usize..3, 1usize..3),
        pads in (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        depthwise in any::<bool>(), four_bit in any::<bool>(), zp in 0i32..=255,
        seed_x in prop::collection::vec(u8_values(), 2 * 9 * 81),
        seed_w in prop::collection::vec(weight_values(8), 9 * 9 * 9),
    ) {
        // Depthwise: groups = Cin, one input channel per group, channel multiplier cout_g.
        let (groups, cin_g) = if depthwise { (groups + 2, 1) } else { (groups, cin_g) };
        let cin = groups * cin_g;
        let cout = groups * cout_g;
        let bits = if four_bit { 4 } else { 8 };
        let params = Conv2dParams {
            strides: [strides.0, strides.1],
            pads: [pads.0, pads.1, pads.2, pads.3],
            dilations: [dils.0, dils.1],
            groups,
        };
        let fits = h + pads.0 + pads.2 > dils.0 * (kh - 1) && w + pads.1 + pads.3 > dils.1 * (kw - 1);
        let x = &seed_x[..batch * cin * h * w];
        let wt: Vec<i8> = seed_w[..cout * cin_g * kh * kw]
            .iter()
            .map(|&v| if four_bit { v >> 4 } else { v })
            .collect();
        let weights = ConvWeights::new(&wt, [cout, cin_g, kh, kw], groups, bits).unwrap();
        prop_assert_eq!(weights.is_depthwise(), cin_g == 1 && groups > 1);
        for b in backends() {
            let res = conv2d_with(b, x, [batch, cin, h, w], zp, &weights, &params);
            if !fits {
                prop_assert!(matches!(res, Err(KernelError::InvalidConv(_))));
                continue;
            }
            let out = res.unwrap();
            let expect = naive_conv(x, [batch, cin, h, w], zp, &wt, [cout, cin_g, kh, kw], &params);
            prop_assert_eq!(out.shape, expect.1);
            prop_assert_eq!(&out.data, &expect.0, "{:?}", b);
            // Signed activations shifted by 128 with the zero point give the same result.
            let xs: Vec<i8> = x.iter().map(|&v| (v as i32 - 128) as i8).collect();
            let signed = conv2d_with(b, &xs, [batch, cin, h, w], zp - 128, &weights, &params);
            prop_assert_eq!(&signed.unwrap().data, &expect.0, "{:?} i8", b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Wide rows so the vectorised depthwise path (16 outputs per step) and its tail both run.
    #[test]
    fn depthwise_wide_rows_match_naive(
        channels in 2usize..6, mult in 1usize..3, h in 1usize..6, w in 14usize..60,
        kh in 1usize..4, kw in 1usize..6, stride_w in 1usize..3, dil_w in 1usize..3,
        pads in (0usize..3, 0usize..4, 0usize..3, 0usize..4), zp in 0i32..=255,
        seed_x in prop::collection::vec(u8_values(), 5 * 5 * 59),
        seed_w in prop::collection::vec(weight_values(8), 10 * 3 * 5),
    ) {
        let params = Conv2dParams {
            strides: [1, stride_w],
            pads: [pads.0, pads.1, pads.2, pads.3],
            dilations: [1, dil_w],
            groups: channels,
        };
        prop_assume!(h + pads.0 + pads.2 >= kh && w + pads.1 + pads.3 > dil_w * (kw - 1));
        let x = &seed_x[..channels * h * w];
        let shape = [channels * mult, 1, kh, kw];
        let wt = &seed_w[..channels * mult * kh * kw];
        let weights = ConvWeights::new(wt, shape, channels, 8).unwrap();
        prop_assert!(weights.is_depthwise());
        let expect = naive_conv(x, [1, channels, h, w], zp, wt, shape, &params);
        for b in backends() {
            let out = conv2d_with(b, x, [1, channels, h, w], zp, &weights, &params).unwrap();
            prop_assert_eq!(&out.data, &expect.0, "{:?}", b);
        }
    }
}

/// The textbook 7-loop convolution (batch, out channel, out y, out x, in channel, ky, kx).
fn naive_conv(
    x: &[u8],
    [n, cin, h, w]: [usize; 4],
    zp: i32,
    wt: &[i8],
    [cout, cin_g, kh, kw]: [usize; 4],
    p: &Conv2dParams,
) -> (Vec<i32>, [usize; 4]) {
    let ho = (h + p.pads[0] + p.pads[2] - p.dilations[0] * (kh - 1) - 1) / p.strides[0] + 1;
    let wo = (w + p.pads[1] + p.pads[3] - p.dilations[1] * (kw - 1) - 1) / p.strides[1] + 1;
    let cout_g = cout / p.groups;
    let mut out = vec![0i32; n * cout * ho * wo];
    for b in 0..n {
        for oc in 0..cout {
            let g = oc / cout_g;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0i32;
                    for c in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * p.strides[0] + ky * p.dilations[0]) as isize
                                    - p.pads[0] as isize;
                                let ix = (ox * p.strides[1] + kx * p.dilations[1]) as isize
                                    - p.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi =
                                    ((b * cin + g * cin_g + c) * h + iy as usize) * w + ix as usize;
                                let wi = ((oc * cin_g + c) * kh + ky) * kw + kx;
                                acc += (x[xi] as i32 - zp) * wt[wi] as i32;
                            }
                        }
                    }
                    out[((b * cout + oc) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    (out, [n, cout, ho, wo])
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The VNNI int8 kernel equals the generic one bit for bit on shapes that exercise every
    /// row tail (M mod 6), K not a multiple of 4 and N not a multiple of 16 (partial panels and
    /// panel groups of 1–4), with full-range `u8`/`i8` activations and int8 weights.
    #[test]
    fn vnni_matches_generic(
        m in 1usize..20, n in 1usize..70, k in 1usize..300, zp in 0i32..=255,
        seed_a in prop::collection::vec(u8_values(), 19 * 299),
        seed_w in prop::collection::vec(weight_values(8), 69 * 299),
    ) {
        if !Backend::Avx512Vnni.is_available() {
            eprintln!("AVX-512 VNNI not available on this CPU: vnni_matches_generic skipped");
            return Ok(());
        }
        let a = &seed_a[..m * k];
        let w = &seed_w[..n * k];
        let p8 = PackedI8::new(w, n, k).unwrap();
        let generic = gemm_with(Backend::Generic, a, m, zp, &p8).unwrap();
        prop_assert_eq!(&generic, &naive_gemm(a, m, zp, w, n, k));
        prop_assert_eq!(&gemm_with(Backend::Avx512Vnni, a, m, zp, &p8).unwrap(), &generic);
        let a_i8: Vec<i8> = a.iter().map(|&x| (x as i32 - 128) as i8).collect();
        prop_assert_eq!(
            &gemm_with(Backend::Avx512Vnni, &a_i8, m, zp - 128, &p8).unwrap(),
            &generic
        );
        // int4 weights on the VNNI backend run the AVX2 int4 kernel, also bit-exact.
        let w4: Vec<i8> = w.iter().map(|&x| x >> 4).collect();
        let p4 = PackedI4::new(&w4, n, k).unwrap();
        prop_assert_eq!(
            &gemm_with(Backend::Avx512Vnni, a, m, zp, &p4).unwrap(),
            &gemm_with(Backend::Generic, a, m, zp, &p4).unwrap()
        );
    }
}

/// Long reductions: the VNNI kernel splits `K` into cache blocks of 512 and adds the partial
/// sums in the output; K = 1301 gives two full blocks and a ragged one (not a multiple of 4).
#[test]
fn vnni_long_k_blocks_match_generic() {
    if !Backend::Avx512Vnni.is_available() {
        eprintln!(
            "AVX-512 VNNI not available on this CPU: vnni_long_k_blocks_match_generic skipped"
        );
        return;
    }
    let (m, n, k) = (13, 70, 1301);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7919 % 256) as u8).collect();
    let w: Vec<i8> = (0..n * k)
        .map(|i| (i * 104_729 % 256) as u8 as i8)
        .collect();
    let p8 = PackedI8::new(&w, n, k).unwrap();
    for zp in [0, 91, 255] {
        let expect = naive_gemm(&a, m, zp, &w, n, k);
        assert_eq!(gemm_with(Backend::Generic, &a, m, zp, &p8).unwrap(), expect);
        assert_eq!(
            gemm_with(Backend::Avx512Vnni, &a, m, zp, &p8).unwrap(),
            expect
        );
    }
}

#[test]
fn best_backend_prefers_vnni() {
    let best = Backend::best();
    assert!(best.is_available());
    if Backend::Avx512Vnni.is_available() {
        assert_eq!(best, Backend::Avx512Vnni);
    } else if Backend::Avx2.is_available() {
        eprintln!("AVX-512 VNNI not available on this CPU: best backend is AVX2");
        assert_eq!(best, Backend::Avx2);
    } else {
        assert_eq!(best, Backend::Generic);
    }
}

#[test]
fn gemm_large_parallel_matches_generic() {
    // M·N·K ≈ 5.8e6 is above the threading threshold.
    let (m, n, k) = (3, 601, 3203);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7919 % 256) as u8).collect();
    let w: Vec<i8> = (0..n * k)
        .map(|i| (i * 104_729 % 256) as u8 as i8)
        .collect();
    let p8 = PackedI8::new(&w, n, k).unwrap();
    let w4: Vec<i8> = w.iter().map(|&x| x >> 4).collect();
    let p4 = PackedI4::new(&w4, n, k).unwrap();
    let best = gemm(&a, m, 77, &p8).unwrap();
    assert_eq!(best, naive_gemm(&a, m, 77, &w, n, k));
    assert_eq!(gemm_with(Backend::Generic, &a, m, 77, &p8).unwrap(), best);
    assert_eq!(
        gemm(&a, m, 77, &p4).unwrap(),
        naive_gemm(&a, m, 77, &w4, n, k)
    );
}

#[test]
fn accumulation_exact_at_max_k() {
    let k = MAX_K;
    let n = 3;
    let w = vec![-128i8; n * k];
    let p = PackedI8::new(&w, n, k).unwrap();
    for b in backends() {
        let hi = gemm_with(b, &vec![255u8; k], 1, 0, &p).unwrap();
        assert_eq!(hi, vec![-(k as i64 * 255 * 128) as i32; n]);
        let lo = gemm_with(b, &vec![0u8; k], 1, 255, &p).unwrap();
        assert_eq!(lo, vec![(k as i64 * 255 * 128) as i32; n]);
    }
    let p4 = PackedI4::new(&vec![-8i8; n * k], n, k).unwrap();
    for b in backends() {
        let hi = gemm_with(b, &vec![255u8; k], 1, 0, &p4).unwrap();
        assert_eq!(hi, vec![-(k as i32 * 255 * 8); n]);
        let lo = gemm_with(b, &vec![-128i8; k], 1, 127, &p4).unwrap();
        assert_eq!(lo, vec![k as i32 * 255 * 8; n]);
    }
    let too_long = PackedI8::new(&vec![0i8; k + 1], 1, k + 1).unwrap_err();
    assert!(matches!(too_long, KernelError::ReductionTooLong { .. }));
}

#[test]
fn depthwise_large_threaded_matches_naive() {
    // 24 channels × 3×3 taps × 112×112 outputs ≈ 2.7e6 per multiplier, 2 multipliers: threaded.
    let (c, h, w) = (24, 112, 112);
    let x: Vec<u8> = (0..c * h * w).map(|i| (i * 7 % 256) as u8).collect();
    let wt: Vec<i8> = (0..2 * c * 9).map(|i| (i * 11 % 256) as u8 as i8).collect();
    let params = Conv2dParams {
        pads: [1, 1, 1, 1],
        groups: c,
        ..Conv2dParams::default()
    };
    let weights = ConvWeights::new(&wt, [2 * c, 1, 3, 3], c, 8).unwrap();
    let expect = naive_conv(&x, [1, c, h, w], 9, &wt, [2 * c, 1, 3, 3], &params);
    for b in backends() {
        let out = conv2d_with(b, &x, [1, c, h, w], 9, &weights, &params).unwrap();
        assert_eq!(out.shape, [1, 2 * c, h, w]);
        assert_eq!(out.data, expect.0, "{b:?}");
    }
}

#[test]
fn zero_point_equals_row_sum_correction() {
    let (m, n, k) = (5, 21, 37);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 31 % 256) as u8).collect();
    let w: Vec<i8> = (0..n * k).map(|i| (i * 53 % 256) as u8 as i8).collect();
    let p = PackedI8::new(&w, n, k).unwrap();
    let zp = 131;
    let with_zp = gemm(&a, m, zp, &p).unwrap();
    let raw = gemm(&a, m, 0, &p).unwrap();
    for i in 0..m {
        for j in 0..n {
            assert_eq!(with_zp[i * n + j], raw[i * n + j] - zp * p.row_sums()[j]);
        }
    }
}

#[test]
fn gemm_then_requantize_end_to_end() {
    // y = requant(W·(x - zp)) with per-channel multipliers, checked against f64 arithmetic.
    let (n, k) = (4, 9);
    let x: Vec<u8> = (0..k).map(|i| (i * 29 % 256) as u8).collect();
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 13 % 15) as i8) - 7).collect();
    let p = PackedI4::new(&w, n, k).unwrap();
    let acc = gemm(&x, 1, 3, &p).unwrap();
    let scales = [0.01, 0.02, 0.005, 0.1];
    let mult: Vec<Dyadic> = scales
        .iter()
        .map(|&s| Dyadic::from_real(s).unwrap())
        .collect();
    let bias = [5, -5, 0, 100];
    let y: Vec<u8> = requantize(&acc, [1, n, 1], Some(&bias), &mult, OutputRange::u8(128)).unwrap();
    for j in 0..n {
        let real: f64 = (0..k)
            .map(|kk| (x[kk] as f64 - 3.0) * w[j * k + kk] as f64)
            .sum::<f64>();
        let expect = ((real + bias[j] as f64) * scales[j]).round() + 128.0;
        assert!((y[j] as f64 - expect.clamp(0.0, 255.0)).abs() <= 1.0);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let p = PackedI8::new(&[1, 2, 3, 4], 2, 2).unwrap();
    assert!(matches!(
        gemm(&[1u8, 2, 3], 2, 0, &p),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gemm(&[1i8, 2], 1, 128, &p),
        Err(KernelError::ZeroPointOutOfRange { .. })
    ));
    assert!(gemm(&[1u8, 2], 1, -1, &p).is_err());
    let wt = ConvWeights::new(&[1; 2 * 3 * 3 * 3], [2, 3, 3, 3], 1, 8).unwrap();
    let x = vec![0u8; 3 * 2 * 2];
    let params = Conv2dParams::default();
    assert!(matches!(
        conv2d_with(Backend::Generic, &x, [1, 3, 2, 2], 0, &wt, &params),
        Err(KernelError::InvalidConv(_))
    ));
    let wrong_groups = Conv2dParams {
        groups: 3,
        ..params
    };
    assert!(conv2d_with(
        Backend::Generic,
        &[0u8; 27],
        [1, 3, 3, 3],
        0,
        &wt,
        &wrong_groups
    )
    .is_err());
    assert!(ConvWeights::new(&[8; 4], [1, 1, 2, 2], 1, 4).is_err());
    assert!(ConvWeights::new(&[1; 4], [2, 1, 2, 1], 3, 8).is_err());
}
