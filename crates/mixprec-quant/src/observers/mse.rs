//! MSE-optimal clipping: the clip magnitude `t` minimising the expected quantization error
//! `Σ_{|x| > t} (|x| - t)² + Σ_{|x| <= t} Δ(t)² / 12`, with `Δ(t) = t / steps(bits)` the step of
//! the uniform grid (Eq. 10), evaluated on a streaming histogram of `|x|` at every bin edge.
//! Survey §2.4 (calibration \[84\]–\[86\]); Wu et al. 2020 \[86\]; Banner et al. 2019 (the same
//! clipping-plus-rounding error decomposition). O(n) per batch, O(B) per candidate, O(B²) per
//! range query with `B` bins.

use serde::{Deserialize, Serialize};

use super::histogram::Histogram;
use super::{check_batch, check_bits, parse_config, Observer, ObserverEntry};
use crate::error::Result;

/// Registry entry.
pub const ENTRY: ObserverEntry = ObserverEntry {
    name: "mse",
    summary: "clip range minimising clipping + rounding MSE on a histogram",
    reference: "survey §2.4; Wu et al. 2020 [86]",
    build: |config| Ok(Box::new(MseClip::new(parse_config("mse", config)?)?)),
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MseConfig {
    /// Histogram bins over `[0, max|x|]`.
    pub bins: usize,
}

impl Default for MseConfig {
    fn default() -> Self {
        MseConfig { bins: 2048 }
    }
}

/// The MSE-optimal clip observer.
#[derive(Debug, Clone)]
pub struct MseClip {
    hist: Histogram,
    bins: usize,
}

impl MseClip {
    /// A new observer.
    pub fn new(config: MseConfig) -> Result<Self> {
        Ok(MseClip {
            hist: Histogram::checked(ENTRY.name, config.bins)?,
            bins: config.bins,
        })
    }
}

impl Observer for MseClip {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn observe(&mut self, values: &[f32]) -> Result<()> {
        check_batch(values)?;
        self.hist.observe(values);
        Ok(())
    }

    fn range(&self, bits: u8, symmetric: bool) -> Result<(f32, f32)> {
        check_bits(ENTRY.name, bits)?;
        let e = &self.hist.extremes;
        e.require(ENTRY.name)?;
        let (h, w) = self.hist.abs_counts(self.bins);
        let steps = e.steps(bits, symmetric);
        let centers: Vec<f64> = (0..h.len()).map(|i| (i as f64 + 0.5) * w).collect();
        let mut best = (f64::INFINITY, e.max_abs() as f64);
        for i in 1..=h.len() {
            let t = i as f64 * w;
            let step = t / steps;
            let inside: f64 = h[..i].iter().sum::<f64>() * step * step / 12.0;
            let clipped: f64 = h[i..]
                .iter()
                .zip(&centers[i..])
                .map(|(c, x)| c * (x - t) * (x - t))
                .sum();
            if inside + clipped < best.0 {
                best = (inside + clipped, t);
            }
        }
        let t = (best.1 as f32).min(e.max_abs());
        Ok(e.clip(t, symmetric))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_outliers_but_not_uniform_data() {
        // |x| uniform on [0, 1], 4 bits (7 steps): E(t) = (1 - t)³/3 + t · (t/7)²/12, minimal
        // where (1 - t)² = t²/196, i.e. t = 1 / (1 + 1/14) = 0.9333.
        let v: Vec<f32> = (0..20001).map(|i| i as f32 / 10000.0 - 1.0).collect();
        let mut o = MseClip::new(MseConfig::default()).unwrap();
        o.observe(&v).unwrap();
        let (_, t) = o.range(4, true).unwrap();
        assert!((t - 0.9333).abs() < 0.002, "{t}");
        // One huge outlier among them: at 4 bits the clip falls far below it.
        o.observe(&[100.0]).unwrap();
        let (_, t) = o.range(4, true).unwrap();
        assert!(t < 5.0, "{t}");
    }
}
