"""Black-box test of the container image (`make container-test`): a plain script, not a pytest test.

It drives a container engine (podman or docker) from outside, so it lives apart from the pytest suite that
`make test` and CI run: it needs root or an engine, takes a minute, and tests an image, not the code.

What it does, against an already built image:
 1. starts a container on a fresh named volume at /data, on free loopback ports, and waits until the image's own
    HEALTHCHECK (`cachesvc health`, the gRPC health service) passes;
 2. through the published gRPC port, with the Python client: store, exact lookup, semantic lookup (a paraphrase,
    so the ONNX model runs inside the container), stats; and scrapes /metrics;
 3. checks the image: non-root user, /data writable by it, no torch / sentence-transformers / pip inside;
 4. stops it (SIGTERM) and checks a clean exit (code 0, before the engine's kill timeout);
 5. starts a new container on the same volume and expects the entry back (the server is durable in /data);
 6. stops that one too (clean exit again) and removes the containers and the volume it made, whatever happened.

Usage: .venv/bin/python scripts/container_test.py [--engine podman|docker] [--image cachesvc:latest]
                                                   [-e CACHESVC_X=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cachesvc_client import CacheClient, Scope

SCOPE = Scope(namespace="container-test", model="test-llm")
PROMPT = "What is the capital of France?"
PARAPHRASE = "Which city is the capital of France?"
COMPLETION = "Paris."
HEALTHY_WITHIN_S = 120.0
STOP_TIMEOUT_S = 30  # the engine's SIGKILL deadline; the server's own grace period is 10 s


class Failed(Exception):
    """A check failed; the message says which and why."""


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def check(self, name: str, fn: Callable[[], str | None]) -> bool:
        start = time.monotonic()
        try:
            detail = fn()
        except Failed as exc:
            self.failed.append(name)
            print(f"FAIL {name}: {exc}", flush=True)
            return False
        except Exception as exc:  # an unexpected error is a failed check, reported with its type
            self.failed.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            return False
        self.passed.append(name)
        took = time.monotonic() - start
        print(f"ok   {name} ({took:.1f} s){': ' + detail if detail else ''}", flush=True)
        return True


class Engine:
    """The container CLI, with the few differences between podman and docker kept here."""

    def __init__(self, name: str, network: str, env: list[str]) -> None:
        self.name = name
        self.network = network
        self.env = env

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.name, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise Failed(f"`{self.name} {' '.join(args)}` exited {done.returncode}: {noise_free(done.stderr)}")
        return done

    def start(self, image: str, container: str, volume: str, port: int, metrics_port: int) -> None:
        """Starts a detached container serving gRPC on 127.0.0.1:port and metrics on 127.0.0.1:metrics_port."""
        args = ["run", "-d", "--name", container, "-v", f"{volume}:/data"]
        for setting in self.env:
            args += ["-e", setting]
        if self.network == "host":
            # Host network (what this machine's podman setup uses): the ports are chosen with the settings.
            args += ["--network", "host", "-e", "CACHESVC_HOST=127.0.0.1", "-e", f"CACHESVC_PORT={port}",
                     "-e", f"CACHESVC_METRICS_PORT={metrics_port}"]
        else:
            args += ["-p", f"127.0.0.1:{port}:50051", "-p", f"127.0.0.1:{metrics_port}:9464"]
        self.run(*args, image)

    def healthy(self, container: str) -> bool:
        """Runs or reads the image's HEALTHCHECK."""
        if self.name.endswith("podman"):
            # Podman schedules health checks through systemd timers; without systemd, run the check directly.
            return self.run("healthcheck", "run", container, check=False).returncode == 0
        status = self.run("inspect", "--format", "{{.State.Health.Status}}", container, check=False).stdout
        return status.strip() == "healthy"

    def state(self, container: str) -> dict[str, object]:
        out = self.run("inspect", "--format", "{{json .State}}", container).stdout
        state: dict[str, object] = json.loads(out)
        return state

    def logs(self, container: str, tail: int = 40) -> str:
        # The whole log, cut here: podman 4.3's `logs --tail N` loses lines of short logs.
        done = self.run("logs", container, check=False)
        return "\n".join((done.stdout + done.stderr).splitlines()[-tail:])


