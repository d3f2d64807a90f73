"""The backend seams, split by capability. Core talks to a backend only through these."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from cachesvc.embedding.protocol import Vector
from cachesvc.records import Entry, FeedbackReport, Match, ScopeKey, ScopeSelector, Usage


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    semantic_search: bool
    durable: bool
    shared_between_replicas: bool
    # The store bounds its own memory (e.g. Redis' maxmemory and eviction policy): core enforces no budget.
    manages_capacity: bool = False


class IdMinter(Protocol):
    def new_id(self, scope: ScopeKey) -> str:
        """A fresh entry id for `scope`; a backend may encode where the entry lives in it."""
        ...


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class ExactStore(Protocol):
    async def get(self, entry_id: str) -> Entry | None: ...

    async def get_exact(self, scope: ScopeKey, normalized_prompt: str) -> Entry | None: ...

    async def put(self, entry: Entry, vector: Vector) -> Entry | None:
        """Stores `entry`; returns the entry with the same scope and normalised prompt that it replaced."""
        ...

    async def delete(self, entry_ids: Collection[str]) -> list[Entry]:
        """Deletes what exists of `entry_ids`; returns the entries actually deleted."""
        ...

    async def touch(self, entry: Entry, now: float, *, from_search: bool = False) -> None:
        """Records a hit: bumps the hit count and makes the entry most recently used, and leaves the count after
        this hit in `entry.hit_count` (and `now` in `entry.last_used_at`).

        Args:
            from_search: `entry` came from `search`, whose entries may carry no statistics (see `search`): the
                backend takes the count from its own record, even if that means waiting for it.
        """
        ...


class SemanticStore(Protocol):
    @property
    def capabilities(self) -> Capabilities: ...

    async def search(self, scope: ScopeKey, vector: Vector, k: int, *, with_vectors: bool = False) -> list[Match]:
        """The up-to-`k` nearest entries of `scope`, best first (cosine similarity); with `with_vectors`, each
        match carries its stored vector (for a hit verifier). A match's entry may carry no hit count or last use
        (a backend that keeps them apart from its index need not read them for every candidate): only a served
        entry's count is reported, and `touch(..., from_search=True)` supplies it.

        Raises:
            Unsupported: the backend cannot search by vector (core treats this as a miss).
        """
        ...


class Inventory(Protocol):
    async def usage(self) -> Usage: ...

    async def usage_by_namespace(self, tenant: str) -> dict[str, Usage]: ...

    async def least_recently_used(self, limit: int) -> list[Entry]:
        """Up to `limit` entries, least recently used first."""
        ...

    async def expired(self, now: float, limit: int) -> list[Entry]: ...

    async def select(self, selector: ScopeSelector) -> list[Entry]: ...


class FeedbackStore(Protocol):
    """Callers' reports on served hits, kept with the entry (`Entry.feedback`) and gone with it."""

    async def add_feedback(self, entry: Entry, report: FeedbackReport) -> bool:
        """Adds a report to `entry`'s feedback, durable per the fsync policy before it takes effect; False when
        the entry is gone (deleted or replaced) by then."""
        ...

    async def vector_of(self, entry_id: str) -> Vector | None:
        """The entry's stored vector (None when it is gone)."""
        ...


class Backend(Lifecycle, IdMinter, ExactStore, SemanticStore, Inventory, Protocol):
    """Everything core needs from a backend."""
