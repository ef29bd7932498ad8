//! Exact multiple-choice knapsack solver with several knapsack rows, the engine behind the
//! `ilp` allocator (survey §3.3 Eq. 26, HAWQ-V3) and the exact Pareto sweep.
//!
//! Steps:
//! 1. presolve — per-group dominance (an item with no smaller objective and no smaller cost in
//!    any row than another is dropped) and capacity filtering (an item that cannot fit even with
//!    every other group at its cheapest is dropped);
//! 2. Lagrangian relaxation `L(λ) = Σ_g min_k (f_gk + λ·c_gk) − λ·A`, a lower bound for every
//!    `λ ≥ 0`. With one row it is maximised exactly (the upper envelope of each group's lines,
//!    breakpoints merged and swept: this equals the LP relaxation of the MCKP); with several
//!    rows by exact coordinate ascent followed by Polyak subgradient steps;
//! 3. incumbent — the Lagrangian solution repaired greedily (best objective loss per unit of
//!    excess removed) and then improved (best feasible single swaps);
//! 4. reduced-cost fixing — an item whose reduced cost `f + λ·c − min_g` exceeds
//!    `UB − L(λ)` cannot be in a better solution and is removed; groups left with one item are
//!    decided;
//! 5. iterative widening — the search first runs over the items with reduced cost `≤ τ`
//!    (a restriction: every solution found is feasible and lowers UB), `τ` growing 4× per round
//!    until it covers `UB − L(λ)`, at which point the search was exact;
//! 6. depth-first branch and bound over the undecided groups (largest objective spread first,
//!    children visited best bound first) with, per node, the bounds
//!    - `L(λ) + Σ_fixed rc` (O(1)),
//!    - a dynamic programme per budget row keeping that row integral (costs rounded *down* to a
//!      grid, exact when the costs share an integer unit that fits the grid) and the other rows
//!      Lagrangian-relaxed, tabulated per suffix of groups — O(m) per node; with two rows the
//!      other row's multiplier is tuned for the best root bound, small extra tables at
//!      multiples of it (0.7×, 1.4×) tighten the bound of nodes far from the root, and a row
//!      whose root bound gains little over `L(λ)` compared with the other row is left out
//!      (every node would pay for a table that rarely cuts),
//!    - the LP relaxation of each row alone and of the λ-weighted surrogate row (segments of the
//!      groups' convex hulls merged by slope; per-level running sums read by binary search
//!      when they fit), and a cheapest-completion feasibility test;
//!
//!    and a dominance memory: per `(level, first-row cost)` the Pareto front of the other rows'
//!    costs and objectives of the nodes entered so far (sorted, binary search with two rows).
//!    A node's subtree is finished before the next node of its level is entered, so a node
//!    that a recorded one dominates (same first-row cost, no smaller other costs or objective)
//!    has no completion that subtree did not already find or rule out, and is dropped. On the
//!    54 × 4 benchmark instance it drops 227 nodes and with them 43 % of the search (11.6 k →
//!    6.6 k nodes). The multiplier tuning evaluates root bounds only (two rolling rows of
//!    memory), and the tables are computed with AVX2 when the CPU has it.
//!
//!    Before the search, each item gets a *forced bound* on every row table: the levels before
//!    it tabulated forward over the same grid, joined with the suffix table after it at the
//!    root's room (`min_j Q_t[j] + v_i + T_{t+1}[j − w_i]`), a bound on every solution that
//!    takes the item. Items whose forced bound reaches the incumbent are dropped; when that
//!    drops at least a third of the undecided items, the tables are rebuilt on what is left
//!    (more cells per level, often exact; the tuned multipliers are kept). The LP rows and
//!    extra tables are built after it, on the final lists. On the 54 × 4 instance the tables
//!    drop 80 of 166 items, 27 groups stay undecided, the rebuilt size-row table is exact
//!    (10 cells) and the search needs 70 nodes instead of 6.6 k;
//! 7. with two rows, when the depth-first search has not finished within
//!    [`Limits::dfs_first_nodes`] nodes (or is skipped because more than
//!    [`Limits::dfs_max_groups`] groups are undecided), the best-first dominance search over
//!    the core (module `core_dp`): states `(Δc₁, Δc₂, Δf)` relative to the Lagrangian
//!    solution, expanded best bound first, dominated states and states whose suffix bound
//!    reaches the incumbent dropped. The core of the items with reduced cost below `θ − LB`
//!    holds every solution below `θ`: a bisection over `θ` on cheap cores (an eighth of the
//!    cells, the relaxed row priced at its Lagrangian multiplier; after a core that proves
//!    nothing new, the next probe goes a quarter of the way up) gives a proven lower bound,
//!    the core with extra tables is built for a cap half of `proven − LB` above it, and the
//!    search returns the best solution below the cap (optimal) or proves that none exists
//!    (then the cap grows: by half of `proven − LB` while the core's root bound alone rules
//!    the cap out, by a tenth once a search was needed, since larger cores cost much more to
//!    search). Before each search, a core with the main tables only, on half the cells and
//!    with the relaxed row's multiplier tuned for its cap, fixes the items whose forced bound
//!    (as in step 6, over the core's windowed tables) reaches the cap, and the searched core
//!    is built on what is left (with those multipliers): on 560 × 6, 286 items go, the
//!    searched core has 330 groups (431 without fixing) and the search keeps 2.6 k states
//!    instead of 29 k. The suffix bounds use several multipliers for the relaxed row (the
//!    partial Lagrangian dual of a state is not maximised by the
//!    root's multiplier). A search that runs out of its share of states
//!    ([`Limits::core_refine_states`]) is run again at the same cap on tables with four times
//!    the cells (up to 32 M): on instances with a large core, coarse tables bound barely above
//!    `L(λ)` and the state count explodes where finer ones prune.
//!
//! The result is optimal up to a relative tolerance of 1e-9 in objective (1e-12 in the core
//! programme) and budgets; when a node or time limit stops the search, the solver says so and
//! reports the best solution and a proven lower bound ([`Failure::Limit`]) instead of a guess.
//! Complexity: presolve `O(Σ_g k_g² m)`, Lagrangian `O(N log N)` per coordinate step (N items),
//! DP tables `O(K · C · k)` for K undecided groups and C ≤ 16384 cells, branch and bound and
//! the core search exponential in the worst case; the dominance memory `O(log F)` per node
//! entered (F entries of a front) and at most `MEMO_MAX_VALUES` numbers. Measured (random
//! HAWQ-like instances of `bench/alloc/pulp_compare.py`, `examples/solve_bench.rs`): one
//! budget, 2000 layers × 6 options in ~30 ms; size + BOPs budgets, seed 1: 54 × 4 in ~0.33 ms
//! (depth-first search after fixing, 70 nodes), 560 × 6 in ~7.5–9 ms (set-up 1.3 ms, three
//! bisection cores 1.8 ms, fixing core with its tuning 1.5 ms and its forced bounds 0.7 ms,
//! searched core 1.8 ms, search 0.5 ms over ≈ 2.6 k states) and 2000 × 6 in ~11 ms. Over seeds 1–5 all 15
//! instances are solved to optimality; the time varies much more than CBC's (560 × 6: 6 ms to
//! 2 s, on an instance whose tables bound 10–18 below the optimum).

use std::time::Instant;

use crate::problem::fits;
use crate::simd::{dispatch_avx2, min_add_into, min_sum};

/// Cells of the searched core programme's main suffix bound tables (over all rows and
/// groups; the extra tables get [`crate::core_dp`]'s share on top).
const CORE_CELLS: usize = 2_000_000;
/// Cells of the bisection's cheap cores.
const BISECT_CELLS: usize = 250_000;
/// The core whose forced bounds fix items before a search gets this fraction of the searched
/// core's cells (the items it fixes barely change with more).
const FIX_CELL_DIV: usize = 2;
/// States a core search may keep before its tables are rebuilt finer (by [`REFINE_FACTOR`],
/// up to [`MAX_CORE_CELLS`]).
const REFINE_STATES: u64 = 500_000;
/// Growth of the cells of a core's tables after a search ran out of [`REFINE_STATES`].
const REFINE_FACTOR: usize = 4;
/// Most cells of a core's tables (about 4 bytes each, plus the extra tables).
const MAX_CORE_CELLS: usize = 32_000_000;
/// Cells of the depth-first search's per-row bound tables (over all rows and groups).
const DFS_TABLE_CELLS: usize = 100_000;
/// Cells per group of the coarse tables that tune the other row's multiplier (depth-first).
const DFS_TUNE_CELLS: usize = 256;
/// Golden-section steps of that tuning.
const DFS_TUNE_STEPS: usize = 3;
/// A depth-first row table is kept only when its root bound gains at least this fraction of
/// the best row's gain over the Lagrangian bound.
const DFS_KEEP_FRAC: f64 = 0.25;
/// Multiples of the tuned multiplier of the relaxed row for extra depth-first bound tables.
const DFS_EXTRA_FACTORS: &[f64] = &[0.7, 1.4];
/// Most cells per group of an extra depth-first bound table.
const DFS_EXTRA_CELLS: usize = 256;
/// Default of [`Limits::dfs_max_groups`].
const DFS_MAX_GROUPS: usize = 120;
/// The depth-first tables are rebuilt on the items left after fixing when it dropped at least
/// one in this many of the undecided items.
const FIX_REBUILD_DIV: usize = 3;
/// Subgradient steps without a better Lagrangian bound after which the polishing stops.
const POLISH_PATIENCE: usize = 20;
/// Bisection steps for the core's proven lower bound.
const BISECT_STEPS: usize = 10;
/// The bisection stops once its interval is below `(proven − LB) / BISECT_STOP_DIV`.
const BISECT_STOP_DIV: f64 = 8.0;
/// The core with extra tables is built for the threshold `proven + CAP_FLOOR · (proven − LB)`
/// (a larger core has coarser tables and a weaker bound; a smaller one may not reach the
/// optimum, and then a core for a larger threshold is built).
const CAP_FLOOR: f64 = 0.5;
/// After a search below a cap that the core's root bound did not rule out found nothing, the
/// next cap lies `CAP_STEP · (proven − LB)` above the proven bound (instead of
/// [`CAP_FLOOR`] times).
const CAP_STEP: f64 = 0.1;
use crate::core_dp::CoreLimits;
use crate::reduce::Reduced;

/// Search limits of the exact solver.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum branch-and-bound nodes plus core-programme states.
    pub node_limit: u64,
    /// Wall-clock deadline.
    pub deadline: Option<Instant>,
    /// With two budget rows: nodes of the first depth-first search before the core programme
    /// takes over (0 = straight to the core programme).
    pub dfs_first_nodes: u64,
    /// With two budget rows, the first depth-first search is skipped when more groups than
    /// this have an alternative item within the gap `UB − LB` (the core programme is faster
    /// on wide cores).
    pub dfs_max_groups: usize,
    /// Whether the depth-first search drops nodes dominated by one entered before at the same
    /// level with the same first-row cost (on by default; off only to measure or test it).
    pub dfs_memo: bool,
    /// States a core search may keep before its tables are rebuilt finer (same cap, four
    /// times the cells, up to a limit); the last, finest search may use every state left.
    pub core_refine_states: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            node_limit: 50_000_000,
            deadline: None,
            dfs_first_nodes: 30_000,
            dfs_max_groups: DFS_MAX_GROUPS,
            dfs_memo: true,
            core_refine_states: REFINE_STATES,
        }
    }
}

