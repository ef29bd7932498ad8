//! Product quantization with error correction: codebooks and codes refit to the layer output.
//!
//! Survey §2.1, Table 1 "PQ with Error Correction": Wu et al., "Quantized convolutional neural
//! networks for mobile devices" (Q-CNN), CVPR 2016 \[58\]. Starting from plain product
//! quantization ([`super::product`]), the objective becomes the layer's output error on
//! calibration inputs `X` (`n × row_len`, one row per sample, im2col patches for convolutions):
//! `Σ_rows ||X (w_o - ŵ_o)||² = Σ_rows (w_o - ŵ_o)ᵀ G (w_o - ŵ_o)`, `G = XᵀX / n`.
//! Block coordinate descent over subspaces `J`: with the other subspaces fixed, each centroid is
//! the least-squares solution `(G_JJ + λI) c_k = mean_{o ∈ k} h_o`, `h_o = (G r_o)_J`,
//! `r_o = w_o - ŵ_o` with subspace `J` removed from `ŵ_o`; then each code is reassigned to
//! `argmin_k c_kᵀ G_JJ c_k - 2 h_oᵀ c_k`. Without inputs `G = I` and this is plain PQ.
//! Complexity O(sweeps · rows · row_len²) after the PQ fit; storage as product quantization.

use serde::{Deserialize, Serialize};

use super::product::{check_sub_dim, PqModel};
use super::{check_scheme, parse_config, Quantizer, QuantizerEntry};
use crate::error::{QuantError, Result};
use crate::layout::{check_finite, Blocks, TensorLayout};
use crate::rounding::QuantRng;
use crate::scheme::{Granularity, QScheme, QuantKind};
use crate::tensor::QuantizedTensor;

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "product-ec",
    kind: QuantKind::ProductEc,
    summary: "product quantization with codebooks refit by least squares to the layer output",
    reference: "survey §2.1, Table 1; Wu et al. 2016 (Q-CNN) [58]",
    build,
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProductEcConfig {
    /// Sub-vector width (elements per code).
    pub sub_dim: usize,
    /// Maximum Lloyd iterations of the initial PQ fit.
    pub iters: usize,
    /// Error-correction sweeps over all subspaces.
    pub sweeps: usize,
    /// Ridge term relative to the mean diagonal of `G_JJ`.
    pub ridge: f64,
}

impl Default for ProductEcConfig {
    fn default() -> Self {
        ProductEcConfig {
            sub_dim: 2,
            iters: 30,
            sweeps: 8,
            ridge: 1e-6,
        }
    }
}

/// The error-correcting product quantizer; holds the input Gram matrix once given inputs.
#[derive(Debug, Clone)]
pub struct ProductEc {
    scheme: QScheme,
    config: ProductEcConfig,
    gram: Option<Gram>,
}

/// `G = XᵀX / n` of calibration inputs (`dim × dim`).
#[derive(Debug, Clone)]
struct Gram {
    dim: usize,
    g: Vec<f64>,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let config: ProductEcConfig = parse_config(ENTRY.name, config)?;
    Ok(Box::new(ProductEc::new(scheme, config)?))
}

impl ProductEc {
    /// A quantizer without calibration inputs (then `G = I`).
    pub fn new(scheme: &QScheme, config: ProductEcConfig) -> Result<Self> {
        let scheme = check_scheme(scheme, QuantKind::ProductEc)?;
        check_sub_dim(ENTRY.name, config.sub_dim, config.iters)?;
        if !(config.ridge >= 0.0 && config.ridge.is_finite()) {
            return Err(QuantError::Config {
                method: ENTRY.name.into(),
                message: format!("ridge must be finite and >= 0, got {}", config.ridge),
            });
        }
        Ok(ProductEc {
            scheme,
            config,
            gram: None,
        })
    }

    /// Attaches calibration inputs `X` (`n_samples × row_len`, row-major), where `row_len` is
    /// the weight's elements per output channel (im2col patch length for a convolution).
    pub fn with_inputs(mut self, inputs: &[f32], n_samples: usize) -> Result<Self> {
        check_finite(inputs, "calibration inputs")?;
        if n_samples == 0 || !inputs.len().is_multiple_of(n_samples) {
            return Err(QuantError::InvalidArgument(format!(
                "{} calibration values cannot form {n_samples} samples of equal length",
                inputs.len()
            )));
        }
        let dim = inputs.len() / n_samples;
        let mut g = vec![0f64; dim * dim];
        for x in inputs.chunks_exact(dim) {
            for (a, &xa) in x.iter().enumerate() {
                let row = &mut g[a * dim..(a + 1) * dim];
                for (gb, &xb) in row.iter_mut().zip(x) {
                    *gb += xa as f64 * xb as f64;
                }
            }
        }
        g.iter_mut().for_each(|v| *v /= n_samples as f64);
        self.gram = Some(Gram { dim, g });
        Ok(self)
    }
}

