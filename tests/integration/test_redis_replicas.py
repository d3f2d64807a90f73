"""Two real server processes over one real Redis (and over a 3-primary Redis Cluster): one shared cache.

Every wait is a bounded poll, never a sleep-based race.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.cluster import RedisCluster

from cachesvc.backends.leases import LeaseKey
from cachesvc.backends.redis.keys import KeySpace
from cachesvc.core.normalize import normalize_prompt
from cachesvc.records import ScopeKey
from cachesvc_client import CacheClient, CachedLLM, LookupResult, NotFoundError, Scope
from cachesvc_client.errors import Unavailable
from tests.conftest import redis_stack

PROMPT = "How do I cancel my subscription?"
PARAPHRASE = "How can I cancel my subscription?"
KEYS = {"acme": "key-acme", "umbrella": "key-umbrella"}
T = TypeVar("T")


def poll(check: Callable[[], T | None], *, timeout: float = 20.0, what: str) -> T:
    """Calls `check` until it returns something truthy, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class Replica:
    """One `cachesvc serve --backend redis` process."""

    def __init__(self, *, url: str, cluster: bool, prefix: str, model_dir: Path, log_dir: Path,
                 extra: tuple[str, ...] = ()) -> None:
        self.url, self.cluster, self.prefix = url, cluster, prefix
        self.model_dir, self.log_dir, self.extra = model_dir, log_dir, extra
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Replica:
        self.port = redis_stack().free_port()
        argv = [sys.executable, "-m", "cachesvc", "serve", "--model-dir", str(self.model_dir), "--host", "127.0.0.1",
                "--port", str(self.port), "--metrics-port", "-1", "--backend", "redis", "--redis-url", self.url,
                "--redis-prefix", self.prefix, "--api-keys", ",".join(f"{t}={k}" for t, k in KEYS.items()),
                "--embed-workers", "1", "--grace-seconds", "1", "--log-level", "WARNING", *self.extra]
        if self.cluster:
            argv.append("--redis-cluster")
        log = open(self.log_dir / f"replica-{self.port}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()
        poll(lambda: self.health() == health_pb2.HealthCheckResponse.SERVING or self._exited(), timeout=90,
             what=f"replica on {self.port} serving")
        assert self.process.poll() is None, f"the replica exited: see {self.log_dir}"
        return self

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def health(self) -> int | None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                           .status)
            except grpc.RpcError:
                return None

    def client(self, tenant: str = "acme", timeout: float = 10.0) -> CacheClient:
        return CacheClient(f"127.0.0.1:{self.port}", api_key=KEYS[tenant], timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def pair(request: pytest.FixtureRequest, model_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Replica]]:
    """Two replicas over one Redis (or one Redis Cluster), for the module; tests keep apart by namespace."""
    if request.param == "redis":
        url, cluster = request.getfixturevalue("redis_server").url, False
    else:
        url, cluster = request.getfixturevalue("redis_cluster")[0].url, True
    prefix = f"r{uuid.uuid4().hex[:8]}"
    logs = tmp_path_factory.mktemp("replicas")
    replicas = [Replica(url=url, cluster=cluster, prefix=prefix, model_dir=model_dir, log_dir=logs)
                for _ in range(2)]
    try:
        for r in replicas:
            r.start()
        yield replicas[0], replicas[1]
    finally:
        for r in replicas:
            r.stop()


@pytest.fixture
def scope() -> Scope:
    return Scope(namespace=f"ns-{uuid.uuid4().hex[:8]}", model="gpt")


def test_a_store_on_one_replica_is_an_exact_and_a_semantic_hit_on_the_other(pair: tuple[Replica, Replica],
                                                                           scope: Scope) -> None:
    a, b = pair
    with a.client() as ca, b.client() as cb:
        stored = ca.store(PROMPT, "Settings > Billing > Cancel.", scope=scope)
        exact = cb.lookup(PROMPT, scope=scope)
        assert exact.hit and exact.exact and exact.entry is not None and exact.entry.id == stored.id
        semantic = cb.lookup(PARAPHRASE, scope=scope)
        assert semantic.hit and not semantic.exact and semantic.completion == "Settings > Billing > Cancel."
        assert 0.9 < semantic.similarity < 1.0
        # The other scope, the same prompt: nothing.
        assert not cb.lookup(PROMPT, scope=Scope(namespace=scope.namespace, model="claude")).hit


