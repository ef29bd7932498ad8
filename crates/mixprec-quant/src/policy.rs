//! Mixed-precision policies: layer name → weight / activation scheme (DESIGN §5), as
//! hand-editable, versioned JSON.
//!
//! ```json
//! { "version": 1,
//!   "layers": { "conv1": { "weight": { "bits": 4, "kind": "uniform", "granularity": "channel" },
//!                          "activation": { "bits": 8, "kind": "uniform", "symmetric": false } } } }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::scheme::QScheme;

/// The policy format version this build reads and writes.
pub const POLICY_VERSION: u32 = 1;

/// Schemes of one layer; `None` keeps that tensor in floating point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPolicy {
    /// Scheme of the layer's weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<QScheme>,
    /// Scheme of the layer's input activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<QScheme>,
}

/// A per-layer quantization policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version ([`POLICY_VERSION`]).
    pub version: u32,
    /// Layer name → schemes, sorted by name.
    pub layers: BTreeMap<String, LayerPolicy>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            version: POLICY_VERSION,
            layers: BTreeMap::new(),
        }
    }
}

/// Edit distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Policy {
    /// An empty policy of the current version.
    pub fn new() -> Self {
        Policy::default()
    }

    /// Sets the weight scheme of `layer`.
    pub fn set_weight(&mut self, layer: &str, scheme: QScheme) -> &mut Self {
        self.layers.entry(layer.to_string()).or_default().weight = Some(scheme);
        self
    }

    /// Sets the activation scheme of `layer`.
    pub fn set_activation(&mut self, layer: &str, scheme: QScheme) -> &mut Self {
        self.layers.entry(layer.to_string()).or_default().activation = Some(scheme);
        self
    }

    /// The schemes of `layer`, if the policy names it.
    pub fn get(&self, layer: &str) -> Option<&LayerPolicy> {
        self.layers.get(layer)
    }

    /// Checks the version and every scheme (errors name the layer).
    pub fn validate_schemes(&self) -> Result<()> {
        if self.version != POLICY_VERSION {
            return Err(QuantError::PolicyVersion {
                found: self.version,
                supported: POLICY_VERSION,
            });
        }
        for (name, lp) in &self.layers {
            for (role, s) in [("weight", &lp.weight), ("activation", &lp.activation)] {
                if let Some(s) = s {
                    s.validate().map_err(|e| QuantError::LayerScheme {
                        layer: name.clone(),
                        role,
                        source: Box::new(e),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// [`Policy::validate_schemes`] plus: every layer name must be one of `known_layers`.
    pub fn validate(&self, known_layers: &[&str]) -> Result<()> {
        self.validate_schemes()?;
        for name in self.layers.keys() {
            if !known_layers.contains(&name.as_str()) {
                let hint = known_layers
                    .iter()
                    .min_by_key(|k| edit_distance(name, k))
                    .map(|k| format!(", did you mean '{k}'?"))
                    .unwrap_or_default();
                return Err(QuantError::UnknownLayer {
                    layer: name.clone(),
                    known: known_layers.len(),
                    hint,
                });
            }
        }
        Ok(())
    }

    /// Parses policy JSON and checks its version and schemes.
    pub fn from_json(text: &str) -> Result<Self> {
        let p: Policy = serde_json::from_str(text).map_err(|e| QuantError::Json {
            what: "policy".into(),
            message: e.to_string(),
        })?;
        p.validate_schemes()?;
        Ok(p)
    }

    /// Pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("policies always serialize")
    }

    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| QuantError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_json(&text).map_err(|e| match e {
            QuantError::Json { message, .. } => QuantError::Json {
                what: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Writes the policy atomically: to `<path>.tmp` in the same directory, then renames.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| QuantError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_json() + "\n").map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{Granularity, QuantKind};

    #[test]
    fn json_round_trip_and_hint() {
        let mut p = Policy::new();
        p.set_weight(
            "conv1",
            QScheme::new(QuantKind::Uniform, 4, true, Granularity::Channel),
        );
        p.set_activation(
            "conv1",
            QScheme::new(QuantKind::Uniform, 8, false, Granularity::Tensor),
        );
        let back = Policy::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
        back.validate(&["conv1", "fc"]).unwrap();
        let err = back.validate(&["conv2", "fc"]).unwrap_err().to_string();
        assert!(
            err.contains("'conv1'") && err.contains("did you mean 'conv2'"),
            "{err}"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
