//! `model-size` — stored model size in bits (survey §3.3 Eq. 26 `M_j`; HAWQ-V2 Eq. 32 uses
//! `|w| · b`): `params · b_w` plus quantizer overhead: per-channel (or per-tensor) scale and
//! zero point of `scale_bits` / `zero_point_bits` each (32 by default) for uniform-like
//! quantizers, and one codebook of `2^b_w` entries × `codebook_entry_bits` (32) for
//! codebook quantizers (`kmeans` by default, as in Deep Compression). Float options
//! (`weight_bits >= 32`) have no overhead. Complexity: `O(L · k)`.

use serde::{Deserialize, Serialize};

use super::{fill, parse, CostModel, CostModelEntry};
use crate::error::Result;
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

/// Configuration of [`ModelSize`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSizeConfig {
    /// Bits per scale.
    pub scale_bits: u64,
    /// Bits per zero point (0 for symmetric quantizers).
    pub zero_point_bits: u64,
    /// One scale per output channel (true) or per tensor.
    pub per_channel: bool,
    /// Quantizer names that store a codebook instead of scale / zero point.
    pub codebook_quantizers: Vec<String>,
    /// Bits per codebook entry.
    pub codebook_entry_bits: u64,
    /// One codebook per output channel (true) or per layer.
    pub codebook_per_channel: bool,
}

impl Default for ModelSizeConfig {
    fn default() -> Self {
        Self {
            scale_bits: 32,
            zero_point_bits: 32,
            per_channel: true,
            codebook_quantizers: vec!["kmeans".into()],
            codebook_entry_bits: 32,
            codebook_per_channel: false,
        }
    }
}

/// Model size in bits.
#[derive(Debug, Clone, Default)]
pub struct ModelSize {
    /// Its configuration.
    pub config: ModelSizeConfig,
}

impl ModelSize {
    /// Size in bits of one layer at one option.
    pub fn bits(&self, l: &LayerInfo, o: &BitOption) -> f64 {
        let c = &self.config;
        let w = l.params as f64 * o.weight_bits as f64;
        if o.weight_bits >= 32 {
            return w;
        }
        if c.codebook_quantizers.contains(&o.quantizer) {
            let books = if c.codebook_per_channel {
                l.out_channels.max(1)
            } else {
                1
            };
            w + books as f64 * 2f64.powi(o.weight_bits as i32) * c.codebook_entry_bits as f64
        } else {
            let groups = if c.per_channel {
                l.out_channels.max(1)
            } else {
                1
            };
            w + groups as f64 * (c.scale_bits + c.zero_point_bits) as f64
        }
    }
}

impl CostModel for ModelSize {
    fn kind(&self) -> CostKind {
        CostKind::ModelSize
    }
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table> {
        fill(layers, options, |l, o| Ok(self.bits(l, o)))
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    Ok(Box::new(ModelSize {
        config: parse("model-size", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: CostModelEntry = CostModelEntry {
    name: "model-size",
    summary: "bits: params × b_w + 32-bit scales/zero points per channel, 2^b × 32 codebooks",
    reference: "survey §3.3 Eq. 26 (M_j), §3.3.2 Eq. 32",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let mut l = LayerInfo::new("c", 1000, 0, 0);
        l.out_channels = 16;
        let m = ModelSize::default();
        // 1000 × 4 + 16 × 64
        assert_eq!(m.bits(&l, &BitOption::new(4, 8)), 5024.0);
        let km = BitOption {
            weight_bits: 3,
            activation_bits: 8,
            quantizer: "kmeans".into(),
        };
        // 3000 + 8 × 32
        assert_eq!(m.bits(&l, &km), 3256.0);
        assert_eq!(m.bits(&l, &BitOption::new(32, 32)), 32000.0);
    }
}
