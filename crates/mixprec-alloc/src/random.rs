//! Synthetic HAWQ-like allocation problems for tests and benchmarks: random layer sizes,
//! Hessian-trace-weighted quantization perturbations `Γ = T_w · |w| · 4^{−b_w} + T_a · |a| ·
//! 4^{−b_a}` (survey §3.2.3 Eq. 23: the squared rounding error of uniform quantization falls
//! by 4× per bit), model-size / BOPs / C1–C3 cost tables from the registered cost models, and
//! budgets placed a given fraction of the way from the smallest to the largest cost.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::costs::{cost_model, CostModel};
use crate::problem::{AllocationProblem, BitOption, Budget, CostKind, LayerExtra, LayerInfo};
use crate::table::Table;

/// Builds a random problem with `n_layers` layers and the given `(b_w, b_a)` options; each
/// `(kind, f)` of `budgets` adds a budget `min + f · (max − min)` where min / max are the
/// smallest / largest achievable values of that cost. All heuristic extra data are filled.
pub fn hawq_like(
    seed: u64,
    n_layers: usize,
    bits: &[(u32, u32)],
    budgets: &[(CostKind, f64)],
) -> AllocationProblem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let options: Vec<BitOption> = bits.iter().map(|&(w, a)| BitOption::new(w, a)).collect();
    let layers: Vec<LayerInfo> = (0..n_layers)
        .map(|i| {
            let ch = 1u64 << rng.random_range(4..10);
            let k = [1u64, 9][rng.random_range(0..2)];
            let cin = 1u64 << rng.random_range(4..10);
            let hw = 1u64 << (2 * rng.random_range(1..6));
            let params = ch * cin * k;
            let mut l = LayerInfo::new(format!("layer{i}"), params, params * hw, cin * hw);
            l.out_channels = ch;
            l.extra = LayerExtra {
                aq_p: Some(rng.random_range(0.1..10.0)),
                aq_t: Some(rng.random_range(0.5..2.0)),
                separability: Some(rng.random_range(0.7..0.95)),
                significant: Some(rng.random_bool(0.3)),
                weight_std: Some(rng.random_range(0.01..0.1)),
                weight_max_abs: Some(rng.random_range(0.2..1.0)),
            };
            l
        })
        .collect();
    let sens_rows: Vec<Vec<f64>> = layers
        .iter()
        .map(|l| {
            let tw = 10f64.powf(rng.random_range(-3.0..1.0));
            let ta = 10f64.powf(rng.random_range(-3.0..1.0));
            options
                .iter()
                .map(|o| {
                    tw * l.params as f64 * 4f64.powi(-(o.weight_bits as i32))
                        + ta * l.activation_elems as f64 * 4f64.powi(-(o.activation_bits as i32))
                })
                .collect()
        })
        .collect();
    let mut p = AllocationProblem::new(
        layers,
        options,
        Table::from_rows(sens_rows).expect("rectangular"),
    );
    for name in [
        "model-size",
        "bops",
        "weight-memory",
        "activation-memory",
        "max-activation",
    ] {
        let m: Box<dyn CostModel> = cost_model(name, &serde_json::Value::Null).expect("registered");
        let t = m.table(&p.layers, &p.options).expect("table");
        p.set_cost(m.kind(), t);
    }
    for (kind, f) in budgets {
        let t = p.cost_table(kind).expect("generated kinds only");
        let mins = (0..t.rows()).map(|l| t.row(l).iter().copied().fold(f64::INFINITY, f64::min));
        let maxs =
            (0..t.rows()).map(|l| t.row(l).iter().copied().fold(f64::NEG_INFINITY, f64::max));
        let (lo, hi) = (kind.combine(mins), kind.combine(maxs));
        p.budgets.push(Budget {
            cost: kind.clone(),
            max: (lo + f * (hi - lo)).round(),
        });
    }
    p
}
