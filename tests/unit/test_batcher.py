"""MicroBatcher with a fake embedder.

Queueing is made deterministic by holding the fake's first model run(s) open on a `threading.Event`: while a worker
is busy, the batching loop cannot take more work, so everything submitted meanwhile sits in the queue until the
test opens the gate. Waits are on events and predicates, never on wall-clock sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest

from cachesvc.embedding.batcher import BatcherOptions, MicroBatcher
from cachesvc.embedding.protocol import Matrix, Vector
from cachesvc.errors import InvalidRequest, ModelError, NotReady, Overloaded

DIM = 8
TIMEOUT = 10.0  # only a guard against a hang turning into a stuck test run; nothing waits for it to pass


def vector_for(text: str) -> Vector:
    """A deterministic unit vector per text, so a test can tell whose vector a caller received."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8", "replace")).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEmbedder:
    """Counts calls, can hold a call open until `release()`, and can fail batches that contain a poison text."""

    dimension = DIM

    def __init__(self, *, hold: Iterable[int] = (), rows: Callable[[int], int] | None = None) -> None:
        """`hold`: indices of the calls (0 = first model run) that block until released."""
        self.calls: list[list[str]] = []
        self.poison: dict[str, BaseException] = {}
        self._gates = {index: threading.Event() for index in hold}
        self._rows = rows
        self._cond = threading.Condition()

    def embed(self, texts: Sequence[str]) -> Matrix:
        with self._cond:
            index = len(self.calls)
            self.calls.append(list(texts))
            self._cond.notify_all()
        gate = self._gates.get(index)
        if gate is not None and not gate.wait(TIMEOUT):
            raise RuntimeError("the test never released the fake embedder")
        for text in texts:
            if text in self.poison:
                raise self.poison[text]
        n = len(texts) if self._rows is None else self._rows(len(texts))
        return np.stack([vector_for(t) for t in texts][:n]) if n else np.zeros((0, DIM), np.float32)

    def release(self, index: int | None = None) -> None:
        """Lets call `index` (default: every held call) finish."""
        for i, gate in self._gates.items():
            if index is None or i == index:
                gate.set()

    async def wait_calls(self, n: int) -> None:
        """Returns once `n` model runs have started (they may still be held)."""

        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: len(self.calls) >= n, TIMEOUT)

        assert await asyncio.to_thread(wait), f"expected {n} model runs, saw {self.calls}"

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.calls]


