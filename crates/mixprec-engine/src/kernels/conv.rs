//! Integer 2-D convolution: im2col + 8-bit GEMM, and a direct depthwise kernel.
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021), Eq. 24–25: after batch norm is folded into the
//! convolution (Eq. 25) the layer is an integer convolution accumulated in INT32, followed by
//! dyadic requantization (Eq. 24, see [`super::requant`]).
//!
//! Layouts: input NCHW (`u8` or `i8` with a layer-wise zero point), weights
//! `[Cout, Cin/groups, kh, kw]` symmetric signed (any width 2..=8, stored as int8 or, for
//! `bits == 4`, two per byte), output NCHW `i32` with `out = Σ (x - zp)·w`. Padding is implicit
//! and equal to the zero point, i.e. a real zero. Pads are `[top, left, bottom, right]` (ONNX's
//! `[x1_begin, x2_begin, x1_end, x2_end]`), asymmetric allowed; strides, dilations and groups are
//! general.
//!
//! - General case: per image and group, im2col into `[Ho·Wo, Cin/g·kh·kw]` (column order
//!   `(c, ky, kx)`, matching the weight layout) and one GEMM against the packed `[Cout/g, K]`
//!   weights; `O(Ho·Wo·Cout·Cin/g·kh·kw)` time, `O(Ho·Wo·K)` scratch. Each im2col row is
//!   written front to back from contiguous `kw`-long input row segments (dilation 1; windows
//!   overlapping the left / right padding are checked per element). A 1×1, stride-1,
//!   unpadded convolution skips im2col: its `[Cin/g, H·W]` input only needs a tiled transpose.
//! - Depthwise (`Cin/groups == 1`, `groups > 1`, any channel multiplier): direct kernel,
//!   `O(Cout·Ho·Wo·kh·kw)`; the AVX2 version zero-pads each input plane once into `i16`
//!   (`x - zp`) and accumulates whole output rows with `vpmullw` (exact: `|255·128| < 2^15`)
//!   for stride-1 widths, a scalar loop over the padded plane for other strides.

use super::gemm::{check_zero_point, gemm_with, Activation, PackedI4, PackedI8};
use super::{check_len, check_signed, Backend, KernelError, Result};

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dParams {
    /// `[stride_h, stride_w]`, each ≥ 1.
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]` zero padding.
    pub pads: [usize; 4],
    /// `[dilation_h, dilation_w]`, each ≥ 1.
    pub dilations: [usize; 2],
    /// Number of groups; divides both `Cin` and `Cout`.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// Output `[Ho, Wo]` for an input `[h, w]` and kernel `[kh, kw]`.
    pub fn output_hw(&self, h: usize, w: usize, kh: usize, kw: usize) -> Result<[usize; 2]> {
        let [sh, sw] = self.strides;
        let [dh, dw] = self.dilations;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
            return Err(KernelError::InvalidConv(format!(
                "strides {:?} and dilations {:?} must be >= 1",
                self.strides, self.dilations
            )));
        }
        let [pt, pl, pb, pr] = self.pads;
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        let (ekh, ekw) = (dh * (kh.max(1) - 1) + 1, dw * (kw.max(1) - 1) + 1);
        if kh == 0 || kw == 0 || hp < ekh || wp < ekw {
            return Err(KernelError::InvalidConv(format!(
                "kernel {kh}x{kw} (dilated {ekh}x{ekw}) does not fit the padded input {hp}x{wp}"
            )));
        }
        Ok([(hp - ekh) / sh + 1, (wp - ekw) / sw + 1])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Store {
    Gemm8(Vec<PackedI8>),
    Gemm4(Vec<PackedI4>),
    Depthwise(Vec<i8>),
}

/// Convolution weights prepared for the integer kernels (packed per group, or kept plain for the
/// depthwise kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvWeights {
    shape: [usize; 4],
    groups: usize,
    bits: u32,
    store: Store,
}

impl ConvWeights {
    /// Prepares `weights` of shape `[Cout, Cin/groups, kh, kw]` whose values are signed
    /// `bits`-bit integers (2..=8). 4-bit weights are stored two per byte; other widths as int8.
    pub fn new(weights: &[i8], shape: [usize; 4], groups: usize, bits: u32) -> Result<Self> {
        let [cout, cin_g, kh, kw] = shape;
        check_len(
            "conv weights [Cout, Cin/g, kh, kw]",
            cout * cin_g * kh * kw,
            weights.len(),
        )?;
        if !(2..=8).contains(&bits) {
            return Err(KernelError::UnsupportedBits {
                what: "conv weights".to_string(),
                bits,
                supported: "2..=8",
            });
        }
        check_signed("conv weights", weights, bits)?;
        if groups == 0 || cout % groups != 0 || cin_g == 0 || kh == 0 || kw == 0 {
            return Err(KernelError::InvalidConv(format!(
                "weights {shape:?} with groups = {groups}: groups must be >= 1 and divide Cout, \
                 and Cin/groups, kh, kw must be >= 1"
            )));
        }
        let k = cin_g * kh * kw;
        let cout_g = cout / groups;
        let per_group = |g: usize| &weights[g * cout_g * k..(g + 1) * cout_g * k];
        let store = if cin_g == 1 && groups > 1 {
            Store::Depthwise(weights.to_vec())
        } else if bits == 4 {
            Store::Gemm4(
                (0..groups)
                    .map(|g| PackedI4::new(per_group(g), cout_g, k))
                    .collect::<Result<_>>()?,
            )
        } else {
            Store::Gemm8(
                (0..groups)
                    .map(|g| PackedI8::new(per_group(g), cout_g, k))
                    .collect::<Result<_>>()?,
            )
        };
        Ok(Self {
            shape,
            groups,
            bits,
            store,
        })
    }

    /// `[Cout, Cin/groups, kh, kw]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Weight bit width.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Whether the direct depthwise kernel is used.
    pub fn is_depthwise(&self) -> bool {
        matches!(self.store, Store::Depthwise(_))
    }
}

