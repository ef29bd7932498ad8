//! Best-first dominance search over the core of a multiple-choice knapsack with one or two
//! rows (survey §3.3 Eq. 26; Pisinger's expanding-core idea for the MCKP, with HAWQ-V3's
//! size + BOPs budgets as the two rows).
//!
//! Starting from the Lagrangian solution `x0` (the item of least reduced cost in every group),
//! a state is a partial change of the groups decided so far: `(Δc_1, Δc_2, Δf)` relative to
//! `x0`; the groups are decided in a fixed order. States are expanded best bound first (a
//! binary heap), so only states whose bound lies below the optimum are ever expanded — the
//! work of one thresholded pass at the optimum, without knowing it in advance. Most states keep
//! a single child, so a state's best child is expanded next without the heap whenever no state
//! there comes first. A child is dropped when
//! - another state at its level with the same change in row 1 is no worse in row 2 and in
//!   objective (dominance; each `(level, Δc_1)` keeps a Pareto front over `(Δc_2, Δf)`), or
//! - its bound reaches the threshold (the best solution found or the caller's `θ`): per kept
//!   row `d`, the best objective over the remaining groups with row `d` integral (costs
//!   rounded *down* to a grid, exact when the costs share a unit that fits) and the other row
//!   Lagrangian-relaxed, tabulated per suffix (`O(1)` per table and state), or the cheapest
//!   completion breaks a row. Every multiplier `λ_e ≥ 0` of the relaxed row gives a valid
//!   table; the one tuned at the root is best for states near the root only, so extra tables
//!   at multiples of it (0.9×, 0.8×, 1.1×, …, within a cell budget) are kept and a state's
//!   bound is the largest over all tables — a discrete maximisation of its own partial
//!   Lagrangian dual.
//!
//! Every state is also a solution candidate (the remaining groups at `x0`), so incumbents
//! appear at every level. On the 560 × 6 benchmark instance of `bench/alloc/pulp_compare.py`
//! the search keeps ≈ 28 k states (the earlier rounds of growing thresholds over a layered
//! programme kept ≈ 0.13 M), and ≈ 2.6 k on the core left after fixing (below).
//!
//! Fixing ([`CoreDp::unusable_items`]): per main table, the levels before each item are
//! tabulated forward over the rooms left in its row (the same grid; rooms at or above the
//! suffix's largest cell sum are one cell, rooms below its least are dropped) and joined with
//! the suffix table after the item: `min_r P_t[r] + v_i + T_{t+1}(r − w_i)` bounds every
//! solution that takes item `i`, and an item whose bound reaches the threshold cannot be in a
//! solution below it. Cost: two passes per item over the prefix window (min-plus with the
//! suffix row, and the next prefix row), about twice a table build.
//!
//! Table rows are computed in f64 (compiled for AVX2 when the CPU has it: min and add are
//! exact, so the values are the same bit for bit) and stored rounded down to f32 (half the
//! memory traffic; a stored value never exceeds the exact one, so every bound stays valid);
//! the rows need no prefix-minimum pass, since each item's contribution to a row is already
//! non-increasing.
//!
//! Items whose reduced cost reaches the core's gap cannot be in a solution below `LB + gap`
//! and are left out. With threshold `θ ≤ LB + gap`, the search finds the best solution of
//! objective `< θ` or proves that none exists.
//! Complexity: `O(S (log S + k·T))` for `S` kept states, `k` items per group and `T` tables;
//! tables `O(K · C)` for `K` core groups and `C` cells (built on two threads when large);
//! memory about 100 bytes per kept state (node, heap entry, dominance front), at most
//! [`MAX_NODES`] states per search.

use crate::problem::fits;
use crate::reduce::Reduced;
use crate::simd::{dispatch_avx2, min_add_into, min_sum};

/// Relative objective tolerance: states within it of the threshold are dropped (so two
/// solutions closer than this count as equal).
pub(crate) const OBJ_RTOL: f64 = 1e-12;
/// Multiples of the tuned multiplier of the relaxed row for extra bound tables, most useful
/// first (states below the root mostly want a slightly smaller multiplier than the root).
const EXTRA_FACTORS: &[f64] = &[
    0.9, 0.8, 1.1, 0.7, 1.25, 0.6, 1.4, 0.95, 1.05, 0.85, 1.2, 0.5,
];
/// Cell budget of the extra tables, in quarters of the main tables' budget.
const EXTRA_BUDGET_NUM: usize = 5;
/// Golden-section steps that tune the relaxed row's multiplier of each table.
const TUNE_STEPS: usize = 3;
/// Tables are built on two threads when they hold at least this many cells in all.
const PARALLEL_CELLS: usize = 1_000_000;
/// A main table's forced bounds are computed only when its root bound gains at least this
/// fraction of the best main table's gain over the plain Lagrangian bound.
const FIX_KEEP_FRAC: f64 = 0.5;
/// Largest number of states kept by one search (about 40 bytes each) before giving up.
const MAX_NODES: usize = 8_000_000;

/// Limits of one run: a deadline and the states it may still create (decremented).
pub(crate) struct CoreLimits {
    /// Wall-clock deadline.
    pub deadline: Option<std::time::Instant>,
    /// States left.
    pub states: u64,
}

/// Outcome of one thresholded run.
pub(crate) enum CoreOutcome {
    /// The best solution with objective below the threshold (item per group), or `None` when
    /// no solution lies below it.
    Done(Option<(f64, Vec<usize>)>),
    /// A state or time limit stopped the run: every solution below the threshold not found
    /// is at least `bound`; `best` is the best solution found below the threshold, if any.
    Aborted {
        /// Lower bound on the solutions below the threshold that were not found.
        bound: f64,
        /// Best solution found (objective, item per group).
        best: Option<(f64, Vec<usize>)>,
    },
}

/// One row's suffix table: `h[t][q]` = least `Σ (Δf + Σ_{e≠d} λ_e Δc_e)` over groups `t..`
/// with `Σ floor(Δc_d / unit) ≤ q`, kept only on the window of `q` that states can reach
/// (outside it, lookups return a value no larger than the true one, so bounds stay valid).
struct SufTable {
    d: usize,
    lam: Vec<f64>,
    /// Cells per unit of row `d`.
    inv_unit: f64,
    /// Least reachable cell sum of the suffix (below: infeasible).
    suf_lo: Vec<i64>,
    /// Largest cell sum of the suffix (at or above: the row does not bind).
    suf_hi: Vec<i64>,
    /// Unconstrained least value of the suffix.
    umin: Vec<f64>,
    win_lo: Vec<i64>,
    start: Vec<usize>,
    width: Vec<usize>,
    /// Stored rounded down to `f32` (half the memory; never above the f64 value).
    h: Vec<f32>,
}

