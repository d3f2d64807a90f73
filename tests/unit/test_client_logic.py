"""The Python client: context keys, request building, conversion, error mapping, CachedLLM, and its transport.

The transport tests run a tiny exact-match gRPC servicer defined here: a double for the client's wire
behaviour (deadlines, metadata, channel ownership), not a model of the real server.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest

from cachesvc_client import (
    USE_DEFAULT,
    AsyncCacheClient,
    AsyncCachedLLM,
    CacheClient,
    CacheClientError,
    CachedLLM,
    CandidateOutcome,
    ClientState,
    DeadlineExceeded,
    Entry,
    InvalidArgument,
    LookupResult,
    NotFoundError,
    PermissionDenied,
    ResourceExhausted,
    Scope,
    StoreResult,
    Timeout,
    Unauthenticated,
    Unavailable,
    __version__,
    context_key,
)
from cachesvc_client._convert import (
    lookup_result_from_proto,
    stats_result_from_proto,
    store_result_from_proto,
)
from cachesvc_client.errors import from_rpc_error, map_grpc_errors
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

# --- context_key ------------------------------------------------------------------------------------------------


def test_context_key_does_not_depend_on_key_order() -> None:
    first = context_key(system_prompt="Be brief.", params={"temperature": 0.2, "max_tokens": 64, "stop": ["\n"]})
    second = context_key(params={"stop": ["\n"], "max_tokens": 64, "temperature": 0.2}, system_prompt="Be brief.")
    assert first == second
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_context_key_changes_when_anything_that_must_match_changes() -> None:
    base = context_key(
        system_prompt="Be brief.", params={"temperature": 0.2}, messages=[{"role": "user", "content": "hi"}]
    )
    assert base != context_key(
        system_prompt="Be brief.", params={"temperature": 0.3}, messages=[{"role": "user", "content": "hi"}]
    )
    assert base != context_key(
        system_prompt="Be terse.", params={"temperature": 0.2}, messages=[{"role": "user", "content": "hi"}]
    )
    assert base != context_key(
        system_prompt="Be brief.", params={"temperature": 0.2}, messages=[{"role": "user", "content": "ho"}]
    )
    # The same text in another field is another context.
    assert context_key(system_prompt="x") != context_key(params={"system_prompt": "x"})


def test_context_key_compares_numbers_by_value_but_not_bools() -> None:
    assert context_key(params={"temperature": 1}) == context_key(params={"temperature": 1.0})
    assert context_key(params={"n": 1}) != context_key(params={"n": True})
    assert context_key(params={"top_p": 0.1}) != context_key(params={"top_p": 0.1000001})


def test_context_key_treats_empty_as_absent_and_keeps_message_order() -> None:
    assert context_key() == context_key(system_prompt="", params={}, messages=[])
    a, b = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
    assert context_key(messages=[a, b]) != context_key(messages=[b, a])
    assert context_key(messages=[a, b]) == context_key(messages=(dict(a), dict(b)))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"params": {"when": datetime(2025, 1, 1, tzinfo=UTC)}}, TypeError),
        ({"params": {1: "int key"}}, TypeError),
        ({"params": {"temperature": float("nan")}}, ValueError),
        ({"messages": "not a list of messages"}, TypeError),
    ],
)
def test_context_key_rejects_values_without_a_stable_form(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        context_key(**kwargs)


# --- request building, through a recording channel --------------------------------------------------------------


@dataclass
class _Recorded:
    method: str
    request: Any
    timeout: float | None
    metadata: Any


@dataclass
class RecordingChannel:
    """Stands in for a grpc.Channel: records what the stub sends (after a wire round trip) and answers canned."""

    responses: dict[str, Any] = field(default_factory=dict)
    calls: list[_Recorded] = field(default_factory=list)
    closed: bool = False

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        **_: Any,
    ) -> Callable[..., Any]:
        name = method.rsplit("/", 1)[1]

        def call(request: Any, timeout: float | None = None, metadata: Any = None, **__: Any) -> Any:
            wire_request = type(request).FromString(request_serializer(request))
            self.calls.append(_Recorded(name, wire_request, timeout, metadata))
            return response_deserializer(self.responses[name].SerializeToString())

        return call

    def close(self) -> None:
        self.closed = True

    @property
    def last(self) -> _Recorded:
        return self.calls[-1]


def _recording_client(**kwargs: Any) -> tuple[CacheClient, RecordingChannel]:
    channel = RecordingChannel(
        responses={
            "Lookup": pb.LookupResponse(),
            "Store": pb.StoreResponse(id="e1"),
            "Delete": pb.DeleteResponse(deleted=3),
            "Stats": pb.StatsResponse(),
        }
    )
    return CacheClient(channel=channel, **kwargs), channel


def test_lookup_request_distinguishes_unset_threshold_from_zero() -> None:
    client, channel = _recording_client()
    scope = Scope(namespace="faq", model="m", context="c")
    client.lookup("hello", scope=scope)
    unset = channel.last.request
    assert not unset.HasField("min_similarity")
    assert (unset.scope.namespace, unset.scope.model, unset.scope.context, unset.prompt) == ("faq", "m", "c", "hello")
    assert unset.explain is False

    client.lookup("hello", min_similarity=0.0, explain=True)
    zero = channel.last.request
    assert zero.HasField("min_similarity")
    assert zero.min_similarity == 0.0
    assert zero.explain is True
    assert zero.scope == pb.Scope()


def test_store_request_distinguishes_unset_ttl_from_zero_and_carries_metadata() -> None:
    client, channel = _recording_client()
    result = client.store("q", "a")
    assert result == StoreResult(id="e1", replaced=False, expires_at=None)
    assert not channel.last.request.HasField("ttl_seconds")

    client.store("q", "a", ttl_seconds=0, metadata={"source": "test"})
    request = channel.last.request
    assert request.HasField("ttl_seconds")
    assert request.ttl_seconds == 0
    assert dict(request.metadata) == {"source": "test"}
    assert (request.prompt, request.completion) == ("q", "a")


def test_delete_requests_select_an_entry_or_a_scope_with_optional_narrowing() -> None:
    client, channel = _recording_client()
    assert client.delete("e1") == 3
    assert channel.last.request.WhichOneof("target") == "id"
    assert channel.last.request.id == "e1"

    client.delete_scope("faq")
    selector = channel.last.request.scope
    assert channel.last.request.WhichOneof("target") == "scope"
    assert selector.namespace == "faq"
    assert not selector.HasField("model")
    assert not selector.HasField("context")

    client.delete_scope("", model="", context="c")
    selector = channel.last.request.scope
    assert selector.HasField("model")
    assert selector.model == ""
    assert selector.context == "c"


def test_stats_request_distinguishes_all_namespaces_from_the_default_one() -> None:
    client, channel = _recording_client()
    client.stats()
    assert not channel.last.request.HasField("namespace")
    client.stats("")
    assert channel.last.request.HasField("namespace")


def test_timeout_default_override_and_none() -> None:
    client, channel = _recording_client(timeout=2.5)
    client.lookup("q")
    assert channel.last.timeout == 2.5
    client.lookup("q", timeout=USE_DEFAULT)
    assert channel.last.timeout == 2.5
    client.lookup("q", timeout=0.25)
    assert channel.last.timeout == 0.25
    client.lookup("q", timeout=None)
    assert channel.last.timeout is None


def test_api_key_is_sent_as_a_bearer_token_and_nothing_without_one() -> None:
    client, channel = _recording_client(api_key="s3cret")
    client.stats()
    assert dict(channel.last.metadata) == {"authorization": "Bearer s3cret"}

    anonymous, channel = _recording_client()
    anonymous.stats()
    assert channel.last.metadata is None


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.lookup("q", min_similarity=1.01), ValueError),
        (lambda c: c.lookup("q", min_similarity=-0.01), ValueError),
        (lambda c: c.lookup("q", min_similarity=float("nan")), ValueError),
        (lambda c: c.store("q", "a", ttl_seconds=-1), ValueError),
        (lambda c: c.store("q", "a", ttl_seconds=1.5), TypeError),
        (lambda c: c.lookup("q", timeout=0), ValueError),
        (lambda c: c.delete(""), ValueError),
    ],
)
def test_invalid_arguments_fail_before_anything_is_sent(
    call: Callable[[CacheClient], object], error: type[Exception]
) -> None:
    client, channel = _recording_client()
    with pytest.raises(error):
        call(client)
    assert channel.calls == []


def test_threshold_bounds_are_inclusive() -> None:
    client, channel = _recording_client()
    client.lookup("q", min_similarity=1.0)
    client.lookup("q", min_similarity=0.0)
    assert len(channel.calls) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": -1.0}, {"timeout": float("inf")}, {"api_key": ""}, {"credentials": object()}],
)
def test_invalid_constructor_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _recording_client(**kwargs)


def test_closing_a_client_leaves_a_passed_in_channel_open_and_rejects_calls() -> None:
    client, channel = _recording_client()
    with client:
        client.stats()
    assert client.state is ClientState.CLOSED
    assert channel.closed is False
    with pytest.raises(RuntimeError, match="closed"):
        client.stats()
    client.close()  # idempotent


# --- proto -> dataclass conversion ------------------------------------------------------------------------------


def _timestamp(when: datetime) -> Any:
    entry = pb.Entry()
    entry.created_at.FromDatetime(when)
    return entry.created_at


def test_lookup_hit_converts_timestamps_to_aware_utc_and_unset_expiry_to_none() -> None:
    created = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
    response = pb.LookupResponse(
        hit=True,
        entry=pb.Entry(
            id="e1",
            prompt="What is the capital of France?",
            completion="Paris.",
            metadata={"k": "v"},
            created_at=_timestamp(created),
            hit_count=4,
        ),
        similarity=0.93,
        exact=False,
        min_similarity=0.9,
        nearest_id="e1",
        timings=pb.Timings(embed_ms=7.5, search_ms=1.25, total_ms=9.0, queue_ms=2.5),
        candidates=[
            pb.Candidate(entry_id="e1", prompt="p1", similarity=0.93, outcome=pb.CANDIDATE_OUTCOME_SERVED),
            pb.Candidate(entry_id="e2", prompt="p2", similarity=0.5, outcome=pb.CANDIDATE_OUTCOME_BELOW_THRESHOLD),
        ],
    )
    result = lookup_result_from_proto(response)
    assert result.hit
    assert result.completion == "Paris."
    assert result.entry is not None
    assert result.entry.created_at == created
    assert result.entry.created_at.tzinfo is not None
    assert result.entry.created_at.utcoffset() == timedelta(0)
    assert result.entry.expires_at is None
    assert dict(result.entry.metadata) == {"k": "v"}
    assert result.entry.hit_count == 4
    # float32 on the wire; the client hands back the decimal the server meant.
    assert result.similarity == 0.93
    assert result.min_similarity == 0.9
    assert (result.timings.embed_ms, result.timings.queue_ms) == (7.5, 2.5)
    assert [c.outcome for c in result.candidates] == [CandidateOutcome.SERVED, CandidateOutcome.BELOW_THRESHOLD]
    assert result.candidates[1].similarity == 0.5


def test_lookup_miss_has_no_completion_and_empty_nearest_id_becomes_none() -> None:
    result = lookup_result_from_proto(pb.LookupResponse(hit=False, similarity=0.42, min_similarity=0.9))
    assert not result.hit
    assert result.completion is None
    assert result.entry is None
    assert result.nearest_id is None
    assert result.similarity == 0.42
    assert result.candidates == ()


def test_unknown_candidate_outcomes_from_a_newer_server_become_unspecified() -> None:
    response = pb.LookupResponse()
    response.candidates.add(entry_id="e", outcome=99)
    assert lookup_result_from_proto(response).candidates[0].outcome is CandidateOutcome.UNSPECIFIED


def test_store_and_stats_conversion() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    stored = pb.StoreResponse(id="e9", replaced=True)
    stored.expires_at.FromDatetime(expires)
    assert store_result_from_proto(stored) == StoreResult(id="e9", replaced=True, expires_at=expires)

    stats = stats_result_from_proto(
        pb.StatsResponse(
            namespaces=[pb.NamespaceStats(namespace="faq", entries=2, lookups=4, hits=3, exact_hits=1)],
            total=pb.NamespaceStats(entries=2, lookups=4, hits=3),
        )
    )
    assert stats.namespaces[0].namespace == "faq"
    assert stats.namespaces[0].exact_hits == 1
    assert stats.total.hit_rate == 0.75
    assert stats_result_from_proto(pb.StatsResponse()).total.hit_rate == 0.0


def test_entries_are_immutable_including_their_metadata() -> None:
    source = {"k": "v"}
    entry = Entry(id="e", prompt="p", completion="c", metadata=source, created_at=datetime.now(UTC))
    source["k"] = "changed"
    assert entry.metadata["k"] == "v"
    with pytest.raises(TypeError):
        entry.metadata["k"] = "x"  # type: ignore[index]


# --- error mapping ----------------------------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "expected", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument, False),
        (grpc.StatusCode.NOT_FOUND, NotFoundError, False),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated, False),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted, True),
        (grpc.StatusCode.UNAVAILABLE, Unavailable, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, False),
        (grpc.StatusCode.INTERNAL, CacheClientError, False),
    ],
)
def test_grpc_status_codes_map_to_the_exception_tree(
    code: grpc.StatusCode, expected: type[CacheClientError], retryable: bool
) -> None:
    expected_text = f"{code.name}: prompt: too long"
    error = from_rpc_error(FakeRpcError(code, "prompt: too long"))
    assert type(error) is expected
    assert error.code is code
    assert error.details == "prompt: too long"
    assert error.retryable is retryable
    assert str(error) == expected_text


def test_map_grpc_errors_chains_the_original_and_leaves_other_errors_alone() -> None:
    original = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    with pytest.raises(Unavailable) as caught, map_grpc_errors():
        raise original
    assert caught.value.__cause__ is original

    with pytest.raises(KeyError), map_grpc_errors():
        raise KeyError("not a grpc error")


def test_rpc_error_without_accessors_still_maps_to_the_root() -> None:
    error = from_rpc_error(grpc.RpcError("bare"))
    assert type(error) is CacheClientError
    assert error.code is None
    assert str(error) == "bare"


# --- CachedLLM, with an in-memory fake client ------------------------------------------------------------------


@dataclass
class FakeCache:
    """The lookup/store surface CachedLLM needs: exact match on (scope, prompt); can be told to fail."""

    entries: dict[tuple[Scope, str], str] = field(default_factory=dict)
    lookup_error: CacheClientError | None = None
    store_error: CacheClientError | None = None
    lookups: list[dict[str, Any]] = field(default_factory=list)
    stores: list[dict[str, Any]] = field(default_factory=list)

    def lookup(
        self,
        prompt: str,
        *,
        scope: Scope | None = None,
        min_similarity: float | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> LookupResult:
        self.lookups.append({"prompt": prompt, "scope": scope, "min_similarity": min_similarity, "timeout": timeout})
        if self.lookup_error is not None:
            raise self.lookup_error
        key = (scope or Scope(), prompt)
        completion = self.entries.get(key)
        entry = None
        if completion is not None:
            entry = Entry(id=f"id:{prompt}", prompt=prompt, completion=completion, created_at=datetime.now(UTC))
        return LookupResult(
            hit=entry is not None,
            entry=entry,
            similarity=1.0 if entry is not None else 0.25,
            exact=entry is not None,
            min_similarity=0.9 if min_similarity is None else min_similarity,
            nearest_id=None,
        )

    def store(
        self,
        prompt: str,
        completion: str,
        *,
        scope: Scope | None = None,
        ttl_seconds: int | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> StoreResult:
        self.stores.append({"prompt": prompt, "completion": completion, "ttl_seconds": ttl_seconds})
        if self.store_error is not None:
            raise self.store_error
        self.entries[(scope or Scope(), prompt)] = completion
        return StoreResult(id=f"id:{prompt}", replaced=False, expires_at=None)


class AsyncFakeCache:
    """The async surface AsyncCachedLLM needs, delegating to a FakeCache."""

    def __init__(self, inner: FakeCache) -> None:
        self.inner = inner

    async def lookup(
        self,
        prompt: str,
        *,
        scope: Scope | None = None,
        min_similarity: float | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> LookupResult:
        return self.inner.lookup(prompt, scope=scope, min_similarity=min_similarity, timeout=timeout)

    async def store(
        self,
        prompt: str,
        completion: str,
        *,
        scope: Scope | None = None,
        ttl_seconds: int | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> StoreResult:
        return self.inner.store(prompt, completion, scope=scope, ttl_seconds=ttl_seconds, timeout=timeout)


class CountingLLM:
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return f"answer to {prompt}"

    async def acall(self, prompt: str) -> str:
        return self(prompt)


SCOPE = Scope(namespace="faq", model="m", context=context_key(system_prompt="Be brief."))
UNAVAILABLE = Unavailable("connection refused", code=grpc.StatusCode.UNAVAILABLE)


def test_hit_is_served_without_calling_the_llm() -> None:
    cache, llm = FakeCache(entries={(SCOPE, "q"): "cached answer"}), CountingLLM()
    result = CachedLLM(cache, scope=SCOPE, call=llm, min_similarity=0.8, timeout=0.2)("q")
    assert (result.completion, result.cached, result.similarity, result.entry_id) == (
        "cached answer",
        True,
        1.0,
        "id:q",
    )
    assert llm.prompts == []
    assert cache.stores == []
    assert cache.lookups == [{"prompt": "q", "scope": SCOPE, "min_similarity": 0.8, "timeout": 0.2}]


def test_miss_calls_the_llm_once_and_stores_once() -> None:
    cache, llm = FakeCache(), CountingLLM()
    cached_llm = CachedLLM(cache, scope=SCOPE, call=llm, ttl_seconds=0)
    result = cached_llm("q")
    assert (result.completion, result.cached, result.similarity, result.entry_id) == (
        "answer to q",
        False,
        0.25,
        "id:q",
    )
    assert llm.prompts == ["q"]
    assert cache.stores == [{"prompt": "q", "completion": "answer to q", "ttl_seconds": 0}]
    # The stored answer is now a hit.
    assert cached_llm("q").cached
    assert llm.prompts == ["q"]


@pytest.mark.parametrize(
    "error",
    [
        UNAVAILABLE,
        ResourceExhausted("queue full", code=grpc.StatusCode.RESOURCE_EXHAUSTED),
        DeadlineExceeded("deadline", code=grpc.StatusCode.DEADLINE_EXCEEDED),
        Unauthenticated("unknown key", code=grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_failing_lookup_bypasses_the_cache_by_default(
    error: CacheClientError, caplog: pytest.LogCaptureFixture
) -> None:
    cache, llm = FakeCache(lookup_error=error), CountingLLM()
    result = CachedLLM(cache, scope=SCOPE, call=llm)("q")
    assert (result.completion, result.cached, result.similarity, result.entry_id) == ("answer to q", False, None, None)
    assert llm.prompts == ["q"]
    assert cache.stores == []
    assert "cache lookup failed" in caplog.text


def test_failing_store_still_returns_the_llm_answer() -> None:
    cache, llm = FakeCache(store_error=UNAVAILABLE), CountingLLM()
    result = CachedLLM(cache, scope=SCOPE, call=llm)("q")
    assert (result.completion, result.cached, result.entry_id) == ("answer to q", False, None)
    assert len(cache.stores) == 1


def test_raise_mode_reraises_cache_errors() -> None:
    llm = CountingLLM()
    with pytest.raises(Unavailable):
        CachedLLM(FakeCache(lookup_error=UNAVAILABLE), scope=SCOPE, call=llm, on_cache_error="raise")("q")
    assert llm.prompts == []
    with pytest.raises(Unavailable):
        CachedLLM(FakeCache(store_error=UNAVAILABLE), scope=SCOPE, call=llm, on_cache_error="raise")("q")


def test_llm_errors_propagate_and_nothing_is_stored() -> None:
    cache = FakeCache()

    def broken(prompt: str) -> str:
        raise RuntimeError("llm down")

    with pytest.raises(RuntimeError, match="llm down"):
        CachedLLM(cache, scope=SCOPE, call=broken)("q")
    assert cache.stores == []


@pytest.mark.parametrize(
    "kwargs",
    [{"min_similarity": 2.0}, {"ttl_seconds": -5}, {"on_cache_error": "ignore"}, {"timeout": 0.0}],
)
def test_cached_llm_validates_its_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CachedLLM(FakeCache(), scope=SCOPE, call=CountingLLM(), **kwargs)


async def test_async_cached_llm_hit_miss_and_bypass() -> None:
    inner, llm = FakeCache(), CountingLLM()
    cached_llm = AsyncCachedLLM(AsyncFakeCache(inner), scope=SCOPE, call=llm.acall)
    miss = await cached_llm("q")
    hit = await cached_llm("q")
    assert (miss.cached, miss.entry_id, hit.cached, hit.completion) == (False, "id:q", True, "answer to q")
    assert llm.prompts == ["q"]
    assert len(inner.stores) == 1

    inner.lookup_error = UNAVAILABLE
    bypassed = await cached_llm("q")
    assert (bypassed.cached, bypassed.entry_id) == (False, None)
    assert llm.prompts == ["q", "q"]
    assert len(inner.stores) == 1

    strict = AsyncCachedLLM(AsyncFakeCache(inner), scope=SCOPE, call=llm.acall, on_cache_error="raise")
    with pytest.raises(Unavailable):
        await strict("q")


# --- transport, against a tiny in-test gRPC servicer -----------------------------------------------------------

BLOCK = "__block__"


class ExactMatchServicer(pb_grpc.SemanticCacheServicer):  # type: ignore[misc]
    """Exact-match only, in memory. Records call metadata; a lookup of BLOCK waits until `release` is set."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str, str, str], pb.Entry] = {}
        self.metadata: list[dict[str, str]] = []
        self.release = threading.Event()
        self.blocked = threading.Event()
        self._ids = itertools.count(1)

    @staticmethod
    def _key(scope: Any, prompt: str) -> tuple[str, str, str, str]:
        return (scope.namespace, scope.model, scope.context, prompt)

    def _record(self, context: grpc.ServicerContext) -> None:
        self.metadata.append({item.key: item.value for item in context.invocation_metadata()})

    def Lookup(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(context)
        if not request.prompt:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt: must not be empty")
        if request.prompt == BLOCK:
            self.blocked.set()
            self.release.wait(timeout=30)
        threshold = request.min_similarity if request.HasField("min_similarity") else 0.9
        entry = self.entries.get(self._key(request.scope, request.prompt))
        if entry is None:
            return pb.LookupResponse(hit=False, min_similarity=threshold)
        return pb.LookupResponse(
            hit=True, entry=entry, similarity=1.0, exact=True, min_similarity=threshold, nearest_id=entry.id
        )

    def Store(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(context)
        key = self._key(request.scope, request.prompt)
        replaced = key in self.entries
        entry = pb.Entry(
            id=f"e{next(self._ids)}", prompt=request.prompt, completion=request.completion, metadata=request.metadata
        )
        entry.created_at.FromDatetime(datetime.now(UTC))
        if request.HasField("ttl_seconds") and request.ttl_seconds > 0:
            entry.expires_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=request.ttl_seconds))
        self.entries[key] = entry
        response = pb.StoreResponse(id=entry.id, replaced=replaced)
        if entry.HasField("expires_at"):
            response.expires_at.CopyFrom(entry.expires_at)
        return response

    def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(context)
        if request.WhichOneof("target") == "id":
            doomed = [key for key, entry in self.entries.items() if entry.id == request.id]
            if not doomed:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no entry {request.id}")
        else:
            selector = request.scope
            doomed = [
                key
                for key in self.entries
                if key[0] == selector.namespace
                and (not selector.HasField("model") or key[1] == selector.model)
                and (not selector.HasField("context") or key[2] == selector.context)
            ]
        for key in doomed:
            del self.entries[key]
        return pb.DeleteResponse(deleted=len(doomed))

    def Stats(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(context)
        namespaces = sorted({key[0] for key in self.entries})
        if request.HasField("namespace"):
            namespaces = [request.namespace]
        per = [
            pb.NamespaceStats(namespace=ns, entries=sum(1 for key in self.entries if key[0] == ns)) for ns in namespaces
        ]
        return pb.StatsResponse(namespaces=per, total=pb.NamespaceStats(entries=len(self.entries)))


@dataclass
class RunningServer:
    target: str
    servicer: ExactMatchServicer


@pytest.fixture
def server() -> Iterator[RunningServer]:
    servicer = ExactMatchServicer()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SemanticCacheServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield RunningServer(target=f"127.0.0.1:{port}", servicer=servicer)
    finally:
        servicer.release.set()
        grpc_server.stop(grace=None).wait()


def test_sync_client_round_trip(server: RunningServer) -> None:
    scope = Scope(namespace="faq", model="m")
    with CacheClient(server.target, api_key="k1") as client:
        assert not client.lookup("q", scope=scope).hit
        stored = client.store("q", "a", scope=scope, metadata={"src": "t"}, ttl_seconds=60)
        assert stored.expires_at is not None
        assert stored.expires_at.tzinfo is not None
        replacement = client.store("q", "a2", scope=scope)
        assert replacement.replaced

        found = client.lookup("q", scope=scope, min_similarity=0.0)
        assert (found.hit, found.exact, found.completion, found.min_similarity) == (True, True, "a2", 0.0)
        assert found.entry is not None
        assert found.entry.created_at.tzinfo is not None
        assert not client.lookup("q", scope=Scope(namespace="faq", model="other")).hit

        assert client.stats().total.entries == 1
        assert client.stats("faq").namespaces[0].entries == 1
        assert client.delete(replacement.id) == 1
        with pytest.raises(NotFoundError):
            client.delete(replacement.id)
        with pytest.raises(InvalidArgument, match="prompt"):
            client.lookup("")
    assert client.state is ClientState.CLOSED
    assert server.servicer.metadata[0]["authorization"] == "Bearer k1"


async def test_async_client_round_trip(server: RunningServer) -> None:
    async with AsyncCacheClient(server.target, api_key="k2") as client:
        assert not (await client.lookup("q")).hit
        await client.store("q", "a", scope=Scope(namespace="n", context="c1"))
        await client.store("q", "b", scope=Scope(namespace="n", context="c2"))
        assert (await client.lookup("q", scope=Scope(namespace="n", context="c2"))).completion == "b"
        assert await client.delete_scope("n", context="c1") == 1
        assert (await client.stats()).total.entries == 1
        with pytest.raises(InvalidArgument):
            await client.lookup("")
    assert client.state is ClientState.CLOSED
    assert all(md.get("authorization") == "Bearer k2" for md in server.servicer.metadata)


def test_no_api_key_sends_no_authorization_header(server: RunningServer) -> None:
    with CacheClient(server.target) as client:
        client.stats()
    assert "authorization" not in server.servicer.metadata[0]


def test_sync_deadline_raises_deadline_exceeded(server: RunningServer) -> None:
    with CacheClient(server.target, timeout=30.0) as client:
        try:
            with pytest.raises(DeadlineExceeded) as caught:
                client.lookup(BLOCK, timeout=0.2)
            assert isinstance(caught.value.__cause__, grpc.RpcError)
            assert server.servicer.blocked.is_set()
        finally:
            server.servicer.release.set()


async def test_async_deadline_raises_deadline_exceeded(server: RunningServer) -> None:
    async with AsyncCacheClient(server.target, timeout=0.2) as client:
        try:
            with pytest.raises(DeadlineExceeded):
                await client.lookup(BLOCK)
        finally:
            server.servicer.release.set()


def test_unreachable_server_raises_unavailable() -> None:
    # Port 1 on loopback: nothing listens there, and gRPC fails fast (no wait_for_ready).
    with CacheClient("127.0.0.1:1", timeout=5.0) as client, pytest.raises(Unavailable) as caught:
        client.stats()
    assert caught.value.retryable


def test_async_client_can_be_created_outside_the_event_loop(server: RunningServer) -> None:
    client = AsyncCacheClient(server.target)

    async def use() -> int:
        async with client:
            return (await client.stats()).total.entries

    assert asyncio.run(use()) == 0


def test_sync_client_does_not_close_a_passed_in_channel(server: RunningServer) -> None:
    channel = grpc.insecure_channel(server.target)
    try:
        client = CacheClient(channel=channel)
        client.stats()
        client.close()
        # Still usable by its owner.
        pb_grpc.SemanticCacheStub(channel).Stats(pb.StatsRequest(), timeout=5)
        with CacheClient(channel=channel) as second:
            second.stats()
    finally:
        channel.close()


async def test_async_client_does_not_close_a_passed_in_channel(server: RunningServer) -> None:
    channel = grpc.aio.insecure_channel(server.target)
    try:
        client = AsyncCacheClient(channel=channel)
        await client.stats()
        await client.close()
        with pytest.raises(RuntimeError, match="closed"):
            await client.stats()
        await pb_grpc.SemanticCacheStub(channel).Stats(pb.StatsRequest(), timeout=5)
    finally:
        await channel.close()


async def test_cached_llm_over_the_real_transport(server: RunningServer) -> None:
    llm = CountingLLM()
    async with AsyncCacheClient(server.target) as client:
        cached_llm = AsyncCachedLLM(client, scope=SCOPE, call=llm.acall, timeout=2.0)
        first, second = await cached_llm("q"), await cached_llm("q")
    assert (first.cached, second.cached, second.completion) == (False, True, "answer to q")
    assert llm.prompts == ["q"]


def test_version() -> None:
    assert __version__ == "0.1.0"
