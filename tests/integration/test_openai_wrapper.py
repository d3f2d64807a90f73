"""`CachedOpenAI` / `AsyncCachedOpenAI`: the real openai SDK against a local OpenAI-compatible stub (real HTTP,
JSON and server-sent events) and a real cachesvc server on 127.0.0.1. Every case runs for both wrappers.

The server runs on this test's event loop, so the blocking wrapper is driven from worker threads.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cachesvc.app import App
from cachesvc.backends.leases import InMemoryFillLeases, LeaseKey
from cachesvc.core.normalize import normalize_prompt
from cachesvc.records import ScopeKey
from cachesvc_client import AsyncCacheClient, CacheClient
from cachesvc_client.openai import (
    AsyncCachedOpenAI,
    CachedOpenAI,
    CachePlan,
    CallRecord,
    CircuitBreaker,
    Fallback,
    ModelPrice,
    Outcome,
    cache_info,
    plan_request,
)
from tests.openai_stub import StubLLM

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "support-bot"
MODEL = "stub-model"
SYSTEM = {"role": "system", "content": "You are a helpful support agent."}
QUESTION = "How do I reset my password?"


def messages(question: str = QUESTION, system: dict[str, str] = SYSTEM) -> list[dict[str, str]]:
    return [system, {"role": "user", "content": question}]


@pytest.fixture
def stub() -> Iterator[StubLLM]:
    server = StubLLM().start()
    yield server
    server.stop()


@pytest.fixture
async def app(start_app: Callable[..., Any]) -> App:
    app: App = await start_app()
    return app


@dataclass
class Driver:
    """One wrapper, driven the same way whichever it is."""

    kind: str
    llm: CachedOpenAI | AsyncCachedOpenAI
    records: list[CallRecord] = field(default_factory=list)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=8))

    async def _run(self, work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    async def create(self, **params: Any) -> Any:
        if isinstance(self.llm, CachedOpenAI):
            llm = self.llm
            return await self._run(lambda: llm.chat.completions.create(**params))
        return await self.llm.chat.completions.create(**params)

    async def feedback(self, reply: Any, *, correct: bool) -> Any:
        if isinstance(self.llm, CachedOpenAI):
            llm = self.llm
            return await self._run(lambda: llm.feedback(reply, correct=correct))
        return await self.llm.feedback(reply, correct=correct)

    async def stream(self, *, take: int | None = None, **params: Any) -> tuple[list[ChatCompletionChunk], Any]:
        """Reads a streamed reply: all of it, or `take` chunks and then closes it (abandons it)."""
        if isinstance(self.llm, CachedOpenAI):
            llm = self.llm

            def read() -> tuple[list[ChatCompletionChunk], Any]:
                stream = llm.chat.completions.create(stream=True, **params)
                chunks = []
                for chunk in stream:
                    chunks.append(chunk)
                    if take is not None and len(chunks) == take:
                        stream.close()
                        break
                return chunks, stream

            return await self._run(read)
        stream = await self.llm.chat.completions.create(stream=True, **params)
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
            if take is not None and len(chunks) == take:
                await stream.close()
                break
        return chunks, stream

    async def accumulate(self, **params: Any) -> ChatCompletion:
        """The SDK's own `.stream()` helper and its final completion."""
        if isinstance(self.llm, CachedOpenAI):
            llm = self.llm

            def read() -> ChatCompletion:
                with llm.chat.completions.stream(**params) as stream:
                    for _event in stream:
                        pass
                    return stream.get_final_completion()

            return await self._run(read)
        async with self.llm.chat.completions.stream(**params) as stream:
            async for _event in stream:
                pass
            return await stream.get_final_completion()


