//! `max-activation` — DQ constraint C3, memory of the largest feature map, in bits:
//! `max_l activation_elems_l · b_a,l` (survey §3.1.2). A **max-type** cost: a budget on it is
//! equivalent to forbidding, per layer, every option whose own activation memory exceeds it;
//! allocators apply it that way (see [`crate::reduce`]), never as a knapsack row.
//! Complexity: `O(L · k)`.

use super::{fill, parse, CostModel, CostModelEntry, NoConfig};
use crate::error::Result;
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

/// DQ C3 largest activation.
#[derive(Debug, Clone, Default)]
pub struct MaxActivation;

impl CostModel for MaxActivation {
    fn kind(&self) -> CostKind {
        CostKind::MaxActivation
    }
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table> {
        fill(layers, options, |l, o| {
            Ok(l.activation_elems as f64 * o.activation_bits as f64)
        })
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    let _: NoConfig = parse("max-activation", v)?;
    Ok(Box::new(MaxActivation))
}

/// Registry entry.
pub const ENTRY: CostModelEntry = CostModelEntry {
    name: "max-activation",
    summary: "DQ C3: largest activation in bits, max over layers (max-type)",
    reference: "survey §3.1.2 (DQ, C3)",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Aggregate;

    #[test]
    fn is_max_type() {
        assert_eq!(MaxActivation.kind().aggregate(), Aggregate::Max);
        assert_eq!(MaxActivation.kind().combine([3.0, 9.0, 4.0]), 9.0);
    }
}
