"""ScopeIndex: flat while small, HNSW built in the background once large, tombstones and rebuilds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cachesvc.backends.faiss_index import IndexKind, IndexOptions, ScopeIndex

DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def builder() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True)


def clustered(n: int, seed: int) -> np.ndarray:
    """Prompt-like data: groups of near neighbours rather than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 10, 1), DIM))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, DIM)))


def test_flat_search_is_exact_and_removal_is_immediate(builder: ThreadPoolExecutor) -> None:
    index = ScopeIndex(dimension=DIM, options=IndexOptions(hnsw_threshold=1000), builder=builder)
    data = clustered(200, seed=1)
    for label, vector in enumerate(data, start=1):
        index.add(label, vector)
    scores = data @ data[7]
    best = int(np.argmax(scores)) + 1
    assert index.search(data[7], 1) == [(best, pytest.approx(float(scores.max()), abs=1e-5))]
    index.remove(8)
    assert all(label != 8 for label, _ in index.search(data[7], 5))
    assert index.kind is IndexKind.FLAT and index.live == 199


def test_switches_to_hnsw_past_threshold_with_near_duplicate_recall(builder: ThreadPoolExecutor) -> None:
    index = ScopeIndex(dimension=DIM, options=IndexOptions(hnsw_threshold=2000), builder=builder)
    data = clustered(3000, seed=2)
    for label, vector in enumerate(data, start=1):
        index.add(label, vector)
    index.wait_for_build()
    assert index.kind is IndexKind.HNSW and index.live == 3000
    rng = np.random.default_rng(3)
    queries = rng.integers(0, len(data), 500)
    near = unit(data[queries] + 0.02 * rng.standard_normal((len(queries), DIM)))
    found = sum(index.search(q, 1)[0][0] == i + 1 for q, i in zip(near, queries, strict=True))
    assert found / len(queries) >= 0.99


def test_changes_during_a_build_are_replayed(builder: ThreadPoolExecutor) -> None:
    release = threading.Event()
    builder.submit(release.wait, 10)  # the build queues behind this, so the index changes while it "runs"
    index = ScopeIndex(dimension=DIM, options=IndexOptions(hnsw_threshold=100), builder=builder)
    data = clustered(160, seed=4)
    for label in range(1, 101):
        index.add(label, data[label - 1])
    assert index.building and index.kind is IndexKind.FLAT
    for label in range(101, 161):
        index.add(label, data[label - 1])  # added during the build
    index.remove(5)  # was in the copy: becomes a tombstone of the new graph
    index.remove(150)  # added during the build, then removed
    assert all(label != 5 for label, _ in index.search(data[4], 3))  # flat still answers meanwhile
    release.set()
    index.wait_for_build()
    assert index.kind is IndexKind.HNSW and index.tombstones == 1 and index.live == 158
    for label in (1, 100, 101, 160):
        assert index.search(data[label - 1], 1)[0][0] == label
    assert all(label not in (5, 150) for label, _ in index.search(data[4], 10))
    assert all(label not in (5, 150) for label, _ in index.search(data[149], 10))


def test_tombstones_trigger_a_rebuild(builder: ThreadPoolExecutor) -> None:
    index = ScopeIndex(dimension=DIM, options=IndexOptions(hnsw_threshold=100, max_tombstone_ratio=0.2),
                       builder=builder)
    data = clustered(200, seed=5)
    for label, vector in enumerate(data, start=1):
        index.add(label, vector)
    index.wait_for_build()
    assert index.rebuilds == 1
    for label in range(1, 42):  # 41 of 200 > 20%
        index.remove(label)
    index.wait_for_build()
    assert index.rebuilds == 2 and index.tombstones == 0 and index.live == 159
    assert all(label > 41 for label, _ in index.search(data[0], 20))
