"""The embedded backend: entries in process memory, one FAISS index per scope, durable in a data directory.

State is owned by the event loop (dicts are only touched there, except while `start()` reads the data
directory into them on a worker thread, before anything else can see the backend); every FAISS call runs on one
dedicated index thread, in submission order, so index mutations never race and a slow search never blocks the
loop. The one exception is a cheap search while that thread is idle: it runs on the loop under the thread's lock
(`IndexThread.run_inline`), seeing what the thread would have seen, without two thread wake-ups.

Durability comes before visibility: a mutation is appended to the write-ahead log (and fsynced, per the
policy) before it changes what lookups see. Snapshots are written on their own thread, from a list of the
entries taken at one instant and vectors read back from the index in small chunks, so lookups wait for at
most one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from cachesvc.backends.faiss_index import IndexKind, IndexOptions, ScopeIndex
from cachesvc.backends.graphs import (
    GraphFileError,
    LoadedGraph,
    SavedGraph,
    graph_path,
    read_graphs,
    write_graphs,
)
from cachesvc.backends.index_thread import IndexThread
from cachesvc.backends.persistence import (
    DataDir,
    SnapshotChunk,
    encode_chunk,
    encode_delete,
    encode_feedback,
    encode_hits,
    encode_put,
)
from cachesvc.backends.protocol import Capabilities
from cachesvc.backends.wal import WalWriter, list_segments, segment_number
from cachesvc.embedding.protocol import Vector
from cachesvc.errors import InvalidRequest, NotReady
from cachesvc.lifecycle import State
from cachesvc.records import Entry, EntryFeedback, FeedbackReport, Match, ScopeKey, ScopeSelector, Usage

T = TypeVar("T")
log = logging.getLogger(__name__)
SNAPSHOT_CHUNK = 256


async def _uncancellable(work: Coroutine[Any, Any, T]) -> T:
    """Runs `work` to completion even if the caller is cancelled (a client's deadline or disconnect): once a
    record is in the log it must also be applied, or memory and disk would disagree until a crash replays it."""
    task = asyncio.get_running_loop().create_task(work)
    task.add_done_callback(lambda done: None if done.cancelled() else done.exception())
    return await asyncio.shield(task)


def _report_index_error(done: Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("index update failed", exc_info=done.exception())


@dataclass
class _Scope:
    key: ScopeKey
    index: ScopeIndex
    label_to_id: dict[int, str] = field(default_factory=dict)


@dataclass
class _Tally:
    entries: int = 0
    bytes: int = 0


class _Block:
    """Vectors of one scope on their way to its index during recovery. It starts small and doubles up to the
    loader's BLOCK, so that thousands of small scopes do not each hold a full block."""

    def __init__(self, *, scope: _Scope, dimension: int, capacity: int) -> None:
        self.scope = scope
        self.count = 0
        self.labels = np.empty(capacity, dtype=np.int64)
        self.vectors = np.empty((capacity, dimension), dtype=np.float32)

    def room_for(self, rows: int, limit: int) -> int:
        """Grows (up to `limit` rows) to take `rows` more if it can; returns how many fit now."""
        capacity = len(self.labels)
        if self.count + rows > capacity and capacity < limit:
            capacity = min(limit, max(2 * capacity, self.count + rows))
            labels = np.empty(capacity, dtype=np.int64)
            vectors = np.empty((capacity, self.vectors.shape[1]), dtype=np.float32)
            labels[:self.count] = self.labels[:self.count]
            vectors[:self.count] = self.vectors[:self.count]
            self.labels, self.vectors = labels, vectors
        return min(rows, capacity - self.count)


class _Stopped(Exception):
    """Recovery was told to stop (the start was cancelled)."""


class _Loader:
    """Reads a data directory into a backend that is starting (the backend's `RecoverySink`).

    Snapshot chunks go straight into the backend's maps. Their vectors are gathered per scope and handed to the
    index thread in blocks, where FAISS copies them in while this thread reads on; whether a scope is large
    enough for an HNSW graph is decided once the whole snapshot is in, so a large scope starts one build over
    all its vectors. Log records after the snapshot then go through the backend's own put and forget, so
    replay has the same meaning as the original calls.
    """

    BLOCK = 8192  # vectors per index call: few calls, each a few MB

    def __init__(self, backend: EmbeddedBackend, *, graphs: Path | None = None, graphs_lsn: int = 0) -> None:
        """Args:
            graphs: the graph file saved with the snapshot being read (covering `graphs_lsn`), if any.
        """
        self._backend = backend
        self._graphs = graphs
        self._graphs_lsn = graphs_lsn
        self._blocks: dict[str, _Block] = {}
        self._loaded: dict[str, _Scope] = {}
        self._stopping = threading.Event()
        self._graph_reading: Future[tuple[list[LoadedGraph], GraphFileError | None]] | None = None

    def start_reading_graphs(self) -> None:
        """Reads the saved graphs on a thread of their own while the snapshot is read. Checking and deserializing
        a graph is C code that releases the GIL, so it overlaps the snapshot's Python decoding on another core
        instead of following it: at 1M entries that is ~4 s alone and ~11 s behind the index thread's work."""
        if self._graphs is None or not self._graphs.exists():
            return
        reader = ThreadPoolExecutor(1, thread_name_prefix="graph-read")
        self._graph_reading = reader.submit(self._read_graphs, self._graphs)
        reader.shutdown(wait=False)

    def _read_graphs(self, path: Path) -> tuple[list[LoadedGraph], GraphFileError | None]:
        """The graphs that read soundly, and the error that ended the file early, if any."""
        graphs: list[LoadedGraph] = []
        try:
            for graph in read_graphs(path, lsn=self._graphs_lsn, dimension=self._backend._dimension):
                graphs.append(graph)
                if self._stopping.is_set():
                    break
        except GraphFileError as exc:
            return graphs, exc
        return graphs, None

    async def graphs_read(self) -> None:
        """Waits until the graph reader is done with the file (a start stopped early must not leave it behind)."""
        if self._graph_reading is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._graph_reading)

    def stop(self) -> None:
        """Makes the reading thread give up at its next chunk or record (it raises `_Stopped`)."""
        self._stopping.set()

    def _check(self) -> None:
        if self._stopping.is_set():
            raise _Stopped

    def load_chunk(self, chunk: SnapshotChunk) -> None:
        self._check()
        backend = self._backend
        scopes = [backend._scope_for(key) for key in chunk.scopes]
        labels = np.asarray(backend._insert_many(chunk.entries, [scopes[s] for s in chunk.scope_of.tolist()]),
                            dtype=np.int64)
        if len(scopes) == 1:
            self._gather(scopes[0], labels, chunk.vectors, None)
            return
        order = np.argsort(chunk.scope_of, kind="stable")
        bounds = np.searchsorted(chunk.scope_of[order], np.arange(len(scopes) + 1)).tolist()
        for s, scope in enumerate(scopes):
            self._gather(scope, labels, chunk.vectors, order[bounds[s]:bounds[s + 1]])

    def _gather(self, scope: _Scope, labels: NDArray[np.int64], vectors: NDArray[np.float32],
                rows: NDArray[np.intp] | None) -> None:
        """Copies `rows` (all when None) of a chunk into the scope's block, sending each full block on."""
        taken = 0
        total = len(labels) if rows is None else len(rows)
        while taken < total:
            block = self._blocks.get(scope.key.digest)
            if block is None:
                block = self._blocks[scope.key.digest] = _Block(scope=scope, dimension=vectors.shape[1],
                                                                capacity=min(self.BLOCK, max(total - taken, 64)))
            n = block.room_for(total - taken, self.BLOCK)
            end = block.count + n
            if rows is None:
                block.labels[block.count:end] = labels[taken:taken + n]
                block.vectors[block.count:end] = vectors[taken:taken + n]
            else:  # gathered straight into the block, without a temporary copy
                np.take(labels, rows[taken:taken + n], out=block.labels[block.count:end])
                np.take(vectors, rows[taken:taken + n], axis=0, out=block.vectors[block.count:end])
            block.count = end
            taken += n
            if block.count == self.BLOCK:
                self._flush(scope.key.digest)

    def _flush(self, digest: str) -> None:
        block = self._blocks.pop(digest)
        add = functools.partial(block.scope.index.add_many, block.labels[:block.count],
                                block.vectors[:block.count], build=False)
        self._submit(add)
        self._loaded[digest] = block.scope

    def _submit(self, work: Callable[[], None]) -> None:
        index_thread = self._backend._index_thread
        assert index_thread is not None
        index_thread.submit(work).add_done_callback(_report_index_error)

    def snapshot_loaded(self) -> None:
        for digest in list(self._blocks):
            self._flush(digest)
        for digest in self._install_graphs():
            del self._loaded[digest]
        for scope in self._loaded.values():
            self._submit(scope.index.maybe_rebuild)
        self._loaded.clear()

    def _install_graphs(self) -> list[str]:
        """Queues the saved graphs of loaded scopes for installation (behind their vectors, on the index thread);
        returns the scopes they cover. A scope whose graph turns out not to fit is rebuilt instead."""
        if self._graph_reading is None:
            return []
        graphs, error = self._graph_reading.result()
        backend = self._backend
        covered: list[str] = []
        for graph in graphs:
            self._check()
            scope = self._loaded.get(graph.scope)
            if scope is None:
                continue  # emptied since the graph was saved
            labels_of = backend._labels
            labels = np.fromiter((labels_of.get(entry_id, 0) for entry_id in graph.entry_ids), dtype=np.int64,
                                 count=len(graph.entry_ids))
            gone = np.flatnonzero(labels == 0)
            # Positions whose entry is gone keep a label of their own, never reused: tombstones.
            labels[gone] = np.fromiter(itertools.islice(backend._next_label, len(gone)), dtype=np.int64,
                                       count=len(gone))
            self._submit(functools.partial(_install_graph, scope, graph.index, labels, set(labels[gone].tolist())))
            covered.append(graph.scope)
        if error is not None:
            log.warning("%s; the scopes it would have covered are rebuilt in the background", error)
        return covered

    def replay_put(self, entry: Entry, vector: Vector) -> None:
        self._check()
        if entry.id not in self._backend._entries:  # else the snapshot already holds it
            self._backend._apply_put(entry, vector)

    def replay_delete(self, entry_ids: list[str]) -> None:
        self._check()
        for entry_id in entry_ids:
            self._backend._forget(entry_id)

    def replay_hits(self, entry_ids: list[str], hit_counts: list[int], last_used_at: list[float]) -> None:
        self._check()
        backend = self._backend
        for entry_id, hit_count, used_at in zip(entry_ids, hit_counts, last_used_at, strict=True):
            entry = backend._entries.get(entry_id)
            if entry is not None:
                entry.hit_count, entry.last_used_at = hit_count, used_at
                backend._lru.move_to_end(entry_id)

    def replay_feedback(self, entry_id: str, report: FeedbackReport, lsn: int) -> None:
        self._check()
        entry = self._backend._entries.get(entry_id)
        if entry is not None and (entry.feedback is None or entry.feedback.lsn < lsn):
            entry.feedback = (entry.feedback or EntryFeedback()).with_report(report, lsn)


