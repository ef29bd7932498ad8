//! The `Quantizer` trait, one file per technique of survey Table 1, and the ordered registry.

use serde::de::DeserializeOwned;

use crate::error::{QuantError, Result};
use crate::layout::{Blocks, TensorLayout};
use crate::rounding::{rng_from_seed, round_to_levels, QuantRng};
use crate::scheme::{QScheme, QuantKind};
use crate::tensor::{QuantizedTensor, FLOAT_PARAM_BITS};

pub mod binary;
pub mod entropy_multibit;
pub mod fixed_point;
pub mod kmeans;
pub mod min_bits;
pub mod power_of_two;
pub mod product;
pub mod product_ec;
pub mod residual;
pub mod scaled_binary;
pub mod scaled_ternary;
pub mod ternary;
pub mod uniform;
pub mod uniform_pow2;

/// A quantizer: maps a tensor to its quantized (dequantized-to-f32) version plus the stored
/// parameters.
pub trait Quantizer: Send + Sync {
    /// The scheme this quantizer was built for.
    fn scheme(&self) -> QScheme;

    /// Quantizes values already checked by [`TensorLayout::check`] (non-empty, finite, length
    /// matching the layout); stochastic choices and seeded initialisations draw from `rng`.
    fn quantize_checked(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng: &mut QuantRng,
    ) -> Result<QuantizedTensor>;

    /// Checks the input, then quantizes it; deterministic for a given `rng_seed`.
    fn quantize(
        &self,
        values: &[f32],
        layout: &TensorLayout,
        rng_seed: u64,
    ) -> Result<QuantizedTensor> {
        layout.check(values)?;
        let mut rng = rng_from_seed(rng_seed);
        self.quantize_checked(values, layout, &mut rng)
    }
}

/// Builds a quantizer from a scheme and a method-specific JSON config (`null` = defaults).
pub type BuildFn = fn(&QScheme, &serde_json::Value) -> Result<Box<dyn Quantizer>>;

/// A registry entry: one per quantizer kind.
#[derive(Clone, Copy)]
pub struct QuantizerEntry {
    /// Stable kebab-case name (equal to `kind.name()`).
    pub name: &'static str,
    /// The kind this entry implements.
    pub kind: QuantKind,
    /// One-line summary.
    pub summary: &'static str,
    /// Survey section / equation and original paper.
    pub reference: &'static str,
    /// Constructor; validates the scheme and the config.
    pub build: BuildFn,
}

impl std::fmt::Debug for QuantizerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizerEntry")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .finish()
    }
}

/// Every quantizer, in a stable order (one per [`QuantKind`], same order as `QuantKind::ALL`).
pub const QUANTIZERS: &[QuantizerEntry] = &[
    uniform::ENTRY,
    uniform_pow2::ENTRY,
    fixed_point::ENTRY,
    binary::ENTRY,
    scaled_binary::ENTRY,
    ternary::ENTRY,
    scaled_ternary::ENTRY,
    power_of_two::ENTRY,
    kmeans::ENTRY,
    product::ENTRY,
    product_ec::ENTRY,
    residual::ENTRY,
    entropy_multibit::ENTRY,
    min_bits::ENTRY,
];

/// The registry entry for `kind`.
pub fn quantizer_entry(kind: QuantKind) -> &'static QuantizerEntry {
    QUANTIZERS
        .iter()
        .find(|e| e.kind == kind)
        .expect("every QuantKind has a registry entry (checked by a test)")
}

/// Builds the quantizer for `scheme` with a method config (`serde_json::Value::Null` = defaults).
pub fn build_quantizer(scheme: &QScheme, config: &serde_json::Value) -> Result<Box<dyn Quantizer>> {
    (quantizer_entry(scheme.kind).build)(scheme, config)
}

/// Quantizes `values` with the default config of `scheme.kind`.
pub fn quantize(
    values: &[f32],
    layout: &TensorLayout,
    scheme: &QScheme,
    seed: u64,
) -> Result<QuantizedTensor> {
    build_quantizer(scheme, &serde_json::Value::Null)?.quantize(values, layout, seed)
}

/// Quantize-dequantize: the f32 values `values` take under `scheme` (default method config).
pub fn fake_quantize(
    values: &[f32],
    layout: &TensorLayout,
    scheme: &QScheme,
    seed: u64,
) -> Result<Vec<f32>> {
    Ok(quantize(values, layout, scheme, seed)?.values)
}

