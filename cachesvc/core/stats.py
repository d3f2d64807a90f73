"""Per-namespace counters, kept by core and read by the Stats RPC and the metrics endpoint."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cachesvc.core.types import HitKind
from cachesvc.core.verify import RejectReason


@dataclass
class Counters:
    lookups: int = 0
    hits: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    stores: int = 0
    ttl_evictions: int = 0
    capacity_evictions: int = 0


class CounterBook:
    """Counters keyed by (tenant, namespace). Only the event loop writes them."""

    def __init__(self) -> None:
        self._book: defaultdict[tuple[str, str], Counters] = defaultdict(Counters)
        self._rejections: defaultdict[tuple[str, str, RejectReason], int] = defaultdict(int)

    def lookup(self, tenant: str, namespace: str, kind: HitKind) -> None:
        c = self._book[(tenant, namespace)]
        c.lookups += 1
        if kind is HitKind.EXACT:
            c.hits += 1
            c.exact_hits += 1
        elif kind is HitKind.SEMANTIC:
            c.hits += 1
            c.semantic_hits += 1

    def store(self, tenant: str, namespace: str) -> None:
        self._book[(tenant, namespace)].stores += 1

    def evicted(self, tenant: str, namespace: str, *, ttl: bool) -> None:
        c = self._book[(tenant, namespace)]
        if ttl:
            c.ttl_evictions += 1
        else:
            c.capacity_evictions += 1

    def rejected(self, tenant: str, namespace: str, reason: RejectReason) -> None:
        """A candidate that cleared the threshold was rejected by the hit verifier."""
        self._rejections[(tenant, namespace, reason)] += 1

    def rejections(self) -> dict[tuple[str, str, RejectReason], int]:
        return dict(self._rejections)

    def for_tenant(self, tenant: str) -> dict[str, Counters]:
        return {ns: c for (t, ns), c in self._book.items() if t == tenant}

    def all(self) -> dict[tuple[str, str], Counters]:
        return dict(self._book)