async def yield_until(predicate: Callable[[], bool], *, limit: int = 1000) -> None:
    """Lets other tasks run (one event-loop step at a time) until `predicate` holds. No wall-clock waiting."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def submit(batcher: MicroBatcher, texts: Sequence[str]) -> list[asyncio.Task[Vector]]:
    """Starts one caller per text and lets each run to its `put` on the queue."""
    tasks = [asyncio.create_task(batcher.encode(t)) for t in texts]
    await asyncio.sleep(0)  # one scheduling step: tasks created earlier run first, so every caller has queued
    return tasks


async def settle(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, TIMEOUT)


class ManualMonotonic:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def running(fake: FakeEmbedder, *, clock: ManualMonotonic | None = None,
                  **options: Any) -> AsyncIterator[MicroBatcher]:
    batcher = MicroBatcher(embedder=fake, options=BatcherOptions(**options), monotonic=clock or ManualMonotonic())
    await batcher.start()
    try:
        yield batcher
    finally:
        fake.release()  # aclose waits for running batches
        await settle(batcher.aclose())


def batcher_task_alive() -> bool:
    return any(t.get_name() == "micro-batcher" for t in asyncio.all_tasks())


async def test_a_lone_caller_gets_its_vector_read_only() -> None:
    fake = FakeEmbedder()
    async with running(fake) as batcher:
        vector = await settle(batcher.encode("hello"))
    np.testing.assert_array_equal(vector, vector_for("hello"))
    assert vector.dtype == np.float32
    assert not vector.flags.writeable
    assert fake.calls == [["hello"]]
    assert batcher.dimension == DIM


async def test_a_caller_is_told_how_long_its_text_queued_for_the_model() -> None:
    fake = FakeEmbedder(hold={0})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1) as batcher:
        first = asyncio.create_task(batcher.encode_timed("first"))
        await fake.wait_calls(1)  # runs at once: nothing queued ahead of it
        clock.now += 0.020
        second = asyncio.create_task(batcher.encode_timed("second"))
        await yield_until(lambda: batcher.queue_depth == 1)
        clock.now += 0.030  # the first run ends 30 ms after the second text queued
        fake.release()
        ran_at_once, queued = await settle(asyncio.gather(first, second))
    assert ran_at_once.queue_seconds == 0.0
    assert queued.queue_seconds == pytest.approx(0.030)
    np.testing.assert_array_equal(queued.vector, vector_for("second"))


async def test_concurrent_encodes_are_grouped_into_one_run_in_submission_order() -> None:
    fake = FakeEmbedder(hold={0})
    async with running(fake, workers=1) as batcher:
        first = await submit(batcher, ["first"])
        await fake.wait_calls(1)
        texts = [f"text {i}" for i in range(8)]
        rest = await submit(batcher, texts)
        await yield_until(lambda: batcher.queue_depth == len(texts))
        assert fake.calls == [["first"]]  # nothing else ran while the first batch was held
        fake.release()
        results = await settle(asyncio.gather(*first, *rest))
        assert fake.calls == [["first"], texts]
        for text, vector in zip(["first", *texts], results, strict=True):
            np.testing.assert_array_equal(vector, vector_for(text))
        assert (batcher.batches_run, batcher.items_embedded) == (2, 9)


async def test_a_lone_idle_worker_takes_the_whole_queue() -> None:
    fake = FakeEmbedder(hold={0, 1, 2})
    async with running(fake, workers=2) as batcher:
        early = await submit(batcher, ["a"])
        await fake.wait_calls(1)
        early += await submit(batcher, ["b"])
        await fake.wait_calls(2)  # both workers busy
        texts = [f"later {i}" for i in range(6)]
        late = await submit(batcher, texts)
        await yield_until(lambda: batcher.queue_depth == len(texts))
        fake.release(0)  # one worker frees up while the other is still busy
        await fake.wait_calls(3)
        fake.release()
        results = await settle(asyncio.gather(*early, *late))
    assert fake.sizes == [1, 1, 6]
    assert fake.calls[2] == texts
    for text, vector in zip(["a", "b", *texts], results, strict=True):
        np.testing.assert_array_equal(vector, vector_for(text))


async def test_idle_workers_share_the_queue() -> None:
    fake = FakeEmbedder(hold={0, 1})
    async with running(fake, workers=2) as batcher:
        texts = [f"text {i}" for i in range(6)]
        tasks = await submit(batcher, texts)
        await fake.wait_calls(2)  # both halves are running at once, each held open
        assert fake.calls == [texts[:3], texts[3:]]
        fake.release()
        results = await settle(asyncio.gather(*tasks))
    for text, vector in zip(texts, results, strict=True):
        np.testing.assert_array_equal(vector, vector_for(text))


async def test_identical_texts_each_get_a_vector() -> None:
    fake = FakeEmbedder(hold={0})
    async with running(fake, workers=1) as batcher:
        first = await submit(batcher, ["x"])
        await fake.wait_calls(1)
        rest = await submit(batcher, ["same", "other", "same"])
        fake.release()
        results = await settle(asyncio.gather(*first, *rest))
    assert fake.calls == [["x"], ["same", "other", "same"]]
    for text, vector in zip(["x", "same", "other", "same"], results, strict=True):
        np.testing.assert_array_equal(vector, vector_for(text))


async def test_max_batch_size_is_respected() -> None:
    fake = FakeEmbedder(hold={0})
    async with running(fake, workers=1, max_batch_size=3) as batcher:
        first = await submit(batcher, ["first"])
        await fake.wait_calls(1)
        texts = [f"t{i}" for i in range(7)]
        rest = await submit(batcher, texts)
        await yield_until(lambda: batcher.queue_depth == len(texts))
        fake.release()
        results = await settle(asyncio.gather(*first, *rest))
    assert fake.calls == [["first"], texts[0:3], texts[3:6], texts[6:7]]
    for text, vector in zip(["first", *texts], results, strict=True):
        np.testing.assert_array_equal(vector, vector_for(text))


async def test_a_model_error_reaches_every_caller_of_that_batch_as_model_error() -> None:
    fake = FakeEmbedder(hold={0})
    fake.poison["bad"] = RuntimeError("onnx exploded")
    async with running(fake, workers=1) as batcher:
        first = await submit(batcher, ["fine"])
        await fake.wait_calls(1)
        doomed = await submit(batcher, ["a", "bad", "b"])
        await yield_until(lambda: batcher.queue_depth == 3)
        fake.release()
        outcomes = await settle(asyncio.gather(*first, *doomed, return_exceptions=True))
        np.testing.assert_array_equal(outcomes[0], vector_for("fine"))
        errors = outcomes[1:]
        assert all(isinstance(e, ModelError) for e in errors), errors
        assert all("onnx exploded" in str(e) for e in errors)
        # the batcher survives a failed batch
        np.testing.assert_array_equal(await settle(batcher.encode("after")), vector_for("after"))
    assert fake.calls == [["fine"], ["a", "bad", "b"], ["after"]]


async def test_a_cache_error_from_the_model_passes_through_unchanged() -> None:
    fake = FakeEmbedder(hold={0})
    error = InvalidRequest("too weird", field="prompt")
    fake.poison["weird"] = error
    async with running(fake, workers=1) as batcher:
        first = await submit(batcher, ["fine"])
        await fake.wait_calls(1)
        doomed = await submit(batcher, ["weird", "neighbour"])
        await yield_until(lambda: batcher.queue_depth == 2)
        fake.release()
        outcomes = await settle(asyncio.gather(*first, *doomed, return_exceptions=True))
    assert outcomes[1] is error
    assert outcomes[2] is error


async def test_an_embedder_returning_too_few_rows_fails_the_batch_instead_of_hanging() -> None:
    fake = FakeEmbedder(rows=lambda n: n - 1)
    async with running(fake) as batcher:
        with pytest.raises(ModelError, match="returned 0 vectors for 1 texts"):
            await settle(batcher.encode("short-changed"))


async def test_a_full_queue_sheds_load_with_overloaded() -> None:
    fake = FakeEmbedder(hold={0})
    async with running(fake, workers=1, max_queue=2) as batcher:
        first = await submit(batcher, ["running"])
        await fake.wait_calls(1)
        queued = await submit(batcher, ["q1", "q2"])
        await yield_until(lambda: batcher.queue_depth == 2)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.encode("one too many")
        fake.release()
        results = await settle(asyncio.gather(*first, *queued))
        # room again once the queue drained
        np.testing.assert_array_equal(await settle(batcher.encode("later")), vector_for("later"))
    assert fake.calls == [["running"], ["q1", "q2"], ["later"]]
    for text, vector in zip(["running", "q1", "q2"], results, strict=True):
        np.testing.assert_array_equal(vector, vector_for(text))


async def test_cancelled_callers_are_skipped_before_the_model_runs() -> None:
    fake = FakeEmbedder(hold={0})
    async with running(fake, workers=1) as batcher:
        first = await submit(batcher, ["first"])
        await fake.wait_calls(1)
        b, c, d = await submit(batcher, ["b", "c", "d"])
        await yield_until(lambda: batcher.queue_depth == 3)
        c.cancel()
        fake.release()
        results = await settle(asyncio.gather(*first, b, d))
        with pytest.raises(asyncio.CancelledError):
            await c
    assert fake.calls == [["first"], ["b", "d"]]
    for text, vector in zip(["first", "b", "d"], results, strict=True):
        np.testing.assert_array_equal(vector, vector_for(text))


async def test_a_batch_where_every_caller_cancelled_never_runs() -> None:
    fake = FakeEmbedder(hold={0})
    async with running(fake, workers=1) as batcher:
        first = await submit(batcher, ["first"])
        await fake.wait_calls(1)
        gone = await submit(batcher, ["x", "y"])
        await yield_until(lambda: batcher.queue_depth == 2)
        for task in gone:
            task.cancel()
        fake.release()
        await settle(asyncio.gather(*first))
        assert np.array_equal(await settle(batcher.encode("next")), vector_for("next"))
    assert fake.calls == [["first"], ["next"]]


async def test_an_abandoned_item_frees_its_queue_slot_at_once() -> None:
    fake = FakeEmbedder(hold={0})
    async with running(fake, workers=1, max_queue=2) as batcher:
        first = await submit(batcher, ["running"])
        await fake.wait_calls(1)
        q1, q2 = await submit(batcher, ["q1", "q2"])
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.encode("one too many")
        q1.cancel()
        await yield_until(q1.done)
        assert batcher.queue_depth == 1
        (q3,) = await submit(batcher, ["q3"])  # the slot q1 held is free again
        fake.release()
        await settle(asyncio.gather(*first, q2, q3))
    assert fake.calls == [["running"], ["q2", "q3"]]
    assert batcher.items_abandoned == 1


async def test_items_that_waited_past_the_queueing_budget_are_shed_instead_of_run() -> None:
    fake = FakeEmbedder(hold={0})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        first = await submit(batcher, ["running"])
        await fake.wait_calls(1)
        late = await submit(batcher, ["a", "b"])
        clock.now += 0.051
        (fresh,) = await submit(batcher, ["c"])
        fake.release()
        await settle(asyncio.gather(*first, fresh))
        for task in late:
            with pytest.raises(Overloaded, match="queueing budget"):
                await settle(task)
    assert fake.calls == [["running"], ["c"]]
    assert batcher.items_shed == 2


async def test_an_item_is_shed_when_its_run_could_not_start_before_the_callers_deadline() -> None:
    fake = FakeEmbedder(hold={0})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1) as batcher:
        with pytest.raises(Overloaded):  # already past: never queued
            await batcher.encode("too late", deadline=clock.now - 0.001)
        assert batcher.queue_depth == 0
        first = await submit(batcher, ["running"])
        await fake.wait_calls(1)
        waiting = asyncio.create_task(batcher.encode("patient", deadline=clock.now + 1.0))
        await yield_until(lambda: batcher.queue_depth == 1)
        clock.now += 1.5  # the caller has given up by the time a worker is free
        fake.release()
        await settle(asyncio.gather(*first))
        with pytest.raises(Overloaded):
            await settle(waiting)
    assert fake.calls == [["running"]]


async def test_a_queue_that_would_take_longer_than_the_budget_sheds_at_once() -> None:
    fake = FakeEmbedder(hold={0, 1})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        warm = await submit(batcher, ["warm"])
        await fake.wait_calls(1)
        clock.now += 0.034  # a short prompt alone takes 34 ms
        fake.release(0)
        await settle(asyncio.gather(*warm))
        busy = await submit(batcher, ["busy"])
        await fake.wait_calls(2)
        queued = await submit(batcher, ["q1"])  # starts when the busy run ends, in ~34 ms: within the 50 ms budget
        assert batcher.queue_depth == 1
        with pytest.raises(Overloaded, match="would take about 68 ms"):
            await batcher.encode("q2")  # the busy run, then q1 alone (~68 ms): shed now rather than after waiting
        assert batcher.queue_depth == 1
        clock.now += 0.034  # the busy run takes as long
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    # two short prompts in one run would take ~53 ms, longer than the 50 ms budget
    assert fake.calls == [["warm"], ["busy"], ["q1"]]


async def test_runs_are_cut_at_what_the_queueing_budget_can_run() -> None:
    fake = FakeEmbedder(hold={0, 1})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        warm = await submit(batcher, ["warm"])
        await fake.wait_calls(1)
        clock.now += 0.015  # 15 ms for a short prompt alone, of which the run's own part: five fit in the budget
        fake.release(0)
        await settle(asyncio.gather(*warm))
        busy = await submit(batcher, ["busy"])
        await fake.wait_calls(2)
        clock.now += 0.015  # the busy run takes as long: it is about to end
        texts = [f"q{i}" for i in range(6)]
        queued = await submit(batcher, texts)
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    assert fake.calls == [["warm"], ["busy"], texts[:5], texts[5:]]


# 2,000 bytes: past the model's 256-token input limit, so it costs as much as a prompt can (~30x "warm").
LONG = "word " * 400


async def warmed_up(fake: FakeEmbedder, batcher: MicroBatcher, clock: ManualMonotonic,
                    run_ms: Sequence[float]) -> None:
    """Runs one short prompt per entry of `run_ms` (fake's calls 0.., each held) taking that long on `clock`."""
    for i, ms in enumerate(run_ms):
        (task,) = await submit(batcher, [f"w{i}"])
        await fake.wait_calls(i + 1)
        clock.now += ms / 1000
        fake.release(i)
        await settle(task)


async def busy_after_warm_up(fake: FakeEmbedder, batcher: MicroBatcher, clock: ManualMonotonic,
                             run_ms: Sequence[float], busy: str = "busy") -> list[asyncio.Task[Vector]]:
    """`warmed_up`, then one more prompt whose run is held (fake's call len(run_ms)): the only worker is busy."""
    await warmed_up(fake, batcher, clock, run_ms)
    task = await submit(batcher, [busy])
    await fake.wait_calls(len(run_ms) + 1)
    return task


async def queued_with_deadline(batcher: MicroBatcher, texts: Sequence[str],
                               deadline: float) -> list[asyncio.Task[Vector]]:
    """One caller per text, each with `deadline`, all queued once this returns."""
    tasks = [asyncio.create_task(batcher.encode(t, deadline=deadline)) for t in texts]
    await yield_until(lambda: batcher.queue_depth == len(texts))
    return tasks


async def test_admission_counts_what_the_prompts_queued_ahead_cost_not_how_many_they_are() -> None:
    fake = FakeEmbedder(hold={0, 1})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [10])  # a short prompt takes 10 ms
        busy = await submit(batcher, ["busy"])
        await fake.wait_calls(2)
        (long_task,) = await submit(batcher, [LONG])  # nothing ahead of it
        # One prompt ahead, but a long one: ~30 short prompts' worth of work, far past the 50 ms budget.
        with pytest.raises(Overloaded, match="would take about"):
            await batcher.encode("short")
        assert batcher.queue_depth == 1
        fake.release()
        await settle(asyncio.gather(*busy, long_task))
    assert fake.calls == [["w0"], ["busy"], [LONG]]
    assert batcher.items_shed == 1


