"""The real server on 127.0.0.1 with the real model, driven through the Python client and raw stubs."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cachesvc.app import App
from cachesvc.clock import ManualClock
from cachesvc.config import Settings
from cachesvc.records import ScopeKey
from cachesvc_client import AsyncCacheClient, NotFoundError, ResourceExhausted, Scope, Unauthenticated
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc
from tests.conftest import CountingEmbedder

PROMPT = "How do I cancel my subscription?"
PARAPHRASE = "How can I cancel my subscription?"
UNRELATED = "What is the boiling point of water at sea level?"

StartApp = Callable[..., Any]


@pytest.fixture
async def app(start_app: StartApp) -> App:
    app: App = await start_app()
    return app


@pytest.fixture
async def client(app: App) -> AsyncIterator[AsyncCacheClient]:
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as c:
        yield c


@pytest.fixture
async def stub(app: App) -> AsyncIterator[pb_grpc.SemanticCacheStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.SemanticCacheStub(channel)


async def test_paraphrase_hits_and_unrelated_misses(client: AsyncCacheClient) -> None:
    stored = await client.store(PROMPT, "Open Settings > Billing > Cancel.")
    hit = await client.lookup(PARAPHRASE)
    assert hit.hit and not hit.exact
    assert hit.entry is not None and hit.entry.id == stored.id
    assert hit.completion == "Open Settings > Billing > Cancel."
    assert Settings().default_threshold <= hit.similarity < 1.0
    assert hit.timings.embed_ms > 0

    miss = await client.lookup(UNRELATED)
    assert not miss.hit and miss.entry is None
    assert miss.similarity < 0.5
    assert miss.min_similarity == pytest.approx(Settings().default_threshold)


async def test_miss_reports_nearest_and_explains_candidates(client: AsyncCacheClient) -> None:
    stored = await client.store(PROMPT, "answer")
    miss = await client.lookup("How do I cancel my gym membership?", min_similarity=0.99, explain=True)
    assert not miss.hit
    assert miss.nearest_id == stored.id
    assert 0 < miss.similarity < 0.99
    assert [c.entry_id for c in miss.candidates] == [stored.id]
    assert miss.candidates[0].outcome.name == "BELOW_THRESHOLD"


async def test_empty_scope_misses_with_zero_similarity(client: AsyncCacheClient) -> None:
    miss = await client.lookup(PROMPT)
    assert not miss.hit and miss.similarity == 0.0 and miss.nearest_id is None


async def test_exact_path_hits_without_embedding(app: App, client: AsyncCacheClient,
                                                 counting_embedder: CountingEmbedder) -> None:
    await client.store(PROMPT, "answer")
    before = counting_embedder.calls
    hit = await client.lookup("  How do I   cancel my subscription?\n")  # same after normalisation
    assert hit.hit and hit.exact and hit.similarity == 1.0
    assert counting_embedder.calls == before
    case_changed = await client.lookup(PROMPT.upper())
    assert not case_changed.exact  # case is kept: it can change meaning


async def test_store_after_lookup_miss_embeds_once(client: AsyncCacheClient,
                                                   counting_embedder: CountingEmbedder) -> None:
    prompt = "Which vaccines does a puppy need in its first year?"
    assert not (await client.lookup(prompt)).hit
    await client.store(prompt, "answer")
    assert counting_embedder.texts.count(prompt) == 1


async def test_store_replaces_same_normalised_prompt(client: AsyncCacheClient) -> None:
    first = await client.store(PROMPT, "old")
    second = await client.store(PROMPT + "  ", "new")
    assert second.replaced and not first.replaced
    hit = await client.lookup(PROMPT)
    assert hit.completion == "new" and hit.entry is not None and hit.entry.id == second.id
    assert (await client.stats()).total.entries == 1


@pytest.mark.parametrize("field", ["namespace", "model", "context"])
async def test_scopes_are_isolated(client: AsyncCacheClient, field: str) -> None:
    mine = Scope(**{field: "a"})
    theirs = Scope(**{field: "b"})
    await client.store(PROMPT, "for a", scope=mine)
    for prompt in (PROMPT, PARAPHRASE):
        result = await client.lookup(prompt, scope=theirs, min_similarity=0.0)
        assert not result.hit and result.nearest_id is None
    assert (await client.lookup(PROMPT, scope=mine)).completion == "for a"


async def test_empty_namespace_is_default(client: AsyncCacheClient) -> None:
    await client.store(PROMPT, "answer", scope=Scope(namespace=""))
    assert (await client.lookup(PROMPT, scope=Scope(namespace="default"))).hit


async def test_request_log_names_the_scope_entries_live_in(stub: pb_grpc.SemanticCacheStub,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """An empty namespace is the default one: the log line of a store and of a lookup both name that scope,
    whichever spelling the caller used, so a scope's calls can be found by its digest."""
    default_scope = ScopeKey(tenant="default", namespace="default").digest
    with caplog.at_level(logging.INFO, logger="cachesvc.requests"):
        await stub.Store(pb.StoreRequest(scope=pb.Scope(), prompt=PROMPT, completion="a"))
        await stub.Lookup(pb.LookupRequest(scope=pb.Scope(namespace=""), prompt=PROMPT))
        await stub.Lookup(pb.LookupRequest(scope=pb.Scope(namespace="default"), prompt=PARAPHRASE))
        await stub.ReleaseFill(pb.ReleaseFillRequest(scope=pb.Scope(), prompt=PROMPT, fill_token="not-held"))
        for _ in range(100):  # the line is written once the reply is on its way
            if len([r for r in caplog.records if r.name == "cachesvc.requests"]) == 4:
                break
            await asyncio.sleep(0.01)
    lines = [r.fields for r in caplog.records if r.name == "cachesvc.requests"]  # type: ignore[attr-defined]
    assert [(f["method"], f["scope"]) for f in lines] == [("Store", default_scope), ("Lookup", default_scope),
                                                          ("Lookup", default_scope), ("ReleaseFill", default_scope)]
    assert [f.get("outcome") for f in lines] == [None, "exact", "semantic", None]
    assert 0 <= lines[2]["queue_ms"] <= lines[2]["embed_ms"]  # the semantic lookup says how long it queued


