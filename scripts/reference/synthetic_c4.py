"""A synthetic corpus in C4's on-disk format, deterministic from a seed, for benchmarking the data pipeline.

    python synthetic_c4.py --out DIR [--size-mb 1024] [--shards 8] [--seed 0] [--jobs 2]

Writes DIR/c4-train.00000-of-01024.json.gz ... (one gzipped JSON object per line, keys text, timestamp,
url, as in the published shards) holding about --size-mb MiB of JSON in total, split evenly over the
shards, and prints one JSON summary on stdout.

Why it looks like English to a byte-level BPE: documents are words drawn from a Zipf-Mandelbrot law over a
vocabulary of 40,000 pseudo-words (syllable strings, the frequent ones short, a few numbers and accented
words), separated by spaces, commas, sentence ends and paragraph breaks, with capitalised sentence starts.
Document lengths are log-normal (median 1.6 KB of text, a long tail up to 100 KB), like C4's.

Everything is vectorised with numpy: a document is a run of indices into a table of "word + separator"
byte strings, gathered in one fancy-indexing step per chunk. The same seed gives the same bytes, whatever
--jobs is (each shard has its own random stream; gzip headers carry no time or name).
"""

import argparse
import gzip
import json
import multiprocessing
import os
import sys
import time

import numpy as np

VOCABULARY = 40_000
ZIPF_EXPONENT = 1.07
ZIPF_OFFSET = 2.7
MEDIAN_DOC_BYTES = 1600.0
DOC_SIGMA = 0.95
MIN_DOC_BYTES = 60
MAX_DOC_BYTES = 100_000
# The JSON around a document's text: key names, timestamp, url, newline.
LINE_OVERHEAD_BYTES = 100
CHUNK_BYTES = 8 << 20
ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl cr dr fl gr pl pr sh sl st th tr wh".split() + [""] * 6
VOWELS = "a e i o u a e i o ea ou ai ee io y".split()
CODAS = "n r s t l m d nd ng st ck rt nt ss ll".split() + [""] * 12
ACCENTED = ["\u00e9", "\u00e8", "\u00fc", "\u00f6", "\u00e4", "\u00f1", "\u00e7"]
# Separator after a word, as JSON text (a paragraph break is the two characters backslash n), and whether
# it ends a sentence. The last word of a document always takes FINAL_STOP.
SEPARATORS = [
    (" ", 0.848, False),
    (", ", 0.07, False),
    (". ", 0.058, True),
    (".\\n", 0.012, True),
    ("? ", 0.004, True),
    ("! ", 0.003, True),
    ("; ", 0.003, False),
    (": ", 0.002, False),
]
FINAL_STOP = "."


