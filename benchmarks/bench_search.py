"""Local text search queries/s on a synthetic 100k-passage corpus: our LocalIndex (BM25 via bm25s + passage fetch
from SQLite) beside SQLite FTS5's built-in bm25() ranking (the alternative engine; since our engine IS bm25s, the
issue's "beside bm25s" baseline is FTS5 here, plus raw bm25s scoring to show the index's own overhead), all
measured in the same run on the same corpus and queries. Also: perceptual-hash image search over 100k hashes.

    .venv/bin/python benchmarks/bench_search.py [--quick] [--passages N] [--queries Q]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from openrlhf_tapo.search.images import hamming_distances
from openrlhf_tapo.search.local_index import LocalIndex

TOP_K = 5


def synthetic_corpus(n: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """n passages of 40-80 words drawn Zipf-like from a 30k-word vocabulary; queries are 3 words of one passage
    plus one random word (so most queries match, and with common words, many passages)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(30_000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    weights /= weights.sum()
    lengths = rng.integers(40, 81, n)
    words = rng.choice(len(vocab), size=int(lengths.sum()) + 3 * n, p=weights)
    docs, pos = [], 0
    for i, length in enumerate(lengths):
        title = " ".join(vocab[w] for w in words[pos : pos + 3])
        text = " ".join(vocab[w] for w in words[pos + 3 : pos + 3 + length])
        docs.append({"id": f"p{i}", "title": title, "text": text, "url": f"https://corpus/{i}"})
        pos += 3 + length
    return docs, vocab


def make_queries(docs: list[dict], vocab: list[str], q: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(q):
        words = docs[int(rng.integers(len(docs)))]["text"].split()
        picked = [words[int(i)] for i in rng.choice(len(words), 3, replace=False)]
        queries.append(" ".join(picked + [vocab[int(rng.integers(len(vocab)))]]))
    return queries


def build_fts5(docs: list[dict], path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE VIRTUAL TABLE fts USING fts5(id UNINDEXED, title, text, url UNINDEXED)")
    db.executemany("INSERT INTO fts VALUES (?,?,?,?)", ((d["id"], d["title"], d["text"], d["url"]) for d in docs))
    db.commit()
    return db


def fts5_search(db: sqlite3.Connection, query: str) -> list[str]:
    match = " OR ".join(f'"{w}"' for w in query.split())
    rows = db.execute("SELECT id, title, url, text FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?", (match, TOP_K))
    return [r[0] for r in rows]


def interleaved(engines: dict, queries: list[str], limits: dict[str, int], chunks: int = 10) -> dict:
    """queries/s and results per engine, timing the engines chunk by chunk in turn so that load from other jobs
    on the machine hits all of them alike. `limits[name]` caps how many queries an engine runs (slow baselines)."""
    size = -(-len(queries) // chunks)
    spent = dict.fromkeys(engines, 0.0)
    results = {name: [] for name in engines}
    for start in range(0, len(queries), size):
        for name, fn in engines.items():
            part = queries[start : min(start + size, limits.get(name, len(queries)))]
            if not part:
                continue
            t0 = time.perf_counter()
            results[name] += [fn(q) for q in part]
            spent[name] += time.perf_counter() - t0
    return {name: (len(results[name]) / spent[name], results[name]) for name in engines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k passages, 200 queries")
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--baseline-queries", type=int, default=200, help="queries timed on FTS5")
    args = parser.parse_args(argv)
    if args.quick:
        args.passages, args.queries, args.baseline_queries = 10_000, 200, 100

    t0 = time.perf_counter()
    docs, vocab = synthetic_corpus(args.passages)
    queries = make_queries(docs, vocab, args.queries)
    print(
        f"corpus: {len(docs):,} passages, {sum(len(d['text'].split()) for d in docs):,} words "
        f"(generated in {time.perf_counter() - t0:.1f} s); {len(queries)} queries, top-{TOP_K}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = LocalIndex.build(docs, [], Path(tmp) / "index")
        build_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        fts = build_fts5(docs, Path(tmp) / "fts.sqlite")
        build_fts = time.perf_counter() - t0
        print(f"build: LocalIndex {build_ours:.1f} s, FTS5 {build_fts:.1f} s")

        index.search_text(queries[0], TOP_K)  # warm up (memory map, SQLite connection)
        fts5_search(fts, queries[0])
        retriever, vocab_ids, tokenize = index._retriever, index._vocab, index._tokenize

        def raw_bm25s(query: str):
            ids = [vocab_ids[t] for t in tokenize(query) if t in vocab_ids]
            scores = retriever.get_scores_from_ids(ids)
            return np.argpartition(-scores, TOP_K)[:TOP_K]

        measured = interleaved(
            {
                "ours": lambda q: [h.id for h in index.search_text(q, TOP_K)],
                "raw": raw_bm25s,
                "fts5": lambda q: fts5_search(fts, q),
            },
            queries,
            {"fts5": args.baseline_queries},  # FTS5 is slow on this corpus: time it on the first queries only
        )
        (qps_ours, ours), (qps_raw, _), (qps_fts, theirs) = measured["ours"], measured["raw"], measured["fts5"]
        fts.close()

    overlap = np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(ours, theirs, strict=False)])
    top1 = np.mean([bool(a) and bool(b) and a[0] == b[0] for a, b in zip(ours, theirs, strict=False)])
    print(f"LocalIndex.search_text (bm25s + SQLite fetch): {qps_ours:8.1f} queries/s")
    print(
        f"SQLite FTS5 bm25() ORDER BY rank (baseline):   {qps_fts:8.1f} queries/s   -> ours {qps_ours / qps_fts:.2f}x"
        f" (first {len(theirs)} queries)"
    )
    print(
        f"raw bm25s scoring + top-k (no fetch):           {qps_raw:8.1f} queries/s   -> ours {qps_ours / qps_raw:.2f}x"
    )
    print(f"agreement with FTS5 (k1=1.2 vs our 1.5): top-1 {top1:.2f}, overlap@{TOP_K} {overlap:.2f}")

    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**63, size=(args.passages, 2), dtype=np.uint64)
    probes = [tuple(int(v) for v in rng.integers(0, 2**63, 2, dtype=np.uint64)) for _ in range(200)]
    start = time.perf_counter()
    for probe in probes:
        dist = hamming_distances(hashes, probe)
        np.argpartition(dist, TOP_K)[:TOP_K]
    print(
        f"image hash nearest neighbour over {len(hashes):,} images: {len(probes) / (time.perf_counter() - start):.0f}"
        " queries/s (hashing the query image not included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
