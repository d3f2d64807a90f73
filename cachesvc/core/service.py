"""CacheService: the lookup and store decisions, over a TextEncoder and a Backend."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from cachesvc.backends.leases import FillLeases, LeaseKey
from cachesvc.backends.protocol import Backend, FeedbackStore
from cachesvc.clock import Clock
from cachesvc.core.feedback import FeedbackOptions, entry_threshold, pair_blocked, serves_paraphrases
from cachesvc.core.normalize import has_visible_text, normalize_prompt
from cachesvc.core.policy import SizeLimits, TTLKind, TTLPolicy, checked_similarity, utf8_size
from cachesvc.core.stats import CounterBook, Counters, CounterStore
from cachesvc.core.types import (
    CandidateOutcome,
    CandidateReport,
    DeleteById,
    DeleteTarget,
    Feedback,
    FeedbackResult,
    FillOutcome,
    FillRequest,
    HitKind,
    Lookup,
    LookupResult,
    NamespaceStats,
    StageTimings,
    StoreResult,
    Write,
)
from cachesvc.core.verify import HitVerifier, RejectReason, VerifyInput
from cachesvc.embedding.protocol import PartitionedEncoder
from cachesvc.errors import InvalidRequest, NotFound, QuotaExceeded, Unavailable, Unsupported
from cachesvc.lifecycle import State
from cachesvc.records import DEFAULT_NAMESPACE, Entry, FeedbackReport, ScopeKey, ScopeSelector, TokenUsage, Usage

log = logging.getLogger(__name__)

# Bytes an entry costs beyond its vector and texts: the Entry object, its dict and LRU slots, the exact-key
# tuple, label maps and FAISS id map: 1,786 B measured at 100k entries (bench/RESULTS.md, cache service targets).
ENTRY_OVERHEAD_BYTES = 1800

# A tenant over its byte quota is brought down to this share of it.
QUOTA_EVICTION_TARGET = 0.9

# How much of an unknown entry id a NOT_FOUND message repeats.
MAX_ECHOED_ID_CHARS = 64
# Distinct scopes whose checked instance is kept (with its digest); a cache, cleared when full. At the longest
# scope fields allowed this bounds it to a few MB.
MAX_KNOWN_SCOPES = 1024


def entry_size_bytes(*, dimension: int, prompt: str, normalized_prompt: str, completion_bytes: int,
                     metadata_bytes: int) -> int:
    """What an entry is charged against the byte budget: its vector, texts, metadata and fixed overhead."""
    return (dimension * 4 + utf8_size(prompt) + (utf8_size(normalized_prompt) if normalized_prompt != prompt else 0)
            + completion_bytes + metadata_bytes + ENTRY_OVERHEAD_BYTES)


@dataclass(frozen=True, kw_only=True)
class CacheOptions:
    """Cache policy.

    Attributes:
        min_similarity: the default threshold (cosine similarity in [0, 1], higher is stricter) without a hit
            verifier.
        recall_similarity: the default threshold when a hit verifier runs: candidates at or above it are
            verified, and served only if the verifier accepts. Must be <= min_similarity; None = min_similarity.
            A request's own threshold replaces whichever default applies.
    """

    min_similarity: float = 0.95
    recall_similarity: float | None = None
    default_ttl: TTLPolicy = TTLPolicy.never()
    max_bytes: int | None = None
    max_entries: int | None = None
    top_k: int = 4
    limits: SizeLimits = SizeLimits()
    sweep_interval_seconds: float = 1.0
    sweep_batch: int = 1000
    # Single-flight bounds: a request's fill lease and wait are capped at these.
    max_fill_lease_seconds: float = 120.0
    max_fill_wait_seconds: float = 60.0
    max_ttl_seconds: float = 10 * 366 * 86400
    max_namespaces_per_tenant: int | None = 1000
    feedback: FeedbackOptions = FeedbackOptions()

    def __post_init__(self) -> None:
        checked_similarity(self.min_similarity, field="min_similarity")
        if self.recall_similarity is not None:
            checked_similarity(self.recall_similarity, field="recall_similarity")
            if self.recall_similarity > self.min_similarity:
                raise ValueError("recall_similarity must be <= min_similarity")
        if self.default_ttl.kind is TTLKind.DEFAULT:
            raise ValueError("default_ttl must be concrete: TTLPolicy.never() or TTLPolicy.of(seconds)")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1 (or unset)")
        if self.max_entries is not None and self.max_entries < 1:
            raise ValueError("max_entries must be >= 1 (or unset)")
        if self.max_namespaces_per_tenant is not None and self.max_namespaces_per_tenant < 1:
            raise ValueError("max_namespaces_per_tenant must be >= 1 (or unset)")
        if self.max_ttl_seconds <= 0:
            raise ValueError("max_ttl_seconds must be > 0")
        if self.default_ttl.kind is TTLKind.SECONDS and self.default_ttl.seconds > self.max_ttl_seconds:
            raise ValueError("default_ttl must be <= max_ttl_seconds")
        if self.top_k < 1 or self.sweep_interval_seconds <= 0 or self.sweep_batch < 1:
            raise ValueError("top_k, sweep_interval_seconds and sweep_batch must be positive")
        if self.max_fill_lease_seconds < 0 or self.max_fill_wait_seconds < 0:
            raise ValueError("max_fill_lease_seconds and max_fill_wait_seconds must be >= 0")


class CacheService:
    """Scoped semantic lookup and store. All methods run on the event loop; CPU work is awaited elsewhere."""

    def __init__(self, *, encoder: PartitionedEncoder, backend: Backend, clock: Clock, options: CacheOptions,
                 verifier: HitVerifier | None = None,
                 namespace_verifiers: Mapping[str, HitVerifier | None] | None = None,
                 leases: FillLeases | None = None,
                 tenant_max_bytes: Callable[[str], int | None] | None = None,
                 shared_counters: CounterStore | None = None,
                 feedback_store: FeedbackStore | None = None) -> None:
        """Args:
            leases: fill leases for single-flight lookups; None ignores the requests' fill fields.
            verifier: checks each candidate that clears the threshold before it is served; None serves the
                best candidate that clears it (and uses `min_similarity` as the default threshold).
            namespace_verifiers: a namespace's own verifier (None = off) in place of `verifier`, in every tenant.
            tenant_max_bytes: a tenant's byte quota (None = none); read on every store, so it may change.
            shared_counters: where counters are shared with other servers of the same cache; Stats reads them there.
            feedback_store: where callers' reports are kept (the backend, when it can); None: `feedback` raises
                Unsupported.
        """
        self._encoder = encoder
        self._backend = backend
        self._clock = clock
        self._options = options
        self._verifier = verifier
        self._namespace_verifiers = dict(namespace_verifiers or {})
        self._leases = leases
        self._tenant_max_bytes = tenant_max_bytes or (lambda _tenant: None)
        self._feedback_store = feedback_store
        self._counters = CounterBook(shared_counters, max_namespaces_per_tenant=options.max_namespaces_per_tenant)
        self._sweeper: asyncio.Task[None] | None = None
        self._known_scopes: dict[ScopeKey, ScopeKey] = {}
        self._state = State.NEW

    def _verifier_for(self, scope: ScopeKey) -> tuple[HitVerifier | None, float]:
        """The verifier of `scope`'s namespace and the default threshold that goes with it."""
        verifier = self._namespace_verifiers.get(scope.namespace, self._verifier)
        options = self._options
        if verifier is None or options.recall_similarity is None:
            return verifier, options.min_similarity
        return verifier, options.recall_similarity

    @property
    def options(self) -> CacheOptions:
        return self._options

    @property
    def counters(self) -> CounterBook:
        return self._counters

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="ttl-sweeper")
        self._state = State.RUNNING

    async def aclose(self) -> None:
        self._state = State.CLOSED
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def __aenter__(self) -> CacheService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # Lookup

    async def lookup(self, request: Lookup) -> LookupResult:
        """Answers from the exact path, else from the scope's nearest live entries.

        With `request.fill` (single-flight), a miss takes the fill lease on (scope, normalised prompt), or, when
        another caller holds it, waits a bounded time for that caller's store and looks up again.

        Raises:
            InvalidRequest: bad prompt, scope or threshold.
            Overloaded: the embedder's queue is full.
        """
        started = time.perf_counter()
        scope = self.checked_scope(request.scope)
        prompt = self._checked_prompt(request.prompt)
        result = await self._search(request, scope, prompt, started)
        if not result.hit and request.fill is not None and request.fill.lease_seconds > 0 and self._leases is not None:
            result = await self._single_flight(request, request.fill, self._leases, scope, prompt, result, started)
        saved = result.entry.usage if result.entry is not None else None
        self._counters.lookup(scope.tenant, scope.namespace, result.hit_kind, saved)
        return result

    async def _single_flight(self, request: Lookup, fill: FillRequest, leases: FillLeases, scope: ScopeKey,
                             prompt: str, result: LookupResult, started: float) -> LookupResult:
        """A miss under single-flight: take the lease, or wait for its holder's store and look up again."""
        options = self._options
        key = LeaseKey.of(scope, prompt)
        lease_seconds = max(min(fill.lease_seconds, options.max_fill_lease_seconds), 0.001)
        wait_seconds = min(fill.wait_seconds, options.max_fill_wait_seconds)
        if request.deadline is not None:
            # Leave time to answer before the caller's deadline: a reply after it is lost.
            wait_seconds = min(wait_seconds, (request.deadline - time.monotonic()) * 0.9)
        give_up_at = time.perf_counter() + max(wait_seconds, 0.0)
        waited = False
        while True:
            token = await leases.acquire(key, lease_seconds)
            if token is not None:
                return dataclasses.replace(result, fill=FillOutcome(token=token, waited=waited))
            left = give_up_at - time.perf_counter()
            if left <= 0:
                return dataclasses.replace(result, fill=FillOutcome(pending=True, waited=waited))
            waited = True
            await leases.wait(key, left)
            result = await self._search(request, scope, prompt, started)
            if result.hit:
                return dataclasses.replace(result, fill=FillOutcome(waited=True))

    async def _search(self, request: Lookup, scope: ScopeKey, prompt: str, started: float) -> LookupResult:
        """The exact path, then the semantic one; nothing is counted here (a single-flight lookup searches twice)."""
        verifier, default_threshold = self._verifier_for(scope)
        threshold = (
            default_threshold
            if request.min_similarity is None
            else checked_similarity(request.min_similarity)
        )
        now = self._clock.now()
        exact = await self._backend.get_exact(scope, prompt)
        if exact is not None and not exact.is_expired(now) and not pair_blocked(exact.feedback, prompt):
            await self._backend.touch(exact, now)
            return self._finish_lookup(
                scope, HitKind.EXACT, exact, 1.0, threshold, started, StageTimings(), (), exact.id
            )

        embed_started = time.perf_counter()
        embedded = await self._encoder.encode_timed(prompt, partition=scope.tenant, deadline=request.deadline)
        vector = embedded.vector
        search_started = time.perf_counter()
        try:
            if verifier is None:
                matches = await self._backend.search(scope, vector, self._options.top_k)
            else:
                matches = await self._backend.search(scope, vector, self._options.top_k, with_vectors=True)
        except Unsupported:
            matches = []
        search_done = time.perf_counter()
        timings = StageTimings(
            embed_ms=(search_started - embed_started) * 1000, queue_ms=embedded.queue_seconds * 1000,
            search_ms=(search_done - search_started) * 1000,
        )

        reports: list[CandidateReport] = []
        served: Entry | None = None
        best: tuple[str, float] | None = None
        best_rejection: RejectReason | None = None
        decided = False  # served, or the walk reached a candidate below any threshold feedback can set
        feedback = self._options.feedback
        relax = request.min_similarity is None  # right reports never go below a threshold the caller set
        cut = min(threshold, feedback.floor_similarity) if relax else threshold
        for match in matches:  # best first
            entry = match.entry if match.entry is not None else await self._backend.get(match.entry_id)
            if entry is None:
                continue
            similarity = min(max(match.similarity, 0.0), 1.0)
            reason: RejectReason | None = None
            score: float | None = None
            if entry.is_expired(now):
                outcome = CandidateOutcome.EXPIRED
            elif decided:
                outcome = CandidateOutcome.NOT_REACHED
            else:
                first = best is None
                if first:
                    best = (entry.id, similarity)
                own = entry_threshold(entry.feedback, base=threshold, options=feedback, relax=relax)
                if similarity < cut:
                    outcome, decided = CandidateOutcome.BELOW_THRESHOLD, True
                elif similarity < min(own, threshold):
                    outcome = CandidateOutcome.BELOW_THRESHOLD
                elif (similarity < own or pair_blocked(entry.feedback, prompt)
                      or not serves_paraphrases(entry.feedback, feedback)):
                    # Callers said this entry is wrong here: the walk goes on to the next candidate.
                    outcome, reason = CandidateOutcome.REJECTED, RejectReason.FEEDBACK
                    self._counters.rejected(scope.tenant, scope.namespace, reason)
                    if first:
                        best_rejection = reason
                elif verifier is None or match.vector is None:
                    outcome, decided = CandidateOutcome.SERVED, True
                else:
                    # Without a verifier only the best live candidate is judged; with one, a rejected candidate
                    # lets the next one above the threshold be tried.
                    verdict = verifier.verify(VerifyInput(
                        query=prompt, candidate=entry.normalized_prompt, query_vector=vector,
                        candidate_vector=match.vector, similarity=similarity))
                    score = verdict.score
                    if verdict.accepted:
                        outcome, decided = CandidateOutcome.SERVED, True
                    else:
                        outcome = CandidateOutcome.REJECTED
                        reason = verdict.reason or RejectReason.MODEL_SCORE
                        self._counters.rejected(scope.tenant, scope.namespace, reason)
                        if first:
                            best_rejection = reason
                if outcome is CandidateOutcome.SERVED:
                    served = entry
            if request.explain:
                reports.append(CandidateReport(entry_id=entry.id, prompt=entry.prompt, similarity=similarity,
                                               outcome=outcome, reason=reason, verifier_score=score))
        if served is not None:
            await self._backend.touch(served, now, from_search=True)
        kind = HitKind.SEMANTIC if served is not None else HitKind.MISS
        similarity, nearest_id = (best[1], best[0]) if best is not None else (0.0, None)
        return self._finish_lookup(scope, kind, served, similarity, threshold, started, timings, tuple(reports),
                                   nearest_id, best_rejection if served is None else None)

    def _finish_lookup(
        self,
        scope: ScopeKey,
        kind: HitKind,
        entry: Entry | None,
        similarity: float,
        threshold: float,
        started: float,
        timings: StageTimings,
        reports: tuple[CandidateReport, ...],
        nearest_id: str | None,
        rejected_reason: RejectReason | None = None,
    ) -> LookupResult:
        total = StageTimings(embed_ms=timings.embed_ms, queue_ms=timings.queue_ms, search_ms=timings.search_ms,
                             total_ms=(time.perf_counter() - started) * 1000)
        return LookupResult(hit_kind=kind, entry=entry, similarity=similarity, nearest_id=nearest_id,
                            min_similarity=threshold, timings=total, candidates=reports,
                            rejected_reason=rejected_reason, scope=scope)

    # Store

    async def store(self, write: Write) -> StoreResult:
        """Stores a completion, replacing the scope's entry with the same normalised prompt, then enforces the
        capacity budget.

        Raises:
            InvalidRequest: bad prompt, completion, metadata, usage, scope or TTL, or an entry larger than the
                budget.
            Overloaded: the embedder's queue is full.
        """
        scope = self.checked_scope(write.scope)
        prompt = self._checked_prompt(write.prompt)
        limits = self._options.limits
        completion_bytes = utf8_size(write.completion)
        if completion_bytes > limits.max_completion_bytes:
            raise InvalidRequest(f"is {completion_bytes} bytes; the limit is {limits.max_completion_bytes}",
                                 field="completion")
        metadata = dict(write.metadata)
        if len(metadata) > limits.max_metadata_entries:
            raise InvalidRequest(f"has {len(metadata)} entries; the limit is {limits.max_metadata_entries}",
                                 field="metadata")
        metadata_bytes = sum(utf8_size(k) + utf8_size(v) for k, v in metadata.items())
        if metadata_bytes > limits.max_metadata_bytes:
            raise InvalidRequest(f"is {metadata_bytes} bytes; the limit is {limits.max_metadata_bytes}",
                                 field="metadata")
        if write.usage is not None:
            _check_usage(write.usage)
        size = entry_size_bytes(dimension=self._encoder.dimension, prompt=write.prompt, normalized_prompt=prompt,
                                completion_bytes=completion_bytes, metadata_bytes=metadata_bytes)
        if self._options.max_bytes is not None and size > self._options.max_bytes:
            raise InvalidRequest(f"the entry needs {size} bytes, more than the cache's whole budget "
                                 f"({self._options.max_bytes})", field="completion")
        # A backend that manages its own capacity (Redis: maxmemory and its eviction policy) has no per-tenant
        # byte accounting to enforce a quota with, and counting a tenant's namespaces there would scan its whole
        # index on every store; both limits are the embedded backend's.
        own_capacity = self._backend.capabilities.manages_capacity
        quota = None if own_capacity else self._tenant_max_bytes(scope.tenant)
        if quota is not None and size > quota:
            raise InvalidRequest(f"the entry needs {size} bytes, more than this tenant's whole quota ({quota})",
                                 field="completion")
        if write.ttl.kind is TTLKind.SECONDS and write.ttl.seconds > self._options.max_ttl_seconds:
            raise InvalidRequest(f"must be at most {self._options.max_ttl_seconds:.0f} seconds (0 = never expires)",
                                 field="ttl_seconds")
        if not own_capacity:
            await self._admit_namespace(scope)
        now = self._clock.now()
        expires_at = write.ttl.expires_at(now=now, default=self._options.default_ttl)
        vector = await self._encoder.encode(prompt, partition=scope.tenant, deadline=write.deadline)
        entry = Entry(
            id=self._backend.new_id(scope),
            scope=scope,
            prompt=write.prompt,
            normalized_prompt=prompt,
            completion=write.completion,
            metadata=metadata,
            created_at=now,
            expires_at=expires_at,
            size_bytes=size,
            usage=write.usage,
        )
        replaced = await self._backend.put(entry, vector)
        if self._leases is not None:
            try:
                await self._leases.filled(LeaseKey.of(scope, prompt))
            except Unavailable:
                # The entry is stored: failing the store now would make the caller call its LLM again. Waiters
                # still find the entry when they re-check or the lease runs out.
                log.warning("stored entry %s, but could not end its fill lease; waiters will see it late", entry.id)
        self._counters.store(scope.tenant, scope.namespace)
        if quota is not None:
            await self._enforce_tenant_quota(scope.tenant, quota, keep=entry.id)
        await self._enforce_capacity()
        return StoreResult(entry=entry, replaced=replaced is not None)

    async def _admit_namespace(self, scope: ScopeKey) -> None:
        """Raises QuotaExceeded when the store would give its tenant one namespace more than the cap."""
        cap = self._options.max_namespaces_per_tenant
        if cap is None:
            return
        held = await self._backend.usage_by_namespace(scope.tenant)
        if scope.namespace not in held and len(held) >= cap:
            raise QuotaExceeded(f"this tenant already has {len(held)} namespaces with entries; the limit is {cap} "
                                "(delete a namespace's entries to free one)")

    async def _enforce_tenant_quota(self, tenant: str, quota: int, *, keep: str) -> None:
        """Evicts the tenant's own least recently used entries once they hold more than `quota` bytes, down to
        90% of it, so one tenant's stores never push out another's entries and the pass is not repeated on
        every store of a tenant at its quota."""
        usage = await self._backend.usage_by_namespace(tenant)
        held = sum(u.bytes for u in usage.values())
        if held <= quota:
            return
        entries = [e for ns in usage for e in await self._backend.select(ScopeSelector(tenant=tenant, namespace=ns))
                   if e.id != keep]
        entries.sort(key=lambda e: e.last_used_at)
        victims: list[str] = []
        target = quota * QUOTA_EVICTION_TARGET
        for entry in entries:
            if held <= target:
                break
            victims.append(entry.id)
            held -= entry.size_bytes
        for entry in await self._backend.delete(victims):
            self._counters.evicted(entry.scope.tenant, entry.scope.namespace, ttl=False)

    async def _enforce_capacity(self) -> None:
        max_bytes, max_entries = self._options.max_bytes, self._options.max_entries
        if (max_bytes is None and max_entries is None) or self._backend.capabilities.manages_capacity:
            return
        usage = await self._backend.usage()
        over_entries = 0 if max_entries is None else usage.entries - max_entries
        over_bytes = 0 if max_bytes is None else usage.bytes - max_bytes
        if over_entries <= 0 and over_bytes <= 0:
            return
        victims: list[str] = []
        limit = max(over_entries, 0) + 16
        while over_entries > 0 or over_bytes > 0:
            # Oldest first, a batch at a time: entry sizes vary, so how many must go is known only as they are read.
            batch = (await self._backend.least_recently_used(limit))[len(victims):]
            if not batch:
                break
            for entry in batch:
                if over_entries <= 0 and over_bytes <= 0:
                    break
                victims.append(entry.id)
                over_entries -= 1
                over_bytes -= entry.size_bytes
            limit *= 2
        for entry in await self._backend.delete(victims):
            self._counters.evicted(entry.scope.tenant, entry.scope.namespace, ttl=False)

    async def release_fill(self, scope: ScopeKey, prompt: str, token: str) -> bool:
        """Ends a fill lease without a store (the holder's LLM call failed); returns whether it was still held.

        Raises:
            InvalidRequest: bad prompt or scope, or an empty token.
        """
        if not token:
            raise InvalidRequest("must not be empty", field="fill_token")
        key = LeaseKey.of(self.checked_scope(scope), self._checked_prompt(prompt))
        return self._leases is not None and await self._leases.release(key, token)

    # Delete

    async def delete(self, target: DeleteTarget) -> int:
        """Deletes one entry of the caller's tenant, or every entry a selector matches.

        Raises:
            NotFound: no entry with that id belongs to the caller's tenant.
        """
        if isinstance(target, DeleteById):
            entry = await self._backend.get(target.entry_id)
            # Another tenant's entry is reported exactly like a missing one: ids must not leak across tenants.
            if entry is None or entry.scope.tenant != target.tenant:
                # The id is echoed only in part: a long one would not fit the status trailer.
                shown = target.entry_id[:MAX_ECHOED_ID_CHARS] + ("..." if len(target.entry_id) > MAX_ECHOED_ID_CHARS
                                                                 else "")
                raise NotFound(f"no entry with id {shown!r}")
            return len(await self._backend.delete([entry.id]))
        self._checked_selector(target)
        selector = dataclasses.replace(target, namespace=target.namespace or DEFAULT_NAMESPACE)
        entries = await self._backend.select(selector)
        return len(await self._backend.delete([e.id for e in entries]))

    # Feedback

    async def feedback(self, report: Feedback) -> FeedbackResult:
        """Records a caller's verdict on a served hit; later lookups learn from it (see `core.feedback`).

        Returns:
            the report's similarity, and the entry's threshold (at the scope's default) and paraphrase serving
            after it.

        Raises:
            InvalidRequest: bad prompt or scope.
            NotFound: no entry with that id in the caller's scope (another tenant's entry is reported the same way).
            Unsupported: the backend cannot keep feedback.
        """
        scope = self.checked_scope(report.scope)
        prompt = self._checked_prompt(report.prompt)
        if self._feedback_store is None:
            raise Unsupported("this backend does not keep feedback")
        entry = await self._backend.get(report.entry_id)
        if entry is None or entry.scope != scope:
            raise NotFound(f"no entry with id {report.entry_id!r} in this scope")
        if prompt == entry.normalized_prompt:
            similarity = 1.0
        else:
            # The lookup that served it has just embedded the same prompt: usually the memo's vector.
            vector = await self._encoder.encode(prompt)
            stored = await self._feedback_store.vector_of(entry.id)
            if stored is None:
                raise NotFound(f"no entry with id {report.entry_id!r} in this scope")
            similarity = min(max(float(vector @ stored), 0.0), 1.0)
        kept = FeedbackReport(prompt=prompt, similarity=similarity, correct=report.correct)
        if not await self._feedback_store.add_feedback(entry, kept):
            raise NotFound(f"no entry with id {report.entry_id!r} in this scope")
        _verifier, default_threshold = self._verifier_for(scope)
        options = self._options.feedback
        return FeedbackResult(
            similarity=similarity,
            entry_min_similarity=entry_threshold(entry.feedback, base=default_threshold, options=options),
            serves_paraphrases=serves_paraphrases(entry.feedback, options))

    # Stats

    async def stats(self, tenant: str, namespace: str | None = None) -> list[NamespaceStats]:
        """Raises:
            InvalidRequest: the namespace is longer than a scope field may be.
        """
        if namespace is not None:
            self._checked_field(namespace, "namespace")
        usage = await self._backend.usage_by_namespace(tenant)
        counters = await self._counters.read(tenant)
        # One namespace asked for is reported even when it has nothing yet. The list is bounded by the namespace
        # cap (data written before a lower cap can exceed it: then the first names, in order, are shown).
        names = sorted(set(usage) | set(counters)) if namespace is None else [namespace or DEFAULT_NAMESPACE]
        if self._options.max_namespaces_per_tenant is not None:
            names = names[:self._options.max_namespaces_per_tenant]
        empty = Usage(entries=0, bytes=0)
        return [
            NamespaceStats(namespace=name, entries=usage.get(name, empty).entries, bytes=usage.get(name, empty).bytes,
                           **dataclasses.asdict(counters.get(name, Counters())))
            for name in names
        ]

    # TTL sweeper

    async def sweep_expired(self) -> int:
        """Removes entries whose TTL has passed; returns how many. The sweeper calls this on an interval."""
        removed = 0
        while True:
            expired = await self._backend.expired(self._clock.now(), self._options.sweep_batch)
            if not expired:
                return removed
            for entry in await self._backend.delete([e.id for e in expired]):
                self._counters.evicted(entry.scope.tenant, entry.scope.namespace, ttl=True)
                removed += 1

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._options.sweep_interval_seconds)
            try:
                await self.sweep_expired()
            except Exception:
                log.exception("TTL sweep failed; retrying on the next interval")

    # Validation

    def _checked_prompt(self, prompt: str) -> str:
        size = utf8_size(prompt)
        if size > self._options.limits.max_prompt_bytes:
            raise InvalidRequest(f"is {size} bytes; the limit is {self._options.limits.max_prompt_bytes}",
                                 field="prompt")
        normalized = normalize_prompt(prompt)
        if not normalized:
            raise InvalidRequest("must not be empty or whitespace only", field="prompt")
        if not has_visible_text(normalized):
            raise InvalidRequest("must contain visible text (a letter, digit, punctuation mark or symbol)",
                                 field="prompt")
        return normalized

    def _checked_field(self, value: str, field: str) -> None:
        limit = self._options.limits.max_scope_field_bytes
        if utf8_size(value) > limit:
            raise InvalidRequest(f"is longer than {limit} bytes", field=field)

    def _checked_selector(self, selector: ScopeSelector) -> None:
        for name in ("namespace", "model", "context"):
            value = getattr(selector, name)
            if value is not None:
                self._checked_field(value, f"scope.{name}")

    def checked_scope(self, scope: ScopeKey) -> ScopeKey:
        """The scope its entries are kept under (defaults applied), once its fields pass their checks.

        One instance per distinct scope among the recently seen ones: its digest (a SHA-256, the key of the exact
        path and of the scope's index) is then computed once, not on every call (~50 us of an exact hit after an
        idle spell). Keyed by tenant too, so nothing here is shared across tenants.

        Raises:
            InvalidRequest: a field is too long.
        """
        known = self._known_scopes.get(scope)
        if known is not None:
            return known
        for name in ("namespace", "model", "context"):
            self._checked_field(getattr(scope, name), f"scope.{name}")
        checked = scope if scope.namespace else ScopeKey(tenant=scope.tenant, namespace=DEFAULT_NAMESPACE,
                                                         model=scope.model, context=scope.context)
        if len(self._known_scopes) >= MAX_KNOWN_SCOPES:
            self._known_scopes.clear()
        self._known_scopes[scope] = checked
        return checked


# Savings are summed over every hit: one absurd usage would make the counters meaningless for good.
MAX_USAGE_TOKENS = 10**9
MAX_USAGE_COST_USD = 10**6


def _check_usage(usage: TokenUsage) -> None:
    for name in ("prompt_tokens", "completion_tokens"):
        if not 0 <= getattr(usage, name) <= MAX_USAGE_TOKENS:
            raise InvalidRequest(f"must lie in [0, {MAX_USAGE_TOKENS}]", field=f"usage.{name}")
    if usage.cost_usd is not None and not (math.isfinite(usage.cost_usd) and 0 <= usage.cost_usd <= MAX_USAGE_COST_USD):
        raise InvalidRequest(f"must be a finite number in [0, {MAX_USAGE_COST_USD}]", field="usage.cost_usd")
