//! Times `mixprec_exec::conv2d::conv2d` against candle's `Tensor::conv2d` (forward, and forward
//! plus backward of `sum(y)` to input and weight) on LeNet, ResNet-8 and MobileNet-like
//! layers; the fastest of `reps` runs (the machine is shared).
//!
//! `cargo run --release -p mixprec-exec --example conv_bench [reps] [layer-name-filter]`

use candle_core::{Device, Result, Tensor, Var};
use std::time::Instant;

struct Layer {
    name: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: usize,
    groups: usize,
}

const LAYERS: &[Layer] = &[
    Layer {
        name: "lenet conv1",
        x: [64, 1, 28, 28],
        w: [6, 1, 5, 5],
        stride: 1,
        pad: 2,
        groups: 1,
    },
    Layer {
        name: "3x3 16->16 32x32",
        x: [32, 16, 32, 32],
        w: [16, 16, 3, 3],
        stride: 1,
        pad: 1,
        groups: 1,
    },
    Layer {
        name: "resnet8 stem 3->16",
        x: [64, 3, 32, 32],
        w: [16, 3, 3, 3],
        stride: 1,
        pad: 1,
        groups: 1,
    },
    Layer {
        name: "resnet8 16->16",
        x: [64, 16, 32, 32],
        w: [16, 16, 3, 3],
        stride: 1,
        pad: 1,
        groups: 1,
    },
    Layer {
        name: "resnet8 16->32 s2",
        x: [64, 16, 32, 32],
        w: [32, 16, 3, 3],
        stride: 2,
        pad: 1,
        groups: 1,
    },
    Layer {
        name: "resnet8 1x1 16->32 s2",
        x: [64, 16, 32, 32],
        w: [32, 16, 1, 1],
        stride: 2,
        pad: 0,
        groups: 1,
    },
    Layer {
        name: "resnet8 32->32",
        x: [64, 32, 16, 16],
        w: [32, 32, 3, 3],
        stride: 1,
        pad: 1,
        groups: 1,
    },
    Layer {
        name: "resnet8 64->64",
        x: [64, 64, 8, 8],
        w: [64, 64, 3, 3],
        stride: 1,
        pad: 1,
        groups: 1,
    },
    Layer {
        name: "mobilenet stem s2",
        x: [32, 3, 96, 96],
        w: [8, 3, 3, 3],
        stride: 2,
        pad: 1,
        groups: 1,
    },
    Layer {
        name: "mobilenet depthwise",
        x: [32, 64, 48, 48],
        w: [64, 1, 3, 3],
        stride: 1,
        pad: 1,
        groups: 64,
    },
    Layer {
        name: "mobilenet pointwise",
        x: [32, 64, 48, 48],
        w: [128, 64, 1, 1],
        stride: 1,
        pad: 0,
        groups: 1,
    },
    Layer {
        name: "batch 1 16->16",
        x: [1, 16, 32, 32],
        w: [16, 16, 3, 3],
        stride: 1,
        pad: 1,
        groups: 1,
    },
];

fn fill(dims: &[usize], seed: usize) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

fn min_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[0])
}

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let filter = std::env::args().nth(2).unwrap_or_default();
    println!(
        "{:<24} {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7}",
        "layer", "fwd ours", "candle", "ratio", "f+b ours", "candle", "ratio"
    );
    for l in LAYERS.iter().filter(|l| l.name.contains(filter.as_str())) {
        let x = Var::from_tensor(&fill(&l.x, 1)?)?;
        let w = Var::from_tensor(&fill(&l.w, 2)?)?;
        let ours = |x: &Tensor, w: &Tensor| {
            mixprec_exec::conv2d::conv2d(x, w, (l.stride, l.stride), [l.pad; 4], (1, 1), l.groups)
        };
        let theirs = |x: &Tensor, w: &Tensor| x.conv2d(w, l.pad, l.stride, 1, l.groups);
        let fwd_ours = min_ms(reps, || ours(&x, &w).map(drop))?;
        let fwd_theirs = min_ms(reps, || theirs(&x, &w).map(drop))?;
        let fb = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            min_ms(reps, || {
                let g = f(&x, &w)?.sum_all()?.backward()?;
                assert!(g.get(&x).is_some() && g.get(&w).is_some());
                Ok(())
            })
        };
        let fb_ours = fb(&ours)?;
        let fb_theirs = fb(&theirs)?;
        println!(
            "{:<24} {:>8.2}ms {:>8.2}ms {:>6.1}x | {:>8.2}ms {:>8.2}ms {:>6.1}x",
            l.name,
            fwd_ours,
            fwd_theirs,
            fwd_theirs / fwd_ours,
            fb_ours,
            fb_theirs,
            fb_theirs / fb_ours
        );
    }
    Ok(())
}
