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
