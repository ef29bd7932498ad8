//! Conformance tests over the quantizer and observer registries, bad-input handling, policies.

use mixprec_quant::methods::product_ec;
use mixprec_quant::observers::aciq;
use mixprec_quant::*;
use proptest::prelude::*;
use rand::Rng;

/// Seeded N(0, 1) samples (Box-Muller).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rng_from_seed(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// The bit widths each kind is tested at.
fn test_bits(kind: QuantKind) -> Vec<u8> {
    match kind.fixed_bits() {
        Some(b) => vec![b],
        None => vec![2, 3, 4, 6, 8],
    }
}

/// Lloyd-Max optimal MSE of a 2^b-level quantizer of N(0, 1) (Max 1960), b = 1..4.
const LLOYD_MAX_GAUSSIAN: [f64; 4] = [0.3634, 0.1175, 0.03455, 0.009497];
/// Slack over Lloyd-Max allowed for k-means on 4096 samples.
const KMEANS_SLACK: f64 = 1.1;
/// Sign binarization of N(0, 1): E(|x| - 1)² = 2 - 2·sqrt(2/π) = 0.4042.
const BINARY_MSE: f64 = 0.4042;

/// Upper bound on the MSE of `kind` at `bits` on 4096 N(0, 1) samples, per-tensor, symmetric.
/// Uniform grids: about Δ²/12 with Δ = 2·max/(2^b - 2), max ≈ 3.5; codebooks: their
/// theoretical optimum (Lloyd-Max) or measured values with ~15% headroom.
fn max_mse(kind: QuantKind, bits: u8) -> f64 {
    let i = [2u8, 3, 4, 6, 8]
        .iter()
        .position(|&b| b == bits)
        .unwrap_or(0);
    use QuantKind::*;
    match kind {
        Uniform => [0.80, 0.12, 0.022, 0.0012, 0.00008][i],
        UniformPow2 | FixedPoint => [0.37, 0.095, 0.024, 0.0015, 0.0001][i],
        Binary => BINARY_MSE * 1.05,
        ScaledBinary => LLOYD_MAX_GAUSSIAN[0] * 1.05,
        Ternary => 0.22,
        ScaledTernary => 0.20,
        // Magnitudes s·2^-j leave a gap between s/2 and s that extra bits never fill.
        PowerOfTwo => [0.9, 0.10, 0.045, 0.045, 0.045][i],
        Kmeans => match bits {
            2..=4 => LLOYD_MAX_GAUSSIAN[bits as usize - 1] * KMEANS_SLACK,
            6 => 0.0007,
            _ => 0.00005,
        },
        // bits per 2-wide sub-vector: half as many bits per element.
        Product | ProductEc => [0.37, 0.19, 0.10, 0.016, 0.001][i],
        Residual => [0.38, 0.26, 0.135, 0.047, 0.0135][i],
        EntropyMultibit => [0.165, 0.068, 0.030, 0.0048, 0.0002][i],
        // Checked against its own error bound in `min_bits_meets_its_bound`.
        MinBits => f64::INFINITY,
    }
}

fn weight_layout() -> TensorLayout {
    TensorLayout::weight(&[256, 16])
}

#[test]
fn every_quantizer_round_trips_within_its_bound() {
    let x = gaussian(4096, 1);
    let layout = weight_layout();
    for e in QUANTIZERS {
        for bits in test_bits(e.kind) {
            let s = QScheme::new(e.kind, bits, true, Granularity::Tensor);
            let q = quantize(&x, &layout, &s, 3).unwrap();
            assert_eq!(q.values.len(), x.len(), "{s}");
            assert!(q.values.iter().all(|v| v.is_finite()), "{s}");
            let mse = q.mse(&x);
            assert!(
                mse <= max_mse(e.kind, bits),
                "{s}: mse {mse} > {}",
                max_mse(e.kind, bits)
            );
            assert!(q.total_bits >= q.code_bits, "{s}");
            assert_eq!(q.scheme, s);
            // Deterministic for a seed.
            let again = quantize(&x, &layout, &s, 3).unwrap();
            assert_eq!(again.values, q.values, "{s} is not deterministic");
            assert_eq!(fake_quantize(&x, &layout, &s, 3).unwrap(), q.values);
        }
    }
}

