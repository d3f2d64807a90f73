"""In-memory fill leases (single-flight): one holder per key, waiters woken by a store, a release or expiry."""

from __future__ import annotations

import asyncio

from cachesvc.backends.leases import InMemoryFillLeases, LeaseKey
from cachesvc.records import ScopeKey

KEY = LeaseKey.of(ScopeKey(tenant="t", namespace="ns"), "what is the capital of france?")
OTHER_TENANT = LeaseKey.of(ScopeKey(tenant="u", namespace="ns"), "what is the capital of france?")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_one_holder_per_key_and_tenants_do_not_share() -> None:
    leases = InMemoryFillLeases()
    token = await leases.acquire(KEY, 10.0)
    assert token is not None
    assert await leases.acquire(KEY, 10.0) is None
    assert await leases.acquire(OTHER_TENANT, 10.0) is not None


async def test_a_store_wakes_every_waiter() -> None:
    leases = InMemoryFillLeases()
    assert await leases.acquire(KEY, 10.0) is not None
    waiters = [asyncio.create_task(leases.wait(KEY, 10.0)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    await leases.filled(KEY)
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await leases.acquire(KEY, 10.0) is not None  # the key is free again


async def test_only_the_holder_releases_and_a_release_wakes_waiters() -> None:
    leases = InMemoryFillLeases()
    token = await leases.acquire(KEY, 10.0)
    assert token is not None
    waiter = asyncio.create_task(leases.wait(KEY, 10.0))
    await asyncio.sleep(0)
    assert not await leases.release(KEY, "not-the-token")
    assert not waiter.done()
    assert await leases.release(KEY, token)
    assert await waiter
    assert not await leases.release(KEY, token)  # already ended


async def test_a_wait_is_bounded_by_its_timeout() -> None:
    leases = InMemoryFillLeases()
    assert await leases.acquire(KEY, 10.0) is not None
    assert await leases.wait(KEY, 0.01) is False
    assert await leases.acquire(KEY, 10.0) is None  # the lease outlives a waiter that gave up


async def test_an_expired_lease_frees_the_key() -> None:
    time = FakeTime()
    leases = InMemoryFillLeases(now=time)
    old = await leases.acquire(KEY, 5.0)
    assert old is not None
    time.now = 5.0
    assert await leases.wait(KEY, 10.0) is True  # nothing to wait for: it ran out
    new = await leases.acquire(KEY, 5.0)
    assert new is not None and new != old
    assert not await leases.release(KEY, old)  # the old holder cannot end its successor's lease


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    leases = InMemoryFillLeases()
    token = await leases.acquire(KEY, 10.0)
    assert token is not None
    waiter = asyncio.create_task(leases.wait(KEY, 10.0))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert await leases.release(KEY, token)
    assert len(leases) == 0
