//! The fast executor of a [`QuantModel`]: channels-last codes, implicit-GEMM VNNI convolutions
//! with the requantization fused into the kernel, buffers reused across runs.
//!
//! Survey §3.3 (HAWQ-V3, Yao et al., ICML 2021), Eq. 24 (`q_o = INT(S_W·S_a/S_o·(q_W * q_a))`,
//! dyadic) and Eq. 25 (batch norm folded, so a layer is an integer GEMM plus requantization);
//! §4.4 (deployment). It computes exactly what [`crate::model`]'s reference executor computes —
//! the same integers, code for code — only faster:
//!
//! - every code tensor of rank 3 (`[C, H, W]` per sample) is held channels-last (`[H, W, C]`),
//!   so a layer's `[pixels, Cout]` result *is* the next layer's input, and a row of the im2col
//!   matrix is `kh` contiguous runs of `kw·C` bytes of the input: the kernel reads them in
//!   place (implicit GEMM, no im2col copy; only a zero-point border is added when the layer
//!   pads);
//! - activations stay `u8` end to end and go straight into `vpdpbusd` (`u8 × i8`,
//!   `kernels/avx512_fused.rs`); the zero point is removed after the product as `z·rowsum(W)`,
//!   folded with the bias into one per-channel constant;
//! - weights of every width (2–8 bits; int4 included) are packed once, when the model is built or
//!   loaded, in the VNNI panel layout with `K` ordered `(ky, kx, c)` and each kernel row padded
//!   with zero weights to whole k-quads;
//! - the requantization (`+ bias`, dyadic multiply, rounding shift, `+ z_o`, clamp = fused ReLU)
//!   runs on the accumulator registers; layers where a saturating bias add could matter, and
//!   `f32` outputs, go through an `i32` tile and the scalar epilogue instead. When every shift
//!   is in `32..=62` (the usual case) the rounding is one add of a per-channel constant that
//!   holds `2^(s-1)` and `z_o·2^s` plus one arithmetic shift, the odd lanes' quotient lands in
//!   their high half (shift by `s - 32`), and the clamp runs on 16 `i32` lanes (a saturating
//!   narrowing for the range `0..=255`); see `mode`;
//! - residual Add (16-bit pairs through `vpmaddwd` where the constants allow, else 64-bit lanes),
//!   input quantization (3-channel images straight into channels-last order) and pooling are
//!   vectorised / channels-last;
//! - all buffers live in a workspace kept per batch size and reused by the next run;
//! - a batch of at least two images per thread is cut into chunks of whole images handed out
//!   to the threads, each running the whole network on a chunk in its own workspace (no step
//!   waits for another thread); in smaller batches, large layers hand out blocks of output rows (pixels of every
//!   image of the batch) to the calling thread and helpers;
//! - depthwise convolutions (one filter per channel) run on their own channels-last kernel,
//!   vectorised over channels (16 `i32` lanes per register, `vpdpwssd` on widened codes, up to
//!   eight output pixels per weight load; `16/C` pixels per register when `C` divides 16) with
//!   the same in-register requantization.
//!
//! Steps without a fast form here (grouped convolutions with several channels per group or a
//! channel multiplier above 1, depthwise layers whose sums could saturate or that write `f32`,
//! dilated convolutions over channels that are not a multiple of 4) convert their operands to
//! channels-first and run the reference kernels.
//!
//! Complexity: that of the kernels, `O(M·N·K)` per layer (`M` = batch·output pixels; a
//! depthwise layer `O(M·C·kh·kw)`); every other step is linear in its tensor (pooling: times the
//! window). Workspace memory: one buffer per tensor, one padded input, and per thread an `i32`
//! tile of `240 × N`.

use std::sync::{Mutex, OnceLock};

use crate::error::{EngineError, Result};
use crate::kernels::{rounding_shift, Backend, OutputRange};
use crate::model::{
    clamp_f32, softmax, Buf, LayerGeometry, LayerOutput, LayerStep, PoolStep, QuantModel, Step,
    Trace,
};

/// Multiply-accumulates of one layer from which its rows are split over threads.
const PARALLEL_MACS: usize = 1 << 22;

/// Weights `[N, K]` in the AVX-512 VNNI panel layout (16 channels × 4 `K` per 64 bytes), with the
/// `K` order of a channels-last input (`(ky, kx, c)` for a convolution).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FastWeights {
    n: usize,
    k: usize,
    kq: usize,
    /// Bytes of one kernel row (`kw·C` codes, zero weights up to a whole number of k-quads);
    /// `K = kh·seg` (`kq` for a matrix).
    seg: usize,
    data: Vec<u8>,
    row_sums: Vec<i32>,
}

impl FastWeights {
    /// From row-major `[N, K]` signed codes (`K` already in im2col order).
    fn from_rows(rows: &[i8], n: usize, k: usize, seg: usize) -> Self {
        let kq = k.next_multiple_of(4);
        let panel = kq * 16;
        let mut data = vec![0u8; n.div_ceil(16) * panel];
        for j in 0..n {
            let (p, jj) = (j / 16, j % 16);
            for (kk, &w) in rows[j * k..(j + 1) * k].iter().enumerate() {
                data[p * panel + (kk / 4) * 64 + 4 * jj + kk % 4] = w as u8;
            }
        }
        let row_sums = rows
            .chunks_exact(k.max(1))
            .take(n)
            .map(|r| r.iter().map(|&w| w as i32).sum())
            .collect();
        Self {
            n,
            k,
            kq,
            seg,
            data,
            row_sums,
        }
    }

    /// The fast form of a layer's weights (`shape` `[Cout, Cin, kh, kw]` with one group, or
    /// `[N, K]`), or `None` when this CPU lacks AVX-512 VNNI or the layer is grouped.
    pub(crate) fn new(values: &[i8], shape: &[usize], groups: usize) -> Option<Self> {
        if !crate::kernels::vnni_available() || values.is_empty() {
            return None;
        }
        match *shape {
            [o, i, kh, kw] if groups == 1 => {
                // Each kernel row (`kw·C` contiguous codes of a channels-last input) is padded
                // with zero weights to whole k-quads: the kernel reads up to 3 bytes past a
                // window's row, which then count nothing.
                let seg = (kw * i).next_multiple_of(4);
                let k = seg * kh;
                let mut rows = vec![0i8; o * k];
                for oc in 0..o {
                    for c in 0..i {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                rows[oc * k + ky * seg + kx * i + c] =
                                    values[((oc * i + c) * kh + ky) * kw + kx];
                            }
                        }
                    }
                }
                Some(Self::from_rows(&rows, o, k, seg))
            }
            [n, k] => Some(Self::from_rows(values, n, k, k.next_multiple_of(4))),
            _ => None,
        }
    }
}

/// Rounding modes of the fused epilogue (`kernels/avx512_fused.rs`, `requant16`), chosen per
/// layer by [`round_mode`]: [`EXACT`](mode::EXACT), or [`FLOOR`](mode::FLOOR) with the flags
/// [`SIGNED`](mode::SIGNED), [`ZADD`](mode::ZADD) and [`SAT`](mode::SAT).
pub(crate) mod mode {
    /// Any shift (`0..=62`): `|p|` rounded half up, sign restored, `+ z_o`, clamp in `i64`.
    pub const EXACT: u8 = 0;
    /// Every shift in `32..=62`: `floor((p + 2^(s-1) + z_o·2^s) / 2^s)`, exact when
    /// `q_min ≥ z_o` (else with [`SIGNED`]).
    pub const FLOOR: u8 = 1;
    /// Flag of [`FLOOR`]: `-1` added to negative products (any `q_min`).
    pub const SIGNED: u8 = 2;
    /// Flag of [`FLOOR`]: `z_o` added after the shift instead of folded into the rounding
    /// constant (a shift above 54, where `z_o·2^s` could overflow).
    pub const ZADD: u8 = 4;
    /// Flag of [`FLOOR`]: the output range is all of `0..=255`, so the clamp is a signed
    /// saturating narrowing of `q - 128` (`-128` folded in with `z_o`).
    pub const SAT: u8 = 8;
}

/// Shifts for which the floor modes of the epilogue are exact (see [`mode`]).
const FLOOR_SHIFTS: std::ops::RangeInclusive<u64> = 32..=62;

/// Largest shift with `z_o·2^s` folded into the rounding constant.
const FOLD_SHIFT: u64 = 54;

/// The rounding mode of a fused epilogue with per-channel `shifts` and output `range`.
fn round_mode(shifts: &[u64], range: OutputRange) -> u8 {
    if !shifts.iter().all(|s| FLOOR_SHIFTS.contains(s)) || !(0..256).contains(&range.zero_point) {
        return mode::EXACT;
    }
    let mut r = mode::FLOOR;
    if range.qmin < range.zero_point {
        r |= mode::SIGNED;
    }
    if shifts.iter().any(|&s| s > FOLD_SHIFT) {
        r |= mode::ZADD;
    }
    if range.qmin == 0 && range.qmax == 255 {
        r |= mode::SAT;
    }
    r
}

/// The output zero point folded into the rounding constants of mode `round` (less 128 with
/// [`mode::SAT`]; 0 when added after the shift or with the exact mode).
fn folded_zero_point(round: u8, range: OutputRange) -> i32 {
    if round & mode::FLOOR == 0 || round & mode::ZADD != 0 {
        0
    } else if round & mode::SAT != 0 {
        range.zero_point - 128
    } else {
        range.zero_point
    }
}

/// The in-register epilogue of one call of the fused kernels on code outputs.
#[derive(Clone, Copy)]
struct FusedSink<'a> {
    panels: &'a [PanelEpilogue],
    /// Output `[z_o, lo, hi]`.
    zlh: [i64; 3],
    /// Rounding mode (one of [`mode`]).
    round: u8,
}

/// Per-panel constants of the fused epilogue (16 output channels), 64-byte aligned rows.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub(crate) struct PanelEpilogue {
    /// `bias - z_x·Σw` per channel.
    pub bz: [i32; 16],
    /// Dyadic multiplier per channel.
    pub m: [i32; 16],
    /// Shifts of the even channels (0, 2, …, 14).
    pub sh_even: [u64; 8],
    /// Shifts of the odd channels.
    pub sh_odd: [u64; 8],
    /// `2^(s-1)` (0 when `s = 0`) of the even channels.
    pub half_even: [i64; 8],
    /// `2^(s-1)` of the odd channels.
    pub half_odd: [i64; 8],
    /// `s - 32` of the odd channels (floor modes).
    pub sh_odd32: [u64; 8],
    /// `2^(s-1) + z·2^s` of the even channels, `z` the folded output zero point (floor modes).
    pub hz_even: [i64; 8],
    /// `2^(s-1) + z·2^s` of the odd channels.
    pub hz_odd: [i64; 8],
}

impl PanelEpilogue {
    /// A panel whose lanes are all padding (`m = 1`, shift 32: harmless, masked off).
    fn padding() -> Self {
        let mut e = Self {
            bz: [0; 16],
            m: [1; 16],
            sh_even: [0; 8],
            sh_odd: [0; 8],
            half_even: [0; 8],
            half_odd: [0; 8],
            sh_odd32: [0; 8],
            hz_even: [0; 8],
            hz_odd: [0; 8],
        };
        for j in 0..16 {
            e.set(j, 0, 1, 32, 0);
        }
        e
    }

    /// Lane `j`: `bias - z_x·Σw`, multiplier `m`, shift `s` and folded output zero point `z`
    /// ([`folded_zero_point`]).
    fn set(&mut self, j: usize, bz: i32, m: i32, s: u64, z: i32) {
        let half = if s == 0 { 0 } else { 1i64 << (s - 1) };
        let hz = if s <= FOLD_SHIFT && (-128..256).contains(&z) {
            half + ((z as i64) << s)
        } else {
            half
        };
        self.bz[j] = bz;
        self.m[j] = m;
        let i = j / 2;
        if j.is_multiple_of(2) {
            self.sh_even[i] = s;
            self.half_even[i] = half;
            self.hz_even[i] = hz;
        } else {
            self.sh_odd[i] = s;
            self.half_odd[i] = half;
            self.sh_odd32[i] = s.saturating_sub(32);
            self.hz_odd[i] = hz;
        }
    }

    /// `(bz, m, s)` of lane `j`.
    fn lane(&self, j: usize) -> (i32, i32, u64) {
        let s = if j.is_multiple_of(2) {
            self.sh_even[j / 2]
        } else {
            self.sh_odd[j / 2]
        };
        (self.bz[j], self.m[j], s)
    }
}

