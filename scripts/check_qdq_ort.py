#!/usr/bin/env python3
"""Check mixprec's QDQ ONNX export against ONNX Runtime: accuracy, integer fusion, speed.

For mnist-8 (MNIST) and resnet8 (CIFAR-10), at W8A8 and at a mixed policy (4-bit weights on
the inner layers, 8 bits on the first and last, 8-bit activations everywhere; and the same
with weights only), this script

1. writes the policy (`mixprec quantize --policy-out`, then edits the JSON),
2. exports it twice (`mixprec export --format onnx-qdq`, also with `--int4`):
   * `--activations full` (the default): Q/DQ on every tensor an integer kernel reads or
     writes, BatchNormalization and bias Adds folded, int32 biases — the form ONNX Runtime
     fuses into QLinearConv / QGemm / QLinearAdd / QLinearAveragePool;
   * `--activations inputs`: Q/DQ on each layer's input only (the fake-quant arithmetic);
3. runs ONNX Runtime on the first 100 test images, with graph optimisations off (QDQ ops
   executed as written: float arithmetic on dequantized tensors) and fully on (fused),
4. compares like with like, with a tolerance of one quantization step of the output,
   step = (max − min of the reference outputs over the images) / 255; a check passes when
   every top-1 prediction agrees and at least 99 % of the output elements lie within one
   step (the largest difference is printed too):
   * `inputs` export vs mixprec's fake-quant executor (`mixprec run --policy`), which
     quantizes exactly the layer inputs and weights;
   * `full` export vs mixprec's integer-only engine (`mixprec export --format mpqm`, then
     `mixprec run F.mpqm`), which quantizes the same tensors (layer outputs after Relu,
     residual Add inputs and outputs, average-pool inputs with their own 8-bit min-max
     ranges, BN folded before weight quantization, int32 biases) on the same calibration
     images. The fake-quant executor cannot simulate those extra tensors (its hook sees
     layer inputs and weights only), so `full` vs fake-quant is printed for information;
   * weights-only policies (`A32`): both exports vs the fake-quant executor.
   Exact agreement is not expected: the two sides compute in different arithmetic (float
   convolutions with different summation orders, or integer accumulators with dyadic
   requantization), so a value within noise of a rounding boundary can round to the
   neighbouring code in the next QuantizeLinear, and that one-code change propagates.
   Two baselines show the export itself is exact: the float model (mixprec vs ONNX
   Runtime), and the weights-only policy, both at float-noise level.
5. counts the integer nodes in ONNX Runtime's optimised graph
   (`SessionOptions.optimized_model_filepath`): QLinearConv, QGemm, QLinearMatMul,
   QLinearAdd, MatMulIntegerToFloat, ConvInteger, QLinearAveragePool, and the float Conv /
   Gemm / MatMul left. A `full` export at 8-bit weights must leave no float Conv, Gemm or
   MatMul (a check that fails when fusion breaks);
6. times ONNX Runtime (1 thread, sequential, medians) on the float model and on the `full`
   and `inputs` exports at batch 1 and 32 (`--no-timing` skips it).

Usage: scripts/check_qdq_ort.py [--bin target/release/mixprec] [--n 100] [--no-timing]
Needs MIXPREC_DATA (default ../shared/data) and a venv with numpy + onnx + onnxruntime; when
run with a Python lacking them it creates /tmp/venv-ort and re-runs itself there.
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile



from ort_venv import ensure_ort  # noqa: E402

ensure_ort(__file__)
import collections  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
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


def session(path, optimise, threads=0, optimized_path=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_run(path, x, optimise):
    s = session(path, optimise)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


INTEGER_OPS = ["QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "MatMulIntegerToFloat",
               "ConvInteger", "MatMulInteger", "QLinearAveragePool", "QLinearGlobalAveragePool"]
FLOAT_OPS = ["Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "DequantizeLinear"]


def fused_counts(path, tmp):
    """Operator counts of ONNX Runtime's optimised graph (optimisation level ALL)."""
    opt = os.path.join(tmp, "optimised.onnx")
    session(path, True, optimized_path=opt)
    c = collections.Counter(n.op_type for n in onnx.load(opt).graph.node)
    os.remove(opt)
    return c


