"""Builds the grpc.aio server: the cache service, standard health checking and reflection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cachesvc.errors import InvalidRequest, Unsupported
from cachesvc.server.errors import status_for
from cachesvc.server.servicer import SemanticCacheServicer
from cachesvc.server.wire import MalformedRequest, deserializer
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["SemanticCache"].full_name

DEFAULT_MAX_CONCURRENT_RPCS = 1024

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]


def _guarded(behaviour: Behaviour) -> Behaviour:
    """Answers a request whose bytes did not parse with INVALID_ARGUMENT before anything else is touched."""

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        if isinstance(request, MalformedRequest):
            error = InvalidRequest(request.message, field=request.field)
            await context.abort(status_for(error), str(error))
        return await behaviour(request, context)

    return handle


def _unimplemented(name: str) -> Behaviour:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        error = Unsupported(f"{name} is not implemented by this server")
        await context.abort(status_for(error), str(error))
        raise AssertionError("abort returns only by raising")

    return handle


def cache_handlers(servicer: SemanticCacheServicer) -> dict[str, grpc.RpcMethodHandler]:
    """One handler per RPC of the service, each parsing its request with `wire.deserializer`."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["SemanticCache"].methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        implemented = getattr(type(servicer), method.name) is not getattr(pb_grpc.SemanticCacheServicer, method.name)
        behaviour = getattr(servicer, method.name) if implemented else _unimplemented(method.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(behaviour), request_deserializer=deserializer(request_type),
            response_serializer=response_type.SerializeToString)
    return handlers


def create_server(
    address: str, *, servicer: SemanticCacheServicer, health_servicer: health.aio.HealthServicer,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Returns the server (not started) and the port it bound (useful with port 0).

    Args:
        max_concurrent_rpcs: calls served at once; more are answered RESOURCE_EXHAUSTED at once.
        credentials: TLS credentials for the port; None listens without TLS.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    # grpc core cancels calls at random (CANCELLED, nothing logged) once more than 1,000 wait to be matched with
    # a handler. Its limits are raised well above ours, so the only answer to too many calls is ours:
    # RESOURCE_EXHAUSTED, which callers know to retry later.
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0),
                 ("grpc.server.max_pending_requests", 4 * max_concurrent_rpcs),
                 ("grpc.server.max_pending_requests_hard_limit", 8 * max_concurrent_rpcs)],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    handlers = cache_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = (server.add_insecure_port(address) if credentials is None
            else server.add_secure_port(address, credentials))
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return server, port
