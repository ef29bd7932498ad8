//! Choosing and loading the evaluation / training data set from `--data`: a named image set,
//! or the user's own arrays (`FILE.npz` with `x` and `y`, or a folder with `x.npy` and
//! `y.npy`) for models of any input shape.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::npy::{NpyArray, NpyData};
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
    if is_user_arrays(name) {
        return load_arrays(Path::new(name));
    }
    let kind: DatasetKind = name.parse().with_context(|| {
        format!(
            "--data {name}: use mnist, fashion-mnist, cifar10, {EMBEDDED}, a FILE.npz with arrays x and y, or a folder with x.npy and y.npy"
        )
    })?;
    Ok(Dataset::load(kind, split, pre)?)
}

/// Whether `--data` names user arrays: an `.npz` file or a folder holding `x.npy`.
pub fn is_user_arrays(name: &str) -> bool {
    let p = Path::new(name);
    name.ends_with(".npz") || (p.is_dir() && p.join("x.npy").is_file())
}

/// The user's samples `x` (`[N, …]`, any numeric type, used as they are: no pixel scaling) and
/// integer class labels `y` (`[N]` or `[N, 1]`) from `FILE.npz` or from `x.npy` / `y.npy` in a
/// folder. The same arrays serve as test and calibration data.
pub fn load_arrays(path: &Path) -> Result<Dataset> {
    let (x, y) = if path.is_dir() {
        let read = |f: &str| -> Result<Option<NpyArray>> {
            let p = path.join(f);
            if !p.is_file() {
                return Ok(None);
            }
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(Some(
                crate::npy::parse_npy(&bytes)
                    .with_context(|| format!("reading {}", p.display()))?,
            ))
        };
        (read("x.npy")?, read("y.npy")?)
    } else {
        let bytes = std::fs::read(path)
            .with_context(|| format!("--data {}: cannot read the file", path.display()))?;
        let mut members = crate::npy::parse_npz(&bytes)
            .with_context(|| format!("--data {}: not a readable .npz archive", path.display()))?;
        let mut take = |k: &str| {
            members
                .iter()
                .position(|(n, _)| n == k)
                .map(|i| members.remove(i).1)
        };
        (take("x"), take("y"))
    };
    let what = path.display();
    let Some(x) = x else {
        bail!("--data {what}: no array 'x' of samples (save it with numpy.savez(FILE, x=samples, y=labels))")
    };
    let Some(y) = y else {
        bail!("--data {what}: no array 'y' of integer class labels (one per sample of 'x'); accuracy and the loss-based metrics need them")
    };
    let Some((&n, sample)) = x.shape.split_first() else {
        bail!("--data {what}: 'x' is a scalar; it needs a leading batch axis [N, …]")
    };
    let labels: Vec<u32> = match (&y.data, y.shape.as_slice()) {
        (NpyData::I64(v), [m] | [m, 1]) if *m == n => v
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                u32::try_from(l).map_err(|_| {
                    anyhow::anyhow!(
                        "--data {what}: label {l} of sample {i} is not a class index ≥ 0"
                    )
                })
            })
            .collect::<Result<_>>()?,
        (NpyData::F32(_), _) => bail!(
            "--data {what}: 'y' holds floats ({}); it must hold integer class indices",
            y.dtype.name()
        ),
        _ => bail!(
            "--data {what}: 'y' has shape {:?}; it needs one label per sample of 'x' ({n})",
            y.shape
        ),
    };
    let values: Vec<f32> = match x.data {
        NpyData::F32(v) => v,
        NpyData::I64(v) => v.into_iter().map(|a| a as f32).collect(),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("--data {what}: 'x' holds a non-finite value at flat index {i}");
    }
    let k = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let classes = (0..k).map(|c| c.to_string()).collect();
    let name = path
        .file_stem()
        .map_or_else(|| what.to_string(), |s| s.to_string_lossy().into_owned());
    Dataset::from_array(name, values, labels, sample.to_vec(), classes)
        .with_context(|| format!("--data {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::{encode_npy, encode_zip, NpyType};

    #[test]
    fn user_arrays_from_npz_and_folder() {
        let dir = tempfile::tempdir().unwrap();
        let x = NpyArray {
            dtype: NpyType::F32,
            shape: vec![3, 2, 4],
            data: NpyData::F32((0..24).map(|v| v as f32).collect()),
        };
        let y = NpyArray {
            dtype: NpyType::I64,
            shape: vec![3],
            data: NpyData::I64(vec![2, 0, 1]),
        };
        let npz = dir.path().join("seq.npz");
        let zip = encode_zip(&[
            ("x.npy".into(), encode_npy(&x).unwrap()),
            ("y.npy".into(), encode_npy(&y).unwrap()),
        ])
        .unwrap();
        std::fs::write(&npz, zip).unwrap();
        let d = load(npz.to_str().unwrap(), Split::Test, Scale::Raw).unwrap();
        assert_eq!(
            (d.n, d.sample_shape(), d.sample_len()),
            (3, &[2usize, 4][..], 8)
        );
        assert_eq!(d.labels, [2, 0, 1]);
        assert_eq!(d.classes.len(), 3);
        assert_eq!(
            d.batch(1, 1).0,
            &(8..16).map(|v| v as f32).collect::<Vec<_>>()[..]
        );
        // A folder with x.npy / y.npy gives the same set.
        let folder = dir.path().join("arrays");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("x.npy"), encode_npy(&x).unwrap()).unwrap();
        std::fs::write(folder.join("y.npy"), encode_npy(&y).unwrap()).unwrap();
        let e = load(folder.to_str().unwrap(), Split::Test, Scale::Raw).unwrap();
        assert_eq!((e.images, e.labels), (d.images, d.labels));
        // Missing or wrong labels are errors naming the file and the fix.
        std::fs::remove_file(folder.join("y.npy")).unwrap();
        let err = format!(
            "{:#}",
            load(folder.to_str().unwrap(), Split::Test, Scale::Raw).unwrap_err()
        );
        assert!(err.contains("'y'") && err.contains("arrays"), "{err}");
        let bad = NpyArray {
            dtype: NpyType::I64,
            shape: vec![2],
            data: NpyData::I64(vec![0, 1]),
        };
        std::fs::write(folder.join("y.npy"), encode_npy(&bad).unwrap()).unwrap();
        let err = format!(
            "{:#}",
            load(folder.to_str().unwrap(), Split::Test, Scale::Raw).unwrap_err()
        );
        assert!(err.contains("one label per sample"), "{err}");
    }
}
