"""Hostile and careless callers against the real server: malformed bytes, absurd numbers, invisible prompts,
oversized strings, abandoned calls and overload."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cachesvc.app import App
from cachesvc.records import Entry, ScopeKey
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc
from tests.conftest import CountingEmbedder

StartApp = Callable[..., Any]
SERVICE = "/cachesvc.v1.SemanticCache/"


@pytest.fixture
async def app(start_app: StartApp) -> App:
    app: App = await start_app()
    return app


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.SemanticCacheStub:
    return pb_grpc.SemanticCacheStub(channel)


async def call_raw(channel: grpc.aio.Channel, method: str, data: bytes) -> grpc.aio.AioRpcError | bytes:
    """Sends `data` as the request's bytes, exactly as given."""
    rpc = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    try:
        return bytes(await rpc(data, timeout=10))
    except grpc.aio.AioRpcError as error:
        return error


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payload shorter than 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


async def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.mark.parametrize("method", ["Lookup", "Store", "Delete", "Stats", "Feedback"])
@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x80", b"\x07"])
async def test_malformed_bytes_are_invalid_argument_without_a_traceback(
        channel: grpc.aio.Channel, method: str, data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        error = await call_raw(channel, method, data)
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeError" not in (error.details() or "") and "class" not in (error.details() or "")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@pytest.mark.parametrize(("method", "data", "field"), [
    ("Lookup", field_bytes(2, b"caf\xc3"), "prompt"),
    ("Lookup", field_bytes(1, field_bytes(1, b"\xff")), "scope.namespace"),
    ("Store", field_bytes(2, b"ok") + field_bytes(3, b"\xed\xa0\x80"), "completion"),
    ("Store", field_bytes(2, b"ok") + field_bytes(4, field_bytes(1, b"\xfe")), "metadata.key"),
    ("Delete", field_bytes(1, b"\xc0\xaf"), "id"),
    ("Stats", field_bytes(1, b"\x80"), "namespace"),
])
async def test_invalid_utf8_names_the_field(channel: grpc.aio.Channel, method: str, data: bytes, field: str) -> None:
    error = await call_raw(channel, method, data)
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"{field}: is not valid UTF-8"


async def test_malformed_requests_are_rejected_before_authentication(start_app: StartApp) -> None:
    app = await start_app(api_keys={"k1": "t1"})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        error = await call_raw(channel, "Lookup", b"\xff")
        assert isinstance(error, grpc.aio.AioRpcError)
        # nothing about tenants or keys in the answer, and no key checked for bytes that mean nothing
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "key" not in (error.details() or "").lower()


