#!/usr/bin/env python3
"""End-to-end speed of mixprec's integer engine next to ONNX Runtime, as ratios from one run.

For resnet8-cifar10 (data cifar10) and mnist-8 (data mnist) this script writes two quantized
output folders with `mixprec quantize` (calibration 256 images, evaluation --limit 200):
  - W8A8:  --budget wbits=8 --options w8          (every layer int8 per channel, u8 activations)
  - mixed: --budget wbits=5 --options w4,w8       (output-MSE sensitivity, ILP allocation)
Each folder holds model.onnx (QDQ ONNX, per-channel int8 weights, u8 activations) and model.mpqm
(the engine's model file). At every batch in --batch and thread count in --threads it times:
  - ORT fp32:  ONNX Runtime on the original float ONNX model;
  - ORT QDQ:   ONNX Runtime on the W8A8 folder's model.onnx, graph optimisations on (ORT fuses
               DequantizeLinear -> Conv -> QuantizeLinear into its int8 kernels; the script counts
               the int8 nodes left in ORT's optimised graph and prints them);
  - ORT int8 (ORT-quantized): ONNX Runtime's own quantize_static of the float model (QDQ, u8
               activations, s8 per-channel weights; per tensor where per channel fails), the
               fast setting of shared/BENCHMARKING.md, as a reference for ORT's best int8 speed;
  - mixprec W8A8 / mixed: `examples/engine_vs_ort.rs` of mixprec-engine on model.mpqm
               (QuantModel::run, f32 input in, f32 output out, same as ORT).
Inputs are fixed pseudo-random raw pixels in 0..255, the models' input range.

vww-mobilenetv1-96 (13 depthwise convolutions; input scaled to 0..1) has no data set here, so its
rows are timing only, calibrated on random images: `examples/engine_steps.rs --save` lowers it at
W8A8 (per-channel int8 weights, u8 activations, min-max ranges) on 64 seeded uniform random images
in [0, 1) and writes them next to the engine file; ORT's quantize_static is calibrated on the same
64 images. It has no mixprec QDQ ONNX and no mixed-precision allocation (both need a data set), so
those columns read "-". Its timing input is the same 0..255 pixels as the engine example's, which
saturate the input quantizer (timing is independent of the values).

A float model whose batch dimension is fixed at 1 (mnist-8) is made batch-symbolic before timing:
the input's first dimension becomes a symbol and every constant Reshape target whose first entry
is 1 gets -1 there; the edited model is checked against batch-1 calls of the original on the
same 32 inputs. If that check fails the batch-B figure is B batch-1 calls instead. The table's
notes say which one was used.

Fairness (shared/BENCHMARKING.md): ONNX Runtime gets intra_op_num_threads equal to the engine's
thread cap, inter_op 1, sequential execution and session.intra_op.allow_spinning=0; every figure
is the median of timed calls after warm-up calls (about a third of a second of calls each); each
round times ORT fp32, ORT QDQ, mixprec W8A8, mixprec mixed back to back for one (model, threads,
batch), so noise hits all alike. Reported times are medians over --rounds rounds; a ratio is the
median over rounds of (ORT ms / mixprec ms) within one round, so > 1 means mixprec is faster.

How to run (not part of CI; creates the venv /tmp/venv-ort with numpy, onnx and onnxruntime when
the current interpreter lacks them, then re-runs itself inside it):

    python3 scripts/bench_engine_vs_ort.py [--threads 1,2] [--batch 1,32] [--rounds 3]
        [--models resnet8,mnist-8,vww]

It builds `cargo build --release --bin mixprec` and
`cargo build --release -p mixprec-engine --example engine_vs_ort --example engine_steps`
(CARGO_TARGET_DIR is honoured; --no-build skips both). The markdown table goes to stdout, progress to stderr; --json FILE also
writes every median. Quantized folders go to --work DIR (default: a temporary folder).
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
from onnx import numpy_helper  # noqa: E402

# (short name, file, data set; None = no data set: timing only, random calibration)
MODELS = [("resnet8", "resnet8-cifar10.onnx", "cifar10"), ("mnist-8", "mnist-8.onnx", "mnist"),
          ("vww", "vww-mobilenetv1-96.onnx", None)]
INT8_OPS = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm",
            "DynamicQuantizeMatMul", "QLinearAdd", "QLinearAveragePool", "QLinearGlobalAveragePool"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def data_dir():
    return os.environ.get("MIXPREC_DATA") or os.path.join(REPO, "..", "shared", "data")


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")


def pixels(shape, seed):
    """Fixed pseudo-random raw pixels in 0..255 (float32)."""
    n = int(np.prod(shape))
    x = (np.arange(n, dtype=np.uint64) + np.uint64(seed * 7919)) * np.uint64(2654435761)
    return ((x >> np.uint64(8)) % np.uint64(256)).astype(np.float32).reshape(shape)


def session(model, threads, opt=True, save_optimized=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if opt
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if save_optimized:
        so.optimized_model_filepath = save_optimized
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def symbolic_batch(path):
    """The float model with a free batch dimension, or None when its batch is already free."""
    m = onnx.load(path)
    inits = {i.name for i in m.graph.initializer}
    inp = [i for i in m.graph.input if i.name not in inits][0]
    d0 = inp.type.tensor_type.shape.dim[0]
    if d0.HasField("dim_param"):
        return None
    d0.ClearField("dim_value")
    d0.dim_param = "N"
    for o in m.graph.output:
        if o.type.tensor_type.shape.dim:
            o.type.tensor_type.shape.dim[0].ClearField("dim_value")
            o.type.tensor_type.shape.dim[0].dim_param = "N"
    del m.graph.value_info[:]
    # Initializers listed as graph inputs (IR < 4) may be overridden at run time, so ORT cannot
    # treat them as constants; keep only the real inputs.
    real = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(real)
    m.ir_version = max(m.ir_version, 4)
    shapes = {n.input[1] for n in m.graph.node if n.op_type == "Reshape" and len(n.input) > 1}
    for init in m.graph.initializer:
        if init.name in shapes:
            v = numpy_helper.to_array(init).copy()
            if v.ndim == 1 and v.size > 0 and v[0] == 1:
                v[0] = -1
                init.CopyFrom(numpy_helper.from_array(v, init.name))
    return m


def fp32_runner(path, threads, batch, note):
    """A callable timing-ready ORT fp32 run at `batch`, plus how batching is done."""
    orig = session(path, threads)
    name = orig.get_inputs()[0].name
    shape = orig.get_inputs()[0].shape
    sample = [int(d) for d in shape[1:]]
    x = pixels([batch] + sample, 1)
    if batch == 1 or not isinstance(shape[0], int):
        return (lambda: orig.run(None, {name: x})), "native"
    sym = symbolic_batch(path)
    if sym is not None:
        try:
            s = session(sym, threads)
            check = pixels([32] + sample, 2)
            ref = np.concatenate([orig.run(None, {name: check[i:i + 1]})[0] for i in range(32)])
            got = s.run(None, {name: check})[0]
            if got.shape == ref.shape and np.allclose(got, ref, rtol=1e-4, atol=1e-4):
                note.add(f"{os.path.basename(path)}: fixed batch 1 made symbolic (input dim and "
                         f"Reshape targets), checked equal to batch-1 calls")
                return (lambda: s.run(None, {name: x})), "symbolic"
            log(f"symbolic-batch copy of {path} disagrees with batch-1 calls; looping instead")
        except Exception as e:  # noqa: BLE001 - fall back to a loop, say so
            log(f"symbolic-batch copy of {path} failed ({e}); looping instead")
    note.add(f"{os.path.basename(path)}: fixed batch 1, batch-{batch} figure = {batch} batch-1 calls")
    xs = [x[i:i + 1] for i in range(batch)]
    return (lambda: [orig.run(None, {name: xi}) for xi in xs]), "loop"


def median_time(fn, warmup=3, budget_s=0.33):
    first = float("inf")
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        first = min(first, time.perf_counter() - t)
    reps = int(min(500, max(5, round(budget_s / max(first, 1e-6)))))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def engine_ms(example, mpqm, batch, threads):
    out = subprocess.run([example, "--model", mpqm, "--batch", str(batch), "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    line = json.loads(out.strip().splitlines()[-1])
    return line["median_ms"] / 1e3, line["backend"]


def quantize(mixprec, model_path, data, out, budget, options):
    cmd = [mixprec, "quantize", "--model", model_path, "--data", data, "--budget", budget,
           "--options", options, "--metric", "output-mse", "--out", out, "--pareto", "0",
           "--no-cache", "--limit", "200"]
    log("+ " + " ".join(cmd))
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    bits = [ln for ln in r.stdout.splitlines() if ln.startswith("weight bits per layer")]
    eng = [ln for ln in r.stdout.splitlines() if ln.startswith("integer engine")]
    return (bits[0] if bits else "") + ("; " + eng[0] if eng else "")


def random_calibration(example_steps, work, short, fname):
    """The engine file of a model without a data set (W8A8, lowered by engine_steps --save on 64
    seeded uniform random images in [0, 1)) and those images as [64, C, H, W] float32."""
    out = os.path.join(work, f"{short}-random")
    cmd = [example_steps, "--model", fname.removesuffix(".onnx"), "--save", out]
    log("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    stem = fname.removesuffix(".onnx")
    images = np.fromfile(os.path.join(out, f"{stem}-calib.f32"), dtype="<f4")
    return os.path.join(out, f"{stem}-w8a8.mpqm"), images


def ort_quantized(src, work, tag, calib=None):
    """ONNX Runtime's own static W8A8 (QDQ, u8 activations, s8 per-channel weights), the fast
    setting of shared/BENCHMARKING.md, calibrated on 16 pseudo-random pixel images (the range
    values do not change the speed), or on `calib` (flat float32, whole samples) when given.
    Returns (path, how) or (None, why not)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    m = symbolic_batch(src) or onnx.load(src)
    if m.opset_import[0].version < 13:
        m = onnx.version_converter.convert_version(m, 13)
    f32 = os.path.join(work, f"{tag}-f32.onnx")
    pre = os.path.join(work, f"{tag}-pre.onnx")
    out = os.path.join(work, f"{tag}-ort-int8.onnx")
    onnx.save(m, f32)
    try:
        quant_pre_process(f32, pre, skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - quantize the unprocessed model instead
        log(f"quant_pre_process failed on {tag} ({e}); quantizing without it")
        pre = f32
    name = m.graph.input[0].name
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]

    class Reader(CalibrationDataReader):
        def __init__(self):
            if calib is None:
                xs = [pixels([1] + shape, i) for i in range(16)]
            else:
                xs = list(calib.reshape([-1, 1] + shape))
            self.it = iter([{name: x} for x in xs])

        def get_next(self):
            return next(self.it, None)

    errors = []
    for per_channel in (True, False):
        try:
            quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=per_channel)
            return out, ("per channel" if per_channel else "per tensor (per channel failed)")
        except Exception as e:  # noqa: BLE001 - try the next setting, then report
            errors.append(f"per_channel={per_channel}: {type(e).__name__}: {e}")
    return None, "; ".join(errors)


