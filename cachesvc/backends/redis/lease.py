"""Fill leases in Redis, for single-flight across replicas.

The first miss of a (scope, prompt) takes the lease (`SET NX PX`); it expires by itself if its holder dies. A store
(`filled`) or the holder's release deletes it and publishes on the lease's sharded pub/sub channel in the same
script, so waiters on every replica wake at once. A waiter subscribes (`SSUBSCRIBE`, one connection per wait: waits
are rare and short) and also re-reads the lease's time to live now and then, so a lost message or a connection
that reconnected silently costs it at most one re-check interval, and it stops waiting when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub

from cachesvc.backends.leases import LeaseKey
from cachesvc.backends.redis.connection import Client, redis_call
from cachesvc.backends.redis.keys import KeySpace

RECHECK_SECONDS = 0.15  # a waiter's longest sleep without reading the lease again

# KEYS: lease. ARGV: holder. Deletes the lease only if this holder still has it (it may have expired and been
# taken by another), and wakes its waiters. The channel is named like the key, so it is on the key's shard.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SPUBLISH', KEYS[1], 'ended')
  return 1
end
return 0
"""

# KEYS: lease. Deletes the lease, whoever holds it, and wakes its waiters (a store without a lease publishes
# nothing).
_FILLED = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('SPUBLISH', KEYS[1], 'filled')
  return 1
end
return 0
"""

Receive = Callable[..., Awaitable[dict[str, Any] | None]]


class RedisFillLeases:
    """`FillLeases` shared by every replica over one Redis or Redis Cluster (see the module docstring)."""

    def __init__(self, *, client: Client, keys: KeySpace, timeout: float,
                 recheck_seconds: float = RECHECK_SECONDS) -> None:
        self._client = client
        self._keys = keys
        self._timeout = timeout
        self._recheck = recheck_seconds
        self._release = client.register_script(_RELEASE)
        self._filled = client.register_script(_FILLED)
        self._waiting: Counter[LeaseKey] = Counter()

    async def acquire(self, key: LeaseKey, ttl_seconds: float) -> str | None:
        """Takes the lease for `ttl_seconds` unless a live one is held; returns the holder's token or None.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        token = secrets.token_hex(16)
        async with redis_call(self._timeout, "take a fill lease"):
            taken = await self._client.set(self._keys.lease(key), token, nx=True, px=max(1, int(ttl_seconds * 1000)))
        return token if taken else None

    async def wait(self, key: LeaseKey, timeout_seconds: float) -> bool:
        """Waits until the live lease on `key` ends (stored, released or run out, on any replica), at most
        `timeout_seconds`; returns whether no live lease is held any more.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + max(timeout_seconds, 0.0)
        if await self._left(key) is None:
            return True
        name = self._keys.lease(key)
        pubsub, receive = self._subscriber()
        try:
            async with redis_call(self._timeout, "wait for a fill lease"):
                await pubsub.ssubscribe(name)
                await self._confirmed(receive)
            self._waiting[key] += 1
            try:
                while True:
                    left = await self._left(key)
                    if left is None:
                        return True
                    bound = give_up_at - loop.time()
                    if bound <= 0:
                        return False
                    step = min(bound, left, self._recheck)
                    async with redis_call(self._timeout + step, "wait for a fill lease"):
                        await receive(ignore_subscribe_messages=True, timeout=step)
            finally:
                self._waiting[key] -= 1
                if self._waiting[key] <= 0:
                    del self._waiting[key]
        finally:
            # Closing drops the subscription with its connection, also when the wait was cancelled. A connection
            # that is already broken has nothing left to drop, and the error that matters has been raised.
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def release(self, key: LeaseKey, token: str) -> bool:
        """Ends the lease if `token` still holds it; returns whether it did.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        async with redis_call(self._timeout, "release a fill lease"):
            released = await self._release(keys=[self._keys.lease(key)], args=[token])
        return bool(released)

    async def filled(self, key: LeaseKey) -> None:
        """The answer for `key` is stored: ends its lease, whoever holds it, and wakes the waiters on every replica.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        async with redis_call(self._timeout, "end a fill lease"):
            await self._filled(keys=[self._keys.lease(key)])

    def waiters(self, key: LeaseKey) -> int:
        """Callers of this process subscribed and waiting on the lease of `key` now."""
        return self._waiting[key]

    async def _left(self, key: LeaseKey) -> float | None:
        """Seconds the live lease on `key` has left, or None when there is none."""
        async with redis_call(self._timeout, "read a fill lease"):
            ms = int(await self._client.pttl(self._keys.lease(key)))
        if ms == -2:
            return None
        return max(ms, 1) / 1000 if ms >= 0 else self._recheck  # -1: no expiry (not set by us); re-check it

    async def _confirmed(self, receive: Receive) -> None:
        """Returns once Redis confirms the subscription: only then can no wake-up be missed, as the lease is read
        after it (the caller bounds the time)."""
        while True:
            message = await receive(ignore_subscribe_messages=False, timeout=self._timeout)
            if message is not None and message["type"] == "ssubscribe":
                return

    def _subscriber(self) -> tuple[PubSub, Receive]:
        pubsub = self._client.pubsub()
        if isinstance(pubsub, ClusterPubSub):
            return pubsub, pubsub.get_sharded_message
        return pubsub, pubsub.get_message
