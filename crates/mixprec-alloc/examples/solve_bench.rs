//! Loads JSON allocation problems, solves each with the exact `ilp` allocator (median of
//! repeated in-process solves), runs a 50-point exact Pareto sweep along `model-size` (the
//! problem with only its model-size budget, each point an exact `ilp` solve) and the
//! `pareto-dp` frontier on the same axis, and prints one JSON line per file.
//!
//! `cargo run --release -p mixprec-alloc --example solve_bench -- [--repeats N] [--pareto N]
//! [--time-limit-ms MS] FILE...`

use std::time::Instant;

use mixprec_alloc::methods::pareto_dp::{pareto_with, ParetoDpConfig};
use mixprec_alloc::{allocator, pareto_exact, AllocError, AllocationProblem, CostKind, SolveCtx};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut repeats = 11usize;
    let mut n_pareto = 50usize;
    let mut limit_ms = 20_000u64;
    let mut files = Vec::new();
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
            _ => files.push(a),
        }
    }
    if files.is_empty() {
        eprintln!("usage: solve_bench [--repeats N] [--pareto N] [--time-limit-ms MS] FILE...");
        std::process::exit(2);
    }
    let ilp =
        allocator("ilp", &serde_json::json!({ "time_limit_ms": limit_ms })).expect("registered");
    for f in files {
        let p = AllocationProblem::from_file(&f).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        let mut times = Vec::with_capacity(repeats);
        let mut ctx = SolveCtx::new(0);
        let mut status = "optimal".to_string();
        let mut objective = f64::NAN;
        let mut choice = Vec::new();
        for _ in 0..repeats.max(1) {
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
