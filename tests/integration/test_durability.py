"""Restarts and crashes of a real server: what was acknowledged is still there."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cachesvc.app import App
from cachesvc.clock import ManualClock
from cachesvc.errors import CacheError
from cachesvc_client import AsyncCacheClient, CacheClient, CacheClientError, NotFoundError, Scope

StartApp = Callable[..., Any]


async def test_restart_preserves_scopes_ttls_hits_budget_and_deletions(start_app: StartApp, tmp_path: Path) -> None:
    clock = ManualClock()
    settings = {"data_dir": tmp_path / "data", "max_entries": 3, "clock": clock}
    geo = Scope(namespace="geo", model="m")
    app: App = await start_app(**settings)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        kept = await client.store("What is the capital of France?", "Paris", scope=geo, metadata={"source": "atlas"},
                                  ttl_seconds=1000)
        evicted = await client.store("Who wrote Hamlet?", "Shakespeare", scope=Scope(namespace="lit"))
        gone = await client.store("How tall is Everest?", "8,849 m", scope=geo)
        for _ in range(3):
            assert (await client.lookup("What is the capital of France?", scope=geo)).hit
        await client.delete(gone.id)
        prime = await client.store("Name a prime.", "7", scope=Scope(namespace="primes"), ttl_seconds=10)
        await client.store("What is 2 + 2?", "4")  # a fourth entry: evicts the least recently used (Hamlet)
        before = {n.namespace: n for n in (await client.stats()).namespaces}
    await app.aclose()
    assert before["lit"].capacity_evictions == 1 and before["lit"].entries == 0

    clock.advance(10)  # the prime has expired meanwhile: it must not come back
    restarted: App = await start_app(**settings)
    async with AsyncCacheClient(f"127.0.0.1:{restarted.port}") as client:
        hit = await client.lookup("What is the capital of France?", scope=geo)
        assert hit.entry is not None and hit.entry.id == kept.id and hit.entry.metadata == {"source": "atlas"}
        assert hit.entry.hit_count == 4 and hit.entry.expires_at == kept.expires_at
        assert not (await client.lookup("What is the capital of France?", scope=Scope(namespace="geo"))).hit
        for prompt, scope in (("How tall is Everest?", geo), ("Who wrote Hamlet?", Scope(namespace="lit")),
                              ("Name a prime.", Scope(namespace="primes"))):
            found = await client.lookup(prompt, scope=scope, min_similarity=0.0, explain=True)
            assert not {c.entry_id for c in found.candidates} & {gone.id, evicted.id, prime.id}
        after = {n.namespace: n for n in (await client.stats()).namespaces}
        assert {ns: s.entries for ns, s in after.items() if s.entries} == {"geo": 1, "default": 1}
        assert after["geo"].bytes == before["geo"].bytes and after["default"].bytes == before["default"].bytes
        for entry_id in (gone.id, evicted.id):
            with pytest.raises(NotFoundError):
                await client.delete(entry_id)


async def test_second_server_on_same_directory_refuses(start_app: StartApp, tmp_path: Path) -> None:
    await start_app(data_dir=tmp_path / "shared")
    with pytest.raises(CacheError, match="in use by another cachesvc server"):
        await start_app(data_dir=tmp_path / "shared")


# Crash tests: a real server process, killed with SIGKILL in the middle of concurrent stores.

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, data_dir: Path, model_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cachesvc", "serve", "--port", "0", "--metrics-port", "-1", "--data-dir",
             str(data_dir), "--model-dir", str(model_dir), "--fsync", "always"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )
        self.log: list[str] = []
        self.port = self._wait_for_port()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _wait_for_port(self) -> int:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
        raise AssertionError("server exited before serving:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self._reap()

    def _reap(self) -> int:
        code = self.process.wait(timeout=60)
        self._drainer.join(timeout=10)  # the pipe reaches EOF once the process is gone
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.kill()


@pytest.mark.parametrize("kill_after", [1, 40, 120])
def test_acknowledged_stores_survive_kill_9(kill_after: int, tmp_path: Path, model_dir: Path,
                                            servers: list[ServerProcess]) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, model_dir)
    servers.append(server)
    acknowledged: dict[str, tuple[str, str, dict[str, str], str]] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def writer(worker: int) -> None:
        with CacheClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            for n in range(10_000):
                prompt = f"worker {worker} question {n}: {rng.random():.12f}"
                completion = f"answer {worker}-{n} " + "é" * rng.randrange(0, 64)
                metadata = {"worker": str(worker), "n": str(n)}
                try:
                    stored = client.store(prompt, completion, scope=Scope(namespace=f"w{worker % 3}"),
                                          metadata=metadata)
                except CacheClientError:
                    return  # the server is gone; this store was never acknowledged
                with lock:
                    acknowledged[stored.id] = (prompt, completion, metadata, f"w{worker % 3}")
                    if len(acknowledged) >= kill_after:
                        enough.set()

    with ThreadPoolExecutor(16) as pool:
        for worker in range(16):
            pool.submit(writer, worker)
        assert enough.wait(timeout=120), f"seed {seed}: stores were not acknowledged"
        server.kill()
    assert acknowledged, f"seed {seed}"

    restarted = ServerProcess(data_dir, model_dir)
    servers.append(restarted)
    with CacheClient(f"127.0.0.1:{restarted.port}") as client:
        for entry_id, (prompt, completion, metadata, namespace) in acknowledged.items():
            hit = client.lookup(prompt, scope=Scope(namespace=namespace))
            assert hit.exact and hit.entry is not None, f"seed {seed}: lost acknowledged store {entry_id}"
            assert (hit.entry.id, hit.entry.completion, dict(hit.entry.metadata)) == (entry_id, completion, metadata)
        assert client.stats().total.entries >= len(acknowledged)
    assert restarted.stop() == 0
    print(f"kill -9 after {kill_after}+ acknowledged stores (seed {seed}): {len(acknowledged)} acknowledged, "
          f"all recovered")
    assert os.listdir(data_dir)


async def test_a_store_whose_caller_gives_up_is_applied_as_logged(tmp_path: Path) -> None:
    from cachesvc.backends.embedded import EmbeddedBackend
    from cachesvc.backends.persistence import DataDir, ModelIdentity, PersistenceOptions
    from cachesvc.records import Entry, ScopeKey

    def backend() -> EmbeddedBackend:
        model = ModelIdentity(name="m", dimension=4, checksum="c")
        return EmbeddedBackend(dimension=4, data_dir=DataDir(PersistenceOptions(data_dir=tmp_path), model))

    first = backend()
    await first.start()
    entry = Entry(id="e1", scope=ScopeKey(tenant="t"), prompt="p", normalized_prompt="p", completion="c",
                  metadata={}, created_at=1.0, expires_at=None, size_bytes=10)
    caller = asyncio.create_task(first.put(entry, np.array([1, 0, 0, 0], dtype=np.float32)))
    await asyncio.sleep(0)  # the store is waiting for its log record to be fsynced
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(1000):  # the logged store still becomes visible, as recovery would replay it
        if await first.get("e1") is not None:
            break
        await asyncio.sleep(0.001)
    assert await first.get("e1") is not None
    await first.aclose()
    second = backend()
    await second.start()
    assert await second.get("e1") is not None
    await second.aclose()


class ProjectedModel:
    """Another model: the real embeddings through a fixed random projection to 256 dimensions. Paraphrases stay
    close, but its vectors (and their dimension) differ from the real model's."""

    dimension = 256

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._projection = np.random.default_rng(7).standard_normal((inner.dimension, 256)).astype(np.float32)
        self.texts: list[str] = []
        self.fail_after: int | None = None  # texts embedded before every further call fails

    def embed(self, texts: Any) -> np.ndarray:
        if self.fail_after is not None and len(self.texts) + len(texts) > self.fail_after:
            raise RuntimeError("injected model failure")
        self.texts.extend(texts)
        out = self._inner.embed(texts) @ self._projection
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


