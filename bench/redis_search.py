"""What one semantic search costs the Redis backend, without gRPC or a server around it: Redis' command time for
`FT.SEARCH` variants (the query as shipped, and with one parameter changed at a time), and the backend's own
`search()` from an asyncio loop, as a replica calls it.

    .venv/bin/python bench/redis_search.py --entries 10000 --out bench/out/redis_search.json

Starts its own Redis Stack (scripts/redis_stack.py) on 127.0.0.1, fills one scope the way bench/redis_bench.py does
(200 real QQP questions plus filler vectors mixed from them), probes with 200 paraphrases, and stops Redis.

With `--recall`, instead: how much of the exact top-k the backend's HNSW search finds, per `EF_RUNTIME`, on real
data only: one scope of distinct QQP questions (embedded once, cached in bench/out/), probed with the paraphrases
(QQP positives) of questions stored in it, at each size of `--sizes`:

    .venv/bin/python bench/redis_search.py --recall --sizes 10000,100000 --ef 10,16,20,32,64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from common import command_line, machine, markdown_table, utc_now, write_json
from redis_bench import ROOT, _redis_stack, fill, load_pairs

from cachesvc.app import model_identity
from cachesvc.backends.redis import codec
from cachesvc.backends.redis.backend import EF_RUNTIME, RedisBackend
from cachesvc.backends.redis.connection import RedisOptions, connect
from cachesvc.backends.redis.keys import KeySpace
from cachesvc.config import Settings
from cachesvc.core.normalize import normalize_prompt
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.records import Entry, ScopeKey

PREFIX = "probe"


def variants(scope: ScopeKey) -> dict[str, tuple[str, list[str]]]:
    """name -> (query, arguments after PARAMS) for one probe; the first is the query the backend sends."""
    returned = [*codec.RETURNED, "__distance", codec.VECTOR]
    sort = ["SORTBY", "__distance", "ASC"]
    full = ["RETURN", str(len(returned)), *returned]
    scoped = f"(@{codec.SCOPE}:{{{scope.digest}}} @{codec.EXPIRES}:[{time.time()!r} +inf])"
    knn = "=>[KNN 4 @v $vec {policy}EF_RUNTIME {ef} AS __distance]"
    ef = EF_RUNTIME
    shipped = scoped + knn.format(policy="HYBRID_POLICY BATCHES ", ef=ef)
    return {
        f"as shipped (batches, expiry filter, EF_RUNTIME {ef}, SORTBY, all fields)": (shipped, sort + full),
        "left to the engine (ad hoc brute force)": (scoped + knn.format(policy="", ef=ef), sort + full),
        "without the expiry filter": (f"(@{codec.SCOPE}:{{{scope.digest}}})"
                                      + knn.format(policy="HYBRID_POLICY BATCHES ", ef=ef), sort + full),
        "without SORTBY": (shipped, full),
        "EF_RUNTIME 64": (scoped + knn.format(policy="HYBRID_POLICY BATCHES ", ef=64), sort + full),
        "RETURN id, __distance only": (shipped, [*sort, "RETURN", "2", "id", "__distance"]),
        "no filter at all": ("*" + knn.format(policy="", ef=ef), sort + full),
    }


def search_usec(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_FT.SEARCH", {}).get("usec", 0))


def measure_variants(r: redis.Redis, index: str, scope: ScopeKey, probes: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for name, (query, extra) in variants(scope).items():
        before, latency = search_usec(r), []
        for vector in probes:
            t0 = time.perf_counter()
            r.execute_command("FT.SEARCH", index, query, "PARAMS", "2", "vec", vector.astype(np.float32).tobytes(),
                              *extra, "LIMIT", "0", "4", "DIALECT", "2")
            latency.append((time.perf_counter() - t0) * 1000)
        rows.append({"variant": name, "redis_usec_per_search": (search_usec(r) - before) / len(probes),
                     "client_p50_ms": statistics.median(latency)})
    return rows


async def measure_backend(url: str, embedder: OnnxEmbedder, scope: ScopeKey, probes: np.ndarray,
                          r: redis.Redis) -> dict[str, Any]:
    options = RedisOptions(url=url, prefix=PREFIX, timeout=5)
    client = connect(options)
    backend = RedisBackend(client=client, options=options, dimension=embedder.dimension,
                           model=model_identity(embedder), clock_now=time.time)
    await backend.start()
    try:
        await backend.search(scope, probes[0], 4, with_vectors=True)  # loads scripts, judges the scope's share
        r.execute_command("CONFIG", "RESETSTAT")
        latency = []
        for vector in probes:
            t0 = time.perf_counter()
            await backend.search(scope, vector, 4, with_vectors=True)
            latency.append((time.perf_counter() - t0) * 1000)
        usec = {name[len("cmdstat_"):]: stats["usec"] / len(probes)
                for name, stats in r.info("commandstats").items() if "resetstat" not in name}
        t0 = time.perf_counter()
        for _ in probes:
            await client.ping()
        ping_ms = (time.perf_counter() - t0) * 1000 / len(probes)
    finally:
        await backend.aclose()
        await client.aclose()
    return {"search_p50_ms": statistics.median(latency), "redis_usec_per_search_by_command": usec,
            "async_ping_mean_ms": ping_ms}


# ---- Recall of the approximate search (--recall) --------------------------------------------------------------------


def recall_corpus(largest: int, probes: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Distinct QQP questions to store (the probes' own questions first, then the rest in a seeded order) and the
    probes: paraphrases of stored questions, never stored themselves."""
    rows = load_pairs(10**9, seed)
    chosen: list[tuple[str, str]] = []
    taken: set[str] = set()
    for row in rows:
        a, b = normalize_prompt(row["a"]), normalize_prompt(row["b"])
        if row["label"] == 1 and a != b and not {a, b} & taken:
            chosen.append((a, b))
            taken |= {a, b}
            if len(chosen) == probes:
                break
    probe_texts = {b for _a, b in chosen}
    stored = [a for a, _b in chosen]
    seen = set(stored)
    for row in rows:
        for text in (normalize_prompt(row["a"]), normalize_prompt(row["b"])):
            if text not in seen and text not in probe_texts:
                seen.add(text)
                stored.append(text)
    if len(stored) < largest:
        raise SystemExit(f"QQP has {len(stored)} distinct questions to store, fewer than {largest}")
    return stored[:largest], [b for _a, b in chosen]


