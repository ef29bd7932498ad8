#!/usr/bin/env python3
"""Throughput of ONNX Runtime on resnet8-cifar10 (the float baseline for mixprec's engines).

Times the forward pass at batch 1 and batch 64 with 1 and 2 intra-op threads
(session.intra_op.allow_spinning = 0, sequential execution, all graph optimisations), on real
CIFAR-10 test images (raw 0..255), after a warm-up. Each configuration reports the median of
`--repeats` timed runs; a run is `--iters` forward calls. Prints one JSON object.

How to run:

    python3 -m venv /tmp/venv-ort && /tmp/venv-ort/bin/pip install numpy onnxruntime
    /tmp/venv-ort/bin/python scripts/ort_bench.py [--repeats 7] [--iters N]

The data folder is $MIXPREC_DATA, default ../shared/data next to the repository root.
"""
import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir():
    env = os.environ.get("MIXPREC_DATA")
    return env if env else os.path.join(REPO, "..", "shared", "data")


def cifar_images(n):
    path = os.path.join(data_dir(), "cifar10", "test_batch.bin.gz")
    if not os.path.isfile(path):
        sys.exit(f"CIFAR-10 not found at {path}: set MIXPREC_DATA")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    return np.ascontiguousarray(rec[:n, 1:].reshape(-1, 3, 32, 32).astype(np.float32))


def make_session(model, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def bench(sess, x, iters, repeats, warmup_s=0.3):
    name = sess.get_inputs()[0].name
    feed = {name: x}
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        sess.run(None, feed)
    per_image = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            sess.run(None, feed)
        dt = time.perf_counter() - t0
        per_image.append(dt / (iters * x.shape[0]))
    med = statistics.median(per_image)
    return {
        "batch": int(x.shape[0]),
        "iters_per_repeat": iters,
        "repeats": repeats,
        "median_ms_per_batch": 1e3 * med * x.shape[0],
        "images_per_s": 1.0 / med,
        "min_images_per_s": 1.0 / max(per_image),
        "max_images_per_s": 1.0 / min(per_image),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=0, help="forward calls per repeat (0: auto, ~0.2 s)")
    args = ap.parse_args()
    model = os.path.join(data_dir(), "models", "resnet8-cifar10.onnx")
    if not os.path.isfile(model):
        sys.exit(f"model not found at {model}: set MIXPREC_DATA")
    x64 = cifar_images(64)
    results = []
    for threads in (1, 2):
        sess = make_session(model, threads)
        for batch in (1, 64):
            x = x64[:batch]
            iters = args.iters
            if iters <= 0:
                name = sess.get_inputs()[0].name
                t0 = time.perf_counter()
                sess.run(None, {name: x})
                one = max(time.perf_counter() - t0, 1e-5)
                iters = max(1, int(0.2 / one))
            r = bench(sess, x, iters, args.repeats)
            r["intra_op_threads"] = threads
            results.append(r)
    print(
        json.dumps(
            {
                "model": "resnet8-cifar10.onnx",
                "onnxruntime_version": ort.__version__,
                "python_version": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "allow_spinning": 0,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
