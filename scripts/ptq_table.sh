#!/usr/bin/env bash
# Post-training quantization table: `mixprec quantize` on mnist-8 (MNIST test) and ResNet-8
# (CIFAR-10 test) at W8A8, W4A8, W3A8 and W2A8, per tensor and per channel, with uniform,
# power-of-two and k-means weights (activations: 8-bit asymmetric uniform per tensor, min-max
# calibration on 256 images). Prints a markdown table on stdout; progress goes to stderr.
#
# Environment:
#   MIXPREC        the mixprec binary (default: target/release/mixprec)
#   MIXPREC_DATA   the shared data folder (default: ../shared/data)
#   MNIST_LIMIT    evaluate only the first N MNIST test images (default: all 10,000)
#   RESNET_LIMIT   evaluate only the first N CIFAR-10 test images (default: all 10,000)
#   QUANTIZERS     weight quantizers (default: "uniform power-of-two kmeans")
#   BITS           weight bit widths (default: "8 4 3 2")
set -euo pipefail

cd "$(dirname "$0")/.."
MIXPREC=${MIXPREC:-target/release/mixprec}
DATA=${MIXPREC_DATA:-../shared/data}
QUANTIZERS=${QUANTIZERS:-uniform power-of-two kmeans}
BITS=${BITS:-8 4 3 2}
export MIXPREC_DATA=$DATA

if [[ ! -x $MIXPREC ]]; then
    echo "error: $MIXPREC not found; build it with 'cargo build --release -p mixprec-cli' or set MIXPREC" >&2
    exit 1
fi
if ! command -v jq >/dev/null; then
    echo "error: jq is needed to read the JSON output of mixprec quantize" >&2
    exit 1
fi

limit_args() { [[ -n ${1:-} ]] && echo "--limit $1"; true; }

# table_for NAME MODEL DATA LIMIT
table_for() {
    local name=$1 model=$2 data=$3 limit=${4:-}
    local base=(quantize --model "$model" --data "$data" --json)
    # shellcheck disable=SC2046
    base+=($(limit_args "$limit"))
    echo "[$name] float accuracy" >&2
    local first images float
    first=$("$MIXPREC" "${base[@]}" --uniform w8a8)
    images=$(jq -r .images <<<"$first")
    float=$(jq -r '.float_accuracy * 100 | . * 100 | round / 100' <<<"$first")
    echo "| $name ($images images, float $float %) | granularity |$(for b in $BITS; do printf ' W%sA8 |' "$b"; done)"
    echo "|---|---|$(for _ in $BITS; do printf -- '---:|'; done)"
    for q in $QUANTIZERS; do
        for g in tensor channel; do
            local row="| $q | $g |"
            for b in $BITS; do
                echo "[$name] $q w${b}a8 $g" >&2
                local out acc bpe
                if out=$("$MIXPREC" "${base[@]}" --skip-float --uniform "w${b}a8" \
                    --quantizer "$q" --granularity "$g" 2>/dev/null); then
                    acc=$(jq -r '.quantized_accuracy * 100 | . * 100 | round / 100' <<<"$out")
                    bpe=$(jq -r '.size.weight_bits_per_element | . * 100 | round / 100' <<<"$out")
                    row+=" $acc / $bpe |"
                else
                    row+=" n/a |"
                fi
            done
            echo "$row"
        done
    done
    echo
}

echo "Cells: top-1 accuracy (%) / weight storage bits per element (codes + scales, zero points,"
echo "codebooks). Activations: 8-bit asymmetric uniform per tensor, min-max calibration (256 images)."
echo
table_for mnist-8 "$DATA/models/mnist-8.onnx" mnist "${MNIST_LIMIT:-}"
table_for resnet8 "$DATA/models/resnet8-cifar10.onnx" cifar10 "${RESNET_LIMIT:-}"