/// An `i32` NCHW convolution result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvOutput {
    /// Accumulators, NCHW row-major.
    pub data: Vec<i32>,
    /// `[N, Cout, Ho, Wo]`.
    pub shape: [usize; 4],
}

/// Integer convolution with the fastest available backend (see the module docs).
pub fn conv2d<T: Activation>(
    input: &[T],
    input_shape: [usize; 4],
    a_zp: i32,
    weights: &ConvWeights,
    params: &Conv2dParams,
) -> Result<ConvOutput> {
    conv2d_with(Backend::best(), input, input_shape, a_zp, weights, params)
}

/// [`conv2d`] on an explicit backend (fails when the CPU lacks it).
pub fn conv2d_with<T: Activation>(
    backend: Backend,
    input: &[T],
    input_shape: [usize; 4],
    a_zp: i32,
    weights: &ConvWeights,
    params: &Conv2dParams,
) -> Result<ConvOutput> {
    let backend = backend.check()?;
    let [n, cin, h, w] = input_shape;
    check_len("conv input [N, C, H, W]", n * cin * h * w, input.len())?;
    check_zero_point::<T>("conv input zero point", a_zp)?;
    let [cout, cin_g, kh, kw] = weights.shape;
    if params.groups != weights.groups || cin != cin_g * weights.groups {
        return Err(KernelError::InvalidConv(format!(
            "input has {cin} channels, weights {:?} were prepared for groups = {} but the params \
             say groups = {}; need Cin = groups * Cin/groups",
            weights.shape, weights.groups, params.groups
        )));
    }
    let [ho, wo] = params.output_hw(h, w, kh, kw)?;
    let shape = [n, cout, ho, wo];
    let mut out = vec![0i32; n * cout * ho * wo];
    if out.is_empty() {
        return Ok(ConvOutput { data: out, shape });
    }
    let geo = Geometry {
        cin,
        h,
        w,
        kh,
        kw,
        ho,
        wo,
        p: *params,
    };
    match &weights.store {
        Store::Depthwise(wt) => {
            let mult = cout / cin;
            let plane_in = h * w;
            let plane_out = mult * ho * wo;
            for (x, y) in input
                .chunks_exact(cin * plane_in)
                .zip(out.chunks_exact_mut(cout * ho * wo))
            {
                depthwise_image(backend, x, a_zp, wt, mult, &geo, y, plane_out);
            }
        }
        Store::Gemm8(packed) => conv_im2col(backend, input, a_zp, packed, &geo, n, &mut out)?,
        Store::Gemm4(packed) => conv_im2col(backend, input, a_zp, packed, &geo, n, &mut out)?,
    }
    Ok(ConvOutput { data: out, shape })
}