def test_a_delete_on_one_replica_is_gone_on_the_other(pair: tuple[Replica, Replica], scope: Scope) -> None:
    a, b = pair
    with a.client() as ca, b.client() as cb:
        stored = ca.store(PROMPT, "answer", scope=scope)
        assert ca.lookup(PROMPT, scope=scope).hit
        assert cb.delete(stored.id) == 1
        assert not ca.lookup(PROMPT, scope=scope).hit
        assert not ca.lookup(PARAPHRASE, scope=scope).hit
        ca.store(PROMPT, "again", scope=scope)
        ca.store("What is the refund policy?", "30 days", scope=scope)
        assert cb.delete_scope(scope.namespace) == 2
        assert not ca.lookup(PROMPT, scope=scope).hit


def test_ttl_expiry_is_seen_by_both_replicas(pair: tuple[Replica, Replica], scope: Scope) -> None:
    a, b = pair
    with a.client() as ca, b.client() as cb:
        stored = ca.store(PROMPT, "short-lived", scope=scope, ttl_seconds=2)
        assert stored.expires_at is not None
        # Served until it expires, and never after: each answer is checked against the expiry time.
        for client in (ca, cb):
            def expired(c: CacheClient = client) -> bool:
                before = time.time()
                found = c.lookup(PARAPHRASE, scope=scope)
                if found.hit:
                    assert before < stored.expires_at.timestamp() + 0.05, "served past its expiry"
                return not found.hit and not c.lookup(PROMPT, scope=scope).hit
            poll(expired, timeout=20, what="the entry expires on both replicas")


def test_tenants_never_see_each_other_across_replicas(pair: tuple[Replica, Replica], scope: Scope) -> None:
    a, b = pair
    with a.client("acme") as acme, b.client("umbrella") as umbrella:
        stored = acme.store(PROMPT, "acme's answer", scope=scope)
        assert not umbrella.lookup(PROMPT, scope=scope).hit
        assert not umbrella.lookup(PARAPHRASE, scope=scope).hit
        with pytest.raises(NotFoundError):
            umbrella.delete(stored.id)
        assert umbrella.delete_scope(scope.namespace) == 0
        [mine] = umbrella.stats(scope.namespace).namespaces  # its own two misses, none of acme's entries
        assert (mine.entries, mine.stores, mine.lookups, mine.hits) == (0, 0, 2, 0)
    with b.client("acme") as acme_on_b:
        assert acme_on_b.lookup(PROMPT, scope=scope).hit


def test_stats_on_any_replica_count_every_replicas_work(pair: tuple[Replica, Replica], scope: Scope) -> None:
    a, b = pair
    with a.client() as ca, b.client() as cb:
        ca.store(PROMPT, "answer", scope=scope)
        cb.lookup(PROMPT, scope=scope)
        cb.lookup(PARAPHRASE, scope=scope)
        ca.lookup("What is the boiling point of water?", scope=scope)
        for client in (ca, cb):
            def counted(c: CacheClient = client) -> bool:
                [ns] = c.stats(scope.namespace).namespaces
                return (ns.entries, ns.stores, ns.lookups, ns.exact_hits, ns.semantic_hits) == (1, 1, 3, 1, 1)
            poll(counted, timeout=10, what="both replicas report the counters of both")


def test_feedback_sent_to_one_replica_is_honoured_by_the_other(pair: tuple[Replica, Replica], scope: Scope) -> None:
    a, b = pair
    with a.client() as ca, b.client() as cb, b.client("umbrella") as umbrella:
        stored = ca.store(PROMPT, "Settings > Billing > Cancel.", scope=scope)
        served = cb.lookup(PARAPHRASE, scope=scope)
        assert served.hit and served.entry is not None and served.entry.id == stored.id
        with pytest.raises(NotFoundError):
            umbrella.feedback(PARAPHRASE, stored.id, correct=False, scope=scope)
        assert ca.lookup(PARAPHRASE, scope=scope).hit  # another tenant's report changed nothing
        result = ca.feedback(PARAPHRASE, stored.id, correct=False, scope=scope)
        assert result.similarity == pytest.approx(served.similarity, abs=1e-4)
        # Acknowledged means in Redis: the other replica's next lookup already honours it.
        assert not cb.lookup(PARAPHRASE, scope=scope).hit
        assert cb.lookup(PROMPT, scope=scope).hit
        cb.feedback(PROMPT, stored.id, correct=False, scope=scope)
        assert not ca.lookup(PROMPT, scope=scope).hit


