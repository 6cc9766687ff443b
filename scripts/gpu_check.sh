#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU but no Rust toolchain: runs the binaries made by
# scripts/gpu_bundle.sh (GPU-vs-CPU op tests, the 20-step tiny training comparison, the throughput table).
# Keeps going after a failure and ends with a summary; everything printed also goes to $OUT/gpu_check.log
# when OUT is set. Usage: scripts/gpu_check.sh [bundle folder (default local/gpu)] [bench rows]
set -uo pipefail
cd "$(dirname "$0")/.."
bundle="${1:-local/gpu}"
rows="${2:-full-350m,cola-350m,cola-350m:cola-m,full-1b,cola-1b,cola-1b:cola-m}"
log="${OUT:-/tmp}/gpu_check.log"
exec > >(tee "$log") 2>&1

# libnvrtc and libcublas are opened at run time: find them in the CUDA install or in Python wheels.
for lib in libnvrtc.so.13 libcublas.so.13; do
    dir=$(find /usr/local/cuda*/ /usr/lib /opt /usr/local/lib /root/.local /usr/lib/python3* /usr/local/lib/python3* \
        -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
    if [ -n "$dir" ]; then export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"; fi
    echo "$lib: ${dir:-not found}"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

status=()
step() {
    local name="$1" limit="$2"; shift 2
    echo "=== $name"
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - start)) s"
    status+=("$name rc=$rc")
}
for t in gpu_core gpu_elementwise gpu_nn_ops gpu_optim gpu_train; do
    step "$t" 90 "$bundle/$t" --test-threads=1 --nocapture
done
step bench_gpu 240 "$bundle/bench_gpu" --rows "$rows" --steps 5 --warmup 2
# The training program itself, on the cached default corpus (no network needed when local/cache holds it).
if [ -d local/cache/shakespeare ]; then
    run="${OUT:-/tmp}/gpu-run"
    rm -rf "$run"
    step train_cola_60m 120 "$bundle/llama_cola_350m" --device cuda --model cola-60m --steps 60 --batch-size 64 \
        --micro-batch 64 --eval-every 30 --save-every 60 --cache-dir local/cache --out "$run"
    step resume_cola_60m 60 "$bundle/llama_cola_350m" --resume "$run" --eval-only
fi
echo "=== summary"
printf '%s\n' "${status[@]}"
