"""numpy (OpenBLAS) side of scripts/bench_gemm_vs_numpy.sh.

`numpy_gemm.py time`: reads the cases (`name m k n a_transposed`) on stdin, times numpy on each (median of
repetitions, f32, A stored transposed when a_transposed says so, as our side does) and prints
`numpy <name> gflops=<x>` lines. `time --cpu-time` instead divides the work of all repetitions by the CPU
time this process's threads ran (Linux schedstat), as `bench_gemm --cpu-time` does on our side.

`numpy_gemm.py info`: prints numpy's version and, per BLAS library it loaded, the library, its version, the
kernel it chose for this CPU (threadpoolctl's "architecture") and its thread count. Without threadpoolctl it
asks the OpenBLAS that numpy bundles (numpy.libs) for its configuration and kernel name directly.

`numpy_gemm.py table ROUND...`: reads the cases on stdin and, from each round file, our lines
(`gemm <name> ... gflops=<x>`) and numpy's; prints per case the median GFLOP/s of each side over the rounds
and the ratio ours/numpy of the medians, then the geometric mean of the ratios, the lowest one, and each
round's geometric mean.
"""
import ctypes
import glob
import math
import os
import statistics
import sys
import time

import numpy as np


def cpu_seconds():
    """Seconds the threads of this process (OpenBLAS's included) have run on a CPU, from schedstat."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def median_seconds(fn, cpu_time=False, min_reps=5, budget=1.0):
    """Median wall time of a call, or with `cpu_time` the mean CPU time of a call over the repetitions."""
    fn()
    times = []
    start, cpu_start = time.perf_counter(), cpu_seconds()
    while len(times) < min_reps or (time.perf_counter() - start < budget and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if cpu_time:
        return (cpu_seconds() - cpu_start) / len(times)
    times.sort()
    return times[len(times) // 2]


def read_cases():
    cases = []
    for line in sys.stdin:
        name, m, k, n, a_t = line.split()
        cases.append((name, int(m), int(k), int(n), a_t == "1"))
    return cases


def time_numpy(cases, cpu_time):
    rng = np.random.default_rng(0)
    for name, m, k, n, a_t in cases:
        a = rng.random((k, m) if a_t else (m, k), dtype=np.float32) - 0.5
        b = rng.random((k, n), dtype=np.float32) - 0.5
        lhs = a.T if a_t else a
        secs = median_seconds(lambda: lhs @ b, cpu_time)
        print(f"numpy {name} gflops={2.0 * m * k * n / secs / 1e9:.2f}", flush=True)


def read_round(path):
    ours, theirs = {}, {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in ("gemm", "numpy"):
                side = ours if parts[0] == "gemm" else theirs
                side[parts[1]] = float(parts[-1].split("=")[1])
    return ours, theirs


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def table(cases, paths):
    rounds = [read_round(path) for path in paths]
    ratios = []
    print(f"{'case':<16} {'M':>6} {'K':>6} {'N':>6} {'ours':>9} {'numpy':>9} {'ratio':>7}")
    for name, m, k, n, _ in cases:
        ours = statistics.median(r[0][name] for r in rounds)
        theirs = statistics.median(r[1][name] for r in rounds)
        ratios.append(ours / theirs)
        print(f"{name:<16} {m:>6} {k:>6} {n:>6} {ours:>9.1f} {theirs:>9.1f} {ours / theirs:>7.2f}")
    per_round = [geomean([r[0][c[0]] / r[1][c[0]] for c in cases]) for r in rounds]
    print(f"geometric mean ratio ours/numpy: {geomean(ratios):.3f}  (lowest case: {min(ratios):.2f})")
    print("per-round geometric means: " + " ".join(f"{g:.3f}" for g in per_round))


def info():
    print(f"numpy {np.__version__}")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        bundled_openblas_info()
        return
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            fields = ("internal_api", "version", "architecture", "num_threads")
            print("blas: " + ", ".join(f"{field} {pool.get(field)}" for field in fields))


def bundled_openblas_info():
    """The configuration string and kernel name of the OpenBLAS wheel numpy ships (symbols prefixed
    `scipy_openblas_` and suffixed `64_`), read through ctypes; numpy has already loaded it."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libs, "libscipy_openblas*.so*")):
        lib = ctypes.CDLL(path)
        suffix = "64_" if "openblas64" in os.path.basename(path) else ""
        texts = []
        for query in ("get_config", "get_corename"):
            fn = getattr(lib, f"scipy_openblas_{query}{suffix}")
            fn.restype = ctypes.c_char_p
            texts.append(fn().decode())
        threads = getattr(lib, f"scipy_openblas_get_num_threads{suffix}")()
        print(f"blas: openblas, config {texts[0]}, architecture {texts[1]}, num_threads {threads}")
        return
    print("blas: unknown (no threadpoolctl, no bundled OpenBLAS found)")


def main():
    mode = sys.argv[1]
    if mode == "info":
        info()
        return
    cases = read_cases()
    if mode == "time":
        time_numpy(cases, "--cpu-time" in sys.argv[2:])
    elif mode == "table":
        table(cases, sys.argv[2:])
    else:
        sys.exit(f"unknown mode {mode!r}: expected 'info', 'time' or 'table'")


if __name__ == "__main__":
    main()
