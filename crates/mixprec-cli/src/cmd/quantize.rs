//! `mixprec quantize --model M --data D --uniform w4a8`: uniform post-training quantization of
//! every layer — the same weight bits and activation bits everywhere (survey §2.3: weights and
//! activations; §2.4, Eq. 8 and 10 with calibrated activation ranges; weights through any
//! quantizer of Table 1). Reports float and quantized top-1 accuracy and the model size.

use super::data;
use super::mixed::MixedArgs;
use crate::pipeline::{calibration_set, parse_granularity, CommonArgs};
use crate::progress::bar;
use anyhow::{bail, Context, Result};
use mixprec_data::Split;
use mixprec_exec::{calibrate, evaluate, Executor, FakeQuant, LayerQuantInfo};
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};
use std::path::PathBuf;

/// Arguments of `quantize`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Uniform mode: the bit widths of every layer, `w<bits>a<bits>` (e.g. w4a8), or
    /// `w<bits>` to keep activations in floating point.
    #[arg(long, value_name = "WxAy", conflicts_with = "budget")]
    pub uniform: Option<String>,
    /// Uniform mode: the weight quantizer (uniform, uniform-pow2, power-of-two, kmeans,
    /// fixed-point, …; see `mixprec list`). Activations always use asymmetric uniform
    /// quantization per tensor.
    #[arg(long, default_value = "uniform")]
    pub quantizer: String,
    /// Uniform mode: skip the float evaluation (the float accuracy is then reported as null).
    #[arg(long)]
    pub skip_float: bool,
    /// Uniform mode: save the policy JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub policy_out: Option<PathBuf>,
    /// Budget mode: output folder (policy.json, problem.json, model.onnx, report.json,
    /// report.html).
    #[arg(long, value_name = "DIR", default_value = "mixprec-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub mixed: MixedArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `w4a8` → (4, Some(8)); `w4` → (4, None).
fn parse_bits(spec: &str) -> Result<(u8, Option<u8>)> {
    let bad = || {
        anyhow::anyhow!(
            "--uniform {spec}: expected w<bits>a<bits> (e.g. w4a8) or w<bits> (float activations)"
        )
    };
    let rest = spec.to_ascii_lowercase();
    let rest = rest.strip_prefix('w').ok_or_else(bad)?;
    let (w, a) = match rest.split_once('a') {
        Some((w, a)) => (w, Some(a)),
        None => (rest, None),
    };
    let w: u8 = w.parse().map_err(|_| bad())?;
    let a = a.map(|a| a.parse::<u8>().map_err(|_| bad())).transpose()?;
    Ok((w, a))
}