/// Per-layer constants of the fused epilogue, one entry per output channel.
#[derive(Debug)]
struct Epilogue {
    /// `z_x·rowsum(W)`, subtracted from the unsigned products.
    zw: Vec<i32>,
    bias: Vec<i32>,
    kind: EpilogueKind,
    /// Per-panel constants of the in-register epilogue, when it is exact for every input
    /// (codes output, no `i32` sum can saturate).
    fused: Option<Vec<PanelEpilogue>>,
    /// Rounding mode of the in-register epilogue (one of [`mode`]).
    round: u8,
}

#[derive(Debug)]
enum EpilogueKind {
    Codes {
        m: Vec<i64>,
        shift: Vec<u64>,
        half: Vec<i64>,
        range: OutputRange,
    },
    Float {
        scales: Vec<f64>,
        lo: Option<f32>,
        hi: Option<f32>,
    },
}

/// How one step runs.
#[derive(Debug)]
enum Plan {
    /// Fused layer (implicit-GEMM convolution or matrix product).
    Layer(Box<LayerPlan>),
    /// Depthwise convolution with the fused epilogue.
    Depthwise(Box<DwPlan>),
    /// Residual Add: `[z_a, z_b, m_a, m_b]`, shift, `[z_o, lo, hi]` for the vector kernel.
    Add([i32; 4], u32, [i64; 3]),
    /// Pooling on a channels-last tensor.
    Pool,
    /// Elementwise on codes (Clamp / Requant) through a 256-entry table.
    Table(Vec<u8>),
    /// Reference step on channels-first copies of the operands.
    Reference,
    /// Quantize / Dequantize / Softmax.
    Plain,
}

/// A Conv / Gemm / MatMul on the fused kernels. A matrix product is a 1×1 convolution over an
/// image of one row of `rows` pixels with `K` channels.
#[derive(Debug)]
struct LayerPlan {
    /// The input is held channels-last but the matrix product reads it channels-first.
    nchw_input: bool,
    /// Input `[H, W, C]`.
    hwc: [usize; 3],
    kernel: [usize; 2],
    strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pads: [usize; 4],
    dilations: [usize; 2],
    out_hw: [usize; 2],
    ep: Epilogue,
}

/// A depthwise convolution (`groups = C = Cout`, weights `[C, 1, kh, kw]`) on channels-last
/// codes, vectorised over channels (`kernels/avx512_fused.rs`, `depthwise`).
#[derive(Debug)]
struct DwPlan {
    /// Input `[H, W, C]`.
    hwc: [usize; 3],
    kernel: [usize; 2],
    strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pads: [usize; 4],
    dilations: [usize; 2],
    out_hw: [usize; 2],
    /// `kh·kw` rows of `⌈C/16⌉·16` lanes, tap-major; each lane holds the `i16` weight code in
    /// its low half (zero high half; lanes past `C` are zero, or repeat the channels with
    /// period `C` when `C` divides 16).
    w: Vec<i32>,
    /// In-register epilogue constants, one panel per 16 channels (repeating like `w`).
    ep: Vec<PanelEpilogue>,
    /// Output `[z_o, lo, hi]`.
    zlh: [i64; 3],
    /// Rounding mode of the epilogue (one of [`mode`]).
    round: u8,
}

impl DwPlan {
    /// The depthwise plan of layer `l` (weights `values` of `shape` `[C, 1, kh, kw]` over an
    /// input `[C, H, W]` with zero point `zp`), or `None` when this CPU lacks AVX-512 VNNI, the
    /// layer is not depthwise with one filter per channel, writes `f32`, or a sum could
    /// saturate (those keep the reference kernels).
    fn new(
        l: &LayerStep,
        values: &[i8],
        shape: &[usize],
        params: &crate::kernels::Conv2dParams,
        input: [usize; 3],
        out_hw: [usize; 2],
        zp: i32,
    ) -> Result<Option<Self>> {
        let [c, h, w] = input;
        let &[co, one, kh, kw] = shape else {
            return Ok(None);
        };
        if !crate::kernels::vnni_available()
            || c < 2
            || co != c
            || one != 1
            || params.groups != c
            || kh * kw == 0
            || values.len() != c * kh * kw
        {
            return Ok(None);
        }
        let taps = kh * kw;
        let cp = c.div_ceil(16) * 16;
        let mut wl = vec![0i32; taps * cp];
        let mut row_sums = vec![0i32; c];
        for ch in 0..c {
            for t in 0..taps {
                let v = values[ch * taps + t];
                wl[t * cp + ch] = (v as i16 as u16) as i32;
                row_sums[ch] += v as i32;
            }
        }
        let ep = epilogue(l, c, zp, &row_sums, taps)?;
        let round = ep.round;
        let (Some(mut panels), EpilogueKind::Codes { range, .. }) = (ep.fused, &ep.kind) else {
            return Ok(None);
        };
        if 16 % c == 0 && c < 16 {
            // Repeat the channels over the 16 lanes: a register then holds `16/C` whole pixels.
            for t in 0..taps {
                for l in c..16 {
                    wl[t * cp + l] = wl[t * cp + l % c];
                }
            }
            let e = &mut panels[0];
            for l in c..16 {
                let (bz, m, s) = e.lane(l % c);
                e.set(l, bz, m, s, folded_zero_point(round, *range));
            }
        }
        Ok(Some(Self {
            hwc: [h, w, c],
            kernel: [kh, kw],
            strides: params.strides,
            pads: params.pads,
            dilations: params.dilations,
            out_hw,
            w: wl,
            ep: panels,
            zlh: [
                range.zero_point as i64,
                range.qmin as i64,
                range.qmax as i64,
            ],
            round,
        }))
    }
}

/// Runs a depthwise plan over `batch` channels-last images `x` into `out` (`[batch·Ho·Wo, C]`),
/// on up to `scratch.len()` threads.
fn run_depthwise(
    x: &[u8],
    batch: usize,
    dp: &DwPlan,
    zp: u8,
    padded: &mut Vec<u8>,
    scratch: &mut [Scratch],
    out: &mut [u8],
) -> std::result::Result<(), String> {
    let [h, w, c] = dp.hwc;
    let [pt, pl, pb, pr] = dp.pads;
    let [kh, kw] = dp.kernel;
    let [ho, wo] = dp.out_hw;
    if x.len() != batch * h * w * c {
        return Err(format!(
            "input holds {} codes, the layer reads {}",
            x.len(),
            batch * h * w * c
        ));
    }
    let m = batch * ho * wo;
    if out.len() != m * c {
        return Err(format!(
            "output holds {} codes, the layer writes {}",
            out.len(),
            m * c
        ));
    }
    let (hp, wp) = (h + pt + pb, w + pl + pr);
    let reach = |o: usize, s: usize, k: usize, d: usize| (o.max(1) - 1) * s + (k - 1) * d + 1;
    if m > 0
        && (reach(ho, dp.strides[0], kh, dp.dilations[0]) > hp
            || reach(wo, dp.strides[1], kw, dp.dilations[1]) > wp)
    {
        return Err(format!(
            "output {ho}x{wo} does not fit the padded input {hp}x{wp} with kernel {kh}x{kw}"
        ));
    }
    let mut src = x;
    if dp.pads != [0; 4] {
        pad_hwc(x, batch, dp.hwc, dp.pads, zp, padded);
        src = padded;
    }
    let g = crate::kernels::avx512_fused::DwGeom {
        hwc: [hp, wp, c],
        kernel: dp.kernel,
        strides: dp.strides,
        dilations: dp.dilations,
        out_hw: dp.out_hw,
    };
    let run = |rows: std::ops::Range<usize>, o: &mut [u8]| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a plan exists only on AVX-512 VNNI CPUs (`DwPlan::new`); the windows of
        // every output pixel lie inside the padded input (checked above), `o` holds the rows,
        // the weights hold `kh·kw` rows of `⌈C/16⌉·16` lanes and `ep` one panel per 16 channels.
        unsafe {
            crate::kernels::avx512_fused::depthwise(
                src,
                &g,
                &dp.w,
                &dp.ep,
                dp.zlh,
                dp.round,
                rows,
                o.as_mut_ptr(),
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (rows, o, &g);
    };
    let threads = if m * c * kh * kw >= PARALLEL_MACS / 8 {
        scratch.len().min(m.div_ceil(ROW_BLOCK)).max(1)
    } else {
        1
    };
    if threads <= 1 {
        run(0..m, out);
    } else {
        run_dynamic(out, c, m, threads, scratch, |rows, _, o| run(rows, o));
    }
    Ok(())
}

/// Chunks of samples per thread when a batch is split over threads.
const CHUNKS_PER_THREAD: usize = 4;

/// The fast plan of a model (built on its first fast run) and its workspaces.
#[derive(Default)]
pub(crate) struct FastCache {
    plan: OnceLock<std::result::Result<Vec<Plan>, String>>,
    spare: Mutex<Vec<Workspace>>,
}

impl Clone for FastCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for FastCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for FastCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastCache")
    }
}

/// Buffers of one run at one batch size.
struct Workspace {
    batch: usize,
    codes: Vec<Vec<u8>>,
    floats: Vec<Vec<f32>>,
    scratch: Vec<Scratch>,
    /// Channels-first copies for reference steps and reordered Gemm inputs.
    tmp_in: Vec<u8>,
    tmp_b: Vec<u8>,
    /// The zero-point-padded, channel-padded input of the current layer.
    padded: Vec<u8>,
}

#[derive(Default)]
struct Scratch {
    tile: Vec<i32>,
    accs: Vec<i32>,
}

/// Whether tensor shape `s` is held channels-last (rank 3 with both `C` and `H·W` above 1;
/// otherwise both orders are the same bytes).
fn is_hwc(s: &[usize]) -> bool {
    s.len() == 3 && s[0] > 1 && s[1] * s[2] > 1
}

/// `[C, H·W]` planes → `[H·W, C]` rows, per sample.
fn to_hwc<T: Copy>(src: &[T], c: usize, hw: usize, dst: &mut [T]) {
    for (s, d) in src.chunks_exact(c * hw).zip(dst.chunks_exact_mut(c * hw)) {
        if c == 3 {
            // The common RGB input: one pass with contiguous writes.
            let (r, rest) = s.split_at(hw);
            let (g, b) = rest.split_at(hw);
            for (((px, &r), &g), &b) in d.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
                px[0] = r;
                px[1] = g;
                px[2] = b;
            }
            continue;
        }
        for (ci, plane) in s.chunks_exact(hw).enumerate() {
            for (p, &v) in plane.iter().enumerate() {
                d[p * c + ci] = v;
            }
        }
    }
}

/// `[H·W, C]` rows → `[C, H·W]` planes, per sample.
fn to_chw<T: Copy>(src: &[T], c: usize, hw: usize, dst: &mut [T]) {
    for (s, d) in src.chunks_exact(c * hw).zip(dst.chunks_exact_mut(c * hw)) {
        for (p, row) in s.chunks_exact(c).enumerate() {
            for (ci, &v) in row.iter().enumerate() {
                d[ci * hw + p] = v;
            }
        }
    }
}

impl QuantModel {
    /// Whether [`QuantModel::run_with`] takes the fast executor for `backend`.
    pub fn uses_fast_path(&self, backend: Backend) -> bool {
        backend == Backend::Avx512Vnni && backend.is_available()
    }

    fn fast_plan(&self) -> Result<&[Plan]> {
        self.fast
            .plan
            .get_or_init(|| self.build_plan().map_err(|e| e.to_string()))
            .as_deref()
            .map_err(|e| EngineError::Invalid(e.clone()))
    }

    fn build_plan(&self) -> Result<Vec<Plan>> {
        self.steps.iter().map(|s| self.plan_step(s)).collect()
    }

    fn shape(&self, t: usize) -> &[usize] {
        &self.tensors[t].shape
    }

