//! Integration tests of mixprec-alloc: the allocator conformance suite over the registry,
//! brute-force and good_lp (microlp) cross-checks of the exact solvers, serde round trips,
//! validation errors and the cost-model registry.

#![allow(clippy::needless_range_loop)]

use mixprec_alloc::costs::latency::{Latency, LatencyLut};
use mixprec_alloc::random::hawq_like;
use mixprec_alloc::{
    allocator, cost_model, pareto, pareto_exact, AllocError, Allocation, AllocationProblem,
    BitOption, Budget, CostKind, CostModel, SolveCtx, Table, ALLOCATORS, COST_MODELS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BITS: &[(u32, u32)] = &[(2, 4), (2, 8), (4, 4), (4, 8), (8, 8), (3, 6)];

/// Best objective by exhaustive enumeration (respecting masks, fixed layers, ties, budgets).
fn brute_force(p: &AllocationProblem) -> Option<f64> {
    let (nl, no) = (p.layers.len(), p.options.len());
    let mut choice = vec![0usize; nl];
    let mut best: Option<f64> = None;
    loop {
        if p.violations(&choice).is_empty() {
            let obj = p.evaluate(&choice).unwrap().objective;
            if best.is_none_or(|b| obj < b) {
                best = Some(obj);
            }
        }
        let mut l = 0;
        loop {
            if l == nl {
                return best;
            }
            choice[l] += 1;
            if choice[l] < no {
                break;
            }
            choice[l] = 0;
            l += 1;
        }
    }
}

/// Random small instance: HAWQ-like or fully random tables, 1–3 budgets (possibly a C3
/// max-type one), ties, fixed layers and masks.
fn small_instance(seed: u64) -> AllocationProblem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nl = rng.random_range(2..=7);
    let no = rng.random_range(2..=4);
    let mut bits: Vec<(u32, u32)> = BITS.to_vec();
    for i in (1..bits.len()).rev() {
        bits.swap(i, rng.random_range(0..=i));
    }
    bits.truncate(no);
    let kinds = [
        CostKind::ModelSize,
        CostKind::Bops,
        CostKind::ActivationMemory,
        CostKind::MaxActivation,
    ];
    let nb = rng.random_range(0..=3);
    let mut budgets = Vec::new();
    for k in kinds.iter().take(nb) {
        budgets.push((k.clone(), rng.random_range(0.05..0.9)));
    }
    if rng.random_bool(0.3) && nb > 0 {
        budgets[0].0 = kinds[rng.random_range(0..kinds.len())].clone();
        budgets.dedup_by(|a, b| a.0 == b.0);
    }
    let mut p = hawq_like(seed, nl, &bits, &budgets);
    if rng.random_bool(0.4) {
        // Unstructured tables: random sensitivity and random integer costs.
        let sens: Vec<Vec<f64>> = (0..nl)
            .map(|_| (0..no).map(|_| rng.random_range(0.0..10.0)).collect())
            .collect();
        p.sensitivity = Table::from_rows(sens).unwrap();
        for (_, t) in p.costs.iter_mut() {
            for l in 0..nl {
                for o in 0..no {
                    t.set(l, o, rng.random_range(1..100) as f64);
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
            let lo = b
                .cost
                .combine((0..nl).map(|l| t.row(l).iter().copied().fold(f64::INFINITY, f64::min)));
            let hi = b
                .cost
                .combine((0..nl).map(|l| t.row(l).iter().copied().fold(0.0, f64::max)));
            b.max = (lo + rng.random_range(-0.05..0.9) * (hi - lo)).round();
        }
    }
    if nl >= 3 && rng.random_bool(0.4) {
        p.tie_groups.push(vec![1, nl - 1]);
    }
    if rng.random_bool(0.3) {
        p.fixed.push((0, no - 1));
    }
    if rng.random_bool(0.3) {
        let l = rng.random_range(0..nl);
        if !p.fixed.iter().any(|&(f, _)| f == l) {
            let mut m = vec![true; no];
            m[rng.random_range(0..no)] = false;
            p.layers[l].allowed = Some(m);
        }
    }
    p.validate().unwrap();
    p
}

fn additive_budgets(p: &AllocationProblem) -> usize {
    p.budgets
        .iter()
        .filter(|b| b.cost.aggregate() == mixprec_alloc::Aggregate::Sum)
        .count()
}

#[test]
fn conformance_over_registry() {
    let mut exact_checked = 0;
    let mut heuristic_ok = 0;
    for seed in 0..300u64 {
        let p = small_instance(seed);
        let opt = brute_force(&p);
        for e in ALLOCATORS {
            let alg = (e.build)(&serde_json::Value::Null).unwrap();
            let mut ctx = SolveCtx::new(seed);
            let r1 = alg.solve(&p, &mut ctx);
            let r2 = alg.solve(&p, &mut SolveCtx::new(seed));
            match (&r1, &r2) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{} not deterministic (seed {seed})", e.name),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("{} not deterministic (seed {seed})", e.name),
            }
            match r1 {
                Ok(a) => {
                    assert_eq!(a.choice.len(), p.layers.len());
                    let v = p.violations(&a.choice);
                    assert!(v.is_empty(), "{} seed {seed}: {v:?}", e.name);
                    let best = opt.expect("a feasible allocation exists when one is returned");
                    assert!(a.objective >= best - 1e-9 * best.abs().max(1.0));
                    let dp_exact = e.name == "pareto-dp" && ctx.stat("dp_exact") == Some(1.0);
                    if e.exact || dp_exact {
                        assert!(
                            (a.objective - best).abs() <= 1e-9 * best.abs().max(1.0),
                            "{} seed {seed}: {} vs brute force {best}",
                            e.name,
                            a.objective
                        );
                        exact_checked += 1;
                    } else if !e.exact {
                        heuristic_ok += 1;
                    }
                }
                Err(err) => match (&err, opt) {
                    (AllocError::Infeasible { detail }, None) => {
                        assert!(detail.contains("smallest achievable"), "{detail}")
                    }
                    (AllocError::Infeasible { .. }, Some(_)) => {
                        panic!(
                            "{} seed {seed}: reported infeasible but brute force found {opt:?}",
                            e.name
                        )
                    }
                    (AllocError::NoFeasibleSetting { .. }, _) if !e.exact => {}
                    (AllocError::Config { .. }, _)
                        if e.name == "pareto-dp" && additive_budgets(&p) > 1 => {}
                    _ => panic!("{} seed {seed}: unexpected error {err}", e.name),
                },
            }
        }
    }
    assert!(exact_checked > 250, "{exact_checked}");
    assert!(heuristic_ok > 300, "{heuristic_ok}");
}

#[test]
fn every_allocator_succeeds_with_generous_budgets() {
    for seed in 0..20u64 {
        let p = hawq_like(
            seed,
            12,
            &[(1, 1), (2, 2), (4, 4), (8, 8)],
            &[(CostKind::ModelSize, 1.0)],
        );
        let best = brute_or_ilp(&p);
        for e in ALLOCATORS {
            let a = (e.build)(&serde_json::Value::Null)
                .unwrap()
                .solve(&p, &mut SolveCtx::new(1))
                .unwrap_or_else(|err| panic!("{}: {err}", e.name));
            assert!(p.violations(&a.choice).is_empty());
            if e.exact {
                assert!(
                    (a.objective - best).abs() <= 1e-9 * best,
                    "{} seed {seed}: {} vs ilp {best}",
                    e.name,
                    a.objective
                );
            }
        }
    }
}

fn brute_or_ilp(p: &AllocationProblem) -> f64 {
    allocator("ilp", &serde_json::Value::Null)
        .unwrap()
        .solve(p, &mut SolveCtx::new(0))
        .unwrap()
        .objective
}

#[test]
fn ilp_matches_brute_force_on_8_layers() {
    for seed in 0..60u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
        let budgets = [
            (CostKind::ModelSize, rng.random_range(0.1..0.9)),
            (CostKind::Bops, rng.random_range(0.1..0.9)),
        ];
        let mut p = hawq_like(1000 + seed, 8, &BITS[..4], &budgets);
        if seed % 3 == 0 {
            p.tie_groups.push(vec![2, 5]);
            p.fixed.push((0, 3));
            p.fixed.push((7, 3));
        }
        let opt = brute_force(&p);
        let got = allocator("ilp", &serde_json::Value::Null)
            .unwrap()
            .solve(&p, &mut SolveCtx::new(0));
        match (opt, got) {
            (Some(b), Ok(a)) => {
                assert!((a.objective - b).abs() <= 1e-9 * b.max(1.0), "seed {seed}")
            }
            (None, Err(AllocError::Infeasible { .. })) => {}
            (o, g) => panic!("seed {seed}: brute {o:?} vs ilp {g:?}"),
        }
    }
}

