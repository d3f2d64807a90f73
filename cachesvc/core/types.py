"""Typed values that cross the core boundary: requests in, results out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from cachesvc.core.policy import TTLPolicy
from cachesvc.core.verify import RejectReason
from cachesvc.records import Entry, ScopeKey, ScopeSelector, TokenUsage


class HitKind(Enum):
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"


class CandidateOutcome(Enum):
    SERVED = "served"
    BELOW_THRESHOLD = "below_threshold"
    EXPIRED = "expired"
    NOT_REACHED = "not_reached"
    REJECTED = "rejected"  # cleared the threshold, then the hit verifier said it is not a right answer


@dataclass(frozen=True, kw_only=True)
class Lookup:
    scope: ScopeKey
    prompt: str
    min_similarity: float | None = None  # None: the server's threshold
    explain: bool = False
    fill: FillRequest | None = None  # None: no single-flight (no lease, no wait)
    deadline: float | None = None  # when the caller gives up (time.monotonic()); None: never


@dataclass(frozen=True, kw_only=True)
class FillRequest:
    """A lookup's single-flight part.

    Attributes:
        lease_seconds: on a miss, take the fill lease for this long (capped by the service); 0 = no
            single-flight for this lookup (no lease, no wait).
        wait_seconds: when another caller holds the lease, wait this long at most for its store (capped by the
            service and by the lookup's deadline); 0 = don't.
    """

    lease_seconds: float = 0.0
    wait_seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class FillOutcome:
    """What single-flight did for a lookup.

    Attributes:
        token: this caller took the fill lease (a miss): it should store the answer or release the lease.
        pending: a miss while another caller holds the lease.
        waited: the lookup waited for another caller's fill.
    """

    token: str | None = None
    pending: bool = False
    waited: bool = False


@dataclass(frozen=True, kw_only=True)
class Write:
    scope: ScopeKey
    prompt: str
    completion: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl: TTLPolicy = field(default_factory=TTLPolicy.default)
    usage: TokenUsage | None = None
    deadline: float | None = None  # when the caller gives up (time.monotonic()); None: never


@dataclass(frozen=True, kw_only=True)
class Feedback:
    """A caller's verdict on a served hit: `entry_id` was served for `prompt` in `scope`."""

    scope: ScopeKey
    prompt: str
    entry_id: str
    correct: bool


@dataclass(frozen=True, kw_only=True)
class FeedbackResult:
    """What a report changed: its similarity, and the entry's threshold and paraphrase serving after it."""

    similarity: float
    entry_min_similarity: float
    serves_paraphrases: bool


@dataclass(frozen=True, kw_only=True)
class CandidateReport:
    entry_id: str
    prompt: str
    similarity: float
    outcome: CandidateOutcome
    reason: RejectReason | None = None  # set when REJECTED
    verifier_score: float | None = None  # set when the verifier looked at it (REJECTED or SERVED)


@dataclass(frozen=True, kw_only=True)
class StageTimings:
    embed_ms: float = 0.0
    queue_ms: float = 0.0  # the part of `embed_ms` spent queued for a model worker
    search_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, kw_only=True)
class LookupResult:
    hit_kind: HitKind
    entry: Entry | None
    similarity: float  # best live candidate's cosine, also on a miss; 0 when there was none
    nearest_id: str | None
    min_similarity: float
    timings: StageTimings
    candidates: tuple[CandidateReport, ...] = ()
    # Why the best candidate was not served although it cleared the threshold (None: served, or no verifier).
    rejected_reason: RejectReason | None = None
    fill: FillOutcome = FillOutcome()
    # The scope it was answered in, as checked (defaults applied); None only for results not made by the service.
    scope: ScopeKey | None = None

    @property
    def hit(self) -> bool:
        return self.hit_kind is not HitKind.MISS


@dataclass(frozen=True, kw_only=True)
class StoreResult:
    entry: Entry
    replaced: bool


@dataclass(frozen=True, kw_only=True)
class DeleteById:
    tenant: str
    entry_id: str


DeleteTarget = DeleteById | ScopeSelector


@dataclass(frozen=True, kw_only=True)
class NamespaceStats:
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
