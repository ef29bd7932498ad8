#!/usr/bin/env python3
"""Check mixprec's LSTM / GRU / RNN against ONNX Runtime.

Builds small random single-node models with the `onnx` package — every direction (forward,
reverse, bidirectional) × layout (0, 1) for each operator, both `linear_before_reset` values
for GRU, with and without per-batch `sequence_lens` (given as a run-time input or as an
initializer), initial states, LSTM peepholes, `clip`, `input_forget`, non-default activations
with `activation_alpha` / `activation_beta`, omitted outputs, and symbolic (dynamic) sequence
and batch axes — runs each in ONNX Runtime and with `mixprec run MODEL --input NAME=FILE.npy
--output OUT.npz`, and compares every output: the check passes when the largest absolute
difference is below 1e-4 for all models.

Usage: scripts/check_rnn_ort.py [--bin target/release/mixprec] [--seed 0] [--keep DIR]
Needs a venv with numpy + onnx + onnxruntime; when run with a Python lacking them it creates
/tmp/venv-ort (or $MIXPREC_ORT_VENV) and re-runs itself there.
"""
import argparse
import itertools
import os
import subprocess
import sys
import tempfile

from ort_venv import ensure_ort  # noqa: E402

ensure_ort(__file__)
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def make_case(rng, op, direction, layout, lbr=0, seq_lens=None, lens_as_input=True,
              initial=False, peep=False, clip=None, input_forget=False, activations=None,
              alpha=None, beta=None, outputs=("Y", "Y_h", "Y_c"), seq=4, batch=3, inp=5,
              hidden=3, scale=0.6):
    """One case: a dict with the model for mixprec (in `layout`) and its inputs, the same
    model in layout 0 for ONNX Runtime (whose CPU kernels reject layout 1) with its inputs,
    and a function taking ONNX Runtime's outputs to `layout`."""
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    w = rng.uniform(-scale, scale, (dirs, g * hidden, inp)).astype(np.float32)
    r = rng.uniform(-scale, scale, (dirs, g * hidden, hidden)).astype(np.float32)
    b = rng.uniform(-scale, scale, (dirs, 2 * g * hidden)).astype(np.float32)
    x0 = rng.uniform(-1.5, 1.5, (seq, batch, inp)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (dirs, batch, hidden)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (dirs, batch, hidden)).astype(np.float32)
    p = rng.uniform(-scale, scale, (dirs, 3 * hidden)).astype(np.float32)
    outs = [o if o in outputs else "" for o in (["Y", "Y_h", "Y_c"] if op == "LSTM"
                                                  else ["Y", "Y_h"])]
    while outs and outs[-1] == "":
        outs.pop()

    def build(lay):
        bt = (lambda a: a.transpose(1, 0, 2)) if lay else (lambda a: a)
        inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
                 numpy_helper.from_array(b, "B")]
        feeds = {"X": bt(x0)}
        sym = ["seq", "batch", inp] if lay == 0 else ["batch", "seq", inp]
        graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, sym)]
        slots = {"X": "X", "W": "W", "R": "R", "B": "B"}
        if seq_lens is not None:
            sl = np.array(seq_lens, dtype=np.int32)
            if lens_as_input:
                feeds["sequence_lens"] = sl
                graph_inputs.append(
                    helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"]))
            else:
                inits.append(numpy_helper.from_array(sl, "sequence_lens"))
            slots["sequence_lens"] = "sequence_lens"
        state_sym = [dirs, "batch", hidden] if lay == 0 else ["batch", dirs, hidden]
        if initial:
            feeds["initial_h"] = np.ascontiguousarray(bt(h0))
            graph_inputs.append(
                helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, state_sym))
            slots["initial_h"] = "initial_h"
            if op == "LSTM":
                inits.append(numpy_helper.from_array(np.ascontiguousarray(bt(c0)), "initial_c"))
                slots["initial_c"] = "initial_c"
        if op == "LSTM" and peep:
            inits.append(numpy_helper.from_array(p, "P"))
            slots["P"] = "P"
        order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
        node_inputs = [slots.get(n, "") for n in order]
        while node_inputs and node_inputs[-1] == "":
            node_inputs.pop()
        attrs = dict(hidden_size=hidden, direction=direction)
        if lay:
            attrs["layout"] = 1
        if op == "GRU":
            attrs["linear_before_reset"] = lbr
        if clip is not None:
            attrs["clip"] = clip
        if input_forget:
            attrs["input_forget"] = 1
        if activations is not None:
            attrs["activations"] = activations
        if alpha is not None:
            attrs["activation_alpha"] = alpha
        if beta is not None:
            attrs["activation_beta"] = beta
        node = helper.make_node(op, node_inputs, outs, name=f"{op.lower()}_1", **attrs)
        y_sym = ["seq", dirs, "batch", hidden] if lay == 0 else ["batch", "seq", dirs, hidden]
        out_infos = [helper.make_tensor_value_info(o, TensorProto.FLOAT,
                                                   y_sym if o == "Y" else state_sym)
                     for o in outs if o]
        graph = helper.make_graph([node], "rnn_check", graph_inputs, out_infos,
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model, {k: np.ascontiguousarray(v) for k, v in feeds.items()}

    def to_layout(name, a):
        if not layout:
            return a
        return a.transpose(2, 0, 1, 3) if name == "Y" else a.transpose(1, 0, 2)

    parts = [op, direction, f"layout{layout}"]
    if seq * batch * hidden > 200:
        parts.append(f"seq {seq} batch {batch} input {inp} hidden {hidden}")
    if op == "GRU":
        parts.append(f"lbr{lbr}")
    if seq_lens is not None:
        shown = (list(seq_lens) if len(seq_lens) <= 6
                 else f"{len(seq_lens)} values in [{min(seq_lens)}, {max(seq_lens)}]")
        parts.append(f"lens={shown}" + ("" if lens_as_input else "(const)"))
    for flag, name in [(initial, "init"), (peep, "peep"), (input_forget, "input_forget")]:
        if flag:
            parts.append(name)
    if clip is not None:
        parts.append(f"clip={clip}")
    if activations is not None:
        parts.append("act=" + "/".join(activations))
    if "" in outs or len(outs) < (3 if op == "LSTM" else 2):
        parts.append("outs=" + ",".join(o or "-" for o in outs))
    model, feeds = build(layout)
    ref_model, ref_feeds = build(0)
    return dict(model=model, feeds=feeds, ref_model=ref_model, ref_feeds=ref_feeds,
                to_layout=to_layout, label=" ".join(parts))


def pytorch_style_case(rng, batch=3, seq=6, inp=5, hidden=4):
    """The shape of `torch.onnx.export` of a batch-first `nn.LSTM` with dynamic axes and a
    Linear head: Transpose, zero initial states from Shape → Gather → Unsqueeze → Concat →
    ConstantOfShape, weights re-ordered from PyTorch's i, f, g, o gates with Slice / Concat,
    Squeeze and Transpose after, then a MatMul head."""
    inits = []
    nodes = []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", **kw))
        return outs[0]

    h = hidden
    w_raw = const("w_ih", rng.uniform(-0.5, 0.5, (4 * h, inp)).astype(np.float32))
    r_raw = const("w_hh", rng.uniform(-0.5, 0.5, (4 * h, h)).astype(np.float32))
    b_raw = const("b", rng.uniform(-0.5, 0.5, (8 * h,)).astype(np.float32))
    head = const("head", rng.uniform(-0.5, 0.5, (h, 7)).astype(np.float32))
    axes0 = const("axes0", np.array([0], dtype=np.int64))

    def iofc(src, tag, blocks):
        # PyTorch order i, f, g, o -> ONNX i, o, f, c, per block of `blocks` gate groups.
        parts = []
        for blk in range(blocks):
            for gate in (0, 3, 1, 2):
                st = const(f"{tag}_s{blk}{gate}", np.array([(blk * 4 + gate) * h]))
                en = const(f"{tag}_e{blk}{gate}", np.array([(blk * 4 + gate + 1) * h]))
                parts.append(node("Slice", [src, st, en, axes0], [f"{tag}_{blk}{gate}"]))
        cat = node("Concat", parts, [f"{tag}_iofc"], axis=0)
        return node("Unsqueeze", [cat, axes0], [f"{tag}_3d"])

    W = iofc(w_raw, "W", 1)
    R = iofc(r_raw, "R", 1)
    B = iofc(b_raw, "B", 2)
    xt = node("Transpose", ["X"], ["xt"], perm=[1, 0, 2])
    shape = node("Shape", ["X"], ["x_shape"])
    bsz = node("Gather", [shape, const("zero", np.array(0, dtype=np.int64))], ["bsz"], axis=0)
    b1 = node("Unsqueeze", [bsz, axes0], ["bsz1"])
    hshape = node("Concat", [const("ndir", np.array([1], dtype=np.int64)), b1,
                             const("hid", np.array([h], dtype=np.int64))], ["hshape"], axis=0)
    h0 = node("ConstantOfShape", [hshape], ["h0"],
              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))
    node("LSTM", [xt, W, R, B, "", h0, h0], ["Y", "Y_h", "Y_c"], hidden_size=h)
    sq = node("Squeeze", ["Y", const("axes1", np.array([1], dtype=np.int64))], ["y3"])
    yb = node("Transpose", [sq], ["y_bf"], perm=[1, 0, 2])
    node("MatMul", [yb, head], ["logits"])
    graph = helper.make_graph(
        nodes, "torch_like",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "seq", inp])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 7]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", h])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    feeds = {"X": rng.uniform(-1, 1, (batch, seq, inp)).astype(np.float32)}
    return dict(model=model, feeds=feeds, ref_model=model, ref_feeds=feeds,
                to_layout=lambda n, a: a,
                label="PyTorch-style batch-first LSTM + MatMul head (shape sub-graphs)")