async def test_a_run_takes_what_the_budget_can_run_by_cost_and_a_long_prompt_runs_alone() -> None:
    fake = FakeEmbedder(hold={0, 1})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [10])  # five short prompts fit in the budget
        busy = await submit(batcher, ["busy"])
        await fake.wait_calls(2)
        texts = ["q1", "q2", "q3", "q4", LONG]  # 40 ms of work ahead of the long one: admitted
        queued = await submit(batcher, texts)
        assert batcher.queue_depth == 5
        clock.now += 0.010  # the busy run takes as long as the first (a run of no time would pull the median pace to 0)
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    # Five prompts "fit" by count, but the long one would make that run ~8x the budget; alone, it still runs.
    assert fake.calls == [["w0"], ["busy"], texts[:4], [LONG]]


async def test_a_run_is_sized_and_the_wait_judged_at_the_typical_pace_not_the_slowest() -> None:
    fake = FakeEmbedder(hold={0, 1, 2, 3})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        # One run slowed down (CPU contention), then a busy run of 40 units: 25 ms at the typical pace, 85 ms at
        # the slow one.
        busy = await busy_after_warm_up(fake, batcher, clock, [10, 10, 34], busy="busy " * 20)
        # The busy run ends in ~25 ms at the typical pace: the three are admitted. Judged at the slow run's pace it
        # would end past the 50 ms budget, and all three would have been shed.
        texts = ["q1", "q2", "q3"]
        queued = await submit(batcher, texts)
        assert batcher.queue_depth == 3 and batcher.items_shed == 0
        clock.now += 0.025  # the busy run takes the typical time
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    # Eight short prompts fit in the budget at the typical pace (~21 ms for these three); at the slow pace two
    # would have taken ~53 ms, past the budget, and each would have run alone.
    assert fake.calls[4] == texts


