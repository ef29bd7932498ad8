//! Bounded dominance dynamic programme over the core of a multiple-choice knapsack with one or
//! two rows (survey §3.3 Eq. 26; Pisinger's expanding-core idea for the MCKP, with HAWQ-V3's
//! size + BOPs budgets as the two rows).
//!
//! Starting from the Lagrangian solution `x0` (the item of least reduced cost in every group),
//! a state is a partial change of the groups decided so far: `(Δc_1, Δc_2, Δf)` relative to
//! `x0`. Groups are added one at a time; a state is dropped when
//! - another state with the same change in row 1 is no worse in row 2 and in objective
//!   (exact dominance), or
//! - its bound reaches the threshold: per kept row `d`, the best objective over the
//!   remaining groups with row `d` integral (costs rounded *down* to a grid, exact when the
//!   costs share a unit that fits) and the other row Lagrangian-relaxed, tabulated per suffix
//!   (`O(1)` per table and state), or the cheapest completion breaks a row. Every multiplier
//!   `λ_e ≥ 0` of the relaxed row gives a valid table; the one tuned at the root is best for
//!   states near the root only, so extra tables at multiples of it (0.5–2×, within a cell
//!   budget) are kept and a state's bound is the largest over all tables — a discrete
//!   maximisation of its own partial Lagrangian dual. On the 560 × 6 benchmark instance of
//!   `bench/alloc/pulp_compare.py` the solve explores ≈ 0.25 M states instead of ≈ 4.5 M.
//!
//! Table rows are computed in f64 and stored rounded down to f32 (half the memory traffic; a
//! stored value never exceeds the exact one, so every bound stays valid); the rows need no
//! prefix-minimum pass, since each item's contribution to a row is already non-increasing.
//!
//! Items whose reduced cost reaches the threshold cannot be in a solution below it and are left
//! out. With threshold `θ`, the programme finds the best solution of objective `< θ` or proves
//! that none exists; the caller widens `θ` until the best solution lies below it.
//! Complexity: `O(S log S)` per group for `S` live states; tables `O(K · C)` for `K` core groups
//! and `C` cells.

use crate::problem::fits;
use crate::reduce::Reduced;

/// Relative objective tolerance: states within it of the threshold are dropped (so two
/// solutions closer than this count as equal).
pub(crate) const OBJ_RTOL: f64 = 1e-12;
/// Multiples of the tuned multiplier of the relaxed row for extra bound tables, most useful
/// first.
const EXTRA_FACTORS: &[f64] = &[0.8, 1.25, 0.9, 1.1, 0.7, 1.4, 0.6, 1.6, 0.5, 2.0, 1.2, 0.85];
/// Cell budget of the extra tables, in multiples of the main tables' budget.
const EXTRA_BUDGET: usize = 1;
/// Golden-section steps that tune the relaxed row's multiplier of each table.
const TUNE_STEPS: usize = 4;
/// Largest number of states kept over all groups (arena entries) before giving up.
const MAX_ARENA: usize = 30_000_000;
/// Largest number of live states in one layer of the programme.
const MAX_LIVE: usize = 4_000_000;

/// Limits of one run: a deadline and the states it may still create (decremented).
pub(crate) struct CoreLimits {
    /// Wall-clock deadline.
    pub deadline: Option<std::time::Instant>,
    /// States left.
    pub states: u64,
    /// Set when a beam search dropped states (its answer is then not proven optimal).
    pub truncated: bool,
}

/// Outcome of one thresholded run.
pub(crate) enum CoreOutcome {
    /// The best solution with objective below the threshold (item per group), or `None` when
    /// no solution lies below it.
    Done(Option<(f64, Vec<usize>)>),
    /// A state or time limit stopped the run.
    Aborted,
}