/// Grid unit of row `d` for a table of about `budget` cells over `levels` (the exact common
/// unit of the changes when it fits), and the number of cells it gives: the cells per unit are
/// the widths of the windows of [`window`] (rooms `slack − prefix change` that the suffix can
/// still use), so the estimate matches the table.
fn grid_unit(levels: &[Level], d: usize, budget: usize, slack_d: f64) -> (f64, f64) {
    let mut g = 0u64;
    let mut integral = true;
    let mut spans = Vec::with_capacity(levels.len());
    for lv in levels {
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for &(_, _, dc) in lv {
            let v = dc[d];
            lo = lo.min(v);
            hi = hi.max(v);
            let a = v.abs();
            if a != a.round() || a > 1e15 {
                integral = false;
            } else if integral {
                let (mut x, mut y) = (g, a as u64);
                while y != 0 {
                    (x, y) = (y, x % y);
                }
                g = x;
            }
        }
        spans.push((lo, hi));
    }
    let k = spans.len();
    let mut suf = vec![(0.0f64, 0.0f64); k + 1];
    for t in (0..k).rev() {
        suf[t] = (suf[t + 1].0 + spans[t].0, suf[t + 1].1 + spans[t].1);
    }
    let (mut pmin, mut pmax) = (0.0f64, 0.0f64);
    let mut cells_per_unit = 0.0;
    for t in 0..=k {
        let top = (slack_d - pmin).min(suf[t].1);
        let bot = (slack_d - pmax).max(suf[t].0);
        cells_per_unit += (top - bot).max(0.0);
        if t < k {
            pmin += spans[t].0;
            pmax += spans[t].1;
        }
    }
    let budget = budget.max(16) as f64;
    let exact = if integral && g > 0 { g as f64 } else { 0.0 };
    let per = |u: f64| cells_per_unit / u + 5.0 * levels.len() as f64;
    if exact > 0.0 && per(exact) <= budget {
        return (exact, per(exact));
    }
    if cells_per_unit == 0.0 {
        return (exact.max(1.0), per(exact.max(1.0)));
    }
    let mut u = cells_per_unit / (budget - 5.0 * levels.len() as f64).max(budget / 4.0);
    if exact > 0.0 {
        u = (u / exact).ceil() * exact;
    }
    (u, per(u))
}

/// Cell sums of row `d` on a grid of `unit` per suffix of `levels` (least and largest) and the
/// window of rooms states can reach at each level (start and width): slack minus the
/// prefix's change, which lies within the prefix's least and largest changes.
type Window = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<usize>);

fn window(levels: &[Level], d: usize, unit: f64, slack_d: f64) -> Window {
    let k = levels.len();
    let cell = |v: f64| -> i64 { (v / unit).floor() as i64 };
    let mut suf_lo = vec![0i64; k + 1];
    let mut suf_hi = vec![0i64; k + 1];
    for t in (0..k).rev() {
        let (a, b) = levels[t].iter().fold((i64::MAX, i64::MIN), |(a, b), it| {
            let c = cell(it.2[d]);
            (a.min(c), b.max(c))
        });
        suf_lo[t] = suf_lo[t + 1] + a;
        suf_hi[t] = suf_hi[t + 1] + b;
    }
    let mut win_lo = vec![0i64; k + 1];
    let mut width = vec![0usize; k + 1];
    let (mut pmin, mut pmax) = (0.0f64, 0.0f64);
    for t in 0..=k {
        let top = (((slack_d - pmin) / unit).floor() as i64 + 2).min(suf_hi[t]);
        let bot = (((slack_d - pmax) / unit).floor() as i64 - 2).max(suf_lo[t]);
        let (bot, top) = if top < bot {
            (suf_lo[t], suf_lo[t])
        } else {
            (bot, top)
        };
        win_lo[t] = bot;
        width[t] = (top - bot) as usize + 1;
        if t < k {
            let (a, b) = levels[t].iter().fold((0.0f64, 0.0f64), |(a, b), it| {
                (a.min(it.2[d]), b.max(it.2[d]))
            });
            pmin += a;
            pmax += b;
        }
    }
    (suf_lo, suf_hi, win_lo, width)
}

/// The grid of one row's tables over a core: cell weights of every item, and per level the
/// least and largest cell sums of the suffix and the window of reachable rooms. It does not
/// depend on the multipliers, so the tuning builds it once for all its trial tables.
struct Grid {
    d: usize,
    unit: f64,
    /// Cell weight of every item (`floor(Δc_d / unit)`), level by level.
    w: Vec<i64>,
    /// Offset of each level's items in `w`.
    first: Vec<usize>,
    suf_lo: Vec<i64>,
    suf_hi: Vec<i64>,
    win_lo: Vec<i64>,
    width: Vec<usize>,
}

impl Grid {
    /// Cells of a table with every level's row.
    fn cells(&self) -> usize {
        self.width.iter().sum()
    }

    fn new(levels: &[Level], d: usize, unit: f64, slack_d: f64) -> Self {
        let (suf_lo, suf_hi, win_lo, width) = window(levels, d, unit, slack_d);
        let w = levels
            .iter()
            .flat_map(|lv| lv.iter().map(move |it| (it.2[d] / unit).floor() as i64))
            .collect();
        let mut first = Vec::with_capacity(levels.len() + 1);
        first.push(0usize);
        for lv in levels {
            first.push(first.last().copied().unwrap_or(0) + lv.len());
        }
        Self {
            d,
            unit,
            w,
            first,
            suf_lo,
            suf_hi,
            win_lo,
            width,
        }
    }
}

impl SufTable {
    /// Builds the table on `grid` (every level's row with `all_rows`, else only the root's:
    /// then only lookups at level 0 are valid); on x86-64 CPUs with AVX2 the same code is
    /// compiled for 4-lane vectors.
    fn build(levels: &[Level], grid: &Grid, lam: &[f64], all_rows: bool) -> Self {
        dispatch_avx2!(
            SufTable::new_impl,
            (levels: &[Level], grid: &Grid, lam: &[f64], all_rows: bool) -> SufTable
        )
    }