async def test_a_run_is_ended_by_its_callers_deadlines_at_the_slow_pace() -> None:
    fake = FakeEmbedder(hold={0, 1, 2, 3})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        busy = await busy_after_warm_up(fake, batcher, clock, [10, 10, 34])  # 16 units: 10 ms, or 34 when slowed
        queued = await queued_with_deadline(batcher, ["q1", "q2"], clock.now + 0.060)
        clock.now += 0.010
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    # Together they would take ~16 ms at the typical pace but ~53 ms at the slow one, ending past their deadline
    # (50 ms after the run starts): one run each.
    assert fake.calls[4:] == [["q1"], ["q2"]]


async def test_the_queue_ahead_is_judged_in_the_runs_its_deadlines_allow() -> None:
    fake = FakeEmbedder(hold={0, 1, 2, 3})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        busy = await busy_after_warm_up(fake, batcher, clock, [10, 10, 19])  # 16 units: 10 ms, or 19 when slowed
        deadline = clock.now + 0.060
        queued = await queued_with_deadline(batcher, ["q1", "q2", "q3", "q4"], deadline)
        # The loop will run q1-q3 together (four would end past the deadline at the slow pace), then q4 alone,
        # and q5 could start only after both: past its start-by time. Shed now, not after waiting in vain.
        with pytest.raises(Overloaded, match="would take about"):
            await batcher.encode("q5", deadline=deadline)
        clock.now += 0.010
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    assert fake.calls[4:] == [["q1", "q2", "q3"], ["q4"]]