/// The same instance solved by good_lp with the pure-Rust microlp MILP solver.
fn good_lp_optimum(p: &AllocationProblem) -> Option<f64> {
    use good_lp::{microlp, variable, variables, Expression, SolverModel, Variable};
    let (nl, no) = (p.layers.len(), p.options.len());
    let mut vars = variables!();
    let x: Vec<Vec<Variable>> = (0..nl)
        .map(|_| (0..no).map(|_| vars.add(variable().binary())).collect())
        .collect();
    let scale = p
        .sensitivity
        .as_slice()
        .iter()
        .fold(1e-12f64, |a, b| a.max(b.abs()));
    let mut obj = Expression::from(0.0);
    for l in 0..nl {
        for o in 0..no {
            obj += (p.sensitivity.get(l, o) / scale) * x[l][o];
        }
    }
    let mut model = vars.minimise(obj).using(microlp);
    for l in 0..nl {
        let mut one = Expression::from(0.0);
        for o in 0..no {
            one += x[l][o];
            if !p.mask_allows(l, o) {
                model = model.with(Expression::from(x[l][o]).leq(0.0));
            }
        }
        model = model.with(one.eq(1.0));
    }
    for &(l, o) in &p.fixed {
        model = model.with(Expression::from(x[l][o]).eq(1.0));
    }
    for g in &p.tie_groups {
        for w in g.windows(2) {
            for o in 0..no {
                model = model.with((x[w[0]][o] - x[w[1]][o]).eq(0.0));
            }
        }
    }
    for b in &p.budgets {
        let t = p.cost_table(&b.cost).unwrap();
        let s = b.max.abs().max(1.0);
        if b.cost.aggregate() == mixprec_alloc::Aggregate::Max {
            for l in 0..nl {
                for o in 0..no {
                    if t.get(l, o) > b.max {
                        model = model.with(Expression::from(x[l][o]).leq(0.0));
                    }
                }
            }
            continue;
        }
        let mut e = Expression::from(0.0);
        for l in 0..nl {
            for o in 0..no {
                e += (t.get(l, o) / s) * x[l][o];
            }
        }
        model = model.with(e.leq(b.max / s));
    }
    let sol = model.solve().ok()?;
    use good_lp::Solution;
    let choice: Vec<usize> = (0..nl)
        .map(|l| {
            (0..no)
                .max_by(|&a, &b| sol.value(x[l][a]).total_cmp(&sol.value(x[l][b])))
                .unwrap()
        })
        .collect();
    Some(p.evaluate(&choice).unwrap().objective)
}

