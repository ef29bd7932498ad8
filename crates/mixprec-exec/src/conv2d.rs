//! Fast 2-D convolution on the CPU that candle can differentiate to any order.
//!
//! The Hessian-aware sensitivity metrics (survey §3.2.3 HAWQ-V2, eqs. (21)–(23): Hutchinson's
//! trace estimate Tr(H) ≈ (1/n)·Σ zᵀHz from Hessian-vector products; §3.3 HAWQ-V3) and the
//! gradient-based methods of §3.1 and §3.4 run many forward, backward and double-backward passes
//! through convolution layers; this module makes those passes cheap. Im2col + GEMM convolution
//! as in Chellapilla et al., "High Performance Convolutional Neural Networks for Document
//! Processing" (2006).
//!
//! Convolution is bilinear, so with the trilinear form `T(X, W, G) = <Conv(X, W), G>` three
//! operators close the set under differentiation:
//! - `Y = Conv(X, W)`; its adjoints are `dX = ConvBackwardInput(gY, W)` (transposed
//!   convolution, col2im) and `dW = ConvBackwardWeight(X, gY)`;
//! - `ConvBackwardInput(G, W) = ∂T/∂X`: `<g, CBI(G, W)> = T(g, W, G)`, so its adjoints are
//!   `dG = Conv(g, W)` and `dW = ConvBackwardWeight(g, G)`;
//! - `ConvBackwardWeight(X, G) = ∂T/∂W`: `<g, CBW(X, G)> = T(X, g, G)`, so its adjoints are
//!   `dG = Conv(X, g)` and `dX = ConvBackwardInput(G, g)`.
//!
//! Every operator is a candle `CustomOp2` whose backward is built from the three operators, so
//! double backward (Hessian-vector products) works when `CANDLE_GRAD_DO_NOT_DETACH` is set (see
//! [`crate::init`]).
//!
//! Kernels: im2col over tiles of output positions (so the column buffer stays in L2) followed by
//! an SGEMM of the `gemm` crate; 1×1 convolutions with unit stride and no padding use the input
//! as the column matrix directly; convolutions with one input channel per group (depthwise, or a
//! single-channel first layer with few filters) use direct loops. Work is split across the batch,
//! the groups and column tiles with rayon.
//! Complexity: N·M·(C/groups)·KH·KW·OH·OW multiply-adds per operator, extra memory
//! O(threads · C/groups·KH·KW · tile).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Column-buffer budget per task in floats (≈ 512 KiB, half of one core's L2).
const TILE_FLOATS: usize = 128 * 1024;
/// Smallest tile of output positions for the im2col kernels.
const MIN_TILE: usize = 64;

/// Strides, paddings, dilations and groups of a convolution: everything but the tensor shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Params {
    stride: (usize, usize),
    /// top, left, bottom, right
    pads: [usize; 4],
    dilation: (usize, usize),
    groups: usize,
}

/// Full geometry of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    p: Params,
}

impl Geom {
    /// Fails unless an output gradient of spatial size `ohw` fits this geometry.
    fn check_output(&self, op: &str, ohw: (usize, usize)) -> Result<()> {
        if (self.oh, self.ow) != ohw {
            bail!(
                "{op}: an output gradient of size {}x{} does not match the {}x{} output of a \
                 {}x{} input",
                ohw.0,
                ohw.1,
                self.oh,
                self.ow,
                self.h,
                self.w
            )
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        p: Params,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        m: usize,
        kh: usize,
        kw: usize,
    ) -> Result<Self> {
        let Params {
            stride,
            pads,
            dilation,
            groups,
        } = p;
        if groups == 0 || stride.0 == 0 || stride.1 == 0 || dilation.0 == 0 || dilation.1 == 0 {
            bail!("conv2d: groups, strides and dilations must be positive, got {p:?}")
        }
        if !c.is_multiple_of(groups) || !m.is_multiple_of(groups) {
            bail!(
                "conv2d: {c} input and {m} output channels are not both divisible by {groups} groups"
            )
        }
        if kh == 0 || kw == 0 {
            bail!("conv2d: empty {kh}x{kw} kernel")
        }
        let span_h = dilation.0 * (kh - 1) + 1;
        let span_w = dilation.1 * (kw - 1) + 1;
        let (ph, pw) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
        if ph < span_h || pw < span_w {
            bail!(
                "conv2d: the dilated {kh}x{kw} kernel ({span_h}x{span_w}) does not fit the padded \
                 {ph}x{pw} input"
            )
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            m,
            kh,
            kw,
            oh: (ph - span_h) / stride.0 + 1,
            ow: (pw - span_w) / stride.1 + 1,
            p,
        })
    }
    fn cg(&self) -> usize {
        self.c / self.p.groups
    }
    fn mg(&self) -> usize {
        self.m / self.p.groups
    }
    /// Rows of the column matrix: (C/groups)·KH·KW.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    /// The column matrix equals the input (1×1 kernel, unit stride, no padding).
    fn identity_cols(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.p.stride == (1, 1)
            && self.p.pads == [0; 4]
            && self.oh == self.h
            && self.ow == self.w
    }
    /// Direct loops beat im2col + GEMM when each output channel reads a single input channel
    /// and at most two output channels share it (measured: depthwise 3×3 1.8× faster direct,
    /// six 5×5 filters on one channel 3× faster with GEMM).
    fn direct(&self) -> bool {
        self.cg() == 1 && self.mg() <= 2
    }
    /// Tile of output positions for the im2col kernels.
    fn tile(&self) -> usize {
        (TILE_FLOATS / self.k().max(1))
            .max(MIN_TILE)
            .min(self.ohw())
    }
    /// For each kernel column `kj`: the output columns `[lo, hi)` whose input column
    /// `ow·sw + off` lies inside the input, and `off`.
    fn col_ranges(&self) -> Vec<ColRange> {
        let s = self.p.stride.1 as isize;
        (0..self.kw)
            .map(|kj| {
                let off = self.off_w(kj);
                let lo = if off < 0 { (-off + s - 1) / s } else { 0 };
                let last = self.w as isize - 1 - off;
                let hi = if last < 0 { 0 } else { last / s + 1 };
                let lo = (lo as usize).min(self.ow);
                let hi = (hi as usize).clamp(lo, self.ow);
                ColRange { lo, hi, off }
            })
            .collect()
    }
    /// Input row read by output row `oh` and kernel row `ki`, if inside the input.
    fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        let ih = (oh * self.p.stride.0) as isize + self.off_h(ki);
        (ih >= 0 && ih < self.h as isize).then_some(ih as usize)
    }
    fn off_h(&self, ki: usize) -> isize {
        (ki * self.p.dilation.0) as isize - self.p.pads[0] as isize
    }
    fn off_w(&self, kj: usize) -> isize {
        (kj * self.p.dilation.1) as isize - self.p.pads[1] as isize
    }
}