@pytest.fixture(params=["sync", "async"])
async def make_driver(request: pytest.FixtureRequest, app: App, stub: StubLLM
                      ) -> AsyncIterator[Callable[..., Driver]]:
    drivers: list[Driver] = []
    closers: list[Any] = []

    def make(*, cache_target: str | None = None, max_retries: int = 2, **options: Any) -> Driver:
        target = cache_target or f"127.0.0.1:{app.port}"
        records: list[CallRecord] = []
        options = {"namespace": NAMESPACE, "lookup_timeout": 10.0, "on_record": records.append, **options}
        llm: CachedOpenAI | AsyncCachedOpenAI
        if request.param == "sync":
            cache = CacheClient(target)
            client = OpenAI(base_url=stub.base_url, api_key="test", max_retries=max_retries)
            closers.extend([cache.close, client.close])
            llm = CachedOpenAI(client, cache=cache, **options)
        else:
            acache = AsyncCacheClient(target)
            aclient = AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=max_retries)
            closers.extend([acache.close, aclient.close])
            llm = AsyncCachedOpenAI(aclient, cache=acache, **options)
        driver = Driver(kind=request.param, llm=llm, records=records)
        drivers.append(driver)
        return driver

    yield make
    for closer in closers:
        result = closer()
        if asyncio.iscoroutine(result):
            await result
    for driver in drivers:
        driver.pool.shutdown()


@pytest.fixture
def driver(make_driver: Callable[..., Driver]) -> Driver:
    return make_driver()


async def stats(app: App) -> Any:
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        return (await client.stats(NAMESPACE)).namespaces[0]


def text_of(reply: ChatCompletion) -> str | None:
    return reply.choices[0].message.content


def cached(reply: Any) -> bool:
    info = cache_info(reply)
    assert info is not None
    return info.cached


async def test_a_repeated_question_is_answered_from_the_cache(driver: Driver, stub: StubLLM) -> None:
    first = await driver.create(model=MODEL, messages=messages(), temperature=0)
    assert isinstance(first, ChatCompletion) and stub.calls[MODEL] == 1
    info = cache_info(first)
    assert info is not None and not info.cached and info.outcome is Outcome.MISS and info.entry_id is not None

    again = await driver.create(model=MODEL, messages=messages(), temperature=0)
    assert isinstance(again, ChatCompletion) and stub.calls[MODEL] == 1
    assert text_of(again) == text_of(first) and again.choices[0].finish_reason == "stop"
    info = cache_info(again)
    assert info is not None and info.cached and info.outcome is Outcome.HIT and info.similarity == 1.0
    assert again.id == f"chatcmpl-cache-{info.entry_id}"
    assert "_cachesvc_info" not in again.model_dump_json()
    assert [r.outcome for r in driver.records] == [Outcome.MISS, Outcome.HIT]
    miss, hit = driver.records
    assert miss.stored and miss.finish_reason == "stop" and miss.llm_ms is not None and miss.lookup_ms is not None
    assert miss.prompt_tokens is not None and miss.completion_tokens is not None
    assert hit.llm_ms is None and hit.entry_id == info.entry_id and hit.similarity == 1.0


async def test_a_hit_reported_wrong_is_not_served_again(driver: Driver, stub: StubLLM) -> None:
    first = await driver.create(model=MODEL, messages=messages(), temperature=0)
    with pytest.raises(ValueError, match="served from the cache"):
        await driver.feedback(first, correct=False)  # a miss: nothing was served to report on
    hit = await driver.create(model=MODEL, messages=messages(), temperature=0)
    assert cached(hit) and stub.calls[MODEL] == 1
    result = await driver.feedback(hit, correct=False)
    assert result.similarity == pytest.approx(1.0)
    again = await driver.create(model=MODEL, messages=messages(), temperature=0)
    assert not cached(again) and stub.calls[MODEL] == 2


async def test_another_system_prompt_or_temperature_misses(driver: Driver, stub: StubLLM) -> None:
    await driver.create(model=MODEL, messages=messages(), temperature=0)
    await driver.create(model=MODEL, messages=messages(system={"role": "system", "content": "Answer in French."}),
                        temperature=0)
    await driver.create(model=MODEL, messages=messages(), temperature=0.7)
    assert stub.calls[MODEL] == 3
    # Parameters that cannot change the answer share the entry.
    reply = await driver.create(model=MODEL, messages=messages(), temperature=0, user="someone", timeout=30)
    assert stub.calls[MODEL] == 3 and cached(reply)


async def test_a_hit_replays_as_a_stream_the_sdk_assembles(driver: Driver, stub: StubLLM) -> None:
    stored = await driver.create(model=MODEL, messages=messages())
    chunks, stream = await driver.stream(model=MODEL, messages=messages(), stream_options={"include_usage": True})
    assert stub.calls[MODEL] == 1
    info = cache_info(stream)
    assert info is not None and info.cached
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    assert state.get_final_completion().choices[0].message.content == text_of(stored)

    final = await driver.accumulate(model=MODEL, messages=messages())
    assert final.choices[0].message.content == text_of(stored) and stub.calls[MODEL] == 1


