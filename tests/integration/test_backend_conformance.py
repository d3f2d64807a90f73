"""The Backend contract, run on every backend (embedded, Redis, Redis Cluster), so that they cannot drift.

Backend-level checks use crafted unit vectors; service-level checks (CacheService over each backend, with the real
model and an injectable clock) cover what core promises on top: TTL never overrun, exact path, deletes, stats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from cachesvc.backends.embedded import EmbeddedBackend
from cachesvc.backends.leases import InMemoryFillLeases, LeaseKey
from cachesvc.backends.persistence import DataDir, ModelIdentity, PersistenceOptions
from cachesvc.backends.protocol import Backend, FeedbackStore
from cachesvc.backends.redis.backend import RedisBackend
from cachesvc.backends.redis.connection import RedisOptions, connect
from cachesvc.backends.redis.counters import RedisCounters
from cachesvc.clock import ManualClock
from cachesvc.core import service as service_module
from cachesvc.core.policy import TTLPolicy
from cachesvc.core.service import CacheOptions, CacheService
from cachesvc.core.types import (
    DeleteById,
    Feedback,
    FeedbackResult,
    HitKind,
    Lookup,
    LookupResult,
    RejectReason,
    Write,
)
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.embedding.protocol import Vector
from cachesvc.errors import NotFound, Unavailable
from cachesvc.records import (
    FEEDBACK_REPORTS_KEPT,
    Entry,
    EntryFeedback,
    FeedbackReport,
    ScopeKey,
    ScopeSelector,
    TokenUsage,
)
from tests.conftest import DirectEncoder

DIM = 384
KINDS = ["embedded", "redis", "redis-cluster"]
MODEL = ModelIdentity(name="test-model", dimension=DIM, checksum="0" * 64)


def unit(seed: int, near: Vector | None = None, noise: float = 0.0) -> Vector:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(DIM).astype(np.float32)
    if near is not None:
        v = near + noise * v / np.linalg.norm(v)
    return (v / np.linalg.norm(v)).astype(np.float32)


def entry(scope: ScopeKey, prompt: str, *, now: float, expires_at: float | None = None,
          backend: Backend, completion: str = "answer", metadata: dict[str, str] | None = None) -> Entry:
    return Entry(id=backend.new_id(scope), scope=scope, prompt=prompt, normalized_prompt=prompt.lower(),
                 completion=completion, metadata=metadata or {}, created_at=now, expires_at=expires_at,
                 size_bytes=2000 + len(prompt))


def redis_url(request: pytest.FixtureRequest, kind: str) -> tuple[str, bool]:
    if kind == "redis":
        return request.getfixturevalue("redis_server").url, False
    nodes = request.getfixturevalue("redis_cluster")
    return nodes[0].url, True


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


OpenBackend = Callable[[], Awaitable[Backend]]


@pytest.fixture(params=KINDS)
async def open_backend(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock,
                       redis_prefix: str) -> AsyncIterator[OpenBackend]:
    """Opens backends of one kind over one store (a data directory, or a Redis and prefix): a second one opened
    after the first is closed is that store's restart, or, on Redis, another replica's view."""
    kind = request.param
    opened: list[Any] = []

    async def open_() -> Backend:
        b: Any
        if kind == "embedded":
            b = EmbeddedBackend(dimension=DIM, data_dir=DataDir(PersistenceOptions(data_dir=tmp_path), MODEL),
                                clock_now=clock.now)
        else:
            url, cluster = redis_url(request, kind)
            options = RedisOptions(url=url, cluster=cluster, prefix=redis_prefix, timeout=5.0)
            b = RedisBackend(client=connect(options), options=options, dimension=DIM, model=MODEL,
                             clock_now=clock.now)
        opened.append(b)
        await b.start()
        return cast(Backend, b)

    yield open_
    for b in reversed(opened):
        await b.aclose()  # closing twice (a test that restarted it) does nothing more
        if isinstance(b, RedisBackend):
            await b._client.aclose()


@pytest.fixture
async def backend(open_backend: OpenBackend) -> Backend:
    return await open_backend()


SCOPE = ScopeKey(tenant="acme", namespace="support", model="gpt", context="c1")


async def test_put_get_and_exact_round_trip_every_field(backend: Backend, clock: ManualClock) -> None:
    e = entry(SCOPE, "Où est la gare? {x}", now=clock.now(), expires_at=clock.now() + 60, backend=backend,
              completion="Tout droit ✓", metadata={"source": "gpt-4", "ключ": "значение"})
    e.usage = TokenUsage(prompt_tokens=12, completion_tokens=34, cost_usd=0.0015)
    assert await backend.put(e, unit(1)) is None
    plain = entry(SCOPE, "no usage", now=clock.now(), backend=backend)
    await backend.put(plain, unit(2))
    got = await backend.get(e.id)
    exact = await backend.get_exact(SCOPE, e.normalized_prompt)
    (match,) = await backend.search(SCOPE, unit(1), 1)
    for found in (got, exact, match.entry):
        if found is match.entry and found is None:
            continue  # a backend may leave reading the entry to a get()
        assert found is not None
        assert (found.id, found.scope, found.prompt, found.normalized_prompt, found.completion, found.metadata,
                found.created_at, found.expires_at, found.size_bytes, found.usage) == (
            e.id, SCOPE, e.prompt, e.normalized_prompt, e.completion, e.metadata, e.created_at, e.expires_at,
            e.size_bytes, e.usage)
    got_plain = await backend.get(plain.id)
    assert got_plain is not None and got_plain.usage is None
    assert await backend.get_exact(SCOPE, "another prompt") is None
    assert await backend.get("0" * 48) is None and await backend.get("not-an-id") is None


async def test_a_store_replaces_the_same_prompt_in_the_same_scope_only(backend: Backend, clock: ManualClock) -> None:
    first = entry(SCOPE, "same", now=clock.now(), backend=backend, completion="one")
    other_scope = ScopeKey(tenant="acme", namespace="support", model="gpt", context="c2")
    elsewhere = entry(other_scope, "same", now=clock.now(), backend=backend, completion="elsewhere")
    await backend.put(first, unit(1))
    assert await backend.put(elsewhere, unit(1)) is None
    second = entry(SCOPE, "same", now=clock.now(), backend=backend, completion="two")
    replaced = await backend.put(second, unit(2))
    assert replaced is not None and replaced.id == first.id and replaced.completion == "one"
    assert await backend.get(first.id) is None
    exact = await backend.get_exact(SCOPE, "same")
    assert exact is not None and exact.id == second.id
    assert [m.entry_id for m in await backend.search(SCOPE, unit(1), 4)] == [second.id]
    kept = await backend.get_exact(other_scope, "same")
    assert kept is not None and kept.completion == "elsewhere"


async def test_search_ranks_by_cosine_inside_one_scope(backend: Backend, clock: ManualClock) -> None:
    base = unit(10)
    near, far = unit(11, base, 0.3), unit(12)
    e_near = entry(SCOPE, "near", now=clock.now(), backend=backend)
    e_far = entry(SCOPE, "far", now=clock.now(), backend=backend)
    await backend.put(e_near, near)
    await backend.put(e_far, far)
    # The same vector in another scope, another namespace and another tenant: never a candidate here.
    for i, scope in enumerate((ScopeKey(tenant="acme", namespace="support", model="gpt", context="c9"),
                               ScopeKey(tenant="acme", namespace="sales", model="gpt", context="c1"),
                               ScopeKey(tenant="umbrella", namespace="support", model="gpt", context="c1"))):
        await backend.put(entry(scope, f"twin {i}", now=clock.now(), backend=backend), base)
    matches = await backend.search(SCOPE, base, 4)
    assert [m.entry_id for m in matches] == [e_near.id, e_far.id]
    assert matches[0].similarity == pytest.approx(float(base @ near), abs=1e-4)
    assert matches[1].similarity == pytest.approx(float(base @ far), abs=1e-4)
    assert all(0.0 <= m.similarity <= 1.0 + 1e-6 or m.similarity < 0.2 for m in matches)
    assert [m.vector for m in matches] == [None, None]
    with_vectors = await backend.search(SCOPE, base, 1, with_vectors=True)
    assert with_vectors[0].vector is not None
    assert np.allclose(with_vectors[0].vector, near, atol=1e-6)
    assert await backend.search(ScopeKey(tenant="nobody"), base, 4) == []


async def test_delete_removes_entry_exact_key_and_candidate(backend: Backend, clock: ManualClock) -> None:
    a = entry(SCOPE, "a", now=clock.now(), backend=backend)
    b = entry(SCOPE, "b", now=clock.now(), backend=backend)
    await backend.put(a, unit(1))
    await backend.put(b, unit(2))
    deleted = await backend.delete([a.id, "f" * 48, a.id])
    assert [e.id for e in deleted] == [a.id]
    assert await backend.get(a.id) is None
    assert await backend.get_exact(SCOPE, "a") is None
    assert [m.entry_id for m in await backend.search(SCOPE, unit(1), 4)] == [b.id]
    assert await backend.delete([a.id]) == []


async def test_touch_counts_hits_and_never_resurrects(backend: Backend, clock: ManualClock) -> None:
    a = entry(SCOPE, "a", now=clock.now(), backend=backend)
    await backend.put(a, unit(1))
    clock.advance(5)
    await backend.touch(a, clock.now())
    await backend.touch(a, clock.now())
    await backend.settle()  # type: ignore[attr-defined]  # hits may be recorded in the background
    got = await backend.get(a.id)
    assert got is not None and got.hit_count == 2 and got.last_used_at == pytest.approx(clock.now())
    exact = await backend.get_exact(SCOPE, "a")
    assert exact is not None and exact.hit_count == 2
    # A search's entries need not carry their counts; the hit recorded on one it served reports them.
    [match] = await backend.search(SCOPE, unit(1), 1)
    served = match.entry or await backend.get(match.entry_id)
    assert served is not None
    clock.advance(1)
    await backend.touch(served, clock.now(), from_search=True)
    assert (served.hit_count, served.last_used_at) == (3, clock.now())
    got = await backend.get(a.id)
    assert got is not None and (got.hit_count, got.last_used_at) == (3, clock.now())
    await backend.delete([a.id])
    await backend.touch(a, clock.now())
    await backend.settle()  # type: ignore[attr-defined]
    assert await backend.get(a.id) is None
    assert await backend.search(SCOPE, unit(1), 4) == []


async def test_select_by_namespace_model_and_context(backend: Backend, clock: ManualClock) -> None:
    scopes = [ScopeKey(tenant="acme", namespace="support", model=m, context=c) for m in ("gpt", "claude")
              for c in ("c1", "c2")]
    scopes += [ScopeKey(tenant="acme", namespace="sales", model="gpt", context="c1"),
               ScopeKey(tenant="umbrella", namespace="support", model="gpt", context="c1")]
    ids = {}
    for i, scope in enumerate(scopes):
        e = entry(scope, f"p{i}", now=clock.now(), backend=backend)
        await backend.put(e, unit(i))
        ids[scope] = e.id

    async def selected(**kw: Any) -> set[str]:
        return {e.id for e in await backend.select(ScopeSelector(tenant="acme", namespace="support", **kw))}

    assert await selected() == {ids[s] for s in scopes[:4]}
    assert await selected(model="gpt") == {ids[s] for s in scopes[:2]}
    assert await selected(model="claude", context="c2") == {ids[scopes[3]]}
    assert await selected(context="c1") == {ids[scopes[0]], ids[scopes[2]]}


async def test_usage_by_namespace(backend: Backend, clock: ManualClock) -> None:
    for i in range(3):
        await backend.put(entry(SCOPE, f"p{i}", now=clock.now(), backend=backend), unit(i))
    sales = ScopeKey(tenant="acme", namespace="sales")
    await backend.put(entry(sales, "s", now=clock.now(), backend=backend), unit(9))
    usage = await backend.usage_by_namespace("acme")
    assert {ns: u.entries for ns, u in usage.items()} == {"support": 3, "sales": 1}
    assert usage["support"].bytes == sum(2000 + len(f"p{i}") for i in range(3))
    assert await backend.usage_by_namespace("nobody") == {}


async def test_a_backend_shared_between_replicas_bounds_its_own_capacity(backend: Backend) -> None:
    caps = backend.capabilities
    assert caps.semantic_search
    # Redis' own memory policy bounds a shared cache; core's budget only ever applies to a private one.
    assert caps.manages_capacity == caps.shared_between_replicas


def feedback_store(backend: Backend) -> FeedbackStore:
    assert isinstance(backend, EmbeddedBackend | RedisBackend)
    return backend


def folded(reports: list[FeedbackReport]) -> EntryFeedback:
    """What `EntryFeedback.with_report` makes of `reports`, in order (lsn aside: each backend numbers its own)."""
    state = EntryFeedback()
    for report in reports:
        state = state.with_report(report, 0)
    return state


def without_lsn(feedback: EntryFeedback | None) -> EntryFeedback | None:
    return None if feedback is None else dataclasses.replace(feedback, lsn=0)


async def test_feedback_is_kept_with_the_entry_exactly_as_with_report_makes_it(backend: Backend,
                                                                              clock: ManualClock) -> None:
    store = feedback_store(backend)
    e = entry(SCOPE, "reset my password", now=clock.now(), expires_at=clock.now() + 600, backend=backend)
    other = entry(SCOPE, "something else", now=clock.now(), backend=backend)
    await backend.put(e, unit(1))
    await backend.put(other, unit(2))
    rng = np.random.default_rng(7)
    prompts = ["a", "b", "c ✓ «ünïcode»", "d\x00e", "e" * 300, "reset my password"]
    # More than are kept, repeated wrong prompts, both verdicts, and similarities that need every bit of a double.
    reports = [FeedbackReport(prompt=prompts[int(rng.integers(len(prompts)))],
                              similarity=[1.0, 0.0, float(rng.random())][i % 3], correct=bool(rng.random() < 0.4))
               for i in range(FEEDBACK_REPORTS_KEPT + 20)]
    lsns = []
    for report in reports:
        assert await store.add_feedback(e, report)
        assert e.feedback is not None
        lsns.append(e.feedback.lsn)
    expected = folded(reports)
    assert len(expected.reports) == FEEDBACK_REPORTS_KEPT and expected.wrong_prompts and expected.right
    assert without_lsn(e.feedback) == expected  # the caller's entry holds the state after its report
    assert lsns == sorted(set(lsns))  # every report applied once, in order
    got = await backend.get(e.id)
    exact = await backend.get_exact(SCOPE, e.normalized_prompt)
    [match, _] = await backend.search(SCOPE, unit(1), 2)
    assert got is not None and exact is not None and match.entry_id == e.id
    for found in (got, exact, match.entry):  # core reads a candidate's feedback from whatever the search gave
        if found is not None:
            assert without_lsn(found.feedback) == expected
    other_found = await backend.get(other.id)
    assert other_found is not None and other_found.feedback is None
    vector = await store.vector_of(e.id)
    assert vector is not None and np.allclose(vector, unit(1), atol=1e-6)
    assert await store.vector_of(other.id) is not None
    if isinstance(backend, RedisBackend):
        # A report never touches the entry's expiry (HSET keeps a key's TTL).
        ttl = await backend._client.pttl(backend.keys.entry(e.id))
        assert 0 < ttl <= 600_000
        assert await backend._client.pttl(backend.keys.entry(other.id)) == -1


async def test_feedback_on_an_entry_that_is_gone_is_refused(backend: Backend, clock: ManualClock) -> None:
    store = feedback_store(backend)
    report = FeedbackReport(prompt="p", similarity=0.9, correct=False)
    deleted = entry(SCOPE, "deleted", now=clock.now(), backend=backend)
    replaced = entry(SCOPE, "replaced", now=clock.now(), backend=backend)
    await backend.put(deleted, unit(1))
    await backend.put(replaced, unit(2))
    await backend.delete([deleted.id])
    newer = entry(SCOPE, "replaced", now=clock.now(), backend=backend)
    await backend.put(newer, unit(3))
    assert not await store.add_feedback(deleted, report)
    assert not await store.add_feedback(replaced, report)
    assert await store.vector_of(deleted.id) is None and await store.vector_of("0" * 48) is None
    # Nothing was written for them (a report never recreates an entry), and the newer entry has no feedback.
    assert await backend.get(deleted.id) is None and await backend.get(replaced.id) is None
    assert [m.entry_id for m in await backend.search(SCOPE, unit(1), 4)] == [newer.id]
    found = await backend.get(newer.id)
    assert found is not None and found.feedback is None


async def test_reports_sent_at_once_are_all_counted(open_backend: OpenBackend, clock: ManualClock) -> None:
    first = await open_backend()
    # On Redis a second backend is another replica (its own connections); the embedded backend has one owner.
    second = await open_backend() if isinstance(first, RedisBackend) else first
    e = entry(SCOPE, "contended", now=clock.now(), backend=first)
    await first.put(e, unit(1))
    replicas = [(b, await b.get(e.id)) for b in (first, second)]
    sent = []
    for i in range(60):
        b, copy = replicas[i % 2]
        assert copy is not None
        report = FeedbackReport(prompt=f"q{i % 5}", similarity=0.9, correct=i % 3 == 0)
        sent.append(feedback_store(b).add_feedback(copy, report))
    assert all(await asyncio.gather(*sent))
    found = await first.get(e.id)
    assert found is not None and found.feedback is not None
    assert (found.feedback.wrong, found.feedback.right) == (40, 20)
    assert found.feedback.wrong_prompts == {f"q{i}" for i in range(5)}
    assert len(found.feedback.reports) == 60


# ---- CacheService over each backend: what core promises on top of the contract ---------------------------------


async def start_service(backend: Backend, clock: ManualClock, embedder: OnnxEmbedder,
                        counters: RedisCounters | None = None) -> tuple[CacheService, DirectEncoder]:
    encoder = DirectEncoder(embedder)
    svc = CacheService(encoder=encoder, backend=backend, clock=clock,
                       options=CacheOptions(min_similarity=0.9, max_bytes=None), shared_counters=counters,
                       feedback_store=feedback_store(backend))
    await svc.start()
    return svc, encoder


@pytest.fixture
async def service(backend: Backend, clock: ManualClock, real_embedder: OnnxEmbedder,
                  request: pytest.FixtureRequest) -> AsyncIterator[tuple[CacheService, DirectEncoder]]:
    counters = None
    if isinstance(backend, RedisBackend):
        counters = RedisCounters(client=backend._client, keys=backend.keys, timeout=5.0)
        await counters.start()
    svc, encoder = await start_service(backend, clock, real_embedder, counters)
    yield svc, encoder
    await svc.aclose()
    if counters is not None:
        await counters.aclose()


async def test_service_exact_semantic_ttl_delete_and_stats(service: tuple[CacheService, DirectEncoder],
                                                           clock: ManualClock) -> None:
    svc, encoder = service
    scope = ScopeKey(tenant="acme", namespace="support")
    stored = await svc.store(Write(scope=scope, prompt="How do I cancel my subscription?", completion="Billing",
                                   ttl=TTLPolicy.of(60)))
    encoder.calls = 0
    exact = await svc.lookup(Lookup(scope=scope, prompt="  How do I cancel\tmy subscription? "))
    assert exact.hit_kind is HitKind.EXACT and exact.entry is not None and exact.entry.id == stored.entry.id
    assert encoder.calls == 0  # the exact path never embeds
    semantic = await svc.lookup(Lookup(scope=scope, prompt="How can I cancel my subscription?"))
    assert semantic.hit_kind is HitKind.SEMANTIC and semantic.entry is not None
    assert semantic.entry.completion == "Billing" and 0.9 <= semantic.similarity < 1.0
    other_tenant = await svc.lookup(Lookup(scope=ScopeKey(tenant="umbrella", namespace="support"),
                                           prompt="How do I cancel my subscription?"))
    assert other_tenant.hit_kind is HitKind.MISS
    with pytest.raises(NotFound):
        await svc.delete(DeleteById(tenant="umbrella", entry_id=stored.entry.id))

    clock.advance(61)  # past the TTL: never served, whatever the store's own expiry has done yet
    for prompt in ("How do I cancel my subscription?", "How can I cancel my subscription?"):
        assert (await svc.lookup(Lookup(scope=scope, prompt=prompt))).hit_kind is HitKind.MISS

    again = await svc.store(Write(scope=scope, prompt="What is your refund policy?", completion="30 days"))
    assert await svc.delete(DeleteById(tenant="acme", entry_id=again.entry.id)) == 1
    assert (await svc.lookup(Lookup(scope=scope, prompt="What is your refund policy?"))).hit_kind is HitKind.MISS

    [stats] = await svc.stats("acme", "support")
    assert (stats.lookups, stats.exact_hits, stats.semantic_hits, stats.stores) == (5, 1, 1, 2)


async def test_service_answers_every_scope_while_it_forgets_checked_scopes(
        service: tuple[CacheService, DirectEncoder], monkeypatch: pytest.MonkeyPatch) -> None:
    """The service keeps a bounded set of checked scopes (with their digests); forgetting them changes no answer."""
    monkeypatch.setattr(service_module, "MAX_KNOWN_SCOPES", 3)
    svc, _encoder = service
    scopes = [ScopeKey(tenant=t, namespace=n, model="m") for t in ("acme", "umbrella") for n in ("a", "b", "")]
    for i, scope in enumerate(scopes):
        await svc.store(Write(scope=scope, prompt="Where is my order?", completion=f"answer {i}"))
    for _ in range(2):
        for i, scope in enumerate(scopes):
            found = await svc.lookup(Lookup(scope=scope, prompt="Where is my order?"))
            assert found.hit_kind is HitKind.EXACT and found.entry is not None
            assert found.entry.completion == f"answer {i}"
            assert found.scope is not None and found.scope.namespace == (scope.namespace or "default")
            assert len(svc._known_scopes) <= 3


STORED = "How do I reset my password?"
# all-MiniLM-L6-v2 cosines to STORED, measured by each test before it relies on their order.
MID = "How do I change my password?"  # ~0.87
STEPS = "What are the steps to reset my password?"  # ~0.94
PLEASE = "How do I reset my password please?"  # ~0.97
NEAR = "How can I reset my password?"  # ~0.99


async def test_a_hit_reports_every_hit_before_it_through_any_replica(
        open_backend: OpenBackend, clock: ManualClock, real_embedder: OnnxEmbedder) -> None:
    """The hit count in a lookup's reply, exact and semantic hits alternating between two replicas (one backend
    where a store has one server only)."""
    first = await open_backend()
    second = await open_backend() if first.capabilities.shared_between_replicas else first
    services = [(await start_service(b, clock, real_embedder))[0] for b in (first, second)]
    try:
        scope = ScopeKey(tenant="acme", namespace="support")
        stored = await services[0].store(Write(scope=scope, prompt=STORED, completion="Use the reset link."))
        prompts = (STORED, NEAR, NEAR, STORED, NEAR, STORED, STORED, NEAR)
        kinds, counts = [], []
        for i, prompt in enumerate(prompts):
            result = await services[i % 2].lookup(Lookup(scope=scope, prompt=prompt))
            assert result.entry is not None and result.entry.id == stored.entry.id
            kinds.append(result.hit_kind)
            counts.append(result.entry.hit_count)
            for b in (first, second):
                if hasattr(b, "settle"):
                    await b.settle()  # exact hits are recorded in the background: the next lookup reads them
        assert kinds == [HitKind.EXACT if p == STORED else HitKind.SEMANTIC for p in prompts]
        assert counts == list(range(1, 9))
        found = await second.get(stored.entry.id)
        assert found is not None and found.hit_count == 8
    finally:
        for svc in services:
            await svc.aclose()


async def test_service_feedback_stops_the_pair_lifts_the_threshold_then_stops_paraphrases(
        service: tuple[CacheService, DirectEncoder]) -> None:
    svc, _ = service
    scope = ScopeKey(tenant="acme", namespace="support")

    async def lookup(prompt: str) -> LookupResult:
        return await svc.lookup(Lookup(scope=scope, prompt=prompt, explain=True))

    async def report(prompt: str, entry_id: str, *, correct: bool = False, on: ScopeKey = scope) -> FeedbackResult:
        return await svc.feedback(Feedback(scope=on, prompt=prompt, entry_id=entry_id, correct=correct))

    stored = (await svc.store(Write(scope=scope, prompt=STORED, completion="Use the 'Forgot password' link."))).entry
    mid, steps, please, near = [(await lookup(p)).similarity for p in (MID, STEPS, PLEASE, NEAR)]
    assert mid < 0.9 <= steps < please < near < 1.0
    for prompt in (STEPS, PLEASE, NEAR):
        assert (await lookup(prompt)).hit_kind is HitKind.SEMANTIC

    result = await report(STEPS, stored.id)
    assert result.similarity == pytest.approx(steps, abs=1e-4)
    assert steps < result.entry_min_similarity <= steps + 1e-4 and result.serves_paraphrases
    refused = await lookup(STEPS)
    assert refused.hit_kind is HitKind.MISS and refused.rejected_reason is RejectReason.FEEDBACK
    assert (await lookup(PLEASE)).hit_kind is HitKind.SEMANTIC

    result = await report(PLEASE, stored.id)
    assert please < result.entry_min_similarity <= please + 1e-4 and result.serves_paraphrases
    assert (await lookup(PLEASE)).hit_kind is HitKind.MISS and (await lookup(NEAR)).hit_kind is HitKind.SEMANTIC
    result = await report(MID, stored.id)  # the third wrong report, none right: no paraphrase any more
    assert not result.serves_paraphrases
    refused = await lookup(NEAR)  # never reported, and above every reported similarity
    assert refused.hit_kind is HitKind.MISS and refused.rejected_reason is RejectReason.FEEDBACK
    assert (await lookup(STORED)).hit_kind is HitKind.EXACT  # exact repeats are still served

    # An exact pair reported wrong is not served either, by the exact path or by similarity.
    hours = (await svc.store(Write(scope=scope, prompt="What are your opening hours?", completion="9-5"))).entry
    assert (await lookup("What are your opening hours?")).hit_kind is HitKind.EXACT
    assert (await report("What are your opening hours?", hours.id)).similarity == 1.0
    refused = await lookup("What are your opening hours?")
    assert refused.hit_kind is HitKind.MISS and refused.rejected_reason is RejectReason.FEEDBACK

    # Another tenant's (or scope's) entry, and a deleted one, are not found; nothing changes for the owner.
    with pytest.raises(NotFound):
        await report(NEAR, hours.id, on=ScopeKey(tenant="umbrella", namespace="support"))
    with pytest.raises(NotFound):
        await report(NEAR, hours.id, on=ScopeKey(tenant="acme", namespace="sales"))
    owned = await svc.lookup(Lookup(scope=scope, prompt="What are your opening hours?"))
    assert owned.hit_kind is HitKind.MISS
    assert await svc.delete(DeleteById(tenant="acme", entry_id=hours.id)) == 1
    with pytest.raises(NotFound):
        await report("What are your opening hours?", hours.id)


async def test_service_feedback_survives_a_restart(open_backend: OpenBackend, clock: ManualClock,
                                                   real_embedder: OnnxEmbedder) -> None:
    scope = ScopeKey(tenant="acme", namespace="support")
    backend = await open_backend()
    svc, _ = await start_service(backend, clock, real_embedder)
    stored = (await svc.store(Write(scope=scope, prompt=STORED, completion="Use the link."))).entry
    assert (await svc.lookup(Lookup(scope=scope, prompt=STEPS))).hit_kind is HitKind.SEMANTIC
    await svc.feedback(Feedback(scope=scope, prompt=STEPS, entry_id=stored.id, correct=False))
    await svc.aclose()
    await backend.aclose()

    restarted = await open_backend()  # the embedded backend from its data directory; a Redis one from Redis
    svc, _ = await start_service(restarted, clock, real_embedder)
    try:
        again = await svc.lookup(Lookup(scope=scope, prompt=STEPS, explain=True))
        assert again.hit_kind is HitKind.MISS and again.rejected_reason is RejectReason.FEEDBACK
        assert (await svc.lookup(Lookup(scope=scope, prompt=NEAR))).hit_kind is HitKind.SEMANTIC
        result = await svc.feedback(Feedback(scope=scope, prompt=NEAR, entry_id=stored.id, correct=True))
        assert result.entry_min_similarity > again.similarity
        found = await restarted.get(stored.id)
        assert found is not None and found.feedback is not None
        assert (found.feedback.wrong, found.feedback.right, found.feedback.wrong_prompts) == (1, 1, {STEPS})
    finally:
        await svc.aclose()


class _LeasesThatCannotEnd(InMemoryFillLeases):
    async def filled(self, key: LeaseKey) -> None:
        raise Unavailable("the lease store did not answer")


async def test_a_store_is_acknowledged_even_when_its_fill_lease_cannot_be_ended(
        tmp_path: Path, clock: ManualClock, real_embedder: OnnxEmbedder) -> None:
    backend = EmbeddedBackend(dimension=DIM, data_dir=DataDir(PersistenceOptions(data_dir=tmp_path), MODEL),
                              clock_now=clock.now)
    await backend.start()
    svc = CacheService(encoder=DirectEncoder(real_embedder), backend=backend, clock=clock,
                       options=CacheOptions(min_similarity=0.9, max_bytes=None), leases=_LeasesThatCannotEnd())
    await svc.start()
    try:
        stored = await svc.store(Write(scope=SCOPE, prompt="What are your hours?", completion="9 to 5"))
        found = await svc.lookup(Lookup(scope=SCOPE, prompt="What are your hours?"))
        assert found.hit_kind is HitKind.EXACT and found.entry is not None and found.entry.id == stored.entry.id
    finally:
        await svc.aclose()
        await backend.aclose()
