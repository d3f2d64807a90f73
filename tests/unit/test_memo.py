"""MemoizedEncoder with a fake TextEncoder whose calls can be held open on an asyncio.Event."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest

from cachesvc.embedding.memo import MemoizedEncoder
from cachesvc.embedding.protocol import Timed, Vector
from cachesvc.errors import ModelError

DIM = 8
TIMEOUT = 10.0  # a guard against hangs only
T = TypeVar("T")


def vector_for(text: str) -> Vector:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEncoder:
    """Counts calls; `hold()` makes calls wait for `release()`; `fail` maps a text to errors to raise, in turn."""

    dimension = DIM

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.deadlines: list[float | None] = []
        self.fail: dict[str, list[BaseException]] = {}
        self.queue_seconds = 0.0  # what every call reports as its time queued for the model
        self.run_started: float | None = None  # and as the start of its model run
        self._gate = asyncio.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def encode(self, text: str, *, deadline: float | None = None) -> Vector:
        self.calls.append(text)
        self.deadlines.append(deadline)
        try:
            await self._gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(text)
            raise
        if self.fail.get(text):
            raise self.fail[text].pop(0)
        return vector_for(text)

    async def encode_timed(self, text: str, *, deadline: float | None = None) -> Timed:
        return Timed(await self.encode(text, deadline=deadline), self.queue_seconds, self.run_started)


class ManualMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def yield_until(predicate: Callable[[], bool], *, limit: int = 1000) -> None:
    """Lets other tasks run, one event-loop step at a time, until `predicate` holds."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def settle(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, TIMEOUT)


async def test_a_repeated_text_is_served_from_the_memo() -> None:
    fake = FakeEncoder()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    first = await memo.encode("hello")
    second = await memo.encode("hello")
    assert fake.calls == ["hello"]
    assert second is first
    np.testing.assert_array_equal(first, vector_for("hello"))
    assert (memo.hits, memo.misses) == (1, 1)
    assert memo.dimension == DIM


async def test_the_time_queued_for_the_model_is_passed_on_and_a_memo_hit_queued_for_none() -> None:
    fake = FakeEncoder()
    fake.queue_seconds = 0.025
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    first = await memo.encode_timed("hello", partition="t1")
    again = await memo.encode_timed("hello", partition="t1")
    assert (first.queue_seconds, again.queue_seconds) == (0.025, 0.0)
    assert again.vector is first.vector
    np.testing.assert_array_equal(first.vector, vector_for("hello"))


async def test_a_caller_that_joins_an_embedding_under_way_is_told_only_its_own_wait() -> None:
    clock = ManualMonotonic()
    fake = FakeEncoder()
    fake.hold()
    fake.queue_seconds, fake.run_started = 0.050, 1000.050  # the run starts 50 ms after the first caller came
    memo = MemoizedEncoder(encoder=fake, capacity=8, monotonic=clock)
    first = asyncio.create_task(memo.encode_timed("same"))
    await yield_until(lambda: fake.calls == ["same"])
    clock.now = 1000.030  # joins while the embedding is still queued
    while_queued = asyncio.create_task(memo.encode_timed("same"))
    await yield_until(lambda: memo.hits == 1)
    clock.now = 1000.080  # joins while the model runs
    while_running = asyncio.create_task(memo.encode_timed("same"))
    await yield_until(lambda: memo.hits == 2)
    fake.release()
    results = await settle(asyncio.gather(first, while_queued, while_running))
    assert [r.queue_seconds for r in results] == pytest.approx([0.050, 0.020, 0.0])
    assert fake.calls == ["same"]


async def test_different_texts_are_encoded_separately() -> None:
    fake = FakeEncoder()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    a = await memo.encode("a")
    b = await memo.encode("b")
    assert fake.calls == ["a", "b"]
    np.testing.assert_array_equal(a, vector_for("a"))
    np.testing.assert_array_equal(b, vector_for("b"))


async def test_concurrent_encodes_of_one_text_share_one_call() -> None:
    fake = FakeEncoder()
    fake.hold()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    tasks = [asyncio.create_task(memo.encode("same")) for _ in range(5)]
    other = asyncio.create_task(memo.encode("other"))
    await yield_until(lambda: len(fake.calls) == 2)
    fake.release()
    results = await settle(asyncio.gather(*tasks))
    assert fake.calls == ["same", "other"]
    assert all(r is results[0] for r in results)
    np.testing.assert_array_equal(results[0], vector_for("same"))
    np.testing.assert_array_equal(await settle(other), vector_for("other"))
    assert (memo.hits, memo.misses) == (4, 2)


async def test_capacity_evicts_the_least_recently_used_text() -> None:
    fake = FakeEncoder()
    memo = MemoizedEncoder(encoder=fake, capacity=2)
    await memo.encode("a")
    await memo.encode("b")
    await memo.encode("a")  # a is now the most recently used
    await memo.encode("c")  # evicts b
    assert fake.calls == ["a", "b", "c"]
    await memo.encode("a")
    await memo.encode("c")
    assert fake.calls == ["a", "b", "c"]
    await memo.encode("b")  # evicted, so encoded again (and evicts a)
    assert fake.calls == ["a", "b", "c", "b"]
    await memo.encode("a")
    assert fake.calls == ["a", "b", "c", "b", "a"]


