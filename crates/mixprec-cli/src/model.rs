//! Loading a model given on the command line: an `.onnx` file, a `.safetensors` checkpoint
//! written by `mixprec train`, or `default` (the built-in LeNet-5 trained on MNIST).

use anyhow::{bail, Context, Result};
use mixprec_graph::{load_onnx, load_safetensors, safetensors_metadata, Graph};
use std::path::Path;

/// Weights of the built-in default model (LeNet-5 trained by `mixprec train`).
pub const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../assets/lenet5-mnist.safetensors");

/// The name that selects the built-in default model.
pub const DEFAULT_MODEL: &str = "default";

/// Load a model specification.
pub fn load(spec: &str) -> Result<Graph> {
    if spec == DEFAULT_MODEL {
        let dir = tempfile::tempdir().context("creating a temporary folder")?;
        let p = dir.path().join("default.safetensors");
        std::fs::write(&p, DEFAULT_WEIGHTS).context("writing the built-in weights")?;
        return from_safetensors(&p);
    }
    let path = Path::new(spec);
    if !path.exists() {
        bail!("model file {spec} does not exist (give an .onnx file, a .safetensors checkpoint from `mixprec train`, or `default`)");
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => from_safetensors(path),
        _ => Ok(load_onnx(path).with_context(|| format!("loading {spec}"))?),
    }
}

fn from_safetensors(path: &Path) -> Result<Graph> {
    let meta = safetensors_metadata(path)?;
    let arch = meta.get("arch").with_context(|| {
        format!(
            "{} has no 'arch' metadata; only checkpoints written by `mixprec train` can be loaded",
            path.display()
        )
    })?;
    let mut g = mixprec_exec::models::build(arch, 0)
        .with_context(|| format!("{} names unknown architecture '{arch}'", path.display()))?;
    load_safetensors(&mut g, path)?;
    Ok(g)
}

/// The data set a model expects by default, from its input shape.
pub fn default_dataset(g: &Graph) -> Option<&'static str> {
    let shape = g.values[*g.inputs.first()?].shape.as_ref()?;
    let dims: Vec<String> = shape.iter().skip(1).map(|d| format!("{d:?}")).collect();
    match dims.join(",").as_str() {
        "Fixed(1),Fixed(28),Fixed(28)" => Some("mnist"),
        "Fixed(3),Fixed(32),Fixed(32)" => Some("cifar10"),
        _ => None,
    }
}
