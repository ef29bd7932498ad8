//! Per-layer latency profiler on real models (from `$MIXPREC_DATA`): completeness of the table,
//! batch scaling, and the round trip into the allocator's `latency` cost model.

use mixprec_alloc::costs::latency::LatencyLut;
use mixprec_alloc::{cost_model, BitOption, LayerInfo};
use mixprec_data::data_dir;
use mixprec_engine::profile::{
    profile_layers, KernelKind, LatencyProfile, ProfileConfig, FP32_KEY,
};
use mixprec_engine::Backend;
use mixprec_graph::{load_onnx, model_stats, Graph};

fn model(name: &str) -> Graph {
    let p = data_dir().join("models").join(name);
    load_onnx(&p).unwrap_or_else(|e| panic!("loading {}: {e}", p.display()))
}

fn quick(batch: usize) -> ProfileConfig {
    ProfileConfig {
        batch,
        warmup: 1,
        reps: 3,
        time_box_ms: 200.0,
        ..ProfileConfig::default()
    }
}

const OPTIONS: [(u32, u32); 3] = [(2, 8), (4, 8), (8, 8)];
const KEYS: [&str; 4] = ["w2a8", "w4a8", "w8a8", FP32_KEY];

fn check_complete(p: &LatencyProfile, g: &Graph) {
    let layers = g.layers();
    assert_eq!(p.layers.len(), layers.len());
    assert_eq!(p.options, KEYS);
    for (lp, l) in p.layers.iter().zip(&layers) {
        assert_eq!(lp.name, l.name);
        assert_eq!(lp.times.len(), KEYS.len(), "{}: {:?}", lp.name, lp.times);
        for key in KEYS {
            let t = &lp.times[key];
            assert!(
                t.ms.is_finite() && t.ms > 0.0 && t.min_ms > 0.0 && t.min_ms <= t.ms,
                "{} {key}: {t:?}",
                lp.name
            );
            assert!(t.reps >= 1 && t.reps <= 3, "{} {key}: {t:?}", lp.name);
        }
        // The engine's kernel choice: the fast executor (AVX-512 VNNI) runs every width on its
        // int8 kernel; the reference executor runs int4 only for 4-bit weights.
        let int4 = if Backend::Avx512Vnni.is_available() {
            KernelKind::Int8
        } else {
            KernelKind::Int4
        };
        assert_eq!(lp.times["w4a8"].kernel, int4);
        assert_eq!(lp.times["w2a8"].kernel, KernelKind::Int8);
        assert_eq!(lp.times["w8a8"].kernel, KernelKind::Int8);
        assert_eq!(lp.times[FP32_KEY].kernel, KernelKind::Fp32);
    }
}

#[test]
fn mnist8_profile_feeds_the_latency_cost_model() {
    let g = model("mnist-8.onnx");
    let p = profile_layers(&g, &OPTIONS, &quick(1)).unwrap();
    check_complete(&p, &g);

    // MACs of the profiled workloads are the model's MACs.
    let st = model_stats(&g).unwrap();
    for (lp, ls) in p.layers.iter().zip(&st.layers) {
        assert_eq!(lp.macs, ls.macs, "{}", lp.name);
    }
    assert!(p.meta.batch == 1 && p.meta.reps == 3 && !p.meta.cpu.is_empty());
    assert!(p.meta.date.starts_with("20") && p.meta.date.ends_with('Z'));

    // The LUT JSON parses as the allocator's LUT type and keeps every value.
    let json = p.lut_json();
    let lut: LatencyLut = serde_json::from_str(&json).unwrap();
    assert_eq!(lut.layers.len(), p.layers.len());
    for lp in &p.layers {
        for key in KEYS {
            assert_eq!(lut.layers[&lp.name][key], lp.times[key].ms);
        }
    }
    // The full profile (with metadata) round-trips too.
    let full: LatencyProfile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(full, p);

    // The `latency` cost model builds a [layer × option] table from it.
    let lut_value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let cm = cost_model("latency", &serde_json::json!({ "inline": lut_value })).unwrap();
    let infos: Vec<LayerInfo> = st
        .layers
        .iter()
        .map(|l| LayerInfo::new(l.name.clone(), l.params, l.macs, l.input_elems))
        .collect();
    let opts: Vec<BitOption> = [(2, 8), (4, 8), (8, 8), (32, 32)]
        .iter()
        .map(|&(w, a)| BitOption::new(w, a))
        .collect();
    let table = cm.table(&infos, &opts).unwrap();
    assert_eq!((table.rows(), table.cols()), (infos.len(), opts.len()));
    for (i, lp) in p.layers.iter().enumerate() {
        for (j, key) in KEYS.iter().enumerate() {
            assert_eq!(table.get(i, j), lp.times[*key].ms);
        }
    }
    // An option the profile lacks is reported by the cost model, naming layer and key.
    let e = cm
        .table(&infos, &[BitOption::new(6, 8)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("w6a8") && e.contains(&infos[0].name), "{e}");
}

#[test]
fn batch_scales_the_workload() {
    let g = model("mnist-8.onnx");
    let one = profile_layers(&g, &[(8, 8)], &quick(1)).unwrap();
    let four = profile_layers(&g, &[(8, 8)], &quick(4)).unwrap();
    for (a, b) in one.layers.iter().zip(&four.layers) {
        assert_eq!(b.macs, 4 * a.macs, "{}", a.name);
    }
    assert_eq!(four.meta.batch, 4);
}

#[test]
fn depthwise_layers_of_mobilenet() {
    let g = model("vww-mobilenetv1-96.onnx");
    let p = profile_layers(&g, &[(4, 8), (8, 8)], &quick(1)).unwrap();
    assert_eq!(p.layers.len(), g.layers().len());
    let dw: Vec<_> = p
        .layers
        .iter()
        .filter(|l| l.workload.starts_with("depthwise"))
        .collect();
    // vww-mobilenetv1-96 has 13 depthwise 3x3 convolutions.
    assert_eq!(dw.len(), 13, "{:?}", p.layers);
    for l in &p.layers {
        for key in ["w4a8", "w8a8", FP32_KEY] {
            let t = &l.times[key];
            assert!(t.ms > 0.0 && t.min_ms > 0.0, "{} {key}: {t:?}", l.name);
        }
    }
    let lut = p.lut();
    for l in &dw {
        assert_eq!(lut.layers[&l.name].len(), 3, "{}", l.name);
    }
    // Speed against fp32 is measured by `mixprec profile` (BENCHMARKS.md), not asserted here.
    if Backend::Avx512Vnni.is_available() {
        for l in &dw {
            assert_eq!(l.times["w8a8"].kernel, KernelKind::Int8, "{}", l.name);
        }
    }
}

#[test]
fn bad_options_and_settings_are_errors() {
    let g = model("mnist-8.onnx");
    let e = profile_layers(&g, &[(16, 16)], &quick(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("w16a16"), "{e}");
    let e = profile_layers(&g, &[(8, 32)], &quick(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("w8a32"), "{e}");
    let cfg = ProfileConfig {
        reps: 0,
        ..quick(1)
    };
    let e = profile_layers(&g, &[(8, 8)], &cfg).unwrap_err().to_string();
    assert!(e.contains("reps"), "{e}");
    let cfg = ProfileConfig {
        batch: 0,
        ..quick(1)
    };
    assert!(profile_layers(&g, &[(8, 8)], &cfg).is_err());
}
