"""Put the cache in front of an LLM call: look up first, call the LLM only on a miss, store its answer.

    llm = CachedLLM(client, scope=Scope(model="gpt-x", context=context_key(system_prompt=SYSTEM)), call=ask_llm)
    result = llm("What is the capital of France?")   # CompletionResult(completion=..., cached=..., ...)

By default the cache can never fail the application: if a cache call fails (server down, overloaded, too slow,
or rejecting the request), the LLM is called directly and nothing is stored. `on_cache_error="raise"` re-raises
the `CacheClientError` instead. Errors of the LLM call itself always propagate.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from cachesvc_client._validate import check_min_similarity, check_timeout, check_ttl_seconds
from cachesvc_client.client import USE_DEFAULT, Timeout
from cachesvc_client.errors import CacheClientError, DeadlineExceeded
from cachesvc_client.types import LookupResult, Scope, StoreResult

logger = logging.getLogger(__name__)


class OnCacheError(enum.StrEnum):
    """What `CachedLLM` does when a cache call fails."""

    BYPASS = "bypass"
    """Call the LLM without the cache (and skip the store); log the error."""
    RAISE = "raise"
    """Re-raise the `CacheClientError`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CompletionResult:
    """What a cached LLM call returns.

    Attributes:
        completion: The completion, from the cache or from the LLM.
        cached: True when served from the cache (the LLM was not called).
        similarity: On a hit, the served entry's similarity; on a miss, the best similarity seen (to tune the
            threshold); None when the cache was bypassed.
        entry_id: On a hit, the served entry's id; on a miss, the id of the entry just stored; None when the
            cache was bypassed or the store failed.
    """

    completion: str
    cached: bool
    similarity: float | None
    entry_id: str | None


class SupportsCache(Protocol):
    """The part of `CacheClient` that `CachedLLM` uses (tests can pass a fake)."""

    def lookup(
        self, prompt: str, *, scope: Scope | None = ..., min_similarity: float | None = ..., timeout: Timeout = ...
    ) -> LookupResult: ...

    def store(
        self,
        prompt: str,
        completion: str,
        *,
        scope: Scope | None = ...,
        ttl_seconds: int | None = ...,
        timeout: Timeout = ...,
    ) -> StoreResult: ...


class SupportsAsyncCache(Protocol):
    """The part of `AsyncCacheClient` that `AsyncCachedLLM` uses."""

    async def lookup(
        self, prompt: str, *, scope: Scope | None = ..., min_similarity: float | None = ..., timeout: Timeout = ...
    ) -> LookupResult: ...

    async def store(
        self,
        prompt: str,
        completion: str,
        *,
        scope: Scope | None = ...,
        ttl_seconds: int | None = ...,
        timeout: Timeout = ...,
    ) -> StoreResult: ...


def should_bypass(error: CacheClientError, policy: OnCacheError, *, step: str) -> bool:
    """Decides whether a failed cache call is bypassed (True) or re-raised (False), and logs a bypass.

    Args:
        error: The failed cache call's error.
        policy: The caller's `on_cache_error`.
        step: "lookup" or "store", for the log line.

    Returns:
        True to carry on without the cache, False to re-raise.
    """
    if policy is OnCacheError.RAISE:
        return False
    # Transient trouble is expected now and then; anything else (a bad key, a rejected request) is a
    # misconfiguration that silently costs every cache hit, so it is logged louder.
    transient = error.retryable or isinstance(error, DeadlineExceeded)
    logger.log(
        logging.WARNING if transient else logging.ERROR,
        "cache %s failed, calling the LLM without the cache: %s",
        step,
        error,
    )
    return True


class _CachedLLMBase:
    def __init__(
        self,
        *,
        scope: Scope,
        min_similarity: float | None,
        ttl_seconds: int | None,
        timeout: Timeout,
        on_cache_error: OnCacheError | Literal["bypass", "raise"],
    ) -> None:
        self.scope = scope
        self.min_similarity = None if min_similarity is None else check_min_similarity(min_similarity)
        self.ttl_seconds = None if ttl_seconds is None else check_ttl_seconds(ttl_seconds)
        self.timeout = timeout if timeout is USE_DEFAULT else check_timeout(timeout)
        self.on_cache_error = OnCacheError(on_cache_error)

    def _bypass(self, error: CacheClientError, step: str) -> bool:
        return should_bypass(error, self.on_cache_error, step=step)

    @staticmethod
    def _served(found: LookupResult) -> CompletionResult | None:
        """The result of a hit, or None when the lookup did not produce a usable completion."""
        if found.completion is None or found.entry is None:
            return None
        return CompletionResult(
            completion=found.completion, cached=True, similarity=found.similarity, entry_id=found.entry.id
        )

    @staticmethod
    def _fresh(completion: str, found: LookupResult | None, stored: StoreResult | None) -> CompletionResult:
        return CompletionResult(
            completion=completion,
            cached=False,
            similarity=None if found is None else found.similarity,
            entry_id=None if stored is None else stored.id,
        )


