//! Allocators: one file per method, an [`Allocator`] trait and the ordered registry
//! [`ALLOCATORS`]. Adding a method = one file + two lines here.

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;

use crate::error::{config_err, AllocError, Result};
use crate::problem::{Allocation, AllocationProblem};
use crate::reduce::{min_costs_report, Reduced};

pub mod aq;
pub mod hybrid_net;
pub mod ilp;
pub mod lagrangian;
pub mod mckp_greedy;
pub mod opq;
pub mod pareto_dp;
pub mod pdb;
pub mod uniform;

pub use ilp::pareto_exact;
pub use pareto_dp::{pareto, ParetoPoint};

/// Per-solve context: seed and random generator (for stochastic allocators), limits and
/// statistics that allocators report.
#[derive(Debug, Clone)]
pub struct SolveCtx {
    /// Seed the generator was built from.
    pub seed: u64,
    /// Deterministic generator for stochastic allocators.
    pub rng: ChaCha8Rng,
    /// Optional wall-clock limit for search-based allocators.
    pub time_limit: Option<Duration>,
    /// Named statistics (`nodes`, `lower_bound`, …) written by the last solve.
    pub stats: Vec<(String, f64)>,
}

impl SolveCtx {
    /// A context seeded with `seed` and no time limit.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            time_limit: None,
            stats: Vec::new(),
        }
    }

    /// Records a statistic (replacing an earlier value of the same name).
    pub fn note(&mut self, key: &str, value: f64) {
        if let Some(s) = self.stats.iter_mut().find(|(k, _)| k == key) {
            s.1 = value;
        } else {
            self.stats.push((key.to_string(), value));
        }
    }

    /// A recorded statistic.
    pub fn stat(&self, key: &str) -> Option<f64> {
        self.stats.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// A bit-width allocator.
pub trait Allocator {
    /// Chooses one option per layer within every budget, or explains why it cannot.
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation>;
}

/// Registry entry of an allocator.
pub struct AllocatorEntry {
    /// Stable kebab-case name.
    pub name: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Survey section / equation and original paper.
    pub reference: &'static str,
    /// Whether the allocator is provably optimal (on the problems it accepts).
    pub exact: bool,
    /// Builds the allocator from a JSON config (`null` = defaults).
    pub build: fn(&serde_json::Value) -> Result<Box<dyn Allocator>>,
}

/// Every allocator, in a stable order.
pub const ALLOCATORS: &[AllocatorEntry] = &[
    ilp::ENTRY,
    pareto_dp::ENTRY,
    mckp_greedy::ENTRY,
    lagrangian::ENTRY,
    aq::ENTRY,
    pdb::ENTRY,
    hybrid_net::ENTRY,
    opq::ENTRY,
    uniform::ENTRY,
];

/// Builds a registered allocator by name.
pub fn allocator(name: &str, config: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    match ALLOCATORS.iter().find(|e| e.name == name) {
        Some(e) => (e.build)(config),
        None => Err(AllocError::Unknown {
            family: "allocator",
            name: name.to_string(),
            known: ALLOCATORS
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Parses a `deny_unknown_fields` config; `null` gives the default.
pub(crate) fn parse_config<T: DeserializeOwned + Default>(
    name: &str,
    v: &serde_json::Value,
) -> Result<T> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v.clone()).map_err(|e| config_err(name, e.to_string()))
}

/// Picks an item of group `g` for target bit-widths: the largest weight bits `<= tw` (else the
/// smallest available), then the largest activation bits `<= ta` when given (else the
/// smallest), then the lowest objective.
pub(crate) fn pick_item(
    r: &Reduced,
    p: &AllocationProblem,
    g: usize,
    tw: u32,
    ta: Option<u32>,
) -> usize {
    let items: Vec<usize> = r.items(g).collect();
    let wb = |i: usize| p.options[r.option[i]].weight_bits;
    let ab = |i: usize| p.options[r.option[i]].activation_bits;
    let w_sel = items
        .iter()
        .map(|&i| wb(i))
        .filter(|&w| w <= tw)
        .max()
        .unwrap_or_else(|| items.iter().map(|&i| wb(i)).min().expect("non-empty"));
    let cand: Vec<usize> = items.into_iter().filter(|&i| wb(i) == w_sel).collect();
    let cand: Vec<usize> = match ta {
        Some(ta) => {
            let a_sel = cand
                .iter()
                .map(|&i| ab(i))
                .filter(|&a| a <= ta)
                .max()
                .unwrap_or_else(|| cand.iter().map(|&i| ab(i)).min().expect("non-empty"));
            cand.into_iter().filter(|&i| ab(i) == a_sel).collect()
        }
        None => cand,
    };
    cand.into_iter()
        .min_by(|&a, &b| r.obj[a].total_cmp(&r.obj[b]))
        .expect("non-empty")
}

/// Rounds a real bit-width target to a `u32` (saturating at 1 and 64).
pub(crate) fn to_bits(x: f64) -> u32 {
    if x.is_nan() {
        1
    } else {
        x.clamp(1.0, 64.0) as u32
    }
}

/// The error a heuristic returns when none of its settings fits the budgets.
pub(crate) fn no_setting(method: &'static str, p: &AllocationProblem, tried: &str) -> AllocError {
    AllocError::NoFeasibleSetting {
        method,
        detail: format!("tried {tried}; {}", min_costs_report(p)),
    }
}

/// Largest knob value in `[lo, hi]` whose allocation `f(knob)` is feasible, by bisection
/// (assumes larger knobs cost more, as bit-widths grow with them); `None` when even `lo` fails.
pub(crate) fn bisect_knob(
    r: &Reduced,
    lo: f64,
    hi: f64,
    iters: usize,
    f: impl Fn(f64) -> Vec<usize>,
) -> Option<(f64, Vec<usize>)> {
    let top = f(hi);
    if r.feasible(&top) {
        return Some((hi, top));
    }
    let mut best = f(lo);
    if !r.feasible(&best) {
        return None;
    }
    let (mut lo, mut hi) = (lo, hi);
    let mut knob = lo;
    for _ in 0..iters {
        let mid = 0.5 * (lo + hi);
        let x = f(mid);
        if r.feasible(&x) {
            lo = mid;
            knob = mid;
            best = x;
        } else {
            hi = mid;
        }
    }
    Some((knob, best))
}

/// Items choosing, per group, the first admissible of the per-layer targets: the group takes
/// the largest target of its members.
pub(crate) fn items_for_targets(
    r: &Reduced,
    p: &AllocationProblem,
    tw: &[f64],
    ta: Option<&[f64]>,
) -> Vec<usize> {
    (0..r.n_groups())
        .map(|g| {
            let grp = &r.groups[g];
            let w = grp.iter().map(|&l| tw[l]).fold(f64::NEG_INFINITY, f64::max);
            let a = ta.map(|ta| grp.iter().map(|&l| ta[l]).fold(f64::NEG_INFINITY, f64::max));
            pick_item(r, p, g, to_bits(w), a.map(to_bits))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::problem::{AllocationProblem, BitOption, Budget, CostKind, LayerInfo};
    use crate::table::Table;

    /// Three layers, options w2/w4/w8 (a8), model-size = params × bits.
    pub fn tiny(budget: f64) -> AllocationProblem {
        let layers = vec![
            LayerInfo::new("a", 10, 100, 10),
            LayerInfo::new("b", 20, 100, 10),
            LayerInfo::new("c", 30, 100, 10),
        ];
        let options = vec![
            BitOption::new(2, 8),
            BitOption::new(4, 8),
            BitOption::new(8, 8),
        ];
        let sens = Table::from_rows(vec![
            vec![8.0, 2.0, 0.5],
            vec![4.0, 1.0, 0.25],
            vec![1.0, 0.3, 0.1],
        ])
        .unwrap();
        let mut p = AllocationProblem::new(layers, options, sens);
        let size = Table::from_rows(
            p.layers
                .iter()
                .map(|l| {
                    p.options
                        .iter()
                        .map(|o| (l.params * o.weight_bits as u64) as f64)
                        .collect()
                })
                .collect(),
        )
        .unwrap();
        p.set_cost(CostKind::ModelSize, size);
        p.budgets.push(Budget {
            cost: CostKind::ModelSize,
            max: budget,
        });
        p
    }
}
