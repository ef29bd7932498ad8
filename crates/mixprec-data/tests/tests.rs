//! Integration tests of mixprec-data: hand-made files in temp dirs, error paths, and the real
//! shared data set files (`$MIXPREC_DATA`, default `../shared/data`).

use std::io::Write;
use std::path::Path;

use mixprec_data::formats::{encode_idx_images, encode_idx_labels, read_cifar10, read_idx_images};
use mixprec_data::{
    calibration_subset, data_dir, load_reference_manifest, load_reference_outputs,
    nearest_upsample, reference_dir, top1_accuracy, DataError, Dataset, DatasetKind, Preprocess,
    ReferenceRecipe, Split, DATA_HINT,
};
use sha2::{Digest, Sha256};

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes a tiny MNIST-like folder: `n` images of 2×3 with pixel value `i*10 + j`.
fn write_tiny_mnist(root: &Path, folder: &str, n: usize, gzipped: bool, n_labels: usize) {
    let dir = root.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let px: Vec<u8> = (0..n)
        .flat_map(|i| (0..6).map(move |j| (i * 10 + j) as u8))
        .collect();
    let img = encode_idx_images(n, 2, 3, &px).unwrap();
    let labels: Vec<u8> = (0..n_labels).map(|i| (i % 10) as u8).collect();
    let lab = encode_idx_labels(&labels).unwrap();
    let (img, lab, ext) = if gzipped {
        (gz(&img), gz(&lab), ".gz")
    } else {
        (img, lab, "")
    };
    std::fs::write(dir.join(format!("t10k-images-idx3-ubyte{ext}")), img).unwrap();
    std::fs::write(dir.join(format!("t10k-labels-idx1-ubyte{ext}")), lab).unwrap();
}

fn cifar_bytes(n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n * 3073);
    for i in 0..n {
        b.push((i % 10) as u8);
        for ch in 0..3 {
            b.extend((0..1024).map(|p| ((p + 7 * ch + i) % 256) as u8));
        }
    }
    b
}

#[test]
fn tiny_idx_raw_and_gz_load_identically() {
    for gzipped in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        write_tiny_mnist(tmp.path(), "mnist", 4, gzipped, 4);
        let d = Dataset::load_from(
            tmp.path(),
            DatasetKind::Mnist,
            Split::Test,
            Preprocess::Raw255,
        )
        .unwrap();
        assert_eq!(d.shape(), [4, 1, 2, 3]);
        assert_eq!(d.labels, vec![0, 1, 2, 3]);
        assert_eq!(d.image(2).unwrap(), &[20.0, 21.0, 22.0, 23.0, 24.0, 25.0]);
        let u = Dataset::load_from(
            tmp.path(),
            DatasetKind::Mnist,
            Split::Test,
            Preprocess::Unit,
        )
        .unwrap();
        assert_eq!(u.images[5], 5.0 / 255.0);
    }
}

#[test]
fn gzip_detected_by_magic_not_extension() {
    let tmp = tempfile::tempdir().unwrap();
    let img = encode_idx_images(1, 2, 2, &[1, 2, 3, 4]).unwrap();
    // A gzipped file without .gz, and a raw file named .gz.
    let a = tmp.path().join("plain-name");
    std::fs::write(&a, gz(&img)).unwrap();
    let b = tmp.path().join("raw.gz");
    std::fs::write(&b, &img).unwrap();
    assert_eq!(read_idx_images(&a).unwrap().data, vec![1, 2, 3, 4]);
    assert_eq!(read_idx_images(&b).unwrap().data, vec![1, 2, 3, 4]);
}

#[test]
fn truncated_files_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let img = encode_idx_images(3, 4, 4, &[9u8; 48]).unwrap();
    let p = tmp.path().join("cut");
    std::fs::write(&p, &img[..40]).unwrap();
    match read_idx_images(&p) {
        Err(DataError::Truncated {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (64, 40)),
        other => panic!("expected Truncated, got {other:?}"),
    }
    // A truncated gzip stream is a decompression error naming the file.
    let g = gz(&img);
    let pg = tmp.path().join("cut.gz");
    std::fs::write(&pg, &g[..g.len() / 2]).unwrap();
    let err = read_idx_images(&pg).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert!(err.to_string().contains("cut.gz"));
}

#[test]
fn wrong_magic_and_random_bytes_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = encode_idx_labels(&[1, 2]).unwrap();
    let p = tmp.path().join("labels-as-images");
    std::fs::write(&p, &lab).unwrap();
    let err = read_idx_images(&p).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not an IDX images file"));

    // Seeded random bytes: never a valid IDX file, never a panic.
    let mut state = 0x2545F4914F6CDD1Du64;
    let random: Vec<u8> = (0..5000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let r = tmp.path().join("random");
    std::fs::write(&r, &random).unwrap();
    assert!(matches!(
        read_idx_images(&r),
        Err(DataError::BadMagic { .. })
    ));
    // 5000 is not a multiple of 3073.
    assert!(matches!(
        read_cifar10(&r),
        Err(DataError::BadCifarSize { len: 5000, .. })
    ));
}

