//! Ternarization onto the predefined codebook `{-1, 0, +1}`.
//!
//! Survey §2.1 (codebook quantization, Table 1); Hwang & Sung, "Fixed-point feedforward deep
//! neural network design using weights +1, 0, and -1", SiPS 2014 \[65\]. Nearest rounding uses the
//! thresholds ±0.5 (ties away from 0 on the positive side); stochastic rounding is the ternary
//! extension of Eq. 6 by Lin et al. 2015 \[70\]. Complexity O(n); storage 2 bits per element.

use super::{FixedCodebook, Quantizer, QuantizerEntry};
use crate::error::Result;
use crate::scheme::{QScheme, QuantKind};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "ternary",
    kind: QuantKind::Ternary,
    summary: "rounding onto the predefined ternary codebook {-1, 0, +1}",
    reference: "survey §2.1, Table 1; Hwang & Sung 2014 [65]; stochastic: Lin et al. 2015 [70]",
    build,
};

/// The codebook.
const LEVELS: &[f32] = &[-1.0, 0.0, 1.0];

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    FixedCodebook::build(&ENTRY, LEVELS, scheme, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::TensorLayout;
    use crate::scheme::Granularity;

    #[test]
    fn thresholds_by_hand() {
        let s = QScheme::new(QuantKind::Ternary, 2, true, Granularity::Tensor);
        let x = [0.49, 0.5, -0.5, -0.51, 3.0, -0.2];
        let q = FixedCodebook::build(&ENTRY, LEVELS, &s, &serde_json::Value::Null)
            .unwrap()
            .quantize(&x, &TensorLayout::flat(6), 0)
            .unwrap();
        assert_eq!(q.values, vec![0.0, 1.0, 0.0, -1.0, 1.0, 0.0]);
        assert_eq!(q.total_bits, 12);
    }
}
