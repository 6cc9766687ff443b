#!/usr/bin/env bash
# The data pipeline's benchmark: tokenization throughput against Hugging Face `tokenizers` (PyPI), peak
# resident memory of preparing corpora and of a short training run on them, and the time to first step.
#
#   scripts/bench_data.sh [--python PY] [--size-mb 1024] [--small-mb 100] [--tokenizer-mb 20]
#                         [--repeats 1] [--workdir DIR]
#
# Steps, all inside the work folder (default local/bench-data, git-ignored; corpora and the tokenizer are
# kept and reused by later runs with the same sizes, caches and run folders are rebuilt every time):
#  1. synthetic C4-format corpora (scripts/reference/synthetic_c4.py, 8 json.gz shards each): --size-mb
#     MiB of JSON (seed 0), --small-mb MiB (seed 0, fewer documents), --tokenizer-mb MiB (seed 1, held out);
#  2. a 32000-entry byte-level BPE trained by `prepare_data --vocab-size 32000` on the held-out corpus;
#     both sides use that tokenizer.json;
#  3. tokenization of the small corpus with 1 and 2 threads, --repeats times, ours and theirs alternating
#     so that both see the same load: ours `prepare_data --threads N --json` into an empty cache (read,
#     gunzip, JSON, encode and writing the token shards), theirs scripts/reference/bench_tokenize.py
#     (read, gunzip, JSON, encode) with RAYON_NUM_THREADS=N, TOKENIZERS_PARALLELISM=true, once with
#     encode_batch_fast (no character offsets: what our pipeline calls) and once with encode_batch;
#  4. peak RSS (scripts/peak_rss.py) of `prepare_data --threads 2` on the large corpus (empty cache) and
#     of 20 training steps of cola-60m (1 x 256 tokens) on each prepared corpus, run twice: the second
#     run's time from launch to its first step line (printed once step 1 is done) is the time to first
#     step on a cached corpus;
#  5. Markdown tables (scripts/bench_data_tables.py).
# PY (default $PYTHON, else python3) must import numpy and tokenizers; if it cannot, both are installed
# from PyPI into a virtual environment under the work folder. At 1024 MiB this takes about 15 minutes on
# 2 cores; `--size-mb 64` is a quick check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=${PYTHON:-python3}
size_mb=1024
small_mb=100
tokenizer_mb=20
repeats=1
workdir="$root/local/bench-data"
usage() { sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# *//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    --small-mb) small_mb=$2; shift 2 ;;
    --tokenizer-mb) tokenizer_mb=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    *) usage ;;
  esac
done
# A quick check (--size-mb below --small-mb) scales the small corpus down with the large one.
if awk "BEGIN { exit !($small_mb >= $size_mb) }"; then
  small_mb=$(awk "BEGIN { print $size_mb / 10 }")
fi
mkdir -p "$workdir"
workdir="$(cd "$workdir" && pwd)"
scripts="$root/scripts"
results="$workdir/results"
rm -rf "$results" "$workdir"/cache-* "$workdir/runs"
mkdir -p "$results"

if ! "$python" -c "import numpy, tokenizers" 2>/dev/null; then
  venv="$workdir/venv"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  if ! "$venv/bin/python" -c "import numpy, tokenizers" 2>/dev/null; then
    echo "installing numpy and tokenizers from PyPI into $venv" >&2
    "$venv/bin/pip" install --quiet numpy tokenizers
  fi
  python="$venv/bin/python"
fi

(cd "$root" && cargo build --release --quiet --example prepare_data --example llama_cola_350m)
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples"
rss() { "$python" "$scripts/peak_rss.py" "$@"; }

# corpus NAME MIB SEED: generates $workdir/NAME unless a finished one is there. Its summary lies beside
# the folder, not in it: the corpus readers would take a .json file inside for corpus text.
corpus() {
  local dir="$workdir/$1"
  if [ ! -f "$dir.summary.json" ]; then
    rm -rf "$dir"
    "$python" "$scripts/reference/synthetic_c4.py" --out "$dir" --size-mb "$2" --seed "$3" --jobs 2 \
      >"$dir.summary.tmp"
    mv "$dir.summary.tmp" "$dir.summary.json"
  fi
  cp "$dir.summary.json" "$results/corpus-$1.json"
}
big="c4-${size_mb}mb"
small="c4-${small_mb}mb"
held_out="c4-${tokenizer_mb}mb-seed1"
echo "load average $(cut -d' ' -f1-3 /proc/loadavg); generating corpora in $workdir" >&2
corpus "$big" "$size_mb" 0
corpus "$small" "$small_mb" 0
corpus "$held_out" "$tokenizer_mb" 1

