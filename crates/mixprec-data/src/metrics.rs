//! Classification metrics: argmax, top-1 accuracy, confusion matrix, per-class accuracy.
//!
//! Survey §4.1 (frameworks are compared by top-1 accuracy and its drop from the float model,
//! Table 3); no equation. Cost: O(N × classes).

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Index of the largest value; NaNs are ignored, ties go to the first. `None` when `row` is
/// empty or all NaN.
pub fn argmax(row: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

fn check_logits(logits: &[f32], n_classes: usize, n: usize) -> Result<()> {
    if n_classes == 0 {
        return Err(DataError::InvalidArgument("n_classes must be > 0".into()));
    }
    if logits.len() != n * n_classes {
        return Err(DataError::InvalidArgument(format!(
            "{} logits for {n} samples of {n_classes} classes (expected {})",
            logits.len(),
            n * n_classes
        )));
    }
    Ok(())
}

/// Argmax of each row of `logits` (`n × n_classes`, row-major); `None` for an all-NaN row.
pub fn predictions(logits: &[f32], n_classes: usize) -> Result<Vec<Option<usize>>> {
    if n_classes == 0 || !logits.len().is_multiple_of(n_classes) {
        return Err(DataError::InvalidArgument(format!(
            "{} logits do not form rows of {n_classes} classes",
            logits.len()
        )));
    }
    Ok(logits.chunks_exact(n_classes).map(argmax).collect())
}

/// Fraction (0..1) of rows of `logits` (`labels.len() × n_classes`) whose argmax equals the
/// label. A row with no argmax (all NaN) counts as wrong. Errors on a size mismatch or no samples.
pub fn top1_accuracy(logits: &[f32], n_classes: usize, labels: &[u32]) -> Result<f64> {
    check_logits(logits, n_classes, labels.len())?;
    if labels.is_empty() {
        return Err(DataError::InvalidArgument(
            "top-1 accuracy of zero samples".into(),
        ));
    }
    let correct = logits
        .chunks_exact(n_classes)
        .zip(labels)
        .filter(|(row, &l)| argmax(row) == Some(l as usize))
        .count();
    Ok(correct as f64 / labels.len() as f64)
}

/// Confusion matrix: `counts[t * n_classes + p]` samples of true class `t` predicted as `p`.
/// Rows with no prediction (all-NaN logits) are counted in `unpredicted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfusionMatrix {
    /// Number of classes.
    pub n_classes: usize,
    /// Row-major `n_classes × n_classes` counts (row = true class, column = prediction).
    pub counts: Vec<u64>,
    /// Samples per true class whose logits had no argmax.
    pub unpredicted: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix.
    pub fn new(n_classes: usize) -> Self {
        ConfusionMatrix {
            n_classes,
            counts: vec![0; n_classes * n_classes],
            unpredicted: vec![0; n_classes],
        }
    }

    /// Builds the matrix from logits (`labels.len() × n_classes`) and labels.
    pub fn from_logits(logits: &[f32], n_classes: usize, labels: &[u32]) -> Result<Self> {
        check_logits(logits, n_classes, labels.len())?;
        let mut m = Self::new(n_classes);
        for (row, &l) in logits.chunks_exact(n_classes).zip(labels) {
            m.add(l as usize, argmax(row))?;
        }
        Ok(m)
    }

    /// Adds one sample of true class `truth` with prediction `pred`.
    pub fn add(&mut self, truth: usize, pred: Option<usize>) -> Result<()> {
        let k = self.n_classes;
        if truth >= k || pred.is_some_and(|p| p >= k) {
            return Err(DataError::InvalidArgument(format!(
                "class out of range: truth {truth}, prediction {pred:?}, {k} classes"
            )));
        }
        match pred {
            Some(p) => self.counts[truth * k + p] += 1,
            None => self.unpredicted[truth] += 1,
        }
        Ok(())
    }

    /// Count of true class `truth` predicted as `pred` (0 out of range).
    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        if truth < self.n_classes && pred < self.n_classes {
            self.counts[truth * self.n_classes + pred]
        } else {
            0
        }
    }

    /// Samples of each true class.
    pub fn support(&self) -> Vec<u64> {
        (0..self.n_classes)
            .map(|t| {
                self.counts[t * self.n_classes..(t + 1) * self.n_classes]
                    .iter()
                    .sum::<u64>()
                    + self.unpredicted[t]
            })
            .collect()
    }

    /// All samples counted.
    pub fn total(&self) -> u64 {
        self.support().iter().sum()
    }

    /// Correctly classified samples (the diagonal).
    pub fn correct(&self) -> u64 {
        (0..self.n_classes).map(|t| self.get(t, t)).sum()
    }

    /// Overall accuracy (0..1); `None` when empty.
    pub fn accuracy(&self) -> Option<f64> {
        let t = self.total();
        (t > 0).then(|| self.correct() as f64 / t as f64)
    }

    /// Accuracy (recall) of each class (0..1); `None` for a class with no samples.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.support()
            .iter()
            .enumerate()
            .map(|(t, &s)| (s > 0).then(|| self.get(t, t) as f64 / s as f64))
            .collect()
    }
}

/// Accuracy of each class (0..1) from logits and labels; `None` for a class with no samples.
pub fn per_class_accuracy(
    logits: &[f32],
    n_classes: usize,
    labels: &[u32],
) -> Result<Vec<Option<f64>>> {
    Ok(ConfusionMatrix::from_logits(logits, n_classes, labels)?.per_class_accuracy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_rules() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -1.0, -2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), Some(0));
    }

    #[test]
    fn accuracy_and_confusion() {
        // 4 samples, 3 classes.
        let logits = [
            0.9,
            0.1,
            0.0, // pred 0, true 0
            0.1,
            0.8,
            0.1, // pred 1, true 2
            0.0,
            0.2,
            0.7, // pred 2, true 2
            f32::NAN,
            f32::NAN,
            f32::NAN, // none, true 1
        ];
        let labels = [0, 2, 2, 1];
        assert_eq!(top1_accuracy(&logits, 3, &labels).unwrap(), 0.5);
        let m = ConfusionMatrix::from_logits(&logits, 3, &labels).unwrap();
        assert_eq!(m.get(2, 1), 1);
        assert_eq!(m.get(2, 2), 1);
        assert_eq!(m.support(), vec![1, 1, 2]);
        assert_eq!(m.total(), 4);
        assert_eq!(m.accuracy(), Some(0.5));
        assert_eq!(
            m.per_class_accuracy(),
            vec![Some(1.0), Some(0.0), Some(0.5)]
        );
        assert!(top1_accuracy(&logits[..11], 3, &labels).is_err());
        assert!(top1_accuracy(&[], 3, &[]).is_err());
        assert!(ConfusionMatrix::from_logits(&logits, 3, &[0, 2, 2, 3]).is_err());
        let pc = per_class_accuracy(&logits[..3], 3, &[0]).unwrap();
        assert_eq!(pc, vec![Some(1.0), None, None]);
        assert_eq!(
            predictions(&logits, 3).unwrap(),
            vec![Some(0), Some(1), Some(2), None]
        );
    }
}