def noise_free(text: str) -> str:
    """Drops podman's complaints about a missing systemd (it then cannot schedule health checks itself)."""
    return "\n".join(line for line in text.splitlines() if "systemd" not in line).strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Context:
    engine: Engine
    image: str
    volume: str
    containers: list[str] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    entry_id: str = ""


def wait_healthy(ctx: Context, container: str) -> str:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        if ctx.engine.healthy(container):
            return f"{container} healthy"
        if ctx.engine.state(container).get("Running") is False:
            raise Failed(f"{container} exited before it was healthy:\n{ctx.engine.logs(container)}")
        time.sleep(0.5)
    raise Failed(f"{container} not healthy within {HEALTHY_WITHIN_S:.0f} s:\n{ctx.engine.logs(container)}")


def start(ctx: Context, container: str) -> str:
    ctx.port, ctx.metrics_port = free_port(), free_port()
    ctx.containers.append(container)
    ctx.engine.start(ctx.image, container, ctx.volume, ctx.port, ctx.metrics_port)
    return f"gRPC on 127.0.0.1:{ctx.port}, metrics on 127.0.0.1:{ctx.metrics_port}, volume {ctx.volume}"


def store_and_lookup(ctx: Context) -> str:
    with CacheClient(f"127.0.0.1:{ctx.port}", timeout=30) as client:
        stored = client.store(PROMPT, COMPLETION, scope=SCOPE)
        ctx.entry_id = stored.id
        exact = client.lookup(PROMPT, scope=SCOPE)
        if not (exact.hit and exact.exact and exact.completion == COMPLETION):
            raise Failed(f"exact lookup did not hit: {exact}")
        # A low threshold override: this checks that the model runs in the container, not the threshold.
        semantic = client.lookup(PARAPHRASE, scope=SCOPE, min_similarity=0.5)
        if not (semantic.hit and not semantic.exact and semantic.completion == COMPLETION):
            raise Failed(f"semantic lookup of a paraphrase did not hit: {semantic}")
        stats = client.stats(SCOPE.namespace)
        if stats.total.entries != 1:
            raise Failed(f"stats count {stats.total.entries} entries, expected 1")
    return (f"stored {stored.id}; exact hit; paraphrase hit at similarity {semantic.similarity:.3f} "
            f"(embed {semantic.timings.embed_ms:.1f} ms)")


def metrics(ctx: Context) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctx.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    names = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines()
                    if line.startswith("cachesvc_")})
    if not names:
        raise Failed("no cachesvc_* series on /metrics")
    return f"{len(names)} cachesvc_* series"


def image_contents(ctx: Context) -> str:
    container = ctx.containers[-1]
    uid = ctx.engine.run("exec", container, "id", "-u").stdout.strip()
    if uid == "0":
        raise Failed("the server runs as root")
    ctx.engine.run("exec", container, "sh", "-c", "touch /data/.probe && rm /data/.probe")
    probe = ("import importlib.util as u; bad = [m for m in ('torch', 'sentence_transformers', 'pip', 'onnx', "
             "'transformers', 'huggingface_hub') if u.find_spec(m)]; print(','.join(bad))")
    present = ctx.engine.run("exec", container, "python", "-c", probe).stdout.strip()
    if present:
        raise Failed(f"the runtime image holds {present}")
    return f"uid {uid}, /data writable, no torch/sentence-transformers/onnx/pip"


