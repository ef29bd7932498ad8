#!/usr/bin/env python3
"""ONNX Runtime reference outputs for the mixprec executor tests.

Writes tests-data/ort/{mnist-8,resnet8-cifar10,vww-mobilenetv1-96}.f32 (raw little-endian float32)
and tests-data/ort/manifest.json (model sha256, input recipe and sha256, shapes, versions, and the
full-test-set top-1 accuracy of mnist-8 and resnet8). The models themselves are never copied.

How to run (ONNX Runtime and numpy from PyPI, in a throw-away virtual environment):

    python3 -m venv /tmp/venv-ort && /tmp/venv-ort/bin/pip install numpy onnxruntime
    /tmp/venv-ort/bin/python scripts/ort_reference.py

The data folder is $MIXPREC_DATA, default ../shared/data next to the repository root.

Input recipes (rebuilt in Rust by mixprec_data::ReferenceRecipe::inputs):
  mnist-test-raw255            first 100 MNIST test images, values 0..255, [100,1,28,28],
                               one image per call (the model's batch is fixed to 1)
  cifar10-test-raw255          first 100 CIFAR-10 test images, values 0..255, [100,3,32,32] NCHW
  cifar10-test-nearest3x-unit  first 100 CIFAR-10 test images, each pixel repeated 3x3
                               (nearest neighbour to 96x96), then float32 x / 255, [100,3,96,96]
"""
import gzip
import hashlib
import json
import os
import platform
import struct
import sys

import numpy as np
import onnxruntime as ort

N = 100
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests-data", "ort")


def data_dir():
    env = os.environ.get("MIXPREC_DATA")
    return env if env else os.path.join(REPO, "..", "shared", "data")


def read_maybe_gz(path):
    if not os.path.isfile(path):
        sys.exit(f"not found: {path}: set MIXPREC_DATA to the folder holding mnist/, cifar10/, models/")
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def mnist_test():
    d = os.path.join(data_dir(), "mnist")
    imgs = read_maybe_gz(os.path.join(d, "t10k-images-idx3-ubyte.gz"))
    labs = read_maybe_gz(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    magic, n, rows, cols = struct.unpack(">IIII", imgs[:16])
    assert magic == 0x803
    lmagic, ln = struct.unpack(">II", labs[:8])
    assert lmagic == 0x801 and ln == n
    x = np.frombuffer(imgs, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)
    y = np.frombuffer(labs, dtype=np.uint8, offset=8).astype(np.int64)
    return x, y


def cifar10_test():
    raw = read_maybe_gz(os.path.join(data_dir(), "cifar10", "test_batch.bin.gz"))
    assert len(raw) % 3073 == 0
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    y = rec[:, 0].astype(np.int64)
    x = rec[:, 1:].reshape(-1, 3, 32, 32)
    return x, y


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def session(model_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])


def run(sess, x, batch):
    name = sess.get_inputs()[0].name
    outs = []
    for s in range(0, x.shape[0], batch):
        outs.append(sess.run(None, {name: x[s : s + batch]})[0])
    return np.concatenate(outs, axis=0).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    mx, my = mnist_test()
    cx, cy = cifar10_test()
    specs = [
        {
            "model": "mnist-8.onnx",
            "recipe": "mnist-test-raw255",
            "description": "first 100 MNIST test images (t10k), raw 0..255 as float32, "
            "shape [100,1,28,28], one image per call (batch fixed to 1)",
            "inputs": mx[:N].astype(np.float32),
            "batch": 1,
            "full": ("mnist test", "raw 0..255", mx.astype(np.float32), my, 1),
        },
        {
            "model": "resnet8-cifar10.onnx",
            "recipe": "cifar10-test-raw255",
            "description": "first 100 CIFAR-10 test images (test_batch.bin), raw 0..255 as "
            "float32, NCHW RGB, shape [100,3,32,32]",
            "inputs": cx[:N].astype(np.float32),
            "batch": N,
            "full": ("cifar10 test (JPEG-decoded copy)", "raw 0..255", cx.astype(np.float32), cy, 500),
        },
        {
            "model": "vww-mobilenetv1-96.onnx",
            "recipe": "cifar10-test-nearest3x-unit",
            "description": "first 100 CIFAR-10 test images, nearest-neighbour upsampled to 96x96 "
            "(each pixel repeated 3x3), then float32 x/255, NCHW RGB, shape [100,3,96,96]",
            "inputs": cx[:N].repeat(3, axis=2).repeat(3, axis=3).astype(np.float32) / np.float32(255.0),
            "batch": N,
            "full": None,
        },
    ]
    entries = []
    for spec in specs:
        model_path = os.path.join(data_dir(), "models", spec["model"])
        if not os.path.isfile(model_path):
            sys.exit(f"model not found: {model_path}: set MIXPREC_DATA")
        sess = session(model_path)
        x = np.ascontiguousarray(spec["inputs"], dtype="<f4")
        out = run(sess, x, spec["batch"])
        stem = spec["model"][: -len(".onnx")]
        out_file = f"{stem}.f32"
        out_path = os.path.join(OUT, out_file)
        with open(out_path, "wb") as f:
            f.write(np.ascontiguousarray(out, dtype="<f4").tobytes())
        acc = None
        if spec["full"] is not None:
            data, pre, fx, fy, fb = spec["full"]
            logits = run(sess, fx, fb)
            correct = int((logits.argmax(axis=1) == fy).sum())
            acc = {
                "data": data,
                "preprocessing": pre,
                "correct": correct,
                "total": int(fy.shape[0]),
                "top1": correct / fy.shape[0],
            }
        entries.append(
            {
                "model": spec["model"],
                "model_sha256": sha256_file(model_path),
                "input_name": sess.get_inputs()[0].name,
                "input_recipe": spec["recipe"],
                "input_description": spec["description"],
                "input_shape": list(x.shape),
                "input_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
                "run_batch": spec["batch"],
                "output_name": sess.get_outputs()[0].name,
                "output_file": out_file,
                "output_shape": list(out.shape),
                "output_dtype": "float32-le",
                "output_sha256": sha256_file(out_path),
                "full_test_accuracy": acc,
            }
        )
        msg = f"{spec['model']}: wrote {out_file} {list(out.shape)} ({os.path.getsize(out_path)} bytes)"
        if acc:
            msg += f", full-test top-1 {100 * acc['top1']:.2f} % ({acc['correct']}/{acc['total']})"
        print(msg)
    manifest = {
        "generator": "scripts/ort_reference.py",
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "providers": ["CPUExecutionProvider"],
        "entries": entries,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"wrote {os.path.join(OUT, 'manifest.json')}")


if __name__ == "__main__":
    main()
