//! Sign binarization onto the predefined codebook `{-1, +1}`.
//!
//! Survey §2.1 Eq. 1 (`q = sign(r)`, `sign(0) = +1`) and, with stochastic rounding, §2.2 Eq. 6
//! (`q = +1` with probability `p = clip((r + 1) / 2, 0, 1)`). Original paper: Courbariaux et al.,
//! "BinaryConnect", 2015 \[54\]. Complexity O(n); storage 1 bit per element, no parameters.

use super::{FixedCodebook, Quantizer, QuantizerEntry};
use crate::error::Result;
use crate::scheme::{QScheme, QuantKind};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "binary",
    kind: QuantKind::Binary,
    summary: "sign binarization to {-1, +1} (Eq. 1), stochastic per Eq. 6",
    reference: "survey §2.1 Eq. 1, §2.2 Eq. 6; Courbariaux et al. 2015 [54]",
    build,
};

/// The codebook.
const LEVELS: &[f32] = &[-1.0, 1.0];

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    FixedCodebook::build(&ENTRY, LEVELS, scheme, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::TensorLayout;
    use crate::scheme::{Granularity, Rounding};

    #[test]
    fn sign_by_hand() {
        let s = QScheme::new(QuantKind::Binary, 1, true, Granularity::Tensor);
        let q = FixedCodebook::build(&ENTRY, LEVELS, &s, &serde_json::Value::Null)
            .unwrap()
            .quantize(&[0.3, -0.01, 0.0, -4.0], &TensorLayout::flat(4), 0)
            .unwrap();
        assert_eq!(q.values, vec![1.0, -1.0, 1.0, -1.0]);
        assert_eq!(q.total_bits, 4);
        // Eq. 6: values at or beyond ±1 are deterministic.
        let st = FixedCodebook::build(
            &ENTRY,
            LEVELS,
            &s.with_rounding(Rounding::Stochastic),
            &serde_json::Value::Null,
        )
        .unwrap();
        let q = st
            .quantize(&[1.0, 2.0, -1.0, -3.0], &TensorLayout::flat(4), 9)
            .unwrap();
        assert_eq!(q.values, vec![1.0, 1.0, -1.0, -1.0]);
    }
}
