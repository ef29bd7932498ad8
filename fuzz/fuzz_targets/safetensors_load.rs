//! Loading arbitrary bytes as a safetensors weight file into a small graph (two float
//! initializers, `w` [2, 3] and `b` [3]), and reading its metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mixprec_graph::{Graph, Tensor};

fn graph() -> Graph {
    let mut g = Graph::default();
    let w = g.add_value("w");
    let b = g.add_value("b");
    g.initializers
        .insert(w, Tensor::f32(vec![2, 3], vec![0.0; 6]).expect("shape"));
    g.initializers
        .insert(b, Tensor::f32(vec![3], vec![0.0; 3]).expect("shape"));
    g
}

fuzz_target!(|data: &[u8]| {
    let path =
        std::env::temp_dir().join(format!("mixprec-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let mut g = graph();
    if mixprec_graph::load_safetensors(&mut g, &path).is_ok() {
        // Loaded weights keep their shapes.
        for t in g.initializers.values() {
            assert_eq!(t.len(), t.to_f32().len());
        }
    }
    let _ = mixprec_graph::safetensors_metadata(&path);
});
