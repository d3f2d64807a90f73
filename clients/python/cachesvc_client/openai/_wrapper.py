"""`CachedOpenAI` and `AsyncCachedOpenAI`: the openai SDK's `chat.completions.create`, answered from cachesvc
when it can be.

Every decision (cacheability, scope, what is stored, how a hit is replayed, what is recorded) lives in
`_WrapperCore`; the two clients only do the I/O, one blocking and one with `await`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, overload

import openai
from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
from openai.lib.streaming.chat import AsyncChatCompletionStreamManager, ChatCompletionStreamManager
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cachesvc_client._validate import check_min_similarity, check_ttl_seconds
from cachesvc_client.errors import CacheClientError
from cachesvc_client.llm import OnCacheError
from cachesvc_client.openai._guard import CacheGuard, CircuitBreaker
from cachesvc_client.openai._replay import (
    Assembled,
    AsyncPassThroughStream,
    AsyncReplayStream,
    PassThroughStream,
    ReplayStream,
    StreamTap,
    assembled_from_completion,
    chunks_of,
    completion_of,
)
from cachesvc_client.openai._request import CachePlan, Uncacheable, plan_request
from cachesvc_client.openai._types import CacheInfo, CallRecord, Fallback, ModelPrice, Outcome, attach, cache_info
from cachesvc_client.types import FeedbackResult, LookupResult, Scope, Usage

if TYPE_CHECKING:
    from cachesvc_client.client import AsyncCacheClient, CacheClient

logger = logging.getLogger("cachesvc_client.openai")

DEFAULT_LOOKUP_TIMEOUT_SECONDS = 0.05
DEFAULT_STORE_TIMEOUT_SECONDS = 1.0
DEFAULT_FILL_LEASE_SECONDS = 60.0
DEFAULT_FILL_WAIT_SECONDS = 30.0

# Failures after which another model or provider may succeed; a bad request or bad credentials would fail there
# too (or must not be hidden).
_HARD_FAILURES: tuple[type[Exception], ...] = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
    openai.NotFoundError,  # e.g. the model is gone
)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Looked:
    """The cache's part of a call, before the LLM. found is None when the cache was bypassed."""

    found: LookupResult | None
    lookup_ms: float | None

    @property
    def token(self) -> str | None:
        return self.found.fill_token if self.found is not None else None


@dataclass(frozen=True, kw_only=True, slots=True)
class _Answered:
    """Which attempt answered: the primary (fallback None) or a fallback."""

    fallback: int | None
    model: str