    #[inline(always)]
    fn new_impl(levels: &[Level], grid: &Grid, lam: &[f64], all_rows: bool) -> Self {
        let d = grid.d;
        let unit = grid.unit;
        let k = levels.len();
        let (suf_lo, suf_hi, win_lo, width) = (
            grid.suf_lo.clone(),
            grid.suf_hi.clone(),
            grid.win_lo.clone(),
            grid.width.clone(),
        );
        let mut umin = vec![0.0f64; k + 1];
        for t in (0..k).rev() {
            let u = levels[t]
                .iter()
                .fold(f64::INFINITY, |u, it| u.min(priced(lam, it.1, &it.2)));
            umin[t] = umin[t + 1] + u;
        }
        // Rows are stored from the last level to the first, in the order they are computed
        // (appended: no zeroing pass over the table).
        let mut start = vec![0usize; k + 1];
        let mut total = 0;
        for t in (0..=k).rev() {
            start[t] = total;
            total += width[t];
        }
        let capacity = if all_rows { total } else { width[0] };
        let mut tb = Self {
            d,
            lam: lam.to_vec(),
            inv_unit: 1.0 / unit,
            suf_lo,
            suf_hi,
            umin,
            win_lo,
            start,
            width,
            h: Vec::with_capacity(capacity),
        };
        // Rows are computed exactly in f64 (two scratch rows) and stored rounded down to f32:
        // half the memory traffic, and a stored value never exceeds the true one.
        let max_w = tb.width.iter().copied().max().unwrap_or(0);
        // The last level's row is all zero (so is its stored copy).
        let mut next_buf = vec![0.0f64; max_w];
        let mut row_buf = vec![0.0f64; max_w];
        if all_rows || k == 0 {
            tb.h.resize(tb.width[k], 0.0);
        }
        for t in (0..k).rev() {
            let wt = tb.width[t];
            let lo_t = tb.win_lo[t];
            let (nlo, nw) = (tb.win_lo[t + 1], tb.width[t + 1]);
            let (next_lo, next_umin) = (tb.suf_lo[t + 1], tb.umin[t + 1]);
            let row = &mut row_buf[..wt];
            let next = &next_buf[..nw];
            for (n, it) in levels[t].iter().enumerate() {
                let w = grid.w[grid.first[t] + n];
                let val = priced(lam, it.1, &it.2);
                // q (absolute lo_t + q) reads cell lo_t + q - w of level t + 1, inside its
                // window for q in [a, b); below it the first cell (or nothing below the
                // suffix's least sum), above it the unconstrained least value.
                let a = (nlo + w - lo_t).clamp(0, wt as i64) as usize;
                let b = (nlo + nw as i64 + w - lo_t).clamp(0, wt as i64) as usize;
                let first = (next_lo + w - lo_t).clamp(0, a as i64) as usize;
                let below = next[0] + val;
                let above = next_umin + val;
                let inside: &[f64] = if a < b {
                    let off = (lo_t + a as i64 - w - nlo) as usize;
                    &next[off..off + (b - a)]
                } else {
                    &[]
                };
                if n == 0 {
                    // The first item writes the row (nothing below its reach).
                    row[..first].fill(f64::INFINITY);
                    row[first..a].fill(below);
                    for (slot, &nv) in row[a..b.max(a)].iter_mut().zip(inside) {
                        *slot = nv + val;
                    }
                    row[b.max(a)..].fill(above);
                    continue;
                }
                // Plain minima (no branch, no masked store) so that the loops vectorise.
                for slot in &mut row[first..a] {
                    *slot = slot.min(below);
                }
                min_add_into(&mut row[a..b.max(a)], inside, val);
                for slot in &mut row[b.max(a)..] {
                    *slot = slot.min(above);
                }
            }
            // Each item's contribution is non-increasing in q (the next row is, its value
            // below the window is its first cell and above it the least value), so their
            // minimum already is: no prefix-minimum pass is needed.
            debug_assert!(row.windows(2).all(|w| w[1] <= w[0]));
            if all_rows {
                debug_assert_eq!(tb.h.len(), tb.start[t]);
                tb.h.extend(row.iter().map(|&v| down_f32(v)));
            } else if t == 0 {
                tb.start[0] = 0;
                tb.h.extend(row.iter().map(|&v| down_f32(v)));
            }
            std::mem::swap(&mut next_buf, &mut row_buf);
        }
        tb
    }

    /// `get(t, q)` for `q` in `lo..=hi`, into `out` (the window's cells converted in one
    /// pass, the rest filled).
    fn row_into(&self, t: usize, lo: i64, hi: i64, out: &mut Vec<f64>) {
        out.clear();
        if hi < lo {
            return;
        }
        out.resize((hi - lo + 1) as usize, 0.0);
        let (wlo, whi) = (self.win_lo[t], self.win_lo[t] + self.width[t] as i64 - 1);
        let row = &self.h[self.start[t]..self.start[t] + self.width[t]];
        // Cells of q in [a, b] lie in the window.
        let a = lo.max(wlo).max(self.suf_lo[t]);
        let b = hi.min(whi).min(self.suf_hi[t] - 1);
        for (j, slot) in out.iter_mut().enumerate() {
            let q = lo + j as i64;
            if q >= a {
                break;
            }
            *slot = self.get(t, q);
        }
        if a <= b {
            let dst = &mut out[(a - lo) as usize..=(b - lo) as usize];
            for (slot, &v) in dst.iter_mut().zip(&row[(a - wlo) as usize..]) {
                *slot = v as f64;
            }
        }
        let from = (b + 1).max(a).max(lo);
        if from <= hi {
            let umin = self.umin[t];
            let first = (from - lo) as usize;
            for (j, slot) in out[first..].iter_mut().enumerate() {
                let q = from + j as i64;
                *slot = if q >= self.suf_hi[t] || q > whi {
                    umin
                } else {
                    self.get(t, q)
                };
            }
        }
    }

    /// Value at cell sum `q` of the suffix `t..`; never above the true value.
    #[inline]
    fn get(&self, t: usize, q: i64) -> f64 {
        if q < self.suf_lo[t] {
            return f64::INFINITY;
        }
        if q >= self.suf_hi[t] {
            return self.umin[t];
        }
        let i = q - self.win_lo[t];
        if i < 0 {
            return self.h[self.start[t]] as f64;
        }
        if i as usize >= self.width[t] {
            return self.umin[t];
        }
        self.h[self.start[t] + i as usize] as f64
    }

    /// Least value of the groups `t..` when at most `room` is left in row `d` (inf if none).
    #[inline]
    fn at(&self, t: usize, room: f64) -> f64 {
        let x = room * self.inv_unit + 1e-9;
        if x >= self.suf_hi[t] as f64 {
            return self.umin[t];
        }
        if x < self.suf_lo[t] as f64 {
            return f64::INFINITY;
        }
        // floor without a libm call: x lies within the i64 range here.
        let i = x as i64;
        let q = if (i as f64) > x { i - 1 } else { i };
        self.get(t, q)
    }
}

