//! Plain `f64` reference kernels (direct loops, no packing, no SIMD): the float interpreter
//! that calibrates the tensors a policy gives no range for, and the arithmetic of the
//! independent simulation ([`crate::simulate`]).
//!
//! Survey §3.3 (HAWQ-V3), Eq. 24: on centred integer operands (`q - z`) these loops compute
//! the exact `i32` accumulator in `f64` (every partial sum stays below `2^53`), so they check
//! the packed kernels without sharing any of their code. Complexity: direct convolution
//! `O(N·Cout·Ho·Wo·Cin/g·kh·kw)`, GEMM `O(M·N·K)`, pooling `O(N·C·Ho·Wo·kh·kw)`.

use crate::kernels::Conv2dParams;
use crate::model::src;

/// Direct 2-D convolution: `x` `[n, c, h, w]`, weights `[cout, c/groups, kh, kw]`, output
/// `[n, cout, ho, wo]`; padding contributes zero.
pub fn conv2d_f64(
    x: &[f64],
    n: usize,
    [c, h, w]: [usize; 3],
    wt: &[f64],
    [cout, cig, kh, kw]: [usize; 4],
    p: &Conv2dParams,
    [ho, wo]: [usize; 2],
) -> Vec<f64> {
    let groups = p.groups.max(1);
    let cout_g = cout / groups;
    let mut out = vec![0f64; n * cout * ho * wo];
    for b in 0..n {
        for oc in 0..cout {
            let g = oc / cout_g.max(1);
            let y = &mut out[(b * cout + oc) * ho * wo..][..ho * wo];
            for icg in 0..cig {
                let ic = g * cig + icg;
                if ic >= c {
                    continue;
                }
                let plane = &x[(b * c + ic) * h * w..][..h * w];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = wt[((oc * cig + icg) * kh + ky) * kw + kx];
                        if wv == 0.0 {
                            continue;
                        }
                        // Output columns whose tap lies inside the input row.
                        let off = kx * p.dilations[1];
                        let (sw, pl) = (p.strides[1], p.pads[1]);
                        let lo = if pl > off { (pl - off).div_ceil(sw) } else { 0 }.min(wo);
                        let hi = if w + pl > off {
                            (w + pl - off).div_ceil(sw)
                        } else {
                            0
                        }
                        .min(wo);
                        for oy in 0..ho {
                            let Some(iy) = src(oy, ky, p.strides[0], p.dilations[0], p.pads[0], h)
                            else {
                                continue;
                            };
                            let row = &plane[iy * w..][..w];
                            let yr = &mut y[oy * wo..][..wo];
                            for ox in lo..hi {
                                yr[ox] += row[ox * sw + off - pl] * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// `y[m, n] = Σ_k x[m, k]·w[n, k]`.
pub fn gemm_f64(x: &[f64], m: usize, k: usize, wt: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for (xr, yr) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)).take(m) {
        for (j, y) in yr.iter_mut().enumerate() {
            *y = xr
                .iter()
                .zip(&wt[j * k..(j + 1) * k])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    out
}

/// Window geometry of a pooling operator.
#[derive(Clone, Copy, Debug)]
pub struct PoolGeometry {
    /// Input `[C, H, W]`.
    pub in_shape: [usize; 3],
    /// Output `[Ho, Wo]`.
    pub out_hw: [usize; 2],
    /// Window.
    pub kernel: [usize; 2],
    /// Strides.
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Dilations.
    pub dilations: [usize; 2],
}

/// For every output position of every plane: the values of the valid window positions and
/// the number of positions inside the padded input (for `count_include_pad`).
pub fn pool_windows(
    x: &[f64],
    n: usize,
    g: &PoolGeometry,
    mut f: impl FnMut(&[f64], usize) -> f64,
) -> Vec<f64> {
    let [c, h, w] = g.in_shape;
    let [ho, wo] = g.out_hw;
    let mut out = Vec::with_capacity(n * c * ho * wo);
    let mut vals = Vec::new();
    for plane in x.chunks_exact(h * w).take(n * c) {
        for oy in 0..ho {
            for ox in 0..wo {
                vals.clear();
                let mut padded = 0;
                for ky in 0..g.kernel[0] {
                    let yy = oy * g.strides[0] + ky * g.dilations[0];
                    let iy = src(oy, ky, g.strides[0], g.dilations[0], g.pads[0], h);
                    for kx in 0..g.kernel[1] {
                        let xx = ox * g.strides[1] + kx * g.dilations[1];
                        if yy < h + g.pads[0] + g.pads[2] && xx < w + g.pads[1] + g.pads[3] {
                            padded += 1;
                        }
                        let ix = src(ox, kx, g.strides[1], g.dilations[1], g.pads[1], w);
                        if let (Some(iy), Some(ix)) = (iy, ix) {
                            vals.push(plane[iy * w + ix]);
                        }
                    }
                }
                out.push(f(&vals, padded));
            }
        }
    }
    out
}