class _WrapperCore:
    """Everything both wrappers share that is not I/O."""

    def __init__(
        self,
        *,
        namespace: str,
        min_similarity: float | None,
        ttl_seconds: int | None,
        lookup_timeout: float,
        store_timeout: float,
        single_flight: bool,
        fill_lease: float,
        fill_wait: float,
        prices: Mapping[str, ModelPrice] | None,
        fallbacks: Sequence[Fallback],
        on_record: Callable[[CallRecord], None] | None,
        on_cache_error: OnCacheError | Literal["bypass", "raise"],
        breaker: CircuitBreaker | None,
        cache_tool_calls: bool,
    ) -> None:
        if not (lookup_timeout > 0 and store_timeout > 0 and fill_lease > 0 and fill_wait >= 0):
            raise ValueError("timeouts and fill_lease must be > 0, fill_wait >= 0")
        self.namespace = namespace
        self.min_similarity = None if min_similarity is None else check_min_similarity(min_similarity)
        self.ttl_seconds = None if ttl_seconds is None else check_ttl_seconds(ttl_seconds)
        self.lookup_timeout = lookup_timeout
        self.store_timeout = store_timeout
        self.single_flight = single_flight
        self.fill_lease = fill_lease
        self.fill_wait = fill_wait
        self.prices = dict(prices or {})
        self.fallbacks = tuple(fallbacks)
        self.on_record = on_record
        self.cache_tool_calls = cache_tool_calls
        self.guard = CacheGuard(breaker or CircuitBreaker(), OnCacheError(on_cache_error))

    # Before the LLM

    def plan(self, params: Mapping[str, Any]) -> CachePlan | Uncacheable:
        try:
            return plan_request(params, namespace=self.namespace)
        except (TypeError, ValueError) as exc:  # a parameter without a canonical form: never guess a scope
            return Uncacheable(reason=str(exc), model=str(params.get("model", "")), stream=bool(params.get("stream")))

    def lookup_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"min_similarity": self.min_similarity, "timeout": self.lookup_timeout}
        if self.single_flight:
            kwargs["fill_lease"] = self.fill_lease
        return kwargs

    def wait_kwargs(self, found: LookupResult) -> dict[str, Any] | None:
        """A second lookup that waits for another caller's fill, when it is worth it."""
        if not (self.single_flight and found.fill_pending and self.fill_wait > 0):
            return None
        return {"min_similarity": self.min_similarity, "fill_lease": self.fill_lease, "fill_wait": self.fill_wait,
                "timeout": self.fill_wait + self.lookup_timeout}

    @staticmethod
    def is_hit(found: LookupResult | None) -> bool:
        return found is not None and found.hit and found.entry is not None

    def hit_reply(self, plan: CachePlan, looked: _Looked) -> tuple[ChatCompletion | list[ChatCompletionChunk],
                                                                   CallRecord]:
        found = looked.found
        assert found is not None and found.entry is not None
        entry = found.entry
        model = entry.metadata.get("openai.model", plan.model)
        info = CacheInfo(cached=True, outcome=Outcome.HIT, similarity=found.similarity, entry_id=entry.id,
                         waited_for_fill=found.waited_for_fill, prompt=plan.prompt, scope=plan.scope)
        stored_calls = entry.metadata.get("openai.tool_calls")
        tool_calls = json.loads(stored_calls) if stored_calls else None
        reply: ChatCompletion | list[ChatCompletionChunk]
        if plan.stream:
            reply = chunks_of(entry_id=entry.id, text=entry.completion, model=model,
                              include_usage=plan.include_usage, info=info, tool_calls=tool_calls)
        else:
            reply = completion_of(entry_id=entry.id, text=entry.completion, model=model, info=info,
                                  tool_calls=tool_calls)
        usage = entry.usage
        record = CallRecord(model=plan.model, answered_by=model, outcome=Outcome.HIT, stream=plan.stream,
                            similarity=found.similarity, entry_id=entry.id, lookup_ms=looked.lookup_ms,
                            prompt_tokens=usage.prompt_tokens if usage else None,
                            completion_tokens=usage.completion_tokens if usage else None,
                            finish_reason="tool_calls" if tool_calls else "stop",
                            waited_for_fill=found.waited_for_fill)
        return reply, record

    @staticmethod
    def llm_params(plan: CachePlan | Uncacheable, params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """The LLM call's arguments, and whether the wrapper added `include_usage` (to account a streamed
        answer's cost) and so must hide the usage chunk from the caller."""
        result = dict(params)
        if not isinstance(plan, CachePlan) or not plan.stream or plan.include_usage:
            return result, False
        options = params.get("stream_options")
        given = dict(options) if isinstance(options, Mapping) else {}
        result["stream_options"] = {**given, "include_usage": True}
        return result, True

    def attempts(self, primary: Any, params: Mapping[str, Any]) -> Iterable[tuple[Any, dict[str, Any], int | None]]:
        """The primary call, then each fallback: (client, arguments, fallback index)."""
        yield primary, dict(params), None
        for index, fallback in enumerate(self.fallbacks):
            model = fallback.model if fallback.model is not None else params.get("model")
            yield (fallback.client if fallback.client is not None else primary), {**params, "model": model}, index

    @staticmethod
    def falls_back(error: Exception) -> bool:
        return isinstance(error, _HARD_FAILURES)

    # After the LLM

    def storable(self, answer: Assembled) -> bool:
        """Only a complete answer is stored: ran to its end, stopped by itself, no refusal, and has text and no
        tool calls, or (with `cache_tool_calls`) has tool calls."""
        if not answer.complete or answer.refusal:
            return False
        if answer.tool_calls:
            return self.cache_tool_calls and answer.finish_reason in ("stop", "tool_calls")
        return answer.finish_reason == "stop" and bool(answer.text)

    def usage_of(self, answer: Assembled, requested_model: str) -> Usage | None:
        if answer.prompt_tokens is None or answer.completion_tokens is None:
            return None
        price = self.prices.get(answer.model or "") or self.prices.get(requested_model)
        cost = price.cost(answer.prompt_tokens, answer.completion_tokens) if price is not None else None
        return Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens, cost_usd=cost)

    @staticmethod
    def metadata_of(answer: Assembled, requested_model: str) -> dict[str, str]:
        metadata = {"openai.model": answer.model or requested_model,
                    "openai.finish_reason": answer.finish_reason or "", "openai.id": answer.response_id or ""}
        if answer.tool_calls_json is not None:
            metadata["openai.tool_calls"] = answer.tool_calls_json
        return metadata

    @staticmethod
    def feedback_target(reply: Any) -> tuple[str, str, Scope]:
        """The (prompt, entry id, scope) a report on `reply` is about.

        Raises:
            ValueError: `reply` was not served from the cache by a wrapper.
        """
        info = cache_info(reply)
        if info is None or not info.cached or info.entry_id is None or info.prompt is None or info.scope is None:
            raise ValueError("feedback is for replies served from the cache (cache_info(reply).cached)")
        return info.prompt, info.entry_id, info.scope

    @staticmethod
    def miss_info(looked: _Looked, entry_id: str | None = None) -> CacheInfo:
        found = looked.found
        if found is None:
            return CacheInfo(cached=False, outcome=Outcome.BYPASS)
        return CacheInfo(cached=False, outcome=Outcome.MISS, similarity=found.similarity, entry_id=entry_id,
                         waited_for_fill=found.waited_for_fill)

    def miss_record(self, plan: CachePlan | Uncacheable, looked: _Looked | None, answer: Assembled | None,
                    answered: _Answered | None, llm_ms: float, *, stored_id: str | None,
                    error: BaseException | None = None) -> CallRecord:
        if looked is None:
            outcome, similarity, waited = Outcome.UNCACHEABLE, None, False
        elif looked.found is None:
            outcome, similarity, waited = Outcome.BYPASS, None, False
        else:
            outcome, similarity, waited = Outcome.MISS, looked.found.similarity, looked.found.waited_for_fill
        return CallRecord(
            model=plan.model, answered_by=(answer.model if answer and answer.model else None)
            or (answered.model if answered else None), outcome=outcome, stream=plan.stream, similarity=similarity,
            entry_id=stored_id, lookup_ms=looked.lookup_ms if looked else None, llm_ms=llm_ms,
            prompt_tokens=answer.prompt_tokens if answer else None,
            completion_tokens=answer.completion_tokens if answer else None,
            finish_reason=answer.finish_reason if answer and answer.complete else None,
            stored=stored_id is not None, waited_for_fill=waited,
            fallback=answered.fallback if answered else None, error=type(error).__name__ if error else None)

    def emit(self, record: CallRecord) -> None:
        """One structured log record per wrapped call, and the user's hook."""
        if logger.isEnabledFor(logging.INFO):
            fields = {k: (v.value if isinstance(v, Outcome) else v) for k, v in asdict(record).items()}
            logger.info("openai call " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None),
                        extra={"fields": fields})
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:  # a tracing hook must not fail the call
                logger.exception("on_record hook failed")


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class _Delegating:
    """Attributes the wrapper does not intercept are the wrapped object's."""

    _inner: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# Blocking


