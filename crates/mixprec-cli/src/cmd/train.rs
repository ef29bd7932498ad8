//! `mixprec train --arch A --data D`.

use super::data::{self, Scale};
use crate::progress::bar;
use anyhow::{bail, Context, Result};
use mixprec_data::Split;
use mixprec_exec::{
    train, Executor, GradQuant, GradTransform, OptimizerKind, TrainConfig, TrainEvent,
};
use std::path::PathBuf;

/// Arguments of `train`.
#[derive(clap::Args)]
pub struct Args {
    /// Architecture (see `mixprec list`).
    #[arg(long)]
    pub arch: String,
    /// Data set: mnist, fashion-mnist (and cifar10, which has only a test split here).
    #[arg(long)]
    pub data: String,
    /// Epochs.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Optimiser.
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: Opt,
    /// Seed (initialisation and shuffling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many steps (0 = all epochs).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Quantize gradients to K bits (stochastic rounding, per-tensor max scale) before each
    /// optimiser step.
    #[arg(long, value_name = "K")]
    pub grad_bits: Option<u8>,
    /// Train on the first N training images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder for ARCH.safetensors, ARCH.onnx and train.json.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
}

/// Optimiser names.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Opt {
    /// AdamW.
    Adamw,
    /// Plain SGD.
    Sgd,
}

/// Run `train`.
pub fn run(a: Args) -> Result<()> {
    let g = mixprec_exec::models::build(&a.arch, a.seed)
        .with_context(|| format!("unknown architecture '{}' (see `mixprec list`)", a.arch))?;
    let mut train_set = data::load(&a.data, Split::Train, Scale::Raw)?;
    if let Some(n) = a.limit {
        train_set = train_set.head(n);
    }
    let test_set = data::load(&a.data, Split::Test, Scale::Raw)?;
    let want = [train_set.c, train_set.h, train_set.w];
    let shape = mixprec_graph::input_shapes_for_batch(&g, 1)?;
    if shape[0][1..] != want {
        bail!(
            "architecture {} takes {:?} images, data set {} has {:?}",
            a.arch,
            &shape[0][1..],
            a.data,
            want
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        optimizer: match a.optimizer {
            Opt::Adamw => OptimizerKind::Adamw,
            Opt::Sgd => OptimizerKind::Sgd,
        },
        seed: a.seed,
        max_steps: a.max_steps,
        ..Default::default()
    };
    let grad_quant = a
        .grad_bits
        .map(|k| GradQuant::new(k, a.seed))
        .transpose()
        .context("--grad-bits")?;
    let mut exec = Executor::new(g)?;
    let steps = train_set.n.div_ceil(a.batch) as u64;
    let t0 = std::time::Instant::now();
    let mut pb = bar(steps, "epoch 1");
    let mut log = Vec::new();
    let mut last_acc = None;
    train(
        &mut exec,
        &train_set,
        Some(&test_set),
        &cfg,
        None,
        grad_quant.as_ref().map(|q| q as &dyn GradTransform),
        &mut |ev| match ev {
            TrainEvent::Step {
                epoch, step, loss, ..
            } => {
                pb.set_position(*step as u64 + 1);
                if step % 50 == 0 {
                    pb.set_message(format!("epoch {} loss {loss:.3}", epoch + 1));
                }
            }
            TrainEvent::Epoch {
                epoch,
                mean_loss,
                test,
            } => {
                pb.finish_and_clear();
                let acc = test.as_ref().map(|t| t.accuracy).unwrap_or(f64::NAN);
                last_acc = Some(acc);
                println!(
                    "epoch {:>2}/{}  loss {mean_loss:.4}  test top-1 {:.2} %  [{:.0} s]",
                    epoch + 1,
                    cfg.epochs,
                    100.0 * acc,
                    t0.elapsed().as_secs_f64()
                );
                log.push(serde_json::json!({"epoch": epoch + 1, "loss": mean_loss, "test_accuracy": acc, "seconds": t0.elapsed().as_secs_f64()}));
                pb = bar(steps, &format!("epoch {}", epoch + 2));
            }
        },
    )?;
    pb.finish_and_clear();
    let g = exec.graph().clone();
    let st = a.out.join(format!("{}.safetensors", a.arch));
    let onnx = a.out.join(format!("{}.onnx", a.arch));
    let meta = [
        ("arch".to_string(), a.arch.clone()),
        ("data".to_string(), a.data.clone()),
    ]
    .into_iter()
    .collect();
    mixprec_graph::save_safetensors(&g, &st, Some(meta))?;
    mixprec_graph::save_onnx(&g, &onnx)?;
    // The exported ONNX must re-import to identical outputs.
    let back = Executor::new(mixprec_graph::load_onnx(&onnx)?)?;
    let (x, _) = test_set.batch(0, 100.min(test_set.n));
    let n = x.len() / want.iter().product::<usize>();
    let a_out = exec
        .predict(x, &want, None)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let b_out = back
        .predict(x, &want, None)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let diff = a_out
        .iter()
        .zip(&b_out)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    if diff != 0.0 {
        bail!("the exported ONNX differs from the trained model by {diff} on {n} images");
    }
    let summary = serde_json::json!({
        "arch": a.arch, "data": a.data, "config": cfg, "epochs": log,
        "grad_bits": a.grad_bits, "final_test_accuracy": last_acc,
        "seconds": t0.elapsed().as_secs_f64(),
        "onnx_reimport_max_abs_diff": diff,
    });
    mixprec_graph::write_atomic(
        &a.out.join("train.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!(
        "saved {} and {} (re-imported ONNX identical on {n} test images); {:.0} s total",
        st.display(),
        onnx.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