async def test_a_prompt_behind_a_long_running_run_is_shed_at_once() -> None:
    fake = FakeEmbedder(hold={0, 1})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [10])  # a short prompt takes 10 ms
        (long_task,) = await submit(batcher, [LONG])  # ~30 short prompts' worth: ~168 ms
        await fake.wait_calls(2)
        # Nothing queued, but the only worker is busy for longer than the budget: shed now, not after waiting.
        with pytest.raises(Overloaded, match="would take about 168 ms"):
            await batcher.encode("short")
        assert batcher.queue_depth == 0
        fake.release()
        await settle(long_task)
    assert fake.calls == [["w0"], [LONG]]
    assert batcher.items_shed == 1


async def test_a_prompt_that_would_not_fit_the_run_it_lands_in_is_judged_to_wait_for_the_next() -> None:
    fake = FakeEmbedder(hold={0, 1})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [10])  # a short prompt takes 10 ms: eight fit in one run
        busy = await submit(batcher, ["busy"])
        await fake.wait_calls(2)
        texts = [f"q{i}" for i in range(7)]
        queued = await submit(batcher, texts)
        # Seven short prompts and this one would pass the run cap: the seven run without it (~44 ms) after the
        # busy run (~10 ms), so it could not start within the budget. Shed now, not after waiting ~54 ms.
        with pytest.raises(Overloaded, match="would take about 54 ms"):
            await batcher.encode("x" * 248)
        assert batcher.queue_depth == 7
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    assert fake.calls == [["w0"], ["busy"], texts]