def pseudo_words(rng):
    """VOCABULARY distinct pseudo-words, most frequent first: shorter words tend to rank higher."""
    words = []
    seen = set()
    while len(words) < VOCABULARY:
        count = 4 * VOCABULARY
        syllables = rng.choice([1, 2, 3, 4], size=count, p=[0.3, 0.4, 0.22, 0.08])
        onset = rng.integers(0, len(ONSETS), size=(count, 4))
        vowel = rng.integers(0, len(VOWELS), size=(count, 4))
        coda = rng.integers(0, len(CODAS), size=(count, 4))
        for i in range(count):
            word = "".join(ONSETS[onset[i, s]] + VOWELS[vowel[i, s]] + CODAS[coda[i, s]] for s in range(syllables[i]))
            if word not in seen:
                seen.add(word)
                words.append(word)
                if len(words) == VOCABULARY:
                    break
    words = np.array(words, dtype=object)
    lengths = np.array([len(w) for w in words], dtype=np.float64)
    words = list(words[np.argsort(lengths + rng.normal(0.0, 2.0, size=len(words)), kind="stable")])
    # Numbers and accented words at random ranks (never among the 100 most frequent function words).
    for rank in rng.choice(np.arange(100, VOCABULARY), size=VOCABULARY // 50, replace=False):
        words[rank] = str(int(rng.integers(0, 10 ** int(rng.integers(1, 5)))))
    for rank in rng.choice(np.arange(100, VOCABULARY), size=VOCABULARY // 40, replace=False):
        word = words[rank]
        if len(word) > 2 and word.isalpha():
            at = int(rng.integers(1, len(word)))
            words[rank] = word[:at] + ACCENTED[int(rng.integers(0, len(ACCENTED)))] + word[at + 1 :]
    return words


class Tables:
    """Every (word, capitalised?, separator) as JSON bytes in one flat buffer, plus sampling laws."""

    def __init__(self, seed):
        words = pseudo_words(np.random.default_rng(seed))
        separators = [s for s, _, _ in SEPARATORS] + [FINAL_STOP]
        self.separator_count = len(separators)
        self.final_stop = len(separators) - 1
        entries = []
        for word in words:
            for form in (word, word[:1].upper() + word[1:]):
                entries.extend((form + separator).encode() for separator in separators)
        self.json_lengths = np.array([len(e) for e in entries], dtype=np.int64)
        # A paragraph break is two bytes of JSON but one byte (a newline) of document text.
        newline = np.array([s == ".\\n" for s in separators])
        self.text_lengths = self.json_lengths - np.tile(newline, 2 * len(words))
        self.starts = np.concatenate([[0], np.cumsum(self.json_lengths)[:-1]])
        self.flat = np.frombuffer(b"".join(entries), dtype=np.uint8)
        ranks = np.arange(1, len(words) + 1, dtype=np.float64)
        weights = (ranks + ZIPF_OFFSET) ** -ZIPF_EXPONENT
        self.word_cdf = np.cumsum(weights / weights.sum())
        probabilities = np.array([p for _, p, _ in SEPARATORS])
        self.separator_cdf = np.cumsum(probabilities / probabilities.sum())
        self.sentence_end = np.array([end for _, _, end in SEPARATORS] + [True])
        mean_word = float((weights / weights.sum()) @ np.array([len(w.encode()) for w in words]))
        mean_separator = float(probabilities @ np.array([len(s) for s, _, _ in SEPARATORS]))
        self.mean_entry_bytes = mean_word + mean_separator


def draw(cdf, rng, count):
    return np.minimum(np.searchsorted(cdf, rng.random(count), side="right"), len(cdf) - 1)


def document_word_counts(tables, rng, target_bytes):
    """Word counts of documents whose expected JSON lines add up to at least target_bytes."""
    counts = []
    total = 0.0
    while total < target_bytes:
        doc_bytes = np.clip(rng.lognormal(np.log(MEDIAN_DOC_BYTES), DOC_SIGMA, 4096), MIN_DOC_BYTES, MAX_DOC_BYTES)
        words = np.maximum(3, np.rint(doc_bytes / tables.mean_entry_bytes)).astype(np.int64)
        cumulative = total + np.cumsum(words * tables.mean_entry_bytes + LINE_OVERHEAD_BYTES)
        keep = int(np.searchsorted(cumulative, target_bytes)) + 1
        counts.append(words[:keep])
        total = float(cumulative[min(keep, len(words)) - 1])
    return np.concatenate(counts)


def document_bodies(tables, rng, word_counts):
    """The JSON-escaped text of each document, and each document's text bytes (newlines unescaped)."""
    total_words = int(word_counts.sum())
    words = draw(tables.word_cdf, rng, total_words)
    separators = draw(tables.separator_cdf, rng, total_words)
    ends = np.cumsum(word_counts) - 1
    separators[ends] = tables.final_stop
    capital = np.empty(total_words, dtype=bool)
    capital[0] = True
    capital[1:] = tables.sentence_end[separators[:-1]]
    entry = (words * 2 + capital) * tables.separator_count + separators
    lengths = tables.json_lengths[entry]
    out_ends = np.cumsum(lengths)
    total = int(out_ends[-1])
    gather = np.repeat(tables.starts[entry] - (out_ends - lengths), lengths) + np.arange(total)
    body = tables.flat[gather].tobytes()
    doc_ends = out_ends[ends]
    doc_starts = np.concatenate([[0], doc_ends[:-1]])
    bodies = [body[a:b] for a, b in zip(doc_starts.tolist(), doc_ends.tolist())]
    word_starts = np.concatenate([[0], ends[:-1] + 1])
    return bodies, np.add.reduceat(tables.text_lengths[entry], word_starts)


_tables = None


def write_shard(job):
    global _tables
    out, shard, total_shards, seed, target_bytes = job
    if _tables is None:
        _tables = Tables(seed)
    tables = _tables
    rng = np.random.default_rng([seed, shard + 1])
    word_counts = document_word_counts(tables, rng, target_bytes)
    path = os.path.join(out, f"c4-train.{shard:05d}-of-{max(total_shards, 1024):05d}.json.gz")
    temporary = path + ".partial"
    documents = json_bytes = 0
    doc_text_bytes = []
    per_chunk = max(1, int(CHUNK_BYTES / (tables.mean_entry_bytes * max(1.0, float(word_counts.mean())))))
    # Level 6 is gzip's default; no name or time in the header, so the bytes depend on the seed only.
    gzip_file = {"filename": "", "mode": "wb", "compresslevel": 6, "mtime": 0}
    with open(temporary, "wb") as raw, gzip.GzipFile(fileobj=raw, **gzip_file) as gz:
        for first in range(0, len(word_counts), per_chunk):
            counts = word_counts[first : first + per_chunk]
            bodies, body_text_bytes = document_bodies(tables, rng, counts)
            lines = []
            for i, body in enumerate(bodies):
                index = documents + i
                stamp = f"2019-04-{1 + index % 28:02d}T{index % 24:02d}:{index % 60:02d}:{index * 7 % 60:02d}Z"
                url = f"https://site{index * 7919 % 100003}.example.com/{shard}/{index}"
                lines.append(b'{"text":"' + body + f'","timestamp":"{stamp}","url":"{url}"}}\n'.encode())
            chunk = b"".join(lines)
            gz.write(chunk)
            documents += len(bodies)
            doc_text_bytes.append(body_text_bytes)
            json_bytes += len(chunk)
    os.replace(temporary, path)
    doc_text_bytes = np.concatenate(doc_text_bytes)
    return {
        "path": path,
        "documents": documents,
        "text_bytes": int(doc_text_bytes.sum()),
        "json_bytes": json_bytes,
        "gz_bytes": os.path.getsize(path),
        "doc_text_bytes": doc_text_bytes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the shards (created)")
    parser.add_argument("--size-mb", type=float, default=1024.0, help="MiB of JSON in all shards together")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="shards written in parallel")
    args = parser.parse_args()
    if args.shards < 1 or args.size_mb <= 0 or args.jobs < 1:
        sys.exit("--shards and --jobs must be at least 1, --size-mb positive")
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    target = args.size_mb * (1 << 20) / args.shards
    jobs = [(args.out, shard, args.shards, args.seed, target) for shard in range(args.shards)]
    if args.jobs == 1:
        shards = [write_shard(job) for job in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(min(args.jobs, args.shards)) as pool:
            shards = pool.map(write_shard, jobs, chunksize=1)
    summary = {"files": len(shards), "seed": args.seed, "size_mb": args.size_mb}
    for key in ("documents", "text_bytes", "json_bytes", "gz_bytes"):
        summary[key] = sum(s[key] for s in shards)
    doc_text_bytes = np.concatenate([s["doc_text_bytes"] for s in shards])
    for quantile in (10, 50, 90, 99):
        summary[f"doc_text_bytes_p{quantile}"] = float(np.percentile(doc_text_bytes, quantile))
    summary["doc_text_bytes_max"] = int(doc_text_bytes.max())
    summary["seconds"] = time.perf_counter() - started
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