def test_a_restarted_replica_finds_everything(pair: tuple[Replica, Replica], scope: Scope) -> None:
    a, b = pair
    with a.client() as ca:
        ca.store(PROMPT, "kept", scope=scope)
    b.restart()
    with b.client() as cb:
        assert cb.lookup(PROMPT, scope=scope).completion == "kept"
        assert cb.lookup(PARAPHRASE, scope=scope).completion == "kept"


# ---- Single-flight across replicas: one fill lease in Redis, waiters woken over (sharded) pub/sub -------------


class LeaseWatch:
    """Reads, straight from Redis, how many callers (of any replica) wait on the fill lease of one prompt: each
    waiting lookup subscribes to the lease's channel on the lease's shard."""

    def __init__(self, replica: Replica, scope: Scope, prompt: str, tenant: str = "acme") -> None:
        key = LeaseKey.of(ScopeKey(tenant=tenant, namespace=scope.namespace, model=scope.model,
                                   context=scope.context), normalize_prompt(prompt))
        self.channel = KeySpace(replica.prefix).lease(key)
        if replica.cluster:
            with RedisCluster.from_url(replica.url) as cluster:
                node = cluster.get_node_from_key(self.channel)
                self.redis = redis.Redis(host=node.host, port=node.port)
        else:
            self.redis = redis.Redis.from_url(replica.url)

    def waiters(self) -> int:
        _, count = self.redis.execute_command("PUBSUB", "SHARDNUMSUB", self.channel)
        return int(count)

    def held(self) -> bool:
        return bool(self.redis.exists(self.channel))

    def close(self) -> None:
        self.redis.close()


def test_eight_identical_misses_over_two_replicas_make_one_fill(pair: tuple[Replica, Replica], scope: Scope) -> None:
    a, b = pair
    watch = LeaseWatch(a, scope, PROMPT)
    with a.client(timeout=60) as ca, b.client(timeout=60) as cb, ThreadPoolExecutor(8) as pool:
        try:
            clients = [ca, cb] * 4
            calls: list[Future[LookupResult]] = [
                pool.submit(c.lookup, PROMPT, scope=scope, fill_lease=30, fill_wait=30) for c in clients]
            # The first miss answers at once with the lease; the seven others wait on it, on both replicas.
            poll(lambda: watch.waiters() == 7 and any(c.done() for c in calls), what="one holder, seven waiting")
            [holder] = [i for i, c in enumerate(calls) if c.done()]
            first = calls[holder].result()
            assert not first.hit and first.fill_token is not None and not first.waited_for_fill
            assert watch.held()
            stored = clients[holder].store(PROMPT, "Settings > Billing > Cancel.", scope=scope)
            for i, call in enumerate(calls):
                if i != holder:
                    served = call.result(timeout=30)
                    assert served.hit and served.waited_for_fill and served.fill_token is None
                    assert served.entry is not None and served.entry.id == stored.id
            assert not watch.held()
            poll(lambda: watch.waiters() == 0, what="the waiters' subscriptions dropped")
        finally:
            watch.close()


def test_a_release_on_one_replica_hands_the_lease_to_a_waiter_on_the_other(pair: tuple[Replica, Replica],
                                                                          scope: Scope) -> None:
    a, b = pair
    watch = LeaseWatch(a, scope, PROMPT)
    with a.client(timeout=60) as ca, b.client(timeout=60) as cb, ThreadPoolExecutor(1) as pool:
        try:
            first = ca.lookup(PROMPT, scope=scope, fill_lease=30)
            assert first.fill_token is not None
            waiting = pool.submit(cb.lookup, PROMPT, scope=scope, fill_lease=30, fill_wait=30)
            poll(lambda: watch.waiters() == 1, what="a lookup on the other replica waiting")
            assert not ca.release_fill(PROMPT, scope=scope, fill_token="someone-else")
            assert not waiting.done() and watch.waiters() == 1
            assert ca.release_fill(PROMPT, scope=scope, fill_token=first.fill_token)
            took_over = waiting.result(timeout=30)
            assert not took_over.hit and took_over.waited_for_fill and took_over.fill_token is not None
            assert not ca.release_fill(PROMPT, scope=scope, fill_token=first.fill_token)
            assert cb.release_fill(PROMPT, scope=scope, fill_token=took_over.fill_token)
        finally:
            watch.close()


