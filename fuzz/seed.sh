#!/usr/bin/env bash
# Fill fuzz/corpus/<target>/ with small valid inputs: the MNIST ONNX model and the ONNX node-test
# models (ONNX_TESTDATA, see .ci/onnx-testdata.sh), a safetensors file matching the
# safetensors_load graph, and small IDX / CIFAR-10 files (raw and gzipped).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${MIXPREC_DATA:-$here/../../shared/data}"
onnx="${ONNX_TESTDATA:-/usr/share/libonnx-testdata/data/node}"
c="$here/corpus"
mkdir -p "$c/onnx_import" "$c/safetensors_load" "$c/data_formats"
if [ -f "$data/models/mnist-8.onnx" ]; then cp "$data/models/mnist-8.onnx" "$c/onnx_import/"; fi
if [ -d "$onnx" ]; then
  for d in "$onnx"/test_*/; do
    n="$(basename "$d")"
    cp "$d/model.onnx" "$c/onnx_import/$n.onnx"
  done
fi
python3 - "$c" <<'PY'
import gzip, json, os, struct, sys
c = sys.argv[1]
def put(t, name, b):
    open(os.path.join(c, t, name), "wb").write(b)
h = json.dumps({"__metadata__": {"arch": "tiny"},
                "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                "b": {"dtype": "F32", "shape": [3], "data_offsets": [24, 36]}}).encode()
h += b" " * ((8 - len(h) % 8) % 8)
put("safetensors_load", "tiny.safetensors",
    struct.pack("<Q", len(h)) + h + struct.pack("<9f", *range(9)))
img = struct.pack(">IIII", 0x803, 2, 4, 4) + bytes(range(32))
lab = struct.pack(">II", 0x801, 2) + bytes([3, 7])
cif = b"".join(bytes([k]) + bytes((k * 7 + i) % 256 for i in range(3072)) for k in (1, 9))
for name, b in [("images.idx", img), ("labels.idx", lab), ("two.cifar", cif)]:
    put("data_formats", name, b)
    put("data_formats", name + ".gz", gzip.compress(b))
PY
echo "seeded $(ls "$c"/onnx_import | wc -l) ONNX models into $c"
