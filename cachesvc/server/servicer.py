"""The SemanticCache servicer: authenticate, convert, call core, convert back, log one line, map errors."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from cachesvc.core.limits import CallKind, RateLimiter
from cachesvc.core.service import CacheService
from cachesvc.core.types import HitKind
from cachesvc.errors import CacheError
from cachesvc.metrics import ServerMetrics
from cachesvc.server import convert
from cachesvc.server.auth import Authenticator
from cachesvc.server.errors import status_for, trailers_for
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

log = logging.getLogger("cachesvc.requests")

Response = TypeVar("Response")
Handler = Callable[[str, dict[str, object]], Awaitable[Response]]


# What a caller-chosen request id may contain before it reaches a log line: no spaces, quotes or control
# characters (so it cannot forge fields), and a bounded length.
_REQUEST_ID = re.compile(r"[^A-Za-z0-9._:/+-]")
MAX_REQUEST_ID_CHARS = 64


def _loggable_request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == "x-request-id":
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return _REQUEST_ID.sub("_", text[:MAX_REQUEST_ID_CHARS])
    return ""


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The caller's deadline on the time.monotonic() clock, so queued work it no longer waits for is shed."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# How long after a reply its call is accounted for (request histogram, log line). Work on the event loop right
# after a reply still delays that reply on a small box: the histogram and log line, run on the loop's next turn,
# added ~0.1-0.15 ms to an exact hit after an idle spell, and nothing once run 1 ms later (bench/RESULTS.md, "Lookup
# overhead, fifth round"; measured, the mechanism not traced: grpc's own threads, which write the reply, most
# likely wait for the core the loop keeps busy).
ACCOUNTING_DELAY_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class _Finished:
    method: str
    code: grpc.StatusCode
    seconds: float
    fields: dict[str, object]


class SemanticCacheServicer(pb_grpc.SemanticCacheServicer):  # type: ignore[misc]
    def __init__(self, *, service: CacheService, authenticator: Authenticator, metrics: ServerMetrics,
                 limiter: RateLimiter | None = None) -> None:
        self._service = service
        self._auth = authenticator
        self._metrics = metrics
        self._limiter = limiter
        # Per-call costs kept small (every call pays them, hit or miss): request ids are a random per-server
        # prefix and a counter rather than a uuid4 each, and labelled metric children are looked up once.
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._request_seconds: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._similarity: dict[HitKind, Any] = {}
        self._finished: list[_Finished] = []  # calls answered and not yet accounted for

    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.LookupResponse:
        async def handle(tenant: str, fields: dict[str, object]) -> pb.LookupResponse:
            lookup = convert.lookup_from_proto(tenant, request, deadline=_deadline(context))
            result = await self._service.lookup(lookup)
            fields.update(scope=(result.scope or lookup.scope).digest, outcome=result.hit_kind.value,
                          similarity=round(result.similarity, 4), embed_ms=round(result.timings.embed_ms, 3),
                          queue_ms=round(result.timings.queue_ms, 3), search_ms=round(result.timings.search_ms, 3))
            if lookup.fill is not None:
                fields.update(fill=("lease" if result.fill.token else "pending" if result.fill.pending else "-"),
                              waited=result.fill.waited)
            if result.hit_kind is not HitKind.EXACT:
                self._metrics.embed_seconds.observe(result.timings.embed_ms / 1000)
                if result.nearest_id is not None:
                    similarity = self._similarity.get(result.hit_kind)
                    if similarity is None:
                        similarity = self._similarity[result.hit_kind] = \
                            self._metrics.lookup_similarity.labels(result.hit_kind.value)
                    similarity.observe(result.similarity)
            return convert.lookup_to_proto(result)

        return await self._call("Lookup", context, handle, CallKind.LOOKUP)

    async def Store(self, request: pb.StoreRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.StoreResponse:
        async def handle(tenant: str, fields: dict[str, object]) -> pb.StoreResponse:
            write = convert.write_from_proto(tenant, request, deadline=_deadline(context))
            result = await self._service.store(write)
            fields.update(scope=result.entry.scope.digest, entry=result.entry.id, replaced=result.replaced)
            return convert.store_to_proto(result)

        return await self._call("Store", context, handle, CallKind.STORE)

    async def ReleaseFill(
        self, request: pb.ReleaseFillRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReleaseFillResponse:
        async def handle(tenant: str, fields: dict[str, object]) -> pb.ReleaseFillResponse:
            scope = convert.scope_key(tenant, request.scope)
            released = await self._service.release_fill(scope, request.prompt, request.fill_token)
            fields.update(scope=self._service.checked_scope(scope).digest, released=released)
            return pb.ReleaseFillResponse(released=released)

        return await self._call("ReleaseFill", context, handle)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteResponse:
        async def handle(tenant: str, fields: dict[str, object]) -> pb.DeleteResponse:
            deleted = await self._service.delete(convert.delete_from_proto(tenant, request))
            fields.update(deleted=deleted)
            return pb.DeleteResponse(deleted=deleted)

        return await self._call("Delete", context, handle)

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.StatsResponse:
        async def handle(tenant: str, fields: dict[str, object]) -> pb.StatsResponse:
            namespace = request.namespace if request.HasField("namespace") else None
            return convert.stats_to_proto(await self._service.stats(tenant, namespace))

        return await self._call("Stats", context, handle)

    async def Feedback(self, request: pb.FeedbackRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.FeedbackResponse:
        async def handle(tenant: str, fields: dict[str, object]) -> pb.FeedbackResponse:
            report = convert.feedback_from_proto(tenant, request)  # the tenant from the credentials, never the body
            result = await self._service.feedback(report)
            fields.update(scope=self._service.checked_scope(report.scope).digest, entry=report.entry_id,
                          correct=report.correct,
                          similarity=round(result.similarity, 4),
                          entry_min_similarity=round(result.entry_min_similarity, 4))
            return convert.feedback_to_proto(result)

        return await self._call("Feedback", context, handle)

    def _account(self) -> None:
        """Observes the request histogram and writes one log line per call answered since the last time, in call
        order."""
        finished, self._finished = self._finished, []
        for call in finished:  # every call is counted, whatever becomes of its log line
            histogram = self._request_seconds.get((call.method, call.code))
            if histogram is None:
                histogram = self._request_seconds[(call.method, call.code)] = \
                    self._metrics.request_seconds.labels(call.method, call.code.name)
            histogram.observe(call.seconds)
        if not log.isEnabledFor(logging.INFO):  # the line is built on every call otherwise, even when not shown
            return
        for call in finished:
            fields = call.fields
            fields.update(code=call.code.name, ms=round(call.seconds * 1000, 3))
            try:
                log.info(" ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})
            except Exception:  # a failing filter or handler must not cost the other calls their lines
                logging.getLogger(__name__).exception("request log line not written")

    def flush_accounting(self) -> None:
        """Accounts at once for the calls answered and not yet accounted for (at shutdown)."""
        if self._finished:
            self._account()

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], handler: Handler[Response],
        kind: CallKind | None = None,
    ) -> Response:
        started = time.perf_counter()
        metadata = context.invocation_metadata()
        request_id = _loggable_request_id(metadata) or f"{self._id_prefix}{next(self._ids):08x}"
        fields: dict[str, object] = {"request_id": request_id, "method": method}
        code = grpc.StatusCode.OK
        message = ""
        trailers: tuple[tuple[str, str], ...] = ()
        try:
            tenant = self._auth.tenant_for(metadata)
            if kind is not None and self._limiter is not None:
                self._limiter.check(tenant, kind)
            response = await handler(tenant, fields)
        except CacheError as exc:
            code, message, trailers = status_for(exc), str(exc), trailers_for(exc)
        except Exception:
            # Never a stack trace to the caller, never a dead server: log it here with the request id.
            log.exception("internal error request_id=%s method=%s", request_id, method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
        self._finished.append(_Finished(method, code, time.perf_counter() - started, fields))
        if len(self._finished) == 1:
            asyncio.get_running_loop().call_later(ACCOUNTING_DELAY_SECONDS, self._account)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message, trailers)
        return response
