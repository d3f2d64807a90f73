"""One scope's vector index: exact (flat) while small, HNSW once large, rebuilt in the background.

FAISS indexes are not safe for concurrent mutation, so every call on a `ScopeIndex` happens on the backend's
single index thread, or (a cheap search) on another thread holding that thread's lock while it is idle. The one
slow operation, building an HNSW graph (seconds at 10k+ vectors), runs on a separate build thread over a copy
of the vectors; when it finishes, the index thread replays the additions and removals made meanwhile and swaps
the new index in, so lookups keep being answered during a build.

HNSW has no `remove_ids`: a removed label stays in the graph as a tombstone that search filters out (the
index remembers them), and the graph is rebuilt once tombstones pass `max_tombstone_ratio`.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from cachesvc.embedding.protocol import Vector


@dataclass(frozen=True, kw_only=True)
class IndexOptions:
    # Between lookups the model's weights pass through the caches, so a search meets its vectors cold: a flat
    # scan then costs ~0.57 ms at 5k, 0.92 at 10k and 1.9 at 20k here, HNSW ~0.5 ms at any of them, with
    # near-duplicate recall 1.000 and recall@4 >= 0.999 on real prompts (bench/index_recall.py). Building costs
    # ~0.25 ms per vector on a background thread. Switch where the two cross.
    hnsw_threshold: int = 5_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    # On real prompts at 10k and 100k entries: near-duplicate recall 1.000, recall@4 >= 0.999 and the exact nearest
    # always found, at 0.13-0.17 ms less per search than 96; below 64 recall@4 starts to fall at 100k
    # (bench/index_recall.py).
    hnsw_ef_search: int = 64
    max_tombstone_ratio: float = 0.2
    # A search runs on the caller's thread, not the index thread, when that thread is idle and the search is
    # cheap: a flat scan of at most this many vectors, or an HNSW search (bounded by efSearch, not by size)
    # with no build to swap in. 0 sends every search to the index thread.
    inline_search_limit: int = 20_000

    def __post_init__(self) -> None:
        if self.hnsw_threshold < 1 or self.hnsw_m < 4 or self.hnsw_ef_search < 1:
            raise ValueError("hnsw_threshold >= 1, hnsw_m >= 4 and hnsw_ef_search >= 1 are required")
        if self.inline_search_limit < 0:
            raise ValueError("inline_search_limit must be >= 0")
        if not 0 < self.max_tombstone_ratio < 1:
            raise ValueError("max_tombstone_ratio must lie in (0, 1)")


def use_one_thread() -> None:
    """Initializer of the thread that searches: one query at a time gains little from OpenMP's threads, and on
    cores shared with the model's workers their barriers cost far more (a 10k flat search measured 0.4 ms with
    one thread and 24 ms with two while another process kept one core busy). The setting is per thread, so
    background HNSW builds keep every core."""
    faiss.omp_set_num_threads(1)


class IndexKind(Enum):
    FLAT = "flat"
    HNSW = "hnsw"


@dataclass
class _Build:
    future: Future[Any]
    copied: frozenset[int]
    added: dict[int, Vector] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)


class ScopeIndex:
    """Labels are int64 ids that the caller never reuses."""

    def __init__(self, *, dimension: int, options: IndexOptions, builder: ThreadPoolExecutor) -> None:
        self._dimension = dimension
        self._options = options
        self._builder = builder
        # Any: faiss's SWIG stubs do not know the numpy-taking wrappers (add_with_ids, remove_ids, search).
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self.kind = IndexKind.FLAT
        self._dead: set[int] = set()  # HNSW tombstones
        self._build: _Build | None = None
        # While a saved copy of the graph is being written (`freeze`), the graph is not changed: additions wait
        # in this small flat index, searched alongside it, and join the graph at `thaw`.
        self._side: Any = None
        self.rebuilds = 0
        self.graphs_loaded = 0

    @property
    def live(self) -> int:
        return self._total() - len(self._dead)

    def _total(self) -> int:
        return int(self._index.ntotal) + (0 if self._side is None else int(self._side.ntotal))

    @property
    def tombstones(self) -> int:
        return len(self._dead)

    @property
    def building(self) -> bool:
        return self._build is not None

    def add(self, label: int, vector: Vector) -> None:
        target = self._index if self._side is None else self._side
        target.add_with_ids(vector.reshape(1, -1), np.array([label], dtype=np.int64))
        if self._build is not None:
            self._build.added[label] = vector
        self.maybe_rebuild()

    def add_many(self, labels: NDArray[np.int64], vectors: NDArray[np.float32], *, build: bool = True) -> None:
        """Bulk add (recovery); starts an HNSW build if the scope is large, unless `build` is False (more blocks
        follow: call `maybe_rebuild` after the last, so that one build covers them all)."""
        if len(labels):
            (self._index if self._side is None else self._side).add_with_ids(vectors, labels)
            if self._build is not None:
                self._build.added.update(zip(labels.tolist(), vectors, strict=True))
            if build:
                self.maybe_rebuild()

    def vectors_of(self, labels: NDArray[np.int64]) -> NDArray[np.float32]:
        """The stored vectors of `labels`, which must all be held (tombstones count): what snapshots save."""
        if self._side is not None and self._side.ntotal:
            side = faiss.vector_to_array(self._side.id_map)
            out = np.empty((len(labels), self._dimension), dtype=np.float32)
            in_side = np.isin(labels, side)
            if in_side.any():
                out[in_side] = self._side.reconstruct_batch(labels[in_side]).reshape(-1, self._dimension)
            if (~in_side).any():
                out[~in_side] = self._index.reconstruct_batch(labels[~in_side]).reshape(-1, self._dimension)
            return out
        return np.asarray(self._index.reconstruct_batch(labels), dtype=np.float32).reshape(len(labels), -1)

    def remove(self, label: int) -> None:
        if self.kind is IndexKind.FLAT:
            self._index.remove_ids(np.array([label], dtype=np.int64))
        else:
            self._dead.add(label)
        if self._build is not None:
            self._build.added.pop(label, None)
            self._build.removed.add(label)
        self.maybe_rebuild()

    @property
    def cheap_to_search(self) -> bool:
        """Whether a search costs little enough to run on the caller's thread (see `inline_search_limit`)."""
        limit = self._options.inline_search_limit
        if limit == 0 or self._build is not None:
            return False
        return self.kind is IndexKind.HNSW or self._total() <= limit

    def search(self, vector: Vector, k: int) -> list[tuple[int, float]]:
        """The up-to-`k` nearest live labels with their inner products, best first."""
        self.finish_build()
        if self._index.ntotal == 0 or k < 1:
            return []
        # Tombstones are at most max_tombstone_ratio of the graph, so asking for a few more than k and
        # dropping the dead ones leaves k live results in all but pathological cases.
        want = min(int(self._index.ntotal), k if not self._dead else 2 * k + 16)
        scores, labels = self._index.search(vector.reshape(1, -1), want)
        pairs: Iterable[tuple[int, float]] = zip(labels[0].tolist(), scores[0].tolist(), strict=True)
        if self._side is not None and self._side.ntotal:
            side_scores, side_labels = self._side.search(vector.reshape(1, -1), min(int(self._side.ntotal), want))
            pairs = sorted([*pairs, *zip(side_labels[0].tolist(), side_scores[0].tolist(), strict=True)],
                           key=lambda p: -p[1])
        found: list[tuple[int, float]] = []
        for label, score in pairs:
            if label >= 0 and label not in self._dead:
                found.append((label, score))
                if len(found) == k:
                    break
        return found

    def wait_for_build(self) -> None:
        """Blocks until a running background build is swapped in (tests and shutdown)."""
        if self._build is not None:
            self._build.future.result()
            self.finish_build()

    def finish_build(self) -> None:
        """Swaps in a background-built index once it is ready; never waits for it."""
        build = self._build
        if build is None or not build.future.done() or self._side is not None:
            return
        self._build = None
        new = build.future.result()
        if build.added:
            labels = np.fromiter(build.added.keys(), dtype=np.int64, count=len(build.added))
            new.add_with_ids(np.vstack(list(build.added.values())), labels)
        self._index = new
        self.kind = IndexKind.HNSW
        self._dead = {label for label in build.removed if label in build.copied}
        self.rebuilds += 1

    def maybe_rebuild(self) -> None:
        """Starts an HNSW build (or swaps a finished one in) if the scope's size or tombstones call for it."""
        if self._build is not None:
            self.finish_build()
            return
        if self._side is not None:
            return  # the graph is being saved; `thaw` looks again
        total = int(self._index.ntotal)
        if self.kind is IndexKind.FLAT:
            due = total >= self._options.hnsw_threshold
        else:
            due = len(self._dead) > self._options.max_tombstone_ratio * max(total, 1)
        if due:
            self._start_build()

    # Saving and loading the graph (bench/RESULTS.md: a restart serves from HNSW at once)

    def freeze(self) -> tuple[Any, NDArray[np.int64]] | None:
        """For saving: the HNSW graph and the label at each of its positions, or None (flat, or being rebuilt).
        The graph is not changed until `thaw`, so another thread may write it out while this one searches it."""
        if self.kind is not IndexKind.HNSW or self._build is not None or self._side is not None:
            return None
        self._side = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dimension))
        return self._index, faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def thaw(self) -> None:
        """Ends `freeze`: what was added meanwhile joins the graph."""
        side, self._side = self._side, None
        if side is not None and side.ntotal:
            labels = faiss.vector_to_array(side.id_map).astype(np.int64)
            self._index.add_with_ids(side.index.reconstruct_n(0, int(side.ntotal)), labels)
        self.maybe_rebuild()

    def install_graph(self, graph: Any, labels: NDArray[np.int64], dead: set[int]) -> bool:
        """Replaces this (flat, freshly loaded) index by a saved HNSW graph (an `IndexIDMap2` as `freeze` gave it)
        whose position i now holds `labels[i]`; labels in `dead` are tombstones, and vectors held here but not in
        the graph are added to it. Returns False, changing nothing, when the graph's vectors are not the ones
        held here under the same labels (a graph that does not belong to these entries)."""
        if self.kind is not IndexKind.FLAT or self._build is not None or len(labels) != graph.ntotal:
            return False
        inner = faiss.downcast_index(graph.index)
        if not isinstance(inner, faiss.IndexHNSWFlat):
            return False
        held = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        live = np.flatnonzero(np.isin(labels, held))
        # Spot checks: the same label must carry the same vector, bit for bit.
        sample = live[np.linspace(0, len(live) - 1, num=min(len(live), 64)).astype(np.int64)] if len(live) else live
        for position in sample.tolist():
            if not np.array_equal(inner.reconstruct(position), self._index.reconstruct(int(labels[position]))):
                return False
        faiss.copy_array_to_vector(labels, graph.id_map)
        graph.construct_rev_map()
        missing = held[~np.isin(held, labels)]
        if len(missing):
            graph.add_with_ids(self.vectors_of(missing), missing)
        inner.hnsw.efSearch = self._options.hnsw_ef_search
        self._index = graph
        self.kind = IndexKind.HNSW
        self._dead = set(dead)
        self.graphs_loaded += 1
        self.maybe_rebuild()
        return True

    def _start_build(self) -> None:
        labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, int(self._index.ntotal))
        if self._dead:
            keep = np.fromiter((label not in self._dead for label in labels.tolist()), dtype=bool,
                               count=len(labels))
            labels, vectors = labels[keep], vectors[keep]
        future = self._builder.submit(self._build_hnsw, labels, vectors)
        self._build = _Build(future=future, copied=frozenset(labels.tolist()))

    def _build_hnsw(self, labels: NDArray[np.int64], vectors: NDArray[np.float32]) -> Any:
        hnsw = faiss.IndexHNSWFlat(self._dimension, self._options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self._options.hnsw_ef_construction
        hnsw.hnsw.efSearch = self._options.hnsw_ef_search
        index = faiss.IndexIDMap2(hnsw)
        if len(labels):
            index.add_with_ids(vectors, labels)
        return index
