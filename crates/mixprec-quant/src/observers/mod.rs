//! Calibration observers: estimate activation clip ranges `[a, b]` (survey §2.4, Eq. 10:
//! "the choice of the clipping range, also known as calibration"; refs \[84\]–\[86\]).
//!
//! An observer sees batches with [`Observer::observe`], then [`Observer::range`] returns the
//! clip range for a bit width; feed it to `UniformParams::from_range`.

use serde::de::DeserializeOwned;

use crate::error::{QuantError, Result};
use crate::layout::check_finite;
use crate::scheme::MAX_BITS;

pub mod aciq;
mod histogram;
pub mod kl;
pub mod min_max;
pub mod moving_average;
pub mod mse;
pub mod percentile;

/// A calibration observer.
pub trait Observer: Send {
    /// Registry name.
    fn name(&self) -> &'static str;

    /// Accumulates one batch; rejects empty batches and NaN / infinite values.
    fn observe(&mut self, values: &[f32]) -> Result<()>;

    /// The clip range `(min, max)` for `bits`-bit quantization; symmetric ranges have
    /// `min = -max`.
    fn range(&self, bits: u8, symmetric: bool) -> Result<(f32, f32)>;
}

/// Builds an observer from a JSON config (`null` = defaults).
pub type ObserverBuildFn = fn(&serde_json::Value) -> Result<Box<dyn Observer>>;

/// A registry entry.
#[derive(Clone, Copy)]
pub struct ObserverEntry {
    /// Stable kebab-case name.
    pub name: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Survey section and original paper.
    pub reference: &'static str,
    /// Constructor.
    pub build: ObserverBuildFn,
}

impl std::fmt::Debug for ObserverEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverEntry")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .finish()
    }
}

/// Every observer, in a stable order.
pub const OBSERVERS: &[ObserverEntry] = &[
    min_max::ENTRY,
    moving_average::ENTRY,
    percentile::ENTRY,
    mse::ENTRY,
    kl::ENTRY,
    aciq::ENTRY,
];

/// Builds the observer called `name` with `config` (`null` = defaults).
pub fn build_observer(name: &str, config: &serde_json::Value) -> Result<Box<dyn Observer>> {
    let entry = OBSERVERS
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| QuantError::Config {
            method: name.to_string(),
            message: format!(
                "unknown observer; known: {}",
                OBSERVERS
                    .iter()
                    .map(|e| e.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    (entry.build)(config)
}

/// Parses an observer config; `null` gives the defaults.
pub(crate) fn parse_config<T: DeserializeOwned + Default>(
    name: &str,
    config: &serde_json::Value,
) -> Result<T> {
    crate::methods::parse_config(name, config)
}

/// Checks a batch and a requested bit width.
pub(crate) fn check_batch(values: &[f32]) -> Result<()> {
    check_finite(values, "observer batch")
}

pub(crate) fn check_bits(name: &str, bits: u8) -> Result<()> {
    if bits == 0 || bits > MAX_BITS {
        return Err(QuantError::BadBits {
            bits,
            kind: format!("observer {name}"),
            reason: format!("bit widths must lie in 1..={MAX_BITS}"),
        });
    }
    Ok(())
}

/// Running minimum and maximum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extremes {
    pub min: f32,
    pub max: f32,
    pub seen: bool,
}

impl Default for Extremes {
    fn default() -> Self {
        Extremes {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            seen: false,
        }
    }
}

impl Extremes {
    pub fn of(values: &[f32]) -> Self {
        let mut e = Extremes::default();
        e.update(values);
        e
    }

    pub fn update(&mut self, values: &[f32]) {
        for &v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.seen |= !values.is_empty();
    }

    pub fn require(&self, name: &str) -> Result<()> {
        if self.seen {
            Ok(())
        } else {
            Err(QuantError::NoObservations {
                observer: name.to_string(),
            })
        }
    }

    pub fn max_abs(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    /// The range for a clip magnitude `t`: `(-t, t)` when symmetric, else `[-t, t]`
    /// intersected with the observed `[min, max]`.
    pub fn clip(&self, t: f32, symmetric: bool) -> (f32, f32) {
        if symmetric {
            (-t, t)
        } else {
            (self.min.max(-t), self.max.min(t))
        }
    }

    /// Quantization steps per unit of clip magnitude: a `[-t, t]` (or `[0, t]` for one-sided
    /// asymmetric data) grid has `t / steps(bits)` as its step.
    pub fn steps(&self, bits: u8, symmetric: bool) -> f64 {
        let full = ((1u64 << bits) - 1) as f64;
        if symmetric {
            ((1u64 << (bits - 1)) as f64 - 1.0).max(0.5)
        } else if self.min >= 0.0 {
            full
        } else {
            full / 2.0
        }
    }
}