#[test]
fn every_granularity_and_channel_axis_works() {
    // NCHW activation-like tensor, channel axis 1: [4, 8, 4, 4] = 512 values.
    let x = gaussian(512, 2);
    let layout = TensorLayout::new(vec![4, 8, 4, 4], 1);
    for e in QUANTIZERS {
        let bits = e.kind.fixed_bits().unwrap_or(3);
        let grans: &[Granularity] = if e.kind.tensor_granularity_only() {
            &[Granularity::Tensor]
        } else {
            &[
                Granularity::Tensor,
                Granularity::Channel,
                Granularity::Group(16),
            ]
        };
        for &g in grans {
            for symmetric in [true, false] {
                let s = QScheme::new(e.kind, bits, symmetric, g);
                let q = quantize(&x, &layout, &s, 5).unwrap();
                assert_eq!(q.values.len(), x.len(), "{s}");
                assert!(q.mse(&x) < 1.0, "{s}: mse {}", q.mse(&x));
            }
        }
    }
}

#[test]
fn uniform_error_is_step_squared_over_twelve() {
    // Inside the clip range the rounding error is ~uniform on [-Δ/2, Δ/2]: MSE ≈ Δ²/12.
    let x = gaussian(1 << 14, 4);
    let layout = TensorLayout::weight(&[16, 1024]);
    for bits in [4u8, 6, 8] {
        for symmetric in [true, false] {
            let s = QScheme::new(QuantKind::Uniform, bits, symmetric, Granularity::Channel);
            let q = quantize(&x, &layout, &s, 0).unwrap();
            let theory: f64 = q
                .scales
                .iter()
                .map(|&d| (d as f64).powi(2) / 12.0)
                .sum::<f64>()
                / 16.0;
            let ratio = q.mse(&x) / theory;
            assert!((0.85..1.15).contains(&ratio), "{s}: mse/(Δ²/12) = {ratio}");
        }
    }
}

#[test]
fn kmeans_beats_uniform_at_equal_bits() {
    let x = gaussian(4096, 6);
    let layout = weight_layout();
    for bits in [1u8, 2, 3, 4, 6] {
        let k = quantize(
            &x,
            &layout,
            &QScheme::new(QuantKind::Kmeans, bits, true, Granularity::Tensor),
            1,
        )
        .unwrap()
        .mse(&x);
        let asym = QScheme::new(QuantKind::Uniform, bits, false, Granularity::Tensor);
        let u = quantize(&x, &layout, &asym, 1).unwrap().mse(&x);
        assert!(k <= u, "bits {bits}: kmeans {k} > uniform-asym {u}");
        if bits >= 2 {
            let sym = QScheme::new(QuantKind::Uniform, bits, true, Granularity::Tensor);
            let u = quantize(&x, &layout, &sym, 1).unwrap().mse(&x);
            assert!(k <= u, "bits {bits}: kmeans {k} > uniform-sym {u}");
        }
    }
}

#[test]
fn min_bits_meets_its_bound_with_fewer_bits() {
    let x = gaussian(4096, 7);
    let layout = weight_layout();
    for bits in [3u8, 4, 6, 8] {
        let u = quantize(
            &x,
            &layout,
            &QScheme::new(QuantKind::Uniform, bits, true, Granularity::Tensor),
            0,
        )
        .unwrap();
        let m = quantize(
            &x,
            &layout,
            &QScheme::new(QuantKind::MinBits, bits, true, Granularity::Tensor),
            0,
        )
        .unwrap();
        // Default bound: twice the error of the full-width grid (the same grid as uniform-sym).
        assert!(m.mse(&x) <= 2.0 * u.mse(&x) * (1.0 + 1e-6), "bits {bits}");
        let avg = m.code_bits as f64 / x.len() as f64;
        assert!(avg < bits as f64, "bits {bits}: average code width {avg}");
    }
}

#[test]
fn stochastic_rounding_is_unbiased() {
    // Values in [0.05, 0.3] lie inside every codebook's span; nearest rounding is biased there,
    // stochastic rounding (Eq. 6 / 7) is not.
    let x = gaussian(2048, 8);
    let layout = TensorLayout::weight(&[128, 16]);
    let picked: Vec<usize> = (0..x.len())
        .filter(|&i| (0.05..=0.3).contains(&x[i]))
        .collect();
    let draws = 200;
    for e in QUANTIZERS.iter().filter(|e| e.kind.supports_stochastic()) {
        let bits = e.kind.fixed_bits().unwrap_or(3);
        let s = QScheme::new(e.kind, bits, true, Granularity::Tensor)
            .with_rounding(Rounding::Stochastic);
        let mut bias = 0.0f64;
        for seed in 0..draws {
            let q = fake_quantize(&x, &layout, &s, seed).unwrap();
            bias += picked.iter().map(|&i| (q[i] - x[i]) as f64).sum::<f64>();
        }
        let bias = bias / (draws as usize * picked.len()) as f64;
        assert!(bias.abs() < 0.01, "{s}: mean error {bias}");
        // The same scheme with nearest rounding is visibly biased for binary codebooks.
        if e.kind == QuantKind::Binary {
            let q = fake_quantize(
                &x,
                &layout,
                &QScheme {
                    rounding: Rounding::Nearest,
                    ..s
                },
                0,
            )
            .unwrap();
            let b: f64 =
                picked.iter().map(|&i| (q[i] - x[i]) as f64).sum::<f64>() / picked.len() as f64;
            assert!(b > 0.5, "nearest binary bias {b}");
        }
        // Different seeds give different draws.
        assert_ne!(
            fake_quantize(&x, &layout, &s, 1).unwrap(),
            fake_quantize(&x, &layout, &s, 2).unwrap()
        );
    }
}