struct Geometry {
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    p: Conv2dParams,
}

impl Geometry {
    /// Input coordinate of output `o` and tap `t` along one axis, or `None` in the padding.
    #[inline]
    fn src(o: usize, t: usize, stride: usize, dil: usize, pad: usize, len: usize) -> Option<usize> {
        (o * stride + t * dil).checked_sub(pad).filter(|&i| i < len)
    }
}

fn conv_im2col<T: Activation, W: super::PackedWeights>(
    backend: Backend,
    input: &[T],
    a_zp: i32,
    packed: &[W],
    g: &Geometry,
    n: usize,
    out: &mut [i32],
) -> Result<()> {
    let groups = packed.len();
    let cin_g = g.cin / groups;
    let cout_g = packed[0].n();
    let k = cin_g * g.kh * g.kw;
    let pix = g.ho * g.wo;
    let [_, dw] = g.p.dilations;
    let pad = T::from_i32_unchecked(a_zp);
    let mut cols = vec![pad; pix * k];
    let pointwise = g.kh == 1
        && g.kw == 1
        && g.p.strides == [1, 1]
        && g.p.pads == [0; 4]
        && g.ho == g.h
        && g.wo == g.w;
    for b in 0..n {
        let img = &input[b * g.cin * g.h * g.w..(b + 1) * g.cin * g.h * g.w];
        for (gi, wg) in packed.iter().enumerate() {
            let planes = &img[gi * cin_g * g.h * g.w..][..cin_g * g.h * g.w];
            if pointwise {
                // 1×1, stride 1, no padding: the `[Cin/g, H·W]` input is the GEMM operand,
                // transposed to `[H·W, Cin/g]`.
                transpose_into(planes, cin_g, pix, &mut cols);
            } else if dw == 1 {
                im2col_rows(planes, cin_g, g, pad, &mut cols);
            } else {
                im2col_dilated(planes, cin_g, g, &mut cols);
            }
            let res = gemm_with(backend, &cols, pix, a_zp, wg)?;
            // `[pix, cout_g]` → NCHW, written one contiguous output plane at a time.
            let base = (b * groups + gi) * cout_g * pix;
            for (oc, plane) in out[base..base + cout_g * pix]
                .chunks_exact_mut(pix)
                .enumerate()
            {
                for (d, &v) in plane.iter_mut().zip(res[oc..].iter().step_by(cout_g)) {
                    *d = v;
                }
            }
        }
    }
    Ok(())
}

/// `src` `[rows, cols]` → `dst` `[cols, rows]`, in square tiles so that both sides stay in
/// cache.
fn transpose_into<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                let s = &src[r * cols + c0..r * cols + c1];
                for (c, &v) in (c0..c1).zip(s) {
                    dst[c * rows + r] = v;
                }
            }
        }
    }
}