async def test_a_queue_is_judged_by_the_runs_it_will_take_not_as_lone_prompts() -> None:
    fake = FakeEmbedder(hold={0, 1})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [16])  # 16 ms for a short prompt alone, of which ~7 ms the run's own
        busy = await submit(batcher, ["busy"])
        await fake.wait_calls(2)
        clock.now += 0.016  # the busy run is about to end
        # Four short prompts ahead: ~64 ms as four lone runs, ~43 ms as the one run they will be: admitted.
        texts = [f"q{i}" for i in range(5)]
        queued = await submit(batcher, texts)
        assert batcher.queue_depth == 5 and batcher.items_shed == 0
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    assert fake.calls == [["w0"], ["busy"], texts[:4], texts[4:]]


async def test_a_queue_the_run_cap_splits_into_lone_runs_is_judged_as_such() -> None:
    fake = FakeEmbedder(hold={0, 1, 2})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=2, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [34])  # two short prompts in one run (~53 ms) exceed the budget
        busy = await submit(batcher, ["busy1", "busy2"])  # one run on each worker
        await fake.wait_calls(3)
        clock.now += 0.037  # both are about to end ("busy1" costs a little more than "w0")
        # Four lone runs ahead of q5, two on each worker: ~68 ms. q4 starts after one run on its worker: ~34 ms.
        queued = await submit(batcher, ["q1", "q2", "q3", "q4"])
        assert batcher.items_shed == 0
        with pytest.raises(Overloaded, match="would take about 68 ms"):
            await batcher.encode("q5")
        fake.release()
        await settle(asyncio.gather(*busy, *queued))
    assert sorted(fake.calls[3:]) == [["q1"], ["q2"], ["q3"], ["q4"]]
    assert batcher.items_shed == 1


