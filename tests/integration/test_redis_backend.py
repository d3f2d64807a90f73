"""What only the Redis backend has: model binding in Redis, Redis' own eviction, errors of an unreachable Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from cachesvc.backends.persistence import ModelIdentity
from cachesvc.backends.redis import codec
from cachesvc.backends.redis.backend import ModelMismatch, RedisBackend
from cachesvc.backends.redis.connection import RedisOptions, connect
from cachesvc.clock import ManualClock
from cachesvc.core.service import CacheOptions, CacheService
from cachesvc.core.types import HitKind, Lookup, LookupResult, Write
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.errors import Overloaded, Unavailable
from cachesvc.records import Entry, EntryFeedback, FeedbackReport, ScopeKey
from tests.conftest import DirectEncoder, redis_stack

DIM = 384
MODEL = ModelIdentity(name="all-MiniLM-L6-v2 (fp32)", dimension=DIM, checksum="a" * 64)


def unit(rng: np.random.Generator) -> Any:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


async def _backend(url: str, prefix: str, model: ModelIdentity = MODEL, **options: Any) -> RedisBackend:
    opts = RedisOptions(url=url, prefix=prefix, **options)
    backend = RedisBackend(client=connect(opts), options=opts, dimension=model.dimension, model=model,
                           clock_now=ManualClock(start=time.time()).now)
    try:
        await backend.start()
    except BaseException:
        await _close(backend)
        raise
    return backend


async def _close(backend: RedisBackend) -> None:
    await backend.aclose()
    await backend._client.aclose()


async def test_a_replica_with_another_model_refuses_naming_the_fix(redis_server: Any, redis_prefix: str) -> None:
    first = await _backend(redis_server.url, redis_prefix)
    try:
        other = ModelIdentity(name="bge-small-en (fp32)", dimension=DIM, checksum="b" * 64)
        with pytest.raises(ModelMismatch) as caught:
            await _backend(redis_server.url, redis_prefix, model=other)
        message = str(caught.value)
        assert "all-MiniLM-L6-v2" in message and "bge-small-en" in message
        assert "--model-dir" in message and "--redis-prefix" in message
        # The same model (another replica) is welcome; another prefix is another cache.
        await _close(await _backend(redis_server.url, redis_prefix))
        await _close(await _backend(redis_server.url, redis_prefix + "x", model=other))
    finally:
        await _close(first)


async def test_an_unreachable_redis_is_unavailable_fast() -> None:
    port = redis_stack().free_port()  # nothing listens there
    opts = RedisOptions(url=f"redis://127.0.0.1:{port}/0", timeout=0.3)
    backend = RedisBackend(client=connect(opts), options=opts, dimension=DIM, model=MODEL, clock_now=time.time)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await backend.start()
    assert time.monotonic() - started < 3
    await _close(backend)


@pytest.fixture
def small_redis() -> Iterator[Any]:
    """A Redis with little memory and allkeys-lru, as a user who lets Redis evict would run it."""
    server = redis_stack().start_server()
    used = int(server.cli("MEMORY", "STATS").split("total.allocated\n")[1].split("\n")[0])
    server.cli("CONFIG", "SET", "maxmemory", str(used + 2 * 1024 * 1024))
    server.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    yield server
    server.close()


@pytest.fixture
async def evicting(small_redis: Any) -> AsyncIterator[RedisBackend]:
    backend = await _backend(small_redis.url, "ev", timeout=5.0)
    yield backend
    await _close(backend)


async def test_redis_eviction_never_serves_half_an_entry(evicting: RedisBackend, small_redis: Any) -> None:
    backend, rng = evicting, np.random.default_rng(7)
    scope = ScopeKey(tenant="acme")
    stored: list[tuple[Entry, Any]] = []
    now = time.time()
    for i in range(2000):  # ~7 MB of entries into ~2 MB
        vector = unit(rng)
        entry = Entry(id=backend.new_id(scope), scope=scope, prompt=f"prompt {i}", normalized_prompt=f"prompt {i}",
                      completion=f"completion {i}" * 20, metadata={"i": str(i)}, created_at=now, expires_at=None,
                      size_bytes=2000)
        await backend.put(entry, vector)
        stored.append((entry, vector))
    info = small_redis.cli("INFO", "stats")
    assert int(info.split("evicted_keys:")[1].split()[0]) > 0, "the test must make Redis evict"
    small_redis.cli("CONFIG", "SET", "maxmemory", "0")  # no more evictions while the survivors are checked

    client = backend._client
    present = 0
    for entry, vector in stored:
        has_entry = bool(await client.exists(backend.keys.entry(entry.id)))
        has_exact = bool(await client.exists(backend.keys.exact(scope, entry.normalized_prompt)))
        exact = await backend.get_exact(scope, entry.normalized_prompt)
        # The exact path serves the whole entry it points at, or nothing.
        assert exact is None or (exact.id == entry.id and exact.completion == entry.completion)
        assert (exact is not None) == (has_entry and has_exact)
        [match] = await backend.search(scope, vector, 1) or [None]
        if has_entry:
            # A surviving entry is still found by similarity, whole, whether or not its exact key survived.
            assert match is not None and match.entry_id == entry.id and match.entry == await backend.get(entry.id)
        else:
            assert match is None or match.entry_id != entry.id
        present += has_entry
    # The index holds exactly the hashes that survived (Redis drops an evicted hash from it at once).
    info_reply = codec.pairs(await backend._ft("FT.INFO", backend.keys.tag("acme")))
    assert int(float(info_reply[b"num_docs"])) == present
    assert 0 < present < len(stored)
    # Exact keys left pointing at evicted entries read as misses above, and were removed as they were read.
    for entry, _vector in stored:
        if await client.exists(backend.keys.exact(scope, entry.normalized_prompt)):
            assert await client.exists(backend.keys.entry(entry.id))


async def test_a_full_redis_without_eviction_refuses_stores_but_serves_lookups(redis_prefix: str) -> None:
    server = redis_stack().start_server()
    backend = None
    try:
        used = int(server.cli("MEMORY", "STATS").split("total.allocated\n")[1].split("\n")[0])
        server.cli("CONFIG", "SET", "maxmemory", str(used + 1024 * 1024))
        server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        backend = await _backend(server.url, redis_prefix, timeout=5.0)
        rng, scope, now = np.random.default_rng(3), ScopeKey(tenant="acme"), time.time()
        first = None
        with pytest.raises(Overloaded, match="maxmemory"):
            for i in range(5000):
                entry = Entry(id=backend.new_id(scope), scope=scope, prompt=f"p{i}", normalized_prompt=f"p{i}",
                              completion="c" * 500, metadata={}, created_at=now, expires_at=None, size_bytes=2000)
                await backend.put(entry, unit(rng))
                first = first or entry
        assert first is not None
        found = await backend.get_exact(scope, first.normalized_prompt)
        assert found is not None and found.id == first.id
    finally:
        if backend is not None:
            await _close(backend)
        server.close()


async def test_a_scope_that_is_most_of_its_index_is_searched_in_batches_with_the_same_answers(
        redis_server: Any, redis_prefix: str) -> None:
    backend = await _backend(redis_server.url, redis_prefix, timeout=5.0)
    try:
        rng, now = np.random.default_rng(11), time.time()
        big, small = ScopeKey(tenant="acme", namespace="big"), ScopeKey(tenant="acme", namespace="small")
        vectors = []
        for first in range(0, 1200, 100):
            puts = []
            for i in range(first, first + 100):
                scope = small if i % 40 == 0 else big
                vector = unit(rng)
                vectors.append((scope, vector))
                puts.append(backend.put(Entry(id=backend.new_id(scope), scope=scope, prompt=f"p{i}",
                                              normalized_prompt=f"p{i}", completion=f"c{i}", metadata={},
                                              created_at=now, expires_at=None, size_bytes=1), vector))
            await asyncio.gather(*puts)
        assert await backend._scope_dominates(big, backend.keys.tag("acme"))
        assert not await backend._scope_dominates(small, backend.keys.tag("acme"))
        for index in (1, 40, 41, 80, 999):  # each scope's own vector comes back first, from either policy
            scope, vector = vectors[index]
            [match] = await backend.search(scope, vector, 1)
            assert match.entry is not None and match.entry.prompt == f"p{index}"
            assert match.similarity == pytest.approx(1.0, abs=1e-5)
    finally:
        await _close(backend)


async def test_a_redis_that_lost_its_data_gets_its_index_back_on_the_next_store(redis_prefix: str) -> None:
    server = redis_stack().start_server()
    backend = None
    try:
        backend = await _backend(server.url, redis_prefix, timeout=5.0)
        rng, scope, now = np.random.default_rng(5), ScopeKey(tenant="acme"), time.time()

        def entry(i: int) -> Entry:
            return Entry(id=backend.new_id(scope), scope=scope, prompt=f"p{i}", normalized_prompt=f"p{i}",
                         completion=f"c{i}", metadata={}, created_at=now, expires_at=None, size_bytes=1)

        await backend.put(entry(0), unit(rng))
        server.cli("FLUSHALL")  # what a restart without persistence leaves, before any health check noticed
        second, vector = entry(1), unit(rng)
        await backend.put(second, vector)
        [match] = await backend.search(scope, vector, 1)
        assert match.entry_id == second.id
    finally:
        if backend is not None:
            await _close(backend)
        server.close()


async def test_feedback_written_by_the_codec_is_continued_by_the_script(redis_server: Any, redis_prefix: str) -> None:
    """The feedback field has two writers (codec.encode_feedback on a store, the Lua script on a report): each
    reads what the other wrote, and the result is what EntryFeedback.with_report makes."""
    backend = await _backend(redis_server.url, redis_prefix, timeout=5.0)
    try:
        scope, now = ScopeKey(tenant="acme"), time.time()
        earlier = [FeedbackReport(prompt="x", similarity=0.1 + 1e-15, correct=False),
                   FeedbackReport(prompt="y ✓", similarity=1.0, correct=True)]
        state = EntryFeedback()
        for i, report in enumerate(earlier):
            state = state.with_report(report, i + 1)
        e = Entry(id=backend.new_id(scope), scope=scope, prompt="p", normalized_prompt="p", completion="c",
                  metadata={}, created_at=now, expires_at=None, size_bytes=1, feedback=state)
        await backend.put(e, unit(np.random.default_rng(3)))
        stored = await backend.get(e.id)
        assert stored is not None and stored.feedback == state
        later = FeedbackReport(prompt="x", similarity=0.7, correct=False)
        assert await backend.add_feedback(stored, later)
        assert stored.feedback == state.with_report(later, 3)
        assert codec.decode_feedback(codec.encode_feedback(stored.feedback)) == stored.feedback
        assert codec.decode_feedback(b"") is None and codec.encode_feedback(None) == b""
    finally:
        await _close(backend)


async def test_a_semantic_miss_makes_one_round_trip_after_the_exact_key_and_a_hit_no_more_than_it_needs(
        redis_server: Any, redis_prefix: str, real_embedder: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts the commands each lookup sends (every call, scripts included, goes through execute_command): a miss
    reads the exact key and searches; a semantic hit also records the hit, whose script returns the reply's count."""
    backend = await _backend(redis_server.url, redis_prefix, timeout=5.0)
    service = CacheService(encoder=DirectEncoder(real_embedder), backend=backend, clock=ManualClock(start=time.time()),
                           options=CacheOptions(min_similarity=0.9, max_bytes=None))
    sent: list[tuple[Any, ...]] = []
    execute = backend._client.execute_command

    async def counted(*args: Any, **kwargs: Any) -> Any:
        sent.append(tuple(args[:2]))
        return await execute(*args, **kwargs)

    monkeypatch.setattr(backend._client, "execute_command", counted)
    try:
        scope = ScopeKey(tenant="acme", namespace="support")
        for prompt in ("How do I reset my password?", "What is your refund policy?", "Where is my order?"):
            await service.store(Write(scope=scope, prompt=prompt, completion="answer"))
        first = await service.lookup(Lookup(scope=scope, prompt="How can I reset my password?"))
        assert first.hit_kind is HitKind.SEMANTIC and first.entry is not None and first.entry.hit_count == 1
        await service.lookup(Lookup(scope=scope, prompt="Which planet is the largest?"))  # scripts are loaded now

        async def sent_by(prompt: str) -> tuple[LookupResult, list[tuple[Any, ...]]]:
            sent.clear()
            result = await service.lookup(Lookup(scope=scope, prompt=prompt))
            await backend.settle()  # hits recorded in the background count too
            return result, list(sent)

        index = backend.keys.index(backend.keys.tag("acme"))
        get_exact, search, touch = ("EVALSHA", backend._get_exact.sha), ("FT.SEARCH", index), ("EVALSHA",
                                                                                               backend._touch.sha)
        miss, commands = await sent_by("Which planet is the largest?")
        assert miss.hit_kind is HitKind.MISS and miss.nearest_id is not None  # the search did find candidates
        assert commands == [get_exact, search]
        hit, commands = await sent_by("How can I reset my password?")
        assert hit.hit_kind is HitKind.SEMANTIC and hit.entry is not None and hit.entry.hit_count == 2
        assert commands == [get_exact, search, touch]
        exact, commands = await sent_by("How do I reset my password?")
        assert exact.hit_kind is HitKind.EXACT and exact.entry is not None and exact.entry.hit_count == 3
        assert commands == [get_exact, touch]
    finally:
        await service.aclose()
        await _close(backend)
