//! Shared k-means (Lloyd) with seeded k-means++ initialisation, used by the vector-quantization
//! methods (survey §2.1, Eq. 3).
//!
//! Cost: initialisation O(s·k·d) on a seeded sample of `s = min(n, max(4096, 16k))` points,
//! then O(n·k·d) per Lloyd iteration (O(n log k) for scalars, d = 1).

use rand::Rng;

use crate::rounding::QuantRng;

/// Centroids (`k * dim` values, row-major) and the centroid index of each point.
#[derive(Debug, Clone)]
pub(crate) struct Clustering {
    pub centroids: Vec<f32>,
    pub assign: Vec<u32>,
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index of the centroid nearest to `p`, and the squared distance.
pub(crate) fn nearest(p: &[f32], centroids: &[f32], dim: usize) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (j, c) in centroids.chunks_exact(dim).enumerate() {
        let d = dist2(p, c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

fn plus_plus_init(data: &[f32], dim: usize, k: usize, rng: &mut QuantRng) -> Vec<f32> {
    let n = data.len() / dim;
    let s = n.min(4096.max(16 * k));
    let sample: Vec<usize> = if s == n {
        (0..n).collect()
    } else {
        (0..s).map(|_| rng.random_range(0..n)).collect()
    };
    let point = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut centroids = Vec::with_capacity(k * dim);
    centroids.extend_from_slice(point(sample[rng.random_range(0..s)]));
    let mut d2: Vec<f64> = sample
        .iter()
        .map(|&i| dist2(point(i), &centroids[..dim]) as f64)
        .collect();
    while centroids.len() < k * dim {
        let total: f64 = d2.iter().sum();
        let pick = if total <= 0.0 {
            // Every sample point already coincides with a centroid: duplicate one.
            sample[rng.random_range(0..s)]
        } else {
            let mut r = rng.random::<f64>() * total;
            let mut chosen = s - 1;
            for (j, &d) in d2.iter().enumerate() {
                if r < d {
                    chosen = j;
                    break;
                }
                r -= d;
            }
            sample[chosen]
        };
        let start = centroids.len();
        centroids.extend_from_slice(point(pick));
        let c = centroids[start..].to_vec();
        for (j, &i) in sample.iter().enumerate() {
            d2[j] = d2[j].min(dist2(point(i), &c) as f64);
        }
    }
    centroids
}

/// Assigns every point to its nearest centroid; returns the total squared error.
fn assign_all(data: &[f32], dim: usize, centroids: &[f32], assign: &mut [u32]) -> f64 {
    if dim == 1 {
        // Scalars: sort centroids once and binary-search the midpoints.
        let mut idx: Vec<usize> = (0..centroids.len()).collect();
        idx.sort_by(|&a, &b| centroids[a].total_cmp(&centroids[b]));
        let sorted: Vec<f32> = idx.iter().map(|&i| centroids[i]).collect();
        let mids: Vec<f32> = sorted.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut err = 0.0;
        for (a, &x) in assign.iter_mut().zip(data) {
            let j = mids.partition_point(|&m| m < x);
            *a = idx[j] as u32;
            err += ((x - sorted[j]) as f64).powi(2);
        }
        return err;
    }
    let mut err = 0.0;
    for (a, p) in assign.iter_mut().zip(data.chunks_exact(dim)) {
        let (j, d) = nearest(p, centroids, dim);
        *a = j as u32;
        err += d as f64;
    }
    err
}

/// Lloyd's k-means on `data` (`n * dim` values) with `k` clusters (capped at `n`),
/// k-means++ seeding from `rng` and at most `iters` iterations. Scalar (d = 1) centroids come
/// back sorted ascending.
pub(crate) fn kmeans(
    data: &[f32],
    dim: usize,
    k: usize,
    iters: usize,
    rng: &mut QuantRng,
) -> Clustering {
    let n = data.len() / dim;
    let k = k.clamp(1, n.max(1));
    let mut centroids = plus_plus_init(data, dim, k, rng);
    let mut assign = vec![0u32; n];
    let mut prev_err = f64::INFINITY;
    for _ in 0..iters.max(1) {
        let err = assign_all(data, dim, &centroids, &mut assign);
        // Update step.
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (p, &a) in data.chunks_exact(dim).zip(&assign) {
            let a = a as usize;
            counts[a] += 1;
            for (s, &x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(p) {
                *s += x as f64;
            }
        }
        for j in 0..k {
            if counts[j] > 0 {
                for t in 0..dim {
                    centroids[j * dim + t] = (sums[j * dim + t] / counts[j] as f64) as f32;
                }
            } else {
                // Empty cluster: move it to the worst-represented point.
                let (far, _) = data
                    .chunks_exact(dim)
                    .zip(&assign)
                    .enumerate()
                    .map(|(i, (p, &a))| {
                        let c = &centroids[a as usize * dim..(a as usize + 1) * dim];
                        (i, dist2(p, c))
                    })
                    .fold((0, -1.0f32), |b, x| if x.1 > b.1 { x } else { b });
                centroids[j * dim..(j + 1) * dim]
                    .copy_from_slice(&data[far * dim..(far + 1) * dim]);
            }
        }
        if err >= prev_err * (1.0 - 1e-7) {
            break;
        }
        prev_err = err;
    }
    assign_all(data, dim, &centroids, &mut assign);
    if dim == 1 {
        let mut idx: Vec<usize> = (0..k).collect();
        idx.sort_by(|&a, &b| centroids[a].total_cmp(&centroids[b]));
        let mut rank = vec![0u32; k];
        for (r, &i) in idx.iter().enumerate() {
            rank[i] = r as u32;
        }
        centroids = idx.iter().map(|&i| centroids[i]).collect();
        for a in &mut assign {
            *a = rank[*a as usize];
        }
    }
    Clustering { centroids, assign }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rounding::rng_from_seed;

    #[test]
    fn separates_obvious_clusters() {
        let data = [0.0, 0.1, -0.1, 5.0, 5.1, 4.9, 10.0, 10.2, 9.8];
        let c = kmeans(&data, 1, 3, 50, &mut rng_from_seed(3));
        assert_eq!(c.centroids.len(), 3);
        for (got, want) in c.centroids.iter().zip([0.0, 5.0, 10.0]) {
            assert!((got - want).abs() < 1e-5, "{:?}", c.centroids);
        }
        assert_eq!(c.assign, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn two_dimensional_points() {
        let data = [0.0, 0.0, 0.2, 0.0, 3.0, 3.0, 3.0, 3.2];
        let c = kmeans(&data, 2, 2, 50, &mut rng_from_seed(1));
        assert_eq!(c.assign[0], c.assign[1]);
        assert_eq!(c.assign[2], c.assign[3]);
        assert_ne!(c.assign[0], c.assign[2]);
        let a = c.assign[0] as usize;
        assert!((c.centroids[a * 2] - 0.1).abs() < 1e-6);
    }
}
