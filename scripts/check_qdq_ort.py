#!/usr/bin/env python3
"""Check mixprec's QDQ ONNX export against ONNX Runtime.

For mnist-8 (MNIST) and resnet8 (CIFAR-10), at W8A8 and at a mixed policy (4-bit weights on
the inner layers, 8 bits on the first and last, 8-bit activations everywhere), this script

1. writes the policy (`mixprec quantize --policy-out`, then edits the JSON),
2. exports the QDQ model (`mixprec export --format onnx-qdq`, and with `--int4`),
3. runs ONNX Runtime on the first 100 test images, with graph optimisations off (QDQ ops
   executed as written: float arithmetic on dequantized tensors) and fully on (ORT fuses the
   QDQ pairs into integer kernels),
4. runs mixprec's fake-quant executor on the same images (`mixprec run --policy`),
5. compares the outputs with a tolerance of one quantization step of the output,
   step = (max − min of the fake-quant outputs over the images) / 255: a check passes when
   every top-1 prediction agrees and at least 99 % of the output elements lie within one step
   (the largest difference is printed too). Exact agreement is not expected: both sides
   compute the convolutions in float with different summation orders, so a pre-activation
   that lands within float noise of a rounding boundary can round to the neighbouring code
   in the next QuantizeLinear, and that one-code change propagates.
   Two baselines show the export itself is exact: the float model (mixprec vs ONNX Runtime),
   and the mixed policy with weights only (no activation rounding), both at float-noise level.

Usage: scripts/check_qdq_ort.py [--bin target/release/mixprec] [--n 100]
Needs MIXPREC_DATA (default ../shared/data) and a venv with numpy + onnxruntime; when run
with a Python lacking them it creates /tmp/venv-ort and re-runs itself there. With the `onnx`
package installed as well it also checks every QuantizeLinear node's codes against mixprec's
rounding formula on ORT's own input to that node (exact equality expected).
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile

VENV = "/tmp/venv-ort"


def ensure_deps():
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        py = os.path.join(VENV, "bin", "python")
        if os.path.abspath(sys.executable) == os.path.abspath(py):
            raise
        if not os.path.exists(py):
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
            subprocess.check_call([os.path.join(VENV, "bin", "pip"), "install", "-q",
                                   "numpy", "onnxruntime"])
        os.execv(py, [py] + sys.argv)


ensure_deps()
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("MIXPREC_DATA", os.path.join(ROOT, "..", "shared", "data"))


def mnist_test(n):
    with gzip.open(os.path.join(DATA, "mnist", "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    x = np.frombuffer(raw, dtype=np.uint8, offset=16)[: n * 784]
    return x.reshape(n, 1, 28, 28).astype(np.float32)


def cifar_test(n):
    with gzip.open(os.path.join(DATA, "cifar10", "test_batch.bin.gz")) as f:
        raw = f.read(n * 3073)
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(n, 3073)
    return rec[:, 1:].reshape(n, 3, 32, 32).astype(np.float32)


MODELS = [
    ("mnist-8", "mnist-8.onnx", "mnist", mnist_test),
    ("resnet8", "resnet8-cifar10.onnx", "cifar10", cifar_test),
]


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def ort_run(path, x, optimise):
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def q_codes_check(path, x):
    """With the `onnx` package: every QuantizeLinear of the exported model, run by ONNX Runtime,
    against mixprec's rounding formula q = clamp(round_half_even(x / S) + Z) evaluated in
    float32 on ORT's own input to that node. Returns (tensors equal, tensors, values within
    1e-4 of a step from a rounding boundary), or None without `onnx` or QuantizeLinear nodes."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        return None
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    if not qs:
        return None
    del m.graph.output[:]
    for n in qs:
        for v in (n.input[0], n.output[0]):
            m.graph.output.append(helper.make_empty_tensor_value_info(v))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    equal, near = 0, 0
    for i in range(len(x)):
        outs = sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})
        for k, n in enumerate(qs):
            xin, q = outs[2 * k], outs[2 * k + 1]
            sc = inits[n.input[1]].astype(np.float32)
            z = inits[n.input[2]]
            info = np.iinfo(z.dtype)
            r = xin / sc
            want = np.clip(np.round(r) + np.float32(z), info.min, info.max).astype(z.dtype)
            equal += bool((want == q).all())
            near += int((np.abs(r - np.floor(r) - 0.5) < 1e-4).sum())
    return equal, len(qs) * len(x), near


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "mixprec"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--calib", type=int, default=256)
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, {a.n} test images, calibration {a.calib} images")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for mname, mfile, data, load in MODELS:
            model = os.path.join(DATA, "models", mfile)
            x = load(a.n)
            xin = os.path.join(tmp, f"{mname}-x.npy")
            np.save(xin, x)
            base = os.path.join(tmp, f"{mname}-w8a8.json")
            sh([a.bin, "quantize", "--model", model, "--data", data, "--uniform", "w8a8",
                "--granularity", "channel", "--limit", "10", "--skip-float",
                "--calib", str(a.calib), "--policy-out", base])
            pol = json.load(open(base))
            layers = sorted(pol["layers"])
            mixed = json.loads(json.dumps(pol))
            # Keep the graph's first and last layer at 8 bits (graph order from `inspect`).
            order = [ln for ln in json.loads(sh([a.bin, "inspect", model, "--json"]))["layers"]]
            order = [ln["name"] for ln in order if ln["name"] in layers]
            for ln in order[1:-1]:
                mixed["layers"][ln]["weight"]["bits"] = 4
            mixed_path = os.path.join(tmp, f"{mname}-mixed.json")
            json.dump(mixed, open(mixed_path, "w"))
            wonly = json.loads(json.dumps(mixed))
            for lp in wonly["layers"].values():
                lp.pop("activation", None)
            wonly_path = os.path.join(tmp, f"{mname}-wonly.json")
            json.dump(wonly, open(wonly_path, "w"))
            fq_out = os.path.join(tmp, "fq.npy")
            # An empty policy: float, with the batch dimension freed.
            empty = os.path.join(tmp, "empty.json")
            json.dump({"version": pol["version"], "layers": {}}, open(empty, "w"))
            sh([a.bin, "run", model, "--policy", empty, "--input", xin, "-o", fq_out])
            fl = np.load(fq_out).reshape(a.n, -1)
            d = np.abs(ort_run(model, x, True).reshape(a.n, -1) - fl)
            print(f"{mname:8} baseline float model (no quantization)"
                  f"  max|Δ| {d.max():.3g}  relative {d.max() / np.abs(fl).max():.3g}")
            for pname, ppath in [("W8A8", base), ("mixed W4/W8, A8", mixed_path),
                                 ("mixed W4/W8, A32", wonly_path)]:
                calib = ["--data", data, "--calib", str(a.calib)]
                sh([a.bin, "run", model, "--policy", ppath, "--input", xin, "-o", fq_out] + calib)
                fq = np.load(fq_out).reshape(a.n, -1)
                step = float(fq.max() - fq.min()) / 255.0
                for int4 in ([False, True] if "mixed" in pname else [False]):
                    onnx = os.path.join(tmp, "qdq.onnx")
                    sh([a.bin, "export", model, "--format", "onnx-qdq", "--policy", ppath,
                        "--out", onnx] + calib + (["--int4"] if int4 else []))
                    c = q_codes_check(onnx, x[:8])
                    if c is not None:
                        print(f"{mname:8} {pname:17} int4={int4!s:5} QuantizeLinear codes ="
                              f" mixprec rounding formula on {c[0]}/{c[1]} tensors (8 images);"
                              f" {c[2]} inputs within 1e-4 step of a rounding boundary")
                        failures += c[0] != c[1]
                    for optimise in (False, True):
                        try:
                            y = ort_run(onnx, x, optimise).reshape(a.n, -1)
                        except Exception as e:  # noqa: BLE001
                            print(f"{mname:8} {pname:17} int4={int4!s:5} ort-opt={optimise!s:5}"
                                  f"  ORT FAILED: {str(e).splitlines()[0][:160]}")
                            failures += 1
                            continue
                        d = np.abs(y - fq)
                        agree = int((y.argmax(1) == fq.argmax(1)).sum())
                        within = float((d <= step).mean())
                        ok = within >= 0.99 and agree == a.n
                        failures += not ok
                        print(f"{mname:8} {pname:17} int4={int4!s:5} ort-opt={optimise!s:5}"
                              f"  max|Δ| {d.max():.4g}  mean|Δ| {d.mean():.3g}"
                              f"  step {step:.4g}  ({d.max() / step:.3f} step)"
                              f"  within 1 step {100 * within:.2f} %  top-1 agree {agree}/{a.n}"
                              f"  {'OK' if ok else 'FAIL'}")
    print("all checks passed" if failures == 0 else f"{failures} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
