"""HNSW graphs saved with the snapshot: a restart serves from them at once; a stale or damaged file is ignored."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from cachesvc.backends.embedded import EmbeddedBackend
from cachesvc.backends.faiss_index import IndexKind, IndexOptions
from cachesvc.backends.graphs import graph_path
from cachesvc.backends.persistence import DataDir, ModelIdentity, PersistenceOptions
from cachesvc.records import Entry, ScopeKey

DIM = 16
MODEL = ModelIdentity(name="test-model", dimension=DIM, checksum="abc")
SCOPE = ScopeKey(tenant="t", namespace="graphs")
SMALL = ScopeKey(tenant="t", namespace="small")  # stays flat: no graph
OPTIONS = IndexOptions(hnsw_threshold=200)


def entry(n: int, scope: ScopeKey = SCOPE) -> Entry:
    return Entry(id=f"id{n}", scope=scope, prompt=f"prompt {n}", normalized_prompt=f"prompt {n}",
                 completion=f"completion {n}", metadata={}, created_at=1000.0 + n, expires_at=None, size_bytes=100)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 10, 1), DIM))
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def backend(path: Path) -> EmbeddedBackend:
    return EmbeddedBackend(dimension=DIM, index_options=OPTIONS,
                           data_dir=DataDir(PersistenceOptions(data_dir=path), MODEL), clock_now=lambda: 2000.0)


async def fill(path: Path, data: np.ndarray) -> None:
    """Stores `data` in SCOPE (built into a graph) and three entries in SMALL, then stops cleanly (snapshot +
    graphs)."""
    first = backend(path)
    await first.start()
    try:
        for n, v in enumerate(data):
            await first.put(entry(n), v)
        for n in range(3):
            await first.put(entry(10_000 + n, SMALL), data[n])
        await first.settle()
        index = first.index_of(SCOPE)
        assert index is not None and index.kind is IndexKind.HNSW
    finally:
        await first.aclose()


async def assert_serves_everything(b: EmbeddedBackend, data: np.ndarray, ids: Iterable[int]) -> None:
    for n in ids:
        matches = await b.search(SCOPE, data[n], 1)
        assert matches[0].entry_id == f"id{n}" and matches[0].similarity == pytest.approx(1.0, abs=1e-5)


async def test_a_restart_serves_from_the_saved_graph_at_once(tmp_path: Path) -> None:
    data = vectors(400)
    await fill(tmp_path, data)
    (graphs,) = tmp_path.glob("snapshot-*.graphs")
    assert graphs.stat().st_mode & 0o777 == 0o600
    again = backend(tmp_path)
    await again.start()
    try:
        index = again.index_of(SCOPE)
        assert index is not None
        # Right after start (no settle): the graph is in use, nothing is being built or was rebuilt.
        assert (index.kind, index.graphs_loaded, index.rebuilds, index.building) == (IndexKind.HNSW, 1, 0, False)
        assert index.live == len(data) and index.tombstones == 0
        small = again.index_of(SMALL)
        assert small is not None and small.kind is IndexKind.FLAT
        await assert_serves_everything(again, data, range(len(data)))
    finally:
        await again.aclose()


async def test_changes_after_the_graph_was_saved_are_applied_to_it(tmp_path: Path) -> None:
    data = vectors(460, seed=1)
    await fill(tmp_path, data[:400])
    b = backend(tmp_path)
    await b.start()
    await b.snapshot()  # graph saved with the 400
    for n in range(400, 460):
        await b.put(entry(n), data[n])
    await b.delete([f"id{n}" for n in range(10)])
    # A crash: no final snapshot, so the restart replays the log over the snapshot and its graph.
    await b._wal.aclose()  # type: ignore[union-attr]
    b._data_dir.unlock()  # type: ignore[union-attr]
    for pool in (b._index_thread, b._build_thread, b._snapshot_thread):
        pool.shutdown(wait=True)  # type: ignore[union-attr]
    again = backend(tmp_path)
    await again.start()
    try:
        index = again.index_of(SCOPE)
        assert index is not None
        assert (index.kind, index.graphs_loaded, index.rebuilds) == (IndexKind.HNSW, 1, 0)
        assert index.live == 450 and index.tombstones == 10  # the deleted ten stay in the graph as tombstones
        await assert_serves_everything(again, data, range(10, 460))
        for n in range(10):
            assert all(m.entry_id != f"id{n}" for m in await again.search(SCOPE, data[n], 5))
    finally:
        await again.aclose()


def damage(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the graph's bytes
    path.write_bytes(bytes(raw))


def make_stale(path: Path) -> None:
    """The graphs of an earlier snapshot, under the current snapshot's name."""
    older = path.with_name("older.graphs")
    shutil.copy(path, older)
    older.replace(path)
    raw = path.read_bytes()
    # Re-save with the wrong LSN: parse nothing, just write a graph file claiming another snapshot.
    from cachesvc.backends import graphs

    loaded = list(graphs.read_graphs(path, lsn=_lsn(path), dimension=DIM))
    graphs.write_graphs(path, lsn=_lsn(path) - 1, dimension=DIM, graphs=[
        graphs.SavedGraph(scope=g.scope, entry_ids=g.entry_ids, index=g.index) for g in loaded])
    assert path.read_bytes() != raw