async def test_a_model_change_with_reembed_keeps_every_live_entry(start_app: StartApp, tmp_path: Path,
                                                                 real_embedder: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import cachesvc.backends.reembed as reembed_module
    from cachesvc.app import App, Overrides
    from cachesvc.backends.embedded import EmbeddedBackend
    from cachesvc.config import OnModelChange, Settings
    from cachesvc.core.verify import VerifierMode

    monkeypatch.setattr(reembed_module, "BATCH", 4)  # several batches, so a failure can land part-way
    clock = ManualClock()
    data = tmp_path / "data"
    app: App = await start_app(data_dir=data, clock=clock)
    prompts = [f"How do I reset the password of account number {n}?" for n in range(10)]
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        stored = [await client.store(p, f"answer {n}", metadata={"n": str(n)}) for n, p in enumerate(prompts)]
        brief = await client.store("Name a prime.", "7", ttl_seconds=10)
        await client.delete(stored[3].id)
        assert (await client.lookup(prompts[5])).hit
    await app.aclose()
    clock.advance(20)  # the prime expires before the restart

    other = ProjectedModel(real_embedder)
    # The shipped verifier's model was trained on the real model's vectors: with another model, the operator
    # chooses a verifier (here the rules).
    with pytest.raises(CacheError, match="train one for this model"):
        await App(Settings(host="127.0.0.1", port=0, metrics_port=-1, data_dir=tmp_path / "fresh"),
                  overrides=Overrides(clock=clock, embedder=other)).start()
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, data_dir=data, grace_seconds=1.0,
                        verifier=VerifierMode.RULES)
    refused = App(settings, overrides=Overrides(clock=clock, embedder=other))
    with pytest.raises(CacheError, match="--on-model-change reembed"):
        await refused.start()

    other.fail_after = 5  # a crash part-way through: the old data must still be pending afterwards
    reembed = dataclasses.replace(settings, on_model_change=OnModelChange.REEMBED)
    crashed = App(reembed, overrides=Overrides(clock=clock, embedder=other))

    async def no_snapshot(_self: Any) -> None:
        raise OSError("injected: no snapshot, as after a crash")

    with monkeypatch.context() as patch:  # what was re-embedded before the crash must come back from the log
        patch.setattr(EmbeddedBackend, "snapshot", no_snapshot)
        with pytest.raises(RuntimeError, match="injected"):
            await crashed.start()
    assert (data / "reembed-pending" / "model.json").exists()

    other.fail_after = None
    other.texts.clear()
    restarted = App(reembed, overrides=Overrides(clock=clock, embedder=other))
    await restarted.start()
    try:
        assert not (data / "reembed-pending").exists()
        # Only what the failed start had not stored yet is embedded now.
        assert 0 < len(other.texts) < 9
        async with AsyncCacheClient(f"127.0.0.1:{restarted.port}") as client:
            stats = await client.stats()
            assert stats.total.entries == 9
            for n, prompt in enumerate(prompts):
                found = await client.lookup(prompt)
                if n == 3:
                    assert not found.exact
                    continue
                assert found.exact and found.entry is not None and found.entry.id == stored[n].id
                assert found.entry.metadata == {"n": str(n)} and found.entry.completion == f"answer {n}"
                assert found.entry.hit_count == (2 if n == 5 else 1)  # the hit before the change carried over
            paraphrase = await client.lookup("How can I reset the password for account number 7?",
                                             min_similarity=0.8)
            assert paraphrase.hit and not paraphrase.exact and paraphrase.similarity < 1.0
            assert not (await client.lookup("Name a prime.", min_similarity=0.99)).hit
            with pytest.raises(NotFoundError):
                await client.delete(brief.id)
    finally:
        await restarted.aclose()
