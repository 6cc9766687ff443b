#!/usr/bin/env python3
"""The table of scripts/bench_cpu_vs_torch.sh, from the files its rounds left in WORK:
`ours~MODEL~PRECISION~ROUND/metrics.jsonl` (and `.log`), `torch~MODE~MODEL~PRECISION~ROUND.json` (and `.log`),
`cpu`, `flags`, `torch`, `load`.

Per cell the median step time over every timed step of every round, printed as tokens/s (batch x seq per
step); a cell with no timed step prints `failed` and the last line its run printed. Ratios: ours over
PyTorch in the same precision (eager, and compiled where torch.compile ran), and ours bf16-mixed over ours
f32.

Usage: bench_cpu_vs_torch_table.py WORK --seq 256 --threads 2 --rows "cola-60m:8:8 ..." \
       --precisions "f32 bf16-mixed pure-bf16" --modes "eager compile"
"""
import argparse
import json
import statistics
import sys
from pathlib import Path


def last_line(path: Path) -> str:
    """The last non-empty line of a log, or a note that there is none."""
    if not path.exists():
        return "no output"
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:160] if lines else "no output"


def ours(work: Path, model: str, precision: str):
    """(step seconds of every round, failure reason of the last failed round or None)."""
    steps, reason = [], None
    for run in sorted(work.glob(f"ours~{model}~{precision}~*")):
        if run.suffix == ".log":
            continue
        metrics = run / "metrics.jsonl"
        elapsed = []
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                record = json.loads(line)
                if "elapsed_s" in record and "loss" in record:
                    elapsed.append(record["elapsed_s"])
        if len(elapsed) < 2:
            reason = last_line(run.with_name(run.name + ".log"))
            continue
        steps += [b - a for a, b in zip(elapsed, elapsed[1:])]
    return steps, reason


def torch_side(work: Path, mode: str, model: str, precision: str):
    """(step seconds of every round, failure reason or None, whether every round compiled)."""
    steps, reason, compiled = [], None, True
    for path in sorted(work.glob(f"torch~{mode}~{model}~{precision}~*.json")):
        report = json.loads(path.read_text())
        for row in report["rows"]:
            steps += row["step_s_each"]
            compiled = compiled and row["compiled"]
        for failure in report["failed"]:
            reason = failure["error"][:160]
    if not steps and reason is None:
        logs = sorted(work.glob(f"torch~{mode}~{model}~{precision}~*.log"))
        reason = last_line(logs[-1]) if logs else "not run"
    return steps, reason, compiled


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--precisions", required=True)
    parser.add_argument("--modes", required=True)
    args = parser.parse_args(argv)
    work, modes = args.work, args.modes.split()
    flags = dict(line.split() for line in (work / "flags").read_text().splitlines())
    print(
        f"CPU: {(work / 'cpu').read_text().strip()}; avx512f {flags['avx512f']}, avx512_bf16 "
        f"{flags['avx512_bf16']}, AMX (amx_bf16) {flags['amx_bf16']}; torch {(work / 'torch').read_text().strip()}; "
        f"{args.threads} threads on both sides; seq {args.seq}"
    )
    print((work / "load").read_text().strip().replace("\n", "; "))
    notes = []
    print()
    header = ["model", "batch", "precision", "ours tokens/s"]
    for mode in modes:
        header += [f"torch {mode} tokens/s", f"ours / torch {mode}"]
    header.append("ours / ours f32")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in args.rows.split():
        model, batch, micro = row.split(":")
        ours_tokens = int(batch) * args.seq  # per update of ours
        tokens = int(micro) * args.seq  # per timed step of PyTorch's (one micro-batch)
        ours_f32 = None
        for precision in args.precisions.split():
            steps, reason = ours(work, model, precision)
            mine = ours_tokens / statistics.median(steps) if steps else None
            if precision == "f32":
                ours_f32 = mine
            if reason and not steps:
                notes.append(f"ours {model} {precision} failed: {reason}")
            cells = [model, f"{batch} x {args.seq} (micro {micro})", precision, f"{mine:.1f}" if mine else "failed"]
            for mode in modes:
                theirs_steps, why, compiled = torch_side(work, mode, model, precision)
                theirs = tokens / statistics.median(theirs_steps) if theirs_steps else None
                skipped = why == "not run"  # a precision left out of TORCH_PRECISIONS
                if why and not theirs_steps and not skipped:
                    notes.append(f"torch {mode} {model} {precision} failed: {why}")
                mark = "" if mode != "compile" or compiled else " (eager: did not compile)"
                cells.append(f"{theirs:.1f}{mark}" if theirs else "not run" if skipped else "failed")
                cells.append(f"{mine / theirs:.2f}" if mine and theirs else "-")
            cells.append(f"{mine / ours_f32:.2f}" if mine and ours_f32 else "-")
            print("| " + " | ".join(cells) + " |")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