async def test_capacity_zero_remembers_nothing_but_still_shares_concurrent_calls() -> None:
    fake = FakeEncoder()
    memo = MemoizedEncoder(encoder=fake, capacity=0)
    await memo.encode("a")
    await memo.encode("a")
    assert fake.calls == ["a", "a"]
    fake.hold()
    tasks = [asyncio.create_task(memo.encode("b")) for _ in range(3)]
    await yield_until(lambda: len(fake.calls) == 3)
    fake.release()
    await settle(asyncio.gather(*tasks))
    assert fake.calls == ["a", "a", "b"]


async def test_one_caller_cancelling_does_not_cancel_another_waiting_on_the_same_text() -> None:
    fake = FakeEncoder()
    fake.hold()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    leaver = asyncio.create_task(memo.encode("shared"))
    stayer = asyncio.create_task(memo.encode("shared"))
    await yield_until(lambda: fake.calls == ["shared"])
    leaver.cancel()
    await yield_until(leaver.done)
    fake.release()
    np.testing.assert_array_equal(await settle(stayer), vector_for("shared"))
    assert leaver.cancelled()
    assert fake.calls == ["shared"]


async def test_an_embedding_whose_only_caller_left_is_cancelled_not_run() -> None:
    fake = FakeEncoder()
    fake.hold()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    leaver = asyncio.create_task(memo.encode("orphan"))
    await yield_until(lambda: fake.calls == ["orphan"])
    leaver.cancel()
    await yield_until(leaver.done)
    # the encoder saw the cancellation: nobody waits, so the embedding must not keep its place in the queue
    await yield_until(lambda: fake.cancelled == ["orphan"])
    fake.release()
    # nothing was remembered, so the next caller embeds again
    np.testing.assert_array_equal(await settle(asyncio.ensure_future(memo.encode("orphan"))), vector_for("orphan"))
    assert fake.calls == ["orphan", "orphan"]


async def test_the_embedding_is_cancelled_only_when_the_last_of_several_callers_leaves() -> None:
    fake = FakeEncoder()
    fake.hold()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    callers = [asyncio.create_task(memo.encode("shared")) for _ in range(3)]
    await yield_until(lambda: fake.calls == ["shared"])
    for caller in callers[:2]:
        caller.cancel()
    await yield_until(lambda: callers[0].done() and callers[1].done())
    assert fake.cancelled == []
    callers[2].cancel()
    await yield_until(lambda: fake.cancelled == ["shared"])


async def test_partitions_do_not_share_vectors_or_in_flight_work() -> None:
    fake = FakeEncoder()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    await memo.encode("secret", partition="t1")
    await memo.encode("secret", partition="t1")
    assert fake.calls == ["secret"]
    await memo.encode("secret", partition="t2")  # t2 must pay for its own embedding: no timing oracle on t1
    assert fake.calls == ["secret", "secret"]
    fake.hold()
    a = asyncio.create_task(memo.encode("new", partition="t1"))
    b = asyncio.create_task(memo.encode("new", partition="t2"))
    await yield_until(lambda: fake.calls.count("new") == 2)
    fake.release()
    await settle(asyncio.gather(a, b))
    assert (memo.hits, memo.misses) == (1, 4)


async def test_the_deadline_reaches_the_encoder() -> None:
    fake = FakeEncoder()
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    await memo.encode("x", deadline=123.0)
    assert fake.deadlines == [123.0]


async def test_errors_are_not_memoised() -> None:
    fake = FakeEncoder()
    fake.fail["flaky"] = [ModelError("transient")]
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    with pytest.raises(ModelError, match="transient"):
        await memo.encode("flaky")
    np.testing.assert_array_equal(await memo.encode("flaky"), vector_for("flaky"))
    assert fake.calls == ["flaky", "flaky"]


async def test_concurrent_waiters_share_the_error() -> None:
    fake = FakeEncoder()
    fake.hold()
    error = ModelError("boom")
    fake.fail["x"] = [error]
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    tasks = [asyncio.create_task(memo.encode("x")) for _ in range(3)]
    await yield_until(lambda: fake.calls == ["x"])
    fake.release()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)
    assert all(o is error for o in outcomes)
    assert fake.calls == ["x"]


async def test_an_error_nobody_waits_for_any_more_is_not_reported_as_lost(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeEncoder()
    fake.hold()
    fake.fail["x"] = [ModelError("nobody is listening")]
    memo = MemoizedEncoder(encoder=fake, capacity=8)
    stayer = asyncio.create_task(memo.encode("x"))
    await yield_until(lambda: fake.calls == ["x"])
    (inner,) = [t for t in asyncio.all_tasks() if "_encode_and_remember" in repr(t.get_coro())]
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        fake.release()
        await asyncio.wait({inner}, timeout=TIMEOUT)
        stayer.cancel()  # the caller leaves just as the error arrives, before it could read it
        await asyncio.wait({stayer}, timeout=TIMEOUT)
        del inner, stayer
        gc.collect()  # a task whose exception was never retrieved logs it when collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    # and the next caller embeds again
    np.testing.assert_array_equal(await memo.encode("x"), vector_for("x"))
    assert fake.calls == ["x", "x"]


def test_negative_capacity_is_rejected() -> None:
    with pytest.raises(ValueError):
        MemoizedEncoder(encoder=FakeEncoder(), capacity=-1)
