//! Loads JSON allocation problems, solves each with the exact `ilp` allocator (median of
//! repeated in-process solves after an uncounted first one; no more repeats once they took
//! 5 s), runs a 50-point exact Pareto sweep along `model-size` (the problem with only its
//! model-size budget, each point an exact `ilp` solve) and the `pareto-dp` frontier on the same
//! axis, and prints one JSON line per file.
//!
//! `cargo run --release -p mixprec-alloc --example solve_bench -- [--repeats N] [--pareto N]
//! [--time-limit-ms MS] [--dfs-first N] [--dfs-max-groups N] [--no-memo] FILE...`
//!
//! `--dfs-first` / `--dfs-max-groups` / `--no-memo` override the exact solver's [`Limits`]
//! (nodes of the first depth-first search with two budgets, widest core it is tried on, the
//! depth-first dominance memory); with any of them, the timing calls the solver on the
//! reduced problem directly (no `Allocation` built) and prints its statistics.

use std::time::Instant;

use mixprec_alloc::mckp::{self, Limits};
use mixprec_alloc::methods::pareto_dp::{pareto_with, ParetoDpConfig};
use mixprec_alloc::reduce::Reduced;
use mixprec_alloc::{allocator, pareto_exact, AllocError, AllocationProblem, CostKind, SolveCtx};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut repeats = 11usize;
    let mut n_pareto = 50usize;
    let mut limit_ms = 20_000u64;
    let mut files = Vec::new();
    let mut dfs_first: Option<u64> = None;
    let mut dfs_max_groups: Option<usize> = None;
    let mut dfs_memo = true;
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match a.as_str() {
            "--repeats" => repeats = num("--repeats") as usize,
            "--pareto" => n_pareto = num("--pareto") as usize,
            "--time-limit-ms" => limit_ms = num("--time-limit-ms"),
            "--dfs-first" => dfs_first = Some(num("--dfs-first")),
            "--dfs-max-groups" => dfs_max_groups = Some(num("--dfs-max-groups") as usize),
            "--no-memo" => dfs_memo = false,
            _ => files.push(a),
        }
    }
    if files.is_empty() {
        eprintln!(
            "usage: solve_bench [--repeats N] [--pareto N] [--time-limit-ms MS] \
             [--dfs-first N] [--dfs-max-groups N] [--no-memo] FILE..."
        );
        std::process::exit(2);
    }
    let ilp =
        allocator("ilp", &serde_json::json!({ "time_limit_ms": limit_ms })).expect("registered");
    for f in files {
        let p = AllocationProblem::from_file(&f).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        if dfs_first.is_some() || dfs_max_groups.is_some() || !dfs_memo {
            let over = Overrides {
                dfs_first,
                dfs_max_groups,
                dfs_memo,
            };
            direct(&f, &p, repeats, limit_ms, &over);
            continue;
        }
        let mut times = Vec::with_capacity(repeats);
        let mut ctx = SolveCtx::new(0);
        let mut status = "optimal".to_string();
        let mut objective = f64::NAN;
        let mut choice = Vec::new();
        for _ in 0..repeats.max(1) {
            if times.iter().sum::<f64>() > 5_000.0 {
                break; // slow instances: the median of the runs so far
            }
            let t = Instant::now();
            let r = ilp.solve(&p, &mut ctx);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            match r {
                Ok(a) => {
                    objective = a.objective;
                    choice = a.choice;
                }
                Err(AllocError::Limit { best, .. }) => {
                    status = "limit".into();
                    objective = best;
                    break; // do not repeat a solve that ran into its limit
                }
                Err(e) => panic!("{f}: {e}"),
            }
        }
        if times.len() > 1 {
            // The first solve warms the caches and the heap: not counted when others ran.
            times.remove(0);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let mut single = p.clone();
        single.budgets.retain(|b| b.cost == CostKind::ModelSize);
        let t = Instant::now();
        let sweep = pareto_exact(&single, &CostKind::ModelSize, n_pareto).expect("pareto sweep");
        let pareto_exact_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let front = pareto_with(&single, n_pareto, &ParetoDpConfig::default()).expect("frontier");
        let pareto_dp_ms = t.elapsed().as_secs_f64() * 1e3;
        let gap: f64 = sweep
            .iter()
            .zip(&front)
            .map(|(a, b)| {
                (b.allocation.objective - a.allocation.objective) / a.allocation.objective
            })
            .fold(0.0, f64::max);
        let line = serde_json::json!({
            "file": f,
            "layers": p.layers.len(),
            "options": p.options.len(),
            "status": status,
            "objective": objective,
            "choice": choice,
            "median_ms": median,
            "min_ms": times[0],
            "runs": times.len(),
            "nodes": ctx.stat("nodes"),
            "core_groups": ctx.stat("core_groups"),
            "pareto_points": sweep.len(),
            "pareto_exact_ms": pareto_exact_ms,
            "pareto_dp_points": front.len(),
            "pareto_dp_ms": pareto_dp_ms,
            "pareto_dp_max_rel_gap": gap,
            "stats": ctx.stats.iter().cloned().collect::<std::collections::BTreeMap<String, f64>>(),
        });
        println!("{line}");
    }
}

/// Overrides of the exact solver's [`Limits`].
struct Overrides {
    dfs_first: Option<u64>,
    dfs_max_groups: Option<usize>,
    dfs_memo: bool,
}

/// Times `mckp::solve` on the reduced problem with overridden limits; prints one JSON line.
fn direct(f: &str, p: &AllocationProblem, repeats: usize, limit_ms: u64, over: &Overrides) {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let r = Reduced::new(p).unwrap_or_else(|e| panic!("{f}: {e}"));
        let d = Limits::default();
        let limits = Limits {
            deadline: Some(t + std::time::Duration::from_millis(limit_ms)),
            dfs_first_nodes: over.dfs_first.unwrap_or(d.dfs_first_nodes),
            dfs_max_groups: over.dfs_max_groups.unwrap_or(d.dfs_max_groups),
            dfs_memo: over.dfs_memo,
            ..d
        };
        let (out, stats) = mckp::solve(&r, &limits);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let objective = match &out {
            Ok(items) => items.iter().map(|&i| r.obj[i]).sum::<f64>(),
            Err(mckp::Failure::Limit { best, .. }) => *best,
            Err(mckp::Failure::Infeasible) => f64::NAN,
        };
        let limited = matches!(out, Err(mckp::Failure::Limit { .. }));
        last = Some((objective, limited, stats));
        if limited {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    let (objective, limited, stats) = last.expect("one run");
    let line = serde_json::json!({
        "file": f,
        "status": if limited { "limit" } else { "optimal" },
        "objective": objective,
        "median_ms": times[times.len() / 2],
        "min_ms": times[0],
        "nodes": stats.nodes,
        "core_groups": stats.core_groups,
        "lower_bound": stats.lower_bound,
        "first_incumbent": stats.first_incumbent,
        "proven_bound": stats.proven_bound,
        "root_bound": stats.root_lp,
        "memo_pruned": stats.memo_pruned,
        "refinements": stats.refinements,
        "fixed_by_tables": stats.fixed_by_tables,
    });
    println!("{line}");
}
