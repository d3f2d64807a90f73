"""MicroBatcher: groups concurrent `encode` calls into one model run.

One task owns the bounded queue. It waits for a free worker slot first and only then takes from the queue, so
a lone caller runs at once (no added latency) while callers that arrive during a run form the next batches,
shared among the idle workers.
Each item carries its own future; cancelled items are skipped. The model runs on dedicated worker threads,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from cachesvc.embedding.protocol import Embedder, Vector
from cachesvc.embedding.text import DEFAULT_MAX_TEXT_BYTES, checked_text
from cachesvc.errors import CacheError, ModelError, NotReady, Overloaded
from cachesvc.lifecycle import State

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BatcherOptions:
    max_batch_size: int = 32
    # Linger after the first item to let a batch fill. 0 by default: a worker slot only frees up after a
    # run, and everything queued during that run is taken together anyway (see bench/RESULTS.md).
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    workers: int = 2
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.workers < 1:
            raise ValueError("max_batch_size, max_queue and workers must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")


@dataclass(frozen=True)
class _Item:
    text: str
    future: asyncio.Future[Vector]


class MicroBatcher:
    """An asyncio-facing `TextEncoder` over a blocking `Embedder`."""

    def __init__(self, *, embedder: Embedder, options: BatcherOptions = BatcherOptions()) -> None:
        self._embedder = embedder
        self._options = options
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=options.max_queue)
        self._slots = asyncio.Semaphore(options.workers)
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()
        self._busy = 0  # batches running on workers
        self._state = State.NEW
        self.batches_run = 0
        self.items_embedded = 0

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        if self._state is not State.NEW:
            raise RuntimeError(f"cannot start a batcher that is {self._state.value}")
        self._executor = ThreadPoolExecutor(self._options.workers, thread_name_prefix="embed")
        self._loop_task = asyncio.get_running_loop().create_task(self._batching_loop(), name="micro-batcher")
        self._state = State.RUNNING

    async def aclose(self) -> None:
        """Stops taking work, finishes the batches already running, and fails what is still queued."""
        if self._state is not State.RUNNING:
            self._state = State.CLOSED
            return
        self._state = State.CLOSED
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(NotReady("the embedder is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> MicroBatcher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def encode(self, text: str) -> Vector:
        """Embeds one text as part of whatever batch it lands in.

        Raises:
            InvalidRequest: the text is empty or too long (before it is queued).
            Overloaded: the queue is full.
            NotReady: the batcher is not running.
            ModelError: the model run for this item's batch failed.
        """
        if self._state is not State.RUNNING:
            raise NotReady("the embedder is not running")
        text = checked_text(text, max_bytes=self._options.max_text_bytes, field="prompt")
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(text, future))
        except asyncio.QueueFull:
            raise Overloaded(f"embedding queue is full ({self._options.max_queue} waiting)") from None
        return await future

    async def _batching_loop(self) -> None:
        while True:
            await self._slots.acquire()
            batch: list[_Item] = []
            try:
                batch.append(await self._queue.get())
                if self._options.max_wait_ms > 0 and self._queue.qsize() < self._options.max_batch_size - 1:
                    await asyncio.sleep(self._options.max_wait_ms / 1000)
                # Share what is queued among the idle workers, so that two cores run two half batches
                # instead of one core running everything while the other waits.
                idle = self._options.workers - self._busy
                share = min(self._options.max_batch_size, -(-(1 + self._queue.qsize()) // max(idle, 1)))
                while len(batch) < share and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            except BaseException:
                self._slots.release()
                for item in batch:  # taken off the queue (e.g. during the linger) but never run
                    if not item.future.done():
                        item.future.set_exception(NotReady("the embedder is shutting down"))
                raise
            live = [item for item in batch if not item.future.cancelled()]
            if not live:
                self._slots.release()
                continue
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._run(live))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            loop = asyncio.get_running_loop()
            vectors = await loop.run_in_executor(self._executor, self._embedder.embed, [i.text for i in batch])
            if len(vectors) != len(batch):  # checked here, so callers get an error instead of waiting forever
                raise ModelError(f"the embedder returned {len(vectors)} vectors for {len(batch)} texts")
        except Exception as exc:
            error = exc if isinstance(exc, CacheError) else ModelError(f"embedding failed: {exc}")
            if not isinstance(exc, CacheError):
                log.exception("embedding batch of %d failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._busy -= 1
            self._slots.release()
        self.batches_run += 1
        self.items_embedded += len(batch)
        for item, vector in zip(batch, vectors, strict=True):
            if not item.future.done():
                vector.flags.writeable = False
                item.future.set_result(vector)
