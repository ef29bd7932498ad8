//! `mixprec demo`: the whole mixed-precision job on the built-in default — LeNet-5 trained on
//! MNIST and the embedded 1,000-image MNIST test subset, so it needs no data folder —
//! under a model-size budget of every layer at 3-bit weights on average: HAWQ-V2 Hutchinson
//! traces (survey §3.2.3, Eq. 21–23) → HAWQ-V3 ILP (§3.3, Eq. 26) → evaluation, QDQ export and
//! the report. Prints the table and where the report is.

use super::mixed::{print_outcome, run_mixed, MixedArgs};
use crate::pipeline::CommonArgs;
use anyhow::Result;
use std::path::PathBuf;

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Output folder.
    #[arg(long, value_name = "DIR", default_value = "mixprec-demo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub mixed: MixedArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The demo's budget when none is given.
pub const DEMO_BUDGET: &str = "size=11%";

/// Run `demo`.
pub fn run(mut a: Args) -> Result<()> {
    if a.mixed.budget.is_empty() {
        a.mixed.budget.push(DEMO_BUDGET.into());
    }
    let o = run_mixed(&a.common, &a.mixed, &a.out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        print_outcome(&o);
    }
    Ok(())
}