#[test]
fn ilp_matches_good_lp_microlp_on_50_instances() {
    let mut compared = 0;
    for seed in 0..50u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(5000 + seed);
        let nl = rng.random_range(10..=20);
        let budgets = [
            (CostKind::ModelSize, rng.random_range(0.1..0.8)),
            (CostKind::Bops, rng.random_range(0.1..0.8)),
            (CostKind::MaxActivation, rng.random_range(0.3..1.0)),
        ];
        let mut p = hawq_like(5000 + seed, nl, &BITS[..4], &budgets);
        if seed % 2 == 0 {
            p.tie_groups.push(vec![1, 3, 4]);
            p.fixed.push((0, 3));
        }
        let ours = allocator("ilp", &serde_json::Value::Null)
            .unwrap()
            .solve(&p, &mut SolveCtx::new(0));
        let theirs = good_lp_optimum(&p);
        match (ours, theirs) {
            (Ok(a), Some(b)) => {
                assert!(p.violations(&a.choice).is_empty());
                assert!(
                    a.objective <= b + 1e-6 * b.abs().max(1.0),
                    "seed {seed}: ours {} worse than microlp {b}",
                    a.objective
                );
                assert!(
                    (a.objective - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "seed {seed}: ours {} vs microlp {b}",
                    a.objective
                );
                compared += 1;
            }
            (Err(AllocError::Infeasible { .. }), None) => {}
            (o, t) => panic!("seed {seed}: ours {o:?} vs microlp {t:?}"),
        }
    }
    assert!(compared >= 40, "{compared}");
}

