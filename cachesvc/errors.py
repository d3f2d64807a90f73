"""The one exception tree of cachesvc.

    CacheError
    ├── InvalidRequest     bad input from a caller (names the field)
    ├── NotFound           an entry id that does not exist for this caller
    ├── Unauthorized       no or unknown credentials
    ├── Forbidden          credentials that may not do this
    ├── Overloaded         a bounded queue is full; the caller may retry later
    ├── QuotaExceeded      the caller's tenant is at one of its limits (namespaces, bytes)
    │   └── RateLimited    the tenant's request rate is over its limit; says when to retry
    ├── NotReady           the service is starting or stopping
    ├── Unavailable        a store the cache depends on (Redis) is unreachable or too slow; retry later
    ├── Unsupported        a backend cannot do this operation (core treats it as a miss)
    └── ModelError         the embedding model is missing, corrupt or failed to run

Every layer raises these; `cachesvc.server.errors` is the only place that maps them to gRPC status codes.
"""

from __future__ import annotations


class CacheError(Exception):
    """Root of every error cachesvc raises on purpose."""


class InvalidRequest(CacheError):
    """The request is malformed; `field` names the offending field when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotFound(CacheError):
    """The addressed entry does not exist (or belongs to another tenant)."""


class Unauthorized(CacheError):
    """The caller did not present valid credentials."""


class Forbidden(CacheError):
    """The caller is known but may not perform this operation."""


class Overloaded(CacheError):
    """A bounded queue is full; shed load instead of growing latency without limit."""


class QuotaExceeded(CacheError):
    """The caller's tenant has reached one of its limits; other tenants are unaffected."""


class RateLimited(QuotaExceeded):
    """The tenant sends more calls of a kind than its rate allows; `retry_after_seconds` says when one fits."""

    def __init__(self, message: str, *, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class NotReady(CacheError):
    """The component has not started yet, or is shutting down."""


class Unavailable(CacheError):
    """A store the cache depends on (e.g. Redis) is down or did not answer in time; the call may be retried."""


class Unsupported(CacheError):
    """The backend does not support this operation."""


class ModelError(CacheError):
    """The embedding model could not be loaded or run."""
