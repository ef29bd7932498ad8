//! `pca-significance`: Hybrid-Net's PCA significance of each layer, weighting the layer's own
//! output quantization error.
//!
//! Survey §3.2.4 (Hybrid-Net, Chakraborty et al. 2020, "Constructing energy-efficient
//! mixed-precision neural networks through principal component analysis for edge
//! intelligence", Nature Machine Intelligence): the "significant dimensions" of a layer are
//! the number of principal components needed to explain a cumulative 99 % (`variance`) of the
//! variance of its output (before the non-linearity). The covariance is taken over channels,
//! with every sample and spatial position an observation; its eigenvalues come from a cyclic
//! Jacobi solver ([`symmetric_eigenvalues`]; through the Gram matrix when there are fewer
//! observations than channels). A layer is significant when its count grows by at least Δ
//! (`delta`) over the previous layer in graph order (the model input for the first layer).
//! The survey does not fix Δ; the default 1 marks every layer whose count grows.
//!
//! Hybrid-Net gives no per-option table; here the table value is the layer's relative output
//! error ‖y_q − y‖² / ‖y‖² with only that layer quantized
//! ([`SensCtx::local_error_table`]) times `significant_weight` for significant layers (1
//! otherwise), so that significant layers ask for more bits. The raw counts and flags
//! ([`pca_components`]) feed `LayerExtra::significant` of the `hybrid-net` allocator.
//!
//! Complexity: one float pass; per layer O(M·D²) for the covariance of M observations of D
//! channels (O(M²·D) via the Gram matrix when M < D) and O(sweeps·min(M, D)³) for the
//! eigenvalues; one pass per (layer, option) for the table.

use serde::Deserialize;

use super::{parse_config, MetricEntry, SensCtx, SensitivityMetric, SensitivityTable};
use crate::error::{ExecError, Result};
use crate::ops::to_vec_f32;

/// Configuration of `pca-significance`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Cumulative fraction of the variance the counted components explain.
    pub variance: f64,
    /// Growth Δ of the component count over the previous layer that makes a layer significant.
    pub delta: f64,
    /// Factor applied to the table values of significant layers.
    pub significant_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            variance: 0.99,
            delta: 1.0,
            significant_weight: 2.0,
        }
    }
}

/// The PCA result of one layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PcaLayer {
    /// Principal components explaining `variance` of the output variance.
    pub components: usize,
    /// Channels (output dimensions per observation).
    pub dims: usize,
    /// Components grew by at least Δ over the previous layer.
    pub significant: bool,
}

/// The Hybrid-Net PCA metric.
#[derive(Clone, Debug, PartialEq)]
pub struct PcaSignificance {
    cfg: Config,
}

/// Eigenvalues of the symmetric `n × n` row-major matrix `a` (overwritten), in descending
/// order, by cyclic Jacobi rotations.
pub fn symmetric_eigenvalues(a: &mut [f64], n: usize) -> Vec<f64> {
    debug_assert_eq!(a.len(), n * n);
    let norm2: f64 = a.iter().map(|v| v * v).sum();
    for _sweep in 0..100 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off <= 1e-26 * norm2 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    ev.sort_by(|x, y| y.total_cmp(x));
    ev
}

