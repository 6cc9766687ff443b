"""Markdown tables of a data-pipeline benchmark run, from the JSON files `scripts/bench_data.sh` left in its
results folder (see that script for what each run measures).

    python bench_data_tables.py RESULTS_DIR

One table per item: the corpora, the tokenizer, tokenization throughput (medians over the repeats, ratio
ours/theirs of the medians), peak resident memory and the time to the first training step. MiB = 2^20
bytes; throughput counts UTF-8 bytes of document text, not file bytes.
"""

import glob
import json
import os
import re
import statistics
import sys

MIB = float(1 << 20)


def load(path):
    with open(path) as f:
        return json.load(f)


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


THEIR_APIS = ("encode_batch_fast", "encode_batch")


def runs(results, side, threads):
    """(totals, rss report) of every repeat of one side ("ours" or a `tokenizers` API) at one thread count;
    prepare_data's totals of the training corpus are under "train"."""
    found = []
    for path in sorted(glob.glob(os.path.join(results, f"tokenize-{side}-t{threads}-r*.json"))):
        if not path.endswith(".rss.json"):
            result = load(path)
            found.append((result.get("train", result), load(path[: -len(".json")] + ".rss.json")))
    return found


def median(values):
    return statistics.median(values) if values else float("nan")


def token_agreement(ours, theirs):
    if ours["tokens"] == theirs["tokens"]:
        return "equal"
    if ours["tokens"] == theirs["tokens"] + ours["documents"]:
        return "equal (ours has 1 eos per document more)"
    return f"DIFFER by {ours['tokens'] - theirs['tokens']:+,}"


def corpora_table(results):
    rows = []
    for path in sorted(glob.glob(os.path.join(results, "corpus-*.json"))):
        name = os.path.basename(path)[len("corpus-") : -len(".json")]
        c = load(path)
        rows.append([name, c["files"], f"{c['documents']:,}", f"{c['json_bytes'] / MIB:.1f}",
                     f"{c['gz_bytes'] / MIB:.1f}", f"{c['text_bytes'] / MIB:.1f}", f"{c['doc_text_bytes_p50']:.0f}",
                     f"{c['doc_text_bytes_p99']:.0f}", f"{c['seconds']:.1f}"])
    print("Synthetic corpora (`scripts/reference/synthetic_c4.py`; json.gz shards named like C4's):\n")
    table(["corpus", "files", "documents", "JSON MiB", "gz MiB", "text MiB", "median doc bytes", "p99 doc bytes",
           "generation s"], rows)


def tokenizer_table(results):
    path = os.path.join(results, "tokenizer.json")
    if not os.path.exists(path):
        return
    t = load(path)
    print("Tokenizer (trained by `prepare_data --vocab-size`, used by both sides):\n")
    table(["vocabulary", "trained on", "documents", "text MiB", "seconds"],
          [[t["vocab_size"], t["corpus"], f"{t['documents']:,}", f"{t['text_bytes'] / MIB:.1f}",
            f"{t['seconds']:.1f}"]])


def throughput_table(results):
    rows = []
    for threads in (1, 2):
        ours = runs(results, "ours", threads)
        if not ours:
            continue
        ours_rate = median([r["text_bytes"] / r["seconds"] / MIB for r, _ in ours])
        ours_tokens = median([r["tokens"] / r["seconds"] for r, _ in ours])
        ours_wall = median([rss["wall_seconds"] for _, rss in ours])
        for api in THEIR_APIS:
            theirs = runs(results, api, threads)
            if not theirs:
                continue
            theirs_rate = median([r["text_bytes"] / r["seconds"] / MIB for r, _ in theirs])
            theirs_tokens = median([r["tokens"] / r["seconds"] for r, _ in theirs])
            theirs_wall = median([rss["wall_seconds"] for _, rss in theirs])
            rows.append([threads, f"`{api}`", len(ours), f"{ours_rate:.2f}", f"{theirs_rate:.2f}",
                         f"{ours_rate / theirs_rate:.2f}", f"{ours_tokens:,.0f}", f"{theirs_tokens:,.0f}",
                         f"{ours_wall:.1f}", f"{theirs_wall:.1f}", f"{ours[0][0]['tokens']:,}",
                         f"{theirs[0][0]['tokens']:,}", token_agreement(ours[0][0], theirs[0][0])])
    if not rows:
        return
    corpus = runs(results, "ours", 1)[0][0]
    reference = next(r for api in THEIR_APIS for r, _ in runs(results, api, 1))
    print(f"Tokenization of {corpus['documents']:,} documents, {corpus['text_bytes'] / MIB:.1f} MiB of text. Ours: "
          "`prepare_data --threads N` into an empty cache, timed by its own `seconds` (read, gunzip, JSON, "
          f"encode, writing the shards). Theirs: `tokenizers` {reference['tokenizers_version']} "
          f"(PyPI), batches of {reference['batch_docs']} documents, RAYON_NUM_THREADS=N (read, gunzip, JSON, "
          "encode; nothing written). Medians over the repeats; ratio = ours / theirs of MiB/s; wall s is "
          "launch to exit (tokenizer loading and start-up included):\n")
    table(["threads", "their API", "repeats", "ours MiB/s", "theirs MiB/s", "ratio", "ours tokens/s",
           "theirs tokens/s", "ours wall s", "theirs wall s", "ours tokens", "theirs tokens", "token counts"],
          rows)


def memory_table(results):
    rows = []
    for path in sorted(glob.glob(os.path.join(results, "prepare-*.rss.json"))):
        name = os.path.basename(path)[len("prepare-") : -len(".rss.json")]
        rss, prepared = load(path), load(path[: -len(".rss.json")] + ".json")["train"]
        rate = prepared["text_bytes"] / prepared["seconds"] / MIB
        rows.append([f"prepare_data {name}, 2 threads, empty cache", f"{rss['peak_rss_bytes'] / MIB:.0f}",
                     f"{rss['wall_seconds']:.1f}", f"{rate:.2f} MiB/s, {prepared['tokens']:,} tokens"])
    train = sorted(glob.glob(os.path.join(results, "train-*.rss.json")))
    for path in train:
        name = re.sub(r"^train-|\.rss\.json$", "", os.path.basename(path))
        rss = load(path)
        first = rss["first_line_seconds"]
        first = "no step line" if first is None else f"first step line at {first:.1f} s"
        status = "" if rss["exit_code"] == 0 else f", exit code {rss['exit_code']}"
        rows.append([f"train {name}", f"{rss['peak_rss_bytes'] / MIB:.0f}", f"{rss['wall_seconds']:.1f}",
                     first + status])
    if not rows:
        return
    print("Peak resident memory (ru_maxrss of the process, `scripts/peak_rss.py`; mapped corpus pages count as "
          "far as they were touched). Training: cola-60m, 20 steps of 1 x 256 tokens, 2 threads, on the cache "
          "prepare_data built; run2 is an identical second run; the first step line, printed once step 1 is "
          "done, is the time to first step:\n")
    table(["workload", "peak RSS MiB", "wall s", "notes"], rows)


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RESULTS_DIR")
    results = sys.argv[1]
    corpora_table(results)
    tokenizer_table(results)
    throughput_table(results)
    memory_table(results)


if __name__ == "__main__":
    main()
