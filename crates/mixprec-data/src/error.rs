//! The one error type of `mixprec-data`.
//!
//! Every variant names the file (or argument) at fault and, where it helps, what to do about it.

use std::path::PathBuf;

/// Hint appended to "not found" errors.
pub const DATA_HINT: &str =
    "set MIXPREC_DATA to the folder holding mnist/, fashion-mnist/, cifar10/";

/// Errors raised while locating, reading, decoding or using data sets and reference outputs.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data set file is missing.
    #[error("{dataset} not found at {}: {DATA_HINT}", path.display())]
    NotFound {
        /// Human name of the data set ("MNIST", "CIFAR-10", ...).
        dataset: String,
        /// The path that was tried (the preferred `.gz` name).
        path: PathBuf,
    },

    /// An I/O error other than "not found" (permissions, a folder instead of a file, ...).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// File being read.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file starts with the gzip magic but does not decompress.
    #[error("cannot decompress {} (corrupt or truncated gzip stream): {source}; re-download or re-copy the file", path.display())]
    Gzip {
        /// File being read.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file is shorter than its header (or its format) requires.
    #[error("{} is truncated: expected {expected} bytes after decompression, found {actual}", path.display())]
    Truncated {
        /// File being read.
        path: PathBuf,
        /// Bytes the header promises (or the minimum header size).
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },

    /// The file is longer than its header says.
    #[error("{} has {extra} unexpected trailing bytes after the {expected} bytes its header describes", path.display())]
    TrailingBytes {
        /// File being read.
        path: PathBuf,
        /// Bytes the header describes.
        expected: u64,
        /// Extra bytes found after them.
        extra: u64,
    },

    /// An IDX file whose magic number is not the expected one.
    #[error("{} is not an IDX {what} file: magic is {found:#010x}, expected {expected:#010x}", path.display())]
    BadMagic {
        /// File being read.
        path: PathBuf,
        /// "images" or "labels".
        what: &'static str,
        /// Magic found in the file.
        found: u32,
        /// Magic expected.
        expected: u32,
    },

    /// Images and labels files disagree on the number of samples.
    #[error("{} holds {n_images} images but {} holds {n_labels} labels; the two files must come from the same split", images.display(), labels.display())]
    CountMismatch {
        /// Images file.
        images: PathBuf,
        /// Labels file.
        labels: PathBuf,
        /// Count in the images header.
        n_images: usize,
        /// Count in the labels header.
        n_labels: usize,
    },

    /// A CIFAR-10 binary whose size is not a whole number of 3073-byte records.
    #[error("{} is not a CIFAR-10 binary batch: {len} bytes is not a multiple of the 3073-byte record size", path.display())]
    BadCifarSize {
        /// File being read.
        path: PathBuf,
        /// Decompressed size in bytes.
        len: u64,
    },

    /// A label outside `0..n_classes`.
    #[error("{}: sample {index} has label {label}, but the data set has only {n_classes} classes", path.display())]
    BadLabel {
        /// File being read.
        path: PathBuf,
        /// Sample index.
        index: usize,
        /// Label found.
        label: u32,
        /// Number of classes.
        n_classes: usize,
    },

    /// A split that is not available for a data set.
    #[error("{dataset} has no {split} split in the data folder (only the test set is provided)")]
    UnsupportedSplit {
        /// Data set name.
        dataset: String,
        /// Split asked for ("train" / "test").
        split: String,
    },

    /// An unknown data set name.
    #[error("unknown data set {0:?}: expected one of mnist, fashion-mnist, cifar10")]
    UnknownDataset(String),

    /// An unknown split name.
    #[error("unknown split {0:?}: expected train or test")]
    UnknownSplit(String),

    /// Normalization parameters that do not fit the data.
    #[error("invalid normalization: {0}")]
    BadNormalize(String),

    /// Any other invalid argument (index out of range, shape mismatch, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A reference-output file or its manifest is missing or inconsistent.
    #[error("reference outputs {}: {reason}", path.display())]
    BadReference {
        /// File at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// Builds an [`DataError::Io`] or [`DataError::NotFound`] from an `io::Error` on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, dataset: &str, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                dataset: dataset.to_string(),
                path,
            }
        } else {
            DataError::Io { path, source }
        }
    }
}
