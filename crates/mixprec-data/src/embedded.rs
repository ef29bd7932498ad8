//! The MNIST evaluation subset compiled into the library: the first 1,000 images and labels of
//! the official MNIST test set (`t10k-*`), stored gzipped in `assets/`.
//!
//! Survey: evaluation data for the accuracy comparisons of §4.1; no equation. Decoding is
//! O(1000 × 784). Licence and origin: `assets/LICENSE-MNIST.md`. The files are produced by
//! `scripts/make_mnist_subset.py` from the shared data folder.

use std::path::Path;

use crate::dataset::{Dataset, DatasetKind, Preprocess};
use crate::error::{DataError, Result};
use crate::formats::{decompress_if_gz, parse_idx_images, parse_idx_labels};

/// Number of images in the embedded subset.
pub const EMBEDDED_MNIST_LEN: usize = 1000;

const IMAGES_GZ: &[u8] = include_bytes!("../assets/mnist-t10k-first1000-images-idx3-ubyte.gz");
const LABELS_GZ: &[u8] = include_bytes!("../assets/mnist-t10k-first1000-labels-idx1-ubyte.gz");
const IMAGES_NAME: &str = "assets/mnist-t10k-first1000-images-idx3-ubyte.gz (embedded)";
const LABELS_NAME: &str = "assets/mnist-t10k-first1000-labels-idx1-ubyte.gz (embedded)";

impl Dataset {
    /// The embedded first 1,000 MNIST test images with raw 0..255 values (what `mnist-8`
    /// expects). Needs no data folder.
    pub fn embedded_mnist_subset() -> Result<Dataset> {
        Self::embedded_mnist_subset_with(Preprocess::Raw255)
    }

    /// The embedded first 1,000 MNIST test images with the given preprocessing.
    pub fn embedded_mnist_subset_with(preprocessing: Preprocess) -> Result<Dataset> {
        let ip = Path::new(IMAGES_NAME);
        let lp = Path::new(LABELS_NAME);
        let imgs = parse_idx_images(&decompress_if_gz(IMAGES_GZ.to_vec(), ip)?, ip)?;
        let labs = parse_idx_labels(&decompress_if_gz(LABELS_GZ.to_vec(), lp)?, lp)?;
        if imgs.n != labs.len() {
            return Err(DataError::CountMismatch {
                images: ip.to_path_buf(),
                labels: lp.to_path_buf(),
                n_images: imgs.n,
                n_labels: labs.len(),
            });
        }
        let images = preprocessing.apply(&imgs.data, 1, imgs.rows * imgs.cols)?;
        Dataset::from_parts(
            "mnist-test-first1000",
            images,
            labs.iter().map(|&l| u32::from(l)).collect(),
            imgs.n,
            1,
            imgs.rows,
            imgs.cols,
            DatasetKind::Mnist.default_classes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_subset_decodes() {
        let d = Dataset::embedded_mnist_subset().unwrap();
        assert_eq!(d.shape(), [EMBEDDED_MNIST_LEN, 1, 28, 28]);
        // First MNIST test labels: 7, 2, 1, 0, 4, 1, 4, 9, 5, 9.
        assert_eq!(&d.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        assert!(d.images.iter().all(|&v| (0.0..=255.0).contains(&v)));
        assert_eq!(d.images.iter().cloned().fold(0.0f32, f32::max), 255.0);
    }
}