async def test_feedback_on_an_empty_request_names_the_field_not_unknown(stub: pb_grpc.SemanticCacheStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Feedback(pb.FeedbackRequest())
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("ttl", [300_000_000_000, 2**53, 2**63 - 1])
async def test_a_huge_ttl_is_rejected_at_the_edge_and_poisons_nothing(
        app: App, stub: pb_grpc.SemanticCacheStub, ttl: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Store(pb.StoreRequest(prompt="How tall is Everest?", completion="8849 m", ttl_seconds=ttl))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("ttl_seconds:")
    assert not (await stub.Lookup(pb.LookupRequest(prompt="How tall is Everest?"))).hit
    stats = await stub.Stats(pb.StatsRequest())
    assert stats.total.entries == 0 and stats.total.hits == 0


async def test_an_absurd_stored_expiry_is_served_not_internal(app: App, stub: pb_grpc.SemanticCacheStub,
                                                              counting_embedder: CountingEmbedder) -> None:
    """An entry written before TTLs were bounded (e.g. from an old data file) must still be readable."""
    assert app.backend is not None
    prompt = "How do I cancel my subscription?"
    vector = counting_embedder.embed([prompt])[0]
    entry = Entry(id="old-entry", scope=ScopeKey(tenant="default"), prompt=prompt, normalized_prompt=prompt,
                  completion="Settings > Billing", metadata={}, created_at=0.0, expires_at=1e12 + 1e6,
                  size_bytes=2000)
    await app.backend.put(entry, vector)
    exact = await stub.Lookup(pb.LookupRequest(prompt=prompt))
    semantic = await stub.Lookup(pb.LookupRequest(prompt="How can I cancel my subscription?"))
    assert exact.hit and exact.exact and semantic.hit
    assert exact.entry.expires_at.ToDatetime().year == 9999
    assert (await stub.Stats(pb.StatsRequest())).total.hits == 2


@pytest.mark.parametrize("prompt", ["\x00", "\u200b\u200b", "\ufeff", "\x01\x02\x1f", "\u0301", "\x00 \u200d \u2060"])
async def test_prompts_without_visible_text_are_rejected(stub: pb_grpc.SemanticCacheStub, prompt: str,
                                                         counting_embedder: CountingEmbedder) -> None:
    for call in (stub.Lookup(pb.LookupRequest(prompt=prompt)),
                 stub.Store(pb.StoreRequest(prompt=prompt, completion="c"))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("prompt:")
    assert counting_embedder.calls == 0


async def test_visible_text_with_combining_marks_and_symbols_is_accepted(stub: pb_grpc.SemanticCacheStub) -> None:
    for prompt in ("e\u0301", "\u2603", "42", "?", "\u4f60\u597d"):
        assert not (await stub.Lookup(pb.LookupRequest(prompt=prompt))).hit


async def test_delete_of_a_long_unknown_id_is_not_found_without_echoing_it(stub: pb_grpc.SemanticCacheStub) -> None:
    long_id = "x" * 16 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Delete(pb.DeleteRequest(id=long_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) < 200


@pytest.mark.parametrize("call", [
    lambda stub: stub.Stats(pb.StatsRequest(namespace="n" * (1 << 20))),
    lambda stub: stub.Delete(pb.DeleteRequest(scope=pb.ScopeSelector(namespace="n" * (1 << 20)))),
    lambda stub: stub.Delete(pb.DeleteRequest(scope=pb.ScopeSelector(namespace="n", context="c" * 5000))),
])
async def test_namespace_names_in_stats_and_delete_are_bounded(stub: pb_grpc.SemanticCacheStub,
                                                               call: Callable[[Any], Any]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("scope.") or caught.value.details().startswith("namespace")
    assert len(caught.value.details()) < 200


async def test_request_ids_are_sanitised_before_logging(stub: pb_grpc.SemanticCacheStub,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    # 4 KB: past grpc's 8 KB soft limit on metadata a call is refused at random, before the server sees it.
    forged = "abc outcome=exact code=OK " + "y" * 4000
    with caplog.at_level(logging.INFO, logger="cachesvc.requests"):
        await stub.Stats(pb.StatsRequest(), metadata=[("x-request-id", forged)])
        for _ in range(100):  # the line is written once the reply has left
            if any(r.name == "cachesvc.requests" for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    (record,) = [r for r in caplog.records if r.name == "cachesvc.requests"]
    request_id = record.fields["request_id"]  # type: ignore[attr-defined]
    assert len(request_id) <= 64 and " " not in request_id and "=" not in request_id.split("_")[0]
    assert "outcome=exact" not in record.getMessage() and "y" * 100 not in record.getMessage()


async def test_many_concurrent_calls_on_one_connection_are_all_answered(stub: pb_grpc.SemanticCacheStub) -> None:
    """Past grpc's own pending-call limit (1,000) calls used to be cancelled at random; now every call is served
    or, past the server's concurrency limit, answered RESOURCE_EXHAUSTED."""
    calls = [stub.Stats(pb.StatsRequest(namespace=f"n{i}"), timeout=60) for i in range(1500)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    codes = {o.code() if isinstance(o, grpc.aio.AioRpcError) else type(o) for o in outcomes}
    assert codes <= {pb.StatsResponse, grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_abandoned_lookups_never_reach_the_model(start_app: StartApp,
                                                      counting_embedder: CountingEmbedder) -> None:
    app = await start_app(embed_workers=1)
    assert app.batcher is not None
    batcher = app.batcher
    counting_embedder.gate = threading.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        running = asyncio.ensure_future(stub.Lookup(pb.LookupRequest(prompt="holds the only worker")))
        await asyncio.to_thread(counting_embedder.entered.wait, 10)
        abandoned = [stub.Lookup(pb.LookupRequest(prompt=f"nobody waits for answer {i}"), timeout=0.3)
                     for i in range(20)]
        outcomes = await asyncio.gather(*abandoned, return_exceptions=True)
        assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                   for o in outcomes)
        await _wait_until(lambda: batcher.queue_depth == 0, "the abandoned items leave the queue")
        counting_embedder.gate.set()
        await running
        assert not (await stub.Lookup(pb.LookupRequest(prompt="a fresh caller"))).hit
    assert counting_embedder.texts == ["holds the only worker", "a fresh caller"]
    assert batcher.items_abandoned == 20


async def test_lookups_that_cannot_start_within_the_queueing_budget_are_resource_exhausted(
        start_app: StartApp, counting_embedder: CountingEmbedder) -> None:
    app = await start_app(embed_workers=1, max_queue_ms=20.0)
    assert app.batcher is not None
    batcher = app.batcher
    counting_embedder.gate = threading.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        running = asyncio.ensure_future(stub.Lookup(pb.LookupRequest(prompt="holds the only worker")))
        await asyncio.to_thread(counting_embedder.entered.wait, 10)
        late = asyncio.ensure_future(stub.Lookup(pb.LookupRequest(prompt="waits too long")))
        await _wait_until(lambda: batcher.queue_depth == 1, "the second lookup is queued")
        await asyncio.sleep(0.05)  # longer than the 20 ms budget: the point of this test is wall-clock time
        counting_embedder.gate.set()
        await running
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await late
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert counting_embedder.texts == ["holds the only worker"]
