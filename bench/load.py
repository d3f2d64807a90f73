"""Load through the real gRPC server on 127.0.0.1: latency per operation, throughput, saturation, overload.

    .venv/bin/python bench/load.py run --preload 1000 --concurrency 16 --duration 30
    .venv/bin/python bench/load.py saturate --preload 1000 --p99-budget-ms 50
    .venv/bin/python bench/load.py peak --peak-rate 100 --max-queue 32
    .venv/bin/python bench/load.py figures --entries 100000
    .venv/bin/python bench/load.py overload --saturated-rate 150 --mix miss=0.8,hit=0.2

Without --target the tool starts `python -m cachesvc serve` as a subprocess on a free 127.0.0.1 port (its own
temporary data directory, metrics off) and reads its CPU time and RSS from /proc/<pid>; with --target it drives
that server (no CPU/RSS figures). The workload comes from a prompt file (`text` field, cut to --max-chars):
    exact   lookup of a stored prompt, verbatim: the exact path (no embedding)
    hit     lookup of a stored prompt with a short suffix: embedding + search, usually a semantic hit
    miss    lookup of a prompt never stored (made unique, so the server's vector memo cannot answer it)
    store   store of a new prompt (made unique)
--mix sets their weights. Closed loop: --concurrency callers, each sends its next call when the last returns.
Open loop: calls start at --rate per second on a fixed schedule whatever the answers; latency is measured from
the scheduled start (no coordinated omission). Every run is bounded by --duration and --count.

Subcommands: `run` (one run), `saturate` (open loop at rising rates; the highest rate whose p99 stays under
--p99-budget-ms), `peak` (a ramp to 3x --peak-rate against a server with a small --max-queue: is latency bounded,
and does the server shed with RESOURCE_EXHAUSTED?), `figures` (exact-hit p50, semantic lookup p50 at --entries
entries next to the embedder's own single-prompt time, memory per entry; with --real N only N entries go
through gRPC and the data directory is grown to --entries with filler, see bench/filler.py), `overload` (open loop
at --factor x --saturated-rate with --deadline-ms client deadlines: goodput, accepted latency, RSS over the run,
and how soon after the load a fresh lookup is answered normally). Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from common import (
    DATA_DIR,
    DEFAULT_MODEL_DIR,
    OUT_DIR,
    REPO_ROOT,
    command_line,
    machine,
    markdown_table,
    percentile,
    progress_bar,
    text_table,
    utc_now,
    write_json,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from cachesvc_client import AsyncCacheClient, CacheClientError, Scope

OPS = ("exact", "hit", "miss", "store")
SCOPE = Scope(namespace="load")
COMPLETION = "A cached completion of a typical length for a short answer. " * 4  # ~240 bytes
MAX_IN_FLIGHT = 4096  # open loop: calls past this many outstanding are not sent but counted as client drops
CALL_TIMEOUT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Short synthetic prompts for large fills: unique, varied, ~12-16 tokens.
_OPENERS = ["How do I", "What is the best way to", "Can you explain how to", "Why does it fail when I",
            "Is it possible to", "Give me steps to", "What happens if I", "Show me how to"]
_VERBS = ["configure", "debug", "install", "speed up", "secure", "migrate", "test", "monitor", "back up", "scale",
          "deploy", "rename", "compress", "translate", "schedule", "merge"]
_OBJECTS = ["a postgres database", "my react app", "nginx caching", "a python package", "kafka consumers",
            "a home wifi router", "an excel pivot table", "my garden irrigation", "a kubernetes cluster",
            "a sourdough starter", "my tax return", "a wordpress site", "an arduino sensor", "a git repository",
            "my laptop battery", "a docker image"]
_TAILS = ["on linux", "for a small team", "without losing data", "in production", "on a budget", "quickly",
          "step by step", "for beginners"]


def synthetic_prompt(i: int) -> str:
    r = random.Random(i)
    return (f"{r.choice(_OPENERS)} {r.choice(_VERBS)} {r.choice(_OBJECTS)} {r.choice(_TAILS)} "
            f"(case {i})?")


def load_prompts(path: Path, max_chars: int, limit: int | None = None) -> list[str]:
    """The distinct prompts of a JSONL file's `text` fields, cut to `max_chars`, at most `limit` of them."""
    prompts: list[str] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = str(json.loads(line).get("text", "")).strip()[:max_chars].strip()
            if text and text not in seen:
                seen.add(text)
                prompts.append(text)
            if limit is not None and len(prompts) >= limit:
                break
    return prompts


# The server


@dataclass
class ProcSample:
    cpu_seconds: float
    rss_bytes: int
    wall: float


def proc_sample(pid: int) -> ProcSample:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5), after pid and comm
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        rss_pages = int(f.read().split()[1])
    return ProcSample(cpu_seconds=(utime + stime) / CLK_TCK, rss_bytes=rss_pages * PAGE, wall=time.monotonic())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    target: str
    pid: int | None
    settings: dict[str, str]


