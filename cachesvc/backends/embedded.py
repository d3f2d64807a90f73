"""The embedded backend: entries in process memory, one FAISS index per scope.

State is owned by the event loop (dicts are only touched there); every FAISS call runs on one dedicated
index thread, in submission order, so index mutations never race and a slow search never blocks the loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from cachesvc.backends.faiss_index import IndexOptions, ScopeIndex
from cachesvc.backends.protocol import Capabilities
from cachesvc.embedding.protocol import Vector
from cachesvc.errors import InvalidRequest, NotReady
from cachesvc.records import Entry, Match, ScopeKey, ScopeSelector, Usage

T = TypeVar("T")


class State(Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass
class _Scope:
    key: ScopeKey
    index: ScopeIndex
    label_to_id: dict[int, str] = field(default_factory=dict)


@dataclass
class _Tally:
    entries: int = 0
    bytes: int = 0


class EmbeddedBackend:
    """In-process backend. Not durable yet: a restart starts empty."""

    def __init__(self, *, dimension: int, index_options: IndexOptions = IndexOptions()) -> None:
        self._dimension = dimension
        self._index_options = index_options
        self._entries: dict[str, Entry] = {}
        self._labels: dict[str, int] = {}
        self._exact: dict[tuple[str, str], str] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._expiry: list[tuple[float, str]] = []
        self._scopes: dict[str, _Scope] = {}
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._next_label = itertools.count(1)
        self._index_thread: ThreadPoolExecutor | None = None
        self._build_thread: ThreadPoolExecutor | None = None
        self._state = State.NEW

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(semantic_search=True, durable=False, shared_between_replicas=False)

    async def start(self) -> None:
        if self._state is not State.NEW:
            raise RuntimeError(f"cannot start a backend that is {self._state.value}")
        self._index_thread = ThreadPoolExecutor(1, thread_name_prefix="faiss-index")
        self._build_thread = ThreadPoolExecutor(1, thread_name_prefix="faiss-build")
        self._state = State.RUNNING

    async def aclose(self) -> None:
        self._state = State.CLOSED
        for pool in (self._index_thread, self._build_thread):
            if pool is not None:
                pool.shutdown(wait=True)

    async def _on_index_thread(self, fn: Callable[[], T]) -> T:
        if self._state is not State.RUNNING or self._index_thread is None:
            raise NotReady("the backend is not running")
        return await asyncio.get_running_loop().run_in_executor(self._index_thread, fn)

    # ExactStore

    async def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    async def get_exact(self, scope: ScopeKey, normalized_prompt: str) -> Entry | None:
        entry_id = self._exact.get((scope.digest, normalized_prompt))
        return None if entry_id is None else self._entries.get(entry_id)

    async def put(self, entry: Entry, vector: Vector) -> Entry | None:
        if vector.shape != (self._dimension,):
            raise InvalidRequest(f"vector has shape {vector.shape}, the index holds {self._dimension}-d vectors")
        key = (entry.scope.digest, entry.normalized_prompt)
        old_id = self._exact.get(key)
        replaced = self._forget(old_id) if old_id is not None else None
        scope = self._scopes.get(entry.scope.digest)
        if scope is None:
            assert self._build_thread is not None
            index = ScopeIndex(dimension=self._dimension, options=self._index_options, builder=self._build_thread)
            scope = self._scopes[entry.scope.digest] = _Scope(key=entry.scope, index=index)
        label = next(self._next_label)
        entry.scope = scope.key  # share one ScopeKey object per scope
        entry.last_used_at = entry.created_at
        self._entries[entry.id] = entry
        self._labels[entry.id] = label
        scope.label_to_id[label] = entry.id
        self._exact[key] = entry.id
        self._lru[entry.id] = None
        if entry.expires_at is not None:
            heapq.heappush(self._expiry, (entry.expires_at, entry.id))
        tally = self._tallies.setdefault((entry.scope.tenant, entry.scope.namespace), _Tally())
        tally.entries += 1
        tally.bytes += entry.size_bytes
        await self._on_index_thread(lambda: scope.index.add(label, vector))
        return replaced

    async def delete(self, entry_ids: Collection[str]) -> list[Entry]:
        deleted = [e for e in (self._forget(i) for i in entry_ids) if e is not None]
        return deleted

    async def touch(self, entry: Entry, now: float) -> None:
        if entry.id in self._entries:
            entry.hit_count += 1
            entry.last_used_at = now
            self._lru.move_to_end(entry.id)

    def _forget(self, entry_id: str) -> Entry | None:
        """Removes an entry from every map at once (so it can never be served again) and queues the index
        removal behind any pending index work for it."""
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return None
        label = self._labels.pop(entry_id)
        self._lru.pop(entry_id, None)
        key = (entry.scope.digest, entry.normalized_prompt)
        if self._exact.get(key) == entry_id:
            del self._exact[key]
        tally = self._tallies[(entry.scope.tenant, entry.scope.namespace)]
        tally.entries -= 1
        tally.bytes -= entry.size_bytes
        if tally.entries == 0:
            del self._tallies[(entry.scope.tenant, entry.scope.namespace)]
        scope = self._scopes[entry.scope.digest]
        del scope.label_to_id[label]
        if not scope.label_to_id:
            del self._scopes[entry.scope.digest]  # the index goes with it; nothing is left to remove from
        elif self._index_thread is not None:
            self._index_thread.submit(scope.index.remove, label)
        return entry

    # SemanticStore

    async def search(self, scope: ScopeKey, vector: Vector, k: int) -> list[Match]:
        held = self._scopes.get(scope.digest)
        if held is None:
            return []
        found = await self._on_index_thread(lambda: held.index.search(vector, k))
        matches = []
        for label, similarity in found:
            entry_id = held.label_to_id.get(label)
            if entry_id is not None:  # deleted while the search ran
                matches.append(Match(entry_id, similarity))
        return matches

    # Inventory

    async def usage(self) -> Usage:
        return Usage(entries=len(self._entries), bytes=sum(t.bytes for t in self._tallies.values()))

    async def usage_by_namespace(self, tenant: str) -> dict[str, Usage]:
        return {ns: Usage(entries=t.entries, bytes=t.bytes) for (tn, ns), t in self._tallies.items() if tn == tenant}

    async def least_recently_used(self) -> AsyncIterator[Entry]:
        for entry_id in list(self._lru):
            entry = self._entries.get(entry_id)
            if entry is not None:
                yield entry

    async def expired(self, now: float, limit: int) -> list[Entry]:
        found: list[Entry] = []
        while self._expiry and self._expiry[0][0] <= now and len(found) < limit:
            expires_at, entry_id = heapq.heappop(self._expiry)
            entry = self._entries.get(entry_id)
            if entry is not None and entry.expires_at == expires_at:
                found.append(entry)
        return found

    async def select(self, selector: ScopeSelector) -> list[Entry]:
        return [
            self._entries[entry_id]
            for scope in self._scopes.values()
            if selector.matches(scope.key)
            for entry_id in scope.label_to_id.values()
        ]

    # For tests and benchmarks

    async def settle(self) -> None:
        """Waits until queued index work and any background index build are done."""
        for scope in list(self._scopes.values()):
            await self._on_index_thread(scope.index.wait_for_build)
        await self._on_index_thread(lambda: None)

    def index_of(self, scope: ScopeKey) -> ScopeIndex | None:
        held = self._scopes.get(scope.digest)
        return None if held is None else held.index
