//! Cost models: one file each, a [`CostModel`] trait that fills a `layers × options`
//! [`Table`] from layer infos and options, and the ordered registry [`COST_MODELS`].

use crate::error::{config_err, AllocError, Result};
use crate::problem::{BitOption, CostKind, LayerInfo};
use crate::table::Table;

pub mod activation_memory;
pub mod bops;
pub mod energy;
pub mod latency;
pub mod max_activation;
pub mod model_size;
pub mod weight_memory;

/// Fills a cost table.
pub trait CostModel {
    /// Kind of cost produced (and its aggregation).
    fn kind(&self) -> CostKind;
    /// Cost of each (layer, option) pair.
    fn table(&self, layers: &[LayerInfo], options: &[BitOption]) -> Result<Table>;
}

/// Registry entry of a cost model.
pub struct CostModelEntry {
    /// Stable kebab-case name (equal to the [`CostKind`] produced).
    pub name: &'static str,
    /// One-line summary including the unit.
    pub summary: &'static str,
    /// Survey section / source.
    pub reference: &'static str,
    /// Builds the model from a JSON config (`null` = defaults).
    pub build: fn(&serde_json::Value) -> Result<Box<dyn CostModel>>,
}

/// Every cost model, in a stable order.
pub const COST_MODELS: &[CostModelEntry] = &[
    model_size::ENTRY,
    bops::ENTRY,
    weight_memory::ENTRY,
    activation_memory::ENTRY,
    max_activation::ENTRY,
    energy::ENTRY,
    latency::ENTRY,
];

/// Builds a registered cost model by name.
pub fn cost_model(name: &str, config: &serde_json::Value) -> Result<Box<dyn CostModel>> {
    match COST_MODELS.iter().find(|e| e.name == name) {
        Some(e) => (e.build)(config),
        None => Err(AllocError::Unknown {
            family: "cost model",
            name: name.to_string(),
            known: COST_MODELS
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Builds a table cell by cell.
pub(crate) fn fill(
    layers: &[LayerInfo],
    options: &[BitOption],
    mut f: impl FnMut(&LayerInfo, &BitOption) -> Result<f64>,
) -> Result<Table> {
    let mut t = Table::filled(layers.len(), options.len(), 0.0);
    for (i, l) in layers.iter().enumerate() {
        for (j, o) in options.iter().enumerate() {
            t.set(i, j, f(l, o)?);
        }
    }
    Ok(t)
}

/// Parses a config; `null` gives the default.
pub(crate) fn parse<T: serde::de::DeserializeOwned + Default>(
    name: &str,
    v: &serde_json::Value,
) -> Result<T> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v.clone()).map_err(|e| config_err(name, e.to_string()))
}

/// Config of cost models without parameters (must be `null` or `{}`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}
