"""Write-ahead log, snapshots and recovery of the embedded backend's data directory."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from cachesvc.backends import persistence
from cachesvc.backends.embedded import EmbeddedBackend, _Loader
from cachesvc.backends.framing import frame
from cachesvc.backends.persistence import (
    DataDir,
    ModelChange,
    ModelIdentity,
    PersistenceOptions,
    SnapshotChunk,
    encode_chunk,
    encode_delete,
    encode_hits,
    encode_put,
)
from cachesvc.backends.wal import FsyncPolicy, StorageError, WalWriter, list_segments, segment_path
from cachesvc.records import Entry, ScopeKey, TokenUsage

DIM = 8
MODEL = ModelIdentity(name="test-model", dimension=DIM, checksum="abc")


def entry(n: int, *, expires_at: float | None = None, namespace: str = "ns") -> Entry:
    return Entry(id=f"id{n}", scope=ScopeKey(tenant="t", namespace=namespace), prompt=f"prompt {n}",
                 normalized_prompt=f"prompt {n}", completion=f"completion {n} ✓", metadata={"k": str(n)},
                 created_at=1000.0 + n, expires_at=expires_at, size_bytes=100 + n)


def vector(n: int) -> np.ndarray:
    v = np.random.default_rng(n).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def data_dir(path: Path, *, repair: bool = False, model: ModelIdentity = MODEL,
             on_model_change: ModelChange = ModelChange.REFUSE) -> DataDir:
    return DataDir(PersistenceOptions(data_dir=path, repair=repair, on_model_change=on_model_change), model)


@dataclass
class MapSink:
    """The recovery sink contract (see `RecoverySink`) over plain maps, to read what a directory holds."""

    entries: dict[str, tuple[Entry, np.ndarray]] = field(default_factory=dict)

    def load_chunk(self, chunk: SnapshotChunk) -> None:
        for e, v in zip(chunk.entries, chunk.vectors, strict=True):
            self.entries[e.id] = (e, v)

    def snapshot_loaded(self) -> None:
        pass

    def replay_put(self, e: Entry, v: np.ndarray) -> None:
        if e.id in self.entries:
            return
        for held, _ in list(self.entries.values()):
            if (held.scope, held.normalized_prompt) == (e.scope, e.normalized_prompt):
                del self.entries[held.id]
        self.entries[e.id] = (e, v)

    def replay_delete(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            self.entries.pop(entry_id, None)

    def replay_hits(self, entry_ids: list[str], hit_counts: list[int], last_used_at: list[float]) -> None:
        for entry_id, hits, at in zip(entry_ids, hit_counts, last_used_at, strict=True):
            if entry_id in self.entries:
                self.entries[entry_id][0].hit_count, self.entries[entry_id][0].last_used_at = hits, at


@dataclass
class Recovered:
    entries: dict[str, tuple[Entry, np.ndarray]]
    last_lsn: int


def recover(directory: DataDir, *, now: float = 0.0) -> tuple[Recovered, bool]:
    sink = MapSink()
    result = directory.replay(sink)
    live = {i: ev for i, ev in sink.entries.items() if not ev[0].is_expired(now)}
    return Recovered(entries=live, last_lsn=result.last_lsn), result.repaired


def write_segment(path: Path, payloads: list[bytes], number: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    segment = segment_path(path, number)
    segment.write_bytes(b"".join(frame(p) for p in payloads))
    return segment


def puts(n: int) -> list[bytes]:
    return [encode_put(entry(i), vector(i), lsn=i) for i in range(1, n + 1)]


def test_replay_restores_entries_byte_for_byte(tmp_path: Path) -> None:
    write_segment(tmp_path, [*puts(3), encode_delete(["id2"], 4), encode_hits([_hit(entry(3), 5, 2000.0)], 5)])
    state, repaired = recover(data_dir(tmp_path))
    assert not repaired and sorted(state.entries) == ["id1", "id3"]
    restored, restored_vector = state.entries["id3"]
    assert (restored.prompt, restored.completion, restored.metadata) == ("prompt 3", "completion 3 ✓", {"k": "3"})
    assert (restored.hit_count, restored.last_used_at, restored.size_bytes) == (5, 2000.0, 103)
    np.testing.assert_array_equal(restored_vector, vector(3))
    assert state.last_lsn == 5


def _completed(e: Entry, completion: str) -> Entry:
    e.completion = completion
    return e


def _hit(e: Entry, hits: int, at: float) -> Entry:
    e.hit_count, e.last_used_at = hits, at
    return e


def test_put_with_same_prompt_replaces_and_expired_entries_stay_dead(tmp_path: Path) -> None:
    again = entry(1)
    again.id = "id1-new"
    write_segment(tmp_path, [*puts(2), encode_put(again, vector(9), 3),
                             encode_put(entry(7, expires_at=50.0), vector(7), 4)])
    state, _ = recover(data_dir(tmp_path), now=100.0)
    assert sorted(state.entries) == ["id1-new", "id2"]


def test_torn_last_record_is_dropped_at_every_offset(tmp_path: Path) -> None:
    records = puts(4)
    full = b"".join(frame(p) for p in records)
    last_start = len(full) - len(frame(records[-1]))
    for cut in range(last_start, len(full) + 1):
        target = tmp_path / f"cut-{cut}"
        write_segment(target, [])
        segment_path(target, 1).write_bytes(full[:cut])
        state, repaired = recover(data_dir(target))
        expected = 4 if cut == len(full) else 3
        assert len(state.entries) == expected, f"cut at {cut}"
        assert not repaired
        assert segment_path(target, 1).stat().st_size == (len(full) if cut == len(full) else last_start)


def test_zeros_after_the_last_record_count_as_a_torn_tail(tmp_path: Path) -> None:
    segment = write_segment(tmp_path, puts(2))
    segment.write_bytes(segment.read_bytes() + bytes(4096))
    state, _ = recover(data_dir(tmp_path))
    assert len(state.entries) == 2


def test_corrupt_record_in_the_middle_stops_start_up_unless_repairing(tmp_path: Path) -> None:
    records = puts(5)
    segment = write_segment(tmp_path, records)
    second = len(frame(records[0]))
    data = bytearray(segment.read_bytes())
    data[second + 30] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=rf"{segment.name}: corrupt record at byte offset {second}\b"):
        recover(data_dir(tmp_path))
    state, repaired = recover(data_dir(tmp_path, repair=True))
    assert repaired and sorted(state.entries) == ["id1", "id3", "id4", "id5"]
    assert not segment.exists() and list(tmp_path.glob(f"{segment.name}.corrupt-*"))


def test_snapshot_round_trip_and_damage(tmp_path: Path) -> None:
    directory = data_dir(tmp_path)
    directory.lock()
    chunk = encode_chunk([entry(1), entry(2)], np.vstack([vector(1), vector(2)]))
    path, count, _size = directory.write_snapshot(10, iter([(2, chunk), (1, encode_chunk([entry(3)], vector(3)))]))
    write_segment(tmp_path, [encode_delete(["id1"], 9), encode_put(entry(4), vector(4), 11)], number=2)
    state, _ = recover(directory)
    np.testing.assert_array_equal(state.entries["id2"][1], vector(2))
    assert state.entries["id3"][0].completion == "completion 3 ✓"
    # The delete (LSN 9) is covered by the snapshot (LSN 10) and not replayed; the later put is.
    assert count == 3 and sorted(state.entries) == ["id1", "id2", "id3", "id4"]
    directory.unlock()

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=rf"{path.name}: snapshot is damaged \(corrupt record at byte offset \d+"):
        recover(data_dir(tmp_path))
    state, repaired = recover(data_dir(tmp_path, repair=True))
    assert repaired and "id4" in state.entries and 2 <= len(state.entries) <= 3
    assert not path.exists()


def test_one_server_per_directory(tmp_path: Path) -> None:
    first = data_dir(tmp_path)
    first.lock()
    with pytest.raises(StorageError, match="in use by another cachesvc server"):
        data_dir(tmp_path).lock()
    first.unlock()
    data_dir(tmp_path).lock()


def test_another_model_is_refused_or_moved_aside(tmp_path: Path) -> None:
    write_segment(tmp_path, puts(2))
    data_dir(tmp_path).check_model()
    other = ModelIdentity(name="other-model", dimension=16, checksum="def")
    with pytest.raises(StorageError, match=r"built with model test-model .* runs other-model"):
        data_dir(tmp_path, model=other).check_model()
    data_dir(tmp_path, model=other, on_model_change=ModelChange.EMPTY).check_model()
    state, _ = recover(data_dir(tmp_path, model=other))
    assert not state.entries and list(tmp_path.glob("previous-model-*/wal-*.log"))


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    writer = WalWriter(directory=tmp_path, segment=1, policy=FsyncPolicy.ALWAYS)
    writer.start()
    await asyncio.gather(*(writer.append(p, lsn=i) for i, p in enumerate(puts(64), start=1)))
    assert 1 <= writer.fsyncs < 8  # one fsync covers a whole queued batch
    await writer.aclose()
    state, _ = recover(data_dir(tmp_path))
    assert len(state.entries) == 64


async def test_rotation_starts_a_new_segment(tmp_path: Path) -> None:
    writer = WalWriter(directory=tmp_path, segment=1, policy=FsyncPolicy.NO)
    writer.start()
    records = puts(3)
    await writer.append(records[0], lsn=1)
    assert await writer.rotate() == 2
    await writer.append(records[1], lsn=2)
    await writer.aclose()
    assert [p.name for p in list_segments(tmp_path)] == [segment_path(tmp_path, n).name for n in (1, 2)]
    assert writer.segment_max_lsn == {1: 1, 2: 2}



async def test_a_failed_fsync_stops_the_log_and_takes_the_batch_back(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import cachesvc.backends.wal as wal_module

    writer = WalWriter(directory=tmp_path, segment=1, policy=FsyncPolicy.ALWAYS)
    writer.start()
    records = puts(3)
    await writer.append(records[0], lsn=1)
    real_fsync = wal_module.os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module.os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        await writer.append(records[1], lsn=2)
    monkeypatch.setattr(wal_module.os, "fsync", real_fsync)
    with pytest.raises(StorageError):
        await writer.append(records[2], lsn=3)  # fail-stop: nothing more is acknowledged on top of it
    await writer.aclose()
    state, _ = recover(data_dir(tmp_path))
    assert sorted(state.entries) == ["id1"]  # the failed record was taken back out, not left to be replayed


async def test_the_backend_reads_a_directory_with_the_meaning_of_the_original_calls(tmp_path: Path) -> None:
    directory = data_dir(tmp_path)
    directory.lock()
    chunk = encode_chunk([entry(1), entry(2), entry(3, namespace="other")],
                         np.vstack([vector(1), vector(2), vector(3)]))
    directory.write_snapshot(10, iter([(3, chunk)]))
    directory.unlock()
    again = entry(1)
    again.id = "id1-new"
    write_segment(tmp_path, [
        encode_delete(["id2"], 9),  # covered by the snapshot: not replayed
        encode_put(entry(4), vector(4), 11),
        encode_put(_completed(entry(2), "replayed over the snapshot"), vector(2), 12),  # already held: skipped
        encode_hits([_hit(entry(2), 7, 3000.0)], 13),
        encode_put(again, vector(9), 14),  # same prompt and scope as id1: replaces it
        encode_put(entry(5, expires_at=50.0), vector(5), 15),  # expired by the time of the restart
        encode_delete(["id3"], 16),
    ], number=2)
    backend = EmbeddedBackend(dimension=DIM, data_dir=data_dir(tmp_path), clock_now=lambda: 100.0)
    await backend.start()
    try:
        assert [e.id for e in await backend.least_recently_used(10)] == ["id4", "id2", "id1-new"]
        held = await backend.get("id2")
        assert held is not None and (held.hit_count, held.last_used_at) == (7, 3000.0)
        assert held.completion == "completion 2 ✓"  # the snapshot's entry, not the skipped put's
        assert await backend.get("id3") is None and await backend.get("id5") is None
        matches = await backend.search(entry(1).scope, vector(9), 3)
        assert matches[0].entry_id == "id1-new" and {m.entry_id for m in matches} == {
            "id1-new", "id2", "id4"}
        assert await backend.search(entry(3, namespace="other").scope, vector(3), 1) == []
    finally:
        await backend.aclose()


@pytest.mark.parametrize("block,count", [(3, 11), (100, 300)])
async def test_every_recovered_vector_reaches_its_scopes_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               block: int, count: int) -> None:
    # Blocks fill and flush inside chunks and across them (3), and grow before they fill (100).
    monkeypatch.setattr(_Loader, "BLOCK", block)
    directory = data_dir(tmp_path)
    directory.lock()
    entries = [entry(n, namespace=f"ns{n % 2}") for n in range(count)]
    chunks = [(len(part), encode_chunk(part, np.vstack([vector(int(e.id[2:])) for e in part])))
              for part in (entries[:4], entries[4:5], entries[5:count // 2 + 3], entries[count // 2 + 3:])]
    directory.write_snapshot(20, iter(chunks))
    directory.unlock()
    backend = EmbeddedBackend(dimension=DIM, data_dir=data_dir(tmp_path))
    await backend.start()
    try:
        for e in entries:
            matches = await backend.search(e.scope, vector(int(e.id[2:])), 1)
            assert matches[0].entry_id == e.id and matches[0].similarity == pytest.approx(1.0)
        assert {ns: len([e for e in entries if e.scope.namespace == ns]) for ns in ("ns0", "ns1")} == {
            ns: u.entries for ns, u in (await backend.usage_by_namespace("t")).items()}
    finally:
        await backend.aclose()


def test_a_move_to_reembed_that_a_crash_cut_short_is_finished_on_the_next_start(tmp_path: Path) -> None:
    old = data_dir(tmp_path)
    old.lock()
    old.check_model()
    old.write_snapshot(2, iter([(2, encode_chunk([entry(1), entry(2)], np.vstack([vector(1), vector(2)])))]))
    old.unlock()
    write_segment(tmp_path, [encode_put(entry(3), vector(3), 3)], number=2)
    # The crash: the snapshot had moved, the log and the model record (which moves last) had not.
    pending = tmp_path / "reembed-pending"
    pending.mkdir()
    snapshot = next(tmp_path.glob("snapshot-*.snap"))
    snapshot.rename(pending / snapshot.name)

    other = ModelIdentity(name="other-model", dimension=DIM, checksum="def")
    new = data_dir(tmp_path, model=other, on_model_change=ModelChange.REEMBED)
    new.check_model()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LOCK", "model.json", "reembed-pending"]
    assert json.loads((tmp_path / "model.json").read_text())["name"] == "other-model"
    waiting = new.pending_reembed()
    assert waiting is not None and waiting.model == MODEL
    state, _ = recover(waiting)
    assert sorted(state.entries) == ["id1", "id2", "id3"]

    new.finish_reembed()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LOCK", "model.json"] and new.pending_reembed() is None


async def test_a_start_cancelled_during_recovery_waits_for_the_reader(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    directory = data_dir(tmp_path)
    directory.lock()
    directory.write_snapshot(3, iter([(3, encode_chunk([entry(1), entry(2), entry(3)],
                                                       np.vstack([vector(1), vector(2), vector(3)])))]))
    directory.unlock()
    reading, release, finished = threading.Event(), threading.Event(), threading.Event()
    real_decode = persistence._decode_chunk

    def slow_decode(*args: Any) -> Any:
        reading.set()
        release.wait(10)  # the reader is busy until the test lets it go
        try:
            return real_decode(*args)
        finally:
            finished.set()

    monkeypatch.setattr(persistence, "_decode_chunk", slow_decode)
    backend = EmbeddedBackend(dimension=DIM, data_dir=data_dir(tmp_path))
    start = asyncio.create_task(backend.start())
    await asyncio.to_thread(reading.wait, 10)
    start.cancel()
    done, _ = await asyncio.wait({start}, timeout=0.3)
    assert not done  # the cancelled start waits for the reader instead of leaving it running
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert finished.is_set()
    await backend.aclose()
    other = data_dir(tmp_path)
    other.lock()  # released only after the reader was done
    other.unlock()


def _with_usage(e: Entry, prompt_tokens: int, completion_tokens: int, cost: float | None) -> Entry:
    e.usage = TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)
    return e


def test_usage_survives_the_log_and_snapshots(tmp_path: Path) -> None:
    directory = data_dir(tmp_path)
    directory.lock()
    chunk = encode_chunk([_with_usage(entry(1), 10, 20, 0.5), entry(2)], np.vstack([vector(1), vector(2)]))
    directory.write_snapshot(10, iter([(2, chunk), (1, encode_chunk([entry(3)], vector(3)))]))
    write_segment(tmp_path, [encode_put(_with_usage(entry(4), 7, 8, None), vector(4), 11),
                             encode_put(entry(5), vector(5), 12)], number=2)
    state, _ = recover(directory)
    directory.unlock()
    usage = {i: e.usage for i, (e, _v) in state.entries.items()}
    assert usage == {"id1": TokenUsage(prompt_tokens=10, completion_tokens=20, cost_usd=0.5), "id2": None,
                     "id3": None, "id4": TokenUsage(prompt_tokens=7, completion_tokens=8), "id5": None}


def test_records_written_before_usage_existed_still_load(tmp_path: Path) -> None:
    # The put and chunk layouts of files written before entries carried usage: no trailing usage field.
    old_put = msgpack.unpackb(encode_put(entry(4), vector(4), 11))[:-1]
    old_chunk = msgpack.unpackb(encode_chunk([entry(1)], vector(1)))[:14]
    directory = data_dir(tmp_path)
    directory.lock()
    directory.write_snapshot(10, iter([(1, msgpack.packb(old_chunk))]))
    write_segment(tmp_path, [msgpack.packb(old_put)], number=2)
    state, _ = recover(directory)
    directory.unlock()
    assert sorted(state.entries) == ["id1", "id4"]
    assert all(e.usage is None for e, _v in state.entries.values())
    assert state.entries["id4"][0].completion == "completion 4 ✓"


def test_temporaries_left_by_a_crash_are_removed_when_the_directory_is_locked(tmp_path: Path) -> None:
    directory = data_dir(tmp_path)
    directory.lock()
    chunk = encode_chunk([entry(1)], vector(1))
    path, _count, _size = directory.write_snapshot(10, iter([(1, chunk)]))
    directory.unlock()
    # what a crash mid-snapshot and mid-model-record leaves behind
    (tmp_path / f"{persistence.SNAPSHOT_PREFIX}{20:016d}.tmp").write_bytes(b"half a snapshot" * 1000)
    (tmp_path / "model.tmp").write_text("{", encoding="utf-8")
    directory = data_dir(tmp_path)
    directory.lock()
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == []
    assert path.exists()
    directory.unlock()


async def test_data_files_and_directory_are_private_to_the_server_user(tmp_path: Path) -> None:
    root = tmp_path / "data"
    directory = data_dir(root)
    directory.lock()
    directory.check_model()
    directory.write_snapshot(1, iter([(1, encode_chunk([entry(1)], vector(1)))]))
    writer = WalWriter(directory=root, segment=1, policy=FsyncPolicy.ALWAYS)
    writer.start()
    await writer.append(encode_put(entry(2), vector(2), lsn=2), lsn=2)
    await writer.aclose()
    directory.unlock()
    assert root.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in root.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes
