"""`CacheClient` (blocking) and `AsyncCacheClient` (asyncio), sharing every non-I/O step through `BaseClient`.

    with CacheClient("127.0.0.1:50051", api_key="...") as cache:
        found = cache.lookup("What is the capital of France?", scope=Scope(model="gpt-x"))
        if not found.hit:
            cache.store("What is the capital of France?", "Paris.", scope=Scope(model="gpt-x"))

Both clients raise `cachesvc_client.errors.CacheClientError` subclasses for failed calls and `ValueError` for
arguments that are wrong before anything is sent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

import grpc
import grpc.aio

from cachesvc_client._convert import (
    feedback_result_from_proto,
    lookup_result_from_proto,
    scope_to_proto,
    stats_result_from_proto,
    store_result_from_proto,
    usage_to_proto,
)
from cachesvc_client._validate import check_min_similarity, check_timeout, check_ttl_seconds
from cachesvc_client.errors import map_grpc_errors
from cachesvc_client.types import FeedbackResult, LookupResult, Scope, StatsResult, StoreResult, Usage
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

DEFAULT_TARGET: Final = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS: Final = 5.0


class _UseDefault(enum.Enum):
    USE_DEFAULT = "USE_DEFAULT"

    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT: Final = _UseDefault.USE_DEFAULT
"""Per-call `timeout` value meaning "the client's timeout" (None would mean "no deadline")."""

Timeout: TypeAlias = float | _UseDefault | None
"""A per-call timeout: seconds, None for no deadline, or USE_DEFAULT for the client's."""


class ClientState(enum.Enum):
    """Lifecycle of a client: usable until closed, never reopened."""

    OPEN = "open"
    CLOSED = "closed"