    fn plan_step(&self, step: &Step) -> Result<Plan> {
        Ok(match step {
            Step::Layer(l) => {
                let w = &self.weights[l.weights];
                let zp = self.params(l.input)?.zero_point;
                if let LayerGeometry::Conv {
                    input: [c, h, wd],
                    output: [co, ho, wo],
                    params,
                } = &l.geometry
                {
                    if w.fast.is_none()
                        && params.groups > 1
                        && self.shape(l.input) == [*c, *h, *wd]
                        && self.shape(l.output) == [*co, *ho, *wo]
                    {
                        let dp = DwPlan::new(
                            l,
                            &w.values(),
                            &w.shape,
                            params,
                            [*c, *h, *wd],
                            [*ho, *wo],
                            zp,
                        )?;
                        if let Some(dp) = dp {
                            return Ok(Plan::Depthwise(Box::new(dp)));
                        }
                    }
                }
                let Some(fw) = &w.fast else {
                    return Ok(Plan::Reference);
                };
                match &l.geometry {
                    LayerGeometry::Conv {
                        input: [c, h, wd],
                        output: [co, ho, wo],
                        params,
                    } if params.groups == 1
                        && self.shape(l.input) == [*c, *h, *wd]
                        && self.shape(l.output) == [*co, *ho, *wo]
                        && w.shape.len() == 4
                        && w.shape[1] == *c
                        && fw.seg == (c * w.shape[3]).next_multiple_of(4)
                        && (params.dilations[1] == 1 || c % 4 == 0 || w.shape[3] == 1)
                        && fw.n == *co =>
                    {
                        let kreal = c * w.shape[2] * w.shape[3];
                        Plan::Layer(Box::new(LayerPlan {
                            nchw_input: false,
                            hwc: [*h, *wd, *c],
                            kernel: [w.shape[2], w.shape[3]],
                            strides: params.strides,
                            pads: params.pads,
                            dilations: params.dilations,
                            out_hw: [*ho, *wo],
                            ep: epilogue(l, fw.n, zp, &fw.row_sums, kreal)?,
                        }))
                    }
                    LayerGeometry::Gemm { rows, k, n }
                        if *k == fw.k
                            && *n == fw.n
                            && w.shape.len() == 2
                            && self.tensors[l.input].numel() == rows * k
                            && !is_hwc(self.shape(l.output)) =>
                    {
                        Plan::Layer(Box::new(LayerPlan {
                            nchw_input: is_hwc(self.shape(l.input)),
                            hwc: [1, *rows, *k],
                            kernel: [1, 1],
                            strides: [1, 1],
                            pads: [0; 4],
                            dilations: [1, 1],
                            out_hw: [1, *rows],
                            ep: epilogue(l, fw.n, zp, &fw.row_sums, *k)?,
                        }))
                    }
                    _ => Plan::Reference,
                }
            }
            Step::Add(a) => {
                let same = self.shape(a.a) == self.shape(a.output)
                    && self.shape(a.b) == self.shape(a.output);
                let fits = |m: i64| (0..=i32::MAX as i64).contains(&m);
                if !same || !fits(a.ma) || !fits(a.mb) || a.shift > 62 {
                    return Ok(Plan::Reference);
                }
                let (za, zb) = (self.params(a.a)?.zero_point, self.params(a.b)?.zero_point);
                let r = a.range;
                Plan::Add(
                    [za, zb, a.ma as i32, a.mb as i32],
                    a.shift,
                    [r.zero_point as i64, r.qmin as i64, r.qmax as i64],
                )
            }
            Step::MaxPool(p) | Step::AvgPool(p) => {
                let ok = self.shape(p.input) == p.in_shape
                    && self.shape(p.output) == [p.in_shape[0], p.out_hw[0], p.out_hw[1]]
                    && p.kernel[0] * p.kernel[1] < 1 << 20;
                if ok {
                    Plan::Pool
                } else {
                    Plan::Reference
                }
            }
            Step::Clamp {
                input,
                output,
                lo,
                hi,
                ..
            } => {
                if self.shape(*input) != self.shape(*output) {
                    return Ok(Plan::Reference);
                }
                Plan::Table((0..256).map(|q: i32| q.clamp(*lo, *hi) as u8).collect())
            }
            Step::Requant {
                input,
                output,
                multiplier,
                ..
            } => {
                if self.shape(*input) != self.shape(*output) {
                    return Ok(Plan::Reference);
                }
                let zi = self.params(*input)?.zero_point;
                let r = self.params(*output)?.range();
                Plan::Table(
                    (0..256)
                        .map(|q: i32| multiplier.requant(q - zi, r) as u8)
                        .collect(),
                )
            }
            Step::Quantize { .. } | Step::Dequantize { .. } | Step::Softmax { .. } => Plan::Plain,
            Step::Concat(_) | Step::Lookup(_) | Step::Mul(_) | Step::Transpose(_) => {
                Plan::Reference
            }
        })
    }

    /// A workspace for `batch` samples whose layers split their rows over `threads` threads.
    fn workspace(&self, batch: usize, threads: usize) -> Workspace {
        let threads = threads.max(1);
        let mut spare = self.fast.spare.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = spare
            .iter()
            .position(|w| w.batch == batch && w.scratch.len() == threads)
        {
            return spare.swap_remove(i);
        }
        drop(spare);
        Workspace {
            batch,
            codes: self
                .tensors
                .iter()
                .map(|t| {
                    if t.params.is_some() {
                        vec![0u8; batch * t.numel()]
                    } else {
                        Vec::new()
                    }
                })
                .collect(),
            floats: self
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if t.params.is_none() && i != self.input {
                        vec![0f32; batch * t.numel()]
                    } else {
                        Vec::new()
                    }
                })
                .collect(),
            scratch: (0..threads).map(|_| Scratch::default()).collect(),
            tmp_in: Vec::new(),
            tmp_b: Vec::new(),
            padded: Vec::new(),
        }
    }

    fn give_back(&self, ws: Workspace) {
        let mut spare = self.fast.spare.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the few most recent batch sizes (one workspace per thread of a split batch).
        if spare.len() >= 8 {
            spare.remove(0);
        }
        spare.push(ws);
    }

    /// Runs `batch` samples on the fast executor; with `keep`, the codes of every tensor (in
    /// the reference's channels-first order) come back too.
    ///
    /// A batch of at least two samples per thread is cut into chunks of whole samples handed
    /// out to the threads, each running the whole network on its own workspace (samples are independent,
    /// so no step waits for another thread); smaller batches split each large layer's rows over
    /// the threads instead. Both give the same codes: every sample goes through the same kernels.
    pub(crate) fn execute_fast(&self, input: &[f32], batch: usize, keep: bool) -> Result<Trace> {
        self.check_input(input, batch)?;
        let plan = self.fast_plan()?;
        let threads = crate::kernels::max_threads().max(1);
        if threads > 1 && batch >= 2 * threads {
            return self.execute_split(plan, input, batch, threads, keep);
        }
        self.execute_slice(plan, input, batch, threads, keep)
    }

    /// [`QuantModel::execute_fast`] on chunks of the batch handed out to `threads` threads,
    /// joined in batch order.
    fn execute_split(
        &self,
        plan: &[Plan],
        input: &[f32],
        batch: usize,
        threads: usize,
        keep: bool,
    ) -> Result<Trace> {
        let per = input.len() / batch;
        // Chunks of whole samples, handed out one at a time, so that a core slowed down by
        // other work delays the end by one chunk only.
        let chunk = (batch / (threads * CHUNKS_PER_THREAD)).max(1);
        let queue = Mutex::new(input.chunks(chunk * per).enumerate());
        let worker = || {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((i, x)) = next else { break };
                done.push((i, self.execute_slice(plan, x, x.len() / per, 1, keep)));
            }
            done
        };
        let mut results: Vec<(usize, Result<Trace>)> = std::thread::scope(|s| {
            let worker = &worker;
            let handles: Vec<_> = (1..threads).map(|_| s.spawn(worker)).collect();
            let mut results = worker();
            for h in handles {
                match h.join() {
                    Ok(r) => results.extend(r),
                    Err(_) => results.push((
                        usize::MAX,
                        Err(EngineError::Invalid(
                            "a thread of the fast executor panicked".into(),
                        )),
                    )),
                }
            }
            results
        });
        results.sort_by_key(|(i, _)| *i);
        let mut joined = Trace {
            codes: std::collections::BTreeMap::new(),
            output: Vec::new(),
        };
        for (_, r) in results {
            let t = r?;
            joined.output.extend_from_slice(&t.output);
            for (name, c) in t.codes {
                joined.codes.entry(name).or_default().extend_from_slice(&c);
            }
        }
        Ok(joined)
    }

    /// [`QuantModel::execute_fast`] on `batch` samples with the layers' rows split over
    /// `threads` threads.
    fn execute_slice(
        &self,
        plan: &[Plan],
        input: &[f32],
        batch: usize,
        threads: usize,
        keep: bool,
    ) -> Result<Trace> {
        let mut ws = self.workspace(batch, threads);
        let mut result = Ok(());
        for (step, p) in self.steps.iter().zip(plan) {
            result = self.fast_step(step, p, &mut ws, batch, input);
            if result.is_err() {
                break;
            }
        }
        let out = result.map(|()| {
            let output = ws.floats[self.output].clone();
            let mut codes = std::collections::BTreeMap::new();
            if keep {
                for (t, c) in self.tensors.iter().zip(&ws.codes) {
                    if t.params.is_none() {
                        continue;
                    }
                    let mut v = c.clone();
                    if is_hwc(&t.shape) {
                        to_chw(c, t.shape[0], t.shape[1] * t.shape[2], &mut v);
                    }
                    codes.insert(t.name.clone(), v);
                }
            }
            Trace { codes, output }
        });
        self.give_back(ws);
        out
    }

    /// Median wall-clock seconds of every step of the fast executor (in execution order, with
    /// the step's name) over `reps` runs of `batch` samples, after one warm-up run. Fails when
    /// this CPU has no fast executor ([`QuantModel::uses_fast_path`]).
    pub fn step_times(
        &self,
        input: &[f32],
        batch: usize,
        reps: usize,
    ) -> Result<Vec<(String, f64)>> {
        if !self.uses_fast_path(Backend::Avx512Vnni) {
            return Err(EngineError::Invalid(
                "step timing needs the fast executor (an AVX-512 VNNI CPU)".into(),
            ));
        }
        self.check_input(input, batch)?;
        let plan = self.fast_plan()?;
        let mut ws = self.workspace(batch, crate::kernels::max_threads());
        let reps = reps.max(1);
        let mut times = vec![Vec::with_capacity(reps); self.steps.len()];
        let mut result = Ok(());
        'runs: for rep in 0..=reps {
            for ((step, p), t) in self.steps.iter().zip(plan).zip(&mut times) {
                let start = std::time::Instant::now();
                result = self.fast_step(step, p, &mut ws, batch, input);
                if result.is_err() {
                    break 'runs;
                }
                if rep > 0 {
                    t.push(start.elapsed().as_secs_f64());
                }
            }
        }
        self.give_back(ws);
        result?;
        Ok(self
            .steps
            .iter()
            .zip(times)
            .map(|(s, mut t)| {
                t.sort_by(f64::total_cmp);
                (s.name().to_string(), t[t.len() / 2])
            })
            .collect())
    }

    /// Codes of tensor `t` in channels-first order (a copy into `tmp` when held channels-last).
    fn chw_codes<'a>(&self, ws_codes: &'a [Vec<u8>], t: usize, tmp: &'a mut Vec<u8>) -> &'a [u8] {
        let s = self.shape(t);
        let c = &ws_codes[t];
        if is_hwc(s) {
            tmp.resize(c.len(), 0);
            to_chw(c, s[0], s[1] * s[2], tmp);
            tmp
        } else {
            c
        }
    }

    /// The `f32` tensor `t` (the model input is read in place).
    fn floats<'a>(&self, ws: &'a Workspace, t: usize, input: &'a [f32]) -> &'a [f32] {
        if t == self.input {
            input
        } else {
            &ws.floats[t]
        }
    }

    fn fast_step(
        &self,
        step: &Step,
        plan: &Plan,
        ws: &mut Workspace,
        batch: usize,
        input_x: &[f32],
    ) -> Result<()> {
        let out_t = step.output();
        match (step, plan) {
            (Step::Quantize { input, output, ops }, _) => {
                let p = self.params(*output)?;
                let s = self.shape(*output).to_vec();
                let mut out = std::mem::take(&mut ws.codes[*output]);
                let x = self.floats(ws, *input, input_x);
                if x.len() != out.len() {
                    return Err(EngineError::Invalid(format!(
                        "input quantization: {} values for a tensor of {}",
                        x.len(),
                        out.len()
                    )));
                }
                let mut y = Vec::new();
                let x = if ops.is_empty() {
                    x
                } else {
                    y.extend_from_slice(x);
                    for op in ops {
                        op.apply(&mut y);
                    }
                    &y
                };
                // 3-channel images go straight into channels-last order where the CPU allows.
                let direct =
                    is_hwc(&s) && s[0] == 3 && quantize_rgb_hwc(x, &p, s[1] * s[2], &mut out);
                if !direct {
                    quantize_into(x, &p, &mut out);
                    if is_hwc(&s) {
                        let mut tmp = std::mem::take(&mut ws.tmp_in);
                        tmp.resize(out.len(), 0);
                        to_hwc(&out, s[0], s[1] * s[2], &mut tmp);
                        std::mem::swap(&mut out, &mut tmp);
                        ws.tmp_in = tmp;
                    }
                }
                ws.codes[*output] = out;
            }
            (Step::Dequantize { input, output }, _) => {
                let p = self.params(*input)?;
                let mut tmp = std::mem::take(&mut ws.tmp_in);
                let codes = self.chw_codes(&ws.codes, *input, &mut tmp);
                let out = &mut ws.floats[*output];
                for (d, &q) in out.iter_mut().zip(codes) {
                    *d = p.dequantize(q);
                }
                ws.tmp_in = tmp;
            }
            (
                Step::Softmax {
                    input,
                    output,
                    outer,
                    len,
                    inner,
                    ..
                },
                _,
            ) => {
                let mut v = std::mem::take(&mut ws.floats[*output]);
                v.copy_from_slice(self.floats(ws, *input, input_x));
                softmax(&mut v, *outer, *len, *inner);
                ws.floats[*output] = v;
            }
            (Step::Layer(l), Plan::Layer(lp)) => {
                self.fast_layer(l, lp, ws, batch)?;
            }
            (Step::Layer(l), Plan::Depthwise(dp)) => {
                let zp = self.params(l.input)?.zero_point as u8;
                let mut out = std::mem::take(&mut ws.codes[out_t]);
                let mut padded = std::mem::take(&mut ws.padded);
                let r = run_depthwise(
                    &ws.codes[l.input],
                    batch,
                    dp,
                    zp,
                    &mut padded,
                    &mut ws.scratch,
                    &mut out,
                );
                ws.codes[out_t] = out;
                ws.padded = padded;
                r.map_err(|e| EngineError::Invalid(format!("layer '{}': {e}", l.name)))?;
            }
            (Step::Add(a), Plan::Add(k, shift, zlh)) => {
                let mut out = std::mem::take(&mut ws.codes[out_t]);
                let (x, y) = (&ws.codes[a.a], &ws.codes[a.b]);
                if x.len() != out.len() || y.len() != out.len() {
                    return Err(EngineError::Invalid(format!(
                        "Add '{}' operands differ in length",
                        a.name
                    )));
                }
                add_vec(x, y, &mut out, *k, *shift, *zlh);
                ws.codes[out_t] = out;
            }
            (Step::Clamp { input, .. } | Step::Requant { input, .. }, Plan::Table(table)) => {
                let mut out = std::mem::take(&mut ws.codes[out_t]);
                for (d, &q) in out.iter_mut().zip(&ws.codes[*input]) {
                    *d = table[q as usize];
                }
                ws.codes[out_t] = out;
            }
            (Step::MaxPool(p), Plan::Pool) => {
                let mut out = std::mem::take(&mut ws.codes[out_t]);
                max_pool_hwc(p, &ws.codes[p.input], batch, &mut out);
                ws.codes[out_t] = out;
            }
            (Step::AvgPool(p), Plan::Pool) => {
                let range = self.params(p.output)?.range();
                let zin = self.params(p.input)?.zero_point;
                let mut out = std::mem::take(&mut ws.codes[out_t]);
                let mut acc = std::mem::take(&mut ws.scratch[0].accs);
                let r = avg_pool_hwc(p, &ws.codes[p.input], batch, zin, range, &mut out, &mut acc);
                ws.scratch[0].accs = acc;
                ws.codes[out_t] = out;
                r?;
            }
            _ => self.reference_step(step, ws, batch, input_x)?,
        }
        Ok(())
    }

    /// A step the fast executor has no form for: channels-first operands, reference kernels,
    /// result stored back channels-last.
    fn reference_step(
        &self,
        step: &Step,
        ws: &mut Workspace,
        batch: usize,
        input_x: &[f32],
    ) -> Result<()> {
        let ins = step.inputs();
        let mut bufs: Vec<Option<Buf>> = (0..self.tensors.len()).map(|_| None).collect();
        for &t in &ins {
            bufs[t] = Some(if self.tensors[t].params.is_some() {
                let mut tmp = Vec::new();
                Buf::Codes(self.chw_codes(&ws.codes, t, &mut tmp).to_vec())
            } else {
                Buf::Float(self.floats(ws, t, input_x).to_vec())
            });
        }
        let out = self.exec_step(Backend::Avx512Vnni, step, &bufs, batch)?;
        let t = step.output();
        match out {
            Buf::Codes(c) => {
                let s = self.shape(t).to_vec();
                let dst = &mut ws.codes[t];
                if c.len() != dst.len() {
                    return Err(EngineError::Invalid(format!(
                        "step '{}' produced {} codes for tensor '{}' of {}",
                        step.name(),
                        c.len(),
                        self.tensors[t].name,
                        dst.len()
                    )));
                }
                if is_hwc(&s) {
                    to_hwc(&c, s[0], s[1] * s[2], dst);
                } else {
                    dst.copy_from_slice(&c);
                }
            }
            Buf::Float(f) => {
                let dst = &mut ws.floats[t];
                if f.len() != dst.len() {
                    return Err(EngineError::Invalid(format!(
                        "step '{}' produced {} values for tensor '{}' of {}",
                        step.name(),
                        f.len(),
                        self.tensors[t].name,
                        dst.len()
                    )));
                }
                dst.copy_from_slice(&f);
            }
        }
        Ok(())
    }

    fn fast_layer(
        &self,
        l: &LayerStep,
        lp: &LayerPlan,
        ws: &mut Workspace,
        batch: usize,
    ) -> Result<()> {
        let Some(fw) = self.weights[l.weights].fast.as_ref() else {
            return Err(EngineError::Invalid(format!(
                "layer '{}': no packed weights for the fast kernels",
                l.name
            )));
        };
        let zp = self.params(l.input)?.zero_point as u8;
        let input = std::mem::take(&mut ws.codes[l.input]);
        let mut tmp = std::mem::take(&mut ws.tmp_b);
        let mut padded = std::mem::take(&mut ws.padded);
        let [h, w, c] = lp.hwc;
        let mut result = Ok(());
        if input.len() != batch * h * w * c {
            result = Err(format!(
                "input holds {} codes, the layer reads {}",
                input.len(),
                batch * h * w * c
            ));
        }
        if result.is_ok() {
            let mut src: &[u8] = &input;
            if lp.nchw_input {
                let s = self.shape(l.input);
                tmp.resize(input.len(), 0);
                to_chw(&input, s[0], s[1] * s[2], &mut tmp);
                src = &tmp;
            }
            let out = l.output;
            result = match &lp.ep.kind {
                EpilogueKind::Codes { .. } => {
                    let mut dst = std::mem::take(&mut ws.codes[out]);
                    let r = run_layer(
                        src,
                        batch,
                        lp,
                        fw,
                        zp,
                        &mut padded,
                        &mut ws.scratch,
                        Out::Codes(&mut dst),
                    );
                    ws.codes[out] = dst;
                    r
                }
                EpilogueKind::Float { .. } => {
                    let mut dst = std::mem::take(&mut ws.floats[out]);
                    let r = run_layer(
                        src,
                        batch,
                        lp,
                        fw,
                        zp,
                        &mut padded,
                        &mut ws.scratch,
                        Out::Float(&mut dst),
                    );
                    let s = self.shape(out).to_vec();
                    if r.is_ok() && is_hwc(&s) {
                        let mut t = dst.clone();
                        to_chw(&dst, s[0], s[1] * s[2], &mut t);
                        dst = t;
                    }
                    ws.floats[out] = dst;
                    r
                }
            };
        }
        ws.codes[l.input] = input;
        ws.tmp_b = tmp;
        ws.padded = padded;
        result.map_err(|e| EngineError::Invalid(format!("layer '{}': {e}", l.name)))
    }
}