async def test_a_prompt_whose_own_run_could_not_end_by_the_callers_deadline_is_shed_at_once() -> None:
    fake = FakeEmbedder(hold={0})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1) as batcher:
        await warmed_up(fake, batcher, clock, [10])
        # A short prompt fits in 100 ms; a long one would take ~30x 10 ms, past the caller's deadline.
        await settle(batcher.encode("short", deadline=clock.now + 0.1))
        with pytest.raises(Overloaded):
            await batcher.encode(LONG, deadline=clock.now + 0.1)
        assert batcher.queue_depth == 0
        await settle(batcher.encode(LONG, deadline=clock.now + 1.0))
    assert fake.calls == [["w0"], ["short"], [LONG]]
    assert batcher.items_shed == 1


async def test_a_caller_whose_deadline_is_shorter_than_the_budget_is_served_when_the_model_is_free() -> None:
    fake = FakeEmbedder(hold={0})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=1, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [10])
        await settle(batcher.encode("quick", deadline=clock.now + 0.030))  # a 10 ms run fits in 30 ms
    assert fake.calls == [["w0"], ["quick"]]


async def test_a_prompt_joins_no_run_that_would_end_after_its_callers_deadline() -> None:
    fake = FakeEmbedder(hold={0, 1, 2})
    clock = ManualMonotonic()
    async with running(fake, clock=clock, workers=2, max_queue_ms=50) as batcher:
        await warmed_up(fake, batcher, clock, [10])  # 10 ms per short prompt: five fit in the budget
        busy = await submit(batcher, ["busy1", "busy2"])  # one run on each worker
        await fake.wait_calls(3)
        clock.now += 0.011  # both are about to end
        # Nothing ahead of it, and its own 10 ms run fits in its 12 ms.
        hurried = asyncio.create_task(batcher.encode("q2", deadline=clock.now + 0.012))
        q1 = asyncio.create_task(batcher.encode("q1"))
        q3 = asyncio.create_task(batcher.encode("q3"))
        await yield_until(lambda: batcher.queue_depth == 3)
        fake.release()
        await settle(asyncio.gather(*busy, q1, hurried, q3))
    # With another short prompt its run would take ~16 ms, past q2's deadline: q2 runs alone (the others run
    # together or apart, as the two workers free up).
    assert ["q2"] in fake.calls[3:]
    assert sorted(text for run in fake.calls[3:] for text in run) == ["q1", "q2", "q3"]