/// Statistics of one exact solve.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Items left after presolve.
    pub items_after_presolve: usize,
    /// Lagrangian lower bound at the root.
    pub lower_bound: f64,
    /// Objective of the first incumbent (inf if the heuristics found none).
    pub first_incumbent: f64,
    /// Groups still undecided after reduced-cost fixing.
    pub core_groups: usize,
    /// Best LP bound at the root (single and surrogate rows).
    pub root_lp: f64,
    /// Branch-and-bound nodes explored.
    pub nodes: u64,
    /// Proven lower bound on the optimum: the optimum itself when solved, else the best
    /// bound proven before a limit stopped the search.
    pub proven_bound: f64,
    /// Depth-first nodes dropped as dominated by one entered before.
    pub memo_pruned: u64,
    /// Core searches that ran out of their share of states and were run again on finer
    /// tables.
    pub refinements: u64,
    /// Items dropped because their forced bound reached the incumbent (depth-first tables) or
    /// the cap of a core search (the fixing core's main tables; summed over the searches).
    pub fixed_by_tables: usize,
}

/// Why the exact solver returned no solution.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No choice satisfies all rows.
    Infeasible,
    /// A limit was hit; the best solution so far, if any.
    Limit {
        /// Nodes explored.
        nodes: u64,
        /// Best objective found.
        best: f64,
        /// Proven lower bound on the optimum (the gap `best − bound` is what is unproven).
        bound: f64,
    },
}

/// Solves the reduced problem exactly; returns one item index (into the flat arrays) per group.
pub fn solve(r: &Reduced, limits: &Limits) -> (Result<Vec<usize>, Failure>, Stats) {
    let mut s = Solver::new(r);
    let out = s.run(limits);
    s.stats.proven_bound = match &out {
        Ok(items) => items.iter().map(|&i| r.obj[i]).sum(),
        Err(Failure::Limit { bound, .. }) => *bound,
        Err(Failure::Infeasible) => f64::INFINITY,
    };
    (out, s.stats)
}

struct Solver<'a> {
    r: &'a Reduced,
    m: usize,
    alive: Vec<Vec<usize>>,
    stats: Stats,
}

fn dominated(r: &Reduced, i: usize, j: usize) -> bool {
    // does i dominate j?
    r.obj[i] <= r.obj[j] && r.c(i).iter().zip(r.c(j)).all(|(a, b)| a <= b)
}

