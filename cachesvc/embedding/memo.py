"""A small LRU memo of text -> vector in front of a TextEncoder.

A store right after a lookup miss of the same prompt (the usual miss -> LLM -> store flow) reuses the vector
instead of embedding again, and concurrent requests for one text share a single embedding.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from cachesvc.embedding.protocol import TextEncoder, Vector


class MemoizedEncoder:
    """A `TextEncoder` that remembers the last `capacity` texts it encoded."""

    def __init__(self, *, encoder: TextEncoder, capacity: int = 4096) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._encoder = encoder
        self._capacity = capacity
        self._memo: OrderedDict[str, Vector] = OrderedDict()
        self._in_flight: dict[str, asyncio.Task[Vector]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def dimension(self) -> int:
        return self._encoder.dimension

    async def encode(self, text: str) -> Vector:
        vector = self._memo.get(text)
        if vector is not None:
            self._memo.move_to_end(text)
            self.hits += 1
            return vector
        task = self._in_flight.get(text)
        if task is None:
            self.misses += 1
            # Its own task, so one caller giving up does not cancel the embedding others wait for.
            task = asyncio.get_running_loop().create_task(self._encode_and_remember(text))
            self._in_flight[text] = task
            task.add_done_callback(lambda done: self._forget(text, done))
        else:
            self.hits += 1
        return await asyncio.shield(task)

    async def _encode_and_remember(self, text: str) -> Vector:
        vector = await self._encoder.encode(text)
        if self._capacity:
            self._memo[text] = vector
            if len(self._memo) > self._capacity:
                self._memo.popitem(last=False)
        return vector

    def _forget(self, text: str, done: asyncio.Task[Vector]) -> None:
        self._in_flight.pop(text, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so an error nobody awaited any more is not logged as lost