tokenizer="$workdir/tokenizer-32000-${tokenizer_mb}mb.json"
if [ ! -f "$tokenizer.summary" ]; then
  echo "training the tokenizer on $held_out" >&2
  COLA_CACHE="$workdir/cache-tokenizer" "$bin/prepare_data" --data "$workdir/$held_out" --vocab-size 32000 \
    --threads 2 --json >"$tokenizer.prepare"
  trained=$("$python" -c "import json, sys; print(json.load(open(sys.argv[1]))['tokenizer'])" "$tokenizer.prepare")
  cp "$trained" "$tokenizer"
  "$python" - "$tokenizer.prepare" "$tokenizer" "$held_out" >"$tokenizer.summary" <<'PY'
import json, sys, tokenizers
prepared = json.load(open(sys.argv[1]))
vocab_size = tokenizers.Tokenizer.from_file(sys.argv[2]).get_vocab_size(with_added_tokens=True)
keys = ("documents", "text_bytes", "seconds")
print(json.dumps({"vocab_size": vocab_size, "corpus": sys.argv[3], **{k: prepared["train"][k] for k in keys}}))
PY
fi
cp "$tokenizer.summary" "$results/tokenizer.json"

for repeat in $(seq "$repeats"); do
  for threads in 1 2; do
    name="t$threads-r$repeat"
    echo "tokenizing $small: ours and theirs, $threads thread(s), repeat $repeat" >&2
    rm -rf "$workdir/cache-throughput"
    COLA_CACHE="$workdir/cache-throughput" rss --report "$results/tokenize-ours-$name.rss.json" \
      --log "$results/tokenize-ours-$name.log" -- "$bin/prepare_data" --data "$workdir/$small" \
      --tokenizer "$tokenizer" --threads "$threads" --json >"$results/tokenize-ours-$name.json"
    for api in encode_batch_fast encode_batch; do
      RAYON_NUM_THREADS=$threads TOKENIZERS_PARALLELISM=true rss --report "$results/tokenize-$api-$name.rss.json" \
        -- "$python" "$scripts/reference/bench_tokenize.py" --api "$api" --tokenizer "$tokenizer" \
        "$workdir/$small" >"$results/tokenize-$api-$name.json"
    done
  done
done
# The last 2-thread run above prepared the small corpus from an empty cache: its memory is the small row.
cp "$results/tokenize-ours-t2-r$repeats.rss.json" "$results/prepare-$small.rss.json"
cp "$results/tokenize-ours-t2-r$repeats.json" "$results/prepare-$small.json"
mv "$workdir/cache-throughput" "$workdir/cache-$small"

echo "preparing $big with 2 threads" >&2
COLA_CACHE="$workdir/cache-$big" rss --report "$results/prepare-$big.rss.json" --log "$results/prepare-$big.log" \
  -- "$bin/prepare_data" --data "$workdir/$big" --tokenizer "$tokenizer" --threads 2 --json \
  >"$results/prepare-$big.json"

for corpus_name in "$small" "$big"; do
  for run in 1 2; do
    echo "training 20 steps on $corpus_name, run $run" >&2
    COLA_CACHE="$workdir/cache-$corpus_name" rss --report "$results/train-$corpus_name-run$run.rss.json" \
      --first-line '^step 1/' --log "$results/train-$corpus_name-run$run.log" -- "$bin/llama_cola_350m" \
      --model cola-60m --data "$workdir/$corpus_name" --tokenizer "$tokenizer" --batch-size 1 --micro-batch 1 \
      --seq-len 256 --steps 20 --eval-every 0 --threads 2 --out "$workdir/runs/$corpus_name-run$run"
  done
done

echo "Data pipeline benchmark, load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
echo
"$python" "$scripts/bench_data_tables.py" "$results"
