//! `weight-memory` — DQ constraint C1, total memory to store all weights, in bits:
//! `params · b_w` (survey §3.1.2; Uhlich et al., "Mixed Precision DNNs", ICLR 2020).
//! Complexity: `O(L · k)`.

use super::{fill, parse, CostModel, CostModelEntry, NoConfig};
use crate::error::Result;
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

/// DQ C1 weight memory.
#[derive(Debug, Clone, Default)]
pub struct WeightMemory;

impl CostModel for WeightMemory {
    fn kind(&self) -> CostKind {
        CostKind::WeightMemory
    }
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table> {
        fill(layers, options, |l, o| {
            Ok(l.params as f64 * o.weight_bits as f64)
        })
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    let _: NoConfig = parse("weight-memory", v)?;
    Ok(Box::new(WeightMemory))
}

/// Registry entry.
pub const ENTRY: CostModelEntry = CostModelEntry {
    name: "weight-memory",
    summary: "DQ C1: total weight memory in bits, params × b_w",
    reference: "survey §3.1.2 (DQ, C1)",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let t = WeightMemory
            .table(&[LayerInfo::new("x", 10, 0, 0)], &[BitOption::new(3, 8)])
            .unwrap();
        assert_eq!(t.get(0, 0), 30.0);
    }
}
