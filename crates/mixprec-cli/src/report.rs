//! The report of a mixed-precision run: the data model [`Report`] (written as `report.json`)
//! and one self-contained HTML page (`report.html`) with inline SVG plots drawn by `plotters`.
//!
//! What it shows follows the survey: the accuracy–cost Pareto front that HAWQ-V2 and ZeroQ
//! select a bit allocation from (§3.2.3, the total perturbation Γ = Σᵢ Γᵢ of eq. (23); §3.2.5),
//! the per-layer weight / activation bit-widths of the chosen policy (§2.3), the layer × option
//! sensitivity table the allocators consume, and the side-by-side comparison of allocators on
//! accuracy, size, BOPs, latency and search time that §4.1 asks for.
//!
//! Non-finite numbers (a disallowed option has sensitivity `inf`) are written to JSON as the
//! strings `"NaN"`, `"inf"` and `"-inf"`, so every report round-trips exactly.
//! Rendering is O(layers × options) elements; a 60-layer report renders in milliseconds.

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Version of the `report.json` format this build writes and reads.
pub const REPORT_VERSION: u32 = 1;

/// Everything a report page shows; serialised as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Format version, [`REPORT_VERSION`].
    pub version: u32,
    /// Page title, e.g. "mnist-8.onnx on MNIST".
    pub title: String,
    /// Model file or built-in name.
    pub model: String,
    /// Data set the accuracies were measured on.
    pub data: String,
    /// Sensitivity metric, e.g. "hessian-trace".
    pub metric: String,
    /// Allocator that chose the policy, e.g. "ilp".
    pub allocator: String,
    /// Human-readable budgets, e.g. "size <= 25% of fp32 (12.3 KB)".
    pub budgets: Vec<String>,
    /// Name and unit of the cost axis, e.g. "model size (KB)".
    pub cost_axis: String,
    /// One row per quantizable layer, in model order.
    pub layers: Vec<LayerRow>,
    /// Option labels, e.g. ["w2a8", "w4a8", "w8a8"]; the columns of `sensitivity`.
    pub options: Vec<String>,
    /// Sensitivity table, layers × options (empty when not computed); NaN / inf mark
    /// options that are disallowed or were not measured.
    #[serde(with = "num_table")]
    pub sensitivity: Vec<Vec<f64>>,
    /// The allocator's Pareto front (one point per budget it was solved for).
    pub frontier: Vec<Point>,
    /// Uniform baselines (w2a8 … w8a8, fp32).
    pub uniform: Vec<Point>,
    /// The chosen policy.
    pub chosen: Point,
    /// Accuracy (%) of the float model, when measured.
    #[serde(default, with = "opt_num")]
    pub float_accuracy: Option<f64>,
    /// Key / value rows of the summary table (accuracies, size, BOPs, latency, stage times).
    pub summary: Vec<(String, String)>,
    /// Allocators compared on the same problem (`mixprec compare`); empty for a single run.
    #[serde(default)]
    pub comparison: Vec<CompareRow>,
}

/// One layer of the chosen policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRow {
    /// Layer (node) name.
    pub name: String,
    /// Operator, e.g. "Conv", "Gemm".
    pub op: String,
    /// Number of weight parameters.
    pub params: u64,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Weight bit-width; `None` = left in float.
    pub weight_bits: Option<u32>,
    /// Activation bit-width; `None` = left in float.
    pub activation_bits: Option<u32>,
    /// Index into [`Report::options`] of the chosen option, when the layer was allocated one.
    #[serde(default)]
    pub option: Option<usize>,
    /// Sensitivity of the chosen option.
    #[serde(default, with = "opt_num")]
    pub sensitivity: Option<f64>,
}

/// One point in the accuracy–cost plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Cost in the unit of [`Report::cost_axis`].
    #[serde(with = "num")]
    pub cost: f64,
    /// Top-1 accuracy in percent.
    #[serde(with = "num")]
    pub accuracy: f64,
    /// Short label, e.g. "w4a8" or "size <= 25%".
    pub label: String,
    /// Parameter-weighted average weight bit-width.
    #[serde(default, with = "opt_num")]
    pub avg_weight_bits: Option<f64>,
}

/// One allocator's result in a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareRow {
    /// Allocator name.
    pub allocator: String,
    /// Sensitivity metric it used.
    pub metric: String,
    /// Top-1 accuracy in percent.
    #[serde(with = "num")]
    pub accuracy: f64,
    /// Model size in bytes.
    pub size: u64,
    /// Bit operations per sample (Σ MACs × weight bits × activation bits).
    pub bops: u64,
    /// Measured latency per batch, when measured.
    #[serde(default, with = "opt_num")]
    pub latency_ms: Option<f64>,
    /// Time the allocator took to search.
    #[serde(with = "num")]
    pub search_ms: f64,
    /// Cost in the unit of [`Report::cost_axis`] (its position on the Pareto plot).
    #[serde(with = "num")]
    pub cost: f64,
}

impl Report {
    /// Checks the shape of the data: version, table sizes, option indices.
    pub fn validate(&self) -> Result<()> {
        if self.version != REPORT_VERSION {
            bail!(
                "report version {} is not supported (this mixprec reads version {REPORT_VERSION}); \
                 re-create the report with this mixprec",
                self.version
            );
        }
        if !self.sensitivity.is_empty() && self.sensitivity.len() != self.layers.len() {
            bail!(
                "the sensitivity table has {} rows but the report has {} layers; \
                 it must have one row per layer (or be empty)",
                self.sensitivity.len(),
                self.layers.len()
            );
        }
        for (l, row) in self.layers.iter().zip(&self.sensitivity) {
            if row.len() != self.options.len() {
                bail!(
                    "the sensitivity row of layer '{}' has {} values but there are {} options ({})",
                    l.name,
                    row.len(),
                    self.options.len(),
                    self.options.join(", ")
                );
            }
        }
        for l in &self.layers {
            if let Some(o) = l.option {
                if o >= self.options.len() {
                    bail!(
                        "layer '{}' chose option {o}, but there are only {} options",
                        l.name,
                        self.options.len()
                    );
                }
            }
        }
        Ok(())
    }

    /// Parses and validates `report.json` text.
    pub fn from_json(text: &str) -> Result<Report> {
        let r: Report = serde_json::from_str(text).context("report.json is not a valid report")?;
        r.validate()?;
        Ok(r)
    }

    /// Pretty JSON of the report.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

/// Reads and validates a `report.json` file.
pub fn read_json(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read report file {}", path.display()))?;
    Report::from_json(&text).with_context(|| format!("in report file {}", path.display()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.flush())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Temporary files are private (0600); a report is an ordinary readable file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    tmp.persist(path)
        .map_err(|e| anyhow!(e.error))
        .with_context(|| format!("cannot move the new file into place at {}", path.display()))?;
    Ok(())
}

/// Writes `report.json` and `report.html` into `dir` (created if missing), each atomically.
/// Returns the two paths.
pub fn write_report(dir: &Path, r: &Report) -> Result<(PathBuf, PathBuf)> {
    let json = r.to_json()?;
    let html = render_html(r)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    let (jp, hp) = (dir.join("report.json"), dir.join("report.html"));
    write_atomic(&jp, json.as_bytes())?;
    write_atomic(&hp, html.as_bytes())?;
    Ok((jp, hp))
}

// ---------------------------------------------------------------------------------------------
// JSON numbers that may be NaN / ±inf.

/// An f64 that serialises non-finite values as strings.
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Num, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or one of \"NaN\", \"inf\", \"-inf\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Num, E> {
                match v {
                    "NaN" | "nan" => Ok(Num(f64::NAN)),
                    "inf" | "+inf" | "Infinity" => Ok(Num(f64::INFINITY)),
                    "-inf" | "-Infinity" => Ok(Num(f64::NEG_INFINITY)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

mod num {
    use super::Num;
    use serde::{Deserialize, Serialize};
    pub fn serialize<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        Num(*v).serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Num::deserialize(d)?.0)
    }
}

mod opt_num {
    use super::Num;
    use serde::{Deserialize, Serialize};
    pub fn serialize<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Num).serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<Num>::deserialize(d)?.map(|n| n.0))
    }
}

