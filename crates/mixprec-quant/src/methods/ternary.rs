//! Ternarization onto the predefined codebook `{-1, 0, +1}`.
//!
//! Survey §2.1 (codebook quantization, Table 1); Hwang & Sung, "Fixed-point feedforward deep
//! neural network design using weights +1, 0, and -1", SiPS 2014 \[65\]. Nearest rounding uses the
//! thresholds ±0.5 (ties away from 0 on the positive side); stochastic rounding is the ternary
//! extension of Eq. 6 by Lin et al. 2015 \[70\]. Complexity O(n); storage 2 bits per element.

use serde::{Deserialize, Serialize};

use super::{check_scheme, parse_config, quantize_on_fixed_codebook, Quantizer, QuantizerEntry};
use crate::error::Result;
use crate::layout::TensorLayout;
use crate::rounding::QuantRng;
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::QuantizedTensor;

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "ternary",
    kind: QuantKind::Ternary,
    summary: "rounding onto the predefined ternary codebook {-1, 0, +1}",
    reference: "survey §2.1, Table 1; Hwang & Sung 2014 [65]; stochastic: Lin et al. 2015 [70]",
    build,
};

/// Configuration (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TernaryConfig {}

/// The unscaled ternarizer.
#[derive(Debug, Clone)]
pub struct Ternary {
    scheme: QScheme,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::Ternary)?;
    let _: TernaryConfig = parse_config(ENTRY.name, config)?;
    Ok(Box::new(Ternary { scheme }))
}

impl Quantizer for Ternary {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        _layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        Ok(quantize_on_fixed_codebook(
            values,
            &self.scheme,
            rng,
            &[-1.0, 0.0, 1.0],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Granularity;

    #[test]
    fn thresholds_by_hand() {
        let s = QScheme::new(QuantKind::Ternary, 2, true, Granularity::Tensor);
        let x = [0.49, 0.5, -0.5, -0.51, 3.0, -0.2];
        let q = Ternary { scheme: s }
            .quantize(&x, &TensorLayout::flat(6), 0)
            .unwrap();
        assert_eq!(q.values, vec![0.0, 1.0, 0.0, -1.0, 1.0, 0.0]);
        assert_eq!(q.total_bits, 12);
    }
}
