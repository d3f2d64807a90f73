"""The client's exception tree, and the one place gRPC errors are translated into it.

    CacheClientError          any error the server (or the transport) reported; carries `code` and `details`
    ├── InvalidArgument       the request was rejected as malformed (details name the field)
    ├── NotFoundError         no such entry for this caller
    ├── Unauthenticated       missing or unknown API key
    ├── PermissionDenied      the API key may not do this
    ├── ResourceExhausted     the server is overloaded and shed the call (retryable)
    ├── Unavailable           the server cannot be reached, or is starting or stopping (retryable)
    └── DeadlineExceeded      the call's deadline passed before an answer arrived

Any other status code raises `CacheClientError` itself. Client-side argument checks raise `ValueError` before
anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import ClassVar

import grpc


class CacheClientError(Exception):
    """Root of every error the client raises for a failed call.

    Attributes:
        code: The gRPC status code, or None when the transport did not report one.
        details: The server's (or transport's) error message.
        retryable: Whether retrying the same call later may succeed.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, details: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        if self.code is None:
            return self.details
        return f"{self.code.name}: {self.details}"


class InvalidArgument(CacheClientError):
    """The server rejected the request as malformed."""


class NotFoundError(CacheClientError):
    """The addressed entry does not exist for this caller."""


class Unauthenticated(CacheClientError):
    """No API key, or one the server does not know."""


class PermissionDenied(CacheClientError):
    """The API key is known but may not perform this operation."""


class ResourceExhausted(CacheClientError):
    """The server is overloaded and shed this call; retry later."""

    retryable = True


class Unavailable(CacheClientError):
    """The server is unreachable, starting or stopping; retry later."""

    retryable = True


class DeadlineExceeded(CacheClientError):
    """The call's deadline passed before an answer arrived."""


_BY_STATUS: Mapping[grpc.StatusCode, type[CacheClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(exc: grpc.RpcError) -> CacheClientError:
    """Translates a gRPC error (sync `grpc.RpcError` or `grpc.aio.AioRpcError`) into the client's tree.

    Args:
        exc: The error a stub call raised.

    Returns:
        The matching `CacheClientError` subclass instance (not raised).
    """
    # grpc.RpcError itself declares no accessors; the errors calls raise are also grpc.Call objects that do.
    code_of = getattr(exc, "code", None)
    details_of = getattr(exc, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else None
    message = details if isinstance(details, str) and details else str(exc)
    return _BY_STATUS.get(code, CacheClientError)(message, code=code)


@contextmanager
def map_grpc_errors() -> Iterator[None]:
    """Context manager that re-raises any `grpc.RpcError` in its body as a `CacheClientError`.

    Works around `await` as well, since `grpc.aio.AioRpcError` is a `grpc.RpcError`.

    Raises:
        CacheClientError: For any gRPC error raised in the body (chained with `from`).
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