class _Completions(_Delegating):
    def __init__(self, owner: CachedOpenAI) -> None:
        self._owner = owner
        self._inner = owner.wrapped.chat.completions

    @overload
    def create(self, *, stream: Literal[True], **params: Any) -> Stream[ChatCompletionChunk]: ...

    @overload
    def create(self, *, stream: Literal[False] = ..., **params: Any) -> ChatCompletion: ...

    @overload
    def create(self, *, stream: bool, **params: Any) -> ChatCompletion | Stream[ChatCompletionChunk]: ...

    def create(self, **params: Any) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """`OpenAI().chat.completions.create(...)`, same arguments and return types, through the cache."""
        return self._owner._create(params)

    def stream(self, **params: Any) -> ChatCompletionStreamManager[Any]:
        """`OpenAI().chat.completions.stream(...)`: the SDK's event stream over the cached `create`."""
        response_format = params.get("response_format", openai.NOT_GIVEN)
        if isinstance(response_format, type):  # structured outputs parsed into a class: not cached
            return self._inner.stream(**params)  # type: ignore[no-any-return]
        return ChatCompletionStreamManager(lambda: self.create(**{**params, "stream": True}),
                                           response_format=response_format,
                                           input_tools=params.get("tools", openai.NOT_GIVEN))


