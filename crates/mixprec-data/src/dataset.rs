//! In-memory labelled image data sets (MNIST, Fashion-MNIST, CIFAR-10) in N×C×H×W f32 layout.
//!
//! Survey: the evaluation data behind every accuracy figure of §4.1 (Table 3 compares
//! frameworks by top-1 accuracy on such sets). No equation. Loading is O(N·C·H·W).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::formats::{read_cifar10, read_idx_images, read_idx_labels, read_maybe_gz};

/// Which data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST handwritten digits, 1×28×28.
    Mnist,
    /// Fashion-MNIST, 1×28×28.
    FashionMnist,
    /// CIFAR-10, 3×32×32 (test split only).
    Cifar10,
}

impl DatasetKind {
    /// All kinds, in a fixed order.
    pub const ALL: [DatasetKind; 3] = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
    ];

    /// Short name as accepted by [`FromStr`]: `mnist`, `fashion-mnist`, `cifar10`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    /// Human name used in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "MNIST",
            DatasetKind::FashionMnist => "Fashion-MNIST",
            DatasetKind::Cifar10 => "CIFAR-10",
        }
    }

    /// Sub-folder of the data folder.
    pub fn folder(self) -> &'static str {
        self.as_str()
    }

    /// Image shape `(c, h, w)`.
    pub fn image_shape(self) -> (usize, usize, usize) {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => (1, 28, 28),
            DatasetKind::Cifar10 => (3, 32, 32),
        }
    }

    /// Default class names (CIFAR-10 names are read from `batches.meta.txt` when present).
    pub fn default_classes(self) -> Vec<String> {
        let names: [&str; 10] = match self {
            DatasetKind::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            DatasetKind::Cifar10 => [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
        };
        names.iter().map(|s| s.to_string()).collect()
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;
    /// Accepts `mnist`, `fashion-mnist` (also `fashion_mnist`, `fashionmnist`), `cifar10`
    /// (also `cifar-10`), case-insensitively.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(DatasetKind::FashionMnist),
            "cifar10" | "cifar-10" | "cifar_10" => Ok(DatasetKind::Cifar10),
            _ => Err(DataError::UnknownDataset(s.to_string())),
        }
    }
}

/// Train or test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Training set.
    Train,
    /// Test set.
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" | "t10k" => Ok(Split::Test),
            _ => Err(DataError::UnknownSplit(s.to_string())),
        }
    }
}

/// How pixel bytes become f32 inputs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Preprocess {
    /// Values 0..255 as f32 (what `mnist-8` and `resnet8-cifar10` expect).
    #[default]
    Raw255,
    /// `x / 255` in f32 (values 0..1; what `vww-mobilenetv1-96` expects).
    Unit,
    /// `(x / 255 - mean[c]) / std[c]` per channel `c`, on the 0..1 scale. `mean` and `std`
    /// have one entry per channel, or a single entry used for all channels.
    Normalize {
        /// Per-channel mean (0..1 scale).
        mean: Vec<f32>,
        /// Per-channel standard deviation (0..1 scale), each > 0.
        std: Vec<f32>,
    },
}

