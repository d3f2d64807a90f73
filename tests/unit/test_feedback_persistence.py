"""Callers' feedback in the embedded backend's data directory: logged, replayed, snapshotted, and absent from
directories written before it existed."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np

from cachesvc.backends.embedded import EmbeddedBackend
from cachesvc.backends.framing import frame
from cachesvc.backends.persistence import (
    DataDir,
    ModelIdentity,
    PersistenceOptions,
    encode_chunk,
    encode_feedback,
)
from cachesvc.backends.wal import segment_path
from cachesvc.records import Entry, EntryFeedback, FeedbackReport, ScopeKey

DIM = 8
MODEL = ModelIdentity(name="test-model", dimension=DIM, checksum="abc")
WRONG = FeedbackReport(prompt="how do i close my account", similarity=0.91, correct=False)
RIGHT = FeedbackReport(prompt="how can i reset my password", similarity=0.93, correct=True)


def entry(n: int) -> Entry:
    return Entry(id=f"id{n}", scope=ScopeKey(tenant="t"), prompt=f"prompt {n}", normalized_prompt=f"prompt {n}",
                 completion=f"completion {n}", metadata={}, created_at=1000.0 + n, expires_at=None, size_bytes=100)


def vector(n: int) -> np.ndarray:
    v = np.random.default_rng(n).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def data_dir(path: Path) -> DataDir:
    return DataDir(PersistenceOptions(data_dir=path), MODEL)


def write_segment(path: Path, payloads: list[bytes], number: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    segment_path(path, number).write_bytes(b"".join(frame(p) for p in payloads))


async def started(path: Path) -> EmbeddedBackend:
    backend = EmbeddedBackend(dimension=DIM, data_dir=data_dir(path), clock_now=lambda: 2000.0)
    await backend.start()
    return backend


async def test_a_snapshot_written_before_feedback_existed_still_loads(tmp_path: Path) -> None:
    record = msgpack.unpackb(encode_chunk([entry(1), entry(2)], np.vstack([vector(1), vector(2)])))
    old = msgpack.packb(record[:14])  # the first snapshot format: no usage or feedback column
    directory = data_dir(tmp_path)
    directory.lock()
    directory.write_snapshot(2, iter([(2, old)]))
    directory.unlock()
    write_segment(tmp_path, [encode_feedback("id2", WRONG, 3)], number=1)
    backend = await started(tmp_path)
    try:
        first, second = await backend.get("id1"), await backend.get("id2")
        assert first is not None and first.feedback is None
        assert second is not None and second.feedback is not None and second.feedback.reports == (WRONG,)
    finally:
        await backend.aclose()


async def test_feedback_is_logged_replayed_and_kept_in_snapshots_without_double_counting(tmp_path: Path) -> None:
    backend = await started(tmp_path)
    try:
        await backend.put(entry(1), vector(1))
        held = await backend.get("id1")
        assert held is not None
        assert await backend.add_feedback(held, WRONG)
        assert await backend.add_feedback(held, RIGHT)
        stored = await backend.vector_of("id1")
        assert stored is not None
        np.testing.assert_allclose(stored, vector(1), rtol=1e-6)
        assert await backend.vector_of("missing") is None
    finally:
        await backend._wal.aclose()  # type: ignore[union-attr]  # a crash: no final snapshot
        backend._wal = None
        await backend.aclose()

    replayed = await started(tmp_path)  # from the log alone
    try:
        held = await replayed.get("id1")
        assert held is not None and held.feedback is not None
        assert held.feedback.reports == (WRONG, RIGHT) and held.feedback.wrong_prompts == {WRONG.prompt}
        assert (held.feedback.wrong, held.feedback.right) == (1, 1)
    finally:
        await replayed.aclose()  # writes a snapshot



async def test_a_report_the_snapshot_already_holds_is_not_added_again(tmp_path: Path) -> None:
    # A snapshot covers LSN 1, but its entry's state was read after reports 2 and 3 were applied (they land
    # while it is written); the log still holds them after LSN 1.
    held = entry(1)
    held.feedback = EntryFeedback().with_report(WRONG, 2).with_report(RIGHT, 3)
    directory = data_dir(tmp_path)
    directory.lock()
    directory.write_snapshot(1, iter([(1, encode_chunk([held], vector(1)[None, :]))]))
    directory.unlock()
    write_segment(tmp_path, [encode_feedback("id1", WRONG, 2), encode_feedback("id1", RIGHT, 3),
                             encode_feedback("id1", WRONG, 4)], number=1)
    backend = await started(tmp_path)
    try:
        kept = await backend.get("id1")
        assert kept is not None and kept.feedback is not None
        assert kept.feedback.reports == (WRONG, RIGHT, WRONG) and (kept.feedback.wrong, kept.feedback.right) == (2, 1)
        assert kept.feedback.lsn == 4
    finally:
        await backend.aclose()


async def test_feedback_for_a_replaced_entry_is_not_applied(tmp_path: Path) -> None:
    backend = await started(tmp_path)
    try:
        await backend.put(entry(1), vector(1))
        old = await backend.get("id1")
        assert old is not None
        newer = entry(1)
        newer.id = "id1-new"  # same prompt and scope: replaces it
        await backend.put(newer, vector(1))
        assert not await backend.add_feedback(old, WRONG)
        fresh = await backend.get("id1-new")
        assert fresh is not None and fresh.feedback is None
    finally:
        await backend.aclose()
