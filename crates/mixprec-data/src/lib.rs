//! mixprec-data: data sets, calibration subsets, metrics and reference outputs for mixprec.
//!
//! - [`Dataset`] loads MNIST, Fashion-MNIST (IDX) and the CIFAR-10 test batch from the data
//!   folder ([`data_dir`]: `$MIXPREC_DATA`, default `../shared/data`), raw or gzipped, in
//!   N×C×H×W f32 with a chosen [`Preprocess`].
//! - [`Dataset::embedded_mnist_subset`] needs no data folder: the first 1,000 MNIST test images
//!   are compiled in.
//! - [`calibration_subset`] draws seeded, class-balanced calibration sets (survey §2, §3.2.5).
//! - [`top1_accuracy`], [`ConfusionMatrix`]: the accuracy metrics of survey §4.1.
//! - [`load_reference_outputs`], [`nearest_upsample`]: stored ONNX Runtime outputs and the
//!   input recipes behind them, used to check executors.

mod calibration;
mod dataset;
mod embedded;
mod error;
pub mod formats;
mod metrics;
mod paths;
mod reference;

pub use calibration::{calibration_indices, calibration_subset};
pub use dataset::{Dataset, DatasetKind, Preprocess, Split};
pub use embedded::EMBEDDED_MNIST_LEN;
pub use error::{DataError, Result, DATA_HINT};
pub use formats::{CifarRecords, IdxImages};
pub use metrics::{argmax, per_class_accuracy, predictions, top1_accuracy, ConfusionMatrix};
pub use paths::{data_dir, models_dir, reference_dir, DATA_ENV, DEFAULT_DATA_DIR};
pub use reference::{
    load_reference_manifest, load_reference_outputs, nearest_upsample, ReferenceAccuracy,
    ReferenceEntry, ReferenceManifest, ReferenceRecipe, MANIFEST_FILE,
};
