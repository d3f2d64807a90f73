"""The exact path's key: two prompts are the same when their normalised forms are equal."""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalize_prompt(prompt: str) -> str:
    """Unicode NFC, trimmed, whitespace runs collapsed to one space; case is kept (it can change meaning)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", prompt)).strip()


# Letters, marks that follow a base character, numbers, punctuation and symbols. Not visible on their own:
# separators (Z*), controls and format characters such as U+200B or U+FEFF (Cc, Cf), surrogates, private use and
# unassigned code points, and combining marks (M*) with nothing to combine with.
_VISIBLE_CATEGORIES = frozenset("LNPS")


def has_visible_text(text: str) -> bool:
    """Whether `text` has at least one character a reader would see: a letter, number, punctuation mark or
    symbol (by Unicode general category). Prompts without one (NUL, zero-width spaces, a BOM, control characters,
    a lone combining mark) all embed alike and would match each other."""
    return any(unicodedata.category(ch)[0] in _VISIBLE_CATEGORIES for ch in text)