/// Quantizes `weight` with product quantization refit to the output error on `inputs`
/// (`n_samples × row_len`); see the module docs.
pub fn quantize_with_inputs(
    weight: &[f32],
    layout: &TensorLayout,
    inputs: &[f32],
    n_samples: usize,
    scheme: &QScheme,
    config: &ProductEcConfig,
    seed: u64,
) -> Result<QuantizedTensor> {
    ProductEc::new(scheme, config.clone())?
        .with_inputs(inputs, n_samples)?
        .quantize(weight, layout, seed)
}

/// Mean squared output error `||X Wᵀ - X Ŵᵀ||² / (n · rows)` of a quantized weight.
pub fn output_error(
    weight: &[f32],
    quantized: &[f32],
    layout: &TensorLayout,
    inputs: &[f32],
    n_samples: usize,
) -> Result<f64> {
    layout.check(weight)?;
    layout.check(quantized)?;
    let blocks = Blocks::new(layout, Granularity::Channel)?;
    let (rows, len) = (blocks.count, blocks.len);
    if n_samples == 0 || inputs.len() != n_samples * len {
        return Err(QuantError::InvalidArgument(format!(
            "inputs hold {} values, expected {n_samples} samples × {len}",
            inputs.len()
        )));
    }
    let (w, q) = (
        blocks.channel_major(weight),
        blocks.channel_major(quantized),
    );
    let mut err = 0.0;
    for x in inputs.chunks_exact(len) {
        for r in 0..rows {
            let d: f64 = (0..len)
                .map(|l| x[l] as f64 * (w[r * len + l] - q[r * len + l]) as f64)
                .sum();
            err += d * d;
        }
    }
    Ok(err / (n_samples * rows) as f64)
}

/// Solves `a x = b` (`n × n`, row-major) by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let piv =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[piv * n + col].abs() < 1e-300 {
            return None;
        }
        if piv != col {
            for t in 0..n {
                a.swap(piv * n + t, col * n + t);
            }
            b.swap(piv, col);
        }
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            for t in col..n {
                a[r * n + t] -= f * a[col * n + t];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|t| a[r * n + t] * x[t]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    Some(x)
}

fn objective(w: &[f32], what: &[f32], g: &Gram) -> f64 {
    let l = g.dim;
    w.chunks_exact(l)
        .zip(what.chunks_exact(l))
        .map(|(wr, qr)| {
            let d: Vec<f64> = wr.iter().zip(qr).map(|(a, b)| (a - b) as f64).collect();
            (0..l)
                .map(|a| d[a] * (0..l).map(|b| g.g[a * l + b] * d[b]).sum::<f64>())
                .sum::<f64>()
        })
        .sum()
}