/// Validates `scheme` and that it is of `kind` (build functions call this first).
pub(crate) fn check_scheme(scheme: &QScheme, kind: QuantKind) -> Result<QScheme> {
    if scheme.kind != kind {
        return Err(QuantError::Config {
            method: kind.name().into(),
            message: format!(
                "scheme of kind {} given to the {kind} quantizer",
                scheme.kind
            ),
        });
    }
    scheme.validate()?;
    Ok(*scheme)
}

/// Parses a method config; `null` gives the defaults.
pub(crate) fn parse_config<T: DeserializeOwned + Default>(
    method: &str,
    config: &serde_json::Value,
) -> Result<T> {
    if config.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(config.clone()).map_err(|e| QuantError::Config {
        method: method.to_string(),
        message: e.to_string(),
    })
}

/// Quantizes each block of `scheme.granularity` onto a sorted scalar codebook produced by
/// `levels_for(block, rng)`, rounding with `scheme.rounding`. Codebooks are recorded and charged
/// [`FLOAT_PARAM_BITS`] per level; codes cost `scheme.bits` per element.
pub(crate) fn quantize_on_codebooks<F>(
    values: &[f32],
    layout: &TensorLayout,
    scheme: &QScheme,
    rng: &mut QuantRng,
    mut levels_for: F,
) -> Result<QuantizedTensor>
where
    F: FnMut(&[f32], &mut QuantRng) -> Result<Vec<f32>>,
{
    let blocks = Blocks::new(layout, scheme.granularity)?;
    let mut codebooks = Vec::with_capacity(blocks.count);
    let out = blocks.map(values, |_, block, out| {
        let levels = levels_for(block, rng)?;
        for (o, &x) in out.iter_mut().zip(block) {
            *o = levels[round_to_levels(x, &levels, scheme.rounding, rng)];
        }
        codebooks.push(levels);
        Ok(())
    })?;
    let code_bits = scheme.bits as u64 * values.len() as u64;
    let meta: u64 = codebooks.iter().map(|c| c.len() as u64).sum::<u64>() * FLOAT_PARAM_BITS;
    Ok(QuantizedTensor {
        values: out,
        scheme: *scheme,
        scales: Vec::new(),
        zero_points: Vec::new(),
        codebooks,
        code_bits,
        total_bits: code_bits + meta,
    })
}

/// A quantizer onto a predefined codebook (sorted `levels`, e.g. {-1, +1} or {-1, 0, +1}) that
/// costs no storage: `scheme.bits` per element only.
#[derive(Debug, Clone)]
pub struct FixedCodebook {
    scheme: QScheme,
    levels: &'static [f32],
}

impl FixedCodebook {
    /// The registry `build` of a fixed-codebook quantizer of `entry`: checks the scheme's kind
    /// and that no configuration is given.
    pub(crate) fn build(
        entry: &QuantizerEntry,
        levels: &'static [f32],
        scheme: &QScheme,
        config: &serde_json::Value,
    ) -> Result<Box<dyn Quantizer>> {
        let scheme = check_scheme(scheme, entry.kind)?;
        let _: NoConfig = parse_config(entry.name, config)?;
        Ok(Box::new(FixedCodebook { scheme, levels }))
    }
}

/// Configuration of a quantizer that has none.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

impl Quantizer for FixedCodebook {
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
            self.levels,
        ))
    }
}

/// Quantizes every element onto a predefined codebook (sorted `levels`) that costs no storage:
/// `scheme.bits` per element only.
pub(crate) fn quantize_on_fixed_codebook(
    values: &[f32],
    scheme: &QScheme,
    rng: &mut QuantRng,
    levels: &[f32],
) -> QuantizedTensor {
    let out = values
        .iter()
        .map(|&x| levels[round_to_levels(x, levels, scheme.rounding, rng)])
        .collect();
    let code_bits = scheme.bits as u64 * values.len() as u64;
    QuantizedTensor {
        values: out,
        scheme: *scheme,
        scales: Vec::new(),
        zero_points: Vec::new(),
        codebooks: vec![levels.to_vec()],
        code_bits,
        total_bits: code_bits,
    }
}

/// Maximum absolute value of a slice.
pub(crate) fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Mean absolute value of a non-empty slice.
pub(crate) fn mean_abs(values: &[f32]) -> f32 {
    (values.iter().map(|v| v.abs() as f64).sum::<f64>() / values.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_matches_kinds() {
        assert_eq!(QUANTIZERS.len(), QuantKind::ALL.len());
        for (e, &k) in QUANTIZERS.iter().zip(QuantKind::ALL) {
            assert_eq!(e.kind, k);
            assert_eq!(e.name, k.name());
            assert!(!e.summary.is_empty() && !e.reference.is_empty());
        }
    }
}