impl SufTable {
    /// For every item of every level, the least value (`Σ Δf + Σ_e λ_e Δc_e`, without the
    /// constant) of a choice that takes it: the levels before it tabulated forward over the
    /// rooms left in row `d` (`root_room` cells at the root; rooms at or above a suffix's
    /// largest cell sum are one cell, rooms below its least are dropped), joined with this
    /// suffix table at the item's level (`grid`: the one the table was built on). A lower
    /// bound, since every lookup is.
    fn forced(&self, levels: &[Level], grid: &Grid, root_room: i64) -> Vec<Vec<f64>> {
        let k = levels.len();
        let mut out: Vec<Vec<f64>> = levels
            .iter()
            .map(|lv| vec![f64::INFINITY; lv.len()])
            .collect();
        // Prefix values over the rooms [plo, phi].
        let (mut plo, mut phi) = (root_room.min(self.suf_hi[0]), root_room.min(self.suf_hi[0]));
        if plo < self.suf_lo[0] {
            return out;
        }
        let mut p = vec![0.0f64];
        let mut np: Vec<f64> = Vec::new();
        let mut trow: Vec<f64> = Vec::new();
        let mut tail: Vec<f64> = Vec::new();
        for t in 0..k {
            let items: Vec<(i64, f64)> = levels[t]
                .iter()
                .zip(&grid.w[grid.first[t]..])
                .map(|(it, &w)| (w, priced(&self.lam, it.1, &it.2)))
                .collect();
            let wmin = items.iter().map(|x| x.0).min().unwrap_or(0);
            let wmax = items.iter().map(|x| x.0).max().unwrap_or(0);
            // The suffix after level t at rooms [plo − wmax, phi − wmin].
            let base = plo - wmax;
            self.row_into(t + 1, base, phi - wmin, &mut trow);
            for (slot, &(w, val)) in out[t].iter_mut().zip(&items) {
                let off = (wmax - w) as usize;
                *slot = val + min_sum(&p, &trow[off..]);
            }
            if t + 1 == k {
                break;
            }
            let nlo = (plo - wmax).max(self.suf_lo[t + 1]);
            let nhi = (phi - wmin).min(self.suf_hi[t + 1]);
            if nlo > nhi {
                break; // no prefix fits the rest
            }
            np.clear();
            np.resize((nhi - nlo + 1) as usize, f64::INFINITY);
            // Least prefix value at each room and above (for the folds into the top cell).
            // (Only rooms above nhi + wmin fold.)
            let tail_from = (nhi + wmin + 1).max(plo);
            if phi >= tail_from {
                tail.clear();
                tail.extend_from_slice(&p[(tail_from - plo) as usize..]);
                for j in (0..tail.len().saturating_sub(1)).rev() {
                    tail[j] = tail[j].min(tail[j + 1]);
                }
            }
            for &(w, val) in &items {
                // Rooms r of the prefix go to r − w, kept within [nlo, nhi]; above nhi (the
                // next suffix's largest sum) they fold into its cell.
                let a = (nlo + w).max(plo);
                let b = (nhi + w).min(phi);
                if a <= b {
                    min_add_into(
                        &mut np[(a - w - nlo) as usize..=(b - w - nlo) as usize],
                        &p[(a - plo) as usize..=(b - plo) as usize],
                        val,
                    );
                }
                if phi > nhi + w {
                    let from = (nhi + w + 1).max(plo);
                    let least = tail[(from - tail_from) as usize];
                    let top = np.len() - 1;
                    np[top] = np[top].min(least + val);
                }
            }
            std::mem::swap(&mut p, &mut np);
            (plo, phi) = (nlo, nhi);
        }
        out
    }
}

/// A change `(Δf, Δc)` priced in a table: `Δf + Σ_e λ_e Δc_e` (`λ_d = 0` for the table's row).
#[inline(always)]
fn priced(lam: &[f64], df: f64, dc: &[f64; 2]) -> f64 {
    let mut v = df;
    for (e, &l) in lam.iter().enumerate() {
        v += l * dc[e];
    }
    v
}

/// `v` as an `f32` that is never above it: capped at `f32::MAX` (the lookups never read an
/// unreachable cell, the only infinite ones), then lowered by 2⁻²² relative (more than the f32
/// rounding error) and 1e-30 absolute (for tiny values) before rounding. Branch-free so that
/// the storing loop vectorises.
#[inline]
fn down_f32(v: f64) -> f32 {
    let v = less(v, f32::MAX as f64);
    (v - v.abs() * (1.0 / 4_194_304.0) - 1e-30) as f32
}

/// The smaller of `a` and `b` for operands that are never NaN: one `minpd` per vector in the
/// table loops (`f64::min`'s NaN rule costs a compare and a blend more).
#[inline(always)]
pub(crate) fn less(a: f64, b: f64) -> f64 {
    if a < b {
        a
    } else {
        b
    }
}

/// A partial choice: its changes of objective and rows relative to `x0`.
#[derive(Clone, Copy)]
struct St {
    df: f64,
    dc: [f64; 2],
}

/// A state of the best-first search with its place in the tree.
#[derive(Clone, Copy)]
struct Node {
    s: St,
    /// Groups decided (the state's level).
    level: u32,
    /// Index of the parent node (`u32::MAX` for the root).
    parent: u32,
    /// Item offset chosen in the group just added.
    item: u32,
}

type Level = Vec<(usize, f64, [f64; 2])>;

/// The core of a one- or two-row MCKP around its Lagrangian solution, with suffix bound tables.
pub(crate) struct CoreDp<'a> {
    m: usize,
    lam: &'a [f64],
    x0: Vec<usize>,
    f0: f64,
    used0: [f64; 2],
    caps: [f64; 2],
    slack: [f64; 2],
    order: Vec<usize>,
    levels: Vec<Level>,
    tables: Vec<SufTable>,
    /// The grid of each row's tables (the main and extra tables of a row share it).
    grids: Vec<Grid>,
    suf_min: Vec<[f64; 2]>,
}

