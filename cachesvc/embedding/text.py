"""Checks every text passes before any model work."""

from __future__ import annotations

from cachesvc.errors import InvalidRequest

DEFAULT_MAX_TEXT_BYTES = 32 * 1024


def checked_text(text: str, *, max_bytes: int = DEFAULT_MAX_TEXT_BYTES, field: str = "text") -> str:
    """Returns `text` ready for the tokenizer, or raises before any model work is spent on it.

    Lone surrogates (what undecodable bytes become in a Python str) are replaced, because the Rust tokenizer
    cannot take them; NUL and other control characters are left to the tokenizer, which drops them.

    Raises:
        InvalidRequest: the text is empty, whitespace only, or longer than `max_bytes` of UTF-8.
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
        size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidRequest(f"is {size} bytes of UTF-8; the limit is {max_bytes}", field=field)
    if not text.strip():
        raise InvalidRequest("must not be empty or whitespace only", field=field)
    return text
