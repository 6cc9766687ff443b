#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, PyTorch and NCCL but no Rust toolchain: runs the binaries
# made by scripts/gpu_bundle.sh, in one call, most valuable numbers first:
#   1. bench_gpu: our throughput, MFU and peak memory per row (JSON in $OUT/bench_ours.json)
#   2. bench_torch_gpu.py: the same rows in PyTorch, eager, SDPA flash (JSON in $OUT/bench_torch.json)
#   3. the combined table (scripts/bench_gpu_table.py; also $OUT/bench_table.md), and the check that
#      PyTorch's cola-m checkpointing saves what ours keeps and changes no gradient
#   4. every GPU test binary of the bundle (GPU against CPU op by op, the tiny training comparison)
#   5. a kernel-time profile of one cola-350m step (COLA_CUDA_PROFILE=1 bench_gpu)
#   6. 60 steps of the training program, a resume, and the same 60 steps summing gradients over NCCL at
#      world size 1 (llama_cola_350m_nccl --nccl, the bucket sums overlapping backward on NCCL's own
#      stream), then with the optimizer sharded (--zero 1 --nccl: reduce to the owner, the sharded
#      multi-tensor update, all-gather), with and without --overlap: MATCH when every loss, gradient norm
#      and validation loss equals the plain run's, else DIFFER, and the ZeRO-1 runs' last checkpoint
#      (weights and the gathered optimizer state) must equal the plain run's byte for byte; then the
#      training program's --profile of one cola-350m step (time per op family and direction)
#   7. PyTorch again under torch.compile (its table in $OUT/bench_table_compiled.md)
# Each step has its own time limit, cut to what is left of the whole check's budget (GPU_CHECK_BUDGET
# seconds, default 540); a step that fails or times out does not stop the others, and the summary lists
# each step's exit status (124: timed out; "skipped": no time left or nothing to run).
# Everything printed also goes to $OUT/gpu_check.log (OUT defaults to /tmp/gpu_check).
# Usage: scripts/gpu_check.sh [bundle folder (default local/gpu)] [bench rows]
#   PYTHON: the interpreter with torch (default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
bundle="${1:-local/gpu}"
rows="${2:-full-350m,cola-350m,cola-350m:cola-m,full-1b,cola-1b,cola-1b:cola-m}"
out="${OUT:-/tmp/gpu_check}"
python="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET:-540}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1

# libnvrtc, libcublas and libnccl are opened at run time: find them in the CUDA install or in the Python
# wheels next to PyTorch (nvidia-nccl-cu13 and the like).
sites=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
for lib in libnvrtc.so.13 libcublas.so.13 libnccl.so.2; do
    # shellcheck disable=SC2086  # $sites is a list of folders
    dir=$(find /usr/local/cuda*/ $sites /usr/lib /opt /usr/local/lib /root/.local /usr/lib/python3* \
        /usr/local/lib/python3* -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
    if [ -n "$dir" ]; then export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"; fi
    echo "$lib: ${dir:-not found}"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

began=$SECONDS
status=()
# step NAME LIMIT COMMAND...: runs COMMAND under min(LIMIT, what is left of the budget) seconds.
step() {
    local name="$1" limit="$2"; shift 2
    local left=$((budget - (SECONDS - began)))
    if [ "$left" -lt 5 ]; then
        echo "=== $name: skipped (budget of $budget s spent)"
        status+=("$name skipped")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit $limit s)"
    local start=$SECONDS
    timeout -k 5 "$limit" "$@"
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - start)) s"
    status+=("$name rc=$rc")
}
skip() {
    echo "=== $1: skipped ($2)"
    status+=("$1 skipped")
}
# same_checkpoint A B: whether the newest checkpoints of run directories A and B hold the same weights and
# optimizer state, byte for byte (a ZeRO-1 checkpoint gathers the sharded state into the plain format).
same_checkpoint() {
    local a b file
    a=$(ls -d "$1"/checkpoint-* 2>/dev/null | sort -V | tail -1)
    b=$(ls -d "$2"/checkpoint-* 2>/dev/null | sort -V | tail -1)
    if [ -z "$a" ] || [ -z "$b" ] || [ "$(basename "$a")" != "$(basename "$b")" ]; then
        echo "DIFFER: newest checkpoints '${a:-none}' and '${b:-none}'"
        return 1
    fi
    for file in model.safetensors optimizer.safetensors; do
        cmp "$a/$file" "$b/$file" || { echo "DIFFER: $(basename "$a")/$file"; return 1; }
    done
    echo "MATCH: $(basename "$a") weights and optimizer state"
}
export -f same_checkpoint