impl<'a> CoreDp<'a> {
    /// The core of the items with reduced cost `< gap` (`alive`: each group's items after
    /// presolve; `rc`: reduced costs at `lam`). With two rows, `hint[d]` (from
    /// [`CoreDp::tuned`] of an earlier core) fixes the other row's multiplier in row `d`'s
    /// table instead of tuning it again. With `extras`, more tables at multiples of that
    /// multiplier strengthen the bound of states far from the root (within a cell budget).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        r: &Reduced,
        alive: &[Vec<usize>],
        lam: &'a [f64],
        rc: &[f64],
        gap: f64,
        max_cells: usize,
        hint: Option<&[f64]>,
        extras: bool,
    ) -> Self {
        let m = r.m();
        debug_assert!((1..=2).contains(&m));
        let c2 = |i: usize| -> [f64; 2] {
            let c = r.c(i);
            [c[0], if m > 1 { c[1] } else { 0.0 }]
        };
        let x0: Vec<usize> = alive
            .iter()
            .map(|v| {
                v.iter()
                    .copied()
                    .min_by(|&a, &b| rc[a].total_cmp(&rc[b]).then(a.cmp(&b)))
                    .expect("non-empty")
            })
            .collect();
        let f0: f64 = x0.iter().map(|&i| r.obj[i]).sum();
        let mut used0 = [0.0f64; 2];
        for &i in &x0 {
            let c = c2(i);
            used0[0] += c[0];
            used0[1] += c[1];
        }
        let caps = [r.caps[0], if m > 1 { r.caps[1] } else { f64::INFINITY }];
        let slack = [caps[0] - used0[0], caps[1] - used0[1]];
        let mut cand: Vec<(usize, Level)> = Vec::new();
        for (g, v) in alive.iter().enumerate() {
            let base = x0[g];
            let b = c2(base);
            let mut lv = vec![(base, 0.0, [0.0, 0.0])];
            for &i in v {
                if i != base && rc[i] < gap {
                    let c = c2(i);
                    lv.push((i, r.obj[i] - r.obj[base], [c[0] - b[0], c[1] - b[1]]));
                }
            }
            if lv.len() > 1 {
                cand.push((g, lv));
            }
        }
        // Widest Lagrangian ranges (Σ_d λ_d · span of Δc_d) first: those groups are few and
        // decided early, and the fine ones behind them are what the tables summarise.
        let weight = |lv: &Level| -> f64 {
            (0..m)
                .map(|d| {
                    let (a, b) = lv.iter().fold((0.0f64, 0.0f64), |(a, b), it| {
                        (a.min(it.2[d]), b.max(it.2[d]))
                    });
                    (b - a) * lam[d]
                })
                .sum()
        };
        let mut keyed: Vec<(f64, usize, Level)> = cand
            .into_iter()
            .map(|(g, lv)| (weight(&lv), g, lv))
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let (order, levels): (Vec<usize>, Vec<Level>) =
            keyed.into_iter().map(|(_, g, lv)| (g, lv)).unzip();
        let k_n = levels.len();
        let root_of = |tb: &SufTable| -> f64 {
            let mut v = f0 + tb.at(0, slack[tb.d]);
            for e in 0..m {
                v -= tb.lam[e] * slack[e];
            }
            v
        };
        // One table per row, the row with the finest grid first; with two rows the other
        // row's multiplier is tuned for the best root bound (the bound is concave in it).
        let mut tables: Vec<SufTable> = Vec::new();
        let mut grids: Vec<Grid> = Vec::new();
        if !levels.is_empty() {
            let estimates: Vec<(f64, f64)> = (0..m)
                .map(|d| grid_unit(&levels, d, max_cells, slack[d]))
                .collect();
            let primary = (0..m)
                .min_by(|&a, &b| estimates[a].1.total_cmp(&estimates[b].1))
                .expect("m >= 1");
            let share = max_cells / m;
            grids = (0..m)
                .map(|d| {
                    Grid::new(
                        &levels,
                        d,
                        grid_unit(&levels, d, share, slack[d]).0,
                        slack[d],
                    )
                })
                .collect();
            // (row, multipliers, cells) of every table: the main ones first (their multiplier
            // tuned on a coarse grid unless hinted), then the extras.
            let mut specs: Vec<(usize, Vec<f64>, usize)> = Vec::new();
            for d in std::iter::once(primary).chain((0..m).filter(|&d| d != primary)) {
                let cells = grids[d].cells();
                let with_x = |x: f64| {
                    let mut l = lam.to_vec();
                    if m == 2 {
                        l[1 - d] = x;
                    }
                    l[d] = 0.0;
                    l
                };
                let x = if m == 1 {
                    0.0
                } else if let Some(h) = hint {
                    h[d]
                } else {
                    let (cu, _) = grid_unit(&levels, d, share / 16, slack[d]);
                    let coarse = Grid::new(&levels, d, cu, slack[d]);
                    tune_multiplier(lam[1 - d], TUNE_STEPS, |x| {
                        // (Only the root's row is kept: the root bound is all that is read.)
                        root_of(&SufTable::build(&levels, &coarse, &with_x(x), false))
                    })
                };
                specs.push((d, with_x(x), cells));
            }
            if m == 2 && extras {
                // The best multiplier of the relaxed row differs from state to state: tables at
                // multiples of the tuned one (every one a valid bound), cheapest rows first,
                // within a cell budget.
                let mut mains: Vec<(usize, f64, usize)> = specs
                    .iter()
                    .map(|(d, l, cells)| (*d, l[1 - d], *cells))
                    .collect();
                mains.sort_by_key(|v| v.2);
                let mut used = 0usize;
                for &f in EXTRA_FACTORS {
                    for &(d, x, cells) in &mains {
                        if x <= 0.0 || used + cells > max_cells * EXTRA_BUDGET_NUM / 4 {
                            continue;
                        }
                        used += cells;
                        let mut l = lam.to_vec();
                        l[1 - d] = x * f;
                        l[d] = 0.0;
                        specs.push((d, l, cells));
                    }
                }
            }
            tables = build_tables(&levels, &grids, &specs);
        }
        let mut suf_min = vec![[0.0f64; 2]; k_n + 1];
        for t in (0..k_n).rev() {
            for d in 0..m {
                let mn = levels[t].iter().map(|it| it.2[d]).fold(0.0, f64::min);
                suf_min[t][d] = suf_min[t + 1][d] + mn;
            }
        }
        Self {
            m,
            lam,
            x0,
            f0,
            used0,
            caps,
            slack,
            order,
            levels,
            tables,
            grids,
            suf_min,
        }
    }

    /// Per row `d`, the other row's multiplier used in row `d`'s table (for `hint`).
    pub(crate) fn tuned(&self) -> Vec<f64> {
        let mut h = vec![f64::NAN; self.m];
        for tb in &self.tables {
            if self.m == 2 && h[tb.d].is_nan() {
                h[tb.d] = tb.lam[1 - tb.d];
            }
        }
        h.iter()
            .map(|v| if v.is_nan() { 0.0 } else { *v })
            .collect()
    }

    /// Per level and item, a lower bound on every solution of the core that takes the item:
    /// the best of its forced bounds on the main tables ([`SufTable::forced`]). A main table
    /// whose root bound gains less than [`FIX_KEEP_FRAC`] of the best one's gain over the
    /// plain Lagrangian bound is skipped (its forced bounds rarely fix an item the other
    /// one does not, and they cost about two table builds).
    fn forced_bounds(&self) -> Vec<Vec<f64>> {
        let mut best: Vec<Vec<f64>> = self
            .levels
            .iter()
            .map(|lv| vec![f64::NEG_INFINITY; lv.len()])
            .collect();
        let zero = St {
            df: 0.0,
            dc: [0.0, 0.0],
        };
        let plain = self.bound(0, &zero, f64::NEG_INFINITY);
        let mains = &self.tables[..self.m.min(self.tables.len())];
        let cst = |tb: &SufTable| {
            let mut c = self.f0;
            for e in 0..self.m {
                c -= tb.lam[e] * self.slack[e];
            }
            c
        };
        let roots: Vec<f64> = mains
            .iter()
            .map(|tb| cst(tb) + tb.at(0, self.slack[tb.d]))
            .collect();
        let top = roots.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for (tb, &root) in mains.iter().zip(&roots) {
            if root < top && root - plain < FIX_KEEP_FRAC * (top - plain) {
                continue;
            }
            let cst = cst(tb);
            let room = (self.slack[tb.d] * tb.inv_unit + 1e-9).floor() as i64;
            let forced = tb.forced(&self.levels, &self.grids[tb.d], room);
            for (b, f) in best.iter_mut().zip(forced) {
                for (x, y) in b.iter_mut().zip(f) {
                    *x = x.max(cst + y);
                }
            }
        }
        best
    }

    /// The core items that no solution below `cut` can take (forced bound at least `cut`);
    /// `None` when some level keeps no item (no solution lies below `cut`).
    pub(crate) fn unusable_items(&self, cut: f64) -> Option<Vec<usize>> {
        let mut gone = Vec::new();
        for (lv, b) in self.levels.iter().zip(self.forced_bounds()) {
            let before = gone.len();
            gone.extend(
                lv.iter()
                    .zip(&b)
                    .filter(|(_, &v)| v >= cut)
                    .map(|(it, _)| it.0),
            );
            if gone.len() - before == lv.len() {
                return None;
            }
        }
        Some(gone)
    }

    /// Groups in the core.
    pub(crate) fn core_groups(&self) -> usize {
        self.levels.len()
    }

    /// Lower bound on every solution that uses only core items.
    pub(crate) fn root_bound(&self) -> f64 {
        self.bound(
            0,
            &St {
                df: 0.0,
                dc: [0.0, 0.0],
            },
            f64::INFINITY,
        )
    }

    /// Lower bound on the completions of state `s` at level `t`; stops early once it
    /// reaches `cut`.
    fn bound(&self, t: usize, s: &St, cut: f64) -> f64 {
        let (m, lam, slack) = (self.m, self.lam, &self.slack);
        // Plain Lagrangian bound, then each row kept integral with the others relaxed.
        let mut b = self.f0 + s.df;
        for e in 0..m {
            b += lam[e] * (s.dc[e] - slack[e]);
        }
        if b >= cut {
            return b;
        }
        for tb in &self.tables {
            let d = tb.d;
            let mut v = self.f0 + s.df + tb.at(t, slack[d] - s.dc[d]);
            for e in 0..m {
                v += tb.lam[e] * (s.dc[e] - slack[e]);
            }
            b = b.max(v);
            if b >= cut {
                return b;
            }
        }
        b
    }

    fn feasible(&self, dc: &[f64; 2]) -> bool {
        (0..self.m).all(|d| fits(self.used0[d] + dc[d], self.caps[d]))
    }

    /// Best solution of objective `< theta` over the core, or a proof that there is none, by a
    /// best-first search: states are expanded in order of their bound, so that only states whose
    /// bound lies below the optimum (or `theta`) are ever expanded — one run at the final
    /// threshold instead of rounds of growing thresholds. A child is dropped when its bound
    /// reaches the best objective found so far, when the cheapest completion breaks a row, or
    /// when a state at the same level with the same change in row 1 is no worse in row 2 and in
    /// objective (dominance; any completion of the dropped state completes the other one at no
    /// higher objective and cost). A state is a solution when it fits with every remaining group
    /// at its Lagrangian item, so incumbents appear at every level and tighten the threshold.
    pub(crate) fn search_best_first(&self, theta: f64, limits: &mut CoreLimits) -> CoreOutcome {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashMap};
        let m = self.m;
        let k_n = self.levels.len();
        let eps = if theta.is_finite() {
            OBJ_RTOL * theta.abs().max(1.0)
        } else {
            0.0
        };
        let mut thr = theta;
        let mut nodes: Vec<Node> = Vec::new();
        let mut best: Option<(f64, u32)> = None;
        let root = St {
            df: 0.0,
            dc: [0.0, 0.0],
        };
        let root_bnd = self.root_bound();
        if self.feasible(&root.dc) && self.f0 < thr - eps {
            thr = self.f0;
            best = Some((self.f0, u32::MAX));
        }
        if k_n == 0 || root_bnd >= thr - eps {
            return self.best_first_answer(best, &nodes);
        }
        nodes.push(Node {
            s: root,
            level: 0,
            parent: u32::MAX,
            item: 0,
        });
        let mut heap: BinaryHeap<Reverse<(OrdF64, u32)>> = BinaryHeap::new();
        heap.push(Reverse((OrdF64(root_bnd), 0)));
        // Dominance buckets: (level, Δc_1 bits) → Δc_2 (ordered key) → Δf of the states kept.
        let mut seen: HashMap<(u32, u64), Front, FastHash> = HashMap::default();
        let mut pops = 0u64;
        // The state to expand next: the heap's least, or the best child of the last state
        // when no state in the heap comes before it (most states keep a single child, so the
        // heap is bypassed along such chains; the order of expansion is the same).
        let mut next = heap.pop().map(|Reverse((OrdF64(b), idx))| (b, idx));
        let mut kids: Vec<(f64, u32)> = Vec::new();
        while let Some((b, idx)) = next {
            if b >= thr - eps {
                break;
            }
            pops += 1;
            // Every state left (this one included) has a bound of at least `b`.
            let aborted = |best: Option<(f64, u32)>, nodes: &[Node]| CoreOutcome::Aborted {
                bound: b,
                best: self.best_first_path(best, nodes),
            };
            if pops.is_multiple_of(1024)
                && limits
                    .deadline
                    .is_some_and(|dl| std::time::Instant::now() >= dl)
            {
                return aborted(best, &nodes);
            }
            let Node { s, level, .. } = nodes[idx as usize];
            let t = level as usize;
            let suf = self.suf_min[t + 1];
            kids.clear();
            for (j, &(_, df, dc)) in self.levels[t].iter().enumerate() {
                let ns = St {
                    df: s.df + df,
                    dc: [s.dc[0] + dc[0], s.dc[1] + dc[1]],
                };
                if (0..m).any(|d| !fits(self.used0[d] + ns.dc[d] + suf[d], self.caps[d])) {
                    continue;
                }
                let bnd = self.bound(t + 1, &ns, thr - eps);
                if bnd >= thr - eps {
                    continue;
                }
                // Dominance within (level, Δc_1): each bucket is a Pareto front over (Δc_2, Δf).
                // (+0.0 folds −0 into +0.)
                let key = ((t + 1) as u32, (ns.dc[0] + 0.0).to_bits());
                if !seen.entry(key).or_default().admit(ord_key(ns.dc[1]), ns.df) {
                    continue;
                }
                if limits.states == 0 || nodes.len() >= MAX_NODES {
                    limits.states = 0;
                    return aborted(best, &nodes);
                }
                limits.states -= 1;
                let id = nodes.len() as u32;
                nodes.push(Node {
                    s: ns,
                    level: (t + 1) as u32,
                    parent: idx,
                    item: j as u32,
                });
                let v = self.f0 + ns.df;
                if self.feasible(&ns.dc) && v < thr - eps {
                    thr = v;
                    best = Some((v, id));
                }
                if t + 1 < k_n {
                    kids.push((bnd, id));
                }
            }
            // The least child (earliest on ties, as in the heap) goes next unless a state in
            // the heap comes first (on equal bounds the heap's, which is older).
            let first = kids
                .iter()
                .enumerate()
                .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.0.cmp(&b.0)))
                .map(|(k, _)| k);
            next = match first {
                Some(k)
                    if heap
                        .peek()
                        .is_none_or(|Reverse((OrdF64(hb), _))| kids[k].0 < *hb) =>
                {
                    let go = kids.swap_remove(k);
                    for &(bnd, id) in &kids {
                        heap.push(Reverse((OrdF64(bnd), id)));
                    }
                    Some(go)
                }
                _ => {
                    for &(bnd, id) in &kids {
                        heap.push(Reverse((OrdF64(bnd), id)));
                    }
                    heap.pop().map(|Reverse((OrdF64(b), idx))| (b, idx))
                }
            };
        }
        self.best_first_answer(best, &nodes)
    }

    /// The answer of a finished best-first search.
    fn best_first_answer(&self, best: Option<(f64, u32)>, nodes: &[Node]) -> CoreOutcome {
        CoreOutcome::Done(self.best_first_path(best, nodes))
    }

    /// The solution of a best-first search: its state's path, other groups at `x0`.
    fn best_first_path(
        &self,
        best: Option<(f64, u32)>,
        nodes: &[Node],
    ) -> Option<(f64, Vec<usize>)> {
        let (v, mut id) = best?;
        let mut out = self.x0.clone();
        while id != u32::MAX {
            let nd = nodes[id as usize];
            if nd.level == 0 {
                break;
            }
            let t = nd.level as usize - 1;
            out[self.order[t]] = self.levels[t][nd.item as usize].0;
            id = nd.parent;
        }
        Some((v, out))
    }
}

