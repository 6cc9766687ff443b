#!/usr/bin/env bash
# Our GEMM against numpy (OpenBLAS) on the same shapes, in the same run; with BF16=1, our bf16 GEMM
# against PyTorch's bf16 matmul.
#
#   scripts/bench_gemm_vs_numpy.sh [ROUNDS]        (default 3 rounds)
#   BF16=1 scripts/bench_gemm_vs_numpy.sh [ROUNDS]
#
# Each round times every case on our side, then on numpy's, so both see the same machine load; the table
# gives per case the median GFLOP/s of each side over the rounds and the ratio ours/numpy of the medians,
# then the geometric mean and the lowest ratio (and each round's geometric mean, to show the spread).
# Threads: both sides use every core (nproc) unless RAYON_NUM_THREADS / OPENBLAS_NUM_THREADS say otherwise.
# PEAK=1 also prints the ceiling: the FMA peak of our micro-kernel path on one thread and on all threads
# (`cargo bench --bench gemm -- fma_peak`, criterion's "elem/s" = FLOP/s).
# CPU_TIME=1 measures both sides by CPU time (the work of all repetitions over the CPU time the process's
# threads ran) instead of median wall time: time the scheduler gives other jobs then does not count, which
# makes A/B comparisons on a busy machine usable; spinning threads still count.
# PYTHON=<interpreter> runs the numpy side on that Python (it needs numpy; threadpoolctl, if present, names
# the kernel OpenBLAS chose, else the script asks OpenBLAS itself). Without PYTHON, numpy and threadpoolctl
# are installed into local/venv on first use.
# The numpy side runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset: either one, when set, can make
# OpenBLAS use an older kernel than this CPU's own (Haswell's instead of SkylakeX's AVX-512), which would
# flatter our side.
# BF16=1 compares our bf16 GEMM (bf16 operands and output, f32 accumulation, the path `bench_gemm --bf16`
# prints) with PyTorch's bf16 torch.matmul (oneDNN) instead of numpy, with our f32 GEMM beside it; torch
# (about 2.4 GB of wheels from PyPI) is installed into local/venv on first use unless PYTHON has it. It
# uses TORCH_NUM_THREADS threads (default: nproc). PyTorch is never a dependency of the crates.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
bf16=${BF16:-0}
modules="numpy, threadpoolctl"
packages=(numpy threadpoolctl)
if [ "$bf16" = 1 ]; then
  modules="torch"
  packages=(torch)
fi
if [ -z "${PYTHON:-}" ]; then
  venv=local/venv
  if ! "$venv/bin/python" -c "import $modules" 2>/dev/null; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "${packages[@]}"
  fi
  PYTHON=$venv/bin/python
fi
numpy_py() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PYTHON" scripts/numpy_gemm.py "$@"; }
threads=$(nproc)
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$threads}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$threads}
export TORCH_NUM_THREADS=${TORCH_NUM_THREADS:-$threads}
cargo build --release --example bench_gemm >&2
bin=target/release/examples/bench_gemm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" --list >"$work/cases"
clock=()
if [ "${CPU_TIME:-0}" = 1 ]; then clock=(--cpu-time); fi
if [ "$bf16" = 1 ]; then
  echo "threads: ours $RAYON_NUM_THREADS, torch $TORCH_NUM_THREADS; $rounds rounds; clock: $([ "${CPU_TIME:-0}" = 1 ] && echo CPU time || echo wall time); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  "$PYTHON" scripts/numpy_gemm.py torch-info
  for round in $(seq "$rounds"); do
    "$bin" --bf16 "${clock[@]}" >"$work/round$round"
    "$PYTHON" scripts/numpy_gemm.py torch-time "${clock[@]}" <"$work/cases" >>"$work/round$round"
  done
  head -n1 "$work/round1"
  "$PYTHON" scripts/numpy_gemm.py table --bf16 "$work"/round* <"$work/cases"
  exit 0
fi
echo "threads: ours $RAYON_NUM_THREADS, numpy/OpenBLAS $OPENBLAS_NUM_THREADS; $rounds rounds; clock: $([ "${CPU_TIME:-0}" = 1 ] && echo CPU time || echo wall time); load average $(cut -d' ' -f1-3 /proc/loadavg)"
numpy_py info
for round in $(seq "$rounds"); do
  "$bin" --gemm-only "${clock[@]}" >"$work/round$round"
  numpy_py time "${clock[@]}" <"$work/cases" >>"$work/round$round"
done
numpy_py table "$work"/round* <"$work/cases"
if [ "${PEAK:-0}" = 1 ]; then
  cargo bench --bench gemm -- fma_peak 2>/dev/null | grep -E '^fma_peak/|thrpt:' | grep -v '%' | paste - -
fi
