//! `mixprec export MODEL --out FILE [--format onnx | onnx-qdq --policy P.json --data D]`:
//! the float model as ONNX, or the quantized model in QDQ form (QuantizeLinear /
//! DequantizeLinear around activations, integer weights; survey §2.4 Eq. 8 and 10, §3.3).

use super::data::{self, Scale};
use anyhow::{bail, Context, Result};
use mixprec_data::{calibration_subset, Dataset, Split};
use mixprec_exec::qdq::{save_qdq, QdqOptions};
use mixprec_exec::{calibrate, ActivationRanges, Executor};
use mixprec_quant::Policy;
use std::path::PathBuf;

/// Arguments of `export`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    pub model: String,
    /// Output file (.onnx).
    #[arg(long)]
    pub out: PathBuf,
    /// Format: onnx (the float model) or onnx-qdq (quantized per --policy).
    #[arg(long, default_value = "onnx")]
    pub format: String,
    /// The quantization policy JSON (onnx-qdq), e.g. from `mixprec quantize --policy-out`.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Calibration options (onnx-qdq).
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Store weights of at most 4 bits as ONNX INT4/UINT4 (opset 21) instead of int8/uint8.
    #[arg(long)]
    pub int4: bool,
}

/// How activation ranges are calibrated (shared by `export --format onnx-qdq` and
/// `run --policy`, so both see the same ranges).
#[derive(clap::Args, Clone)]
pub struct CalibArgs {
    /// Calibration data set: mnist, fashion-mnist, cifar10, or mnist-1k. Default: from the
    /// model's input shape.
    #[arg(long)]
    pub data: Option<String>,
    /// Calibration images (a seeded class-balanced subset of the training split when the data
    /// set has one, else of the test split).
    #[arg(long = "calib", default_value_t = 256)]
    pub n: usize,
    /// Calibration observer (min-max, percentile, mse, kl, aciq, …).
    #[arg(long, default_value = "min-max")]
    pub observer: String,
    /// Seed of the calibration subset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input scaling.
    #[arg(long, value_enum, default_value = "raw")]
    pub scale: Scale,
}

/// Loads and checks a policy against the executor's graph, and calibrates its activations.
pub fn policy_and_ranges(
    exec: &Executor,
    model: &str,
    policy: &std::path::Path,
    c: &CalibArgs,
) -> Result<(Policy, ActivationRanges)> {
    let policy_text = policy.display().to_string();
    let policy = Policy::load(policy).with_context(|| format!("loading policy {policy_text}"))?;
    mixprec_exec::check_policy(exec.graph(), &policy)
        .with_context(|| format!("policy {policy_text} does not fit {model}"))?;
    let needs_ranges = policy.layers.values().any(|l| l.activation.is_some());
    if !needs_ranges {
        return Ok((policy, ActivationRanges::new()));
    }
    let name = match &c.data {
        Some(d) => d.clone(),
        None if model == crate::model::DEFAULT_MODEL => data::EMBEDDED.into(),
        None => crate::model::default_dataset(exec.graph())
            .context("cannot tell which data set fits this model's input; pass --data")?
            .into(),
    };
    let set = calibration_data(&name, c)?;
    let ranges = calibrate(exec, &set, &c.observer, &policy)
        .with_context(|| format!("calibrating on {} images of {name}", set.n))?;
    Ok((policy, ranges))
}

fn calibration_data(name: &str, c: &CalibArgs) -> Result<Dataset> {
    if c.n == 0 {
        bail!("--calib must be at least 1");
    }
    let full = match data::load(name, Split::Train, c.scale) {
        Ok(train) if name != data::EMBEDDED => train,
        _ => data::load(name, Split::Test, c.scale)?,
    };
    Ok(calibration_subset(&full, c.n.min(full.n), c.seed)?)
}

