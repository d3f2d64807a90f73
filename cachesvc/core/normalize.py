"""The exact path's key: two prompts are the same when their normalised forms are equal."""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalize_prompt(prompt: str) -> str:
    """Unicode NFC, trimmed, whitespace runs collapsed to one space; case is kept (it can change meaning)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", prompt)).strip()
