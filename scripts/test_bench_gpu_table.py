#!/usr/bin/env python3
"""Tests of bench_gpu_table.py on a fixture: two reports written here by hand in the JSON schema of
`bench_gpu --json` and `bench_torch_gpu.py --json`, with round numbers chosen so that every ratio is
exact in binary floating point (the numbers are made up: they test the arithmetic and the joins, they
measure nothing). The table prints ratios with two decimals, so the expected strings are exact.

Usage: python3 scripts/test_bench_gpu_table.py   (standard library only)
"""
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu_table  # noqa: E402

GIB = 2**30


def row(spec, tokens, peak_gib, micro=64, flops=1e9):
    name, _, policy = spec.partition(":")
    return {
        "row": spec,
        "name": name if not policy else f"{name} +{policy}",
        "micro_batch": micro,
        "tokens_per_s": tokens,
        "flops_per_token": flops,
        "mfu": tokens * flops / 989e12,
        "peak_bytes": peak_gib * GIB,
        "step_s": 1.0,
        "loss": 10.0,
    }


def report(program, rows, **settings):
    base = {"program": program, "device": "cuda:0", "precision": "bf16-mixed", "seq": 256, "steps": 5}
    return {**base, "warmup": 2, "peak_tflops": 989.0, **settings, "rows": rows, "failed": []}


OURS = report(
    "bench_gpu",
    [
        row("full-350m", 100000, 20),
        row("cola-350m", 125000, 16),
        row("cola-350m:cola-m", 100000, 4),
        row("full-1b", 20000, 32, micro=32),
        row("cola-1b", 40000, 24, micro=32),
    ],
)
THEIRS = report(
    "bench_torch_gpu",
    [
        row("full-350m", 200000, 25),
        row("cola-350m", 250000, 20),
        row("cola-350m:cola-m", 125000, 5),
        row("full-1b", 40000, 40, micro=16),
        row("cola-1b", 50000, 30, micro=32),
    ],
)


class TableTest(unittest.TestCase):
    def test_per_row_ratio_mfu_and_memory(self):
        text = bench_gpu_table.table(OURS, THEIRS)
        # 100000 / 200000; MFU 1e5 x 1e9 / 989e12 = 10.1%; peaks in GiB.
        self.assertIn("| full-350m | 64 | 100,000 | 200,000 | 0.50x | 10.1% | 20.2% | 20.00 GiB | 25.00 GiB |", text)
        self.assertIn("| cola-350m +cola-m | 64 | 100,000 | 125,000 | 0.80x |", text)

    def test_side_ratios(self):
        text = bench_gpu_table.table(OURS, THEIRS)
        self.assertIn("| cola / full tokens/s, 350m | 1.25x | 1.25x |", text)
        self.assertIn("| cola / full tokens/s, 1b | 2.00x | 1.25x |", text)
        self.assertIn("| cola-m / cola tokens/s, 350m | 0.80x | 0.50x |", text)
        self.assertIn("| cola-m / cola peak memory, 350m | 0.25x | 0.25x |", text)
        # No cola-1b:cola-m row on either side: no such ratio.
        self.assertNotIn("cola-m / cola tokens/s, 1b", text)

    def test_mismatches_are_warnings(self):
        theirs = {**THEIRS, "seq": 512}
        text = bench_gpu_table.table(OURS, theirs)
        self.assertIn("warning: seq differs: ours 256, PyTorch 512", text)
        self.assertIn("warning: full-1b: micro-batch ours 32, PyTorch 16", text)
        self.assertNotIn("warning: cola-1b", text)

    def test_a_row_on_one_side_only(self):
        theirs = {**THEIRS, "rows": THEIRS["rows"][:1], "failed": [{"row": "cola-1b", "error": "out of memory"}]}
        text = bench_gpu_table.table(OURS, theirs)
        self.assertIn("| cola-1b | 32 | 40,000 | - | - |", text)
        self.assertIn("warning: cola-1b failed (PyTorch): out of memory", text)


if __name__ == "__main__":
    unittest.main()
