"""What one semantic search costs the Redis backend, without gRPC or a server around it: Redis' command time for
`FT.SEARCH` variants (the query as shipped, and with one parameter changed at a time), and the backend's own
`search()` from an asyncio loop, as a replica calls it.

    .venv/bin/python bench/redis_search.py --entries 10000 --out bench/out/redis_search.json

Starts its own Redis Stack (scripts/redis_stack.py) on 127.0.0.1, fills one scope the way bench/redis_bench.py does
(200 real QQP questions plus filler vectors mixed from them), probes with 200 paraphrases, and stops Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from common import command_line, machine, markdown_table, utc_now, write_json
from redis_bench import ROOT, _redis_stack, fill, load_pairs

from cachesvc.app import model_identity
from cachesvc.backends.redis import codec
from cachesvc.backends.redis.backend import RedisBackend
from cachesvc.backends.redis.connection import RedisOptions, connect
from cachesvc.backends.redis.keys import KeySpace
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.records import ScopeKey

PREFIX = "probe"


def variants(scope: ScopeKey) -> dict[str, tuple[str, list[str]]]:
    """name -> (query, arguments after PARAMS) for one probe; the first is the query the backend sends."""
    returned = [*codec.RETURNED, "__distance", codec.VECTOR]
    sort = ["SORTBY", "__distance", "ASC"]
    full = ["RETURN", str(len(returned)), *returned]
    scoped = f"(@{codec.SCOPE}:{{{scope.digest}}} @{codec.EXPIRES}:[{time.time()!r} +inf])"
    knn = "=>[KNN 4 @v $vec {policy}EF_RUNTIME {ef} AS __distance]"
    shipped = scoped + knn.format(policy="HYBRID_POLICY BATCHES ", ef=64)
    return {
        "as shipped (batches, expiry filter, EF_RUNTIME 64, SORTBY, all fields)": (shipped, sort + full),
        "left to the engine (ad hoc brute force)": (scoped + knn.format(policy="", ef=64), sort + full),
        "without the expiry filter": (f"(@{codec.SCOPE}:{{{scope.digest}}})"
                                      + knn.format(policy="HYBRID_POLICY BATCHES ", ef=64), sort + full),
        "without SORTBY": (shipped, full),
        "EF_RUNTIME 10": (scoped + knn.format(policy="HYBRID_POLICY BATCHES ", ef=10), sort + full),
        "RETURN id, __distance only": (shipped, [*sort, "RETURN", "2", "id", "__distance"]),
        "no filter at all": ("*" + knn.format(policy="", ef=64), sort + full),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10000, help="entries in the probed scope")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--passes", type=int, default=2, help="times each measurement is repeated")
    parser.add_argument("--redis-port", type=int, default=6411)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/redis_search.json")
    args = parser.parse_args()
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
