"""A small LRU memo of (partition, text) -> vector in front of a TextEncoder.

A store right after a lookup miss of the same prompt (the usual miss -> LLM -> store flow) reuses the vector
instead of embedding again, and concurrent requests for one text share a single embedding.

Entries are kept per partition (the tenant): a memo shared across tenants would let one tenant time whether
another had sent a prompt. An embedding runs only while someone waits for it: callers are counted, and when
the last one gives up the embedding is cancelled, so the batcher drops it before it reaches the model.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cachesvc.embedding.protocol import TextEncoder, Timed, Vector

_Key = tuple[str, str]


@dataclass(eq=False)
class _Flight:
    task: asyncio.Task[Timed]
    waiters: int = 0


class MemoizedEncoder:
    """A `TextEncoder` that remembers the last `capacity` texts it encoded."""

    def __init__(self, *, encoder: TextEncoder, capacity: int = 4096,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """Args:
            monotonic: the encoder's clock, on which its `Timed.run_started` is read (a seam for tests).
        """
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._encoder = encoder
        self._monotonic = monotonic
        self._capacity = capacity
        self._memo: OrderedDict[_Key, Vector] = OrderedDict()
        self._in_flight: dict[_Key, _Flight] = {}
        self.hits = 0
        self.misses = 0

    @property
    def dimension(self) -> int:
        return self._encoder.dimension

    async def encode(self, text: str, *, partition: str = "", deadline: float | None = None) -> Vector:
        """The vector of `text`, remembered within `partition` only (`encode_timed`, without the time queued)."""
        return (await self.encode_timed(text, partition=partition, deadline=deadline)).vector

    async def encode_timed(self, text: str, *, partition: str = "", deadline: float | None = None) -> Timed:
        """The vector of `text`, remembered within `partition` only, and how long this caller waited for the model
        run that embedded it (0 from the memo; a caller that joins an embedding counts from its own arrival).

        Args:
            partition: whose memo this is (the tenant); texts are never shared across partitions.
            deadline: passed on to the encoder by the caller that starts the embedding.
        """
        key = (partition, text)
        vector = self._memo.get(key)
        if vector is not None:
            self._memo.move_to_end(key)
            self.hits += 1
            return Timed(vector)
        flight = self._in_flight.get(key)
        if flight is None:
            self.misses += 1
            # Its own task, so one caller giving up does not cancel the embedding others wait for.
            task = asyncio.get_running_loop().create_task(self._encode_and_remember(key, deadline))
            flight = self._in_flight[key] = _Flight(task)
            task.add_done_callback(lambda done: self._forget(key, done))
        else:
            self.hits += 1
        flight.waiters += 1
        arrived = self._monotonic()
        try:
            timed = await asyncio.shield(flight.task)
            if timed.run_started is None:
                return timed
            return Timed(timed.vector, max(0.0, timed.run_started - arrived), timed.run_started)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # The last caller left: nobody wants this vector any more, so it must not cost a model run.
                flight.task.cancel()
                if self._in_flight.get(key) is flight:
                    del self._in_flight[key]

    async def _encode_and_remember(self, key: _Key, deadline: float | None) -> Timed:
        timed = await self._encoder.encode_timed(key[1], deadline=deadline)
        if self._capacity:
            self._memo[key] = timed.vector
            if len(self._memo) > self._capacity:
                self._memo.popitem(last=False)
        return timed

    def _forget(self, key: _Key, done: asyncio.Task[Timed]) -> None:
        flight = self._in_flight.get(key)
        if flight is not None and flight.task is done:
            del self._in_flight[key]
        if not done.cancelled():
            done.exception()  # retrieved here, so an error nobody awaited any more is not logged as lost
