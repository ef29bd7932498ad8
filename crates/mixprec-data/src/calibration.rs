//! Seeded, class-balanced calibration subsets.
//!
//! Survey §2 (post-training quantization needs a small calibration set to fix ranges) and §3.2.5
//! (ZeroQ, which replaces that set by distilled data); no equation. Deterministic for a given
//! seed (ChaCha8). Cost: O(N + n) time, O(N) memory.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Indices of a seeded calibration subset of `n` images of `data`.
///
/// Each class gets `n / classes` images (classes with too few images give all they have and the
/// rest is spread over the others); the images within a class and the final order are drawn with
/// `ChaCha8Rng::seed_from_u64(seed)`. The same data set, `n` and seed give the same indices.
pub fn calibration_indices(data: &Dataset, n: usize, seed: u64) -> Result<Vec<usize>> {
    if n > data.n {
        return Err(DataError::InvalidArgument(format!(
            "calibration subset of {n} images asked from {}, which has only {}",
            data.name, data.n
        )));
    }
    let k = data.classes.len().max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in data.labels.iter().enumerate() {
        by_class[(l as usize).min(k - 1)].push(i);
    }
    for v in &mut by_class {
        v.shuffle(&mut rng);
    }
    // Water-filling: visit classes from the smallest up (ties in a seeded order), each taking
    // min(its size, remaining / classes left). Larger classes absorb what small ones cannot give.
    let mut order: Vec<usize> = (0..k).collect();
    order.shuffle(&mut rng);
    order.sort_by_key(|&c| by_class[c].len());
    let mut quota = vec![0usize; k];
    let mut remaining = n;
    for (pos, &c) in order.iter().enumerate() {
        let left = k - pos;
        let q = by_class[c].len().min(remaining / left);
        quota[c] = q;
        remaining -= q;
    }
    // Floor division leaves < k images; hand them out one by one in a seeded order.
    let mut spare: Vec<usize> = (0..k).filter(|&c| by_class[c].len() > quota[c]).collect();
    spare.shuffle(&mut rng);
    while remaining > 0 {
        let before = remaining;
        for &c in &spare {
            if remaining == 0 {
                break;
            }
            if by_class[c].len() > quota[c] {
                quota[c] += 1;
                remaining -= 1;
            }
        }
        if remaining == before {
            break; // unreachable when n <= data.n
        }
    }
    let mut picked: Vec<usize> = by_class
        .iter()
        .zip(&quota)
        .flat_map(|(v, &q)| v[..q].iter().copied())
        .collect();
    picked.shuffle(&mut rng);
    Ok(picked)
}

/// A seeded, class-balanced calibration subset of `n` images (see [`calibration_indices`]).
pub fn calibration_subset(data: &Dataset, n: usize, seed: u64) -> Result<Dataset> {
    let idx = calibration_indices(data, n, seed)?;
    let mut sub = data.subset(&idx)?;
    sub.name = format!("{}-calib{n}-seed{seed}", data.name);
    Ok(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(labels: Vec<u32>, k: usize) -> Dataset {
        let n = labels.len();
        let images = (0..n).map(|i| i as f32).collect();
        let classes = (0..k).map(|c| c.to_string()).collect();
        Dataset::from_parts("t", images, labels, n, 1, 1, 1, classes).unwrap()
    }

    #[test]
    fn balanced_deterministic_and_distinct() {
        let labels: Vec<u32> = (0..1000).map(|i| (i * 7 % 10) as u32).collect();
        let d = labelled(labels, 10);
        let a = calibration_indices(&d, 95, 3).unwrap();
        let b = calibration_indices(&d, 95, 3).unwrap();
        let c = calibration_indices(&d, 95, 4).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 95);
        let sub = d.subset(&a).unwrap();
        let counts = sub.class_counts();
        assert!(counts.iter().all(|&n| n == 9 || n == 10), "{counts:?}");
    }

    #[test]
    fn scarce_class_gives_all_it_has() {
        // Class 0 has 2 images, class 1 has 50, class 2 has 50.
        let mut labels = vec![0u32; 2];
        labels.extend(std::iter::repeat_n(1u32, 50));
        labels.extend(std::iter::repeat_n(2u32, 50));
        let d = labelled(labels, 3);
        let sub = calibration_subset(&d, 30, 1).unwrap();
        assert_eq!(sub.n, 30);
        assert_eq!(sub.class_counts(), vec![2, 14, 14]);
        assert!(calibration_subset(&d, 103, 1).is_err());
        assert_eq!(
            calibration_subset(&d, 102, 1).unwrap().class_counts(),
            vec![2, 50, 50]
        );
    }
}