class _Chat(_Delegating):
    def __init__(self, owner: CachedOpenAI) -> None:
        self._inner = owner.wrapped.chat
        self.completions = _Completions(owner)


class CachedOpenAI(_Delegating):
    """An `openai.OpenAI` client whose `chat.completions.create` is answered from cachesvc when it can be.

        llm = CachedOpenAI(OpenAI(), cache=CacheClient("127.0.0.1:50051"), namespace="support-bot")
        reply = llm.chat.completions.create(model="gpt-4o-mini", messages=[...])   # a ChatCompletion

    Everything else (`llm.models`, `llm.embeddings`, ...) is the wrapped client's. See the README, "Drop-in for the
    OpenAI SDK", for what is cached, single-flight, failures, cost and the per-call record.
    """

    def __init__(
        self,
        client: OpenAI,
        *,
        cache: CacheClient,
        namespace: str = "",
        min_similarity: float | None = None,
        ttl_seconds: int | None = None,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT_SECONDS,
        store_timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS,
        single_flight: bool = True,
        fill_lease: float = DEFAULT_FILL_LEASE_SECONDS,
        fill_wait: float = DEFAULT_FILL_WAIT_SECONDS,
        prices: Mapping[str, ModelPrice] | None = None,
        fallbacks: Sequence[Fallback] = (),
        on_record: Callable[[CallRecord], None] | None = None,
        on_cache_error: OnCacheError | Literal["bypass", "raise"] = OnCacheError.BYPASS,
        breaker: CircuitBreaker | None = None,
        cache_tool_calls: bool = False,
    ) -> None:
        """Wraps `client` with `cache`.

        Args:
            client: The `openai.OpenAI` client (its `max_retries` and timeouts apply to every LLM call).
            cache: The `CacheClient` to look up and store in.
            namespace: The cache namespace of every entry ("" = the server's default).
            min_similarity: Threshold override in [0, 1]; None uses the server's.
            ttl_seconds: TTL of stored answers, 0 for never; None uses the server's default.
            lookup_timeout: Deadline of a lookup in seconds: past it the LLM is called without the cache.
            store_timeout: Deadline of a store in seconds.
            single_flight: Concurrent identical misses make one LLM call (the others wait for its answer).
            fill_lease: How long, in seconds, a miss may hold the fill lease before others stop waiting for it.
            fill_wait: How long, in seconds, a call waits for another caller's identical miss at most.
            prices: Per model, the price per million input and output tokens: stores then carry a cost.
            fallbacks: Tried in order when the LLM call fails for good (connection, timeout, 429 or 5xx after the
                SDK's retries, unknown model).
            on_record: Called with one CallRecord per call (also logged at INFO on "cachesvc_client.openai").
            on_cache_error: "bypass" (default: a failed cache call never fails the application) or "raise".
            breaker: The circuit breaker (default: 5 failures in a row skip the cache for 30 s).
            cache_tool_calls: Also store answers that call tools (the calls go to the entry's metadata as
                `openai.tool_calls`, and come back as the hit's `tool_calls`).

        Raises:
            ValueError: A non-positive timeout or fill_lease, a negative fill_wait, min_similarity outside [0, 1],
                or a negative ttl_seconds.
        """
        self.wrapped = client
        self._inner = client
        self._cache = cache
        self._core = _WrapperCore(
            namespace=namespace, min_similarity=min_similarity, ttl_seconds=ttl_seconds,
            lookup_timeout=lookup_timeout, store_timeout=store_timeout, single_flight=single_flight,
            fill_lease=fill_lease, fill_wait=fill_wait, prices=prices, fallbacks=fallbacks, on_record=on_record,
            on_cache_error=on_cache_error, breaker=breaker, cache_tool_calls=cache_tool_calls)
        self.chat = _Chat(self)

    @property
    def guard(self) -> CacheGuard:
        """Cache error counts and the circuit breaker."""
        return self._core.guard

    def feedback(self, reply: Any, *, correct: bool) -> FeedbackResult:
        """Tells the cache whether a reply it served was right for the request, so it learns from it.

        A pair reported wrong is never served again, and the entry needs a higher similarity for other paraphrases
        (see README, "Feedback"). Not on the hot path: errors are raised, not bypassed.

        Args:
            reply: A `ChatCompletion`, a chunk or a stream returned by this wrapper as a hit.
            correct: True if the cached answer was right for the request.

        Returns:
            What the server recorded: the similarity and the entry's threshold after the report.

        Raises:
            ValueError: `reply` was not served from the cache.
            CacheClientError: The call failed (`NotFoundError` once the entry is gone).
        """
        prompt, entry_id, scope = self._core.feedback_target(reply)
        return self._cache.feedback(prompt, entry_id, correct=correct, scope=scope)

    def _create(self, params: dict[str, Any]) -> ChatCompletion | Stream[ChatCompletionChunk]:
        core = self._core
        plan = core.plan(params)
        looked: _Looked | None = None
        if isinstance(plan, CachePlan):
            looked = self._lookup(plan)
            if core.is_hit(looked.found):
                reply, record = core.hit_reply(plan, looked)
                core.emit(record)
                if isinstance(reply, list):
                    return ReplayStream(reply, record_info(reply))
                return reply
        llm_params, hide_usage = core.llm_params(plan, params)
        started = time.perf_counter()
        try:
            raw, answered = self._call_llm(llm_params)
        except BaseException as error:
            self._release(plan, looked)
            core.emit(core.miss_record(plan, looked, None, None, _ms(started), stored_id=None, error=error))
            raise
        info = core.miss_info(looked) if looked is not None else CacheInfo(cached=False,
                                                                            outcome=Outcome.UNCACHEABLE)
        if isinstance(raw, Stream):
            def finish(answer: Assembled) -> None:
                stored = self._finish(plan, looked, answer)
                core.emit(core.miss_record(plan, looked, answer, answered, _ms(started), stored_id=stored))

            return PassThroughStream(raw, StreamTap(hide_usage=hide_usage), info, finish)
        answer = assembled_from_completion(raw)
        stored = self._finish(plan, looked, answer)
        attach(raw, replace(info, entry_id=stored))
        core.emit(core.miss_record(plan, looked, answer, answered, _ms(started), stored_id=stored))
        return raw  # type: ignore[no-any-return]

    def _lookup(self, plan: CachePlan) -> _Looked:
        core = self._core
        if not core.guard.allow():
            return _Looked(found=None, lookup_ms=None)
        started = time.perf_counter()
        try:
            found = self._cache.lookup(plan.prompt, scope=plan.scope, **core.lookup_kwargs())
            wait = core.wait_kwargs(found)
            if wait is not None:
                found = self._cache.lookup(plan.prompt, scope=plan.scope, **wait)
        except CacheClientError as error:
            if not core.guard.failed(error, "lookup"):
                raise
            return _Looked(found=None, lookup_ms=_ms(started))
        core.guard.ok()
        return _Looked(found=found, lookup_ms=_ms(started))

    def _call_llm(self, params: dict[str, Any]) -> tuple[Any, _Answered]:
        error: Exception | None = None
        for client, arguments, index in self._core.attempts(self.wrapped, params):
            try:
                return client.chat.completions.create(**arguments), _Answered(fallback=index,
                                                                               model=str(arguments.get("model")))
            except Exception as exc:
                if not self._core.falls_back(exc):
                    raise
                error = exc
                logger.warning("LLM call to %s failed (%s)%s", arguments.get("model"), type(exc).__name__,
                               "; trying the next fallback" if index is None or index + 1 < len(self._core.fallbacks)
                               else "")
        assert error is not None
        raise error

    def _finish(self, plan: CachePlan | Uncacheable, looked: _Looked | None, answer: Assembled) -> str | None:
        """Stores a complete answer, or gives the fill lease back; returns the stored entry's id."""
        core = self._core
        if not isinstance(plan, CachePlan) or looked is None or looked.found is None:
            return None
        if core.storable(answer):
            try:
                stored = self._cache.store(
                    plan.prompt, answer.text or "", scope=plan.scope, metadata=core.metadata_of(answer, plan.model),
                    ttl_seconds=core.ttl_seconds, usage=core.usage_of(answer, plan.model),
                    timeout=core.store_timeout)
            except CacheClientError as error:
                if not core.guard.failed(error, "store"):
                    raise
                self._release(plan, looked)
                return None
            return stored.id
        self._release(plan, looked)
        return None

    def _release(self, plan: CachePlan | Uncacheable, looked: _Looked | None) -> None:
        token = looked.token if looked is not None else None
        if token is None or not isinstance(plan, CachePlan):
            return
        try:
            self._cache.release_fill(plan.prompt, scope=plan.scope, fill_token=token,
                                     timeout=self._core.store_timeout)
        except CacheClientError as error:
            self._core.guard.failed(error, "release")


