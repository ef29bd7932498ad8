//! Stored ONNX Runtime reference outputs (`tests-data/ort/`) and the input recipes behind them.
//!
//! Survey: none directly; these outputs are the float baseline against which the executor is
//! checked before any quantization (§4.1 compares quantized accuracy with that baseline). No
//! equation. `scripts/ort_reference.py` writes the files; each output is a raw little-endian f32
//! file described by `manifest.json` in the same folder. Cost: O(size of the file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, DatasetKind, Preprocess, Split};
use crate::error::{DataError, Result};

/// File name of the manifest beside the output files.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Nearest-neighbour upsampling of `n × c × h × w` images by an integer `factor`: every pixel
/// becomes a `factor × factor` block, giving `n × c × (h·factor) × (w·factor)` values
/// (numpy `x.repeat(f, axis=2).repeat(f, axis=3)`).
pub fn nearest_upsample(
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    factor: usize,
) -> Result<Vec<f32>> {
    if factor == 0 {
        return Err(DataError::InvalidArgument(
            "upsampling factor must be >= 1".into(),
        ));
    }
    if images.len() != n * c * h * w {
        return Err(DataError::InvalidArgument(format!(
            "nearest_upsample: {} values for {n}x{c}x{h}x{w}",
            images.len()
        )));
    }
    let (oh, ow) = (h * factor, w * factor);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in images.chunks_exact((h * w).max(1)).take(n * c) {
        for y in 0..oh {
            let row = &plane[(y / factor) * w..(y / factor + 1) * w];
            for &v in row {
                out.extend(std::iter::repeat_n(v, factor));
            }
        }
    }
    Ok(out)
}

/// How the inputs of a reference run are built from the data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferenceRecipe {
    /// The first images of the MNIST test set, raw 0..255, shape `[n, 1, 28, 28]`.
    #[serde(rename = "mnist-test-raw255")]
    MnistTestRaw255,
    /// The first images of the CIFAR-10 test set, raw 0..255, shape `[n, 3, 32, 32]`.
    #[serde(rename = "cifar10-test-raw255")]
    Cifar10TestRaw255,
    /// The first images of the CIFAR-10 test set, nearest-neighbour upsampled ×3 (each pixel
    /// repeated 3×3) and divided by 255, shape `[n, 3, 96, 96]`.
    #[serde(rename = "cifar10-test-nearest3x-unit")]
    Cifar10TestNearest3xUnit,
}

impl ReferenceRecipe {
    /// Builds the first `n` inputs of this recipe from the data folder `data_dir`; returns the
    /// shape and the values (NCHW, row-major).
    pub fn inputs(self, data_dir: &Path, n: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let (kind, pre) = match self {
            ReferenceRecipe::MnistTestRaw255 => (DatasetKind::Mnist, Preprocess::Raw255),
            ReferenceRecipe::Cifar10TestRaw255 => (DatasetKind::Cifar10, Preprocess::Raw255),
            ReferenceRecipe::Cifar10TestNearest3xUnit => (DatasetKind::Cifar10, Preprocess::Unit),
        };
        let full = Dataset::load_from(data_dir, kind, Split::Test, pre)?;
        if n > full.n {
            return Err(DataError::InvalidArgument(format!(
                "{n} reference inputs asked, {} has {}",
                full.name, full.n
            )));
        }
        let d = full.head(n);
        match self {
            ReferenceRecipe::Cifar10TestNearest3xUnit => {
                let up = nearest_upsample(&d.images, d.n, d.c, d.h, d.w, 3)?;
                Ok((vec![d.n, d.c, d.h * 3, d.w * 3], up))
            }
            _ => Ok((vec![d.n, d.c, d.h, d.w], d.images)),
        }
    }
}

/// Top-1 accuracy of ONNX Runtime over a full test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceAccuracy {
    /// Data set and split, e.g. `mnist test`.
    pub data: String,
    /// Input preprocessing, e.g. `raw 0..255`.
    pub preprocessing: String,
    /// Correct top-1 predictions.
    pub correct: u64,
    /// Samples evaluated.
    pub total: u64,
    /// `correct / total`.
    pub top1: f64,
}

