//! Reduction of an [`AllocationProblem`] to a multiple-choice knapsack over *groups*:
//! tie groups are merged into one group (costs and sensitivities summed over members),
//! masks and fixed layers restrict each group's items, and max-type budgets (DQ's C3,
//! survey §3.1.2) become per-layer filters — `max_l c_l ≤ A` holds exactly when every layer's
//! chosen `c_l ≤ A`, so it is not a knapsack row. What remains are the additive budgets of
//! HAWQ-V3 Eq. 26, one dimension each.

use crate::error::{AllocError, Result};
use crate::problem::{fits, Aggregate, Allocation, AllocationProblem, CostKind};

/// A multiple-choice knapsack: pick one item per group, minimise the summed objective,
/// keep every additive dimension within its capacity.
#[derive(Debug, Clone)]
pub struct Reduced {
    /// Layer indices of each group (tie groups merged, singletons otherwise).
    pub groups: Vec<Vec<usize>>,
    /// Start of each group's items in the flat arrays; `starts[g]..starts[g+1]`.
    pub starts: Vec<usize>,
    /// Option index of each item.
    pub option: Vec<usize>,
    /// Objective (summed sensitivity over the group's layers) of each item.
    pub obj: Vec<f64>,
    /// Costs of each item, `m` per item (row-major).
    pub cost: Vec<f64>,
    /// Capacity of each additive dimension.
    pub caps: Vec<f64>,
    /// Cost kind of each additive dimension.
    pub kinds: Vec<CostKind>,
}

impl Reduced {
    /// Number of additive dimensions.
    pub fn m(&self) -> usize {
        self.caps.len()
    }

    /// Number of groups.
    pub fn n_groups(&self) -> usize {
        self.groups.len()
    }

    /// Item range of group `g`.
    pub fn items(&self, g: usize) -> std::ops::Range<usize> {
        self.starts[g]..self.starts[g + 1]
    }

    /// Cost vector of item `i`.
    pub fn c(&self, i: usize) -> &[f64] {
        let m = self.m();
        &self.cost[i * m..(i + 1) * m]
    }

    /// Builds the reduced problem (validating `p` first). Fails with
    /// [`AllocError::Infeasible`] when a group has no admissible option or an additive budget
    /// is below its smallest achievable value.
    pub fn new(p: &AllocationProblem) -> Result<Self> {
        p.validate()?;
        let groups = merged_groups(p);
        let no = p.options.len();
        let mut fixed = vec![None; p.layers.len()];
        for &(l, o) in &p.fixed {
            fixed[l] = Some(o);
        }
        let add: Vec<(usize, &CostKind)> = p
            .budgets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.cost.aggregate() == Aggregate::Sum)
            .map(|(i, b)| (i, &b.cost))
            .collect();
        let maxb: Vec<(&crate::table::Table, f64)> = p
            .budgets
            .iter()
            .filter(|b| b.cost.aggregate() == Aggregate::Max)
            .map(|b| (p.cost_table(&b.cost).expect("validated"), b.max))
            .collect();
        let add_tables: Vec<&crate::table::Table> = add
            .iter()
            .map(|(_, k)| p.cost_table(k).expect("validated"))
            .collect();
        let m = add.len();
        let mut r = Reduced {
            groups: Vec::with_capacity(groups.len()),
            starts: vec![0],
            option: Vec::new(),
            obj: Vec::new(),
            cost: Vec::new(),
            caps: add.iter().map(|(i, _)| p.budgets[*i].max).collect(),
            kinds: add.iter().map(|(_, k)| (*k).clone()).collect(),
        };
        for grp in groups {
            let mut any_structural = false;
            for o in 0..no {
                let structural = grp
                    .iter()
                    .all(|&l| p.mask_allows(l, o) && fixed[l].is_none_or(|f| f == o));
                if !structural {
                    continue;
                }
                any_structural = true;
                let ok_max = maxb
                    .iter()
                    .all(|(t, max)| grp.iter().all(|&l| fits(t.get(l, o), *max)));
                if !ok_max {
                    continue;
                }
                r.option.push(o);
                r.obj
                    .push(grp.iter().map(|&l| p.sensitivity.get(l, o)).sum::<f64>());
                for t in &add_tables {
                    r.cost.push(grp.iter().map(|&l| t.get(l, o)).sum::<f64>());
                }
            }
            if r.option.len() == *r.starts.last().expect("non-empty") {
                let names: Vec<&str> = grp.iter().map(|&l| p.layers[l].name.as_str()).collect();
                let detail = if any_structural {
                    format!(
                        "layer(s) {} have no option within the max-type budgets; {}",
                        names.join(", "),
                        min_costs_report(p)
                    )
                } else {
                    format!(
                        "layers {} are tied but their masks / fixed options share no option",
                        names.join(", ")
                    )
                };
                return Err(AllocError::Infeasible { detail });
            }
            r.starts.push(r.option.len());
            r.groups.push(grp);
        }
        debug_assert_eq!(r.cost.len(), r.option.len() * m);
        for d in 0..m {
            let least: f64 = (0..r.n_groups())
                .map(|g| r.items(g).map(|i| r.c(i)[d]).fold(f64::INFINITY, f64::min))
                .sum();
            if !fits(least, r.caps[d]) {
                return Err(AllocError::Infeasible {
                    detail: min_costs_report(p),
                });
            }
        }
        Ok(r)
    }

    /// Objective and per-dimension costs of a group-level choice (item index per group).
    pub fn totals(&self, items: &[usize]) -> (f64, Vec<f64>) {
        let mut c = vec![0.0; self.m()];
        let mut o = 0.0;
        for &i in items {
            o += self.obj[i];
            for (d, v) in self.c(i).iter().enumerate() {
                c[d] += v;
            }
        }
        (o, c)
    }

    /// Whether item choices satisfy all capacities.
    pub fn feasible(&self, items: &[usize]) -> bool {
        let (_, c) = self.totals(items);
        c.iter().zip(&self.caps).all(|(v, cap)| fits(*v, *cap))
    }

    /// Expands item choices (one per group) to option indices per layer.
    pub fn expand(&self, items: &[usize], n_layers: usize) -> Vec<usize> {
        let mut choice = vec![0; n_layers];
        for (g, &i) in items.iter().enumerate() {
            for &l in &self.groups[g] {
                choice[l] = self.option[i];
            }
        }
        choice
    }

    /// Expands and evaluates item choices on the original problem.
    pub fn finish(&self, p: &AllocationProblem, items: &[usize]) -> Result<Allocation> {
        p.evaluate(&self.expand(items, p.layers.len()))
    }
}

