"""Python client for cachesvc, the semantic cache for LLM applications.

    from cachesvc_client import CacheClient, CachedLLM, Scope, context_key

    with CacheClient("127.0.0.1:50051", api_key="...") as cache:
        llm = CachedLLM(cache, scope=Scope(model="gpt-x", context=context_key(params={"temperature": 0})),
                        call=ask_llm)
        print(llm("What is the capital of France?").completion)

`CacheClient` / `AsyncCacheClient` talk to the server; `CachedLLM` / `AsyncCachedLLM` put the cache in front of
an LLM call; `context_key` hashes what must match exactly (system prompt, parameters) for `Scope.context`.
"""

from cachesvc_client.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_SECONDS,
    USE_DEFAULT,
    AsyncCacheClient,
    BaseClient,
    CacheClient,
    ClientState,
    Timeout,
)
from cachesvc_client.errors import (
    CacheClientError,
    DeadlineExceeded,
    InvalidArgument,
    NotFoundError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from cachesvc_client.llm import (
    AsyncCachedLLM,
    CachedLLM,
    CompletionResult,
    OnCacheError,
    SupportsAsyncCache,
    SupportsCache,
)
from cachesvc_client.scope import context_key
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

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_SECONDS",
    "USE_DEFAULT",
    "AsyncCacheClient",
    "AsyncCachedLLM",
    "BaseClient",
    "CacheClient",
    "CacheClientError",
    "CachedLLM",
    "Candidate",
    "CandidateOutcome",
    "ClientState",
    "CompletionResult",
    "DeadlineExceeded",
    "Entry",
    "FeedbackResult",
    "InvalidArgument",
    "LookupResult",
    "NamespaceStats",
    "NotFoundError",
    "OnCacheError",
    "PermissionDenied",
    "RejectReason",
    "ResourceExhausted",
    "Scope",
    "StatsResult",
    "StoreResult",
    "SupportsAsyncCache",
    "SupportsCache",
    "Timeout",
    "Timings",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "__version__",
    "context_key",
]
