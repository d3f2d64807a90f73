"""Figures for the Redis backend: latency against the embedder alone, Redis CPU per call, throughput with one and
two replicas, and RedisVL's SemanticCache side by side on the same Redis, model and prompts.

    .venv/bin/python bench/redis_bench.py --sizes 10000,100000 --out bench/out/redis.json

Starts its own Redis Stack (scripts/redis_stack.py) and cachesvc replicas (subprocesses, `--backend redis`,
`--memo-size 0` so every lookup embeds), all on 127.0.0.1; kills them at the end. Filler entries (vectors mixed
from real embeddings plus noise, as bench/filler.py does) are written straight into Redis through the backend,
since filling 100k entries through gRPC would embed each one. The RedisVL part needs `pip install redisvl`
(a benchmark-only dependency) and is skipped without it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from common import command_line, machine, markdown_table, percentile, utc_now, write_json
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cachesvc.app import model_identity
from cachesvc.backends.redis.backend import RedisBackend
from cachesvc.backends.redis.connection import RedisOptions, connect
from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.service import entry_size_bytes
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.records import Entry, ScopeKey
from cachesvc_client import CacheClient, Scope
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "qqp_gptcache_dev.jsonl"
TENANT = "default"  # the one tenant of a server without API keys
NAMESPACE = "bench"


def _redis_stack() -> Any:
    spec = importlib.util.spec_from_file_location("redis_stack", ROOT / "scripts" / "redis_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commandstats(redis: Any) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec) from INFO commandstats."""
    found = {}
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            parts = dict(p.split("=") for p in rest.split(","))
            found[name] = (int(parts["calls"]), int(parts["usec"]))
    return found