def _install_graph(scope: _Scope, graph: Any, labels: NDArray[np.int64], dead: set[int]) -> None:
    """Runs on the index thread, after the scope's vectors were added."""
    if not scope.index.install_graph(graph, labels, dead):
        log.warning("the saved graph of scope %s does not match its entries; rebuilding it", scope.key.digest)
        scope.index.maybe_rebuild()


class EmbeddedBackend:
    """In-process backend; durable when given a data directory."""

    def __init__(self, *, dimension: int, index_options: IndexOptions = IndexOptions(),
                 data_dir: DataDir | None = None, clock_now: Callable[[], float] = time.time) -> None:
        self._dimension = dimension
        self._data_dir = data_dir
        self._clock_now = clock_now
        self._wal: WalWriter | None = None
        self._lsn = 0
        self._unapplied: set[int] = set()  # logged but not yet visible: a snapshot must not claim them
        self._dirty_hits: set[str] = set()  # entries hit since hits were last logged
        self._stale_expiry = 0  # heap items of entries gone before they expired
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_thread: ThreadPoolExecutor | None = None
        self._wal_bytes_at_snapshot = 0
        self.snapshots_written = 0
        self._index_options = index_options
        self._entries: dict[str, Entry] = {}
        self._labels: dict[str, int] = {}
        self._exact: dict[tuple[str, str], str] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._expiry: list[tuple[float, str]] = []
        self._scopes: dict[str, _Scope] = {}
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._next_label = itertools.count(1)
        self._index_thread: IndexThread | None = None
        self._build_thread: ThreadPoolExecutor | None = None
        self._state = State.NEW

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(semantic_search=True, durable=self._data_dir is not None, shared_between_replicas=False)

    async def start(self) -> None:
        """Recovers the data directory (when there is one) and starts the index and log threads.

        Raises:
            StorageError: the directory is locked by another server, built with another model, or damaged.
        """
        if self._state is not State.NEW:
            raise RuntimeError(f"cannot start a backend that is {self._state.value}")
        self._index_thread = IndexThread()
        self._build_thread = ThreadPoolExecutor(1, thread_name_prefix="faiss-build")
        self._state = State.RUNNING
        if self._data_dir is not None:
            await self._recover(self._data_dir)

    async def _recover(self, data_dir: DataDir) -> None:
        await asyncio.to_thread(data_dir.lock)
        await asyncio.to_thread(data_dir.check_model)
        # Read straight into the maps and indexes on a worker thread: nothing else touches the backend before
        # start() returns, and index additions run on the index thread (in order) while reading goes on.
        snapshots = data_dir.snapshots()
        loader = _Loader(self, graphs=graph_path(snapshots[-1]) if snapshots else None,
                         graphs_lsn=data_dir.snapshot_lsn(snapshots[-1]) if snapshots else 0)
        loader.start_reading_graphs()
        reading = asyncio.ensure_future(asyncio.to_thread(data_dir.replay, loader))
        try:
            recovery = await asyncio.shield(reading)
        except asyncio.CancelledError:
            # Stopped during a long start (a signal): the reader must be done with the maps and the directory
            # before the caller goes on to close the backend and release the lock.
            loader.stop()
            with contextlib.suppress(_Stopped):
                await reading
            await loader.graphs_read()
            raise
        expired = [e.id for e in self._entries.values() if e.is_expired(self._clock_now())]
        for entry_id in expired:
            self._forget(entry_id)
        await self._on_index_thread(lambda: None)
        log.info("recovered %d entries (%d expired dropped)", len(self._entries), len(expired))
        self._lsn = recovery.last_lsn
        segments = list_segments(data_dir.path)
        self._wal = WalWriter(directory=data_dir.path, segment=segment_number(segments[-1]) + 1 if segments else 1,
                              policy=data_dir.options.fsync)
        self._wal.start()
        self._snapshot_thread = ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        if recovery.repaired:
            await self.snapshot()  # make the repaired state durable without the damaged files
        self._snapshot_task = asyncio.get_running_loop().create_task(self._snapshot_forever(), name="snapshots")

    def _scope_for(self, key: ScopeKey) -> _Scope:
        scope = self._scopes.get(key.digest)
        if scope is None:
            assert self._build_thread is not None
            index = ScopeIndex(dimension=self._dimension, options=self._index_options, builder=self._build_thread)
            scope = self._scopes[key.digest] = _Scope(key=key, index=index)
        return scope

    async def aclose(self) -> None:
        """Writes a final snapshot (so the next start reads no log), then stops every thread."""
        if self._state is State.RUNNING and self._wal is not None:
            if self._snapshot_task is not None:
                self._snapshot_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._snapshot_task
            await self._log_hits()
            try:
                await self.snapshot()
            except Exception:
                log.exception("final snapshot failed; the write-ahead log still holds every change")
            await self._wal.aclose()
        self._state = State.CLOSED
        for pool in (self._index_thread, self._build_thread, self._snapshot_thread):
            if pool is not None:
                pool.shutdown(wait=True)
        if self._data_dir is not None:
            self._data_dir.unlock()

    async def _log(self, payload: Callable[[int], bytes], *, wait: bool = True) -> int:
        """Appends a record (durable per policy when `wait`); returns its LSN, unapplied until `_applied`."""
        assert self._wal is not None
        self._lsn += 1
        lsn = self._lsn
        self._unapplied.add(lsn)
        try:
            await self._wal.append(payload(lsn), lsn=lsn, wait=wait)
        except BaseException:
            self._unapplied.discard(lsn)
            raise
        return lsn
    async def _on_index_thread(self, fn: Callable[[], T]) -> T:
        if self._state is not State.RUNNING or self._index_thread is None:
            raise NotReady("the backend is not running")
        return await asyncio.get_running_loop().run_in_executor(self._index_thread, fn)

    async def _search_on_index(self, index: ScopeIndex,
                               fn: Callable[[], tuple[list[tuple[int, float]], np.ndarray | None]]
                               ) -> tuple[list[tuple[int, float]], np.ndarray | None]:
        """Runs a search on the loop's thread when it is cheap and the index thread idle (it then sees every
        change submitted before it, as on the thread), else on the index thread."""
        if self._state is State.RUNNING and self._index_thread is not None:
            ran, result = self._index_thread.run_inline(fn, worth_it=lambda: index.cheap_to_search)
            if ran:
                assert result is not None
                return result
        return await self._on_index_thread(fn)

    @property
    def inline_searches(self) -> int:
        """Searches that ran on the caller's thread rather than the index thread (tests and benchmarks)."""
        return 0 if self._index_thread is None else self._index_thread.inline_runs

    def new_id(self, scope: ScopeKey) -> str:
        return uuid.uuid4().hex

    # ExactStore

    async def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    async def get_exact(self, scope: ScopeKey, normalized_prompt: str) -> Entry | None:
        entry_id = self._exact.get((scope.digest, normalized_prompt))
        return None if entry_id is None else self._entries.get(entry_id)

    async def put(self, entry: Entry, vector: Vector) -> Entry | None:
        if vector.shape != (self._dimension,):
            raise InvalidRequest(f"vector has shape {vector.shape}, the index holds {self._dimension}-d vectors")
        return await _uncancellable(self._put(entry, vector))

    async def _put(self, entry: Entry, vector: Vector) -> Entry | None:
        entry.last_used_at = entry.last_used_at or entry.created_at  # kept when given (re-embedded entries)
        lsn = await self._log(lambda lsn: encode_put(entry, vector, lsn)) if self._wal is not None else 0
        try:
            return self._apply_put(entry, vector)
        finally:
            self._unapplied.discard(lsn)

    def _apply_put(self, entry: Entry, vector: Vector) -> Entry | None:
        """Makes a (logged) put visible; returns the entry it replaced (same prompt, same scope)."""
        old_id = self._exact.get((entry.scope.digest, entry.normalized_prompt))
        replaced = self._forget(old_id) if old_id is not None else None
        scope = self._scope_for(entry.scope)
        label = self._insert(entry, scope)
        # Not awaited: the index thread runs tasks in order, so every later search, removal or snapshot read
        # of this scope already sees the vector; waiting here would only add a thread round trip to each store.
        assert self._index_thread is not None
        self._index_thread.submit(scope.index.add, label, vector).add_done_callback(_report_index_error)
        return replaced

    def _insert(self, entry: Entry, scope: _Scope) -> int:
        return self._insert_many([entry], [scope])[0]

    def _insert_many(self, entries: list[Entry], scopes: list[_Scope]) -> list[int]:
        """Adds entries (not yet held) to every map; returns their new index labels. One loop for one store and
        for a recovered chunk of thousands, so it is written for the latter."""
        held, labels_of, exact, lru, expiry, tallies = (self._entries, self._labels, self._exact, self._lru,
                                                          self._expiry, self._tallies)
        labels = list(itertools.islice(self._next_label, len(entries)))
        for entry, scope, label in zip(entries, scopes, labels, strict=True):
            key = scope.key
            entry.scope = key  # share one ScopeKey object per scope
            entry_id = entry.id
            held[entry_id] = entry
            labels_of[entry_id] = label
            scope.label_to_id[label] = entry_id
            exact[(key.digest, entry.normalized_prompt)] = entry_id
            lru[entry_id] = None
            if entry.expires_at is not None:
                heapq.heappush(expiry, (entry.expires_at, entry_id))
            tally = tallies.get((key.tenant, key.namespace))
            if tally is None:
                tally = tallies[(key.tenant, key.namespace)] = _Tally()
            tally.entries += 1
            tally.bytes += entry.size_bytes
        return labels

    async def delete(self, entry_ids: Collection[str]) -> list[Entry]:
        present = [i for i in entry_ids if i in self._entries]
        if not present:
            return []
        return await _uncancellable(self._delete(present))

    async def _delete(self, present: list[str]) -> list[Entry]:
        lsn = await self._log(lambda lsn: encode_delete(present, lsn)) if self._wal is not None else 0
        try:
            return [e for e in (self._forget(i) for i in present) if e is not None]
        finally:
            self._unapplied.discard(lsn)

    async def touch(self, entry: Entry, now: float, *, from_search: bool = False) -> None:
        # `entry` is the held entry itself (a search returns ids, `get` the held entries): its count is current
        # whether it was found by search or not.
        if entry.id in self._entries:
            entry.hit_count += 1
            entry.last_used_at = now
            self._lru.move_to_end(entry.id)
            if self._wal is not None:
                # Hit counts are statistics, not answers: they are logged once a second in one record rather
                # than costing every hit a log write (and, under fsync=always, an fsync).
                self._dirty_hits.add(entry.id)

    async def _log_hits(self) -> None:
        if not self._dirty_hits or self._wal is None:
            return
        touched = [e for e in (self._entries.get(i) for i in self._dirty_hits) if e is not None]
        self._dirty_hits.clear()
        if touched:
            lsn = await self._log(lambda lsn: encode_hits(touched, lsn), wait=False)
            self._unapplied.discard(lsn)

    # FeedbackStore

    async def add_feedback(self, entry: Entry, report: FeedbackReport) -> bool:
        if entry.id not in self._entries:
            return False
        return await _uncancellable(self._add_feedback(entry, report))

    async def _add_feedback(self, entry: Entry, report: FeedbackReport) -> bool:
        lsn = await self._log(lambda lsn: encode_feedback(entry.id, report, lsn)) if self._wal is not None else 0
        try:
            if self._entries.get(entry.id) is not entry:
                return False  # deleted or replaced while the record was written; replay skips it the same way
            entry.feedback = (entry.feedback or EntryFeedback()).with_report(report, lsn)
            return True
        finally:
            self._unapplied.discard(lsn)

    async def vector_of(self, entry_id: str) -> Vector | None:
        label = self._labels.get(entry_id)
        entry = self._entries.get(entry_id)
        if label is None or entry is None:
            return None
        held = self._scopes.get(entry.scope.digest)
        if held is None:
            return None

        def read() -> Vector | None:
            if held.label_to_id.get(label) != entry_id:
                return None  # removed while waiting for the index thread
            return np.asarray(held.index.vectors_of(np.array([label], dtype=np.int64))[0], dtype=np.float32)

        return await self._on_index_thread(read)

    def _forget(self, entry_id: str) -> Entry | None:
        """Removes an entry from every map at once (so it can never be served again) and queues the index
        removal behind any pending index work for it."""
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return None
        if entry.expires_at is not None:
            self._stale_expiry += 1
            if self._stale_expiry > max(1024, len(self._entries)):
                # Replaced and evicted entries leave their expiry behind; rebuild so the heap tracks live entries.
                self._expiry = [(e.expires_at, e.id) for e in self._entries.values() if e.expires_at is not None]
                heapq.heapify(self._expiry)
                self._stale_expiry = 0
        label = self._labels.pop(entry_id)
        self._lru.pop(entry_id, None)
        key = (entry.scope.digest, entry.normalized_prompt)
        if self._exact.get(key) == entry_id:
            del self._exact[key]
        tally = self._tallies[(entry.scope.tenant, entry.scope.namespace)]
        tally.entries -= 1
        tally.bytes -= entry.size_bytes
        if tally.entries == 0:
            del self._tallies[(entry.scope.tenant, entry.scope.namespace)]
        scope = self._scopes[entry.scope.digest]
        del scope.label_to_id[label]
        if not scope.label_to_id:
            del self._scopes[entry.scope.digest]  # the index goes with it; nothing is left to remove from
        elif self._index_thread is not None:
            self._index_thread.submit(scope.index.remove, label)
        return entry

    # SemanticStore

    async def search(self, scope: ScopeKey, vector: Vector, k: int, *, with_vectors: bool = False) -> list[Match]:
        held = self._scopes.get(scope.digest)
        if held is None:
            return []

        def run() -> tuple[list[tuple[int, float]], np.ndarray | None]:
            # One trip to the index thread: the vectors are read while no index change can remove them.
            found = held.index.search(vector, k)
            if not with_vectors or not found:
                return found, None
            return found, held.index.vectors_of(np.array([label for label, _s in found], dtype=np.int64))

        found, vectors = await self._search_on_index(held.index, run)
        matches = []
        for i, (label, similarity) in enumerate(found):
            entry_id = held.label_to_id.get(label)
            if entry_id is not None:  # deleted while the search ran
                matches.append(Match(entry_id, similarity, None if vectors is None else vectors[i]))
        return matches

    # Inventory

    async def usage(self) -> Usage:
        return Usage(entries=len(self._entries), bytes=sum(t.bytes for t in self._tallies.values()))

    async def usage_by_namespace(self, tenant: str) -> dict[str, Usage]:
        return {ns: Usage(entries=t.entries, bytes=t.bytes) for (tn, ns), t in self._tallies.items() if tn == tenant}

    async def least_recently_used(self, limit: int) -> list[Entry]:
        # islice, not a copy of the whole order: walking a 1M-entry OrderedDict takes ~150 ms.
        return [self._entries[entry_id] for entry_id in itertools.islice(self._lru, limit)]

    async def expired(self, now: float, limit: int) -> list[Entry]:
        found: list[Entry] = []
        while self._expiry and self._expiry[0][0] <= now and len(found) < limit:
            expires_at, entry_id = heapq.heappop(self._expiry)
            entry = self._entries.get(entry_id)
            if entry is not None and entry.expires_at == expires_at:
                found.append(entry)
        return found

    async def select(self, selector: ScopeSelector) -> list[Entry]:
        return [
            self._entries[entry_id]
            for scope in self._scopes.values()
            if selector.matches(scope.key)
            for entry_id in scope.label_to_id.values()
        ]

    # Snapshots

    async def snapshot(self) -> None:
        """Writes a snapshot covering everything visible now, then deletes the log it makes redundant."""
        if self._data_dir is None or self._wal is None or self._snapshot_thread is None:
            return
        async with self._snapshot_lock:
            started = time.monotonic()
            covered = min(self._unapplied) - 1 if self._unapplied else self._lsn
            # One instant; later changes are in the log after `covered`. Only the entries dict's values are copied
            # here (~10 ms at 1M; copying the OrderedDict's LRU order instead takes ~150 ms): the snapshot thread
            # puts them in least-recently-used order by their last use.
            entries = list(self._entries.values())
            self._wal_bytes_at_snapshot = self._wal.bytes_written
            segment = await self._wal.rotate()
            data_dir = self._data_dir
            loop = asyncio.get_running_loop()
            path, count, size = await loop.run_in_executor(
                self._snapshot_thread, lambda: data_dir.write_snapshot(covered, self._snapshot_chunks(entries)))
            graphs = await self._save_graphs(path, covered)
            pruned = await loop.run_in_executor(
                self._snapshot_thread, data_dir.prune, path, covered, self._wal.segment_max_lsn, segment)
            self.snapshots_written += 1
            log.info("snapshot %s: %d entries, %.1f MB, %d HNSW graphs, %.1f MB, in %.2f s; %d log segments removed",
                     path.name, count, size / 1e6, graphs[0], graphs[1] / 1e6, time.monotonic() - started, pruned)

    async def _save_graphs(self, snapshot: Path, covered: int) -> tuple[int, int]:
        """Writes the HNSW graphs beside `snapshot`, so that a restart need not rebuild them; returns (graphs,
        bytes). Each graph is frozen while it is written (searched as usual; additions wait beside it)."""
        assert self._snapshot_thread is not None
        scopes = [scope for scope in self._scopes.values() if scope.index.kind is IndexKind.HNSW]
        if not scopes:
            return 0, 0

        def freeze() -> list[tuple[_Scope, Any, NDArray[np.int64]]]:
            frozen = [(scope, scope.index.freeze()) for scope in scopes]
            return [(scope, graph[0], graph[1]) for scope, graph in frozen if graph is not None]

        frozen = await self._on_index_thread(freeze)
        try:
            def write() -> int:
                # Labels to entry ids here, off the loop (a million lookups); a label deleted meanwhile reads as
                # "", a tombstone when loaded.
                graphs = [SavedGraph(scope=scope.key.digest, index=graph,
                                     entry_ids=[scope.label_to_id.get(label, "") for label in labels.tolist()])
                          for scope, graph, labels in frozen]
                return write_graphs(graph_path(snapshot), lsn=covered, dimension=self._dimension, graphs=graphs)

            size = await asyncio.get_running_loop().run_in_executor(self._snapshot_thread, write)
        except OSError:
            log.exception("saving the HNSW graphs failed; a restart rebuilds them")
            size = 0
        finally:
            def thaw() -> None:
                for scope, _graph, _labels in frozen:
                    scope.index.thaw()

            await self._on_index_thread(thaw)
        return len(frozen), size

    def _snapshot_chunks(self, entries: list[Entry]) -> Iterator[tuple[int, bytes]]:
        """Runs on the snapshot thread; reads vectors back on the index thread a chunk at a time, so a lookup
        waits behind at most one chunk. Chunks list entries least recently used first, so that recovery restores
        the eviction order without sorting."""
        assert self._index_thread is not None
        last_used = np.fromiter((e.last_used_at for e in entries), dtype=np.float64, count=len(entries))
        # argsort runs without the GIL; ties keep insertion order. Converted to Python ints a chunk at a time:
        # one 1M-element tolist() would hold the GIL (and every lookup) for ~40 ms.
        order = np.argsort(last_used, kind="stable")
        for start in range(0, len(order), SNAPSHOT_CHUNK):
            ids = [entries[i].id for i in order[start:start + SNAPSHOT_CHUNK].tolist()]
            chunk, vectors = self._index_thread.submit(self._vectors_of, ids).result()
            if chunk:
                yield len(chunk), encode_chunk(chunk, vectors)

    def _vectors_of(self, entry_ids: list[str]) -> tuple[list[Entry], np.ndarray]:
        """Runs on the index thread, so no index changes under it. Entries deleted since the snapshot began are
        left out (their deletes are in the log after the snapshot's LSN)."""
        by_scope: dict[str, list[tuple[Entry, int]]] = {}
        for entry_id in entry_ids:
            entry = self._entries.get(entry_id)
            label = self._labels.get(entry_id)
            if entry is not None and label is not None:
                by_scope.setdefault(entry.scope.digest, []).append((entry, label))
        kept: list[Entry] = []
        blocks: list[np.ndarray] = []
        for digest, members in by_scope.items():
            scope = self._scopes.get(digest)
            if scope is None:
                continue  # emptied since: every member was deleted after the snapshot began
            # Members deleted meanwhile are left out; this also keeps labels of a scope that was emptied and
            # recreated from being looked up in the new scope's index.
            members = [(e, label) for e, label in members if scope.label_to_id.get(label) == e.id]
            if not members:
                continue
            labels = np.fromiter((label for _e, label in members), dtype=np.int64, count=len(members))
            blocks.append(scope.index.vectors_of(labels))
            kept.extend(e for e, _label in members)
        return kept, (np.vstack(blocks) if blocks else np.zeros((0, self._dimension), dtype=np.float32))

    async def _snapshot_forever(self) -> None:
        assert self._data_dir is not None and self._wal is not None
        options = self._data_dir.options
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            await self._log_hits()
            grown = self._wal.bytes_written - self._wal_bytes_at_snapshot
            if grown and (grown >= options.snapshot_wal_bytes
                          or time.monotonic() - last >= options.snapshot_interval_seconds):
                try:
                    await self.snapshot()
                except Exception:
                    log.exception("snapshot failed; the write-ahead log still holds every change")
                last = time.monotonic()

    # For tests and benchmarks

    async def settle(self) -> None:
        """Waits until queued index work and any background index build are done."""
        for scope in list(self._scopes.values()):
            await self._on_index_thread(scope.index.wait_for_build)
        await self._on_index_thread(lambda: None)

    def index_of(self, scope: ScopeKey) -> ScopeIndex | None:
        held = self._scopes.get(scope.digest)
        return None if held is None else held.index