/// Epilogue constants of layer `l` with `kreal` real products per output.
fn epilogue(l: &LayerStep, n: usize, zp: i32, row_sums: &[i32], kreal: usize) -> Result<Epilogue> {
    let zw: Vec<i32> = row_sums
        .iter()
        .map(|&s| (zp as i64 * s as i64) as i32)
        .collect();
    if l.bias.len() != n {
        return Err(EngineError::Invalid(format!(
            "layer '{}': {} biases for {n} output channels",
            l.name,
            l.bias.len()
        )));
    }
    let kind = match &l.out {
        LayerOutput::Codes { multipliers, range } => {
            if multipliers.len() != 1 && multipliers.len() != n {
                return Err(EngineError::Invalid(format!(
                    "layer '{}': {} multipliers for {n} output channels",
                    l.name,
                    multipliers.len()
                )));
            }
            let d = |c: usize| multipliers[if multipliers.len() == 1 { 0 } else { c }];
            EpilogueKind::Codes {
                m: (0..n).map(|c| d(c).multiplier() as i64).collect(),
                shift: (0..n).map(|c| d(c).shift() as u64).collect(),
                half: (0..n)
                    .map(|c| match d(c).shift() {
                        0 => 0,
                        s => 1i64 << (s - 1),
                    })
                    .collect(),
                range: *range,
            }
        }
        LayerOutput::Float { scales, lo, hi } => {
            if scales.len() != n {
                return Err(EngineError::Invalid(format!(
                    "layer '{}': {} scales for {n} output channels",
                    l.name,
                    scales.len()
                )));
            }
            EpilogueKind::Float {
                scales: scales.clone(),
                lo: *lo,
                hi: *hi,
            }
        }
    };
    // The in-register epilogue adds `bias - z·Σw` in wrapping `i32`: exact whenever the
    // reference's `Σ(a - z)·w + bias` cannot saturate, i.e. `|bias| + K·255·128 < 2^31`.
    let bound = kreal as i64 * 255 * 128;
    let exact = l
        .bias
        .iter()
        .all(|&b| (b as i64).abs() + bound <= i32::MAX as i64);
    let round = match &kind {
        EpilogueKind::Codes { shift, range, .. } => round_mode(shift, *range),
        EpilogueKind::Float { .. } => mode::EXACT,
    };
    let fused = match &kind {
        EpilogueKind::Codes {
            m, shift, range, ..
        } if exact => {
            let zw: &Vec<i32> = &zw;
            let z = folded_zero_point(round, *range);
            let panels = n.div_ceil(16);
            Some(
                (0..panels)
                    .map(|p| {
                        let mut e = PanelEpilogue::padding();
                        for j in 0..16 {
                            let c = p * 16 + j;
                            if c >= n {
                                break;
                            }
                            let bz = l.bias[c].wrapping_sub(zw[c]);
                            e.set(j, bz, m[c] as i32, shift[c], z);
                        }
                        e
                    })
                    .collect(),
            )
        }
        _ => None,
    };
    Ok(Epilogue {
        zw,
        bias: l.bias.clone(),
        kind,
        fused,
        round,
    })
}

/// A fused layer on a channels-last input (`batch` images): zero-point padding when the
/// convolution pads (or a kernel row is read in whole k-quads), then [`run_rows`] over
/// `batch·Ho·Wo` output rows, on up to `scratch.len()` threads.
#[allow(clippy::too_many_arguments)]
fn run_layer(
    x: &[u8],
    batch: usize,
    lp: &LayerPlan,
    fw: &FastWeights,
    zp: u8,
    padded: &mut Vec<u8>,
    scratch: &mut [Scratch],
    out: Out,
) -> std::result::Result<(), String> {
    let [h, w, c] = lp.hwc;
    let [pt, pl, pb, pr] = lp.pads;
    // A kernel row padded to whole k-quads reads past the window's row.
    // (Kernel rows are contiguous runs unless dilated with several columns; see `Addr::new`.)
    let slack = fw.seg != lp.kernel[1] * c && (lp.dilations[1] == 1 || lp.kernel[1] == 1);
    let mut src = x;
    if lp.pads != [0; 4] || slack {
        pad_hwc(x, batch, lp.hwc, lp.pads, zp, padded);
        src = padded;
    }
    let addr = Addr::new(lp, [h + pt + pb, w + pl + pr, c], fw.seg);
    let m = batch * lp.out_hw[0] * lp.out_hw[1];
    let threads = if m * fw.n * fw.kq >= PARALLEL_MACS {
        scratch.len().min(m.div_ceil(ROW_BLOCK)).max(1)
    } else {
        1
    };
    run_rows(src, fw, &addr, &lp.ep, m, threads, scratch, out)
}

/// The kernel a [`FusedLayer`] runs: the plan the executor builds for that layer.
enum FusedPlan {
    /// Implicit-GEMM convolution or matrix product (`Plan::Layer`).
    Layer { fw: FastWeights, lp: LayerPlan },
    /// Depthwise convolution (`Plan::Depthwise`).
    Depthwise(DwPlan),
}

/// One layer on the fast executor's kernels, exactly as [`QuantModel::run`] runs it (padding,
/// implicit-GEMM VNNI kernel or channels-last depthwise kernel, fused requantization), for the
/// latency profiler.
pub(crate) struct FusedLayer {
    plan: FusedPlan,
    x: Vec<u8>,
    out: Vec<u8>,
    padded: Vec<u8>,
    scratch: Vec<Scratch>,
    batch: usize,
    zp: u8,
}