/// Block coordinate descent on the output error; keeps the best model seen.
fn refit(model: &mut PqModel, w: &[f32], g: &Gram, sweeps: usize, ridge: f64) {
    let (rows, l) = (model.rows, model.row_len);
    let mut what = model.reconstruct();
    let mut best = (objective(w, &what, g), model.clone());
    for _ in 0..sweeps {
        for sub in &mut model.subspaces {
            let (st, wd) = (sub.start, sub.width);
            let gjj: Vec<f64> = (0..wd)
                .flat_map(|a| (0..wd).map(move |b| (a, b)))
                .map(|(a, b)| g.g[(st + a) * l + st + b])
                .collect();
            // h_o = G[J, :] (w_o - ŵ_o) + G_JJ ŵ_oJ.
            let mut h = vec![0f64; rows * wd];
            for r in 0..rows {
                let d: Vec<f64> = (0..l)
                    .map(|c| (w[r * l + c] - what[r * l + c]) as f64)
                    .collect();
                for a in 0..wd {
                    let grow = &g.g[(st + a) * l..(st + a + 1) * l];
                    let mut s: f64 = grow.iter().zip(&d).map(|(x, y)| x * y).sum();
                    s += (0..wd)
                        .map(|b| gjj[a * wd + b] * what[r * l + st + b] as f64)
                        .sum::<f64>();
                    h[r * wd + a] = s;
                }
            }
            // Centroids: (G_JJ + λI) c = mean h over members.
            let k = sub.centroids.len() / wd;
            let mut sums = vec![0f64; k * wd];
            let mut counts = vec![0usize; k];
            for (r, &c) in sub.codes.iter().enumerate() {
                counts[c as usize] += 1;
                for a in 0..wd {
                    sums[c as usize * wd + a] += h[r * wd + a];
                }
            }
            let lambda = ridge * (0..wd).map(|a| gjj[a * wd + a]).sum::<f64>() / wd as f64 + 1e-12;
            let mut a = gjj.clone();
            (0..wd).for_each(|i| a[i * wd + i] += lambda);
            for c in 0..k {
                if counts[c] == 0 {
                    continue;
                }
                let rhs = (0..wd)
                    .map(|t| sums[c * wd + t] / counts[c] as f64)
                    .collect();
                if let Some(x) = solve(a.clone(), rhs, wd) {
                    let dst = &mut sub.centroids[c * wd..(c + 1) * wd];
                    dst.iter_mut().zip(&x).for_each(|(d, v)| *d = *v as f32);
                }
            }
            // Codes: argmin_c cᵀ G_JJ c - 2 hᵀ c.
            let quad: Vec<f64> = sub
                .centroids
                .chunks_exact(wd)
                .map(|c| {
                    (0..wd)
                        .map(|a| {
                            c[a] as f64
                                * (0..wd).map(|b| gjj[a * wd + b] * c[b] as f64).sum::<f64>()
                        })
                        .sum()
                })
                .collect();
            for r in 0..rows {
                let hr = &h[r * wd..(r + 1) * wd];
                let (best_c, _) = sub
                    .centroids
                    .chunks_exact(wd)
                    .enumerate()
                    .map(|(c, cv)| {
                        let lin: f64 = cv.iter().zip(hr).map(|(x, y)| *x as f64 * y).sum();
                        (c, quad[c] - 2.0 * lin)
                    })
                    .fold((0, f64::INFINITY), |b, x| if x.1 < b.1 { x } else { b });
                sub.codes[r] = best_c as u32;
                what[r * l + st..r * l + st + wd]
                    .copy_from_slice(&sub.centroids[best_c * wd..(best_c + 1) * wd]);
            }
        }
        let obj = objective(w, &what, g);
        if obj < best.0 {
            best = (obj, model.clone());
        }
    }
    *model = best.1;
}

impl Quantizer for ProductEc {
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
        let identity;
        let gram = match &self.gram {
            Some(g) if g.dim != blocks.len => {
                return Err(QuantError::InvalidArgument(format!(
                    "calibration inputs have {} features but each output channel of {:?} has {} weights",
                    g.dim, layout.shape, blocks.len
                )))
            }
            Some(g) => g,
            None => {
                let dim = blocks.len;
                let mut g = vec![0.0; dim * dim];
                (0..dim).for_each(|i| g[i * dim + i] = 1.0);
                identity = Gram { dim, g };
                &identity
            }
        };
        let data = blocks.channel_major(values);
        let c = &self.config;
        let k = 1 << self.scheme.bits;
        let mut model = PqModel::fit(&data, blocks.count, blocks.len, c.sub_dim, k, c.iters, rng);
        refit(&mut model, &data, gram, c.sweeps, c.ridge);
        Ok(model.into_tensor(&self.scheme, &blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rounding::rng_from_seed;
    use rand::Rng;

    #[test]
    fn refit_lowers_output_error_on_anisotropic_inputs() {
        // 32 output rows × 8 inputs; even input features carry 100× the amplitude of odd ones,
        // so inside each 2-wide subspace one coordinate dominates the output: plain PQ spends
        // its centroids on both, the error-corrected codebooks on the one that matters.
        let mut rng = rng_from_seed(11);
        let (rows, len, n) = (32, 8, 256);
        let w: Vec<f32> = (0..rows * len)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let x: Vec<f32> = (0..n * len)
            .map(|i| rng.random_range(-1.0..1.0f32) * if i % 2 == 0 { 10.0 } else { 0.1 })
            .collect();
        let layout = TensorLayout::weight(&[rows, len]);
        let s = QScheme::new(QuantKind::ProductEc, 2, true, Granularity::Tensor);
        let cfg = ProductEcConfig::default();
        let plain = ProductEc::new(&s, cfg.clone())
            .unwrap()
            .quantize(&w, &layout, 1)
            .unwrap();
        let ec = quantize_with_inputs(&w, &layout, &x, n, &s, &cfg, 1).unwrap();
        let e_plain = output_error(&w, &plain.values, &layout, &x, n).unwrap();
        let e_ec = output_error(&w, &ec.values, &layout, &x, n).unwrap();
        assert!(e_ec < 0.9 * e_plain, "ec {e_ec} vs plain {e_plain}");
        assert_eq!(ec.code_bits, plain.code_bits);
    }

    #[test]
    fn solve_small_system() {
        let x = solve(vec![2.0, 1.0, 1.0, 3.0], vec![3.0, 5.0], 2).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12);
    }
}