def int8_nodes(qdq_path, threads, tmp):
    opt = os.path.join(tmp, "ort-optimized.onnx")
    session(qdq_path, threads, save_optimized=opt)
    ops = [n.op_type for n in onnx.load(opt).graph.node]
    q = sorted(o for o in ops if o in INT8_OPS)
    fl = sum(o in ("Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul") for o in ops)
    return f"{len(q)} int8 nodes ({', '.join(sorted(set(q)))}), {fl} float Conv/MatMul/Gemm left"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mixed-budget", default="wbits=5")
    ap.add_argument("--work", default=None, help="folder for the quantized outputs")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", default=",".join(m[0] for m in MODELS),
                    help="comma-separated short names: " + ", ".join(m[0] for m in MODELS))
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    batches = [int(b) for b in a.batch.split(",")]
    tgt = target_dir()
    wanted = set(a.models.split(","))
    unknown = wanted - {m[0] for m in MODELS}
    if unknown:
        sys.exit(f"error: unknown --models {sorted(unknown)}; known: {[m[0] for m in MODELS]}")
    need_cli = any(d for s_, _, d in MODELS if s_ in wanted)
    if not a.no_build:
        builds = [["-p", "mixprec-engine", "--example", "engine_vs_ort", "--example", "engine_steps"]]
        if need_cli:
            builds.insert(0, ["--bin", "mixprec"])
        for args in builds:
            subprocess.run(["cargo", "build", "--release", "-j", "2"] + args, check=True, cwd=REPO)
    mixprec = os.path.join(tgt, "release", "mixprec")
    example = os.path.join(tgt, "release", "examples", "engine_vs_ort")
    example_steps = os.path.join(tgt, "release", "examples", "engine_steps")
    for p in ([mixprec] if need_cli else []) + [example, example_steps]:
        if not os.path.exists(p):
            sys.exit(f"error: {p} is missing; run without --no-build or set CARGO_TARGET_DIR")
    work = a.work or tempfile.mkdtemp(prefix="mixprec-engine-vs-ort-")
    notes = set()
    rows, results = [], []
    for short, fname, data in MODELS:
        if short not in wanted:
            continue
        src = os.path.join(data_dir(), "models", fname)
        calib = None
        if data is None:
            w8_mpqm, calib = random_calibration(example_steps, work, short, fname)
            mx_mpqm, qdq = None, None
            notes.add(f"{short}: timing only, random calibration (64 seeded uniform images in "
                      f"[0, 1), the same for mixprec and ORT-quantized); no mixprec QDQ / mixed")
        else:
            w8 = os.path.join(work, f"{short}-w8a8")
            mx = os.path.join(work, f"{short}-mixed")
            info_w8 = quantize(mixprec, src, data, w8, "wbits=8", "w8")
            info_mx = quantize(mixprec, src, data, mx, a.mixed_budget, "w4,w8")
            notes.add(f"{short} W8A8: {info_w8}")
            notes.add(f"{short} mixed ({a.mixed_budget}, w4/w8): {info_mx}")
            w8_mpqm, mx_mpqm = os.path.join(w8, "model.mpqm"), os.path.join(mx, "model.mpqm")
            qdq = os.path.join(w8, "model.onnx")
            notes.add(f"{short} ORT QDQ (mixprec's model.onnx) optimised graph: "
                      f"{int8_nodes(qdq, 1, work)}")
        oq, how_oq = ort_quantized(src, work, short, calib)
        if oq:
            notes.add(f"{short} ORT-quantized int8 ({how_oq}) optimised graph: {int8_nodes(oq, 1, work)}")
        else:
            notes.add(f"{short} ORT-quantized int8: not available ({how_oq})")
        for t in threads:
            qsess = session(qdq, t) if qdq else None
            fsess = qsess or session(src, t)
            qname = fsess.get_inputs()[0].name
            osess = session(oq, t) if oq else None
            sample = [int(d) for d in fsess.get_inputs()[0].shape[1:]]
            for b in batches:
                fp32_fn, how = fp32_runner(src, t, b, notes)
                xq = pixels([b] + sample, 1)
                per = {k: [] for k in ("fp32", "qdq", "oq", "w8", "mx")}
                for r in range(a.rounds):
                    per["fp32"].append(median_time(fp32_fn))
                    per["qdq"].append(median_time(lambda: qsess.run(None, {qname: xq})) if qsess
                                      else float("nan"))
                    per["oq"].append(median_time(lambda: osess.run(None, {qname: xq})) if osess
                                     else float("nan"))
                    s, backend = engine_ms(example, w8_mpqm, b, t)
                    per["w8"].append(s)
                    s = engine_ms(example, mx_mpqm, b, t)[0] if mx_mpqm else float("nan")
                    per["mx"].append(s)
                med = {k: statistics.median(v) * 1e3 for k, v in per.items()}

                def ratio(num, den):
                    return statistics.median(x / y for x, y in zip(per[num], per[den]))

                rat = {"qdq/w8": ratio("qdq", "w8"), "qdq/mx": ratio("qdq", "mx"), "oq/w8": ratio("oq", "w8"),
                       "fp32/w8": ratio("fp32", "w8"), "fp32/mx": ratio("fp32", "mx")}
                log(f"{short} threads={t} batch={b}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items()))
                label = short if data else f"{short} (timing only, random calibration)"
                rows.append((label, t, b, med, rat, backend, how))
                results.append({"model": short, "threads": t, "batch": b, "backend": backend,
                                 "fp32_batching": how, "median_ms": med, "ratios": rat,
                                 "rounds": a.rounds})
    print("| model | threads | batch | ORT fp32 ms | ORT int8 QDQ ms | ORT int8 (ORT-quantized) ms "
          "| mixprec W8A8 ms | mixprec mixed ms | QDQ / W8A8 | QDQ / mixed | ORT-quantized / W8A8 "
          "| fp32 / W8A8 | fp32 / mixed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    def ms(v):
        return "-" if v != v else f"{v:.3f}"

    def x(v):
        return "-" if v != v else f"{v:.2f}x"

    for short, t, b, med, rat, backend, how in rows:
        print(f"| {short} | {t} | {b} | {ms(med['fp32'])} | {ms(med['qdq'])} | {ms(med['oq'])} | "
              f"{ms(med['w8'])} | {ms(med['mx'])} | {x(rat['qdq/w8'])} | {x(rat['qdq/mx'])} | "
              f"{x(rat['oq/w8'])} | {x(rat['fp32/w8'])} | {x(rat['fp32/mx'])} |")
    print()
    print(f"mixprec backend: {rows[0][5] if rows else '?'}; onnxruntime {ort.__version__}; "
          f"{a.rounds} rounds; ratios > 1 mean mixprec is faster.")
    for n in sorted(notes):
        print(f"- {n}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "results": results, "notes": sorted(notes)}, f,
                      indent=1)


if __name__ == "__main__":
    main()
