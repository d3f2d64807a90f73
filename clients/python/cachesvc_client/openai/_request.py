"""From a `chat.completions.create` request to the cache's (scope, prompt), or "uncacheable".

The mapping is shared with the TypeScript wrapper: both compute the same scope and prompt for the same request,
so an answer cached through one is served through the other (README, "What is cached").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachesvc_client.scope import context_key
from cachesvc_client.types import Scope

# Body parameters that cannot change the answer, and the SDK's request options: left out of the scope.
EXCLUDED_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "user", "metadata", "store", "service_tier",
    "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    "timeout", "extra_headers", "extra_query", "extra_body",
})


@dataclass(frozen=True, kw_only=True, slots=True)
class CachePlan:
    """Where a cacheable request is looked up and stored.

    Attributes:
        stream: the request asked for a stream.
        include_usage: `stream_options.include_usage` was set (a replayed stream ends with a usage chunk).
    """

    scope: Scope
    prompt: str
    model: str
    stream: bool
    include_usage: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class Uncacheable:
    """Why a request goes straight to the LLM (no lookup, no store)."""

    reason: str
    model: str
    stream: bool


def is_given(value: object) -> bool:
    """False for what the SDK treats as an omitted argument: None, `NOT_GIVEN` and `omit`."""
    if value is None:
        return False
    # The SDK's sentinels (NotGiven, Omit) are falsy singletons of their own classes; matched by class name so
    # this module works without importing openai.
    return type(value).__name__ not in ("NotGiven", "Omit")


def _without_nulls(value: Any) -> Any:
    """`value` with every null-valued object key dropped, at any depth: a message written with `"content": None`
    hashes like one without the key, as an SDK message object dumped with `exclude_none` does."""
    if isinstance(value, Mapping):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [_without_nulls(item) for item in value]
    return value


def _plain(message: object) -> dict[str, Any]:
    """A message (or content part) as a plain JSON object without null-valued keys."""
    if isinstance(message, Mapping):
        result: dict[str, Any] = _without_nulls(message)
        return result
    dump = getattr(message, "model_dump", None)
    if dump is None:
        raise TypeError(f"a message must be a mapping or a pydantic model, not {type(message).__name__}")
    dumped: dict[str, Any] = _without_nulls(dump(exclude_none=True))
    return dumped


def _text(content: object) -> str | None:
    """The text of a message's content: a string, or a list of parts that are all `{"type": "text", "text": str}`
    (joined with "\n"); None otherwise."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list | tuple):
        return None
    texts = []
    for part in content:
        if not isinstance(part, Mapping) and not hasattr(part, "model_dump"):
            return None
        part = _plain(part)
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            return None
        texts.append(part["text"])
    return "\n".join(texts)


def _has_non_text_parts(message: Mapping[str, Any]) -> bool:
    """Content other than none, a string or text parts (images, audio, files...)."""
    content = message.get("content")
    return content is not None and _text(content) is None


def plan_request(params: Mapping[str, Any], *, namespace: str) -> CachePlan | Uncacheable:
    """Decides whether a `chat.completions.create` call is cacheable, and where.

    Args:
        params: The call's keyword arguments, as given to the SDK.
        namespace: The wrapper's namespace.

    Returns:
        A CachePlan, or Uncacheable with the reason.

    Raises:
        TypeError, ValueError: A parameter has no canonical form (see `context_key`); the caller treats the
            request as uncacheable.
    """
    raw_model = params.get("model")
    model = raw_model if isinstance(raw_model, str) else str(raw_model or "")
    stream = bool(params.get("stream")) if is_given(params.get("stream")) else False
    n = params.get("n")
    if is_given(n) and (n != 1 or isinstance(n, bool)):
        return Uncacheable(reason="n > 1", model=model, stream=stream)
    if not isinstance(raw_model, str):
        return Uncacheable(reason="no model", model=model, stream=stream)
    raw_messages = params.get("messages")
    if not isinstance(raw_messages, Sequence) or isinstance(raw_messages, str | bytes) or not raw_messages:
        return Uncacheable(reason="no messages", model=model, stream=stream)
    if not all(isinstance(m, Mapping) or hasattr(m, "model_dump") for m in raw_messages):
        return Uncacheable(reason="a message is not an object", model=model, stream=stream)
    messages = [_plain(m) for m in raw_messages]
    last = messages[-1]
    if last.get("role") != "user":
        return Uncacheable(reason="the last message is not from the user", model=model, stream=stream)
    prompt = _text(last.get("content"))
    if prompt is None or any(_has_non_text_parts(m) for m in messages):
        return Uncacheable(reason="non-text content", model=model, stream=stream)
    # The SDK sends extra_body's keys as top-level body fields, as a TypeScript caller writes them.
    extra_body = params.get("extra_body")
    merged = {**params, **extra_body} if is_given(extra_body) and isinstance(extra_body, Mapping) else params
    body = {key: value for key, value in merged.items() if key not in EXCLUDED_PARAMS and is_given(value)}
    context = context_key(params=body, messages=messages[:-1])
    options = params.get("stream_options")
    include_usage = bool(is_given(options) and isinstance(options, Mapping) and options.get("include_usage"))
    return CachePlan(scope=Scope(namespace=namespace, model=model, context=context), prompt=prompt, model=model,
                     stream=stream, include_usage=include_usage)
