#!/usr/bin/env python3
"""Forward throughput of mixprec's float executor next to ONNX Runtime, as ratios from one run.

The two are alternated A B A B (`--rounds` times) so machine noise hits both alike; each round
times `mixprec bench MODEL --batch B --json` (median of its --iters) and ONNX Runtime (2 intra-op
threads, spinning off, median of the same number of calls) on the same input shape. Prints a
table and one JSON object with medians and mixprec/ORT throughput ratios.

How to run (not part of CI):

    python3 -m venv /tmp/venv-ort && /tmp/venv-ort/bin/pip install numpy onnxruntime
    cargo build --release --bin mixprec
    /tmp/venv-ort/bin/python scripts/bench_forward_vs_ort.py [--model resnet8-cifar10.onnx] [--batch 1,64]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir():
    return os.environ.get("MIXPREC_DATA") or os.path.join(REPO, "..", "shared", "data")


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def time_ort(sess, shape, iters):
    name = sess.get_inputs()[0].name
    x = (np.arange(np.prod(shape)) * 2654435761 % 256).astype(np.float32).reshape(shape)
    sess.run(None, {name: x})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_mixprec(binary, model, batch, iters):
    out = subprocess.run([binary, "bench", model, "--batch", str(batch), "--iters", str(iters), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["results"][0]["forward_ms"] / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet8-cifar10.onnx")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "mixprec"))
    a = ap.parse_args()
    path = os.path.join(data_dir(), "models", a.model)
    sess = ort_session(path, a.threads)
    sample = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape][1:]
    results = {}
    for b in [int(x) for x in a.batch.split(",")]:
        mx, rt = [], []
        for _ in range(a.rounds):
            mx.append(time_mixprec(a.binary, path, b, a.iters))
            rt.append(time_ort(sess, [b] + sample, a.iters))
        m, r = statistics.median(mx), statistics.median(rt)
        results[b] = {"mixprec_ms": m * 1e3, "ort_ms": r * 1e3, "mixprec_img_s": b / m, "ort_img_s": b / r,
                      "throughput_ratio_mixprec_over_ort": r / m}
        print(f"batch {b:>4}: mixprec {m*1e3:8.3f} ms ({b/m:8.1f} img/s)   ORT {r*1e3:8.3f} ms ({b/r:8.1f} img/s)   "
              f"ratio {r/m:.3f}")
    print(json.dumps({"model": a.model, "ort_version": ort.__version__, "ort_threads": a.threads,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
