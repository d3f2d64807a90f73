"""Tenants sharing one server learn nothing about each other: memo timing, counters, metrics, namespaces."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cachesvc.server.auth import key_hash
from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc
from tests.conftest import CountingEmbedder

StartApp = Callable[..., Any]
KEYS = {"key-one": "t1", "key-two": "t2"}
T1 = (("authorization", "Bearer key-one"),)
T2 = (("authorization", "Bearer key-two"),)


async def test_a_prompt_one_tenant_sent_is_embedded_again_for_another(start_app: StartApp,
                                                                       counting_embedder: CountingEmbedder) -> None:
    """A memo shared across tenants answered t2 in microseconds for a prompt t1 had sent: a timing oracle."""
    app = await start_app(api_keys=KEYS)
    secret = "Draft a layoff announcement for the Berlin office"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        await stub.Lookup(pb.LookupRequest(prompt=secret), metadata=T1)
        await stub.Lookup(pb.LookupRequest(prompt=secret), metadata=T1)  # t1's own memo answers t1
        assert counting_embedder.texts.count(secret) == 1
        probe = await stub.Lookup(pb.LookupRequest(prompt=secret), metadata=T2)
    assert counting_embedder.texts.count(secret) == 2
    assert probe.timings.embed_ms > 0


async def test_namespaces_per_tenant_are_capped_and_counters_stay_bounded(start_app: StartApp) -> None:
    app = await start_app(api_keys=KEYS, max_namespaces=3)
    assert app.service is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        for ns in ("a", "b", "c"):
            await stub.Store(pb.StoreRequest(scope=pb.Scope(namespace=ns), prompt=f"question {ns}", completion="x"),
                             metadata=T1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Store(pb.StoreRequest(scope=pb.Scope(namespace="d"), prompt="question d", completion="x"),
                             metadata=T1)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "namespaces" in caught.value.details()
        # another tenant is not affected by t1's namespaces
        await stub.Store(pb.StoreRequest(scope=pb.Scope(namespace="d"), prompt="question d", completion="x"),
                         metadata=T2)
        # lookups in many new namespaces create no state
        await asyncio.gather(*(stub.Lookup(pb.LookupRequest(scope=pb.Scope(namespace=f"probe-{i}"), prompt="hi"),
                                           metadata=T1) for i in range(50)))
        stats = await stub.Stats(pb.StatsRequest(), metadata=T1)
    assert sorted(s.namespace for s in stats.namespaces) == ["a", "b", "c"]
    assert len(app.service.counters.for_tenant("t1")) == 3


async def test_metrics_name_tenants_but_not_namespaces_and_listen_on_loopback(start_app: StartApp) -> None:
    app = await start_app(api_keys=KEYS, metrics_port=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        await stub.Store(pb.StoreRequest(scope=pb.Scope(namespace="project-nightingale"), prompt="plan",
                                         completion="x"), metadata=T1)
        await stub.Lookup(pb.LookupRequest(scope=pb.Scope(namespace="project-nightingale"), prompt="plan"),
                          metadata=T1)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    body = await asyncio.to_thread(scrape)
    assert 'cachesvc_lookups_total{tenant="t1"} 1.0' in body
    assert "nightingale" not in body and "namespace=" not in body
    assert app.settings.metrics_host == "127.0.0.1"


def keys_file(path: Path, entries: list[tuple[str, str, float | None]]) -> Path:
    lines = []
    for tenant, key, lookups in entries:
        lines += ["[[keys]]", f'tenant = "{tenant}"', f'sha256 = "{key_hash(key)}"']
        if lookups is not None:
            lines.append(f"lookups_per_second = {lookups}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_keys_file_rate_limits_and_reload(start_app: StartApp, tmp_path: Path) -> None:
    path = keys_file(tmp_path / "keys.toml", [("t1", "key-one", 0.001), ("t2", "key-two", None)])
    app = await start_app(api_keys_file=str(path))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        await stub.Lookup(pb.LookupRequest(prompt="first"), metadata=T1)
        call = stub.Lookup(pb.LookupRequest(prompt="second"), metadata=T1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = dict(caught.value.trailing_metadata() or ())["retry-after-ms"]
        assert 900_000 <= int(str(retry)) <= 1_000_000  # about 1,000 s until the next token at 0.001/s
        for _ in range(5):  # t2 has no limit and is not slowed by t1
            await stub.Lookup(pb.LookupRequest(prompt="any"), metadata=T2)

        keys_file(path, [("t1", "key-rotated", None)])
        assert app.reload_keys()
        await stub.Lookup(pb.LookupRequest(prompt="after the rotation"),
                          metadata=(("authorization", "Bearer key-rotated"),))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Lookup(pb.LookupRequest(prompt="old key"), metadata=T2)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

        path.write_text("[[keys]]\nbroken", encoding="utf-8")
        assert not app.reload_keys()  # a bad file keeps the keys in force
        await stub.Lookup(pb.LookupRequest(prompt="still in"), metadata=(("authorization", "Bearer key-rotated"),))


async def test_conflicting_credentials_are_unauthenticated(start_app: StartApp) -> None:
    app = await start_app(api_keys=KEYS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Stats(pb.StatsRequest(), metadata=(*T1, ("x-api-key", "key-two")))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_tenant_over_its_byte_quota_evicts_its_own_entries_not_others(start_app: StartApp) -> None:
    app = await start_app(api_keys=KEYS, max_bytes=40_000, tenant_max_bytes=20_000)
    completion = "c" * 1000  # each entry is charged about 4.4 KB (vector, texts, overhead)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SemanticCacheStub(channel)
        for i in range(3):
            await stub.Store(pb.StoreRequest(prompt=f"tenant two's question {i}", completion=completion),
                             metadata=T2)
        for i in range(10):  # 44 KB: over both t1's quota and, with t2's entries, the whole budget
            last = await stub.Store(pb.StoreRequest(prompt=f"tenant one's question {i}", completion=completion),
                                    metadata=T1)
        t1 = (await stub.Stats(pb.StatsRequest(), metadata=T1)).total
        t2 = (await stub.Stats(pb.StatsRequest(), metadata=T2)).total
        newest = await stub.Lookup(pb.LookupRequest(prompt="tenant one's question 9"), metadata=T1)
    assert t2.entries == 3 and t2.capacity_evictions == 0
    assert t1.bytes <= 20_000 and t1.capacity_evictions == 10 - t1.entries > 0
    assert newest.hit and newest.entry.id == last.id
