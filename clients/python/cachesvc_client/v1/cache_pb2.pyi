import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CandidateOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDIDATE_OUTCOME_UNSPECIFIED: _ClassVar[CandidateOutcome]
    CANDIDATE_OUTCOME_SERVED: _ClassVar[CandidateOutcome]
    CANDIDATE_OUTCOME_BELOW_THRESHOLD: _ClassVar[CandidateOutcome]
    CANDIDATE_OUTCOME_EXPIRED: _ClassVar[CandidateOutcome]
    CANDIDATE_OUTCOME_NOT_REACHED: _ClassVar[CandidateOutcome]
    CANDIDATE_OUTCOME_REJECTED: _ClassVar[CandidateOutcome]

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    REJECT_REASON_NEGATION: _ClassVar[RejectReason]
    REJECT_REASON_NUMBER: _ClassVar[RejectReason]
    REJECT_REASON_UNIT: _ClassVar[RejectReason]
    REJECT_REASON_ENTITY: _ClassVar[RejectReason]
    REJECT_REASON_DIRECTION: _ClassVar[RejectReason]
    REJECT_REASON_OPPOSITE: _ClassVar[RejectReason]
    REJECT_REASON_MODEL_SCORE: _ClassVar[RejectReason]
    REJECT_REASON_FEEDBACK: _ClassVar[RejectReason]
    REJECT_REASON_DETAIL: _ClassVar[RejectReason]
CANDIDATE_OUTCOME_UNSPECIFIED: CandidateOutcome
CANDIDATE_OUTCOME_SERVED: CandidateOutcome
CANDIDATE_OUTCOME_BELOW_THRESHOLD: CandidateOutcome
CANDIDATE_OUTCOME_EXPIRED: CandidateOutcome
CANDIDATE_OUTCOME_NOT_REACHED: CandidateOutcome
CANDIDATE_OUTCOME_REJECTED: CandidateOutcome
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_REASON_NEGATION: RejectReason
REJECT_REASON_NUMBER: RejectReason
REJECT_REASON_UNIT: RejectReason
REJECT_REASON_ENTITY: RejectReason
REJECT_REASON_DIRECTION: RejectReason
REJECT_REASON_OPPOSITE: RejectReason
REJECT_REASON_MODEL_SCORE: RejectReason
REJECT_REASON_FEEDBACK: RejectReason
REJECT_REASON_DETAIL: RejectReason

