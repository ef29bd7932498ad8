//! Scalar vector quantization by k-means (weight sharing).
//!
//! Survey §2.1 Eq. 3 (`min Σ_i Σ_j ||weight_i - centroid_j||²`), Table 1 "vector quantization";
//! Gong et al., "Compressing deep convolutional networks using vector quantization", 2014 \[60\];
//! Han et al., "Deep compression", 2015 \[46\]. `k = 2^bw` centroids per block, k-means++
//! initialisation from the seeded generator, Lloyd iterations until the error stops falling.
//! Complexity O(n log k) per iteration; storage `bw` bits per element + `k` 32-bit centroids per
//! block.

use serde::{Deserialize, Serialize};

use super::{check_scheme, parse_config, quantize_on_codebooks, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::kmeans::kmeans;
use crate::layout::TensorLayout;
use crate::rounding::QuantRng;
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::QuantizedTensor;

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "kmeans",
    kind: QuantKind::Kmeans,
    summary: "k-means weight sharing with 2^bits learned centroids (k-means++ seeded)",
    reference: "survey §2.1 Eq. 3; Gong et al. 2014 [60]; Han et al. 2015 [46]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmeansConfig {
    /// Maximum Lloyd iterations.
    pub iters: usize,
}

impl Default for KmeansConfig {
    fn default() -> Self {
        KmeansConfig { iters: 50 }
    }
}

/// The k-means quantizer.
#[derive(Debug, Clone)]
pub struct Kmeans {
    scheme: QScheme,
    config: KmeansConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::Kmeans)?;
    let config: KmeansConfig = parse_config(ENTRY.name, config)?;
    if config.iters == 0 {
        return Err(QuantError::Config {
            method: ENTRY.name.into(),
            message: "iters must be at least 1".into(),
        });
    }
    Ok(Box::new(Kmeans { scheme, config }))
}

impl Quantizer for Kmeans {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let k = 1usize << self.scheme.bits;
        let iters = self.config.iters;
        quantize_on_codebooks(values, layout, &self.scheme, rng, |block, rng| {
            Ok(kmeans(block, 1, k, iters, rng).centroids)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Granularity;

    #[test]
    fn two_clusters_by_hand() {
        let s = QScheme::new(QuantKind::Kmeans, 1, true, Granularity::Tensor);
        let q = Kmeans {
            scheme: s,
            config: KmeansConfig::default(),
        }
        .quantize(&[0.0, 0.2, 4.0, 4.2], &TensorLayout::flat(4), 5)
        .unwrap();
        for (got, want) in q.values.iter().zip([0.1, 0.1, 4.1, 4.1]) {
            assert!((got - want).abs() < 1e-6, "{:?}", q.values);
        }
        assert_eq!(q.codebooks.len(), 1);
        assert_eq!(q.total_bits, 4 + 2 * 32);
    }
}
