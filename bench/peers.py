"""cachesvc against GPTCache and RedisVL on the same prompts, the same model and the same machine, in one run.

    .venv/bin/pip install gptcache redisvl        # peers: for this benchmark only, never a dependency
    .venv/bin/python bench/peers.py --redis-server /path/to/redis-stack-server   # see DESIGN.md, "Scale-out"

Each system stores the same --stored ShareGPT prompts (cut to --max-chars) and looks up the same unseen short
prompts (QQP questions), one at a time, each lookup alternated with the embedding alone (a plain onnxruntime
session on the same model file), so that the box's load falls on both alike; then --callers concurrent callers
look up unseen prompts for --seconds. cachesvc runs as its own server over gRPC (built-in settings, embedded
backend); the peers run in this process as their documentation shows (GPTCache: SQLite + FAISS; RedisVL's
SemanticCache: Redis with the query engine, started here on a port in --redis-port and stopped at the end), with
the same plain session as their embedding function. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from common import DATA_DIR, DEFAULT_MODEL_DIR, OUT_DIR, command_line, machine, markdown_table, utc_now, write_json
from load import COMPLETION, preload, server
from overhead import WIRE_SCOPE, PlainSession, closed_loop_lookups, sharegpt_prompts, short_questions

from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc


class Peer:
    """A cache in this process: store and lookup, blocking."""

    name = ""

    def store(self, prompt: str) -> None: ...

    def lookup(self, prompt: str) -> Any: ...

    def close(self) -> None: ...


class GPTCachePeer(Peer):
    name = "GPTCache (in process: SQLite + FAISS)"

    def __init__(self, embed: Callable[[str], Any], data_dir: Path) -> None:
        from gptcache import Cache, Config
        from gptcache.adapter.api import get, put
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

        self._cache = Cache()
        self._cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=lambda text, **_: embed(text),
            data_manager=get_data_manager(CacheBase("sqlite", sql_url=f"sqlite:///{data_dir / 'gptcache.db'}"),
                                          VectorBase("faiss", dimension=384,
                                                     index_path=str(data_dir / "faiss.index"))),
            similarity_evaluation=SearchDistanceEvaluation(),
            config=Config(similarity_threshold=0.8),
        )
        self._get, self._put = get, put

    def store(self, prompt: str) -> None:
        self._put(prompt, COMPLETION, cache_obj=self._cache)

    def lookup(self, prompt: str) -> Any:
        return self._get(prompt, cache_obj=self._cache)

    def close(self) -> None:
        self._cache.flush()


class RedisVLPeer(Peer):
    name = "RedisVL SemanticCache (in process, Redis on loopback)"

    def __init__(self, embed: Callable[[str], Any], redis_url: str) -> None:
        from redisvl.extensions.cache.llm import SemanticCache
        from redisvl.utils.vectorize import CustomVectorizer

        vectorizer = CustomVectorizer(embed=lambda text: embed(text).tolist())
        self._cache = SemanticCache(name="peers", redis_url=redis_url, vectorizer=vectorizer,
                                    distance_threshold=0.1, overwrite=True)

    def store(self, prompt: str) -> None:
        self._cache.store(prompt=prompt, response=COMPLETION)

    def lookup(self, prompt: str) -> Any:
        return self._cache.check(prompt=prompt)

    def close(self) -> None:
        self._cache.delete()


@contextlib.contextmanager
def redis_stack(binary: Path, port: int) -> Iterator[str]:
    modules = binary.parent.parent / "lib"
    process = subprocess.Popen(
        [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--loadmodule", str(modules / "redisearch.so"), "--loadmodule", str(modules / "rejson.so")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):  # bounded: ready in well under a second here
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def alternated(lookup: Callable[[str], Any], embed: Callable[[str], Any], probes: list[str]) -> dict[str, float]:
    lookups, embeds = [], []
    for p in probes:
        t = time.perf_counter()
        lookup(p)
        lookups.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        embed(p)
        embeds.append((time.perf_counter() - t) * 1000)
    return {"lookup_p50_ms": statistics.median(lookups), "embed_p50_ms": statistics.median(embeds),
            "lookup_over_embed": statistics.median(lookups) / statistics.median(embeds)}


def timed_stores(store: Callable[[str], Any], prompts: list[str]) -> float:
    times = []
    for p in prompts:
        t = time.perf_counter()
        store(p)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def threaded_lookups(lookup: Callable[[str], Any], prompts: list[str], *, callers: int,
                     seconds: float) -> float:
    queue = iter(prompts)
    lock = threading.Lock()
    done = 0
    deadline = time.perf_counter() + seconds

    def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            with lock:
                prompt = next(queue, None)
            if prompt is None:
                return
            lookup(prompt)
            with lock:
                done += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        for f in [pool.submit(caller) for _ in range(callers)]:
            f.result()
    return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--store-probes", type=int, default=100, help="timed stores of unseen prompts")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-chars", type=int, default=500)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--prompts", type=Path, default=DATA_DIR / "sharegpt_first_prompts.jsonl")
    parser.add_argument("--questions", type=Path, default=DATA_DIR / "qqp_gptcache_dev.jsonl")
    parser.add_argument("--redis-server", type=Path, default=None,
                        help="redis-server of a Redis Stack build (with redisearch.so and rejson.so in ../lib)")
    parser.add_argument("--redis-port", type=int, default=6501)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "peers.json")
    args = parser.parse_args(argv)
    args.target, args.server_arg, args.server_log_level, args.server_source = None, [], "INFO", None
    args.server_cpus = None
    plain = PlainSession(args.model_dir)
    embed = lambda text: plain.embed([text])[0]  # noqa: E731
    stored = sharegpt_prompts(args.prompts, args.max_chars)[:args.stored]
    unseen = iter(short_questions(args.questions, set(stored), 60_000, seed=3))
    take = lambda n: [next(unseen) for _ in range(n)]  # noqa: E731
    results: dict[str, Any] = {"load_before": os.getloadavg()}

    # cachesvc over gRPC
    with tempfile.TemporaryDirectory(prefix="cachesvc-peers-") as data_dir, server(args, data_dir=data_dir) as srv:
        asyncio.run(preload(srv.target, stored, concurrency=16, progress=False))
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.SemanticCacheStub(channel)
            lookup = lambda p: stub.Lookup(pb.LookupRequest(scope=WIRE_SCOPE, prompt=p))  # noqa: E731
            for p in take(10):
                lookup(p)
            row = alternated(lookup, embed, take(args.probes))
            row["store_p50_ms"] = timed_stores(
                lambda p: stub.Store(pb.StoreRequest(scope=WIRE_SCOPE, prompt=p, completion=COMPLETION)),
                take(args.store_probes))
        row["lookups_per_second"] = asyncio.run(closed_loop_lookups(
            srv.target, take(3_000), callers=args.callers, seconds=args.seconds))["per_second"]
        results["cachesvc (gRPC, embedded backend)"] = row
        print(row, flush=True)

    peers: list[tuple[str, Callable[[], Peer]]] = []
    scratch = Path(tempfile.mkdtemp(prefix="cachesvc-peers-"))
    peers.append(("GPTCache", lambda: GPTCachePeer(embed, scratch)))
    with contextlib.ExitStack() as stack:
        if args.redis_server is not None:
            url = stack.enter_context(redis_stack(args.redis_server, args.redis_port))
            peers.append(("RedisVL", lambda: RedisVLPeer(embed, url)))
        else:
            results["RedisVL"] = {"skipped": "no --redis-server given"}
        for name, make in peers:
            row: dict[str, Any] = {}
            try:
                peer = make()
                name = peer.name
                for p in stored:
                    peer.store(p)
                for p in take(10):
                    peer.lookup(p)
                row.update(alternated(peer.lookup, embed, take(args.probes)))
                row["store_p50_ms"] = timed_stores(peer.store, take(args.store_probes))
                try:
                    row["lookups_per_second"] = threaded_lookups(peer.lookup, take(3_000), callers=args.callers,
                                                                 seconds=args.seconds)
                except Exception as exc:  # e.g. GPTCache's SQLite store under concurrent callers
                    row["concurrent_failure"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                    lock = threading.Lock()

                    def serialized(prompt: str, peer: Peer = peer, lock: threading.Lock = lock) -> Any:
                        with lock:
                            return peer.lookup(prompt)

                    row["lookups_per_second"] = threaded_lookups(serialized, take(3_000), callers=args.callers,
                                                                 seconds=args.seconds)
                    row["serialized"] = True
                peer.close()
            except Exception as exc:  # a peer that cannot run here is reported, not fatal
                row["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            results[name] = row
            print(name, row, flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict) or "lookup_p50_ms" not in r:
            continue
        rate = f"{r['lookups_per_second']:.0f}" if "lookups_per_second" in r else "-"
        if r.get("serialized"):
            rate += " (calls serialized: concurrent callers fail with " + r["concurrent_failure"][:60] + ")"
        rows.append([name, f"{r['lookup_p50_ms']:.2f} / {r['embed_p50_ms']:.2f} ms = **{r['lookup_over_embed']:.2f}x**",
                     f"{r['store_p50_ms']:.2f} ms", rate])
    table = markdown_table(["system", "lookup p50 / embed-alone p50", "store p50", "lookups/s, 16 callers"], rows)
    print(table)
    write_json(args.out, {"date": utc_now(), "command": command_line(), "machine": machine(), "results": results,
                          "markdown": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