#[test]
fn count_mismatch_between_images_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_mnist(tmp.path(), "fashion-mnist", 5, true, 4);
    let err = Dataset::load_from(
        tmp.path(),
        DatasetKind::FashionMnist,
        Split::Test,
        Preprocess::Raw255,
    )
    .unwrap_err();
    match &err {
        DataError::CountMismatch {
            n_images, n_labels, ..
        } => assert_eq!((*n_images, *n_labels), (5, 4)),
        other => panic!("expected CountMismatch, got {other:?}"),
    }
}

#[test]
fn missing_folder_names_file_and_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Dataset::load_from(
        tmp.path(),
        DatasetKind::Mnist,
        Split::Test,
        Preprocess::Raw255,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(msg.starts_with("MNIST not found at "), "{msg}");
    assert!(msg.contains("mnist/t10k-images-idx3-ubyte.gz"), "{msg}");
    assert!(msg.ends_with(DATA_HINT), "{msg}");
    let err = Dataset::load_from(
        tmp.path(),
        DatasetKind::Cifar10,
        Split::Test,
        Preprocess::Raw255,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("cifar10/test_batch.bin.gz"),
        "{err}"
    );
}

#[test]
fn cifar_train_split_is_a_clear_error() {
    let err = Dataset::load_from(
        Path::new("/nonexistent"),
        DatasetKind::Cifar10,
        Split::Train,
        Preprocess::Raw255,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::UnsupportedSplit { .. }));
    assert!(
        err.to_string().contains("CIFAR-10 has no train split"),
        "{err}"
    );
}