/// Number of principal components explaining `fraction` of the variance of `values`
/// (`[N × rest]` row-major, `rest` the per-sample dimensions): the first of `rest` is the
/// channel axis, every sample and position of the others is an observation.
pub fn component_count(values: &[f32], rest: &[usize], fraction: f64) -> usize {
    let d = rest.first().copied().unwrap_or(1).max(1);
    let spatial: usize = rest.iter().skip(1).product::<usize>().max(1);
    let per_sample = d * spatial;
    let n = values.len() / per_sample.max(1);
    let m = n * spatial;
    if m < 2 {
        return 0;
    }
    let obs = |o: usize, c: usize| -> f64 {
        let (s, pos) = (o / spatial, o % spatial);
        values[s * per_sample + c * spatial + pos] as f64
    };
    let mut mean = vec![0.0; d];
    for o in 0..m {
        for (c, mu) in mean.iter_mut().enumerate() {
            *mu += obs(o, c);
        }
    }
    mean.iter_mut().for_each(|v| *v /= m as f64);
    let (size, mut mat) = if d <= m {
        // Covariance over channels.
        let mut cov = vec![0.0; d * d];
        let mut x = vec![0.0; d];
        for o in 0..m {
            for (c, xc) in x.iter_mut().enumerate() {
                *xc = obs(o, c) - mean[c];
            }
            for i in 0..d {
                let xi = x[i];
                if xi == 0.0 {
                    continue;
                }
                for j in i..d {
                    cov[i * d + j] += xi * x[j];
                }
            }
        }
        (d, cov)
    } else {
        // Gram matrix of the observations: the same non-zero eigenvalues.
        let centred: Vec<Vec<f64>> = (0..m)
            .map(|o| (0..d).map(|c| obs(o, c) - mean[c]).collect())
            .collect();
        let mut gram = vec![0.0; m * m];
        for i in 0..m {
            for j in i..m {
                gram[i * m + j] = centred[i].iter().zip(&centred[j]).map(|(a, b)| a * b).sum();
            }
        }
        (m, gram)
    };
    for i in 0..size {
        for j in 0..i {
            mat[i * size + j] = mat[j * size + i];
        }
    }
    let ev = symmetric_eigenvalues(&mut mat, size);
    let total: f64 = ev.iter().map(|v| v.max(0.0)).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut acc = 0.0;
    for (k, v) in ev.iter().enumerate() {
        acc += v.max(0.0);
        if acc >= fraction * total * (1.0 - 1e-12) {
            return k + 1;
        }
    }
    ev.len()
}

/// Component counts and significance of every layer of `ctx`, and the count of the model
/// input (the reference of the first layer).
pub fn pca_components(ctx: &SensCtx, cfg: &Config) -> Result<(Vec<PcaLayer>, usize)> {
    let mut input = Vec::new();
    let mut in_rest = Vec::new();
    for (x, _) in &ctx.batches {
        in_rest = x.dims().get(1..).unwrap_or_default().to_vec();
        input.extend(to_vec_f32(x)?);
    }
    let input_count = component_count(&input, &in_rest, cfg.variance);
    let layers: Vec<_> = ctx.layers.iter().collect();
    let outputs = ctx.layer_outputs(&layers, None)?;
    let mut prev = input_count as f64;
    let mut out = Vec::with_capacity(layers.len());
    for (vals, rest) in &outputs {
        let components = component_count(vals, rest, cfg.variance);
        out.push(PcaLayer {
            components,
            dims: rest.first().copied().unwrap_or(1),
            significant: components as f64 - prev >= cfg.delta,
        });
        prev = components as f64;
    }
    Ok((out, input_count))
}

impl PcaSignificance {
    /// A metric with a checked configuration.
    pub fn new(cfg: Config) -> Result<Self> {
        if !(cfg.variance > 0.0 && cfg.variance <= 1.0) {
            return Err(ExecError::Invalid(
                "config of metric pca-significance: variance must be in (0, 1]".into(),
            ));
        }
        if !(cfg.significant_weight > 0.0 && cfg.significant_weight.is_finite())
            || cfg.delta.is_nan()
        {
            return Err(ExecError::Invalid(
                "config of metric pca-significance: significant_weight must be positive and delta a number".into(),
            ));
        }
        Ok(PcaSignificance { cfg })
    }
}

