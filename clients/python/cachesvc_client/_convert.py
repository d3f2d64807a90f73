"""Protobuf <-> dataclass conversion; the only module that reads response messages field by field."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime

from cachesvc_client.types import (
    Candidate,
    CandidateOutcome,
    Entry,
    FeedbackResult,
    LookupResult,
    NamespaceStats,
    RejectReason,
    Scope,
    StatsResult,
    StoreResult,
    Timings,
    Usage,
)
from cachesvc_client.v1 import cache_pb2 as pb

_OUTCOMES = {outcome.value: outcome for outcome in CandidateOutcome}
_REASONS = {reason.value: reason for reason in RejectReason}


def _reason(value: int) -> RejectReason | None:
    """None for "no reason"; reasons this client does not know yet become UNSPECIFIED."""
    return None if value == 0 else _REASONS.get(value, RejectReason.UNSPECIFIED)


def scope_to_proto(scope: Scope | None) -> pb.Scope:
    """Builds the wire scope; None is the default scope (every field empty)."""
    if scope is None:
        return pb.Scope()
    return pb.Scope(namespace=scope.namespace, model=scope.model, context=scope.context)


def f32(value: float) -> float:
    """The shortest decimal that the wire's float32 `value` stands for.

    Similarities travel as float32, so a threshold of 0.9 comes back as 0.8999999761581421; this returns 0.9,
    the value the sender meant, so results compare equal to the numbers users pass in.
    """
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _datetime(message: pb.Entry | pb.StoreResponse, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    result: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return result


def usage_to_proto(usage: Usage) -> pb.Usage:
    message = pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
    if usage.cost_usd is not None:
        message.cost_usd = usage.cost_usd
    return message


def usage_from_proto(message: pb.Usage) -> Usage:
    return Usage(prompt_tokens=message.prompt_tokens, completion_tokens=message.completion_tokens,
                 cost_usd=message.cost_usd if message.HasField("cost_usd") else None)


def entry_from_proto(message: pb.Entry) -> Entry:
    """Converts a wire entry; an unset `created_at` becomes the Unix epoch (the proto3 default)."""
    created_at = _datetime(message, "created_at")
    return Entry(
        id=message.id,
        prompt=message.prompt,
        completion=message.completion,
        metadata=dict(message.metadata),
        created_at=created_at if created_at is not None else datetime.fromtimestamp(0, UTC),
        expires_at=_datetime(message, "expires_at"),
        hit_count=message.hit_count,
        usage=usage_from_proto(message.usage) if message.HasField("usage") else None,
    )


def candidate_from_proto(message: pb.Candidate) -> Candidate:
    """Converts one explained candidate; outcomes this client does not know yet become UNSPECIFIED."""
    return Candidate(
        entry_id=message.entry_id,
        prompt=message.prompt,
        similarity=f32(message.similarity),
        outcome=_OUTCOMES.get(int(message.outcome), CandidateOutcome.UNSPECIFIED),
        reason=_reason(int(message.reason)),
        verifier_score=f32(message.verifier_score) if message.HasField("verifier_score") else None,
    )


def lookup_result_from_proto(message: pb.LookupResponse) -> LookupResult:
    """Converts a lookup response; the entry is only kept on a hit."""
    timings = message.timings
    return LookupResult(
        hit=message.hit,
        entry=entry_from_proto(message.entry) if message.hit and message.HasField("entry") else None,
        similarity=f32(message.similarity),
        exact=message.exact,
        min_similarity=f32(message.min_similarity),
        nearest_id=message.nearest_id or None,
        timings=Timings(embed_ms=timings.embed_ms, search_ms=timings.search_ms, total_ms=timings.total_ms,
                        queue_ms=timings.queue_ms),
        candidates=tuple(candidate_from_proto(candidate) for candidate in message.candidates),
        rejected_reason=_reason(int(message.rejected_reason)),
        fill_token=message.fill_token or None,
        fill_pending=message.fill_pending,
        waited_for_fill=message.waited_for_fill,
    )


def feedback_result_from_proto(message: pb.FeedbackResponse) -> FeedbackResult:
    """Converts a feedback response."""
    return FeedbackResult(similarity=f32(message.similarity), entry_min_similarity=f32(message.entry_min_similarity),
                          serves_paraphrases=message.serves_paraphrases)


def store_result_from_proto(message: pb.StoreResponse) -> StoreResult:
    """Converts a store response."""
    return StoreResult(id=message.id, replaced=message.replaced, expires_at=_datetime(message, "expires_at"))


def namespace_stats_from_proto(message: pb.NamespaceStats) -> NamespaceStats:
    """Converts the counters of one namespace (or the total)."""
    return NamespaceStats(
        namespace=message.namespace,
        entries=message.entries,
        bytes=message.bytes,
        lookups=message.lookups,
        hits=message.hits,
        exact_hits=message.exact_hits,
        semantic_hits=message.semantic_hits,
        stores=message.stores,
        ttl_evictions=message.ttl_evictions,
        capacity_evictions=message.capacity_evictions,
        tokens_saved=message.tokens_saved,
        cost_saved_usd=message.cost_saved_usd,
    )


def stats_result_from_proto(message: pb.StatsResponse) -> StatsResult:
    """Converts a stats response."""
    return StatsResult(
        namespaces=tuple(namespace_stats_from_proto(stats) for stats in message.namespaces),
        total=namespace_stats_from_proto(message.total),
    )
