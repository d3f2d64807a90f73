"""Wire messages <-> core values. No decisions here."""

from __future__ import annotations

import dataclasses
import math

from google.protobuf.timestamp_pb2 import Timestamp

from cachesvc.core.policy import TTLPolicy
from cachesvc.core.types import (
    CandidateOutcome,
    CandidateReport,
    DeleteById,
    DeleteTarget,
    Feedback,
    FeedbackResult,
    FillRequest,
    HitKind,
    Lookup,
    LookupResult,
    NamespaceStats,
    StoreResult,
    Write,
)
from cachesvc.core.verify import RejectReason
from cachesvc.errors import InvalidRequest
from cachesvc.records import Entry, ScopeKey, ScopeSelector, TokenUsage
from cachesvc_client.v1 import cache_pb2 as pb

_OUTCOMES = {
    CandidateOutcome.SERVED: pb.CANDIDATE_OUTCOME_SERVED,
    CandidateOutcome.BELOW_THRESHOLD: pb.CANDIDATE_OUTCOME_BELOW_THRESHOLD,
    CandidateOutcome.EXPIRED: pb.CANDIDATE_OUTCOME_EXPIRED,
    CandidateOutcome.NOT_REACHED: pb.CANDIDATE_OUTCOME_NOT_REACHED,
    CandidateOutcome.REJECTED: pb.CANDIDATE_OUTCOME_REJECTED,
}
_REASONS = {
    RejectReason.NEGATION: pb.REJECT_REASON_NEGATION,
    RejectReason.NUMBER: pb.REJECT_REASON_NUMBER,
    RejectReason.UNIT: pb.REJECT_REASON_UNIT,
    RejectReason.ENTITY: pb.REJECT_REASON_ENTITY,
    RejectReason.DIRECTION: pb.REJECT_REASON_DIRECTION,
    RejectReason.OPPOSITE: pb.REJECT_REASON_OPPOSITE,
    RejectReason.MODEL_SCORE: pb.REJECT_REASON_MODEL_SCORE,
    RejectReason.DETAIL: pb.REJECT_REASON_DETAIL,
    RejectReason.FEEDBACK: pb.REJECT_REASON_FEEDBACK,
}


def _candidate(c: CandidateReport) -> pb.Candidate:
    message = pb.Candidate(entry_id=c.entry_id, prompt=c.prompt, similarity=c.similarity,
                           outcome=_OUTCOMES[c.outcome],
                           reason=_REASONS[c.reason] if c.reason is not None else pb.REJECT_REASON_UNSPECIFIED)
    if c.verifier_score is not None:
        message.verifier_score = c.verifier_score
    return message


# google.protobuf.Timestamp holds 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z only.
_TIMESTAMP_MIN_SECONDS = -62_135_596_800
_TIMESTAMP_MAX_SECONDS = 253_402_300_799


def _timestamp(seconds: float) -> Timestamp:
    """A Timestamp, clamped into the range the type can hold: an absurd time (e.g. an expiry stored before TTLs
    were bounded) is shown as the far end of that range rather than failing the whole response."""
    ts = Timestamp()
    _set_timestamp(ts, seconds)
    return ts


def _set_timestamp(ts: Timestamp, seconds: float) -> None:
    """Sets `ts` in place (a field of a message being built), clamped as `_timestamp` says."""
    if math.isnan(seconds):
        seconds = 0.0
    whole = min(max(math.floor(seconds), _TIMESTAMP_MIN_SECONDS), _TIMESTAMP_MAX_SECONDS)
    nanos = min(max(round((seconds - whole) * 1e9), 0), 999_999_999) if math.isfinite(seconds) else 0
    ts.seconds, ts.nanos = whole, nanos


def scope_key(tenant: str, scope: pb.Scope) -> ScopeKey:
    return ScopeKey(tenant=tenant, namespace=scope.namespace, model=scope.model, context=scope.context)


def lookup_from_proto(tenant: str, request: pb.LookupRequest, *, deadline: float | None = None) -> Lookup:
    """Args:
        deadline: when the caller gives up, on the time.monotonic() clock (sheds queued work, bounds a
            single-flight wait); None = never.
    """
    fill = None
    if request.fill_lease_ms:
        fill = FillRequest(lease_seconds=request.fill_lease_ms / 1000, wait_seconds=request.fill_wait_ms / 1000)
    return Lookup(
        scope=scope_key(tenant, request.scope),
        prompt=request.prompt,
        min_similarity=request.min_similarity if request.HasField("min_similarity") else None,
        explain=request.explain,
        fill=fill,
        deadline=deadline,
    )


