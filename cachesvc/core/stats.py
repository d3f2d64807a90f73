"""Per-namespace counters, kept by core and read by the Stats RPC and the metrics endpoint."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

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

    @classmethod
    def from_raw(cls, raw: Mapping[str, float]) -> Counters:
        """Counters from a store's name -> number map; unknown names are ignored, each field keeps its type."""
        values: dict[str, Any] = {f.name: float(raw[f.name]) if isinstance(f.default, float) else int(raw[f.name])
                  for f in fields(cls) if f.name in raw}
        return cls(**values)


class CounterStore(Protocol):
    """Where counters are shared when several servers serve one cache (e.g. Redis): every server adds to it,
    and Stats on any server reads the sum. Counter names are `Counters` field names."""

    def add(self, tenant: str, namespace: str, name: str, amount: int | float = 1) -> None:
        """Adds without waiting (a store may batch); never raises."""
        ...

    async def read(self, tenant: str) -> dict[str, dict[str, float]]:
        """The tenant's counters by namespace, then by name; includes this server's own pending additions.

        Raises:
            Unavailable: the store cannot be reached.
        """
        ...


class CounterBook:
    """Counters keyed by (tenant, namespace), this server's own (for metrics); with a `shared` store, every
    addition also goes there and Stats reads from there. Only the event loop writes them.

    A tenant's namespaces are counted up to `max_namespaces_per_tenant`; calls in further namespaces are not
    counted at all (they would otherwise let one caller grow this book, Stats and /metrics without end).
    """

    def __init__(self, shared: CounterStore | None = None, *, max_namespaces_per_tenant: int | None = None) -> None:
        self._book: dict[tuple[str, str], Counters] = {}
        self._per_tenant: defaultdict[str, int] = defaultdict(int)
        self._cap = max_namespaces_per_tenant
        self._rejections: defaultdict[tuple[str, str, RejectReason], int] = defaultdict(int)
        self._shared = shared

    def add(self, tenant: str, namespace: str, name: str, amount: int | float = 1) -> None:
        """The one way a counter changes: here and, when there is one, in the shared store."""
        c = self._counters(tenant, namespace)
        if c is None:
            return
        setattr(c, name, getattr(c, name) + amount)
        if self._shared is not None:
            self._shared.add(tenant, namespace, name, amount)

    def _counters(self, tenant: str, namespace: str) -> Counters | None:
        """The namespace's counters; None past the tenant's namespace cap."""
        key = (tenant, namespace)
        c = self._book.get(key)
        if c is None:
            if self._cap is not None and self._per_tenant[tenant] >= self._cap:
                return None
            c = self._book[key] = Counters()
            self._per_tenant[tenant] += 1
        return c

    def lookup(self, tenant: str, namespace: str, kind: HitKind, saved: TokenUsage | None = None) -> None:
        """Counts a lookup; `saved` is the usage of the entry a hit served (what the LLM call would have cost)."""
        self.add(tenant, namespace, "lookups")
        if saved is not None and kind is not HitKind.MISS:
            self.add(tenant, namespace, "tokens_saved", saved.tokens)
            if saved.cost_usd is not None:
                self.add(tenant, namespace, "cost_saved_usd", saved.cost_usd)
        if kind is HitKind.EXACT:
            self.add(tenant, namespace, "hits")
            self.add(tenant, namespace, "exact_hits")
        elif kind is HitKind.SEMANTIC:
            self.add(tenant, namespace, "hits")
            self.add(tenant, namespace, "semantic_hits")

    def store(self, tenant: str, namespace: str) -> None:
        self.add(tenant, namespace, "stores")

    def evicted(self, tenant: str, namespace: str, *, ttl: bool) -> None:
        self.add(tenant, namespace, "ttl_evictions" if ttl else "capacity_evictions")

    def rejected(self, tenant: str, namespace: str, reason: RejectReason) -> None:
        """A candidate that cleared the threshold was rejected by the hit verifier."""
        if self._counters(tenant, namespace) is not None:
            self._rejections[(tenant, namespace, reason)] += 1

    def rejections(self) -> dict[tuple[str, str, RejectReason], int]:
        return dict(self._rejections)

    def for_tenant(self, tenant: str) -> dict[str, Counters]:
        """This server's own counters of `tenant`, by namespace."""
        return {ns: c for (t, ns), c in self._book.items() if t == tenant}

    async def read(self, tenant: str) -> dict[str, Counters]:
        """What Stats reports: the shared store's counters when there is one (every server's work), else this
        server's own."""
        if self._shared is None:
            return self.for_tenant(tenant)
        return {ns: Counters.from_raw(raw) for ns, raw in (await self._shared.read(tenant)).items()}

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
