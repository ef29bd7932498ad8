//! The allocation problem (survey §3.3 Eq. 26, §3.3.2 Eq. 32, §3.1.2 C1–C3): layers, a global
//! list of bit options, a sensitivity table (lower is better), cost tables, budgets, tie groups and
//! fixed layers — plain data, serialisable, validated with errors that name what is wrong.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, AllocError, Result};
use crate::table::Table;

/// Version of the JSON problem format written by this crate.
pub const PROBLEM_VERSION: u32 = 1;

/// Relative tolerance used when comparing a total cost with its budget.
pub const BUDGET_RTOL: f64 = 1e-9;

/// True when `total` satisfies `total <= max` up to [`BUDGET_RTOL`].
pub fn fits(total: f64, max: f64) -> bool {
    total <= max + BUDGET_RTOL * max.abs().max(1.0)
}

/// Optional per-layer quantities that some heuristic allocators need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerExtra {
    /// AQ (§3.2.1 Eq. 18): `p_k`, noise on the last feature map at a fixed bit-width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aq_p: Option<f64>,
    /// AQ (§3.2.1 Eq. 18): `t_k`, ratio of output noise to adversarial noise at the accuracy bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aq_t: Option<f64>,
    /// PDB (§3.2.2 Eq. 19): feature separability `s` of the layer's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separability: Option<f64>,
    /// Hybrid-Net (§3.2.4): whether PCA marks the layer significant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significant: Option<bool>,
    /// OPQ (§3.3.1 Eq. 29): standard deviation of the layer's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_std: Option<f64>,
    /// OPQ (§3.3.1 Eq. 31): maximum absolute weight `α` of the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_max_abs: Option<f64>,
}

fn one() -> u64 {
    1
}

/// One quantizable layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerInfo {
    /// Unique layer name (as in the graph / policy).
    pub name: String,
    /// Number of weight parameters.
    #[serde(default)]
    pub params: u64,
    /// Multiply-accumulates of one forward pass.
    #[serde(default)]
    pub macs: u64,
    /// Elements of the layer's (input) activation tensor that is quantized.
    #[serde(default)]
    pub activation_elems: u64,
    /// Output channels (number of per-channel scales); defaults to 1.
    #[serde(default = "one")]
    pub out_channels: u64,
    /// Optional mask over the global options (`true` = allowed); absent means all allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<bool>>,
    /// Optional per-layer data for heuristic allocators.
    #[serde(default, skip_serializing_if = "is_default_extra")]
    pub extra: LayerExtra,
}

fn is_default_extra(e: &LayerExtra) -> bool {
    *e == LayerExtra::default()
}

impl LayerInfo {
    /// A layer with the given name and sizes, one output channel, all options allowed.
    pub fn new(name: impl Into<String>, params: u64, macs: u64, activation_elems: u64) -> Self {
        Self {
            name: name.into(),
            params,
            macs,
            activation_elems,
            out_channels: 1,
            allowed: None,
            extra: LayerExtra::default(),
        }
    }
}

fn uniform() -> String {
    "uniform".to_string()
}

/// One candidate (weight bits, activation bits, quantizer) setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitOption {
    /// Weight bit-width (32 = float).
    pub weight_bits: u32,
    /// Activation bit-width (32 = float).
    pub activation_bits: u32,
    /// Quantizer kind (`uniform`, `kmeans`, `power_of_two`, `binary`, …).
    #[serde(default = "uniform")]
    pub quantizer: String,
}

impl BitOption {
    /// A uniform-quantizer option.
    pub fn new(weight_bits: u32, activation_bits: u32) -> Self {
        Self {
            weight_bits,
            activation_bits,
            quantizer: uniform(),
        }
    }

    /// Label such as `w4a8` (uniform) or `w4a8-kmeans`.
    pub fn label(&self) -> String {
        if self.quantizer == "uniform" {
            format!("w{}a{}", self.weight_bits, self.activation_bits)
        } else {
            format!(
                "w{}a{}-{}",
                self.weight_bits, self.activation_bits, self.quantizer
            )
        }
    }
}

/// How per-layer costs combine into a network cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Network cost = sum over layers (size, BOPs, energy, latency, C1, C2).
    Sum,
    /// Network cost = maximum over layers (DQ's C3, largest activation).
    Max,
}