/// Tie groups merged transitively (union-find), ordered by their smallest layer; layers not in
/// any tie group are singleton groups.
pub fn merged_groups(p: &AllocationProblem) -> Vec<Vec<usize>> {
    let n = p.layers.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for grp in &p.tie_groups {
        for w in grp.windows(2) {
            let (a, b) = (find(&mut parent, w[0]), find(&mut parent, w[1]));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut slot = vec![usize::MAX; n];
    for l in 0..n {
        let root = find(&mut parent, l);
        if slot[root] == usize::MAX {
            slot[root] = out.len();
            out.push(Vec::new());
        }
        out[slot[root]].push(l);
    }
    out
}

/// For every budget, the smallest value its cost can take with the options given (respecting
/// masks, fixed layers and tie groups but ignoring the other budgets), as a readable report.
pub fn min_costs_report(p: &AllocationProblem) -> String {
    let groups = merged_groups(p);
    let mut fixed = vec![None; p.layers.len()];
    for &(l, o) in &p.fixed {
        fixed[l] = Some(o);
    }
    let mut parts = Vec::new();
    let mut all_ok = true;
    for b in &p.budgets {
        let Some(t) = p.cost_table(&b.cost) else {
            continue;
        };
        let per_group = groups.iter().map(|grp| {
            (0..p.options.len())
                .filter(|&o| {
                    grp.iter()
                        .all(|&l| p.mask_allows(l, o) && fixed[l].is_none_or(|f| f == o))
                })
                .map(|o| b.cost.combine(grp.iter().map(|&l| t.get(l, o))))
                .fold(f64::INFINITY, f64::min)
        });
        let least = b.cost.combine(per_group);
        let ok = fits(least, b.max);
        all_ok &= ok;
        parts.push(format!(
            "`{}` ≤ {} {} (smallest achievable {})",
            b.cost,
            b.max,
            if ok {
                "is achievable"
            } else {
                "is NOT achievable"
            },
            least
        ));
    }
    if all_ok {
        format!(
            "each budget is achievable on its own but not all together: {}",
            parts.join("; ")
        )
    } else {
        parts.join("; ")
    }
}

/// The smallest value of each budgeted cost achievable on its own (same order as
/// `p.budgets`); `+inf` where no option is admissible.
pub fn min_achievable(p: &AllocationProblem) -> Vec<f64> {
    let groups = merged_groups(p);
    let mut fixed = vec![None; p.layers.len()];
    for &(l, o) in &p.fixed {
        fixed[l] = Some(o);
    }
    p.budgets
        .iter()
        .map(|b| {
            let Some(t) = p.cost_table(&b.cost) else {
                return f64::INFINITY;
            };
            b.cost.combine(groups.iter().map(|grp| {
                (0..p.options.len())
                    .filter(|&o| {
                        grp.iter()
                            .all(|&l| p.mask_allows(l, o) && fixed[l].is_none_or(|f| f == o))
                    })
                    .map(|o| b.cost.combine(grp.iter().map(|&l| t.get(l, o))))
                    .fold(f64::INFINITY, f64::min)
            }))
        })
        .collect()
}
