//! `activation-memory` — DQ constraint C2, total activation memory to store all feature maps,
//! in bits: `activation_elems · b_a`, summed over layers (survey §3.1.2).
//! Complexity: `O(L · k)`.

use super::{fill, parse, CostModel, CostModelEntry, NoConfig};
use crate::error::Result;
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

/// DQ C2 total activation memory.
#[derive(Debug, Clone, Default)]
pub struct ActivationMemory;

impl CostModel for ActivationMemory {
    fn kind(&self) -> CostKind {
        CostKind::ActivationMemory
    }
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table> {
        fill(layers, options, |l, o| {
            Ok(l.activation_elems as f64 * o.activation_bits as f64)
        })
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    let _: NoConfig = parse("activation-memory", v)?;
    Ok(Box::new(ActivationMemory))
}

/// Registry entry.
pub const ENTRY: CostModelEntry = CostModelEntry {
    name: "activation-memory",
    summary: "DQ C2: total activation memory in bits, Σ activation_elems × b_a",
    reference: "survey §3.1.2 (DQ, C2)",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let t = ActivationMemory
            .table(&[LayerInfo::new("x", 0, 0, 7)], &[BitOption::new(3, 4)])
            .unwrap();
        assert_eq!(t.get(0, 0), 28.0);
    }
}
