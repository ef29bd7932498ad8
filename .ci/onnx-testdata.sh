#!/usr/bin/env bash
# Install the ONNX backend test data (Debian/Ubuntu package libonnx-testdata) and print the
# node-test folder, for the conformance test crates/mixprec-exec/tests/onnx_conformance.rs:
#
#   export ONNX_TESTDATA="$(.ci/onnx-testdata.sh)" MIXPREC_REQUIRE_ONNX_TESTDATA=1
#   cargo test --release -p mixprec-exec --test onnx_conformance
set -euo pipefail
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
if ! dpkg -s libonnx-testdata >/dev/null 2>&1; then
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libonnx-testdata >&2
fi
dir="$(dpkg -L libonnx-testdata | grep -m1 '/data/node$' || true)"
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
  echo "libonnx-testdata is installed but has no data/node folder" >&2
  exit 1
fi
echo "$dir"
