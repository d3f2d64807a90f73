"""Where the embedded backend should switch a scope from flat search to HNSW: recall and search time of both, per
scope size, on real data, through the backend's own `ScopeIndex`.

    .venv/bin/python bench/index_recall.py --sizes 5000,10000,20000 --thresholds 5000,10000
    .venv/bin/python bench/index_recall.py --sizes 10000,100000 --thresholds 5000 --ef-search 16,32,48,96

One scope of distinct QQP questions (embedded once, cached in bench/out/, as `bench/redis_search.py --recall`
does) probed with 1,000 paraphrases (QQP positives) of questions stored in it. For each size and each HNSW
threshold at or below it, the index is grown as the server grows it: a flat index up to the threshold, the HNSW
build there, and every later entry added one at a time to the graph. Reported against exact search in numpy:
how much of the exact top-k the search finds, how often the exact nearest, and near-duplicate recall (the exact
top-k neighbours at or above the default recall similarity). Search time is the median of one search per probe
after a 64 MB sweep of memory (between lookups the model's weights pass through the caches), one FAISS thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from common import command_line, machine, markdown_table, utc_now, write_json
from redis_search import RecallTally, embedded, recall_corpus

from cachesvc.backends.faiss_index import IndexKind, IndexOptions, ScopeIndex, use_one_thread
from cachesvc.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SWEEP = np.ones(16 * 1024 * 1024, dtype=np.float32)  # 64 MB


def grown_index(stored: np.ndarray, size: int, threshold: int, builder: ThreadPoolExecutor,
                ef_search: int) -> ScopeIndex:
    """`size` vectors added as the server adds them, with HNSW from `threshold` entries (flat when above size)."""
    options = IndexOptions(hnsw_threshold=threshold, hnsw_ef_search=ef_search)
    index = ScopeIndex(dimension=stored.shape[1], options=options, builder=builder)
    first = min(size, threshold)
    index.add_many(np.arange(first, dtype=np.int64), stored[:first])
    index.wait_for_build()
    for label in range(first, size):
        index.add(label, stored[label])
    index.wait_for_build()
    return index


def measure(index: ScopeIndex, stored: np.ndarray, probes: np.ndarray, k: int, near: float) -> dict[str, Any]:
    similarities = probes @ stored.T
    tally = RecallTally(k=k, near=near)
    times: list[float] = []
    for p, vector in enumerate(probes):
        SWEEP.sum()
        started = time.perf_counter()
        found = index.search(vector, k)
        times.append((time.perf_counter() - started) * 1e6)
        tally.add(similarities[p], np.array([similarities[p, label] for label, _s in found]))
    return {"kind": index.kind.value, **tally.figures(), "search_us_p50": statistics.median(times),
            "search_us_p99": float(np.percentile(times, 99))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,10000,20000")
    parser.add_argument("--thresholds", default="5000,10000", help="HNSW thresholds to try; flat is always measured")
    parser.add_argument("--ef-search", default=str(IndexOptions.hnsw_ef_search),
                        help="HNSW efSearch values to try (comma-separated)")
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/all-MiniLM-L6-v2")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench/out/index-recall-embeddings.npz")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/index_recall.json")
    args = parser.parse_args()
    settings = Settings()
    k, near = settings.top_k, settings.recall_similarity
    sizes = sorted(int(s) for s in args.sizes.split(","))
    thresholds = sorted(int(t) for t in args.thresholds.split(","))
    efs = [int(e) for e in args.ef_search.split(",")]
    texts, probe_texts = recall_corpus(sizes[-1], args.probes)
    both = embedded(texts + probe_texts, args.cache, args.model_dir)
    stored, probes = both[:len(texts)], both[len(texts):]
    use_one_thread()
    builder = ThreadPoolExecutor(1, thread_name_prefix="hnsw-build")
    result: dict[str, Any] = {"when": utc_now(), "command": command_line(), "machine": machine(), "k": k,
                              "near_similarity": near, "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    rows: list[dict[str, Any]] = []
    for size in sizes:
        for threshold in [t for t in thresholds if t <= size] + [size + 1]:
            index = grown_index(stored, size, threshold, builder, efs[0])
            assert (index.kind is IndexKind.HNSW) == (threshold <= size)
            for ef in efs if threshold <= size else efs[:1]:
                if index.kind is IndexKind.HNSW:  # efSearch is read at search time: one graph serves every value
                    faiss.downcast_index(index._index.index).hnsw.efSearch = ef
                row = {"entries": size, "hnsw_threshold": threshold if threshold <= size else None,
                       "ef_search": ef if threshold <= size else None,
                       **measure(index, stored[:size], probes, k, near)}
                rows.append(row)
                print(row, flush=True)
    builder.shutdown()
    result["rows"] = rows
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, result)
    print(markdown_table(
        ["entries", "index (HNSW from, efSearch)", f"recall@{k}", "nearest found", f"near-duplicate recall (>= {near})",
         "search p50 / p99 us"],
        [[f"{r['entries']:,}",
          "flat" if r["hnsw_threshold"] is None else f"HNSW ({r['hnsw_threshold']:,}, {r['ef_search']})",
          f"{r['recall_at_k']:.4f}", f"{r['nearest_found']:.4f}",
          f"{r['near_duplicate_recall']:.4f} of {r['near_duplicates']}",
          f"{r['search_us_p50']:.0f} / {r['search_us_p99']:.0f}"] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
