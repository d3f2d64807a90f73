"""Fuzzing over the wire: random bytes and adversarial messages on every RPC, with and without API keys.

Whatever arrives, the server answers with a status a caller can act on - never INTERNAL or UNKNOWN, never a
dropped connection - and is healthy afterwards. `make fuzz` runs the same tests with many more examples
(CACHESVC_FUZZ_EXAMPLES) and prints the answers by status code.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesvc.app import App, Overrides
from cachesvc.clock import ManualClock
from cachesvc.config import Settings
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc_client.v1 import cache_pb2 as pb

EXAMPLES = int(os.environ.get("CACHESVC_FUZZ_EXAMPLES", "60"))  # per test
SERVICE = "/cachesvc.v1.SemanticCache/"
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["SemanticCache"].methods]  # every RPC, new ones too
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS}
KEYS = {"key-one": "t1", "key-two": "t2"}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
OUTCOMES: collections.Counter[str] = collections.Counter()


class ServerThread:
    """A real server on its own event loop in a thread, so that hypothesis can drive it from sync tests."""

    def __init__(self, settings: Settings, embedder: OnnxEmbedder) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server", daemon=True)
        self.thread.start()
        self.app = App(settings, overrides=Overrides(clock=ManualClock(), embedder=embedder))
        asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(120)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.app.aclose(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module", params=["open", "keyed"])
def server(request: pytest.FixtureRequest, real_embedder: OnnxEmbedder,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    data_dir: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, data_dir=data_dir, grace_seconds=5.0,
                        max_queue_ms=0.0, api_keys=KEYS if request.param == "keyed" else {})
    running = ServerThread(settings, real_embedder)
    OUTCOMES.clear()
    yield running
    try:
        # still healthy: the health service says SERVING and an ordinary lookup is answered
        health = health_pb2_grpc.HealthStub(running.channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        lookup = running.channel.unary_unary(SERVICE + "Lookup", request_serializer=pb.LookupRequest.SerializeToString,
                                             response_deserializer=pb.LookupResponse.FromString)
        lookup(pb.LookupRequest(prompt="Is the server still well?"), metadata=[("x-api-key", "key-one")], timeout=30)
    finally:
        running.close()
    if EXAMPLES > 60:
        print(f"\nfuzz answers ({request.param} server): {dict(sorted(OUTCOMES.items()))}")


def call(server: ServerThread, method: str, data: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
    rpc = server.channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    try:
        rpc(data, metadata=metadata, timeout=30)
        OUTCOMES["OK"] += 1
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        OUTCOMES[code.name] += 1
        assert code not in FORBIDDEN, f"{method} answered {code.name}: {error.details()}"  # type: ignore[attr-defined]


# Credentials as callers send them, right and wrong, including conflicting pairs.
metadata_st = st.lists(
    st.sampled_from([("authorization", "Bearer key-one"), ("x-api-key", "key-two"), ("x-api-key", "nope"),
                     ("authorization", "Basic abc"), ("authorization", "Bearer "), ("x-request-id", "r1")])
    | st.tuples(st.just("x-request-id"), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)),
    max_size=3,
).map(tuple)

class Long(str):
    """A long string with a short repr, so a failing example stays readable."""

    def __repr__(self) -> str:
        return f"{self[:1]!r} * {len(self)}"


# Text a careless or hostile caller might send: controls, zero-width and combining characters, huge strings.
text_st = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=64),
    st.sampled_from(["", " ", "\x00", "\u200b", "\ufeff", "\u0301", "How do I cancel my subscription?",
                     Long("x" * 40_000), Long("n" * 2_000)]),
)
number_st = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                      st.sampled_from([0.0, 1.0, 0.5, -0.0]))
ttl_st = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.sampled_from([0, 1, 3600, 10**12])
uint32_st = st.integers(min_value=0, max_value=2**32 - 1) | st.sampled_from([0, 1, 50, 60_000])
# A wait is served in full when another call holds the lease: kept short so the run stays bounded.
wait_st = st.integers(min_value=0, max_value=200)
usage_st = st.builds(pb.Usage, prompt_tokens=st.integers(min_value=0, max_value=2**64 - 1),
                     completion_tokens=st.integers(min_value=0, max_value=2**64 - 1), cost_usd=number_st)
scope_st = st.builds(pb.Scope, namespace=text_st, model=text_st, context=text_st)
messages_st: st.SearchStrategy[tuple[str, Message]] = st.one_of(
    st.tuples(st.just("Lookup"), st.builds(pb.LookupRequest, scope=scope_st, prompt=text_st,
                                           min_similarity=number_st, explain=st.booleans(),
                                           fill_lease_ms=uint32_st, fill_wait_ms=wait_st)),
    st.tuples(st.just("Store"), st.builds(pb.StoreRequest, scope=scope_st, prompt=text_st, completion=text_st,
                                          metadata=st.dictionaries(text_st, text_st, max_size=4),
                                          ttl_seconds=ttl_st, usage=usage_st)),
    st.tuples(st.just("Delete"), st.builds(pb.DeleteRequest, id=text_st)),
    st.tuples(st.just("Delete"), st.builds(pb.DeleteRequest, scope=st.builds(
        pb.ScopeSelector, namespace=text_st, model=text_st, context=text_st))),
    st.tuples(st.just("Stats"), st.builds(pb.StatsRequest, namespace=text_st)),
    st.tuples(st.just("Feedback"), st.builds(pb.FeedbackRequest, prompt=text_st, entry_id=text_st)),
    st.tuples(st.just("ReleaseFill"), st.builds(pb.ReleaseFillRequest, scope=scope_st, prompt=text_st,
                                                fill_token=text_st)),
)


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=512), metadata=metadata_st)
def test_random_bytes(server: ServerThread, method: str, data: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
    call(server, method, data, metadata)


@FUZZ
@given(message=messages_st, cut=st.integers(min_value=0, max_value=64), flips=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=4), metadata=metadata_st)
def test_damaged_messages(server: ServerThread, message: tuple[str, Message], cut: int,
                          flips: list[tuple[int, int]], metadata: tuple[tuple[str, str], ...]) -> None:
    """Valid messages, truncated and with bytes flipped: close enough to parse part of the way."""
    method, request = message
    data = bytearray(request.SerializeToString())
    for position, mask in flips:
        if data:
            data[position % len(data)] ^= mask
    call(server, method, bytes(data[:len(data) - min(cut, len(data))] if cut % 3 == 0 else data), metadata)


@FUZZ
@given(message=messages_st, metadata=metadata_st)
def test_adversarial_messages(server: ServerThread, message: tuple[str, Message],
                              metadata: tuple[tuple[str, str], ...]) -> None:
    method, request = message
    call(server, method, request.SerializeToString(), metadata)


@FUZZ
@given(message=messages_st)
def test_adversarial_messages_with_a_valid_key(server: ServerThread, message: tuple[str, Message]) -> None:
    method, request = message
    call(server, method, request.SerializeToString(), (("authorization", "Bearer key-one"),))


def test_outcomes_are_counted(server: ServerThread) -> None:
    """The fuzz tests above really reached the server (a guard against a suite that silently tests nothing)."""
    assert sum(OUTCOMES.values()) >= 4 * min(EXAMPLES, 10)