def embedded(texts: list[str], cache: Path, model_dir: Path) -> np.ndarray:
    """The texts' vectors, from `cache` when it holds exactly these texts; else embedded (shortest first, so a batch
    pads little) and kept there."""
    if cache.is_file():
        held = np.load(cache, allow_pickle=False)
        if held["texts"].tolist() == texts:
            return np.asarray(held["vectors"])
    embedder = OnnxEmbedder(model_dir=model_dir, intra_op_threads=2)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    for start in range(0, len(order), 128):
        chosen = order[start:start + 128]
        vectors[chosen] = embedder.embed([texts[i] for i in chosen])
        if start % 12800 == 0:
            print(f"embedded {start}/{len(texts)}", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, texts=np.array(texts), vectors=vectors)
    return vectors


async def fill_real(url: str, embedder: OnnxEmbedder, texts: list[str], vectors: np.ndarray, start: int,
                    scope: ScopeKey) -> list[str]:
    """Stores texts[start:] with their own vectors; returns their entry ids, in order."""
    options = RedisOptions(url=url, prefix=PREFIX, timeout=30)
    client = connect(options)
    backend = RedisBackend(client=client, options=options, dimension=embedder.dimension,
                           model=model_identity(embedder), clock_now=time.time)
    await backend.start()
    ids: list[str] = []
    try:
        for first in range(start, len(texts), 64):
            batch = []
            for i in range(first, min(first + 64, len(texts))):
                entry = Entry(id=backend.new_id(scope), scope=scope, prompt=texts[i], normalized_prompt=texts[i],
                              completion="answer", metadata={}, created_at=time.time(), expires_at=None,
                              size_bytes=2000)
                ids.append(entry.id)
                batch.append(backend.put(entry, vectors[i]))
            await asyncio.gather(*batch)
    finally:
        await backend.aclose()
        await client.aclose()
    return ids