impl<'a> Solver<'a> {
    fn new(r: &'a Reduced) -> Self {
        Self {
            r,
            m: r.m(),
            alive: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn presolve(&mut self) -> bool {
        let r = self.r;
        let m = self.m;
        self.alive = (0..r.n_groups())
            .map(|g| {
                let mut items: Vec<usize> = r.items(g).collect();
                items.sort_by(|&a, &b| {
                    r.obj[a].total_cmp(&r.obj[b]).then_with(|| {
                        let sa: f64 = r.c(a).iter().sum();
                        let sb: f64 = r.c(b).iter().sum();
                        sa.total_cmp(&sb)
                    })
                });
                let mut kept: Vec<usize> = Vec::with_capacity(items.len());
                for &j in &items {
                    if !kept.iter().any(|&i| dominated(r, i, j)) {
                        kept.push(j);
                    }
                }
                kept
            })
            .collect();
        // Capacity filtering, repeated while it removes something.
        loop {
            let mut minc = vec![0.0; m];
            let mut gmin = vec![f64::INFINITY; self.alive.len() * m];
            for (g, items) in self.alive.iter().enumerate() {
                for &i in items {
                    for d in 0..m {
                        gmin[g * m + d] = gmin[g * m + d].min(r.c(i)[d]);
                    }
                }
                for d in 0..m {
                    minc[d] += gmin[g * m + d];
                }
            }
            if (0..m).any(|d| !fits(minc[d], r.caps[d])) {
                return false;
            }
            let mut removed = false;
            for (g, items) in self.alive.iter_mut().enumerate() {
                let before = items.len();
                items.retain(|&i| {
                    (0..m).all(|d| fits(minc[d] - gmin[g * m + d] + r.c(i)[d], r.caps[d]))
                });
                removed |= items.len() != before;
            }
            if self.alive.iter().any(Vec::is_empty) {
                return false;
            }
            if !removed {
                break;
            }
        }
        self.stats.items_after_presolve = self.alive.iter().map(Vec::len).sum();
        true
    }

    /// L(λ), the minimising items and their total costs.
    fn lagrangian(&self, lam: &[f64]) -> (f64, Vec<usize>, Vec<f64>) {
        let r = self.r;
        let mut total = 0.0;
        let mut x = Vec::with_capacity(self.alive.len());
        let mut used = vec![0.0; self.m];
        for items in &self.alive {
            let mut best = f64::INFINITY;
            let mut bi = items[0];
            for &i in items {
                let v = r.obj[i] + dot(lam, r.c(i));
                if v < best {
                    best = v;
                    bi = i;
                }
            }
            total += best;
            x.push(bi);
            for (u, c) in used.iter_mut().zip(r.c(bi)) {
                *u += c;
            }
        }
        (total - dot(lam, &r.caps), x, used)
    }

    /// Exact maximisation of L along coordinate `d` with the other multipliers fixed.
    fn best_coordinate(&self, lam: &[f64], d: usize, bps: &mut Vec<(f64, f64)>) -> f64 {
        let r = self.r;
        bps.clear();
        let mut slope0 = -r.caps[d];
        let mut lines: Vec<(f64, f64)> = Vec::new();
        for items in &self.alive {
            lines.clear();
            lines.extend(items.iter().map(|&i| {
                let c = r.c(i);
                let mut a = r.obj[i];
                for (e, (&l, &cv)) in lam.iter().zip(c).enumerate() {
                    if e != d {
                        a += l * cv;
                    }
                }
                (a, c[d])
            }));
            // Lower envelope of a + λ b for λ >= 0.
            let mut cur = 0;
            for k in 1..lines.len() {
                let (a, b) = lines[k];
                let (ca, cb) = lines[cur];
                if a < ca || (a == ca && b < cb) {
                    cur = k;
                }
            }
            slope0 += lines[cur].1;
            let mut lam_cur = 0.0f64;
            loop {
                let (ca, cb) = lines[cur];
                let mut next = None;
                let mut best_l = f64::INFINITY;
                let mut best_b = f64::INFINITY;
                for (k, &(a, b)) in lines.iter().enumerate() {
                    if b < cb {
                        let l = ((a - ca) / (cb - b)).max(lam_cur);
                        if l < best_l || (l == best_l && b < best_b) {
                            best_l = l;
                            best_b = b;
                            next = Some(k);
                        }
                    }
                }
                let Some(k) = next else { break };
                bps.push((best_l, lines[k].1 - cb));
                lam_cur = best_l;
                cur = k;
            }
        }
        if slope0 <= 0.0 {
            return 0.0;
        }
        bps.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let mut slope = slope0;
        for &(l, ds) in bps.iter() {
            slope += ds;
            if slope <= 0.0 {
                return l;
            }
        }
        bps.last().map_or(0.0, |b| b.0)
    }

    /// Coordinate ascent on `L(λ)` from `λ = 0`: each multiplier in turn set to its exact
    /// maximiser. `first` is the result of the first round (each coordinate once, in order).
    fn ascent(&mut self, first: &[f64]) -> (Vec<f64>, f64) {
        let m = self.m;
        let mut lam = vec![0.0; m];
        let mut bps = Vec::new();
        let (mut best, _, _) = self.lagrangian(&lam);
        let mut best_lam = lam.clone();
        let rounds = if m == 1 { 1 } else { 12 };
        for round in 0..rounds {
            let prev = best;
            if round == 0 {
                lam.copy_from_slice(first);
            } else {
                for d in 0..m {
                    lam[d] = self.best_coordinate(&lam, d, &mut bps);
                }
            }
            let (v, _, _) = self.lagrangian(&lam);
            if v > best {
                best = v;
                best_lam.clone_from(&lam);
            }
            if best - prev <= 1e-12 * best.abs().max(1.0) {
                break;
            }
        }
        (best_lam, best)
    }

    /// Polyak subgradient steps from `(best_lam, best)` towards the target `ub_hint`
    /// (coordinate ascent can stall at a kink); stops after [`POLISH_PATIENCE`] steps without
    /// a better bound.
    fn polish(&mut self, mut best_lam: Vec<f64>, mut best: f64, ub_hint: f64) -> (Vec<f64>, f64) {
        let m = self.m;
        let scale: Vec<f64> = self.r.caps.iter().map(|c| c.abs().max(1e-300)).collect();
        let mut theta = 1.0;
        let mut lam = best_lam.clone();
        let (mut stall, mut since_best) = (0, 0);
        for _ in 0..60 {
            let (v, _, used) = self.lagrangian(&lam);
            if v > best + 1e-15 * best.abs() {
                best = v;
                best_lam.clone_from(&lam);
                stall = 0;
                since_best = 0;
            } else {
                stall += 1;
                since_best += 1;
                if stall >= 5 {
                    theta *= 0.5;
                    stall = 0;
                }
            }
            let g: Vec<f64> = (0..m)
                .map(|d| (used[d] - self.r.caps[d]) / scale[d])
                .collect();
            let gn: f64 = g.iter().map(|v| v * v).sum();
            if gn == 0.0
                || theta < 1e-4
                || since_best >= POLISH_PATIENCE
                || ub_hint - best <= 1e-12 * best.abs().max(1.0)
            {
                break;
            }
            let step = theta * (ub_hint - v) / gn;
            for d in 0..m {
                lam[d] = (lam[d] + step * g[d] / scale[d]).max(0.0);
            }
        }
        (best_lam, best)
    }

    fn used_of(&self, x: &[usize]) -> Vec<f64> {
        let mut u = vec![0.0; self.m];
        for &i in x {
            for (a, c) in u.iter_mut().zip(self.r.c(i)) {
                *a += c;
            }
        }
        u
    }

    /// Greedy repair of an infeasible choice (best objective loss per unit of excess removed
    /// first); false if it gets stuck. One scan finds each group's best swap; they are applied
    /// in order of their scores while each one, scored again after the swaps before it, is
    /// still no worse than the next one's score (a swap that costs objective only scores worse
    /// as the excess shrinks), and a new scan starts when that fails.
    fn repair(&self, x: &mut [usize]) -> bool {
        let r = self.r;
        let m = self.m;
        let inv_scale: Vec<f64> = r.caps.iter().map(|c| 1.0 / c.abs().max(1e-300)).collect();
        let lim: Vec<f64> = r
            .caps
            .iter()
            .map(|&c| c + crate::problem::BUDGET_RTOL * c.abs().max(1.0))
            .collect();
        let mut used = self.used_of(x);
        // Score of swapping group g to item j (None when it removes no excess or breaks a
        // row that fits).
        let score = |g: usize, j: usize, x: &[usize], used: &[f64]| -> Option<f64> {
            let cur = x[g];
            let (cj, cc) = (r.c(j), r.c(cur));
            let mut gain = 0.0;
            for d in 0..m {
                let delta = cj[d] - cc[d];
                let excess = used[d] - r.caps[d];
                if excess > 0.0 {
                    if delta < 0.0 {
                        gain += (-delta).min(excess) * inv_scale[d];
                    }
                } else if delta > 0.0 && used[d] + delta > lim[d] {
                    return None;
                }
            }
            (gain > 0.0).then(|| (r.obj[j] - r.obj[cur]) / gain)
        };
        let mut cands: Vec<(f64, usize, usize)> = Vec::new();
        for _ in 0..(self.stats.items_after_presolve + 10) {
            if (0..m).all(|d| used[d] <= lim[d]) {
                return true;
            }
            cands.clear();
            for (g, items) in self.alive.iter().enumerate() {
                let mut best: Option<(f64, usize, usize)> = None;
                for &j in items {
                    if j == x[g] {
                        continue;
                    }
                    if let Some(sc) = score(g, j, x, &used) {
                        if best.is_none_or(|(s, _, _)| sc < s) {
                            best = Some((sc, g, j));
                        }
                    }
                }
                cands.extend(best);
            }
            if cands.is_empty() {
                return false;
            }
            cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for k in 0..cands.len() {
                let (_, g, j) = cands[k];
                let Some(sc) = score(g, j, x, &used) else {
                    break;
                };
                if k > 0 && cands.get(k + 1).is_some_and(|next| sc > next.0) {
                    break;
                }
                for d in 0..m {
                    used[d] += r.c(j)[d] - r.c(x[g])[d];
                }
                x[g] = j;
                if (0..m).all(|d| used[d] <= lim[d]) {
                    return true;
                }
            }
        }
        false
    }

    /// Best-improvement single swaps that stay feasible.
    fn improve(&self, x: &mut [usize]) {
        let r = self.r;
        let m = self.m;
        let mut used = self.used_of(x);
        for _ in 0..(4 * self.alive.len() + 10) {
            let mut best: Option<(f64, usize, usize)> = None;
            for (g, items) in self.alive.iter().enumerate() {
                let cur = x[g];
                for &j in items {
                    let dobj = r.obj[j] - r.obj[cur];
                    if dobj >= 0.0 || best.is_some_and(|(b, _, _)| dobj >= b) {
                        continue;
                    }
                    if (0..m).all(|d| fits(used[d] + r.c(j)[d] - r.c(cur)[d], r.caps[d])) {
                        best = Some((dobj, g, j));
                    }
                }
            }
            let Some((_, g, j)) = best else { return };
            for d in 0..m {
                used[d] += r.c(j)[d] - r.c(x[g])[d];
            }
            x[g] = j;
        }
    }

    /// The best-first search over the core (module `core_dp`) for two rows, started from the
    /// incumbent `best_x` of value `ub`. The core of the items with reduced cost below
    /// `θ − LB` holds every solution below `θ`, so its root bound is a lower bound for them:
    /// a bisection over `θ` on cheap cores (an eighth of the cells, no extra tables, untuned
    /// multipliers) finds a proven lower bound; for a cap a little above it, a fixing core
    /// (tuned, main tables only) drops the items whose forced bound reaches the cap, the core
    /// of the rest is built with extra tables, and the best-first search either returns the
    /// best solution below the cap (optimal) or proves that none exists, after which the cap
    /// grows.
    #[allow(clippy::too_many_arguments)]
    fn core_rounds(
        &mut self,
        limits: &Limits,
        lam: &[f64],
        rc_of: &[f64],
        lb: f64,
        mut ub: f64,
        mut best_x: Option<Vec<usize>>,
        nodes_before: u64,
    ) -> Result<Vec<usize>, Failure> {
        use crate::core_dp::{CoreDp, CoreOutcome};
        let r = self.r;
        let alive = &self.alive;
        let mut states = nodes_before;
        let gap = |theta: f64| {
            if theta.is_finite() {
                theta - lb
            } else {
                f64::INFINITY
            }
        };
        let tol = |v: f64| crate::core_dp::OBJ_RTOL * v.abs().max(1.0);
        // The relaxed row's multiplier of each row's tables: the Lagrangian one in the
        // bisection's cores (tuning there costs more than it gains); each fixing core tunes
        // its own for its cap, and the searched core built after it reuses them (a multiplier
        // tuned on a much wider core can bound far worse: on one 2000-layer instance the
        // root bound rises from 63046.8 to 63048.2 with the optimum at 63049.6).
        let untuned = (lam.len() == 2).then(|| vec![lam[1], lam[0]]);
        let hint: std::cell::RefCell<Option<Vec<f64>>> = std::cell::RefCell::new(untuned);
        let core_in = |alive: &[Vec<usize>], theta: f64, cells: usize, extras: bool| {
            let h = hint.borrow().clone();
            let core = CoreDp::new(
                r,
                alive,
                lam,
                rc_of,
                gap(theta),
                cells,
                h.as_deref(),
                extras,
            );
            if h.is_none() && core.core_groups() > 0 {
                *hint.borrow_mut() = Some(core.tuned());
            }
            core
        };
        let core_of = |theta: f64, cells: usize, extras: bool| core_in(alive, theta, cells, extras);
        let mut dead = vec![false; r.option.len()];
        if !ub.is_finite()
            && core_of(f64::INFINITY, BISECT_CELLS, false).root_bound() == f64::INFINITY
        {
            // Even the whole problem's bound says no choice fits every row.
            return Err(Failure::Infeasible);
        }
        // Bisection on θ with the cheap cores' root bounds: every θ evaluated proves
        // min(θ, root bound of its core).
        let mut proven = lb;
        let mut hi = if ub.is_finite() {
            ub
        } else {
            lb + 1e-3 * lb.abs().max(1.0)
        };
        if !ub.is_finite() {
            while hi < 1e300 && core_of(hi, BISECT_CELLS, false).root_bound() >= hi {
                proven = hi;
                hi = lb + 2.0 * (hi - lb);
            }
        }
        for _ in 0..BISECT_STEPS {
            // The cap below lies CAP_FLOOR · (proven − LB) above the bound: finer is moot.
            if hi - proven <= tol(hi).max((proven - lb) / BISECT_STOP_DIV) {
                break;
            }
            let mid = 0.5 * (proven + hi);
            let rb = core_of(mid, BISECT_CELLS, false).root_bound();
            if rb >= mid {
                proven = mid;
            } else {
                // Every solution below `mid` uses only that core's items: it is at least `rb`.
                // A core whose bound proves nothing new is too wide for its cells: the next
                // probe goes a quarter of the way up instead of half.
                hi = if rb <= proven {
                    proven + 0.5 * (mid - proven)
                } else {
                    mid
                };
                proven = proven.max(rb);
            }
        }
        let finish = |stats: &mut Stats, states: u64, proven: f64| {
            stats.nodes = states;
            stats.root_lp = proven;
        };
        // Tables of the searched core: finer (more cells) after a search that ran out of its
        // share of states, at the same cap.
        let mut cells = CORE_CELLS;
        let mut refine = false;
        let mut last_cap = f64::INFINITY;
        // Growth of the cap, relative to `proven − LB` (see CAP_STEP).
        let mut step = CAP_FLOOR;
        loop {
            if proven >= ub - tol(ub) {
                finish(&mut self.stats, states, proven);
                return best_x.ok_or(Failure::Infeasible);
            }
            let mut cap = proven + (proven - lb).max(tol(proven)) * step;
            if cap - lb > 1e6 * proven.abs().max(1.0) {
                // Without an incumbent the cap could grow for ever: search everything.
                cap = f64::INFINITY;
            }
            let cap = if refine { last_cap } else { cap.min(ub) };
            refine = false;
            last_cap = cap;
            // A core with main tables only, on a fraction of the cells: the items their forced
            // bounds rule out below the cap go, and the core of what is left gets all the
            // tables (a relaxation of fewer items is tighter, and its search much smaller).
            *hint.borrow_mut() = None;
            let fixing = core_of(cap, cells / FIX_CELL_DIV, false);
            // Every solution below the cap uses only the core's items.
            let root = fixing.root_bound();
            proven = proven.max(root.min(cap));
            if proven >= ub - tol(ub) {
                continue;
            }
            let Some(gone) = fixing.unusable_items(cap) else {
                // No solution below the cap.
                proven = proven.max(cap);
                if cap == f64::INFINITY {
                    finish(&mut self.stats, states, proven);
                    return best_x.ok_or(Failure::Infeasible);
                }
                continue;
            };
            drop(fixing);
            self.stats.fixed_by_tables += gone.len();
            dead.fill(false);
            for i in gone {
                dead[i] = true;
            }
            let kept: Vec<Vec<usize>> = alive
                .iter()
                .map(|v| v.iter().copied().filter(|&i| !dead[i]).collect())
                .collect();
            let core = core_in(&kept, cap, cells, true);
            self.stats.core_groups = core.core_groups();
            let left = limits.node_limit.saturating_sub(states);
            let share = if cells < MAX_CORE_CELLS {
                left.min(limits.core_refine_states)
            } else {
                left
            };
            let mut run_limits = CoreLimits {
                deadline: limits.deadline,
                states: share,
            };
            let out = core.search_best_first(cap, &mut run_limits);
            states += share - run_limits.states.min(share);

            match out {
                CoreOutcome::Done(Some((v, items))) => {
                    finish(&mut self.stats, states, v);
                    return Ok(items);
                }
                CoreOutcome::Done(None) => {
                    // No solution below the cap: the incumbent is optimal when the cap is
                    // `ub` (no solution at all when both are infinite), else the next core
                    // reaches further.
                    if cap == f64::INFINITY {
                        finish(&mut self.stats, states, proven);
                        return best_x.ok_or(Failure::Infeasible);
                    }
                    proven = proven.max(cap);
                    if root < cap {
                        // The tables alone did not rule the cap out: the optimum is near,
                        // and larger cores cost much more to search.
                        step = CAP_STEP;
                    }
                }
                CoreOutcome::Aborted { bound, best } => {
                    // The search's solution and bound are kept: the limit's certificate is
                    // `proven ≤ optimum ≤ ub`.
                    if let Some((v, items)) = best {
                        if v < ub {
                            ub = v;
                            best_x = Some(items);
                        }
                    }
                    proven = proven.max(bound.min(cap)).min(ub);
                    let out_of_share = share < left && run_limits.states == 0;
                    let in_time = limits.deadline.is_none_or(|dl| Instant::now() < dl);
                    if out_of_share && in_time && proven < ub - tol(ub) {
                        // Coarse tables bound too weakly: the same cap again on a finer grid.
                        cells = (cells * REFINE_FACTOR).min(MAX_CORE_CELLS);
                        self.stats.refinements += 1;
                        refine = cap < ub;
                        continue;
                    }
                    finish(&mut self.stats, states, proven);
                    if proven >= ub - tol(ub) {
                        return best_x.ok_or(Failure::Infeasible);
                    }
                    return Err(Failure::Limit {
                        nodes: states,
                        best: ub,
                        bound: proven,
                    });
                }
            }
        }
    }

    fn run(&mut self, limits: &Limits) -> Result<Vec<usize>, Failure> {
        let r = self.r;
        let m = self.m;
        if !self.presolve() {
            return Err(Failure::Infeasible);
        }
        if m == 0 {
            return Ok(self.alive.iter().map(|it| it[0]).collect());
        }
        let mut ub = f64::INFINITY;
        let mut best_x: Option<Vec<usize>> = None;
        let consider = |x: Vec<usize>, ub: &mut f64, best_x: &mut Option<Vec<usize>>| {
            let v: f64 = x.iter().map(|&i| r.obj[i]).sum();
            if v < *ub {
                *ub = v;
                *best_x = Some(x);
            }
        };
        let incumbent = |s: &Self, lam: &[f64], ub: &mut f64, best_x: &mut Option<Vec<usize>>| {
            let (_, mut x, _) = s.lagrangian(lam);
            if s.repair(&mut x) {
                s.improve(&mut x);
                consider(x, ub, best_x);
            }
        };
        // Incumbent from the single-row-at-a-time duals first, to steer the subgradient.
        let mut lam0 = vec![0.0; m];
        let mut bps = Vec::new();
        for d in 0..m {
            lam0[d] = self.best_coordinate(&lam0, d, &mut bps);
        }
        incumbent(self, &lam0, &mut ub, &mut best_x);
        let (lam, lb) = self.ascent(&lam0);
        let (lam, lb) = if m > 1 && ub.is_finite() {
            self.polish(lam, lb, ub)
        } else {
            (lam, lb)
        };
        self.stats.lower_bound = lb;
        incumbent(self, &lam, &mut ub, &mut best_x);
        self.stats.first_incumbent = ub;

        let eps = |ub: f64| {
            if ub.is_finite() {
                1e-9 * ub.abs().max(1.0)
            } else {
                0.0
            }
        };
        if ub.is_finite() && ub - lb <= eps(ub) {
            return Ok(best_x.expect("finite ub has a solution"));
        }
        // Reduced costs of every item at λ.
        let mut rc_of = vec![f64::INFINITY; r.option.len()];
        for items in &self.alive {
            let mn = items
                .iter()
                .map(|&i| r.obj[i] + dot(&lam, r.c(i)))
                .fold(f64::INFINITY, f64::min);
            for &i in items {
                rc_of[i] = (r.obj[i] + dot(&lam, r.c(i)) - mn).max(0.0);
            }
        }
        let mut best = best_x.unwrap_or_default();
        // Iterative widening: search exactly over the items with reduced cost <= τ (a
        // restriction, so every solution found is feasible); once τ covers the whole gap
        // UB − LB, no item left out can improve on UB and the search was exact.
        let core_items = rc_of.iter().filter(|&&rc| rc > 0.0 && lb + rc < ub).count();
        let mut tau = if ub.is_finite() && core_items > 256 {
            (ub - lb) / 8.0
        } else {
            f64::INFINITY
        };
        let mut nodes = 0u64;
        if m == 2 && ub.is_finite() {
            let wide = self
                .alive
                .iter()
                .filter(|items| {
                    items
                        .iter()
                        .filter(|&&i| lb + rc_of[i] < ub - eps(ub))
                        .count()
                        > 1
                })
                .count();
            if wide > limits.dfs_max_groups {
                let best_x = if best.is_empty() { None } else { Some(best) };
                return self.core_rounds(limits, &lam, &rc_of, lb, ub, best_x, 0);
            }
        }
        // With two rows the search over the core below (`core_rounds`) scales better; the
        // depth-first search gets a short first try, which settles small instances.
        let dfs_limits = Limits {
            node_limit: if m == 2 {
                limits.node_limit.min(limits.dfs_first_nodes)
            } else {
                limits.node_limit
            },
            ..*limits
        };
        loop {
            let gap = ub - lb;
            let thr = tau.min(gap);
            let lists: Vec<Vec<usize>> = self
                .alive
                .iter()
                .map(|items| {
                    let mut v: Vec<usize> = items
                        .iter()
                        .copied()
                        .filter(|&i| {
                            rc_of[i] == 0.0 || rc_of[i] <= thr && lb + rc_of[i] < ub - eps(ub)
                        })
                        .collect();
                    if v.is_empty() {
                        let i = items
                            .iter()
                            .copied()
                            .min_by(|&a, &b| rc_of[a].total_cmp(&rc_of[b]))
                            .expect("non-empty");
                        v.push(i);
                    }
                    v.sort_by(|&a, &b| rc_of[a].total_cmp(&rc_of[b]).then(a.cmp(&b)));
                    v
                })
                .collect();
            let mut tuned = [None, None];
            let mut d = Dfs::new(r, &lists, lb, &lam, &rc_of, ub, &dfs_limits, &mut tuned);
            if nodes == 0 {
                self.stats.root_lp = d.root_bound();
            }
            // Items whose forced bound reaches the incumbent go; when that removes a good
            // share, the tables are rebuilt on what is left (more cells per level, often
            // exact). (Fixing again on the rebuilt tables drops few more and costs more than
            // the search it saves.)
            let items = d.undecided_items();
            let dropped = d.fix_by_tables();
            self.stats.fixed_by_tables += dropped;
            if dropped > 0 && dropped * FIX_REBUILD_DIV >= items {
                let kept = d.lists.clone();
                d = Dfs::new(r, &kept, lb, &lam, &rc_of, ub, &dfs_limits, &mut tuned);
            }
            d.add_search_bounds(&lam);
            self.stats.core_groups = d.order.len();
            let aborted = d.run(&mut best, nodes);
            self.stats.memo_pruned += d.memo_pruned;
            nodes = d.nodes;
            ub = d.ub;
            if aborted {
                self.stats.nodes = nodes;
                let hit_deadline = limits.deadline.is_some_and(|dl| Instant::now() >= dl);
                if m == 2 && nodes < limits.node_limit && !hit_deadline {
                    let best_x = if best.is_empty() { None } else { Some(best) };
                    return self.core_rounds(limits, &lam, &rc_of, lb, ub, best_x, nodes);
                }
                return Err(Failure::Limit {
                    nodes,
                    best: ub,
                    bound: lb,
                });
            }
            if !ub.is_finite() || thr >= ub - lb - eps(ub) {
                break;
            }
            tau *= 4.0;
        }
        self.stats.nodes = nodes;
        if best.is_empty() {
            return Err(Failure::Infeasible);
        }
        Ok(best)
    }
}

/// LP relaxation of the suffix of levels under one (possibly surrogate) knapsack row
/// `Σ_d μ_d c_d ≤ Σ_d μ_d A_d`: the lower convex hull of each group's (weight, objective)
/// points, segments of all groups merged by slope and taken greedily, the last fractionally
/// (Sinha & Zoltners' MCKP LP). Any such row is a relaxation, so its LP value is a bound.
struct LpRow {
    mu: Vec<f64>,
    cap: f64,
    suf_w0: Vec<f64>,
    suf_o0: Vec<f64>,
    segs: Vec<(usize, f64, f64)>,
    /// When small enough: per level `t`, the segments of levels `t..` in slope order as
    /// running sums `(Σ weight, Σ objective)`, `start[t]..start[t + 1]` (O(log) per bound).
    prefix: Option<LpPrefix>,
}

/// Per-level start offsets and running `(Σ weight, Σ objective, slope of the segment)` of an
/// [`LpRow`] (the slope saves a division per bound).
type LpPrefix = (Vec<usize>, Vec<(f64, f64, f64)>);

/// Largest `levels × segments` for which [`LpRow`] keeps per-level running sums.
const LP_PREFIX_CELLS: usize = 1 << 20;

impl LpRow {
    fn new(r: &Reduced, mu: Vec<f64>, levels: &[&[usize]]) -> Self {
        let nb = levels.len();
        let cap = dot(&mu, &r.caps);
        let mut suf_w0 = vec![0.0; nb + 1];
        let mut suf_o0 = vec![0.0; nb + 1];
        let mut segs = Vec::new();
        let mut pts: Vec<(f64, f64)> = Vec::new();
        for t in (0..nb).rev() {
            pts.clear();
            pts.extend(levels[t].iter().map(|&i| (dot(&mu, r.c(i)), r.obj[i])));
            pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            let mut hull: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
            for &pt in &pts {
                if hull.last().is_some_and(|h| pt.1 >= h.1) {
                    continue;
                }
                while hull.len() >= 2 {
                    let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                    if (b.1 - a.1) * (pt.0 - a.0) >= (pt.1 - a.1) * (b.0 - a.0) {
                        hull.pop();
                    } else {
                        break;
                    }
                }
                hull.push(pt);
            }
            suf_w0[t] = suf_w0[t + 1] + hull[0].0;
            suf_o0[t] = suf_o0[t + 1] + hull[0].1;
            for w in hull.windows(2) {
                segs.push((t, w[1].0 - w[0].0, w[1].1 - w[0].1));
            }
        }
        segs.sort_by(|a, b| (a.2 / a.1).total_cmp(&(b.2 / b.1)));
        let prefix = (nb.saturating_mul(segs.len()) <= LP_PREFIX_CELLS).then(|| {
            let mut start = vec![0usize; nb + 1];
            let mut sums = Vec::new();
            for t in 0..nb {
                let (mut w, mut o) = (0.0, 0.0);
                for &(lvl, dw, dobj) in &segs {
                    if lvl >= t {
                        w += dw;
                        o += dobj;
                        sums.push((w, o, dobj / dw));
                    }
                }
                start[t + 1] = sums.len();
            }
            (start, sums)
        });
        Self {
            mu,
            cap,
            suf_w0,
            suf_o0,
            segs,
            prefix,
        }
    }

    /// LP value of levels `t..` given the costs `used` of everything else (inf if infeasible).
    fn bound(&self, t: usize, used: &[f64]) -> f64 {
        let mut cap = self.cap - dot(&self.mu, used) - self.suf_w0[t];
        if cap < -1e-9 * self.cap.abs().max(1.0) {
            return f64::INFINITY;
        }
        let mut v = self.suf_o0[t];
        if let Some((start, sums)) = &self.prefix {
            if t >= start.len() - 1 {
                return v;
            }
            let run = &sums[start[t]..start[t + 1]];
            // Segments taken whole: the running weight stays within the capacity.
            let j = run.partition_point(|&(w, _, _)| w <= cap);
            let (w0, o0) = if j == 0 {
                (0.0, 0.0)
            } else {
                (run[j - 1].0, run[j - 1].1)
            };
            v += o0;
            if j < run.len() {
                v += run[j].2 * (cap - w0).max(0.0);
            }
            return v;
        }
        for &(lvl, dw, dobj) in &self.segs {
            if lvl < t {
                continue;
            }
            if dw <= cap {
                v += dobj;
                cap -= dw;
            } else {
                v += dobj * cap.max(0.0) / dw;
                break;
            }
        }
        v
    }
}

/// The grid of row `d` over the levels for a cell budget: the least cost per level, the unit
/// (the exact common unit of the cost differences when it fits) and each item's cell weight.
/// It does not depend on the multipliers, so the tuning's trial tables share it.
struct DpGrid {
    d: usize,
    unit: f64,
    cells: usize,
    suf_gmin: Vec<f64>,
    /// Cell weight of each item (its cost above its level's cheapest, rounded down to the
    /// grid), level by level (`usize::MAX` beyond the table).
    w: Vec<usize>,
    /// Offset of each level's items in `w`.
    first: Vec<usize>,
}

impl DpGrid {
    /// None when the levels' cheapest costs already exceed row `d`'s room.
    fn new(
        r: &Reduced,
        d: usize,
        levels: &[&[usize]],
        base_used: f64,
        max_cells: usize,
    ) -> Option<Self> {
        let k_n = levels.len();
        let gmin: Vec<f64> = levels
            .iter()
            .map(|lv| lv.iter().map(|&i| r.c(i)[d]).fold(f64::INFINITY, f64::min))
            .collect();
        let mut suf_gmin = vec![0.0; k_n + 1];
        for t in (0..k_n).rev() {
            suf_gmin[t] = suf_gmin[t + 1] + gmin[t];
        }
        let room = r.caps[d] - base_used - suf_gmin[0];
        if room < -1e-9 * r.caps[d].abs().max(1.0) {
            return None;
        }
        let room = room.max(0.0);
        // Exact when every cost difference is an integer multiple of a common unit.
        let mut g = 0u64;
        let mut integral = true;
        for (t, lv) in levels.iter().enumerate() {
            for &i in lv.iter() {
                let delta = r.c(i)[d] - gmin[t];
                if delta != delta.round() || delta > 1e15 {
                    integral = false;
                }
                if integral {
                    let (mut a, mut b) = (g, delta as u64);
                    while b != 0 {
                        (a, b) = (b, a % b);
                    }
                    g = a;
                }
            }
        }
        let (unit, cells) = if room == 0.0 {
            (1.0, 0)
        } else if integral && g > 0 && room / g as f64 <= max_cells as f64 {
            (g as f64, (room / g as f64 + 1e-9).floor() as usize)
        } else {
            (room / max_cells as f64, max_cells)
        };
        let w = levels
            .iter()
            .enumerate()
            .flat_map(|(t, lv)| {
                let g = gmin[t];
                lv.iter().map(move |&i| {
                    let delta = r.c(i)[d] - g;
                    let w = (delta / unit + if integral { 1e-9 } else { 0.0 }).floor();
                    if w > cells as f64 {
                        usize::MAX
                    } else {
                        w as usize
                    }
                })
            })
            .collect();
        let mut first = Vec::with_capacity(k_n + 1);
        first.push(0usize);
        for lv in levels {
            first.push(first.last().copied().unwrap_or(0) + lv.len());
        }
        Some(Self {
            d,
            unit,
            cells,
            suf_gmin,
            w,
            first,
        })
    }
}

/// Dynamic-programming bound keeping row `d` integral (costs rounded *down* to a grid, so the
/// table is a relaxation) and the other rows Lagrangian-relaxed with the root multipliers:
/// `T[t][c]` = least `Σ (f + Σ_{e≠d} λ_e c_e)` over levels `t..` with grid weight `≤ c`.
struct DpRow {
    d: usize,
    unit: f64,
    cells: usize,
    /// Row of level 0 in `table` (rows are stored from the last level to the first).
    top: usize,
    suf_gmin: Vec<f64>,
    /// The grid's cell weights and their per-level offsets (see [`DpGrid`]).
    w: Vec<usize>,
    first: Vec<usize>,
    table: Vec<f64>,
    lam_other: Vec<f64>,
}

impl DpRow {
    /// Builds the table on `grid` (all levels with `full`, else only the root's row: enough
    /// for [`DpRow::bound`] at level 0, in two rows of memory); on x86-64 CPUs with AVX2 the
    /// same code is compiled for 4-lane vectors.
    fn new(r: &Reduced, grid: &DpGrid, lam: &[f64], levels: &[&[usize]], full: bool) -> Self {
        dispatch_avx2!(
            DpRow::new_impl,
            (r: &Reduced, grid: &DpGrid, lam: &[f64], levels: &[&[usize]], full: bool) -> DpRow
        )
    }

    #[inline(always)]
    fn new_impl(r: &Reduced, grid: &DpGrid, lam: &[f64], levels: &[&[usize]], full: bool) -> Self {
        let (d, cells) = (grid.d, grid.cells);
        let k_n = levels.len();
        let width = cells + 1;
        let mut lam_other = lam.to_vec();
        lam_other[d] = 0.0;
        // With `full`, the rows are appended from the last level to the first, each computed
        // in place from the one before (no zeroing, no copy); else two rolling rows, the
        // root's last. The last level's row is all zero.
        let rows = if full { k_n + 1 } else { 1 };
        let mut table: Vec<f64> = Vec::with_capacity(rows * width);
        table.resize(width, 0.0);
        let mut scratch = if full {
            Vec::new()
        } else {
            vec![0.0f64; width]
        };
        for t in (0..k_n).rev() {
            let len = table.len();
            let (next, cur): (&[f64], &mut [f64]) = if full {
                table.resize(len + width, f64::INFINITY);
                let (done, new) = table.split_at_mut(len);
                (&done[len - width..], new)
            } else {
                scratch.fill(f64::INFINITY);
                (&table[..], &mut scratch[..])
            };
            for (n, &i) in levels[t].iter().enumerate() {
                let w = grid.w[grid.first[t] + n];
                if w == usize::MAX {
                    continue;
                }
                min_add_into(&mut cur[w..], next, Self::value(r, &lam_other, i));
            }
            if !full {
                std::mem::swap(&mut table, &mut scratch);
            }
        }
        Self {
            d,
            unit: grid.unit,
            cells,
            top: if full { k_n } else { 0 },
            suf_gmin: grid.suf_gmin.clone(),
            w: grid.w.clone(),
            first: grid.first.clone(),
            table,
            lam_other,
        }
    }

    /// The value an item adds in the table: its objective plus the other rows' costs priced
    /// by `lam_other`.
    fn value(r: &Reduced, lam_other: &[f64], i: usize) -> f64 {
        r.obj[i] + dot(lam_other, r.c(i))
    }

    /// The cell of the room left in row `d` to the levels `t..` after `used` (capped at the
    /// table's width) and the other rows' priced slack, or None when no room is left.
    fn room_cell(&self, t: usize, used: &[f64], caps: &[f64]) -> Option<(usize, f64)> {
        let d = self.d;
        let room = caps[d] - used[d] - self.suf_gmin[t];
        if room < -1e-9 * caps[d].abs().max(1.0) {
            return None;
        }
        // Non-negative, so the truncating cast is the floor (no libm call).
        let c = (room.max(0.0) / self.unit) + 1e-9;
        let c = if c >= self.cells as f64 {
            self.cells
        } else {
            c as usize
        };
        let slack: f64 = self
            .lam_other
            .iter()
            .zip(caps.iter().zip(used))
            .map(|(l, (cap, u))| l * (cap - u))
            .sum();
        Some((c, slack))
    }

    /// For every item of every level, a lower bound on the objective of the solutions that
    /// take it: the relaxation of the table with the item forced, the levels before it
    /// tabulated forward (rolling, `Q[j]` = least value of the levels before with grid weight
    /// `≤ C − j`) and joined with the suffix table of the levels after it at the root's room
    /// `C`: `min_j Q[j] + v_i + T[j − w_i]`. Needs the full table.
    fn forced_bounds(
        &self,
        r: &Reduced,
        levels: &[&[usize]],
        base_obj: f64,
        base_used: &[f64],
        caps: &[f64],
    ) -> Vec<Vec<f64>> {
        let row = self;
        dispatch_avx2!(
            DpRow::forced_bounds_impl,
            (
                row: &DpRow,
                r: &Reduced,
                levels: &[&[usize]],
                base_obj: f64,
                base_used: &[f64],
                caps: &[f64],
            ) -> Vec<Vec<f64>>
        )
    }

    #[inline(always)]
    fn forced_bounds_impl(
        &self,
        r: &Reduced,
        levels: &[&[usize]],
        base_obj: f64,
        base_used: &[f64],
        caps: &[f64],
    ) -> Vec<Vec<f64>> {
        let k_n = levels.len();
        let Some((c0, slack)) = self.room_cell(0, base_used, caps) else {
            // Nothing fits: no solution takes any item.
            return levels
                .iter()
                .map(|lv| vec![f64::INFINITY; lv.len()])
                .collect();
        };
        let width = self.cells + 1;
        let mut q = vec![0.0f64; c0 + 1];
        let mut nq = vec![f64::INFINITY; c0 + 1];
        let mut out = Vec::with_capacity(k_n);
        for t in 0..k_n {
            let suf = &self.table[(self.top - t - 1) * width..][..width];
            let mut row = Vec::with_capacity(levels[t].len());
            nq.fill(f64::INFINITY);
            for (n, &i) in levels[t].iter().enumerate() {
                let w = self.w[self.first[t] + n];
                if w > c0 {
                    row.push(f64::INFINITY);
                    continue;
                }
                let v = Self::value(r, &self.lam_other, i);
                let best = min_sum(&q[w..], suf);
                row.push(base_obj + v + best - slack);
                min_add_into(&mut nq[..=c0 - w], &q[w..], v);
            }
            std::mem::swap(&mut q, &mut nq);
            out.push(row);
        }
        out
    }

    /// Bound on the objective of levels `t..` given `used` costs (inf if infeasible).
    fn bound(&self, t: usize, used: &[f64], caps: &[f64]) -> f64 {
        match self.room_cell(t, used, caps) {
            Some((c, slack)) => self.table[(self.top - t) * (self.cells + 1) + c] - slack,
            None => f64::INFINITY,
        }
    }
}

/// Memory budget of [`Memo`], in numbers of 8 bytes (a new key counts as [`MEMO_KEY_COST`]);
/// beyond it, nodes are still checked against what is kept but no longer recorded.
const MEMO_MAX_VALUES: usize = 1 << 20;
/// What one key of [`Memo`] costs in that budget (key, list header, hash slot).
const MEMO_KEY_COST: usize = 8;

/// Dominance memory of the depth-first search: for each `(level, first-row cost)` of the nodes
/// entered so far, the other rows' costs and the objectives, as a Pareto front. The search
/// finishes a node's subtree before it enters the next node of the same level, and the levels
/// are decided in a fixed order, so a node with the same first-row cost as a recorded one and no
/// smaller other costs and objective is dropped: each of its completions completes the
/// recorded node at no higher objective and costs, so that subtree already found it or ruled
/// it out (bound at least the incumbent, which only falls).
struct Memo {
    m: usize,
    on: bool,
    values: usize,
    pruned: u64,
    map: std::collections::HashMap<(u32, u64), Vec<f64>, crate::core_dp::FastHash>,
}

impl Memo {
    fn new(m: usize, on: bool) -> Self {
        Self {
            m,
            on,
            values: 0,
            pruned: 0,
            map: Default::default(),
        }
    }

    /// Whether a node at `level` with costs `used` and objective `obj` is dominated by one
    /// entered before; if not, it is recorded (within [`MEMO_MAX_VALUES`]). With two rows each
    /// front is kept sorted by second-row cost with falling objective, so the check is a binary
    /// search; otherwise a scan.
    fn dominated(&mut self, level: usize, used: &[f64], obj: f64) -> bool {
        if !self.on {
            return false;
        }
        let Memo {
            m,
            values,
            pruned,
            map,
            ..
        } = self;
        let m = *m;
        let room = *values < MEMO_MAX_VALUES;
        // (+0.0 folds −0 into +0.)
        let key = (level as u32, (used[0] + 0.0).to_bits());
        let entry = if room {
            map.entry(key).or_insert_with(|| {
                *values += MEMO_KEY_COST;
                Vec::new()
            })
        } else {
            match map.get_mut(&key) {
                Some(e) => e,
                None => return false,
            }
        };
        let before = entry.len();
        if m == 2 {
            // Pairs (second-row cost, objective): the last pair with cost ≤ ours has the least
            // objective of those that could dominate us.
            let c = used[1];
            let n = entry.len() / 2;
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if entry[2 * mid] <= c {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let pos = lo;
            if pos > 0 && entry[2 * pos - 1] <= obj {
                *pruned += 1;
                return true;
            }
            // From `pos` on, costs are larger than ours: those with objective ≥ ours go.
            let mut end = pos;
            while end < n && entry[2 * end + 1] >= obj {
                end += 1;
            }
            if end > pos {
                entry[2 * pos] = c;
                entry[2 * pos + 1] = obj;
                entry.drain(2 * pos + 2..2 * end);
            } else if room {
                entry.insert(2 * pos, obj);
                entry.insert(2 * pos, c);
            }
        } else {
            if entry
                .chunks_exact(m)
                .any(|e| e[m - 1] <= obj && (1..m).all(|d| e[d - 1] <= used[d]))
            {
                *pruned += 1;
                return true;
            }
            // Entries the new one dominates go (each list stays a Pareto front).
            let mut k = 0;
            while k < entry.len() {
                let e = &entry[k..k + m];
                if obj <= e[m - 1] && (1..m).all(|d| used[d] <= e[d - 1]) {
                    let last = entry.len() - m;
                    entry.copy_within(last..last + m, k);
                    entry.truncate(last);
                } else {
                    k += m;
                }
            }
            if room {
                entry.extend_from_slice(&used[1..]);
                entry.push(obj);
            }
        }
        *values = *values + entry.len() - before;
        false
    }
}

/// Depth-first branch and bound over the groups with more than one item, in a fixed order.
struct Dfs<'a> {
    r: &'a Reduced,
    m: usize,
    lists: Vec<Vec<usize>>,
    rc_of: &'a [f64],
    lb: f64,
    ub: f64,
    limits: &'a Limits,
    nodes: u64,
    order: Vec<usize>,
    base_used: Vec<f64>,
    base_obj: f64,
    suf_minc: Vec<f64>,
    suf_c0: Vec<f64>,
    suf_obj0: Vec<f64>,
    lp: Vec<LpRow>,
    dp: Vec<DpRow>,
    infeasible: bool,
    /// Nodes dropped by the dominance memory in the last run.
    memo_pruned: u64,
}

impl<'a> Dfs<'a> {
    /// The search's levels and its per-row bound tables (for two rows, the other row's
    /// multiplier tuned per row unless `tuned[d]` holds one from an earlier build, and then
    /// recorded there). The LP rows and extra tables that only the search uses come from
    /// [`Dfs::add_search_bounds`].
    #[allow(clippy::too_many_arguments)]
    fn new(
        r: &'a Reduced,
        lists: &[Vec<usize>],
        lb: f64,
        lam: &[f64],
        rc_of: &'a [f64],
        ub: f64,
        limits: &'a Limits,
        tuned: &mut [Option<f64>; 2],
    ) -> Self {
        let m = r.m();
        let mut base_used = vec![0.0; m];
        let mut base_obj = 0.0;
        let mut order: Vec<usize> = Vec::new();
        for (g, v) in lists.iter().enumerate() {
            if v.len() == 1 {
                base_obj += r.obj[v[0]];
                for (d, u) in base_used.iter_mut().enumerate() {
                    *u += r.c(v[0])[d];
                }
            } else {
                order.push(g);
            }
        }
        // Big decisions first: largest objective spread.
        let spread = |g: usize| {
            let (lo, hi) = lists[g]
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| {
                    (lo.min(r.obj[i]), hi.max(r.obj[i]))
                });
            hi - lo
        };
        order.sort_by(|&a, &b| spread(b).total_cmp(&spread(a)).then(a.cmp(&b)));
        let nb = order.len();
        let (suf_minc, suf_c0, suf_obj0) = suffix_sums(r, lists, &order);
        let levels: Vec<&[usize]> = order.iter().map(|&g| lists[g].as_slice()).collect();
        let mut dp = Vec::new();
        let mut infeasible = false;
        let max_cells = (DFS_TABLE_CELLS / ((nb + 1) * m)).clamp(64, 1 << 14);
        if nb > 0 && m == 2 {
            // Partial Lagrangian dual per row: tune the other row's multiplier for the best
            // root bound (the bound is concave in it) on a coarse grid, then build the fine
            // table once. A row whose untuned root bound gains less than DFS_KEEP_FRAC of the
            // best row's gain over LB is left out (its tables would rarely cut, and every
            // node would pay for them).
            let at = |row: &DpRow| row.bound(0, &base_used, &r.caps);
            let coarse = max_cells.min(DFS_TUNE_CELLS);
            let build = |grid: &DpGrid, x: f64, full: bool| {
                let mut l = lam.to_vec();
                l[1 - grid.d] = x;
                DpRow::new(r, grid, &l, &levels, full)
            };
            let grids: Vec<Option<DpGrid>> = (0..2)
                .map(|d| DpGrid::new(r, d, &levels, base_used[d], coarse))
                .collect();
            let mut roots = [f64::NEG_INFINITY; 2];
            for (d, root) in roots.iter_mut().enumerate() {
                match &grids[d] {
                    Some(g) => *root = at(&build(g, lam[1 - d], false)),
                    None => infeasible = true,
                }
            }
            if !infeasible {
                let top = roots[0].max(roots[1]);
                for d in 0..2 {
                    let gain = |v: f64| v + base_obj - lb;
                    // (The best row is always kept.)
                    if lb.is_finite()
                        && roots[d] < top
                        && gain(roots[d]) < DFS_KEEP_FRAC * gain(top)
                    {
                        continue;
                    }
                    let e = 1 - d;
                    let coarse_grid = grids[d].as_ref().expect("feasible");
                    let best_x = *tuned[d].get_or_insert_with(|| {
                        crate::core_dp::tune_multiplier(lam[e], DFS_TUNE_STEPS, |x| {
                            at(&build(coarse_grid, x, false))
                        })
                    });
                    let fine =
                        DpGrid::new(r, d, &levels, base_used[d], max_cells).expect("same room");
                    dp.push(build(&fine, best_x, true));
                }
            }
        } else if nb > 0 {
            for d in 0..m {
                match DpGrid::new(r, d, &levels, base_used[d], max_cells) {
                    Some(g) => dp.push(DpRow::new(r, &g, lam, &levels, true)),
                    None => infeasible = true,
                }
            }
        }
        Self {
            r,
            m,
            lists: lists.to_vec(),
            rc_of,
            lb,
            ub,
            limits,
            nodes: 0,
            order,
            base_used,
            base_obj,
            suf_minc,
            suf_c0,
            suf_obj0,
            lp: Vec::new(),
            dp,
            infeasible,
            memo_pruned: 0,
        }
    }

    /// The bounds only the search uses: the LP relaxation of each row alone and of the
    /// `λ`-weighted surrogate row, and (two rows) extra tables at multiples of the tuned
    /// multipliers.
    fn add_search_bounds(&mut self, lam: &[f64]) {
        let r = self.r;
        let m = self.m;
        let nb = self.order.len();
        let levels: Vec<&[usize]> = self
            .order
            .iter()
            .map(|&g| self.lists[g].as_slice())
            .collect();
        for d in 0..m {
            let mut mu = vec![0.0; m];
            mu[d] = 1.0 / r.caps[d].abs().max(1e-300);
            self.lp.push(LpRow::new(r, mu, &levels));
        }
        if m > 1 && lam.iter().any(|&l| l > 0.0) {
            self.lp.push(LpRow::new(r, lam.to_vec(), &levels));
        }
        if nb == 0 || m != 2 || self.infeasible {
            return;
        }
        // The best multiplier of the relaxed row differs from node to node: tables at
        // multiples of the tuned one (each a valid bound) strengthen deep nodes' bounds.
        let max_cells = (DFS_TABLE_CELLS / ((nb + 1) * m)).clamp(64, 1 << 14);
        let extra_cells = max_cells.min(DFS_EXTRA_CELLS);
        let tuned: Vec<(usize, Vec<f64>)> = self
            .dp
            .iter()
            .map(|row| (row.d, row.lam_other.clone()))
            .collect();
        let grids: Vec<Option<DpGrid>> = (0..m)
            .map(|d| DpGrid::new(r, d, &levels, self.base_used[d], extra_cells))
            .collect();
        for &f in DFS_EXTRA_FACTORS {
            for (d, l) in &tuned {
                let e = 1 - d;
                let Some(grid) = &grids[*d] else { continue };
                if l[e] <= 0.0 {
                    continue;
                }
                let mut l = l.clone();
                l[e] *= f;
                self.dp.push(DpRow::new(r, grid, &l, &levels, true));
            }
        }
    }

    /// Drops the items whose forced bound ([`DpRow::forced_bounds`], the best of the tables)
    /// reaches the incumbent; the levels and tables stay (a relaxation of fewer items is still
    /// a bound). Returns how many items were dropped.
    fn fix_by_tables(&mut self) -> usize {
        if self.infeasible || self.dp.is_empty() || !self.ub.is_finite() {
            return 0;
        }
        let levels: Vec<&[usize]> = self
            .order
            .iter()
            .map(|&g| self.lists[g].as_slice())
            .collect();
        let mut best: Vec<Vec<f64>> = levels
            .iter()
            .map(|lv| vec![f64::NEG_INFINITY; lv.len()])
            .collect();
        for row in &self.dp {
            let fb = row.forced_bounds(
                self.r,
                &levels,
                self.base_obj,
                &self.base_used,
                &self.r.caps,
            );
            for (b, f) in best.iter_mut().zip(&fb) {
                for (x, &y) in b.iter_mut().zip(f) {
                    *x = x.max(y);
                }
            }
        }
        let lim = self.ub - self.eps();
        let mut dropped = 0;
        let mut lists = self.lists.clone();
        for (t, &g) in self.order.iter().enumerate() {
            let keep: Vec<usize> = levels[t]
                .iter()
                .zip(&best[t])
                .filter(|&(_, &b)| b < lim)
                .map(|(&i, _)| i)
                .collect();
            if keep.len() < levels[t].len() && !keep.is_empty() {
                dropped += levels[t].len() - keep.len();
                lists[g] = keep;
            }
        }
        if dropped > 0 {
            (self.suf_minc, self.suf_c0, self.suf_obj0) = suffix_sums(self.r, &lists, &self.order);
            self.lists = lists;
        }
        dropped
    }

    /// Items of the levels still to decide.
    fn undecided_items(&self) -> usize {
        self.order.iter().map(|&g| self.lists[g].len()).sum()
    }

    fn eps(&self) -> f64 {
        if self.ub.is_finite() {
            1e-9 * self.ub.abs().max(1.0)
        } else {
            0.0
        }
    }

    /// Best bound of the levels `t..` (objective of fixed part `o`, costs `used`).
    fn bound(&self, t: usize, o: f64, used: &[f64]) -> f64 {
        let r = self.r;
        let mut b = f64::NEG_INFINITY;
        for row in &self.dp {
            b = b.max(o + row.bound(t, used, &r.caps));
            if b >= self.ub - self.eps() {
                return b;
            }
        }
        for row in &self.lp {
            b = b.max(o + row.bound(t, used));
            if b >= self.ub - self.eps() {
                return b;
            }
        }
        b
    }

    fn root_bound(&self) -> f64 {
        if self.infeasible {
            return f64::INFINITY;
        }
        self.bound(0, self.base_obj, &self.base_used)
    }

    /// Runs the search, improving `best` / `self.ub`; true when a limit stopped it.
    fn run(&mut self, best: &mut Vec<usize>, nodes_before: u64) -> bool {
        let mut memo = Memo::new(self.m, self.limits.dfs_memo);
        let aborted = self.search(best, nodes_before, &mut memo);
        self.memo_pruned = memo.pruned;
        aborted
    }

    fn search(&mut self, best: &mut Vec<usize>, nodes_before: u64, memo: &mut Memo) -> bool {
        self.nodes = nodes_before;
        let r = self.r;
        let m = self.m;
        let nb = self.order.len();
        if self.infeasible {
            return false;
        }
        let fits_all = |used: &[f64], suf: &[f64], t: usize| {
            (0..m).all(|d| fits(used[d] + suf[t * m + d], r.caps[d]))
        };
        let record = |path: &[usize], order: &[usize], best: &mut Vec<usize>| {
            let mut items: Vec<usize> = self.lists.iter().map(|v| v[0]).collect();
            for (lvl, &i) in path.iter().enumerate() {
                items[order[lvl]] = i;
            }
            *best = items;
        };
        // Root: the zero-reduced-cost completion may already be feasible.
        if fits_all(&self.base_used, &self.suf_c0, 0)
            && self.base_obj + self.suf_obj0[0] < self.ub - self.eps()
        {
            self.ub = self.base_obj + self.suf_obj0[0];
            record(&[], &self.order, best);
        }
        if nb == 0
            || !fits_all(&self.base_used, &self.suf_minc, 0)
            || self.bound(0, self.base_obj, &self.base_used) >= self.ub - self.eps()
        {
            return false;
        }
        let mut used_stack = vec![0.0; (nb + 1) * m];
        used_stack[..m].copy_from_slice(&self.base_used);
        let mut rc_stack = vec![0.0; nb + 1];
        let mut obj_stack = vec![0.0; nb + 1];
        obj_stack[0] = self.base_obj;
        let mut next = vec![0usize; nb + 1];
        let mut cand: Vec<Vec<(f64, usize)>> = vec![Vec::new(); nb];
        let mut path: Vec<usize> = vec![usize::MAX; nb];
        let mut child = vec![0.0; m];
        let mut t = 0usize;
        let mut enter = true;
        loop {
            if enter {
                // Children of the node at level t, best bound first.
                enter = false;
                next[t] = 0;
                let mut c = std::mem::take(&mut cand[t]);
                c.clear();
                let parent = &used_stack[t * m..(t + 1) * m];
                for &i in &self.lists[self.order[t]] {
                    self.nodes += 1;
                    let rcsum = rc_stack[t] + self.rc_of[i];
                    if self.lb + rcsum >= self.ub - self.eps() {
                        break; // items are sorted by reduced cost
                    }
                    for d in 0..m {
                        child[d] = parent[d] + r.c(i)[d];
                    }
                    if !fits_all(&child, &self.suf_minc, t + 1) {
                        continue;
                    }
                    let objv = obj_stack[t] + r.obj[i];
                    let b = if t + 1 == nb {
                        objv
                    } else {
                        self.bound(t + 1, objv, &child)
                    };
                    if b < self.ub - self.eps() {
                        c.push((b, i));
                    }
                }
                c.sort_by(|a, b| a.0.total_cmp(&b.0));
                cand[t] = c;
                if self.nodes >= self.limits.node_limit
                    || (self.nodes.is_multiple_of(64)
                        && self.limits.deadline.is_some_and(|dl| Instant::now() >= dl))
                {
                    return true;
                }
            }
            if next[t] >= cand[t].len() || cand[t][next[t]].0 >= self.ub - self.eps() {
                if t == 0 {
                    break;
                }
                t -= 1;
                continue;
            }
            let i = cand[t][next[t]].1;
            next[t] += 1;
            let (lo, hi) = used_stack.split_at_mut((t + 1) * m);
            let parent = &lo[t * m..];
            let ch = &mut hi[..m];
            for d in 0..m {
                ch[d] = parent[d] + r.c(i)[d];
            }
            let objv = obj_stack[t] + r.obj[i];
            path[t] = i;
            if t + 1 == nb {
                if objv < self.ub - self.eps() {
                    self.ub = objv;
                    record(&path, &self.order, best);
                }
                continue;
            }
            if fits_all(ch, &self.suf_c0, t + 1)
                && objv + self.suf_obj0[t + 1] < self.ub - self.eps()
            {
                self.ub = objv + self.suf_obj0[t + 1];
                record(&path[..t + 1], &self.order, best);
            }
            if memo.dominated(t + 1, ch, objv) {
                continue;
            }
            rc_stack[t + 1] = rc_stack[t] + self.rc_of[i];
            obj_stack[t + 1] = objv;
            t += 1;
            enter = true;
        }
        false
    }
}

/// Per suffix `t..` of the levels `order`: the least cost per row, and the costs and objective
/// of the completion by each level's first item.
fn suffix_sums(
    r: &Reduced,
    lists: &[Vec<usize>],
    order: &[usize],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let m = r.m();
    let nb = order.len();
    let mut suf_minc = vec![0.0; (nb + 1) * m];
    let mut suf_c0 = vec![0.0; (nb + 1) * m];
    let mut suf_obj0 = vec![0.0; nb + 1];
    for t in (0..nb).rev() {
        let v = &lists[order[t]];
        suf_obj0[t] = suf_obj0[t + 1] + r.obj[v[0]];
        for d in 0..m {
            let minc = v.iter().map(|&i| r.c(i)[d]).fold(f64::INFINITY, f64::min);
            suf_minc[t * m + d] = suf_minc[(t + 1) * m + d] + minc;
            suf_c0[t * m + d] = suf_c0[(t + 1) * m + d] + r.c(v[0])[d];
        }
    }
    (suf_minc, suf_c0, suf_obj0)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::{AllocationProblem, CostKind};
    use crate::random::hawq_like;
    use crate::test_support::{check_forced, next_choice, random_multipliers};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Best objective of a reduced problem by enumeration.
    fn brute(r: &Reduced) -> Option<f64> {
        let g_n = r.n_groups();
        let mut pick = vec![0usize; g_n];
        let mut best: Option<f64> = None;
        loop {
            let items: Vec<usize> = (0..g_n).map(|g| r.starts[g] + pick[g]).collect();
            if r.feasible(&items) {
                let v: f64 = items.iter().map(|&i| r.obj[i]).sum();
                if best.is_none_or(|b| v < b) {
                    best = Some(v);
                }
            }
            if !next_choice(&mut pick, |g| r.starts[g + 1] - r.starts[g]) {
                return best;
            }
        }
    }

    /// Checks that `items` are feasible and reach the brute-force optimum `b`; returns their
    /// objective.
    fn assert_optimal(r: &Reduced, items: &[usize], b: f64, what: &str) -> f64 {
        assert!(r.feasible(items), "{what}: infeasible");
        let v: f64 = items.iter().map(|&i| r.obj[i]).sum();
        assert!(
            (v - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what}: got {v}, optimum {b}"
        );
        v
    }

    /// Random two-budget problem: HAWQ-like, or unstructured with integer or fractional costs,
    /// sometimes with a tie group and a fixed layer.
    fn two_budget(seed: u64) -> AllocationProblem {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nl = rng.random_range(3..=7);
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let no = rng.random_range(2..=5);
        let budgets = [
            (CostKind::ModelSize, rng.random_range(0.05..0.9)),
            (CostKind::Bops, rng.random_range(0.05..0.9)),
        ];
        let mut p = hawq_like(seed, nl, &bits[..no], &budgets);
        let style = seed % 3;
        if style > 0 {
            for l in 0..nl {
                for o in 0..no {
                    p.sensitivity.set(l, o, rng.random_range(0.0..10.0));
                }
            }
            for (_, t) in p.costs.iter_mut() {
                for l in 0..nl {
                    for o in 0..no {
                        let v: f64 = rng.random_range(1.0..100.0);
                        t.set(l, o, if style == 1 { v.round() } else { v });
                    }
                }
            }
            for b in p.budgets.iter_mut() {
                let t = p
                    .costs
                    .iter()
                    .find(|(k, _)| *k == b.cost)
                    .unwrap()
                    .1
                    .clone();
                let lo: f64 = (0..nl)
                    .map(|l| t.row(l).iter().copied().fold(f64::INFINITY, f64::min))
                    .sum();
                let hi: f64 = (0..nl)
                    .map(|l| t.row(l).iter().copied().fold(0.0, f64::max))
                    .sum();
                b.max = lo + rng.random_range(0.0..1.0) * (hi - lo);
                if style == 1 {
                    b.max = b.max.round();
                }
            }
        }
        if nl >= 4 && rng.random_bool(0.3) {
            p.tie_groups.push(vec![1, nl - 1]);
        }
        if rng.random_bool(0.2) {
            p.fixed.push((0, no - 1));
        }
        p
    }

    #[test]
    fn core_programme_matches_brute_force_on_two_budgets() {
        let (mut solved, mut infeasible) = (0, 0);
        // Items the core's forced bounds fixed before its searches.
        let mut fixed = 0;
        for seed in 0..160u64 {
            let p = two_budget(seed);
            let Ok(r) = Reduced::new(&p) else {
                infeasible += 1;
                continue;
            };
            let expect = brute(&r);
            // (The last pair makes every core search run out of its share of states and
            // rebuild its tables finer.)
            for (first, refine) in [(0u64, REFINE_STATES), (200_000, REFINE_STATES), (0, 1)] {
                if refine == 1 && seed % 4 != 0 {
                    continue; // (tables of up to MAX_CORE_CELLS: every fourth seed suffices)
                }
                let limits = Limits {
                    dfs_first_nodes: first,
                    core_refine_states: refine,
                    ..Limits::default()
                };
                let (out, stats) = solve(&r, &limits);
                match (expect, out) {
                    (Some(b), Ok(items)) => {
                        let v = assert_optimal(
                            &r,
                            &items,
                            b,
                            &format!("seed {seed} first {first} refine {refine}"),
                        );
                        assert_eq!(stats.proven_bound, v);
                        solved += 1;
                        if first == 0 {
                            fixed += stats.fixed_by_tables;
                        }
                    }
                    (None, Err(Failure::Infeasible)) => infeasible += 1,
                    (e, o) => {
                        panic!("seed {seed} first {first} refine {refine}: brute {e:?} vs {o:?}")
                    }
                }
            }
        }
        assert!(solved >= 190, "{solved} solved, {infeasible} infeasible");
        assert!(
            fixed > 50,
            "the core's forced bounds fixed {fixed} items only"
        );
    }

    /// A core search that runs out of its share of states is run again on finer tables at the
    /// same cap, and the answer is still the optimum (the one found without that limit).
    #[test]
    fn refined_core_search_keeps_the_optimum() {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let mut refined = 0;
        for seed in 0..6u64 {
            let p = hawq_like(
                40 + seed,
                60,
                &bits,
                &[(CostKind::ModelSize, 0.5), (CostKind::Bops, 0.45)],
            );
            let r = Reduced::new(&p).unwrap();
            let base = Limits {
                dfs_first_nodes: 0,
                ..Limits::default()
            };
            let (plain, _) = solve(&r, &base);
            let (tight, stats) = solve(
                &r,
                &Limits {
                    core_refine_states: 20,
                    ..base
                },
            );
            let obj = |items: &[usize]| items.iter().map(|&i| r.obj[i]).sum::<f64>();
            let (a, b) = (plain.expect("solved"), tight.expect("solved"));
            assert!(r.feasible(&b), "seed {seed}");
            assert!(
                (obj(&a) - obj(&b)).abs() <= 1e-9 * obj(&a).abs().max(1.0),
                "seed {seed}: {} vs {}",
                obj(&a),
                obj(&b)
            );
            refined += stats.refinements;
        }
        assert!(refined > 0, "no search was refined");
    }

    /// Random positive multipliers for two rows (scaled to the objective's spread), the
    /// reduced costs at them and each group's items by reduced cost.
    fn multipliers_and_lists(r: &Reduced, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<Vec<usize>>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lam = random_multipliers(r, &mut rng, 0.05..2.0);
        let val = |i: usize| r.obj[i] + dot(&lam, r.c(i));
        let mut rc_of = vec![0.0; r.obj.len()];
        let lists: Vec<Vec<usize>> = (0..r.n_groups())
            .map(|g| {
                let mn = r.items(g).map(val).fold(f64::INFINITY, f64::min);
                let mut v: Vec<usize> = r.items(g).collect();
                for &i in &v {
                    rc_of[i] = val(i) - mn;
                }
                v.sort_by(|&a, &b| rc_of[a].total_cmp(&rc_of[b]).then(a.cmp(&b)));
                v
            })
            .collect();
        (lam, rc_of, lists)
    }

    /// The depth-first search over `lists` with no incumbent and no lower bound (its tables
    /// tuned from `lam`).
    fn open_dfs<'a>(
        r: &'a Reduced,
        lists: &[Vec<usize>],
        lam: &[f64],
        rc_of: &'a [f64],
        limits: &'a Limits,
    ) -> Dfs<'a> {
        Dfs::new(
            r,
            lists,
            f64::NEG_INFINITY,
            lam,
            rc_of,
            f64::INFINITY,
            limits,
            &mut [None, None],
        )
    }

    /// The forced bound of an item (prefix programme, the item, suffix table) never exceeds
    /// the best feasible solution that takes it, and on these instances it is often above
    /// the optimum (the item can be fixed out); checked by enumeration.
    #[test]
    fn forced_bounds_never_exceed_the_best_solution_with_the_item() {
        let (mut checked, mut above_opt) = (0usize, 0usize);
        for seed in 0..60u64 {
            let p = two_budget(700 + seed);
            let Ok(r) = Reduced::new(&p) else { continue };
            let (lam, rc_of, lists) = multipliers_and_lists(&r, 700 + seed);
            let limits = Limits::default();
            let d = open_dfs(&r, &lists, &lam, &rc_of, &limits);
            if d.infeasible || d.dp.is_empty() {
                continue;
            }
            let nb = d.order.len();
            let levels: Vec<&[usize]> = d.order.iter().map(|&g| lists[g].as_slice()).collect();
            // Best feasible objective per (level, position) by enumeration.
            let mut best = vec![vec![f64::INFINITY; 8]; nb];
            let mut opt = f64::INFINITY;
            let mut pick = vec![0usize; nb];
            loop {
                let mut o = d.base_obj;
                let mut used = d.base_used.clone();
                for t in 0..nb {
                    let i = levels[t][pick[t]];
                    o += r.obj[i];
                    for (u, c) in used.iter_mut().zip(r.c(i)) {
                        *u += c;
                    }
                }
                if used.iter().zip(&r.caps).all(|(u, c)| fits(*u, *c)) {
                    opt = opt.min(o);
                    for t in 0..nb {
                        best[t][pick[t]] = best[t][pick[t]].min(o);
                    }
                }
                if !next_choice(&mut pick, |t| levels[t].len()) {
                    break;
                }
            }
            for row in &d.dp {
                let fb = row.forced_bounds(&r, &levels, d.base_obj, &d.base_used, &r.caps);
                for t in 0..nb {
                    for (k, &f) in fb[t].iter().enumerate() {
                        let what = format!("seed {seed} level {t} item {k}");
                        above_opt += usize::from(check_forced(f, best[t][k], opt, &what));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} forced bounds checked");
        assert!(above_opt > 300, "only {above_opt} items could be fixed out");
    }

    /// The depth-first search's bound (tuned and extra dynamic-programming tables, LP rows)
    /// never exceeds the objective of a feasible completion of a prefix.
    #[test]
    fn depth_first_bounds_never_exceed_feasible_completions() {
        let mut checked = 0usize;
        let mut with_extras = 0usize;
        for seed in 0..60u64 {
            let p = two_budget(500 + seed);
            let Ok(r) = Reduced::new(&p) else { continue };
            let (lam, rc_of, lists) = multipliers_and_lists(&r, 500 + seed);
            let limits = Limits::default();
            let mut d = open_dfs(&r, &lists, &lam, &rc_of, &limits);
            d.add_search_bounds(&lam);
            if d.infeasible {
                continue;
            }
            if d.dp.len() > 2 {
                with_extras += 1;
            }
            let nb = d.order.len();
            let mut pick = vec![0usize; nb];
            loop {
                // Prefix states of this choice, then its objective if feasible.
                let mut o = d.base_obj;
                let mut used = d.base_used.clone();
                let mut prefix = vec![(o, used.clone())];
                for (t, &g) in d.order.iter().enumerate() {
                    let i = lists[g][pick[t]];
                    o += r.obj[i];
                    for (u, c) in used.iter_mut().zip(r.c(i)) {
                        *u += c;
                    }
                    prefix.push((o, used.clone()));
                }
                if used.iter().zip(&r.caps).all(|(u, c)| fits(*u, *c)) {
                    for (t, (po, pu)) in prefix.iter().enumerate() {
                        let b = d.bound(t, *po, pu);
                        assert!(
                            b <= o + 1e-9 * o.abs().max(1.0),
                            "seed {seed} level {t}: bound {b} above completion {o}"
                        );
                        // Each row on its own (the maximum could hide a broken one).
                        let rows =
                            d.dp.iter()
                                .map(|row| row.bound(t, pu, &r.caps))
                                .chain(d.lp.iter().map(|row| row.bound(t, pu)));
                        for (k, v) in rows.enumerate() {
                            assert!(
                                po + v <= o + 1e-9 * o.abs().max(1.0),
                                "seed {seed} level {t} row {k}: {} above completion {o}",
                                po + v
                            );
                        }
                        checked += 1;
                    }
                }
                if !next_choice(&mut pick, |t| lists[d.order[t]].len()) {
                    break;
                }
            }
        }
        assert!(checked > 1000, "only {checked} bounds checked");
        assert!(
            with_extras > 10,
            "extra tables built on {with_extras} instances only"
        );
    }

    /// The depth-first search with its dominance memory finds the brute-force optimum with
    /// one, two and three rows, and on larger instances, where the memory drops many nodes
    /// (hawq-like first-row costs repeat within a group, so equal ones at a level are common),
    /// the optimum of the search without it.
    #[test]
    fn depth_first_dominance_memory_matches_brute_force() {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let kinds = [
            CostKind::ModelSize,
            CostKind::Bops,
            CostKind::ActivationMemory,
        ];
        let mut pruned = [0u64; 3];
        let mut solved = [0usize; 3];
        // Items the tables' forced bounds dropped before the searches.
        let mut fixed = 0usize;
        // Depth-first search only (never handed to the core programme), memory on or off.
        let depth_first = |memo: bool| Limits {
            dfs_first_nodes: u64::MAX,
            dfs_max_groups: usize::MAX,
            dfs_memo: memo,
            ..Limits::default()
        };
        for seed in 0..90u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(4000 + seed);
            let m = 1 + (seed % 3) as usize;
            let nl = rng.random_range(6..=8);
            let no = rng.random_range(3..=4);
            let budgets: Vec<(CostKind, f64)> = kinds[..m]
                .iter()
                .map(|k| (k.clone(), rng.random_range(0.1..0.7)))
                .collect();
            let p = hawq_like(4000 + seed, nl, &bits[1..1 + no], &budgets);
            let Ok(r) = Reduced::new(&p) else { continue };
            let expect = brute(&r);
            for memo in [true, false] {
                let limits = depth_first(memo);
                let (out, stats) = solve(&r, &limits);
                match (expect, out) {
                    (Some(b), Ok(items)) => {
                        assert_optimal(&r, &items, b, &format!("seed {seed} m {m} memo {memo}"));
                        fixed += stats.fixed_by_tables;
                        if memo {
                            solved[m - 1] += 1;
                            pruned[m - 1] += stats.memo_pruned;
                        } else {
                            assert_eq!(stats.memo_pruned, 0);
                        }
                    }
                    (None, Err(Failure::Infeasible)) => {}
                    (e, o) => panic!("seed {seed} m {m} memo {memo}: brute {e:?} vs {o:?}"),
                }
            }
        }
        for m in 0..3 {
            assert!(solved[m] >= 10, "{} rows: {} solved", m + 1, solved[m]);
        }
        assert!(fixed > 50, "forced bounds fixed {fixed} items only");
        // Larger instances, where the memory drops many nodes: the same optimum as the search
        // without it (itself checked against brute force above and in the other tests).
        for seed in 0..24u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(4500 + seed);
            let m = 1 + (seed % 3) as usize;
            let budgets: Vec<(CostKind, f64)> = kinds[..m]
                .iter()
                .map(|k| (k.clone(), rng.random_range(0.2..0.6)))
                .collect();
            let nl = rng.random_range(20..=30);
            let p = hawq_like(4500 + seed, nl, &bits[..4], &budgets);
            let Ok(r) = Reduced::new(&p) else { continue };
            let run = |memo: bool| {
                let limits = depth_first(memo);
                let (out, stats) = solve(&r, &limits);
                let v = match out {
                    Ok(items) => {
                        assert!(r.feasible(&items), "seed {seed}");
                        Some(items.iter().map(|&i| r.obj[i]).sum::<f64>())
                    }
                    Err(Failure::Infeasible) => None,
                    Err(e) => panic!("seed {seed}: {e:?}"),
                };
                (v, stats.memo_pruned)
            };
            let ((with, n), (without, _)) = (run(true), run(false));
            match (with, without) {
                (Some(a), Some(b)) => assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "seed {seed} m {m}: {a} with the memory, {b} without"
                ),
                (None, None) => {}
                (a, b) => panic!("seed {seed} m {m}: {a:?} vs {b:?}"),
            }
            pruned[m - 1] += n;
        }
        // (With one row, presolve leaves no two items of equal cost in a group and the search
        // is short, so equal costs at one level are rare there.)
        assert!(
            pruned[1] >= 20 && pruned[2] >= 20,
            "the memory dropped too few nodes to be tested: {pruned:?}"
        );
    }

    #[test]
    fn three_budgets_match_brute_force() {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let (mut solved, mut infeasible) = (0, 0);
        for seed in 0..60u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(7000 + seed);
            let nl = rng.random_range(3..=7);
            let no = rng.random_range(2..=6);
            let budgets = [
                (CostKind::ModelSize, rng.random_range(0.05..0.9)),
                (CostKind::Bops, rng.random_range(0.05..0.9)),
                (CostKind::ActivationMemory, rng.random_range(0.05..0.9)),
            ];
            let mut p = hawq_like(7000 + seed, nl, &bits[..no], &budgets);
            if seed % 2 == 1 {
                for l in 0..nl {
                    for o in 0..no {
                        p.sensitivity.set(l, o, rng.random_range(0.0..10.0));
                    }
                }
            }
            let Ok(r) = Reduced::new(&p) else {
                infeasible += 1;
                continue;
            };
            assert_eq!(r.m(), 3);
            match (brute(&r), solve(&r, &Limits::default()).0) {
                (Some(b), Ok(items)) => {
                    assert_optimal(&r, &items, b, &format!("seed {seed}"));
                    solved += 1;
                }
                (None, Err(Failure::Infeasible)) => infeasible += 1,
                (e, o) => panic!("seed {seed}: brute {e:?} vs {o:?}"),
            }
        }
        assert!(solved >= 30, "{solved} solved, {infeasible} infeasible");
    }

    #[test]
    fn core_programme_matches_depth_first_search_on_40_layers() {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        for seed in 0..24u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(900 + seed);
            let budgets = [
                (CostKind::ModelSize, rng.random_range(0.2..0.8)),
                (CostKind::Bops, rng.random_range(0.2..0.8)),
            ];
            let mut p = hawq_like(900 + seed, 40, &bits[..rng.random_range(3..=6)], &budgets);
            if seed % 3 == 0 {
                p.tie_groups.push(vec![3, 17, 30]);
                p.fixed.push((0, 1));
            }
            let Ok(r) = Reduced::new(&p) else { continue };
            let run = |first: u64| {
                let limits = Limits {
                    dfs_first_nodes: first,
                    dfs_max_groups: usize::MAX,
                    ..Limits::default()
                };
                match solve(&r, &limits).0 {
                    Ok(items) => {
                        assert!(r.feasible(&items), "seed {seed}");
                        Some(items.iter().map(|&i| r.obj[i]).sum::<f64>())
                    }
                    Err(Failure::Infeasible) => None,
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
            };
            match (run(0), run(u64::MAX)) {
                (Some(a), Some(b)) => {
                    assert!(
                        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                        "seed {seed}: {a} vs {b}"
                    )
                }
                (None, None) => {}
                (a, b) => panic!("seed {seed}: core {a:?} vs dfs {b:?}"),
            }
        }
    }

    #[test]
    fn core_programme_solves_200_layers_and_reports_proven_bound_on_limit() {
        let bits = [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)];
        let p = hawq_like(
            11,
            200,
            &bits,
            &[(CostKind::ModelSize, 0.5), (CostKind::Bops, 0.45)],
        );
        let r = Reduced::new(&p).unwrap();
        let (out, stats) = solve(&r, &Limits::default());
        let items = out.unwrap_or_else(|_| panic!("not solved: {stats:?}"));
        assert!(r.feasible(&items));
        let opt: f64 = items.iter().map(|&i| r.obj[i]).sum();
        // Straight to the core programme: the same optimum.
        let (out0, _) = solve(
            &r,
            &Limits {
                dfs_first_nodes: 0,
                ..Limits::default()
            },
        );
        let v0: f64 = out0.unwrap().iter().map(|&i| r.obj[i]).sum();
        assert!((v0 - opt).abs() <= 1e-9 * opt, "{v0} vs {opt}");
        assert!(stats.lower_bound <= opt + 1e-9 * opt);
        // A tiny state budget stops the search: the certificate brackets the optimum.
        let (out, _) = solve(
            &r,
            &Limits {
                node_limit: 2_000,
                dfs_first_nodes: 500,
                ..Limits::default()
            },
        );
        match out {
            Err(Failure::Limit { best, bound, .. }) => {
                assert!(
                    bound <= opt + 1e-9 * opt,
                    "bound {bound} above optimum {opt}"
                );
                assert!(best >= opt - 1e-9 * opt, "best {best} below optimum {opt}");
                assert!(bound > stats.lower_bound - 1e-9 * opt);
            }
            Ok(items) => {
                let v: f64 = items.iter().map(|&i| r.obj[i]).sum();
                assert!((v - opt).abs() <= 1e-9 * opt);
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}
