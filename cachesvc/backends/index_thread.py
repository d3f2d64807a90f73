"""The thread that runs a backend's FAISS calls in submission order, and a way to skip the trip to it.

A search handed to the index thread costs a thread wake-up there and a loop wake-up back (~0.5 ms on a busy
2-core box, more than a 10k flat scan itself; bench/RESULTS.md, Lookup overhead, second round). When nothing is
queued or running on the thread, a cheap search can run on the caller's thread instead: holding the lock that
every queued task also takes, with no earlier submission still pending, it sees exactly what the thread would
have seen (every addition and removal submitted before it) and nothing can change the index under it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from cachesvc.backends.faiss_index import use_one_thread

T = TypeVar("T")


class IndexThread(ThreadPoolExecutor):
    """A one-thread executor whose tasks run under one lock, with `run_inline` for work that may skip it."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="faiss-index", initializer=use_one_thread)
        self._running = threading.Lock()  # held by whichever thread runs index work
        self._counting = threading.Lock()
        self._pending = 0  # submitted and not yet finished
        self._one_thread: set[int] = set()  # callers whose FAISS thread count is set (a per-thread setting)
        self.inline_runs = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._counting:
            self._pending += 1
        try:
            return super().submit(self._run, fn, args, kwargs)
        except BaseException:
            with self._counting:
                self._pending -= 1
            raise

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        try:
            with self._running:
                return fn(*args, **kwargs)
        finally:
            with self._counting:
                self._pending -= 1

    def run_inline(self, fn: Callable[[], T], *, worth_it: Callable[[], bool]) -> tuple[bool, T | None]:
        """Runs `fn` on this thread if the index thread has nothing pending and `worth_it()` (asked then, while
        the index cannot change); returns (ran, result). When it did not run, the caller submits it as usual
        (behind the pending work it must see)."""
        if not self._running.acquire(blocking=False):
            return False, None
        try:
            if self._pending or not worth_it():
                return False, None
            ident = threading.get_ident()
            if ident not in self._one_thread:
                use_one_thread()
                self._one_thread.add(ident)
            self.inline_runs += 1
            return True, fn()
        finally:
            self._running.release()
