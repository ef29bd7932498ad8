//! Sign binarization onto the predefined codebook `{-1, +1}`.
//!
//! Survey §2.1 Eq. 1 (`q = sign(r)`, `sign(0) = +1`) and, with stochastic rounding, §2.2 Eq. 6
//! (`q = +1` with probability `p = clip((r + 1) / 2, 0, 1)`). Original paper: Courbariaux et al.,
//! "BinaryConnect", 2015 \[54\]. Complexity O(n); storage 1 bit per element, no parameters.

use serde::{Deserialize, Serialize};

use super::{check_scheme, parse_config, quantize_on_fixed_codebook, Quantizer, QuantizerEntry};
use crate::error::Result;
use crate::layout::TensorLayout;
use crate::rounding::QuantRng;
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::QuantizedTensor;

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "binary",
    kind: QuantKind::Binary,
    summary: "sign binarization to {-1, +1} (Eq. 1), stochastic per Eq. 6",
    reference: "survey §2.1 Eq. 1, §2.2 Eq. 6; Courbariaux et al. 2015 [54]",
    build,
};

/// Configuration (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryConfig {}

/// The sign binarizer.
#[derive(Debug, Clone)]
pub struct Binary {
    scheme: QScheme,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::Binary)?;
    let _: BinaryConfig = parse_config(ENTRY.name, config)?;
    Ok(Box::new(Binary { scheme }))
}

impl Quantizer for Binary {
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
            &[-1.0, 1.0],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{Granularity, Rounding};

    #[test]
    fn sign_by_hand() {
        let s = QScheme::new(QuantKind::Binary, 1, true, Granularity::Tensor);
        let q = Binary { scheme: s }
            .quantize(&[0.3, -0.01, 0.0, -4.0], &TensorLayout::flat(4), 0)
            .unwrap();
        assert_eq!(q.values, vec![1.0, -1.0, 1.0, -1.0]);
        assert_eq!(q.total_bits, 4);
        // Eq. 6: values at or beyond ±1 are deterministic.
        let st = Binary {
            scheme: s.with_rounding(Rounding::Stochastic),
        };
        let q = st
            .quantize(&[1.0, 2.0, -1.0, -3.0], &TensorLayout::flat(4), 9)
            .unwrap();
        assert_eq!(q.values, vec![1.0, 1.0, -1.0, -1.0]);
    }
}
