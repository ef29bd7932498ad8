#!/usr/bin/env python3
"""Writes the embedded MNIST evaluation subset of mixprec-data.

Takes the FIRST 1,000 images and labels of the MNIST test set
(<data>/mnist/t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz) and stores them,
as IDX files gzipped reproducibly (level 9, no file name, mtime 0), in
crates/mixprec-data/assets/.

Run from anywhere, with only the Python standard library:

    python3 scripts/make_mnist_subset.py            # data folder from MIXPREC_DATA or ../shared/data
    MIXPREC_DATA=/path/to/data python3 scripts/make_mnist_subset.py
"""
import gzip
import io
import os
import struct
import sys

N = 1000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir():
    env = os.environ.get("MIXPREC_DATA")
    if env:
        return env
    return os.path.join(REPO, "..", "shared", "data")


def read_maybe_gz(path):
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def write_gz(path, payload):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as g:
        g.write(payload)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    print(f"wrote {path}: {len(buf.getvalue())} bytes")


def main():
    src = os.path.join(data_dir(), "mnist")
    img_path = os.path.join(src, "t10k-images-idx3-ubyte.gz")
    lab_path = os.path.join(src, "t10k-labels-idx1-ubyte.gz")
    for p in (img_path, lab_path):
        if not os.path.isfile(p):
            sys.exit(f"MNIST not found at {p}: set MIXPREC_DATA to the folder holding mnist/")
    imgs = read_maybe_gz(img_path)
    labs = read_maybe_gz(lab_path)
    magic, n, rows, cols = struct.unpack(">IIII", imgs[:16])
    assert magic == 0x803 and n >= N, (hex(magic), n)
    lmagic, ln = struct.unpack(">II", labs[:8])
    assert lmagic == 0x801 and ln == n, (hex(lmagic), ln)
    out_dir = os.path.join(REPO, "crates", "mixprec-data", "assets")
    os.makedirs(out_dir, exist_ok=True)
    img_out = struct.pack(">IIII", 0x803, N, rows, cols) + imgs[16 : 16 + N * rows * cols]
    lab_out = struct.pack(">II", 0x801, N) + labs[8 : 8 + N]
    write_gz(os.path.join(out_dir, "mnist-t10k-first1000-images-idx3-ubyte.gz"), img_out)
    write_gz(os.path.join(out_dir, "mnist-t10k-first1000-labels-idx1-ubyte.gz"), lab_out)


if __name__ == "__main__":
    main()
