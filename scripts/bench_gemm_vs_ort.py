#!/usr/bin/env python3
"""mixprec's integer GEMM / GEMV kernels next to ONNX Runtime, as ratios from one run.

Shapes: weights N x K (default 4096 x 4096) times activations M x K for M in --m (default
1, 16, 128). mixprec side: `examples/gemm_vs_ort.rs` of mixprec-engine (int8 weights x u8
activations -> i32, packed int4 weights x u8 activations -> i32, and int8 GEMM with the
dyadic requantization to u8 fused into it, `gemm_requantize`, reported as the GEMM time plus
the difference `requant_ms`). ONNX Runtime side: tiny one-node
models built with the `onnx` helper and a symbolic M:
  - MatMulInteger   u8 [M,K] x i8 [K,N] -> i32        (vs our int8 GEMM, i32 out)
  - QLinearMatMul   u8 x i8 -> u8, per-tensor scales  (vs our int8 GEMM + requantization)
  - MatMul          f32 x f32 -> f32                  (vs our int8 GEMM, i32 out)
  - MatMulNBits     f32 x 4-bit blocks (com.microsoft, block --block) -> f32, with
                    accuracy_level 4 (activations quantized to int8 inside) and 0 (f32 compute)
                                                      (vs our int4 GEMM, i32 out)
Every ONNX model is checked against numpy once before timing.

Fairness (shared/BENCHMARKING.md): ONNX Runtime gets intra_op_num_threads equal to our thread
cap and session.intra_op.allow_spinning=0; both sides do warm-up calls and report the median of
the same number of timed calls; each round runs mixprec then ONNX Runtime back to back (A B A B
over --rounds rounds). Reported times are medians over rounds; a ratio is the median over rounds
of (ORT ms / mixprec ms) within the same round, so > 1 means mixprec is faster.

How to run (not part of CI; creates the venv /tmp/venv-ort with numpy, onnx and onnxruntime when
the current interpreter lacks them, then re-runs itself inside it):

    python3 scripts/bench_gemm_vs_ort.py [--threads 1,2] [--m 1,16,128] [--rounds 3]

It builds the example with `cargo build --release -p mixprec-engine --example gemm_vs_ort`
(CARGO_TARGET_DIR is honoured; --no-build skips the build). The markdown table goes to stdout,
progress to stderr; --json FILE also writes every median.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from ort_venv import ensure_ort  # noqa: E402

ensure_ort(__file__)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

A_ZP = 128  # u8 activation zero point, the same as the example's


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- ONNX models (symbolic M)

def save(graph, path, opsets):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              producer_name="mixprec-bench")
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def model_matmul_integer(path, w8):
    n, k = w8.shape
    g = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])], "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", n])],
        [numpy_helper.from_array(np.ascontiguousarray(w8.T), "B"),
         numpy_helper.from_array(np.array(A_ZP, np.uint8), "a_zp")])
    return save(g, path, [("", 13)])


def model_qlinear_matmul(path, w8, a_scale, b_scale, y_scale):
    n, k = w8.shape
    inits = [numpy_helper.from_array(np.ascontiguousarray(w8.T), "B"),
             numpy_helper.from_array(np.array(a_scale, np.float32), "a_scale"),
             numpy_helper.from_array(np.array(A_ZP, np.uint8), "a_zp"),
             numpy_helper.from_array(np.array(b_scale, np.float32), "b_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "b_zp"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zp")]
    g = helper.make_graph(
        [helper.make_node("QLinearMatMul", ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp",
                                            "y_scale", "y_zp"], ["Y"])], "qlmm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, ["M", n])], inits)
    return save(g, path, [("", 13)])


def model_matmul_f32(path, wf):
    n, k = wf.shape
    g = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "mm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(np.ascontiguousarray(wf.T), "B")])
    return save(g, path, [("", 13)])


def pack_nbits(w4, block):
    """[N, K] values in [-8, 7] -> MatMulNBits B [N, K/block, block/2] (q = w + 8, even k in the
    low nibble; no zero_points input, so ONNX Runtime's default zero point 8 applies)."""
    n, k = w4.shape
    q = (w4.astype(np.int16) + 8).astype(np.uint8).reshape(n, k // block, block)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def model_matmul_nbits(path, w4, scales, block, accuracy_level):
    n, k = w4.shape
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy_level)
    g = helper.make_graph(
        [node], "mmnb",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(pack_nbits(w4, block), "B"),
         numpy_helper.from_array(scales.reshape(-1).astype(np.float32), "scales")])
    return save(g, path, [("", 13), ("com.microsoft", 1)])


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- timing

