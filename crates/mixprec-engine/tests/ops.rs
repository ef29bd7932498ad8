//! The integer engine on the operators of Inception / DenseNet / SqueezeNet and
//! squeeze-and-excitation blocks: Concat, Sigmoid / Tanh / LeakyRelu (lookup tables), Mul of two
//! activations (equal shape and per-channel broadcast), per-channel broadcast Add, Transpose and
//! GlobalMaxPool. Each small graph is
//! lowered, run on every available backend and checked code for code against the independent
//! `f64` simulation on every tensor, against the float graph within a few quantization steps,
//! and through the model file; a hand-computed Concat checks the rescaling rule itself.

use mixprec_data::Dataset;
use mixprec_engine::model::UnaryFn;
use mixprec_engine::{
    lower_with_data, lower_with_ranges, ActivationRanges, Backend, QuantModel, Step,
};
use mixprec_exec::models::GraphBuilder;
use mixprec_exec::{calibrate, Executor};
use mixprec_graph::{Graph, Op, Tensor, Window};
mod common;
use common::{odd_policy, policy};
use mixprec_quant::Policy;

/// Deterministic pseudo-random values in [-1, 1).
fn synthetic(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

const C: usize = 3;
const H: usize = 6;
const W: usize = 6;

fn executor(g: &Graph) -> Executor {
    let mut e = Executor::new(g.clone()).unwrap();
    e.free_batch_dim();
    e
}

fn gap_fc(mut b: GraphBuilder, x: mixprec_graph::ValueId, c: usize) -> Graph {
    let p = b.node("gap", Op::GlobalAveragePool, vec![x]);
    let f = b.node("flatten", Op::Flatten { axis: 1 }, vec![p]);
    let y = b.fc("fc", f, c, 4);
    b.finish(y)
}

/// Lowers `g` (calibrated on synthetic images), checks engine == simulation on every tensor
/// and backend, closeness to the float graph, and the model file; returns the model.
fn check(g: &Graph, bits: &[u8]) -> QuantModel {
    check_with(g, &policy(g, bits), bits == [8])
}

/// [`check`] under policy `p`; `float` also compares the output with the float graph.
fn check_with(g: &Graph, p: &Policy, float: bool) -> QuantModel {
    let exec = executor(g);
    let n = 24;
    let calib = Dataset::from_parts(
        "synthetic",
        synthetic(n * C * H * W, 1),
        vec![0; n],
        n,
        C,
        H,
        W,
        vec!["a".into()],
    )
    .unwrap();
    let ranges = calibrate(&exec, &calib, "min-max", p).unwrap();
    let m = lower_with_data(g, p, &ranges, &calib.images, calib.n).unwrap();
    let batch = 3;
    let x = synthetic(batch * C * H * W, 7);
    let sim = m.simulate(&x, batch).unwrap();
    let n_code = m.tensors().iter().filter(|t| t.params.is_some()).count();
    assert_eq!(sim.codes.len(), n_code);
    for backend in [Backend::Generic, Backend::Avx2, Backend::Avx512Vnni] {
        if !backend.is_available() {
            eprintln!("{backend:?} not available on this CPU");
            continue;
        }
        let t = m.trace(backend, &x, batch).unwrap();
        assert_eq!(t.codes.len(), n_code);
        for (name, want) in &sim.codes {
            let got = &t.codes[name];
            let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
            assert_eq!(
                diff, 0,
                "{backend:?}: tensor '{name}' differs in {diff} codes"
            );
        }
        assert_eq!(t.output, sim.output, "{backend:?}: output");
        assert_eq!(m.run_with(backend, &x, batch).unwrap(), t.output);
    }
    assert_eq!(m.run(&x, batch).unwrap(), sim.output);
    // Close to the float graph: the 8-bit model stays within a small fraction of the logits'
    // spread.
    if float {
        let yf: Vec<f32> = exec
            .predict(&x, &[C, H, W], None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let spread = yf.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = yf
            .iter()
            .zip(&sim.output)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("max |float - engine| = {err} (max |float| = {spread})");
        assert!(err < 0.05 * spread.max(1e-3), "{err} vs {spread}");
    }
    // The model file keeps the new steps (format version 3; version 1 without them).
    let bytes = m.to_bytes();
    let v3 = m.steps().iter().any(|s| {
        matches!(
            s,
            Step::Concat(_) | Step::Lookup(_) | Step::Mul(_) | Step::Transpose(_)
        ) || matches!(s, Step::Add(a) if a.b_inner != 1)
    });
    assert_eq!(m.format_version(), if v3 { 3 } else { 1 });
    let back = QuantModel::from_bytes(&bytes).unwrap();
    assert_eq!(
        back.run_with(Backend::Generic, &x, batch).unwrap(),
        sim.output
    );
    m
}

fn count(m: &QuantModel, f: impl Fn(&Step) -> bool) -> usize {
    m.steps().iter().filter(|s| f(s)).count()
}

/// Inception-style block: two branches (3×3 + ReLU, 1×1) concatenated along channels, then a
/// 3×3 conv over the concatenation, plus a second Concat whose inputs share one quantization.
fn inception() -> Graph {
    let (mut b, x) = GraphBuilder::new("inception", C, H, W, 3);
    let a = b.conv("branch_a", x, C, 4, 3, 1, 1, true);
    let a = b.node("relu_a", Op::Relu, vec![a]);
    let c = b.conv("branch_b", x, C, 5, 1, 1, 0, true);
    let cat = b.node("concat", Op::Concat { axis: 1 }, vec![a, c]);
    let y = b.conv("mix", cat, 9, 6, 3, 1, 1, true);
    let y = b.node("relu_mix", Op::Relu, vec![y]);
    // DenseNet-style: concatenate a tensor with itself (one quantization: a plain copy).
    let d = b.node("concat_self", Op::Concat { axis: -3 }, vec![y, y]);
    gap_fc(b, d, 12)
}

#[test]
fn concat_matches_the_simulation_bit_exactly() {
    let g = inception();
    for bits in [&[8u8][..], &[4, 8]] {
        let m = check(&g, bits);
        let concats: Vec<_> = m
            .steps()
            .iter()
            .filter_map(|s| match s {
                Step::Concat(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(concats.len(), 2);
        // The branches are quantized on their own and rescaled to the mixing conv's input
        // unless their quantization is already the same (then copied).
        let c0 = concats[0];
        assert_eq!(c0.blocks, vec![4 * H * W, 5 * H * W]);
        assert!(c0.multipliers.iter().any(|m| m.is_some()));
        let po = m.tensors()[c0.output].params;
        for (&t, d) in c0.inputs.iter().zip(&c0.multipliers) {
            assert_eq!(d.is_none(), m.tensors()[t].params == po);
        }
        // The same tensor twice: copies.
        assert!(concats[1].multipliers.iter().all(|m| m.is_none()));
    }
    // Signed 7-bit activation codes (offset by 128) on the concatenation.
    let m = check_with(&g, &odd_policy(&g), false);
    let offsets: Vec<i32> = m
        .tensors()
        .iter()
        .filter_map(|t| t.params.map(|p| p.offset))
        .collect();
    assert!(
        offsets.contains(&128) && offsets.contains(&0),
        "{offsets:?}"
    );
}

/// Squeeze-and-excitation (GAP → 1×1 → ReLU → 1×1 → Sigmoid → channel-wise Mul) followed by
/// a per-channel Add of the gate, SiLU `y·sigmoid(y)`, a Tanh and a LeakyRelu.
fn se_block() -> Graph {
    let (mut b, x) = GraphBuilder::new("se", C, H, W, 5);
    let y = b.conv("stem", x, C, 8, 3, 1, 1, true);
    let s = b.node("squeeze", Op::GlobalAveragePool, vec![y]);
    let s = b.conv("reduce", s, 8, 4, 1, 1, 0, true);
    let s = b.node("relu_se", Op::Relu, vec![s]);
    let s = b.conv("expand", s, 4, 8, 1, 1, 0, true);
    let s = b.node("gate", Op::Sigmoid, vec![s]);
    // The broadcast operand first: Mul([N, C, 1, 1], [N, C, H, W]).
    let y = b.node("excite", Op::Mul, vec![s, y]);
    // A per-channel broadcast Add of the gate.
    let y = b.node("shift", Op::Add, vec![y, s]);
    let sg = b.node("silu_sigmoid", Op::Sigmoid, vec![y]);
    let y = b.node("silu", Op::Mul, vec![y, sg]);
    let y = b.conv("conv2", y, 8, 6, 3, 1, 1, true);
    let y = b.node("tanh", Op::Tanh, vec![y]);
    let y = b.conv("conv3", y, 6, 6, 1, 1, 0, true);
    let y = b.node("leaky", Op::LeakyRelu { alpha: 0.1 }, vec![y]);
    gap_fc(b, y, 6)
}

#[test]
fn sigmoid_and_mul_match_the_simulation_bit_exactly() {
    let g = se_block();
    for bits in [&[8u8][..], &[4, 8, 2]] {
        let m = check(&g, bits);
        assert_eq!(count(&m, |s| matches!(s, Step::Lookup(_))), 4);
        let muls: Vec<_> = m
            .steps()
            .iter()
            .filter_map(|s| match s {
                Step::Mul(x) => Some(x),
                _ => None,
            })
            .collect();
        assert_eq!(muls.len(), 2);
        // The excitation broadcasts one gate value over each H×W plane, SiLU is elementwise.
        assert_eq!(muls[0].inner, H * W);
        assert_eq!(muls[1].inner, 1);
        let adds: Vec<_> = m
            .steps()
            .iter()
            .filter_map(|s| match s {
                Step::Add(x) => Some(x),
                _ => None,
            })
            .collect();
        assert_eq!(adds.len(), 1);
        assert_eq!(adds[0].b_inner, H * W);
        // The gate's table is monotone and spans most of the output codes.
        for s in m.steps() {
            if let Step::Lookup(l) = s {
                if l.function == UnaryFn::Sigmoid {
                    assert!(l.table.windows(2).all(|w| w[0] <= w[1]), "{}", l.name);
                }
            }
        }
    }
}

#[test]
fn concat_along_the_width_and_a_square() {
    // Concat on the last axis (several blocks per sample) and Mul of a tensor with itself.
    let (mut b, x) = GraphBuilder::new("wide", C, H, W, 6);
    let y = b.conv("left", x, C, 4, 3, 1, 1, true);
    let z = b.conv("right", x, C, 4, 1, 1, 0, true);
    let z = b.node("right_relu", Op::Relu, vec![z]);
    let cat = b.node("cat_w", Op::Concat { axis: 3 }, vec![y, z]);
    let sq = b.node("square", Op::Mul, vec![cat, cat]);
    let y = b.conv("mix", sq, 4, 5, 3, 1, 1, true);
    let g = gap_fc(b, y, 5);
    let m = check(&g, &[8]);
    let Some(Step::Concat(c)) = m.steps().iter().find(|s| matches!(s, Step::Concat(_))) else {
        panic!("no Concat step");
    };
    assert_eq!((c.outer, c.blocks.clone()), (4 * H, vec![W, W]));
    // Row r of channel k of the concatenation is row r of `left` followed by row r of
    // `right_relu` (each requantized or copied).
    let x = synthetic(C * H * W, 8);
    let t = m.trace(Backend::Generic, &x, 1).unwrap();
    let params = |name: &str| {
        m.tensors()
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.params)
            .unwrap()
    };
    let (po, pl) = (params("cat_w"), params("left"));
    let (k, r) = (2, 3);
    let row = &t.codes["cat_w"][(k * H + r) * 2 * W..][..2 * W];
    let left = &t.codes["left"][(k * H + r) * W..][..W];
    for (got, &q) in row[..W].iter().zip(left) {
        let want = po.quantize(pl.dequantize(q));
        assert!((*got as i32 - want as i32).abs() <= 1, "{got} vs {want}");
    }
}

#[test]
fn global_max_pool_is_a_max_pool_over_the_plane() {
    let (mut b, x) = GraphBuilder::new("gmp", C, H, W, 4);
    let y = b.conv("conv", x, C, 5, 3, 1, 1, true);
    let p = b.node("gmp", Op::GlobalMaxPool, vec![y]);
    let f = b.node("flatten", Op::Flatten { axis: 1 }, vec![p]);
    let out = b.fc("fc", f, 5, 4);
    let g = b.finish(out);
    let m = check(&g, &[8]);
    assert_eq!(count(&m, |s| matches!(s, Step::MaxPool(_))), 1);
    let x = synthetic(2 * C * H * W, 5);
    let t = m.trace(Backend::Generic, &x, 2).unwrap();
    let want: Vec<u8> = t.codes["conv"]
        .chunks(H * W)
        .map(|plane| *plane.iter().max().unwrap())
        .collect();
    assert_eq!(t.codes["gmp"], want);
}

#[test]
fn squeeze_excitation_with_signed_activation_codes() {
    let g = se_block();
    let m = check_with(&g, &odd_policy(&g), false);
    assert_eq!(count(&m, |s| matches!(s, Step::Mul(_))), 2);
    assert!(m
        .tensors()
        .iter()
        .any(|t| t.params.is_some_and(|p| p.offset == 128)));
}

#[test]
fn transpose_moves_codes() {
    let (mut b, x) = GraphBuilder::new("tr", C, H, W, 9);
    let y = b.conv("conv", x, C, 4, 3, 1, 1, true);
    let y = b.node("relu", Op::Relu, vec![y]);
    // NCHW -> NHWC -> NCHW: the second conv sees the original layout.
    let t = b.node(
        "to_nhwc",
        Op::Transpose {
            perm: Some(vec![0, 2, 3, 1]),
        },
        vec![y],
    );
    let t = b.node(
        "to_nchw",
        Op::Transpose {
            perm: Some(vec![0, 3, 1, 2]),
        },
        vec![t],
    );
    let y = b.conv("conv2", t, 4, 5, 3, 1, 1, true);
    let g = gap_fc(b, y, 5);
    let m = check(&g, &[8]);
    assert_eq!(count(&m, |s| matches!(s, Step::Transpose(_))), 2);
    // The codes come back in place after both permutations.
    let x = synthetic(2 * C * H * W, 11);
    let t = m.trace(Backend::Generic, &x, 2).unwrap();
    assert_eq!(t.codes["relu"], t.codes["to_nchw"]);
    assert_ne!(t.codes["relu"], t.codes["to_nhwc"]);
    // One element by hand: sample 1, channel 2, row 3, column 4.
    let at_chw = t.codes["relu"][((4 + 2) * H + 3) * W + 4];
    let at_hwc = t.codes["to_nhwc"][H * W * 4 + (3 * W + 4) * 4 + 2];
    assert_eq!(at_chw, at_hwc);
}

/// Concat of the quantized input (scale 0.01) with a 1×1 conv output (scale 0.02) into the
/// input of a conv quantized at scale 0.02: the first part is rescaled by exactly 1/2 with
/// rounding half away from zero, the second copied.
#[test]
fn concat_rescales_by_hand() {
    let (mut b, x) = GraphBuilder::new("hand", 1, 2, 2, 0);
    let one = |b: &mut GraphBuilder, name: &str, cin: usize, v: f32| {
        b.constant(
            &format!("{name}.weight"),
            Tensor::f32(vec![1, cin, 1, 1], vec![v; cin]).unwrap(),
        )
    };
    let w1 = one(&mut b, "double", 1, 2.0);
    let y = b.node(
        "double",
        Op::Conv {
            window: Window {
                kernel: vec![1, 1],
                ..Default::default()
            },
            group: 1,
        },
        vec![x, w1],
    );
    let cat = b.node("cat", Op::Concat { axis: 1 }, vec![x, y]);
    let w2 = one(&mut b, "sum", 2, 1.0);
    let out = b.node(
        "sum",
        Op::Conv {
            window: Window {
                kernel: vec![1, 1],
                ..Default::default()
            },
            group: 1,
        },
        vec![cat, w2],
    );
    let mut g = b.g;
    g.values[out].name = "logits".into();
    g.outputs.push(out);

    let p = policy(&g, &[8]);
    let ranges: ActivationRanges = [
        ("double".to_string(), (0.0, 2.55)),
        ("sum".to_string(), (0.0, 5.1)),
    ]
    .into();
    let tensor_ranges: ActivationRanges = [("double".to_string(), (0.0, 5.1))].into();
    let m = lower_with_ranges(&g, &p, &ranges, &tensor_ranges).unwrap();
    let Some(Step::Concat(c)) = m.steps().iter().find(|s| matches!(s, Step::Concat(_))) else {
        panic!("no Concat step");
    };
    assert_eq!(c.multipliers[0].map(|d| d.to_f64()), Some(0.5));
    assert_eq!(c.multipliers[1], None);
    // Input codes 1, 3, 5, 100 (x / 0.01); the doubled branch at scale 0.02 has the same codes.
    let x = [0.01f32, 0.03, 0.05, 1.0];
    let t = m.trace(Backend::best(), &x, 1).unwrap();
    assert_eq!(t.codes["input:q"], vec![1, 3, 5, 100]);
    assert_eq!(t.codes["double"], vec![1, 3, 5, 100]);
    // round_half_away(q / 2): 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, 50.
    assert_eq!(t.codes["cat"], vec![1, 2, 3, 50, 1, 3, 5, 100]);
    let sim = m.simulate(&x, 1).unwrap();
    assert_eq!(sim.codes, t.codes);
    assert_eq!(m.trace(Backend::Generic, &x, 1).unwrap().codes, sim.codes);
}

#[test]
fn unsupported_operators_are_errors_naming_the_node() {
    let (mut b, x) = GraphBuilder::new("bad", C, H, W, 1);
    let y = b.conv("conv", x, C, 4, 3, 1, 1, true);
    let y = b.node("exp_in_the_middle", Op::Exp, vec![y]);
    let g = gap_fc(b, y, 4);
    let p = policy(&g, &[8]);
    let ranges_of = |g: &Graph| -> ActivationRanges {
        g.layers()
            .iter()
            .map(|l| (l.name.clone(), (-1.0, 1.0)))
            .collect()
    };
    let e = mixprec_engine::lower(&g, &p, &ranges_of(&g))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exp_in_the_middle") && e.contains("Exp"), "{e}");
    // A Mul whose operands broadcast along a spatial axis.
    let (mut b, x) = GraphBuilder::new("bad_mul", C, H, W, 1);
    let y = b.conv("conv", x, C, 4, 3, 1, 1, true);
    let r = b.node("row", Op::GlobalAveragePool, vec![y]);
    let r = b.conv("row_conv", r, 4, W, 1, 1, 0, true);
    let r = b.node(
        "row_t",
        Op::Transpose {
            perm: Some(vec![0, 2, 3, 1]),
        },
        vec![r],
    );
    let y = b.node("odd_mul", Op::Mul, vec![y, r]);
    let g = gap_fc(b, y, 4);
    let e = mixprec_engine::lower(&g, &policy(&g, &[8]), &ranges_of(&g))
        .unwrap_err()
        .to_string();
    assert!(e.contains("odd_mul"), "{e}");
    // Transposing the batch axis away.
    let (mut b, x) = GraphBuilder::new("bad_t", C, H, W, 1);
    let y = b.conv("conv", x, C, 4, 3, 1, 1, true);
    let y = b.node(
        "batch_swap",
        Op::Transpose {
            perm: Some(vec![1, 0, 2, 3]),
        },
        vec![y],
    );
    let y = b.node(
        "batch_back",
        Op::Transpose {
            perm: Some(vec![1, 0, 2, 3]),
        },
        vec![y],
    );
    let g = gap_fc(b, y, 4);
    let e = mixprec_engine::lower(&g, &policy(&g, &[8]), &ranges_of(&g))
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_swap"), "{e}");
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn a_file_claiming_an_older_version_cannot_carry_the_new_steps() {
    let (mut b, x) = GraphBuilder::new("v", C, H, W, 2);
    let y = b.conv("conv", x, C, 4, 3, 1, 1, true);
    let y = b.node("gate", Op::Sigmoid, vec![y]);
    let g = gap_fc(b, y, 4);
    let m = check(&g, &[8]);
    let mut bytes = m.to_bytes();
    assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
    // Rewrite the version as 2 with a valid checksum: the Lookup step needs version 3.
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let n = bytes.len() - 8;
    let sum = fnv1a(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
    let e = QuantModel::from_bytes(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("version 2") && e.contains("needs version 3"),
        "{e}"
    );
    // A damaged table is refused by validation.
    let mut bytes = m.to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let at = text.find("\"table\":[").unwrap() + "\"table\":[".len();
    // Drop the first entry of the table ("N," -> spaces keep the lengths).
    let comma = at + text[at..].find(',').unwrap();
    for byte in &mut bytes[at..=comma] {
        *byte = b' ';
    }
    let n = bytes.len() - 8;
    let sum = fnv1a(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
    let e = QuantModel::from_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("gate") && e.contains("lookup"), "{e}");
}