/// Kind of cost a table holds. Serialised as a kebab-case string; own costs are
/// `custom:NAME` (additive) or `custom-max:NAME` (max-type).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CostKind {
    /// Model size in bits, including scales, zero points and codebooks.
    ModelSize,
    /// Bit operations, MACs × b_w × b_a (HAWQ-V3 Eq. 26 `B_j`).
    Bops,
    /// DQ C1: total weight memory in bits.
    WeightMemory,
    /// DQ C2: total activation memory in bits.
    ActivationMemory,
    /// DQ C3: largest activation in bits (max-type).
    MaxActivation,
    /// Energy in pJ.
    Energy,
    /// Latency in ms (from a look-up table).
    Latency,
    /// A user-defined additive cost.
    Custom(String),
    /// A user-defined max-type cost.
    CustomMax(String),
}

impl CostKind {
    /// Whether this cost adds up over layers or takes the maximum.
    pub fn aggregate(&self) -> Aggregate {
        match self {
            CostKind::MaxActivation | CostKind::CustomMax(_) => Aggregate::Max,
            _ => Aggregate::Sum,
        }
    }

    /// Combines per-layer costs into the network cost.
    pub fn combine(&self, values: impl IntoIterator<Item = f64>) -> f64 {
        match self.aggregate() {
            Aggregate::Sum => values.into_iter().sum(),
            Aggregate::Max => values.into_iter().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

const COST_KIND_NAMES: &str = "model-size, bops, weight-memory, activation-memory, max-activation, energy, latency, custom:NAME, custom-max:NAME";

impl fmt::Display for CostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CostKind::ModelSize => f.write_str("model-size"),
            CostKind::Bops => f.write_str("bops"),
            CostKind::WeightMemory => f.write_str("weight-memory"),
            CostKind::ActivationMemory => f.write_str("activation-memory"),
            CostKind::MaxActivation => f.write_str("max-activation"),
            CostKind::Energy => f.write_str("energy"),
            CostKind::Latency => f.write_str("latency"),
            CostKind::Custom(n) => write!(f, "custom:{n}"),
            CostKind::CustomMax(n) => write!(f, "custom-max:{n}"),
        }
    }
}

impl FromStr for CostKind {
    type Err = AllocError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "model-size" => CostKind::ModelSize,
            "bops" => CostKind::Bops,
            "weight-memory" => CostKind::WeightMemory,
            "activation-memory" => CostKind::ActivationMemory,
            "max-activation" => CostKind::MaxActivation,
            "energy" => CostKind::Energy,
            "latency" => CostKind::Latency,
            _ => {
                if let Some(n) = s.strip_prefix("custom:").filter(|n| !n.is_empty()) {
                    CostKind::Custom(n.to_string())
                } else if let Some(n) = s.strip_prefix("custom-max:").filter(|n| !n.is_empty()) {
                    CostKind::CustomMax(n.to_string())
                } else {
                    return Err(invalid(format!(
                        "unknown cost kind `{s}`; expected one of {COST_KIND_NAMES}"
                    )));
                }
            }
        })
    }
}

impl Serialize for CostKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CostKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An upper bound on one network cost (`cost <= max`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Which cost is bounded (a table of this kind must be present).
    pub cost: CostKind,
    /// Upper limit, in the table's unit.
    pub max: f64,
}

fn version() -> u32 {
    PROBLEM_VERSION
}

/// A bit-width allocation problem: choose one option per layer minimising the summed
/// sensitivity subject to all budgets (HAWQ-V3 Eq. 26).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationProblem {
    /// Format version; must equal [`PROBLEM_VERSION`].
    #[serde(default = "version")]
    pub version: u32,
    /// The layers, in network order.
    pub layers: Vec<LayerInfo>,
    /// Global list of options; per-layer masks restrict it.
    pub options: Vec<BitOption>,
    /// `layers × options` perturbation (lower is better).
    pub sensitivity: Table,
    /// Cost tables, one per kind, each `layers × options`.
    #[serde(default)]
    pub costs: Vec<(CostKind, Table)>,
    /// Budgets, all of which must hold.
    #[serde(default)]
    pub budgets: Vec<Budget>,
    /// Groups of layer indices that must pick the same option.
    #[serde(default)]
    pub tie_groups: Vec<Vec<usize>>,
    /// `(layer, option)` pairs forcing a layer to an option.
    #[serde(default)]
    pub fixed: Vec<(usize, usize)>,
}

/// The result of an allocator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// Option index per layer.
    pub choice: Vec<usize>,
    /// Summed sensitivity of the choice.
    pub objective: f64,
    /// Every cost of the problem evaluated for the choice.
    pub costs: Vec<(CostKind, f64)>,
    /// Optional per-layer pruning ratio in [0, 1] (OPQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<Vec<f64>>,
}

impl Allocation {
    /// Value of one cost, if the problem had that table.
    pub fn cost(&self, kind: &CostKind) -> Option<f64> {
        self.costs.iter().find(|(k, _)| k == kind).map(|(_, v)| *v)
    }
}

