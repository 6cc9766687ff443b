#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain (no GPU needed), everything scripts/gpu_check.sh runs on a GPU
# machine that has none: the GPU test binaries and the bench_gpu example, stripped, in one folder.
# Usage: scripts/gpu_bundle.sh [folder]   (default: local/gpu, which git ignores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-local/gpu}"
rm -rf "$out" && mkdir -p "$out"
tests=(gpu_core gpu_elementwise gpu_nn_ops gpu_train)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo build --release --example bench_gpu
cargo test --release --no-run "${args[@]}" --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        print(msg["target"]["name"], msg["executable"])
' | while read -r name exe; do cp "$exe" "$out/$name"; done
cp target/release/examples/bench_gpu "$out/bench_gpu"
strip "$out"/* || true
ls -la "$out"
du -sh "$out"