#[test]
fn tiny_cifar_raw_and_gz() {
    for gzipped in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar10");
        std::fs::create_dir_all(&dir).unwrap();
        let b = cifar_bytes(3);
        if gzipped {
            std::fs::write(dir.join("test_batch.bin.gz"), gz(&b)).unwrap();
        } else {
            std::fs::write(dir.join("test_batch.bin"), &b).unwrap();
        }
        let d = Dataset::load_from(
            tmp.path(),
            DatasetKind::Cifar10,
            Split::Test,
            Preprocess::Raw255,
        )
        .unwrap();
        assert_eq!(d.shape(), [3, 3, 32, 32]);
        assert_eq!(d.labels, vec![0, 1, 2]);
        // Image 2, channel 1 (G), pixel 5: (5 + 7 + 2) % 256.
        assert_eq!(d.image(2).unwrap()[1024 + 5], 14.0);
        assert_eq!(d.classes[9], "truck");
        let norm = Preprocess::Normalize {
            mean: vec![0.5, 0.5, 0.5],
            std: vec![0.25, 0.25, 0.25],
        };
        let n = Dataset::load_from(tmp.path(), DatasetKind::Cifar10, Split::Test, norm).unwrap();
        assert!((n.images[0] - (0.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar10");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("test_batch.bin"), &cifar_bytes(2)[..3073 + 100]).unwrap();
    let err = Dataset::load_from(
        tmp.path(),
        DatasetKind::Cifar10,
        Split::Test,
        Preprocess::Raw255,
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::BadCifarSize { len: 3173, .. }),
        "{err:?}"
    );
}

// ---------- real data (shared data folder) ----------

fn real(kind: DatasetKind, split: Split) -> Dataset {
    Dataset::load(kind, split, Preprocess::Raw255)
        .unwrap_or_else(|e| panic!("real data must be present: {e}"))
}

#[test]
fn real_mnist_test_counts() {
    let d = real(DatasetKind::Mnist, Split::Test);
    assert_eq!(d.shape(), [10_000, 1, 28, 28]);
    assert_eq!(
        d.class_counts(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // The embedded subset is exactly the first 1,000 real test images.
    let e = Dataset::embedded_mnist_subset().unwrap();
    let head = d.head(1000);
    assert_eq!(e.images, head.images);
    assert_eq!(e.labels, head.labels);
    assert_eq!(e.classes, d.classes);
}

#[test]
fn real_mnist_train_counts() {
    let d = real(DatasetKind::Mnist, Split::Train);
    assert_eq!(d.n, 60_000);
    assert_eq!(
        d.class_counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
}

#[test]
fn real_fashion_mnist_first_labels() {
    let d = real(DatasetKind::FashionMnist, Split::Test);
    assert_eq!(d.n, 10_000);
    assert_eq!(&d.labels[..10], &[9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    assert_eq!(d.class_counts(), vec![1000; 10]);
    assert_eq!(d.classes[9], "Ankle boot");
}

#[test]
fn real_cifar_first_labels_and_classes() {
    let d = real(DatasetKind::Cifar10, Split::Test);
    assert_eq!(d.shape(), [10_000, 3, 32, 32]);
    assert_eq!(&d.labels[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    assert_eq!(d.class_counts(), vec![1000; 10]);
    assert_eq!(d.classes[0], "airplane");
    assert_eq!(d.classes[9], "truck");
}

#[test]
fn real_calibration_subset_is_balanced_and_deterministic() {
    let d = Dataset::embedded_mnist_subset().unwrap();
    let a = calibration_subset(&d, 100, 42).unwrap();
    let b = calibration_subset(&d, 100, 42).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.class_counts(), vec![10; 10]);
    let c = calibration_subset(&d, 100, 43).unwrap();
    assert_ne!(a.images, c.images);
}

#[test]
fn data_dir_finds_shared_data() {
    // Either MIXPREC_DATA or the default search must land on the folder holding mnist/.
    let d = data_dir();
    assert!(
        d.join("mnist").is_dir(),
        "{} has no mnist/: {DATA_HINT}",
        d.display()
    );
}

// ---------- ONNX Runtime reference outputs ----------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn reference_outputs_load_and_recipes_match_the_script() {
    let dir = reference_dir();
    let m = load_reference_manifest(&dir).unwrap();
    assert_eq!(m.entries.len(), 3);
    for e in &m.entries {
        let (shape, values) = load_reference_outputs(dir.join(&e.output_file)).unwrap();
        assert_eq!(shape, e.output_shape);
        assert_eq!(values.len(), shape.iter().product::<usize>());
        assert_eq!(shape[0], 100);
        assert!(values.iter().all(|v| v.is_finite()));
        let raw = std::fs::read(dir.join(&e.output_file)).unwrap();
        assert_eq!(hex(&Sha256::digest(&raw)), e.output_sha256);
        // The Rust recipe reproduces the script's input tensor bit for bit.
        let (ishape, inputs) = e.inputs(&data_dir()).unwrap();
        assert_eq!(ishape, e.input_shape, "{}", e.model);
        let bytes: Vec<u8> = inputs.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(hex(&Sha256::digest(&bytes)), e.input_sha256, "{}", e.model);
    }
    let mnist = m.entry("mnist-8").unwrap();
    assert_eq!(mnist.input_recipe, ReferenceRecipe::MnistTestRaw255);
    let acc = mnist.full_test_accuracy.as_ref().unwrap();
    assert_eq!((acc.correct, acc.total), (9891, 10_000));
    let resnet = m.entry("resnet8-cifar10.onnx").unwrap();
    assert_eq!(resnet.full_test_accuracy.as_ref().unwrap().correct, 7548);
    // mnist-8 logits on the first 100 test images: top-1 from the stored outputs.
    let (_, logits) = load_reference_outputs(dir.join(&mnist.output_file)).unwrap();
    let d = Dataset::embedded_mnist_subset().unwrap().head(100);
    let acc100 = top1_accuracy(&logits, 10, &d.labels).unwrap();
    assert!(acc100 >= 0.97, "{acc100}");
    // vww outputs are softmax probabilities.
    let (_, p) = load_reference_outputs(dir.join("vww-mobilenetv1-96.f32")).unwrap();
    for row in p.chunks_exact(2) {
        assert!((row[0] + row[1] - 1.0).abs() < 1e-5);
    }
}

#[test]
fn reference_loader_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load_reference_outputs(tmp.path().join("x.f32")).unwrap_err();
    assert!(matches!(err, DataError::BadReference { .. }));
    assert!(err.to_string().contains("ort_reference.py"), "{err}");
    // A file cut short is caught against the manifest's shape.
    let src = reference_dir();
    std::fs::copy(src.join("manifest.json"), tmp.path().join("manifest.json")).unwrap();
    let raw = std::fs::read(src.join("mnist-8.f32")).unwrap();
    std::fs::write(tmp.path().join("mnist-8.f32"), &raw[..raw.len() - 4]).unwrap();
    let err = load_reference_outputs(tmp.path().join("mnist-8.f32")).unwrap_err();
    assert!(err.to_string().contains("needs 4000"), "{err}");
    let err = load_reference_outputs(tmp.path().join("unknown.f32")).unwrap_err();
    assert!(err.to_string().contains("not listed"), "{err}");
}

#[test]
fn upsample_matches_recipe_on_real_image() {
    let d = Dataset::embedded_mnist_subset().unwrap().head(2);
    let up = nearest_upsample(&d.images, 2, 1, 28, 28, 3).unwrap();
    assert_eq!(up.len(), 2 * 84 * 84);
    for (y, x) in [(0, 0), (40, 50), (83, 83), (14, 70)] {
        assert_eq!(
            up[84 * 84 + y * 84 + x],
            d.images[784 + (y / 3) * 28 + x / 3]
        );
    }
}

/// An IDX images header whose three counts multiply beyond 64 bits (found by fuzzing, target
/// data_formats in `fuzz/`): a clear size error, not an overflow.
#[test]
fn idx_header_with_overflowing_counts_is_an_error() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions/idx-images-count-overflow.idx");
    let bytes = std::fs::read(&p).unwrap();
    let e = mixprec_data::formats::parse_idx_images(&bytes, &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("idx-images-count-overflow.idx"), "{e}");
}
