//! `mixprec report --from report.json --out report.html`: renders a saved report as one
//! self-contained HTML page (see `crate::report`).

use anyhow::{bail, Result};
use std::path::PathBuf;

/// Arguments of `report`.
#[derive(clap::Args)]
pub struct Args {
    /// The report.json written by a run (or by `mixprec compare`).
    #[arg(long)]
    pub from: PathBuf,
    /// Output HTML file [default: next to --from, with the extension .html].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Run `report`.
pub fn run(a: Args) -> Result<()> {
    let out = a.out.unwrap_or_else(|| a.from.with_extension("html"));
    if out == a.from {
        bail!(
            "the output {} would overwrite the input; pass --out OTHER.html",
            out.display()
        );
    }
    let r = crate::report::read_json(&a.from)?;
    let html = crate::report::render_html(&r)?;
    crate::report::write_atomic(&out, html.as_bytes())?;
    println!(
        "wrote {} ({} layers, {} frontier points, {} KB)",
        out.display(),
        r.layers.len(),
        r.frontier.len(),
        html.len().div_ceil(1024)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_example_and_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("report.json");
        std::fs::write(&from, include_str!("../../tests-data/report-example.json")).unwrap();
        run(Args {
            from: from.clone(),
            out: None,
        })
        .unwrap();
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(html.matches("<svg").count() >= 3);
        assert!(html.contains("conv2d_7"));

        // The output must not overwrite the input.
        let e = run(Args {
            from: from.clone(),
            out: Some(from.clone()),
        })
        .unwrap_err();
        assert!(e.to_string().contains("overwrite"), "{e}");
        // A broken file names itself.
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"version\": 1}").unwrap();
        let e = run(Args {
            from: bad,
            out: None,
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("bad.json"), "{e:#}");
    }
}
