"""Searches run on the caller's thread when the index thread is idle give the answers the index thread gives."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from cachesvc.backends.embedded import EmbeddedBackend
from cachesvc.backends.faiss_index import IndexKind, IndexOptions
from cachesvc.records import Entry, Match, ScopeKey

DIM = 16
GRAPH = ScopeKey(tenant="t", namespace="graph")  # grows past the HNSW threshold
FLAT = ScopeKey(tenant="t", namespace="flat")


def entry(n: int, scope: ScopeKey) -> Entry:
    return Entry(id=f"{scope.namespace}{n}", scope=scope, prompt=f"prompt {n}", normalized_prompt=f"prompt {n}",
                 completion=f"completion {n}", metadata={}, created_at=1000.0 + n, expires_at=None, size_bytes=100)


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 10, 1), DIM))
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def as_tuples(matches: list[Match]) -> list[tuple[str, float, list[float]]]:
    return [(m.entry_id, m.similarity, [] if m.vector is None else m.vector.tolist()) for m in matches]


async def on_the_index_thread(b: EmbeddedBackend, scope: ScopeKey, query: np.ndarray) -> list[Match]:
    """The same search forced onto the index thread: a task waiting there keeps the caller from running it."""
    release = threading.Event()
    assert b._index_thread is not None
    blocker = b._index_thread.submit(release.wait)
    before = b.inline_searches
    try:
        pending = asyncio.ensure_future(b.search(scope, query, 8, with_vectors=True))
        await asyncio.sleep(0)  # the search runs up to its wait for the index thread
        release.set()
        found = await pending
    finally:
        release.set()
        blocker.result()
    assert b.inline_searches == before  # it waited for the thread instead
    return found


@pytest.mark.parametrize("scope", [FLAT, GRAPH])
async def test_an_inline_search_answers_as_the_index_thread_does(scope: ScopeKey) -> None:
    data = vectors(400, seed=1)
    b = EmbeddedBackend(dimension=DIM, index_options=IndexOptions(hnsw_threshold=300))
    await b.start()
    try:
        count = 400 if scope is GRAPH else 250
        for n in range(count):
            await b.put(entry(n, scope), data[n])
        await b.settle()
        for n in range(0, count, 7):  # flat removals, or tombstones in the graph
            assert await b.delete([entry(n, scope).id])
        await b.settle()
        index = b.index_of(scope)
        assert index is not None
        assert index.kind is (IndexKind.HNSW if scope is GRAPH else IndexKind.FLAT)
        queries = vectors(60, seed=2)
        inline_before = b.inline_searches
        for query in queries:
            inline = await b.search(scope, query, 8, with_vectors=True)
            assert as_tuples(inline) == as_tuples(await on_the_index_thread(b, scope, query))
            assert not {m.entry_id for m in inline} & {entry(n, scope).id for n in range(0, count, 7)}
        assert b.inline_searches - inline_before == len(queries)
    finally:
        await b.aclose()


async def test_a_search_sees_every_change_submitted_before_it() -> None:
    """Stores and deletes queue their index work without waiting: a search right after them must not run inline
    ahead of it, and finds the new entry and not the deleted one."""
    data = vectors(50, seed=3)
    b = EmbeddedBackend(dimension=DIM)
    await b.start()
    try:
        for n in range(40):
            await b.put(entry(n, FLAT), data[n])
        await b.settle()
        for n in range(40, 50):
            await b.put(entry(n, FLAT), data[n])
            found = await b.search(FLAT, data[n], 1)
            assert [m.entry_id for m in found] == [entry(n, FLAT).id]
            assert await b.delete([entry(n, FLAT).id])
            assert entry(n, FLAT).id not in [m.entry_id for m in await b.search(FLAT, data[n], 3)]
        inline_before = b.inline_searches
        await b.settle()
        await b.search(FLAT, data[0], 1)
        assert b.inline_searches == inline_before + 1  # once idle, searches run inline again
    finally:
        await b.aclose()


async def test_large_flat_scopes_and_a_zero_limit_stay_on_the_index_thread() -> None:
    data = vectors(120, seed=4)
    for options, inline in ((IndexOptions(inline_search_limit=100), 0), (IndexOptions(inline_search_limit=0), 0),
                            (IndexOptions(inline_search_limit=120), 5)):
        b = EmbeddedBackend(dimension=DIM, index_options=options)
        await b.start()
        try:
            for n in range(120):
                await b.put(entry(n, FLAT), data[n])
            await b.settle()
            for query in data[:5]:
                assert (await b.search(FLAT, query, 1))[0].similarity == pytest.approx(1.0, abs=1e-5)
            assert b.inline_searches == inline
        finally:
            await b.aclose()
