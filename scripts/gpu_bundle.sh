#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain (no GPU needed), everything scripts/gpu_check.sh runs on a GPU
# machine that has none, stripped, in one folder: every GPU test binary (tests/gpu_*.rs), bench_gpu, the
# training program, the training program built with --features nccl (llama_cola_350m_nccl: NCCL opened at
# run time, no MPI linked, for the one-GPU checks of the NCCL paths: gradient sums and ZeRO-1) and, when the data cache holds it, the
# tokenized default corpus (cache/shakespeare: its token shards and tokenizer, all a cached run reads; the
# archive and texts they were made from stay behind, 13 of the 17 MiB) for the training steps. The PyTorch side runs from the tree
# (scripts/reference/bench_torch_gpu.py, with the preset table of tests/fixtures/parity/presets.json).
# Usage: scripts/gpu_bundle.sh [folder (default: local/gpu, which git ignores)] [data cache (default:
#        $COLA_CACHE or local/cache)]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-local/gpu}"
cache="${2:-${COLA_CACHE:-local/cache}}"
rm -rf "$out" && mkdir -p "$out"
tests=()
for file in tests/gpu_*.rs; do tests+=("$(basename "$file" .rs)"); done
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done

# Test binaries: cargo names them with a hash; its JSON messages say which file is which test.
copy_tests() {
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        print(msg["target"]["name"], msg["executable"])
' | while read -r name exe; do cp "$exe" "$out/$name"; done
}

# The nccl build first: both builds write target/release/examples/llama_cola_350m, and the plain one,
# built last, is the one left there.
cargo build --release --features nccl --example llama_cola_350m
cp target/release/examples/llama_cola_350m "$out/llama_cola_350m_nccl"
cargo build --release --example bench_gpu --example llama_cola_350m
cargo test --release --no-run "${args[@]}" --message-format=json 2>/dev/null | copy_tests
cp target/release/examples/bench_gpu target/release/examples/llama_cola_350m "$out/"
for t in "${tests[@]}"; do
    [ -x "$out/$t" ] || { echo "gpu_bundle: no binary for tests/$t.rs" >&2; exit 1; }
done
strip "$out"/* || true
if compgen -G "$cache/shakespeare/shards-*" > /dev/null; then
    mkdir -p "$out/cache/shakespeare"
    cp -r "$cache"/shakespeare/shards-* "$cache"/shakespeare/tokenizer-*.json "$out/cache/shakespeare/"
else
    echo "gpu_bundle: no token shards in $cache/shakespeare: the training steps of gpu_check.sh will be skipped" >&2
fi
ls -la "$out"
du -sh "$out"
