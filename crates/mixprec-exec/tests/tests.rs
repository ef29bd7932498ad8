//! Integration tests of the executor on the real models and data (from `$MIXPREC_DATA`).

use candle_core::Tensor;
use mixprec_data::{
    data_dir, load_reference_manifest, load_reference_outputs, reference_dir, Dataset, DatasetKind,
    Preprocess, Split,
};
use mixprec_exec::{evaluate, Executor};
use mixprec_graph::load_onnx;

fn exec(model: &str) -> Executor {
    let g = load_onnx(data_dir().join("models").join(model)).unwrap();
    let mut e = Executor::new(g).unwrap();
    e.free_batch_dim();
    e
}

/// Logits within 1e-4 relative (to the largest reference magnitude per row) of ONNX Runtime.
fn check_against_ort(model: &str) {
    let dir = reference_dir();
    let manifest = load_reference_manifest(&dir).unwrap();
    let entry = manifest.entry(model).unwrap();
    let (shape, x) = entry.inputs(&data_dir()).unwrap();
    let (oshape, want) = load_reference_outputs(dir.join(&entry.output_file)).unwrap();
    let e = exec(model);
    let got = e
        .predict(&x, &shape[1..], None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let cols = oshape[1];
    let mut worst = 0f32;
    for (g, w) in got.chunks(cols).zip(want.chunks(cols)) {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a - b).abs() / scale);
        }
        assert_eq!(mixprec_data::argmax(g), mixprec_data::argmax(w));
    }
    assert!(worst < 1e-4, "{model}: worst relative difference {worst}");
    eprintln!("{model}: worst relative difference vs ONNX Runtime {worst:.2e}");
}

#[test]
fn mnist8_matches_onnx_runtime() {
    check_against_ort("mnist-8.onnx");
}

#[test]
fn resnet8_matches_onnx_runtime() {
    check_against_ort("resnet8-cifar10.onnx");
}

#[test]
fn mobilenet_matches_onnx_runtime() {
    check_against_ort("vww-mobilenetv1-96.onnx");
}

#[test]
fn mnist8_full_test_accuracy_is_98_91() {
    let data = Dataset::load(DatasetKind::Mnist, Split::Test, Preprocess::Raw255).unwrap();
    let r = evaluate(&exec("mnist-8.onnx"), &data, 500, None, &mut |_, _| {}).unwrap();
    assert_eq!(r.correct, 9891, "{r:?}");
}

#[test]
fn resnet8_full_test_accuracy_is_75_48() {
    let data = Dataset::load(DatasetKind::Cifar10, Split::Test, Preprocess::Raw255).unwrap();
    let r = evaluate(
        &exec("resnet8-cifar10.onnx"),
        &data,
        250,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.correct, 7548, "{r:?}");
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let e = exec("resnet8-cifar10.onnx");
    let x = Tensor::zeros(
        (2, 3, 31, 32),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = e.forward(&[x]).err().unwrap().to_string();
    assert!(
        err.contains("'input'") && err.contains("[2, 3, 31, 32]"),
        "{err}"
    );
}
