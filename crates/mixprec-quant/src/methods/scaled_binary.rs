//! Scaled binarization `w ≈ alpha · sign(w)` (BWN / XNOR-Net).
//!
//! Survey §2.1 Eq. 5 (weights constrained to `alpha_layer · q`, `q ∈ {-1, +1}^N`); for the
//! squared error the optimum is `q = sign(w)`, `alpha = mean|w|` (Rastegari et al., "XNOR-Net",
//! ECCV 2016 \[28\]), computed per block (per output filter with channel granularity, as in
//! XNOR-Net). Stochastic rounding applies Eq. 6 to `w / alpha`.
//! Complexity O(n); storage 1 bit per element + a 32-bit alpha per block.

use serde::{Deserialize, Serialize};

use super::{
    check_scheme, mean_abs, parse_config, quantize_on_codebooks, Quantizer, QuantizerEntry,
};
use crate::error::Result;
use crate::layout::TensorLayout;
use crate::rounding::QuantRng;
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

/// Registry entry.
pub const ENTRY: QuantizerEntry = QuantizerEntry {
    name: "scaled-binary",
    kind: QuantKind::ScaledBinary,
    summary: "binary weights with alpha = mean|w| per block (BWN / XNOR-Net, Eq. 5)",
    reference: "survey §2.1 Eq. 5; Rastegari et al. 2016 [28]",
    build,
};

/// Configuration (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaledBinaryConfig {}

/// The BWN / XNOR binarizer.
#[derive(Debug, Clone)]
pub struct ScaledBinary {
    scheme: QScheme,
}

fn build(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    let scheme = check_scheme(scheme, QuantKind::ScaledBinary)?;
    let _: ScaledBinaryConfig = parse_config(ENTRY.name, config)?;
    Ok(Box::new(ScaledBinary { scheme }))
}

impl Quantizer for ScaledBinary {
    fn scheme(&self) -> QScheme {
        self.scheme
    }

    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor> {
        let mut q = quantize_on_codebooks(values, layout, &self.scheme, rng, |block, _| {
            let alpha = mean_abs(block);
            Ok(vec![-alpha, alpha])
        })?;
        q.scales = q.codebooks.drain(..).map(|c| c[1]).collect();
        q.total_bits = q.code_bits + FLOAT_PARAM_BITS * q.scales.len() as u64;
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Granularity;

    #[test]
    fn alpha_per_filter_by_hand() {
        // Filters [1, -3] (alpha 2) and [0.5, 0.1] (alpha 0.3).
        let s = QScheme::new(QuantKind::ScaledBinary, 1, true, Granularity::Channel);
        let q = ScaledBinary { scheme: s }
            .quantize(&[1.0, -3.0, 0.5, 0.1], &TensorLayout::weight(&[2, 2]), 0)
            .unwrap();
        assert_eq!(q.scales, vec![2.0, 0.3]);
        assert_eq!(q.values, vec![2.0, -2.0, 0.3, 0.3]);
        assert_eq!(q.total_bits, 4 + 64);
    }
}