async def test_a_streamed_miss_is_stored_once_complete_and_never_when_abandoned(driver: Driver,
                                                                                 stub: StubLLM) -> None:
    chunks, _stream = await driver.stream(model=MODEL, messages=messages())
    assert stub.calls[MODEL] == 1 and len(chunks) > 3
    # The wrapper asked for usage to account the cost; the caller did not, so it sees no usage chunk.
    assert all(chunk.choices for chunk in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    hit = await driver.create(model=MODEL, messages=messages())
    assert stub.calls[MODEL] == 1 and text_of(hit) == streamed

    other = messages("How do I change my email address?")
    chunks, _stream = await driver.stream(take=2, model=MODEL, messages=other)
    assert len(chunks) == 2
    assert driver.records[-1].outcome is Outcome.MISS and not driver.records[-1].stored
    await driver.create(model=MODEL, messages=other)
    assert stub.calls[MODEL] == 3  # the abandoned answer was not stored


async def test_a_truncated_answer_is_not_cached(app: App, driver: Driver, stub: StubLLM) -> None:
    stub.behaviour("short").finish_reason = "length"
    for _ in range(2):
        reply = await driver.create(model="short", messages=messages())
        assert reply.choices[0].finish_reason == "length"
    _chunks, _stream = await driver.stream(model="short", messages=messages())
    assert stub.calls["short"] == 3
    assert (await stats(app)).stores == 0
    assert [r.finish_reason for r in driver.records] == ["length"] * 3


async def test_a_rate_limited_call_is_retried_by_the_sdk_and_stored_once(app: App, driver: Driver,
                                                                         stub: StubLLM) -> None:
    stub.behaviour(MODEL).rate_limited = 1
    first = await driver.create(model=MODEL, messages=messages())
    assert stub.calls[MODEL] == 2  # a 429, then the answer
    again = await driver.create(model=MODEL, messages=messages())
    assert text_of(again) == text_of(first) and stub.calls[MODEL] == 2
    assert (await stats(app)).stores == 1


async def test_a_fallback_model_answers_after_a_hard_failure(make_driver: Callable[..., Driver],
                                                             stub: StubLLM) -> None:
    stub.behaviour("primary").fail = True
    driver = make_driver(fallbacks=[Fallback(model="backup")], max_retries=1)
    reply = await driver.create(model="primary", messages=messages())
    assert stub.calls["primary"] == 2 and stub.calls["backup"] == 1  # the SDK retried the 500 once
    assert reply.model == "backup" and driver.records[-1].fallback == 0
    assert driver.records[-1].answered_by == "backup" and driver.records[-1].stored
    # Stored under the requested model's scope, naming the model that answered.
    again = await driver.create(model="primary", messages=messages())
    assert cached(again) and again.model == "backup"
    assert stub.calls["primary"] == 2


async def test_tokens_and_cost_saved_grow_on_hits(app: App, make_driver: Callable[..., Driver],
                                                  stub: StubLLM) -> None:
    price = ModelPrice(input_per_million=2.0, output_per_million=8.0)
    driver = make_driver(prices={MODEL: price})
    first = await driver.create(model=MODEL, messages=messages())
    usage = first.usage
    assert usage is not None
    before = await stats(app)
    assert before.tokens_saved == 0
    for hits in (1, 2):
        await driver.create(model=MODEL, messages=messages())
        now = await stats(app)
        assert now.tokens_saved == hits * (usage.prompt_tokens + usage.completion_tokens)
        assert now.cost_saved_usd == pytest.approx(hits * price.cost(usage.prompt_tokens, usage.completion_tokens))


async def test_uncacheable_requests_go_straight_to_the_llm(driver: Driver, stub: StubLLM) -> None:
    for _ in range(2):
        await driver.create(model=MODEL, messages=messages(), n=2)
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    await driver.create(model=MODEL, messages=image)
    assert stub.calls[MODEL] == 3
    assert [r.outcome for r in driver.records] == [Outcome.UNCACHEABLE] * 3
    assert all(r.lookup_ms is None for r in driver.records)


async def test_what_the_wrapper_does_not_intercept_is_the_sdks(driver: Driver, stub: StubLLM) -> None:
    stub.behaviour(MODEL)
    if isinstance(driver.llm, CachedOpenAI):
        listed = await driver._run(driver.llm.models.list)
        ids = [m.id for m in listed]
    else:
        ids = [m.id async for m in driver.llm.models.list()]
    assert ids == [MODEL]
    assert driver.llm.api_key == "test"


def lease_key(question: str = QUESTION) -> LeaseKey:
    plan = plan_request({"model": MODEL, "messages": messages(question)}, namespace=NAMESPACE)
    assert isinstance(plan, CachePlan)
    scope = ScopeKey(tenant="default", namespace=NAMESPACE, model=MODEL, context=plan.scope.context)
    return LeaseKey.of(scope, normalize_prompt(plan.prompt))


async def until_waiters(app: App, count: int, question: str = QUESTION) -> None:
    """Returns once `count` lookups wait on the fill lease of `question` (the server runs on this loop)."""
    assert app.service is not None and isinstance(app.service._leases, InMemoryFillLeases)
    key = lease_key(question)
    for _ in range(3000):
        if app.service._leases.waiters(key) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} lookups waited for the fill")


