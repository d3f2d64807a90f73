"""Fill leases: single-flight for concurrent identical misses.

The first miss on (scope, normalised prompt) that asks for it takes a short lease and calls the LLM; the others
wait (bounded) for the lease to end, by a store, a release or running out, and then look up again. The lease
must be shared by every replica that serves the scope, so it lives with the entries' storage: in memory for the
embedded backend; a shared backend implements the same seam (e.g. Redis `SET NX PX` and a wait on the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cachesvc.records import ScopeKey


@dataclass(frozen=True, slots=True)
class LeaseKey:
    """What a lease is on: one normalised prompt in one scope (the tenant is part of the scope's digest; it is
    kept apart too so that a shared store can place the lease with the tenant's other keys)."""

    scope_digest: str
    normalized_prompt: str
    tenant: str

    @classmethod
    def of(cls, scope: ScopeKey, normalized_prompt: str) -> LeaseKey:
        return cls(scope.digest, normalized_prompt, scope.tenant)


class FillLeases(Protocol):
    """At most one live lease per key; waiters are woken when it ends."""

    async def acquire(self, key: LeaseKey, ttl_seconds: float) -> str | None:
        """Takes the lease for `ttl_seconds` unless a live one is held.

        Returns:
            A token identifying this holder, or None when another caller holds the lease.
        """
        ...

    async def wait(self, key: LeaseKey, timeout_seconds: float) -> bool:
        """Waits until the live lease on `key` ends (stored, released or run out), at most `timeout_seconds`.

        Returns:
            True when no live lease is held any more; False on timeout.
        """
        ...

    async def release(self, key: LeaseKey, token: str) -> bool:
        """Ends the lease if `token` still holds it; returns whether it did."""
        ...

    async def filled(self, key: LeaseKey) -> None:
        """The answer for `key` is stored: ends its lease, whoever holds it, and wakes the waiters."""
        ...


@dataclass(slots=True)
class _Lease:
    token: str
    expires_at: float
    ended: asyncio.Event
    waiters: int = 0


class InMemoryFillLeases:
    """Leases of one process (the embedded backend's). Runs on the event loop; waiters await an event, never poll.

    A lease nobody ends stays until it runs out: waiters stop waiting at its expiry, and the next acquire
    replaces it. Ended and expired leases are dropped, so the table holds at most the live ones (plus expired
    ones nobody touched since, swept when the table doubles).
    """

    def __init__(self, *, now: Callable[[], float] | None = None) -> None:
        self._leases: dict[LeaseKey, _Lease] = {}
        self._now = now
        self._sweep_at = 1024

    def _time(self) -> float:
        return self._now() if self._now is not None else asyncio.get_running_loop().time()

    def _live(self, key: LeaseKey) -> _Lease | None:
        lease = self._leases.get(key)
        if lease is not None and lease.expires_at <= self._time():
            self._end(key, lease)
            return None
        return lease

    def _end(self, key: LeaseKey, lease: _Lease) -> None:
        if self._leases.get(key) is lease:
            del self._leases[key]
        lease.ended.set()

    async def acquire(self, key: LeaseKey, ttl_seconds: float) -> str | None:
        if self._live(key) is not None:
            return None
        if len(self._leases) >= self._sweep_at:
            now = self._time()
            for stale_key, stale in [(k, v) for k, v in self._leases.items() if v.expires_at <= now]:
                self._end(stale_key, stale)
            self._sweep_at = max(1024, 2 * len(self._leases))
        token = secrets.token_hex(16)
        self._leases[key] = _Lease(token, self._time() + ttl_seconds, asyncio.Event())
        return token

    async def wait(self, key: LeaseKey, timeout_seconds: float) -> bool:
        lease = self._live(key)
        if lease is None:
            return True
        bound = min(timeout_seconds, lease.expires_at - self._time())
        lease.waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(bound, 0.0)):
                    await lease.ended.wait()
        finally:
            lease.waiters -= 1
        return self._live(key) is None

    async def release(self, key: LeaseKey, token: str) -> bool:
        lease = self._live(key)
        if lease is None or lease.token != token:
            return False
        self._end(key, lease)
        return True

    async def filled(self, key: LeaseKey) -> None:
        lease = self._leases.get(key)
        if lease is not None:
            self._end(key, lease)

    def waiters(self, key: LeaseKey) -> int:
        """Callers waiting on the live lease of `key` now."""
        lease = self._leases.get(key)
        return lease.waiters if lease is not None else 0

    def __len__(self) -> int:
        return len(self._leases)