class CachedLLM(_CachedLLMBase):
    """A blocking LLM call with a semantic cache in front of it."""

    def __init__(
        self,
        client: SupportsCache,
        *,
        scope: Scope,
        call: Callable[[str], str],
        min_similarity: float | None = None,
        ttl_seconds: int | None = None,
        timeout: Timeout = USE_DEFAULT,
        on_cache_error: OnCacheError | Literal["bypass", "raise"] = OnCacheError.BYPASS,
    ) -> None:
        """Wraps `call` with `client`.

        Args:
            client: A `CacheClient` (or anything with its `lookup` and `store`).
            scope: Where entries are looked up and stored; put the model and a `context_key` here.
            call: The LLM call: prompt in, completion out.
            min_similarity: Threshold override in [0, 1]; None uses the server's.
            ttl_seconds: TTL of stored entries, 0 for never; None uses the server's default.
            timeout: Deadline per cache call (keep it short: the LLM is the fallback); USE_DEFAULT for the
                client's.
            on_cache_error: "bypass" (default) or "raise"; see the module docstring.

        Raises:
            ValueError: min_similarity outside [0, 1], a negative ttl_seconds, a bad timeout, or an unknown
                on_cache_error.
        """
        super().__init__(
            scope=scope,
            min_similarity=min_similarity,
            ttl_seconds=ttl_seconds,
            timeout=timeout,
            on_cache_error=on_cache_error,
        )
        self._client = client
        self._llm = call

    def __call__(self, prompt: str) -> CompletionResult:
        """Answers `prompt` from the cache, or from the LLM (then caches the answer).

        Args:
            prompt: The prompt.

        Returns:
            The completion and where it came from.

        Raises:
            CacheClientError: Only with `on_cache_error="raise"`.
            Exception: Whatever the LLM call raises, unchanged.
        """
        try:
            found = self._client.lookup(
                prompt, scope=self.scope, min_similarity=self.min_similarity, timeout=self.timeout
            )
        except CacheClientError as error:
            if not self._bypass(error, "lookup"):
                raise
            return self._fresh(self._llm(prompt), None, None)
        served = self._served(found)
        if served is not None:
            return served
        completion = self._llm(prompt)
        stored: StoreResult | None = None
        try:
            stored = self._client.store(
                prompt, completion, scope=self.scope, ttl_seconds=self.ttl_seconds, timeout=self.timeout
            )
        except CacheClientError as error:
            if not self._bypass(error, "store"):
                raise
        return self._fresh(completion, found, stored)


class AsyncCachedLLM(_CachedLLMBase):
    """An async LLM call with a semantic cache in front of it; the twin of `CachedLLM`."""

    def __init__(
        self,
        client: SupportsAsyncCache,
        *,
        scope: Scope,
        call: Callable[[str], Awaitable[str]],
        min_similarity: float | None = None,
        ttl_seconds: int | None = None,
        timeout: Timeout = USE_DEFAULT,
        on_cache_error: OnCacheError | Literal["bypass", "raise"] = OnCacheError.BYPASS,
    ) -> None:
        """Wraps `call` with `client`.

        Args:
            client: An `AsyncCacheClient` (or anything with its async `lookup` and `store`).
            scope: Where entries are looked up and stored; put the model and a `context_key` here.
            call: The async LLM call: prompt in, completion out.
            min_similarity: Threshold override in [0, 1]; None uses the server's.
            ttl_seconds: TTL of stored entries, 0 for never; None uses the server's default.
            timeout: Deadline per cache call; USE_DEFAULT for the client's.
            on_cache_error: "bypass" (default) or "raise"; see the module docstring.

        Raises:
            ValueError: min_similarity outside [0, 1], a negative ttl_seconds, a bad timeout, or an unknown
                on_cache_error.
        """
        super().__init__(
            scope=scope,
            min_similarity=min_similarity,
            ttl_seconds=ttl_seconds,
            timeout=timeout,
            on_cache_error=on_cache_error,
        )
        self._client = client
        self._llm = call

    async def __call__(self, prompt: str) -> CompletionResult:
        """Answers `prompt` from the cache, or from the LLM (then caches the answer).

        Args:
            prompt: The prompt.

        Returns:
            The completion and where it came from.

        Raises:
            CacheClientError: Only with `on_cache_error="raise"`.
            Exception: Whatever the LLM call raises, unchanged.
        """
        try:
            found = await self._client.lookup(
                prompt, scope=self.scope, min_similarity=self.min_similarity, timeout=self.timeout
            )
        except CacheClientError as error:
            if not self._bypass(error, "lookup"):
                raise
            return self._fresh(await self._llm(prompt), None, None)
        served = self._served(found)
        if served is not None:
            return served
        completion = await self._llm(prompt)
        stored: StoreResult | None = None
        try:
            stored = await self._client.store(
                prompt, completion, scope=self.scope, ttl_seconds=self.ttl_seconds, timeout=self.timeout
            )
        except CacheClientError as error:
            if not self._bypass(error, "store"):
                raise
        return self._fresh(completion, found, stored)
