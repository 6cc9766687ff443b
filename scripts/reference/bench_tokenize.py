"""The reference side of the tokenization benchmark: Hugging Face `tokenizers` (the PyPI package) encoding the
documents of C4-format files with a given tokenizer.json.

    RAYON_NUM_THREADS=2 TOKENIZERS_PARALLELISM=true \
        python bench_tokenize.py --tokenizer tokenizer.json FILE_OR_FOLDER...

Reads every `*.json.gz` / `*.jsonl[.gz]` / `*.json` file (folders in sorted path order, as our corpus reader
does), takes the "text" field of each line, and encodes the non-empty ones in batches with `encode_batch`
(or `encode_batch_fast`, which skips character offsets), without special tokens: our pipeline adds its
end-of-document id itself, so its count of text tokens is comparable. The timed span is everything from
opening the first file to the last encoding: reading, gzip decompression, JSON parsing and encoding; the
ids are counted and dropped (nothing is written). Prints one JSON object on stdout.
"""

import argparse
import gzip
import json
import os
import sys
import time

import tokenizers


def corpus_files(paths):
    suffixes = (".json.gz", ".jsonl.gz", ".jsonl", ".json")
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for folder, _, names in os.walk(path):
                found.extend(os.path.join(folder, n) for n in names if n.lower().endswith(suffixes))
            files.extend(sorted(found))
        else:
            files.append(path)
    return files


def documents(path):
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as lines:
        for line in lines:
            try:
                text = json.loads(line).get("text")
            except (ValueError, AttributeError):
                continue
            if isinstance(text, str) and text:
                yield text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer.json")
    parser.add_argument("--batch-docs", type=int, default=1000, help="documents per encode_batch call")
    parser.add_argument("--api", choices=["encode_batch", "encode_batch_fast"], default="encode_batch")
    parser.add_argument("paths", nargs="+", help="corpus files or folders")
    args = parser.parse_args()
    files = corpus_files(args.paths)
    if not files:
        sys.exit(f"no corpus files in {' '.join(args.paths)}")
    tokenizer = tokenizers.Tokenizer.from_file(args.tokenizer)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    encode = getattr(tokenizer, args.api)
    counts = {"documents": 0, "text_bytes": 0, "tokens": 0}

    def flush(batch):
        counts["tokens"] += sum(len(encoding.ids) for encoding in encode(batch, add_special_tokens=False))
        counts["documents"] += len(batch)
        counts["text_bytes"] += sum(len(text.encode()) for text in batch)

    started = time.perf_counter()
    for path in files:
        batch = []
        for text in documents(path):
            batch.append(text)
            if len(batch) == args.batch_docs:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    seconds = time.perf_counter() - started
    result = {"files": len(files), **counts, "seconds": seconds, "api": args.api, "batch_docs": args.batch_docs}
    result["threads"] = os.environ.get("RAYON_NUM_THREADS", "")
    result["tokenizers_version"] = tokenizers.__version__
    result["tokenizer"] = args.tokenizer
    print(json.dumps(result))


if __name__ == "__main__":
    main()