/// Pareto front of `(Δc_2 key, Δf)` pairs of one dominance bucket, ordered by `Δc_2` with
/// strictly falling `Δf`: a sorted vector while small (most buckets), a B-tree once large.
enum Front {
    Small(Vec<(u64, f64)>),
    Large(std::collections::BTreeMap<u64, f64>),
}

impl Default for Front {
    fn default() -> Self {
        Front::Small(Vec::new())
    }
}

/// Entries of a [`Front`] kept in a vector (beyond, a B-tree).
const FRONT_VEC_MAX: usize = 64;

impl Front {
    /// False when an entry with no larger `Δc_2` and no larger `Δf` dominates `(k2, df)`;
    /// else records it, dropping the entries it dominates (larger or equal `Δc_2`, no smaller
    /// `Δf`), and returns true.
    fn admit(&mut self, k2: u64, df: f64) -> bool {
        match self {
            Front::Small(v) => {
                // The entry before the first larger Δc_2 has the least Δf of those that could
                // dominate the new one.
                let pos = v.partition_point(|&(k, _)| k <= k2);
                if pos > 0 && v[pos - 1].1 <= df {
                    return false;
                }
                let start = if pos > 0 && v[pos - 1].0 == k2 {
                    pos - 1
                } else {
                    pos
                };
                let mut end = start;
                while end < v.len() && v[end].1 >= df {
                    end += 1;
                }
                if end > start {
                    v[start] = (k2, df);
                    v.drain(start + 1..end);
                } else {
                    v.insert(start, (k2, df));
                    if v.len() > FRONT_VEC_MAX {
                        *self = Front::Large(v.iter().copied().collect());
                    }
                }
                true
            }
            Front::Large(m) => {
                if m.range(..=k2).next_back().is_some_and(|(_, &f)| f <= df) {
                    return false;
                }
                // Usually none or one is dominated: removed one by one.
                while let Some((&k, &f)) = m.range(k2..).next() {
                    if f < df {
                        break;
                    }
                    m.remove(&k);
                }
                m.insert(k2, df);
                true
            }
        }
    }
}

