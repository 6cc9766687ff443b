#!/usr/bin/env python3
"""One table of our GPU training throughput against PyTorch's, from the JSON files of
`bench_gpu --json OURS` and `scripts/reference/bench_torch_gpu.py --json THEIRS` (standard library only).

Rows join on their `--rows` entry (`cola-350m:cola-m`). Per row: micro-batch, tokens/s of both and
ours / PyTorch, MFU of both, peak memory of both. Then, for ours and for PyTorch: cola / full tokens/s at
each size both presets ran, and cola-m / cola tokens/s and peak memory. Differences of settings that make
the sides incomparable (sequence, steps, precision, micro-batch, FLOPs per token) are printed as warnings
above the table. Prints Markdown, and writes it to TABLE.md when given.

Usage: bench_gpu_table.py OURS.json THEIRS.json [TABLE.md]
"""
import json
import sys

SETTINGS = ("seq", "steps", "warmup", "precision", "peak_tflops")


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def fmt_tokens(value):
    return "-" if value is None else f"{value:,.0f}"


def fmt_mfu(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def fmt_gib(value):
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def warnings(ours: dict, theirs: dict) -> list:
    out = []
    for key in SETTINGS:
        if ours.get(key) != theirs.get(key):
            out.append(f"{key} differs: ours {ours.get(key)}, PyTorch {theirs.get(key)}")
    theirs_rows = {r["row"]: r for r in theirs["rows"]}
    for row in ours["rows"]:
        other = theirs_rows.get(row["row"])
        if other is None:
            continue
        if row["micro_batch"] != other["micro_batch"]:
            out.append(f"{row['row']}: micro-batch ours {row['micro_batch']}, PyTorch {other['micro_batch']}")
        if row["flops_per_token"] != other["flops_per_token"]:
            out.append(
                f"{row['row']}: FLOPs per token ours {row['flops_per_token']}, PyTorch {other['flops_per_token']}"
            )
    for side, report in (("ours", ours), ("PyTorch", theirs)):
        for failed in report.get("failed", []):
            out.append(f"{failed['row']} failed ({side}): {failed['error']}")
    return out


def side_ratios(report: dict) -> list:
    """(what, value) pairs of one side: cola/full tokens/s per size, cola-m/cola tokens/s and memory."""
    rows = {r["row"]: r for r in report["rows"]}
    sizes = sorted({r["row"].split(":")[0].split("-", 1)[1] for r in report["rows"]}, key=size_order)
    out = []
    for size in sizes:
        cola, full, cola_m = rows.get(f"cola-{size}"), rows.get(f"full-{size}"), rows.get(f"cola-{size}:cola-m")
        if cola and full:
            out.append((f"cola / full tokens/s, {size}", ratio(cola["tokens_per_s"], full["tokens_per_s"])))
        if cola and cola_m:
            out.append((f"cola-m / cola tokens/s, {size}", ratio(cola_m["tokens_per_s"], cola["tokens_per_s"])))
            out.append((f"cola-m / cola peak memory, {size}", ratio(cola_m["peak_bytes"], cola["peak_bytes"])))
    return out


def size_order(size: str):
    """60m < 350m < 1b < 7b."""
    number = float("".join(c for c in size if c.isdigit() or c == ".") or 0)
    return number * (1000 if size.endswith("b") else 1)


def table(ours: dict, theirs: dict) -> str:
    lines = [
        f"ours: {ours.get('program')} on {ours.get('device')}, {ours.get('precision')}; PyTorch "
        f"{theirs.get('torch', '?')} on {theirs.get('device')}, {theirs.get('precision')}, SDPA "
        f"{theirs.get('attention', '?')}, {'torch.compile' if theirs.get('compile') else 'eager'}; "
        f"seq {ours.get('seq')}, {ours.get('steps')} timed steps after {ours.get('warmup')}",
        "",
    ]
    lines += [f"warning: {w}" for w in warnings(ours, theirs)]
    if lines[-1]:
        lines.append("")
    lines.append(
        "| model | micro-batch | ours tokens/s | PyTorch tokens/s | ours / PyTorch | ours MFU | PyTorch MFU "
        "| ours peak | PyTorch peak |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    theirs_rows = {r["row"]: r for r in theirs["rows"]}
    names = [r["row"] for r in ours["rows"]] + [r for r in theirs_rows if r not in {x["row"] for x in ours["rows"]}]
    ours_rows = {r["row"]: r for r in ours["rows"]}
    for name in names:
        a, b = ours_rows.get(name, {}), theirs_rows.get(name, {})
        micro = a.get("micro_batch", b.get("micro_batch"))
        lines.append(
            f"| {(a or b)['name']} | {micro} | {fmt_tokens(a.get('tokens_per_s'))} | "
            f"{fmt_tokens(b.get('tokens_per_s'))} | {fmt_ratio(ratio(a.get('tokens_per_s'), b.get('tokens_per_s')))} | "
            f"{fmt_mfu(a.get('mfu'))} | {fmt_mfu(b.get('mfu'))} | {fmt_gib(a.get('peak_bytes'))} | "
            f"{fmt_gib(b.get('peak_bytes'))} |"
        )
    ours_ratios, theirs_ratios = dict(side_ratios(ours)), dict(side_ratios(theirs))
    whats = list(ours_ratios) + [w for w in theirs_ratios if w not in ours_ratios]
    if whats:
        lines += ["", "| ratio | ours | PyTorch |", "|---|---|---|"]
        for what in whats:
            lines.append(f"| {what} | {fmt_ratio(ours_ratios.get(what))} | {fmt_ratio(theirs_ratios.get(what))} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        ours = json.load(f)
    with open(argv[1]) as f:
        theirs = json.load(f)
    text = table(ours, theirs)
    print(text)
    if len(argv) == 3:
        with open(argv[2], "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