def wait_serving(target: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:  # bounded by the deadline
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {target} not SERVING after {timeout:.0f} s")
            time.sleep(0.1)


@contextlib.contextmanager
def server(args: argparse.Namespace, *, max_queue: int | None = None, data_dir: str | None = None) -> Iterator[Server]:
    """The server to drive: --target's, or one started here (on `data_dir`, else on a temporary directory)."""
    if args.target is not None:
        if not args.target.startswith("127.0.0.1:"):
            raise SystemExit("--target must be 127.0.0.1:PORT (this tool only drives a local server)")
        yield Server(target=args.target, pid=None, settings={})
        return
    port = free_port()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cachesvc-load-"))
        settings = {"host": "127.0.0.1", "port": str(port), "metrics-port": "-1", "data-dir": data_dir,
                    "model-dir": str(args.model_dir), "log-level": args.server_log_level}
        if max_queue is not None:
            settings["max-queue"] = str(max_queue)
        for raw in args.server_arg:
            key, _, value = raw.partition("=")
            settings[key.lstrip("-")] = value
        argv = [sys.executable, "-m", "cachesvc", "serve", *[f"--{k}={v}" for k, v in settings.items()]]
        log_path = Path(data_dir) / "server.log"
        with log_path.open("ab") as log:
            # `python -m` imports the package of its working directory first: --server-source runs other code.
            cpus = args.server_cpus
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=args.server_source,
                                       preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus))
            try:
                wait_serving(f"127.0.0.1:{port}", timeout=900)  # recovery of a large data directory
                yield Server(target=f"127.0.0.1:{port}", pid=process.pid,
                             settings={k: v for k, v in settings.items() if k not in ("data-dir", "port")})
            except BaseException:
                sys.stderr.write(log_path.read_text(encoding="utf-8", errors="replace")[-3000:])
                raise
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


# The workload


@dataclass
class Workload:
    stored: list[str]
    fresh: list[str]
    mix: dict[str, float]
    rng: random.Random
    counter: int = 0

    def next_call(self) -> tuple[str, str]:
        op = self.rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        self.counter += 1
        n = self.counter
        if op == "exact":
            return op, self.rng.choice(self.stored)
        if op == "hit":
            return op, f"{self.rng.choice(self.stored)} Thanks."
        prompt = self.fresh[n % len(self.fresh)]
        return op, f"{prompt} [{op} {n}]"


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_op: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    hits: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    dropped: int = 0
    started: float = 0.0
    finished: float = 0.0
    timeline: list[tuple[float, float, str]] = field(default_factory=list)  # (start offset s, ms, code)
    # Each answered lookup whose prompt went through a model run: (latency ms, queued for the model ms, the rest of
    # its embedding stage, i.e. its own run and the hand-offs around it, ms), the last two from the server's
    # timings. A vector from the server's memo reports no wait and is left out.
    embedded: list[tuple[float, float, float]] = field(default_factory=list)


async def call(client: AsyncCacheClient, op: str, prompt: str, tally: Tally, scheduled: float,
               timeout: float = CALL_TIMEOUT) -> None:
    code = "OK"
    timings = None
    try:
        if op == "store":
            await client.store(prompt, COMPLETION, scope=SCOPE, timeout=timeout)
        else:
            result = await client.lookup(prompt, scope=SCOPE, timeout=timeout)
            if result.hit:
                tally.hits[op] += 1
            timings = result.timings
    except CacheClientError as exc:
        code = exc.code.name if exc.code is not None else "UNKNOWN"
    except Exception as exc:  # a load tool counts every failure
        code = f"CLIENT:{type(exc).__name__}"
    ms = (time.perf_counter() - scheduled) * 1000
    if code == "OK":
        tally.latencies[op].append(ms)
        if timings is not None and timings.queue_ms > 0:
            tally.embedded.append((ms, timings.queue_ms, timings.embed_ms - timings.queue_ms))
    else:
        tally.errors[code] += 1
        tally.errors_by_op[op][code] += 1
    tally.timeline.append((scheduled - tally.started, ms, code))


@contextlib.asynccontextmanager
async def clients(target: str, channels: int) -> AsyncIterator[list[AsyncCacheClient]]:
    opened = [AsyncCacheClient(target, timeout=CALL_TIMEOUT) for _ in range(channels)]
    try:
        yield opened
    finally:
        for c in opened:
            await c.close()


async def closed_loop(target: str, workload: Workload, *, concurrency: int, duration: float, count: int,
                      channels: int) -> Tally:
    tally = Tally()
    async with clients(target, channels) as pool:
        tally.started = time.perf_counter()
        deadline = tally.started + duration

        async def caller(i: int) -> None:
            client = pool[i % len(pool)]
            while tally.sent < count and time.perf_counter() < deadline:
                tally.sent += 1
                op, prompt = workload.next_call()
                await call(client, op, prompt, tally, time.perf_counter())

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        tally.finished = time.perf_counter()
    return tally


async def open_loop(target: str, workload: Workload, *, rates: list[tuple[float, float]], count: int,
                    channels: int, timeout: float = CALL_TIMEOUT) -> Tally:
    """Calls on a fixed schedule: `rates` is a list of (calls per second, seconds) phases, run in turn."""
    tally = Tally()
    pending: set[asyncio.Task[None]] = set()
    async with clients(target, channels) as pool:
        tally.started = time.perf_counter()
        phase_start = tally.started
        for rate, seconds in rates:
            n_phase = int(rate * seconds)
            for i in range(n_phase):
                if tally.sent >= count:
                    break
                due = phase_start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tally.sent += 1
                if len(pending) >= MAX_IN_FLIGHT:
                    tally.dropped += 1
                    continue
                op, prompt = workload.next_call()
                task = asyncio.get_running_loop().create_task(call(pool[i % len(pool)], op, prompt, tally, due,
                                                                   timeout))
                pending.add(task)
                task.add_done_callback(pending.discard)
            phase_start += seconds
        if pending:
            await asyncio.wait(pending, timeout=timeout + 5)
        tally.finished = time.perf_counter()
    return tally