#[test]
fn uniform_params_match_the_quantizer_and_observers() {
    let x = gaussian(1024, 9);
    let layout = TensorLayout::weight(&[8, 128]);
    for kind in [QuantKind::Uniform, QuantKind::UniformPow2] {
        for g in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(32),
        ] {
            let s = QScheme::new(kind, 4, false, g);
            let p = UniformParams::from_values(&x, &layout, &s).unwrap();
            let q = quantize(&x, &layout, &s, 0).unwrap();
            assert_eq!(p.scale, q.scales);
            let fq = p
                .fake_quantize(&x, &layout, Rounding::Nearest, &mut rng_from_seed(0))
                .unwrap();
            assert_eq!(fq, q.values);
        }
    }
    // From an observer's range: 8-bit asymmetric min-max on [-1, 3].
    let mut o = build_observer("min-max", &serde_json::Value::Null).unwrap();
    o.observe(&[-1.0, 3.0, 0.5]).unwrap();
    let (lo, hi) = o.range(8, false).unwrap();
    let p = UniformParams::from_range(lo, hi, 8, false).unwrap();
    assert_eq!((p.qmin, p.qmax), (0, 255));
    assert!((p.scale[0] - 4.0 / 255.0).abs() < 1e-7);
    assert_eq!(p.zero_point[0], 64); // round(1 / (4/255)) = round(63.75)
    assert_eq!(code_range(4, true), (-7, 7));
}

#[test]
fn product_ec_function_reduces_output_error() {
    let (rows, len, n) = (64, 16, 512);
    let w = gaussian(rows * len, 10);
    // Correlated inputs: x = z · M with a random mixing matrix.
    let z = gaussian(n * len, 11);
    let m = gaussian(len * len, 12);
    let x: Vec<f32> = (0..n)
        .flat_map(|s| {
            let (z, m) = (&z, &m);
            (0..len).map(move |j| {
                (0..len)
                    .map(|t| z[s * len + t] * m[t * len + j])
                    .sum::<f32>()
            })
        })
        .collect();
    let layout = TensorLayout::weight(&[rows, len]);
    let s = QScheme::new(QuantKind::ProductEc, 3, true, Granularity::Tensor);
    let plain = quantize(&w, &layout, &s, 0).unwrap();
    let cfg = product_ec::ProductEcConfig::default();
    let ec = product_ec::quantize_with_inputs(&w, &layout, &x, n, &s, &cfg, 0).unwrap();
    let e_plain = product_ec::output_error(&w, &plain.values, &layout, &x, n).unwrap();
    let e_ec = product_ec::output_error(&w, &ec.values, &layout, &x, n).unwrap();
    assert!(
        e_ec < 0.8 * e_plain,
        "output error: ec {e_ec}, plain {e_plain}"
    );
    // Wrong input width is an error, not a panic.
    assert!(matches!(
        product_ec::quantize_with_inputs(&w, &layout, &x[..n * 8], n, &s, &cfg, 0),
        Err(QuantError::InvalidArgument(_))
    ));
}