/// One row's suffix table: `h[t][q]` = least `Σ (Δf + Σ_{e≠d} λ_e Δc_e)` over groups `t..`
/// with `Σ floor(Δc_d / unit) ≤ q`, kept only on the window of `q` that states can reach
/// (outside it, lookups return a value no larger than the true one, so bounds stay valid).
struct SufTable {
    d: usize,
    lam: Vec<f64>,
    unit: f64,
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
/// unit of the changes when it fits), and the number of cells it gives.
fn grid_unit(levels: &[Level], d: usize, budget: usize) -> (f64, f64) {
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
        spans.push(hi - lo);
    }
    // Window width at level t is at most min(prefix span, suffix span).
    let total: f64 = spans.iter().sum();
    let mut pre = 0.0;
    let mut cells_per_unit = 0.0;
    for sp in &spans {
        let suf = total - pre;
        cells_per_unit += pre.min(suf);
        pre += sp;
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

impl SufTable {
    fn new(levels: &[Level], d: usize, lam: &[f64], unit: f64, slack_d: f64) -> Self {
        let k = levels.len();
        let cell = |v: f64| -> i64 { (v / unit).floor() as i64 };
        let other = |df: f64, dc: &[f64; 2]| -> f64 {
            let mut v = df;
            for (e, &l) in lam.iter().enumerate() {
                v += l * dc[e];
            }
            v
        };
        let mut suf_lo = vec![0i64; k + 1];
        let mut suf_hi = vec![0i64; k + 1];
        let mut umin = vec![0.0f64; k + 1];
        for t in (0..k).rev() {
            let (a, b, u) =
                levels[t]
                    .iter()
                    .fold((i64::MAX, i64::MIN, f64::INFINITY), |(a, b, u), it| {
                        let c = cell(it.2[d]);
                        (a.min(c), b.max(c), u.min(other(it.1, &it.2)))
                    });
            suf_lo[t] = suf_lo[t + 1] + a;
            suf_hi[t] = suf_hi[t + 1] + b;
            umin[t] = umin[t + 1] + u;
        }
        // Reachable rooms: slack minus the prefix's change, which lies within the prefix's
        // least and largest changes.
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
        let mut start = vec![0usize; k + 2];
        for t in 0..=k {
            start[t + 1] = start[t] + width[t];
        }
        let total = start[k + 1];
        let mut tb = Self {
            d,
            lam: lam.to_vec(),
            unit,
            inv_unit: 1.0 / unit,
            suf_lo,
            suf_hi,
            umin,
            win_lo,
            start,
            width,
            // Zeroed memory comes from fresh pages cheaply; every row is filled below.
            h: vec![0.0; total],
        };
        // Rows are computed exactly in f64 (two scratch rows) and stored rounded down to f32:
        // half the memory traffic, and a stored value never exceeds the true one.
        let max_w = tb.width.iter().copied().max().unwrap_or(0);
        // The last level's row is all zero (so is its stored copy).
        let mut next_buf = vec![0.0f64; max_w];
        let mut row_buf = vec![0.0f64; max_w];
        for t in (0..k).rev() {
            let wt = tb.width[t];
            let lo_t = tb.win_lo[t];
            let (nlo, nw) = (tb.win_lo[t + 1], tb.width[t + 1]);
            let (next_lo, next_umin) = (tb.suf_lo[t + 1], tb.umin[t + 1]);
            let row = &mut row_buf[..wt];
            let next = &next_buf[..nw];
            row.fill(f64::INFINITY);
            for it in &levels[t] {
                let w = cell(it.2[d]);
                let val = other(it.1, &it.2);
                // q (absolute lo_t + q) reads cell lo_t + q - w of level t + 1, inside its
                // window for q in [a, b); below it the first cell (or nothing below the
                // suffix's least sum), above it the unconstrained least value.
                let a = (nlo + w - lo_t).clamp(0, wt as i64) as usize;
                let b = (nlo + nw as i64 + w - lo_t).clamp(0, wt as i64) as usize;
                let first = (next_lo + w - lo_t).clamp(0, a as i64) as usize;
                let below = next[0] + val;
                // Branch-free minima (select + store) so that the loops vectorise.
                for slot in &mut row[first..a] {
                    *slot = if below < *slot { below } else { *slot };
                }
                if a < b {
                    let off = (lo_t + a as i64 - w - nlo) as usize;
                    for (slot, &nv) in row[a..b].iter_mut().zip(&next[off..off + (b - a)]) {
                        let v = nv + val;
                        *slot = if v < *slot { v } else { *slot };
                    }
                }
                let above = next_umin + val;
                for slot in &mut row[b.max(a)..] {
                    *slot = if above < *slot { above } else { *slot };
                }
            }
            // Each item's contribution is non-increasing in q (the next row is, its value
            // below the window is its first cell and above it the least value), so their
            // minimum already is: no prefix-minimum pass is needed.
            debug_assert!(row.windows(2).all(|w| w[1] <= w[0]));
            let st = tb.start[t];
            for (slot, &v) in tb.h[st..st + wt].iter_mut().zip(row.iter()) {
                *slot = down_f32(v);
            }
            std::mem::swap(&mut next_buf, &mut row_buf);
        }
        tb
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

/// `v` as an `f32` that is never above it: lowered by 2⁻²² relative (more than the f32
/// rounding error) and 1e-30 absolute (for tiny values) before rounding; infinities stay.
/// Branch-free so that the storing loop vectorises.
#[inline]
fn down_f32(v: f64) -> f32 {
    let z = v - v.abs() * (1.0 / 4_194_304.0) - 1e-30;
    // Finite values beyond the f32 range would round to +inf: cap them.
    let z = if v.is_finite() {
        z.min(f32::MAX as f64)
    } else {
        v
    };
    z as f32
}

#[derive(Clone, Copy)]
struct St {
    df: f64,
    dc: [f64; 2],
    bnd: f64,
    /// Arena slot of the parent state until the state is kept, then its own slot.
    arena: u32,
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
        if !levels.is_empty() {
            let grids: Vec<(f64, f64)> = (0..m).map(|d| grid_unit(&levels, d, max_cells)).collect();
            let primary = (0..m)
                .min_by(|&a, &b| grids[a].1.total_cmp(&grids[b].1))
                .expect("m >= 1");
            let share = max_cells / m;
            for d in std::iter::once(primary).chain((0..m).filter(|&d| d != primary)) {
                let (unit, _) = grid_unit(&levels, d, share);
                if m == 1 {
                    let mut l = lam.to_vec();
                    l[d] = 0.0;
                    tables.push(SufTable::new(&levels, d, &l, unit, slack[d]));
                    continue;
                }
                let e = 1 - d;
                let with = |x: f64, unit: f64| {
                    let mut l = lam.to_vec();
                    l[e] = x;
                    l[d] = 0.0;
                    SufTable::new(&levels, d, &l, unit, slack[d])
                };
                if let Some(h) = hint {
                    tables.push(with(h[d], unit));
                    continue;
                }
                let (cu, _) = grid_unit(&levels, d, share / 16);
                let best_x = tune_multiplier(lam[e], TUNE_STEPS, |x| root_of(&with(x, cu)));
                tables.push(with(best_x, unit));
            }
            if m == 2 && extras {
                // The best multiplier of the relaxed row differs from state to state: tables at
                // multiples of the tuned one (every one a valid bound), cheapest rows first,
                // within a cell budget.
                let mut mains: Vec<(usize, f64, f64, usize)> = tables
                    .iter()
                    .map(|tb| (tb.d, tb.lam[1 - tb.d], tb.unit, tb.h.len()))
                    .collect();
                mains.sort_by_key(|v| v.3);
                let mut used = 0usize;
                for &f in EXTRA_FACTORS {
                    for &(d, x, unit, cells) in &mains {
                        if x <= 0.0 || used + cells > max_cells * EXTRA_BUDGET {
                            continue;
                        }
                        used += cells;
                        let mut l = lam.to_vec();
                        l[1 - d] = x * f;
                        l[d] = 0.0;
                        tables.push(SufTable::new(&levels, d, &l, unit, slack[d]));
                    }
                }
            }
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
                bnd: 0.0,
                arena: 0,
                item: 0,
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

    /// Best solution of objective `< theta` over the core (item per group), or a proof that
    /// there is none. With `beam = Some(b)` only the `b` states of least bound survive each
    /// group: a heuristic whose answer is feasible but not proven optimal.
    pub(crate) fn search(
        &self,
        theta: f64,
        beam: Option<usize>,
        limits: &mut CoreLimits,
    ) -> CoreOutcome {
        let m = self.m;
        let k_n = self.levels.len();
        // (An infinite threshold has no tolerance: inf − inf would reject everything.)
        let eps = if theta.is_finite() {
            OBJ_RTOL * theta.abs().max(1.0)
        } else {
            0.0
        };
        let mut arena: Vec<(u32, u32)> = Vec::new();
        let mut best: Option<(f64, u32, usize)> = None;
        let mut thr = theta;
        let root = St {
            df: 0.0,
            dc: [0.0, 0.0],
            bnd: 0.0,
            arena: u32::MAX,
            item: 0,
        };
        let mut consider = |s: &St, t: usize, thr: &mut f64| {
            if self.feasible(&s.dc) {
                let v = self.f0 + s.df;
                if v < *thr - eps {
                    best = Some((v, s.arena, t));
                    *thr = v;
                }
            }
        };
        consider(&root, 0, &mut thr);
        let mut states = vec![root];
        let mut cand: Vec<St> = Vec::new();
        let mut perm: Vec<u32> = Vec::new();
        for t in 0..k_n {
            if limits
                .deadline
                .is_some_and(|dl| std::time::Instant::now() >= dl)
            {
                return CoreOutcome::Aborted;
            }
            cand.clear();
            let suf = self.suf_min[t + 1];
            for s in &states {
                for (j, &(_, df, dc)) in self.levels[t].iter().enumerate() {
                    let mut ns = St {
                        df: s.df + df,
                        dc: [s.dc[0] + dc[0], s.dc[1] + dc[1]],
                        bnd: 0.0,
                        arena: s.arena,
                        item: j as u32,
                    };
                    if (0..m).any(|d| !fits(self.used0[d] + ns.dc[d] + suf[d], self.caps[d])) {
                        continue;
                    }
                    ns.bnd = self.bound(t + 1, &ns, thr - eps);
                    if ns.bnd >= thr - eps {
                        continue;
                    }
                    cand.push(ns);
                }
            }
            if cand.len() as u64 > limits.states {
                limits.states = 0;
                return CoreOutcome::Aborted;
            }
            limits.states -= cand.len() as u64;
            // Dominance: sorted by (Δc_1, Δc_2, Δf), a state no better than an earlier one with
            // the same Δc_1 is dropped.
            perm.clear();
            perm.extend(0..cand.len() as u32);
            perm.sort_unstable_by(|&a, &b| {
                let (x, y) = (&cand[a as usize], &cand[b as usize]);
                x.dc[0]
                    .total_cmp(&y.dc[0])
                    .then(x.dc[1].total_cmp(&y.dc[1]))
                    .then(x.df.total_cmp(&y.df))
            });
            states.clear();
            let mut run_min = f64::INFINITY;
            let mut bucket = f64::NAN;
            for &pi in &perm {
                let s = cand[pi as usize];
                if s.bnd >= thr - eps {
                    continue;
                }
                if m == 1 {
                    if s.df >= run_min {
                        continue;
                    }
                    run_min = s.df;
                } else {
                    // Within one Δc_1 value (sorted by Δc_2): a running least Δf. States with
                    // different Δc_1 are not compared (cheaper, and rarely dominated).
                    if s.dc[0] != bucket {
                        bucket = s.dc[0];
                        run_min = f64::INFINITY;
                    }
                    if s.df >= run_min {
                        continue;
                    }
                    run_min = s.df;
                }
                if states.len() >= MAX_LIVE {
                    return CoreOutcome::Aborted;
                }
                states.push(s);
            }
            if let Some(b) = beam {
                if states.len() > b {
                    limits.truncated = true;
                    states.select_nth_unstable_by(b, |x, y| x.bnd.total_cmp(&y.bnd));
                    states.truncate(b);
                }
            }
            if arena.len() + states.len() > MAX_ARENA {
                return CoreOutcome::Aborted;
            }
            for s in states.iter_mut() {
                arena.push((s.arena, s.item));
                s.arena = (arena.len() - 1) as u32;
                consider(s, t + 1, &mut thr);
            }
            if states.is_empty() {
                break;
            }
        }
        let Some((v, mut a, depth)) = best else {
            return CoreOutcome::Done(None);
        };
        let mut out = self.x0.clone();
        let mut t = depth;
        while a != u32::MAX {
            t -= 1;
            let (parent, j) = arena[a as usize];
            out[self.order[t]] = self.levels[t][j as usize].0;
            a = parent;
        }
        CoreOutcome::Done(Some((v, out)))
    }
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
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every state's bound (all tables, extra ones included, on a coarse grid) is at most the
    /// objective of every feasible completion of it, and the exact search finds the optimum.
    #[test]
    fn bounds_never_exceed_feasible_completions() {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let mut checked = 0usize;
        for seed in 0..40u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(300 + seed);
            let nl = rng.random_range(3..=6);
            let no = rng.random_range(2..=4);
            let budgets = [
                (CostKind::ModelSize, rng.random_range(0.1..0.9)),
                (CostKind::Bops, rng.random_range(0.1..0.9)),
            ];
            let p = hawq_like(300 + seed, nl, &bits[..no], &budgets);
            let Ok(r) = Reduced::new(&p) else { continue };
            let alive: Vec<Vec<usize>> = (0..r.n_groups()).map(|g| r.items(g).collect()).collect();
            // Multipliers on the scale objective / cost, deliberately not the optimal ones.
            let spread = |f: &dyn Fn(usize) -> f64| {
                let (lo, hi) = (0..r.obj.len()).fold((f64::INFINITY, 0.0f64), |(a, b), i| {
                    (a.min(f(i)), b.max(f(i)))
                });
                (hi - lo).max(1e-12)
            };
            let so = spread(&|i| r.obj[i]);
            let lam: Vec<f64> = (0..2)
                .map(|d| rng.random_range(0.0..2.0) * so / spread(&|i| r.c(i)[d]))
                .collect();
            let val = |i: usize| r.obj[i] + lam[0] * r.c(i)[0] + lam[1] * r.c(i)[1];
            let mut rc = vec![0.0; r.obj.len()];
            for v in &alive {
                let mn = v.iter().map(|&i| val(i)).fold(f64::INFINITY, f64::min);
                for &i in v {
                    rc[i] = val(i) - mn;
                }
            }
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
                    bnd: 0.0,
                    arena: 0,
                    item: 0,
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
                let mut t = 0;
                while t < k {
                    pick[t] += 1;
                    if pick[t] < core.levels[t].len() {
                        break;
                    }
                    pick[t] = 0;
                    t += 1;
                }
                if t == k {
                    break;
                }
            }
            let mut limits = CoreLimits {
                deadline: None,
                states: u64::MAX,
                truncated: false,
            };
            match core.search(f64::INFINITY, None, &mut limits) {
                CoreOutcome::Done(Some((v, items))) => {
                    assert!(r.feasible(&items), "seed {seed}");
                    assert!(
                        (v - best).abs() <= 1e-9 * best.abs().max(1.0),
                        "seed {seed}"
                    );
                }
                CoreOutcome::Done(None) => assert!(best.is_infinite(), "seed {seed}"),
                CoreOutcome::Aborted => panic!("seed {seed}: aborted"),
            }
        }
        assert!(checked > 1000, "only {checked} bounds checked");
    }
}