/// im2col of one group (`planes`: `[Cin/g, H, W]`) for dilation-1 widths: every row of `cols`
/// (`K = Cin/g·kh·kw` values of one output pixel, in weight order) is written front to back
/// as contiguous `kw`-long input row segments; only windows that overlap the left or right
/// padding fall back to a per-element check, and rows of the top / bottom padding are filled
/// with `pad` (the zero point).
fn im2col_rows<T: Activation>(planes: &[T], cin_g: usize, g: &Geometry, pad: T, cols: &mut [T]) {
    let [sh, sw] = g.p.strides;
    let [dh, _] = g.p.dilations;
    let [pt, pl, _, _] = g.p.pads;
    let (kh, kw, h, w) = (g.kh, g.kw, g.h, g.w);
    let k = cin_g * kh * kw;
    // Input rows of every kernel row, per output row.
    let mut iys = vec![None; kh];
    for oy in 0..g.ho {
        for (ky, iy) in iys.iter_mut().enumerate() {
            *iy = Geometry::src(oy, ky, sh, dh, pt, h);
        }
        for ox in 0..g.wo {
            let row = &mut cols[(oy * g.wo + ox) * k..][..k];
            // Leftmost input column of the window; `None` when it starts in the left padding.
            let x0 = (ox * sw).checked_sub(pl).filter(|&x| x + kw <= w);
            let mut segs = row.chunks_exact_mut(kw);
            for c in 0..cin_g {
                let plane = &planes[c * h * w..][..h * w];
                for &iy in &iys {
                    let Some(dst) = segs.next() else { return };
                    match (iy, x0) {
                        (None, _) => dst.fill(pad),
                        (Some(iy), Some(x0)) => copy_small(dst, &plane[iy * w + x0..][..kw]),
                        (Some(iy), None) => {
                            for (kx, d) in dst.iter_mut().enumerate() {
                                *d = match Geometry::src(ox, kx, sw, 1, pl, w) {
                                    Some(ix) => plane[iy * w + ix],
                                    None => pad,
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` without a `memcpy` call for the common kernel widths.
#[inline(always)]
fn copy_small<T: Copy>(dst: &mut [T], src: &[T]) {
    match (dst, src) {
        ([d0, d1, d2], [s0, s1, s2]) => {
            (*d0, *d1, *d2) = (*s0, *s1, *s2);
        }
        ([d0], [s0]) => *d0 = *s0,
        (d, s) => d.copy_from_slice(s),
    }
}

/// im2col of one group for dilated widths: column by column over precomputed valid ranges;
/// positions in the padding keep the zero point `cols` was filled with.
fn im2col_dilated<T: Activation>(planes: &[T], cin_g: usize, g: &Geometry, cols: &mut [T]) {
    let [sh, sw] = g.p.strides;
    let [dh, dw] = g.p.dilations;
    let [pt, pl, _, _] = g.p.pads;
    let k = cin_g * g.kh * g.kw;
    // Valid output-column range of every kernel column `kx`: `ix = ox·sw + kx·dw - pl` in
    // `[0, w)`.
    let ox_range = |kx: usize| {
        let off = kx * dw;
        let lo = if pl > off { (pl - off).div_ceil(sw) } else { 0 };
        let hi = if g.w + pl > off {
            (g.w + pl - off).div_ceil(sw)
        } else {
            0
        };
        (lo.min(g.wo), hi.min(g.wo))
    };
    for c in 0..cin_g {
        let plane = &planes[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let kk = (c * g.kh + ky) * g.kw + kx;
                let (lo, hi) = ox_range(kx);
                for oy in 0..g.ho {
                    let Some(iy) = Geometry::src(oy, ky, sh, dh, pt, g.h) else {
                        continue;
                    };
                    if lo >= hi {
                        continue;
                    }
                    let src = plane[iy * g.w + lo * sw + kx * dw - pl..]
                        .iter()
                        .step_by(sw);
                    let dst = cols[(oy * g.wo + lo) * k + kk..].iter_mut().step_by(k);
                    for (d, &v) in dst.zip(src).take(hi - lo) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// One image of a depthwise convolution; `out` is `[cin · mult, ho, wo]`, split into per-input-
/// channel chunks of `plane_out = mult·ho·wo` that run on separate threads when large.
#[allow(clippy::too_many_arguments)]
fn depthwise_image<T: Activation>(
    backend: Backend,
    img: &[T],
    a_zp: i32,
    wt: &[i8],
    mult: usize,
    g: &Geometry,
    out: &mut [i32],
    plane_out: usize,
) {
    let work = out.len() * g.kh * g.kw;
    let threads = if work >= super::gemm::PARALLEL_THRESHOLD {
        super::max_threads().min(g.cin).max(1)
    } else {
        1
    };
    let per_thread = g.cin.div_ceil(threads);
    let run = |c0: usize, chunk: &mut [i32]| {
        for (ci, y) in chunk.chunks_exact_mut(plane_out).enumerate() {
            let c = c0 + ci;
            let x = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
            let wc = &wt[c * mult * g.kh * g.kw..(c + 1) * mult * g.kh * g.kw];
            match backend {
                Backend::Generic => depthwise_channel_generic(x, a_zp, wc, mult, g, y),
                Backend::Avx2 | Backend::Avx512Vnni => {
                    depthwise_channel_padded(x, a_zp, wc, mult, g, y)
                }
            }
        }
    };
    if threads == 1 {
        run(0, out);
        return;
    }
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per_thread * plane_out).enumerate() {
            let run = &run;
            s.spawn(move || run(t * per_thread, chunk));
        }
    });
}

/// Naive depthwise reference for one input channel and its `mult` output channels.
fn depthwise_channel_generic<T: Activation>(
    x: &[T],
    a_zp: i32,
    wc: &[i8],
    mult: usize,
    g: &Geometry,
    y: &mut [i32],
) {
    let [sh, sw] = g.p.strides;
    let [dh, dw] = g.p.dilations;
    let [pt, pl, _, _] = g.p.pads;
    for m in 0..mult {
        let wm = &wc[m * g.kh * g.kw..(m + 1) * g.kh * g.kw];
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let mut acc = 0i32;
                for ky in 0..g.kh {
                    let Some(iy) = Geometry::src(oy, ky, sh, dh, pt, g.h) else {
                        continue;
                    };
                    for kx in 0..g.kw {
                        if let Some(ix) = Geometry::src(ox, kx, sw, dw, pl, g.w) {
                            acc += (x[iy * g.w + ix].to_i32() - a_zp) * wm[ky * g.kw + kx] as i32;
                        }
                    }
                }
                y[(m * g.ho + oy) * g.wo + ox] = acc;
            }
        }
    }
}

/// Depthwise over a zero-padded `i16` plane (`x - zp`), row-wise AVX2 accumulation for stride-1
/// widths. Only reached with `Backend::Avx2` (checked available).
fn depthwise_channel_padded<T: Activation>(
    x: &[T],
    a_zp: i32,
    wc: &[i8],
    mult: usize,
    g: &Geometry,
    y: &mut [i32],
) {
    let [sh, sw] = g.p.strides;
    let [dh, dw] = g.p.dilations;
    let [pt, pl, pb, pr] = g.p.pads;
    let (hp, wp) = (g.h + pt + pb, g.w + pl + pr);
    let mut plane = vec![0i16; hp * wp];
    for (iy, row) in x.chunks_exact(g.w).enumerate() {
        for (d, &s) in plane[(iy + pt) * wp + pl..][..g.w].iter_mut().zip(row) {
            *d = (s.to_i32() - a_zp) as i16;
        }
    }
    for m in 0..mult {
        let wm = &wc[m * g.kh * g.kw..(m + 1) * g.kh * g.kw];
        for oy in 0..g.ho {
            let acc = &mut y[(m * g.ho + oy) * g.wo..][..g.wo];
            acc.fill(0);
            for ky in 0..g.kh {
                let src_row = &plane[(oy * sh + ky * dh) * wp..][..wp];
                for kx in 0..g.kw {
                    let wv = wm[ky * g.kw + kx] as i16;
                    let src = &src_row[kx * dw..];
                    if sw == 1 {
                        axpy(acc, src, wv);
                    } else {
                        for (ox, a) in acc.iter_mut().enumerate() {
                            *a += src[ox * sw] as i32 * wv as i32;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn axpy(acc: &mut [i32], src: &[i16], w: i16) {
    // SAFETY: only reached through `Backend::Avx2`, whose availability was checked; the padded
    // row holds `(wo - 1) + (kw - 1)·dw + 1` elements past the tap start, so `src.len() >= wo`.
    unsafe { super::avx2::axpy_i16_i32(acc, src, w) }
}

#[cfg(not(target_arch = "x86_64"))]
fn axpy(acc: &mut [i32], src: &[i16], w: i16) {
    for (a, &s) in acc.iter_mut().zip(src) {
        *a += s as i32 * w as i32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct loops: `out[n, o, y, x] = Σ (in - zp)·w` over the valid taps.
    fn direct(
        x: &[u8],
        [n, c, h, w]: [usize; 4],
        zp: i32,
        wt: &[i8],
        [co, cg, kh, kw]: [usize; 4],
        p: &Conv2dParams,
    ) -> Vec<i32> {
        let [ho, wo] = p.output_hw(h, w, kh, kw).unwrap();
        let cout_g = co / p.groups;
        let mut out = Vec::new();
        for b in 0..n {
            for o in 0..co {
                let gi = o / cout_g;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = 0;
                        for ci in 0..cg {
                            let ch = gi * cg + ci;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = Geometry::src(
                                        oy,
                                        ky,
                                        p.strides[0],
                                        p.dilations[0],
                                        p.pads[0],
                                        h,
                                    );
                                    let ix = Geometry::src(
                                        ox,
                                        kx,
                                        p.strides[1],
                                        p.dilations[1],
                                        p.pads[1],
                                        w,
                                    );
                                    if let (Some(iy), Some(ix)) = (iy, ix) {
                                        let v = x[((b * c + ch) * h + iy) * w + ix] as i32 - zp;
                                        acc += v * wt[((o * cg + ci) * kh + ky) * kw + kx] as i32;
                                    }
                                }
                            }
                        }
                        out.push(acc);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn pointwise_and_row_segment_im2col_match_direct_loops() {
        let (n, c, h, w, co) = (2, 6, 7, 9, 5);
        let x: Vec<u8> = (0..n * c * h * w).map(|i| (i * 37 % 251) as u8).collect();
        // (kernel, strides, pads, dilations, groups): pointwise, pointwise strided (im2col),
        // 3×3 padded asymmetric, 5×2 strided, dilated, grouped 1×1.
        type Case = ([usize; 2], [usize; 2], [usize; 4], [usize; 2], usize);
        let cases: [Case; 6] = [
            ([1, 1], [1, 1], [0; 4], [1, 1], 1),
            ([1, 1], [2, 2], [0; 4], [1, 1], 1),
            ([3, 3], [1, 1], [1, 2, 0, 1], [1, 1], 1),
            ([5, 2], [2, 3], [2, 1, 2, 1], [1, 1], 1),
            ([3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 1),
            ([1, 1], [1, 1], [0; 4], [1, 1], 2),
        ];
        for (kernel, strides, pads, dilations, groups) in cases {
            let (co, cg) = (co * groups, c / groups);
            let shape = [co, cg, kernel[0], kernel[1]];
            let wt: Vec<i8> = (0..shape.iter().product::<usize>())
                .map(|i| ((i * 53 % 255) as i32 - 127) as i8)
                .collect();
            let p = Conv2dParams {
                strides,
                pads,
                dilations,
                groups,
            };
            let want = direct(&x, [n, c, h, w], 77, &wt, shape, &p);
            for bits in [8, 4] {
                let wq: Vec<i8> = if bits == 4 {
                    wt.iter().map(|v| v >> 4).collect()
                } else {
                    wt.clone()
                };
                let want = if bits == 4 {
                    direct(&x, [n, c, h, w], 77, &wq, shape, &p)
                } else {
                    want.clone()
                };
                let cw = ConvWeights::new(&wq, shape, groups, bits).unwrap();
                for backend in [Backend::Generic, Backend::Avx2] {
                    if !backend.is_available() {
                        continue;
                    }
                    let got = conv2d_with(backend, &x, [n, c, h, w], 77, &cw, &p).unwrap();
                    assert_eq!(
                        got.data, want,
                        "{kernel:?} {strides:?} {pads:?} {bits} {backend:?}"
                    );
                }
            }
        }
    }
}
