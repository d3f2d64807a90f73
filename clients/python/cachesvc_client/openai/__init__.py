"""A drop-in cached client for the openai SDK (`pip install cachesvc-client[openai]`).

    from openai import OpenAI
    from cachesvc_client import CacheClient
    from cachesvc_client.openai import CachedOpenAI

    llm = CachedOpenAI(OpenAI(), cache=CacheClient("127.0.0.1:50051"), namespace="support-bot")
    reply = llm.chat.completions.create(model="gpt-4o-mini", messages=[...], temperature=0)   # a ChatCompletion
    cache_info(reply)   # CacheInfo(cached=True, outcome=Outcome.HIT, similarity=1.0, entry_id=...)

`AsyncCachedOpenAI` wraps `AsyncOpenAI` with an `AsyncCacheClient`. See the README, "Drop-in for the OpenAI SDK".
"""

from cachesvc_client.openai._guard import CacheGuard, CircuitBreaker
from cachesvc_client.openai._request import CachePlan, Uncacheable, plan_request
from cachesvc_client.openai._types import CacheInfo, CallRecord, Fallback, ModelPrice, Outcome, PriceTable, cache_info
from cachesvc_client.openai._wrapper import (
    DEFAULT_FILL_LEASE_SECONDS,
    DEFAULT_FILL_WAIT_SECONDS,
    DEFAULT_LOOKUP_TIMEOUT_SECONDS,
    AsyncCachedOpenAI,
    CachedOpenAI,
)

__all__ = [
    "DEFAULT_FILL_LEASE_SECONDS",
    "DEFAULT_FILL_WAIT_SECONDS",
    "DEFAULT_LOOKUP_TIMEOUT_SECONDS",
    "AsyncCachedOpenAI",
    "CacheGuard",
    "CacheInfo",
    "CachePlan",
    "CachedOpenAI",
    "CallRecord",
    "CircuitBreaker",
    "Fallback",
    "ModelPrice",
    "Outcome",
    "PriceTable",
    "Uncacheable",
    "cache_info",
    "plan_request",
]