impl FusedLayer {
    /// A convolution (`weights` `[Cout, Cin/groups, kh, kw]`) over `input` `[N, C, H, W]` whose
    /// random channels-last codes are `x`, on the plan the executor builds for it: the
    /// implicit-GEMM kernel for one group, the channels-last depthwise kernel ([`DwPlan::new`])
    /// for one filter per channel. `None` when the executor would keep the reference kernels (no
    /// AVX-512 VNNI; other groupings; dilated over channels not a multiple of 4; a depthwise sum
    /// that could saturate `i32`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv(
        weights: &[i8],
        shape: [usize; 4],
        params: &crate::kernels::Conv2dParams,
        input: [usize; 4],
        out_hw: [usize; 2],
        x: Vec<u8>,
        zp: u8,
        bias: Vec<i32>,
        multipliers: Vec<crate::kernels::Dyadic>,
        range: OutputRange,
    ) -> Option<Self> {
        let [n, c, h, w] = input;
        let step = Self::step(bias, multipliers, range);
        let outputs = n * out_hw[0] * out_hw[1] * shape[0];
        if params.groups != 1 {
            let dp = DwPlan::new(&step, weights, &shape, params, [c, h, w], out_hw, zp as i32)
                .ok()
                .flatten()?;
            return Self::with(FusedPlan::Depthwise(dp), x, zp, n, outputs);
        }
        let dilated_ok = params.dilations[1] == 1 || c % 4 == 0 || shape[3] == 1;
        if shape[1] != c || !dilated_ok {
            return None;
        }
        let fw = FastWeights::new(weights, &shape, 1)?;
        let kreal = c * shape[2] * shape[3];
        let ep = epilogue(&step, fw.n, zp as i32, &fw.row_sums, kreal).ok()?;
        let lp = LayerPlan {
            nchw_input: false,
            hwc: [h, w, c],
            kernel: [shape[2], shape[3]],
            strides: params.strides,
            pads: params.pads,
            dilations: params.dilations,
            out_hw,
            ep,
        };
        Self::with(FusedPlan::Layer { fw, lp }, x, zp, n, outputs)
    }

    /// A matrix product `[m, k]·[n, k]ᵀ` over random codes `x`; `None` without AVX-512 VNNI.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        weights: &[i8],
        n: usize,
        k: usize,
        m: usize,
        x: Vec<u8>,
        bias: Vec<i32>,
        multipliers: Vec<crate::kernels::Dyadic>,
        range: OutputRange,
    ) -> Option<Self> {
        let fw = FastWeights::new(weights, &[n, k], 1)?;
        let step = Self::step(bias, multipliers, range);
        let ep = epilogue(&step, n, 0, &fw.row_sums, k).ok()?;
        let lp = LayerPlan {
            nchw_input: false,
            hwc: [1, m, k],
            kernel: [1, 1],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            out_hw: [1, m],
            ep,
        };
        Self::with(FusedPlan::Layer { fw, lp }, x, 0, 1, m * n)
    }

    fn step(
        bias: Vec<i32>,
        multipliers: Vec<crate::kernels::Dyadic>,
        range: OutputRange,
    ) -> LayerStep {
        LayerStep {
            name: "profiled layer".into(),
            input: 0,
            output: 0,
            weights: 0,
            bias,
            geometry: LayerGeometry::Gemm {
                rows: 0,
                k: 0,
                n: 0,
            },
            out: LayerOutput::Codes { multipliers, range },
        }
    }

    fn with(plan: FusedPlan, x: Vec<u8>, zp: u8, batch: usize, out: usize) -> Option<Self> {
        let threads = crate::kernels::max_threads().max(1);
        Some(Self {
            plan,
            x,
            out: vec![0; out],
            padded: Vec::new(),
            scratch: (0..threads).map(|_| Scratch::default()).collect(),
            batch,
            zp,
        })
    }

    /// One execution of the layer.
    pub(crate) fn run(&mut self) -> std::result::Result<(), String> {
        match &self.plan {
            FusedPlan::Layer { fw, lp } => run_layer(
                &self.x,
                self.batch,
                lp,
                fw,
                self.zp,
                &mut self.padded,
                &mut self.scratch,
                Out::Codes(&mut self.out),
            ),
            FusedPlan::Depthwise(dp) => run_depthwise(
                &self.x,
                self.batch,
                dp,
                self.zp,
                &mut self.padded,
                &mut self.scratch,
                &mut self.out,
            ),
        }
    }
}

/// Output rows per block of the raw-sum path (a multiple of every micro-kernel's row count).
const ROW_BLOCK: usize = 240;

/// `src` (`batch` images `[H, W, C]`) into `dst` (`[H + pt + pb, W + pl + pr, C]` plus
/// [`SLACK`] bytes): padding rows and columns hold the zero point.
fn pad_hwc(src: &[u8], batch: usize, hwc: [usize; 3], pads: [usize; 4], zp: u8, dst: &mut Vec<u8>) {
    let [h, w, c] = hwc;
    let [pt, pl, pb, pr] = pads;
    let (hp, wp) = (h + pt + pb, w + pl + pr);
    let img_out = hp * wp * c;
    dst.clear();
    dst.resize(batch * img_out + SLACK, zp);
    for b in 0..batch {
        let img = &src[b * h * w * c..(b + 1) * h * w * c];
        let out = &mut dst[b * img_out..(b + 1) * img_out];
        for y in 0..h {
            out[((y + pt) * wp + pl) * c..((y + pt) * wp + pl + w) * c]
                .copy_from_slice(&img[y * w * c..(y + 1) * w * c]);
        }
    }
}

/// Bytes after a padded input, so that the last window's row may be read in whole k-quads.
const SLACK: usize = 4;

/// Where the implicit im2col rows of a fused layer live in its (padded) channels-last input.
#[derive(Debug)]
struct Addr {
    /// `[Hp, Wp, cp]` of the padded input.
    hwc: [usize; 3],
    strides: [usize; 2],
    out_hw: [usize; 2],
    /// Byte offsets of the row segments from a row's first byte.
    segs: Vec<usize>,
    /// k-quads per segment.
    quads: usize,
}

impl Addr {
    fn new(lp: &LayerPlan, padded: [usize; 3], seg: usize) -> Self {
        let [_, wp, c] = padded;
        let [kh, kw] = lp.kernel;
        let [dh, dw] = lp.dilations;
        let (segs, quads) = if dw == 1 || kw == 1 {
            ((0..kh).map(|ky| ky * dh * wp * c).collect(), seg / 4)
        } else {
            // Dilated rows: one segment per tap (planned only when `C` is a multiple of 4).
            (
                (0..kh)
                    .flat_map(|ky| (0..kw).map(move |kx| (ky * dh * wp + kx * dw) * c))
                    .collect(),
                c / 4,
            )
        };
        Self {
            hwc: padded,
            strides: lp.strides,
            out_hw: lp.out_hw,
            segs,
            quads,
        }
    }

    /// Byte offset of output row `r`'s first activation.
    #[inline]
    fn row(&self, r: usize) -> usize {
        let [ho, wo] = self.out_hw;
        let (b, pix) = (r / (ho * wo), r % (ho * wo));
        self.offset(b, pix / wo, pix % wo)
    }

    #[inline]
    fn offset(&self, b: usize, oy: usize, ox: usize) -> usize {
        let [hp, wp, c] = self.hwc;
        (b * hp * wp + oy * self.strides[0] * wp + ox * self.strides[1]) * c
    }
}

/// Output rows in order, as `(b, oy, ox)` counters (no division per row).
struct RowWalk<'a> {
    addr: &'a Addr,
    pos: [usize; 3],
}

impl<'a> RowWalk<'a> {
    fn new(addr: &'a Addr, r: usize) -> Self {
        let [ho, wo] = addr.out_hw;
        let (b, pix) = (r / (ho * wo).max(1), r % (ho * wo).max(1));
        Self {
            addr,
            pos: [b, pix / wo.max(1), pix % wo.max(1)],
        }
    }

    /// Offset of the current row; moves to the next.
    #[inline]
    fn next_offset(&mut self) -> usize {
        let [b, oy, ox] = self.pos;
        let off = self.addr.offset(b, oy, ox);
        let [ho, wo] = self.addr.out_hw;
        self.pos = if ox + 1 < wo {
            [b, oy, ox + 1]
        } else if oy + 1 < ho {
            [b, oy + 1, 0]
        } else {
            [b + 1, 0, 0]
        };
        off
    }
}

enum Out<'a> {
    Codes(&'a mut [u8]),
    Float(&'a mut [f32]),
}

/// Fused layer over output rows `0..m`, split over `threads`.
#[allow(clippy::too_many_arguments)]
fn run_rows(
    x: &[u8],
    fw: &FastWeights,
    addr: &Addr,
    ep: &Epilogue,
    m: usize,
    threads: usize,
    scratch: &mut [Scratch],
    out: Out,
) -> std::result::Result<(), String> {
    let n = fw.n;
    let [hp, wp, cp] = addr.hwc;
    if addr.segs.len() * addr.quads * 4 != fw.kq {
        return Err(format!(
            "the kernel windows cover {} bytes, the weights {}",
            addr.segs.len() * addr.quads * 4,
            fw.kq
        ));
    }
    if m > 0 {
        // The last row's window must lie inside the input.
        let end = addr.row(m - 1) + addr.segs.last().copied().unwrap_or(0) + addr.quads * 4;
        let batch = m / (addr.out_hw[0] * addr.out_hw[1]).max(1);
        let img = batch * hp * wp * cp;
        if end > x.len() || (x.len() != img && x.len() != img + SLACK) {
            return Err(format!(
                "input of {} bytes does not hold the convolution windows",
                x.len()
            ));
        }
    }
    let out_len = match &out {
        Out::Codes(o) => o.len(),
        Out::Float(o) => o.len(),
    };
    if out_len != m * n {
        return Err(format!(
            "output holds {out_len} values, the layer writes {}",
            m * n
        ));
    }
    if threads <= 1 {
        run_block(x, fw, addr, ep, 0..m, &mut scratch[0], out);
        return Ok(());
    }
    match out {
        Out::Codes(o) => run_dynamic(o, n, m, threads, scratch, |rows, sc, chunk| {
            run_block(x, fw, addr, ep, rows, sc, Out::Codes(chunk))
        }),
        Out::Float(o) => run_dynamic(o, n, m, threads, scratch, |rows, sc, chunk| {
            run_block(x, fw, addr, ep, rows, sc, Out::Float(chunk))
        }),
    }
    Ok(())
}

/// Output rows `0..m` (`n` values each, in `o`) in chunks handed out one at a time to the
/// calling thread and `threads - 1` helpers, so that a core slowed down by other work only
/// delays the end by one chunk.
fn run_dynamic<T: Send>(
    o: &mut [T],
    n: usize,
    m: usize,
    threads: usize,
    scratch: &mut [Scratch],
    work: impl Fn(std::ops::Range<usize>, &mut Scratch, &mut [T]) + Sync,
) {
    let chunk_rows = (m / (threads * 8).max(1))
        .next_multiple_of(ROW_BLOCK)
        .max(ROW_BLOCK);
    let queue = Mutex::new(o.chunks_mut(chunk_rows * n.max(1)).enumerate());
    let worker = |sc: &mut Scratch| loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        let Some((i, chunk)) = next else { break };
        let r0 = i * chunk_rows;
        work(r0..r0 + chunk.len() / n.max(1), sc, chunk);
    };
    let Some((first, rest)) = scratch.split_first_mut() else {
        return;
    };
    std::thread::scope(|s| {
        let worker = &worker;
        for sc in rest.iter_mut().take(threads.saturating_sub(1)) {
            s.spawn(move || worker(sc));
        }
        worker(first);
    });
}