mod num_table {
    use super::Num;
    use serde::{Deserialize, Serialize};
    pub fn serialize<S: serde::Serializer>(v: &[Vec<f64>], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|r| r.iter().map(|&x| Num(x)).collect::<Vec<_>>())
            .collect::<Vec<_>>()
            .serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
        let t = Vec::<Vec<Num>>::deserialize(d)?;
        Ok(t.into_iter()
            .map(|r| r.into_iter().map(|n| n.0).collect())
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// HTML.

/// The font family of all plot text; registered with plotters from the embedded TTF.
const FONT: &str = "DejaVu Sans";
/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`).
static FONT_TTF: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font with plotters once (text measurement needs it; there are no
/// system fonts to fall back on).
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        [FONT, "sans-serif"].iter().all(|name| {
            plotters::style::register_font(name, FontStyle::Normal, FONT_TTF).is_ok()
                && plotters::style::register_font(name, FontStyle::Bold, FONT_TTF).is_ok()
        })
    });
    if !ok {
        bail!("the embedded plot font could not be loaded");
    }
    Ok(())
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
body { font-family: "DejaVu Sans", "Bitstream Vera Sans", Verdana, sans-serif; color: #222;
       margin: 24px auto; max-width: 1080px; padding: 0 16px; line-height: 1.4; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; margin: 2px 0; }
.meta b { color: #222; }
svg { max-width: 100%; height: auto; display: block; }
svg text { font-family: "DejaVu Sans", "Bitstream Vera Sans", Verdana, sans-serif; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #d0d0d0; padding: 3px 9px; }
th { background: #f2f2f2; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eef6ee; }
.note { color: #666; font-size: 13px; }
footer { margin-top: 40px; color: #888; font-size: 12px; }
"#;

/// Renders the report as one self-contained HTML page (inline CSS and SVG, no scripts, no
/// external resources).
pub fn render_html(r: &Report) -> Result<String> {
    r.validate()?;
    register_font()?;
    let e = escape_html;
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(h, "<title>{}</title>", e(&r.title));
    let _ = writeln!(h, "<style>{CSS}</style>\n</head>\n<body>");
    let _ = writeln!(h, "<h1>{}</h1>", e(&r.title));
    let _ = writeln!(
        h,
        "<p class=\"meta\">model <b>{}</b> · data <b>{}</b> · sensitivity <b>{}</b> · \
         allocator <b>{}</b></p>",
        e(&r.model),
        e(&r.data),
        e(&r.metric),
        e(&r.allocator)
    );
    if !r.budgets.is_empty() {
        let b: Vec<String> = r.budgets.iter().map(|b| e(b)).collect();
        let _ = writeln!(
            h,
            "<p class=\"meta\">budgets: <b>{}</b></p>",
            b.join("</b>, <b>")
        );
    }
    let mut chosen = format!(
        "chosen policy <b>{}</b>: accuracy <b>{}</b>, {} <b>{}</b>",
        e(&r.chosen.label),
        fmt_pct(r.chosen.accuracy),
        e(&r.cost_axis),
        fmt_num(r.chosen.cost)
    );
    if let Some(b) = r.chosen.avg_weight_bits {
        let _ = write!(chosen, ", average weight bits <b>{}</b>", fmt_num(b));
    }
    if let Some(f) = r.float_accuracy {
        let _ = write!(chosen, " (float model <b>{}</b>)", fmt_pct(f));
    }
    let _ = writeln!(h, "<p class=\"meta\">{chosen}</p>");

    if !r.summary.is_empty() {
        h.push_str("<h2>Summary</h2>\n<table>\n");
        for (k, v) in &r.summary {
            let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", e(k), e(v));
        }
        h.push_str("</table>\n");
    }

    let (main, zoom, compare) = pareto_views(r);
    let _ = writeln!(h, "<h2>Accuracy vs {}</h2>", e(&r.cost_axis));
    h.push_str(&pareto_svg(r, main, false, 560)?);
    h.push_str(
        "<p class=\"note\">Line: the allocator's Pareto front (one point per budget). \
         Triangles: every layer at the same precision. Red: the chosen policy. \
         Dashed: the float model.</p>\n",
    );
    if let Some(z) = zoom {
        let _ = writeln!(
            h,
            "<h2>Accuracy vs {}, accuracy {} to {}</h2>",
            e(&r.cost_axis),
            fmt_pct(z.y0.max(0.0)),
            fmt_pct(z.y1.min(100.0))
        );
        h.push_str(&pareto_svg(r, z, false, 460)?);
    }

    if !r.comparison.is_empty() {
        h.push_str("<h2>Allocator comparison</h2>\n");
        if let Some(c) = compare {
            h.push_str(&pareto_svg(r, c, true, 460)?);
        }
        h.push_str(&comparison_table(r));
    }

    h.push_str("<h2>Bit-widths per layer</h2>\n");
    if let (_, Some((pre, suf))) = axis_names(r) {
        let mut parts = Vec::new();
        if !pre.is_empty() {
            parts.push(format!("the prefix “{}”", e(&pre)));
        }
        if !suf.is_empty() {
            parts.push(format!("the suffix “{}”", e(&suf)));
        }
        let _ = writeln!(
            h,
            "<p class=\"note\">Plots show layer names without {} that all layers share; \
             the table at the end has the full names.</p>",
            parts.join(" and ")
        );
    }
    if r.layers.is_empty() {
        h.push_str("<p class=\"note\">The report has no layers.</p>\n");
    } else {
        h.push_str(&bits_svg(r)?);
    }

    let _ = writeln!(
        h,
        "<h2>Sensitivity per layer and option ({})</h2>",
        e(&r.metric)
    );
    if r.sensitivity.is_empty() || r.options.is_empty() {
        h.push_str("<p class=\"note\">No sensitivity table in this report.</p>\n");
    } else {
        h.push_str(&heatmap_svg(r)?);
        h.push_str(
            "<p class=\"note\">Colour: log<sub>10</sub> of the sensitivity (yellow = most \
             sensitive). Framed cells: the option chosen for the layer. ∞ / NaN: the option is \
             disallowed or was not measured.</p>\n",
        );
    }

    if !r.layers.is_empty() {
        h.push_str(&layer_table(r));
    }
    let _ = writeln!(
        h,
        "<footer>mixprec {} · report format version {}</footer>\n</body>\n</html>",
        env!("CARGO_PKG_VERSION"),
        r.version
    );
    Ok(h)
}

fn layer_table(r: &Report) -> String {
    let e = escape_html;
    let mut h = String::from(
        "<h2>Layers</h2>\n<table>\n<tr><th>#</th><th>layer</th><th>op</th><th>params</th>\
         <th>MACs</th><th>option</th><th>weight bits</th><th>activation bits</th>\
         <th>sensitivity</th></tr>\n",
    );
    for (i, l) in r.layers.iter().enumerate() {
        let opt = l
            .option
            .and_then(|o| r.options.get(o))
            .map(|s| e(s))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            h,
            "<tr><td class=\"n\">{i}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{opt}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            e(&l.name),
            e(&l.op),
            l.params,
            l.macs,
            bits_text(l.weight_bits),
            bits_text(l.activation_bits),
            l.sensitivity.map(fmt_sci).unwrap_or_else(|| "–".into())
        );
    }
    h.push_str("</table>\n");
    h
}

fn comparison_table(r: &Report) -> String {
    let e = escape_html;
    let best = r
        .comparison
        .iter()
        .map(|c| c.accuracy)
        .filter(|a| a.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let mut h = format!(
        "<table>\n<tr><th>allocator</th><th>metric</th><th>accuracy</th><th>size</th>\
         <th>BOPs</th><th>latency (ms)</th><th>search (ms)</th><th>{}</th></tr>\n",
        e(&r.cost_axis)
    );
    for c in &r.comparison {
        let class = if c.accuracy == best {
            " class=\"best\""
        } else {
            ""
        };
        let _ = writeln!(
            h,
            "<tr{class}><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            e(&c.allocator),
            e(&c.metric),
            fmt_pct(c.accuracy),
            fmt_bytes(c.size),
            fmt_si(c.bops as f64),
            c.latency_ms.map(fmt_num).unwrap_or_else(|| "–".into()),
            fmt_num(c.search_ms),
            fmt_num(c.cost)
        );
    }
    h.push_str("</table>\n");
    h
}

fn bits_text(b: Option<u32>) -> String {
    b.map(|b| b.to_string()).unwrap_or_else(|| "float".into())
}

fn fmt_pct(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}%")
    } else {
        "–".into()
    }
}

/// Up to 4 significant digits without exponent for ordinary magnitudes.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "∞".into()
        } else {
            "-∞".into()
        };
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        let s = if a >= 100.0 {
            format!("{v:.1}")
        } else if a >= 1.0 {
            format!("{v:.3}")
        } else {
            format!("{v:.4}")
        };
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn fmt_sci(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "∞".into()
        } else {
            "-∞".into()
        }
    } else if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.2e}")
    }
}

fn fmt_si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e12 {
        format!("{:.2}T", v / 1e12)
    } else if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", f / (1024.0 * 1024.0))
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}

// ---------------------------------------------------------------------------------------------
// Plots.

fn perr<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw a report plot: {e}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const INK: RGBColor = RGBColor(34, 34, 34);
const GRID: RGBColor = RGBColor(232, 232, 232);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(230, 120, 20);
const RED: RGBColor = RGBColor(214, 39, 40);
const FLOAT_GREY: RGBColor = RGBColor(110, 110, 110);
/// Categorical colours for the compared allocators (Okabe–Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(120, 80, 40),
    RGBColor(0, 0, 0),
];

fn font(size: f64) -> FontDesc<'static> {
    (FONT, size).into_font()
}

fn text_style(size: f64, color: &RGBColor) -> TextStyle<'static> {
    font(size).color(color)
}

/// Shortens long layer names in the middle, keeping both ends readable.
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let keep_end = (max - 1) * 2 / 3;
    let keep_start = max - 1 - keep_end;
    let start: String = s.chars().take(keep_start).collect();
    let end: String = s.chars().skip(n - keep_end).collect();
    format!("{start}…{end}")
}

/// A point label: marker position (pixels), text, colour, font size, marker radius.
type PointLabel = ((i32, i32), String, RGBColor, f64, i32);

/// Greedy placement of point labels so they overlap neither each other nor the markers.
struct Placer {
    taken: Vec<(i32, i32, i32, i32)>,
    bounds: (i32, i32, i32, i32),
}

impl Placer {
    fn overlap(a: (i32, i32, i32, i32), b: (i32, i32, i32, i32)) -> i64 {
        let w = (a.2.min(b.2) - a.0.max(b.0)).max(0) as i64;
        let h = (a.3.min(b.3) - a.1.max(b.1)).max(0) as i64;
        w * h
    }

    /// Reserves a marker box around `p`.
    fn mark(&mut self, p: (i32, i32), r: i32) {
        self.taken.push((p.0 - r, p.1 - r, p.0 + r, p.1 + r));
    }

    /// Top-left corner for a `w`×`h` label near point `p`.
    fn place(&mut self, p: (i32, i32), w: i32, h: i32, radius: i32) -> (i32, i32) {
        let g = radius + 3;
        let mut cands = vec![
            (p.0 + g, p.1 - h - 2),
            (p.0 + g, p.1 + 2),
            (p.0 - w - g, p.1 - h - 2),
            (p.0 - w - g, p.1 + 2),
            (p.0 + g, p.1 - h / 2),
            (p.0 - w - g, p.1 - h / 2),
            (p.0 - w / 2, p.1 - h - g),
            (p.0 - w / 2, p.1 + g),
        ];
        for k in 1..6 {
            let d = k * (h + 2);
            cands.push((p.0 + g, p.1 - h - 2 - d));
            cands.push((p.0 + g, p.1 + 2 + d));
            cands.push((p.0 - w - g, p.1 - h - 2 - d));
            cands.push((p.0 - w - g, p.1 + 2 + d));
        }
        let (bx0, by0, bx1, by1) = self.bounds;
        let mut best = (i64::MAX, cands[0]);
        for (i, &(x, y)) in cands.iter().enumerate() {
            let x = x.clamp(bx0, (bx1 - w).max(bx0));
            let y = y.clamp(by0, (by1 - h).max(by0));
            let b = (x, y, x + w, y + h);
            let cost: i64 =
                self.taken.iter().map(|&t| Self::overlap(b, t)).sum::<i64>() * 1000 + i as i64;
            if cost < best.0 {
                best = (cost, (x, y));
            }
        }
        let (x, y) = best.1;
        self.taken.push((x, y, x + w, y + h));
        (x, y)
    }
}

fn finite_range(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut r: Option<(f64, f64)> = None;
    for v in vals.filter(|v| v.is_finite()) {
        r = Some(match r {
            None => (v, v),
            Some((a, b)) => (a.min(v), b.max(v)),
        });
    }
    r
}

fn padded(r: Option<(f64, f64)>, default: (f64, f64), frac: f64) -> (f64, f64) {
    let (a, b) = r.unwrap_or(default);
    let span = if b > a { b - a } else { a.abs().max(1.0) * 0.1 };
    (a - span * frac, b + span * frac)
}

/// The window of the accuracy–cost plane a plot shows. `x0..x1` is in axis space
/// (log10 of the cost when `logx`).
#[derive(Debug, Clone, Copy)]
struct View {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    logx: bool,
}

impl View {
    /// Cost → axis space.
    fn tx(&self, x: f64) -> f64 {
        if self.logx {
            x.log10()
        } else {
            x
        }
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        let t = self.tx(x);
        t.is_finite() && (self.x0..=self.x1).contains(&t) && (self.y0..=self.y1).contains(&y)
    }

    /// A window around `pts` (cost, accuracy) and the extra accuracies `ys`; the cost axis is
    /// logarithmic when all costs are positive and span more than a factor 8.
    fn around(pts: &[(f64, f64)], ys: &[f64]) -> View {
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let xr = finite_range(pts.iter().map(|p| p.0));
        let logx = matches!(xr, Some((a, b)) if a > 0.0 && b / a > 8.0);
        let tx = |x: f64| if logx { x.log10() } else { x };
        let (x0, x1) = padded(finite_range(pts.iter().map(|p| tx(p.0))), (0.0, 1.0), 0.06);
        let yr = finite_range(pts.iter().map(|p| p.1).chain(ys.iter().copied()));
        let (y0, y1) = padded(yr, (0.0, 100.0), 0.08);
        let data_max = yr.map(|r| r.1).unwrap_or(0.0);
        let y1 = if data_max <= 100.0 && y1 > 100.0 {
            y1.min(100.5)
        } else {
            y1
        };
        let x0 = if !logx && xr.is_some_and(|r| r.0 >= 0.0) {
            x0.max(0.0)
        } else {
            x0
        };
        View {
            x0,
            x1,
            y0,
            y1,
            logx,
        }
    }

    /// Clips the segment a–b (axis space) to the window (Liang–Barsky).
    fn clip(&self, a: (f64, f64), b: (f64, f64)) -> Option<((f64, f64), (f64, f64))> {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (p, q) in [
            (-dx, a.0 - self.x0),
            (dx, self.x1 - a.0),
            (-dy, a.1 - self.y0),
            (dy, self.y1 - a.1),
        ] {
            if p == 0.0 {
                if q < 0.0 {
                    return None;
                }
            } else {
                let t = q / p;
                if p < 0.0 {
                    t0 = t0.max(t);
                } else {
                    t1 = t1.min(t);
                }
            }
        }
        (t0 <= t1).then_some((
            (a.0 + t0 * dx, a.1 + t0 * dy),
            (a.0 + t1 * dx, a.1 + t1 * dy),
        ))
    }
}

/// Finite points of a list.
fn finite_points(ps: &[Point]) -> Vec<&Point> {
    ps.iter()
        .filter(|p| p.cost.is_finite() && p.accuracy.is_finite())
        .collect()
}

/// The three windows of the report's Pareto plots: everything; a zoom on the top of the
/// accuracy range when the full range squeezes it (a 2-bit model at 10 % makes the
/// interesting region a thin band); and the compared allocators.
fn pareto_views(r: &Report) -> (View, Option<View>, Option<View>) {
    let front = finite_points(&r.frontier);
    let uniform = finite_points(&r.uniform);
    let chosen = finite_points(std::slice::from_ref(&r.chosen));
    let all: Vec<(f64, f64)> = front
        .iter()
        .chain(&uniform)
        .chain(&chosen)
        .map(|p| (p.cost, p.accuracy))
        .collect();
    let float: Vec<f64> = r
        .float_accuracy
        .filter(|f| f.is_finite())
        .into_iter()
        .collect();
    let main = View::around(&all, &float);

    let zoom =
        finite_range(all.iter().map(|p| p.1).chain(float.iter().copied())).and_then(|(_, top)| {
            let lo = match chosen.first() {
                Some(c) => (c.accuracy - 3.0).min(top - 5.0),
                None => top - 5.0,
            };
            let inside: Vec<(f64, f64)> = all.iter().copied().filter(|p| p.1 >= lo).collect();
            let full = main.y1 - main.y0;
            (inside.len() >= 2 && full > 3.0 * (top - lo)).then(|| View::around(&inside, &float))
        });

    let cmp: Vec<(f64, f64)> = r
        .comparison
        .iter()
        .filter(|c| c.cost.is_finite() && c.accuracy.is_finite())
        .map(|c| (c.cost, c.accuracy))
        .collect();
    let compare = (!cmp.is_empty()).then(|| {
        let (lo, hi) = finite_range(cmp.iter().map(|p| p.1)).unwrap_or((0.0, 100.0));
        let hi = float.iter().copied().fold(hi, f64::max);
        let (lo, hi) = if hi - lo < 2.0 {
            ((lo + hi) / 2.0 - 1.0, (lo + hi) / 2.0 + 1.0)
        } else {
            (lo, hi)
        };
        let mut pts = cmp.clone();
        pts.extend(
            all.iter()
                .copied()
                .filter(|p| p.1 >= lo - 0.5 && p.1 <= hi + 0.5),
        );
        View::around(&pts, &[lo, hi])
    });
    (main, zoom, compare)
}

/// 1-2-5 ticks of a log axis between 10^a and 10^b (a, b in axis space).
fn log_ticks(a: f64, b: f64) -> Vec<f64> {
    let mut mants: &[f64] = &[1.0, 2.0, 5.0];
    loop {
        let mut out = Vec::new();
        for k in (a.floor() as i32 - 1)..=(b.ceil() as i32) {
            for m in mants {
                let v = m * 10f64.powi(k);
                let t = v.log10();
                if t >= a && t <= b {
                    out.push(v);
                }
            }
        }
        if out.len() >= 4 || mants.len() == 9 {
            return out;
        }
        mants = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    }
}

/// Ring radius of the i-th compared allocator: rings of different sizes stay visible when
/// two allocators find the same policy.
fn ring_radius(i: usize) -> i32 {
    6 + 3 * (i % 4) as i32
}

/// Label of a compared allocator: its name, with the metric when the name repeats.
fn compare_label(r: &Report, c: &CompareRow) -> String {
    if r.comparison
        .iter()
        .filter(|d| d.allocator == c.allocator)
        .count()
        > 1
    {
        format!("{} · {}", c.allocator, c.metric)
    } else {
        c.allocator.clone()
    }
}

/// Accuracy vs cost in window `v`: the allocator's front, uniform baselines, the chosen
/// point, the float line; with `compare`, the compared allocators instead of the chosen point.
fn pareto_svg(r: &Report, v: View, compare: bool, height: u32) -> Result<String> {
    let mut front = finite_points(&r.frontier);
    front.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    let inside = |p: &&Point| v.contains(p.cost, p.accuracy);
    let uniform: Vec<&Point> = finite_points(&r.uniform)
        .into_iter()
        .filter(inside)
        .collect();
    let chosen = finite_points(std::slice::from_ref(&r.chosen))
        .into_iter()
        .find(inside);
    let cmp: Vec<&CompareRow> = if compare {
        r.comparison
            .iter()
            .filter(|c| v.contains(c.cost, c.accuracy))
            .collect()
    } else {
        Vec::new()
    };
    let at = |x: f64, y: f64| (v.tx(x), y);

    let w = 1000u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, height)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(14)
            .margin_right(24)
            .x_label_area_size(52)
            .y_label_area_size(70)
            .build_cartesian_2d(v.x0..v.x1, v.y0..v.y1)
            .map_err(perr)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(if v.logx {
            format!("{} (log scale)", r.cost_axis)
        } else {
            r.cost_axis.clone()
        })
        .y_desc("accuracy (%)")
        .label_style(text_style(15.0, &INK))
        .axis_desc_style(text_style(16.0, &INK))
        .max_light_lines(1)
        .light_line_style(GRID.mix(0.5))
        .bold_line_style(GRID)
        .y_labels(10)
        .y_label_formatter(&|y| fmt_tick(*y));
        if v.logx {
            mesh.disable_x_mesh().x_labels(0);
        } else {
            mesh.x_labels(10).x_label_formatter(&|x| fmt_tick(*x));
        }
        mesh.draw().map_err(perr)?;
        if v.logx {
            // Grid lines and labels of the log cost axis.
            let tick_style = text_style(15.0, &INK).pos(Pos::new(HPos::Center, VPos::Top));
            for t in log_ticks(v.x0, v.x1) {
                let x = t.log10();
                chart
                    .draw_series([PathElement::new(vec![(x, v.y0), (x, v.y1)], GRID)])
                    .map_err(perr)?;
                let (px, py) = chart.backend_coord(&(x, v.y0));
                root.draw(&PathElement::new(vec![(px, py), (px, py + 5)], INK))
                    .map_err(perr)?;
                root.draw(&Text::new(fmt_tick(t), (px, py + 8), tick_style.clone()))
                    .map_err(perr)?;
            }
        }

        if let Some(f) = r.float_accuracy.filter(|f| (v.y0..=v.y1).contains(f)) {
            let style = FLOAT_GREY.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(v.x0, f), (v.x1, f)],
                    8,
                    6,
                    style,
                ))
                .map_err(perr)?
                .label(format!("float model ({})", fmt_pct(f)))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(-2, 0), (7, 0)], style)
                        + PathElement::new(vec![(12, 0), (21, 0)], style)
                });
        }
        let (front_color, uni_color) = if compare {
            (RGBColor(170, 170, 170), RGBColor(190, 190, 190))
        } else {
            (BLUE, ORANGE)
        };
        let mut front_segments = Vec::new();
        if !front.is_empty() {
            let style = front_color.stroke_width(2);
            for pair in front.windows(2) {
                let (a, b) = (
                    at(pair[0].cost, pair[0].accuracy),
                    at(pair[1].cost, pair[1].accuracy),
                );
                if let Some(seg) = v.clip(a, b) {
                    front_segments.push(seg);
                }
            }
            let segments: Vec<_> = front_segments
                .iter()
                .map(|&(a, b)| PathElement::new(vec![a, b], style))
                .collect();
            let dots: Vec<_> = front
                .iter()
                .filter(|p| inside(p))
                .map(|p| Circle::new(at(p.cost, p.accuracy), 4, front_color.filled()))
                .collect();
            chart.draw_series(segments).map_err(perr)?;
            chart
                .draw_series(dots)
                .map_err(perr)?
                .label(format!("{} front", r.allocator))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(-2, 0), (20, 0)], style)
                        + Circle::new((9, 0), 4, front_color.filled())
                });
        }
        if !uniform.is_empty() {
            chart
                .draw_series(
                    uniform.iter().map(|p| {
                        TriangleMarker::new(at(p.cost, p.accuracy), 8, uni_color.filled())
                    }),
                )
                .map_err(perr)?
                .label("uniform precision")
                .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 7, uni_color.filled()));
        }
        if !compare {
            if let Some(c) = chosen {
                chart
                    .draw_series([
                        Circle::new(at(c.cost, c.accuracy), 9, RED.filled()),
                        Circle::new(at(c.cost, c.accuracy), 9, INK.stroke_width(2)),
                    ])
                    .map_err(perr)?
                    .label("chosen policy")
                    .legend(|(x, y)| Circle::new((x + 9, y), 6, RED.filled()));
            }
        }
        for (i, c) in cmp.iter().enumerate() {
            let col = PALETTE[i % PALETTE.len()];
            // Rings of different sizes stay visible when results coincide.
            chart
                .draw_series([Circle::new(
                    at(c.cost, c.accuracy),
                    ring_radius(i),
                    col.stroke_width(3),
                )])
                .map_err(perr)?;
        }

        // Labels, placed around the markers without overlaps.
        let area = chart.plotting_area().get_pixel_range();
        let mut placer = Placer {
            taken: Vec::new(),
            bounds: (
                area.0.start + 4,
                area.1.start + 2,
                area.0.end - 2,
                area.1.end - 2,
            ),
        };
        for p in front.iter().filter(|p| inside(p)) {
            placer.mark(chart.backend_coord(&at(p.cost, p.accuracy)), 5);
        }
        // Keep labels off the lines too.
        for &(a, b) in &front_segments {
            let (pa, pb) = (chart.backend_coord(&a), chart.backend_coord(&b));
            let len = ((pb.0 - pa.0) as f64).hypot((pb.1 - pa.1) as f64);
            let steps = (len / 5.0).ceil().max(1.0) as i32;
            for k in 0..=steps {
                let t = k as f64 / steps as f64;
                let x = pa.0 as f64 + t * (pb.0 - pa.0) as f64;
                let y = pa.1 as f64 + t * (pb.1 - pa.1) as f64;
                placer.mark((x.round() as i32, y.round() as i32), 2);
            }
        }
        if let Some(f) = r.float_accuracy.filter(|f| (v.y0..=v.y1).contains(f)) {
            let (_, py) = chart.backend_coord(&(v.x0, f));
            placer
                .taken
                .push((area.0.start, py - 2, area.0.end, py + 2));
        }
        // The legend box in the lower right corner.
        let mut entries = Vec::new();
        if let Some(f) = r.float_accuracy.filter(|f| (v.y0..=v.y1).contains(f)) {
            entries.push(format!("float model ({})", fmt_pct(f)));
        }
        if !front.is_empty() {
            entries.push(format!("{} front", r.allocator));
        }
        if !uniform.is_empty() {
            entries.push("uniform precision".to_string());
        }
        if !compare && chosen.is_some() {
            entries.push("chosen policy".to_string());
        }
        let legend_style = text_style(14.0, &INK);
        let mut legend_w = 0;
        for t in &entries {
            legend_w = legend_w.max(root.estimate_text_size(t, &legend_style).map_err(perr)?.0);
        }
        if !entries.is_empty() {
            let (lw, lh) = (legend_w as i32 + 64, 20 * entries.len() as i32 + 20);
            placer
                .taken
                .push((area.0.end - lw, area.1.end - lh, area.0.end, area.1.end));
        }
        let mut labels: Vec<PointLabel> = Vec::new();
        if !compare {
            if let Some(c) = chosen {
                labels.push((
                    chart.backend_coord(&at(c.cost, c.accuracy)),
                    format!("chosen: {}", fmt_pct(c.accuracy)),
                    RED,
                    15.0,
                    10,
                ));
            }
        }
        for (i, c) in cmp.iter().enumerate() {
            labels.push((
                chart.backend_coord(&at(c.cost, c.accuracy)),
                compare_label(r, c),
                PALETTE[i % PALETTE.len()],
                14.0,
                ring_radius(i) + 2,
            ));
        }
        for p in &uniform {
            labels.push((
                chart.backend_coord(&at(p.cost, p.accuracy)),
                p.label.clone(),
                if compare {
                    RGBColor(140, 140, 140)
                } else {
                    RGBColor(170, 85, 0)
                },
                14.0,
                8,
            ));
        }
        for (p, _, _, _, radius) in &labels {
            placer.mark(*p, *radius);
        }
        for (p, text, col, size, radius) in labels {
            let style = text_style(size, &col);
            let (tw, th) = root.estimate_text_size(&text, &style).map_err(perr)?;
            let (x, y) = placer.place(p, tw as i32, th as i32 + 2, radius);
            root.draw(&Text::new(text, (x, y), style)).map_err(perr)?;
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .margin(12)
            .legend_area_size(30)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(200, 200, 200))
            .label_font(text_style(14.0, &INK))
            .draw()
            .map_err(perr)?;
        root.present().map_err(perr)?;
    }
    Ok(buf)
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.1e}")
    } else {
        // Shortest of a few fixed precisions that still shows the value.
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// Row height in pixels for a per-layer chart of `n` layers.
fn row_height(n: usize) -> i32 {
    if n <= 16 {
        30
    } else if n <= 32 {
        24
    } else {
        20
    }
}

/// Width of the layer-name column for the given (shortened) names.
fn name_column(root: &Area, names: &[String], size: f64) -> Result<i32> {
    let style = text_style(size, &INK);
    let mut w = 40;
    for n in names {
        let (tw, _) = root.estimate_text_size(n, &style).map_err(perr)?;
        w = w.max(tw as i32);
    }
    Ok(w + 16)
}

/// Longest layer name shown on a plot axis (the tables show the full names).
const NAME_MAX: usize = 40;

fn is_sep(c: char) -> bool {
    matches!(c, '.' | '/' | '_' | ':' | '-')
}

/// Layer names for plot axes: without the prefix and suffix all layers share (cut at a
/// separator, e.g. "model.backbone." and ".weight") when some name is too long to show, then
/// shortened in the middle. Returns the names and the removed (prefix, suffix).
fn axis_names(r: &Report) -> (Vec<String>, Option<(String, String)>) {
    let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
    let too_long = names.iter().any(|n| n.chars().count() > NAME_MAX);
    let mut cut = None;
    if too_long && names.len() >= 2 {
        let chars: Vec<Vec<char>> = names.iter().map(|n| n.chars().collect()).collect();
        let min_len = chars.iter().map(|c| c.len()).min().unwrap_or(0);
        let mut pre = (0..min_len)
            .take_while(|&i| chars.iter().all(|c| c[i] == chars[0][i]))
            .count();
        // Keep the prefix only up to (and including) its last separator.
        pre = chars[0][..pre]
            .iter()
            .rposition(|&c| is_sep(c))
            .map_or(0, |i| i + 1);
        let mut suf = (0..min_len - pre)
            .take_while(|&i| {
                let c0 = chars[0][chars[0].len() - 1 - i];
                chars.iter().all(|c| c[c.len() - 1 - i] == c0)
            })
            .count();
        // Start the suffix at its first separator.
        let tail = &chars[0][chars[0].len() - suf..];
        suf = tail.iter().position(|&c| is_sep(c)).map_or(0, |i| suf - i);
        let all_left = chars.iter().all(|c| c.len() > pre + suf);
        if all_left && pre + suf >= 4 {
            cut = Some((
                chars[0][..pre].iter().collect::<String>(),
                chars[0][chars[0].len() - suf..].iter().collect::<String>(),
            ));
            let short = chars
                .iter()
                .map(|c| shorten(&c[pre..c.len() - suf].iter().collect::<String>(), NAME_MAX))
                .collect();
            return (short, cut);
        }
    }
    (names.iter().map(|n| shorten(n, NAME_MAX)).collect(), cut)
}

/// Grouped horizontal bars: weight and activation bit-width of every layer.
fn bits_svg(r: &Report) -> Result<String> {
    let n = r.layers.len();
    let rh = row_height(n);
    let names = axis_names(r).0;
    let name_size = if n > 32 { 13.0 } else { 14.0 };
    let max_bits = r
        .layers
        .iter()
        .flat_map(|l| [l.weight_bits, l.activation_bits])
        .flatten()
        .max()
        .unwrap_or(8)
        .max(8);
    let xmax = max_bits as f64 + 1.0;
    let (top, bottom) = (44, 56);
    let (w, hgt) = (1000u32, (top + bottom + rh * n as i32 + 10) as u32);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, hgt)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let name_w = name_column(&root, &names, name_size)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(top)
            .margin_right(30)
            .margin_left(8)
            .margin_bottom(8)
            .x_label_area_size(bottom - 8)
            .y_label_area_size(name_w)
            .build_cartesian_2d(0f64..xmax, 0f64..n as f64)
            .map_err(perr)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(max_bits as usize + 2)
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-9 && *v <= max_bits as f64 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .x_desc("bits")
            .label_style(text_style(14.0, &INK))
            .axis_desc_style(text_style(15.0, &INK))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(GRID)
            .draw()
            .map_err(perr)?;

        let stripe = RGBColor(246, 246, 246);
        let float_col = RGBColor(205, 205, 205);
        let mut rects = Vec::new();
        let mut texts = Vec::new();
        for (i, l) in r.layers.iter().enumerate() {
            let y0 = (n - 1 - i) as f64;
            if i % 2 == 1 {
                rects.push(Rectangle::new(
                    [(0.0, y0), (xmax, y0 + 1.0)],
                    stripe.filled(),
                ));
            }
            for (bits, (b0, b1), col) in [
                (l.weight_bits, (0.54, 0.88), BLUE),
                (l.activation_bits, (0.12, 0.46), ORANGE),
            ] {
                let (len, fill, label) = match bits {
                    Some(b) => (b as f64, col, b.to_string()),
                    None => (max_bits as f64, float_col, "float".to_string()),
                };
                rects.push(Rectangle::new(
                    [(0.0, y0 + b0), (len, y0 + b1)],
                    fill.filled(),
                ));
                texts.push(((len, y0 + (b0 + b1) / 2.0), label, bits.is_none()));
            }
        }
        chart.draw_series(rects).map_err(perr)?;
        let bar_text = if rh >= 24 { 12.0 } else { 11.0 };
        for ((x, y), label, is_float) in texts {
            let (px, py) = chart.backend_coord(&(x, y));
            let (px, anchor) = if is_float {
                (px - 4, HPos::Right)
            } else {
                (px + 4, HPos::Left)
            };
            let style = text_style(bar_text, &INK).pos(Pos::new(anchor, VPos::Center));
            root.draw(&Text::new(label, (px, py), style))
                .map_err(perr)?;
        }
        let label_style = text_style(name_size, &INK).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, name) in names.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
            root.draw(&Text::new(name.clone(), (px - 8, py), label_style.clone()))
                .map_err(perr)?;
        }
        // Legend above the plot.
        let ly = top / 2;
        let mut lx = name_w + 8;
        let any_float = r
            .layers
            .iter()
            .any(|l| l.weight_bits.is_none() || l.activation_bits.is_none());
        let mut legend = vec![("weights", BLUE), ("activations", ORANGE)];
        if any_float {
            legend.push(("float (not quantized)", float_col));
        }
        for (label, col) in legend {
            root.draw(&Rectangle::new(
                [(lx, ly - 7), (lx + 18, ly + 7)],
                col.filled(),
            ))
            .map_err(perr)?;
            let style = text_style(14.0, &INK).pos(Pos::new(HPos::Left, VPos::Center));
            let (tw, _) = root.estimate_text_size(label, &style).map_err(perr)?;
            root.draw(&Text::new(label, (lx + 24, ly), style))
                .map_err(perr)?;
            lx += 24 + tw as i32 + 26;
        }
        root.present().map_err(perr)?;
    }
    Ok(buf)
}

/// Viridis colour map, t in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Black or white, whichever reads better on `c`.
fn ink_on(c: RGBColor) -> RGBColor {
    let lum = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if lum > 125.0 {
        INK
    } else {
        WHITE
    }
}

/// How a sensitivity value is drawn.
enum Cell {
    Scaled(f64),
    Zero,
    Negative,
    Inf,
    Nan,
}

fn classify(v: f64) -> Cell {
    if v.is_nan() {
        Cell::Nan
    } else if v == f64::INFINITY {
        Cell::Inf
    } else if v == 0.0 {
        Cell::Zero
    } else if v < 0.0 {
        Cell::Negative
    } else {
        Cell::Scaled(v.log10())
    }
}

const ZERO_COL: RGBColor = RGBColor(250, 250, 250);
const NEG_COL: RGBColor = RGBColor(225, 235, 245);
const INF_COL: RGBColor = RGBColor(60, 60, 60);
const NAN_COL: RGBColor = RGBColor(190, 190, 190);
/// Frame of the chosen option in the heat map.
const CHOSEN: RGBColor = RGBColor(240, 0, 60);

/// The frame that marks a chosen cell (plotters' SVG rectangles ignore the stroke width,
/// paths do not).
fn frame(a: (i32, i32), b: (i32, i32)) -> PathElement<(i32, i32)> {
    PathElement::new(
        vec![a, (b.0, a.1), b, (a.0, b.1), a, (b.0, a.1)],
        CHOSEN.stroke_width(3),
    )
}

/// Heat map layers × options of log10(sensitivity), with a colour bar and a legend for the
/// values a log scale cannot show.
fn heatmap_svg(r: &Report) -> Result<String> {
    let n = r.layers.len();
    let m = r.options.len();
    let rh = row_height(n);
    let names = axis_names(r).0;
    let name_size = if n > 32 { 13.0 } else { 14.0 };
    let (lo, hi) =
        finite_range(
            r.sensitivity
                .iter()
                .flatten()
                .filter_map(|&v| match classify(v) {
                    Cell::Scaled(l) => Some(l),
                    _ => None,
                }),
        )
        .unwrap_or((0.0, 1.0));
    let (lo, hi) = if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let (top, bottom) = (40, 16);
    let bar_area = 200;
    // Measure the name column first: the width grows when many options need room.
    let name_w = {
        let mut scratch = String::new();
        let area = SVGBackend::with_string(&mut scratch, (10, 10)).into_drawing_area();
        name_column(&area, &names, name_size)? + 8
    };
    let cw = ((1000 - name_w - bar_area) / m.max(1) as i32).clamp(8, 130);
    let w = (name_w + m as i32 * cw + bar_area).max(1000);
    let bar_h = (rh * n as i32).clamp(150, 400);
    let has = |f: fn(f64) -> bool| r.sensitivity.iter().flatten().any(|&v| f(v));
    let specials: [(&str, RGBColor, bool); 4] = [
        ("0", ZERO_COL, has(|v| v == 0.0)),
        ("< 0", NEG_COL, has(|v| v < 0.0)),
        ("∞ disallowed", INF_COL, has(|v| v == f64::INFINITY)),
        ("NaN", NAN_COL, has(|v| v.is_nan())),
    ];
    let any_chosen = r.layers.iter().any(|l| l.option.is_some());
    let swatches = specials.iter().filter(|s| s.2).count() + usize::from(any_chosen);
    let hgt = (top + bottom + rh * n as i32).max(top + bar_h + 16 + 22 * swatches as i32 + 8);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w as u32, hgt as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let x_start = name_w;
        let show_values = cw >= 62 && rh >= 18;
        let value_size = if rh >= 24 { 12.0 } else { 11.0 };

        // Option headers.
        let head = text_style(14.0, &INK).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (j, o) in r.options.iter().enumerate() {
            let max_chars = ((cw as f64) / 8.0).max(3.0) as usize;
            root.draw(&Text::new(
                shorten(o, max_chars),
                (x_start + j as i32 * cw + cw / 2, top - 8),
                head.clone(),
            ))
            .map_err(perr)?;
        }
        let label_style = text_style(name_size, &INK).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, name) in names.iter().enumerate() {
            let y = top + i as i32 * rh;
            root.draw(&Text::new(
                name.clone(),
                (x_start - 8, y + rh / 2),
                label_style.clone(),
            ))
            .map_err(perr)?;
            for (j, &v) in r.sensitivity[i].iter().enumerate() {
                let x = x_start + j as i32 * cw;
                let (col, text) = match classify(v) {
                    Cell::Scaled(l) => (viridis((l - lo) / (hi - lo)), fmt_sci(v)),
                    Cell::Zero => (ZERO_COL, "0".to_string()),
                    Cell::Negative => (NEG_COL, fmt_sci(v)),
                    Cell::Inf => (INF_COL, "∞".to_string()),
                    Cell::Nan => (NAN_COL, "NaN".to_string()),
                };
                root.draw(&Rectangle::new([(x, y), (x + cw, y + rh)], col.filled()))
                    .map_err(perr)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cw, y + rh)],
                    WHITE.stroke_width(1),
                ))
                .map_err(perr)?;
                let always = matches!(classify(v), Cell::Inf | Cell::Nan);
                if show_values || (always && cw >= 24) {
                    let style = text_style(value_size, &ink_on(col))
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw(&Text::new(text, (x + cw / 2, y + rh / 2), style))
                        .map_err(perr)?;
                }
            }
            if let Some(j) = r.layers[i].option {
                let x = x_start + j as i32 * cw;
                root.draw(&frame((x + 2, y + 2), (x + cw - 2, y + rh - 2)))
                    .map_err(perr)?;
            }
        }

        // Colour bar.
        let bx = x_start + m as i32 * cw + 40;
        let (by0, by1) = (top, top + bar_h);
        let steps = 64;
        for s in 0..steps {
            let t0 = s as f64 / steps as f64;
            let ya = by1 - ((by1 - by0) as f64 * (s + 1) as f64 / steps as f64).round() as i32;
            let yb = by1 - ((by1 - by0) as f64 * s as f64 / steps as f64).round() as i32;
            root.draw(&Rectangle::new(
                [(bx, ya), (bx + 18, yb)],
                viridis(t0 + 0.5 / steps as f64).filled(),
            ))
            .map_err(perr)?;
        }
        root.draw(&Rectangle::new(
            [(bx, by0), (bx + 18, by1)],
            RGBColor(120, 120, 120).stroke_width(1),
        ))
        .map_err(perr)?;
        let tick = text_style(12.0, &INK).pos(Pos::new(HPos::Left, VPos::Center));
        let ypix = |l: f64| by1 - (((l - lo) / (hi - lo)) * (by1 - by0) as f64).round() as i32;
        let mut ticks: Vec<f64> = ((lo.ceil() as i64)..=(hi.floor() as i64))
            .map(|k| k as f64)
            .collect();
        if ticks.len() > 8 {
            let stride = ticks.len().div_ceil(8);
            ticks = ticks.into_iter().step_by(stride).collect();
        }
        if ticks.len() < 2 {
            ticks = vec![lo, hi];
        }
        for t in ticks {
            let y = ypix(t);
            root.draw(&PathElement::new(vec![(bx + 18, y), (bx + 23, y)], INK))
                .map_err(perr)?;
            let label = if (t - t.round()).abs() < 1e-9 {
                format!("1e{}", t.round() as i64)
            } else {
                fmt_sci(10f64.powf(t))
            };
            root.draw(&Text::new(label, (bx + 26, y), tick.clone()))
                .map_err(perr)?;
        }
        root.draw(&Text::new(
            "sensitivity",
            (bx - 4, top - 8),
            text_style(13.0, &INK).pos(Pos::new(HPos::Left, VPos::Bottom)),
        ))
        .map_err(perr)?;
        // Swatches for what the log scale cannot show.
        let mut sy = by1 + 16;
        for (label, col, present) in specials {
            if !present {
                continue;
            }
            root.draw(&Rectangle::new(
                [(bx, sy), (bx + 18, sy + 14)],
                col.filled(),
            ))
            .map_err(perr)?;
            root.draw(&Rectangle::new(
                [(bx, sy), (bx + 18, sy + 14)],
                RGBColor(150, 150, 150).stroke_width(1),
            ))
            .map_err(perr)?;
            root.draw(&Text::new(label, (bx + 26, sy + 7), tick.clone()))
                .map_err(perr)?;
            sy += 22;
        }
        if any_chosen {
            root.draw(&frame((bx + 1, sy + 1), (bx + 17, sy + 13)))
                .map_err(perr)?;
            root.draw(&Text::new("chosen", (bx + 26, sy + 7), tick.clone()))
                .map_err(perr)?;
        }
        root.present().map_err(perr)?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(cost: f64, accuracy: f64, label: &str) -> Point {
        Point {
            cost,
            accuracy,
            label: label.into(),
            avg_weight_bits: Some(4.5),
        }
    }

    fn sample(n_layers: usize) -> Report {
        let options: Vec<String> = [2, 3, 4, 8].iter().map(|b| format!("w{b}a8")).collect();
        let layers: Vec<LayerRow> = (0..n_layers)
            .map(|i| LayerRow {
                name: format!("block{i}/conv<{i}>&x"),
                op: if i + 1 == n_layers { "Gemm" } else { "Conv" }.into(),
                params: 1000 * (i as u64 + 1),
                macs: 50_000 * (i as u64 + 1),
                weight_bits: if i == 0 {
                    None
                } else {
                    Some([2, 3, 4, 8][i % 4])
                },
                activation_bits: if i == 0 { None } else { Some(8) },
                option: if i == 0 { None } else { Some(i % 4) },
                sensitivity: Some(0.01 / (i as f64 + 1.0)),
            })
            .collect();
        let sensitivity = (0..n_layers)
            .map(|i| {
                (0..4)
                    .map(|j| 10f64.powi(-j - (i % 5) as i32) * 3.7)
                    .collect()
            })
            .collect();
        Report {
            version: REPORT_VERSION,
            title: "lenet <5> & \"friends\" on MNIST".into(),
            model: "lenet5.onnx".into(),
            data: "MNIST test (10000)".into(),
            metric: "hessian-trace".into(),
            allocator: "ilp".into(),
            budgets: vec!["size <= 25% of fp32 (12.3 KB)".into()],
            cost_axis: "model size (KB)".into(),
            layers,
            options,
            sensitivity,
            frontier: (0..6)
                .map(|k| point(10.0 + 5.0 * k as f64, 95.0 + 0.6 * k as f64, "front"))
                .collect(),
            uniform: vec![
                point(8.0, 40.0, "w2a8"),
                point(12.0, 90.0, "w3a8"),
                point(16.0, 97.0, "w4a8"),
                point(32.0, 98.9, "w8a8"),
                point(128.0, 99.0, "fp32"),
            ],
            chosen: point(20.0, 97.6, "size <= 25%"),
            float_accuracy: Some(99.05),
            summary: vec![
                ("accuracy (fake-quant)".into(), "97.60%".into()),
                ("size".into(), "20.0 KB <of> 128 KB".into()),
            ],
            comparison: Vec::new(),
        }
    }

    fn check_page(html: &str, r: &Report) {
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.matches("<svg").count() >= 3, "fewer than 3 SVGs");
        assert!(html.contains(&escape_html(&r.title)));
        if escape_html(&r.title) != r.title {
            assert!(!html.contains(&r.title), "the raw title must be escaped");
        }
        for l in &r.layers {
            assert!(
                html.contains(&escape_html(&l.name)),
                "missing layer {}",
                l.name
            );
        }
        let stripped = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !stripped.contains("http://"),
            "external http link in the page"
        );
        assert!(
            !stripped.contains("https://"),
            "external https link in the page"
        );
        assert!(!html.contains("<script"));
        assert!(!html.contains("<img"));
    }

    #[test]
    fn page_has_plots_escaped_text_and_no_external_links() {
        let r = sample(10);
        let html = render_html(&r).unwrap();
        check_page(&html, &r);
        assert!(html.contains("&lt;of&gt;"), "summary values are escaped");
        // One float-accuracy line and the chosen point.
        assert!(html.contains("float model (99.05%)"));
        assert!(html.contains("chosen: 97.60%"));
        // Heat-map cells show values in scientific notation.
        assert!(html.contains("3.70e0"));
    }

    #[test]
    fn odd_inputs_render() {
        // NaN / inf / zero / negative sensitivities, NaN points, empty front.
        let mut r = sample(6);
        r.sensitivity[1][0] = f64::NAN;
        r.sensitivity[2][0] = f64::INFINITY;
        r.sensitivity[3][1] = 0.0;
        r.sensitivity[4][2] = -1.0;
        r.sensitivity[5][3] = f64::NEG_INFINITY;
        r.frontier.clear();
        r.uniform[0].accuracy = f64::NAN;
        r.chosen.cost = f64::INFINITY;
        r.float_accuracy = None;
        let html = render_html(&r).unwrap();
        check_page(&html, &r);
        assert!(html.contains("∞ disallowed"));

        // Nothing finite at all.
        r.uniform.clear();
        r.sensitivity = vec![vec![f64::NAN; 4]; 6];
        render_html(&r).unwrap();

        // One layer; 60 layers with long names; all-equal sensitivities.
        let mut one = sample(1);
        one.sensitivity = vec![vec![1.0; 4]];
        check_page(&render_html(&one).unwrap(), &one);
        let mut big = sample(60);
        for l in &mut big.layers {
            l.name = format!("model.backbone.stage3.{}.depthwise_conv.weight", l.name);
        }
        check_page(&render_html(&big).unwrap(), &big);

        // Many options: the heat map grows wider instead of overflowing.
        let mut wide = sample(3);
        wide.options = (0..120).map(|k| format!("option-{k}")).collect();
        wide.sensitivity = vec![(0..120).map(|k| k as f64).collect(); 3];
        wide.layers.iter_mut().for_each(|l| l.option = Some(119));
        let html = render_html(&wide).unwrap();
        let widest = html
            .match_indices("<svg width=\"")
            .map(|(i, m)| {
                let rest = &html[i + m.len()..];
                rest[..rest.find('"').unwrap()].parse::<u32>().unwrap()
            })
            .max()
            .unwrap();
        assert!(widest >= 120 * 8 + 200, "heat map width {widest}");

        // No layers and no options.
        let mut empty = sample(0);
        empty.options.clear();
        let html = render_html(&empty).unwrap();
        assert!(html.contains("<svg"));
    }

    #[test]
    fn comparison_adds_table_and_scatter() {
        let mut r = sample(8);
        let single = render_html(&r).unwrap().matches("<svg").count();
        r.comparison = ["ilp", "greedy", "pareto-dp"]
            .iter()
            .enumerate()
            .map(|(i, a)| CompareRow {
                allocator: a.to_string(),
                metric: "hessian-trace".into(),
                accuracy: 97.0 + i as f64 * 0.3,
                size: 20_000 + 1000 * i as u64,
                bops: 3_000_000_000,
                latency_ms: if i == 0 { None } else { Some(1.5) },
                search_ms: 0.8 * (i + 1) as f64,
                cost: 20.0 + i as f64,
            })
            .collect();
        let html = render_html(&r).unwrap();
        assert_eq!(html.matches("<svg").count(), single + 1);
        assert!(html.contains("Allocator comparison"));
        assert!(html.contains(">pareto-dp</td>"));
        assert!(html.contains("class=\"best\""));
    }

    #[test]
    fn json_round_trip_is_identical() {
        let mut r = sample(7);
        r.sensitivity[0][0] = f64::NAN;
        r.sensitivity[1][1] = f64::INFINITY;
        r.sensitivity[2][2] = f64::NEG_INFINITY;
        r.sensitivity[3][3] = 0.1 + 0.2;
        r.chosen.avg_weight_bits = None;
        r.frontier[0].cost = 1.0 / 3.0;
        let j = r.to_json().unwrap();
        assert!(j.contains("\"NaN\"") && j.contains("\"inf\"") && j.contains("\"-inf\""));
        let back = Report::from_json(&j).unwrap();
        assert_eq!(back.to_json().unwrap(), j);
        assert!(back.sensitivity[0][0].is_nan());
        assert_eq!(back.sensitivity[1][1], f64::INFINITY);
        // Bit-exact for all finite numbers (NaN != NaN, so compare with it patched out).
        let (mut a, mut b) = (r.clone(), back.clone());
        a.sensitivity[0][0] = 0.0;
        b.sensitivity[0][0] = 0.0;
        assert_eq!(a, b);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let mut r = sample(3);
        r.sensitivity[1].pop();
        let e = render_html(&r).unwrap_err().to_string();
        assert!(
            e.contains("block1/conv<1>&x") && e.contains("3 values"),
            "{e}"
        );
        let mut r = sample(3);
        r.layers[2].option = Some(9);
        assert!(render_html(&r)
            .unwrap_err()
            .to_string()
            .contains("option 9"));
        let mut r = sample(3);
        r.version = 99;
        assert!(r.validate().unwrap_err().to_string().contains("version 99"));
        let j = sample(2)
            .to_json()
            .unwrap()
            .replace("\"title\"", "\"titel\"");
        assert!(
            Report::from_json(&j).is_err(),
            "unknown fields are rejected"
        );
    }

    #[test]
    fn write_report_writes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample(4);
        let (j, h) = write_report(&dir.path().join("out"), &r).unwrap();
        assert_eq!(read_json(&j).unwrap(), r);
        let html = std::fs::read_to_string(h).unwrap();
        check_page(&html, &r);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&j).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        // Only the two files, no temporary left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("out")).unwrap().count(),
            2
        );
    }

    #[test]
    fn example_fixture_renders() {
        let text = include_str!("../tests-data/report-example.json");
        let r = Report::from_json(text).unwrap();
        assert!(r.layers.len() >= 8);
        check_page(&render_html(&r).unwrap(), &r);
    }

    #[test]
    fn axis_names_drop_shared_prefix_and_suffix() {
        let mut r = sample(3);
        for (i, l) in r.layers.iter_mut().enumerate() {
            l.name = format!("model.backbone.stage{i}.block.depthwise_conv.weight");
        }
        let (names, cut) = axis_names(&r);
        assert_eq!(names, ["stage0", "stage1", "stage2"]);
        assert_eq!(
            cut,
            Some((
                "model.backbone.".into(),
                ".block.depthwise_conv.weight".into()
            ))
        );
        // Short names stay as they are.
        let r = sample(3);
        let (names, cut) = axis_names(&r);
        assert_eq!(names[1], "block1/conv<1>&x");
        assert!(cut.is_none());
        // One long name: shortened in the middle, nothing to strip.
        let mut r = sample(1);
        r.layers[0].name = "x".repeat(60);
        let (names, cut) = axis_names(&r);
        assert_eq!(names[0].chars().count(), NAME_MAX);
        assert!(cut.is_none());
    }

    #[test]
    fn helpers() {
        assert_eq!(shorten("abcdefghij", 5), "ab…ij");
        assert_eq!(shorten("abcdefghijklmnop", 8), "abc…mnop");
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(
            escape_html("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(12.0), "12");
        assert_eq!(fmt_num(41.3), "41.3");
        assert_eq!(fmt_num(0.2), "0.2");
        assert_eq!(fmt_num(950.0), "950");
        assert_eq!(fmt_num(26.20898), "26.209");
        assert_eq!(fmt_num(2.5e7), "2.500e7");
    }
}
