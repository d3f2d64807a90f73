"""Durability benchmark, run by hand: restart time at N entries, snapshot cost, group commit.

    .venv/bin/python bench/durability.py --entries 1000000

1. Builds a data directory of N entries (384-d vectors, ~200-byte prompts, ~1 KiB completions) spread over
   scopes, as a snapshot written by the backend's own code, and times a cold start of the backend on it
   (recovery + index build) until a lookup is answered.
2. Times a snapshot of the loaded backend and the worst lookup (index search) latency seen while it runs.
3. Store throughput with fsync=always: 16 concurrent writers (group commit) against one writer at a time
   (one fsync per store), at the log level and through the backend's put.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cachesvc.backends.embedded import EmbeddedBackend
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
        for start in tqdm(range(0, entries, 1024), desc="building snapshot", unit="chunk"):
            vectors = rng.standard_normal((min(1024, entries - start), DIM)).astype(np.float32)
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
    gc.disable()  # as the server's composition root does around recovery
    try:
        await backend.start()
    finally:
        gc.freeze()
        gc.enable()
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
            "lookup_max_ms": max(latencies)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--stores", type=int, default=2000, help="stores per group-commit run")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--json-out", type=Path, default=Path("bench/out/durability.json"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cachesvc-durability-", dir=args.dir))
    try:
        results: dict[str, Any] = {"entries": args.entries, "scopes": args.scopes}
        print(f"group commit, fsync=always, {args.stores} stores per run ...")
        (scratch / "commit").mkdir()
        results.update(asyncio.run(group_commit(scratch / "commit", args.stores)))
        build_s, size = build_directory(scratch / "data", args.entries, args.scopes)
        results.update(snapshot_build_s=build_s, snapshot_bytes=size)
        probe = np.random.default_rng(7).standard_normal(DIM).astype(np.float32)
        probe /= np.linalg.norm(probe)
        print("restarting on the data directory ...")
        results.update(asyncio.run(restart(scratch / "data", probe)))
        size_after = sum(p.stat().st_size for p in (scratch / "data").glob("snapshot-*.snap"))
        results["snapshot_bytes_rewritten"] = size_after
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{key:<{width}}  {value:,}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