/// Solved exactly with a small search (a node count, not a clock: speed is measured by
/// `bench/alloc/pulp_compare.py`), and no heuristic beats the exact optimum.
#[test]
fn ilp_solves_560_layers_one_budget_and_54_layers_two_budgets_with_a_small_search() {
    let cases = [
        (
            hawq_like(7, 560, BITS, &[(CostKind::ModelSize, 0.4)]),
            100_000.0,
        ),
        (
            hawq_like(
                1,
                54,
                BITS,
                &[(CostKind::ModelSize, 0.4), (CostKind::Bops, 0.35)],
            ),
            100_000.0,
        ),
    ];
    for (p, max_nodes) in cases {
        let mut ctx = SolveCtx::new(0);
        let a = allocator("ilp", &serde_json::Value::Null)
            .unwrap()
            .solve(&p, &mut ctx)
            .unwrap();
        assert!(p.violations(&a.choice).is_empty());
        let lb = ctx.stat("lower_bound").unwrap();
        assert!(a.objective >= lb - 1e-9 * lb.abs());
        let nodes = ctx.stat("nodes").unwrap();
        assert!(
            nodes < max_nodes,
            "{} layers: {nodes} nodes",
            p.layers.len()
        );
        // Every heuristic stays at or above the exact optimum.
        for name in ["mckp-greedy", "lagrangian", "uniform"] {
            let h = allocator(name, &serde_json::Value::Null)
                .unwrap()
                .solve(&p, &mut SolveCtx::new(0))
                .unwrap();
            assert!(h.objective >= a.objective - 1e-9 * a.objective, "{name}");
        }
    }
}

#[test]
fn pareto_frontiers_agree_and_are_monotone() {
    let p = hawq_like(3, 6, &BITS[..4], &[(CostKind::ModelSize, 0.5)]);
    let dp = pareto(&p, 10).unwrap();
    let ex = pareto_exact(&p, &CostKind::ModelSize, 10).unwrap();
    assert_eq!(dp.len(), 10);
    assert_eq!(ex.len(), 10);
    for (a, b) in dp.iter().zip(&ex) {
        assert_eq!(a.budget, b.budget);
        // Integer costs: the DP is exact, so both are optimal for each budget.
        assert!(
            (a.allocation.objective - b.allocation.objective).abs()
                <= 1e-9 * b.allocation.objective.max(1.0)
        );
        assert!(a.allocation.cost(&CostKind::ModelSize).unwrap() <= a.budget);
    }
    for w in dp.windows(2) {
        assert!(w[1].allocation.objective <= w[0].allocation.objective + 1e-12);
    }
    // Grid mode (non-integer costs): always within budget.
    let mut q = p.clone();
    for (_, t) in q.costs.iter_mut() {
        for l in 0..t.rows() {
            for o in 0..t.cols() {
                t.set(l, o, t.get(l, o) * 1.000_000_1 + 0.37);
            }
        }
    }
    q.budgets[0].max *= 1.000_000_1;
    for pt in pareto(&q, 7).unwrap() {
        assert!(pt.allocation.cost(&CostKind::ModelSize).unwrap() <= pt.budget * (1.0 + 1e-9));
    }
}

