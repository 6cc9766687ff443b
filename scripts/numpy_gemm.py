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

The bf16 mode compares with PyTorch instead (imported only there): `torch-info` prints torch's version,
its CPU capability and whether oneDNN (mkldnn) is built in; `torch-time [--cpu-time]` times bf16
`torch.matmul` (bf16 operands and result, oneDNN on x86) on each case as `time` does numpy, printing
`torch <name> gflops=<x>`; `table --bf16 ROUND...` reads our `gemm_bf16` and `gemm` (f32) lines and torch's,
and prints per case the medians of ours in bf16, torch in bf16, their ratio, ours in f32 and the ratio of
our bf16 to our f32, then the geometric means.
"""
import ctypes
import glob
import math
import os
import statistics
import sys
import time



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
    import numpy as np

    rng = np.random.default_rng(0)
    for name, m, k, n, a_t in cases:
        a = rng.random((k, m) if a_t else (m, k), dtype=np.float32) - 0.5
        b = rng.random((k, n), dtype=np.float32) - 0.5
        lhs = a.T if a_t else a
        secs = median_seconds(lambda: lhs @ b, cpu_time)
        print(f"numpy {name} gflops={2.0 * m * k * n / secs / 1e9:.2f}", flush=True)


def time_torch(cases, cpu_time):
    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", os.cpu_count())))
    gen = torch.Generator().manual_seed(0)
    for name, m, k, n, a_t in cases:
        a = (torch.rand((k, m) if a_t else (m, k), generator=gen) - 0.5).to(torch.bfloat16)
        b = (torch.rand((k, n), generator=gen) - 0.5).to(torch.bfloat16)
        lhs = a.T if a_t else a
        with torch.inference_mode():
            secs = median_seconds(lambda: torch.matmul(lhs, b), cpu_time)
        print(f"torch {name} gflops={2.0 * m * k * n / secs / 1e9:.2f}", flush=True)


def torch_info():
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"torch {torch.__version__}, cpu capability {capability}, "
        f"onednn {torch.backends.mkldnn.is_available()}, threads {torch.get_num_threads()}"
    )


def read_round(path):
    """Per side, {case: GFLOP/s}: the first word of a line names the side."""
    sides = {"gemm": {}, "numpy": {}, "gemm_bf16": {}, "torch": {}}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in sides:
                sides[parts[0]][parts[1]] = float(parts[-1].split("=")[1])
    return sides


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def table(cases, paths):
    rounds = [read_round(path) for path in paths]
    ratios = []
    print(f"{'case':<16} {'M':>6} {'K':>6} {'N':>6} {'ours':>9} {'numpy':>9} {'ratio':>7}")
    for name, m, k, n, _ in cases:
        ours = statistics.median(r["gemm"][name] for r in rounds)
        theirs = statistics.median(r["numpy"][name] for r in rounds)
        ratios.append(ours / theirs)
        print(f"{name:<16} {m:>6} {k:>6} {n:>6} {ours:>9.1f} {theirs:>9.1f} {ours / theirs:>7.2f}")
    per_round = [geomean([r["gemm"][c[0]] / r["numpy"][c[0]] for c in cases]) for r in rounds]
    print(f"geometric mean ratio ours/numpy: {geomean(ratios):.3f}  (lowest case: {min(ratios):.2f})")
    print("per-round geometric means: " + " ".join(f"{g:.3f}" for g in per_round))


def table_bf16(cases, paths):
    rounds = [read_round(path) for path in paths]
    vs_torch, vs_f32 = [], []
    print(
        f"{'case':<16} {'M':>6} {'K':>6} {'N':>6} {'ours bf16':>10} {'torch bf16':>11} {'ratio':>7} "
        f"{'ours f32':>9} {'bf16/f32':>9}"
    )
    for name, m, k, n, _ in cases:
        ours, theirs, f32 = (statistics.median(r[side][name] for r in rounds) for side in ("gemm_bf16", "torch", "gemm"))
        vs_torch.append(ours / theirs)
        vs_f32.append(ours / f32)
        print(
            f"{name:<16} {m:>6} {k:>6} {n:>6} {ours:>10.1f} {theirs:>11.1f} {ours / theirs:>7.2f} "
            f"{f32:>9.1f} {ours / f32:>9.2f}"
        )
    print(f"geometric mean ratio ours bf16 / torch bf16: {geomean(vs_torch):.3f}  (lowest case: {min(vs_torch):.2f})")
    print(f"geometric mean ratio ours bf16 / ours f32: {geomean(vs_f32):.3f}")
    per_round = [geomean([r["gemm_bf16"][c[0]] / r["torch"][c[0]] for c in cases]) for r in rounds]
    print("per-round geometric means (ours bf16 / torch bf16): " + " ".join(f"{g:.3f}" for g in per_round))


def info():
    import numpy as np

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
    import numpy as np

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
    if mode == "torch-info":
        torch_info()
        return
    cases = read_cases()
    args = sys.argv[2:]
    if mode == "time":
        time_numpy(cases, "--cpu-time" in args)
    elif mode == "torch-time":
        time_torch(cases, "--cpu-time" in args)
    elif mode == "table" and args[:1] == ["--bf16"]:
        table_bf16(cases, args[1:])
    elif mode == "table":
        table(cases, args)
    else:
        sys.exit(f"unknown mode {mode!r}: expected 'info', 'time', 'table', 'torch-info' or 'torch-time'")


if __name__ == "__main__":
    main()