class BaseClient:
    """Everything both clients share that is not I/O: configuration, request building, validation, state.

    Not used directly; see `CacheClient` and `AsyncCacheClient`.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None,
        timeout: float | None,
        credentials: grpc.ChannelCredentials | None,
        channel: Any,
    ) -> None:
        if api_key is not None and not api_key:
            raise ValueError("api_key must be a non-empty string or None")
        if channel is not None and credentials is not None:
            raise ValueError("pass either channel or credentials, not both: credentials only apply to own channels")
        self._timeout = check_timeout(timeout)
        self._metadata: tuple[tuple[str, str], ...] | None = (
            None if api_key is None else (("authorization", f"Bearer {api_key}"),)
        )
        self._target = target
        self._credentials = credentials
        self._owns_channel = channel is None
        # An owned channel is opened on first use (see `_stub`); a passed-in one is used as is.
        self._channel: Any = channel
        self._stub_or_none: Any = None if channel is None else pb_grpc.SemanticCacheStub(channel)
        self._state = ClientState.OPEN

    @staticmethod
    def _open_channel(target: str, credentials: grpc.ChannelCredentials | None) -> Any:
        raise NotImplementedError

    @property
    def _stub(self) -> Any:
        if self._state is ClientState.CLOSED:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if self._stub_or_none is None:
            self._channel = self._open_channel(self._target, self._credentials)
            self._stub_or_none = pb_grpc.SemanticCacheStub(self._channel)
        return self._stub_or_none

    @property
    def state(self) -> ClientState:
        """Whether the client can still be used."""
        return self._state

    def _call_options(self, timeout: Timeout) -> dict[str, Any]:
        seconds = self._timeout if isinstance(timeout, _UseDefault) else check_timeout(timeout)
        return {"timeout": seconds, "metadata": self._metadata}

    def _mark_closed(self) -> Any:
        """Moves to CLOSED; returns the channel this call must close (an owned, opened one), else None."""
        channel = self._channel if self._owns_channel and self._state is ClientState.OPEN else None
        self._state = ClientState.CLOSED
        return channel

    @staticmethod
    def _lookup_request(
        prompt: str,
        *,
        scope: Scope | None,
        min_similarity: float | None,
        explain: bool,
        fill_lease: float | None = None,
        fill_wait: float | None = None,
    ) -> pb.LookupRequest:
        request = pb.LookupRequest(scope=scope_to_proto(scope), prompt=prompt, explain=explain)
        if min_similarity is not None:
            request.min_similarity = check_min_similarity(min_similarity)
        if fill_lease is not None:
            request.fill_lease_ms = _milliseconds(fill_lease, "fill_lease")
        if fill_wait is not None:
            if fill_lease is None:
                raise ValueError("fill_wait needs fill_lease: only single-flight lookups wait for a fill")
            request.fill_wait_ms = _milliseconds(fill_wait, "fill_wait")
        return request

    @staticmethod
    def _release_fill_request(prompt: str, *, scope: Scope | None, fill_token: str) -> pb.ReleaseFillRequest:
        if not fill_token:
            raise ValueError("fill_token must be non-empty")
        return pb.ReleaseFillRequest(scope=scope_to_proto(scope), prompt=prompt, fill_token=fill_token)

    @staticmethod
    def _store_request(
        prompt: str,
        completion: str,
        *,
        scope: Scope | None,
        metadata: Mapping[str, str] | None,
        ttl_seconds: int | None,
        usage: Usage | None = None,
    ) -> pb.StoreRequest:
        request = pb.StoreRequest(scope=scope_to_proto(scope), prompt=prompt, completion=completion)
        if usage is not None:
            request.usage.CopyFrom(usage_to_proto(usage))
        if metadata is not None:
            request.metadata.update(metadata)
        if ttl_seconds is not None:
            request.ttl_seconds = check_ttl_seconds(ttl_seconds)
        return request

    @staticmethod
    def _delete_entry_request(entry_id: str) -> pb.DeleteRequest:
        if not entry_id:
            raise ValueError("entry_id must be non-empty")
        return pb.DeleteRequest(id=entry_id)

    @staticmethod
    def _delete_scope_request(namespace: str, *, model: str | None, context: str | None) -> pb.DeleteRequest:
        selector = pb.ScopeSelector(namespace=namespace)
        if model is not None:
            selector.model = model
        if context is not None:
            selector.context = context
        return pb.DeleteRequest(scope=selector)

    @staticmethod
    def _feedback_request(prompt: str, entry_id: str, *, correct: bool, scope: Scope | None) -> pb.FeedbackRequest:
        if not entry_id:
            raise ValueError("entry_id must be non-empty")
        return pb.FeedbackRequest(scope=scope_to_proto(scope), prompt=prompt, entry_id=entry_id, correct=correct)

    @staticmethod
    def _stats_request(namespace: str | None) -> pb.StatsRequest:
        return pb.StatsRequest() if namespace is None else pb.StatsRequest(namespace=namespace)


def _milliseconds(seconds: float, name: str) -> int:
    if not 0 < seconds <= 3600:
        raise ValueError(f"{name} must be in (0, 3600] seconds")
    return max(1, round(seconds * 1000))


class CacheClient(BaseClient):
    """Blocking client for a cachesvc server.

    Safe to share between threads (gRPC channels are). Close it, or use it as a context manager; a channel
    passed in is left open for its owner.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        """Creates the client (and its channel, unless one is given); connecting happens on first use.

        Args:
            target: `host:port` of the server; ignored when `channel` is given.
            api_key: Sent as `authorization: Bearer <key>` on every call; None sends no credentials.
            timeout: Default deadline per call in seconds; None means no deadline.
            credentials: TLS channel credentials (`grpc.ssl_channel_credentials()`); None opens a plaintext
                channel.
            channel: An existing channel to use instead of opening one; the client will not close it.

        Raises:
            ValueError: An empty api_key, a non-positive timeout, or both channel and credentials.
        """
        super().__init__(target, api_key=api_key, timeout=timeout, credentials=credentials, channel=channel)
        # Opened now rather than lazily, so threads sharing the client never race to open two channels.
        _ = self._stub

    @staticmethod
    def _open_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, credentials)

    def _call(self, rpc: Callable[..., Any], request: Any, timeout: Timeout) -> Any:
        options = self._call_options(timeout)
        with map_grpc_errors():
            return rpc(request, **options)

    def lookup(
        self,
        prompt: str,
        *,
        scope: Scope | None = None,
        min_similarity: float | None = None,
        explain: bool = False,
        fill_lease: float | None = None,
        fill_wait: float | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> LookupResult:
        """Looks for a cached completion of `prompt`, or of a prompt that means the same, in `scope`.

        Args:
            prompt: The prompt as the LLM would see it.
            scope: Where to look; None is the default scope.
            min_similarity: Threshold override in [0, 1] for this call; None uses the server's.
            explain: Also return the nearest candidates and why each was or was not served.
            fill_lease: Single-flight: on a miss, take the fill lease on this prompt for this many seconds
                (`LookupResult.fill_token`), unless another caller holds it (`LookupResult.fill_pending`).
            fill_wait: With `fill_lease`: when another caller holds the lease, wait up to this many seconds
                (within `timeout`) for its store and answer from it.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The hit (with its entry) or the miss (with the best similarity seen).

        Raises:
            ValueError: min_similarity outside [0, 1] or a bad timeout; nothing is sent.
            RuntimeError: The client is closed.
            CacheClientError: The call failed; see `cachesvc_client.errors` for the subclasses.
        """
        request = self._lookup_request(prompt, scope=scope, min_similarity=min_similarity, explain=explain,
                                       fill_lease=fill_lease, fill_wait=fill_wait)
        return lookup_result_from_proto(self._call(self._stub.Lookup, request, timeout))

    def store(
        self,
        prompt: str,
        completion: str,
        *,
        scope: Scope | None = None,
        metadata: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
        usage: Usage | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> StoreResult:
        """Caches `completion` for `prompt`, replacing an entry with the same scope and normalised prompt.

        A store also ends any fill lease on the prompt (single-flight), and wakes the callers waiting for it.

        Args:
            prompt: The prompt the completion answers.
            completion: The LLM's completion.
            scope: Where to store; None is the default scope.
            metadata: Free-form string metadata kept with the entry.
            ttl_seconds: Seconds until the entry expires, 0 for never; None uses the server's default TTL.
            usage: What producing the completion cost; the server counts it as saved on every hit.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The entry id, whether an entry was replaced, and the expiry.

        Raises:
            ValueError: A negative ttl_seconds or a bad timeout; nothing is sent.
            TypeError: ttl_seconds is not an int.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        request = self._store_request(prompt, completion, scope=scope, metadata=metadata, ttl_seconds=ttl_seconds,
                                      usage=usage)
        return store_result_from_proto(self._call(self._stub.Store, request, timeout))

    def release_fill(
        self, prompt: str, *, scope: Scope | None = None, fill_token: str, timeout: Timeout = USE_DEFAULT
    ) -> bool:
        """Ends a fill lease taken by a single-flight lookup without storing (e.g. the LLM call failed), so
        callers waiting for it stop waiting at once.

        Args:
            prompt: The prompt of the lookup that took the lease.
            scope: Its scope.
            fill_token: `LookupResult.fill_token`.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            False when the lease had already ended or passed to another caller.

        Raises:
            ValueError: An empty fill_token or a bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        request = self._release_fill_request(prompt, scope=scope, fill_token=fill_token)
        return bool(self._call(self._stub.ReleaseFill, request, timeout).released)

    def delete(self, entry_id: str, *, timeout: Timeout = USE_DEFAULT) -> int:
        """Deletes one entry by id.

        Args:
            entry_id: The id from `StoreResult.id` or `Entry.id`.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The number of entries deleted (the server may answer NOT_FOUND rather than 0).

        Raises:
            ValueError: An empty entry_id or a bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed (`NotFoundError` for an unknown id).
        """
        return int(self._call(self._stub.Delete, self._delete_entry_request(entry_id), timeout).deleted)

    def delete_scope(
        self,
        namespace: str,
        *,
        model: str | None = None,
        context: str | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> int:
        """Deletes every entry of a namespace, optionally only those of one model and/or one context.

        Args:
            namespace: The namespace ("" is the default namespace).
            model: Only entries of this model; None for every model.
            context: Only entries of this context key; None for every context.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The number of entries deleted.

        Raises:
            ValueError: A bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        request = self._delete_scope_request(namespace, model=model, context=context)
        return int(self._call(self._stub.Delete, request, timeout).deleted)

    def feedback(self, prompt: str, entry_id: str, *, correct: bool, scope: Scope | None = None,
                 timeout: Timeout = USE_DEFAULT) -> FeedbackResult:
        """Reports whether a served hit was a right answer; the server learns from it.

        A pair reported wrong is never served again; the entry needs a higher similarity for other paraphrases
        (within the server's --max-false-hit-rate), and one reported wrong often enough serves exact repeats only.
        Right reports let its threshold fall back.

        Args:
            prompt: The prompt that was looked up (as sent to `lookup`).
            entry_id: The served entry's id (`LookupResult.entry.id`).
            correct: True if the served completion was a right answer for `prompt`.
            scope: The scope of that lookup.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The recorded similarity and the entry's threshold after the report.

        Raises:
            ValueError: An empty entry_id or a bad timeout; nothing is sent.
            RuntimeError: The client is closed.
            CacheClientError: The call failed (`NotFoundError`: no such entry in this scope of the caller's tenant).
        """
        request = self._feedback_request(prompt, entry_id, correct=correct, scope=scope)
        return feedback_result_from_proto(self._call(self._stub.Feedback, request, timeout))

    def stats(self, namespace: str | None = None, *, timeout: Timeout = USE_DEFAULT) -> StatsResult:
        """Reads the counters of the caller's tenant.

        Args:
            namespace: Only this namespace; None for every namespace.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            Counters per namespace and in total.

        Raises:
            ValueError: A bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        return stats_result_from_proto(self._call(self._stub.Stats, self._stats_request(namespace), timeout))

    def close(self) -> None:
        """Closes the client, and its channel if the client opened it; idempotent."""
        channel = self._mark_closed()
        if channel is not None:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncCacheClient(BaseClient):
    """asyncio client for a cachesvc server (`grpc.aio`); the methods mirror `CacheClient`'s.

    It may be created outside the event loop: its channel opens on the first call, and is bound to that call's
    loop, so use one client from one loop. Close it with `await client.close()` (or `aclose()`), or use
    `async with`; a channel passed in is left open for its owner.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """Creates the client; its channel (unless one is given) opens on the first call, inside the event loop.

        Args:
            target: `host:port` of the server; ignored when `channel` is given.
            api_key: Sent as `authorization: Bearer <key>` on every call; None sends no credentials.
            timeout: Default deadline per call in seconds; None means no deadline.
            credentials: TLS channel credentials; None opens a plaintext channel.
            channel: An existing `grpc.aio` channel to use instead of opening one; the client will not close it.

        Raises:
            ValueError: An empty api_key, a non-positive timeout, or both channel and credentials.
        """
        super().__init__(target, api_key=api_key, timeout=timeout, credentials=credentials, channel=channel)

    @staticmethod
    def _open_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target)
        return grpc.aio.secure_channel(target, credentials)

    async def _call(self, rpc: Callable[..., Any], request: Any, timeout: Timeout) -> Any:
        options = self._call_options(timeout)
        with map_grpc_errors():
            return await rpc(request, **options)

    async def lookup(
        self,
        prompt: str,
        *,
        scope: Scope | None = None,
        min_similarity: float | None = None,
        explain: bool = False,
        fill_lease: float | None = None,
        fill_wait: float | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> LookupResult:
        """Looks for a cached completion of `prompt`, or of a prompt that means the same, in `scope`.

        Args:
            prompt: The prompt as the LLM would see it.
            scope: Where to look; None is the default scope.
            min_similarity: Threshold override in [0, 1] for this call; None uses the server's.
            explain: Also return the nearest candidates and why each was or was not served.
            fill_lease: Single-flight: on a miss, take the fill lease on this prompt for this many seconds
                (`LookupResult.fill_token`), unless another caller holds it (`LookupResult.fill_pending`).
            fill_wait: With `fill_lease`: when another caller holds the lease, wait up to this many seconds
                (within `timeout`) for its store and answer from it.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The hit (with its entry) or the miss (with the best similarity seen).

        Raises:
            ValueError: min_similarity outside [0, 1] or a bad timeout; nothing is sent.
            RuntimeError: The client is closed.
            CacheClientError: The call failed; see `cachesvc_client.errors` for the subclasses.
        """
        request = self._lookup_request(prompt, scope=scope, min_similarity=min_similarity, explain=explain,
                                       fill_lease=fill_lease, fill_wait=fill_wait)
        return lookup_result_from_proto(await self._call(self._stub.Lookup, request, timeout))

    async def store(
        self,
        prompt: str,
        completion: str,
        *,
        scope: Scope | None = None,
        metadata: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
        usage: Usage | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> StoreResult:
        """Caches `completion` for `prompt`, replacing an entry with the same scope and normalised prompt.

        A store also ends any fill lease on the prompt (single-flight), and wakes the callers waiting for it.

        Args:
            prompt: The prompt the completion answers.
            completion: The LLM's completion.
            scope: Where to store; None is the default scope.
            metadata: Free-form string metadata kept with the entry.
            ttl_seconds: Seconds until the entry expires, 0 for never; None uses the server's default TTL.
            usage: What producing the completion cost; the server counts it as saved on every hit.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The entry id, whether an entry was replaced, and the expiry.

        Raises:
            ValueError: A negative ttl_seconds or a bad timeout; nothing is sent.
            TypeError: ttl_seconds is not an int.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        request = self._store_request(prompt, completion, scope=scope, metadata=metadata, ttl_seconds=ttl_seconds,
                                      usage=usage)
        return store_result_from_proto(await self._call(self._stub.Store, request, timeout))

    async def release_fill(
        self, prompt: str, *, scope: Scope | None = None, fill_token: str, timeout: Timeout = USE_DEFAULT
    ) -> bool:
        """Ends a fill lease taken by a single-flight lookup without storing (e.g. the LLM call failed), so
        callers waiting for it stop waiting at once.

        Args:
            prompt: The prompt of the lookup that took the lease.
            scope: Its scope.
            fill_token: `LookupResult.fill_token`.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            False when the lease had already ended or passed to another caller.

        Raises:
            ValueError: An empty fill_token or a bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        request = self._release_fill_request(prompt, scope=scope, fill_token=fill_token)
        return bool((await self._call(self._stub.ReleaseFill, request, timeout)).released)

    async def delete(self, entry_id: str, *, timeout: Timeout = USE_DEFAULT) -> int:
        """Deletes one entry by id.

        Args:
            entry_id: The id from `StoreResult.id` or `Entry.id`.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The number of entries deleted (the server may answer NOT_FOUND rather than 0).

        Raises:
            ValueError: An empty entry_id or a bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed (`NotFoundError` for an unknown id).
        """
        return int((await self._call(self._stub.Delete, self._delete_entry_request(entry_id), timeout)).deleted)

    async def delete_scope(
        self,
        namespace: str,
        *,
        model: str | None = None,
        context: str | None = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> int:
        """Deletes every entry of a namespace, optionally only those of one model and/or one context.

        Args:
            namespace: The namespace ("" is the default namespace).
            model: Only entries of this model; None for every model.
            context: Only entries of this context key; None for every context.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The number of entries deleted.

        Raises:
            ValueError: A bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        request = self._delete_scope_request(namespace, model=model, context=context)
        return int((await self._call(self._stub.Delete, request, timeout)).deleted)

    async def feedback(self, prompt: str, entry_id: str, *, correct: bool, scope: Scope | None = None,
                       timeout: Timeout = USE_DEFAULT) -> FeedbackResult:
        """Reports whether a served hit was a right answer; the server learns from it.

        A pair reported wrong is never served again; the entry needs a higher similarity for other paraphrases
        (within the server's --max-false-hit-rate), and one reported wrong often enough serves exact repeats only.
        Right reports let its threshold fall back.

        Args:
            prompt: The prompt that was looked up (as sent to `lookup`).
            entry_id: The served entry's id (`LookupResult.entry.id`).
            correct: True if the served completion was a right answer for `prompt`.
            scope: The scope of that lookup.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            The recorded similarity and the entry's threshold after the report.

        Raises:
            ValueError: An empty entry_id or a bad timeout; nothing is sent.
            RuntimeError: The client is closed.
            CacheClientError: The call failed (`NotFoundError`: no such entry in this scope of the caller's tenant).
        """
        request = self._feedback_request(prompt, entry_id, correct=correct, scope=scope)
        return feedback_result_from_proto(await self._call(self._stub.Feedback, request, timeout))

    async def stats(self, namespace: str | None = None, *, timeout: Timeout = USE_DEFAULT) -> StatsResult:
        """Reads the counters of the caller's tenant.

        Args:
            namespace: Only this namespace; None for every namespace.
            timeout: Deadline in seconds for this call; None for none; USE_DEFAULT for the client's.

        Returns:
            Counters per namespace and in total.

        Raises:
            ValueError: A bad timeout.
            RuntimeError: The client is closed.
            CacheClientError: The call failed.
        """
        return stats_result_from_proto(await self._call(self._stub.Stats, self._stats_request(namespace), timeout))

    async def close(self) -> None:
        """Closes the client, and its channel if the client opened it; idempotent."""
        channel = self._mark_closed()
        if channel is not None:
            await channel.close()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
