"""Counters in Redis, so that Stats on any replica reports every replica's work (core's CounterStore seam).

Additions are gathered in memory and written every `interval` seconds as HINCRBY/HINCRBYFLOAT in one pipeline,
so a lookup never waits for a counter; a read first writes this replica's pending additions. One hash per
tenant (`P:stats:{tag}`, on the tenant's shard), one field per namespace and counter name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from cachesvc.backends.redis.connection import Client, redis_call
from cachesvc.backends.redis.keys import KeySpace
from cachesvc.errors import CacheError

log = logging.getLogger(__name__)
_SEP = "\x1f"  # between namespace and counter name in a hash field; a namespace may hold any other text
MAX_PENDING = 100_000  # distinct (tenant, namespace, name) kept while Redis is down; beyond, additions are dropped


class RedisCounters:
    def __init__(self, *, client: Client, keys: KeySpace, timeout: float, interval: float = 0.2) -> None:
        self._client = client
        self._keys = keys
        self._timeout = timeout
        self._interval = interval
        self._pending: defaultdict[tuple[str, str, str], int | float] = defaultdict(int)
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever(), name="redis-counters")

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(CacheError):
            await self.flush()  # the last additions, if Redis is there to take them

    def add(self, tenant: str, namespace: str, name: str, amount: int | float = 1) -> None:
        key = (tenant, namespace, name)
        if key in self._pending or len(self._pending) < MAX_PENDING:
            self._pending[key] += amount

    async def read(self, tenant: str) -> dict[str, dict[str, float]]:
        await self.flush()
        async with redis_call(self._timeout, "read counters"):
            raw = await self._client.hgetall(self._keys.counters(self._keys.tag(tenant)))
        found: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            text = field.decode() if isinstance(field, bytes) else field
            namespace, _sep, name = text.rpartition(_SEP)
            found.setdefault(namespace, {})[name] = float(value)
        return found

    async def flush(self) -> None:
        """Writes the pending additions (kept for the next try if Redis is not there).

        Raises:
            Unavailable: Redis cannot be reached.
        """
        async with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, defaultdict(int)
            try:
                async with redis_call(self._timeout, "count"), self._client.pipeline(transaction=False) as pipe:
                    for (tenant, namespace, name), amount in pending.items():
                        key, field = self._keys.counters(self._keys.tag(tenant)), f"{namespace}{_SEP}{name}"
                        if isinstance(amount, float):
                            pipe.hincrbyfloat(key, field, amount)
                        else:
                            pipe.hincrby(key, field, amount)
                    await pipe.execute()
            except BaseException:
                for (tenant, namespace, name), amount in pending.items():  # keep for the next flush
                    self.add(tenant, namespace, name, amount)
                raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except CacheError as exc:
                log.warning("counters not written to Redis (kept for the next try): %s", exc)
