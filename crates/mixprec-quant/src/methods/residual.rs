//! Residual quantization: k-means applied recursively to the residuals of the previous stage.
//!
//! Survey §2.1, Table 1 "Residual Quantization"; Gong et al., "Compressing deep convolutional
//! networks using vector quantization", 2014 \[60\]: `w ≈ Σ_t c_t(w)`, stage `t` quantizing the
//! residual `w - Σ_{s<t} c_s` with its own codebook. Vectors are consecutive runs of `sub_dim`
//! elements of the channel-major tensor (the last one zero-padded). The `bw` code bits per
//! vector are split over `min(stages, bw)` stages (earlier stages get the remainder), so a code
//! costs `bw / sub_dim` bits per element. Complexity O(stages · n · k) per Lloyd iteration;
//! storage `bw` bits per vector + `2^b_t · sub_dim` 32-bit values per stage.

use serde::{Deserialize, Serialize};

use super::product::check_sub_dim;
use super::{check_scheme, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::kmeans::kmeans;
use crate::layout::{Blocks, TensorLayout};
use crate::rounding::QuantRng;
use crate::scheme::{Granularity, QScheme, QuantKind};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "residual",
    kind: QuantKind::Residual,
    summary: "residual quantization: recursive k-means on the residuals of earlier stages",
    reference: "survey §2.1, Table 1; Gong et al. 2014 [60]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResidualConfig {
    /// Number of stages (capped at the bit width).
    pub stages: u8,
    /// Vector width.
    pub sub_dim: usize,
    /// Maximum Lloyd iterations per stage.
    pub iters: usize,
}

impl Default for ResidualConfig {
    fn default() -> Self {
        ResidualConfig {
            stages: 2,
            sub_dim: 2,
            iters: 30,
        }
    }
}

/// The residual quantizer.
#[derive(Debug, Clone)]
pub struct Residual {
    scheme: QScheme,
    config: ResidualConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::Residual)?;
    let config: ResidualConfig = parse_config(ENTRY.name, config)?;
    check_sub_dim(ENTRY.name, config.sub_dim, config.iters)?;
    if config.stages == 0 {
        return Err(QuantError::Config {
            method: ENTRY.name.into(),
            message: "stages must be at least 1".into(),
        });
    }
    Ok(Box::new(Residual { scheme, config }))
}

/// Bits of each stage: `bits` split over `min(stages, bits)` stages, remainder first.
pub(crate) fn stage_bits(bits: u8, stages: u8) -> Vec<u8> {
    let t = stages.min(bits);
    (0..t).map(|s| bits / t + u8::from(s < bits % t)).collect()
}

impl Quantizer for Residual {
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
        let d = self.config.sub_dim;
        let n = values.len();
        let mut residual = blocks.channel_major(values);
        residual.resize(n.div_ceil(d) * d, 0.0);
        let original = residual.clone();
        let mut codebooks = Vec::new();
        let vectors = (residual.len() / d) as u64;
        for b in stage_bits(self.scheme.bits, self.config.stages) {
            let c = kmeans(&residual, d, 1 << b, self.config.iters, rng);
            for (v, &a) in residual.chunks_exact_mut(d).zip(&c.assign) {
                let cen = &c.centroids[a as usize * d..(a as usize + 1) * d];
                v.iter_mut().zip(cen).for_each(|(x, y)| *x -= y);
            }
            codebooks.push(c.centroids);
        }
        let recon: Vec<f32> = original
            .iter()
            .zip(&residual)
            .take(n)
            .map(|(x, r)| x - r)
            .collect();
        let code_bits = self.scheme.bits as u64 * vectors;
        let meta = codebooks.iter().map(|c| c.len() as u64).sum::<u64>() * FLOAT_PARAM_BITS;
        Ok(QuantizedTensor {
            values: blocks.restore_order(&recon),
            scheme: self.scheme,
            scales: Vec::new(),
            zero_points: Vec::new(),
            codebooks,
            code_bits,
            total_bits: code_bits + meta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_stages_by_hand() {
        assert_eq!(stage_bits(5, 2), vec![3, 2]);
        assert_eq!(stage_bits(1, 3), vec![1]);
        // Scalars {0, 1, 10, 11}, two 1-bit stages: stage 1 -> {0.5, 10.5}, residuals ±0.5,
        // stage 2 -> {-0.5, 0.5}: exact reconstruction.
        let s = QScheme::new(QuantKind::Residual, 2, true, Granularity::Tensor);
        let cfg = ResidualConfig {
            sub_dim: 1,
            ..ResidualConfig::default()
        };
        let q = Residual {
            scheme: s,
            config: cfg,
        }
        .quantize(&[0.0, 1.0, 10.0, 11.0], &TensorLayout::flat(4), 2)
        .unwrap();
        for (g, w) in q.values.iter().zip([0.0, 1.0, 10.0, 11.0]) {
            assert!((g - w).abs() < 1e-5, "{:?}", q.values);
        }
        assert_eq!(q.codebooks.len(), 2);
        assert_eq!(q.total_bits, 8 + 4 * 32);
    }
}