#[test]
fn observers_give_sane_ranges_on_gaussian_data() {
    let batches: Vec<Vec<f32>> = (0..10).map(|i| gaussian(10_000, 100 + i)).collect();
    let max_abs = batches.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    for e in OBSERVERS {
        let mut o = (e.build)(&serde_json::Value::Null).unwrap();
        assert_eq!(o.name(), e.name);
        for b in &batches {
            o.observe(b).unwrap();
        }
        for bits in [2u8, 4, 8] {
            let (lo, hi) = o.range(bits, true).unwrap();
            assert!(
                lo == -hi && hi > 0.0 && hi <= max_abs * 1.0001,
                "{} b{bits}: {hi}",
                e.name
            );
            let (lo, hi) = o.range(bits, false).unwrap();
            assert!(
                lo < 0.0 && hi > 0.0 && hi <= max_abs,
                "{} b{bits}: [{lo}, {hi}]",
                e.name
            );
        }
    }
    let range_of = |name: &str, config: serde_json::Value, bits: u8| {
        let mut o = build_observer(name, &config).unwrap();
        batches.iter().for_each(|b| o.observe(b).unwrap());
        o.range(bits, true).unwrap().1 as f64
    };
    // KL: inside (0, max] and clipping at 8 bits (TensorRT typically clips N(0,1) near 3-4.5σ).
    let kl = range_of("kl", serde_json::Value::Null, 8);
    assert!(kl > 2.0 && kl <= max_abs as f64, "kl clip {kl}");
    // With 8 levels per side (4 bits) KL clips well inside the range.
    let kl4 = range_of("kl", serde_json::Value::Null, 4);
    assert!(
        kl4 > 1.0 && kl4 < 0.9 * max_abs as f64,
        "kl clip at 4 bits {kl4}"
    );
    // ACIQ Gaussian on N(0, 1): α* ≈ 2.55 at 4 bits, 3.92 at 8 bits.
    let g = serde_json::json!({"distribution": "gaussian"});
    assert!((range_of("aciq", g.clone(), 4) - 2.55).abs() < 0.08);
    assert!((range_of("aciq", g, 8) - 3.92).abs() < 0.12);
    // The MSE observer minimises nearly the same objective: close to ACIQ's Gaussian clip.
    let mse4 = range_of("mse", serde_json::Value::Null, 4);
    assert!((mse4 - 2.55).abs() < 0.3, "mse clip at 4 bits {mse4}");
    // Percentile 99.99 of |x| for N(0,1) is 3.89.
    let p = range_of("percentile", serde_json::Value::Null, 8);
    assert!((p - 3.89).abs() < 0.2, "percentile {p}");
    assert!(aciq::laplace_clip(8, 1.0) > 9.8 && aciq::laplace_clip(8, 1.0) < 9.95);
}

// ---- bad input -------------------------------------------------------------------------------

fn flat(n: usize) -> TensorLayout {
    TensorLayout::flat(n)
}

#[test]
fn bad_bit_widths_are_errors() {
    for bits in [0u8, 17, 255] {
        let s = QScheme::new(QuantKind::Uniform, bits, false, Granularity::Tensor);
        assert!(matches!(s.validate(), Err(QuantError::BadBits { .. })));
        assert!(matches!(
            quantize(&[1.0], &flat(1), &s, 0),
            Err(QuantError::BadBits { .. })
        ));
        let mut o = build_observer("kl", &serde_json::Value::Null).unwrap();
        o.observe(&[1.0, 2.0]).unwrap();
        assert!(matches!(
            o.range(bits, true),
            Err(QuantError::BadBits { .. })
        ));
    }
    let ternary3 = QScheme::new(QuantKind::ScaledTernary, 3, true, Granularity::Tensor);
    let err = quantize(&[1.0], &flat(1), &ternary3, 0).unwrap_err();
    assert!(err.to_string().contains("always uses 2 bit"), "{err}");
    assert!("w0-uniform-sym-tensor".parse::<QScheme>().is_err());
    assert!(UniformParams::from_range(-1.0, 1.0, 17, true).is_err());
}

#[test]
fn empty_tensors_are_errors() {
    for e in QUANTIZERS {
        let s = QScheme::new(
            e.kind,
            e.kind.fixed_bits().unwrap_or(4),
            true,
            Granularity::Tensor,
        );
        assert!(
            matches!(
                quantize(&[], &flat(0), &s, 0),
                Err(QuantError::EmptyTensor { .. })
            ),
            "{s}"
        );
    }
    for e in OBSERVERS {
        let mut o = (e.build)(&serde_json::Value::Null).unwrap();
        assert!(
            matches!(o.observe(&[]), Err(QuantError::EmptyTensor { .. })),
            "{}",
            e.name
        );
        assert!(
            matches!(o.range(8, true), Err(QuantError::NoObservations { .. })),
            "{}",
            e.name
        );
    }
}

#[test]
fn non_finite_values_are_errors() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let x = [0.5, bad, 1.0];
        for e in QUANTIZERS {
            let s = QScheme::new(
                e.kind,
                e.kind.fixed_bits().unwrap_or(4),
                true,
                Granularity::Tensor,
            );
            match quantize(&x, &flat(3), &s, 0) {
                Err(QuantError::NonFinite { index: 1, .. }) => {}
                other => panic!("{s}: {other:?}"),
            }
        }
        for e in OBSERVERS {
            let mut o = (e.build)(&serde_json::Value::Null).unwrap();
            assert!(
                matches!(o.observe(&x), Err(QuantError::NonFinite { .. })),
                "{}",
                e.name
            );
        }
        assert!(UniformParams::from_range(bad, 1.0, 8, false).is_err());
    }
}

