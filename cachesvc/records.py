"""Value types shared by core and the backends: where an entry lives and what it holds."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, kw_only=True)
class ScopeKey:
    """The exact-match part of a lookup. Entries only ever match inside one scope.

    `tenant` comes from the caller's credentials (server-side), never from the request body.
    """

    tenant: str
    namespace: str = DEFAULT_NAMESPACE
    model: str = ""
    context: str = ""

    @cached_property
    def digest(self) -> str:
        """A stable 128-bit hex id: safe to log, and the key of the scope's index."""
        parts = (self.tenant, self.namespace, self.model, self.context)
        # Length-prefixed so that ("ab", "c") and ("a", "bc") can never collide.
        raw = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)
        return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True, kw_only=True)
class ScopeSelector:
    """Selects scopes for bulk deletion: a tenant's namespace, optionally one model and/or one context."""

    tenant: str
    namespace: str
    model: str | None = None
    context: str | None = None

    def matches(self, scope: ScopeKey) -> bool:
        return (
            scope.tenant == self.tenant
            and scope.namespace == self.namespace
            and (self.model is None or scope.model == self.model)
            and (self.context is None or scope.context == self.context)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenUsage:
    """What producing a completion with the LLM cost; every hit on its entry saves it again.

    Attributes:
        cost_usd: in US dollars, when the storing caller knew its prices; None otherwise.
    """

    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackReport:
    """A caller's report on one served hit: was `entry`'s completion a right answer for `prompt`?

    Attributes:
        prompt: the normalised prompt that was looked up and served the entry.
        similarity: the cosine similarity of that prompt to the entry's (1.0 for an exact hit).
        correct: the caller's verdict.
    """

    prompt: str
    similarity: float
    correct: bool


# Reports kept per entry for its threshold: the newest win. Prompts reported wrong are kept apart and all of them.
FEEDBACK_REPORTS_KEPT = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryFeedback:
    """What callers reported about one entry's hits. Immutable: a report makes a new one (`with_report`), so a
    snapshot written on another thread always reads one consistent state.

    Attributes:
        reports: the newest reports (at most FEEDBACK_REPORTS_KEPT), oldest first.
        wrong_prompts: every prompt the entry was reported wrong for: never served that entry again.
        wrong, right: report counts over the entry's life.
        lsn: the log sequence number of the last report applied (so replaying the log adds none twice).
    """

    reports: tuple[FeedbackReport, ...] = ()
    wrong_prompts: frozenset[str] = frozenset()
    wrong: int = 0
    right: int = 0
    lsn: int = 0

    def with_report(self, report: FeedbackReport, lsn: int) -> EntryFeedback:
        return EntryFeedback(
            reports=(*self.reports, report)[-FEEDBACK_REPORTS_KEPT:],
            wrong_prompts=self.wrong_prompts if report.correct else self.wrong_prompts | {report.prompt},
            wrong=self.wrong + (not report.correct), right=self.right + report.correct, lsn=lsn)


@dataclass(slots=True, kw_only=True)
class Entry:
    """One cached completion. Content fields never change; `hit_count` and `last_used_at` are bumped by the
    backend that owns the entry (through `touch`)."""

    id: str
    scope: ScopeKey
    prompt: str
    normalized_prompt: str
    completion: str
    metadata: dict[str, str]
    created_at: float
    expires_at: float | None
    size_bytes: int
    hit_count: int = 0
    last_used_at: float = field(default=0.0)
    usage: TokenUsage | None = None  # None: stored without usage (or before usage was recorded)
    feedback: EntryFeedback | None = None  # None until a caller reports on one of its hits

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class Match:
    """A nearest-neighbour candidate from a semantic index; `vector` (the stored embedding, a float32 numpy array)
    only when the search asked for it; `entry` when the backend read it with the search (saves a round trip)."""

    entry_id: str
    similarity: float
    vector: Any = None
    entry: Entry | None = None


@dataclass(frozen=True, kw_only=True)
class Usage:
    entries: int
    bytes: int
