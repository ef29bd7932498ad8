//! Choosing and loading the evaluation / training data set from `--data`.

use anyhow::{Context, Result};
use mixprec_data::{Dataset, DatasetKind, Preprocess, Split};

/// The embedded 1,000-image MNIST test subset (works without `$MIXPREC_DATA`).
pub const EMBEDDED: &str = "mnist-1k";

/// Input scaling of the pixels.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Scale {
    /// Raw 0..255 values (mnist-8, resnet8, mixprec's built-in models).
    Raw,
    /// 0..1 (pixel / 255).
    Unit,
}

/// Load `name` (a data set or `mnist-1k`) with a split and scaling.
pub fn load(name: &str, split: Split, scale: Scale) -> Result<Dataset> {
    let pre = match scale {
        Scale::Raw => Preprocess::Raw255,
        Scale::Unit => Preprocess::Unit,
    };
    if name == EMBEDDED {
        return Ok(mixprec_data::Dataset::embedded_mnist_subset_with(pre)?);
    }
    let kind: DatasetKind = name.parse().with_context(|| {
        format!("--data {name}: use mnist, fashion-mnist, cifar10 or {EMBEDDED}")
    })?;
    Ok(Dataset::load(kind, split, pre)?)
}
