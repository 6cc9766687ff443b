#!/usr/bin/env bash
# The CPU training step, ours against PyTorch's, precision by precision, in one command:
#
#   scripts/bench_cpu_vs_torch.sh [ROUNDS (3)]
#
# Rows (MODEL:BATCH:MICRO, one micro-batch per update at the defaults): cola-60m 8 x 256 in micro-batches
# of 8 and cola-350m 4 x 256 in micro-batches of 4. Per row and precision:
# - ours: the training program (`--precision f32 | bf16-mixed | pure-bf16`, `--device cpu`, no evaluation,
#   no checkpoint before the end), step times from its metrics.jsonl (differences of `elapsed_s`, the first
#   step left out as warm-up);
# - PyTorch: scripts/reference/bench_torch_gpu.py on the CPU, the independent reference model (parity.py)
#   with SDPA attention and AdamW: f32; bf16 autocast over f32 weights (against our bf16-mixed); pure bf16,
#   the model and AdamW's state in bf16 (against our pure-bf16, the paper's setting); each also with
#   torch.compile (a row that does not compile runs eagerly and is marked so).
# Every round runs each cell once, ours then PyTorch's, so that both see the same machine load; the table
# gives the median step over all rounds as tokens/s, ours / PyTorch in the same precision (eager and
# compiled), and ours bf16-mixed / ours f32. A run that fails (for instance a precision the CPU trainer
# does not support yet) is a `failed` cell with the last line it printed, and the benchmark goes on.
#
# Environment: ROWS ("cola-60m:8:8 cola-350m:4:4"), PRECISIONS ("f32 bf16-mixed pure-bf16"), STEPS (4:
# updates per run of ours and timed steps of PyTorch's, after one untimed warm-up step on its side),
# SEQ (256), THREADS (2: both sides), COMPILE (1; 0 skips the torch.compile rows), CACHE (local/cache),
# PYTHON (local/venv/bin/python, with torch; safetensors is installed into local/venv when missing), BIN
# (a built training program to time instead of building target/release/examples/llama_cola_350m),
# TORCH_PRECISIONS (PRECISIONS: the precisions PyTorch runs in; the others print `not run`. On a CPU
# without bf16 instructions PyTorch's bf16 matmul falls back to a slow generic loop, so a bf16 step of
# its model takes many minutes there).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
rows=${ROWS:-cola-60m:8:8 cola-350m:4:4}
precisions=${PRECISIONS:-f32 bf16-mixed pure-bf16}
steps=${STEPS:-4} seq=${SEQ:-256} threads=${THREADS:-2} compile=${COMPILE:-1} cache=${CACHE:-local/cache}
python=${PYTHON:-local/venv/bin/python}
torch_precisions=${TORCH_PRECISIONS:-$precisions}
if ! "$python" -c "import torch, safetensors" 2>/dev/null; then
    [ "$python" = local/venv/bin/python ] || { echo "$python lacks torch or safetensors" >&2; exit 1; }
    [ -x local/venv/bin/python ] || python3 -m venv local/venv
    local/venv/bin/pip install --quiet torch safetensors
fi
bin=${BIN:-target/release/examples/llama_cola_350m}
[ -n "${BIN:-}" ] || cargo build --release --example llama_cola_350m >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
modes=(eager)
[ "$compile" = 1 ] && modes+=(compile)

lscpu | sed -n 's/^Model name: *//p' | head -n1 >"$work/cpu"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
for flag in avx512f avx512_bf16 amx_bf16 amx_tile; do
    case " $flags " in *" $flag "*) echo "$flag yes" ;; *) echo "$flag no" ;; esac
done >"$work/flags"
"$python" -c "import torch; print(torch.__version__)" >"$work/torch"
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" >"$work/load"

for round in $(seq "$rounds"); do
    for row in $rows; do
        IFS=: read -r model batch micro <<<"$row"
        for precision in $precisions; do
            cell="$model~$precision~$round"
            out="$work/ours~$cell"
            if "$bin" --model "$model" --steps "$steps" --batch-size "$batch" --micro-batch "$micro" \
                --seq-len "$seq" --eval-every 0 --save-every 100000 --threads "$threads" --device cpu \
                --precision "$precision" --cache-dir "$cache" --out "$out" >"$out.log" 2>&1; then
                echo "round $round: ours $model $precision done" >&2
            else
                echo "round $round: ours $model $precision failed" >&2
            fi
            case " $torch_precisions " in *" $precision "*) ;; *) continue ;; esac
            for mode in "${modes[@]}"; do
                extra=()
                [ "$mode" = compile ] && extra=(--compile)
                "$python" scripts/reference/bench_torch_gpu.py --device cpu --threads "$threads" \
                    --rows "$model" --micro-batch "$micro" --seq "$seq" --steps "$steps" --warmup 1 \
                    --precision "$precision" "${extra[@]}" --json "$work/torch~$mode~$cell.json" \
                    >"$work/torch~$mode~$cell.log" 2>&1 || true
                echo "round $round: torch $mode $model $precision done" >&2
            done
        done
    done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$work/load"
"$python" scripts/bench_cpu_vs_torch_table.py "$work" --seq "$seq" --threads "$threads" \
    --rows "$rows" --precisions "$precisions" --modes "${modes[*]}"
