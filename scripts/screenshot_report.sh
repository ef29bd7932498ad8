#!/usr/bin/env bash
# Renders an HTML file (e.g. a mixprec report.html) to a PNG with headless Chromium.
#
#   scripts/screenshot_report.sh report.html [out.png] [WIDTHxHEIGHT]
#
# Defaults: out.png next to the HTML file with the extension .png, window 1400x3000.
# Needs Debian's `chromium` (apt-get install -y chromium).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 REPORT.html [OUT.png] [WIDTHxHEIGHT]" >&2
    exit 2
fi
html=$1
[[ -f $html ]] || { echo "error: no such file: $html" >&2; exit 1; }
out=${2:-${html%.*}.png}
size=${3:-1400x3000}
[[ $size =~ ^[0-9]+x[0-9]+$ ]] || { echo "error: size must be WIDTHxHEIGHT, got '$size'" >&2; exit 2; }

browser=""
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [[ -z $browser ]]; then
    echo "error: no chromium found; install it with: apt-get install -y chromium" >&2
    exit 1
fi

abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
out_dir=$(dirname "$out")
[[ -d $out_dir ]] || { echo "error: the directory of $out does not exist" >&2; exit 1; }
abs_out=$(cd "$out_dir" && pwd)/$(basename "$out")
rm -f "$abs_out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

"$browser" --headless --disable-gpu --no-sandbox --hide-scrollbars \
    --user-data-dir="$profile" --force-device-scale-factor=1 \
    --screenshot="$abs_out" --window-size="${size/x/,}" \
    "file://$abs_html" >/dev/null 2>&1 || true
if [[ ! -s $abs_out ]]; then
    echo "error: chromium wrote no screenshot to $abs_out" >&2
    exit 1
fi
echo "$abs_out"
