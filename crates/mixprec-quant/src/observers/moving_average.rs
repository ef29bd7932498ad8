//! Moving-average min-max calibration: exponential moving averages of each batch's minimum and
//! maximum (`m ← (1 - c) m + c · batch`, first batch taken as is). Survey §2.4 Eq. 10; Jacob et
//! al., "Quantization and training of neural networks for efficient integer-arithmetic-only
//! inference", CVPR 2018; Wu et al. 2020 \[86\]. O(n) per batch, O(1) memory.

use serde::{Deserialize, Serialize};

use super::{check_batch, check_bits, parse_config, Extremes, Observer, ObserverEntry};
use crate::error::{QuantError, Result};

/// Registry entry.
pub const ENTRY: ObserverEntry = ObserverEntry {
    name: "moving-average-min-max",
    summary: "exponential moving average of per-batch minima and maxima",
    reference: "survey §2.4 Eq. 10; Jacob et al. 2018; Wu et al. 2020 [86]",
    build: |config| {
        Ok(Box::new(MovingAverageMinMax::new(parse_config(
            "moving-average-min-max",
            config,
        )?)?))
    },
};

/// Configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MovingAverageConfig {
    /// Weight `c` of each new batch, in (0, 1].
    pub averaging_constant: f32,
}

impl Default for MovingAverageConfig {
    fn default() -> Self {
        MovingAverageConfig {
            averaging_constant: 0.01,
        }
    }
}

/// The moving-average min-max observer.
#[derive(Debug, Clone)]
pub struct MovingAverageMinMax {
    c: f32,
    avg: Extremes,
}

impl MovingAverageMinMax {
    /// A new observer.
    pub fn new(config: MovingAverageConfig) -> Result<Self> {
        let c = config.averaging_constant;
        if !(c > 0.0 && c <= 1.0) {
            return Err(QuantError::Config {
                method: ENTRY.name.into(),
                message: format!("averaging_constant must lie in (0, 1], got {c}"),
            });
        }
        Ok(MovingAverageMinMax {
            c,
            avg: Extremes::default(),
        })
    }
}

impl Observer for MovingAverageMinMax {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn observe(&mut self, values: &[f32]) -> Result<()> {
        check_batch(values)?;
        let b = Extremes::of(values);
        if self.avg.seen {
            self.avg.min += self.c * (b.min - self.avg.min);
            self.avg.max += self.c * (b.max - self.avg.max);
        } else {
            self.avg = b;
        }
        Ok(())
    }

    fn range(&self, bits: u8, symmetric: bool) -> Result<(f32, f32)> {
        check_bits(ENTRY.name, bits)?;
        self.avg.require(ENTRY.name)?;
        let m = self.avg.max_abs();
        Ok(if symmetric {
            (-m, m)
        } else {
            (self.avg.min, self.avg.max)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_by_hand() {
        let mut o = MovingAverageMinMax::new(MovingAverageConfig {
            averaging_constant: 0.5,
        })
        .unwrap();
        o.observe(&[-1.0, 1.0]).unwrap();
        o.observe(&[-3.0, 5.0]).unwrap();
        assert_eq!(o.range(8, false).unwrap(), (-2.0, 3.0));
        assert_eq!(o.range(8, true).unwrap(), (-3.0, 3.0));
    }
}