/// Run `export`.
pub fn run(a: Args) -> Result<()> {
    let g = crate::model::load(&a.model)?;
    match a.format.as_str() {
        "onnx" => {
            if a.policy.is_some() {
                bail!("--policy needs --format onnx-qdq");
            }
            mixprec_graph::save_onnx(&g, &a.out)?;
            println!(
                "wrote {} ({} nodes, {} parameters)",
                a.out.display(),
                g.nodes.len(),
                g.parameter_count()
            );
        }
        "onnx-qdq" => {
            let Some(policy) = &a.policy else {
                bail!("--format onnx-qdq needs --policy P.json (e.g. from `mixprec quantize --policy-out`)");
            };
            let mut exec = Executor::new(g)?;
            exec.free_batch_dim();
            let (policy, ranges) = policy_and_ranges(&exec, &a.model, policy, &a.calib)?;
            let opts = QdqOptions { int4: a.int4 };
            save_qdq(exec.graph(), &policy, &ranges, opts, &a.out)
                .with_context(|| format!("exporting {} in QDQ form", a.model))?;
            let wq = policy
                .layers
                .values()
                .filter(|l| l.weight.is_some())
                .count();
            println!(
                "wrote {} (QDQ: {wq} quantized weights, {} quantized input activations)",
                a.out.display(),
                ranges.len()
            );
        }
        other => bail!("unknown export format '{other}' (available: onnx, onnx-qdq)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixprec_graph::onnx_proto as pb;
    use mixprec_quant::{Granularity, QScheme, QuantKind};
    use prost::Message;

    fn args(dir: &std::path::Path, policy: Option<PathBuf>, int4: bool) -> Args {
        Args {
            model: crate::model::DEFAULT_MODEL.into(),
            out: dir.join("m.onnx"),
            format: "onnx-qdq".into(),
            policy,
            calib: CalibArgs {
                data: None,
                n: 64,
                observer: "min-max".into(),
                seed: 0,
                scale: Scale::Raw,
            },
            int4,
        }
    }

    #[test]
    fn onnx_qdq_export_of_the_default_model() {
        let dir = tempfile::tempdir().unwrap();
        let g = crate::model::load(crate::model::DEFAULT_MODEL).unwrap();
        let mut p = Policy::new();
        for (i, l) in g.layers().iter().enumerate() {
            let bits = if i % 2 == 0 { 8 } else { 4 };
            p.set_weight(
                &l.name,
                QScheme::new(QuantKind::Uniform, bits, true, Granularity::Channel),
            );
            p.set_activation(
                &l.name,
                QScheme::new(QuantKind::Uniform, 8, false, Granularity::Tensor),
            );
        }
        let pp = dir.path().join("p.json");
        p.save(&pp).unwrap();
        run(args(dir.path(), Some(pp.clone()), true)).unwrap();
        let m =
            pb::ModelProto::decode(std::fs::read(dir.path().join("m.onnx")).unwrap().as_slice())
                .unwrap();
        assert_eq!(m.opset_import[0].version, 21);
        let gp = m.graph.unwrap();
        let n = g.layers().len();
        let count = |op: &str| gp.node.iter().filter(|x| x.op_type == op).count();
        assert_eq!(
            (count("QuantizeLinear"), count("DequantizeLinear")),
            (n, 2 * n)
        );
        let int4 = gp
            .initializer
            .iter()
            .filter(|t| t.data_type == mixprec_exec::qdq::INT4)
            .count();
        // Weights and zero points of the 4-bit layers.
        assert_eq!(int4, 2 * (n / 2));
        // Without --policy, or with --policy on the float format: clear errors.
        let e = run(args(dir.path(), None, false)).unwrap_err().to_string();
        assert!(e.contains("--policy"), "{e}");
        let mut a = args(dir.path(), Some(pp), false);
        a.format = "onnx".into();
        let e = run(a).unwrap_err().to_string();
        assert!(e.contains("onnx-qdq"), "{e}");
    }
}