#[test]
fn group_size_must_divide_the_channel() {
    let s = QScheme::new(QuantKind::Uniform, 4, true, Granularity::Group(5));
    let x = gaussian(24, 0);
    let err = quantize(&x, &TensorLayout::weight(&[2, 12]), &s, 0).unwrap_err();
    assert!(
        matches!(err, QuantError::GroupSize { group: 5, len: 12 }),
        "{err}"
    );
    let zero = QScheme::new(QuantKind::Kmeans, 4, true, Granularity::Group(0));
    assert!(matches!(zero.validate(), Err(QuantError::GroupSize { .. })));
}

#[test]
fn layout_mismatches_are_errors() {
    let s = QScheme::new(QuantKind::Uniform, 4, true, Granularity::Channel);
    assert!(matches!(
        quantize(&[1.0, 2.0, 3.0], &TensorLayout::weight(&[2, 2]), &s, 0),
        Err(QuantError::ShapeMismatch {
            expected: 4,
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        quantize(&[1.0, 2.0], &TensorLayout::new(vec![2], 3), &s, 0),
        Err(QuantError::BadAxis { axis: 3, .. })
    ));
    // Unknown config fields are rejected.
    let kmeans = QScheme::new(QuantKind::Kmeans, 2, true, Granularity::Tensor);
    assert!(matches!(
        build_quantizer(&kmeans, &serde_json::json!({"iterations": 3})),
        Err(QuantError::Config { .. })
    ));
    assert!(build_quantizer(&kmeans, &serde_json::json!({"iters": 3})).is_ok());
}

#[test]
fn policy_with_unknown_layer_is_an_error() {
    let text = r#"{"version": 1, "layers": {
        "conv1": {"weight": {"bits": 4, "kind": "uniform", "granularity": "channel"}},
        "fc9": {"activation": {"bits": 8, "kind": "uniform", "symmetric": false}}}}"#;
    let p = Policy::from_json(text).unwrap();
    match p.validate(&["conv1", "fc"]) {
        Err(QuantError::UnknownLayer { layer, .. }) => assert_eq!(layer, "fc9"),
        other => panic!("{other:?}"),
    }
    p.validate(&["conv1", "fc9"]).unwrap();
    // Bad scheme inside a policy names the layer; wrong version and unknown fields fail too.
    let bad = text.replace("\"bits\": 4", "\"bits\": 0");
    let err = Policy::from_json(&bad).unwrap_err().to_string();
    assert!(err.contains("conv1") && err.contains("weight"), "{err}");
    assert!(matches!(
        Policy::from_json(&text.replace("\"version\": 1", "\"version\": 2")),
        Err(QuantError::PolicyVersion { found: 2, .. })
    ));
    assert!(Policy::from_json(&text.replace("\"weight\"", "\"weights\"")).is_err());
}

#[test]
fn policy_save_and_load() {
    let dir = std::env::temp_dir().join(format!("mixprec-quant-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.json");
    let mut p = Policy::new();
    p.set_weight("conv1", "w3-kmeans-sym-channel".parse().unwrap())
        .set_activation("conv1", "w8-uniform-asym-tensor".parse().unwrap());
    p.save(&path).unwrap();
    assert!(!dir.join("policy.json.tmp").exists());
    assert_eq!(Policy::load(&path).unwrap(), p);
    let missing = Policy::load(&dir.join("missing.json")).unwrap_err();
    assert!(missing.to_string().contains("missing.json"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Uniform symmetric per-channel quantization is idempotent and stays on its grid.
    #[test]
    fn uniform_is_idempotent(values in prop::collection::vec(-100f32..100.0, 12), bits in 2u8..=8) {
        let layout = TensorLayout::weight(&[3, 4]);
        let s = QScheme::new(QuantKind::Uniform, bits, true, Granularity::Channel);
        let once = quantize(&values, &layout, &s, 0).unwrap();
        let twice = fake_quantize(&once.values, &layout, &s, 0).unwrap();
        for (a, b) in once.values.iter().zip(&twice) {
            prop_assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0));
        }
        for (c, chunk) in once.values.chunks(4).enumerate() {
            for v in chunk {
                let q = v / once.scales[c];
                prop_assert!((q - q.round()).abs() < 1e-3);
            }
        }
    }
}