def counts_text(c):
    parts = [f"{k} {c[k]}" for k in INTEGER_OPS + FLOAT_OPS if c.get(k)]
    return ", ".join(parts) if parts else "none"


def free_batch(path, out):
    """A copy of the model with its first input dimension symbolic (mnist-8 fixes it to 1)."""
    m = onnx.load(path)
    for v in list(m.graph.input) + list(m.graph.output):
        d = v.type.tensor_type.shape.dim
        if len(d):
            d[0].ClearField("dim_value")
            d[0].dim_param = "N"
    onnx.save(m, out)
    return out


def median_ms(path, x, batch, runs):
    """Median wall time (ms) of one ONNX Runtime run at `batch`, 1 thread, after warm-up."""
    s = session(path, True, threads=1)
    name = s.get_inputs()[0].name
    xb = np.ascontiguousarray(np.resize(x, (batch,) + x.shape[1:]))
    for _ in range(5):
        s.run(None, {name: xb})
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, {name: xb})
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)


def compare(y, ref, n, min_within=0.99):
    """(passed, text): top-1 agreement and the share of outputs within one output step."""
    step = float(ref.max() - ref.min()) / 255.0
    d = np.abs(y - ref)
    agree = int((y.argmax(1) == ref.argmax(1)).sum())
    within = float((d <= step).mean())
    ok = within >= min_within and agree == n
    return ok, (f"max|Δ| {d.max():.4g}  mean|Δ| {d.mean():.3g}  step {step:.4g}"
                f"  ({d.max() / step:.3f} step)  within 1 step {100 * within:.2f} %"
                f"  top-1 agree {agree}/{n}")


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
    ap.add_argument("--no-timing", action="store_true", help="skip the ONNX Runtime timings")
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, {a.n} test images, calibration {a.calib} images")
    failures = 0
    timings = []
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
            out = os.path.join(tmp, "out.npy")
            # An empty policy: float, with the batch dimension freed.
            empty = os.path.join(tmp, "empty.json")
            json.dump({"version": pol["version"], "layers": {}}, open(empty, "w"))
            sh([a.bin, "run", model, "--policy", empty, "--input", xin, "-o", out])
            fl = np.load(out).reshape(a.n, -1)
            d = np.abs(ort_run(model, x, True).reshape(a.n, -1) - fl)
            print(f"{mname:8} baseline float model (no quantization)"
                  f"  max|Δ| {d.max():.3g}  relative {d.max() / np.abs(fl).max():.3g}")
            for pname, ppath in [("W8A8", base), ("mixed W4/W8, A8", mixed_path),
                                 ("mixed W4/W8, A32", wonly_path)]:
                calib = ["--data", data, "--calib", str(a.calib)]
                sh([a.bin, "run", model, "--policy", ppath, "--input", xin, "-o", out] + calib)
                fq = np.load(out).reshape(a.n, -1)
                acts = "A32" not in pname
                engine = None
                if acts:
                    mpqm = os.path.join(tmp, "model.mpqm")
                    sh([a.bin, "export", model, "--format", "mpqm", "--policy", ppath,
                        "--out", mpqm] + calib)
                    sh([a.bin, "run", mpqm, "--input", xin, "-o", out])
                    engine = np.load(out).reshape(a.n, -1)
                    ok, text = compare(engine, fq, a.n)
                    print(f"{mname:8} {pname:17} integer engine vs fake-quant (information)"
                          f"  {text}")
                for mode in ("full", "inputs"):
                    for int4 in ([False, True] if "mixed" in pname else [False]):
                        tag = f"{mname:8} {pname:17} {mode:6} int4={int4!s:5}"
                        onnx_path = os.path.join(tmp, f"{mname}-{mode}-{int4}.onnx")
                        sh([a.bin, "export", model, "--format", "onnx-qdq", "--policy", ppath,
                            "--activations", mode, "--out", onnx_path] + calib
                           + (["--int4"] if int4 else []))
                        c = q_codes_check(onnx_path, x[:8])
                        if c is not None:
                            print(f"{tag} QuantizeLinear codes = mixprec rounding formula on"
                                  f" {c[0]}/{c[1]} tensors (8 images); {c[2]} inputs within"
                                  f" 1e-4 step of a rounding boundary")
                            failures += c[0] != c[1]
                        counts = fused_counts(onnx_path, tmp)
                        fused_ok = True
                        if mode == "full" and acts and not int4:
                            fused_ok = not any(counts.get(k) for k in
                                               ("Conv", "FusedConv", "Gemm", "MatMul",
                                                "FusedMatMul"))
                            failures += not fused_ok
                        print(f"{tag} ORT optimised graph: {counts_text(counts)}"
                              f"{'' if fused_ok else '  FAIL (float layers left)'}")
                        ref, rname = ((engine, "integer engine") if mode == "full" and acts
                                      else (fq, "fake-quant"))
                        # A fully quantized deep model (every activation rounded, resnet8:
                        # 15 tensors) is chaotic at the level of single codes: ONNX Runtime's
                        # own fused and unfused runs of the same file differ by up to ~4
                        # output steps on ~1.5 % of the outputs. The yardstick is printed;
                        # the bar for full exports is every top-1 equal and 97 % within a step.
                        min_within = 0.97 if mode == "full" and acts else 0.99
                        if mode == "full" and acts:
                            _, text = compare(ort_run(onnx_path, x, True).reshape(a.n, -1),
                                              ort_run(onnx_path, x, False).reshape(a.n, -1),
                                              a.n)
                            print(f"{tag} yardstick: ORT fused vs ORT unfused, same file  {text}")
                        for optimise in (False, True):
                            try:
                                y = ort_run(onnx_path, x, optimise).reshape(a.n, -1)
                            except Exception as e:  # noqa: BLE001
                                print(f"{tag} ort-opt={optimise!s:5}"
                                      f"  ORT FAILED: {str(e).splitlines()[0][:160]}")
                                failures += 1
                                continue
                            ok, text = compare(y, ref, a.n, min_within)
                            failures += not ok
                            print(f"{tag} ort-opt={optimise!s:5} vs {rname:14}  {text}"
                                  f"  {'OK' if ok else 'FAIL'}")
                            if mode == "full" and acts and optimise:
                                _, text = compare(y, fq, a.n)
                                print(f"{tag} ort-opt=True  vs fake-quant (information)  {text}")
                        if not a.no_timing and acts and not int4:
                            keep = os.path.join(tmp, f"{mname}-{pname[:4]}-{mode}-t.onnx")
                            os.replace(onnx_path, keep)
                            timings.append((mname, f"{pname}, {mode}", keep, x))
            if not a.no_timing:
                timings.append((mname, "float (fp32)", free_batch(
                    model, os.path.join(tmp, f"{mname}-fp32.onnx")), x))
        if timings:
            print("ONNX Runtime, 1 thread, median ms per run (batch 1: 200 runs, batch 32: 30)")
            fp32 = {m: (median_ms(p, x, 1, 200), median_ms(p, x, 32, 30))
                    for m, lab, p, x in timings if lab.startswith("float")}
            for m, lab, p, x in sorted(timings, key=lambda r: (r[0], not r[1].startswith("float"))):
                b1, b32 = ((fp32[m]) if lab.startswith("float")
                           else (median_ms(p, x, 1, 200), median_ms(p, x, 32, 30)))
                print(f"{m:8} {lab:24} batch 1 {b1:8.3f} ms ({fp32[m][0] / b1:5.2f}x fp32)"
                      f"   batch 32 {b32:8.3f} ms ({fp32[m][1] / b32:5.2f}x fp32)")
    print("all checks passed" if failures == 0 else f"{failures} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
