//! `mixprec export MODEL --out FILE [--format onnx | onnx-qdq | mpqm --policy P.json --data D]`:
//! the float model as ONNX, the quantized model in QDQ form (QuantizeLinear /
//! DequantizeLinear around activations, integer weights; survey §2.4 Eq. 8 and 10, §3.3), or
//! the same policy lowered onto the integer-only engine as a mixprec model file (survey §3.3,
//! Eq. 24–25), calibrated on the same images.
//!
//! `onnx-qdq` with `--activations full` (the default) puts Q/DQ on every tensor an integer
//! kernel reads or writes and folds BatchNormalization / bias Adds into the layers, so ONNX
//! Runtime fuses Conv into QLinearConv, Gemm into QGemm, residual Add into QLinearAdd;
//! `--activations inputs` quantizes only each layer's input (float layers on dequantized
//! tensors, the fake-quant executor's arithmetic).

use super::data::{self, Scale};
use anyhow::{bail, Context, Result};
use mixprec_data::{calibration_subset, Dataset, Split};
use mixprec_exec::qdq::{calibrate_tensors, qdq_plan, save_qdq, save_qdq_full, QdqOptions};
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
    /// Format: onnx (the float model), onnx-qdq (quantized per --policy, QDQ form) or mpqm
    /// (quantized per --policy, lowered onto the integer engine; run it with `mixprec run`).
    #[arg(long, default_value = "onnx")]
    pub format: String,
    /// onnx-qdq: which activations get Q/DQ: full (every tensor an integer kernel reads or
    /// writes; ONNX Runtime fuses it into integer kernels) or inputs (each layer's input only).
    #[arg(long, value_enum, default_value = "full")]
    pub activations: Activations,
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

/// Which activations `export --format onnx-qdq` quantizes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// Every tensor an integer kernel reads or writes (layer outputs, residual Adds, pooling).
    Full,
    /// The input of each quantized layer only.
    Inputs,
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
    let (policy, ranges, _) = policy_ranges_and_data(exec, model, policy, c)?;
    Ok((policy, ranges))
}

/// [`policy_and_ranges`] plus the calibration images (`None` when the policy quantizes no
/// activation).
pub fn policy_ranges_and_data(
    exec: &Executor,
    model: &str,
    policy: &std::path::Path,
    c: &CalibArgs,
) -> Result<(Policy, ActivationRanges, Option<Dataset>)> {
    let policy_text = policy.display().to_string();
    let policy = Policy::load(policy).with_context(|| format!("loading policy {policy_text}"))?;
    mixprec_exec::check_policy(exec.graph(), &policy)
        .with_context(|| format!("policy {policy_text} does not fit {model}"))?;
    let needs_ranges = policy.layers.values().any(|l| l.activation.is_some());
    if !needs_ranges {
        return Ok((policy, ActivationRanges::new(), None));
    }
    let name = crate::pipeline::dataset_name(model, c.data.as_deref(), exec.graph())?;
    let set = calibration_data(&name, c)?;
    let ranges = calibrate(exec, &set, &c.observer, &policy)
        .with_context(|| format!("calibrating on {} images of {name}", set.n))?;
    Ok((policy, ranges, Some(set)))
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
        "onnx-qdq" | "mpqm" => {
            let Some(policy) = &a.policy else {
                bail!(
                    "--format {} needs --policy P.json (e.g. from `mixprec quantize --policy-out`)",
                    a.format
                );
            };
            let mut exec = Executor::new(g)?;
            exec.free_batch_dim();
            let (policy, ranges, set) = policy_ranges_and_data(&exec, &a.model, policy, &a.calib)?;
            if a.format == "mpqm" {
                let Some(set) = set else {
                    bail!("--format mpqm needs a policy that quantizes activations (the integer engine quantizes every layer input)");
                };
                let (images, _) = set.batch(0, set.n);
                let m =
                    mixprec_engine::lower_with_data(exec.graph(), &policy, &ranges, images, set.n)
                        .with_context(|| format!("lowering {} onto the integer engine", a.model))?;
                m.save(&a.out)
                    .with_context(|| format!("writing {}", a.out.display()))?;
                println!("wrote {} (integer engine model)", a.out.display());
                return Ok(());
            }
            let opts = QdqOptions { int4: a.int4 };
            let wq = policy
                .layers
                .values()
                .filter(|l| l.weight.is_some())
                .count();
            match (a.activations, set) {
                (Activations::Full, Some(set)) => {
                    let plan = qdq_plan(exec.graph(), &policy)?;
                    let own = plan.own_range_tensors();
                    let tensors = calibrate_tensors(&exec, &set, &a.calib.observer, &own)
                        .with_context(|| {
                            format!("calibrating {} residual / pooling tensors", own.len())
                        })?;
                    save_qdq_full(exec.graph(), &policy, &ranges, &tensors, opts, &a.out)
                        .with_context(|| format!("exporting {} in QDQ form", a.model))?;
                    println!(
                        "wrote {} (QDQ, full activations: {wq} quantized weights, {} quantized activation tensors, {} nodes folded)",
                        a.out.display(),
                        plan.tensors.len(),
                        plan.folded.len()
                    );
                }
                _ => {
                    save_qdq(exec.graph(), &policy, &ranges, opts, &a.out)
                        .with_context(|| format!("exporting {} in QDQ form", a.model))?;
                    println!(
                        "wrote {} (QDQ: {wq} quantized weights, {} quantized input activations)",
                        a.out.display(),
                        ranges.len()
                    );
                }
            }
        }
        other => bail!("unknown export format '{other}' (available: onnx, onnx-qdq, mpqm)"),
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
            activations: Activations::Inputs,
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
        // The default full form: every layer input and output quantized, biases int32.
        let mut a = args(dir.path(), Some(pp.clone()), false);
        a.activations = Activations::Full;
        run(a).unwrap();
        let m =
            pb::ModelProto::decode(std::fs::read(dir.path().join("m.onnx")).unwrap().as_slice())
                .unwrap();
        let gp = m.graph.unwrap();
        let count = |op: &str| gp.node.iter().filter(|x| x.op_type == op).count();
        assert!(count("QuantizeLinear") > n, "{}", count("QuantizeLinear"));
        let int32 = gp
            .initializer
            .iter()
            .filter(|t| t.data_type == pb::data_type::INT32)
            .count();
        assert_eq!(int32, n);
        // The engine model of the same policy.
        let mut a = args(dir.path(), Some(pp.clone()), false);
        a.format = "mpqm".into();
        a.out = dir.path().join("m.mpqm");
        run(a).unwrap();
        assert!(mixprec_engine::QuantModel::load(dir.path().join("m.mpqm")).is_ok());
        // Without --policy, or with --policy on the float format: clear errors.
        let e = run(args(dir.path(), None, false)).unwrap_err().to_string();
        assert!(e.contains("--policy"), "{e}");
        let mut a = args(dir.path(), Some(pp), false);
        a.format = "onnx".into();
        let e = run(a).unwrap_err().to_string();
        assert!(e.contains("onnx-qdq"), "{e}");
    }
}
