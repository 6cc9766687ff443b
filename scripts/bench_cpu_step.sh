#!/usr/bin/env bash
# The CPU training step of one model, two builds of the training program side by side: for each round and
# each --recompute policy, each binary trains STEPS updates of BATCH x SEQ tokens from scratch (no
# evaluation, no checkpoint before the end) and the step times are read from its metrics.jsonl (the
# differences of `elapsed_s` between consecutive steps, the first step left out as warm-up). Rounds
# alternate the binaries so that both see the same machine load; the table gives per binary and policy
# the median step time over all rounds and the ratio of the medians (nan where a binary's runs failed, as an
# old build that lacks the PRECISION asked for).
#
#   scripts/bench_cpu_step.sh OLD_BINARY NEW_BINARY [ROUNDS (3)]
#
# Environment: MODEL (cola-350m), POLICIES ("none cola-m"), STEPS (5), BATCH (2), SEQ (256),
# THREADS (2), PRECISION (f32; or bf16-mixed, pure-bf16: --precision of both binaries), CACHE (local/cache:
# the cached default corpus, so no download).
set -euo pipefail
cd "$(dirname "$0")/.."
old="$1" new="$2" rounds="${3:-3}"
model="${MODEL:-cola-350m}" steps="${STEPS:-5}" batch="${BATCH:-2}" seq="${SEQ:-256}"
threads="${THREADS:-2}" cache="${CACHE:-local/cache}" precision="${PRECISION:-f32}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "model $model ($precision), batch $batch x seq $seq, $steps steps, --threads $threads, $rounds rounds; load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    for policy in ${POLICIES:-none cola-m}; do
        for side in old new; do
            bin=$old; [ "$side" = new ] && bin=$new
            out="$work/$side-$policy-$round"
            "$bin" --model "$model" --steps "$steps" --batch-size "$batch" --micro-batch "$batch" \
                --seq-len "$seq" --eval-every 0 --save-every 100000 --threads "$threads" \
                --recompute "$policy" --precision "$precision" --cache-dir "$cache" --out "$out" >/dev/null 2>&1 \
                || echo "round $round $policy $side: the run failed (a build without this precision?)" >&2
            echo "round $round $policy $side done" >&2
        done
    done
done
python3 - "$work" <<'PY'
import json, os, statistics, sys
work = sys.argv[1]
times = {}
for run in sorted(os.listdir(work)):
    side, rest = run.split("-", 1)
    policy = rest.rsplit("-", 1)[0]
    path = os.path.join(work, run, "metrics.jsonl")
    elapsed = []
    if os.path.exists(path):
        with open(path) as f:
            elapsed = [json.loads(line)["elapsed_s"] for line in f if '"elapsed_s"' in line]
    steps = [b - a for a, b in zip(elapsed, elapsed[1:])]
    times.setdefault((policy, side), []).extend(steps)
print(f"{'policy':<10} {'old s/step':>10} {'new s/step':>10} {'old/new':>8}  (medians; samples per cell)")
nan = float("nan")
for policy in dict.fromkeys(p for p, _ in times):
    old, new = (statistics.median(times[(policy, s)]) if times[(policy, s)] else nan for s in ("old", "new"))
    print(f"{policy:<10} {old:>10.2f} {new:>10.2f} {old / new:>8.2f}  ({len(times[(policy, 'old')])}, {len(times[(policy, 'new')])})")
PY