impl AllocationProblem {
    /// A problem with no costs, budgets, ties or fixed layers.
    pub fn new(layers: Vec<LayerInfo>, options: Vec<BitOption>, sensitivity: Table) -> Self {
        Self {
            version: PROBLEM_VERSION,
            layers,
            options,
            sensitivity,
            costs: Vec::new(),
            budgets: Vec::new(),
            tie_groups: Vec::new(),
            fixed: Vec::new(),
        }
    }

    /// Parses and validates a JSON problem.
    pub fn from_json(text: &str) -> Result<Self> {
        let p: Self = serde_json::from_str(text).map_err(|source| AllocError::Json {
            what: "allocation problem".into(),
            source,
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Reads, parses and validates a JSON problem file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AllocError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let p: Self = serde_json::from_str(&text).map_err(|source| AllocError::Json {
            what: path.display().to_string(),
            source,
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Pretty JSON text of the problem.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("problem serialises")
    }

    /// The cost table of a kind, if present.
    pub fn cost_table(&self, kind: &CostKind) -> Option<&Table> {
        self.costs.iter().find(|(k, _)| k == kind).map(|(_, t)| t)
    }

    /// Adds (or replaces) a cost table.
    pub fn set_cost(&mut self, kind: CostKind, table: Table) {
        if let Some(slot) = self.costs.iter_mut().find(|(k, _)| *k == kind) {
            slot.1 = table;
        } else {
            self.costs.push((kind, table));
        }
    }

    /// Whether `layer` may use `option` according to its mask (ignores budgets and ties).
    pub fn mask_allows(&self, layer: usize, option: usize) -> bool {
        self.layers[layer]
            .allowed
            .as_ref()
            .is_none_or(|m| m.get(option).copied().unwrap_or(false))
    }

    /// Finds an option by label (`w4a8`, `w4a8-kmeans`) or by index.
    pub fn option_by_name(&self, name: &str) -> Result<usize> {
        if let Some(i) = self.options.iter().position(|o| o.label() == name) {
            return Ok(i);
        }
        if let Ok(i) = name.parse::<usize>() {
            if i < self.options.len() {
                return Ok(i);
            }
        }
        Err(invalid(format!(
            "unknown option `{name}`; known: {}",
            self.options
                .iter()
                .map(BitOption::label)
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Checks shapes, finiteness, names and indices; errors name the offending item.
    pub fn validate(&self) -> Result<()> {
        if self.version != PROBLEM_VERSION {
            return Err(invalid(format!(
                "version {} is not supported (this build reads version {PROBLEM_VERSION})",
                self.version
            )));
        }
        let (nl, no) = (self.layers.len(), self.options.len());
        if nl == 0 {
            return Err(invalid("no layers"));
        }
        if no == 0 {
            return Err(invalid("no options"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.layers.iter().enumerate() {
            if l.name.is_empty() {
                return Err(invalid(format!("layers[{i}] has an empty name")));
            }
            if !names.insert(l.name.as_str()) {
                return Err(invalid(format!(
                    "duplicate layer name `{}` (layers[{i}])",
                    l.name
                )));
            }
            if let Some(m) = &l.allowed {
                if m.len() != no {
                    return Err(invalid(format!(
                        "layer `{}`: allowed mask has {} entries but there are {no} options",
                        l.name,
                        m.len()
                    )));
                }
                if !m.iter().any(|&b| b) {
                    return Err(invalid(format!(
                        "layer `{}`: allowed mask excludes every option",
                        l.name
                    )));
                }
            }
            let e = &l.extra;
            for (field, v) in [
                ("aq_p", e.aq_p),
                ("aq_t", e.aq_t),
                ("separability", e.separability),
                ("weight_std", e.weight_std),
                ("weight_max_abs", e.weight_max_abs),
            ] {
                if let Some(v) = v {
                    if !v.is_finite() {
                        return Err(invalid(format!(
                            "layer `{}`: extra.{field} is not finite",
                            l.name
                        )));
                    }
                }
            }
        }
        for (j, o) in self.options.iter().enumerate() {
            if o.weight_bits == 0 || o.activation_bits == 0 || o.weight_bits > 64 {
                return Err(invalid(format!(
                    "options[{j}] ({}) has a zero or too large bit-width",
                    o.label()
                )));
            }
        }
        let check_table = |what: &str, t: &Table| -> Result<()> {
            if t.rows() != nl || t.cols() != no {
                return Err(invalid(format!(
                    "{what} table is {}×{} but the problem has {nl} layers × {no} options",
                    t.rows(),
                    t.cols()
                )));
            }
            if let Some((r, c)) = t.first_non_finite() {
                return Err(invalid(format!(
                    "{what} table has a non-finite value at layer `{}`, option {}",
                    self.layers[r].name,
                    self.options[c].label()
                )));
            }
            Ok(())
        };
        check_table("sensitivity", &self.sensitivity)?;
        for (i, (k, t)) in self.costs.iter().enumerate() {
            check_table(&format!("cost `{k}`"), t)?;
            if self.costs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(invalid(format!("cost `{k}` is given twice")));
            }
        }
        for b in &self.budgets {
            if self.cost_table(&b.cost).is_none() {
                return Err(invalid(format!(
                    "budget on `{}` but the problem has no `{}` cost table (present: {})",
                    b.cost,
                    b.cost,
                    self.costs
                        .iter()
                        .map(|(k, _)| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if !b.max.is_finite() {
                return Err(invalid(format!("budget on `{}` is not finite", b.cost)));
            }
        }
        for (g, grp) in self.tie_groups.iter().enumerate() {
            if let Some(&bad) = grp.iter().find(|&&l| l >= nl) {
                return Err(invalid(format!(
                    "tie_groups[{g}] names layer index {bad} but there are {nl} layers"
                )));
            }
        }
        for &(l, o) in &self.fixed {
            if l >= nl {
                return Err(invalid(format!(
                    "fixed names layer index {l} but there are {nl} layers"
                )));
            }
            if o >= no {
                return Err(invalid(format!(
                    "fixed: layer `{}` forced to option index {o} but there are {no} options",
                    self.layers[l].name
                )));
            }
            if !self.mask_allows(l, o) {
                return Err(invalid(format!(
                    "fixed: layer `{}` forced to {} which its allowed mask excludes",
                    self.layers[l].name,
                    self.options[o].label()
                )));
            }
            if let Some(&(_, o2)) = self.fixed.iter().find(|&&(l2, o2)| l2 == l && o2 != o) {
                return Err(invalid(format!(
                    "fixed: layer `{}` is forced to two options ({} and {})",
                    self.layers[l].name,
                    self.options[o].label(),
                    self.options[o2].label()
                )));
            }
        }
        Ok(())
    }

    /// Objective and all costs of a choice (one option index per layer).
    pub fn evaluate(&self, choice: &[usize]) -> Result<Allocation> {
        if choice.len() != self.layers.len() {
            return Err(invalid(format!(
                "choice has {} entries but there are {} layers",
                choice.len(),
                self.layers.len()
            )));
        }
        if let Some(l) = choice.iter().position(|&o| o >= self.options.len()) {
            return Err(invalid(format!(
                "choice for layer `{}` is option {} but there are {} options",
                self.layers[l].name,
                choice[l],
                self.options.len()
            )));
        }
        let objective = choice
            .iter()
            .enumerate()
            .map(|(l, &o)| self.sensitivity.get(l, o))
            .sum();
        let costs = self
            .costs
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    k.combine(choice.iter().enumerate().map(|(l, &o)| t.get(l, o))),
                )
            })
            .collect();
        Ok(Allocation {
            choice: choice.to_vec(),
            objective,
            costs,
            pruning: None,
        })
    }

    /// Every way a choice breaks the problem (masks, fixed layers, tie groups, budgets);
    /// empty when it is a valid, feasible allocation.
    pub fn violations(&self, choice: &[usize]) -> Vec<String> {
        let mut out = Vec::new();
        let a = match self.evaluate(choice) {
            Ok(a) => a,
            Err(e) => return vec![e.to_string()],
        };
        for (l, &o) in choice.iter().enumerate() {
            if !self.mask_allows(l, o) {
                out.push(format!(
                    "layer `{}` uses {} which its mask excludes",
                    self.layers[l].name,
                    self.options[o].label()
                ));
            }
        }
        for &(l, o) in &self.fixed {
            if choice[l] != o {
                out.push(format!(
                    "layer `{}` is fixed to {} but uses {}",
                    self.layers[l].name,
                    self.options[o].label(),
                    self.options[choice[l]].label()
                ));
            }
        }
        for (g, grp) in self.tie_groups.iter().enumerate() {
            if let Some(&first) = grp.first() {
                if grp.iter().any(|&l| choice[l] != choice[first]) {
                    out.push(format!("tie_groups[{g}] mixes options"));
                }
            }
        }
        for b in &self.budgets {
            let v = a.cost(&b.cost).unwrap_or(f64::NAN);
            if !fits(v, b.max) {
                out.push(format!("`{}` = {v} exceeds budget {}", b.cost, b.max));
            }
        }
        out
    }
}