/// Output rows `rows` of a fused layer into `out` (exactly those rows).
fn run_block(
    x: &[u8],
    fw: &FastWeights,
    addr: &Addr,
    ep: &Epilogue,
    rows: std::ops::Range<usize>,
    sc: &mut Scratch,
    mut out: Out,
) {
    let n = fw.n;
    let width = n.div_ceil(16) * 16;
    if let (Some(panels), Out::Codes(o)) = (&ep.fused, &mut out) {
        let EpilogueKind::Codes { range, .. } = &ep.kind else {
            unreachable!("fused constants exist for code outputs only")
        };
        let zlh = [
            range.zero_point as i64,
            range.qmin as i64,
            range.qmax as i64,
        ];
        let f = Some(FusedSink {
            panels,
            zlh,
            round: ep.round,
        });
        // SAFETY: `fw` exists only on AVX-512 VNNI CPUs (`FastWeights::new`); `run_rows`
        // checked that every window lies inside `x` and that `o` holds the rows.
        unsafe { fused_rows(x, fw, addr, rows, f, o.as_mut_ptr(), n) };
        return;
    }
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + ROW_BLOCK).min(rows.end);
        sc.tile.resize(ROW_BLOCK * width, 0);
        // SAFETY: as above; the tile holds `width` i32 per row.
        unsafe {
            fused_rows(
                x,
                fw,
                addr,
                r0..r1,
                None,
                sc.tile.as_mut_ptr() as *mut u8,
                width * 4,
            )
        };
        let o0 = (r0 - rows.start) * n;
        for (i, acc) in sc.tile[..(r1 - r0) * width].chunks_exact(width).enumerate() {
            let acc = &acc[..n];
            match (&mut out, &ep.kind) {
                (
                    Out::Codes(o),
                    EpilogueKind::Codes {
                        m,
                        shift,
                        half,
                        range,
                    },
                ) => {
                    let dst = &mut o[o0 + i * n..][..n];
                    requant_row(acc, &ep.zw, &ep.bias, m, shift, half, *range, dst);
                }
                (Out::Float(o), EpilogueKind::Float { scales, lo, hi }) => {
                    let dst = &mut o[o0 + i * n..][..n];
                    for c in 0..n {
                        let a = acc[c].wrapping_sub(ep.zw[c]);
                        let y = ((a as i64 + ep.bias[c] as i64) as f64 * scales[c]) as f32;
                        dst[c] = clamp_f32(y, *lo, *hi);
                    }
                }
                _ => unreachable!("the output buffer kind follows the epilogue kind"),
            }
        }
        r0 = r1;
    }
}

/// The micro-kernel loop over output rows `rows`: codes through the fused epilogue (`fused`),
/// else raw sums. Row `r` is written at `out + (r - rows.start)·row_bytes`.
///
/// # Safety
/// AVX-512 VNNI CPU; every window of `rows` inside `x`; `out` holds the rows.
#[cfg(target_arch = "x86_64")]
unsafe fn fused_rows(
    x: &[u8],
    fw: &FastWeights,
    addr: &Addr,
    rows: std::ops::Range<usize>,
    fused: Option<FusedSink<'_>>,
    out: *mut u8,
    row_bytes: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        // The floor modes: `FLOOR` with any of the `SIGNED`, `ZADD` and `SAT` flags.
        let (f, o, b) = (fused, out, row_bytes);
        match fused.map_or(mode::EXACT, |f| f.round) {
            1 => fused_rows_in::<1>(x, fw, addr, rows, f, o, b),
            3 => fused_rows_in::<3>(x, fw, addr, rows, f, o, b),
            5 => fused_rows_in::<5>(x, fw, addr, rows, f, o, b),
            7 => fused_rows_in::<7>(x, fw, addr, rows, f, o, b),
            9 => fused_rows_in::<9>(x, fw, addr, rows, f, o, b),
            11 => fused_rows_in::<11>(x, fw, addr, rows, f, o, b),
            13 => fused_rows_in::<13>(x, fw, addr, rows, f, o, b),
            15 => fused_rows_in::<15>(x, fw, addr, rows, f, o, b),
            _ => fused_rows_in::<{ mode::EXACT }>(x, fw, addr, rows, f, o, b),
        }
    }
}

/// [`fused_rows`] with the epilogue's rounding mode `MODE`.
///
/// # Safety
/// As [`fused_rows`].
#[cfg(target_arch = "x86_64")]
unsafe fn fused_rows_in<const MODE: u8>(
    x: &[u8],
    fw: &FastWeights,
    addr: &Addr,
    rows: std::ops::Range<usize>,
    fused: Option<FusedSink<'_>>,
    out: *mut u8,
    row_bytes: usize,
) {
    let panels = fw.n.div_ceil(16);
    let mut g0 = 0;
    while g0 < panels {
        let np = (panels - g0).min(4);
        let r = rows.clone();
        // SAFETY: forwarded.
        unsafe {
            match np {
                1 => drive::<12, 1, MODE>(x, fw, addr, r, fused, out, row_bytes, g0),
                2 => drive::<8, 2, MODE>(x, fw, addr, r, fused, out, row_bytes, g0),
                3 => drive::<6, 3, MODE>(x, fw, addr, r, fused, out, row_bytes, g0),
                _ => drive::<6, 4, MODE>(x, fw, addr, r, fused, out, row_bytes, g0),
            }
        }
        g0 += np;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn fused_rows(
    _: &[u8],
    _: &FastWeights,
    _: &Addr,
    _: std::ops::Range<usize>,
    _: Option<FusedSink<'_>>,
    _: *mut u8,
    _: usize,
) {
    unreachable!("the fast executor runs on AVX-512 VNNI CPUs only")
}

/// Panels `g0..g0 + P` of rows `rows`, `R` rows per micro-kernel call (a short last group
/// repeats its first row and writes it to a dummy buffer).
///
/// # Safety
/// As [`fused_rows`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn drive<const R: usize, const P: usize, const MODE: u8>(
    x: &[u8],
    fw: &FastWeights,
    addr: &Addr,
    rows: std::ops::Range<usize>,
    fused: Option<FusedSink<'_>>,
    out: *mut u8,
    row_bytes: usize,
    g0: usize,
) {
    use crate::kernels::avx512_fused::{micro, Sink};
    let panels = fw.n.div_ceil(16);
    let panel_bytes = fw.kq * 16;
    let w = fw.data.as_ptr().wrapping_add(g0 * panel_bytes);
    let (sink, col) = match fused {
        Some(f) => (
            Sink::Codes {
                ep: f.panels.as_ptr().wrapping_add(g0),
                zlh: f.zlh,
                last: if g0 + P == panels {
                    fw.n - (panels - 1) * 16
                } else {
                    16
                },
            },
            g0 * 16,
        ),
        None => (Sink::Raw, g0 * 16 * 4),
    };
    let mut dummy = [0i32; 64];
    let dummy = dummy.as_mut_ptr() as *mut u8;
    let xp = x.as_ptr();
    let mut walk = RowWalk::new(addr, rows.start);
    let mut r = rows.start;
    while r < rows.end {
        let cnt = (rows.end - r).min(R);
        let mut base = [xp; R];
        let mut outs = [dummy; R];
        for i in 0..cnt {
            base[i] = xp.wrapping_add(walk.next_offset());
            outs[i] = out.wrapping_add((r + i - rows.start) * row_bytes + col);
        }
        // SAFETY: forwarded; the dummy buffer holds `P·16` i32.
        unsafe { micro::<R, P, MODE>(&base, &addr.segs, addr.quads, w, panel_bytes, sink, &outs) };
        r += cnt;
    }
}

/// Eq. 24 on one output row: `clamp(z_o + round(((acc - z_x·Σw) +sat bias)·m / 2^s))`, exactly
/// as [`crate::kernels::requantize`] (saturating bias add, rounding half away from zero).
#[allow(clippy::too_many_arguments)]
fn requant_row(
    acc: &[i32],
    zw: &[i32],
    bias: &[i32],
    m: &[i64],
    shift: &[u64],
    half: &[i64],
    r: OutputRange,
    out: &mut [u8],
) {
    let n = out.len();
    let (acc, zw, bias, m, shift, half) = (
        &acc[..n],
        &zw[..n],
        &bias[..n],
        &m[..n],
        &shift[..n],
        &half[..n],
    );
    let (z, lo, hi) = (r.zero_point as i64, r.qmin as i64, r.qmax as i64);
    for c in 0..n {
        let a = acc[c].wrapping_sub(zw[c]).saturating_add(bias[c]);
        let p = a as i64 * m[c];
        let sign = p >> 63;
        let mag = ((p ^ sign) - sign + half[c]) >> shift[c];
        let v = (mag ^ sign) - sign;
        out[c] = (v + z).clamp(lo, hi) as u8;
    }
}

/// Residual Add of two code vectors (`k = [z_a, z_b, m_a, m_b]`, `zlh = [z_o, lo, hi]`), as the
/// reference: `clamp(z_o + round_half_away((m_a·(a - z_a) + m_b·(b - z_b)) / 2^s))`.
fn add_vec(a: &[u8], b: &[u8], out: &mut [u8], k: [i32; 4], shift: u32, zlh: [i64; 3]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::vnni_available() {
        // SAFETY: AVX-512 checked just above; equal lengths checked by the caller.
        unsafe { crate::kernels::avx512_fused::add_codes(a, b, out, k, shift, zlh) };
        return;
    }
    add_generic(a, b, out, k, shift, zlh);
}

/// Scalar form of [`add_vec`].
fn add_generic(a: &[u8], b: &[u8], out: &mut [u8], k: [i32; 4], shift: u32, zlh: [i64; 3]) {
    for ((d, &p), &q) in out.iter_mut().zip(a).zip(b) {
        let s = k[2] as i64 * (p as i32 - k[0]) as i64 + k[3] as i64 * (q as i32 - k[1]) as i64;
        *d = (rounding_shift(s, shift) + zlh[0]).clamp(zlh[1], zlh[2]) as u8;
    }
}

/// Input quantization (`f32` → codes, same expression as [`crate::ActParams::quantize`]).
fn quantize_into(x: &[f32], p: &crate::ActParams, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::vnni_available() {
        // SAFETY: AVX-512 checked just above.
        unsafe { quantize_avx512(x, p, out) };
        return;
    }
    for (d, &v) in out.iter_mut().zip(x) {
        *d = p.quantize(v);
    }
}

/// Broadcast constants of the vector input quantization.
#[cfg(target_arch = "x86_64")]
struct QuantConsts {
    s: std::arch::x86_64::__m512,
    z: std::arch::x86_64::__m512,
    lo: std::arch::x86_64::__m512,
    hi: std::arch::x86_64::__m512,
}

#[cfg(target_arch = "x86_64")]
impl QuantConsts {
    #[target_feature(enable = "avx512f")]
    fn new(p: &crate::ActParams) -> Self {
        use std::arch::x86_64::*;
        Self {
            s: _mm512_set1_ps(p.scale),
            z: _mm512_set1_ps(p.zero_point as f32),
            lo: _mm512_set1_ps(p.qmin as f32),
            hi: _mm512_set1_ps(p.qmax as f32),
        }
    }
}

/// 16 values → 16 codes (`vdivps`, round to nearest even, `+ z`, clamp, narrow); NaN gives 0
/// like `f32 as u8` in the scalar expression.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
#[inline]
fn quantize16(v: std::arch::x86_64::__m512, c: &QuantConsts) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let q = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_div_ps(v, c.s),
    );
    let q = _mm512_add_ps(q, c.z);
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(q, q);
    let q = _mm512_min_ps(_mm512_max_ps(q, c.lo), c.hi);
    _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_maskz_mov_ps(!nan, q)))
}

/// [`quantize_into`] with AVX-512, 16 values per step ([`quantize16`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn quantize_avx512(x: &[f32], p: &crate::ActParams, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = x.len().min(out.len());
    let c = QuantConsts::new(p);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: 16 values exist from `i` in both slices.
        unsafe {
            let b = quantize16(_mm512_loadu_ps(x.as_ptr().add(i)), &c);
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, b);
        }
        i += 16;
    }
    for (d, &v) in out[i..n].iter_mut().zip(&x[i..n]) {
        *d = p.quantize(v);
    }
}

/// Input quantization of 3-channel images (`x` `[N, 3, H·W]`, `hw = H·W`) straight into
/// channels-last codes (`out` `[N, H·W, 3]`): the codes of [`quantize_into`] followed by
/// [`to_hwc`], in one pass (16 pixels per step: three planes quantized, interleaved by one
/// `vpermb`). Returns `false`, writing nothing, when this CPU lacks AVX-512 VBMI or the
/// lengths do not match.
fn quantize_rgb_hwc(x: &[f32], p: &crate::ActParams, hw: usize, out: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::vnni_available()
        && std::arch::is_x86_feature_detected!("avx512vbmi")
        && hw > 0
        && x.len() == out.len()
        && x.len().is_multiple_of(3 * hw)
    {
        // SAFETY: AVX-512 (with VBMI) checked just above; the lengths match.
        unsafe { quantize_rgb_hwc_avx512(x, p, hw, out) };
        return true;
    }
    let _ = (x, p, hw, out);
    false
}

