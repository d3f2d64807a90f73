"""Keeping the cache from ever failing or slowing the application: a circuit breaker and error accounting."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cachesvc_client.errors import CacheClientError, DeadlineExceeded
from cachesvc_client.llm import OnCacheError, should_bypass

logger = logging.getLogger("cachesvc_client.openai")


class CircuitBreaker:
    """Skips the cache for `cooldown_seconds` after `failure_threshold` cache failures in a row.

    After the cool-down one call tries the cache again (half-open): a success closes the breaker, a failure opens
    it for another cool-down. Thread-safe; cheap enough to consult on every call.
    """

    def __init__(self, *, failure_threshold: int = 5, cooldown_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or cooldown_seconds <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_seconds > 0")
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._trial = False

    def allow(self) -> bool:
        """Whether this call may use the cache."""
        with self._lock:
            if self._open_until is None:
                return True
            if self._clock() < self._open_until or self._trial:
                return False
            self._trial = True  # one caller probes the cache; the others keep skipping it
            return True

    def success(self) -> None:
        with self._lock:
            self._failures, self._open_until, self._trial = 0, None, False

    def failure(self) -> bool:
        """Records a failure; returns True when this failure opened the breaker."""
        with self._lock:
            self._failures += 1
            reopened = self._trial
            self._trial = False
            if reopened or self._failures >= self._threshold:
                was_closed = self._open_until is None
                self._open_until = self._clock() + self._cooldown
                return was_closed
            return False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None


class CacheGuard:
    """Counts cache errors, logs the first of each failure streak, and drives the breaker.

    Attributes:
        errors: cache calls that failed (each one bypassed the cache).
        skipped: calls that skipped the cache because the breaker was open.
    """

    def __init__(self, breaker: CircuitBreaker, policy: OnCacheError) -> None:
        self.breaker = breaker
        self.policy = policy
        self.errors = 0
        self.skipped = 0
        self._lock = threading.Lock()
        self._streak = 0

    def allow(self) -> bool:
        allowed = self.breaker.allow()
        if not allowed:
            with self._lock:
                self.skipped += 1
        return allowed

    def ok(self) -> None:
        with self._lock:
            self._streak = 0
        self.breaker.success()

    def failed(self, error: CacheClientError, step: str) -> bool:
        """A cache call failed. Returns True to carry on without the cache, False to re-raise (policy "raise").

        Only trouble with the cache itself (down, overloaded, too slow) counts toward the breaker: a request the
        server rejects (a prompt over its size limit, say) says nothing about the next one.
        """
        with self._lock:
            self.errors += 1
            self._streak += 1
            first = self._streak == 1
        if error.retryable or isinstance(error, DeadlineExceeded):
            opened = self.breaker.failure()
        else:
            opened = False
            self.breaker.success()  # the server answered: it is up
        if self.policy is OnCacheError.RAISE:
            return False
        if first:  # log once per failure streak, not once per call
            should_bypass(error, self.policy, step=step)
        if opened:
            logger.warning("cache failed %d times in a row: skipping it for a cool-down", self._streak)
        return True
