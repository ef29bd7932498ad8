//! A streaming histogram over `[-R, R)` whose range doubles (merging bin pairs exactly) when a
//! batch exceeds it; shared by the MSE and KL observers. It keeps 4× the requested resolution
//! so that after doublings `[0, max|x|]` still spans at least the requested number of bins.

use super::Extremes;
use crate::error::{QuantError, Result};

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    /// Bins per side (a multiple of 2); `2 * half` bins in all.
    half: usize,
    range: f32,
    counts: Vec<f64>,
    pub extremes: Extremes,
}

impl Histogram {
    /// A histogram that can report about `bins` bins over `[0, max|x|]`.
    pub fn new(bins: usize) -> Self {
        let half = 4 * bins.max(2).next_multiple_of(2);
        Histogram {
            half,
            range: 0.0,
            counts: vec![0.0; 2 * half],
            extremes: Extremes::default(),
        }
    }

    /// [`Histogram::new`] after checking a user-given bin count (8..=65536) for `method`.
    pub fn checked(method: &str, bins: usize) -> Result<Self> {
        if !(8..=1 << 16).contains(&bins) {
            return Err(QuantError::Config {
                method: method.into(),
                message: format!("bins must lie in 8..=65536, got {bins}"),
            });
        }
        Ok(Histogram::new(bins))
    }

    fn width(&self) -> f32 {
        self.range / self.half as f32
    }

    pub fn observe(&mut self, values: &[f32]) {
        let batch = Extremes::of(values);
        let m = batch.max_abs();
        if self.range == 0.0 {
            // Nothing but zeros so far: (re)start the range; zeros stay in the bin at 0.
            self.range = if m > 0.0 { m * (1.0 + 1e-6) } else { 0.0 };
        }
        while m >= self.range && self.range > 0.0 {
            // Double the range: new bin i covers old bins 2i - half and 2i - half + 1.
            let n = 2 * self.half;
            let mut merged = vec![0.0; n];
            for (j, &c) in self.counts.iter().enumerate() {
                merged[(j + self.half) / 2] += c;
            }
            self.counts = merged;
            self.range *= 2.0;
        }
        let n = 2 * self.half;
        let w = self.width();
        for &v in values {
            let i = if w > 0.0 {
                (((v + self.range) / w) as usize).min(n - 1)
            } else {
                self.half
            };
            self.counts[i] += 1.0;
        }
        self.extremes.update(values);
    }

    /// Counts of `|x|` over `[0, max|x|]` in about `target` (at least `target / 2`) bins of
    /// equal width, and that width.
    pub fn abs_counts(&self, target: usize) -> (Vec<f64>, f64) {
        let h = self.half;
        let w = self.width() as f64;
        let m = self.extremes.max_abs() as f64;
        let used = if w > 0.0 {
            ((m / w) as usize + 1).min(h)
        } else {
            1
        };
        let f = (used / target.max(1)).max(1);
        let mut out = vec![0.0; used.div_ceil(f)];
        for i in 0..used {
            out[i / f] += self.counts[h + i] + self.counts[h - 1 - i];
        }
        (out, w * f as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_counts() {
        // 4 requested bins -> 16 internal bins per side over [0, R).
        let mut h = Histogram::new(4);
        h.observe(&[0.5, -0.5, 0.1]);
        h.observe(&[3.0]);
        // R grew 0.5 -> 1 -> 2 -> 4 (times 1 + 1e-6): internal width 0.25, 3.0 falls in
        // |x| bin 11, so 12 bins are used, merged by 3 into 4 bins of width 0.75.
        let (abs, w) = h.abs_counts(4);
        assert!((w - 0.75).abs() < 1e-5, "{w}");
        assert_eq!(abs, vec![3.0, 0.0, 0.0, 1.0]);
    }
}
