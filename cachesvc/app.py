"""The composition root: builds every component in a visible order and owns their lifecycle.

embedder -> health (NOT_SERVING) -> warm-up -> batcher -> memo -> backend -> cache service -> gRPC server
-> metrics endpoint -> health SERVING. Shutdown runs the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import start_http_server

from cachesvc.backends.embedded import EmbeddedBackend
from cachesvc.backends.faiss_index import IndexOptions
from cachesvc.backends.persistence import DataDir, ModelChange, ModelIdentity, PersistenceOptions
from cachesvc.backends.reembed import reembed_pending
from cachesvc.backends.wal import FsyncPolicy
from cachesvc.clock import Clock, SystemClock
from cachesvc.config import LogFormat, Settings
from cachesvc.core.policy import SizeLimits, TTLPolicy
from cachesvc.core.service import CacheOptions, CacheService
from cachesvc.core.verify import WEIGHTS_FILE, build_verifier
from cachesvc.embedding.batcher import BatcherOptions, MicroBatcher
from cachesvc.embedding.manifest import ModelManifest
from cachesvc.embedding.memo import MemoizedEncoder
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.embedding.protocol import Embedder
from cachesvc.metrics import ServerMetrics, new_metrics
from cachesvc.records import Usage
from cachesvc.server.auth import Authenticator
from cachesvc.server.grpc_server import SERVICE_NAME, create_server
from cachesvc.server.servicer import SemanticCacheServicer

log = logging.getLogger("cachesvc")


class State(Enum):
    NEW = "new"
    STARTING = "starting"
    SERVING = "serving"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """Test and benchmark seams: components to use instead of building them from settings."""

    clock: Clock | None = None
    embedder: Embedder | None = None


class App:
    def __init__(self, settings: Settings, *, overrides: Overrides = Overrides()) -> None:
        self.settings = settings
        self._overrides = overrides
        self.clock: Clock = overrides.clock or SystemClock()
        self.metrics: ServerMetrics = new_metrics()
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.embedder: Embedder | None = None
        self.batcher: MicroBatcher | None = None
        self.backend: EmbeddedBackend | None = None
        self.service: CacheService | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_server: Any = None
        self._usage = Usage(entries=0, bytes=0)
        self._usage_task: asyncio.Task[None] | None = None
        self._state = State.NEW

    async def start(self) -> None:
        """Builds and starts everything; the health service says SERVING only once a lookup can be answered.

        Raises:
            ModelError: the model directory is missing or corrupt.
            RuntimeError: the port cannot be bound.
        """
        if self._state is not State.NEW:
            raise RuntimeError(f"cannot start an app that is {self._state.value}")
        self._state = State.STARTING
        try:
            await self._start()
        except BaseException:
            await self.aclose()  # stops whatever did start
            raise

    async def _start(self) -> None:
        s = self.settings
        log.info("starting cachesvc with settings %s", json.dumps(s.redacted(), sort_keys=True))
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

        embedder = self._overrides.embedder
        if embedder is None:
            # Loading checks the checksum and runs a warm-up embedding; keep it off the event loop.
            embedder = await asyncio.to_thread(
                OnnxEmbedder, model_dir=s.model_dir, intra_op_threads=s.intra_op_threads,
                max_text_bytes=s.max_prompt_bytes,
            )
        self.embedder = embedder
        # Before recovery, which can take a while: a verifier that does not fit the model fails the start at once.
        manifest = manifest_of(embedder)
        verifiers = {mode: build_verifier(mode, embedding_model=manifest.name if manifest else type(embedder).__name__,
                                          dimension=embedder.dimension,
                                          weights_path=Path(s.verifier_weights) if s.verifier_weights else WEIGHTS_FILE)
                     for mode in {s.verifier, *s.namespace_verifiers.values()}}
        self.batcher = MicroBatcher(embedder=embedder, options=BatcherOptions(
            max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
            workers=s.embed_workers, max_text_bytes=s.max_prompt_bytes,
        ))
        await self.batcher.start()
        encoder = MemoizedEncoder(encoder=self.batcher, capacity=s.memo_size)
        data_dir = DataDir(
            PersistenceOptions(data_dir=s.data_dir, fsync=FsyncPolicy(s.fsync.value),
                               snapshot_interval_seconds=s.snapshot_interval, repair=s.repair,
                               on_model_change=ModelChange(s.on_model_change.value)),
            model_identity(embedder),
        )
        self.backend = EmbeddedBackend(dimension=embedder.dimension,
                                       index_options=IndexOptions(hnsw_threshold=s.hnsw_threshold),
                                       data_dir=data_dir, clock_now=self.clock.now)
        # Recovery allocates millions of long-lived objects and no cycles: without a pause the cyclic GC would
        # walk the growing heap again and again (a third of a 1M-entry restart). Once loaded, they live as long
        # as the server, so they are frozen out of every later full pass.
        gc.disable()
        try:
            await self.backend.start()
        finally:
            gc.freeze()
            gc.enable()
        await reembed_pending(data_dir, embedder=embedder, backend=self.backend, now=self.clock.now())
        options = CacheOptions(
            min_similarity=s.min_similarity,
            recall_similarity=s.recall_similarity,
            default_ttl=TTLPolicy.of(s.default_ttl, field="default_ttl"),
            max_bytes=s.max_bytes,
            max_entries=s.max_entries or None,
            top_k=s.top_k,
            limits=SizeLimits(max_prompt_bytes=s.max_prompt_bytes, max_completion_bytes=s.max_completion_bytes,
                              max_metadata_bytes=s.max_metadata_bytes),
            sweep_interval_seconds=s.sweep_interval,
        )
        self.service = CacheService(encoder=encoder, backend=self.backend, clock=self.clock, options=options,
                                    verifier=verifiers[s.verifier],
                                    namespace_verifiers={ns: verifiers[mode]
                                                         for ns, mode in s.namespace_verifiers.items()})
        await self.service.start()
        servicer = SemanticCacheServicer(service=self.service, authenticator=Authenticator(api_keys=s.api_keys),
                                         metrics=self.metrics)
        self._server, self.port = create_server(f"{s.host}:{s.port}", servicer=servicer,
                                                health_servicer=self.health)
        await self._server.start()
        if s.metrics_port >= 0:
            batcher = self.batcher
            self.metrics.watch_core(self.service.counters, lambda: self._usage, lambda: batcher.queue_depth)
            self._metrics_server, _ = start_http_server(s.metrics_port, addr=s.host, registry=self.metrics.registry)
            self.metrics_port = int(self._metrics_server.server_port)
        self._usage_task = asyncio.get_running_loop().create_task(self._refresh_usage(), name="usage-gauge")
        self.metrics.up.set(1)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._state = State.SERVING
        log.info("cachesvc serving on %s:%d (model %s, dimension %d)", s.host, self.port,
                 s.model_dir, embedder.dimension)

    async def aclose(self) -> None:
        """Drains in-flight calls (up to the grace period), then stops components in reverse order."""
        if self._state in (State.NEW, State.STOPPED):
            self._state = State.STOPPED
            return
        self._state = State.STOPPED
        await self.health.enter_graceful_shutdown()
        self.metrics.up.set(0)
        if self._server is not None:
            await self._server.stop(self.settings.grace_seconds)
        if self._usage_task is not None:
            self._usage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._usage_task
        if self.service is not None:
            await self.service.aclose()
        if self.batcher is not None:
            await self.batcher.aclose()
        if self.backend is not None:
            await self.backend.aclose()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("cachesvc stopped")

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _refresh_usage(self) -> None:
        while True:
            if self.backend is not None:
                self._usage = await self.backend.usage()
            await asyncio.sleep(1.0)


def manifest_of(embedder: Embedder) -> ModelManifest | None:
    """The manifest of the model an embedder runs, when it has one (an exported model directory's)."""
    manifest = getattr(embedder, "manifest", None)
    return manifest if isinstance(manifest, ModelManifest) else None


def model_identity(embedder: Embedder) -> ModelIdentity:
    """What a data directory records about the model its vectors came from."""
    manifest = manifest_of(embedder)
    if manifest is not None:
        return ModelIdentity(name=f"{manifest.name} ({manifest.precision.value})", dimension=manifest.dimension,
                             checksum=manifest.onnx_sha256)
    return ModelIdentity(name=type(embedder).__name__, dimension=embedder.dimension, checksum="unknown")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {"ts": round(record.created, 6), "level": record.levelname,
                                   "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format is LogFormat.JSON:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with App(settings):
        await stop.wait()
        log.info("signal received; draining in-flight calls for up to %.0f s", settings.grace_seconds)