def _lsn(path: Path) -> int:
    return DataDir.snapshot_lsn(path.with_suffix(".snap"))


def swap_ids(path: Path) -> None:
    """A sound file whose graph positions name the wrong entries (the vectors are not theirs)."""
    from cachesvc.backends import graphs

    loaded = list(graphs.read_graphs(path, lsn=_lsn(path), dimension=DIM))
    graphs.write_graphs(path, lsn=_lsn(path), dimension=DIM, graphs=[
        graphs.SavedGraph(scope=g.scope, entry_ids=list(reversed(g.entry_ids)), index=g.index) for g in loaded])


@pytest.mark.parametrize("spoil", [damage, make_stale, swap_ids, Path.unlink], ids=["damaged", "stale",
                                                                                   "wrong-ids", "missing"])
async def test_a_stale_or_damaged_graph_is_ignored_and_rebuilt(tmp_path: Path, spoil: object) -> None:
    data = vectors(300, seed=2)
    await fill(tmp_path, data)
    (saved,) = tmp_path.glob("snapshot-*.graphs")
    spoil(saved)  # type: ignore[operator]
    again = backend(tmp_path)
    await again.start()
    try:
        index = again.index_of(SCOPE)
        assert index is not None and index.graphs_loaded == 0
        await again.settle()
        assert (index.kind, index.rebuilds, index.live) == (IndexKind.HNSW, 1, len(data))
        await assert_serves_everything(again, data, range(len(data)))
    finally:
        await again.aclose()


async def test_old_graphs_go_with_their_snapshot(tmp_path: Path) -> None:
    data = vectors(300, seed=3)
    await fill(tmp_path, data)
    b = backend(tmp_path)
    await b.start()
    try:
        await b.put(entry(300), data[0])
        await b.snapshot()
        snapshots = sorted(tmp_path.glob("snapshot-*.snap"))
        assert [graph_path(s) for s in snapshots] == sorted(tmp_path.glob("snapshot-*.graphs*"))
        assert len(snapshots) == 1
    finally:
        await b.aclose()


async def test_searches_and_stores_go_on_while_a_graph_is_frozen_for_saving(tmp_path: Path) -> None:
    data = vectors(320, seed=4)
    await fill(tmp_path, data[:300])
    b = backend(tmp_path)
    await b.start()
    try:
        index = b.index_of(SCOPE)
        assert index is not None
        frozen = await b._on_index_thread(index.freeze)
        assert frozen is not None
        for n in range(300, 320):
            await b.put(entry(n), data[n])
        await b.delete(["id5", "id305"])
        await assert_serves_everything(b, data, [n for n in range(320) if n not in (5, 305)])
        labels = np.array([b._labels["id1"], b._labels["id310"]], dtype=np.int64)  # in the graph, and beside it
        vectors_back = await b._on_index_thread(lambda: index.vectors_of(labels))
        np.testing.assert_array_equal(vectors_back, data[[1, 310]])
        assert int(frozen[0].ntotal) == 300  # the graph itself did not change
        await b._on_index_thread(index.thaw)
        assert index.live == 318
        await assert_serves_everything(b, data, [n for n in range(320) if n not in (5, 305)])
    finally:
        await b.aclose()
