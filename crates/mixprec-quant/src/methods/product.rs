//! Product quantization: rows split into sub-vectors, one k-means codebook per subspace.
//!
//! Survey §2.1, Table 1 "Product Quantization (PQ)": Gong et al., "Compressing deep
//! convolutional networks using vector quantization", 2014 \[60\]. The tensor is read as rows
//! (one per channel along the layout's channel axis, e.g. the output neurons of `[out, in]`);
//! columns are split into subspaces of `sub_dim` consecutive elements (the last may be
//! narrower) and each subspace gets its own codebook of `k = 2^bw` centroids (Eq. 3 on
//! sub-vectors). `bw` is the bit width of one sub-vector code, so codes cost `bw / sub_dim` bits
//! per element. Complexity O(rows · k · row_len) per Lloyd iteration; storage `bw` bits per
//! sub-vector + `k · sub_dim` 32-bit centroid values per subspace.

use serde::{Deserialize, Serialize};

use super::{check_scheme, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::kmeans::kmeans;
use crate::layout::{Blocks, TensorLayout};
use crate::rounding::QuantRng;
use crate::scheme::{Granularity, QScheme, QuantKind};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "product",
    kind: QuantKind::Product,
    summary: "product quantization: one k-means codebook per sub-vector space",
    reference: "survey §2.1, Table 1; Gong et al. 2014 [60]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProductConfig {
    /// Sub-vector width (elements per code).
    pub sub_dim: usize,
    /// Maximum Lloyd iterations per subspace.
    pub iters: usize,
}

impl Default for ProductConfig {
    fn default() -> Self {
        ProductConfig {
            sub_dim: 2,
            iters: 30,
        }
    }
}

pub(crate) fn check_sub_dim(method: &str, sub_dim: usize, iters: usize) -> Result<()> {
    if sub_dim == 0 || iters == 0 {
        return Err(QuantError::Config {
            method: method.into(),
            message: format!("sub_dim ({sub_dim}) and iters ({iters}) must be at least 1"),
        });
    }
    Ok(())
}

/// A product-quantized matrix of `rows × row_len` (channel-major): per subspace its column
/// range, codebook (`k_j × width` values) and one code per row.
#[derive(Debug, Clone)]
pub(crate) struct PqModel {
    pub rows: usize,
    pub row_len: usize,
    pub subspaces: Vec<Subspace>,
}

#[derive(Debug, Clone)]
pub(crate) struct Subspace {
    pub start: usize,
    pub width: usize,
    pub centroids: Vec<f32>,
    pub codes: Vec<u32>,
}

impl PqModel {
    /// Fits one k-means codebook per subspace of `data` (`rows × row_len`).
    pub fn fit(
        data: &[f32],
        rows: usize,
        row_len: usize,
        sub_dim: usize,
        k: usize,
        iters: usize,
        rng: &mut QuantRng,
    ) -> PqModel {
        let mut subspaces = Vec::new();
        let mut start = 0;
        while start < row_len {
            let width = sub_dim.min(row_len - start);
            let mut sub = Vec::with_capacity(rows * width);
            for r in 0..rows {
                sub.extend_from_slice(&data[r * row_len + start..r * row_len + start + width]);
            }
            let c = kmeans(&sub, width, k, iters, rng);
            subspaces.push(Subspace {
                start,
                width,
                centroids: c.centroids,
                codes: c.assign,
            });
            start += width;
        }
        PqModel {
            rows,
            row_len,
            subspaces,
        }
    }

    /// The reconstructed matrix (`rows × row_len`).
    pub fn reconstruct(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.row_len];
        for s in &self.subspaces {
            for (r, &c) in s.codes.iter().enumerate() {
                let c = c as usize;
                out[r * self.row_len + s.start..r * self.row_len + s.start + s.width]
                    .copy_from_slice(&s.centroids[c * s.width..(c + 1) * s.width]);
            }
        }
        out
    }

    /// Packs the model into a [`QuantizedTensor`] in the original layout.
    pub fn into_tensor(self, scheme: &QScheme, blocks: &Blocks) -> QuantizedTensor {
        let values = blocks.restore_order(&self.reconstruct());
        let code_bits = scheme.bits as u64 * (self.rows * self.subspaces.len()) as u64;
        let codebooks: Vec<Vec<f32>> = self.subspaces.into_iter().map(|s| s.centroids).collect();
        let meta = codebooks.iter().map(|c| c.len() as u64).sum::<u64>() * FLOAT_PARAM_BITS;
        QuantizedTensor {
            values,
            scheme: *scheme,
            scales: Vec::new(),
            zero_points: Vec::new(),
            codebooks,
            code_bits,
            total_bits: code_bits + meta,
        }
    }
}

/// The product quantizer.
#[derive(Debug, Clone)]
pub struct Product {
    scheme: QScheme,
    config: ProductConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::Product)?;
    let config: ProductConfig = parse_config(ENTRY.name, config)?;
    check_sub_dim(ENTRY.name, config.sub_dim, config.iters)?;
    Ok(Box::new(Product { scheme, config }))
}

impl Quantizer for Product {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let blocks = Blocks::new(layout, Granularity::Channel)?;
        let data = blocks.channel_major(values);
        let model = PqModel::fit(
            &data,
            blocks.count,
            blocks.len,
            self.config.sub_dim,
            1 << self.scheme.bits,
            self.config.iters,
            rng,
        );
        Ok(model.into_tensor(&self.scheme, &blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subspace_codebooks_by_hand() {
        // 4 rows × 3 columns, sub_dim 2: subspaces cols {0,1} and {2}; 1 bit = 2 centroids.
        // Rows 0/1 and 2/3 share their first sub-vector exactly; column 2 splits {0, 0} vs
        // {10, 12}.
        let w = [
            1.0, 2.0, 0.0, //
            1.0, 2.0, 0.0, //
            -1.0, 5.0, 10.0, //
            -1.0, 5.0, 12.0,
        ];
        let s = QScheme::new(QuantKind::Product, 1, true, Granularity::Tensor);
        let q = Product {
            scheme: s,
            config: ProductConfig::default(),
        }
        .quantize(&w, &TensorLayout::weight(&[4, 3]), 3)
        .unwrap();
        let want = [
            1.0, 2.0, 0.0, 1.0, 2.0, 0.0, -1.0, 5.0, 11.0, -1.0, 5.0, 11.0,
        ];
        for (g, w) in q.values.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", q.values);
        }
        // Codes: 4 rows × 2 subspaces × 1 bit; codebooks 2×2 + 2×1 values.
        assert_eq!(q.code_bits, 8);
        assert_eq!(q.total_bits, 8 + 6 * 32);
    }
}
