#!/usr/bin/env bash
# Regenerates the parity fixtures (tests/fixtures/parity/) from scratch: builds and runs the Rust exporter
# of the initial weights and token batches, then the independent PyTorch reference on them.
#
# Usage: scripts/reference/run.sh [OUT_DIR]   (default: tests/fixtures/parity)
#
# The first run creates a virtual environment in local/reference-venv (git-ignored) and installs pinned
# versions of torch, safetensors and numpy from PyPI (a few minutes; torch runs on the CPU). The same
# versions on the same kind of CPU reproduce the committed fixtures bit for bit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-$root/tests/fixtures/parity}"
venv="$root/local/reference-venv"
requirements=(torch==2.15.0 safetensors==0.8.0 numpy==2.4.6)

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "${requirements[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(any(version(name) != wanted for name, wanted in (r.split("==") for r in sys.argv[1:])))
PY
    echo "installing ${requirements[*]} from PyPI into $venv"
    "$venv/bin/pip" install --quiet "${requirements[@]}"
fi

mkdir -p "$out"
(cd "$root" && cargo run --release --quiet --example parity_export -- "$out")
"$venv/bin/python" "$root/scripts/reference/parity.py" "$out"
