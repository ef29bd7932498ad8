//! KL-divergence (entropy) calibration, TensorRT style.
//!
//! Survey §2.4 (calibration \[85\]); Migacz, "8-bit inference with TensorRT", GTC 2017 \[85\].
//! A histogram of `|x|` with `B` bins (2048) is built; for every candidate threshold bin
//! `i >= L` (`L = 2^(bits-1)` target levels, `2^bits` for one-sided asymmetric data) the
//! reference `P` is the first `i` bins with the outlier mass folded into bin `i - 1`, and `Q`
//! is the first `i` bins merged into `L` levels and expanded back over their non-empty bins.
//! The threshold with the smallest `KL(P || Q)` is returned (upper edge of bin `i - 1`).
//! O(n) per batch, O(B²) per range query.

use serde::{Deserialize, Serialize};

use super::histogram::Histogram;
use super::{check_batch, check_bits, parse_config, Observer, ObserverEntry};
use crate::error::Result;

/// Registry entry.
pub const ENTRY: ObserverEntry = ObserverEntry {
    name: "kl",
    summary: "TensorRT entropy calibration: threshold minimising KL(P || Q) on a histogram",
    reference: "survey §2.4; Migacz 2017 [85]",
    build: |config| Ok(Box::new(KlClip::new(parse_config("kl", config)?)?)),
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KlConfig {
    /// Histogram bins over `[0, max|x|]`.
    pub bins: usize,
}

impl Default for KlConfig {
    fn default() -> Self {
        KlConfig { bins: 2048 }
    }
}

/// The KL calibration observer.
#[derive(Debug, Clone)]
pub struct KlClip {
    hist: Histogram,
    bins: usize,
}

impl KlClip {
    /// A new observer.
    pub fn new(config: KlConfig) -> Result<Self> {
        Ok(KlClip {
            hist: Histogram::checked(ENTRY.name, config.bins)?,
            bins: config.bins,
        })
    }
}

/// `KL(P || Q)` of the first `i` bins of `h` against their `levels`-level quantization.
pub(crate) fn kl_at(h: &[f64], i: usize, levels: usize) -> f64 {
    let outliers: f64 = h[i..].iter().sum();
    let mut p = h[..i].to_vec();
    p[i - 1] += outliers;
    let mut q = vec![0.0; i];
    for j in 0..levels {
        let (a, b) = (j * i / levels, (j + 1) * i / levels);
        let mass: f64 = h[a..b].iter().sum();
        let nonzero = h[a..b].iter().filter(|&&c| c > 0.0).count();
        if nonzero > 0 {
            for t in a..b {
                if h[t] > 0.0 {
                    q[t] = mass / nonzero as f64;
                }
            }
        }
    }
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp <= 0.0 || sq <= 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(&q)
        .filter(|(&pp, _)| pp > 0.0)
        .map(|(&pp, &qq)| {
            let (pn, qn) = (pp / sp, (qq / sq).max(1e-12));
            pn * (pn / qn).ln()
        })
        .sum()
}

impl Observer for KlClip {
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
        let levels = if !symmetric && e.min >= 0.0 {
            1usize << bits
        } else {
            1usize << (bits - 1)
        };
        let mut best = (f64::INFINITY, h.len());
        for i in levels.max(1)..=h.len() {
            let kl = kl_at(&h, i, levels);
            if kl < best.0 {
                best = (kl, i);
            }
        }
        let t = ((best.1 as f64 * w) as f32).min(e.max_abs());
        Ok(e.clip(t, symmetric))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_when_levels_cover_the_bins() {
        // With as many levels as bins Q equals P: KL = 0.
        let h = [3.0, 0.0, 1.0, 2.0];
        assert!(kl_at(&h, 4, 4).abs() < 1e-12);
        // Folding outliers into the last bin of a shorter window changes P but keeps Q's
        // support: finite, positive KL.
        let k = kl_at(&h, 2, 1);
        assert!(k.is_finite() && k > 0.0);
    }
}
