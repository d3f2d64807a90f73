"""Durability benchmark, run by hand: restart time at N entries, snapshot cost, group commit.

    .venv/bin/python bench/durability.py --entries 1000000

1. Builds a data directory of N entries (384-d vectors, ~200-byte prompts, ~1 KiB completions) spread over
   scopes, as a snapshot written by the backend's own code, and times a cold start of the backend on it
   (recovery + index build) until a lookup is answered.
2. Times a snapshot of the loaded backend and the worst lookup (index search) latency seen while it runs.
3. Store throughput with fsync=always: 16 concurrent writers (group commit) against one writer at a time
   (one fsync per store), at the log level and through the backend's put.

    .venv/bin/python bench/durability.py --graph-restart 100000 --json-out bench/out/graph-restart.json

only times restarts of one HNSW scope: with the graph saved beside the snapshot, and without it (rebuilt in the
background while flat search answers), each with the search p99 of its first minute against steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cachesvc.app import start_recovering
from cachesvc.backends.embedded import SNAPSHOT_CHUNK, EmbeddedBackend
from cachesvc.backends.faiss_index import IndexOptions
from cachesvc.backends.persistence import DataDir, ModelIdentity, PersistenceOptions, encode_chunk
from cachesvc.backends.wal import FsyncPolicy, WalWriter
from cachesvc.records import Entry, ScopeKey

DIM = 384
MODEL = ModelIdentity(name="bench", dimension=DIM, checksum="bench")


def make_entry(n: int, scopes: list[ScopeKey]) -> Entry:
    prompt = f"Question {n}: " + "how do I configure the service for this case " * 4
    completion = f"Answer {n}: " + "lorem ipsum dolor sit amet " * 38
    return Entry(id=f"{n:032x}", scope=scopes[n % len(scopes)], prompt=prompt[:200], normalized_prompt=prompt[:200],
                 completion=completion[:1024], metadata={"n": str(n)}, created_at=time.time(), expires_at=None,
                 size_bytes=DIM * 4 + 200 + 1024 + 600)


def build_directory(path: Path, entries: int, scopes: int) -> tuple[float, int]:
    rng = np.random.default_rng(0)
    scope_keys = [ScopeKey(tenant="bench", namespace=f"ns{i}") for i in range(scopes)]
    directory = DataDir(PersistenceOptions(data_dir=path), MODEL)
    directory.lock()
    directory.check_model()

    def chunks() -> Any:
        # Chunks of the size the backend writes, so the restart reads what a server's own snapshot holds.
        for start in tqdm(range(0, entries, SNAPSHOT_CHUNK), desc="building snapshot", unit="chunk"):
            vectors = rng.standard_normal((min(SNAPSHOT_CHUNK, entries - start), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunk = [make_entry(start + i, scope_keys) for i in range(len(vectors))]
            yield len(chunk), encode_chunk(chunk, vectors)

    started = time.perf_counter()
    _path, _count, size = directory.write_snapshot(1, chunks())
    directory.unlock()
    return time.perf_counter() - started, size


async def restart(path: Path, probe: np.ndarray) -> dict[str, float]:
    started = time.perf_counter()
    backend = EmbeddedBackend(dimension=DIM, index_options=IndexOptions(hnsw_threshold=1_000_000_000),
                              data_dir=DataDir(PersistenceOptions(data_dir=path), MODEL))
    await start_recovering(backend)  # as the server starts it
    matches = await backend.search(ScopeKey(tenant="bench", namespace="ns0"), probe, 4)
    ready = time.perf_counter() - started
    assert matches, "no lookup answer after restart"
    usage = await backend.usage()
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    # Snapshot while lookups run: the worst search latency is what a lookup could wait.
    latencies: list[float] = []
    snapshot_task = asyncio.create_task(backend.snapshot())
    snap_started = time.perf_counter()
    while not snapshot_task.done():
        t = time.perf_counter()
        await backend.search(ScopeKey(tenant="bench", namespace=f"ns{len(latencies) % 100}"), probe, 4)
        latencies.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.001)
    await snapshot_task
    snapshot_s = time.perf_counter() - snap_started
    await backend.aclose()
    return {"entries": usage.entries, "ready_s": ready, "peak_rss_gb": rss_gb, "snapshot_s": snapshot_s,
            "lookups_during_snapshot": len(latencies), "lookup_p50_ms": statistics.median(latencies),
            "lookup_p99_ms": statistics.quantiles(latencies, n=100)[98], "lookup_max_ms": max(latencies)}


async def _drive(writers: int, stores: int, op: Callable[[int], Awaitable[None]]) -> float:
    """Runs `op(0..stores-1)` from `writers` concurrent callers; returns operations per second."""
    counter = iter(range(stores))

    async def one_writer() -> None:
        for n in counter:
            await op(n)

    started = time.perf_counter()
    await asyncio.gather(*(one_writer() for _ in range(writers)))
    return stores / (time.perf_counter() - started)


async def group_commit(path: Path, stores: int) -> dict[str, float]:
    payload = os.urandom(2800)  # about one stored entry
    vectors = np.random.default_rng(1).standard_normal((stores, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scopes = [ScopeKey(tenant="bench")]
    results: dict[str, float] = {}
    for writers in (1, 16):
        directory = path / f"wal-{writers}"
        directory.mkdir()
        writer = WalWriter(directory=directory, segment=1, policy=FsyncPolicy.ALWAYS)
        writer.start()
        results[f"wal_{writers}_writers_per_s"] = await _drive(
            writers, stores, lambda n, writer=writer: writer.append(payload, lsn=n + 1))
        results[f"wal_{writers}_writers_fsyncs"] = writer.fsyncs
        await writer.aclose()

        backend = EmbeddedBackend(dimension=DIM, data_dir=DataDir(
            PersistenceOptions(data_dir=path / f"backend-{writers}"), MODEL))
        await backend.start()

        async def put(n: int, backend: EmbeddedBackend = backend) -> None:
            await backend.put(make_entry(n, scopes), vectors[n])

        results[f"backend_put_{writers}_writers_per_s"] = await _drive(writers, stores, put)
        await backend.aclose()
    results["wal_speedup"] = results["wal_16_writers_per_s"] / results["wal_1_writers_per_s"]
    results["backend_put_speedup"] = results["backend_put_16_writers_per_s"] / results["backend_put_1_writers_per_s"]
    return results


def build_hnsw_directory(path: Path, entries: int) -> dict[str, float]:
    """One scope of `entries` clustered vectors (prompt-like, unlike uniform noise), stored through a backend
    that builds its HNSW graph and writes it with its final snapshot."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(entries // 20, 1), DIM)).astype(np.float32)
    scope = ScopeKey(tenant="bench", namespace="hnsw")
    directory = DataDir(PersistenceOptions(data_dir=path), MODEL)
    directory.lock()
    directory.check_model()

    def chunks() -> Any:
        for start in tqdm(range(0, entries, SNAPSHOT_CHUNK), desc="building snapshot", unit="chunk"):
            n = min(SNAPSHOT_CHUNK, entries - start)
            vectors = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, DIM)).astype(
                np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            yield n, encode_chunk([make_entry(start + i, [scope]) for i in range(n)], vectors)

    directory.write_snapshot(1, chunks())
    directory.unlock()

    async def build() -> dict[str, float]:
        backend = EmbeddedBackend(dimension=DIM, data_dir=DataDir(PersistenceOptions(data_dir=path), MODEL))
        started = time.perf_counter()
        await backend.start()
        await backend.settle()  # the HNSW build, as a server does it in the background
        built = time.perf_counter() - started
        closing = time.perf_counter()
        await backend.aclose()  # the final snapshot, with the graph beside it
        return {"hnsw_build_s": built, "final_snapshot_with_graph_s": time.perf_counter() - closing}

    return asyncio.run(build())


async def graph_restart(path: Path, seconds: float) -> dict[str, Any]:
    """A restart on `path` (the child process of --graph-restart): time to ready, the index it serves from at
    that moment, then searches for `seconds` (the first minute after a restart) and the same after the index
    has settled (steady state)."""
    scope = ScopeKey(tenant="bench", namespace="hnsw")
    queries = np.random.default_rng(3).standard_normal((512, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    started = time.perf_counter()
    backend = EmbeddedBackend(dimension=DIM, data_dir=DataDir(PersistenceOptions(data_dir=path), MODEL))
    await start_recovering(backend)  # as the server starts it
    ready = time.perf_counter() - started
    index = backend.index_of(scope)
    assert index is not None
    at_ready = {"kind": index.kind.value, "graphs_loaded": index.graphs_loaded, "building": index.building}

    windows: list[float] = []  # p99 of each 10 s of the first `seconds`: is a slow start early or throughout?

    async def searches(duration: float, *, by_window: bool = False) -> list[float]:
        out: list[float] = []
        window: list[float] = []
        begin = time.perf_counter()
        end = begin + duration
        while time.perf_counter() < end:
            t = time.perf_counter()
            await backend.search(scope, queries[len(out) % len(queries)], 4)
            out.append((time.perf_counter() - t) * 1000)
            window.append(out[-1])
            if by_window and t - begin >= 10.0 * (len(windows) + 1):
                windows.append(statistics.quantiles(window, n=100)[98])
                window = []
            await asyncio.sleep(0.002)  # ~one lookup's other work
        return out

    first = await searches(seconds, by_window=True)
    await backend.settle()
    steady = await searches(min(seconds, 15.0))
    await backend.aclose()

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1]

    return {"ready_s": ready, "at_ready": at_ready, "first_searches": len(first), "first_p50_ms": p(first, 50),
            "first_p99_ms": p(first, 99), "first_max_ms": max(first), "steady_p50_ms": p(steady, 50),
            "steady_p99_ms": p(steady, 99), "first_p99_ms_per_10s": windows,
            "first_over_steady_p99": p(first, 99) / p(steady, 99),
            "load_average": os.getloadavg()}


def graph_restarts(entries: int, seconds: float, scratch: Path, without: bool) -> dict[str, Any]:
    """Restart figures with the saved graph and, unless `without` is false, without it (the file removed).
    A directory already built under `scratch` (by an earlier run with --graph-dir) is reused."""
    results: dict[str, Any] = {"entries": entries, "load_before": os.getloadavg()}
    if not list((scratch / "hnsw").glob("snapshot-*.graphs")):
        results.update(build_hnsw_directory(scratch / "hnsw", entries))
        results["load_after_build"] = os.getloadavg()
    graphs = list((scratch / "hnsw").glob("snapshot-*.graphs"))
    results["graph_file_bytes"] = sum(g.stat().st_size for g in graphs)
    results["snapshot_file_bytes"] = sum(s.stat().st_size for s in (scratch / "hnsw").glob("snapshot-*.snap*"))
    os.sync()
    for name in ("with_graph", "without_graph") if without else ("with_graph",):
        results[f"load_before_{name}"] = os.getloadavg()
        if name == "without_graph":
            for g in graphs:
                g.unlink()
        print(f"restart {name.replace('_', ' ')} ...", flush=True)
        child = subprocess.run([sys.executable, __file__, "--restart-from", str(scratch / "hnsw"), "--graph-child",
                                "--first-seconds", str(seconds)], check=True, capture_output=True, text=True)
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        # The restart rewrote the snapshot (and graph) on close: restore the comparison's condition.
        graphs = list((scratch / "hnsw").glob("snapshot-*.graphs"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--stores", type=int, default=2000, help="stores per group-commit run")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the page cache before the restart (root only): time a cold start")
    parser.add_argument("--json-out", type=Path, default=Path("bench/out/durability.json"))
    parser.add_argument("--graph-restart", type=int, default=0, metavar="N",
                        help="only the restart figures of one HNSW scope of N entries, with its saved graph and "
                             "without it: time to ready, the index served from, search p99 in the first "
                             "--first-seconds against steady state")
    parser.add_argument("--first-seconds", type=float, default=60.0)
    parser.add_argument("--graph-dir", type=Path, default=None,
                        help="with --graph-restart: build the directory here and keep it; a later run with the "
                             "same path skips the build (so the restart can be timed on a quiet machine)")
    parser.add_argument("--skip-without", action="store_true",
                        help="with --graph-restart: only the restart with the saved graph")
    parser.add_argument("--restart-from", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--graph-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restart_from is not None and args.graph_child:
        print(json.dumps(asyncio.run(graph_restart(args.restart_from, args.first_seconds))))
        return
    if args.graph_restart:
        scratch = args.graph_dir or Path(tempfile.mkdtemp(prefix="cachesvc-graph-restart-", dir=args.dir))
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            results = graph_restarts(args.graph_restart, args.first_seconds, scratch, not args.skip_without)
        finally:
            if args.graph_dir is None:
                shutil.rmtree(scratch, ignore_errors=True)
        print(json.dumps(results, indent=2))
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))
        return
    if args.restart_from is not None:  # the child process of a timed restart: prints its figures as JSON
        probe = np.random.default_rng(7).standard_normal(DIM).astype(np.float32)
        print(json.dumps(asyncio.run(restart(args.restart_from, probe / np.linalg.norm(probe)))))
        return
    scratch = Path(tempfile.mkdtemp(prefix="cachesvc-durability-", dir=args.dir))
    try:
        results: dict[str, Any] = {"entries": args.entries, "scopes": args.scopes}
        print(f"group commit, fsync=always, {args.stores} stores per run ...")
        (scratch / "commit").mkdir()
        results.update(asyncio.run(group_commit(scratch / "commit", args.stores)))
        build_s, size = build_directory(scratch / "data", args.entries, args.scopes)
        results.update(snapshot_build_s=build_s, snapshot_bytes=size)
        # The build's 3 GB of dirty pages would otherwise be written back during the restart it is timed against.
        os.sync()
        if args.drop_caches:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")  # a cold start: the snapshot is read from disk
        results["page_cache"] = "dropped" if args.drop_caches else "warm"
        print(f"restarting on the data directory ({results['page_cache']} page cache) ...")
        # A server restarts as a fresh process: time it in one, not in this process with the build's heap.
        child = subprocess.run([sys.executable, __file__, "--restart-from", str(scratch / "data")], check=True,
                               capture_output=True, text=True)
        results.update(json.loads(child.stdout.strip().splitlines()[-1]))
        size_after = sum(p.stat().st_size for p in (scratch / "data").glob("snapshot-*.snap"))
        results["snapshot_bytes_rewritten"] = size_after
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"{key:<{width}}  {shown}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