def redis_usec(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    """Microseconds Redis spent in top-level commands (a script's inner commands are counted in it already)."""
    inner = {"hgetall", "hset", "hincrby", "get", "set", "del", "exists", "pexpire"}
    return sum(usec - before.get(name, (0, 0))[1] for name, (_calls, usec) in after.items() if name not in inner)


class Replica:
    def __init__(self, *, port: int, url: str, model_dir: Path, prefix: str, log: Path,
                 extra: tuple[str, ...] = (), source: Path | None = None) -> None:
        argv = [sys.executable, "-m", "cachesvc", "serve", "--model-dir", str(model_dir.resolve()),
                "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1", "--backend", "redis",
                "--redis-url", url,
                "--redis-prefix", prefix, "--memo-size", "0", "--log-level", "WARNING", "--redis-timeout", "5", *extra]
        env = dict(os.environ)
        if source is not None:  # run another tree's cachesvc (ahead of the installed one on the import path)
            env["PYTHONPATH"] = str(source)
        # `python -m` puts its working directory first on the import path, ahead of PYTHONPATH: started from this
        # tree, a baseline replica would import this tree's cachesvc. So it starts in its own tree, checked here.
        cwd = None
        if source is not None:
            cwd = source.resolve()
            imported = subprocess.run([sys.executable, "-c", "import cachesvc; print(cachesvc.__file__)"], cwd=cwd,
                                      env=env, capture_output=True, text=True, check=True).stdout.strip()
            if not Path(imported).is_relative_to(cwd):
                raise RuntimeError(f"a replica started in {cwd} would import {imported}")
        with open(log, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        self.port = port
        deadline = time.monotonic() + 120
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"replica on {port} did not start; see {log}")
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load_pairs(n: int, seed: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


async def fill(url: str, prefix: str, embedder: OnnxEmbedder, real: np.ndarray, start: int, stop: int,
               scope: ScopeKey) -> float:
    """Writes filler entries start..stop-1 into the scope; returns seconds taken."""
    options = RedisOptions(url=url, prefix=prefix, timeout=30)
    client = connect(options)
    backend = RedisBackend(client=client, options=options, dimension=embedder.dimension,
                           model=model_identity(embedder), clock_now=time.time)
    await backend.start()
    rng = np.random.default_rng(start)
    began = time.perf_counter()
    batch = 64
    for first in range(start, stop, batch):
        rows = range(first, min(first + batch, stop))
        picks = rng.integers(0, len(real), size=(len(rows), 2))
        mixed = real[picks[:, 0]] * 0.6 + real[picks[:, 1]] * 0.4
        mixed += rng.standard_normal(mixed.shape).astype(np.float32) * 0.02
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        puts = []
        for i, vector in zip(rows, mixed, strict=True):
            prompt = f"filler prompt number {i}"
            entry = Entry(id=backend.new_id(scope), scope=scope, prompt=prompt, normalized_prompt=prompt,
                          completion="filler completion " * 8, metadata={}, created_at=time.time(), expires_at=None,
                          size_bytes=entry_size_bytes(dimension=embedder.dimension, prompt=prompt,
                                                      normalized_prompt=prompt, completion_bytes=144,
                                                      metadata_bytes=0))
            puts.append(backend.put(entry, vector.astype(np.float32)))
        await asyncio.gather(*puts)
    took = time.perf_counter() - began
    await backend.aclose()
    await client.aclose()
    return took


def latency_round(client: CacheClient, embedder: OnnxEmbedder, prompts: list[str], scope: Scope,
                  redis: Any, redis_pid: int) -> dict[str, Any]:
    """Semantic lookups through gRPC, each next to the embedder alone on the same prompt (interleaved)."""
    embed_ms, lookup_ms, hits = [], [], 0
    before, cpu_before = commandstats(redis), cpu_seconds(redis_pid)
    for prompt in prompts:
        t0 = time.perf_counter()
        embedder.embed([prompt])
        t1 = time.perf_counter()
        found = client.lookup(prompt, scope=scope)
        t2 = time.perf_counter()
        embed_ms.append((t1 - t0) * 1000)
        lookup_ms.append((t2 - t1) * 1000)
        hits += found.hit
    usec = redis_usec(before, commandstats(redis))
    cpu = cpu_seconds(redis_pid) - cpu_before
    e50, l50 = percentile(embed_ms, 50), percentile(lookup_ms, 50)
    assert e50 is not None and l50 is not None
    return {"lookups": len(prompts), "hits": hits, "embed_p50_ms": e50, "lookup_p50_ms": l50,
            "lookup_p99_ms": percentile(lookup_ms, 99), "ratio": l50 / e50,
            "redis_cmd_ms_per_lookup": usec / 1000 / len(prompts), "redis_cpu_ms_per_lookup": cpu * 1000 / len(prompts)}


def compare_round(clients: dict[str, CacheClient], embedder: OnnxEmbedder, prompts: list[str], scope: Scope,
                  redis_pid: int, block: int = 25) -> dict[str, Any]:
    """The same semantic lookups on replicas running different code over one Redis, in alternating blocks (so
    load drifts hit every side alike), each lookup next to the embedder alone; Redis CPU is charged per block."""
    seen: dict[str, dict[str, Any]] = {
        name: {"embed": [], "lookup": [], "hits": 0, "redis_cpu": 0.0, "server_embed": [], "server_search": [],
               "server_total": [], "hit": [], "overhead": []} for name in clients}
    for start in range(0, len(prompts), block):
        for name, client in clients.items():
            side = seen[name]
            cpu_before = cpu_seconds(redis_pid)
            for prompt in prompts[start:start + block]:
                t0 = time.perf_counter()
                embedder.embed([prompt])
                t1 = time.perf_counter()
                found = client.lookup(prompt, scope=scope)
                t2 = time.perf_counter()
                side["embed"].append((t1 - t0) * 1000)
                side["lookup"].append((t2 - t1) * 1000)
                side["hits"] += found.hit
                side["hit"].append(found.hit)
                side["server_embed"].append(found.timings.embed_ms)
                side["server_search"].append(found.timings.search_ms)
                side["server_total"].append(found.timings.total_ms)
                # Everything but the server's own embedding: the part a backend changes, without the noise of
                # the model run (the largest and most variable part of a lookup on a busy box).
                side["overhead"].append((t2 - t1) * 1000 - found.timings.embed_ms)
            side["redis_cpu"] += cpu_seconds(redis_pid) - cpu_before
    out = {}
    for name, side in seen.items():
        e50, l50 = percentile(side["embed"], 50), percentile(side["lookup"], 50)
        assert e50 is not None and l50 is not None
        out[name] = {"lookups": len(side["lookup"]), "hits": side["hits"], "embed_p50_ms": e50, "lookup_p50_ms": l50,
                     "ratio": l50 / e50, "redis_cpu_ms_per_lookup": side["redis_cpu"] * 1000 / len(side["lookup"]),
                     # Where the time goes, as the server saw it (its embed and search stages, its whole call).
                     "server_embed_p50_ms": percentile(side["server_embed"], 50),
                     "server_search_p50_ms": percentile(side["server_search"], 50),
                     "server_total_p50_ms": percentile(side["server_total"], 50),
                     "overhead_p50_ms": percentile(side["overhead"], 50)}
        # Hits and misses apart: they make different round trips to Redis.
        for kind, wanted in (("hit", True), ("miss", False)):
            chosen = [i for i, hit in enumerate(side["hit"]) if hit is wanted]
            if chosen:
                ke50 = percentile([side["embed"][i] for i in chosen], 50)
                kl50 = percentile([side["lookup"][i] for i in chosen], 50)
                assert ke50 is not None and kl50 is not None
                out[name] |= {f"{kind}_embed_p50_ms": ke50, f"{kind}_lookup_p50_ms": kl50, f"{kind}_ratio": kl50 / ke50,
                              f"{kind}_overhead_p50_ms": percentile([side["overhead"][i] for i in chosen], 50)}
    return out


def exact_round(client: CacheClient, port: int, prompts: list[str], scope: Scope, redis: Any,
                redis_pid: int) -> dict[str, Any]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        cache_stub = pb_grpc.SemanticCacheStub(channel)
        proto_scope = pb.Scope(namespace=scope.namespace, model=scope.model, context=scope.context)
        health_ms, exact_ms, stub_ms = [], [], []
        before, cpu_before = commandstats(redis), cpu_seconds(redis_pid)
        for prompt in prompts * 5:
            t0 = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            t1 = time.perf_counter()
            found = client.lookup(prompt, scope=scope)
            t2 = time.perf_counter()
            # The same call through the generated stub, as a health check is made: the server's share without
            # the client library's conversions.
            reply = cache_stub.Lookup(pb.LookupRequest(scope=proto_scope, prompt=prompt), timeout=5)
            t3 = time.perf_counter()
            assert found.exact and reply.exact, "an exact probe missed"
            health_ms.append((t1 - t0) * 1000)
            exact_ms.append((t2 - t1) * 1000)
            stub_ms.append((t3 - t2) * 1000)
        usec = redis_usec(before, commandstats(redis))
        cpu = cpu_seconds(redis_pid) - cpu_before
    h50, x50, s50 = percentile(health_ms, 50), percentile(exact_ms, 50), percentile(stub_ms, 50)
    assert h50 is not None and x50 is not None and s50 is not None
    calls = 2 * len(exact_ms)
    return {"exact_lookups": len(exact_ms), "health_p50_ms": h50, "exact_p50_ms": x50, "ratio": x50 / h50,
            "exact_stub_p50_ms": s50, "stub_ratio": s50 / h50,
            "redis_cmd_ms_per_exact": usec / 1000 / calls,
            "redis_cpu_ms_per_exact": cpu * 1000 / calls}


def store_round(client: CacheClient, prompts: list[str], scope: Scope, redis: Any, redis_pid: int) -> dict[str, Any]:
    before, cpu_before = commandstats(redis), cpu_seconds(redis_pid)
    for prompt in prompts:
        client.store(prompt, "a stored answer", scope=scope)
    usec = redis_usec(before, commandstats(redis))
    cpu = cpu_seconds(redis_pid) - cpu_before
    return {"stores": len(prompts), "redis_cmd_ms_per_store": usec / 1000 / len(prompts),
            "redis_cpu_ms_per_store": cpu * 1000 / len(prompts)}


def throughput(replicas: list[Replica], prompts: list[str], scope: Scope, redis_pid: int, *, threads: int,
               seconds: float) -> dict[str, Any]:
    calls = [0] * threads
    stop = threading.Event()

    def worker(i: int) -> None:
        with CacheClient(f"127.0.0.1:{replicas[i % len(replicas)].port}", timeout=30) as c:
            k = i
            while not stop.is_set():
                c.lookup(prompts[k % len(prompts)], scope=scope)
                calls[i] += 1
                k += threads

    server_before = [cpu_seconds(r.process.pid) for r in replicas]
    redis_before = cpu_seconds(redis_pid)
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    took = time.perf_counter() - began
    total = sum(calls)
    server_cpu = sum(cpu_seconds(r.process.pid) - b for r, b in zip(replicas, server_before, strict=True))
    return {"replicas": len(replicas), "threads": threads, "lookups": total, "per_s": total / took,
            "server_cpu_ms_per_lookup": server_cpu * 1000 / total,
            "redis_cpu_ms_per_lookup": (cpu_seconds(redis_pid) - redis_before) * 1000 / total}


def redisvl_side(url: str, embedder: OnnxEmbedder, stored: list[str], stored_vectors: np.ndarray,
                 filler: int, probes: list[str], pairs: list[dict[str, Any]], pair_vectors: np.ndarray,
                 cachesvc_lookup: Callable[[str], object] | None = None) -> dict[str, Any] | None:
    """With `cachesvc_lookup` (a scope holding the same entries), cachesvc's lookups run in blocks alternating
    with RedisVL's, so both ratios come from the same minutes."""
    try:
        from redisvl.extensions.cache.llm import SemanticCache
        from redisvl.utils.vectorize import CustomVectorizer
    except ImportError:
        print("redisvl is not installed: skipping its side (pip install redisvl)")
        return None
    vectorizer = CustomVectorizer(embed=lambda text: embedder.embed([text])[0].tolist())
    out: dict[str, Any] = {}
    cache = SemanticCache(name=f"rvl{uuid.uuid4().hex[:6]}", redis_url=url, vectorizer=vectorizer,
                          distance_threshold=0.1)
    rng = np.random.default_rng(0)
    for i, (prompt, vector) in enumerate(zip(stored, stored_vectors, strict=True)):
        cache.store(prompt, f"answer {i}", vector=vector.tolist())
    for i in range(filler):
        a, b = rng.integers(0, len(stored_vectors), size=2)
        v = stored_vectors[a] * 0.6 + stored_vectors[b] * 0.4 + rng.standard_normal(embedder.dimension) * 0.02
        cache.store(f"filler prompt number {i}", "filler", vector=(v / np.linalg.norm(v)).astype(np.float32).tolist())
    sides: dict[str, Callable[[str], object]] = {"redisvl": lambda prompt: cache.check(prompt=prompt)}
    if cachesvc_lookup is not None:
        sides["cachesvc"] = cachesvc_lookup
    timed: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in sides}
    for start in range(0, len(probes), 25):
        for name, look_up in sides.items():
            embed_ms, lookup_ms = timed[name]
            for prompt in probes[start:start + 25]:
                t0 = time.perf_counter()
                embedder.embed([prompt])
                t1 = time.perf_counter()
                look_up(prompt)
                t2 = time.perf_counter()
                embed_ms.append((t1 - t0) * 1000)
                lookup_ms.append((t2 - t1) * 1000)
    for name, (embed_ms, lookup_ms) in timed.items():
        e50, l50 = percentile(embed_ms, 50), percentile(lookup_ms, 50)
        assert e50 is not None and l50 is not None
        out["latency" if name == "redisvl" else "latency_cachesvc_same_run"] = {
            "entries": len(stored) + filler, "embed_p50_ms": e50, "lookup_p50_ms": l50, "ratio": l50 / e50}
    cache.delete()
    for threshold in (0.1, 0.05):
        cache = SemanticCache(name=f"rvlq{uuid.uuid4().hex[:6]}", redis_url=url, vectorizer=vectorizer,
                              distance_threshold=threshold)
        for pair, vector in zip(pairs, pair_vectors, strict=True):
            cache.store(pair["a"], pair["a"], vector=vector.tolist())
        outcome = []
        for pair in pairs:
            found = cache.check(prompt=pair["b"], num_results=1)
            outcome.append(None if not found else (found[0]["response"] == pair["a"] and pair["label"] == 1))
        out[f"quality_distance_{threshold}"] = quality(outcome, pairs)
        cache.delete()
    return out


def quality(outcome: list[bool | None], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    hits = [o for o in outcome if o is not None]
    right = sum(1 for o in hits if o)
    positives = sum(p["label"] for p in pairs)
    return {"pairs": len(pairs), "hits": len(hits), "right": right,
            "precision": right / len(hits) if hits else None, "recall": right / positives if positives else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="entries in the probed scope, ascending")
    parser.add_argument("--probes", type=int, default=200, help="lookups per latency figure")
    parser.add_argument("--pairs", type=int, default=1000, help="QQP development pairs for hit precision")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--threads", type=int, default=8, help="concurrent callers in throughput runs")
    parser.add_argument("--redis-port", type=int, default=6410)
    parser.add_argument("--port", type=int, default=51110, help="first replica's gRPC port (the next one +1)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models/all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/redis.json")
    parser.add_argument("--skip-redisvl", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a source tree (e.g. `git archive main | tar -x -C DIR`) whose cachesvc runs one more "
                             "replica, compared with this tree's lookup by lookup in alternating blocks")
    parser.add_argument("--rounds", type=int, default=1, help="comparison rounds per size (with --baseline)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {"when": utc_now(), "command": command_line(), "machine": machine()}
    redis = _redis_stack().start_server(args.redis_port)
    replicas: list[Replica] = []
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    try:
        embedder = OnnxEmbedder(model_dir=args.model_dir)
        pairs = load_pairs(args.pairs + 4 * args.probes, seed=0)
        probe_pairs = [p for p in pairs[args.pairs:] if p["label"] == 1][: args.probes]
        quality_pairs = pairs[: args.pairs]
        stored = [p["a"] for p in probe_pairs]
        probes = [p["b"] for p in probe_pairs]
        stored_vectors = embedder.embed(stored)
        log = args.out.parent / "redis-replicas.log"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        replicas.append(Replica(port=args.port, url=redis.url, model_dir=args.model_dir, prefix=prefix, log=log))
        unverified = Replica(port=args.port + 2, url=redis.url, model_dir=args.model_dir, prefix=prefix, log=log,
                             extra=("--verifier", "off"))
        replicas.append(unverified)  # stopped by the finally below if anything fails
        baseline = None
        if args.baseline is not None:
            baseline = Replica(port=args.port + 3, url=redis.url, model_dir=args.model_dir, prefix=prefix, log=log,
                               source=args.baseline.resolve())
            replicas.append(baseline)
        scope = Scope(namespace=NAMESPACE)
        core_scope = ScopeKey(tenant=TENANT, namespace=NAMESPACE)
        rows = []
        with CacheClient(f"127.0.0.1:{args.port}", timeout=30) as client:
            result["stores"] = store_round(client, stored, scope, redis, redis.process.pid)
            filled = len(stored)
            for size in sizes:
                took = asyncio.run(fill(redis.url, prefix, embedder, stored_vectors, filled, size, core_scope))
                print(f"filled to {size} entries in {took:.0f} s")
                filled = size
                latency = latency_round(client, embedder, probes, scope, redis, redis.process.pid)
                # The same lookups on a replica without the hit verifier: what the backend and gRPC cost alone.
                with CacheClient(f"127.0.0.1:{args.port + 2}", timeout=30) as plain_client:
                    plain = latency_round(plain_client, embedder, probes, scope, redis, redis.process.pid)
                exact = exact_round(client, args.port, stored, scope, redis, redis.process.pid)
                rows.append({"entries": size, "semantic": latency, "semantic_verifier_off": plain, "exact": exact,
                             "uptime": os.getloadavg()})
                if baseline is not None:
                    with CacheClient(f"127.0.0.1:{baseline.port}", timeout=30) as base_client:
                        rows[-1]["compare"] = [
                            compare_round({"this tree": client, "baseline": base_client}, embedder, probes, scope,
                                          redis.process.pid) | {"uptime": os.getloadavg()}
                            for _ in range(args.rounds)]
                print(json.dumps(rows[-1], indent=1))
            result["latency"] = rows
            for extra in (unverified, baseline):
                if extra is not None:
                    extra.stop()
                    replicas.remove(extra)
            result["throughput"] = [throughput(replicas, probes, scope, redis.process.pid, threads=args.threads,
                                               seconds=args.seconds)]
            replicas.append(Replica(port=args.port + 1, url=redis.url, model_dir=args.model_dir, prefix=prefix,
                                    log=log))
            result["throughput"].append(throughput(replicas, probes, scope, redis.process.pid,
                                                   threads=args.threads, seconds=args.seconds))
            print(json.dumps(result["throughput"], indent=1))
            # Hit precision on development pairs, cachesvc with its defaults (hit verifier on).
            qscope = Scope(namespace="quality")
            for pair in quality_pairs:
                client.store(pair["a"], pair["a"], scope=qscope)
            outcome: list[bool | None] = []
            for pair in quality_pairs:
                found = client.lookup(pair["b"], scope=qscope)
                outcome.append(None if not found.hit else (normalize_prompt(found.completion or "")
                                                          == normalize_prompt(pair["a"]) and pair["label"] == 1))
            result["quality_cachesvc"] = quality(outcome, quality_pairs)
            print(json.dumps(result["quality_cachesvc"]))
        for r in replicas[1:]:
            r.stop()
        del replicas[1:]
        if not args.skip_redisvl:
            # cachesvc beside it on a scope of the same size as RedisVL's cache, lookups interleaved.
            side_scope = Scope(namespace="redisvl-side")
            with CacheClient(f"127.0.0.1:{args.port}", timeout=30) as client:
                store_round(client, stored, side_scope, redis, redis.process.pid)
                asyncio.run(fill(redis.url, prefix, embedder, stored_vectors, len(stored), sizes[0],
                                 ScopeKey(tenant=TENANT, namespace="redisvl-side")))
                result["redisvl"] = redisvl_side(
                    redis.url, embedder, stored, stored_vectors, sizes[0] - len(stored), probes, quality_pairs,
                    embedder.embed([p["a"] for p in quality_pairs]),
                    cachesvc_lookup=lambda prompt: client.lookup(prompt, scope=side_scope))
            print(json.dumps(result["redisvl"], indent=1))
        for r in replicas:
            r.stop()
        replicas.clear()
        result["machine_after"] = {"load_average": [round(x, 2) for x in os.getloadavg()]}
        write_json(args.out, result)
        print(markdown_table(["entries", "semantic p50 ms", "embed p50 ms", "ratio", "ratio, verifier off",
                              "exact p50 ms (client / stub)", "health p50 ms", "ratio (client / stub)"],
                             [[r["entries"], f"{r['semantic']['lookup_p50_ms']:.2f}",
                               f"{r['semantic']['embed_p50_ms']:.2f}", f"{r['semantic']['ratio']:.2f}",
                               f"{r['semantic_verifier_off']['ratio']:.2f}",
                               f"{r['exact']['exact_p50_ms']:.2f} / {r['exact']['exact_stub_p50_ms']:.2f}",
                               f"{r['exact']['health_p50_ms']:.2f}",
                               f"{r['exact']['ratio']:.2f} / {r['exact']['stub_ratio']:.2f}"] for r in rows]))
    finally:
        for r in replicas:
            r.stop()
        redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