def summarize(tally: Tally, workload_name: str) -> dict[str, Any]:
    wall = tally.finished - tally.started
    ops = {}
    for op in OPS:
        lat = tally.latencies.get(op, [])
        errors = dict(tally.errors_by_op.get(op, {}))
        if not lat and not errors:
            continue
        ops[op] = {
            "ok": len(lat), "errors": errors, "per_second": round(len(lat) / wall, 1) if wall else None,
            "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None,
            "hit_ratio": round(tally.hits[op] / len(lat), 3) if lat and op != "store" else None,
        }
    every = [ms for op in OPS for ms in tally.latencies.get(op, [])]
    ok = len(every)
    return {
        "workload": workload_name, "seconds": round(wall, 2), "sent": tally.sent, "ok": ok,
        "client_dropped": tally.dropped, "throughput_per_second": round(ok / wall, 1) if wall else None,
        "p50_ms": percentile(every, 50), "p95_ms": percentile(every, 95), "p99_ms": percentile(every, 99),
        "max_ms": max(every) if every else None, "errors": dict(tally.errors), "ops": ops,
    }


def round_floats(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: round_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [round_floats(v) for v in value]
    return value


async def stats(target: str) -> dict[str, int]:
    async with AsyncCacheClient(target) as client:
        total = (await client.stats()).total
    return {"entries": total.entries, "bytes": total.bytes, "lookups": total.lookups, "hits": total.hits,
            "stores": total.stores}


async def preload(target: str, prompts: list[str], *, concurrency: int, progress: bool) -> float:
    """Stores the prompts; returns stores per second."""
    bar = progress_bar(len(prompts), f"preload {len(prompts)}", enabled=progress)
    queue = iter(prompts)
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    async with clients(target, 4) as pool:
        async def worker(i: int) -> None:
            client = pool[i % len(pool)]
            for prompt in queue:  # shared iterator: each prompt is taken once
                for _attempt in range(5):  # bounded retry on overload
                    try:
                        await client.store(prompt, COMPLETION, scope=SCOPE, timeout=60.0)
                        break
                    except CacheClientError as exc:
                        errors[exc.code.name if exc.code else "UNKNOWN"] += 1
                        await asyncio.sleep(0.05)
                bar.update(1)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    bar.close()
    if errors:
        print(f"preload errors (retried): {dict(errors)}", file=sys.stderr)
    return len(prompts) / (time.perf_counter() - started)


def parse_mix(raw: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in raw.split(","):
        op, _, weight = part.partition("=")
        if op.strip() not in OPS:
            raise SystemExit(f"--mix: unknown operation {op!r}; use {', '.join(OPS)}")
        mix[op.strip()] = float(weight)
    if not any(w > 0 for w in mix.values()):
        raise SystemExit("--mix: give at least one positive weight")
    return {k: v for k, v in mix.items() if v > 0}


@dataclass
class Setup:
    workload: Workload
    preload_rate: float | None
    rss_empty: int | None
    rss_loaded: int | None


async def prepare(args: argparse.Namespace, srv: Server, *, entries: int | None = None) -> Setup:
    prompts = load_prompts(args.prompts, args.max_chars)
    rng = random.Random(args.seed)
    rng.shuffle(prompts)
    want = args.preload if entries is None else entries
    from_file = min(want, len(prompts) // 2)  # keep half of the file for misses and stores
    stored = prompts[:from_file] + [synthetic_prompt(i) for i in range(want - from_file)]
    fresh = prompts[from_file:]
    rss_empty = proc_sample(srv.pid).rss_bytes if srv.pid else None
    rate = await preload(srv.target, stored, concurrency=args.preload_concurrency,
                         progress=not args.no_progress) if stored else None
    rss_loaded = proc_sample(srv.pid).rss_bytes if srv.pid else None
    return Setup(workload=Workload(stored=stored, fresh=fresh, mix=parse_mix(args.mix), rng=rng),
                 preload_rate=rate, rss_empty=rss_empty, rss_loaded=rss_loaded)


async def measured(srv: Server, coro: Any) -> tuple[Tally, dict[str, Any]]:
    before = proc_sample(srv.pid) if srv.pid else None
    tally = await coro
    resources: dict[str, Any] = {}
    if srv.pid and before is not None:
        after = proc_sample(srv.pid)
        wall = after.wall - before.wall
        resources = {"server_cpu_seconds": round(after.cpu_seconds - before.cpu_seconds, 2),
                     "server_cpu_cores": round((after.cpu_seconds - before.cpu_seconds) / wall, 2),
                     "server_rss_mb": round(after.rss_bytes / 2**20, 1)}
    resources["index"] = await stats(srv.target)
    return tally, resources


async def wait_idle(srv: Server, *, below_cores: float = 0.1, timeout: float = 600.0) -> float:
    """Waits (bounded) until the server's CPU use over one second falls below `below_cores`: a background index
    build or snapshot would otherwise run during the measurement. Returns the seconds waited."""
    if srv.pid is None:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = proc_sample(srv.pid)
        await asyncio.sleep(1.0)
        after = proc_sample(srv.pid)
        if (after.cpu_seconds - before.cpu_seconds) / (after.wall - before.wall) < below_cores:
            break
    return time.monotonic() - started


def ops_table(summary: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    headers = ["op", "ok", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms", "hit ratio", "errors"]
    rows: list[list[object]] = []

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for op, d in summary["ops"].items():
        rows.append([op, d["ok"], d["per_second"], f(d["p50_ms"]), f(d["p95_ms"]), f(d["p99_ms"]), f(d["max_ms"]),
                     "-" if d["hit_ratio"] is None else d["hit_ratio"], d["errors"] or "-"])
    rows.append(["all", summary["ok"], summary["throughput_per_second"], f(summary["p50_ms"]),
                 f(summary["p95_ms"]), f(summary["p99_ms"]), f(summary["max_ms"]), "-", summary["errors"] or "-"])
    return headers, rows


# Subcommands


async def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    with server(args) as srv:
        setup = await prepare(args, srv)
        await wait_idle(srv)
        if args.rate:
            coro = open_loop(srv.target, setup.workload, rates=[(args.rate, args.duration)], count=args.count,
                             channels=args.channels)
            name = f"open loop {args.rate}/s"
        else:
            coro = closed_loop(srv.target, setup.workload, concurrency=args.concurrency, duration=args.duration,
                               count=args.count, channels=args.channels)
            name = f"closed loop, {args.concurrency} callers"
        tally, resources = await measured(srv, coro)
        summary = {**summarize(tally, name), **resources, "preload_entries": len(setup.workload.stored),
                   "preload_stores_per_second": setup.preload_rate, "server_settings": srv.settings}
    headers, rows = ops_table(summary)
    print(f"\n{name}, mix {args.mix}, {len(setup.workload.stored)} entries preloaded, {summary['seconds']} s")
    print(text_table(headers, rows))
    print(f"server: {resources}")
    summary["markdown"] = markdown_table(headers, rows)
    return summary


async def saturation_search(args: argparse.Namespace, srv: Server, workload: Workload) -> tuple[float | None,
                                                                                           list[dict[str, Any]]]:
    """Open loop at rising rates (x --growth) until p99 passes the budget, then one bisection step."""

    async def step(rate: float) -> dict[str, Any]:
        tally, resources = await measured(srv, open_loop(srv.target, workload, rates=[(rate, args.step_seconds)],
                                                         count=args.count, channels=args.channels))
        s = summarize(tally, f"open loop {rate:.0f}/s")
        ok = (s["p99_ms"] is not None and s["p99_ms"] <= args.p99_budget_ms and not s["errors"]
              and not s["client_dropped"] and s["throughput_per_second"] >= 0.95 * rate)
        p99 = "-" if s["p99_ms"] is None else f"{s['p99_ms']:.1f}"
        p50 = "-" if s["p50_ms"] is None else f"{s['p50_ms']:.1f}"
        print(f"rate {rate:7.1f}/s: achieved {s['throughput_per_second']}/s, p50 {p50} ms, p99 {p99} ms, "
              f"errors {s['errors'] or '-'}, server cpu {resources.get('server_cpu_cores')} cores "
              f"-> {'ok' if ok else 'over budget'}", flush=True)
        return {"rate": rate, "within_budget": ok, **s, **resources}

    steps: list[dict[str, Any]] = []
    rate = args.start_rate
    best: float | None = None
    for _ in range(args.max_steps):  # bounded
        steps.append(await step(rate))
        if not steps[-1]["within_budget"]:
            break
        best = rate
        rate *= args.growth
    if best is not None and not steps[-1]["within_budget"]:
        mid = round((best + steps[-1]["rate"]) / 2, 1)
        steps.append(await step(mid))
        if steps[-1]["within_budget"]:
            best = mid
    return best, steps


async def cmd_saturate(args: argparse.Namespace) -> dict[str, Any]:
    with server(args) as srv:
        setup = await prepare(args, srv)
        await wait_idle(srv)
        best, steps = await saturation_search(args, srv, setup.workload)
    print(f"\nsaturation: highest rate with p99 <= {args.p99_budget_ms} ms and no errors: {best} calls/s "
          f"(mix {args.mix}, {len(setup.workload.stored)} entries)")
    headers = ["rate/s", "achieved/s", "p50 ms", "p99 ms", "errors", "server cores", "within budget"]
    table = [[st["rate"], st["throughput_per_second"], _f(st["p50_ms"]), _f(st["p99_ms"]), st["errors"] or "-",
              st.get("server_cpu_cores", "-"), st["within_budget"]] for st in steps]
    return {"p99_budget_ms": args.p99_budget_ms, "saturation_rate": best, "entries": len(setup.workload.stored),
            "mix": args.mix, "steps": steps, "server_settings": srv.settings,
            "preload_stores_per_second": setup.preload_rate, "markdown": markdown_table(headers, table)}


async def cmd_peak(args: argparse.Namespace) -> dict[str, Any]:
    peak = args.peak_rate
    phases = [(peak, args.phase_seconds), (2 * peak, args.phase_seconds), (3 * peak, args.phase_seconds),
              (peak, args.phase_seconds)]
    with server(args, max_queue=args.max_queue) as srv:
        setup = await prepare(args, srv)
        await wait_idle(srv)
        tally, resources = await measured(srv, open_loop(srv.target, setup.workload, rates=phases,
                                                         count=args.count, channels=args.channels))
    per_phase = []
    start = 0.0
    for rate, seconds in phases:
        rows = [t for t in tally.timeline if start <= t[0] < start + seconds]
        ok = [ms for _, ms, code in rows if code == "OK"]
        codes = Counter(code for _, _, code in rows if code != "OK")
        per_phase.append({"rate": rate, "sent": len(rows), "ok": len(ok), "ok_per_second": round(len(ok) / seconds, 1),
                          "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
                          "max_ms": max(ok) if ok else None, "errors": dict(codes)})
        start += seconds
    overload = per_phase[2]
    all_ms = [ms for _, ms, _ in tally.timeline]
    bounded = bool(all_ms) and max(all_ms) < CALL_TIMEOUT * 1000 and not tally.dropped
    recovered = per_phase[3]["p99_ms"] is not None and per_phase[0]["p99_ms"] is not None and \
        per_phase[3]["p99_ms"] <= max(3 * per_phase[0]["p99_ms"], args.p99_budget_ms)
    shed = overload["errors"].get("RESOURCE_EXHAUSTED", 0)
    print(f"\npeak {peak}/s, ramp to 3x, server max_queue {args.max_queue}")
    headers = ["phase rate/s", "sent", "ok", "ok/s", "p50 ms", "p99 ms", "max ms", "errors"]
    table = [[f"{p['rate']:.1f}", p["sent"], p["ok"], p["ok_per_second"], _f(p["p50_ms"]), _f(p["p99_ms"]),
              _f(p["max_ms"]), p["errors"] or "-"] for p in per_phase]
    print(text_table(headers, table))
    print(f"every answer (ok or error) within {CALL_TIMEOUT:.0f} s and no client drops: {bounded}; "
          f"RESOURCE_EXHAUSTED at 3x: {shed}; back to normal at 1x after: {recovered}; server {resources}")
    return {"peak_rate": peak, "max_queue": args.max_queue, "phases": per_phase, "latency_bounded": bounded,
            "shed_resource_exhausted_at_3x": shed, "recovered": recovered, "client_dropped": tally.dropped,
            "summary": summarize(tally, "ramp"), **resources, "server_settings": srv.settings,
            "markdown": markdown_table(headers, table)}


async def _recovery_probes(target: str, *, start_at: float, seconds: float, interval: float,
                           timeout: float) -> list[tuple[float, float, bool]]:
    """From `start_at` (perf_counter) on, one fresh lookup (it needs the model) every `interval` seconds, each
    waiting for the last: (seconds after start_at it was due, ms from due to answer, answered OK)."""
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    results: list[tuple[float, float, bool]] = []
    async with clients(target, 1) as (client,):
        for i in range(int(seconds / interval)):
            due = start_at + i * interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            ok = True
            try:
                await client.lookup(f"Is the cache back to normal yet? (probe {i} {random.random()})", scope=SCOPE,
                                    timeout=timeout)
            except CacheClientError:
                ok = False
            results.append((due - start_at, (time.perf_counter() - due) * 1000, ok))
    return results


SERVER_SHARE_BOUNDS = (0.05, 0.1, 0.125, 0.2)  # seconds; 0.125: the overload bound with the defaults here


async def _server_lookup_shares(srv: Server, bounds: tuple[float, ...]) -> dict[str, float] | None:
    """Shares of the server's OK lookups it answered within each bound (seconds), from its own
    `cachesvc_request_seconds` histogram: read when the started server has --metrics-port (a port, not -1). The
    bounds should be bucket bounds; one the server has no bucket for (older code) is left out. Recovery probes
    answered before the scrape are counted too (a few at most)."""
    port = srv.settings.get("metrics-port", "-1")
    if srv.pid is None or int(port) <= 0:
        return None
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "cachesvc_request_seconds_bucket" and sample.labels.get("method") == "Lookup"
                    and sample.labels.get("code") == "OK"):
                buckets[float(sample.labels["le"])] = sample.value
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    return {f"{bound * 1000:g}ms": buckets[bound] / total for bound in bounds if bound in buckets}


async def _rss_sampler(pid: int, samples: list[tuple[float, int]], interval: float = 0.5) -> None:
    started = time.monotonic()
    while True:
        samples.append((time.monotonic() - started, proc_sample(pid).rss_bytes))
        await asyncio.sleep(interval)


async def cmd_overload(args: argparse.Namespace) -> dict[str, Any]:
    """Open loop at --factor x --saturated-rate for --duration seconds, every call with a --deadline-ms deadline,
    then probes: goodput, accepted latency, RSS over the run, and how soon after the load a lookup is normal."""
    rate = args.factor * args.saturated_rate
    deadline = args.deadline_ms / 1000
    with server(args) as srv:
        setup = await prepare(args, srv)
        await wait_idle(srv)
        rss: list[tuple[float, int]] = []
        sampler = asyncio.get_running_loop().create_task(_rss_sampler(srv.pid, rss)) if srv.pid else None
        start = time.perf_counter()
        probes = asyncio.get_running_loop().create_task(_recovery_probes(
            srv.target, start_at=start + args.duration, seconds=3.0, interval=0.05, timeout=deadline))
        tally, resources = await measured(srv, open_loop(srv.target, setup.workload,
                                                         rates=[(rate, args.duration)], count=args.count,
                                                         channels=args.channels, timeout=deadline))
        server_shares = await _server_lookup_shares(srv, SERVER_SHARE_BOUNDS)
        probe_results = await probes
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    ok = [ms for _, ms, code in tally.timeline if code == "OK"]
    codes = Counter(code for _, _, code in tally.timeline)
    goodput = len(ok) / args.duration
    per_second = Counter(int(t) for t, _, code in tally.timeline if code == "OK")
    normal = [t for t, ms, good in probe_results if good and ms <= args.normal_ms]
    # recovered: from the first probe after which every probe was normal
    recovered_after = None
    for i, (t, _ms, _good) in enumerate(probe_results):
        if all(good and ms <= args.normal_ms for _t, ms, good in probe_results[i:]):
            recovered_after = t
            break
    rss_mb = [b / 2**20 for _, b in rss]
    # An accepted lookup's latency is its wait for the model, its own model run, and the rest (gRPC, search,
    # the client): what is left once its own run is taken out is what the queueing budget is there to bound.
    queued = [q for _, q, _ in tally.embedded]
    own_run = [run for _, _, run in tally.embedded]
    beyond_run = [ms - run for ms, _, run in tally.embedded]
    result = {
        "saturated_rate": args.saturated_rate, "offered_rate": rate, "seconds": args.duration,
        "deadline_ms": args.deadline_ms, "sent": tally.sent, "client_dropped": tally.dropped,
        "codes": dict(codes), "goodput_per_second": round(goodput, 1),
        "goodput_of_saturated": round(goodput / args.saturated_rate, 3),
        "ok_per_second_min": min(per_second.get(s, 0) for s in range(int(args.duration))),
        "ok_per_second_max": max(per_second.get(s, 0) for s in range(int(args.duration))),
        "accepted_p50_ms": percentile(ok, 50), "accepted_p99_ms": percentile(ok, 99),
        "accepted_max_ms": max(ok) if ok else None,
        "rss_mb_first": rss_mb[0] if rss_mb else None, "rss_mb_max": max(rss_mb) if rss_mb else None,
        "rss_mb_last": rss_mb[-1] if rss_mb else None,
        "rss_mb_every_5s": [round(mb, 1) for (t, _b), mb in zip(rss, rss_mb, strict=True) if t % 5 < 0.5],
        "recovery_probes": len(probe_results), "recovery_probes_normal": len(normal),
        "recovered_after_seconds": recovered_after, "normal_ms": args.normal_ms,
        "server_ok_lookups_within": server_shares,
        "embedded_lookups": len(tally.embedded),
        "queued_p50_ms": percentile(queued, 50), "queued_p99_ms": percentile(queued, 99),
        "queued_max_ms": max(queued, default=None),
        "own_run_p50_ms": percentile(own_run, 50), "own_run_p99_ms": percentile(own_run, 99),
        "own_run_max_ms": max(own_run, default=None),
        "beyond_own_run_p50_ms": percentile(beyond_run, 50), "beyond_own_run_p99_ms": percentile(beyond_run, 99),
        "beyond_own_run_max_ms": max(beyond_run, default=None),
        **resources, "server_settings": srv.settings, "mix": args.mix,
    }
    headers = ["offered/s", "goodput/s", "of saturated", "ok/s min..max", "accepted p50 ms", "p99 ms", "max ms",
               f"server <= {'/'.join(f'{b * 1000:g}' for b in SERVER_SHARE_BOUNDS)} ms",
               "queued p99/max ms", "own run p50/p99/max ms", "beyond own run p99/max ms", "answers",
               "RSS MB first/max/last", "normal again after"]
    table = [[f"{rate:.0f}", result["goodput_per_second"], result["goodput_of_saturated"],
              f"{result['ok_per_second_min']}..{result['ok_per_second_max']}", _f(result["accepted_p50_ms"]),
              _f(result["accepted_p99_ms"]), _f(result["accepted_max_ms"]),
              "-" if server_shares is None else " / ".join(
                  f"{server_shares[k]:.1%}" if (k := f"{b * 1000:g}ms") in server_shares else "-"
                  for b in SERVER_SHARE_BOUNDS),
              "/".join(_f(result[k]) for k in ("queued_p99_ms", "queued_max_ms")),
              "/".join(_f(result[k]) for k in ("own_run_p50_ms", "own_run_p99_ms", "own_run_max_ms")),
              "/".join(_f(result[k]) for k in ("beyond_own_run_p99_ms", "beyond_own_run_max_ms")),
              dict(codes),
              "/".join(_f(x) for x in (result["rss_mb_first"], result["rss_mb_max"], result["rss_mb_last"])),
              "-" if recovered_after is None else f"{recovered_after:.2f} s"]]
    print(f"\noverload: {args.factor}x {args.saturated_rate}/s for {args.duration} s, {args.deadline_ms} ms "
          f"deadlines, mix {args.mix}")
    print(text_table(headers, table))
    result["markdown"] = markdown_table(headers, table)
    return result


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


async def timed_calls(client: AsyncCacheClient, prompts: list[str]) -> list[float]:
    out: list[float] = []
    for p in prompts:
        t = time.perf_counter()
        await client.lookup(p, scope=SCOPE)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def cmd_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Cache-service figures: exact hit p50, semantic lookup p50 at --entries vs the embedder alone, memory per entry;
    with --saturate, also the saturation search on the filled server.

    With --real N (< --entries), only N entries are stored through gRPC; the server is stopped, its data directory
    grown to --entries with filler (bench/filler.py), and the figures are taken on a restart over it."""
    from cachesvc.embedding.onnx_embedder import OnnxEmbedder

    # The embedder alone, in this process, one intra-op thread (as each of the server's model workers).
    embedder = OnnxEmbedder(model_dir=args.model_dir, intra_op_threads=1)
    result: dict[str, Any] = {"entries_target": args.entries}
    real = args.real or args.entries
    fill = [synthetic_prompt(i) for i in range(real)]
    with tempfile.TemporaryDirectory(prefix="cachesvc-figures-") as data_dir:
        with server(args, data_dir=data_dir) as srv:
            assert srv.pid is not None, "figures needs the tool's own server (no --target): it reads /proc"
            async with AsyncCacheClient(srv.target, timeout=CALL_TIMEOUT) as client:
                await timed_calls(client, [f"warm-up prompt {i}" for i in range(20)])  # lazy set-up, empty scope
            base = proc_sample(srv.pid)
            started = time.perf_counter()
            rate = await preload(srv.target, fill, concurrency=args.preload_concurrency,
                                 progress=not args.no_progress)
            result["fill_seconds"] = round(time.perf_counter() - started, 1)
            result["fill_stores_per_second"] = round(rate, 1)
            if real == args.entries:
                await _figures_on(args, srv, fill, embedder, result, base)
                return _print_figures(args, result, srv)
        from filler import extend

        result["filler"] = extend(Path(data_dir), total=args.entries, prompt=synthetic_prompt, completion=COMPLETION,
                                  seed=args.seed)
        started = time.perf_counter()
        with server(args, data_dir=data_dir) as srv:
            result["restart_seconds"] = round(time.perf_counter() - started, 1)
            await _figures_on(args, srv, fill, embedder, result, None)
            return _print_figures(args, result, srv)


async def _figures_on(args: argparse.Namespace, srv: Server, fill: list[str], embedder: Any, result: dict[str, Any],
                      base: ProcSample | None) -> None:
    """Takes the figures on a filled server; `fill` are the prompts stored through it (the probes' targets)."""
    assert srv.pid is not None
    probes = [synthetic_prompt(10_000_000 + i) for i in range(args.probes)]  # never stored: misses of a kind
    result["idle_wait_seconds"] = round(await wait_idle(srv, timeout=1800.0), 1)  # e.g. an HNSW build
    loaded = proc_sample(srv.pid)
    index = await stats(srv.target)
    entries = index["entries"]
    result["memory"] = {"rss_after_mb": round(loaded.rss_bytes / 2**20, 1), "entries": entries,
                        "server_bytes_stat": index["bytes"]}
    if base is not None:
        text_bytes = sum(len(p.encode()) + len(COMPLETION.encode()) for p in fill) / len(fill)
        per_entry = (loaded.rss_bytes - base.rss_bytes) / entries
        result["memory"].update({
            "rss_before_mb": round(base.rss_bytes / 2**20, 1), "rss_per_entry_bytes": round(per_entry),
            "vector_bytes": 1536, "text_bytes_mean": round(text_bytes),
            "overhead_per_entry_bytes": round(per_entry - 1536 - text_bytes),
        })
    # One call at a time, the kinds interleaved so that background noise falls on all of them alike:
    # exact hit (stored prompt verbatim), semantic lookup (unseen prompt: embedding + search, a miss),
    # semantic hit (stored prompt + suffix), and the embedder alone on the same unseen prompt.
    rng = random.Random(1)
    times: dict[str, list[float]] = defaultdict(list)
    for p in probes[:10]:
        embedder.embed([p])
    async with AsyncCacheClient(srv.target, timeout=CALL_TIMEOUT) as client:
        await timed_calls(client, probes[:5])
        for p in probes[5:]:
            stored = fill[rng.randrange(len(fill))]
            times["exact_hit_grpc"] += await timed_calls(client, [stored])
            times["semantic_lookup_grpc"] += await timed_calls(client, [p])
            times["semantic_hit_grpc"] += await timed_calls(client, [f"{stored} Thanks."])
            t = time.perf_counter()
            embedder.embed([p])
            times["embedder_alone"].append((time.perf_counter() - t) * 1000)
    if args.saturate:
        prompts = load_prompts(args.prompts, args.max_chars)
        random.Random(args.seed).shuffle(prompts)
        workload = Workload(stored=fill, fresh=prompts, mix=parse_mix(args.mix), rng=random.Random(args.seed))
        best, steps = await saturation_search(args, srv, workload)
        result["saturation"] = {"p99_budget_ms": args.p99_budget_ms, "rate": best, "mix": args.mix, "steps": steps}
    result["latency_ms"] = {k: {"p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99)}
                            for k, v in times.items()}


def _print_figures(args: argparse.Namespace, result: dict[str, Any], srv: Server) -> dict[str, Any]:
    p50 = {k: v["p50"] for k, v in result["latency_ms"].items()}
    result["semantic_over_embed"] = round(p50["semantic_lookup_grpc"] / p50["embedder_alone"], 2)
    m = result["memory"]
    entries = m["entries"]
    how = (f"filled at {result['fill_stores_per_second']} stores/s" if "filler" not in result else
           f"{result['filler']['real_entries']} stored through gRPC, the rest filler; restart "
           f"{result['restart_seconds']} s")
    print(f"\n{entries} entries in one scope ({how}, then {result['idle_wait_seconds']} s until the server was "
          "idle)")
    print(f"exact hit over gRPC p50 {p50['exact_hit_grpc']:.2f} ms (target < 1 ms)")
    print(f"semantic lookup over gRPC p50 {p50['semantic_lookup_grpc']:.2f} ms vs embedder alone "
          f"{p50['embedder_alone']:.2f} ms: {result['semantic_over_embed']}x (target within 1.3x); "
          f"semantic hit p50 {p50['semantic_hit_grpc']:.2f} ms")
    if "rss_per_entry_bytes" in m:
        print(f"memory: RSS {m['rss_before_mb']} -> {m['rss_after_mb']} MB, {m['rss_per_entry_bytes']} B per entry, "
              f"{m['overhead_per_entry_bytes']} B beyond vector (1536 B) and text ({m['text_bytes_mean']} B) "
              f"(target < 2048 B)")
    else:
        print(f"memory: RSS {m['rss_after_mb']} MB")
    if args.saturate:
        print(f"saturation at {entries} entries (mix {args.mix}): {result['saturation']['rate']} calls/s with p99 <= "
              f"{args.p99_budget_ms} ms")
    result["server_settings"] = srv.settings
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=None, help="127.0.0.1:PORT of a running server (default: start one)")
    common.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    common.add_argument("--server-arg", action="append", default=[],
                        help="extra `cachesvc serve` flag for the started server, e.g. max-batch-size=16")
    common.add_argument("--server-log-level", default="INFO", help="the started server's log level")
    common.add_argument("--server-cpus", type=lambda text: {int(c) for c in text.split(",")}, default=None,
                        help="cores for the started server, e.g. 1; this tool then runs on the others, so that the "
                             "load generator does not slow the server it measures (give the server "
                             "--server-arg=embed-workers=N to match)")
    common.add_argument("--server-source", type=Path, default=REPO_ROOT,
                        help="run the started server from the cachesvc package in this directory (e.g. an unpacked "
                             "`git archive` of another commit, for A/B runs)")
    common.add_argument("--prompts", type=Path, default=DATA_DIR / "sharegpt_first_prompts.jsonl")
    common.add_argument("--max-chars", type=int, default=2000, help="cut prompts to this many characters")
    common.add_argument("--preload", type=int, default=1000, help="entries stored before the run")
    common.add_argument("--preload-concurrency", type=int, default=16)
    common.add_argument("--mix", default="exact=0.3,hit=0.2,miss=0.4,store=0.1", help="operation weights")
    common.add_argument("--channels", type=int, default=4, help="client channels (connections)")
    common.add_argument("--count", type=int, default=100_000, help="most calls per run")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--out", type=Path, default=None, help="JSON output (default bench/out/load-<cmd>.json)")
    common.add_argument("--no-progress", action="store_true")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="one closed- or open-loop run")
    run.add_argument("--concurrency", type=int, default=16)
    run.add_argument("--rate", type=float, default=0.0, help="open loop at this rate (0 = closed loop)")
    run.add_argument("--duration", type=float, default=30.0)
    search = argparse.ArgumentParser(add_help=False)
    search.add_argument("--p99-budget-ms", type=float, default=50.0)
    search.add_argument("--start-rate", type=float, default=25.0)
    search.add_argument("--growth", type=float, default=1.5)
    search.add_argument("--step-seconds", type=float, default=15.0)
    search.add_argument("--max-steps", type=int, default=12)
    sub.add_parser("saturate", parents=[common, search], help="highest open-loop rate with p99 under a budget")
    peak = sub.add_parser("peak", parents=[common], help="ramp to 3x a peak rate against a small queue")
    peak.add_argument("--peak-rate", type=float, required=True)
    peak.add_argument("--max-queue", type=int, default=32)
    peak.add_argument("--phase-seconds", type=float, default=15.0)
    peak.add_argument("--p99-budget-ms", type=float, default=50.0, help="for judging recovery after the ramp")
    over = sub.add_parser("overload", parents=[common],
                          help="open loop at a multiple of the saturated rate with short client deadlines")
    over.add_argument("--saturated-rate", type=float, required=True, help="from `saturate` with the same mix")
    over.add_argument("--factor", type=float, default=3.0)
    over.add_argument("--duration", type=float, default=20.0)
    over.add_argument("--deadline-ms", type=float, default=1000.0, help="every call's gRPC deadline")
    over.add_argument("--normal-ms", type=float, default=100.0,
                      help="a recovery probe answered within this is normal again")
    fig = sub.add_parser("figures", parents=[common, search], help="cache-service figures at --entries entries")
    fig.add_argument("--entries", type=int, default=100_000)
    fig.add_argument("--real", type=int, default=0,
                     help="store only this many through gRPC and grow the data directory to --entries with filler")
    fig.add_argument("--probes", type=int, default=200)
    fig.add_argument("--saturate", action="store_true", help="then run the saturation search on that server")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = args.server_cpus
    if cpus is not None:
        if not cpus < os.sched_getaffinity(0):
            raise SystemExit(f"--server-cpus {sorted(cpus)} must leave this tool at least one of "
                             f"{sorted(os.sched_getaffinity(0))}")
        os.sched_setaffinity(0, os.sched_getaffinity(0) - cpus)
    handler = {"run": cmd_run, "saturate": cmd_saturate, "peak": cmd_peak, "figures": cmd_figures,
               "overload": cmd_overload}[args.command]
    result = asyncio.run(handler(args))
    out = args.out or OUT_DIR / f"load-{args.command}.json"
    write_json(out, round_floats({"date": utc_now(), "command": command_line(), "machine": machine(), **result}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
