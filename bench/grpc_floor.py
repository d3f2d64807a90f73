"""The least a lookup over gRPC can cost on this stack: a grpc.aio server with no cache in it.

    .venv/bin/python bench/grpc_floor.py --port 50099 --stored FILE --embed-on thread

The floor that `bench/overhead.py --floor` measures the real server against, in the same run. `Lookup` answers a
prompt listed in --stored (one per line) with a canned exact-hit reply as large as the real server's, and any
other prompt by embedding it with the plain onnxruntime session of `bench/overhead.py` and answering a miss:

    thread  on a pool of --workers threads, each with its own one-thread session (as the server's model workers)
    loop    on the event loop's own thread (one session; no thread hand-off, and nothing else runs meanwhile)

The health check is grpcio's own servicer, as on the real server. Nothing else: no authentication, validation,
logging, metrics, batcher, memo, search or verifier. Whatever a lookup costs here beyond the embedding is grpc.aio,
protobuf and the thread hand-off on this machine, so no server built on them can do better.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from common import DEFAULT_MODEL_DIR
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from load import COMPLETION
from overhead import PlainSession

from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc


def exact_reply(prompt: str) -> pb.LookupResponse:
    """What the real server answers for an exact hit on a stored prompt (same fields, same sizes)."""
    reply = pb.LookupResponse(hit=True, similarity=1.0, exact=True, min_similarity=0.9,
                              nearest_id="0123456789abcdef0123456789abcdef")
    entry = reply.entry
    entry.id = reply.nearest_id
    entry.prompt = prompt
    entry.completion = COMPLETION
    entry.created_at.seconds, entry.created_at.nanos = 1_765_000_000, 123_456_000
    entry.hit_count = 3
    reply.timings.total_ms = 0.05
    return reply


class FloorServicer(pb_grpc.SemanticCacheServicer):  # type: ignore[misc]
    def __init__(self, *, model_dir: Path, stored: set[str], embed_on: str, workers: int) -> None:
        self._stored = stored
        self._local = threading.local()
        self._model_dir = model_dir
        self._session = PlainSession(model_dir) if embed_on == "loop" else None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="floor-model")
        if embed_on == "thread":  # load every worker's session before serving
            list(self._pool.map(lambda _i: self._thread_session(), range(workers)))

    def _thread_session(self) -> PlainSession:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = PlainSession(self._model_dir)
        return session

    def _embed_on_thread(self, prompt: str) -> float:
        started = time.perf_counter()
        self._thread_session().embed([prompt])
        return (time.perf_counter() - started) * 1000

    async def Lookup(self, request: pb.LookupRequest, context: Any) -> pb.LookupResponse:
        started = time.perf_counter()
        if request.prompt in self._stored:
            return exact_reply(request.prompt)
        if self._session is not None:
            self._session.embed([request.prompt])
            embed_ms = (time.perf_counter() - started) * 1000
        else:
            embed_ms = await asyncio.get_running_loop().run_in_executor(self._pool, self._embed_on_thread,
                                                                        request.prompt)
        reply = pb.LookupResponse(min_similarity=0.9)
        reply.timings.embed_ms = embed_ms
        reply.timings.total_ms = (time.perf_counter() - started) * 1000
        return reply


async def serve(args: argparse.Namespace) -> None:
    stored = set(args.stored.read_text(encoding="utf-8").splitlines()) if args.stored else set()
    server = grpc.aio.server()
    pb_grpc.add_SemanticCacheServicer_to_server(
        FloorServicer(model_dir=args.model_dir, stored=stored, embed_on=args.embed_on, workers=args.workers), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stored", type=Path, default=None, help="prompts answered as exact hits, one per line")
    parser.add_argument("--embed-on", choices=("thread", "loop"), default="thread")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