/// Run `quantize`: budget mode with `--budget`, uniform mode with `--uniform`.
pub fn run(a: Args) -> Result<()> {
    let Some(uniform) = a.uniform.clone() else {
        if a.mixed.budget.is_empty() {
            bail!("give --budget KEY=VALUE (mixed precision, e.g. --budget size=25%) or --uniform w<bits>a<bits> (e.g. --uniform w4a8)");
        }
        let o = super::mixed::run_mixed(&a.common, &a.mixed, &a.out)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&o)?);
        } else {
            super::mixed::print_outcome(&o);
        }
        return Ok(());
    };
    let c = &a.common;
    let t0 = std::time::Instant::now();
    let (wbits, abits) = parse_bits(&uniform)?;
    let granularity = parse_granularity(c.granularity.as_deref().unwrap_or("tensor"))?;
    let kind: QuantKind = a
        .quantizer
        .parse()
        .with_context(|| format!("--quantizer {}", a.quantizer))?;
    let g = crate::model::load(&c.model)?;
    let name = crate::pipeline::dataset_name(&c.model, c.data.as_deref(), &g)?;
    let full = data::load(&name, Split::Test, c.scale)?;
    let ds = match c.limit {
        Some(n) => full.head(n),
        None => full.clone(),
    };
    let mut exec = Executor::new(g)?;
    exec.free_batch_dim();

    let weight = QScheme::new(kind, wbits, true, granularity);
    let activation = abits.map(|b| QScheme::new(QuantKind::Uniform, b, false, Granularity::Tensor));
    let layers = exec.graph().layers();
    if layers.is_empty() {
        bail!(
            "{} has no Conv, Gemm, MatMul or recurrent layer with constant weights to quantize",
            c.model
        );
    }
    let mut policy = Policy::new();
    for l in &layers {
        policy.set_weight(&l.name, weight);
        if let Some(s) = activation {
            policy.set_activation(&l.name, s);
        }
    }
    mixprec_exec::check_policy(exec.graph(), &policy)
        .with_context(|| format!("--uniform {} --quantizer {kind}", uniform))?;

    let (calib, calib_source) = calibration_set(&name, c.scale, &full, ds.n, c.calib, c.seed)?;
    let ranges = calibrate(&exec, &calib, &c.observer, &policy)
        .with_context(|| format!("calibrating on {} images of {name}", calib.n))?;
    let fq = FakeQuant::new(&exec, &policy, &ranges, c.seed)?;

    let float = if a.skip_float {
        None
    } else {
        let pb = bar(ds.n as u64, "float");
        let r = evaluate(&exec, &ds, c.batch, None, &mut |d, _| {
            pb.set_position(d as u64)
        })
        .with_context(|| format!("evaluating {} on {name}", c.model))?;
        pb.finish_and_clear();
        Some(r)
    };
    let pb = bar(ds.n as u64, "quantized");
    let quant = evaluate(&exec, &ds, c.batch, Some(&fq), &mut |d, _| {
        pb.set_position(d as u64)
    })
    .with_context(|| format!("evaluating quantized {} on {name}", c.model))?;
    pb.finish_and_clear();

    let info: Vec<LayerQuantInfo> = fq.layer_info();
    let params = exec.graph().parameter_count() as u64;
    let weight_elems: u64 = info.iter().map(|i| i.weight_elems as u64).sum();
    let weight_qbits: u64 = info.iter().map(|i| i.weight_bits).sum();
    let float_bits = 32 * params;
    let quant_bits = weight_qbits + 32 * params.saturating_sub(weight_elems);
    let float_bytes = float_bits / 8;
    let quant_bytes = quant_bits.div_ceil(8);

    if let Some(p) = &a.policy_out {
        policy
            .save(p)
            .with_context(|| format!("writing the policy to {}", p.display()))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let float_acc = float.as_ref().map(|r| r.accuracy);
    if a.json {
        let v = serde_json::json!({
            "model": c.model, "data": name, "split": "test", "images": ds.n,
            "uniform": uniform, "quantizer": kind.name(), "granularity": c.granularity.as_deref().unwrap_or("tensor"),
            "weight_scheme": weight, "activation_scheme": activation,
            "observer": c.observer,
            "calibration": {"images": calib.n, "source": calib_source},
            "float_accuracy": float_acc,
            "quantized_accuracy": quant.accuracy,
            "quantized_correct": quant.correct,
            "accuracy_drop": float_acc.map(|f| f - quant.accuracy),
            "size": {
                "float_bytes": float_bytes,
                "quantized_bytes": quant_bytes,
                "compression": float_bits as f64 / quant_bits.max(1) as f64,
                "weight_elements": weight_elems,
                "weight_float_bits": 32 * weight_elems,
                "weight_quantized_bits": weight_qbits,
                "weight_bits_per_element": weight_qbits as f64 / weight_elems.max(1) as f64,
            },
            "layers": info,
            "policy_out": a.policy_out,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}  on {name} (test, {} images)  weights {weight}  activations {}",
        c.model,
        ds.n,
        activation.map_or("float".to_string(), |s| s.to_string())
    );
    println!(
        "calibration: {} images of the {calib_source}, observer {}",
        calib.n, c.observer
    );
    println!(
        "{:<24} {:>9} {:>22} {:>12} {:>11} {:>22}",
        "layer", "weights", "weight scheme", "bits/elem", "weight MSE", "input range"
    );
    for i in &info {
        println!(
            "{:<24} {:>9} {:>22} {:>12.3} {:>11.3e} {:>22}",
            i.layer,
            i.weight_elems,
            i.weight_scheme.map_or("float".into(), |s| s.to_string()),
            i.weight_bits as f64 / i.weight_elems.max(1) as f64,
            i.weight_mse,
            i.activation_range
                .map_or("float".into(), |(lo, hi)| format!("[{lo:.3}, {hi:.3}]")),
        );
    }
    match float_acc {
        Some(f) => println!(
            "top-1: float {:.2} %  quantized {:.2} %  (change {:+.2} points)",
            100.0 * f,
            100.0 * quant.accuracy,
            100.0 * (quant.accuracy - f)
        ),
        None => println!("top-1: quantized {:.2} %", 100.0 * quant.accuracy),
    }
    println!(
        "size: float {} bytes  quantized {} bytes  ({:.2}x smaller; weights {:.3} bits/element incl. scales, zero points and codebooks)  [{secs:.1} s]",
        float_bytes,
        quant_bytes,
        float_bits as f64 / quant_bits.max(1) as f64,
        weight_qbits as f64 / weight_elems.max(1) as f64
    );
    if let Some(p) = &a.policy_out {
        println!("policy written to {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_and_granularity_specs_parse() {
        assert_eq!(parse_bits("w4a8").unwrap(), (4, Some(8)));
        assert_eq!(parse_bits("W2").unwrap(), (2, None));
        assert!(parse_bits("4a8").is_err() && parse_bits("wxa8").is_err());
        assert_eq!(parse_granularity("channel").unwrap(), Granularity::Channel);
        assert_eq!(parse_granularity("g16").unwrap(), Granularity::Group(16));
        assert!(parse_granularity("g0").is_err() && parse_granularity("row").is_err());
    }
}
