"""Long prompts: a change in the details decides the answer.

Two long prompts that share a template ("Write a story about ...", a math problem, a script request) embed
within a few hundredths of each other however their details differ: an added instruction, another plot element,
swapped variables, other numbers. For prompts over LONG_PROMPT_CHARS the check compares the texts word by word
(a diff of the lower-cased word sequences) and lets through only differences that do not change what is asked:
whitespace, line breaks, punctuation and casing (gone before the diff), words split or joined ("can not" /
"cannot"), one-word typo fixes ("recieve" / "receive"), and filler ("please", articles). Any other inserted,
deleted or replaced word is a different request.

For long prompts this check decides alone: the other rules and the model were built on short questions, and on
two long prompts that differ only in form they fire on noise (a casing change read as new acronyms, a typo read
as a new name).
"""

from __future__ import annotations

from difflib import SequenceMatcher

from cachesvc.core.verify.text import Text

LONG_PROMPT_CHARS = 150
_FILLER = frozenset({"a", "an", "the", "please", "pls", "plz", "kindly", "hi", "hello", "hey", "thanks", "thank",
                     "you"})
_TYPO_MIN_LETTERS = 4  # shorter words ("r" / "p", "cat" / "car") differ in meaning, not in spelling
_TYPO_RATIO = 0.8
_MAX_WORDS = 4000  # beyond this the prompt is cut for the diff (the embedding sees only 256 tokens anyway)


def _typo(a: str, b: str) -> bool:
    return (a.isalpha() and b.isalpha() and min(len(a), len(b)) >= _TYPO_MIN_LETTERS
            and SequenceMatcher(None, a, b).ratio() >= _TYPO_RATIO)


def is_long(q: Text, c: Text) -> bool:
    return max(len(q.text), len(c.text)) > LONG_PROMPT_CHARS


def detail_changed(q: Text, c: Text) -> bool:
    """True when two prompts, at least one of them long, differ in more than form (see the module's docstring)."""
    if not is_long(q, c):
        return False
    a, b = q.words[:_MAX_WORDS], c.words[:_MAX_WORDS]
    if a == b:
        return False
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        x, y = a[i1:i2], b[j1:j2]
        if "".join(x) == "".join(y):
            continue
        if tag == "replace" and len(x) == len(y) and all(_typo(u, v) for u, v in zip(x, y, strict=True)):
            continue
        if all(t in _FILLER for t in (*x, *y)):
            continue
        return True
    return False