/// One model's stored reference run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceEntry {
    /// Model file name inside `<data_dir>/models/`.
    pub model: String,
    /// sha256 (hex) of the model file the outputs were produced with.
    pub model_sha256: String,
    /// Name of the model's input.
    pub input_name: String,
    /// How the inputs were built.
    pub input_recipe: ReferenceRecipe,
    /// Words describing the recipe.
    pub input_description: String,
    /// Shape of the whole input tensor (`[n, c, h, w]`).
    pub input_shape: Vec<usize>,
    /// sha256 (hex) of the whole input tensor as little-endian f32 bytes.
    pub input_sha256: String,
    /// Batch size of each ONNX Runtime call.
    pub run_batch: usize,
    /// Name of the model's output.
    pub output_name: String,
    /// Output file name, in the manifest's folder.
    pub output_file: String,
    /// Shape of the whole output (`[n, classes]`).
    pub output_shape: Vec<usize>,
    /// Always `float32-le`.
    pub output_dtype: String,
    /// sha256 (hex) of the output file.
    pub output_sha256: String,
    /// ONNX Runtime top-1 accuracy over the full test set, where the model has real labels.
    pub full_test_accuracy: Option<ReferenceAccuracy>,
}

impl ReferenceEntry {
    /// Rebuilds this entry's inputs from the data folder.
    pub fn inputs(&self, data_dir: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
        let n = self.input_shape.first().copied().unwrap_or(0);
        self.input_recipe.inputs(data_dir, n)
    }
}

/// `manifest.json` of a reference folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceManifest {
    /// Script that wrote the folder.
    pub generator: String,
    /// ONNX Runtime version used.
    pub onnxruntime_version: String,
    /// numpy version used.
    pub numpy_version: String,
    /// Python version used.
    pub python_version: String,
    /// ONNX Runtime execution providers used.
    pub providers: Vec<String>,
    /// One entry per model.
    pub entries: Vec<ReferenceEntry>,
}

impl ReferenceManifest {
    /// The entry of a model file name (`mnist-8.onnx`) or stem (`mnist-8`).
    pub fn entry(&self, model: &str) -> Option<&ReferenceEntry> {
        self.entries
            .iter()
            .find(|e| e.model == model || e.model.strip_suffix(".onnx") == Some(model))
    }
}

/// Reads `manifest.json` from the reference folder `dir` (see [`crate::reference_dir`]).
pub fn load_reference_manifest(dir: impl AsRef<Path>) -> Result<ReferenceManifest> {
    let path = dir.as_ref().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::BadReference {
        path: path.clone(),
        reason: format!("{e}; run scripts/ort_reference.py to create it"),
    })?;
    serde_json::from_str(&text).map_err(|e| DataError::BadReference {
        path,
        reason: format!("invalid manifest: {e}"),
    })
}

/// Reads a raw little-endian f32 reference file; its shape comes from `manifest.json` in the same
/// folder. Errors when the file is not listed, or its size does not match the listed shape.
pub fn load_reference_outputs(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let manifest = load_reference_manifest(&dir)?;
    let fname = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entry = manifest
        .entries
        .iter()
        .find(|e| e.output_file == fname)
        .ok_or_else(|| DataError::BadReference {
            path: path.to_path_buf(),
            reason: format!("not listed in {}", dir.join(MANIFEST_FILE).display()),
        })?;
    if entry.output_dtype != "float32-le" {
        return Err(DataError::BadReference {
            path: path.to_path_buf(),
            reason: format!("dtype {:?}, expected float32-le", entry.output_dtype),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::BadReference {
        path: path.to_path_buf(),
        reason: format!("{e}; run scripts/ort_reference.py to create it"),
    })?;
    let count: usize = entry.output_shape.iter().product();
    if bytes.len() != count * 4 {
        return Err(DataError::BadReference {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes, but shape {:?} needs {}",
                bytes.len(),
                entry.output_shape,
                count * 4
            ),
        });
    }
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((entry.output_shape.clone(), values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_repeats_blocks() {
        // 1 image, 2 channels, 2x2.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let y = nearest_upsample(&x, 1, 2, 2, 2, 2).unwrap();
        assert_eq!(y.len(), 32);
        assert_eq!(&y[..8], &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(&y[8..16], &[3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]);
        assert_eq!(y[16], 5.0);
        assert_eq!(y[31], 8.0);
        assert_eq!(nearest_upsample(&x, 1, 2, 2, 2, 1).unwrap(), x.to_vec());
        assert!(nearest_upsample(&x, 1, 2, 2, 3, 2).is_err());
        assert!(nearest_upsample(&x, 1, 2, 2, 2, 0).is_err());
    }
}