/// [`quantize_rgb_hwc`] with AVX-512 VBMI.
///
/// # Safety
/// AVX-512 F/BW/DQ/VL and VBMI; `x.len() == out.len()`, a multiple of `3·hw`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")]
unsafe fn quantize_rgb_hwc_avx512(x: &[f32], p: &crate::ActParams, hw: usize, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let c = QuantConsts::new(p);
    // Byte `3i + ch` of the result is code `i` of plane `ch` (plane `ch` at bytes `16·ch..`).
    let mut idx = [0u8; 64];
    for (j, v) in idx.iter_mut().enumerate().take(48) {
        *v = (16 * (j % 3) + j / 3) as u8;
    }
    // SAFETY: 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr() as *const __m512i) };
    for (img, dst) in x.chunks_exact(3 * hw).zip(out.chunks_exact_mut(3 * hw)) {
        let (r, rest) = img.split_at(hw);
        let (g, b) = rest.split_at(hw);
        let mut i = 0;
        while i + 16 <= hw {
            // SAFETY: 16 values from `i` in each plane, 48 codes from `3i` in `dst`.
            unsafe {
                let qr = quantize16(_mm512_loadu_ps(r.as_ptr().add(i)), &c);
                let qg = quantize16(_mm512_loadu_ps(g.as_ptr().add(i)), &c);
                let qb = quantize16(_mm512_loadu_ps(b.as_ptr().add(i)), &c);
                let planes =
                    _mm512_inserti32x4::<2>(_mm512_castsi256_si512(_mm256_set_m128i(qg, qr)), qb);
                let px = _mm512_permutexvar_epi8(idx, planes);
                _mm512_mask_storeu_epi8(
                    dst.as_mut_ptr().add(3 * i) as *mut i8,
                    0xFFFF_FFFF_FFFF,
                    px,
                );
            }
            i += 16;
        }
        for j in i..hw {
            dst[3 * j] = p.quantize(r[j]);
            dst[3 * j + 1] = p.quantize(g[j]);
            dst[3 * j + 2] = p.quantize(b[j]);
        }
    }
}

/// Window rows / columns of output position `o` (tap `t`) in `[0, len)`, or `None`.
#[inline]
fn tap(o: usize, t: usize, stride: usize, dil: usize, pad: usize, len: usize) -> Option<usize> {
    crate::model::src(o, t, stride, dil, pad, len)
}

