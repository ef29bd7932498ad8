//! `latency` — measured per-layer latency in ms from a look-up table, the hardware-specific
//! `L_j` of HAWQ-V3 Eq. 26 (survey §3.3; APQ §3.4.4 also uses a LUT). File format:
//! `{ "layers": { "<layer name>": { "w4a8": 0.12, "w8a8": 0.2 } } }`. Keys are the option
//! label (`w4a8`, or `w4a8-kmeans` for other quantizers, falling back to `w4a8`). A missing
//! entry is an error naming the layer, key and file. Complexity: `O(L · k)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{fill, parse, CostModel, CostModelEntry};
use crate::error::{config_err, AllocError, Result};
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

/// A latency look-up table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyLut {
    /// Layer name → option key → milliseconds.
    pub layers: BTreeMap<String, BTreeMap<String, f64>>,
}

impl LatencyLut {
    /// Reads a LUT JSON file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AllocError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| AllocError::Json {
            what: path.display().to_string(),
            source,
        })
    }
}

/// Configuration of [`Latency`]: a file path or an inline table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// Path of the LUT JSON file.
    pub lut: Option<PathBuf>,
    /// Inline LUT (used when `lut` is absent).
    pub inline: Option<LatencyLut>,
}

/// Latency from a LUT.
#[derive(Debug, Clone)]
pub struct Latency {
    lut: LatencyLut,
    source: String,
}

impl Latency {
    /// A latency model over a LUT; `source` names it in errors.
    pub fn new(lut: LatencyLut, source: impl Into<String>) -> Self {
        Self {
            lut,
            source: source.into(),
        }
    }

    /// Reads the LUT file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Ok(Self::new(
            LatencyLut::from_file(path)?,
            path.display().to_string(),
        ))
    }
}

impl CostModel for Latency {
    fn kind(&self) -> CostKind {
        CostKind::Latency
    }
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table> {
        fill(layers, options, |l, o| {
            let plain = format!("w{}a{}", o.weight_bits, o.activation_bits);
            let label = o.label();
            let entry = self.lut.layers.get(&l.name).and_then(|m| {
                m.get(&label)
                    .map(|v| (label.clone(), *v))
                    .or_else(|| m.get(&plain).map(|v| (plain.clone(), *v)))
            });
            match entry {
                Some((key, v)) if !v.is_finite() || v < 0.0 => Err(config_err(
                    "latency",
                    format!(
                        "{}: layer `{}` key `{key}` = {v} is not a valid time",
                        self.source, l.name
                    ),
                )),
                Some((_, v)) => Ok(v),
                None => Err(AllocError::LutMissing {
                    file: self.source.clone(),
                    layer: l.name.clone(),
                    key: label,
                }),
            }
        })
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    let c: LatencyConfig = parse("latency", v)?;
    match (c.lut, c.inline) {
        (Some(path), _) => Ok(Box::new(Latency::from_file(path)?)),
        (None, Some(lut)) => Ok(Box::new(Latency::new(lut, "<inline>"))),
        (None, None) => Err(config_err(
            "latency",
            "give `lut` (a JSON file path) or `inline` (a table)",
        )),
    }
}

/// Registry entry.
pub const ENTRY: CostModelEntry = CostModelEntry {
    name: "latency",
    summary: "ms from a per-layer LUT JSON { layers: { name: { w4a8: ms } } }",
    reference: "survey §3.3 Eq. 26 (L_j), §3.4.4",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_missing_entry() {
        let lut: LatencyLut =
            serde_json::from_str(r#"{"layers": {"c1": {"w4a8": 0.5, "w8a8": 0.9}}}"#).unwrap();
        let m = Latency::new(lut, "lut.json");
        let layers = [LayerInfo::new("c1", 1, 1, 1)];
        let t = m
            .table(&layers, &[BitOption::new(4, 8), BitOption::new(8, 8)])
            .unwrap();
        assert_eq!(t.row(0), &[0.5, 0.9]);
        let e = m
            .table(&layers, &[BitOption::new(2, 8)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c1") && e.contains("w2a8") && e.contains("lut.json"),
            "{e}"
        );
    }
}