def record_info(chunks: list[ChatCompletionChunk]) -> CacheInfo:
    info = cache_info(chunks[0])
    assert info is not None
    return info


# asyncio


class _AsyncCompletions(_Delegating):
    def __init__(self, owner: AsyncCachedOpenAI) -> None:
        self._owner = owner
        self._inner = owner.wrapped.chat.completions

    @overload
    async def create(self, *, stream: Literal[True], **params: Any) -> AsyncStream[ChatCompletionChunk]: ...

    @overload
    async def create(self, *, stream: Literal[False] = ..., **params: Any) -> ChatCompletion: ...

    @overload
    async def create(self, *, stream: bool, **params: Any) -> ChatCompletion | AsyncStream[ChatCompletionChunk]: ...

    async def create(self, **params: Any) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        """`AsyncOpenAI().chat.completions.create(...)`, same arguments and return types, through the cache."""
        return await self._owner._create(params)

    def stream(self, **params: Any) -> AsyncChatCompletionStreamManager[Any]:
        """`AsyncOpenAI().chat.completions.stream(...)` over the cached `create`."""
        response_format = params.get("response_format", openai.NOT_GIVEN)
        if isinstance(response_format, type):
            return self._inner.stream(**params)  # type: ignore[no-any-return]
        return AsyncChatCompletionStreamManager(self.create(**{**params, "stream": True}),
                                                response_format=response_format,
                                                input_tools=params.get("tools", openai.NOT_GIVEN))


