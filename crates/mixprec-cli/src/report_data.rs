//! Turns what a pipeline run measured ([`Outcome`], [`Comparison`]) into the [`Report`] that
//! `report.json` / `report.html` show.

use crate::cmd::compare::Comparison;
use crate::cmd::mixed::{cost_of, Outcome};
use crate::pipeline::{Evaluated, Session};
use crate::report::{CompareRow, LayerRow, Point, Report, REPORT_VERSION};
use mixprec_alloc::{AllocationProblem, CostKind};

/// The x axis of the accuracy-vs-cost plots: the first budget's cost.
pub struct Axis {
    kind: CostKind,
    /// Name and unit.
    pub name: String,
}

impl Axis {
    /// The axis for a budget kind.
    pub fn new(kind: &CostKind) -> Self {
        let name = match kind {
            CostKind::ModelSize => "model size (KB)".to_string(),
            CostKind::Bops => "BOPs (millions)".to_string(),
            CostKind::Latency => "latency (ms)".to_string(),
            k => k.to_string(),
        };
        Axis {
            kind: kind.clone(),
            name,
        }
    }

    /// Position of an evaluated choice.
    pub fn value(&self, e: &Evaluated) -> f64 {
        match self.kind {
            CostKind::ModelSize => e.size_bytes / 1e3,
            CostKind::Bops => cost_of(e, &CostKind::Bops).unwrap_or(f64::NAN) / 1e6,
            _ => cost_of(e, &self.kind).unwrap_or(f64::NAN),
        }
    }

    /// A plot point.
    pub fn point(&self, e: &Evaluated, label: &str) -> Point {
        Point {
            cost: self.value(e),
            accuracy: e.accuracy,
            label: label.to_string(),
            avg_weight_bits: Some(e.avg_bits),
        }
    }
}

fn layer_rows(s: &Session, p: &AllocationProblem, chosen: &Evaluated) -> Vec<LayerRow> {
    let g = s.exec.graph();
    p.layers
        .iter()
        .zip(&s.layers)
        .enumerate()
        .map(|(i, (info, l))| {
            let bits = chosen.weight_bits[i];
            let option = p.options.iter().position(|o| o.weight_bits == bits);
            LayerRow {
                name: info.name.clone(),
                op: g.nodes[l.node].op.onnx_name().to_string(),
                params: info.params,
                macs: info.macs,
                weight_bits: (bits < 32).then_some(bits),
                activation_bits: (s.activation.bits < 32).then_some(s.activation.bits as u32),
                option,
                sensitivity: option.map(|o| p.sensitivity.get(i, o)),
            }
        })
        .collect()
}

fn title(s: &Session) -> String {
    let model = std::path::Path::new(&s.model)
        .file_name()
        .map_or(s.model.clone(), |f| f.to_string_lossy().into_owned());
    format!("{model} on {}", s.data)
}

