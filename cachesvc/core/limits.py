"""Per-tenant call rates: a token bucket per tenant and kind of call. Pure logic over an injected clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from cachesvc.errors import RateLimited


class CallKind(Enum):
    LOOKUP = "lookup"
    STORE = "store"


@dataclass(frozen=True, kw_only=True)
class TenantLimits:
    """A tenant's limits. Rates are calls per second (None = unlimited); a bucket holds one second's worth of
    calls (at least one), so a tenant may burst to its rate and then keeps to it. `max_bytes` is the most its
    entries may hold (None = only the cache's own budget)."""

    lookups_per_second: float | None = None
    stores_per_second: float | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1 (or unset)")
        for name in ("lookups_per_second", "stores_per_second"):
            value = getattr(self, name)
            if value is not None and (math.isnan(value) or value <= 0):
                raise ValueError(f"{name} must be > 0 (or unset)")

    def rate(self, kind: CallKind) -> float | None:
        return self.lookups_per_second if kind is CallKind.LOOKUP else self.stores_per_second


@dataclass
class _Bucket:
    rate: float
    tokens: float
    updated: float

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)


class RateLimiter:
    """Token buckets keyed by (tenant, kind). Only the event loop calls it."""

    def __init__(self, *, default: TenantLimits = TenantLimits(),
                 per_tenant: Mapping[str, TenantLimits] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._default = default
        self._per_tenant = dict(per_tenant or {})
        self._monotonic = monotonic
        self._buckets: dict[tuple[str, CallKind], _Bucket] = {}

    def set_limits(self, *, default: TenantLimits, per_tenant: Mapping[str, TenantLimits]) -> None:
        """New limits (e.g. a reloaded keys file); buckets restart full at their new rates."""
        self._default = default
        self._per_tenant = dict(per_tenant)
        self._buckets.clear()

    def limits_for(self, tenant: str) -> TenantLimits:
        return self._per_tenant.get(tenant, self._default)

    def check(self, tenant: str, kind: CallKind) -> None:
        """Takes one token from the tenant's bucket for `kind`.

        Raises:
            RateLimited: the bucket is empty; `retry_after_seconds` is when the next token arrives.
        """
        rate = self.limits_for(tenant).rate(kind)
        if rate is None:
            return
        now = self._monotonic()
        bucket = self._buckets.get((tenant, kind))
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[(tenant, kind)] = _Bucket(rate=rate, tokens=max(1.0, rate), updated=now)
        bucket.tokens = min(bucket.capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise RateLimited(f"over this tenant's {kind.value} rate ({rate:g} per second)",
                              retry_after_seconds=(1.0 - bucket.tokens) / rate)
        bucket.tokens -= 1.0
