//! `aq` — Adaptive Quantization (survey §3.2.1, Eq. 16–18; Zhou et al., "Adaptive Quantization
//! for Deep Neural Network", AAAI 2018). Minimising the model size `Σ_k w_k b_k` (Eq. 16–17)
//! subject to the additive accuracy measure `Σ_k (p_k / t_k) e^{−α b_k} ≤ C` (Eq. 18,
//! `α = ln 4`) gives, by a Lagrange multiplier, the closed form
//! `b_k = b_1 + (1/α) · ln( (p_k / (t_k w_k)) / (p_1 / (t_1 w_1)) )`,
//! i.e. every layer's bit-width follows from the reference layer's `b_1` and the per-layer
//! `p_k`, `t_k` (`layers[k].extra.aq_p` / `aq_t`) and weight counts `w_k` (`params`).
//! Targets are rounded to the nearest integer and mapped to the largest admissible weight
//! bit-width not above them. With `b1` unset, the largest `b_1` whose allocation meets every
//! budget is found by bisection (AQ: "lower b_1 yields a higher compression ratio").
//! Complexity: `O(I · N)` for `I` bisection steps.

use serde::{Deserialize, Serialize};

use super::{
    bisect_knob, items_for_targets, no_setting, parse_config, Allocator, AllocatorEntry, SolveCtx,
};
use crate::error::{config_err, AllocError, Result};
use crate::problem::{Allocation, AllocationProblem};
use crate::reduce::Reduced;

/// Configuration of [`Aq`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AqConfig {
    /// Bit-width of the reference layer; absent = largest that fits the budgets.
    pub b1: Option<f64>,
    /// Index of the reference layer (AQ uses the first layer).
    pub reference_layer: usize,
    /// Exponent `α` of Eq. 18 (ln 4 in AQ: each bit quarters the noise power).
    pub alpha: f64,
}

impl Default for AqConfig {
    fn default() -> Self {
        Self {
            b1: None,
            reference_layer: 0,
            alpha: 4f64.ln(),
        }
    }
}

/// AQ closed-form allocator.
#[derive(Debug, Clone, Default)]
pub struct Aq {
    /// Its configuration.
    pub config: AqConfig,
}

impl Aq {
    /// Per-layer offsets `b_k − b_1` of the closed form.
    pub fn offsets(&self, p: &AllocationProblem) -> Result<Vec<f64>> {
        let c = &self.config;
        if c.reference_layer >= p.layers.len() {
            return Err(config_err(
                "aq",
                format!(
                    "reference_layer {} but there are {} layers",
                    c.reference_layer,
                    p.layers.len()
                ),
            ));
        }
        if c.alpha.is_nan() || c.alpha <= 0.0 {
            return Err(config_err("aq", "alpha must be positive"));
        }
        let mut q = Vec::with_capacity(p.layers.len());
        for (k, l) in p.layers.iter().enumerate() {
            let miss = |field: &'static str, hint: &'static str| AllocError::MissingExtra {
                method: "aq",
                layer: k,
                name: l.name.clone(),
                field,
                hint,
            };
            let pk = l.extra.aq_p.ok_or_else(|| {
                miss(
                    "aq_p",
                    "positive p_k of AQ Eq. 18 (output noise at fixed bits)",
                )
            })?;
            let tk = l.extra.aq_t.ok_or_else(|| {
                miss(
                    "aq_t",
                    "positive t_k of AQ Eq. 18 (noise ratio at the bound)",
                )
            })?;
            if pk <= 0.0 || tk <= 0.0 || l.params == 0 {
                return Err(miss(
                    "aq_p",
                    "p_k, t_k and params must all be positive for AQ",
                ));
            }
            q.push((pk / (tk * l.params as f64)).ln());
        }
        let q1 = q[c.reference_layer];
        Ok(q.into_iter().map(|v| (v - q1) / c.alpha).collect())
    }
}

impl Allocator for Aq {
    fn solve(&self, p: &AllocationProblem, ctx: &mut SolveCtx) -> Result<Allocation> {
        let off = self.offsets(p)?;
        let r = Reduced::new(p)?;
        let targets = |b1: f64| -> Vec<usize> {
            let tw: Vec<f64> = off.iter().map(|d| (b1 + d).round()).collect();
            items_for_targets(&r, p, &tw, None)
        };
        if let Some(b1) = self.config.b1 {
            let x = targets(b1);
            if !r.feasible(&x) {
                return Err(no_setting("aq", p, &format!("the configured b1 = {b1}")));
            }
            return r.finish(p, &x);
        }
        let wmin = p.options.iter().map(|o| o.weight_bits).min().unwrap_or(1) as f64;
        let wmax = p.options.iter().map(|o| o.weight_bits).max().unwrap_or(32) as f64;
        let dmin = off.iter().copied().fold(f64::INFINITY, f64::min);
        let dmax = off.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = (wmin - dmax - 1.0, wmax - dmin + 1.0);
        match bisect_knob(&r, lo, hi, 60, targets) {
            Some((b1, x)) => {
                ctx.note("b1", b1);
                r.finish(p, &x)
            }
            None => Err(no_setting("aq", p, &format!("b1 from {lo:.2} to {hi:.2}"))),
        }
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Allocator>> {
    Ok(Box::new(Aq {
        config: parse_config("aq", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: AllocatorEntry = AllocatorEntry {
    name: "aq",
    summary: "closed-form bits from b1 and per-layer p_k / t_k (needs extra.aq_p, aq_t)",
    reference: "survey §3.2.1 Eq. 16–18; Zhou et al., AQ, AAAI 2018",
    exact: false,
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::tiny;

    #[test]
    fn closed_form_by_hand() {
        // params 10, 20, 30. p/t: layer a 1, b 32, c 0.03 (×params-normalised below).
        // offsets: log4((p_k/(t_k w_k)) / (p_1/(t_1 w_1))):
        //   b: (32/20)/(1/10) = 16 → +2;  c: (0.03·... ) chosen so that ratio = 1/16 → −2.
        let mut p = tiny(1e9);
        let pt = [(1.0, 1.0), (32.0, 1.0), (30.0 / 160.0, 1.0)];
        for (l, (pk, tk)) in p.layers.iter_mut().zip(pt) {
            l.extra.aq_p = Some(pk);
            l.extra.aq_t = Some(tk);
        }
        let aq = Aq {
            config: AqConfig {
                b1: Some(4.0),
                ..AqConfig::default()
            },
        };
        let off = aq.offsets(&p).unwrap();
        assert!((off[1] - 2.0).abs() < 1e-12 && (off[2] + 2.0).abs() < 1e-12);
        // b1 = 4 → targets 4, 6, 2 → options w4, w4 (largest ≤ 6), w2.
        let a = aq.solve(&p, &mut SolveCtx::new(0)).unwrap();
        assert_eq!(a.choice, vec![1, 1, 0]);
    }
}
