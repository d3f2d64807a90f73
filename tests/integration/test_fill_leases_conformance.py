"""Every `FillLeases` keeps the same contract: in memory, over one Redis, and over a 3-primary Redis Cluster.

The Redis leases here re-read the lease only once a minute and the leases last 60 s, so a waiter woken within
WOKEN seconds was woken by pub/sub; one test turns the re-check on to cover a lost message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from cachesvc.backends.leases import InMemoryFillLeases, LeaseKey
from cachesvc.backends.redis.connection import Client, RedisOptions, connect
from cachesvc.backends.redis.keys import KeySpace
from cachesvc.backends.redis.lease import RedisFillLeases
from cachesvc.errors import Unavailable
from cachesvc.records import ScopeKey
from tests.conftest import redis_stack

KEY = LeaseKey.of(ScopeKey(tenant="acme", namespace="ns"), "what is the capital of france?")
OTHER_TENANT = LeaseKey.of(ScopeKey(tenant="umbrella", namespace="ns"), "what is the capital of france?")
OTHER_PROMPT = LeaseKey.of(ScopeKey(tenant="acme", namespace="ns"), "what is the capital of spain?")
NO_RECHECK = 60.0
LEASE = 60.0
WOKEN = 10.0  # far below LEASE and NO_RECHECK, far above a wake-up's milliseconds on a busy machine
Leases = InMemoryFillLeases | RedisFillLeases


@dataclass
class Side:
    """The leases of one process (`here`) and of another replica over the same store (`there`)."""

    here: Leases
    there: Leases
    subscribers: Callable[[LeaseKey], Any] | None = None  # Redis: the lease channel's subscribers, every node
    raw: Client | None = None
    keys: KeySpace | None = None
    make: Callable[[float], RedisFillLeases] | None = None


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    if request.param == "memory":
        memory = InMemoryFillLeases()
        yield Side(here=memory, there=memory)
        return
    if request.param == "redis":
        nodes = [request.getfixturevalue("redis_server")]
    else:
        nodes = request.getfixturevalue("redis_cluster")
    options = RedisOptions(url=nodes[0].url, cluster=request.param == "redis-cluster", timeout=5.0,
                           prefix=f"t{uuid.uuid4().hex[:12]}")
    keys = KeySpace(options.prefix)
    clients = [connect(options) for _ in range(3)]

    def make(recheck: float, client: Client = clients[0]) -> RedisFillLeases:
        return RedisFillLeases(client=client, keys=keys, timeout=options.timeout, recheck_seconds=recheck)

    async def subscribers(key: LeaseKey) -> int:
        total = 0
        for node in nodes:
            async with aioredis.Redis(host="127.0.0.1", port=node.port) as direct:
                _, count = await direct.execute_command("PUBSUB", "SHARDNUMSUB", keys.lease(key))
                total += int(count)
        return total

    try:
        yield Side(here=make(NO_RECHECK), there=make(NO_RECHECK, clients[1]), subscribers=subscribers,
                   raw=clients[2], keys=keys, make=make)
    finally:
        for client in clients:
            await client.aclose()


async def until(check: Callable[[], Any], what: str) -> None:
    """Polls `check` (sync or async) until it is true, for at most 20 s."""
    for _ in range(2000):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 20 s: {what}")


async def test_one_holder_per_key_and_tenants_and_prompts_do_not_share(side: Side) -> None:
    token = await side.here.acquire(KEY, LEASE)
    assert token is not None
    assert await side.here.acquire(KEY, LEASE) is None
    assert await side.there.acquire(KEY, LEASE) is None  # nor from another replica
    assert await side.there.acquire(OTHER_TENANT, 30.0) is not None
    assert await side.there.acquire(OTHER_PROMPT, 30.0) is not None


async def test_a_store_on_another_replica_wakes_every_waiter(side: Side) -> None:
    assert await side.here.acquire(KEY, LEASE) is not None
    waiters = [asyncio.create_task(side.here.wait(KEY, LEASE)) for _ in range(3)]
    await until(lambda: side.here.waiters(KEY) == 3, "three callers waiting")
    if side.subscribers is not None:
        await until(lambda: side.subscribers(KEY), "the waiters subscribed")
    assert not any(w.done() for w in waiters)
    await side.there.filled(KEY)
    async with asyncio.timeout(WOKEN):
        assert await asyncio.gather(*waiters) == [True, True, True]
    assert side.here.waiters(KEY) == 0
    assert await side.there.acquire(KEY, LEASE) is not None  # the key is free again


async def test_only_the_holder_releases_and_a_release_wakes_waiters(side: Side) -> None:
    token = await side.here.acquire(KEY, LEASE)
    assert token is not None
    waiter = asyncio.create_task(side.there.wait(KEY, LEASE))
    await until(lambda: side.there.waiters(KEY) == 1, "a caller waiting")
    if side.subscribers is not None:
        await until(lambda: side.subscribers(KEY), "the waiter subscribed")
    assert not await side.here.release(KEY, "not-the-token")
    assert not await side.there.release(KEY, "not-the-token")
    await asyncio.sleep(0)
    assert not waiter.done()
    assert await side.here.release(KEY, token)
    async with asyncio.timeout(WOKEN):
        assert await waiter
    assert not await side.here.release(KEY, token)  # already ended


async def test_a_wait_is_bounded_by_its_timeout(side: Side) -> None:
    assert await side.here.acquire(KEY, LEASE) is not None
    assert await side.there.wait(KEY, 0.05) is False
    assert await side.there.acquire(KEY, LEASE) is None  # the lease outlives a waiter that gave up


async def test_no_lease_means_no_wait(side: Side) -> None:
    assert await side.here.wait(KEY, LEASE) is True
    await side.here.filled(KEY)  # a store without a lease ends nothing
    assert await side.here.acquire(KEY, LEASE) is not None


async def test_an_expired_lease_wakes_its_waiters_and_frees_the_key(side: Side) -> None:
    old = await side.here.acquire(KEY, 0.3)
    assert old is not None
    # Nobody stores or releases: the waiter stops at the lease's expiry, well inside its own 20 s bound.
    assert await side.there.wait(KEY, 20.0) is True
    new = await side.there.acquire(KEY, LEASE)
    assert new is not None and new != old
    assert not await side.here.release(KEY, old)  # the old holder cannot end its successor's lease
    assert await side.there.release(KEY, new)


async def test_a_cancelled_waiter_leaves_nothing_behind(side: Side) -> None:
    token = await side.here.acquire(KEY, LEASE)
    assert token is not None
    waiter = asyncio.create_task(side.here.wait(KEY, LEASE))
    await until(lambda: side.here.waiters(KEY) == 1, "a caller waiting")
    if side.subscribers is not None:
        await until(lambda: side.subscribers(KEY), "the waiter subscribed")
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert side.here.waiters(KEY) == 0
    if side.subscribers is not None:
        await until(lambda: _none(side.subscribers, KEY), "the subscription dropped")
    assert await side.here.release(KEY, token)
    if isinstance(side.here, InMemoryFillLeases):
        assert len(side.here) == 0


async def _none(subscribers: Callable[[LeaseKey], Any], key: LeaseKey) -> bool:
    return await subscribers(key) == 0


async def test_a_lost_wake_up_costs_a_waiter_one_re_check(side: Side) -> None:
    if side.raw is None or side.keys is None or side.make is None:
        pytest.skip("only a shared store can lose a message")
    leases = side.make(0.05)
    assert await leases.acquire(KEY, LEASE) is not None
    waiter = asyncio.create_task(leases.wait(KEY, 20.0))
    await until(lambda: leases.waiters(KEY) == 1, "a caller waiting")
    await side.raw.delete(side.keys.lease(KEY))  # the lease ends without a message
    assert await waiter is True


async def test_redis_errors_are_unavailable(redis_prefix: str) -> None:
    server = redis_stack().start_server()
    client = connect(RedisOptions(url=server.url, prefix=redis_prefix, timeout=0.5))
    try:
        leases = RedisFillLeases(client=client, keys=KeySpace(redis_prefix), timeout=0.5)
        assert await leases.acquire(KEY, LEASE) is not None
        server.stop()
        for call in (leases.acquire(KEY, LEASE), leases.wait(KEY, 5.0), leases.release(KEY, "t"), leases.filled(KEY)):
            with pytest.raises(Unavailable):
                await call
    finally:
        await client.aclose()
        server.close()
