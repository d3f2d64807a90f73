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
from cachesvc.backends.leases import InMemoryFillLeases
from cachesvc.backends.persistence import DataDir, ModelChange, ModelIdentity, PersistenceOptions
from cachesvc.backends.protocol import Backend
from cachesvc.backends.redis.backend import RedisBackend
from cachesvc.backends.redis.connection import Client as RedisClient
from cachesvc.backends.redis.connection import RedisOptions, connect
from cachesvc.backends.redis.counters import RedisCounters
from cachesvc.backends.redis.lease import RedisFillLeases
from cachesvc.backends.reembed import reembed_pending
from cachesvc.backends.wal import FsyncPolicy
from cachesvc.clock import Clock, SystemClock
from cachesvc.config import BackendKind, LogFormat, Settings
from cachesvc.core.feedback import FeedbackOptions
from cachesvc.core.limits import RateLimiter
from cachesvc.core.policy import SizeLimits, TTLPolicy
from cachesvc.core.service import CacheOptions, CacheService
from cachesvc.core.verify import WEIGHTS_FILE, build_verifier
from cachesvc.embedding.batcher import BatcherOptions, MicroBatcher
from cachesvc.embedding.manifest import ModelManifest
from cachesvc.embedding.memo import MemoizedEncoder
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.embedding.protocol import Embedder
from cachesvc.errors import CacheError
from cachesvc.keyfile import KeyFile, load_key_file
from cachesvc.metrics import ServerMetrics, new_metrics
from cachesvc.records import Usage
from cachesvc.server.auth import Authenticator
from cachesvc.server.grpc_server import SERVICE_NAME, create_server
from cachesvc.server.servicer import SemanticCacheServicer

