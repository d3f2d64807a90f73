"""Grows a stopped server's data directory to N entries with filler, for load figures at sizes that filling
through gRPC cannot reach here (every store is an embedding: ~100 stores/s, so 1M entries would take hours).

The entries already in the directory were stored through the server (real prompts, real embeddings); they are
what the load probes look up. Filler entries join the same scope with synthetic prompts and vectors mixed from
the real ones plus noise (so the index holds clustered, embedding-like vectors, not uniform noise), and are
written with the server's own snapshot code, least recently used first, ahead of the real entries.

Used by `bench/load.py figures --real N --entries M`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cachesvc.backends.embedded import SNAPSHOT_CHUNK
from cachesvc.backends.persistence import (
    MODEL_FILE,
    DataDir,
    ModelIdentity,
    PersistenceOptions,
    SnapshotChunk,
    encode_chunk,
)
from cachesvc.backends.wal import list_segments, segment_number
from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.policy import utf8_size
from cachesvc.core.service import entry_size_bytes
from cachesvc.embedding.protocol import Vector
from cachesvc.records import Entry

CHUNK = SNAPSHOT_CHUNK  # as the server writes them


class _Collect:
    """Reads a snapshot written at a clean shutdown (no log to replay after it)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.vectors: list[np.ndarray] = []

    def load_chunk(self, chunk: SnapshotChunk) -> None:
        self.entries.extend(chunk.entries)
        self.vectors.append(chunk.vectors)

    def snapshot_loaded(self) -> None:
        pass

    def replay_put(self, entry: Entry, vector: Vector) -> None:
        raise RuntimeError("the server was not stopped cleanly: its log has records after the snapshot")

    def replay_delete(self, entry_ids: list[str]) -> None:
        raise RuntimeError("the server was not stopped cleanly: its log has records after the snapshot")

    def replay_hits(self, entry_ids: list[str], hit_counts: list[int], last_used_at: list[float]) -> None:
        pass  # hit counts of the real entries: irrelevant to the figures


def extend(data_dir: Path, *, total: int, prompt: Callable[[int], str], completion: str,
           seed: int = 0) -> dict[str, Any]:
    """Adds filler entries until `data_dir` holds `total`; `prompt(i)` names filler i (i counts on from the real
    entries). Returns what was written."""
    recorded = json.loads((data_dir / MODEL_FILE).read_text(encoding="utf-8"))
    model = ModelIdentity(name=recorded["name"], dimension=recorded["dimension"], checksum=recorded["checksum"])
    directory = DataDir(PersistenceOptions(data_dir=data_dir), model)
    directory.lock()
    try:
        real = _Collect()
        recovery = directory.replay(real)
        if not real.entries:
            raise RuntimeError(f"{data_dir} holds no entries to build filler from")
        base = np.vstack(real.vectors)
        scope = real.entries[0].scope
        rng = np.random.default_rng(seed)
        count = total - len(real.entries)
        created = time.time() - 86_400.0  # filler is older than every real entry: evicted first

        def filler_chunks() -> Iterator[tuple[int, bytes]]:
            for start in tqdm(range(0, count, CHUNK), desc=f"filler to {total}", unit="chunk"):
                n = min(CHUNK, count - start)
                a = base[rng.integers(len(base), size=n)]
                b = base[rng.integers(len(base), size=n)]
                mixed = 0.7 * a + 0.3 * b + 0.25 * rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(
                    base.shape[1])
                mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
                entries = []
                for i in range(n):
                    text = prompt(len(real.entries) + start + i)
                    normalized = normalize_prompt(text)
                    size = entry_size_bytes(dimension=model.dimension, prompt=text, normalized_prompt=normalized,
                                            completion_bytes=utf8_size(completion), metadata_bytes=0)
                    entries.append(Entry(id=uuid.uuid4().hex, scope=scope, prompt=text, normalized_prompt=normalized,
                                         completion=completion, metadata={}, created_at=created,
                                         expires_at=None, size_bytes=size, last_used_at=created))
                yield n, encode_chunk(entries, mixed.astype(np.float32))
            for s in range(0, len(real.entries), CHUNK):
                block = real.entries[s:s + CHUNK]
                yield len(block), encode_chunk(block, base[s:s + CHUNK])

        started = time.perf_counter()
        path, written, size = directory.write_snapshot(recovery.last_lsn, filler_chunks())
        segments = list_segments(data_dir)
        current = segment_number(segments[-1]) + 1 if segments else 1
        directory.prune(path, recovery.last_lsn, {segment_number(s): recovery.last_lsn for s in segments}, current)
        return {"real_entries": len(real.entries), "filler_entries": count, "entries": written,
                "snapshot_bytes": size, "write_seconds": round(time.perf_counter() - started, 1)}
    finally:
        directory.unlock()