/// A raw pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: only used to hand disjoint regions of one output buffer to rayon tasks.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst[m×n] (row stride dst_rs) = [dst +] lhs[m×k] · rhs[k×n]` with arbitrary strides for the
/// operands; bounds are checked against the slices.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let span = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        span(m, n, dst_rs, 1) < dst.len(),
        "sgemm: dst out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        span(m, k, lhs_rs, lhs_cs) < lhs.len(),
        "sgemm: lhs out of bounds"
    );
    assert!(
        span(k, n, rhs_rs, rhs_cs) < rhs.len(),
        "sgemm: rhs out of bounds"
    );
    // SAFETY: every accessed element lies inside the slices (checked above), and `dst` is
    // exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Output columns `[lo, hi)` of one kernel column that read inside the input, whose input
/// column is `o·sw + off`.
#[derive(Clone, Copy, Debug)]
struct ColRange {
    lo: usize,
    hi: usize,
    off: isize,
}

impl ColRange {
    /// Input column of output column `o`.
    #[inline(always)]
    fn at(&self, o: usize, sw: usize) -> usize {
        ((o * sw) as isize + self.off) as usize
    }
    /// The part inside `[a, b)`.
    #[inline(always)]
    fn clamp(&self, a: usize, b: usize) -> (usize, usize) {
        let lo = self.lo.clamp(a, b);
        (lo, self.hi.clamp(lo, b))
    }
}

/// Columns `[p0, p1)` of the im2col matrix of one group's input `xg` (`Cg·H·W`), written to
/// `col` as a `[K, p1 - p0]` row-major matrix.
fn im2col(g: &Geom, ranges: &[ColRange], xg: &[f32], p0: usize, p1: usize, col: &mut [f32]) {
    let len = p1 - p0;
    let sw = g.p.stride.1;
    let (oh0, oh1) = (p0 / g.ow, (p1 - 1) / g.ow + 1);
    for c in 0..g.cg() {
        let xc = &xg[c * g.hw()..(c + 1) * g.hw()];
        for ki in 0..g.kh {
            for (kj, cr) in ranges.iter().enumerate() {
                let r = (c * g.kh + ki) * g.kw + kj;
                let row = &mut col[r * len..(r + 1) * len];
                for oh in oh0..oh1 {
                    let base = oh * g.ow;
                    let ow0 = p0.saturating_sub(base);
                    let ow1 = g.ow.min(p1 - base);
                    let seg = &mut row[base + ow0 - p0..base + ow1 - p0];
                    let Some(ih) = g.in_row(oh, ki) else {
                        seg.fill(0.0);
                        continue;
                    };
                    let xrow = &xc[ih * g.w..(ih + 1) * g.w];
                    let (lo, hi) = cr.clamp(ow0, ow1);
                    seg[..lo - ow0].fill(0.0);
                    seg[hi - ow0..].fill(0.0);
                    let dst = &mut seg[lo - ow0..hi - ow0];
                    if sw == 1 {
                        let s = cr.at(lo, 1);
                        dst.copy_from_slice(&xrow[s..s + (hi - lo)]);
                    } else {
                        for (o, d) in (lo..hi).zip(dst.iter_mut()) {
                            *d = xrow[cr.at(o, sw)];
                        }
                    }
                }
            }
        }
    }
}

/// Adds columns `[p0, p1)` of a `[K, p1 - p0]` column matrix back into one group's input
/// gradient `dxg` (`Cg·H·W`): the adjoint of [`im2col`].
fn col2im_add(g: &Geom, ranges: &[ColRange], col: &[f32], p0: usize, p1: usize, dxg: &mut [f32]) {
    let len = p1 - p0;
    let sw = g.p.stride.1;
    let (oh0, oh1) = (p0 / g.ow, (p1 - 1) / g.ow + 1);
    for c in 0..g.cg() {
        let dxc = &mut dxg[c * g.hw()..(c + 1) * g.hw()];
        for ki in 0..g.kh {
            for (kj, cr) in ranges.iter().enumerate() {
                let r = (c * g.kh + ki) * g.kw + kj;
                let row = &col[r * len..(r + 1) * len];
                for oh in oh0..oh1 {
                    let Some(ih) = g.in_row(oh, ki) else {
                        continue;
                    };
                    let base = oh * g.ow;
                    let ow0 = p0.saturating_sub(base);
                    let ow1 = g.ow.min(p1 - base);
                    let (lo, hi) = cr.clamp(ow0, ow1);
                    let src = &row[base + lo - p0..base + hi - p0];
                    let dxrow = &mut dxc[ih * g.w..(ih + 1) * g.w];
                    if sw == 1 {
                        let s = cr.at(lo, 1);
                        for (d, v) in dxrow[s..s + (hi - lo)].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (o, v) in (lo..hi).zip(src) {
                            dxrow[cr.at(o, sw)] += v;
                        }
                    }
                }
            }
        }
    }
}

/// `a·b + c`, fused when the kernel is compiled with FMA.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product with sixteen independent partial sums (vectorises without reassociation).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    let mut s = 0.0;
    for (x, y) in ar.iter().zip(br) {
        s = madd::<FMA>(*x, *y, s);
    }
    acc.iter().sum::<f32>() + s
}

/// Columns `o0..o0 + 8` of output row `oh` of the direct convolution, all of whose taps lie
/// inside the input, added to `init`. (A function, not a closure: closures are not compiled
/// with the caller's target features.)
#[inline(always)]
fn fwd_block<const FMA: bool>(
    g: &Geom,
    ranges: &[ColRange],
    xc: &[f32],
    wm: &[f32],
    oh: usize,
    o0: usize,
    init: &[f32],
) -> [f32; 8] {
    const B: usize = 8;
    let sw = g.p.stride.1;
    let mut acc = [0f32; B];
    acc.copy_from_slice(init);
    for ki in 0..g.kh {
        let Some(ih) = g.in_row(oh, ki) else {
            continue;
        };
        let xrow = &xc[ih * g.w..(ih + 1) * g.w];
        for (kj, cr) in ranges.iter().enumerate() {
            let wv = wm[ki * g.kw + kj];
            let s = cr.at(o0, sw);
            if sw == 1 {
                let xs = &xrow[s..s + B];
                for i in 0..B {
                    acc[i] = madd::<FMA>(wv, xs[i], acc[i]);
                }
            } else {
                let xs = &xrow[s..s + (B - 1) * sw + 1];
                for i in 0..B {
                    acc[i] = madd::<FMA>(wv, xs[i * sw], acc[i]);
                }
            }
        }
    }
    acc
}

