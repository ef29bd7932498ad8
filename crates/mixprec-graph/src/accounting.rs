//! Per-layer accounting: parameters, multiply-accumulates and output activation sizes, for one
//! sample (symbolic batch dimensions set to 1). Recurrent operators (RNN, GRU, LSTM) cost,
//! per step, sample and direction, gates·H·(I + H) MACs (4 for LSTM, 3 for GRU, 1 for RNN);
//! a symbolic sequence axis is set to 1 like the batch, so such a model is counted for one
//! step. A recurrent node whose W and R are constant is a quantizable layer
//! ([`LayerKind::Recurrent`]): its row in [`ModelStats::layers`] has `weights` = |W| + |R|,
//! `params` = |W| + |R| + |B| + |P| and `macs` = per-step MACs · steps · directions.
//! Recurrent nodes with non-constant weights stay float and are listed apart in
//! [`ModelStats::recurrent`].

use crate::error::Result;
use crate::infer::{infer, input_shapes_for_batch, Inferred};
use crate::ir::{Graph, LayerKind, Op};
use serde::Serialize;

/// Size and cost of one layer with weights.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerStats {
    /// Layer (node) name.
    pub name: String,
    /// ONNX operator.
    pub op: String,
    /// Operator family.
    pub kind: LayerKind,
    /// Weight shape.
    pub weight_shape: Vec<usize>,
    /// Weight elements (W + R for a recurrent layer).
    pub weights: u64,
    /// Weight + bias elements (W + R + B + P for a recurrent layer).
    pub params: u64,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Elements of the layer's input activation per sample.
    pub input_elems: u64,
    /// Elements of the layer's output activation per sample.
    pub output_elems: u64,
    /// Output shape for batch 1.
    pub output_shape: Vec<usize>,
}

/// Size and cost of one recurrent operator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecurrentStats {
    /// Node name.
    pub name: String,
    /// ONNX operator (RNN, GRU, LSTM).
    pub op: String,
    /// Elements of W, R, B and P.
    pub params: u64,
    /// gates·hidden·(input + hidden): MACs of one step of one direction for one sample.
    pub macs_per_step: u64,
    /// Time steps for batch 1 (1 for a symbolic sequence axis).
    pub steps: u64,
    /// Directions (2 when bidirectional).
    pub directions: u64,
    /// macs_per_step · steps · directions.
    pub macs: u64,
}

/// Whole-model totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelStats {
    /// One row per layer with weights.
    pub layers: Vec<LayerStats>,
    /// All float parameters of the model (BatchNorm statistics included).
    pub total_params: u64,
    /// Sum of the layers' MACs.
    pub total_macs: u64,
    /// Recurrent operators that are not quantizable layers (W or R not constant), in node
    /// order; their MACs are not in `total_macs`.
    pub recurrent: Vec<RecurrentStats>,
    /// Sum of the MACs of the operators in `recurrent`.
    pub recurrent_macs: u64,
    /// Sum of the layers' output activation elements.
    pub total_output_elems: u64,
    /// Number of nodes.
    pub nodes: usize,
}

/// Compute [`ModelStats`] for a graph at batch 1.
pub fn model_stats(g: &Graph) -> Result<ModelStats> {
    let inf = infer(g, &input_shapes_for_batch(g, 1)?)?;
    let mut layers = Vec::new();
    let g_layers = g.layers();
    for l in &g_layers {
        let node = &g.nodes[l.node];
        let w = &g.initializers[&l.weight];
        let out = inf.shape(g, node.outputs[0])?.to_vec();
        let x = node
            .input(0)
            .map(|v| inf.shape(g, v).map(|s| s.to_vec()))
            .transpose()?
            .unwrap_or_default();
        let out_elems: u64 = out.iter().product::<usize>() as u64;
        let macs = match l.kind {
            // Every output element needs Cin/group × kernel MACs: exactly the weight's per-filter size.
            LayerKind::Conv => out_elems * w.shape[1..].iter().product::<usize>() as u64,
            LayerKind::Gemm => {
                let k = if matches!(node.op, crate::ir::Op::Gemm { trans_b: true, .. }) {
                    w.shape[1]
                } else {
                    w.shape[0]
                };
                out_elems * k as u64
            }
            LayerKind::MatMul => {
                out_elems
                    * w.shape
                        .get(w.shape.len().saturating_sub(2))
                        .copied()
                        .unwrap_or(1) as u64
            }
            LayerKind::Recurrent => recurrent_stats(g, &inf, l.node)?.macs,
        };
        let weights: usize = g
            .layer_weights(l)
            .iter()
            .filter_map(|v| g.initializers.get(v))
            .map(|t| t.len())
            .sum();
        let mut extra = l.bias.map(|b| g.initializers[&b].len()).unwrap_or(0);
        if l.kind == LayerKind::Recurrent {
            // Peepholes are float parameters of the layer too.
            extra += node
                .input(7)
                .and_then(|v| g.initializers.get(&v))
                .map(|t| t.len())
                .unwrap_or(0);
        }
        layers.push(LayerStats {
            name: l.name.clone(),
            op: node.op.onnx_name().into(),
            kind: l.kind,
            weight_shape: w.shape.clone(),
            weights: weights as u64,
            params: (weights + extra) as u64,
            macs,
            input_elems: x.iter().product::<usize>() as u64,
            output_elems: out_elems,
            output_shape: out,
        });
    }
    let mut recurrent = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::Recurrent(_)) && !g_layers.iter().any(|l| l.node == i) {
            recurrent.push(recurrent_stats(g, &inf, i)?);
        }
    }
    Ok(ModelStats {
        recurrent_macs: recurrent.iter().map(|r| r.macs).sum(),
        recurrent,
        total_params: g.parameter_count() as u64,
        total_macs: layers.iter().map(|l| l.macs).sum(),
        total_output_elems: layers.iter().map(|l| l.output_elems).sum(),
        nodes: g.nodes.len(),
        layers,
    })
}

/// [`RecurrentStats`] of recurrent node `node` (all-zero MACs when it is not recurrent).
fn recurrent_stats(g: &Graph, inf: &Inferred, node: usize) -> Result<RecurrentStats> {
    let n = &g.nodes[node];
    let x = n
        .input(0)
        .map(|v| inf.shape(g, v).map(|s| s.to_vec()))
        .transpose()?
        .unwrap_or_default();
    let (steps, input, h, gates, directions) = match &n.op {
        Op::Recurrent(r) => {
            let (steps, input) = match x.as_slice() {
                [a, b, i] => (if r.batch_first { *b } else { *a }, *i),
                _ => (0, 0),
            };
            (
                steps,
                input,
                r.hidden_size as u64,
                r.kind.gates() as u64,
                r.direction.count() as u64,
            )
        }
        _ => (0, 0, 0, 0, 0),
    };
    let params = [1usize, 2, 3, 7]
        .iter()
        .filter_map(|&i| n.input(i))
        .filter_map(|v| g.initializers.get(&v))
        .map(|t| t.len() as u64)
        .sum();
    let macs_per_step = gates
        .saturating_mul(h)
        .saturating_mul((input as u64).saturating_add(h));
    Ok(RecurrentStats {
        name: n.name.clone(),
        op: n.op.onnx_name().into(),
        params,
        macs_per_step,
        steps: steps as u64,
        directions,
        macs: macs_per_step
            .saturating_mul(steps as u64)
            .saturating_mul(directions),
    })
}
