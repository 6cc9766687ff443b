#!/usr/bin/env python3
"""Whether two training runs took the same trajectory: compares the metrics.jsonl files of two run
directories record by record on what the numbers of a run are (step, loss, learning rate, gradient norm,
token count; validation loss and perplexity), not on timings. Prints MATCH when every value is equal
(bit for bit: the check is of a path that must not change any number, such as a sum over one rank),
else DIFFER with the first differences, and exits 0 or 1 (standard library only).

Usage: compare_metrics.py A/metrics.jsonl B/metrics.jsonl
"""
import json
import sys

COMPARED = ("step", "loss", "lr", "grad_norm", "tokens", "val_loss", "val_ppl")


def records(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k in COMPARED} for line in f if line.strip()]


def differences(a, b):
    out = []
    if len(a) != len(b):
        out.append(f"{len(a)} records against {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            out.append(f"record {i} (step {x.get('step')}): " + ", ".join(f"{k} {x.get(k)} vs {y.get(k)}" for k in keys))
    return out


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        a, b = records(argv[0]), records(argv[1])
    except (OSError, ValueError) as error:
        print(f"DIFFER: cannot read the metrics ({error})")
        return 1
    found = differences(a, b)
    if not a:
        found.insert(0, f"{argv[0]} has no records")
    if found:
        print("DIFFER: " + "; ".join(found[:5]))
        return 1
    losses = [r["loss"] for r in a if "loss" in r]
    print(f"MATCH: {len(a)} records equal ({len(losses)} training losses, last {losses[-1] if losses else '-'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