impl Preprocess {
    /// Converts `n × c × hw` pixel bytes into f32 values.
    pub fn apply(&self, pixels: &[u8], c: usize, hw: usize) -> Result<Vec<f32>> {
        if c == 0 || hw == 0 || !pixels.len().is_multiple_of(c * hw) {
            return Err(DataError::InvalidArgument(format!(
                "{} pixel bytes do not form whole images of {c} channels x {hw} pixels",
                pixels.len()
            )));
        }
        match self {
            Preprocess::Raw255 => Ok(pixels.iter().map(|&v| f32::from(v)).collect()),
            Preprocess::Unit => Ok(pixels.iter().map(|&v| f32::from(v) / 255.0).collect()),
            Preprocess::Normalize { mean, std } => {
                let pick = |v: &[f32], what: &str| -> Result<Vec<f32>> {
                    match v.len() {
                        1 => Ok(vec![v[0]; c]),
                        l if l == c => Ok(v.to_vec()),
                        l => Err(DataError::BadNormalize(format!(
                            "{what} has {l} entries; the data has {c} channels (give {c} or 1)"
                        ))),
                    }
                };
                let mean = pick(mean, "mean")?;
                let std = pick(std, "std")?;
                if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return Err(DataError::BadNormalize(format!(
                        "std entries must be finite and > 0, found {s}"
                    )));
                }
                if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
                    return Err(DataError::BadNormalize(format!(
                        "mean entries must be finite, found {m}"
                    )));
                }
                let mut out = Vec::with_capacity(pixels.len());
                for img in pixels.chunks_exact(c * hw) {
                    for (ch, plane) in img.chunks_exact(hw).enumerate() {
                        let (m, s) = (mean[ch], std[ch]);
                        out.extend(plane.iter().map(|&v| (f32::from(v) / 255.0 - m) / s));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A labelled image data set held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Name, e.g. `mnist-test`.
    pub name: String,
    /// `n × c × h × w` values, row-major.
    pub images: Vec<f32>,
    /// One label per image, each `< classes.len()`.
    pub labels: Vec<u32>,
    /// Number of images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Shape of one sample as the model takes it (`[c, h, w]` for images; any shape for
    /// arrays loaded with [`Dataset::from_array`]).
    sample_shape: Vec<usize>,
}

/// First existing of `base.gz` and `base` inside `folder`; `NotFound` naming `base.gz` otherwise.
fn locate(folder: &Path, base: &str, dataset: &str) -> Result<PathBuf> {
    let gz = folder.join(format!("{base}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = folder.join(base);
    if raw.is_file() {
        return Ok(raw);
    }
    Err(DataError::NotFound {
        dataset: dataset.to_string(),
        path: gz,
    })
}

impl Dataset {
    /// Builds a data set from parts, checking that every size and label is consistent.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        name: impl Into<String>,
        images: Vec<f32>,
        labels: Vec<u32>,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        classes: Vec<String>,
    ) -> Result<Self> {
        let name = name.into();
        if images.len() != n * c * h * w {
            return Err(DataError::InvalidArgument(format!(
                "data set {name}: {} image values for {n}x{c}x{h}x{w}",
                images.len()
            )));
        }
        if labels.len() != n {
            return Err(DataError::InvalidArgument(format!(
                "data set {name}: {} labels for {n} images",
                labels.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes.len())
        {
            return Err(DataError::BadLabel {
                path: PathBuf::from(&name),
                index: i,
                label: l,
                n_classes: classes.len(),
            });
        }
        Ok(Dataset {
            name,
            images,
            labels,
            n,
            c,
            h,
            w,
            classes,
            sample_shape: vec![c, h, w],
        })
    }

    /// Loads a split of a data set from [`crate::data_dir`].
    pub fn load(kind: DatasetKind, split: Split, preprocessing: Preprocess) -> Result<Self> {
        Self::load_from(&crate::data_dir(), kind, split, preprocessing)
    }

    /// Loads a split of a data set from the data folder `dir` (the folder holding `mnist/`,
    /// `fashion-mnist/`, `cifar10/`). Files may be gzipped (`*.gz`) or raw.
    pub fn load_from(
        dir: &Path,
        kind: DatasetKind,
        split: Split,
        preprocessing: Preprocess,
    ) -> Result<Self> {
        let folder = dir.join(kind.folder());
        let dname = kind.display_name();
        let name = format!("{}-{}", kind.as_str(), split.as_str());
        match kind {
            DatasetKind::Mnist | DatasetKind::FashionMnist => {
                let prefix = match split {
                    Split::Train => "train",
                    Split::Test => "t10k",
                };
                let ip = locate(&folder, &format!("{prefix}-images-idx3-ubyte"), dname)?;
                let lp = locate(&folder, &format!("{prefix}-labels-idx1-ubyte"), dname)?;
                let imgs = read_idx_images(&ip)?;
                let labs = read_idx_labels(&lp)?;
                if imgs.n != labs.len() {
                    return Err(DataError::CountMismatch {
                        images: ip,
                        labels: lp,
                        n_images: imgs.n,
                        n_labels: labs.len(),
                    });
                }
                let classes = kind.default_classes();
                if let Some((i, &l)) = labs
                    .iter()
                    .enumerate()
                    .find(|(_, &l)| l as usize >= classes.len())
                {
                    return Err(DataError::BadLabel {
                        path: lp,
                        index: i,
                        label: u32::from(l),
                        n_classes: classes.len(),
                    });
                }
                let hw = imgs.rows * imgs.cols;
                let images = if imgs.n == 0 {
                    Vec::new()
                } else {
                    preprocessing.apply(&imgs.data, 1, hw)?
                };
                Ok(Dataset {
                    name,
                    images,
                    labels: labs.iter().map(|&l| u32::from(l)).collect(),
                    n: imgs.n,
                    c: 1,
                    h: imgs.rows,
                    w: imgs.cols,
                    classes,
                    sample_shape: vec![1, imgs.rows, imgs.cols],
                })
            }
            DatasetKind::Cifar10 => {
                if split == Split::Train {
                    return Err(DataError::UnsupportedSplit {
                        dataset: dname.to_string(),
                        split: split.to_string(),
                    });
                }
                let path = locate(&folder, "test_batch.bin", dname)?;
                let recs = read_cifar10(&path)?;
                let classes = read_cifar_classes(&folder)?;
                let images = preprocessing.apply(&recs.pixels, 3, 32 * 32)?;
                Ok(Dataset {
                    name,
                    images,
                    labels: recs.labels.iter().map(|&l| u32::from(l)).collect(),
                    n: recs.n,
                    c: 3,
                    h: 32,
                    w: 32,
                    classes,
                    sample_shape: vec![3, 32, 32],
                })
            }
        }
    }

    /// Values per image (`c × h × w`, the product of [`Self::sample_shape`]).
    pub fn sample_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Shape of one sample as the model takes it, without the batch axis.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// A data set of `n` samples of any shape (`sample_shape`, without the batch axis), e.g.
    /// token sequences, audio features or images in a layout of their own, read from user
    /// arrays. `c`, `h`, `w` are the last three dimensions (leading ones folded into `c`, missing
    /// ones 1), so that `c × h × w` is the sample size.
    pub fn from_array(
        name: impl Into<String>,
        values: Vec<f32>,
        labels: Vec<u32>,
        sample_shape: Vec<usize>,
        classes: Vec<String>,
    ) -> Result<Self> {
        let name = name.into();
        let n = labels.len();
        let k = sample_shape.len();
        let dim = |i: usize| if i < k { sample_shape[k - 1 - i] } else { 1 };
        let c = sample_shape[..k.saturating_sub(2)]
            .iter()
            .product::<usize>();
        let (h, w) = (dim(1), dim(0));
        let c = if k >= 3 { c } else { 1 };
        let mut d = Self::from_parts(name, values, labels, n, c, h, w, classes)?;
        d.sample_shape = sample_shape;
        Ok(d)
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }

    /// Shape `[n, c, h, w]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// Images `start .. start + len` and their labels. The range is clipped to the data set:
    /// the last batch may be shorter, and a `start` past the end gives empty slices.
    pub fn batch(&self, start: usize, len: usize) -> (&[f32], &[u32]) {
        let s = start.min(self.n);
        let e = start.saturating_add(len).min(self.n);
        let sl = self.sample_len();
        (&self.images[s * sl..e * sl], &self.labels[s..e])
    }

    /// Image `i` (`c × h × w` values), or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        (i < self.n).then(|| {
            let sl = self.sample_len();
            &self.images[i * sl..(i + 1) * sl]
        })
    }

    /// A new data set holding the images at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.n) {
            return Err(DataError::InvalidArgument(format!(
                "subset of {}: index {bad} out of range (data set has {} images)",
                self.name, self.n
            )));
        }
        let sl = self.sample_len();
        let mut images = Vec::with_capacity(indices.len() * sl);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(&self.images[i * sl..(i + 1) * sl]);
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            name: self.name.clone(),
            images,
            labels,
            n: indices.len(),
            c: self.c,
            h: self.h,
            w: self.w,
            classes: self.classes.clone(),
            sample_shape: self.sample_shape.clone(),
        })
    }

