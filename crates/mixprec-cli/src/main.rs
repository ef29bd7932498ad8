//! The `mixprec` command-line tool.

mod cmd;
mod model;
mod npy;
mod pipeline;
mod progress;
mod report;
mod report_data;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mixprec: mixed-precision quantization of neural networks.
#[derive(Parser)]
#[command(name = "mixprec", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole mixed-precision job on the built-in LeNet-5 and embedded MNIST subset:
    /// sensitivity, ILP allocation under a size budget, evaluation, export and report.
    Demo(cmd::demo::Args),
    /// Per-layer table of a model: op, weight shape, parameters, MACs, activation sizes.
    Inspect(cmd::inspect::Args),
    /// Top-1 accuracy of a model on a data set.
    Eval(cmd::eval::Args),
    /// Train a built-in architecture (LeNet-5, ResNet-20) and save safetensors + ONNX.
    Train(cmd::train::Args),
    /// Export a model (ONNX, safetensors, or a built-in) to ONNX.
    Export(cmd::export::Args),
    /// Mixed-precision quantization under budgets (--budget size=25% …: sensitivity,
    /// allocation, evaluation, export, report), or uniform (--uniform w4a8).
    Quantize(cmd::quantize::Args),
    /// Re-apply a policy JSON (hand-edited or from another run): accuracy, size, export.
    Apply(cmd::apply::Args),
    /// Every allocator (and metric) on the same model, data and budget: one table.
    Compare(cmd::compare::Args),
    /// Per-layer latency LUT of the integer kernels and fp32 (for the latency cost model).
    Profile(cmd::profile::Args),
    /// Time forward and forward+backward passes of a model.
    Bench(cmd::bench::Args),
    /// One forward pass on inputs from .npy or ONNX .pb files; outputs to .npz or .npy.
    Run(cmd::run::Args),
    /// Per-layer sensitivity table [layer × option] of a metric (hessian-trace, output-mse,
    /// kl, sqnr, fisher, hessian-eigen).
    Sensitivity(cmd::sensitivity::Args),
    /// Render a report.json as one self-contained HTML page.
    Report(cmd::report::Args),
    /// Everything mixprec knows: architectures, operators, data sets.
    List(cmd::list::Args),
}

/// glibc hands freed blocks of a few MiB back to the OS and faults them in again on the next
/// allocation; tensors of that size are allocated and freed on every forward and backward pass
/// (a `hessian-trace` run on ResNet-8 spent over a third of its time in page faults). Keep
/// blocks up to 32 MiB on the heap and trim it only beyond 512 MiB of free memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    // Second-order gradients need this before any thread touches candle.
    mixprec_exec::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Apply(a) => cmd::apply::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Profile(a) => cmd::profile::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Sensitivity(a) => cmd::sensitivity::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::List(a) => cmd::list::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
