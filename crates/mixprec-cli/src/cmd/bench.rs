//! `mixprec bench MODEL`: forward throughput and forward+backward time.

use anyhow::{Context, Result};
use candle_core::Tensor;
use mixprec_exec::Executor;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: .onnx, .safetensors from `mixprec train`, or `default`.
    pub model: String,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Timed repetitions per measurement (median reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Also time forward+backward (loss gradient w.r.t. all weights).
    #[arg(long)]
    pub backward: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run `bench`.
pub fn run(a: Args) -> Result<()> {
    let g = crate::model::load(&a.model)?;
    let mut exec = Executor::new(g)?;
    exec.free_batch_dim();
    let sample = mixprec_graph::input_shapes_for_batch(exec.graph(), 1)?[0][1..].to_vec();
    let mut rows = Vec::new();
    for &b in &a.batch {
        let b = exec.usable_batch(&sample, b)?;
        let mut shape = vec![b];
        shape.extend_from_slice(&sample);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 2654435761usize) % 256) as f32)
            .collect();
        let x = Tensor::from_vec(data, shape.as_slice(), exec.device())?;
        exec.forward(std::slice::from_ref(&x))?;
        let times: Vec<f64> = (0..a.iters.max(1))
            .map(|_| {
                let t = std::time::Instant::now();
                exec.forward(std::slice::from_ref(&x))
                    .map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        let fwd = median(times);
        let mut row = serde_json::json!({"batch": b, "forward_ms": fwd * 1e3, "images_per_s": b as f64 / fwd});
        if a.backward {
            let labels: Vec<u32> = (0..b as u32).map(|i| i % 2).collect();
            let weights = mixprec_exec::trainable_params(&exec);
            let times: Vec<f64> = (0..a.iters.max(1))
                .map(|_| {
                    let t = std::time::Instant::now();
                    exec.loss_and_grads(&x, &labels, &weights)
                        .map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<_, _>>()
                .context("forward+backward")?;
            row["forward_backward_ms"] = serde_json::json!(median(times) * 1e3);
        }
        if !a.json {
            print!(
                "batch {b:>4}: forward {:>9.3} ms  ({:>8.1} images/s)",
                fwd * 1e3,
                b as f64 / fwd
            );
            if let Some(fb) = row.get("forward_backward_ms") {
                print!("  forward+backward {:>9.3} ms", fb.as_f64().unwrap_or(0.0));
            }
            println!();
        }
        rows.push(row);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"model": a.model, "results": rows}))?
        );
    }
    Ok(())
}