@dataclass
class RecallTally:
    """Recall of an approximate search against exact search, summed over probes. A found entry counts when its
    exact similarity reaches the k-th best's (ties)."""

    k: int
    near: float  # near duplicates: the exact top-k neighbours at or above this similarity
    probes: int = 0
    found_in_top: int = 0
    first_found: int = 0
    near_wanted: int = 0
    near_found: int = 0

    def add(self, similarities: np.ndarray, got: np.ndarray) -> None:
        """One probe: `similarities` to every stored vector, `got` the exact similarities of what the search found."""
        exact = np.sort(similarities)[::-1][:self.k]
        self.probes += 1
        self.found_in_top += min(self.k, int((got >= exact[-1] - 1e-5).sum()))
        self.first_found += int(bool(len(got)) and got.max() >= exact[0] - 1e-5)
        wanted = exact[exact >= self.near]
        self.near_wanted += len(wanted)
        self.near_found += sum(int((got >= s - 1e-5).any()) for s in wanted)

    def figures(self) -> dict[str, Any]:
        return {"recall_at_k": self.found_in_top / (self.k * self.probes),
                "nearest_found": self.first_found / self.probes,
                "near_duplicate_recall": self.near_found / self.near_wanted if self.near_wanted else None,
                "near_duplicates": self.near_wanted}


async def measure_recall(url: str, embedder: OnnxEmbedder, scope: ScopeKey, stored: np.ndarray, ids: list[str],
                         probes: np.ndarray, ef: int, k: int, near: float, r: redis.Redis) -> dict[str, Any]:
    """The backend's search (the query a replica sends, with `EF_RUNTIME ef`) against exact KNN in numpy over the
    same float32 vectors (`RecallTally`)."""
    options = RedisOptions(url=url, prefix=PREFIX, timeout=30)
    client = connect(options)
    backend = RedisBackend(client=client, options=options, dimension=embedder.dimension,
                           model=model_identity(embedder), clock_now=time.time, ef_runtime=ef)
    await backend.start()
    position = {entry_id: i for i, entry_id in enumerate(ids)}
    similarities = probes @ stored.T  # (probes, entries)
    tally = RecallTally(k=k, near=near)
    try:
        await backend.search(scope, probes[0], k)  # judges the scope's share (batches, as a replica would)
        before = search_usec(r)
        for p, vector in enumerate(probes):
            matches = await backend.search(scope, vector, k)
            tally.add(similarities[p], np.array([similarities[p, position[m.entry_id]] for m in matches]))
        usec = (search_usec(r) - before) / len(probes)
    finally:
        await backend.aclose()
        await client.aclose()
    return {"ef_runtime": ef, **tally.figures(), "redis_usec_per_search": usec}