async def test_a_caller_cancelling_while_its_batch_runs_does_not_disturb_the_others() -> None:
    fake = FakeEmbedder(hold={0, 1})
    async with running(fake, workers=1) as batcher:
        first = await submit(batcher, ["first"])
        await fake.wait_calls(1)
        a, b = await submit(batcher, ["a", "b"])
        fake.release(0)
        await fake.wait_calls(2)  # ["a", "b"] is being embedded, held
        a.cancel()
        fake.release(1)
        np.testing.assert_array_equal(await settle(b), vector_for("b"))
        await settle(asyncio.gather(*first))
        with pytest.raises(asyncio.CancelledError):
            await a
        assert batcher.items_embedded == 3
    assert fake.calls == [["first"], ["a", "b"]]


async def test_encode_before_start_and_after_aclose_is_not_ready() -> None:
    fake = FakeEmbedder()
    batcher = MicroBatcher(embedder=fake, options=BatcherOptions())
    with pytest.raises(NotReady):
        await batcher.encode("too early")
    await batcher.start()
    with pytest.raises(RuntimeError, match="cannot start"):
        await batcher.start()
    await settle(batcher.aclose())
    with pytest.raises(NotReady):
        await batcher.encode("too late")
    await settle(batcher.aclose())  # idempotent
    assert fake.calls == []


async def test_aclose_finishes_the_running_batch_and_fails_queued_items() -> None:
    fake = FakeEmbedder(hold={0})
    batcher = MicroBatcher(embedder=fake, options=BatcherOptions(workers=1))
    await batcher.start()
    first = await submit(batcher, ["running"])
    await fake.wait_calls(1)
    queued = await submit(batcher, ["q1", "q2"])
    await yield_until(lambda: batcher.queue_depth == 2)
    closing = asyncio.create_task(batcher.aclose())
    await yield_until(lambda: not batcher_task_alive())  # the loop is gone, so nothing new can start
    assert not closing.done()  # still waiting for the held batch
    fake.release()
    await settle(closing)
    np.testing.assert_array_equal(await first[0], vector_for("running"))
    for task in queued:
        with pytest.raises(NotReady, match="shutting down"):
            await task
    assert fake.calls == [["running"]]


async def test_aclose_fails_an_item_taken_during_the_linger() -> None:
    fake = FakeEmbedder()
    batcher = MicroBatcher(embedder=fake, options=BatcherOptions(max_wait_ms=600_000))
    await batcher.start()
    (task,) = await submit(batcher, ["lingering"])
    await yield_until(lambda: batcher.queue_depth == 0)  # the loop took it and lingers for more
    await settle(batcher.aclose())
    with pytest.raises(NotReady, match="shutting down"):
        await settle(task)
    assert fake.calls == []


async def test_async_with_starts_and_closes() -> None:
    fake = FakeEmbedder()
    async with MicroBatcher(embedder=fake, options=BatcherOptions()) as batcher:
        np.testing.assert_array_equal(await settle(batcher.encode("x")), vector_for("x"))
    with pytest.raises(NotReady):
        await batcher.encode("x")


@pytest.mark.parametrize("text", ["", "   ", "\n\t \u3000", "x" * 101, "é" * 51])
async def test_invalid_text_is_rejected_before_it_is_queued(text: str) -> None:
    fake = FakeEmbedder()
    async with running(fake, max_text_bytes=100) as batcher:
        with pytest.raises(InvalidRequest) as info:
            await batcher.encode(text)
        assert info.value.field == "prompt"
        assert batcher.queue_depth == 0
    assert fake.calls == []


async def test_text_at_the_byte_limit_is_accepted() -> None:
    fake = FakeEmbedder()
    async with running(fake, max_text_bytes=100) as batcher:
        await settle(batcher.encode("é" * 50))
    assert fake.calls == [["é" * 50]]


@pytest.mark.parametrize(
    "options",
    [{"max_batch_size": 0}, {"max_queue": 0}, {"workers": 0}, {"max_wait_ms": -1.0}, {"max_queue_ms": 0.0}],
)
def test_options_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BatcherOptions(**options)
