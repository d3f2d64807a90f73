"""Typed values the client returns: frozen dataclasses, never protobuf messages or dicts.

Datetimes are timezone-aware UTC. Similarities are cosine similarities of L2-normalised embeddings, in [0, 1].
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType


@dataclass(frozen=True, kw_only=True, slots=True)
class Scope:
    """Where an entry lives; entries only ever match inside one scope.

    The tenant is part of every scope as well, but the server takes it from the caller's credentials.

    Attributes:
        namespace: The namespace; empty means the server's default namespace.
        model: The LLM the completion came from; answers of one model are not served for another.
        context: Whatever else must match exactly, usually `context_key(...)` of a system prompt and parameters.
    """

    namespace: str = ""
    model: str = ""
    context: str = ""


class CandidateOutcome(enum.Enum):
    """Why an explained candidate was or was not served (`LookupResult.candidates`)."""

    UNSPECIFIED = 0
    SERVED = 1
    BELOW_THRESHOLD = 2
    EXPIRED = 3
    NOT_REACHED = 4
    REJECTED = 5  # cleared the threshold, but the server's hit verifier judged it not a right answer


class RejectReason(enum.Enum):
    """Why the server's hit verifier rejected a candidate (`Candidate.reason`, `LookupResult.rejected_reason`)."""

    UNSPECIFIED = 0
    NEGATION = 1
    NUMBER = 2
    UNIT = 3
    ENTITY = 4
    DIRECTION = 5
    OPPOSITE = 6
    MODEL_SCORE = 7
    FEEDBACK = 20  # callers reported this entry wrong for the prompt, or at this similarity (see `feedback`)
    DETAIL = 21  # long prompts that differ in more than form: an added instruction, other numbers or names


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """What producing a completion with the LLM cost; the server counts it as saved on every hit.

    Attributes:
        prompt_tokens: Input tokens the LLM call used.
        completion_tokens: Output tokens it produced.
        cost_usd: Its cost in US dollars, when known; None otherwise.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise ValueError("token counts must be >= 0")
        if self.cost_usd is not None and not self.cost_usd >= 0:
            raise ValueError("cost_usd must be >= 0 (or None)")


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """A cached completion.

    Attributes:
        id: The entry id (use it with `delete`).
        prompt: The prompt the completion was stored for.
        completion: The cached completion.
        metadata: Free-form string metadata given at store time (read-only).
        created_at: When the entry was stored (UTC).
        expires_at: When the entry expires (UTC), or None if it never does.
        hit_count: How often the entry has been served.
        usage: What producing the completion cost, when it was stored with it.
    """

    id: str
    prompt: str
    completion: str
    # Excluded from the hash: a read-only mapping is not hashable, and the id identifies the entry anyway.
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    created_at: datetime
    expires_at: datetime | None = None
    hit_count: int = 0
    usage: Usage | None = None

    def __post_init__(self) -> None:
        # A frozen entry must not share a mutable dict with its caller.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """One of the nearest entries of an explained lookup.

    Attributes:
        entry_id: The candidate entry's id.
        prompt: The candidate entry's prompt.
        similarity: Its cosine similarity to the looked-up prompt, in [0, 1].
        outcome: Whether it was served, and if not, why.
        reason: Why the hit verifier rejected it; None unless the outcome is REJECTED.
        verifier_score: The verifier's confidence in [0, 1] that it is a right answer; None when no verifier
            looked at it.
    """

    entry_id: str
    prompt: str
    similarity: float
    outcome: CandidateOutcome
    reason: RejectReason | None = None
    verifier_score: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Timings:
    """Server-side stage timings of a lookup, in milliseconds."""

    embed_ms: float = 0.0  # embedding the prompt, queue_ms included (0 on the exact path)
    search_ms: float = 0.0
    total_ms: float = 0.0
    queue_ms: float = 0.0  # the part of embed_ms spent waiting for a model worker (0 from the server's memo)


@dataclass(frozen=True, kw_only=True, slots=True)
class LookupResult:
    """The answer to a lookup.

    Attributes:
        hit: Whether a cached completion was served.
        entry: The served entry on a hit, else None.
        similarity: The best live candidate's similarity, also on a miss (0.0 when the scope is empty), so
            thresholds can be tuned.
        exact: The hit came from the exact path (same normalised prompt, similarity 1.0, no embedding).
        min_similarity: The threshold this lookup was judged against.
        nearest_id: The best live candidate's id, also on a miss; None when there was none.
        timings: Server-side stage timings.
        candidates: The nearest candidates with their outcomes; empty unless `explain=True` was asked.
        rejected_reason: On a miss, why the hit verifier rejected the best candidate although it cleared the
            threshold; None otherwise.
        fill_token: On a miss of a single-flight lookup (`fill_lease=`), this caller holds the fill lease: store
            the answer (that ends the lease) or `release_fill(...)` with this token. None otherwise.
        fill_pending: A miss while another caller holds the fill lease on this prompt: its answer may come soon
            (look up again with `fill_wait=` to wait for it).
        waited_for_fill: The lookup waited for another caller's fill (a hit then came from that caller's store).
    """

    hit: bool
    entry: Entry | None
    similarity: float
    exact: bool
    min_similarity: float
    nearest_id: str | None
    timings: Timings = field(default_factory=Timings)
    candidates: tuple[Candidate, ...] = ()
    rejected_reason: RejectReason | None = None
    fill_token: str | None = None
    fill_pending: bool = False
    waited_for_fill: bool = False

    @property
    def completion(self) -> str | None:
        """The cached completion on a hit, None on a miss."""
        if not self.hit or self.entry is None:
            return None
        return self.entry.completion


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreResult:
    """The answer to a store.

    Attributes:
        id: The id of the stored entry.
        replaced: An entry with the same scope and normalised prompt was overwritten.
        expires_at: When the entry expires (UTC), or None if it never does.
    """

    id: str
    replaced: bool
    expires_at: datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedbackResult:
    """The answer to a feedback report.

    Attributes:
        similarity: The similarity of the reported prompt to the entry, as the server recorded it.
        entry_min_similarity: What a paraphrase now needs to be served this entry at the server's default
            threshold (above 1.0: only exact repeats are).
        serves_paraphrases: False once the entry was reported wrong often enough to serve exact repeats only.
    """

    similarity: float
    entry_min_similarity: float
    serves_paraphrases: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class NamespaceStats:
    """Counters of one namespace (or the total) of the caller's tenant.

    `tokens_saved` and `cost_saved_usd` add up the usage of the entries served as hits (LLM calls avoided);
    only entries stored with a usage (and a cost) count.
    """

    namespace: str
    entries: int = 0
    bytes: int = 0
    lookups: int = 0
    hits: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    stores: int = 0
    ttl_evictions: int = 0
    capacity_evictions: int = 0
    tokens_saved: int = 0
    cost_saved_usd: float = 0.0

    @property
    def hit_rate(self) -> float:
        """Hits per lookup, 0.0 before the first lookup."""
        return self.hits / self.lookups if self.lookups else 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class StatsResult:
    """Counters per namespace and in total, for the caller's tenant.

    Attributes:
        namespaces: One entry per namespace (only the asked one when `stats(namespace=...)` was used).
        total: The sum over the tenant's namespaces.
    """

    namespaces: tuple[NamespaceStats, ...]
    total: NamespaceStats