class Scope(_message.Message):
    __slots__ = ("namespace", "model", "context")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    context: str
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., context: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "prompt", "completion", "metadata", "created_at", "expires_at", "hit_count", "usage")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    completion: str
    metadata: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    hit_count: int
    usage: Usage
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., completion: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hit_count: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "cost_usd")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("scope", "prompt", "min_similarity", "explain", "fill_lease_ms", "fill_wait_ms")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    FILL_LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    FILL_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    prompt: str
    min_similarity: float
    explain: bool
    fill_lease_ms: int
    fill_wait_ms: int
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., prompt: _Optional[str] = ..., min_similarity: _Optional[float] = ..., explain: _Optional[bool] = ..., fill_lease_ms: _Optional[int] = ..., fill_wait_ms: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("entry_id", "prompt", "similarity", "outcome", "reason", "verifier_score")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_SCORE_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    prompt: str
    similarity: float
    outcome: CandidateOutcome
    reason: RejectReason
    verifier_score: float
    def __init__(self, entry_id: _Optional[str] = ..., prompt: _Optional[str] = ..., similarity: _Optional[float] = ..., outcome: _Optional[_Union[CandidateOutcome, str]] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., verifier_score: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("embed_ms", "search_ms", "total_ms", "queue_ms")
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    embed_ms: float
    search_ms: float
    total_ms: float
    queue_ms: float
    def __init__(self, embed_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("hit", "entry", "similarity", "exact", "min_similarity", "nearest_id", "timings", "candidates", "rejected_reason", "fill_token", "fill_pending", "waited_for_fill")
    HIT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    NEAREST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REASON_FIELD_NUMBER: _ClassVar[int]
    FILL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILL_PENDING_FIELD_NUMBER: _ClassVar[int]
    WAITED_FOR_FILL_FIELD_NUMBER: _ClassVar[int]
    hit: bool
    entry: Entry
    similarity: float
    exact: bool
    min_similarity: float
    nearest_id: str
    timings: Timings
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    rejected_reason: RejectReason
    fill_token: str
    fill_pending: bool
    waited_for_fill: bool
    def __init__(self, hit: _Optional[bool] = ..., entry: _Optional[_Union[Entry, _Mapping]] = ..., similarity: _Optional[float] = ..., exact: _Optional[bool] = ..., min_similarity: _Optional[float] = ..., nearest_id: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., rejected_reason: _Optional[_Union[RejectReason, str]] = ..., fill_token: _Optional[str] = ..., fill_pending: _Optional[bool] = ..., waited_for_fill: _Optional[bool] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("scope", "prompt", "completion", "metadata", "ttl_seconds", "usage")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    prompt: str
    completion: str
    metadata: _containers.ScalarMap[str, str]
    ttl_seconds: int
    usage: Usage
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., prompt: _Optional[str] = ..., completion: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ttl_seconds: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class StoreResponse(_message.Message):
    __slots__ = ("id", "replaced", "expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    replaced: bool
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., replaced: _Optional[bool] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ScopeSelector(_message.Message):
    __slots__ = ("namespace", "model", "context")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    model: str
    context: str
    def __init__(self, namespace: _Optional[str] = ..., model: _Optional[str] = ..., context: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("id", "scope")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    scope: ScopeSelector
    def __init__(self, id: _Optional[str] = ..., scope: _Optional[_Union[ScopeSelector, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("namespace", "entries", "bytes", "lookups", "hits", "exact_hits", "semantic_hits", "stores", "ttl_evictions", "capacity_evictions", "tokens_saved", "cost_saved_usd")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    STORES_FIELD_NUMBER: _ClassVar[int]
    TTL_EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SAVED_FIELD_NUMBER: _ClassVar[int]
    COST_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    entries: int
    bytes: int
    lookups: int
    hits: int
    exact_hits: int
    semantic_hits: int
    stores: int
    ttl_evictions: int
    capacity_evictions: int
    tokens_saved: int
    cost_saved_usd: float
    def __init__(self, namespace: _Optional[str] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., lookups: _Optional[int] = ..., hits: _Optional[int] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., stores: _Optional[int] = ..., ttl_evictions: _Optional[int] = ..., capacity_evictions: _Optional[int] = ..., tokens_saved: _Optional[int] = ..., cost_saved_usd: _Optional[float] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("namespaces", "total")
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    total: NamespaceStats
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., total: _Optional[_Union[NamespaceStats, _Mapping]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("scope", "prompt", "entry_id", "correct")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    prompt: str
    entry_id: str
    correct: bool
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., prompt: _Optional[str] = ..., entry_id: _Optional[str] = ..., correct: _Optional[bool] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("similarity", "entry_min_similarity", "serves_paraphrases")
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ENTRY_MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    SERVES_PARAPHRASES_FIELD_NUMBER: _ClassVar[int]
    similarity: float
    entry_min_similarity: float
    serves_paraphrases: bool
    def __init__(self, similarity: _Optional[float] = ..., entry_min_similarity: _Optional[float] = ..., serves_paraphrases: _Optional[bool] = ...) -> None: ...

class ReleaseFillRequest(_message.Message):
    __slots__ = ("scope", "prompt", "fill_token")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    FILL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    prompt: str
    fill_token: str
    def __init__(self, scope: _Optional[_Union[Scope, _Mapping]] = ..., prompt: _Optional[str] = ..., fill_token: _Optional[str] = ...) -> None: ...

class ReleaseFillResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...
