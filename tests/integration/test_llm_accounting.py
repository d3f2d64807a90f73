"""Usage, tokens and cost saved, and single-flight fill leases, through the real server."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cachesvc.app import App
from cachesvc.backends.leases import InMemoryFillLeases, LeaseKey
from cachesvc.core.normalize import normalize_prompt
from cachesvc.records import ScopeKey
from cachesvc_client import AsyncCacheClient, Scope, Usage
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

PROMPT = "How do I reset my password?"
SCOPE = Scope(namespace="support", model="m")

StartApp = Callable[..., Any]


@pytest.fixture
async def app(start_app: StartApp) -> App:
    app: App = await start_app(metrics_port=0)
    return app


async def until_waiting(app: App, prompt: str = PROMPT, scope: Scope = SCOPE) -> None:
    """Returns once a lookup is waiting on the lease of `prompt` (the server runs in this event loop)."""
    assert app.service is not None and isinstance(app.service._leases, InMemoryFillLeases)
    key = LeaseKey.of(ScopeKey(tenant="default", namespace=scope.namespace, model=scope.model,
                               context=scope.context), normalize_prompt(prompt))
    for _ in range(1000):
        if app.service._leases.waiters(key):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no lookup started waiting")


@pytest.fixture
async def client(app: App) -> AsyncIterator[AsyncCacheClient]:
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as c:
        yield c


async def test_hits_add_the_entrys_tokens_and_cost_to_the_namespace(app: App, client: AsyncCacheClient) -> None:
    await client.store(PROMPT, "Use the link.", scope=SCOPE,
                       usage=Usage(prompt_tokens=100, completion_tokens=50, cost_usd=0.25))
    await client.store("What are your hours?", "9 to 5.", scope=SCOPE)  # no usage: saves nothing countable
    for _ in range(3):
        found = await client.lookup(PROMPT, scope=SCOPE)
        assert found.hit and found.entry is not None
        assert found.entry.usage == Usage(prompt_tokens=100, completion_tokens=50, cost_usd=0.25)
    assert (await client.lookup("What are your hours?", scope=SCOPE)).hit
    await client.lookup("Something else entirely about llamas", scope=SCOPE)  # a miss saves nothing

    stats = (await client.stats("support")).namespaces[0]
    assert stats.tokens_saved == 3 * 150
    assert stats.cost_saved_usd == pytest.approx(0.75)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5).read().decode())
    assert 'cachesvc_tokens_saved_total{tenant="default"} 450.0' in body
    assert 'cachesvc_cost_saved_usd_total{tenant="default"} 0.75' in body


async def test_the_first_miss_takes_the_lease_and_a_waiter_is_served_by_its_store(app: App,
                                                                                  client: AsyncCacheClient) -> None:
    first = await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)
    assert not first.hit and first.fill_token is not None and not first.fill_pending
    second = await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)
    assert not second.hit and second.fill_token is None and second.fill_pending

    waiter = asyncio.create_task(client.lookup(PROMPT, scope=SCOPE, fill_lease=30, fill_wait=30, timeout=60))
    await until_waiting(app)
    stored = await client.store(PROMPT, "Use the link.", scope=SCOPE)
    served = await waiter
    assert served.hit and served.waited_for_fill and served.entry is not None and served.entry.id == stored.id
    # The lease ended with the store: a later miss on another prompt is unaffected, the same prompt hits.
    assert (await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)).hit


async def test_a_release_hands_the_lease_to_a_waiter(app: App, client: AsyncCacheClient) -> None:
    first = await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)
    assert first.fill_token is not None
    waiter = asyncio.create_task(client.lookup(PROMPT, scope=SCOPE, fill_lease=30, fill_wait=30, timeout=60))
    await until_waiting(app)
    assert not await client.release_fill(PROMPT, scope=SCOPE, fill_token="someone-else")
    assert not waiter.done()
    assert await client.release_fill(PROMPT, scope=SCOPE, fill_token=first.fill_token)
    took_over = await waiter
    assert not took_over.hit and took_over.waited_for_fill and took_over.fill_token is not None
    assert not await client.release_fill(PROMPT, scope=SCOPE, fill_token=first.fill_token)


async def test_a_wait_ends_before_the_callers_deadline(client: AsyncCacheClient) -> None:
    assert (await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)).fill_token is not None
    # The server caps the wait by the call's deadline, so the caller gets an answer (pending), not an error.
    answer = await client.lookup(PROMPT, scope=SCOPE, fill_lease=30, fill_wait=30, timeout=0.5)
    assert not answer.hit and answer.fill_pending and answer.waited_for_fill


async def test_a_cancelled_waiter_frees_everything(app: App, client: AsyncCacheClient) -> None:
    holder = await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)
    assert holder.fill_token is not None
    waiter = asyncio.create_task(client.lookup(PROMPT, scope=SCOPE, fill_lease=30, fill_wait=30, timeout=60))
    await until_waiting(app)
    waiter.cancel()  # cancels the RPC, and with it the server's wait
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert app.service is not None and isinstance(app.service._leases, InMemoryFillLeases)
    key = LeaseKey.of(ScopeKey(tenant="default", namespace="support", model="m"), normalize_prompt(PROMPT))
    for _ in range(1000):  # the server learns of the cancellation over the wire
        if not app.service._leases.waiters(key):
            break
        await asyncio.sleep(0.01)
    assert app.service._leases.waiters(key) == 0
    assert await client.release_fill(PROMPT, scope=SCOPE, fill_token=holder.fill_token)
    leases = app.service._leases if app.service is not None else None
    assert isinstance(leases, InMemoryFillLeases) and len(leases) == 0
    assert (await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)).fill_token is not None


async def test_old_clients_see_no_leases(app: App) -> None:
    """A request without the fill fields behaves as before: no token, no wait, and it never blocks a lease."""
    import grpc

    from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        request = pb.LookupRequest(scope=pb.Scope(namespace="support", model="m"), prompt=PROMPT)
        for _ in range(2):
            response = await stub.Lookup(request)
            assert not response.hit and not response.fill_token and not response.fill_pending
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        assert (await client.lookup(PROMPT, scope=SCOPE, fill_lease=30)).fill_token is not None


@pytest.mark.parametrize(("usage", "field"), [
    (pb.Usage(prompt_tokens=10, completion_tokens=5, cost_usd=float("nan")), "usage.cost_usd"),
    (pb.Usage(prompt_tokens=10, completion_tokens=5, cost_usd=float("inf")), "usage.cost_usd"),
    (pb.Usage(prompt_tokens=10, completion_tokens=5, cost_usd=-0.01), "usage.cost_usd"),
    (pb.Usage(prompt_tokens=2**63, completion_tokens=5), "usage.prompt_tokens"),
])
async def test_a_store_with_absurd_usage_is_refused_and_counts_nothing(app: App, usage: pb.Usage,
                                                                      field: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Store(pb.StoreRequest(prompt=PROMPT, completion="x", usage=usage))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in (raised.value.details() or "")
        assert not (await stub.Lookup(pb.LookupRequest(prompt=PROMPT))).hit
