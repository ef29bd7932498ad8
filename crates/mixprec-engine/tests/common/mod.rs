//! Quantization policies shared by the engine's integration tests.

use mixprec_graph::Graph;
use mixprec_quant::{Granularity, Policy, QScheme, QuantKind};

/// A uniform scheme.
pub fn uniform(bits: u8, symmetric: bool, g: Granularity) -> QScheme {
    QScheme::new(QuantKind::Uniform, bits, symmetric, g)
}

/// Per-layer weight bits (cycled over the layers), 8-bit asymmetric activations.
pub fn policy(g: &Graph, bits: &[u8]) -> Policy {
    let mut p = Policy::new();
    for (i, l) in g.layers().iter().enumerate() {
        p.set_weight(
            &l.name,
            uniform(bits[i % bits.len()], true, Granularity::Channel),
        );
        p.set_activation(&l.name, uniform(8, false, Granularity::Tensor));
    }
    p
}

/// Per-tensor weights of 8, 6 and 3 bits, activations alternately 8-bit asymmetric and 7-bit
/// symmetric (signed codes, stored offset by 128).
pub fn odd_policy(g: &Graph) -> Policy {
    let mut p = Policy::new();
    for (i, l) in g.layers().iter().enumerate() {
        p.set_weight(
            &l.name,
            uniform([8, 6, 3][i % 3], true, Granularity::Tensor),
        );
        let a = if i % 2 == 0 {
            uniform(8, false, Granularity::Tensor)
        } else {
            uniform(7, true, Granularity::Tensor)
        };
        p.set_activation(&l.name, a);
    }
    p
}
