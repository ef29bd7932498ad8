//! Deterministic and stochastic rounding (survey §2.1 and §2.2, Eq. 6 and 7).
//!
//! Stochastic rounding draws one uniform number per element from a `ChaCha8Rng` seeded by the
//! caller, so results are reproducible for a seed. Rounding `x` between its neighbours
//! `lo <= x <= hi` picks `hi` with probability `(x - lo) / (hi - lo)`: the result is unbiased,
//! `E[q] = x` (Eq. 7 with `eps ~ Bernoulli(x*l - floor(x*l))`; Eq. 6 for the levels `{-1, 1}`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scheme::Rounding;

/// The random generator used for stochastic rounding and seeded initialisation.
pub type QuantRng = ChaCha8Rng;

/// A generator for `seed`.
pub fn rng_from_seed(seed: u64) -> QuantRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Rounds `x` (already divided by the step) to an integer: ties to even, or stochastically.
#[inline]
pub(crate) fn round_scaled(x: f32, rounding: Rounding, rng: &mut QuantRng) -> f32 {
    match rounding {
        Rounding::Nearest => x.round_ties_even(),
        Rounding::Stochastic => {
            let f = x.floor();
            let u: f32 = rng.random();
            if u < x - f {
                f + 1.0
            } else {
                f
            }
        }
    }
}

/// Index of the level of `levels` (sorted ascending, non-empty) that `x` rounds to.
/// Nearest ties go to the upper level (so `0` maps to `+1` on `{-1, 1}`, as in Eq. 1);
/// stochastic rounding clamps to the end levels outside their span.
#[inline]
pub(crate) fn round_to_levels(
    x: f32,
    levels: &[f32],
    rounding: Rounding,
    rng: &mut QuantRng,
) -> usize {
    // First level strictly greater than x.
    let hi = levels.partition_point(|&l| l <= x);
    let u: f32 = match rounding {
        Rounding::Stochastic => rng.random(),
        Rounding::Nearest => 0.0,
    };
    if hi == 0 {
        return 0;
    }
    if hi == levels.len() {
        return levels.len() - 1;
    }
    let (a, b) = (levels[hi - 1], levels[hi]);
    match rounding {
        Rounding::Nearest => {
            if x - a < b - x {
                hi - 1
            } else {
                hi
            }
        }
        Rounding::Stochastic => {
            if u < (x - a) / (b - a) {
                hi
            } else {
                hi - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_levels_and_ties() {
        let mut rng = rng_from_seed(0);
        let levels = [-1.0, 1.0];
        assert_eq!(
            round_to_levels(0.0, &levels, Rounding::Nearest, &mut rng),
            1
        );
        assert_eq!(
            round_to_levels(-0.1, &levels, Rounding::Nearest, &mut rng),
            0
        );
        assert_eq!(
            round_to_levels(-7.0, &levels, Rounding::Nearest, &mut rng),
            0
        );
        assert_eq!(
            round_to_levels(7.0, &levels, Rounding::Nearest, &mut rng),
            1
        );
        assert_eq!(round_scaled(2.5, Rounding::Nearest, &mut rng), 2.0);
        assert_eq!(round_scaled(-1.5, Rounding::Nearest, &mut rng), -2.0);
    }

    #[test]
    fn stochastic_binary_matches_eq6_probability() {
        // Eq. 6: P(q = +1) = (r + 1) / 2 = 0.8 for r = 0.6.
        let mut rng = rng_from_seed(7);
        let n = 20_000;
        let ups = (0..n)
            .filter(|_| round_to_levels(0.6, &[-1.0, 1.0], Rounding::Stochastic, &mut rng) == 1)
            .count();
        let p = ups as f64 / n as f64;
        assert!((p - 0.8).abs() < 0.01, "p = {p}");
    }
}
