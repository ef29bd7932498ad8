#!/usr/bin/env python3
"""Accuracy of every allocator vs uniform precision at matched average weight bits.

For each model and each B in --bits, runs
    mixprec compare --model M --data D --budget wbits=B --options OPTS --json
(the size budget equals the model with every layer at B-bit weights, activations 8-bit) and
prints one markdown table per model: rows = uniform baselines and allocators, columns = B.
Then times one end-to-end `mixprec quantize --budget wbits=3` per model (sensitivity cache
cleared first, so the time includes every stage).

    python3 scripts/allocator_table.py [--bin target/release/mixprec] [--bits 2,3,4]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MODELS = [
    ("mnist-8", "models/mnist-8.onnx", "mnist"),
    ("resnet8", "models/resnet8-cifar10.onnx", "cifar10"),
]


def run(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/mixprec")
    ap.add_argument("--bits", default="2,3,4")
    ap.add_argument("--options", default="w2,w3,w4,w5,w6,w8")
    ap.add_argument("--metrics", default="hessian-trace,output-mse,kl")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--models", default="mnist-8,resnet8")
    a = ap.parse_args()
    data = os.environ.get("MIXPREC_DATA", "../shared/data")
    cache = tempfile.mkdtemp(prefix="mixprec-cache-")
    env = dict(os.environ, MIXPREC_CACHE=cache)
    bits = [int(b) for b in a.bits.split(",")]
    for name, rel, ds in MODELS:
        if name not in a.models.split(","):
            continue
        model = os.path.join(data, rel)
        extra = ["--limit", str(a.limit)] if a.limit else []
        cols = {}
        float_acc = None
        for b in bits:
            out = run([a.bin, "compare", "--model", model, "--data", ds,
                       "--budget", f"wbits={b}", "--options", a.options,
                       "--metrics", a.metrics, "--json"] + extra, env)
            c = json.loads(out)
            float_acc = c["float_accuracy"]
            col = {}
            for u in c["uniform"]:
                col[u["label"]] = (u["accuracy"], u["avg_bits"], u["size_bytes"])
            for r in c["rows"]:
                e = r["result"]
                col[f'{r["allocator"]} / {r["metric"]}'] = (e["accuracy"], e["avg_bits"], e["size_bytes"]) if e else None
            cols[b] = (col, c["budgets"][0]["describe"])
        print(f"\n### {name} on {ds} (float {float_acc:.2f} %, metrics {a.metrics}, options {a.options})\n")
        print("| policy | " + " | ".join(f"wbits={b}" for b in bits) + " |")
        print("|---|" + "---|" * len(bits))
        labels = []
        for b in bits:
            for k in cols[b][0]:
                if k not in labels:
                    labels.append(k)
        for k in labels:
            cells = []
            for b in bits:
                v = cols[b][0].get(k)
                if k.startswith("uniform"):
                    cells.append(f"{v[0]:.2f}" if v else "-")
                else:
                    cells.append(f"{v[0]:.2f} ({v[1]:.2f} b)" if v else "n/a")
            print(f"| {k} | " + " | ".join(cells) + " |")
        for b in bits:
            print(f"\nwbits={b}: {cols[b][1]}", end="")
        print()
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory() as out_dir:
            t0 = time.time()
            run([a.bin, "quantize", "--model", model, "--data", ds, "--budget", "wbits=3",
                 "--options", a.options, "--metric", a.metrics.split(",")[0], "--out", out_dir, "--json"] + extra, env)
            print(f"\nend-to-end `mixprec quantize --budget wbits=3` on {name}: {time.time() - t0:.1f} s (no cache)")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