step bench_gpu 100 "$bundle/bench_gpu" --rows "$rows" --steps 5 --warmup 2 --json "$out/bench_ours.json"
match=()
[ -f "$out/bench_ours.json" ] && match=(--match "$out/bench_ours.json")
step bench_torch 100 "$python" scripts/reference/bench_torch_gpu.py --rows "$rows" --steps 5 --warmup 2 \
    "${match[@]}" --json "$out/bench_torch.json"
if [ -f "$out/bench_ours.json" ] && [ -f "$out/bench_torch.json" ]; then
    step table 10 python3 scripts/bench_gpu_table.py "$out/bench_ours.json" "$out/bench_torch.json" "$out/bench_table.md"
else
    skip table "a JSON file is missing"
fi
step torch_policy_check 30 "$python" scripts/reference/bench_torch_gpu.py --device cuda --check-policies cola-60m

for test in "$bundle"/gpu_*; do
    step "$(basename "$test")" 30 "$test" --test-threads=1 --nocapture
done
step profile_cola_350m 40 env COLA_CUDA_PROFILE=1 "$bundle/bench_gpu" --rows cola-350m --steps 1 --warmup 1

# The training program on the cached default corpus (no network needed).
cache="$bundle/cache"
if [ -d "$cache/shakespeare" ]; then
    train=(--device cuda --model cola-60m --steps 60 --batch-size 64 --micro-batch 64 --eval-every 30
        --save-every 60 --cache-dir "$cache")
    rm -rf "$out/run-plain" "$out/run-nccl" "$out/run-zero" "$out/run-zero-no-overlap"
    step train_cola_60m 50 "$bundle/llama_cola_350m" "${train[@]}" --out "$out/run-plain"
    step resume_cola_60m 20 "$bundle/llama_cola_350m" --resume "$out/run-plain" --eval-only --cache-dir "$cache"
    if [ -x "$bundle/llama_cola_350m_nccl" ]; then
        step train_cola_60m_nccl 50 "$bundle/llama_cola_350m_nccl" "${train[@]}" --nccl --out "$out/run-nccl"
        step nccl_vs_plain 10 python3 scripts/compare_metrics.py "$out/run-plain/metrics.jsonl" \
            "$out/run-nccl/metrics.jsonl"
        # ZeRO-1 over NCCL at world size 1, overlapped (the default) and after backward.
        for run in zero zero-no-overlap; do
            overlap=true
            [ "$run" = zero-no-overlap ] && overlap=false
            step "train_cola_60m_nccl_$run" 50 "$bundle/llama_cola_350m_nccl" "${train[@]}" --nccl --zero 1 \
                --overlap "$overlap" --out "$out/run-$run"
            step "nccl_${run}_vs_plain" 10 python3 scripts/compare_metrics.py "$out/run-plain/metrics.jsonl" \
                "$out/run-$run/metrics.jsonl"
            step "nccl_${run}_checkpoint_vs_plain" 10 bash -c 'same_checkpoint "$1" "$2"' _ "$out/run-plain" \
                "$out/run-$run"
        done
    else
        skip train_cola_60m_nccl "no $bundle/llama_cola_350m_nccl"
    fi
    # Where one cola-350m step's time goes per op family and direction (each op synchronised).
    step profile_train_cola_350m 45 "$bundle/llama_cola_350m" --profile --device cuda --model cola-350m --steps 1 \
        --batch-size 64 --micro-batch 64 --cache-dir "$cache"
else
    skip train_cola_60m "no $cache/shakespeare in the bundle"
fi

# Compiling takes tens of seconds per model: the rows that matter most first, each saved as it ends.
step bench_torch_compiled 75 "$python" scripts/reference/bench_torch_gpu.py --rows "${COMPILED_ROWS:-cola-350m,full-350m,cola-1b,full-1b}" \
    --steps 5 --warmup 2 "${match[@]}" --compile --json "$out/bench_torch_compiled.json"
if [ -f "$out/bench_ours.json" ] && [ -f "$out/bench_torch_compiled.json" ]; then
    step table_compiled 10 python3 scripts/bench_gpu_table.py "$out/bench_ours.json" \
        "$out/bench_torch_compiled.json" "$out/bench_table_compiled.md"
fi

echo "=== summary ($((SECONDS - began)) s of $budget)"
printf '%s\n' "${status[@]}"