#[test]
fn json_round_trip_and_validation_errors() {
    let mut p = hawq_like(
        11,
        5,
        &BITS[..3],
        &[(CostKind::ModelSize, 0.5), (CostKind::MaxActivation, 0.8)],
    );
    p.tie_groups.push(vec![1, 2]);
    p.fixed.push((0, 2));
    p.layers[3].allowed = Some(vec![true, false, true]);
    p.set_cost(CostKind::Custom("dsp".into()), Table::filled(5, 3, 1.5));
    let text = p.to_json();
    let q = AllocationProblem::from_json(&text).unwrap();
    assert_eq!(p, q);
    let a = allocator("ilp", &serde_json::Value::Null)
        .unwrap()
        .solve(&q, &mut SolveCtx::new(0))
        .unwrap();
    let back: Allocation = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(a, back);

    let err = |edit: &dyn Fn(&mut serde_json::Value)| -> String {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut v);
        AllocationProblem::from_json(&v.to_string())
            .unwrap_err()
            .to_string()
    };
    assert!(err(&|v| v["sensitivity"][2] = serde_json::json!([1.0])).contains("row 2"));
    assert!(err(&|v| v["version"] = serde_json::json!(9)).contains("version 9"));
    assert!(
        err(&|v| v["budgets"][0]["cost"] = serde_json::json!("sizee"))
            .contains("unknown cost kind `sizee`")
    );
    assert!(err(&|v| v["surprise"] = serde_json::json!(1)).contains("surprise"));
    assert!(
        err(&|v| v["budgets"][0]["cost"] = serde_json::json!("energy"))
            .contains("no `energy` cost table")
    );
    assert!(err(&|v| v["tie_groups"] = serde_json::json!([[0, 9]])).contains("layer index 9"));
    assert!(err(&|v| v["fixed"] = serde_json::json!([[0, 1], [0, 2]]))
        .contains("forced to two options"));
    assert!(
        err(&|v| v["layers"][1]["name"] = serde_json::json!("layer0"))
            .contains("duplicate layer name `layer0`")
    );
    assert!(
        err(&|v| v["layers"][3]["allowed"] = serde_json::json!([true])).contains("layer `layer3`")
    );

    let mut bad = p.clone();
    bad.sensitivity.set(4, 1, f64::NAN);
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.contains("non-finite") && e.contains("layer4") && e.contains("w2a8"),
        "{e}"
    );
    assert!(allocator("nope", &serde_json::Value::Null).is_err());
    let e = allocator("ilp", &serde_json::json!({"nodes": 3}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nodes"), "{e}");
}

#[test]
fn infeasible_reports_smallest_achievable_costs() {
    let mut p = hawq_like(
        2,
        6,
        &BITS[..3],
        &[(CostKind::ModelSize, 0.0), (CostKind::Bops, 0.0)],
    );
    let min_size = p.budgets[0].max;
    p.budgets[0].max = min_size - 1.0;
    for e in ALLOCATORS {
        let err = (e.build)(&serde_json::Value::Null)
            .unwrap()
            .solve(&p, &mut SolveCtx::new(0))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, AllocError::Infeasible { .. }),
            "{}: {msg}",
            e.name
        );
        assert!(
            msg.contains(&format!("smallest achievable {min_size}")),
            "{}: {msg}",
            e.name
        );
    }
    // Max-type budget below every option of a layer.
    let mut q = hawq_like(2, 6, &BITS[..3], &[(CostKind::MaxActivation, 0.0)]);
    q.budgets[0].max -= 1.0;
    let msg = allocator("ilp", &serde_json::Value::Null)
        .unwrap()
        .solve(&q, &mut SolveCtx::new(0))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("max-activation") && msg.contains("smallest achievable"),
        "{msg}"
    );
}

#[test]
fn max_type_budget_is_not_additive() {
    // Two layers with 100 activation elements: sum would be 1600 at 8 bits, max 800.
    let mut p = hawq_like(4, 2, &[(4, 4), (4, 8)], &[]);
    p.budgets.push(Budget {
        cost: CostKind::MaxActivation,
        max: p
            .layers
            .iter()
            .map(|l| l.activation_elems * 8)
            .max()
            .unwrap() as f64,
    });
    let a = allocator("ilp", &serde_json::Value::Null)
        .unwrap()
        .solve(&p, &mut SolveCtx::new(0))
        .unwrap();
    // Both layers can take the (more accurate) 8-bit activations.
    assert_eq!(a.choice, vec![1, 1]);
}