/// Output plane of one channel of the direct convolution: `yp += xc ⋆ wm` (one input channel
/// `xc`, one `KH·KW` filter `wm`). Columns whose taps all lie inside the input are computed
/// eight at a time in registers; the others tap by tap.
#[inline(always)]
fn fwd_plane<const FMA: bool>(
    g: &Geom,
    ranges: &[ColRange],
    xc: &[f32],
    wm: &[f32],
    yp: &mut [f32],
) {
    const B: usize = 8;
    let sw = g.p.stride.1;
    // Output columns where every kernel column reads inside the input.
    let ilo = ranges.iter().map(|r| r.lo).max().unwrap_or(0);
    let ihi = ranges.iter().map(|r| r.hi).min().unwrap_or(0).max(ilo);
    let nblk = (ihi - ilo) / B;
    // Columns from `rest` on that the blocks do not cover are done tap by tap.
    let rest = if nblk > 0 { ihi } else { ilo };
    for oh in 0..g.oh {
        let yrow = &mut yp[oh * g.ow..(oh + 1) * g.ow];
        for bi in 0..nblk {
            let o0 = ilo + bi * B;
            let acc = fwd_block::<FMA>(g, ranges, xc, wm, oh, o0, &yrow[o0..o0 + B]);
            yrow[o0..o0 + B].copy_from_slice(&acc);
        }
        let bend = ilo + nblk * B;
        if nblk > 0 && bend < ihi {
            // A last block ending at `ihi`, overlapping the previous one: only its new lanes
            // (which started from untouched values) are kept.
            let o0 = ihi - B;
            let acc = fwd_block::<FMA>(g, ranges, xc, wm, oh, o0, &yrow[o0..o0 + B]);
            yrow[bend..ihi].copy_from_slice(&acc[bend - o0..]);
        }
        // Border columns.
        for ki in 0..g.kh {
            let Some(ih) = g.in_row(oh, ki) else {
                continue;
            };
            let xrow = &xc[ih * g.w..(ih + 1) * g.w];
            for (kj, cr) in ranges.iter().enumerate() {
                let wv = wm[ki * g.kw + kj];
                for (a, b) in [(0, ilo), (rest, g.ow)] {
                    let (lo, hi) = cr.clamp(a, b);
                    for o in lo..hi {
                        yrow[o] = madd::<FMA>(wv, xrow[cr.at(o, sw)], yrow[o]);
                    }
                }
            }
        }
    }
}

/// Transposed direct convolution of one output channel's gradient `gp` into the gradient
/// `dxp` of its input channel.
#[inline(always)]
fn cbi_plane<const FMA: bool>(
    g: &Geom,
    ranges: &[ColRange],
    gp: &[f32],
    wm: &[f32],
    dxp: &mut [f32],
) {
    let sw = g.p.stride.1;
    for oh in 0..g.oh {
        let grow = &gp[oh * g.ow..(oh + 1) * g.ow];
        for ki in 0..g.kh {
            let Some(ih) = g.in_row(oh, ki) else {
                continue;
            };
            let dxrow = &mut dxp[ih * g.w..(ih + 1) * g.w];
            for (kj, cr) in ranges.iter().enumerate() {
                let wv = wm[ki * g.kw + kj];
                let (lo, hi) = (cr.lo, cr.hi);
                if sw == 1 {
                    let s = cr.at(lo, 1);
                    for (d, gv) in dxrow[s..s + (hi - lo)].iter_mut().zip(&grow[lo..hi]) {
                        *d = madd::<FMA>(wv, *gv, *d);
                    }
                } else {
                    for o in lo..hi {
                        let d = &mut dxrow[cr.at(o, sw)];
                        *d = madd::<FMA>(wv, grow[o], *d);
                    }
                }
            }
        }
    }
}

/// Weight gradient of one direct-convolution filter from one image: `dwm += gp ⋆ xc`.
#[inline(always)]
fn cbw_plane<const FMA: bool>(
    g: &Geom,
    ranges: &[ColRange],
    gp: &[f32],
    xc: &[f32],
    dwm: &mut [f32],
) {
    let sw = g.p.stride.1;
    for oh in 0..g.oh {
        let grow = &gp[oh * g.ow..(oh + 1) * g.ow];
        for ki in 0..g.kh {
            let Some(ih) = g.in_row(oh, ki) else {
                continue;
            };
            let xrow = &xc[ih * g.w..(ih + 1) * g.w];
            for (kj, cr) in ranges.iter().enumerate() {
                let (lo, hi) = (cr.lo, cr.hi);
                dwm[ki * g.kw + kj] += if sw == 1 {
                    let s = cr.at(lo, 1);
                    dot::<FMA>(&grow[lo..hi], &xrow[s..s + (hi - lo)])
                } else {
                    // A loop, not a closure, so that it keeps the target features.
                    let mut acc = 0.0;
                    for o in lo..hi {
                        acc = madd::<FMA>(grow[o], xrow[cr.at(o, sw)], acc);
                    }
                    acc
                };
            }
        }
    }
}

/// Whether the CPU has AVX2 and FMA (the direct kernels are compiled for them too).
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name`, which runs the `#[inline(always)]` kernel `$kernel` compiled for AVX2 +
/// FMA when `simd` is true (the caller checked [`has_avx2_fma`]) and for the baseline target
/// otherwise.
macro_rules! dispatch {
    ($name:ident, $avx:ident, $kernel:ident, ($($a:ident: $t:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($a: $t),*) {
            $kernel::<true>($($a),*)
        }

        fn $name(simd: bool, $($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `simd` is only true when the CPU supports AVX2 and FMA.
                return unsafe { $avx($($a),*) };
            }
            let _ = simd;
            $kernel::<false>($($a),*)
        }
    };
}

dispatch!(fwd_plane_any, fwd_plane_avx2, fwd_plane,
    (g: &Geom, ranges: &[ColRange], xc: &[f32], wm: &[f32], yp: &mut [f32]));
dispatch!(cbi_plane_any, cbi_plane_avx2, cbi_plane,
    (g: &Geom, ranges: &[ColRange], gp: &[f32], wm: &[f32], dxp: &mut [f32]));
dispatch!(cbw_plane_any, cbw_plane_avx2, cbw_plane,
    (g: &Geom, ranges: &[ColRange], gp: &[f32], xc: &[f32], dwm: &mut [f32]));

// ---------------------------------------------------------------------------------------------
// Conv: y[N, M, OH, OW] = x[N, C, H, W] ⋆ w[M, C/groups, KH, KW]
// ---------------------------------------------------------------------------------------------

fn conv_fwd(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; g.n * g.m * g.ohw()];
    if y.is_empty() {
        return y;
    }
    if g.direct() {
        conv_fwd_direct(g, x, w, &mut y);
        return y;
    }
    let (cg, mg, k, ohw, groups) = (g.cg(), g.mg(), g.k(), g.ohw(), g.p.groups);
    if g.identity_cols() {
        // y[n, g] = w[g] · x[n, g]
        let tasks = g.n * groups;
        let par = if tasks >= threads() {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads())
        };
        y.par_chunks_mut(mg * ohw).enumerate().for_each(|(t, yc)| {
            let (n, gi) = (t / groups, t % groups);
            let xg = &x[(n * g.c + gi * cg) * ohw..][..cg * ohw];
            let wg = &w[gi * mg * k..][..mg * k];
            sgemm((mg, ohw, cg), yc, ohw, false, wg, (k, 1), xg, (ohw, 1), par);
        });
        return y;
    }
    let tile = g.tile();
    let ranges = g.col_ranges();
    let ntiles = ohw.div_ceil(tile);
    let tasks = g.n * groups * ntiles;
    let par = if tasks >= threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads())
    };
    let yp = SyncPtr(y.as_mut_ptr());
    let ylen = y.len();
    (0..tasks).into_par_iter().for_each_init(
        || vec![0f32; k * tile],
        |col, t| {
            let (ng, ti) = (t / ntiles, t % ntiles);
            let (n, gi) = (ng / groups, ng % groups);
            let (p0, p1) = (ti * tile, ((ti + 1) * tile).min(ohw));
            let xg = &x[(n * g.c + gi * cg) * g.hw()..][..cg * g.hw()];
            im2col(g, &ranges, xg, p0, p1, col);
            let wg = &w[gi * mg * k..][..mg * k];
            let start = (n * g.m + gi * mg) * ohw + p0;
            let span = (mg - 1) * ohw + (p1 - p0);
            debug_assert!(start + span <= ylen);
            // SAFETY: task `t` writes only rows gi·mg.. of image n, columns [p0, p1): the
            // regions of different tasks are disjoint and lie inside `y`, which outlives the
            // parallel loop.
            let dst = unsafe { std::slice::from_raw_parts_mut(yp.get().add(start), span) };
            let len = p1 - p0;
            sgemm(
                (mg, len, k),
                dst,
                ohw,
                false,
                wg,
                (k, 1),
                col,
                (len, 1),
                par,
            );
        },
    );
    y
}