log = logging.getLogger("cachesvc")
REDIS_HEALTH_INTERVAL = 0.5  # seconds between the health watcher's checks of Redis


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
        self.backend: Backend | None = None
        self.service: CacheService | None = None
        self.authenticator: Authenticator | None = None
        self.limiter: RateLimiter | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: SemanticCacheServicer | None = None
        self._metrics_server: Any = None
        self._usage = Usage(entries=0, bytes=0)
        self._usage_task: asyncio.Task[None] | None = None
        self.redis_client: RedisClient | None = None
        self.redis_counters: RedisCounters | None = None
        self.redis_leases: RedisFillLeases | None = None  # single-flight across replicas (redis backend)
        self._redis_watch: asyncio.Task[None] | None = None
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
                                          weights_path=Path(s.verifier_weights) if s.verifier_weights else WEIGHTS_FILE,
                                          min_score=s.verifier_min_score)
                     for mode in {s.verifier, *s.namespace_verifiers.values()}}
        self.batcher = MicroBatcher(embedder=embedder, options=BatcherOptions(
            max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
            max_queue_ms=s.max_queue_ms or None,
            workers=s.embed_workers, max_text_bytes=s.max_prompt_bytes,
            max_text_tokens=manifest.max_seq_length if manifest else BatcherOptions.max_text_tokens,
        ))
        await self.batcher.start()
        encoder = MemoizedEncoder(encoder=self.batcher, capacity=s.memo_size)
        if s.backend is BackendKind.REDIS:
            self.backend = await self._start_redis(embedder)
        else:
            self.backend = await self._start_embedded(embedder)
        redis_backend = isinstance(self.backend, RedisBackend)
        options = CacheOptions(
            min_similarity=s.min_similarity,
            recall_similarity=s.recall_similarity,
            default_ttl=TTLPolicy.of(s.default_ttl, field="default_ttl"),
            max_bytes=None if redis_backend else s.max_bytes,  # Redis' maxmemory bounds it instead
            max_entries=s.max_entries or None,
            top_k=s.top_k,
            limits=SizeLimits(max_prompt_bytes=s.max_prompt_bytes, max_completion_bytes=s.max_completion_bytes,
                              max_metadata_bytes=s.max_metadata_bytes),
            sweep_interval_seconds=s.sweep_interval,
            max_fill_lease_seconds=s.max_fill_lease,
            max_fill_wait_seconds=s.max_fill_wait,
            max_ttl_seconds=s.max_ttl,
            max_namespaces_per_tenant=s.max_namespaces,
            feedback=FeedbackOptions(max_false_hit_rate=s.max_false_hit_rate, confidence=s.feedback_confidence,
                                     floor_similarity=s.feedback_floor_similarity,
                                     block_after=s.feedback_block_after),
        )
        keys = load_key_file(Path(s.api_keys_file), default=s.default_limits) if s.api_keys_file else KeyFile()
        self.authenticator = Authenticator(api_keys=s.api_keys, key_hashes=keys.key_hashes)
        limiter = self.limiter = RateLimiter(default=s.default_limits, per_tenant=keys.limits)
        self.service = CacheService(encoder=encoder, backend=self.backend, clock=self.clock, options=options,
                                    verifier=verifiers[s.verifier],
                                    namespace_verifiers={ns: verifiers[mode]
                                                         for ns, mode in s.namespace_verifiers.items()},
                                    leases=self.redis_leases or InMemoryFillLeases(),
                                    tenant_max_bytes=lambda tenant: limiter.limits_for(tenant).max_bytes,
                                    shared_counters=self.redis_counters,
                                    feedback_store=self.backend)
        await self.service.start()
        servicer = self._servicer = SemanticCacheServicer(service=self.service, authenticator=self.authenticator,
                                                          metrics=self.metrics, limiter=self.limiter)
        self._server, self.port = create_server(f"{s.host}:{s.port}", servicer=servicer,
                                                health_servicer=self.health,
                                                max_concurrent_rpcs=s.max_concurrent_rpcs,
                                                credentials=tls_credentials(s))
        await self._server.start()
        if s.metrics_port >= 0:
            batcher = self.batcher
            self.metrics.watch_core(self.service.counters, lambda: self._usage, lambda: batcher.queue_depth)
            self._metrics_server, _ = start_http_server(s.metrics_port, addr=s.metrics_host,
                                                          registry=self.metrics.registry)
            self.metrics_port = int(self._metrics_server.server_port)
            # Only the gauges read it; with the redis backend it costs Redis an FT.INFO per tenant each time.
            self._usage_task = asyncio.get_running_loop().create_task(self._refresh_usage(), name="usage-gauge")
        if isinstance(self.backend, RedisBackend):
            self._redis_watch = asyncio.get_running_loop().create_task(self._watch_redis(self.backend),
                                                                       name="redis-health")
        self.metrics.up.set(1)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._state = State.SERVING
        log.info("cachesvc serving on %s:%d (model %s, dimension %d)", s.host, self.port,
                 s.model_dir, embedder.dimension)

    def reload_keys(self) -> bool:
        """Reads the keys file again (SIGHUP): new keys and limits apply to the next call. A file that does not
        read keeps the keys in force. Returns whether the new file was taken."""
        if not self.settings.api_keys_file or self.authenticator is None or self.limiter is None:
            return False
        try:
            keys = load_key_file(Path(self.settings.api_keys_file), default=self.settings.default_limits)
        except ValueError as exc:
            log.error("keys file not reloaded, the keys in force stay: %s", exc)
            return False
        self.authenticator.replace_key_hashes(keys.key_hashes)
        self.limiter.set_limits(default=self.settings.default_limits, per_tenant=keys.limits)
        log.info("keys file reloaded: %d keys, %d tenants", len(keys.key_hashes), len(set(keys.key_hashes.values())))
        return True

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
        if self._servicer is not None:
            self._servicer.flush_accounting()  # the last calls' log lines, without waiting for their timer
        for task in (self._usage_task, self._redis_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.service is not None:
            await self.service.aclose()
        if self.batcher is not None:
            await self.batcher.aclose()
        if self.redis_counters is not None:
            await self.redis_counters.aclose()
        if self.backend is not None:
            await self.backend.aclose()
        if self.redis_client is not None:
            await self.redis_client.aclose()
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
                try:
                    self._usage = await self.backend.usage()
                except CacheError as exc:  # e.g. Redis is down: keep the last figure, try again
                    log.debug("usage not refreshed: %s", exc)
            await asyncio.sleep(1.0)

    async def _start_embedded(self, embedder: Embedder) -> EmbeddedBackend:
        s = self.settings
        data_dir = DataDir(
            PersistenceOptions(data_dir=s.data_dir, fsync=FsyncPolicy(s.fsync.value),
                               snapshot_interval_seconds=s.snapshot_interval, repair=s.repair,
                               on_model_change=ModelChange(s.on_model_change.value)),
            model_identity(embedder),
        )
        backend = self.backend = EmbeddedBackend(dimension=embedder.dimension,
                                                 index_options=IndexOptions(hnsw_threshold=s.hnsw_threshold),
                                                 data_dir=data_dir, clock_now=self.clock.now)
        await start_recovering(backend)
        await reembed_pending(data_dir, embedder=embedder, backend=backend, now=self.clock.now())
        return backend

    async def _start_redis(self, embedder: Embedder) -> RedisBackend:
        """One client (one connection pool) for the process, shared by the backend and the counters."""
        s = self.settings
        options = RedisOptions(url=s.redis_url, username=s.redis_username, password=s.redis_password,
                               cluster=s.redis_cluster, timeout=s.redis_timeout, prefix=s.redis_prefix)
        self.redis_client = connect(options)
        backend = self.backend = RedisBackend(client=self.redis_client, options=options,
                                              dimension=embedder.dimension, model=model_identity(embedder),
                                              clock_now=self.clock.now)
        await backend.start()
        self.redis_counters = RedisCounters(client=self.redis_client, keys=backend.keys, timeout=s.redis_timeout)
        await self.redis_counters.start()
        self.redis_leases = RedisFillLeases(client=self.redis_client, keys=backend.keys, timeout=s.redis_timeout)
        return backend

    async def _watch_redis(self, backend: RedisBackend) -> None:
        """Health follows Redis: NOT_SERVING while it does not answer, SERVING again once it does. The server
        keeps running either way; calls fail fast with UNAVAILABLE meanwhile."""
        serving = True
        while True:
            await asyncio.sleep(REDIS_HEALTH_INTERVAL)
            try:
                await backend.ping()
                up = True
            except CacheError as exc:
                up = False
                if serving:
                    log.warning("Redis is unreachable; reporting NOT_SERVING until it answers: %s", exc)
            if up != serving and self._state is State.SERVING:
                status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
                await self.health.set("", status)
                await self.health.set(SERVICE_NAME, status)
                if up:
                    log.info("Redis answers again; SERVING")
                serving = up


def tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials from the PEM files the settings name (None: no TLS).

    Raises:
        ValueError: a file cannot be read.
    """
    if not settings.tls_cert:
        return None

    def read(path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc

    client_ca = read(settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(read(settings.tls_key), read(settings.tls_cert))],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


async def start_recovering(backend: EmbeddedBackend) -> None:
    """Starts `backend`, which recovers its data directory, without the cyclic GC in the way.

    Recovery allocates millions of long-lived objects and no cycles: without a pause the cyclic GC would walk the
    growing heap again and again (a third of a 1M-entry restart). Once loaded, they live as long as the server,
    so they are frozen out of every later full pass.
    """
    gc.disable()
    try:
        await backend.start()
    finally:
        gc.freeze()
        gc.enable()


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
    async with App(settings) as app:
        loop.add_signal_handler(signal.SIGHUP, app.reload_keys)
        await stop.wait()
        log.info("signal received; draining in-flight calls for up to %.0f s", settings.grace_seconds)
