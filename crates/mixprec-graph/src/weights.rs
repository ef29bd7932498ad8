//! Weights as safetensors: save a graph's float initializers by value name, load them back.

use crate::error::{GraphError, Result};
use crate::export::write_atomic;
use crate::ir::Graph;
use crate::tensor::TensorData;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// Save every float initializer of `g` to a safetensors file (atomically), with optional
/// string metadata (mixprec records the architecture under `arch`).
pub fn save_safetensors(
    g: &Graph,
    path: impl AsRef<Path>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let err = |d: String| GraphError::Safetensors {
        path: path.into(),
        detail: d,
    };
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (v, t) in &g.initializers {
        if let TensorData::F32(data) = &t.data {
            bufs.push((
                g.values[*v].name.clone(),
                t.shape.clone(),
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| err(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| err(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Load float tensors from a safetensors file into the graph's initializers of the same name.
/// Every float initializer must be present with the same shape; extra tensors are an error too.
pub fn load_safetensors(g: &mut Graph, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let err = |d: String| GraphError::Safetensors {
        path: path.into(),
        detail: d,
    };
    let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
        path: path.into(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let mut seen = 0usize;
    for (v, t) in g.initializers.iter_mut() {
        if !t.is_float() {
            continue;
        }
        let name = &g.values[*v].name;
        let view = st
            .tensor(name)
            .map_err(|_| err(format!("tensor '{name}' is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(err(format!(
                "tensor '{name}' has dtype {:?}, expected F32",
                view.dtype()
            )));
        }
        if view.shape() != t.shape.as_slice() {
            return Err(err(format!(
                "tensor '{name}' has shape {:?}, the model expects {:?}",
                view.shape(),
                t.shape
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        t.data = TensorData::F32(data);
        seen += 1;
    }
    if seen != st.len() {
        return Err(err(format!(
            "holds {} tensors, the model has {seen} float initializers",
            st.len()
        )));
    }
    Ok(())
}

/// The string metadata of a safetensors file.
pub fn safetensors_metadata(
    path: impl AsRef<Path>,
) -> Result<std::collections::HashMap<String, String>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
        path: path.into(),
        source,
    })?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| GraphError::Safetensors {
            path: path.into(),
            detail: format!("not a valid safetensors file: {e}"),
        })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