async def test_eight_concurrent_identical_misses_make_one_llm_call(app: App, driver: Driver,
                                                                   stub: StubLLM) -> None:
    stub.gate.clear()  # the first caller's LLM call is held until the others wait for its fill
    calls = [asyncio.ensure_future(driver.create(model=MODEL, messages=messages())) for _ in range(8)]
    await until_waiters(app, 7)
    stub.gate.set()
    replies = await asyncio.gather(*calls)
    assert stub.calls[MODEL] == 1
    assert len({text_of(r) for r in replies}) == 1
    outcomes = sorted(r.outcome.value for r in driver.records)
    assert outcomes == ["hit"] * 7 + ["miss"]
    assert sum(r.waited_for_fill for r in driver.records) == 7


CHILD = textwrap.dedent("""
    import asyncio, json, sys, threading
    from openai import AsyncOpenAI, OpenAI
    from cachesvc_client import AsyncCacheClient, CacheClient
    from cachesvc_client.openai import AsyncCachedOpenAI, CachedOpenAI, cache_info

    kind, base_url, target, model, namespace, question = sys.argv[1:7]
    messages = [{"role": "system", "content": "You are a helpful support agent."},
                {"role": "user", "content": question}]
    outcomes = []
    if kind == "sync":
        llm = CachedOpenAI(OpenAI(base_url=base_url, api_key="test"), cache=CacheClient(target),
                           namespace=namespace, lookup_timeout=10.0)
        def one():
            outcomes.append(cache_info(llm.chat.completions.create(model=model, messages=messages)).outcome.value)
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        async def main():
            llm = AsyncCachedOpenAI(AsyncOpenAI(base_url=base_url, api_key="test"), cache=AsyncCacheClient(target),
                                    namespace=namespace, lookup_timeout=10.0)
            replies = await asyncio.gather(*(llm.chat.completions.create(model=model, messages=messages)
                                             for _ in range(4)))
            outcomes.extend(cache_info(r).outcome.value for r in replies)
        asyncio.run(main())
    print(json.dumps(outcomes))
""")


async def test_identical_misses_in_two_processes_make_one_llm_call(app: App, driver: Driver,
                                                                   stub: StubLLM) -> None:
    stub.gate.clear()
    children = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, driver.kind, stub.base_url, f"127.0.0.1:{app.port}", MODEL, NAMESPACE,
        QUESTION, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        await until_waiters(app, 7)
    finally:
        stub.gate.set()
    results = [await child.communicate() for child in children]
    assert all(child.returncode == 0 for child in children), [err.decode()[-2000:] for _, err in results]
    outcomes = sorted(o for out, _ in results for o in json.loads(out))
    assert outcomes == ["hit"] * 7 + ["miss"]
    assert stub.calls[MODEL] == 1


