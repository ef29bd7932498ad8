//! `bops` — bit operations `MACs × b_w × b_a` (survey §3.3 Eq. 26 `B_j`, HAWQ-V3; also the
//! GBOPs of Bayesian Bits §3.1.4). Complexity: `O(L · k)`.

use super::{fill, parse, CostModel, CostModelEntry, NoConfig};
use crate::error::Result;
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

/// Bit operations.
#[derive(Debug, Clone, Default)]
pub struct Bops;

impl CostModel for Bops {
    fn kind(&self) -> CostKind {
        CostKind::Bops
    }
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table> {
        fill(layers, options, |l, o| {
            Ok(l.macs as f64 * o.weight_bits as f64 * o.activation_bits as f64)
        })
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    let _: NoConfig = parse("bops", v)?;
    Ok(Box::new(Bops))
}

/// Registry entry.
pub const ENTRY: CostModelEntry = CostModelEntry {
    name: "bops",
    summary: "bit operations: MACs × b_w × b_a",
    reference: "survey §3.3 Eq. 26 (B_j), §3.1.4",
    build,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let t = Bops
            .table(&[LayerInfo::new("x", 0, 1000, 0)], &[BitOption::new(4, 8)])
            .unwrap();
        assert_eq!(t.get(0, 0), 32_000.0);
    }
}