def cases(rng):
    out = [pytorch_style_case(rng)]
    for op, direction, layout in itertools.product(
            ["LSTM", "GRU", "RNN"], ["forward", "reverse", "bidirectional"], [0, 1]):
        lbrs = [0, 1] if op == "GRU" else [0]
        for lbr in lbrs:
            out.append(make_case(rng, op, direction, layout, lbr=lbr))
            out.append(make_case(rng, op, direction, layout, lbr=lbr, seq_lens=[4, 2, 3],
                                 initial=True, peep=(op == "LSTM")))
            out.append(make_case(rng, op, direction, layout, lbr=lbr, seq_lens=[1, 4, 3],
                                 lens_as_input=False))
    # Zero-length sequences (ONNX Runtime's LSTM and GRU give zero final states).
    for op in ["LSTM", "GRU"]:
        for direction in ["forward", "bidirectional"]:
            out.append(make_case(rng, op, direction, 0, seq_lens=[3, 0, 4], initial=True))
    # clip, input_forget, activations with alpha / beta, omitted outputs.
    out.append(make_case(rng, "LSTM", "bidirectional", 0, clip=0.5, initial=True, peep=True))
    out.append(make_case(rng, "LSTM", "forward", 1, input_forget=True, peep=True, initial=True))
    out.append(make_case(rng, "LSTM", "forward", 0,
                         activations=["HardSigmoid", "LeakyRelu", "Softsign"],
                         alpha=[0.3, 0.2], beta=[0.4]))
    out.append(make_case(rng, "LSTM", "bidirectional", 0,
                         activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Elu", "Softplus"],
                         alpha=[0.25, 0.8], beta=[0.45]))
    out.append(make_case(rng, "GRU", "reverse", 0, lbr=1, clip=0.7,
                         activations=["Sigmoid", "Relu"]))
    out.append(make_case(rng, "GRU", "forward", 1,
                         activations=["HardSigmoid", "ScaledTanh"], alpha=[0.2, 0.9],
                         beta=[0.5, 1.1]))
    out.append(make_case(rng, "RNN", "forward", 0, activations=["Relu"], clip=0.9))
    out.append(make_case(rng, "RNN", "bidirectional", 0,
                         activations=["LeakyRelu", "LeakyRelu"], alpha=[0.1, 0.3]))
    out.append(make_case(rng, "RNN", "forward", 1, activations=["Affine"], alpha=[0.7],
                         beta=[0.1]))
    out.append(make_case(rng, "LSTM", "forward", 0, outputs=("Y_h",)))
    out.append(make_case(rng, "LSTM", "bidirectional", 1, outputs=("Y", "Y_c"),
                         seq_lens=[2, 4, 1]))
    out.append(make_case(rng, "GRU", "forward", 0, outputs=("Y_h",), seq_lens=[2, 4, 3]))
    # A longer sequence and a wider layer.
    out.append(make_case(rng, "LSTM", "bidirectional", 0, seq=16, batch=5, inp=12, hidden=10,
                         seq_lens=[16, 9, 1, 12, 16], initial=True))
    out.append(make_case(rng, "GRU", "bidirectional", 1, lbr=1, seq=16, batch=5, inp=12,
                         hidden=10, initial=True))
    # Realistic sizes with PyTorch's default weight range ±1/sqrt(hidden). (With weights of
    # ±0.6 at hidden 256 the recurrence is chaotic: the ~1e-6 differences between ONNX
    # Runtime's approximate sigmoid / tanh and exact ones grow to O(1) within ~20 steps, for
    # any two implementations.)
    for op in ["LSTM", "GRU", "RNN"]:
        out.append(make_case(rng, op, "bidirectional", 0, lbr=1, seq=100, batch=16, inp=128,
                             hidden=256, scale=1 / 16, seq_lens=[100, 37] * 8, initial=True))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "mixprec"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="write the models and arrays to this folder")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    tmp_ctx = None
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        tmp = a.keep
    else:
        tmp_ctx = tempfile.TemporaryDirectory()
        tmp = tmp_ctx.name
    worst_all = 0.0
    failures = []
    all_cases = cases(rng)
    for k, case in enumerate(all_cases):
        label, feeds = case["label"], case["feeds"]
        path = os.path.join(tmp, f"case{k}.onnx")
        onnx.save(case["model"], path)
        ref_path = os.path.join(tmp, f"case{k}_layout0.onnx")
        onnx.save(case["ref_model"], ref_path)
        sess = ort.InferenceSession(ref_path, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        ref = {n: case["to_layout"](n, v)
               for n, v in zip(names, sess.run(None, case["ref_feeds"]))}
        args = [a.bin, "run", path]
        for name, arr in feeds.items():
            f = os.path.join(tmp, f"case{k}_{name}.npy")
            np.save(f, arr)
            args += ["--input", f"{name}={f}"]
        out_path = os.path.join(tmp, f"case{k}_out.npz")
        args += ["--output", out_path]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"{label}: mixprec run failed: {r.stderr.strip()}")
            print(f"FAIL {k:2d} {label}: mixprec run failed")
            continue
        got = np.load(out_path)
        worst = 0.0
        problem = None
        for n in names:
            if n not in got:
                problem = f"output {n} missing from mixprec's outputs {list(got.keys())}"
                break
            if got[n].shape != ref[n].shape:
                problem = f"output {n}: shape {got[n].shape}, ONNX Runtime {ref[n].shape}"
                break
            worst = max(worst, float(np.abs(got[n] - ref[n]).max()))
        worst_all = max(worst_all, worst)
        ok = problem is None and worst < TOL
        if not ok:
            failures.append(f"{label}: {problem or f'max |diff| {worst:.3g}'}")
        print(f"{'ok  ' if ok else 'FAIL'} {k:2d} {label}: outputs {','.join(names)} "
              f"max |diff| {worst:.2e}" + (f" ({problem})" if problem else ""))
    print(f"\n{len(all_cases) - len(failures)}/{len(all_cases)} models agree with ONNX Runtime "
          f"{ort.__version__} within {TOL} (largest difference {worst_all:.2e})")
    for f in failures:
        print("FAILED", f)
    if tmp_ctx:
        tmp_ctx.cleanup()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
