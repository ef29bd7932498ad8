//! ONNX import of arbitrary bytes, then shape inference, accounting and an export/re-import
//! round trip of whatever imports. Must never panic, overflow the stack or allocate without
//! bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = mixprec_graph::import_onnx_bytes(data) else {
        return;
    };
    if let Ok(shapes) = mixprec_graph::input_shapes_for_batch(&g, 1) {
        let _ = mixprec_graph::infer(&g, &shapes);
    }
    let _ = mixprec_graph::model_stats(&g);
    if let Ok(m) = mixprec_graph::to_model_proto(&g) {
        let _ = mixprec_graph::import_onnx_bytes(&m.encode_to_vec());
    }
});
