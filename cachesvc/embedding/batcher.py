"""MicroBatcher: groups concurrent `encode` calls into one model run.

One task owns the bounded queue. It waits for a free worker slot first and only then takes from the queue, so
a lone caller runs at once (no added latency) while callers that arrive during a run form the next batches,
shared among the idle workers.
Each item carries its own future; cancelled items are skipped. The model runs on dedicated worker threads,
never on the event loop.

The queue is bounded by time as well as by count: an item that cannot start its model run within the queueing
budget (or before its caller's deadline, less its own run) is shed with `Overloaded` - at once when the work queued
ahead says it would wait too long, else when it reaches the head of the queue too late. Work is counted in cost
units from each prompt's length and each run's fixed part (`run_cost`). A run takes only what the budget can run
at the typical pace of recent runs (a lone longer prompt still runs) and, judged at the pace of the slow ones, ends
by every deadline it carries, so an accepted prompt waits at most the budget plus one run. The wait ahead is
judged as the workers will serve the queue, at the typical pace: the runs now going end, the queue ahead is taken
in runs, and a prompt starts with the run it lands in. (Judged at the slow pace, half or more of the calls of 16
closed-loop callers were shed although they would have started within the budget. Sized at the slow pace, runs
under overload held one prompt or two, and runs sized at the typical pace served 9-26% more; bench/RESULTS.md.)
A caller that gives up (cancellation) frees its slot at once and its text never reaches the model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from cachesvc.embedding.protocol import Embedder, Timed, Vector
from cachesvc.embedding.run_cost import PER_RUN_COST, SecondsPerUnit, run_cost, text_cost
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
    # Longest an item may wait for its model run to start; past it the item is shed (None: no time bound).
    max_queue_ms: float | None = None
    workers: int = 2
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    # The model's input limit in tokens: the embedder truncates there, so a longer prompt costs no more.
    max_text_tokens: int = 256

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.workers < 1 or self.max_text_tokens < 1:
            raise ValueError("max_batch_size, max_queue, workers and max_text_tokens must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.max_queue_ms is not None and self.max_queue_ms <= 0:
            raise ValueError("max_queue_ms must be > 0 (or None)")


@dataclass(eq=False, slots=True)
class _Item:
    text: str
    cost: int  # run_cost units
    future: asyncio.Future[Vector]
    start_by: float  # the monotonic clock by which its run must start, else it is shed
    finish_by: float  # its caller's deadline: it joins no run predicted to end later
    queued_at: float
    queued: bool = True  # still counted against the queue bound
    run_started: float | None = None  # when its model run started


class MicroBatcher:
    """An asyncio-facing `TextEncoder` over a blocking `Embedder`."""

    def __init__(self, *, embedder: Embedder, options: BatcherOptions = BatcherOptions(),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """Args:
            monotonic: the clock of deadlines, queueing budgets and the time queued (a seam for tests).
        """
        self._embedder = embedder
        self._monotonic = monotonic
        self._options = options
        # Cancelled items stay in the deque until the loop reaches them (or a compaction), but leave `_live`
        # at once: the bound counts only items someone still waits for.
        self._queue: collections.deque[_Item] = collections.deque()
        self._live = 0
        self._live_cost = 0  # the cost units of the `_live` items
        self._nonempty = asyncio.Event()
        self._slots = asyncio.Semaphore(options.workers)
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()
        self._running: list[tuple[float, int]] = []  # each running batch's start (monotonic clock) and cost units
        self._state = State.NEW
        # The slow pace says whether a run ends by its callers' deadlines; the typical pace sizes a run (the run
        # cap) and says when the queue ahead will have been run, over several runs that are not all slow.
        self._seconds_per_unit = SecondsPerUnit()
        self._typical_seconds_per_unit = SecondsPerUnit(quantile=0.5)
        self.batches_run = 0
        self.items_embedded = 0
        self.items_shed = 0
        self.items_abandoned = 0

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    @property
    def queue_depth(self) -> int:
        return self._live

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
        while self._queue:
            item = self._queue.popleft()
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

    async def encode(self, text: str, *, deadline: float | None = None) -> Vector:
        """Embeds one text as part of whatever batch it lands in (`encode_timed`, without the time queued)."""
        return (await self.encode_timed(text, deadline=deadline)).vector

    async def encode_timed(self, text: str, *, deadline: float | None = None) -> Timed:
        """Embeds one text as part of whatever batch it lands in, and says how long it queued for its run.

        Args:
            deadline: the caller's deadline on the `time.monotonic()` clock; the item is shed unless its run can
                start early enough to finish by then.

        Raises:
            InvalidRequest: the text is empty or too long (before it is queued).
            Overloaded: the queue is full, or the item could not start within the queueing budget or its
                deadline.
            NotReady: the batcher is not running.
            ModelError: the model run for this item's batch failed.
        """
        if self._state is not State.RUNNING:
            raise NotReady("the embedder is not running")
        text = checked_text(text, max_bytes=self._options.max_text_bytes, field="prompt")
        if self._live >= self._options.max_queue:
            self.items_shed += 1
            raise Overloaded(f"embedding queue is full ({self._options.max_queue} waiting)")
        now = self._monotonic()
        cost = text_cost(text, max_tokens=self._options.max_text_tokens)
        per_unit = self._seconds_per_unit.value
        budget = self._options.max_queue_ms / 1000 if self._options.max_queue_ms is not None else None
        start_by = now + budget if budget is not None else float("inf")
        finish_by = float("inf") if deadline is None else deadline
        # Its run must also end before the caller gives up: at the latest, it runs alone.
        start_by = min(start_by, finish_by - run_cost(cost) * per_unit)
        # When the workers will get to it: shed now rather than after waiting in vain.
        expected_wait = self._wait_to_start(cost, finish_by, self._typical_seconds_per_unit.value, now,
                                            give_up_after=start_by - now)
        if expected_wait > start_by - now:
            self.items_shed += 1
            raise Overloaded(f"the embedding queue would take about {expected_wait * 1000:.0f} ms to reach this "
                             "prompt, more than the queueing budget or the call's deadline allows")
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        item = _Item(text, cost, future, start_by, finish_by, now)
        future.add_done_callback(lambda _f: self._leave_queue(item, abandoned=True))
        self._queue.append(item)
        self._live += 1
        self._live_cost += cost
        self._nonempty.set()
        vector = await future
        assert item.run_started is not None  # set before any result
        return Timed(vector, item.run_started - item.queued_at, item.run_started)

    def _leave_queue(self, item: _Item, *, abandoned: bool = False) -> None:
        if not item.queued:
            return
        item.queued = False
        self._live -= 1
        self._live_cost -= item.cost
        if abandoned:
            self.items_abandoned += 1
            # Many abandoned items behind a long run: drop them now so the deque stays as bounded as the count.
            if len(self._queue) > 2 * self._options.max_queue:
                self._queue = collections.deque(i for i in self._queue if i.queued)

    def _wait_to_start(self, cost: int, finish_by: float, per_unit: float, now: float, *,
                       give_up_after: float) -> float:
        """How long a prompt of `cost` queued now will wait for its run to start, at `per_unit` seconds per unit.

        The workers free up as the runs they are on end (a run past its expected end may end at any moment), then
        take the queue ahead in runs cut by the batch size and by the run cap (a model slow against the budget runs
        few prompts, or one, per run). The prompt starts with the run it lands in: the prompts that share its run
        do not delay it, and with two workers the runs ahead of it are split between them. Where the prompt would
        not fit the run it lands in (its cost past the run cap, or that run ending after its caller's deadline), the
        batching loop leaves it to the next run, and so does the estimate. The loop also ends a run by the earliest
        deadline it carries, at the slow pace: the estimate cuts the runs ahead by the deadline of the queue's head,
        as callers of one client mostly share a deadline. Stops counting past `give_up_after` (the answer is then
        more than that).
        """
        workers = [max(started + units * per_unit, now) for started, units in self._running]
        workers += [now] * (self._options.workers - len(workers))
        heapq.heapify(workers)
        live = self._live
        if not live:
            return workers[0] - now
        average = self._live_cost / live
        per_run = min(self._options.max_batch_size, live + 1)
        texts_cap = self._run_cost_cap() - PER_RUN_COST  # what one run's texts may cost
        head, slow = self._queue[0], self._seconds_per_unit.value
        if head.queued and head.finish_by < float("inf") and slow > 0:
            texts_cap = min(texts_cap, (head.finish_by - workers[0]) / slow - PER_RUN_COST)
        if texts_cap < float("inf"):
            per_run = min(per_run, max(1, math.floor(texts_cap / average)))
        runs_ahead, ahead_in_its_run = divmod(live, per_run)
        run_seconds = run_cost(round(per_run * average)) * per_unit
        for _ in range(runs_ahead):  # the full runs that start before the prompt's own
            if workers[0] - now > give_up_after:
                return workers[0] - now
            heapq.heapreplace(workers, workers[0] + run_seconds)
        if ahead_in_its_run:
            ahead = round(ahead_in_its_run * average)
            ends = workers[0] + run_cost(ahead + cost) * slow
            if ahead + cost > texts_cap or ends > finish_by:  # those ahead of it in that run go without it
                heapq.heapreplace(workers, workers[0] + run_cost(ahead) * per_unit)
        return workers[0] - now

    def _run_cost_cap(self) -> float:
        """Most cost units one run may take: what the queueing budget can run at the typical recent pace. A longer
        run would keep the callers queued behind it waiting past the budget; a run slowed by contention may take
        longer, but sized at the slow pace, runs under overload held one prompt or two (bench/RESULTS.md)."""
        per_unit = self._typical_seconds_per_unit.value
        if self._options.max_queue_ms is None or per_unit <= 0:
            return float("inf")
        return self._options.max_queue_ms / 1000 / per_unit * (1 + 1e-9)  # a float quotient may fall just short

    def _fits(self, cost: int, cost_cap: float, finish_by: float) -> bool:
        """Whether a run of texts of this cost stays within the run cap and ends, at the slow pace, by the earliest
        deadline it carries."""
        units = run_cost(cost)
        return units <= cost_cap and self._monotonic() + units * self._seconds_per_unit.value <= finish_by

    def _live_head(self) -> _Item | None:
        """The first queued item someone still waits for, left in place; drops abandoned items and sheds the
        ones whose start-by time has passed."""
        while self._queue:
            item = self._queue[0]
            if not item.queued:  # abandoned while queued
                self._queue.popleft()
                continue
            if self._monotonic() > item.start_by:
                self._take(item)
                self.items_shed += 1
                item.future.set_exception(Overloaded("the prompt waited longer than the queueing budget or its "
                                                     "deadline allows for the model"))
                continue
            return item
        self._nonempty.clear()
        return None

    def _take(self, head: _Item) -> _Item:
        self._queue.popleft()
        self._leave_queue(head)
        return head

    def _next_live(self) -> _Item | None:
        head = self._live_head()
        return None if head is None else self._take(head)

    async def _batching_loop(self) -> None:
        while True:
            await self._slots.acquire()
            batch: list[_Item] = []
            try:
                while (first := self._next_live()) is None:
                    await self._nonempty.wait()
                batch.append(first)
                if self._options.max_wait_ms > 0 and self._live < self._options.max_batch_size - 1:
                    await asyncio.sleep(self._options.max_wait_ms / 1000)
                # Share what is queued among the idle workers, so that two cores run two half batches
                # instead of one core running everything while the other waits.
                idle = self._options.workers - len(self._running)
                share = min(self._options.max_batch_size, -(-(1 + self._live) // max(idle, 1)))
                cost, cost_cap, finish_by = first.cost, self._run_cost_cap(), first.finish_by
                while (len(batch) < share and (item := self._live_head()) is not None
                       and self._fits(cost + item.cost, cost_cap, min(finish_by, item.finish_by))):
                    batch.append(self._take(item))
                    cost, finish_by = cost + item.cost, min(finish_by, item.finish_by)
            except BaseException:
                self._slots.release()
                for item in batch:  # taken off the queue (e.g. during the linger) but never run
                    if not item.future.done():
                        item.future.set_exception(NotReady("the embedder is shutting down"))
                raise
            live = [item for item in batch if not item.future.done()]
            if not live:
                self._slots.release()
                continue
            running = (self._monotonic(), run_cost(sum(item.cost for item in live)))
            self._running.append(running)
            task = asyncio.get_running_loop().create_task(self._run(live, running))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _run(self, batch: list[_Item], running: tuple[float, int]) -> None:
        started = self._monotonic()
        for item in batch:
            item.run_started = started
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
            self._running.remove(running)
            self._slots.release()
        seconds, units = self._monotonic() - started, running[1]
        self._seconds_per_unit.observe(seconds, units)
        self._typical_seconds_per_unit.observe(seconds, units)
        self.batches_run += 1
        self.items_embedded += len(batch)
        for item, vector in zip(batch, vectors, strict=True):
            if not item.future.done():
                vector.flags.writeable = False
                item.future.set_result(vector)
