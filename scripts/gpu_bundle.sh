#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain (no GPU needed), everything scripts/gpu_check.sh runs on a GPU
# machine that has none: the GPU test binaries, bench_gpu and the training program, stripped, in one
# folder. Copy the data cache (local/cache) along to run the training smoke test there.
# Usage: scripts/gpu_bundle.sh [folder]   (default: local/gpu, which git ignores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-local/gpu}"
rm -rf "$out" && mkdir -p "$out"
tests=(gpu_core gpu_elementwise gpu_nn_ops gpu_optim gpu_train)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo build --release --example bench_gpu --example llama_cola_350m
cargo test --release --no-run "${args[@]}" --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        print(msg["target"]["name"], msg["executable"])
' | while read -r name exe; do cp "$exe" "$out/$name"; done
cp target/release/examples/bench_gpu target/release/examples/llama_cola_350m "$out/"
strip "$out"/* || true
ls -la "$out"
du -sh "$out"