# ---- Faults: Redis stopped, killed and restarted under a running replica ---------------------------------------


@pytest.fixture
def own_redis() -> Iterator[Any]:
    server = redis_stack().start_server()
    yield server
    server.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
    server.close()


def test_redis_down_or_slow_means_unavailable_not_serving_then_recovery(own_redis: Any, model_dir: Path,
                                                                        tmp_path: Path) -> None:
    a = Replica(url=own_redis.url, cluster=False, prefix="faults", model_dir=model_dir, log_dir=tmp_path,
                extra=("--redis-timeout", "0.3"))
    a.start()
    scope = Scope(namespace="faults")
    try:
        with a.client(timeout=10) as ca:
            ca.store(PROMPT, "before", scope=scope)
            # Slow: a Redis that does not answer (stopped) costs a call the Redis timeout, not the deadline.
            own_redis.process.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(Unavailable):
                ca.lookup(PROMPT, scope=scope)
            assert time.monotonic() - started < 5
            own_redis.process.send_signal(signal.SIGCONT)
            assert ca.lookup(PROMPT, scope=scope).completion == "before"

            own_redis.stop()  # killed: lookups and stores fail fast, health says NOT_SERVING, the server lives on
            for call in (lambda: ca.lookup(PROMPT, scope=scope), lambda: ca.store("x?", "y", scope=scope)):
                with pytest.raises(Unavailable):
                    call()
            poll(lambda: a.health() == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
            llm = CachedLLM(ca, scope=scope, call=lambda prompt: "from the LLM")
            assert llm(PROMPT).completion == "from the LLM"  # the client bypasses a cache that is down
            assert a.process is not None and a.process.poll() is None

            own_redis.restart()  # back, empty (no persistence): the replica reconnects by itself
            poll(lambda: a.health() == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")
            assert not ca.lookup(PROMPT, scope=scope).hit
            ca.store(PROMPT, "after", scope=scope)
            assert ca.lookup(PROMPT, scope=scope).completion == "after"
            assert ca.lookup(PARAPHRASE, scope=scope).completion == "after"  # the index was made again
    finally:
        a.stop()


def test_a_cluster_node_killed_and_restarted(model_dir: Path, tmp_path: Path) -> None:
    with redis_stack().running_cluster(3) as nodes:
        a = Replica(url=nodes[0].url, cluster=True, prefix="faults", model_dir=model_dir, log_dir=tmp_path,
                    extra=("--redis-timeout", "0.5"))
        a.start()
        scope = Scope(namespace="faults")
        try:
            with a.client(timeout=10) as ca:
                ca.store(PROMPT, "before", scope=scope)
                for node in nodes:
                    node.stop()  # the whole cluster down: every call fails fast, health follows
                with pytest.raises(Unavailable):
                    ca.lookup(PROMPT, scope=scope)
                poll(lambda: a.health() == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
                for node in nodes:
                    node.restart()  # back with their cluster config (nodes.conf), without data
                poll(lambda: "cluster_state:ok" in nodes[0].cli("CLUSTER", "INFO"), what="cluster ok")
                poll(lambda: a.health() == health_pb2.HealthCheckResponse.SERVING, timeout=30, what="SERVING")

                def stored_and_found() -> bool:
                    try:
                        ca.store(PROMPT, "after", scope=scope)
                        return ca.lookup(PARAPHRASE, scope=scope).completion == "after"
                    except Unavailable:
                        return False  # the client may still be finding the cluster's slots again
                poll(stored_and_found, timeout=30, what="store and semantic hit after the restart")
        finally:
            a.stop()