def silent_server() -> socket.socket:
    """A TCP port that accepts connections and never answers: a cache that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


async def test_a_slow_cache_is_abandoned_after_the_lookup_deadline(make_driver: Callable[..., Driver],
                                                                   stub: StubLLM) -> None:
    with silent_server() as hanging:
        driver = make_driver(cache_target=f"127.0.0.1:{hanging.getsockname()[1]}", lookup_timeout=0.05)
        reply = await driver.create(model=MODEL, messages=messages())
    assert text_of(reply) is not None and stub.calls[MODEL] == 1
    info = cache_info(reply)
    assert info is not None and info.outcome is Outcome.BYPASS
    assert driver.llm.guard.errors == 1 and driver.records[-1].outcome is Outcome.BYPASS


async def test_a_dead_cache_is_bypassed_then_skipped_by_the_breaker(make_driver: Callable[..., Driver],
                                                                    stub: StubLLM) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    driver = make_driver(cache_target=f"127.0.0.1:{port}", lookup_timeout=0.5,
                         breaker=CircuitBreaker(failure_threshold=2, cooldown_seconds=600))
    for _ in range(4):
        reply = await driver.create(model=MODEL, messages=messages())
        assert text_of(reply) is not None
    assert stub.calls[MODEL] == 4
    assert driver.llm.guard.errors == 2 and driver.llm.guard.skipped == 2
    assert [r.outcome for r in driver.records] == [Outcome.BYPASS] * 4


async def test_no_fill_lease_outlives_a_call_that_stored_nothing(app: App, driver: Driver, stub: StubLLM) -> None:
    """A failed LLM call, a truncated answer and an abandoned stream each give their lease back at once, so
    callers waiting for the fill don't wait out its bound."""
    assert app.service is not None and isinstance(app.service._leases, InMemoryFillLeases)
    leases = app.service._leases
    stub.behaviour("down").fail = True
    with pytest.raises(Exception, match="the model is down"):
        await driver.create(model="down", messages=messages())
    assert stub.calls["down"] == 3 and len(leases) == 0  # the SDK's 2 retries, then the lease is released

    stub.behaviour("short").finish_reason = "length"
    await driver.create(model="short", messages=messages())
    assert len(leases) == 0

    _chunks, _stream = await driver.stream(take=2, model=MODEL, messages=messages())
    assert len(leases) == 0
    assert [r.stored for r in driver.records] == [False, False, False]
    assert driver.records[0].error == "InternalServerError"


async def test_a_rejected_request_bypasses_without_tripping_the_breaker(start_app: Callable[..., Any],
                                                                        make_driver: Callable[..., Driver],
                                                                        stub: StubLLM) -> None:
    strict = await start_app(max_prompt_bytes=64)
    driver = make_driver(cache_target=f"127.0.0.1:{strict.port}",
                         breaker=CircuitBreaker(failure_threshold=1, cooldown_seconds=600))
    long_question = "Please explain, in as much detail as you can manage, " * 4
    reply = await driver.create(model=MODEL, messages=messages(long_question))
    assert text_of(reply) is not None and driver.records[-1].outcome is Outcome.BYPASS
    assert driver.llm.guard.errors == 1 and not driver.llm.guard.breaker.is_open
    await driver.create(model=MODEL, messages=messages())  # a short prompt still uses the cache
    again = await driver.create(model=MODEL, messages=messages())
    assert cached(again) and stub.calls[MODEL] == 2


TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]


async def test_tool_call_answers_are_cached_only_when_enabled(make_driver: Callable[..., Driver],
                                                              stub: StubLLM) -> None:
    stub.behaviour(MODEL).tool_call = True
    plain = make_driver()
    for _ in range(2):
        reply = await plain.create(model=MODEL, messages=messages(), tools=TOOLS)
        assert reply.choices[0].finish_reason == "tool_calls"
    assert stub.calls[MODEL] == 2 and not any(r.stored for r in plain.records)

    enabled = make_driver(cache_tool_calls=True)
    first = await enabled.create(model=MODEL, messages=messages(), tools=TOOLS)
    assert enabled.records[-1].stored and stub.calls[MODEL] == 3
    again = await enabled.create(model=MODEL, messages=messages(), tools=TOOLS)
    assert cached(again) and stub.calls[MODEL] == 3
    assert again.choices[0].finish_reason == "tool_calls"
    assert again.choices[0].message.tool_calls == first.choices[0].message.tool_calls
    chunks, _stream = await enabled.stream(model=MODEL, messages=messages(), tools=TOOLS)
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    assembled = state.current_completion_snapshot.choices[0]
    assert assembled.finish_reason == "tool_calls" and stub.calls[MODEL] == 3
    assert assembled.message.tool_calls is not None
    assert [c.function.name for c in assembled.message.tool_calls] == ["lookup_order"]
