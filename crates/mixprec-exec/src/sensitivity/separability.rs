//! `separability`: PDB's feature separability of each layer's output, weighting the layer's
//! own output quantization error.
//!
//! Survey §3.2.2 (PDB, Chu et al. 2021, "Mixed-Precision Quantized Neural Networks with
//! Progressively Decreasing Bitwidth", Pattern Recognition), Eq. 19:
//! s = (1/N) Σ_k [ (Σ_{l: y_l = y_k} d_kl / #{l: y_l = y_k}) / (Σ_{l: y_l ≠ y_k} d_kl /
//! #{l: y_l ≠ y_k}) ], with d_kl the squared Euclidean distance between the layer outputs of
//! samples k and l (the survey prints the two means side by side; PDB divides them). `l = k`
//! is left out of the same-class mean, and samples alone in their class or without another
//! class are skipped. s is near 1 when the classes overlap and falls as they separate.
//!
//! PDB gives no per-option table; here the table value is the layer's relative output error
//! ‖y_q − y‖² / ‖y‖² with only that layer quantized ([`SensCtx::local_error_table`]) times s,
//! so that poorly separated features (early layers, which PDB gives more bits) count more.
//! The raw s per layer ([`layer_separability`]) feeds `LayerExtra::separability` of the `pdb`
//! allocator. Labels are the samples' labels (pseudo-labels for distilled data).
//!
//! Complexity: one float pass; O(N²·D) per layer for N ≤ `max_samples` samples of D output
//! values; one pass per (layer, option) for the table.

use serde::Deserialize;

use super::{parse_config, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable};
use crate::error::{ExecError, Result};

/// Configuration of `separability`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Samples used for the distances (the first ones); the table uses all.
    pub max_samples: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_samples: 128 }
    }
}

/// The PDB separability metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Separability {
    cfg: Config,
}

/// Eq. 19 on `features` (`labels.len()` rows of `dim` values); `None` when no sample has
/// both another sample of its class and one of another class.
pub fn separability(features: &[f32], dim: usize, labels: &[u32]) -> Option<f64> {
    let n = labels.len().min(features.len() / dim.max(1));
    let row = |i: usize| &features[i * dim..(i + 1) * dim];
    let mut d = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let v: f64 = row(i)
                .iter()
                .zip(row(j))
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum();
            d[i * n + j] = v;
            d[j * n + i] = v;
        }
    }
    let (mut total, mut used) = (0.0, 0usize);
    for k in 0..n {
        let (mut same, mut ns, mut other, mut no) = (0.0, 0usize, 0.0, 0usize);
        for l in (0..n).filter(|&l| l != k) {
            if labels[l] == labels[k] {
                same += d[k * n + l];
                ns += 1;
            } else {
                other += d[k * n + l];
                no += 1;
            }
        }
        if ns == 0 || no == 0 {
            continue;
        }
        let inter = other / no as f64;
        let intra = same / ns as f64;
        total += if inter > 0.0 {
            intra / inter
        } else if intra > 0.0 {
            f64::INFINITY
        } else {
            1.0
        };
        used += 1;
    }
    (used > 0).then(|| total / used as f64)
}

/// Separability s (Eq. 19) of every layer's output on the first `max_samples` samples.
pub fn layer_separability(ctx: &SensCtx, max_samples: usize) -> Result<Vec<f64>> {
    let labels: Vec<u32> = ctx
        .batches
        .iter()
        .flat_map(|(_, y)| y.iter().copied())
        .take(max_samples.max(2))
        .collect();
    let layers: Vec<_> = ctx.layers.iter().collect();
    let outputs = ctx.layer_outputs(&layers, None)?;
    layers
        .iter()
        .zip(&outputs)
        .map(|(l, (vals, rest))| {
            let dim: usize = rest.iter().product::<usize>().max(1);
            separability(&vals[..(labels.len() * dim).min(vals.len())], dim, &labels).ok_or_else(
                || {
                    ExecError::Invalid(format!(
                        "separability of layer '{}': the {} samples need at least two classes and two samples of one class",
                        l.name,
                        labels.len()
                    ))
                },
            )
        })
        .collect()
}

impl SensitivityMetric for Separability {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        let s = layer_separability(ctx, self.cfg.max_samples)?;
        let mut values = ctx.local_error_table()?;
        for (row, s) in values.iter_mut().zip(&s) {
            row.iter_mut().for_each(|v| *v *= s);
        }
        let mut t = ctx.table(ENTRY.name, values);
        t.details = s
            .iter()
            .map(|&s| [("separability".to_string(), s)].into_iter().collect())
            .collect();
        Ok(t)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    let cfg: Config = parse_config(ENTRY.name, v)?;
    if cfg.max_samples < 3 {
        return Err(ExecError::Invalid(
            "config of metric separability: max_samples must be at least 3".into(),
        ));
    }
    Ok(Box::new(Separability { cfg }))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "separability",
    summary: "own-output quantization error × PDB feature separability (intra/inter distance)",
    reference: "survey §3.2.2, Eq. 19; Chu et al. 2021, PDB",
    build,
};

#[cfg(test)]
mod tests {
    #[test]
    fn separability_by_hand() {
        // 1-D features 0, 1 (class 0) and 10, 11 (class 1). Same-class squared distance is 1
        // for every sample; other-class means are (100 + 121)/2 = 110.5 for the outer samples
        // and (81 + 100)/2 = 90.5 for the inner ones.
        let s = super::separability(&[0.0, 1.0, 10.0, 11.0], 1, &[0, 0, 1, 1]).unwrap();
        let want = (1.0 / 110.5 + 1.0 / 90.5) / 2.0;
        assert!((s - want).abs() < 1e-15, "{s} vs {want}");
        // Labels that ignore the features: same- and other-class distances match on average.
        let s = super::separability(&[0.0, 1.0, 0.0, 1.0], 1, &[0, 1, 1, 0]).unwrap();
        // Sample 0: same {3} → 1, other {1, 2} → (1 + 0)/2; ratio 2 (likewise for every one).
        assert!((s - 2.0).abs() < 1e-15, "{s}");
        assert_eq!(super::separability(&[0.0, 1.0], 1, &[0, 1]), None);
    }
}