class _AsyncChat(_Delegating):
    def __init__(self, owner: AsyncCachedOpenAI) -> None:
        self._inner = owner.wrapped.chat
        self.completions = _AsyncCompletions(owner)


class AsyncCachedOpenAI(_Delegating):
    """The `openai.AsyncOpenAI` twin of `CachedOpenAI` (same arguments, with an `AsyncCacheClient`)."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        cache: AsyncCacheClient,
        namespace: str = "",
        min_similarity: float | None = None,
        ttl_seconds: int | None = None,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT_SECONDS,
        store_timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS,
        single_flight: bool = True,
        fill_lease: float = DEFAULT_FILL_LEASE_SECONDS,
        fill_wait: float = DEFAULT_FILL_WAIT_SECONDS,
        prices: Mapping[str, ModelPrice] | None = None,
        fallbacks: Sequence[Fallback] = (),
        on_record: Callable[[CallRecord], None] | None = None,
        on_cache_error: OnCacheError | Literal["bypass", "raise"] = OnCacheError.BYPASS,
        breaker: CircuitBreaker | None = None,
        cache_tool_calls: bool = False,
    ) -> None:
        """Wraps `client` with `cache`; the arguments are `CachedOpenAI`'s."""
        self.wrapped = client
        self._inner = client
        self._cache = cache
        self._core = _WrapperCore(
            namespace=namespace, min_similarity=min_similarity, ttl_seconds=ttl_seconds,
            lookup_timeout=lookup_timeout, store_timeout=store_timeout, single_flight=single_flight,
            fill_lease=fill_lease, fill_wait=fill_wait, prices=prices, fallbacks=fallbacks, on_record=on_record,
            on_cache_error=on_cache_error, breaker=breaker, cache_tool_calls=cache_tool_calls)
        self.chat = _AsyncChat(self)

    @property
    def guard(self) -> CacheGuard:
        """Cache error counts and the circuit breaker."""
        return self._core.guard

    async def feedback(self, reply: Any, *, correct: bool) -> FeedbackResult:
        """Tells the cache (async) whether a reply it served was right for the request, so it learns from it.

        A pair reported wrong is never served again, and the entry needs a higher similarity for other paraphrases
        (see README, "Feedback"). Not on the hot path: errors are raised, not bypassed.

        Args:
            reply: A `ChatCompletion`, a chunk or a stream returned by this wrapper as a hit.
            correct: True if the cached answer was right for the request.

        Returns:
            What the server recorded: the similarity and the entry's threshold after the report.

        Raises:
            ValueError: `reply` was not served from the cache.
            CacheClientError: The call failed (`NotFoundError` once the entry is gone).
        """
        prompt, entry_id, scope = self._core.feedback_target(reply)
        return await self._cache.feedback(prompt, entry_id, correct=correct, scope=scope)

    async def _create(self, params: dict[str, Any]) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        core = self._core
        plan = core.plan(params)
        looked: _Looked | None = None
        if isinstance(plan, CachePlan):
            looked = await self._lookup(plan)
            if core.is_hit(looked.found):
                reply, record = core.hit_reply(plan, looked)
                core.emit(record)
                if isinstance(reply, list):
                    return AsyncReplayStream(reply, record_info(reply))
                return reply
        llm_params, hide_usage = core.llm_params(plan, params)
        started = time.perf_counter()
        try:
            raw, answered = await self._call_llm(llm_params)
        except BaseException as error:
            await self._release(plan, looked)
            core.emit(core.miss_record(plan, looked, None, None, _ms(started), stored_id=None, error=error))
            raise
        info = core.miss_info(looked) if looked is not None else CacheInfo(cached=False,
                                                                            outcome=Outcome.UNCACHEABLE)
        if isinstance(raw, AsyncStream):
            async def finish(answer: Assembled) -> None:
                stored = await self._finish(plan, looked, answer)
                core.emit(core.miss_record(plan, looked, answer, answered, _ms(started), stored_id=stored))

            return AsyncPassThroughStream(raw, StreamTap(hide_usage=hide_usage), info, finish)
        answer = assembled_from_completion(raw)
        stored = await self._finish(plan, looked, answer)
        attach(raw, replace(info, entry_id=stored))
        core.emit(core.miss_record(plan, looked, answer, answered, _ms(started), stored_id=stored))
        return raw  # type: ignore[no-any-return]

    async def _lookup(self, plan: CachePlan) -> _Looked:
        core = self._core
        if not core.guard.allow():
            return _Looked(found=None, lookup_ms=None)
        started = time.perf_counter()
        try:
            found = await self._cache.lookup(plan.prompt, scope=plan.scope, **core.lookup_kwargs())
            wait = core.wait_kwargs(found)
            if wait is not None:
                found = await self._cache.lookup(plan.prompt, scope=plan.scope, **wait)
        except CacheClientError as error:
            if not core.guard.failed(error, "lookup"):
                raise
            return _Looked(found=None, lookup_ms=_ms(started))
        core.guard.ok()
        return _Looked(found=found, lookup_ms=_ms(started))

    async def _call_llm(self, params: dict[str, Any]) -> tuple[Any, _Answered]:
        error: Exception | None = None
        for client, arguments, index in self._core.attempts(self.wrapped, params):
            try:
                return await client.chat.completions.create(**arguments), _Answered(
                    fallback=index, model=str(arguments.get("model")))
            except Exception as exc:
                if not self._core.falls_back(exc):
                    raise
                error = exc
                logger.warning("LLM call to %s failed (%s)", arguments.get("model"), type(exc).__name__)
        assert error is not None
        raise error

    async def _finish(self, plan: CachePlan | Uncacheable, looked: _Looked | None, answer: Assembled) -> str | None:
        core = self._core
        if not isinstance(plan, CachePlan) or looked is None or looked.found is None:
            return None
        if core.storable(answer):
            try:
                stored = await self._cache.store(
                    plan.prompt, answer.text or "", scope=plan.scope, metadata=core.metadata_of(answer, plan.model),
                    ttl_seconds=core.ttl_seconds, usage=core.usage_of(answer, plan.model),
                    timeout=core.store_timeout)
            except CacheClientError as error:
                if not core.guard.failed(error, "store"):
                    raise
                await self._release(plan, looked)
                return None
            return stored.id
        await self._release(plan, looked)
        return None

    async def _release(self, plan: CachePlan | Uncacheable, looked: _Looked | None) -> None:
        token = looked.token if looked is not None else None
        if token is None or not isinstance(plan, CachePlan):
            return
        try:
            await self._cache.release_fill(plan.prompt, scope=plan.scope, fill_token=token,
                                           timeout=self._core.store_timeout)
        except CacheClientError as error:
            self._core.guard.failed(error, "release")