impl SensitivityMetric for PcaSignificance {
    fn compute(&self, ctx: &SensCtx) -> Result<SensitivityTable> {
        let (pca, input_count) = pca_components(ctx, &self.cfg)?;
        let mut values = ctx.local_error_table()?;
        for (row, l) in values.iter_mut().zip(&pca) {
            if l.significant {
                row.iter_mut()
                    .for_each(|v| *v *= self.cfg.significant_weight);
            }
        }
        let mut t = ctx.table(ENTRY.name, values);
        t.details = pca
            .iter()
            .map(|l| {
                [
                    ("components".to_string(), l.components as f64),
                    ("dims".to_string(), l.dims as f64),
                    ("significant".to_string(), l.significant as u8 as f64),
                    ("input_components".to_string(), input_count as f64),
                ]
                .into_iter()
                .collect()
            })
            .collect();
        Ok(t)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn SensitivityMetric>> {
    Ok(Box::new(PcaSignificance::new(parse_config(
        ENTRY.name, v,
    )?)?))
}

/// Registry entry.
pub const ENTRY: MetricEntry = MetricEntry {
    name: "pca-significance",
    summary:
        "own-output quantization error, ×2 where PCA (99 % variance) marks the layer significant",
    reference: "survey §3.2.4; Chakraborty et al. 2020, Hybrid-Net",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn jacobi_eigenvalues_by_hand_and_invariants() {
        // [[2,1,0],[1,2,0],[0,0,5]] has eigenvalues 5, 3, 1.
        let mut a = vec![2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0];
        let ev = symmetric_eigenvalues(&mut a, 3);
        for (e, want) in ev.iter().zip([5.0, 3.0, 1.0]) {
            assert!((e - want).abs() < 1e-12, "{ev:?}");
        }
        // A random symmetric 12×12: trace and Frobenius norm are invariant.
        let n = 12;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let v: f64 = rng.random_range(-1.0..1.0);
                m[i * n + j] = v;
                m[j * n + i] = v;
            }
        }
        let trace: f64 = (0..n).map(|i| m[i * n + i]).sum();
        let frob: f64 = m.iter().map(|v| v * v).sum();
        let ev = symmetric_eigenvalues(&mut m.clone(), n);
        assert!((ev.iter().sum::<f64>() - trace).abs() < 1e-10);
        assert!((ev.iter().map(|v| v * v).sum::<f64>() - frob).abs() < 1e-10);
        assert!(ev.windows(2).all(|w| w[0] >= w[1]));
        // λ is an eigenvalue: det(M − λI) = 0, checked as a singular matrix by elimination.
        for &lambda in &ev {
            let mut b = m.clone();
            for i in 0..n {
                b[i * n + i] -= lambda;
            }
            let mut min_pivot = f64::INFINITY;
            for col in 0..n {
                let piv = (col..n)
                    .max_by(|&x, &y| b[x * n + col].abs().total_cmp(&b[y * n + col].abs()))
                    .unwrap();
                for k in 0..n {
                    b.swap(col * n + k, piv * n + k);
                }
                let p = b[col * n + col];
                min_pivot = min_pivot.min(p.abs());
                if p.abs() < 1e-300 {
                    continue;
                }
                for r in col + 1..n {
                    let f = b[r * n + col] / p;
                    for k in col..n {
                        b[r * n + k] -= f * b[col * n + k];
                    }
                }
            }
            assert!(min_pivot < 1e-9, "λ = {lambda}: smallest pivot {min_pivot}");
        }
    }

    #[test]
    fn component_counts_by_construction() {
        // Channel standard deviations 10, 7, 0.1, 0.05 (variances 100, 49, 0.01, 0.0025):
        // two components explain 149 / 149.0125 > 99 %, one explains only 67 %.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let std = [10.0f32, 7.0, 0.1, 0.05];
        let (n, spatial) = (50, 9);
        let mut v = Vec::new();
        for _ in 0..n {
            for s in std {
                for _ in 0..spatial {
                    v.push(s * rng.random_range(-1.0f32..1.0) * 3f32.sqrt());
                }
            }
        }
        assert_eq!(component_count(&v, &[4, 3, 3], 0.99), 2);
        assert_eq!(component_count(&v, &[4, 3, 3], 0.5), 1);
        assert_eq!(component_count(&v, &[4, 3, 3], 1.0), 4);
        // Rank 1 across 6 channels (channel c = c · x): one component; with fewer samples
        // (3) than channels the Gram path gives the same answer.
        let x: Vec<f32> = (0..3).map(|i| i as f32 - 0.7).collect();
        let v: Vec<f32> = x
            .iter()
            .flat_map(|&x| (0..6).map(move |c| c as f32 * x))
            .collect();
        assert_eq!(component_count(&v, &[6], 0.99), 1);
        assert_eq!(component_count(&v[..6], &[6], 0.99), 0, "one sample");
    }
}
