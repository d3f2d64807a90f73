"""CacheService: the lookup and store decisions, over a TextEncoder and a Backend."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

from cachesvc.backends.protocol import Backend, FeedbackStore
from cachesvc.clock import Clock
from cachesvc.core.feedback import FeedbackOptions, entry_threshold, pair_blocked, serves_paraphrases
from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.policy import SizeLimits, TTLKind, TTLPolicy, checked_similarity, utf8_size
from cachesvc.core.stats import CounterBook, Counters
from cachesvc.core.types import (
    CandidateOutcome,
    CandidateReport,
    DeleteById,
    DeleteTarget,
    Feedback,
    FeedbackResult,
    HitKind,
    Lookup,
    LookupResult,
    NamespaceStats,
    StageTimings,
    StoreResult,
    Write,
)
from cachesvc.core.verify import HitVerifier, RejectReason, VerifyInput
from cachesvc.embedding.protocol import TextEncoder
from cachesvc.errors import InvalidRequest, NotFound, Unsupported
from cachesvc.lifecycle import State
from cachesvc.records import DEFAULT_NAMESPACE, Entry, FeedbackReport, ScopeKey, Usage

log = logging.getLogger(__name__)

# Bytes an entry costs beyond its vector and texts: the Entry object, its dict and LRU slots, the exact-key
# tuple, label maps and FAISS id map: 1,786 B measured at 100k entries (bench/RESULTS.md, cache service targets).
ENTRY_OVERHEAD_BYTES = 1800


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
        if self.top_k < 1 or self.sweep_interval_seconds <= 0 or self.sweep_batch < 1:
            raise ValueError("top_k, sweep_interval_seconds and sweep_batch must be positive")


class CacheService:
    """Scoped semantic lookup and store. All methods run on the event loop; CPU work is awaited elsewhere."""

    def __init__(self, *, encoder: TextEncoder, backend: Backend, clock: Clock, options: CacheOptions,
                 verifier: HitVerifier | None = None,
                 namespace_verifiers: Mapping[str, HitVerifier | None] | None = None,
                 feedback_store: FeedbackStore | None = None) -> None:
        """Args:
            verifier: checks each candidate that clears the threshold before it is served; None serves the
                best candidate that clears it (and uses `min_similarity` as the default threshold).
            namespace_verifiers: a namespace's own verifier (None = off) in place of `verifier`, in every tenant.
            feedback_store: where callers' reports are kept (the backend, when it can); None: `feedback` raises
                Unsupported.
        """
        self._encoder = encoder
        self._backend = backend
        self._clock = clock
        self._options = options
        self._verifier = verifier
        self._namespace_verifiers = dict(namespace_verifiers or {})
        self._feedback_store = feedback_store
        self._counters = CounterBook()
        self._sweeper: asyncio.Task[None] | None = None
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

        Raises:
            InvalidRequest: bad prompt, scope or threshold.
            Overloaded: the embedder's queue is full.
        """
        started = time.perf_counter()
        scope = self._checked_scope(request.scope)
        prompt = self._checked_prompt(request.prompt)
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
        vector = await self._encoder.encode(prompt)
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
            embed_ms=(search_started - embed_started) * 1000, search_ms=(search_done - search_started) * 1000
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
            entry = await self._backend.get(match.entry_id)
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
            await self._backend.touch(served, now)
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
        self._counters.lookup(scope.tenant, scope.namespace, kind)
        total = StageTimings(embed_ms=timings.embed_ms, search_ms=timings.search_ms,
                             total_ms=(time.perf_counter() - started) * 1000)
        return LookupResult(hit_kind=kind, entry=entry, similarity=similarity, nearest_id=nearest_id,
                            min_similarity=threshold, timings=total, candidates=reports,
                            rejected_reason=rejected_reason)

    # Store

    async def store(self, write: Write) -> StoreResult:
        """Stores a completion, replacing the scope's entry with the same normalised prompt, then enforces the
        capacity budget.

        Raises:
            InvalidRequest: bad prompt, completion, metadata, scope or TTL, or an entry larger than the budget.
            Overloaded: the embedder's queue is full.
        """
        scope = self._checked_scope(write.scope)
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
        size = entry_size_bytes(dimension=self._encoder.dimension, prompt=write.prompt, normalized_prompt=prompt,
                                completion_bytes=completion_bytes, metadata_bytes=metadata_bytes)
        if self._options.max_bytes is not None and size > self._options.max_bytes:
            raise InvalidRequest(f"the entry needs {size} bytes, more than the cache's whole budget "
                                 f"({self._options.max_bytes})", field="completion")
        now = self._clock.now()
        expires_at = write.ttl.expires_at(now=now, default=self._options.default_ttl)
        vector = await self._encoder.encode(prompt)
        entry = Entry(
            id=uuid.uuid4().hex,
            scope=scope,
            prompt=write.prompt,
            normalized_prompt=prompt,
            completion=write.completion,
            metadata=metadata,
            created_at=now,
            expires_at=expires_at,
            size_bytes=size,
        )
        replaced = await self._backend.put(entry, vector)
        self._counters.store(scope.tenant, scope.namespace)
        await self._enforce_capacity()
        return StoreResult(entry=entry, replaced=replaced is not None)

    async def _enforce_capacity(self) -> None:
        max_bytes, max_entries = self._options.max_bytes, self._options.max_entries
        if max_bytes is None and max_entries is None:
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
                raise NotFound(f"no entry with id {target.entry_id!r}")
            return len(await self._backend.delete([entry.id]))
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
        scope = self._checked_scope(report.scope)
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
        usage = await self._backend.usage_by_namespace(tenant)
        counters = self._counters.for_tenant(tenant)
        # One namespace asked for is reported even when it has nothing yet.
        names = sorted(set(usage) | set(counters)) if namespace is None else [namespace or DEFAULT_NAMESPACE]
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
        return normalized

    def _checked_scope(self, scope: ScopeKey) -> ScopeKey:
        limit = self._options.limits.max_scope_field_bytes
        for name in ("namespace", "model", "context"):
            if utf8_size(getattr(scope, name)) > limit:
                raise InvalidRequest(f"is longer than {limit} bytes", field=f"scope.{name}")
        if not scope.namespace:
            return ScopeKey(tenant=scope.tenant, namespace=DEFAULT_NAMESPACE, model=scope.model,
                            context=scope.context)
        return scope
