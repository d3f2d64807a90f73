"""Embedding a data directory's entries again after a model change (`--on-model-change reembed`).

The old files wait in `<data_dir>/reembed-pending/` (moved there by `DataDir.check_model`) until every live entry
has been embedded with the new model and stored in the new directory through the backend's logged put; only
then is the pending directory deleted. A crash part-way leaves it in place, and the next start carries on:
entries whose prompt is already held in their scope are not embedded again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import numpy as np

from cachesvc.backends.embedded import EmbeddedBackend
from cachesvc.backends.persistence import DataDir, SnapshotChunk
from cachesvc.embedding.protocol import Embedder, Matrix, Vector
from cachesvc.errors import InvalidRequest
from cachesvc.records import Entry, FeedbackReport

log = logging.getLogger(__name__)
BATCH = 64


class _Entries:
    """A `RecoverySink` that keeps the entries (in least-recently-used order) and drops the old vectors."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._holder: dict[tuple[str, str], str] = {}

    def _add(self, entry: Entry) -> None:
        entry.feedback = None  # its similarities belong to the old model's vectors
        key = (entry.scope.digest, entry.normalized_prompt)
        replaced = self._holder.get(key)
        if replaced is not None:
            self.entries.pop(replaced, None)
        self.entries[entry.id] = entry
        self._holder[key] = entry.id

    def load_chunk(self, chunk: SnapshotChunk) -> None:
        for entry in chunk.entries:
            self._add(entry)

    def snapshot_loaded(self) -> None:
        pass

    def replay_put(self, entry: Entry, vector: Vector) -> None:
        if entry.id not in self.entries:
            self._add(entry)

    def replay_delete(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            entry = self.entries.pop(entry_id, None)
            if entry is not None and self._holder.get((entry.scope.digest, entry.normalized_prompt)) == entry_id:
                del self._holder[(entry.scope.digest, entry.normalized_prompt)]

    def replay_hits(self, entry_ids: list[str], hit_counts: list[int], last_used_at: list[float]) -> None:
        for entry_id, hit_count, used_at in zip(entry_ids, hit_counts, last_used_at, strict=True):
            entry = self.entries.pop(entry_id, None)
            if entry is not None:
                entry.hit_count, entry.last_used_at = hit_count, used_at
                self.entries[entry_id] = entry  # most recently used last

    def replay_feedback(self, entry_id: str, report: FeedbackReport, lsn: int) -> None:
        pass  # reports measure similarities of the old model's vectors: the new model starts without them


async def reembed_pending(data_dir: DataDir, *, embedder: Embedder, backend: EmbeddedBackend, now: float) -> int:
    """Embeds the entries left in `data_dir`'s pending directory with `embedder` and stores them in the started
    `backend`, oldest use first (so the eviction order carries over); then deletes the pending directory.

    Entries keep their ids, texts, metadata, times, hit counts and absolute expiry; expired ones are dropped, and
    callers' feedback is not carried over (it measured similarities of the old model).
    An entry whose prompt the new model cannot take (too long for it) is dropped with a warning.

    Returns:
        The number of entries stored.

    Raises:
        StorageError: the pending data is damaged (and `--repair` was not given).
    """
    pending = data_dir.pending_reembed()
    if pending is None:
        return 0
    started = time.monotonic()
    old = _Entries()
    await asyncio.to_thread(pending.replay, old)
    todo = [e for e in old.entries.values() if not e.is_expired(now)
            and await backend.get_exact(e.scope, e.normalized_prompt) is None]
    log.warning("%s: embedding %d cached prompts again with %s (%d expired or already done)", pending.path,
                len(todo), data_dir.model.name, len(old.entries) - len(todo))
    stored = 0
    for start in range(0, len(todo), BATCH):
        batch = todo[start:start + BATCH]
        kept, vectors = await asyncio.to_thread(_embed, embedder, batch)
        for entry in kept:
            # The budget charges the vector's bytes, and the new model's may differ in size.
            entry.size_bytes += (data_dir.model.dimension - pending.model.dimension) * 4
        # Concurrent puts share log writes and fsyncs (group commit).
        await asyncio.gather(*(backend.put(entry, vectors[i]) for i, entry in enumerate(kept)))
        stored += len(kept)
        if start // BATCH % 50 == 49:
            log.info("re-embedded %d of %d entries", stored, len(todo))
    await backend.snapshot()  # the new directory holds everything before the old copy goes
    await asyncio.to_thread(data_dir.finish_reembed)
    log.warning("re-embedded %d entries in %.1f s; removed %s", stored, time.monotonic() - started, pending.path)
    return stored


def _embed(embedder: Embedder, entries: Sequence[Entry]) -> tuple[list[Entry], Matrix]:
    texts = [e.normalized_prompt for e in entries]
    try:
        return list(entries), embedder.embed(texts)
    except InvalidRequest:
        pass  # one text the new model refuses: embed one by one and drop it alone
    kept: list[Entry] = []
    rows: list[Vector] = []
    for entry, text in zip(entries, texts, strict=True):
        try:
            rows.append(embedder.embed([text])[0])
            kept.append(entry)
        except InvalidRequest as exc:
            log.warning("entry %s dropped: the new model cannot embed its prompt (%s)", entry.id, exc)
    matrix = np.vstack(rows) if rows else np.zeros((0, embedder.dimension), dtype=np.float32)
    return kept, matrix
