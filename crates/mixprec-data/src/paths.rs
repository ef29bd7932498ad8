//! Locating the data folder (`$MIXPREC_DATA`, default `../shared/data`).
//!
//! The data folder is the one holding `mnist/`, `fashion-mnist/`, `cifar10/` and `models/`.
//! It is never copied into the repository; the repository sits beside a `shared/` folder.

use std::path::{Path, PathBuf};

/// Name of the environment variable that points at the data folder.
pub const DATA_ENV: &str = "MIXPREC_DATA";

/// Default data folder, relative to the repository root.
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

/// The data folder: `$MIXPREC_DATA` when set and non-empty, otherwise the first existing of
///
/// 1. `../shared/data` relative to the current directory (the repository root),
/// 2. `A/shared/data` for each ancestor `A` of the current directory,
/// 3. `A/shared/data` for each ancestor `A` of this crate's source folder,
///
/// and `../shared/data` when none exists (loaders then report that path as missing).
pub fn data_dir() -> PathBuf {
    if let Some(v) = std::env::var_os(DATA_ENV) {
        if !v.is_empty() {
            return PathBuf::from(v);
        }
    }
    let cwd = std::env::current_dir().ok();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    find_data_dir(cwd.as_deref(), manifest).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Search described in [`data_dir`], without the environment variable.
fn find_data_dir(cwd: Option<&Path>, manifest_dir: &Path) -> Option<PathBuf> {
    if let Some(cwd) = cwd {
        let rel = cwd.join(DEFAULT_DATA_DIR);
        if rel.is_dir() {
            return Some(rel);
        }
    }
    let starts = cwd.into_iter().chain(std::iter::once(manifest_dir));
    for start in starts {
        for anc in start.ancestors() {
            let cand = anc.join("shared").join("data");
            if cand.is_dir() {
                return Some(cand);
            }
        }
    }
    None
}

/// Folder of the stored ONNX Runtime reference outputs (`tests-data/ort/` in the repository).
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("tests-data")
        .join("ort")
}

/// Folder of the ONNX models inside the data folder (`<data_dir>/models`).
pub fn models_dir() -> PathBuf {
    data_dir().join("models")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shared_data_beside_an_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("shared").join("data");
        std::fs::create_dir_all(&data).unwrap();
        let deep = tmp.path().join("main").join("crates").join("x");
        std::fs::create_dir_all(&deep).unwrap();
        let found = find_data_dir(Some(&deep), Path::new("/nonexistent-mixprec")).unwrap();
        assert_eq!(found.canonicalize().unwrap(), data.canonicalize().unwrap());
        // From the repository root the relative default is used as is.
        let root = tmp.path().join("main");
        let found = find_data_dir(Some(&root), Path::new("/nonexistent-mixprec")).unwrap();
        assert_eq!(found, root.join(DEFAULT_DATA_DIR));
    }

    #[test]
    fn nothing_found_gives_none() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a").join("b");
        std::fs::create_dir_all(&deep).unwrap();
        // The temp dir lives under /tmp, which has no shared/data ancestor sibling here
        // unless one was made on purpose; only assert when that is the case.
        if !Path::new("/tmp/shared/data").is_dir() && !Path::new("/shared/data").is_dir() {
            assert!(find_data_dir(Some(&deep), &deep).is_none());
        }
    }
}