/// The report of one `quantize --budget` run.
pub fn single_run(
    s: &Session,
    p: &AllocationProblem,
    budgets: &[crate::pipeline::BudgetSpec],
    o: &Outcome,
) -> Report {
    let axis = Axis::new(&budgets[0].cost);
    let mut summary = vec![
        (
            "float top-1".to_string(),
            format!("{:.2} %", o.float_accuracy),
        ),
        (
            format!("{} top-1 (fake-quant)", o.allocator),
            format!("{:.2} %", o.chosen.accuracy),
        ),
        (
            "model size".to_string(),
            format!(
                "{} ({:.1} % of float {})",
                crate::pipeline::human_bytes(o.chosen.size_bytes),
                100.0 * o.chosen.size_bytes / o.float_bytes,
                crate::pipeline::human_bytes(o.float_bytes)
            ),
        ),
        (
            "average weight bits".to_string(),
            format!("{:.3}", o.chosen.avg_bits),
        ),
    ];
    if let Some(b) = cost_of(&o.chosen, &CostKind::Bops) {
        summary.push(("BOPs".into(), crate::cmd::si(b as u64)));
    }
    if let Some(l) = cost_of(&o.chosen, &CostKind::Latency) {
        summary.push(("latency (LUT)".into(), format!("{l:.3} ms")));
    }
    summary.extend(o.extra_summary.iter().cloned());
    summary.push(("test images".into(), format!("{} of {}", o.images, o.data)));
    summary.push((
        "sensitivity".into(),
        format!(
            "{}{}",
            o.metric,
            if o.sensitivity_cached {
                " (cached)".to_string()
            } else {
                format!(" ({:.1} s)", o.seconds.sensitivity)
            }
        ),
    ));
    summary.push((
        "allocator search".into(),
        format!("{} ({:.1} ms)", o.allocator, 1e3 * o.search_seconds),
    ));
    summary.push((
        "stage times".into(),
        format!(
            "calibrate {:.1} s, sensitivity {:.1} s, evaluate {:.1} s",
            o.seconds.load_calibrate, o.seconds.sensitivity, o.seconds.evaluate
        ),
    ));
    Report {
        version: REPORT_VERSION,
        title: title(s),
        model: o.model.clone(),
        data: o.data.clone(),
        metric: o.metric.clone(),
        allocator: o.allocator.clone(),
        budgets: budgets.iter().map(|b| b.describe.clone()).collect(),
        cost_axis: axis.name.clone(),
        layers: layer_rows(s, p, &o.chosen),
        options: p.options.iter().map(|o| o.label()).collect(),
        sensitivity: (0..p.layers.len())
            .map(|l| p.sensitivity.row(l).to_vec())
            .collect(),
        frontier: o
            .frontier
            .iter()
            .map(|e| axis.point(e, &format!("{:.2} bits", e.avg_bits)))
            .collect(),
        uniform: o
            .uniform
            .iter()
            .map(|e| axis.point(e, e.label.trim_start_matches("uniform ")))
            .collect(),
        chosen: axis.point(&o.chosen, &format!("{} (chosen)", o.allocator)),
        float_accuracy: Some(o.float_accuracy),
        summary,
        comparison: Vec::new(),
    }
}

/// The report of a `compare` run: the comparison table and chart, the uniform baselines,
/// and the best allocator's policy as the chosen point.
pub fn comparison(s: &Session, p: &AllocationProblem, c: &Comparison) -> Option<Report> {
    let axis = Axis::new(&c.budgets.first()?.cost);
    let best = c
        .rows
        .iter()
        .filter_map(|r| r.result.as_ref().map(|e| (r, e)))
        .max_by(|a, b| a.1.accuracy.total_cmp(&b.1.accuracy))?;
    let rows = c
        .rows
        .iter()
        .filter_map(|r| {
            let e = r.result.as_ref()?;
            Some(CompareRow {
                allocator: r.allocator.clone(),
                metric: r.metric.clone(),
                accuracy: e.accuracy,
                size: e.size_bytes.round() as u64,
                bops: cost_of(e, &CostKind::Bops).unwrap_or(0.0) as u64,
                latency_ms: cost_of(e, &CostKind::Latency),
                search_ms: 1e3 * r.search_seconds,
                cost: axis.value(e),
            })
        })
        .collect();
    let mut summary = vec![(
        "float top-1".to_string(),
        format!("{:.2} %", c.float_accuracy),
    )];
    for r in &c.rows {
        let v = match (&r.result, &r.error) {
            (Some(e), _) => format!(
                "{:.2} %, {}, {:.2} bits",
                e.accuracy,
                crate::pipeline::human_bytes(e.size_bytes),
                e.avg_bits
            ),
            (None, Some(err)) => format!("n/a: {err}"),
            (None, None) => "n/a".into(),
        };
        summary.push((format!("{} / {}", r.allocator, r.metric), v));
    }
    Some(Report {
        version: REPORT_VERSION,
        title: format!("{} — allocators compared", title(s)),
        model: c.model.clone(),
        data: c.data.clone(),
        metric: best.0.metric.clone(),
        allocator: best.0.allocator.clone(),
        budgets: c.budgets.iter().map(|b| b.describe.clone()).collect(),
        cost_axis: axis.name.clone(),
        layers: layer_rows(s, p, best.1),
        options: p.options.iter().map(|o| o.label()).collect(),
        sensitivity: (0..p.layers.len())
            .map(|l| p.sensitivity.row(l).to_vec())
            .collect(),
        frontier: Vec::new(),
        uniform: c
            .uniform
            .iter()
            .map(|e| axis.point(e, e.label.trim_start_matches("uniform ")))
            .collect(),
        chosen: axis.point(best.1, &format!("{} (best)", best.0.allocator)),
        float_accuracy: Some(c.float_accuracy),
        summary,
        comparison: rows,
    })
}
