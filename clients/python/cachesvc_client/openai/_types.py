"""The wrapper's typed values: cache info on replies, the per-call record, prices and fallbacks."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cachesvc_client.types import Scope

CACHE_INFO_ATTRIBUTE = "_cachesvc_info"


class Outcome(enum.StrEnum):
    """What the cache did for one wrapped call."""

    HIT = "hit"  # answered from the cache; the LLM was not called
    MISS = "miss"  # looked up, not found: the LLM answered (and its answer was stored if complete)
    BYPASS = "bypass"  # the cache failed, was too slow, or its breaker was open: the LLM answered alone
    UNCACHEABLE = "uncacheable"  # the request is never cached (n > 1, non-text content, ...): straight to the LLM


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheInfo:
    """Where a reply came from; read it with `cache_info(reply)`.

    Attributes:
        cached: True when the reply was served from the cache.
        outcome: The cache outcome of the call.
        similarity: On a hit, the served entry's similarity; on a miss, the best seen; None otherwise.
        entry_id: The served entry's id on a hit; the stored entry's id after a stored miss (for a stream, once it
            ended); else None.
        waited_for_fill: The call waited for another caller's identical request to fill the cache.
        prompt, scope: On a hit, the prompt and scope it was looked up with (what `feedback` reports on).
    """

    cached: bool
    outcome: Outcome
    similarity: float | None = None
    entry_id: str | None = None
    waited_for_fill: bool = False
    prompt: str | None = field(default=None, repr=False)
    scope: Scope | None = field(default=None, repr=False)


def cache_info(reply: Any) -> CacheInfo | None:
    """Where a reply of a wrapped call came from, without parsing text.

    Args:
        reply: A `ChatCompletion`, a `ChatCompletionChunk` of a wrapped stream, or the stream itself.

    Returns:
        The reply's CacheInfo; None for objects the wrapper did not return.
    """
    info = getattr(reply, CACHE_INFO_ATTRIBUTE, None)
    return info if isinstance(info, CacheInfo) else None


def attach(reply: Any, info: CacheInfo) -> None:
    # object.__setattr__: the SDK's pydantic models keep it out of their fields, so it never reaches JSON dumps.
    object.__setattr__(reply, CACHE_INFO_ATTRIBUTE, info)


@dataclass(frozen=True, kw_only=True, slots=True)
class CallRecord:
    """One wrapped `chat.completions.create` call, as logged and passed to the `on_record` hook.

    Attributes:
        model: The requested model.
        answered_by: The model that answered (a fallback's, or the cached entry's); None when nothing answered.
        outcome: What the cache did.
        stream: The call asked for a stream.
        similarity: As in CacheInfo.
        entry_id: As in CacheInfo.
        lookup_ms: Time spent on the cache lookup(s), including a single-flight wait; None without a lookup.
        llm_ms: Time spent in the LLM call (for a stream, until it ended); None when the LLM was not called.
        prompt_tokens, completion_tokens: The LLM's usage (on a hit: the usage the cached entry saved).
        finish_reason: The answer's finish reason (None for an abandoned stream or a failure).
        stored: The answer was stored in the cache.
        waited_for_fill: The call waited for another caller's fill.
        fallback: Index of the fallback that answered (0 = the first fallback); None for the primary call.
        error: The exception's type name when the call failed.
    """

    model: str
    answered_by: str | None
    outcome: Outcome
    stream: bool
    similarity: float | None = None
    entry_id: str | None = None
    lookup_ms: float | None = None
    llm_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    stored: bool = False
    waited_for_fill: bool = False
    fallback: int | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelPrice:
    """A model's price in US dollars per million input (prompt) and output (completion) tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        if not (self.input_per_million >= 0 and self.output_per_million >= 0):
            raise ValueError("prices must be >= 0")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


PriceTable = Mapping[str, ModelPrice]
"""Prices by model name (the model that answered, as the response names it, or as requested)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Fallback:
    """What to try after the LLM call failed for good (after the SDK's own retries).

    Attributes:
        model: The model to ask instead; None keeps the requested one.
        client: Another `OpenAI` / `AsyncOpenAI` client (e.g. another provider); None keeps the wrapped one.
    """

    model: str | None = None
    client: Any = None

    def __post_init__(self) -> None:
        if self.model is None and self.client is None:
            raise ValueError("a fallback needs a model, a client, or both")