async def test_every_call_is_counted_in_the_request_histogram_once_answered(
        app: App, stub: pb_grpc.SemanticCacheStub) -> None:
    """The histogram is observed after the reply has left, but for every call, with its method and code."""
    def count(method: str, code: str) -> float:
        value = app.metrics.registry.get_sample_value(
            "cachesvc_request_seconds_count", {"method": method, "code": code})
        return value or 0.0

    await stub.Store(pb.StoreRequest(scope=pb.Scope(), prompt=PROMPT, completion="a"))
    for _ in range(3):
        await stub.Lookup(pb.LookupRequest(scope=pb.Scope(), prompt=PROMPT))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Lookup(pb.LookupRequest(scope=pb.Scope(), prompt=""))
    expected = {("Store", "OK"): 1, ("Lookup", "OK"): 3, ("Lookup", "INVALID_ARGUMENT"): 1}
    for _ in range(100):
        if all(count(*key) == n for key, n in expected.items()):
            break
        await asyncio.sleep(0.01)
    assert {key: count(*key) for key in expected} == expected


async def test_a_failing_request_log_costs_no_call_its_count(app: App, stub: pb_grpc.SemanticCacheStub,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Calls answered together are accounted for together: a log line that cannot be written (here a filter that
    raises) must not lose the histogram counts of the calls beside it."""
    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("broken filter")

    requests = logging.getLogger("cachesvc.requests")
    broken = Broken()
    requests.addFilter(broken)
    try:
        caplog.set_level(logging.INFO, logger="cachesvc.requests")
        await asyncio.gather(*(stub.Lookup(pb.LookupRequest(scope=pb.Scope(), prompt=f"{PROMPT} {i}"))
                               for i in range(5)))
        for _ in range(100):
            count = app.metrics.registry.get_sample_value(
                "cachesvc_request_seconds_count", {"method": "Lookup", "code": "OK"})
            if count == 5:
                break
            await asyncio.sleep(0.01)
    finally:
        requests.removeFilter(broken)
    assert count == 5


async def test_tenants_are_isolated_and_keys_required(start_app: StartApp) -> None:
    app = await start_app(api_keys={"key-a": "tenant-a", "key-b": "tenant-b"})
    target = f"127.0.0.1:{app.port}"
    async with AsyncCacheClient(target, api_key="key-a") as a, AsyncCacheClient(target, api_key="key-b") as b:
        stored = await a.store(PROMPT, "tenant a's answer")
        result = await b.lookup(PROMPT, min_similarity=0.0)
        assert not result.hit and result.nearest_id is None
        with pytest.raises(NotFoundError):
            await b.delete(stored.id)  # another tenant's id looks exactly like a missing one
        assert (await b.stats()).total.entries == 0
        assert (await a.lookup(PROMPT)).hit
    async with AsyncCacheClient(target) as anonymous, AsyncCacheClient(target, api_key="wrong") as wrong:
        with pytest.raises(Unauthenticated):
            await anonymous.lookup(PROMPT)
        with pytest.raises(Unauthenticated):
            await wrong.lookup(PROMPT)


async def test_per_request_threshold(start_app: StartApp) -> None:
    app = await start_app(verifier="off")  # the plain threshold: at 0 the nearest entry is served, whatever it is
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        await client.store(PROMPT, "answer")
        assert not (await client.lookup(PARAPHRASE, min_similarity=1.0)).hit
        nearest = await client.lookup(UNRELATED, min_similarity=0.0)
        assert nearest.hit and nearest.min_similarity == 0.0


async def test_ttl_expiry_with_injected_clock(start_app: StartApp) -> None:
    clock = ManualClock()
    # No verifier: at threshold 0 the next live candidate is served, whatever it is.
    app = await start_app(clock=clock, default_ttl=100.0, sweep_interval=3600.0, verifier="off")
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        short = await client.store(PROMPT, "short", ttl_seconds=10)
        default = await client.store(UNRELATED, "default ttl")
        forever = await client.store("Name a prime number.", "7", ttl_seconds=0)
        assert short.expires_at is not None and default.expires_at is not None and forever.expires_at is None
        assert (default.expires_at - short.expires_at).total_seconds() == pytest.approx(90)

        clock.advance(10)  # expired, and the sweeper has not run: never served all the same
        assert not (await client.lookup(PROMPT)).hit
        explained = await client.lookup(PARAPHRASE, min_similarity=0.0, explain=True)
        assert (explained.candidates[0].entry_id, explained.candidates[0].outcome.name) == (short.id, "EXPIRED")
        assert explained.entry is not None and explained.entry.id != short.id
        assert (await client.lookup(UNRELATED)).hit

        assert app.service is not None
        assert await app.service.sweep_expired() == 1
        clock.advance(1000)
        assert await app.service.sweep_expired() == 1
        stats = await client.stats()
        assert stats.total.ttl_evictions == 2 and stats.total.entries == 1
        assert (await client.lookup("Name a prime number.")).hit


async def test_capacity_evicts_least_recently_hit(start_app: StartApp) -> None:
    app = await start_app(max_entries=3)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        prompts = ["What is the capital of France?", "How tall is Mount Everest?", "Who wrote Hamlet?"]
        for p in prompts:
            await client.store(p, f"answer to {p}")
        assert (await client.lookup(prompts[0])).hit  # now the second is least recently used
        await client.store("What is the speed of light?", "c")
        stats = await client.stats()
        assert stats.total.entries == 3 and stats.total.capacity_evictions == 1
        assert not (await client.lookup(prompts[1], min_similarity=0.99)).hit
        for p in (prompts[0], prompts[2], "What is the speed of light?"):
            assert (await client.lookup(p)).hit


async def test_byte_budget_holds(start_app: StartApp) -> None:
    app = await start_app(max_bytes=20_000)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        for i in range(30):
            await client.store(f"Question number {i} about topic {i * 7}", "x" * 500)
        stats = await client.stats()
        assert 0 < stats.total.bytes <= 20_000
        assert stats.total.capacity_evictions == 30 - stats.total.entries
        assert (await client.lookup("Question number 29 about topic 203")).exact



async def test_one_large_store_evicts_as_many_old_entries_as_its_size_needs(start_app: StartApp) -> None:
    app = await start_app(max_bytes=100_000)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        for i in range(24):
            await client.store(f"Small question {i} on subject {i * 3}", "short answer")
        before = await client.stats()
        assert before.total.capacity_evictions == 0
        await client.store("One very long question", "y" * 85_000)
        stats = await client.stats()
        assert 0 < stats.total.bytes <= 100_000
        evicted = stats.total.capacity_evictions
        assert evicted > 16 and stats.total.entries == 24 + 1 - evicted  # more than one batch of the oldest
        assert (await client.lookup("One very long question")).exact
        assert (await client.lookup("Small question 23 on subject 69")).exact
        assert not (await client.lookup("Small question 0 on subject 0", min_similarity=0.999)).hit

async def test_delete_by_id_and_by_scope(client: AsyncCacheClient) -> None:
    one = await client.store(PROMPT, "a", scope=Scope(namespace="n", model="m1"))
    await client.store(PROMPT, "b", scope=Scope(namespace="n", model="m2"))
    await client.store(PROMPT, "c", scope=Scope(namespace="n", model="m2", context="k"))
    await client.store(PROMPT, "d", scope=Scope(namespace="other"))
    assert await client.delete(one.id) == 1
    with pytest.raises(NotFoundError):
        await client.delete(one.id)
    assert await client.delete_scope("n", model="m2", context="k") == 1
    assert await client.delete_scope("n") == 1
    stats = await client.stats()
    assert stats.total.entries == 1 and [n.namespace for n in stats.namespaces if n.entries] == ["other"]


async def test_stats_counters(client: AsyncCacheClient) -> None:
    await client.store(PROMPT, "a", scope=Scope(namespace="s"))
    await client.lookup(PROMPT, scope=Scope(namespace="s"))
    await client.lookup(PARAPHRASE, scope=Scope(namespace="s"))
    await client.lookup(UNRELATED, scope=Scope(namespace="s"))
    stats = await client.stats("s")
    (s,) = stats.namespaces
    assert (s.namespace, s.entries, s.lookups, s.hits, s.exact_hits, s.semantic_hits, s.stores) == \
        ("s", 1, 3, 2, 1, 1, 1)
    assert s.bytes > 384 * 4


async def test_health_and_reflection(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="cachesvc.v1.SemanticCache"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def reflect() -> tuple[set[str], set[str]]:
        # The reflection client is synchronous; run it off the loop that serves the server.
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as sync_channel:
            database = ProtoReflectionDescriptorDatabase(sync_channel)
            services = set(database.get_services())
            found = database.FindFileContainingSymbol("cachesvc.v1.LookupRequest")
            fields = {f.name for m in found.message_type if m.name == "LookupRequest" for f in m.field}
            return services, fields

    services, fields = await asyncio.to_thread(reflect)
    assert {"cachesvc.v1.SemanticCache", "grpc.health.v1.Health"} <= services
    assert "min_similarity" in fields


@pytest.mark.parametrize(
    ("request_message", "method", "field"),
    [
        (pb.LookupRequest(), "Lookup", "prompt"),
        (pb.LookupRequest(prompt="   \n\t"), "Lookup", "prompt"),
        (pb.LookupRequest(prompt="x" * (32 * 1024 + 1)), "Lookup", "prompt"),
        (pb.LookupRequest(prompt="hi", min_similarity=1.5), "Lookup", "min_similarity"),
        (pb.LookupRequest(prompt="hi", min_similarity=-0.1), "Lookup", "min_similarity"),
        (pb.LookupRequest(prompt="hi", min_similarity=float("nan")), "Lookup", "min_similarity"),
        (pb.LookupRequest(prompt="hi", scope=pb.Scope(model="m" * 2000)), "Lookup", "scope.model"),
        (pb.StoreRequest(completion="c"), "Store", "prompt"),
        (pb.StoreRequest(prompt="p", completion="c" * (1024 * 1024 + 1)), "Store", "completion"),
        (pb.StoreRequest(prompt="p", completion="c", metadata={"k": "v" * 20_000}), "Store", "metadata"),
        (pb.StoreRequest(prompt="p", completion="c", ttl_seconds=-5), "Store", "ttl_seconds"),
        (pb.DeleteRequest(), "Delete", "target"),
        (pb.DeleteRequest(id=""), "Delete", "id"),
    ],
)
async def test_bad_input_is_invalid_argument(stub: pb_grpc.SemanticCacheStub, request_message: Any, method: str,
                                             field: str, counting_embedder: CountingEmbedder) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")
    assert counting_embedder.calls == 0  # nothing was embedded for a bad request


async def test_unknown_id_is_not_found(stub: pb_grpc.SemanticCacheStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Delete(pb.DeleteRequest(id="no-such-entry"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-entry" in caught.value.details()


async def test_internal_error_is_opaque_and_server_survives(app: App, stub: pb_grpc.SemanticCacheStub,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert app.service is not None

    async def broken(_request: object) -> None:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(app.service, "lookup", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Lookup(pb.LookupRequest(prompt="hi"), metadata=[("x-request-id", "req-42")])
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error (request id req-42)"
    monkeypatch.undo()
    assert not (await stub.Lookup(pb.LookupRequest(prompt="hi"))).hit


async def test_model_failure_reaches_caller_as_internal(app: App, stub: pb_grpc.SemanticCacheStub,
                                                        counting_embedder: CountingEmbedder) -> None:
    counting_embedder.fail_on = lambda text: "explode" in text
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Lookup(pb.LookupRequest(prompt="please explode"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in caught.value.details()
    assert not (await stub.Lookup(pb.LookupRequest(prompt="a normal prompt"))).hit


async def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


async def _one_running_one_queued(app: App, client: AsyncCacheClient,
                                  embedder: CountingEmbedder) -> tuple[asyncio.Task[Any], asyncio.Task[Any]]:
    """Holds the only model worker on a first lookup and queues a second behind it (release: `embedder.gate`)."""
    embedder.gate = threading.Event()
    running = asyncio.create_task(client.lookup("first prompt"))
    await asyncio.to_thread(embedder.entered.wait, 10)
    queued = asyncio.create_task(client.lookup("second prompt"))
    assert app.batcher is not None
    batcher = app.batcher
    await _wait_until(lambda: batcher.queue_depth == 1, "the second prompt is queued")
    return running, queued


async def test_overload_is_resource_exhausted(start_app: StartApp, counting_embedder: CountingEmbedder) -> None:
    app = await start_app(max_queue=1, embed_workers=1)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        running, queued = await _one_running_one_queued(app, client, counting_embedder)
        with pytest.raises(ResourceExhausted):
            await client.lookup("third prompt")
        counting_embedder.gate.set()
        assert not (await running).hit and not (await queued).hit


async def test_a_lookup_tells_how_long_its_prompt_queued_for_the_model(start_app: StartApp,
                                                                        counting_embedder: CountingEmbedder) -> None:
    app = await start_app(embed_workers=1)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        running, queued = await _one_running_one_queued(app, client, counting_embedder)
        seen_queued = time.perf_counter()
        await asyncio.sleep(0.02)  # holds the model longer, so the wait checked below is not a trivial one
        released = time.perf_counter()
        counting_embedder.gate.set()
        first, second = await running, await queued
    # The second prompt waited at least as long as this test held the model after seeing it queued.
    assert second.timings.queue_ms >= (released - seen_queued) * 1000
    assert second.timings.queue_ms < second.timings.embed_ms  # its own model run is the rest of the stage
    assert first.timings.queue_ms < second.timings.queue_ms


async def test_graceful_shutdown_drains_in_flight_calls(start_app: StartApp,
                                                        counting_embedder: CountingEmbedder) -> None:
    app = await start_app()
    counting_embedder.gate = threading.Event()
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        in_flight = asyncio.create_task(client.store(PROMPT, "answer"))
        await asyncio.to_thread(counting_embedder.entered.wait, 10)
        closing = asyncio.create_task(app.aclose())
        await asyncio.sleep(0)  # let shutdown begin while the store is held inside the model
        counting_embedder.gate.set()
        stored = await in_flight
        await closing
        assert stored.id and not stored.replaced


async def test_concurrent_mixed_callers_leave_consistent_state(client: AsyncCacheClient) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # Unrelated topics, so that any semantic hit between them would be a wrong answer.
    topics = [
        "What is the capital of Australia?", "How do I bake sourdough bread?", "Explain the rules of chess.",
        "Who painted the Mona Lisa?", "How many moons does Jupiter have?", "Write a haiku about autumn.",
        "What causes inflation in an economy?", "How do I reverse a linked list in C?",
        "What are the symptoms of dehydration?", "Translate 'good morning' into Japanese.",
        "How does a refrigerator keep food cold?", "Recommend a beginner running plan.",
        "What is the difference between TCP and UDP?", "How do vaccines train the immune system?",
        "Summarise the plot of Moby-Dick.", "How should I water a cactus?",
    ]

    async def caller(n: int) -> tuple[str, str]:
        topic = topics[n % len(topics)]
        if rng.random() < 0.5:
            await client.store(topic, f"answer {n % len(topics)}", scope=Scope(namespace=f"ns{n % 4}"))
        result = await client.lookup(topic, scope=Scope(namespace=f"ns{n % 4}"))
        if result.hit:  # whatever is served must be the answer of that very topic
            assert result.completion == f"answer {n % len(topics)}", f"seed {seed}"
        return topic, f"ns{n % 4}"

    pairs = await asyncio.gather(*(caller(n) for n in range(64)))
    stats = await client.stats()
    assert stats.total.lookups == 64
    expected_entries = 0
    for namespace in {ns for _, ns in pairs}:
        for topic in {t for t, ns in pairs if ns == namespace}:
            result = await client.lookup(topic, scope=Scope(namespace=namespace))
            expected_entries += result.exact
    assert (await client.stats()).total.entries == expected_entries, f"seed {seed}"
