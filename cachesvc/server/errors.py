"""The only table from cachesvc errors to gRPC status codes."""

from __future__ import annotations

import grpc

from cachesvc.errors import (
    CacheError,
    Forbidden,
    InvalidRequest,
    ModelError,
    NotFound,
    NotReady,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unsupported,
)

_STATUS: dict[type[CacheError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    ModelError: grpc.StatusCode.INTERNAL,
}


def status_for(error: CacheError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return grpc.StatusCode.INTERNAL


RETRY_AFTER_MS = "retry-after-ms"


def trailers_for(error: CacheError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes with the error's status: when a rate-limited caller may try again."""
    if isinstance(error, RateLimited):
        return ((RETRY_AFTER_MS, str(max(1, round(error.retry_after_seconds * 1000)))),)
    return ()
