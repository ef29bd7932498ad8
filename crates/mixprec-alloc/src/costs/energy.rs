//! `energy` — inference energy in pJ: `MACs · e_mac(b_w, b_a) + bytes_moved · e_byte`, the
//! explicit energy constraint of MPNASEE / APQ / HAQ (survey §4.1.2 "explicit hardware
//! constraints").
//!
//! Default numbers are Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, 0.9 V:
//! 8-bit integer multiply 0.2 pJ, 32-bit integer add 0.1 pJ (the accumulator), 32-bit float
//! multiply 3.7 pJ + add 0.9 pJ = 4.6 pJ per float MAC, and an 8 KB SRAM 64-bit access of 10 pJ
//! = 1.25 pJ per byte moved (DRAM would be 1.3–2.6 nJ per 64 bits, i.e. 160–320 pJ per byte —
//! set `byte_pj` accordingly). A `b_w × b_a` integer multiplier is scaled from the 8×8 one by
//! its area, `b_w · b_a / 64`; any `w{b}a{b}` entry of `mac_pj` overrides the formula. Bytes
//! moved per inference = `(params · b_w + activation_elems · b_a) / 8`.
//! Complexity: `O(L · k)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{fill, parse, CostModel, CostModelEntry};
use crate::error::{config_err, Result};
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

/// Configuration of [`Energy`] (all energies in pJ).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    /// 8-bit × 8-bit integer multiply.
    pub mult8_pj: f64,
    /// Accumulate (32-bit integer add).
    pub acc_pj: f64,
    /// One float MAC (either operand ≥ 32 bits).
    pub float_mac_pj: f64,
    /// Energy per byte of weights/activations moved.
    pub byte_pj: f64,
    /// Explicit per-MAC energies by `w{b}a{b}` key, overriding the formula.
    pub mac_pj: BTreeMap<String, f64>,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        Self {
            mult8_pj: 0.2,
            acc_pj: 0.1,
            float_mac_pj: 4.6,
            byte_pj: 1.25,
            mac_pj: BTreeMap::new(),
        }
    }
}

/// Energy model.
#[derive(Debug, Clone, Default)]
pub struct Energy {
    /// Its configuration.
    pub config: EnergyConfig,
}

impl Energy {
    /// Energy of one MAC at the option's bit-widths.
    pub fn mac_pj(&self, o: &BitOption) -> f64 {
        let c = &self.config;
        if let Some(v) = c
            .mac_pj
            .get(&format!("w{}a{}", o.weight_bits, o.activation_bits))
        {
            return *v;
        }
        if o.weight_bits >= 32 || o.activation_bits >= 32 {
            c.float_mac_pj
        } else {
            c.mult8_pj * (o.weight_bits * o.activation_bits) as f64 / 64.0 + c.acc_pj
        }
    }
}

impl CostModel for Energy {
    fn kind(&self) -> CostKind {
        CostKind::Energy
    }
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table> {
        let c = &self.config;
        for (k, v) in [
            ("mult8_pj", c.mult8_pj),
            ("acc_pj", c.acc_pj),
            ("float_mac_pj", c.float_mac_pj),
            ("byte_pj", c.byte_pj),
        ]
        .into_iter()
        .chain(c.mac_pj.iter().map(|(k, v)| (k.as_str(), *v)))
        {
            if !v.is_finite() || v < 0.0 {
                return Err(config_err(
                    "energy",
                    format!("{k} = {v} must be finite and >= 0"),
                ));
            }
        }
        fill(layers, options, |l, o| {
            let bytes = (l.params as f64 * o.weight_bits as f64
                + l.activation_elems as f64 * o.activation_bits as f64)
                / 8.0;
            Ok(l.macs as f64 * self.mac_pj(o) + bytes * c.byte_pj)
        })
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    Ok(Box::new(Energy {
        config: parse("energy", v)?,
    }))
}

/// Registry entry.
pub const ENTRY: CostModelEntry = CostModelEntry {
    name: "energy",
    summary: "pJ: MACs × e_mac(b_w,b_a) + bytes moved × e_byte (Horowitz 45 nm defaults)",
    reference: "survey §4.1.2 explicit constraints; Horowitz, ISSCC 2014",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let e = Energy::default();
        // 4×8 multiply: 0.2 × 32/64 = 0.1, + 0.1 accumulate.
        assert!((e.mac_pj(&BitOption::new(4, 8)) - 0.2).abs() < 1e-12);
        let t = e
            .table(&[LayerInfo::new("x", 16, 100, 8)], &[BitOption::new(4, 8)])
            .unwrap();
        // 100 × 0.2 + (64 + 64)/8 × 1.25 = 20 + 20
        assert!((t.get(0, 0) - 40.0).abs() < 1e-9);
    }
}