/// Multiply-rotate hasher for the best-first search's small integer keys.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Hasher builder of [`FastHasher`].
pub(crate) type FastHash = std::hash::BuildHasherDefault<FastHasher>;

/// `v` as a `u64` in the order of `f64::total_cmp` (−0 folded into +0).
fn ord_key(v: f64) -> u64 {
    let b = (v + 0.0).to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

/// An `f64` ordered by `total_cmp` (heap keys).
#[derive(Clone, Copy, PartialEq)]
struct OrdF64(f64);

impl Eq for OrdF64 {}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Builds the tables of `specs` (row, multipliers, cells) on their rows' `grids`, in order; on
/// two threads, balanced by cells, when there are enough cells to repay the thread.
fn build_tables(
    levels: &[Level],
    grids: &[Grid],
    specs: &[(usize, Vec<f64>, usize)],
) -> Vec<SufTable> {
    let build = |sp: &(usize, Vec<f64>, usize)| SufTable::build(levels, &grids[sp.0], &sp.1, true);
    let total: usize = specs.iter().map(|sp| sp.2).sum();
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if !two_cores || specs.len() < 2 || total < PARALLEL_CELLS {
        return specs.iter().map(build).collect();
    }
    // Largest first into the lighter bin.
    let mut by_size: Vec<usize> = (0..specs.len()).collect();
    by_size.sort_by_key(|&i| std::cmp::Reverse(specs[i].2));
    let mut bins: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    let mut load = [0usize; 2];
    for i in by_size {
        let b = usize::from(load[1] < load[0]);
        bins[b].push(i);
        load[b] += specs[i].2;
    }
    let mut built: Vec<(usize, SufTable)> = std::thread::scope(|sc| {
        let other = sc.spawn(|| {
            bins[1]
                .iter()
                .map(|&i| (i, build(&specs[i])))
                .collect::<Vec<_>>()
        });
        let mut mine: Vec<(usize, SufTable)> =
            bins[0].iter().map(|&i| (i, build(&specs[i]))).collect();
        let theirs = other
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        mine.extend(theirs);
        mine
    });
    built.sort_by_key(|(i, _)| *i);
    built.into_iter().map(|(_, tb)| tb).collect()
}

/// Golden-section search over a relaxed row's multiplier in `[0, 2·start]` for the largest
/// bound `bound(x)`, `steps` rounds, starting from `start`; returns the best multiplier seen.
pub(crate) fn tune_multiplier(start: f64, steps: usize, mut bound: impl FnMut(f64) -> f64) -> f64 {
    let (mut a, mut b) = (0.0, 2.0 * start);
    let mut best_x = start;
    let mut best_v = bound(best_x);
    if b > 0.0 {
        for _ in 0..steps {
            let x1 = a + (b - a) * 0.382;
            let x2 = a + (b - a) * 0.618;
            let v1 = bound(x1);
            let v2 = bound(x2);
            if v1 > best_v {
                (best_v, best_x) = (v1, x1);
            }
            if v2 > best_v {
                (best_v, best_x) = (v2, x2);
            }
            if v1 < v2 {
                a = x1;
            } else {
                b = x2;
            }
        }
    }
    best_x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::CostKind;
    use crate::random::hawq_like;
    use crate::test_support::{check_forced, next_choice, random_multipliers};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Reduced cost of every item under multipliers `lam`: its Lagrangian value minus the
    /// least one of its group.
    fn reduced_costs(r: &Reduced, alive: &[Vec<usize>], lam: &[f64]) -> Vec<f64> {
        let val = |i: usize| r.obj[i] + lam[0] * r.c(i)[0] + lam[1] * r.c(i)[1];
        let mut rc = vec![0.0; r.obj.len()];
        for v in alive {
            let mn = v.iter().map(|&i| val(i)).fold(f64::INFINITY, f64::min);
            for &i in v {
                rc[i] = val(i) - mn;
            }
        }
        rc
    }

    /// A random HAWQ-like problem of 3–6 layers with 2..=`max_options` options and size + BOPs
    /// budgets, every group's items, and the generator for further draws (None when the
    /// budgets admit no choice).
    fn small_instance(
        seed: u64,
        max_options: usize,
    ) -> Option<(Reduced, Vec<Vec<usize>>, ChaCha8Rng)> {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nl = rng.random_range(3..=6);
        let no = rng.random_range(2..=max_options);
        let budgets = [
            (CostKind::ModelSize, rng.random_range(0.1..0.9)),
            (CostKind::Bops, rng.random_range(0.1..0.9)),
        ];
        let p = hawq_like(seed, nl, &bits[..no], &budgets);
        let r = Reduced::new(&p).ok()?;
        let alive = (0..r.n_groups()).map(|g| r.items(g).collect()).collect();
        Some((r, alive, rng))
    }

    #[test]
    fn ord_key_follows_the_float_order() {
        let v = [-1e300, -2.5, -1.0, -1e-300, 0.0, 1e-300, 1.0, 2.5, 1e300];
        for w in v.windows(2) {
            assert!(ord_key(w[0]) < ord_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(ord_key(-0.0), ord_key(0.0));
    }

    /// Tables built on two threads are the ones built one by one, in the order asked.
    #[test]
    fn parallel_table_build_keeps_order_and_values() {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let p = hawq_like(
            5,
            120,
            &bits,
            &[(CostKind::ModelSize, 0.5), (CostKind::Bops, 0.45)],
        );
        let r = Reduced::new(&p).unwrap();
        let alive: Vec<Vec<usize>> = (0..r.n_groups()).map(|g| r.items(g).collect()).collect();
        let lam = [1e-9, 1e-4];
        let rc = reduced_costs(&r, &alive, &lam);
        let core = CoreDp::new(&r, &alive, &lam, &rc, f64::INFINITY, 4096, None, false);
        assert!(core.core_groups() > 50);
        let grids: Vec<Grid> = (0..2)
            .map(|d| {
                let (unit, _) = grid_unit(&core.levels, d, PARALLEL_CELLS, core.slack[d]);
                Grid::new(&core.levels, d, unit, core.slack[d])
            })
            .collect();
        let mut specs = Vec::new();
        for (k, f) in [1.0, 0.5, 2.0, 0.8, 1.25].iter().enumerate() {
            let d = k % 2;
            let mut l = vec![lam[0] * f, lam[1] * f];
            l[d] = 0.0;
            specs.push((d, l, grids[d].cells()));
        }
        let total: usize = specs.iter().map(|sp| sp.2).sum();
        assert!(
            total >= PARALLEL_CELLS,
            "{total} cells: the parallel path is not taken"
        );
        let par = build_tables(&core.levels, &grids, &specs);
        assert_eq!(par.len(), specs.len());
        for (tb, sp) in par.iter().zip(&specs) {
            let one = SufTable::build(&core.levels, &grids[sp.0], &sp.1, true);
            assert_eq!(tb.d, sp.0);
            assert_eq!(tb.lam, sp.1);
            assert_eq!(tb.h.len(), sp.2);
            assert!(tb
                .h
                .iter()
                .zip(&one.h)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    /// Every state's bound (all tables, extra ones included, on a coarse grid) is at most the
    /// objective of every feasible completion of it, and the exact search finds the optimum.
    #[test]
    fn bounds_never_exceed_feasible_completions() {
        let mut checked = 0usize;
        for seed in 0..40u64 {
            let Some((r, alive, mut rng)) = small_instance(300 + seed, 4) else {
                continue;
            };
            let lam = random_multipliers(&r, &mut rng, 0.0..2.0);
            let rc = reduced_costs(&r, &alive, &lam);
            let core = CoreDp::new(&r, &alive, &lam, &rc, f64::INFINITY, 64, None, true);
            assert!(core.tables.len() > 2, "seed {seed}: extra tables expected");
            // Enumerate every choice; check each prefix state's bound against feasible ones.
            let k = core.levels.len();
            let mut pick = vec![0usize; k];
            let mut best = f64::INFINITY;
            loop {
                let mut s = St {
                    df: 0.0,
                    dc: [0.0, 0.0],
                };
                let mut prefix = Vec::with_capacity(k + 1);
                prefix.push(s);
                for t in 0..k {
                    let (_, df, dc) = core.levels[t][pick[t]];
                    s.df += df;
                    s.dc[0] += dc[0];
                    s.dc[1] += dc[1];
                    prefix.push(s);
                }
                if core.feasible(&s.dc) {
                    let obj = core.f0 + s.df;
                    best = best.min(obj);
                    for (t, st) in prefix.iter().enumerate() {
                        let b = core.bound(t, st, f64::INFINITY);
                        assert!(
                            b <= obj + 1e-9 * obj.abs().max(1.0),
                            "seed {seed} level {t}: bound {b} above completion {obj}"
                        );
                        checked += 1;
                    }
                }
                if !next_choice(&mut pick, |t| core.levels[t].len()) {
                    break;
                }
            }
            let run = |theta: f64| {
                let mut limits = CoreLimits {
                    deadline: None,
                    states: u64::MAX,
                };
                core.search_best_first(theta, &mut limits)
            };
            match run(f64::INFINITY) {
                CoreOutcome::Done(Some((v, items))) => {
                    assert!(r.feasible(&items), "seed {seed}");
                    assert!(
                        (v - best).abs() <= 1e-9 * best.abs().max(1.0),
                        "seed {seed}"
                    );
                }
                CoreOutcome::Done(None) => assert!(best.is_infinite(), "seed {seed}"),
                CoreOutcome::Aborted { .. } => panic!("seed {seed}: aborted"),
            }
            if best.is_finite() {
                // Nothing lies strictly below the optimum; just above it, the optimum is found.
                assert!(
                    matches!(run(best), CoreOutcome::Done(None)),
                    "seed {seed}: a solution below the optimum {best}"
                );
                let above = best + 1e-6 * best.abs().max(1.0);
                match run(above) {
                    CoreOutcome::Done(Some((v, items))) => {
                        assert!(r.feasible(&items), "seed {seed}");
                        assert!((v - best).abs() <= 1e-9 * best.abs().max(1.0));
                    }
                    _ => panic!("seed {seed}: optimum {best} not found below {above}"),
                }
            }
        }
        assert!(checked > 1000, "only {checked} bounds checked");
    }

    /// The forced bound of every core item (prefix programme, the item, suffix table; coarse
    /// and fine grids) is at most the best feasible solution that takes it, and often above
    /// the optimum, so that the item is fixed out; checked by enumeration.
    #[test]
    fn forced_bounds_never_exceed_the_best_choice_through_the_item() {
        let (mut checked, mut above_opt) = (0usize, 0usize);
        for seed in 0..40u64 {
            let Some((r, alive, mut rng)) = small_instance(900 + seed, 5) else {
                continue;
            };
            let lam = [
                rng.random_range(0.0..2.0) * 1e-3 / r.caps[0].max(1.0),
                rng.random_range(0.0..2.0) * 1e-3 / r.caps[1].max(1.0),
            ];
            let rc = reduced_costs(&r, &alive, &lam);
            for cells in [64, 100_000] {
                let core = CoreDp::new(&r, &alive, &lam, &rc, f64::INFINITY, cells, None, false);
                let k = core.levels.len();
                let mut best: Vec<Vec<f64>> = core
                    .levels
                    .iter()
                    .map(|lv| vec![f64::INFINITY; lv.len()])
                    .collect();
                let mut opt = f64::INFINITY;
                let mut pick = vec![0usize; k];
                loop {
                    let mut s = St {
                        df: 0.0,
                        dc: [0.0, 0.0],
                    };
                    for t in 0..k {
                        let (_, df, dc) = core.levels[t][pick[t]];
                        s.df += df;
                        s.dc[0] += dc[0];
                        s.dc[1] += dc[1];
                    }
                    if core.feasible(&s.dc) {
                        let obj = core.f0 + s.df;
                        opt = opt.min(obj);
                        for t in 0..k {
                            best[t][pick[t]] = best[t][pick[t]].min(obj);
                        }
                    }
                    if !next_choice(&mut pick, |t| core.levels[t].len()) {
                        break;
                    }
                }
                for (t, (fb, bb)) in core.forced_bounds().iter().zip(&best).enumerate() {
                    for (j, (&f, &b)) in fb.iter().zip(bb).enumerate() {
                        let what = format!("seed {seed} cells {cells} level {t} item {j}");
                        above_opt += usize::from(check_forced(f, b, opt, &what));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} forced bounds checked");
        assert!(above_opt > 300, "only {above_opt} items could be fixed out");
    }
}
