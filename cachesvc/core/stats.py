"""Per-namespace counters, kept by core and read by the Stats RPC and the metrics endpoint."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields

from cachesvc.core.types import HitKind
from cachesvc.core.verify import RejectReason
from cachesvc.records import TokenUsage


@dataclass
class Counters:
    lookups: int = 0
    hits: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    stores: int = 0
    ttl_evictions: int = 0
    capacity_evictions: int = 0
    tokens_saved: int = 0  # prompt + completion tokens of the entries served
    cost_saved_usd: float = 0.0  # the cost of the entries served (those stored with one)


class CounterBook:
    """Counters keyed by (tenant, namespace). Only the event loop writes them.

    A tenant's namespaces are counted up to `max_namespaces_per_tenant`; calls in further namespaces are not
    counted per namespace (they would otherwise let one caller grow this book, Stats and /metrics without end).
    """

    def __init__(self, *, max_namespaces_per_tenant: int | None = None) -> None:
        self._book: dict[tuple[str, str], Counters] = {}
        self._per_tenant: defaultdict[str, int] = defaultdict(int)
        self._cap = max_namespaces_per_tenant
        self._rejections: defaultdict[tuple[str, str, RejectReason], int] = defaultdict(int)

    def _counters(self, tenant: str, namespace: str) -> Counters:
        key = (tenant, namespace)
        c = self._book.get(key)
        if c is None:
            if self._cap is not None and self._per_tenant[tenant] >= self._cap:
                return Counters()  # counted nowhere
            c = self._book[key] = Counters()
            self._per_tenant[tenant] += 1
        return c

    def lookup(self, tenant: str, namespace: str, kind: HitKind, saved: TokenUsage | None = None) -> None:
        """Counts a lookup; `saved` is the usage of the entry a hit served (what the LLM call would have cost)."""
        c = self._counters(tenant, namespace)
        c.lookups += 1
        if saved is not None and kind is not HitKind.MISS:
            c.tokens_saved += saved.tokens
            if saved.cost_usd is not None:
                c.cost_saved_usd += saved.cost_usd
        if kind is HitKind.EXACT:
            c.hits += 1
            c.exact_hits += 1
        elif kind is HitKind.SEMANTIC:
            c.hits += 1
            c.semantic_hits += 1

    def store(self, tenant: str, namespace: str) -> None:
        self._counters(tenant, namespace).stores += 1

    def evicted(self, tenant: str, namespace: str, *, ttl: bool) -> None:
        c = self._counters(tenant, namespace)
        if ttl:
            c.ttl_evictions += 1
        else:
            c.capacity_evictions += 1

    def rejected(self, tenant: str, namespace: str, reason: RejectReason) -> None:
        """A candidate that cleared the threshold was rejected by the hit verifier."""
        if (tenant, namespace) in self._book or self._cap is None or self._per_tenant[tenant] < self._cap:
            self._counters(tenant, namespace)
            self._rejections[(tenant, namespace, reason)] += 1

    def rejections(self) -> dict[tuple[str, str, RejectReason], int]:
        return dict(self._rejections)

    def for_tenant(self, tenant: str) -> dict[str, Counters]:
        return {ns: c for (t, ns), c in self._book.items() if t == tenant}

    def all(self) -> dict[tuple[str, str], Counters]:
        return dict(self._book)

    def by_tenant(self) -> dict[str, Counters]:
        """Each tenant's counters summed over its namespaces (what /metrics shows: no namespace names)."""
        totals: dict[str, Counters] = {}
        for (tenant, _ns), c in self._book.items():
            t = totals.setdefault(tenant, Counters())
            for f in fields(Counters):
                setattr(t, f.name, getattr(t, f.name) + getattr(c, f.name))
        return totals

    def rejections_by_tenant(self) -> dict[tuple[str, RejectReason], int]:
        totals: defaultdict[tuple[str, RejectReason], int] = defaultdict(int)
        for (tenant, _ns, reason), count in self._rejections.items():
            totals[(tenant, reason)] += count
        return dict(totals)
