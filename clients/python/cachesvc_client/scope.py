"""`context_key`: a stable hash of whatever must match exactly, for `Scope.context`."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

# Bump when the canonical form changes, so old and new keys never collide by accident.
_CANONICAL_VERSION = 1

_JSON: TypeAlias = bool | int | float | str | list["_JSON"] | dict[str, "_JSON"] | None


def context_key(
    *,
    system_prompt: str | None = None,
    params: Mapping[str, object] | None = None,
    messages: Sequence[Mapping[str, object]] | None = None,
) -> str:
    """Hashes everything a cached answer depends on besides the prompt, for `Scope(context=...)`.

    The key is the SHA-256 of a canonical JSON form: mapping keys sorted, no insignificant whitespace, floats
    written by `repr` (shortest round-trip). Numbers compare by value, so `1` and `1.0` give the same key;
    `True` and `1` do not. An empty `params` or `messages`, or an empty system prompt, counts as absent. Message
    order matters. Text is hashed as given (no Unicode or whitespace normalisation).

    Args:
        system_prompt: The system prompt, if any.
        params: Sampling and other request parameters that change the answer (temperature, max_tokens, tools,
            ...). Values may be None, bool, int, float, str, and lists, tuples or string-keyed mappings of these.
        messages: A conversation prefix (e.g. `[{"role": "user", "content": "..."}]`), same value types.

    Returns:
        64 lowercase hex characters.

    Raises:
        TypeError: A value is of an unsupported type (its text form might not be stable), a mapping key is not a
            string, or `messages` is a string.
        ValueError: A float is NaN or infinite.
    """
    if isinstance(messages, str | bytes):
        raise TypeError("messages must be a sequence of mappings, not a string")
    payload: dict[str, _JSON] = {"v": _CANONICAL_VERSION}
    if system_prompt:
        payload["system_prompt"] = system_prompt
    if params:
        payload["params"] = _canonical(params, "params")
    if messages:
        payload["messages"] = [_canonical(message, f"messages[{i}]") for i, message in enumerate(messages)]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: object, path: str) -> _JSON:
    # bool before int: bool is an int subclass but must not hash like 0/1.
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} has no canonical form")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        result: dict[str, _JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: mapping keys must be str, got {type(key).__name__}")
            result[key] = _canonical(item, f"{path}.{key}")
        return result
    if isinstance(value, list | tuple):
        return [_canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{path}: unsupported type {type(value).__name__}")