/// Direct convolution for one input channel per group.
fn conv_fwd_direct(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32]) {
    let (mg, ohw, khw) = (g.mg(), g.ohw(), g.kh * g.kw);
    let ranges = g.col_ranges();
    let simd = has_avx2_fma();
    y.par_chunks_mut(ohw).enumerate().for_each(|(t, yp)| {
        let (n, m) = (t / g.m, t % g.m);
        let xc = &x[(n * g.c + m / mg) * g.hw()..][..g.hw()];
        fwd_plane_any(simd, g, &ranges, xc, &w[m * khw..][..khw], yp);
    });
}

// ---------------------------------------------------------------------------------------------
// ConvBackwardInput: dx[N, C, H, W] from gy[N, M, OH, OW] and w
// ---------------------------------------------------------------------------------------------

fn cbi_fwd(g: &Geom, gy: &[f32], w: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; g.n * g.c * g.hw()];
    if dx.is_empty() || g.ohw() == 0 {
        return dx;
    }
    if g.direct() {
        cbi_direct(g, gy, w, &mut dx);
        return dx;
    }
    let (cg, mg, k, ohw, hw, groups) = (g.cg(), g.mg(), g.k(), g.ohw(), g.hw(), g.p.groups);
    let tasks = g.n * groups;
    let par = if tasks >= threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads())
    };
    if g.identity_cols() {
        // dx[n, g] = w[g]ᵀ · gy[n, g]
        dx.par_chunks_mut(cg * hw).enumerate().for_each(|(t, dxc)| {
            let (n, gi) = (t / groups, t % groups);
            let gg = &gy[(n * g.m + gi * mg) * ohw..][..mg * ohw];
            let wg = &w[gi * mg * k..][..mg * k];
            sgemm((cg, ohw, mg), dxc, hw, false, wg, (1, k), gg, (ohw, 1), par);
        });
        return dx;
    }
    let tile = g.tile();
    let ranges = g.col_ranges();
    dx.par_chunks_mut(cg * hw).enumerate().for_each_init(
        || vec![0f32; k * tile],
        |col, (t, dxc)| {
            let (n, gi) = (t / groups, t % groups);
            let gg = &gy[(n * g.m + gi * mg) * ohw..][..mg * ohw];
            let wg = &w[gi * mg * k..][..mg * k];
            let mut p0 = 0;
            while p0 < ohw {
                let p1 = (p0 + tile).min(ohw);
                let len = p1 - p0;
                // col[K, len] = w[g]ᵀ[K, Mg] · gy[n, g][Mg, p0..p1]
                sgemm(
                    (k, len, mg),
                    col,
                    len,
                    false,
                    wg,
                    (1, k),
                    &gg[p0..],
                    (ohw, 1),
                    par,
                );
                col2im_add(g, &ranges, col, p0, p1, dxc);
                p0 = p1;
            }
        },
    );
    dx
}

/// Direct transposed convolution for one input channel per group.
fn cbi_direct(g: &Geom, gy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (mg, ohw, khw) = (g.mg(), g.ohw(), g.kh * g.kw);
    let ranges = g.col_ranges();
    let simd = has_avx2_fma();
    dx.par_chunks_mut(g.hw()).enumerate().for_each(|(t, dxp)| {
        let (n, c) = (t / g.c, t % g.c);
        for m in c * mg..(c + 1) * mg {
            let gp = &gy[(n * g.m + m) * ohw..][..ohw];
            cbi_plane_any(simd, g, &ranges, gp, &w[m * khw..][..khw], dxp);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// ConvBackwardWeight: dw[M, C/groups, KH, KW] from x and gy
// ---------------------------------------------------------------------------------------------

fn cbw_fwd(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f32> {
    let (cg, mg, k, ohw, hw, groups) = (g.cg(), g.mg(), g.k(), g.ohw(), g.hw(), g.p.groups);
    let mut dw = vec![0f32; g.m * k];
    if dw.is_empty() || g.n == 0 || ohw == 0 {
        return dw;
    }
    if g.direct() {
        cbw_direct(g, x, gy, &mut dw);
        return dw;
    }
    // Tasks: groups × batch chunks, each accumulating a partial [Mg, K] sum. The partition
    // does not depend on the thread count, so the summation order — and the result, bit for
    // bit — is the same with 1 or many threads.
    const BATCH_CHUNKS: usize = 8;
    let chunks = if groups >= BATCH_CHUNKS {
        1
    } else {
        g.n.min(BATCH_CHUNKS.div_ceil(groups))
    };
    let per = g.n.div_ceil(chunks);
    let chunks = g.n.div_ceil(per);
    let tasks = groups * chunks;
    let par = if tasks >= threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads())
    };
    let tile = if g.identity_cols() { 0 } else { g.tile() };
    let ranges = g.col_ranges();
    let partials: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map_init(
            || vec![0f32; k * tile],
            |col, t| {
                let (gi, ch) = (t / chunks, t % chunks);
                let mut acc = vec![0f32; mg * k];
                let mut first = true;
                for n in ch * per..((ch + 1) * per).min(g.n) {
                    let gg = &gy[(n * g.m + gi * mg) * ohw..][..mg * ohw];
                    let xg = &x[(n * g.c + gi * cg) * hw..][..cg * hw];
                    if tile == 0 {
                        // acc[Mg, Cg] += gy[n, g][Mg, HW] · x[n, g]ᵀ[HW, Cg]
                        sgemm(
                            (mg, cg, ohw),
                            &mut acc,
                            k,
                            !first,
                            gg,
                            (ohw, 1),
                            xg,
                            (1, hw),
                            par,
                        );
                        first = false;
                        continue;
                    }
                    let mut p0 = 0;
                    while p0 < ohw {
                        let p1 = (p0 + tile).min(ohw);
                        let len = p1 - p0;
                        im2col(g, &ranges, xg, p0, p1, col);
                        // acc[Mg, K] += gy[n, g][Mg, p0..p1] · col[K, len]ᵀ
                        sgemm(
                            (mg, k, len),
                            &mut acc,
                            k,
                            !first,
                            &gg[p0..],
                            (ohw, 1),
                            col,
                            (1, len),
                            par,
                        );
                        first = false;
                        p0 = p1;
                    }
                }
                acc
            },
        )
        .collect();
    for (t, part) in partials.iter().enumerate() {
        let gi = t / chunks;
        for (d, v) in dw[gi * mg * k..(gi + 1) * mg * k].iter_mut().zip(part) {
            *d += v;
        }
    }
    dw
}

/// Direct weight gradient for one input channel per group.
fn cbw_direct(g: &Geom, x: &[f32], gy: &[f32], dw: &mut [f32]) {
    let (mg, ohw, khw) = (g.mg(), g.ohw(), g.kh * g.kw);
    let ranges = g.col_ranges();
    let simd = has_avx2_fma();
    dw.par_chunks_mut(khw).enumerate().for_each(|(m, dwm)| {
        let ci = m / mg;
        for n in 0..g.n {
            let gp = &gy[(n * g.m + m) * ohw..][..ohw];
            let xc = &x[(n * g.c + ci) * g.hw()..][..g.hw()];
            cbw_plane_any(simd, g, &ranges, gp, xc, dwm);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// candle operators
// ---------------------------------------------------------------------------------------------

/// The contiguous f32 data of a CPU operand.
pub(crate) fn f32_data<'a>(
    op: &str,
    what: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!(
            "{op}: only f32 is supported, the {what} is {:?} (convert it with to_dtype(F32))",
            other.dtype()
        ),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: the {what} must be contiguous"),
    }
}

fn dims4(op: &str, what: &str, l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [a, b, c, d] => Ok((a, b, c, d)),
        ref d => bail!("{op}: the {what} must be 4-D, got shape {d:?}"),
    }
}

/// `y = Conv(x, w)`.
struct Conv(Params);
/// `dx = ConvBackwardInput(gy, w)` for an input of spatial size `hw`.
struct ConvBackwardInput(Params, (usize, usize));
/// `dw = ConvBackwardWeight(x, gy)` for a kernel of spatial size `khw`.
struct ConvBackwardWeight(Params, (usize, usize));

fn apply_conv(x: &Tensor, w: &Tensor, p: Params) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv(p))
}

fn apply_cbi(gy: &Tensor, w: &Tensor, p: Params, hw: (usize, usize)) -> Result<Tensor> {
    gy.contiguous()?
        .apply_op2(&w.contiguous()?, ConvBackwardInput(p, hw))
}

fn apply_cbw(x: &Tensor, gy: &Tensor, p: Params, khw: (usize, usize)) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&gy.contiguous()?, ConvBackwardWeight(p, khw))
}

