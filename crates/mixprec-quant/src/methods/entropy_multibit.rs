//! Weighted-entropy-based multi-bit clustering.
//!
//! Survey §2.1, Table 1 "Automatic (Multi-Bit) Quantization — groups weights in clusters
//! according to their entropies"; Park et al., "Weighted-entropy-based quantization for deep
//! neural networks", CVPR 2017 \[59\]. Each weight has importance `i = w²`. Magnitudes are sorted
//! and split into `N = 2^(bw-1)` contiguous clusters (one sign bit) that maximise the weighted
//! entropy `S = -Σ_k I_k P_k ln P_k` (`P_k` the cluster's share of weights, `I_k` its mean
//! importance), found by Park et al.'s incremental boundary search (coarse-to-fine moves of one
//! boundary at a time, kept when `S` grows). Cluster `k` is represented by
//! `sign(w) · sqrt(I_k)`. Stochastic rounding rounds between neighbouring levels instead of by
//! cluster membership. Complexity per block: O(n log n) sort + O(sweeps · N · log n) search; storage `bw` bits per
//! element + `N` 32-bit levels per block.

use serde::{Deserialize, Serialize};

use super::{check_scheme, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::layout::{Blocks, TensorLayout};
use crate::rounding::{round_to_levels, QuantRng};
use crate::scheme::{QScheme, QuantKind, Rounding};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "entropy-multibit",
    kind: QuantKind::EntropyMultibit,
    summary: "clusters weights by importance to maximise weighted entropy (multi-bit levels)",
    reference: "survey §2.1, Table 1; Park et al. 2017 [59]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntropyMultibitConfig {
    /// Maximum passes over the boundaries at each step size.
    pub max_sweeps: usize,
}

impl Default for EntropyMultibitConfig {
    fn default() -> Self {
        EntropyMultibitConfig { max_sweeps: 50 }
    }
}

/// The weighted-entropy quantizer.
#[derive(Debug, Clone)]
pub struct EntropyMultibit {
    scheme: QScheme,
    config: EntropyMultibitConfig,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::EntropyMultibit)?;
    let config: EntropyMultibitConfig = parse_config(ENTRY.name, config)?;
    if config.max_sweeps == 0 {
        return Err(QuantError::Config {
            method: ENTRY.name.into(),
            message: "max_sweeps must be at least 1".into(),
        });
    }
    Ok(Box::new(EntropyMultibit { scheme, config }))
}

/// Term `-I_k P_k ln P_k` of cluster `[a, b)` given importance prefix sums.
fn term(prefix: &[f64], a: usize, b: usize, n: usize) -> f64 {
    let cnt = (b - a) as f64;
    if cnt == 0.0 {
        return 0.0;
    }
    let p = cnt / n as f64;
    let imp = (prefix[b] - prefix[a]) / cnt;
    -imp * p * p.ln()
}

/// Cluster boundaries (indices into the sorted magnitudes, `0 = b_0 < ... < b_N = n`) that
/// maximise the weighted entropy.
pub(crate) fn weighted_entropy_boundaries(
    sorted_importance: &[f64],
    clusters: usize,
    max_sweeps: usize,
) -> Vec<usize> {
    let n = sorted_importance.len();
    let k = clusters.min(n).max(1);
    let mut prefix = vec![0.0; n + 1];
    for (i, v) in sorted_importance.iter().enumerate() {
        prefix[i + 1] = prefix[i] + v;
    }
    let mut b: Vec<usize> = (0..=k).map(|j| j * n / k).collect();
    let mut step = (n / (2 * k)).max(1).next_power_of_two();
    loop {
        for _ in 0..max_sweeps {
            let mut moved = false;
            for t in 1..k {
                let local = |bt: usize, b: &[usize]| {
                    term(&prefix, b[t - 1], bt, n) + term(&prefix, bt, b[t + 1], n)
                };
                let cur = local(b[t], &b);
                for cand in [b[t].saturating_sub(step), b[t] + step] {
                    if cand > b[t - 1] && cand < b[t + 1] && local(cand, &b) > cur + 1e-15 {
                        b[t] = cand;
                        moved = true;
                        break;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        if step == 1 {
            return b;
        }
        step /= 2;
    }
}

impl Quantizer for EntropyMultibit {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let s = self.scheme;
        let clusters = 1usize << (s.bits - 1);
        let blocks = Blocks::new(layout, s.granularity)?;
        let mut codebooks = Vec::with_capacity(blocks.count);
        let out = blocks.map(values, |_, block, out| {
            let mut order: Vec<usize> = (0..block.len()).collect();
            order.sort_by(|&a, &b| block[a].abs().total_cmp(&block[b].abs()));
            let imp: Vec<f64> = order.iter().map(|&i| (block[i] as f64).powi(2)).collect();
            let b = weighted_entropy_boundaries(&imp, clusters, self.config.max_sweeps);
            let mags: Vec<f32> = b
                .windows(2)
                .map(|w| (imp[w[0]..w[1]].iter().sum::<f64>() / (w[1] - w[0]) as f64).sqrt() as f32)
                .collect();
            match s.rounding {
                Rounding::Nearest => {
                    for (c, w) in b.windows(2).enumerate() {
                        for &i in &order[w[0]..w[1]] {
                            out[i] = mags[c].copysign(block[i]);
                        }
                    }
                }
                Rounding::Stochastic => {
                    let mut levels: Vec<f32> = mags.iter().rev().map(|m| -m).collect();
                    levels.extend(&mags);
                    for (o, &x) in out.iter_mut().zip(block) {
                        *o = levels[round_to_levels(x, &levels, s.rounding, rng)];
                    }
                }
            }
            codebooks.push(mags);
            Ok(())
        })?;
        let code_bits = s.bits as u64 * values.len() as u64;
        let meta = codebooks.iter().map(|c| c.len() as u64).sum::<u64>() * FLOAT_PARAM_BITS;
        Ok(QuantizedTensor {
            values: out,
            scheme: s,
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
    use crate::scheme::Granularity;

    #[test]
    fn boundaries_maximise_weighted_entropy_by_hand() {
        // Importances [1, 1, 1, 100], two clusters; S for each boundary position:
        // b=1: -(1·¼ln¼) - (34·¾ln¾) = 0.347 + 7.336 = 7.68;
        // b=2: -(1·½ln½) - (50.5·½ln½) = 0.347 + 17.50 = 17.85;
        // b=3: -(1·¾ln¾) - (100·¼ln¼) = 0.216 + 34.66 = 34.87 (best: the outlier alone).
        let b = weighted_entropy_boundaries(&[1.0, 1.0, 1.0, 100.0], 2, 10);
        assert_eq!(b, vec![0, 3, 4]);
        let b = weighted_entropy_boundaries(&[1.0, 1.0, 1.0, 1.0], 2, 10);
        assert_eq!(b, vec![0, 2, 4]);
        // Magnitudes sqrt(mean w²): 1 and 10; signs kept.
        let s = QScheme::new(QuantKind::EntropyMultibit, 2, true, Granularity::Tensor);
        let q = EntropyMultibit {
            scheme: s,
            config: EntropyMultibitConfig::default(),
        }
        .quantize(&[1.0, -1.0, 1.0, -10.0], &TensorLayout::flat(4), 0)
        .unwrap();
        assert_eq!(q.values, vec![1.0, -1.0, 1.0, -10.0]);
        assert_eq!(q.codebooks, vec![vec![1.0, 10.0]]);
    }
}
