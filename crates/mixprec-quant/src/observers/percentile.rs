//! Percentile calibration: clip at the `p`-th percentile of `|x|` (symmetric) or at the
//! `(100 - p)`-th and `p`-th percentiles of `x` (asymmetric), linear interpolation between
//! order statistics. Survey §2.4; McKinstry et al. 2018 \[84\]; Wu et al. 2020 \[86\].
//! Values are kept in a seeded reservoir sample of at most `max_samples` (exact below that).
//! O(n) per batch, O(s log s) per range query, O(s) memory.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{check_batch, check_bits, parse_config, Observer, ObserverEntry};
use crate::error::{QuantError, Result};
use crate::rounding::{rng_from_seed, QuantRng};

/// Registry entry.
pub const ENTRY: ObserverEntry = ObserverEntry {
    name: "percentile",
    summary: "clip at a percentile of the observed values (reservoir-sampled)",
    reference: "survey §2.4; McKinstry et al. 2018 [84]; Wu et al. 2020 [86]",
    build: |config| {
        Ok(Box::new(Percentile::new(parse_config(
            "percentile",
            config,
        )?)?))
    },
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PercentileConfig {
    /// Percentile in (0, 100].
    pub percentile: f64,
    /// Reservoir size.
    pub max_samples: usize,
    /// Seed of the reservoir sampler.
    pub seed: u64,
}

impl Default for PercentileConfig {
    fn default() -> Self {
        PercentileConfig {
            percentile: 99.99,
            max_samples: 1 << 20,
            seed: 0,
        }
    }
}

/// The percentile observer.
#[derive(Debug, Clone)]
pub struct Percentile {
    config: PercentileConfig,
    sample: Vec<f32>,
    seen: u64,
    rng: QuantRng,
}

impl Percentile {
    /// A new observer.
    pub fn new(config: PercentileConfig) -> Result<Self> {
        if !(config.percentile > 0.0 && config.percentile <= 100.0) || config.max_samples == 0 {
            return Err(QuantError::Config {
                method: ENTRY.name.into(),
                message: format!(
                    "percentile must lie in (0, 100] (got {}) and max_samples >= 1",
                    config.percentile
                ),
            });
        }
        let rng = rng_from_seed(config.seed);
        Ok(Percentile {
            config,
            sample: Vec::new(),
            seen: 0,
            rng,
        })
    }
}

/// The `p`-th percentile of sorted values, linear interpolation (NumPy's default).
fn percentile_sorted(sorted: &[f32], p: f64) -> f32 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let f = (rank - lo as f64) as f32;
    sorted[lo] + f * (sorted[hi] - sorted[lo])
}

impl Observer for Percentile {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn observe(&mut self, values: &[f32]) -> Result<()> {
        check_batch(values)?;
        for &v in values {
            self.seen += 1;
            if self.sample.len() < self.config.max_samples {
                self.sample.push(v);
            } else {
                let j = self.rng.random_range(0..self.seen);
                if (j as usize) < self.config.max_samples {
                    self.sample[j as usize] = v;
                }
            }
        }
        Ok(())
    }

    fn range(&self, bits: u8, symmetric: bool) -> Result<(f32, f32)> {
        check_bits(ENTRY.name, bits)?;
        if self.sample.is_empty() {
            return Err(QuantError::NoObservations {
                observer: ENTRY.name.into(),
            });
        }
        let p = self.config.percentile;
        if symmetric {
            let mut a: Vec<f32> = self.sample.iter().map(|v| v.abs()).collect();
            a.sort_by(f32::total_cmp);
            let t = percentile_sorted(&a, p);
            Ok((-t, t))
        } else {
            let mut s = self.sample.clone();
            s.sort_by(f32::total_cmp);
            Ok((percentile_sorted(&s, 100.0 - p), percentile_sorted(&s, p)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_slice() {
        // Values 1..=100: rank 0.99 · 99 = 98.01 -> 99 + 0.01 · 1 = 99.01; low: rank 0.99 -> 1.99.
        let mut o = Percentile::new(PercentileConfig {
            percentile: 99.0,
            ..PercentileConfig::default()
        })
        .unwrap();
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        o.observe(&v[..40]).unwrap();
        o.observe(&v[40..]).unwrap();
        let (lo, hi) = o.range(8, false).unwrap();
        assert!(
            (hi - 99.01).abs() < 1e-4 && (lo - 1.99).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (a, b) = o.range(8, true).unwrap();
        assert!((b - 99.01).abs() < 1e-4 && a == -b);
    }
}