def recall_main(args: argparse.Namespace) -> int:
    settings = Settings()
    k, near = settings.top_k, settings.recall_similarity
    sizes = sorted(int(s) for s in args.sizes.split(","))
    efs = [int(e) for e in args.ef.split(",")]
    result: dict[str, Any] = {"when": utc_now(), "command": command_line(), "machine": machine(), "k": k,
                              "near_similarity": near, "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    texts, probe_texts = recall_corpus(sizes[-1], args.probes)
    both = embedded(texts + probe_texts, args.cache, args.model_dir)
    stored, probes = both[:len(texts)], both[len(texts):]
    embedder = OnnxEmbedder(model_dir=args.model_dir)
    scope = ScopeKey(tenant="default", namespace="bench")
    server = _redis_stack().start_server(args.redis_port)
    rows: list[dict[str, Any]] = []
    try:
        r = redis.Redis(host="127.0.0.1", port=args.redis_port, protocol=2)
        ids: list[str] = []
        for size in sizes:
            t0 = time.perf_counter()
            ids += asyncio.run(fill_real(server.url, embedder, texts[:size], stored, len(ids), scope))
            print(f"filled {size} entries ({time.perf_counter() - t0:.0f} s)", flush=True)
            for ef in efs:
                row = asyncio.run(measure_recall(server.url, embedder, scope, stored[:size], ids, probes, ef, k,
                                                 near, r))
                row["entries"] = size
                rows.append(row)
                print(row, flush=True)
    finally:
        server.close()
    result["rows"] = rows
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, result)
    print(markdown_table(
        ["entries", "EF_RUNTIME", f"recall@{k}", "nearest found", f"near-duplicate recall (>= {near})",
         "Redis us per search"],
        [[f"{row['entries']:,}", row["ef_runtime"], f"{row['recall_at_k']:.4f}", f"{row['nearest_found']:.4f}",
          f"{row['near_duplicate_recall']:.4f} of {row['near_duplicates']}", f"{row['redis_usec_per_search']:.0f}"]
         for row in rows]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10000, help="entries in the probed scope")
    parser.add_argument("--probes", type=int, default=None, help="200 (costs) or 1000 (--recall) unless given")
    parser.add_argument("--passes", type=int, default=2, help="times each measurement is repeated")
    parser.add_argument("--redis-port", type=int, default=6411)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--recall", action="store_true", help="measure recall per EF_RUNTIME on real data instead")
    parser.add_argument("--sizes", default="10000,100000", help="with --recall: scope sizes, filled in turn")
    parser.add_argument("--ef", default="10,16,20,32,64", help="with --recall: EF_RUNTIME values")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench/out/recall-embeddings.npz",
                        help="with --recall: where the questions' embeddings are kept between runs")
    args = parser.parse_args()
    if args.recall:
        args.probes = args.probes or 1000
        args.out = args.out or ROOT / "bench/out/redis_recall.json"
        return recall_main(args)
    args.out = args.out or ROOT / "bench/out/redis_search.json"
    args.probes = args.probes or 200
    result: dict[str, Any] = {"when": utc_now(), "command": command_line(), "machine": machine()}
    server = _redis_stack().start_server(args.redis_port)
    try:
        embedder = OnnxEmbedder(model_dir=args.model_dir)
        pairs = [p for p in load_pairs(args.probes * 8, seed=0) if p["label"] == 1][: args.probes]
        real = embedder.embed([p["a"] for p in pairs])
        probes = embedder.embed([p["b"] for p in pairs])
        scope = ScopeKey(tenant="default", namespace="bench")
        took = asyncio.run(fill(server.url, PREFIX, embedder, real, 0, args.entries, scope))
        print(f"filled {args.entries} entries in {took:.0f} s")
        r = redis.Redis(host="127.0.0.1", port=args.redis_port, protocol=2)
        keys = KeySpace(PREFIX)
        name = keys.index(keys.tag("default"))
        result["variants"] = [measure_variants(r, name, scope, probes) for _ in range(args.passes)]
        result["backend"] = [asyncio.run(measure_backend(server.url, embedder, scope, probes, r))
                             for _ in range(args.passes)]
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        write_json(args.out, result)
        print(markdown_table(["variant", "Redis us per search", "client p50 ms"],
                             [[row["variant"], " / ".join(f"{p[i]['redis_usec_per_search']:.0f}"
                                                          for p in result["variants"]),
                               " / ".join(f"{p[i]['client_p50_ms']:.2f}" for p in result["variants"])]
                              for i, row in enumerate(result["variants"][0])]))
        for run in result["backend"]:
            print(run)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
