#!/usr/bin/env python3
"""Per-layer Hutchinson Hessian traces: mixprec against PyTorch double backward.

    python3 bench/hutchinson/bench.py [--models resnet8,resnet20] [--threads 2] [--tol 0.05]

Both tools run the same ONNX model with the same weights on the same CIFAR-10 batch (the first
--samples test images, raw 0..255 pixels), the same estimator (survey §3.2.3, HAWQ-V2 Eq. 21-22:
joint Rademacher probes over all layers, a layer whose joint estimate cannot converge within
--max-probes restarts alone, per-layer stopping at --tol relative standard error) and the same
thread count, one process each, one after the other. Reported: wall time of the whole process,
probes / double-backward passes, per-layer traces with standard errors, and peak RSS
(getrusage of each child).

* resnet8: MLPerf Tiny ResNet-8 from $MIXPREC_DATA/models.
* resnet20: ResNet-20 (He et al. 2016, 3 stages x 3 basic blocks, 16/32/64 channels, as
  mixprec's built-in one) written by make_resnet20.py: PyTorch initialisation, --resnet20-steps
  SGD steps on CIFAR-10 test images 1000.. (no trained ResNet-20 ships with the data, and
  mixprec cannot train on CIFAR-10 here: only its test split exists).

PyTorch is installed into a venv (--venv, default /tmp/mixprec-bench-venv) on first use: the CPU
wheel index first, then PyPI's `torch` (which pulls the CUDA libraries: several GB; the CUDA
runtime is never used, torch only needs to load). Not part of CI.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def sh(cmd, env=None):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def ensure_venv(venv):
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import torch, onnx, numpy"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    sh([sys.executable, "-m", "venv", venv])
    pip = [py, "-m", "pip", "install", "-q", "--timeout", "30"]
    cpu = pip + ["--retries", "0", "torch", "--index-url", "https://download.pytorch.org/whl/cpu"]
    try:
        sh(cpu)
    except subprocess.CalledProcessError:
        print("CPU wheel index unreachable; installing torch from PyPI", file=sys.stderr)
        sh(pip + ["torch"])
    sh(pip + ["onnx", "numpy"])
    return py


def measured(cmd, env):
    """Runs cmd; returns (stdout, wall seconds, peak RSS in MiB) of that process alone."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, env=env)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({status}): {' '.join(str(c) for c in cmd)}")
    return out.decode(), wall, ru.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixprec", default=None, help="mixprec binary (default: target*/release/mixprec)")
    ap.add_argument("--venv", default="/tmp/mixprec-bench-venv")
    ap.add_argument("--work", default="/tmp/mixprec-hutchinson", help="scratch folder")
    ap.add_argument("--models", default="resnet8,resnet20")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=0.05)
    ap.add_argument("--min-probes", type=int, default=8)
    ap.add_argument("--max-probes", type=int, default=256)
    ap.add_argument("--probes-per-pass", type=int, default=4)
    ap.add_argument("--mode", choices=["joint", "per-layer"], default="joint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimator", choices=["auto", "exact", "hutchinson", "logit-hutchinson"], default="hutchinson",
                    help="mixprec's estimator (auto/exact: exact traces of piecewise-linear "
                         "networks, no probes; logit-hutchinson: Hutchinson with Rademacher probes "
                         "in the logit space of the same factorisation)")
    ap.add_argument("--torch-estimator", choices=["hutchinson", "exact", "logit-hutchinson"], default="hutchinson",
                    help="the PyTorch script's estimator (exact / logit-hutchinson: the same "
                         "factorisation as mixprec's)")
    ap.add_argument("--resnet20-steps", type=int, default=60)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()

    data = Path(os.environ.get("MIXPREC_DATA", ROOT.parent / "shared" / "data")).resolve()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    mixprec = Path(a.mixprec) if a.mixprec else None
    if mixprec is None:
        cands = sorted(ROOT.glob("target*/release/mixprec"), key=lambda p: p.stat().st_mtime)
        if not cands:
            raise SystemExit("no mixprec binary: run `cargo build --release -p mixprec-cli` or pass --mixprec")
        mixprec = cands[-1]
    py = ensure_venv(Path(a.venv))

    # The batch: the first --samples CIFAR-10 test images, as a CIFAR binary of its own (so that
    # mixprec's class-balanced sample of --samples images is exactly this batch).
    batch_dir = work / "data"
    (batch_dir / "cifar10").mkdir(parents=True, exist_ok=True)
    raw = gzip.open(data / "cifar10" / "test_batch.bin.gz").read()[: a.samples * 3073]
    batch_file = batch_dir / "cifar10" / "test_batch.bin"
    batch_file.write_bytes(raw)

    env = dict(os.environ)
    env.update(RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    models = {}
    for name in a.models.split(","):
        if name == "resnet8":
            models[name] = data / "models" / "resnet8-cifar10.onnx"
        elif name == "resnet20":
            onnx = work / f"resnet20-seed{a.seed}-steps{a.resnet20_steps}.onnx"
            if not onnx.exists():
                sh([py, HERE / "make_resnet20.py", "--cifar", data / "cifar10" / "test_batch.bin.gz",
                    "--out", onnx, "--steps", a.resnet20_steps, "--seed", a.seed])
            models[name] = onnx
        else:
            raise SystemExit(f"unknown model {name} (resnet8, resnet20)")

    config = {"tol": a.tol, "min_probes": a.min_probes, "max_probes": a.max_probes,
              "probes_per_pass": a.probes_per_pass, "joint": a.mode == "joint",
              "estimator": a.estimator}
    results = []
    for name, path in models.items():
        menv = dict(env, MIXPREC_DATA=str(batch_dir))
        out, m_wall, m_rss = measured(
            [mixprec, "sensitivity", "--model", path, "--data", "cifar10", "--samples", a.samples,
             "--batch", a.samples, "--metric", "hessian-trace", "--options", "w4,w8",
             "--config", json.dumps(config), "--seed", a.seed, "--json"], menv)
        table = json.loads(out)["table"]
        mix = {l: d for l, d in zip(table["layers"], table["details"])}
        out, t_wall, t_rss = measured(
            [py, HERE / "torch_hutchinson.py", "--model", path, "--cifar", batch_file,
             "--samples", a.samples, "--threads", a.threads, "--tol", a.tol,
             "--min-probes", a.min_probes, "--max-probes", a.max_probes, "--mode", a.mode,
             "--seed", a.seed, "--estimator", a.torch_estimator], env)
        tor = json.loads(out)
        layers = []
        for tl in tor["layers"]:
            md = mix.get(tl["name"])
            if md is None:
                raise SystemExit(f"{name}: layer {tl['name']} is missing from mixprec's table")
            se_m = md["rel_stderr"] * abs(md["trace"])
            se_t = tl["rel_stderr"] * abs(tl["trace"])
            se = (se_m**2 + se_t**2) ** 0.5
            z = abs(md["trace"] - tl["trace"]) / se if se > 0 else float("nan")
            rel = abs(md["trace"] - tl["trace"]) / max(abs(tl["trace"]), 1e-30)
            layers.append({"layer": tl["name"], "mixprec": md, "torch": tl, "z": z, "rel_diff": rel})
        results.append({
            "model": name, "samples": a.samples, "threads": a.threads, "config": config,
            "mixprec": {"wall_s": m_wall, "peak_rss_mib": m_rss},
            "torch": {"wall_s": t_wall, "peak_rss_mib": t_rss, "estimate_s": tor["estimate_s"],
                      "passes": tor["passes"], "version": tor["tool"]},
            "speedup": t_wall / m_wall, "layers": layers,
        })
        r = results[-1]
        print(f"\n## {name}: {a.samples} CIFAR-10 images, {a.threads} threads, tol {a.tol}, "
              f"max {a.max_probes} probes, mode {a.mode}")
        print(f"mixprec: {m_wall:.1f} s, peak RSS {m_rss:.0f} MiB | {tor['tool']}: {t_wall:.1f} s "
              f"({tor['passes']} double-backward passes, {tor['estimate_s']:.1f} s estimating), "
              f"peak RSS {t_rss:.0f} MiB | torch / mixprec time: {r['speedup']:.2f}x")
        print("| layer | mixprec trace ± se (probes, alone?) | torch trace ± se (probes, alone?) | |diff|/se | |diff|/torch |")
        print("|---|---|---|---|---|")
        for l in layers:
            f = lambda d: ("{:.4g} (exact)".format(d["trace"]) if d.get("exact") else
                           f"{d['trace']:.4g} ± {d['rel_stderr'] * abs(d['trace']):.2g} "
                           f"({int(d['probes'])}{', alone' if not d['joint'] else ''})")
            print(f"| {l['layer']} | {f(l['mixprec'])} | {f(l['torch'])} | {'—' if l['z'] != l['z'] else format(l['z'], '.2f')} | {l['rel_diff']:.1e} |")
        sys.stdout.flush()
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