#[test]
fn cost_registry_builds_and_latency_lut_file() {
    let layers = vec![mixprec_alloc::LayerInfo::new("c1", 10, 100, 20)];
    let options = vec![BitOption::new(4, 8), BitOption::new(8, 8)];
    for e in COST_MODELS {
        if e.name == "latency" {
            assert!((e.build)(&serde_json::Value::Null).is_err());
            continue;
        }
        let m: Box<dyn CostModel> = (e.build)(&serde_json::Value::Null).unwrap();
        assert_eq!(m.kind().to_string(), e.name);
        let t = m.table(&layers, &options).unwrap();
        assert!(t.get(0, 0) <= t.get(0, 1), "{}", e.name);
    }
    let dir = std::env::temp_dir().join(format!("mixprec-alloc-lut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lut.json");
    std::fs::write(&path, r#"{"layers": {"c1": {"w4a8": 0.25, "w8a8": 0.5}}}"#).unwrap();
    let m = cost_model("latency", &serde_json::json!({ "lut": path })).unwrap();
    assert_eq!(m.table(&layers, &options).unwrap().row(0), &[0.25, 0.5]);
    let lut = LatencyLut::from_file(&path).unwrap();
    let e = Latency::new(lut, path.display().to_string())
        .table(&layers, &[BitOption::new(2, 2)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("w2a2") && e.contains("lut.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(cost_model("flops", &serde_json::Value::Null).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    #[test]
    fn prop_round_trip_and_ilp_within_budget(seed in 0u64..10_000, n in 1usize..10, f in 0.0f64..1.0) {
        let p = hawq_like(seed, n, &BITS[..3], &[(CostKind::ModelSize, f)]);
        let q = AllocationProblem::from_json(&p.to_json()).unwrap();
        proptest::prop_assert_eq!(&p, &q);
        let a = allocator("ilp", &serde_json::Value::Null).unwrap().solve(&q, &mut SolveCtx::new(seed)).unwrap();
        proptest::prop_assert!(q.violations(&a.choice).is_empty());
    }
}

#[test]
fn pareto_dp_is_exact_beyond_merging_and_integer_dp() {
    use mixprec_alloc::methods::pareto_dp::{pareto_with, ParetoDpConfig};
    let base = hawq_like(21, 300, BITS, &[(CostKind::ModelSize, 0.5)]);
    // Fractional costs rule out the integer DP; a tiny state cap rules out merging.
    let mut frac = base.clone();
    for (_, t) in frac.costs.iter_mut() {
        for l in 0..t.rows() {
            for o in 0..t.cols() {
                t.set(l, o, t.get(l, o) * 1.000_000_1 + 0.37);
            }
        }
    }
    for p in [base, frac] {
        let exact_cfg = ParetoDpConfig {
            max_states: 1_000,
            ..ParetoDpConfig::default()
        };
        let dp = pareto_with(&p, 12, &exact_cfg).unwrap();
        let ex = pareto_exact(&p, &CostKind::ModelSize, 12).unwrap();
        assert_eq!(dp.len(), ex.len());
        for (a, b) in dp.iter().zip(&ex) {
            assert_eq!(a.budget, b.budget);
            let (x, y) = (a.allocation.objective, b.allocation.objective);
            assert!((x - y).abs() <= 1e-9 * y.max(1.0), "{x} vs {y}");
            assert!(p.violations(&a.allocation.choice).len() <= 1); // only the swept budget
            assert!(a.allocation.cost(&CostKind::ModelSize).unwrap() <= a.budget * (1.0 + 1e-9));
        }
        // The rounded grid is opt-in, within budget and never better than the optimum.
        let approx_cfg = ParetoDpConfig {
            approximate: true,
            max_exact_cells: 0,
            ..exact_cfg
        };
        for (a, b) in pareto_with(&p, 12, &approx_cfg).unwrap().iter().zip(&ex) {
            assert!(a.allocation.cost(&CostKind::ModelSize).unwrap() <= a.budget * (1.0 + 1e-9));
            assert!(a.allocation.objective >= b.allocation.objective * (1.0 - 1e-9));
        }
        // The allocator itself (default config) is exact too.
        let got = allocator("pareto-dp", &serde_json::json!({ "max_states": 1000 }))
            .unwrap()
            .solve(&p, &mut SolveCtx::new(0))
            .unwrap();
        let opt = allocator("ilp", &serde_json::Value::Null)
            .unwrap()
            .solve(&p, &mut SolveCtx::new(0))
            .unwrap();
        assert!((got.objective - opt.objective).abs() <= 1e-9 * opt.objective);
    }
}

#[test]
fn ilp_limit_reports_best_and_proven_bound() {
    let p = hawq_like(
        4,
        300,
        BITS,
        &[(CostKind::ModelSize, 0.5), (CostKind::Bops, 0.45)],
    );
    let e = allocator("ilp", &serde_json::json!({ "node_limit": 3000 }))
        .unwrap()
        .solve(&p, &mut SolveCtx::new(0))
        .unwrap_err();
    match &e {
        AllocError::Limit { best, bound, .. } => {
            assert!(bound <= best, "{bound} > {best}");
            let msg = e.to_string();
            assert!(msg.contains("proven lower bound"), "{msg}");
        }
        e => panic!("{e}"),
    }
}