def usage_from_proto(message: pb.Usage) -> TokenUsage:
    return TokenUsage(prompt_tokens=message.prompt_tokens, completion_tokens=message.completion_tokens,
                      cost_usd=message.cost_usd if message.HasField("cost_usd") else None)


def usage_to_proto(usage: TokenUsage) -> pb.Usage:
    message = pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
    if usage.cost_usd is not None:
        message.cost_usd = usage.cost_usd
    return message


def write_from_proto(tenant: str, request: pb.StoreRequest, *, deadline: float | None = None) -> Write:
    ttl = TTLPolicy.of(request.ttl_seconds) if request.HasField("ttl_seconds") else TTLPolicy.default()
    return Write(
        scope=scope_key(tenant, request.scope),
        prompt=request.prompt,
        completion=request.completion,
        metadata=dict(request.metadata),
        ttl=ttl,
        usage=usage_from_proto(request.usage) if request.HasField("usage") else None,
        deadline=deadline,
    )


def feedback_from_proto(tenant: str, request: pb.FeedbackRequest) -> Feedback:
    if not request.entry_id:
        raise InvalidRequest("must not be empty", field="entry_id")
    return Feedback(scope=scope_key(tenant, request.scope), prompt=request.prompt, entry_id=request.entry_id,
                    correct=request.correct)


def feedback_to_proto(result: FeedbackResult) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(similarity=result.similarity, entry_min_similarity=result.entry_min_similarity,
                               serves_paraphrases=result.serves_paraphrases)


def delete_from_proto(tenant: str, request: pb.DeleteRequest) -> DeleteTarget:
    target = request.WhichOneof("target")
    if target == "id":
        if not request.id:
            raise InvalidRequest("must not be empty", field="id")
        return DeleteById(tenant=tenant, entry_id=request.id)
    if target == "scope":
        s = request.scope
        return ScopeSelector(
            tenant=tenant,
            namespace=s.namespace,
            model=s.model if s.HasField("model") else None,
            context=s.context if s.HasField("context") else None,
        )
    raise InvalidRequest("set either id or scope", field="target")


def entry_to_proto(entry: Entry) -> pb.Entry:
    message = pb.Entry()
    _fill_entry(message, entry)
    return message


def _fill_entry(message: pb.Entry, entry: Entry) -> None:
    """Fills a message in place: every lookup hit pays for this, so no intermediate messages are copied."""
    message.id = entry.id
    message.prompt = entry.prompt
    message.completion = entry.completion
    if entry.metadata:
        message.metadata.update(entry.metadata)
    _set_timestamp(message.created_at, entry.created_at)
    message.hit_count = entry.hit_count
    if entry.expires_at is not None:
        _set_timestamp(message.expires_at, entry.expires_at)
    if entry.usage is not None:
        message.usage.CopyFrom(usage_to_proto(entry.usage))


def lookup_to_proto(result: LookupResult) -> pb.LookupResponse:
    # Only fields that differ from their defaults are set: each setter is a call into protobuf, paid on every hit.
    response = pb.LookupResponse(hit=result.hit, similarity=result.similarity,
                                 exact=result.hit_kind is HitKind.EXACT, min_similarity=result.min_similarity)
    if result.nearest_id:
        response.nearest_id = result.nearest_id
    if result.rejected_reason is not None:
        response.rejected_reason = _REASONS[result.rejected_reason]
    fill = result.fill
    if fill.token or fill.pending or fill.waited:
        response.fill_token = fill.token or ""
        response.fill_pending, response.waited_for_fill = fill.pending, fill.waited
    timings = response.timings
    timings.embed_ms, timings.queue_ms, timings.search_ms, timings.total_ms = (
        result.timings.embed_ms, result.timings.queue_ms, result.timings.search_ms, result.timings.total_ms)
    if result.candidates:
        response.candidates.extend(_candidate(c) for c in result.candidates)
    if result.entry is not None:
        _fill_entry(response.entry, result.entry)
    return response


def store_to_proto(result: StoreResult) -> pb.StoreResponse:
    response = pb.StoreResponse(id=result.entry.id, replaced=result.replaced)
    if result.entry.expires_at is not None:
        response.expires_at.CopyFrom(_timestamp(result.entry.expires_at))
    return response


def stats_to_proto(stats: list[NamespaceStats]) -> pb.StatsResponse:
    counts = [f.name for f in dataclasses.fields(NamespaceStats) if f.name != "namespace"]
    total = pb.NamespaceStats(namespace="", **{name: sum(getattr(s, name) for s in stats) for name in counts})
    return pb.StatsResponse(namespaces=[pb.NamespaceStats(**dataclasses.asdict(s)) for s in stats], total=total)
