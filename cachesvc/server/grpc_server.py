"""Builds the grpc.aio server: the cache service, standard health checking and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cachesvc.server.servicer import SemanticCacheServicer
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["SemanticCache"].full_name


def create_server(
    address: str, *, servicer: SemanticCacheServicer, health_servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """Returns the server (not started) and the port it bound (useful with port 0).

    Raises:
        RuntimeError: the address cannot be bound.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_SemanticCacheServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return server, port