def median_s(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return statistics.median(t)


def run_ours(binary, threads, ms, n, k, warmup):
    cmd = [binary, "--threads", str(threads), "--m", ",".join(map(str, ms)), "--n", str(n),
           "--k", str(k), "--warmup", str(warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {(r["kernel"], r["m"]): r for r in rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--m", default="1,16,128")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--block", type=int, default=32, help="MatMulNBits block size (32 or 128)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--binary", default=None, help="the built gemm_vs_ort example")
    ap.add_argument("--json", default=None, help="also write all medians to this file")
    a = ap.parse_args()
    threads_list = [int(x) for x in a.threads.split(",")]
    ms = [int(x) for x in a.m.split(",")]
    n, k = a.n, a.k
    if k % a.block:
        sys.exit(f"error: K = {k} must be a multiple of --block {a.block}")

    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    binary = a.binary or os.path.join(target, "release", "examples", "gemm_vs_ort")
    if not a.no_build:
        log("building the gemm_vs_ort example (release)")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "mixprec-engine", "--example",
                        "gemm_vs_ort"], cwd=REPO, check=True)
    if not os.path.exists(binary):
        sys.exit(f"error: {binary} not found; build it or pass --binary")

    rng = np.random.default_rng(0)
    w8 = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    w4 = rng.integers(-8, 8, size=(n, k), dtype=np.int8)
    wf = w8.astype(np.float32) * 0.01
    scales = np.full((n, k // a.block), 0.01, np.float32)
    a_scale, b_scale = 0.02, 0.01
    y_scale = a_scale * b_scale * 128 * np.sqrt(k) / 40  # keeps most outputs inside u8

    tmp = tempfile.mkdtemp(prefix="mixprec-gemm-ort-")
    log(f"building ONNX models in {tmp}")
    paths = {
        "MatMulInteger": model_matmul_integer(os.path.join(tmp, "mmi.onnx"), w8),
        "QLinearMatMul": model_qlinear_matmul(os.path.join(tmp, "qlmm.onnx"), w8, a_scale, b_scale,
                                              y_scale),
        "MatMul f32": model_matmul_f32(os.path.join(tmp, "mm.onnx"), wf),
        "MatMulNBits acc4": model_matmul_nbits(os.path.join(tmp, "nb4.onnx"), w4, scales, a.block, 4),
        "MatMulNBits acc0": model_matmul_nbits(os.path.join(tmp, "nb0.onnx"), w4, scales, a.block, 0),
    }

    # Inputs per M (values do not change integer kernel timings; f32 inputs are in [-1, 1)).
    m_max = max(ms + [3])
    a_u8 = rng.integers(0, 256, size=(m_max, k), dtype=np.uint8)
    a_f32 = (a_u8.astype(np.float32) - A_ZP) / 128.0
    feeds = {op: (a_u8 if op in ("MatMulInteger", "QLinearMatMul") else a_f32) for op in paths}

    # Correctness of every model at M = 3 against numpy.
    chk = session(paths["MatMulInteger"], 1).run(None, {"A": a_u8[:3]})[0]
    ref_i = (a_u8[:3].astype(np.int64) - A_ZP) @ w8.T.astype(np.int64)
    assert np.array_equal(chk, ref_i), "MatMulInteger disagrees with numpy"
    chk = session(paths["QLinearMatMul"], 1).run(None, {"A": a_u8[:3]})[0].astype(np.int64)
    ref_q = np.clip(np.rint(ref_i * (a_scale * b_scale / y_scale)), 0, 255)
    assert np.abs(chk - ref_q).max() <= 1, "QLinearMatMul disagrees with numpy"
    chk = session(paths["MatMul f32"], 1).run(None, {"A": a_f32[:3]})[0]
    assert np.allclose(chk, a_f32[:3].astype(np.float64) @ wf.T, rtol=1e-3, atol=1e-2)
    ref_4 = a_f32[:3].astype(np.float64) @ (w4.astype(np.float64) * 0.01).T
    for op in ("MatMulNBits acc4", "MatMulNBits acc0"):
        chk = session(paths[op], 1).run(None, {"A": a_f32[:3]})[0]
        rel = np.abs(chk - ref_4).max() / np.abs(ref_4).max()
        assert rel < 0.05, f"{op} disagrees with numpy (relative error {rel:.3g})"
    log("all ONNX models agree with numpy")

    # comparison name -> (our kernel, our time field(s), ORT op)
    comparisons = [
        ("int8 → i32 vs MatMulInteger", "int8", False, "MatMulInteger"),
        ("int8 + requant → u8 vs QLinearMatMul", "int8", True, "QLinearMatMul"),
        ("int8 → i32 vs fp32 MatMul", "int8", False, "MatMul f32"),
        ("int4 → i32 vs MatMulNBits (acc 4, int8 compute)", "int4", False, "MatMulNBits acc4"),
        ("int4 → i32 vs MatMulNBits (acc 0, f32 compute)", "int4", False, "MatMulNBits acc0"),
    ]
    results = []
    backend = None
    for threads in threads_list:
        sessions = {op: session(p, threads) for op, p in paths.items()}
        ours_rounds, ort_rounds = [], []
        for r in range(a.rounds):
            log(f"threads {threads}: round {r + 1}/{a.rounds}")
            ours = run_ours(binary, threads, ms, n, k, a.warmup)
            ours_rounds.append(ours)
            ort_t = {}
            for op, sess in sessions.items():
                for m in ms:
                    x = feeds[op][:m]
                    reps = ours[("int4" if "NBits" in op else "int8", m)]["reps"]
                    ort_t[(op, m)] = median_s(lambda: sess.run(None, {"A": x}), a.warmup, reps) * 1e3
            ort_rounds.append(ort_t)
        for m in ms:
            for name, kernel, with_requant, op in comparisons:
                def ours_ms(o):
                    row = o[(kernel, m)]
                    return row["gemm_ms"] + (row["requant_ms"] if with_requant else 0.0)
                mine = [ours_ms(o) for o in ours_rounds]
                theirs = [t[(op, m)] for t in ort_rounds]
                ratio = statistics.median(t / o for t, o in zip(theirs, mine))
                backend = ours_rounds[0][(kernel, m)]["backend"]
                used = ours_rounds[0][(kernel, m)]["threads"]
                results.append({"m": m, "n": n, "k": k, "threads": used, "comparison": name,
                                "ours_ms": statistics.median(mine), "ort_ms": statistics.median(theirs),
                                "ratio_ort_over_ours": ratio,
                                "ours_gops": 2 * m * n * k / statistics.median(mine) / 1e6})
        del sessions

    print(f"ONNX Runtime {ort.__version__}, mixprec backend {backend}, weights N×K = {n}×{k}, "
          f"u8 activations (zero point {A_ZP}), MatMulNBits block {a.block}, {a.rounds} rounds; "
          f"ratio = ORT ms / mixprec ms (> 1: mixprec faster)\n")
    print("| shape (M×K · K×N) | threads | comparison | mixprec ms | mixprec GOP/s | ORT ms | ratio |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['m']}×{k} · {k}×{n} | {r['threads']} | {r['comparison']} | {r['ours_ms']:.3f} | "
              f"{r['ours_gops']:.1f} | {r['ort_ms']:.3f} | {r['ratio_ort_over_ours']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ort_version": ort.__version__, "backend": backend, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