def stop_cleanly(ctx: Context, container: str) -> str:
    start_time = time.monotonic()
    ctx.engine.run("stop", "-t", str(STOP_TIMEOUT_S), container, timeout=STOP_TIMEOUT_S + 30)
    took = time.monotonic() - start_time
    state = ctx.engine.state(container)
    code = state.get("ExitCode")
    if code != 0:
        raise Failed(f"exit code {code} after SIGTERM (137 = killed at the timeout):\n{ctx.engine.logs(container)}")
    if took >= STOP_TIMEOUT_S:
        raise Failed(f"stop took {took:.1f} s: the engine had to kill it")
    drained = "cachesvc stopped" in ctx.engine.logs(container, tail=5)
    return f"exit code 0, stopped in {took:.1f} s" + (", logged 'cachesvc stopped'" if drained else "")


def persistence(ctx: Context, report: Report) -> None:
    name = "entry survives a restart on the same volume"
    with CacheClient(f"127.0.0.1:{ctx.port}", timeout=30) as client:
        found = client.lookup(PROMPT, scope=SCOPE)
    if found.hit and found.exact and found.completion == COMPLETION and found.entry is not None:
        report.passed.append(name)
        print(f"ok   {name}: entry {found.entry.id} is back", flush=True)
    else:
        report.failed.append(name)
        print(f"FAIL {name}: the entry is gone after a restart on the same /data volume", flush=True)


@contextmanager
def cleanup(ctx: Context) -> Iterator[None]:
    try:
        yield
    finally:
        for container in ctx.containers:
            ctx.engine.run("rm", "-f", "-t", "0", container, check=False)
        ctx.engine.run("volume", "rm", "-f", ctx.volume, check=False)
        left = [c for c in ctx.containers
                if ctx.engine.run("container", "exists", c, check=False).returncode == 0] \
            if ctx.engine.name.endswith("podman") else []
        print(f"cleaned up: containers {', '.join(ctx.containers) or '-'}, volume {ctx.volume}"
              + (f" (still there: {left})" if left else ""), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Black-box test of the cachesvc container image.")
    parser.add_argument("--engine", default=shutil.which("podman") or shutil.which("docker") or "podman")
    parser.add_argument("--image", default="cachesvc:latest")
    parser.add_argument("--network", choices=["host", "publish"], default=None,
                        help="host network with ports set by env (podman default), or -p publishing (docker)")
    parser.add_argument("--env", "-e", action="append", default=[], metavar="CACHESVC_X=VALUE",
                        help="extra setting for the containers (repeatable)")
    args = parser.parse_args()
    network = args.network or ("host" if args.engine.endswith("podman") else "publish")
    run_id = uuid.uuid4().hex[:8]
    ctx = Context(engine=Engine(args.engine, network, args.env), image=args.image, volume=f"cachesvc-ctest-{run_id}")
    report = Report()
    began = time.monotonic()
    print(f"container-test: image {args.image}, engine {args.engine}, {network} network", flush=True)
    first, second = f"cachesvc-ctest-{run_id}-a", f"cachesvc-ctest-{run_id}-b"
    with cleanup(ctx):
        ctx.engine.run("volume", "create", ctx.volume)
        ok = (report.check("start container", lambda: start(ctx, first))
              and report.check("healthy (image HEALTHCHECK, gRPC health)", lambda: wait_healthy(ctx, first)))
        if ok:
            report.check("store + exact + semantic lookup over gRPC", lambda: store_and_lookup(ctx))
            report.check("metrics endpoint", lambda: metrics(ctx))
            report.check("runtime image contents", lambda: image_contents(ctx))
            ok = report.check("clean stop on SIGTERM", lambda: stop_cleanly(ctx, first))
        if ok:
            ok = (report.check("restart on the same volume", lambda: start(ctx, second))
                  and report.check("healthy after restart", lambda: wait_healthy(ctx, second)))
        if ok:
            persistence(ctx, report)
            report.check("clean stop on SIGTERM after restart", lambda: stop_cleanly(ctx, second))
    took = time.monotonic() - began
    print(f"container-test took {took:.0f} s")
    print(f"{len(report.passed)} passed, {len(report.failed)} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