/// `f()` when `t` is on the tape (its gradient is wanted), else `None`.
fn tracked(t: &Tensor, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if t.track_op() {
        f().map(Some)
    } else {
        Ok(None)
    }
}

fn spatial(t: &Tensor) -> Result<(usize, usize)> {
    let (_, _, h, w) = t.dims4()?;
    Ok((h, w))
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "mixprec-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, c, h, w) = dims4(op, "input", l1)?;
        let (m, cg, kh, kw) = dims4(op, "weight", l2)?;
        if cg * self.0.groups != c {
            bail!(
                "{op}: the weight has {cg} input channels per group but the input has {c} \
                 channels in {} groups",
                self.0.groups
            )
        }
        let g = Geom::new(self.0, n, c, h, w, m, kh, kw)?;
        let y = conv_fwd(
            &g,
            f32_data(op, "input", s1, l1)?,
            f32_data(op, "weight", s2, l2)?,
        );
        Ok((CpuStorage::F32(y), Shape::from((n, m, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = tracked(x, || apply_cbi(gy, w, self.0, spatial(x)?))?;
        let dw = tracked(w, || apply_cbw(x, gy, self.0, spatial(w)?))?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for ConvBackwardInput {
    fn name(&self) -> &'static str {
        "mixprec-conv2d-backward-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, m, oh, ow) = dims4(op, "output gradient", l1)?;
        let (mw, cg, kh, kw) = dims4(op, "weight", l2)?;
        if mw != m {
            bail!("{op}: the output gradient has {m} channels but the weight has {mw} filters")
        }
        let (h, w) = self.1;
        let c = cg * self.0.groups;
        let g = Geom::new(self.0, n, c, h, w, m, kh, kw)?;
        g.check_output(op, (oh, ow))?;
        let dx = cbi_fwd(
            &g,
            f32_data(op, "output gradient", s1, l1)?,
            f32_data(op, "weight", s2, l2)?,
        );
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }

    fn bwd(
        &self,
        gy: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // <g, CBI(G, W)> = <Conv(g, W), G> = <W, CBW(g, G)>
        let dgy = tracked(gy, || apply_conv(g, w, self.0))?;
        let dw = tracked(w, || apply_cbw(g, gy, self.0, spatial(w)?))?;
        Ok((dgy, dw))
    }
}

impl CustomOp2 for ConvBackwardWeight {
    fn name(&self) -> &'static str {
        "mixprec-conv2d-backward-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, c, h, w) = dims4(op, "input", l1)?;
        let (ng, m, oh, ow) = dims4(op, "output gradient", l2)?;
        if ng != n {
            bail!("{op}: the input has batch {n} but the output gradient has batch {ng}")
        }
        let (kh, kw) = self.1;
        let g = Geom::new(self.0, n, c, h, w, m, kh, kw)?;
        g.check_output(op, (oh, ow))?;
        let dw = cbw_fwd(
            &g,
            f32_data(op, "input", s1, l1)?,
            f32_data(op, "output gradient", s2, l2)?,
        );
        Ok((CpuStorage::F32(dw), Shape::from((m, g.cg(), kh, kw))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gy: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // <g, CBW(X, G)> = <Conv(X, g), G> = <X, CBI(G, g)>
        let dx = tracked(x, || apply_cbi(gy, g, self.0, spatial(x)?))?;
        let dgy = tracked(gy, || apply_conv(x, g, self.0))?;
        Ok((dx, dgy))
    }
}

/// 2-D convolution of an f32 NCHW input `x` with a `[M, C/groups, KH, KW]` weight `w` on the
/// CPU: `stride` and `dilation` as (height, width), `pads` as [top, left, bottom, right].
/// Differentiable to any order with candle's autodiff. Other dtypes or devices are an error.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pads: [usize; 4],
    dilation: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    for (t, what) in [(x, "input"), (w, "weight")] {
        if t.dtype() != DType::F32 {
            bail!(
                "conv2d: only f32 is supported, the {what} is {:?}",
                t.dtype()
            )
        }
        if !t.device().is_cpu() {
            bail!("conv2d: only the CPU device is supported, the {what} is on another device")
        }
        if t.rank() != 4 {
            bail!("conv2d: the {what} must be 4-D, got shape {:?}", t.dims())
        }
    }
    apply_conv(
        x,
        w,
        Params {
            stride,
            pads,
            dilation,
            groups,
        },
    )
}

/// ‖∂⟨Conv(x_n, W), g_n⟩/∂W‖² for every sample n: the squared norm of each sample's own
/// weight gradient (one weight-gradient pass per sample, samples in parallel). `x` is the
/// [N, C, H, W] input, `gy` the [N, M, OH, OW] output gradient, `khw` the kernel size; other
/// arguments as in [`conv2d`].
pub fn sample_weight_gradient_sq_norms(
    x: &Tensor,
    gy: &Tensor,
    khw: (usize, usize),
    stride: (usize, usize),
    pads: [usize; 4],
    dilation: (usize, usize),
    groups: usize,
) -> Result<Vec<f64>> {
    let (n, c, h, w) = x.dims4()?;
    let (ng, m, oh, ow) = gy.dims4()?;
    let p = Params {
        stride,
        pads,
        dilation,
        groups,
    };
    let g1 = Geom::new(p, 1, c, h, w, m, khw.0, khw.1)?;
    if ng != n || (g1.oh, g1.ow) != (oh, ow) || c % groups.max(1) != 0 || m % groups.max(1) != 0 {
        bail!(
            "per-sample weight gradient: input {:?} and output gradient {:?} do not fit a {}x{} kernel in {groups} groups",
            x.dims(),
            gy.dims(),
            khw.0,
            khw.1
        )
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let gs = gy.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (xn, gn) = (c * h * w, m * oh * ow);
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            cbw_fwd(&g1, &xs[i * xn..][..xn], &gs[i * gn..][..gn])
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// One test geometry: input [n, c, h, w], weight [m, c/groups, kh, kw].
    #[derive(Clone, Copy, Debug)]
    struct Case {
        x: [usize; 4],
        wt: [usize; 4],
        stride: (usize, usize),
        pads: [usize; 4],
        dil: (usize, usize),
        groups: usize,
    }

    const fn case(
        x: [usize; 4],
        m: usize,
        k: (usize, usize),
        stride: (usize, usize),
        pads: [usize; 4],
        dil: (usize, usize),
        groups: usize,
    ) -> Case {
        Case {
            x,
            wt: [m, x[1] / groups, k.0, k.1],
            stride,
            pads,
            dil,
            groups,
        }
    }

    /// Shapes that reach every kernel: direct (depthwise, one input channel), im2col with and
    /// without several tiles, identity columns, strides, dilations, asymmetric pads, batch 1.
    const CASES: &[Case] = &[
        case([8, 1, 28, 28], 6, (5, 5), (1, 1), [2; 4], (1, 1), 1),
        case([2, 16, 12, 12], 16, (3, 3), (1, 1), [1; 4], (1, 1), 1),
        case([2, 8, 9, 11], 12, (3, 3), (2, 2), [1; 4], (1, 1), 1),
        case([1, 4, 10, 10], 6, (3, 3), (1, 1), [2; 4], (2, 2), 1),
        case([2, 6, 9, 9], 6, (3, 3), (1, 1), [1; 4], (1, 1), 6),
        case([2, 4, 9, 9], 8, (3, 3), (2, 2), [1; 4], (1, 1), 4),
        case([2, 8, 8, 8], 12, (3, 3), (1, 1), [1; 4], (1, 1), 2),
        case([2, 8, 7, 7], 16, (1, 1), (1, 1), [0; 4], (1, 1), 1),
        case([1, 8, 7, 7], 16, (1, 1), (1, 1), [0; 4], (1, 1), 2),
        case([2, 8, 7, 7], 16, (1, 1), (2, 2), [0; 4], (1, 1), 2),
        case([1, 3, 11, 8], 5, (3, 2), (2, 1), [1, 0, 2, 1], (1, 1), 1),
        case([1, 64, 16, 16], 8, (3, 3), (1, 1), [1; 4], (1, 1), 1),
        case([3, 1, 12, 12], 16, (3, 3), (1, 1), [1; 4], (1, 1), 1),
        case([2, 3, 8, 8], 4, (5, 5), (3, 3), [2; 4], (1, 1), 1),
        case([1, 3, 5, 5], 3, (3, 3), (1, 1), [3; 4], (1, 1), 3),
        case([2, 4, 3, 3], 5, (3, 3), (1, 1), [0; 4], (1, 1), 1),
        case([2, 4, 9, 7], 4, (3, 3), (2, 1), [0, 1, 2, 0], (1, 1), 4),
        case([2, 6, 10, 9], 4, (3, 3), (1, 2), [0, 2, 1, 0], (2, 1), 2),
        case([1, 4, 6, 29], 4, (3, 3), (1, 1), [1; 4], (1, 1), 4),
        case([2, 4, 7, 40], 8, (3, 3), (2, 2), [1, 1, 0, 2], (1, 1), 4),
        case([1, 2, 8, 37], 2, (3, 5), (1, 1), [2, 3, 1, 0], (1, 2), 2),
    ];

    fn rand_vec(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    struct Data {
        x: Tensor,
        w: Tensor,
    }

    fn data(cs: &Case, seed: u64) -> Data {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x = rand_vec(&mut rng, cs.x.iter().product());
        let w = rand_vec(&mut rng, cs.wt.iter().product());
        Data {
            x: Tensor::from_vec(x, cs.x.to_vec(), &Device::Cpu).unwrap(),
            w: Tensor::from_vec(w, cs.wt.to_vec(), &Device::Cpu).unwrap(),
        }
    }

    fn ours(cs: &Case, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        conv2d(x, w, cs.stride, cs.pads, cs.dil, cs.groups)
    }

    /// The same convolution from candle's own groups = 1 `conv2d` (its grouped gradients are
    /// not used): explicit asymmetric padding, one convolution per group, subsampling for
    /// unequal strides. Needs equal dilations.
    fn reference(cs: &Case, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        assert_eq!(cs.dil.0, cs.dil.1);
        let p = cs.pads;
        let sym = p.iter().all(|&v| v == p[0]);
        let (xp, pad) = if sym {
            (x.clone(), p[0])
        } else {
            (
                x.pad_with_zeros(2, p[0], p[2])?
                    .pad_with_zeros(3, p[1], p[3])?,
                0,
            )
        };
        let (cg, mg) = (cs.wt[1], cs.wt[0] / cs.groups);
        let mut outs = Vec::new();
        for gi in 0..cs.groups {
            let xg = xp.narrow(1, gi * cg, cg)?.contiguous()?;
            let wg = w.narrow(0, gi * mg, mg)?.contiguous()?;
            // Stride 1 and subsampling: candle's strided conv2d gradient has the wrong shape
            // when the stride does not divide the padded input.
            outs.push(xg.conv2d(&wg, pad, 1, cs.dil.0, 1)?);
        }
        let mut y = Tensor::cat(&outs, 1)?;
        for (dim, s) in [(2, cs.stride.0), (3, cs.stride.1)] {
            if s > 1 {
                let idx: Vec<u32> = (0..y.dim(dim)? as u32).step_by(s).collect();
                let idx = Tensor::new(idx.as_slice(), y.device())?;
                y = y.index_select(&idx, dim)?;
            }
        }
        Ok(y)
    }

    /// Plain f64 loops over the definition of the convolution.
    fn naive(cs: &Case, x: &[f32], w: &[f32]) -> (Vec<f64>, [usize; 4]) {
        let [n, c, h, wd] = cs.x;
        let [m, cg, kh, kw] = cs.wt;
        let mg = m / cs.groups;
        let oh = (h + cs.pads[0] + cs.pads[2] - cs.dil.0 * (kh - 1) - 1) / cs.stride.0 + 1;
        let ow = (wd + cs.pads[1] + cs.pads[3] - cs.dil.1 * (kw - 1) - 1) / cs.stride.1 + 1;
        let mut y = vec![0f64; n * m * oh * ow];
        for ni in 0..n {
            for mi in 0..m {
                let gi = mi / mg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut s = 0f64;
                        for ci in 0..cg {
                            for a in 0..kh {
                                for b in 0..kw {
                                    let ih = (i * cs.stride.0 + a * cs.dil.0) as isize
                                        - cs.pads[0] as isize;
                                    let iw = (j * cs.stride.1 + b * cs.dil.1) as isize
                                        - cs.pads[1] as isize;
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((ni * c + gi * cg + ci) * h + ih as usize) * wd
                                        + iw as usize];
                                    let wv = w[((mi * cg + ci) * kh + a) * kw + b];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((ni * m + mi) * oh + i) * ow + j] = s;
                    }
                }
            }
        }
        (y, [n, m, oh, ow])
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// max |a - b| / max(1, max |b|).
    fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1f64, |s, v| s.max(v.abs() as f64));
        let diff = a
            .iter()
            .zip(b)
            .fold(0f64, |d, (x, y)| d.max((*x as f64 - *y as f64).abs()));
        diff / scale
    }

    #[test]
    fn forward_matches_definition_and_candle() {
        for (i, cs) in CASES.iter().enumerate() {
            let d = data(cs, i as u64);
            let y = ours(cs, &d.x, &d.w).unwrap();
            let (yn, shape) = naive(cs, &to_vec(&d.x), &to_vec(&d.w));
            assert_eq!(y.dims(), shape, "case {cs:?}");
            let yn: Vec<f32> = yn.iter().map(|&v| v as f32).collect();
            let e = rel_err(&to_vec(&y), &yn);
            assert!(e < 1e-5, "case {cs:?}: {e} against the definition");
            if cs.dil.0 == cs.dil.1 {
                let yr = reference(cs, &d.x, &d.w).unwrap();
                let e = rel_err(&to_vec(&y), &to_vec(&yr));
                assert!(e < 1e-4, "case {cs:?}: {e} against candle");
            }
        }
    }

    #[test]
    fn every_kernel_is_exercised() {
        let geoms: Vec<Geom> = CASES
            .iter()
            .map(|cs| {
                let p = Params {
                    stride: cs.stride,
                    pads: cs.pads,
                    dilation: cs.dil,
                    groups: cs.groups,
                };
                let [n, c, h, w] = cs.x;
                Geom::new(p, n, c, h, w, cs.wt[0], cs.wt[2], cs.wt[3]).unwrap()
            })
            .collect();
        assert!(geoms.iter().any(|g| g.direct()));
        assert!(geoms.iter().any(|g| !g.direct() && g.identity_cols()));
        assert!(geoms.iter().any(|g| !g.direct() && g.tile() < g.ohw()));
        assert!(geoms
            .iter()
            .any(|g| !g.direct() && !g.identity_cols() && g.cg() == 1));
    }

    /// Output weights `r` and a direction (vx, vw) for Hessian-vector products.
    struct Dirs {
        r: Tensor,
        vx: Tensor,
        vw: Tensor,
    }

    fn dirs(cs: &Case, d: &Data, seed: u64) -> Dirs {
        let y_dims = ours(cs, &d.x, &d.w).unwrap().dims().to_vec();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut t = |dims: &[usize]| {
            let n = dims.iter().product();
            Tensor::from_vec(rand_vec(&mut rng, n), dims, &Device::Cpu).unwrap()
        };
        Dirs {
            r: t(&y_dims),
            vx: t(d.x.dims()),
            vw: t(d.w.dims()),
        }
    }

    /// Loss `sum(r ⊙ y)` (linear) or `sum(r ⊙ tanh(y))` with `y = f(x, w)`, its gradients with
    /// respect to x and w and, with `hvp`, the Hessian-vector product along (vx, vw) by double
    /// backward.
    struct Derivs {
        loss: f64,
        gx: Vec<f32>,
        gw: Vec<f32>,
        hx: Vec<f32>,
        hw: Vec<f32>,
    }

    fn derivs(
        f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        d: &Data,
        dirs: &Dirs,
        tanh: bool,
        hvp: bool,
    ) -> Derivs {
        let x = Var::from_tensor(&d.x).unwrap();
        let w = Var::from_tensor(&d.w).unwrap();
        let y = f(x.as_tensor(), w.as_tensor()).unwrap();
        let act = if tanh { y.tanh().unwrap() } else { y };
        let loss = (act * &dirs.r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gx = grads.get(&x).unwrap().clone();
        let gw = grads.get(&w).unwrap().clone();
        let (mut hx, mut hw) = (vec![], vec![]);
        if hvp {
            let s = ((&gx * &dirs.vx).unwrap().sum_all().unwrap()
                + (&gw * &dirs.vw).unwrap().sum_all().unwrap())
            .unwrap();
            let g2 = s.backward().unwrap();
            hx = to_vec(g2.get(&x).expect("second derivative w.r.t. x"));
            hw = to_vec(g2.get(&w).expect("second derivative w.r.t. w"));
        }
        Derivs {
            loss: loss.to_scalar::<f32>().unwrap() as f64,
            gx: to_vec(&gx),
            gw: to_vec(&gw),
            hx,
            hw,
        }
    }

    #[test]
    fn gradients_match_candle() {
        for (i, cs) in CASES.iter().enumerate() {
            if cs.dil.0 != cs.dil.1 {
                continue;
            }
            let d = data(cs, 100 + i as u64);
            let dd = dirs(cs, &d, i as u64);
            let a = derivs(&|x, w| ours(cs, x, w), &d, &dd, false, false);
            let b = derivs(&|x, w| reference(cs, x, w), &d, &dd, false, false);
            let (ex, ew) = (rel_err(&a.gx, &b.gx), rel_err(&a.gw, &b.gw));
            assert!(ex < 1e-4 && ew < 1e-4, "case {cs:?}: dx {ex}, dw {ew}");
        }
    }

    #[test]
    fn hessian_vector_products_match_candle() {
        crate::init();
        for (i, cs) in CASES.iter().enumerate() {
            if cs.dil.0 != cs.dil.1 {
                continue;
            }
            let d = data(cs, 200 + i as u64);
            let dd = dirs(cs, &d, i as u64);
            let a = derivs(&|x, w| ours(cs, x, w), &d, &dd, true, true);
            let b = derivs(&|x, w| reference(cs, x, w), &d, &dd, true, true);
            for (name, u, v) in [
                ("dx", &a.gx, &b.gx),
                ("dw", &a.gw, &b.gw),
                ("Hv x", &a.hx, &b.hx),
                ("Hv w", &a.hw, &b.hw),
            ] {
                let e = rel_err(u, v);
                assert!(e < 1e-4, "case {cs:?}: {name} differs by {e}");
            }
        }
    }

    /// Central finite differences along (vx, vw) for the grouped, dilated and asymmetric cases:
    /// first order `(L(p + εv) − L(p − εv)) / 2ε = <∇L, v>` and second order
    /// `(∇L(p + εv) − ∇L(p − εv)) / 2ε = Hv`.
    #[test]
    fn grouped_derivatives_match_finite_differences() {
        crate::init();
        let eps = 1e-2;
        let mut checked = 0;
        for (i, cs) in CASES.iter().enumerate() {
            if cs.groups == 1 && cs.dil.0 == cs.dil.1 && cs.pads.iter().all(|&p| p == cs.pads[0]) {
                continue;
            }
            checked += 1;
            let d = data(cs, 300 + i as u64);
            let dd = dirs(cs, &d, i as u64);
            let at = |e: f64| Data {
                x: (&d.x + dd.vx.affine(e, 0.0).unwrap()).unwrap(),
                w: (&d.w + dd.vw.affine(e, 0.0).unwrap()).unwrap(),
            };
            let f = |x: &Tensor, w: &Tensor| ours(cs, x, w);
            let base = derivs(&f, &d, &dd, true, true);
            let (p, m) = (
                derivs(&f, &at(eps), &dd, true, false),
                derivs(&f, &at(-eps), &dd, true, false),
            );
            let fd = (p.loss - m.loss) / (2.0 * eps);
            let exact: f64 = base
                .gx
                .iter()
                .zip(to_vec(&dd.vx))
                .chain(base.gw.iter().zip(to_vec(&dd.vw)))
                .map(|(g, v)| *g as f64 * v as f64)
                .sum();
            assert!(
                (fd - exact).abs() <= 2e-3 * exact.abs().max(1.0),
                "case {cs:?}: directional derivative {exact} vs finite difference {fd}"
            );
            let central = |a: &[f32], b: &[f32]| -> Vec<f32> {
                a.iter()
                    .zip(b)
                    .map(|(u, v)| ((*u as f64 - *v as f64) / (2.0 * eps)) as f32)
                    .collect()
            };
            let ex = rel_err(&base.hx, &central(&p.gx, &m.gx));
            let ew = rel_err(&base.hw, &central(&p.gw, &m.gw));
            assert!(ex < 5e-3 && ew < 5e-3, "case {cs:?}: Hv x {ex}, Hv w {ew}");
        }
        assert!(checked >= 8);
    }

    /// The baseline (non-AVX2) build of the direct kernels gives the same planes as the
    /// definition, so machines without AVX2/FMA are covered too.
    #[test]
    fn direct_kernels_without_simd_match() {
        for cs in CASES.iter().filter(|cs| cs.wt[1] == 1) {
            let p = Params {
                stride: cs.stride,
                pads: cs.pads,
                dilation: cs.dil,
                groups: cs.groups,
            };
            let [n, c, h, w] = cs.x;
            let g = Geom::new(p, n, c, h, w, cs.wt[0], cs.wt[2], cs.wt[3]).unwrap();
            let d = data(cs, 9);
            let (x, wt) = (to_vec(&d.x), to_vec(&d.w));
            let ranges = g.col_ranges();
            let (khw, mg) = (g.kh * g.kw, g.mg());
            let (ynaive, _) = naive(cs, &x, &wt);
            for simd in [false, has_avx2_fma()] {
                // Image 0, every output channel, forward.
                for m in 0..g.m {
                    let mut yp = vec![0f32; g.ohw()];
                    let xc = &x[(m / mg) * g.hw()..][..g.hw()];
                    fwd_plane_any(simd, &g, &ranges, xc, &wt[m * khw..][..khw], &mut yp);
                    let want: Vec<f32> = ynaive[m * g.ohw()..(m + 1) * g.ohw()]
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    assert!(rel_err(&yp, &want) < 1e-5, "{cs:?} simd {simd}");
                }
                // Adjoint identities on image 0, channel 0: <cbi(r), x> = <r, conv(x)> and
                // <cbw(r, x), w> = <r, conv(x)>.
                let r: Vec<f32> = (0..g.ohw()).map(|i| (i % 7) as f32 - 3.0).collect();
                let mut yp = vec![0f32; g.ohw()];
                let xc = &x[..g.hw()];
                fwd_plane_any(simd, &g, &ranges, xc, &wt[..khw], &mut yp);
                let ry: f64 = r.iter().zip(&yp).map(|(a, b)| (a * b) as f64).sum();
                let mut dx = vec![0f32; g.hw()];
                cbi_plane_any(simd, &g, &ranges, &r, &wt[..khw], &mut dx);
                let dxx: f64 = dx.iter().zip(xc).map(|(a, b)| (a * b) as f64).sum();
                let mut dw = vec![0f32; khw];
                cbw_plane_any(simd, &g, &ranges, &r, xc, &mut dw);
                let dww: f64 = dw.iter().zip(&wt[..khw]).map(|(a, b)| (a * b) as f64).sum();
                let tol = 1e-4 * ry.abs().max(1.0);
                assert!(
                    (dxx - ry).abs() < tol && (dww - ry).abs() < tol,
                    "{cs:?} simd {simd}"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((2, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let e = conv2d(&x, &w, (1, 1), [0; 4], (1, 1), 1).unwrap_err();
        assert!(e.to_string().contains("channels"), "{e}");
        let w = Tensor::zeros((2, 4, 7, 7), DType::F32, &Device::Cpu).unwrap();
        let e = conv2d(&x, &w, (1, 1), [0; 4], (1, 1), 1).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let w64 = Tensor::zeros((2, 4, 3, 3), DType::F64, &Device::Cpu).unwrap();
        let e = conv2d(&x, &w64, (1, 1), [0; 4], (1, 1), 1).unwrap_err();
        assert!(e.to_string().contains("f32"), "{e}");
        let w = Tensor::zeros((3, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let e = conv2d(&x, &w, (1, 1), [0; 4], (1, 1), 2).unwrap_err();
        assert!(e.to_string().contains("divisible"), "{e}");
        let e = conv2d(&x, &w, (0, 1), [0; 4], (1, 1), 2).unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
    }

    #[test]
    fn non_contiguous_operands() {
        let cs = &CASES[1];
        let d = data(cs, 5);
        // A transposed-and-back view is non-contiguous in memory but equal in value.
        let xt =
            d.x.transpose(2, 3)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(2, 3)
                .unwrap();
        assert!(!xt.is_contiguous());
        let a = ours(cs, &xt, &d.w).unwrap();
        let b = ours(cs, &d.x, &d.w).unwrap();
        assert_eq!(to_vec(&a), to_vec(&b));
    }
}
