//! Min-max calibration: the clip range is the observed `[min, max]` (symmetric:
//! `±max|x|`). Survey §2.4 Eq. 10; Jacob et al. 2018 / Gholami et al. 2021 \[53\].
//! O(n) per batch, O(1) memory.

use serde::{Deserialize, Serialize};

use super::{check_batch, check_bits, parse_config, Extremes, Observer, ObserverEntry};
use crate::error::Result;

/// Registry entry.
pub const ENTRY: ObserverEntry = ObserverEntry {
    name: "min-max",
    summary: "running minimum and maximum of all observed values",
    reference: "survey §2.4 Eq. 10; Gholami et al. 2021 [53]",
    build: |config| {
        let _: MinMaxConfig = parse_config("min-max", config)?;
        Ok(Box::new(MinMax::default()))
    },
};

/// Configuration (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinMaxConfig {}

/// The min-max observer.
#[derive(Debug, Clone, Default)]
pub struct MinMax {
    extremes: Extremes,
}

impl Observer for MinMax {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn observe(&mut self, values: &[f32]) -> Result<()> {
        check_batch(values)?;
        self.extremes.update(values);
        Ok(())
    }

    fn range(&self, bits: u8, symmetric: bool) -> Result<(f32, f32)> {
        check_bits(ENTRY.name, bits)?;
        self.extremes.require(ENTRY.name)?;
        let e = &self.extremes;
        Ok(if symmetric {
            (-e.max_abs(), e.max_abs())
        } else {
            (e.min, e.max)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_on_known_batches() {
        let mut o = MinMax::default();
        o.observe(&[0.5, -2.0, 1.0]).unwrap();
        o.observe(&[3.0, 0.0]).unwrap();
        assert_eq!(o.range(8, false).unwrap(), (-2.0, 3.0));
        assert_eq!(o.range(8, true).unwrap(), (-3.0, 3.0));
    }
}
