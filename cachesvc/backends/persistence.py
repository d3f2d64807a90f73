"""The embedded backend's data directory: lock, model record, snapshots and write-ahead log, and recovery.

    data_dir/
      LOCK                       held (flock) by the one server using the directory
      model.json                 the model the vectors came from; another model is refused
      snapshot-<lsn>.snap        entries with their vectors, covering every record up to <lsn>
      wal-<segment>.log          records after that, in order

Every record carries a log sequence number (LSN). Replaying is idempotent (a put of an id already present is
skipped, deletes and hit counts overwrite), so recovery can load the snapshot and replay every record after
its LSN without caring exactly where a segment boundary fell.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, cast

import msgpack
import numpy as np
from numpy.typing import NDArray

from cachesvc.backends.framing import Damage, FrameReader, ReadResult, frame, read_frames
from cachesvc.backends.graphs import SUFFIX as GRAPHS_SUFFIX
from cachesvc.backends.graphs import graph_path
from cachesvc.backends.wal import (
    PRIVATE_FILE_MODE,
    FsyncPolicy,
    StorageError,
    fsync_directory,
    list_segments,
    segment_number,
)
from cachesvc.embedding.protocol import Vector
from cachesvc.records import Entry, EntryFeedback, FeedbackReport, ScopeKey, TokenUsage

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"
MODEL_FILE = "model.json"
SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_SUFFIX = ".snap"
SNAPSHOT_FORMAT = "cachesvc-snapshot/1"
REEMBED_DIR = "reembed-pending"
REEMBED_DONE_PREFIX = "reembed-done-"  # a finished REEMBED_DIR being deleted


class ModelChange(StrEnum):
    REFUSE = "refuse"  # stop with an error naming both models
    EMPTY = "empty"  # move the old data aside and start empty
    REEMBED = "reembed"  # move the old data into REEMBED_DIR; its entries are embedded again with the new model


@dataclass(frozen=True, kw_only=True)
class ModelIdentity:
    name: str
    dimension: int
    checksum: str

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "dimension": self.dimension, "checksum": self.checksum}, indent=2)


@dataclass(frozen=True, kw_only=True)
class PersistenceOptions:
    data_dir: Path
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    snapshot_interval_seconds: float = 300.0
    snapshot_wal_bytes: int = 256 << 20
    repair: bool = False
    on_model_change: ModelChange = ModelChange.REFUSE


# Records. Lists, not maps: msgpack packs and unpacks them faster. A snapshot holds CHUNK records, each many
# entries as columns with their vectors as one float32 block, so that writing and reading a million entries is
# a few thousand C-level msgpack calls rather than a million Python-level ones.
# Fields added later are appended at the end of a record and may be missing when it is read (files written
# before them): a put's and a chunk's usage.
PUT, DELETE, HIT, CHUNK = "p", "d", "h", "c"
FEEDBACK = "f"  # one caller's report on one entry's hit; older data directories simply have none


def _encode_feedback_state(feedback: EntryFeedback | None) -> list[Any] | None:
    if feedback is None:
        return None
    reports = feedback.reports
    return [[r.prompt for r in reports], [r.similarity for r in reports], [r.correct for r in reports],
            sorted(feedback.wrong_prompts), feedback.wrong, feedback.right, feedback.lsn]


def _decode_feedback_state(row: list[Any] | None) -> EntryFeedback | None:
    if row is None:
        return None
    prompts, similarities, correct, wrong_prompts, wrong, right, lsn = row
    return EntryFeedback(
        reports=tuple(FeedbackReport(prompt=p, similarity=s, correct=c)
                      for p, s, c in zip(prompts, similarities, correct, strict=True)),
        wrong_prompts=frozenset(wrong_prompts), wrong=wrong, right=right, lsn=lsn)


def _usage_row(usage: TokenUsage | None) -> list[Any] | None:
    return None if usage is None else [usage.prompt_tokens, usage.completion_tokens, usage.cost_usd]


def _usage(row: list[Any] | None) -> TokenUsage | None:
    return None if row is None else TokenUsage(prompt_tokens=row[0], completion_tokens=row[1], cost_usd=row[2])


def encode_chunk(entries: list[Entry], vectors: np.ndarray) -> bytes:
    scopes: dict[ScopeKey, int] = {}
    scope_of = [scopes.setdefault(e.scope, len(scopes)) for e in entries]
    return cast(bytes, msgpack.packb([
        CHUNK,
        [[s.tenant, s.namespace, s.model, s.context] for s in scopes],
        scope_of,
        [e.id for e in entries],
        [e.prompt for e in entries],
        [e.normalized_prompt for e in entries],
        [e.completion for e in entries],
        [e.metadata for e in entries],
        [e.created_at for e in entries],
        [e.expires_at for e in entries],
        [e.size_bytes for e in entries],
        [e.hit_count for e in entries],
        [e.last_used_at for e in entries],
        np.ascontiguousarray(vectors, dtype=np.float32).tobytes(),
        # Columns added after the first format (older snapshots end at the vectors); each is None rather than a
        # column of Nones when no entry of the chunk has one.
        [_usage_row(e.usage) for e in entries] if any(e.usage is not None for e in entries) else None,
        [_encode_feedback_state(e.feedback) for e in entries] if any(e.feedback is not None for e in entries)
        else None,
    ]))


def encode_put(entry: Entry, vector: Vector, lsn: int) -> bytes:
    s = entry.scope
    return cast(bytes, msgpack.packb([
        PUT, lsn, entry.id, s.tenant, s.namespace, s.model, s.context, entry.prompt, entry.normalized_prompt,
        entry.completion, entry.metadata, entry.created_at, entry.expires_at, entry.size_bytes, entry.hit_count,
        entry.last_used_at, vector.astype(np.float32, copy=False).tobytes(), _usage_row(entry.usage),
    ]))


def encode_delete(entry_ids: Iterable[str], lsn: int) -> bytes:
    return cast(bytes, msgpack.packb([DELETE, lsn, list(entry_ids)]))


def encode_hits(entries: Iterable[Entry], lsn: int) -> bytes:
    """Hit counts and last-use times of many entries: hits are logged in batches, not one record per hit."""
    rows = [(e.id, e.hit_count, e.last_used_at) for e in entries]
    return cast(bytes, msgpack.packb([HIT, lsn, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]]))


def encode_feedback(entry_id: str, report: FeedbackReport, lsn: int) -> bytes:
    return cast(bytes, msgpack.packb([FEEDBACK, lsn, entry_id, report.prompt, report.similarity, report.correct]))


def _decode_put(r: list[Any], scopes: dict[tuple[str, str, str, str], ScopeKey]) -> tuple[Entry, Vector]:
    entry = Entry(id=r[2], scope=_scope(scopes, r[3], r[4], r[5], r[6]), prompt=r[7], normalized_prompt=r[8],
                  completion=r[9], metadata=r[10], created_at=r[11], expires_at=r[12], size_bytes=r[13],
                  hit_count=r[14], last_used_at=r[15], usage=_usage(r[17]) if len(r) > 17 else None)
    return entry, np.frombuffer(r[16], dtype=np.float32)


def _scope(scopes: dict[tuple[str, str, str, str], ScopeKey], tenant: str, namespace: str, model: str,
           context: str) -> ScopeKey:
    """One ScopeKey object per scope for the whole recovery (its digest is computed once)."""
    key = (tenant, namespace, model, context)
    scope = scopes.get(key)
    if scope is None:
        scope = scopes[key] = ScopeKey(tenant=tenant, namespace=namespace, model=model, context=context)
    return scope


@dataclass(frozen=True, kw_only=True)
class SnapshotChunk:
    """Consecutive entries of a snapshot (least recently used first) with their vectors.

    Attributes:
        scopes: the scopes this chunk's entries belong to.
        scope_of: for each entry, its scope's position in `scopes`.
        vectors: one row per entry.
    """

    entries: list[Entry]
    scopes: list[ScopeKey]
    scope_of: NDArray[np.intp]
    vectors: NDArray[np.float32]


def _decode_chunk(record: list[Any], dimension: int,
                  scopes: dict[tuple[str, str, str, str], ScopeKey]) -> SnapshotChunk:
    _kind, scope_rows, scope_of, ids, prompts, norms, completions, metadata, created, expires, sizes, hits, \
        last_used, blob = record[:14]
    usages = record[14] if len(record) > 14 and record[14] is not None else [None] * len(ids)
    feedback = record[15] if len(record) > 15 and record[15] is not None else [None] * len(ids)
    chunk_scopes = [_scope(scopes, *row) for row in scope_rows]
    entries = [
        Entry(id=ids[i], scope=chunk_scopes[scope_of[i]], prompt=prompts[i], normalized_prompt=norms[i],
              completion=completions[i], metadata=metadata[i], created_at=created[i], expires_at=expires[i],
              size_bytes=sizes[i], hit_count=hits[i], last_used_at=last_used[i], usage=_usage(usages[i]),
              feedback=_decode_feedback_state(feedback[i]))
        for i in range(len(ids))
    ]
    return SnapshotChunk(entries=entries, scopes=chunk_scopes, scope_of=np.asarray(scope_of, dtype=np.intp),
                         vectors=np.frombuffer(blob, dtype=np.float32).reshape(len(ids), dimension))


class RecoverySink(Protocol):
    """What a data directory is read into: the backend itself at start-up.

    A snapshot is one consistent state, so its chunks are loaded as they are. Log records after it are replayed
    idempotently (a record may already be in the snapshot's state): a put whose id is present is skipped, a put
    replaces the entry holding the same prompt in the same scope, deletes and hit counts overwrite.
    """

    def load_chunk(self, chunk: SnapshotChunk) -> None: ...

    def snapshot_loaded(self) -> None:
        """Called once the snapshot's chunks are all loaded, before the first log record."""

    def replay_put(self, entry: Entry, vector: Vector) -> None: ...

    def replay_delete(self, entry_ids: list[str]) -> None: ...

    def replay_hits(self, entry_ids: list[str], hit_counts: list[int], last_used_at: list[float]) -> None: ...

    def replay_feedback(self, entry_id: str, report: FeedbackReport, lsn: int) -> None:
        """Adds a report to the entry's feedback, if the entry is still there and its feedback is older than `lsn`
        (a snapshot may hold an entry's state from after the LSN it covers)."""


@dataclass(frozen=True, kw_only=True)
class Recovery:
    """What reading a data directory found.

    Attributes:
        last_lsn: the highest log sequence number covered; new records continue after it.
        repaired: damage was repaired (the caller should snapshot at once, so the damaged files are not needed).
        snapshot_entries: entries loaded from the snapshot.
        replayed: log records replayed after it.
    """

    last_lsn: int
    repaired: bool
    snapshot_entries: int
    replayed: int


class DataDir:
    """Owns the directory: the lock, the model record, reading everything back and writing snapshots."""

    def __init__(self, options: PersistenceOptions, model: ModelIdentity) -> None:
        self.options = options
        self.model = model
        self.path = options.data_dir
        self._lock_fd: int | None = None

    # Start-up

    def lock(self) -> None:
        """Raises:
            StorageError: another server holds the directory.
        """
        if not self.path.exists():
            # Owner only: the files hold every tenant's prompts and completions.
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(f"{self.path}: data directory is in use by another cachesvc server (pid {holder}); "
                               "one server per data directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Deletes the half-written files (snapshots, model record) of a server that crashed mid-write. Only under
        the lock: a running server's temporary file is never another one's leftover."""
        for stale in self.path.glob("*.tmp"):
            log.warning("%s: removing %s, left by an interrupted write", self.path, stale.name)
            stale.unlink(missing_ok=True)
        fsync_directory(self.path)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def check_model(self) -> None:
        """Raises:
            StorageError: the directory was built with another model and the policy is to refuse.
        """
        path = self.path / MODEL_FILE
        if path.exists():
            try:
                recorded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StorageError(f"{path}: unreadable model record: {exc}") from exc
            current = json.loads(self.model.to_json())
            if recorded != current:
                policy = self.options.on_model_change
                if policy is ModelChange.REFUSE:
                    raise StorageError(
                        f"{self.path}: built with model {recorded.get('name')} (dimension {recorded.get('dimension')}, "
                        f"checksum {str(recorded.get('checksum'))[:12]}), but the server runs {self.model.name} "
                        f"(dimension {self.model.dimension}, checksum {self.model.checksum[:12]}); start with "
                        "--on-model-change reembed to embed the cached prompts again with this model, or "
                        "--on-model-change empty to move the old data aside and start empty"
                    )
                self._move_model_data(policy)
        tmp = path.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), "w", encoding="utf-8") as f:
            f.write(self.model.to_json())
        tmp.replace(path)
        fsync_directory(self.path)

    def _move_model_data(self, policy: ModelChange) -> None:
        """Moves the old model's files out of the way: into REEMBED_DIR to be embedded again, or aside.

        The model record moves last, after the rest is in place and synced: a crash part-way leaves the old record
        here, so the next start sees the same change and finishes the move (into a REEMBED_DIR that has no record
        yet). A REEMBED_DIR that has one is a complete earlier move whose re-embedding a crash interrupted: it keeps
        its place, and what had been re-embedded so far (with yet another model) goes aside instead.
        """
        pending = self.path / REEMBED_DIR
        reembed = policy is ModelChange.REEMBED and not (pending / MODEL_FILE).exists()
        target = pending if reembed else self.path / f"previous-model-{time.strftime('%Y%m%dT%H%M%S')}"
        target.mkdir(exist_ok=True)
        items = [item for item in self.path.iterdir()
                 if item.name not in (LOCK_FILE, REEMBED_DIR, target.name) and not item.name.startswith("previous-")
                 and not item.name.startswith(REEMBED_DONE_PREFIX)]
        for item in sorted(items, key=lambda i: i.name == MODEL_FILE):  # the model record last
            if item.name == MODEL_FILE:
                fsync_directory(target)
            item.rename(target / item.name)
        fsync_directory(target)
        fsync_directory(self.path)
        log.warning("%s: model changed; old data moved to %s%s", self.path, target,
                    " to be embedded again" if reembed else "")

    def finish_reembed(self) -> None:
        """Deletes REEMBED_DIR once its entries are embedded again and covered by a snapshot. Renamed first, so a
        crash part-way through the delete cannot leave a REEMBED_DIR that looks unfinished."""
        pending = self.path / REEMBED_DIR
        done = self.path / f"{REEMBED_DONE_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}"
        pending.rename(done)
        fsync_directory(self.path)
        shutil.rmtree(done)

    def pending_reembed(self) -> DataDir | None:
        """The data left to embed again after a model change (`--on-model-change reembed`), read-only, if any."""
        pending = self.path / REEMBED_DIR
        if not (pending / MODEL_FILE).exists():
            return None
        try:
            recorded = json.loads((pending / MODEL_FILE).read_text(encoding="utf-8"))
            model = ModelIdentity(name=str(recorded["name"]), dimension=int(recorded["dimension"]),
                                  checksum=str(recorded["checksum"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{pending / MODEL_FILE}: unreadable model record: {exc}") from exc
        return DataDir(PersistenceOptions(data_dir=pending, repair=self.options.repair), model)

    def replay(self, sink: RecoverySink) -> Recovery:
        """Loads the newest snapshot into `sink`, then replays the log after it. Expired entries are the sink's to
        drop (it knows the clock).

        Raises:
            StorageError: corruption in a snapshot or in the middle of a segment, without `repair`.
        """
        started = time.monotonic()
        scopes: dict[tuple[str, str, str, str], ScopeKey] = {}
        covered, loaded, repaired = 0, 0, False
        snapshots = self.snapshots()
        if snapshots:
            covered, loaded, repaired = self._load_snapshot(snapshots[-1], sink, scopes)
        sink.snapshot_loaded()
        last_lsn, replayed = covered, 0
        for segment in list_segments(self.path):
            result = self._read(segment)
            repaired = repaired or result.damage is Damage.CORRUPT
            for _offset, payload in result.payloads:
                record = msgpack.unpackb(payload, use_list=True)
                kind, lsn = record[0], record[1]
                if lsn <= covered:
                    continue
                last_lsn = max(last_lsn, lsn)
                replayed += 1
                if kind == PUT:
                    sink.replay_put(*_decode_put(record, scopes))
                elif kind == DELETE:
                    sink.replay_delete(record[2])
                elif kind == HIT:
                    sink.replay_hits(record[2], record[3], record[4])
                elif kind == FEEDBACK:
                    sink.replay_feedback(record[2], FeedbackReport(prompt=record[3], similarity=record[4],
                                                                   correct=record[5]), lsn)
                else:
                    raise StorageError(f"{segment}: unknown record kind {kind!r} at LSN {lsn}")
        log.info("read %s in %.2f s: %d entries from the snapshot (up to LSN %d), %d log records replayed",
                 self.path, time.monotonic() - started, loaded, covered, replayed)
        return Recovery(last_lsn=last_lsn, repaired=repaired, snapshot_entries=loaded, replayed=replayed)

    def _read(self, path: Path) -> ReadResult:
        data = path.read_bytes()
        result = read_frames(data, path=path, resync=self.options.repair)
        if result.damage is Damage.TORN_TAIL:
            log.warning("%s: dropped a torn record at byte offset %d (%d bytes; a crash mid-write)", path,
                        result.damage_offset, len(data) - result.damage_offset)
            with path.open("r+b") as f:
                f.truncate(result.damage_offset)
                os.fsync(f.fileno())
        elif result.damage is Damage.CORRUPT:
            if not self.options.repair:
                raise StorageError(f"{path}: corrupt record at byte offset {result.damage_offset}; start with "
                                   "--repair to keep every readable record and move the file aside")
            self._move_aside(path)
            log.error("%s: corrupt at byte offset %d; repaired: kept %d readable records (%d after the damage), "
                      "moved the file aside", path, result.damage_offset, len(result.payloads), result.resynced)
        return result

    def _move_aside(self, path: Path) -> Path:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(aside)
        return aside

    def _load_snapshot(self, path: Path, sink: RecoverySink,
                       scopes: dict[tuple[str, str, str, str], ScopeKey]) -> tuple[int, int, bool]:
        """Streams a snapshot's chunks into `sink` as they are read and checked.

        The file is memory-mapped and read ahead by the kernel, so reading, checksumming and loading overlap
        instead of running one after another over gigabytes. Damage found part-way stops start-up (what was
        loaded is discarded with the process) unless repairing, which keeps every readable chunk.

        Returns:
            (the LSN the snapshot covers, entries loaded, whether damage was repaired)
        """
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data: bytes | mmap.mmap = b""
            if size:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                data.madvise(mmap.MADV_SEQUENTIAL)
                data.madvise(mmap.MADV_WILLNEED)
        reader = FrameReader(data, path=path, resync=self.options.repair)
        covered = loaded = chunks = 0
        header_ok = False
        footer: Any = None
        for offset, payload in reader:
            record = msgpack.unpackb(payload, use_list=True)
            if offset == 0:
                header_ok = isinstance(record, dict) and record.get("format") == SNAPSHOT_FORMAT
                if header_ok:
                    covered = int(record.get("lsn", 0))
                    continue
                if not self.options.repair:
                    break  # not ours: read nothing more
            if isinstance(record, list) and record and record[0] == CHUNK:
                chunk = _decode_chunk(record, self.model.dimension, scopes)
                sink.load_chunk(chunk)
                loaded += len(chunk.entries)
                chunks += 1
            elif isinstance(record, dict) and "chunks" in record:
                footer = record
        problem: str | None = None
        if not size:
            problem = "empty"
        elif reader.damage is not Damage.NONE:
            problem = f"corrupt record at byte offset {reader.damage_offset}"
        elif not header_ok:
            problem = "not a cachesvc snapshot"
        elif not isinstance(footer, dict) or footer.get("chunks") != chunks:
            problem = "incomplete (no footer or wrong entry count)"
        if problem is None:
            return covered, loaded, False
        if not self.options.repair:
            raise StorageError(f"{path}: snapshot is damaged ({problem}); start with --repair to load its readable "
                               "part and move it aside")
        self._move_aside(path)
        log.error("%s: snapshot damaged (%s); repaired: loaded %d readable entries, moved it aside", path, problem,
                  loaded)
        return covered, loaded, True

    # Snapshots

    def snapshots(self) -> list[Path]:
        found = self.path.glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}")
        return sorted(found, key=self.snapshot_lsn)

    @staticmethod
    def snapshot_lsn(path: Path) -> int:
        """The LSN a snapshot covers, from its name."""
        return int(path.name[len(SNAPSHOT_PREFIX):-len(SNAPSHOT_SUFFIX)])

    def write_snapshot(self, lsn: int, chunks: Iterator[tuple[int, bytes]]) -> tuple[Path, int, int]:
        """Writes `chunks` ((entry count, encoded chunk) pairs) to a temporary file, fsyncs it and renames it
        into place.

        Returns:
            (path, entries written, bytes written)
        """
        final = self.path / f"{SNAPSHOT_PREFIX}{lsn:016d}{SNAPSHOT_SUFFIX}"
        tmp = final.with_suffix(".tmp")
        count = 0
        size = 0
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), "wb",
                  buffering=1 << 20) as f:
            header = frame(msgpack.packb({"format": SNAPSHOT_FORMAT, "lsn": lsn, "model": self.model.name,
                                          "created_at": time.time()}))
            f.write(header)
            size += len(header)
            written_chunks = 0
            for entries, payload in chunks:
                data = frame(payload)
                f.write(data)
                size += len(data)
                count += entries
                written_chunks += 1
            footer = frame(msgpack.packb({"chunks": written_chunks, "entries": count}))
            f.write(footer)
            size += len(footer)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(final)
        fsync_directory(self.path)
        return final, count, size

    def prune(self, keep: Path, covered: int, segment_max_lsn: dict[int, int], current_segment: int) -> int:
        """Deletes older snapshots and the segments wholly covered by `keep`; returns segments deleted."""
        for old in self.snapshots():
            if old != keep:
                old.unlink()
        # Graphs saved beside older snapshots go with them (and any a crash left half written).
        for extra in self.path.glob(f"{SNAPSHOT_PREFIX}*{GRAPHS_SUFFIX}*"):
            if extra != graph_path(keep):
                extra.unlink()
        deleted = 0
        for segment in list_segments(self.path):
            number = segment_number(segment)
            if number < current_segment and segment_max_lsn.get(number, 0) <= covered:
                segment.unlink()
                segment_max_lsn.pop(number, None)
                deleted += 1
        fsync_directory(self.path)
        return deleted