    /// The first `min(n, self.n)` images.
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.n);
        let (images, labels) = self.batch(0, n);
        Dataset {
            name: self.name.clone(),
            images: images.to_vec(),
            labels: labels.to_vec(),
            n,
            c: self.c,
            h: self.h,
            w: self.w,
            classes: self.classes.clone(),
            sample_shape: self.sample_shape.clone(),
        }
    }

    /// Number of images of each class (`classes.len()` entries).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Class names from `batches.meta.txt` (one per line) when present, the built-in ones otherwise.
fn read_cifar_classes(folder: &Path) -> Result<Vec<String>> {
    let meta = folder.join("batches.meta.txt");
    if !meta.is_file() {
        return Ok(DatasetKind::Cifar10.default_classes());
    }
    let bytes = read_maybe_gz(&meta, "CIFAR-10 class names")?;
    let text = String::from_utf8_lossy(&bytes);
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != 10 {
        return Err(DataError::InvalidArgument(format!(
            "{} lists {} class names; CIFAR-10 has 10 (one per line)",
            meta.display(),
            names.len()
        )));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        let images: Vec<f32> = (0..4 * 2 * 2 * 2).map(|v| v as f32).collect();
        let classes = vec!["a".to_string(), "b".to_string()];
        Dataset::from_parts("t", images, vec![0, 1, 1, 0], 4, 2, 2, 2, classes).unwrap()
    }

    #[test]
    fn batch_clips_and_subset_reorders() {
        let d = tiny();
        let (x, y) = d.batch(1, 2);
        assert_eq!(x.len(), 16);
        assert_eq!(x[0], 8.0);
        assert_eq!(y, &[1, 1]);
        let (x, y) = d.batch(3, 10);
        assert_eq!((x.len(), y.len()), (8, 1));
        let (x, y) = d.batch(9, 2);
        assert!(x.is_empty() && y.is_empty());
        let s = d.subset(&[3, 0]).unwrap();
        assert_eq!(s.labels, vec![0, 0]);
        assert_eq!(s.images[0], 24.0);
        assert_eq!(s.images[8], 0.0);
        assert!(d.subset(&[4]).is_err());
        assert_eq!(d.class_counts(), vec![2, 2]);
        assert_eq!(d.head(3).n, 3);
        assert_eq!(d.image(3).unwrap()[0], 24.0);
        assert!(d.image(4).is_none());
    }

    #[test]
    fn from_parts_rejects_inconsistency() {
        let cls = vec!["a".to_string()];
        assert!(Dataset::from_parts("t", vec![0.0; 3], vec![0], 1, 1, 2, 2, cls.clone()).is_err());
        assert!(Dataset::from_parts("t", vec![0.0; 4], vec![1], 1, 1, 2, 2, cls).is_err());
    }

    #[test]
    fn preprocess_values() {
        let px = [0u8, 51, 255, 102];
        assert_eq!(
            Preprocess::Raw255.apply(&px, 2, 2).unwrap(),
            vec![0.0, 51.0, 255.0, 102.0]
        );
        assert_eq!(
            Preprocess::Unit.apply(&px, 2, 2).unwrap(),
            vec![0.0, 0.2, 1.0, 0.4]
        );
        let n = Preprocess::Normalize {
            mean: vec![0.0, 0.5],
            std: vec![1.0, 0.5],
        };
        let v = n.apply(&px, 2, 2).unwrap();
        assert_eq!(v[..2], [0.0, 0.2]);
        assert!((v[2] - 1.0).abs() < 1e-6 && (v[3] + 0.2).abs() < 1e-6);
        let bad = Preprocess::Normalize {
            mean: vec![0.0; 3],
            std: vec![1.0],
        };
        assert!(matches!(
            bad.apply(&px, 2, 2),
            Err(DataError::BadNormalize(_))
        ));
        let zero = Preprocess::Normalize {
            mean: vec![0.0],
            std: vec![0.0],
        };
        assert!(matches!(
            zero.apply(&px, 2, 2),
            Err(DataError::BadNormalize(_))
        ));
        assert!(Preprocess::Unit.apply(&px, 3, 1).is_err());
    }

    #[test]
    fn names_parse() {
        for k in DatasetKind::ALL {
            assert_eq!(k.as_str().parse::<DatasetKind>().unwrap(), k);
        }
        assert!(matches!(
            "imagenet".parse::<DatasetKind>(),
            Err(DataError::UnknownDataset(_))
        ));
        assert_eq!("TEST".parse::<Split>().unwrap(), Split::Test);
        assert!("val".parse::<Split>().is_err());
    }
}