fn max_pool_hwc(p: &PoolStep, x: &[u8], batch: usize, out: &mut [u8]) {
    let [c, h, w] = p.in_shape;
    let [ho, wo] = p.out_hw;
    for b in 0..batch {
        let img = &x[b * h * w * c..(b + 1) * h * w * c];
        for oy in 0..ho {
            for ox in 0..wo {
                let dst = &mut out[((b * ho + oy) * wo + ox) * c..][..c];
                dst.fill(0);
                for ky in 0..p.kernel[0] {
                    let Some(iy) = tap(oy, ky, p.strides[0], p.dilations[0], p.pads[0], h) else {
                        continue;
                    };
                    for kx in 0..p.kernel[1] {
                        if let Some(ix) = tap(ox, kx, p.strides[1], p.dilations[1], p.pads[1], w) {
                            let s = &img[(iy * w + ix) * c..][..c];
                            for (d, &v) in dst.iter_mut().zip(s) {
                                *d = (*d).max(v);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn avg_pool_hwc(
    p: &PoolStep,
    x: &[u8],
    batch: usize,
    zp: i32,
    r: OutputRange,
    out: &mut [u8],
    acc: &mut Vec<i32>,
) -> Result<()> {
    let [c, h, w] = p.in_shape;
    let [ho, wo] = p.out_hw;
    acc.resize(c, 0);
    for b in 0..batch {
        let img = &x[b * h * w * c..(b + 1) * h * w * c];
        for oy in 0..ho {
            for ox in 0..wo {
                acc.fill(0);
                let mut valid = 0usize;
                let mut padded = 0usize;
                for ky in 0..p.kernel[0] {
                    let y = oy * p.strides[0] + ky;
                    let in_pad_y = y < h + p.pads[0] + p.pads[2];
                    let iy = tap(oy, ky, p.strides[0], 1, p.pads[0], h);
                    for kx in 0..p.kernel[1] {
                        let xx = ox * p.strides[1] + kx;
                        if in_pad_y && xx < w + p.pads[1] + p.pads[3] {
                            padded += 1;
                        }
                        if let (Some(iy), Some(ix)) =
                            (iy, tap(ox, kx, p.strides[1], 1, p.pads[1], w))
                        {
                            let s = &img[(iy * w + ix) * c..][..c];
                            for (a, &v) in acc.iter_mut().zip(s) {
                                *a += v as i32;
                            }
                            valid += 1;
                        }
                    }
                }
                let count = if p.count_include_pad { padded } else { valid };
                let d = count
                    .checked_sub(1)
                    .and_then(|i| p.multipliers.get(i))
                    .ok_or_else(|| {
                        EngineError::Invalid(format!(
                            "AveragePool '{}': no multiplier for a window of {count} elements",
                            p.name
                        ))
                    })?;
                let off = valid as i64 * zp as i64;
                let dst = &mut out[((b * ho + oy) * wo + ox) * c..][..c];
                for (o, &a) in dst.iter_mut().zip(acc.iter()) {
                    let sum = a as i64 - off;
                    let v = rounding_shift(sum * d.multiplier() as i64, d.shift());
                    *o = (v + r.zero_point as i64).clamp(r.qmin as i64, r.qmax as i64) as u8;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{conv2d_with, requantize, Conv2dParams, ConvWeights, Dyadic};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The fused layer (padding, implicit-GEMM VNNI kernel, in-register or tile epilogue)
        /// equals the generic convolution + requantization code for code.
        #[test]
        fn fused_conv_matches_generic(
            (n, c, h, w) in (1usize..3, 1usize..21, 1usize..9, 1usize..9),
            co in 1usize..40,
            (kh, kw) in (1usize..4, 1usize..4),
            (sh, sw) in (1usize..3, 1usize..3),
            pads in proptest::array::uniform4(0usize..3),
            dil in 1usize..3,
            zp in 0u8..=255,
            big_bias in any::<bool>(),
            style in 0u8..8,
            seed in any::<u64>(),
        ) {
            if !crate::kernels::vnni_available() {
                return Ok(());
            }
            let p = Conv2dParams { strides: [sh, sw], pads, dilations: [dil, dil], groups: 1 };
            let Ok([ho, wo]) = p.output_hw(h, w, kh, kw) else { return Ok(()) };
            let mut s = seed | 1;
            let mut next = move || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let x: Vec<u8> = (0..n * c * h * w).map(|_| next() as u8).collect();
            let wt: Vec<i8> = (0..co * c * kh * kw).map(|_| next() as i8).collect();
            // A huge bias may saturate: that forces the exact tile path.
            let bias: Vec<i32> = (0..co)
                .map(|_| if big_bias { i32::MAX - (next() % 1000) as i32 } else { (next() % 20001) as i32 - 10000 })
                .collect();
            // Style 0: shifts in 32..=54 and `q_min < z_o` (signed floor epilogue); 1: the same
            // with `q_min = z_o` (a fused ReLU: plain floor); 2: a few multipliers whose shifts
            // are outside 32..=62 (exact epilogue); 3: a few shifts in 55..=62 (zero point added
            // after the shift); 4: the output range `0..=255` (saturating narrowing); 5: both
            // of the last two, with `z_o = 0`; 6 and 7: powers of two (many exact halves, so
            // the rounding of ties shows), as 0 and 4.
            let mults: Vec<Dyadic> = (0..co)
                .map(|i| {
                    let r = 1e-3 * (1 + i % 5) as f64 + (next() % 100) as f64 * 1e-5;
                    let r = match (style, i % 3) {
                        (2, 0) => 0.7 + r,
                        (2, 1) => r * 1e-7,
                        (3 | 5, 0) => r * 1e-5,
                        (6 | 7, _) => 0.5f64.powi(8 + (i % 5) as i32),
                        _ => r,
                    };
                    Dyadic::from_real(r).unwrap()
                })
                .collect();
            let range = match style {
                1 => OutputRange { zero_point: 20, qmin: 20, qmax: 255 },
                4 | 7 => OutputRange { zero_point: 37, qmin: 0, qmax: 255 },
                5 => OutputRange { zero_point: 0, qmin: 0, qmax: 255 },
                _ => OutputRange { zero_point: 37, qmin: 5, qmax: 250 },
            };
            let cw = ConvWeights::new(&wt, [co, c, kh, kw], 1, 8).unwrap();
            let acc = conv2d_with(Backend::Generic, &x, [n, c, h, w], zp as i32, &cw, &p).unwrap();
            let want: Vec<u8> =
                requantize(&acc.data, [n, co, ho * wo], Some(&bias), &mults, range).unwrap();
            let mut xh = vec![0u8; x.len()];
            to_hwc(&x, c, h * w, &mut xh);
            let Some(mut fl) = FusedLayer::conv(
                &wt, [co, c, kh, kw], &p, [n, c, h, w], [ho, wo], xh, zp, bias, mults, range,
            ) else {
                prop_assert!(dil > 1 && c % 4 != 0 && kw > 1);
                return Ok(());
            };
            let FusedPlan::Layer { lp, .. } = &fl.plan else {
                return Err(TestCaseError::fail("a convolution with one group ran the depthwise plan"));
            };
            prop_assert_eq!(lp.ep.fused.is_some(), !big_bias);
            let round = [
                mode::FLOOR | mode::SIGNED,
                mode::FLOOR,
                mode::EXACT,
                mode::FLOOR | mode::SIGNED | mode::ZADD,
                mode::FLOOR | mode::SIGNED | mode::SAT,
                mode::FLOOR | mode::ZADD | mode::SAT,
                mode::FLOOR | mode::SIGNED,
                mode::FLOOR | mode::SIGNED | mode::SAT,
            ][style as usize];
            prop_assert_eq!(lp.ep.round, round);
            fl.run().unwrap();
            let mut got = vec![0u8; fl.out.len()];
            to_chw(&fl.out, co, ho * wo, &mut got);
            prop_assert_eq!(got, want);
        }

        /// The channels-last depthwise convolution with the fused epilogue equals the generic
        /// grouped convolution + requantization code for code.
        #[test]
        fn depthwise_matches_generic(
            (n, c, h, w) in (1usize..3, 2usize..40, 1usize..7, 1usize..24),
            (kh, kw) in (1usize..4, 1usize..4),
            (sh, sw) in (1usize..3, 1usize..3),
            pads in proptest::array::uniform4(0usize..3),
            dil in 1usize..3,
            zp in 0u8..=255,
            (zo, lo, hi) in (0i32..256, 0i32..60, 190i32..256),
            bits in 2u32..9,
            style in 0u8..7,
            seed in any::<u64>(),
        ) {
            if !crate::kernels::vnni_available() {
                return Ok(());
            }
            let p = Conv2dParams { strides: [sh, sw], pads, dilations: [dil, dil], groups: c };
            let Ok([ho, wo]) = p.output_hw(h, w, kh, kw) else { return Ok(()) };
            let mut s = seed | 1;
            let mut next = move || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let x: Vec<u8> = (0..n * c * h * w).map(|_| next() as u8).collect();
            let q = 1i64 << (bits - 1);
            let wt: Vec<i8> = (0..c * kh * kw)
                .map(|_| ((next() % (2 * q as u64)) as i64 - q).max(1 - q) as i8)
                .collect();
            // Scales that spread the outputs over a few dozen codes around `z_o` (most of them
            // unclamped, so that an off-by-one sum shows), and a few tiny / huge ones.
            let span = (kh * kw * 128) as f64 * q as f64;
            let bias: Vec<i32> = (0..c)
                .map(|_| ((next() % 2001) as f64 - 1000.0) * span / 4000.0)
                .map(|b| b as i32)
                .collect();
            let mults: Vec<Dyadic> = (0..c)
                .map(|i| {
                    let u = 0.2 + (next() % 1000) as f64 * 2e-3;
                    let typical = ((kh * kw) as f64).sqrt() * 60.0 * q as f64;
                    // Style 0 has a shift below 32 (exact epilogue); the others keep every
                    // shift in 32..=62 (floor epilogues), styles 2 and 5 some above 54; style 6
                    // has powers of two (many exact halves, so the rounding of ties shows).
                    let r = match (i % 9, style) {
                        (_, 6) => {
                            0.5f64.powi((typical / 20.0).log2().round() as i32 + (i % 3) as i32)
                        }
                        (0, 0) => 1e-7 * u,
                        (0, 2 | 5) => 1e-8 * u,
                        (0, _) => 1e-6 * u,
                        (1, 0) => 4.0 * u,
                        (1, _) => 0.2 * u,
                        _ => 20.0 * u / typical,
                    };
                    Dyadic::from_real(r).unwrap()
                })
                .collect();
            // Style 3: `q_min = z_o` (a fused ReLU); 4: the output range `0..=255`; 5: that
            // range with `z_o = 0`.
            let (zo, lo, hi) = match style {
                3 => (lo, lo, hi),
                4 => (zo, 0, 255),
                5 => (0, 0, 255),
                _ => (zo, lo, hi),
            };
            let range = OutputRange { zero_point: zo.clamp(lo, hi), qmin: lo, qmax: hi };
            let cw = ConvWeights::new(&wt, [c, 1, kh, kw], c, bits).unwrap();
            let acc = conv2d_with(Backend::Generic, &x, [n, c, h, w], zp as i32, &cw, &p).unwrap();
            let want: Vec<u8> =
                requantize(&acc.data, [n, c, ho * wo], Some(&bias), &mults, range).unwrap();
            // The profiler's timed entry runs the same plan and produces the same codes.
            let mut xh = vec![0u8; x.len()];
            to_hwc(&x, c, h * w, &mut xh);
            let mut fl = FusedLayer::conv(
                &wt, [c, 1, kh, kw], &p, [n, c, h, w], [ho, wo], xh, zp, bias.clone(), mults.clone(), range,
            )
            .expect("a fused depthwise layer on an AVX-512 VNNI CPU");
            let FusedPlan::Depthwise(dp) = &fl.plan else {
                return Err(TestCaseError::fail("a depthwise layer ran another plan"));
            };
            let want_round = match style {
                0 => mode::EXACT,
                _ => {
                    let signed = if range.qmin < range.zero_point { mode::SIGNED } else { 0 };
                    let zadd = if style == 2 || style == 5 { mode::ZADD } else { 0 };
                    let sat = if (lo, hi) == (0, 255) { mode::SAT } else { 0 };
                    mode::FLOOR | signed | zadd | sat
                }
            };
            prop_assert_eq!(dp.round, want_round);
            fl.run().unwrap();
            let mut got = vec![0u8; fl.out.len()];
            to_chw(&fl.out, c, ho * wo, &mut got);
            prop_assert_eq!(&got, &want);
            let step = FusedLayer::step(bias, mults, range);
            let dp = DwPlan::new(&step, &wt, &[c, 1, kh, kw], &p, [c, h, w], [ho, wo], zp as i32)
                .unwrap()
                .expect("a depthwise plan on an AVX-512 VNNI CPU");
            let mut xh = vec![0u8; x.len()];
            to_hwc(&x, c, h * w, &mut xh);
            let mut out = vec![0u8; n * ho * wo * c];
            let mut scratch = vec![Scratch::default()];
            let mut padded = Vec::new();
            run_depthwise(&xh, n, &dp, zp, &mut padded, &mut scratch, &mut out).unwrap();
            let mut got = vec![0u8; out.len()];
            to_chw(&out, c, ho * wo, &mut got);
            prop_assert_eq!(&got, &want);
            // The same in two blocks of output pixels split anywhere (as threads get them).
            out.fill(0);
            let m = n * ho * wo;
            let split = (next() as usize) % (m + 1);
            let g = crate::kernels::avx512_fused::DwGeom {
                hwc: [h + pads[0] + pads[2], w + pads[1] + pads[3], c],
                kernel: [kh, kw],
                strides: [sh, sw],
                dilations: [dil, dil],
                out_hw: [ho, wo],
            };
            let src: &[u8] = if pads == [0; 4] { &xh } else { &padded };
            let (o1, o2) = out.split_at_mut(split * c);
            // SAFETY: as in `run_depthwise`, whose checks passed above.
            unsafe {
                let k = crate::kernels::avx512_fused::depthwise;
                k(src, &g, &dp.w, &dp.ep, dp.zlh, dp.round, 0..split, o1.as_mut_ptr());
                k(src, &g, &dp.w, &dp.ep, dp.zlh, dp.round, split..m, o2.as_mut_ptr());
            }
            to_chw(&out, c, ho * wo, &mut got);
            prop_assert_eq!(got, want);
        }

        /// The vector input quantization equals the scalar expression (NaN and infinities too).
        #[test]
        fn vector_quantize_matches_scalar(
            x in proptest::collection::vec(-1e4f32..1e4, 0..70),
            scale in 1e-3f32..10.0,
            (zp, lo, hi) in (0i32..256, 0i32..100, 150i32..256),
        ) {
            let p = crate::ActParams { scale, zero_point: zp.clamp(lo, hi), qmin: lo, qmax: hi, offset: 0 };
            let mut x = x;
            x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5 * scale, -0.5 * scale]);
            x.extend((0..20).map(|i| (i as f32 - 10.0 + 0.5) * scale));
            let want: Vec<u8> = x.iter().map(|&v| p.quantize(v)).collect();
            let mut got = vec![0u8; x.len()];
            quantize_into(&x, &p, &mut got);
            prop_assert_eq!(got, want);
        }

        /// The vector residual Add equals the scalar formula.
        #[test]
        fn vector_add_matches_scalar(
            a in proptest::collection::vec(any::<u8>(), 0..70),
            za in 0i32..256, zb in 0i32..256,
            ma in 0i32..i32::MAX, mb in 0i32..i32::MAX,
            shift in 0u32..63,
            zo in 0i64..256,
        ) {
            let b: Vec<u8> = a.iter().rev().map(|v| v.wrapping_mul(7)).collect();
            let (k, zlh) = ([za, zb, ma, mb], [zo, 3, 251]);
            let mut want = vec![0u8; a.len()];
            add_generic(&a, &b, &mut want, k, shift, zlh);
            let mut got = vec![0u8; a.len()];
            add_vec(&a, &b, &mut got, k, shift, zlh);
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        /// The one-pass quantization of 3-channel images into channels-last codes equals the
        /// scalar quantization followed by the layout change (NaN, infinities, ties and values
        /// outside the code range included; plane lengths with and without a tail).
        #[test]
        fn rgb_quantize_hwc_matches_scalar_then_layout(
            n in 1usize..4,
            hw in 1usize..70,
            scale in 1e-3f32..10.0,
            (zp, lo, hi) in (0i32..256, 0i32..100, 150i32..256),
            seed in any::<u64>(),
        ) {
            let p = crate::ActParams { scale, zero_point: zp.clamp(lo, hi), qmin: lo, qmax: hi, offset: 0 };
            let mut s = seed | 1;
            let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
            let x: Vec<f32> = (0..n * 3 * hw)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    match s % 8 {
                        0 => specials[(s >> 8) as usize % specials.len()],
                        // Exact halves of a code step (ties).
                        1 => ((s >> 8) % 600) as f32 * 0.5 * scale - 150.0 * scale,
                        _ => ((s >> 11) as f64 / (1u64 << 53) as f64 * 4e3 - 2e3) as f32 * scale,
                    }
                })
                .collect();
            let chw: Vec<u8> = x.iter().map(|&v| p.quantize(v)).collect();
            let mut want = vec![0u8; x.len()];
            to_hwc(&chw, 3, hw, &mut want);
            let mut got = vec![0u8; x.len()];
            if quantize_rgb_hwc(&x, &p, hw, &mut got) {
                prop_assert_eq!(got, want);
            } else {
                prop_assert!(
                    !crate::kernels::vnni_available()
                        || !std::arch::is_x86_feature_detected!("avx512vbmi")
                );
            }
        }
    }

    /// The vector Add on every pair of codes equals the scalar formula, with multipliers that
    /// make exact halves (ties) and negative sums common, and shifts on both sides of the
    /// range where the output zero point is folded into the constant.
    #[test]
    fn vector_add_matches_scalar_on_all_pairs() {
        let a: Vec<u8> = (0..65536u32).map(|i| (i >> 8) as u8).collect();
        let b: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
        let cases: [([i32; 4], u32, i64); 8] = [
            ([128, 128, 1, 1], 1, 128),
            ([100, 37, 3, 5], 2, 0),
            ([0, 255, 1 << 20, 3 << 19], 21, 77),
            ([17, 200, 1_518_500_250, 1_073_741_824], 31, 128),
            ([5, 9, 7, 11], 0, 100),
            ([128, 128, 3 << 29, 5 << 27], 33, 255),
            ([128, 128, i32::MAX, i32::MAX], 56, 200),
            ([0, 0, i32::MAX, 1 << 30], 62, 3),
        ];
        for (k, shift, zo) in cases {
            for zlh in [[zo, 0, 255], [zo, 3, 251]] {
                let mut want = vec![0u8; a.len()];
                add_generic(&a, &b, &mut want, k, shift, zlh);
                // Odd lengths and offsets exercise the tails.
                for (lo, hi) in [(0, a.len()), (3, a.len() - 5)] {
                    let mut got = vec![0u8; hi - lo];
                    add_vec(&a[lo..hi], &b[lo..hi], &mut got, k, shift, zlh);
                    assert_eq!(got, want[lo..hi], "k {k:?} shift {shift} zlh {zlh:?}");
                }
            }
        }
    }

    /// The Add on 16-bit pairs (the vector Add's form for shifts 16..=31 with `lo ≥ z_o`) on
    /// every pair of codes equals the scalar formula: multipliers at the top of their range
    /// and with ties, both signs of the low halves, lengths with and without a tail.
    #[test]
    fn pair_add_matches_scalar_on_all_pairs() {
        if !crate::kernels::vnni_available() {
            return;
        }
        let a: Vec<u8> = (0..65536u32).map(|i| (i >> 8) as u8).collect();
        let b: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
        let cases: [([i32; 4], u32); 9] = [
            ([0, 124, 487_513_954, 2_072_884_925], 30),
            ([98, 133, 493_449_641, 1_233_332_620], 29),
            ([255, 255, i32::MAX - (1 << 15), 1 << 30], 31),
            ([128, 128, 3 << 14, 5 << 14], 16),
            ([17, 200, 1_518_500_250, 1_073_741_824], 31),
            ([3, 250, 0x4000_8000, 0x7FFF_7FFF - (1 << 15)], 31),
            ([77, 0, 1 << 20, 3 << 19], 21),
            // Sums on every residue: ties and one-below-ties.
            ([0, 0, 1, 256], 16),
            ([9, 4, 3, 1 << 9], 17),
        ];
        for (k, shift) in cases {
            for zlh in [[0, 0, 255], [0, 0, 200], [5, 9, 250], [255, 255, 255]] {
                // SAFETY: AVX-512 checked above.
                let pairs = unsafe { crate::kernels::avx512_fused::AddPairs::new(k, shift, zlh) };
                assert!(pairs.is_some(), "k {k:?} shift {shift} zlh {zlh:?}");
                let mut want = vec![0u8; a.len()];
                add_generic(&a, &b, &mut want, k, shift, zlh);
                for (lo, hi) in [(0, a.len()), (3, a.len() - 5), (7, 40)] {
                    let mut got = vec![0u8; hi - lo];
                    add_vec(&a[lo..hi], &b[lo..hi], &mut got, k, shift, zlh);
                    assert_eq!(got, want[lo..hi], "k {k:?} shift {shift} zlh {zlh:?}");
                }
            }
        }
    }

    /// Zero-point padding into a reused buffer that holds another layer's bytes (longer and
    /// shorter) equals a fresh padded copy.
    #[test]
    fn padding_overwrites_a_reused_buffer() {
        let cases = [
            (2, [3, 4, 3], [1, 2, 0, 1]),
            (1, [2, 0, 4], [1, 1, 1, 1]),
            (3, [5, 2, 1], [0, 0, 2, 0]),
            (1, [1, 1, 8], [2, 2, 2, 2]),
        ];
        let mut dirty = vec![0xA5u8; 1000];
        for (batch, hwc, pads) in cases {
            let [h, w, c] = hwc;
            let [pt, pl, pb, pr] = pads;
            let src: Vec<u8> = (0..batch * h * w * c).map(|i| i as u8).collect();
            let (hp, wp) = (h + pt + pb, w + pl + pr);
            let mut want = vec![7u8; batch * hp * wp * c + SLACK];
            for b in 0..batch {
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..c {
                            want[((b * hp + y + pt) * wp + x + pl) * c + ch] =
                                src[((b * h + y) * w + x) * c + ch];
                        }
                    }
                }
            }
            for len in [0, want.len() / 2, dirty.len()] {
                dirty.truncate(len);
                dirty.resize(len, 0xA5);
                pad_hwc(&src, batch, hwc, pads, 7, &mut dirty);
                assert_eq!(dirty, want, "hwc {hwc:?} pads {pads:?} reused length {len}");
                dirty.resize(1000, 0xA5);
            }
        }
    }

    #[test]
    fn layout_round_trip() {
        let x: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let mut h = vec![0; x.len()];
        to_hwc(&x, 3, 4, &mut h);
        assert_eq!(&h[..6], &[0, 4, 8, 1, 5, 9]);
        let mut back = vec![0; x.len()];
        to_chw(&h, 3, 4, &mut back);
        assert_eq!(back, x);
    }
}
