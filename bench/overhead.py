"""What a lookup costs beyond its embedding, measured from outside through the real gRPC server.

    .venv/bin/python bench/overhead.py --entries 10000 100000

For each size: a server (`python -m cachesvc serve`, built-in settings, its own temporary data directory, metrics
off) stores the unique ShareGPT first prompts (cut to --max-chars) through gRPC; a size larger than that is grown
with `bench/filler.py` (vectors mixed from the stored ones plus noise, same scope) and the server restarted on it.
Once the server is idle (no index build running), one call at a time, alternated so that the box's background
noise falls on every kind alike, --probes rounds of:

    lookup   an unseen short prompt (a QQP question, ~11 tokens; never stored, never looked up before)
    embed    the same prompt through a plain onnxruntime session on the same model file in this process
             (tokenize, run, mean-pool, normalise; one intra-op thread, as each of the server's model workers)
    exact    a stored prompt verbatim (the exact path: no embedding)
    health   a bare gRPC health check on the same channel

Each of these gRPC calls is made after --gap-ms of idleness, so that every kind meets the server in the same state
(on this VM a call right behind another costs ~0.3-0.6 ms less; without the gap the exact hit, which followed the
embedding, paid that and the health check right behind it did not).

Then the server CPU time per call of each kind in short runs of one kind (from /proc/<pid>/stat: robust to the
box's load, unlike wall time), and the throughput with --callers concurrent callers on unseen prompts against the
2-core ceiling: cores / the per-item time of --ceiling-batches 32-prompt batches of the same kind of prompts
through the plain session. With --baseline-tree, a second server from another source tree (an earlier commit)
runs on its own copy of the data and every probe, CPU run and throughput window alternates between the two:
before and after in one run. Prints a table and writes
JSON to --out. Runs are bounded (--probes, --throughput-seconds); the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from common import (
    DATA_DIR,
    DEFAULT_MODEL_DIR,
    OUT_DIR,
    command_line,
    machine,
    markdown_table,
    percentile,
    utc_now,
    write_json,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from load import COMPLETION, SCOPE, free_port, preload, proc_sample, server, wait_serving
from tokenizers import Tokenizer

from cachesvc_client.v1 import cache_pb2 as pb
from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

WIRE_SCOPE = pb.Scope(namespace=SCOPE.namespace, model=SCOPE.model, context=SCOPE.context)


class PlainSession:
    """The embedding with nothing around it: tokenizer + onnxruntime + mean pooling, as the model card does it."""

    def __init__(self, model_dir: Path, *, threads: int = 1) -> None:
        manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(manifest.get("max_seq_length", 256)))
        self.tokenizer.enable_padding()  # to the batch's longest
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (out,) = self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})
        if out.ndim == 3:  # token embeddings: mean-pool over the real tokens
            w = mask[:, :, None].astype(np.float32)
            out = (out * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), dtype=np.float32)


def sharegpt_prompts(path: Path, max_chars: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = " ".join(str(json.loads(line).get("text", "")).split())[:max_chars].strip()
            if text and text not in seen:
                seen.add(text)
                out.append(text)
    random.Random(0).shuffle(out)
    return out


def short_questions(path: Path, exclude: set[str], limit: int, seed: int, max_chars: int = 60) -> list[str]:
    """Unseen short prompts: distinct QQP questions (both sides of each pair) of at most `max_chars`, shuffled."""
    seen: set[str] = set()
    out: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for text in (row.get("a"), row.get("b")):
                text = " ".join(str(text or "").split())
                if text and text not in seen and text not in exclude and len(text) <= max_chars:
                    seen.add(text)
                    out.append(text)
    random.Random(seed).shuffle(out)
    return out[:limit]


def cpu_per_call(pid: int, calls: int, fn: Any) -> float:
    """Server CPU milliseconds per call over `calls` calls of `fn` (one kind, back to back)."""
    before = proc_sample(pid)
    for i in range(calls):
        fn(i)
    after = proc_sample(pid)
    return (after.cpu_seconds - before.cpu_seconds) * 1000 / calls


async def closed_loop_lookups(target: str, prompts: list[str], *, callers: int, seconds: float) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [pb_grpc.SemanticCacheStub(c) for c in channels]
    queue = iter(prompts)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal errors
        stub = stubs[i % len(stubs)]
        for prompt in queue:
            if time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            try:
                await stub.Lookup(pb.LookupRequest(scope=WIRE_SCOPE, prompt=prompt), timeout=10.0)
                latencies.append((time.perf_counter() - t) * 1000)
            except grpc.aio.AioRpcError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    wall = time.perf_counter() - started
    for c in channels:
        await c.close()
    return {"lookups": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "per_second": len(latencies) / wall, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99)}


def fill_server(args: argparse.Namespace, data_dir: str, stored: list[str]) -> dict[str, Any]:
    """Stores `stored` through a server on `data_dir`, then stops it (clean shutdown: a snapshot)."""
    with server(args, data_dir=data_dir) as srv:
        started = time.perf_counter()
        rate = asyncio.run(preload(srv.target, stored, concurrency=16, progress=not args.no_progress))
        return {"stored_through_grpc": len(stored), "store_seconds": round(time.perf_counter() - started, 1),
                "stores_per_second": round(rate, 1)}


@contextlib.contextmanager
def baseline_server(args: argparse.Namespace, data_dir: str) -> Iterator[tuple[str, int]]:
    """The same server from another source tree (--baseline-tree: e.g. `git archive <commit>` unpacked)."""
    tree = args.baseline_tree.resolve()
    port = free_port()
    argv = [sys.executable, "-m", "cachesvc", "serve", "--host=127.0.0.1", f"--port={port}", "--metrics-port=-1",
            f"--data-dir={data_dir}", f"--model-dir={args.model_dir.resolve()}", f"--log-level={args.server_log_level}"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with (Path(data_dir) / "server.log").open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=env)
        try:
            wait_serving(f"127.0.0.1:{port}", timeout=900)
            yield f"127.0.0.1:{port}", process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextlib.contextmanager
def floor_server(args: argparse.Namespace, stored_file: Path, embed_on: str) -> Iterator[tuple[str, int]]:
    """`bench/grpc_floor.py`: a grpc.aio server with nothing but the embedding in it, for the floor figures."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).with_name("grpc_floor.py")), f"--port={port}",
            f"--stored={stored_file}", f"--embed-on={embed_on}", f"--model-dir={args.model_dir.resolve()}"]
    process = subprocess.Popen(argv)
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=120)
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(args: argparse.Namespace, sizes: list[int], base_dir: Path, stored: list[str], plain: PlainSession,
            questions: list[str]) -> dict[str, Any]:
    """Figures on a copy of `base_dir` (the prompts stored through gRPC) grown to each of `sizes` with filler, one
    server per size, probed alternately (one size, unless --side-by-side); with --baseline-tree, a second server
    from that tree on its own copy, probed alternately with this one."""
    from filler import extend
    from load import synthetic_prompt

    entries = max(sizes)
    result: dict[str, Any] = {"entries": entries, "load_before": os.getloadavg(), "filler": {},
                              "restart_to_serving_seconds": {}}
    with tempfile.TemporaryDirectory(prefix="cachesvc-overhead-") as scratch, contextlib.ExitStack() as stack:
        servers: dict[str, tuple[str, int]] = {}
        server_entries: dict[str, int] = {}
        for size in sizes:
            data_dir = Path(scratch) / f"data-{size}"
            shutil.copytree(base_dir, data_dir, ignore=shutil.ignore_patterns("LOCK", "overhead-fill.json", "*.log"))
            if size > len(stored):
                result["filler"][size] = extend(data_dir, total=size, prompt=synthetic_prompt,
                                                completion=COMPLETION, seed=0)
            if args.baseline_tree is not None:
                shutil.copytree(data_dir, Path(scratch) / "baseline")
                servers["baseline"] = stack.enter_context(baseline_server(args, str(Path(scratch) / "baseline")))
                server_entries["baseline"] = size
            started = time.perf_counter()
            srv = stack.enter_context(server(args, data_dir=str(data_dir)))
            assert srv.pid is not None
            result["restart_to_serving_seconds"][size] = round(time.perf_counter() - started, 1)
            name = "current" if len(sizes) == 1 else f"{size:,} entries"
            servers[name] = (srv.target, srv.pid)
            server_entries[name] = size
        if args.floor:
            stored_file = Path(scratch) / "stored.txt"
            stored_file.write_text("\n".join(stored), encoding="utf-8")
            for embed_on in ("thread", "loop"):
                servers[f"floor, model on {embed_on}"] = stack.enter_context(floor_server(args, stored_file, embed_on))
        result["idle_wait_seconds"] = round(sum(settle(t, pid, server_entries.get(n, 0))
                                                for n, (t, pid) in servers.items()), 1)
        result.update(probe(args, servers, plain, stored, questions))
    result["load_after"] = os.getloadavg()
    return result


def settle(target: str, pid: int, entries: int) -> float:
    """Waits (bounded) until no index build runs: three quiet seconds in a row (under 0.1 cores), and past the
    HNSW threshold a search that is no longer the flat scan. On a loaded box a starved build can look quiet for a
    second, so one quiet second is not enough. Returns the seconds waited."""
    started = time.monotonic()
    timeout = max(1800.0, entries * 0.004)  # the HNSW build of 1M entries took ~2,000 s on a busy box
    with grpc.insecure_channel(target) as channel:
        cache = pb_grpc.SemanticCacheStub(channel)
        quiet = 0
        while time.monotonic() - started < timeout:
            before = proc_sample(pid)
            time.sleep(1.0)
            after = proc_sample(pid)
            quiet = quiet + 1 if (after.cpu_seconds - before.cpu_seconds) / (after.wall - before.wall) < 0.1 else 0
            if quiet < 3:
                continue
            searches = [cache.Lookup(pb.LookupRequest(scope=WIRE_SCOPE, prompt=f"settle probe {i} {time.time()}"),
                                     timeout=30.0).timings.search_ms for i in range(5)]
            if entries < 20_000 or statistics.median(searches) < 0.02 * entries / 1000 + 3:
                break
            quiet = 0
    return time.monotonic() - started


def probe(args: argparse.Namespace, servers: dict[str, tuple[str, int]], plain: PlainSession, stored: list[str],
          questions: list[str]) -> dict[str, Any]:
    """The figures of each server; with two, every kind of call alternates between them (order swapped each
    round), so the box's noise falls on both alike."""
    rng = random.Random(1)
    unseen = iter(questions)
    names = list(servers)
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in ("lookup", "exact", "health")} for n in names}
    reported: dict[str, dict[str, list[float]]] = {n: {k: [] for k in ("embed_ms", "search_ms", "total_ms")}
                                                   for n in names}
    embeds: list[float] = []
    embed_cpu: list[float] = []
    channels = {n: grpc.insecure_channel(target) for n, (target, _pid) in servers.items()}
    caches = {n: pb_grpc.SemanticCacheStub(c) for n, c in channels.items()}
    healths = {n: health_pb2_grpc.HealthStub(c) for n, c in channels.items()}
    check = health_pb2.HealthCheckRequest(service="")

    def lookup(name: str, prompt: str) -> pb.LookupResponse:
        return caches[name].Lookup(pb.LookupRequest(scope=WIRE_SCOPE, prompt=prompt), timeout=10.0)

    def timed(name: str, kind: str, call: Any) -> Any:
        # Every call starts from an idle server: on this VM a call right behind another finds the server's threads
        # still awake and costs ~0.3-0.6 ms less, so back-to-back kinds would not be measured alike.
        time.sleep(args.gap_ms / 1000)
        t = time.perf_counter()
        reply = call()
        times[name][kind].append((time.perf_counter() - t) * 1000)
        return reply

    for n in names:
        for _ in range(10):  # warm-up: channel, lazy set-up, caches
            lookup(n, next(unseen))
            healths[n].Check(check, timeout=10.0)
    for _ in range(10):
        plain.embed([stored[0]])
    for i in range(args.probes):
        order = names if i % 2 == 0 else names[::-1]
        prompt = next(unseen)  # unseen by every server: each has its own vector memo
        for n in order:
            reply = timed(n, "lookup", lambda n=n, p=prompt: lookup(n, p))
            for k in ("embed_ms", "search_ms", "total_ms"):
                reported[n][k].append(getattr(reply.timings, k))
        t, c = time.perf_counter(), time.thread_time()
        plain.embed([prompt])
        embeds.append((time.perf_counter() - t) * 1000)
        embed_cpu.append((time.thread_time() - c) * 1000)
        stored_prompt = stored[rng.randrange(len(stored))]
        for n in order:
            reply = timed(n, "exact", lambda n=n, p=stored_prompt: lookup(n, p))
            assert reply.exact, "a stored prompt must be an exact hit"
        for n in order:
            timed(n, "health", lambda n=n: healths[n].Check(check, timeout=10.0))
    # Server CPU per call, one kind at a time (CPU time does not grow with the box's load as wall time does).
    cpu: dict[str, dict[str, float]] = {n: {} for n in names}
    calls = args.cpu_calls
    for n in names:
        pid = servers[n][1]
        cpu[n]["health"] = cpu_per_call(pid, calls, lambda i, n=n: healths[n].Check(check, timeout=10.0))
        cpu[n]["exact"] = cpu_per_call(pid, calls, lambda i, n=n: lookup(n, stored[i % len(stored)]))
        cpu[n]["lookup"] = cpu_per_call(pid, calls, lambda i, n=n: lookup(n, next(unseen)))
    for c in channels.values():
        c.close()
    embed_p50 = statistics.median(embeds)
    out: dict[str, Any] = {"embed_p50_ms": embed_p50, "embed_alone_cpu_p50_ms": statistics.median(embed_cpu),
                           "load_at_probes": os.getloadavg(), "servers": {}}
    for n in names:
        p50 = {k: statistics.median(v) for k, v in times[n].items()}
        out["servers"][n] = {
            "p50_ms": p50, "p99_ms": {k: percentile(v, 99) for k, v in times[n].items()},
            "server_reported_p50_ms": {k: statistics.median(v) for k, v in reported[n].items()},
            "server_cpu_ms_per_call": cpu[n],
            "lookup_over_embed": p50["lookup"] / embed_p50, "exact_over_health": p50["exact"] / p50["health"],
        }
    # Throughput: the 2-core ceiling first (servers idle), then --callers closed-loop callers on unseen prompts,
    # in windows that alternate between the servers.
    # The same kind of prompts as the callers send, in several 32-prompt batches: one batch's per-prompt time
    # moves by up to ~40% with the spread of its prompts' lengths (padding), and so did the ceiling between runs.
    batches = [[next(unseen) for _ in range(32)] for _ in range(args.ceiling_batches)]
    plain.embed(batches[0])
    per_item = []
    for _ in range(args.ceiling_repeats):
        t = time.perf_counter()
        for batch in batches:
            plain.embed(batch)
        per_item.append((time.perf_counter() - t) / (32 * len(batches)))
    cores = os.cpu_count() or 2
    ceiling = cores / statistics.median(per_item)
    out["ceiling_per_second"] = ceiling
    out["ceiling_batch32_per_item_ms"] = statistics.median(per_item) * 1000
    windows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for w in range(args.throughput_windows):
        for n in (names if w % 2 == 0 else names[::-1]):
            # Distinct unseen questions, as the ceiling's: no server has embedded any of them.
            flood = [next(unseen) for _ in range(20 * int(args.throughput_seconds) * args.callers)]
            # CPU per call on both sides: the ceiling counts only model runs, but the callers share the 2 cores.
            server_before, client_before = proc_sample(servers[n][1]), time.process_time()
            window = asyncio.run(closed_loop_lookups(servers[n][0], flood, callers=args.callers,
                                                     seconds=args.throughput_seconds))
            calls = max(window["lookups"], 1)  # per answered lookup: shed calls cost CPU too
            window["server_cpu_ms_per_call"] = (proc_sample(servers[n][1]).cpu_seconds
                                                - server_before.cpu_seconds) * 1000 / calls
            window["client_cpu_ms_per_call"] = (time.process_time() - client_before) * 1000 / calls
            windows[n].append(window)
    for n in names:
        done = sum(w["lookups"] for w in windows[n])
        rate = done / sum(w["seconds"] for w in windows[n])
        out["servers"][n]["throughput"] = {"per_second": rate, "windows": windows[n]}
        out["servers"][n]["throughput_over_ceiling"] = rate / ceiling
        out["servers"][n]["throughput_cpu_ms_per_call"] = {
            side: statistics.median(w[f"{side}_cpu_ms_per_call"] for w in windows[n]) for side in ("server", "client")}
    out["load_after_throughput"] = os.getloadavg()
    return out


def report(results: list[dict[str, Any]]) -> str:
    columns = [(r, n) for r in results for n in r["servers"]]
    headers = ["figure", *[n if n.endswith(" entries") else
                           f"{r['entries']:,} entries{'' if len(r['servers']) == 1 else ', ' + n}"
                           for r, n in columns], "target"]

    def row(name: str, fn: Any, target: str = "") -> list[object]:
        return [name, *[fn(r, r["servers"][n]) for r, n in columns], target]

    rows = [
        row("lookup p50 / embed-alone p50",
            lambda r, s: f"{s['p50_ms']['lookup']:.2f} / {r['embed_p50_ms']:.2f} ms = "
                         f"**{s['lookup_over_embed']:.2f}x**", "<= 1.2x"),
        row("server-reported p50: embed / search / total",
            lambda r, s: " / ".join(f"{s['server_reported_p50_ms'][k]:.2f}" for k in ("embed_ms", "search_ms",
                                                                                     "total_ms")) + " ms"),
        row("exact hit p50 / health check p50",
            lambda r, s: f"{s['p50_ms']['exact']:.3f} / {s['p50_ms']['health']:.3f} ms = "
                         f"**{s['exact_over_health']:.2f}x**", "<= 1.2x"),
        row("server CPU per call: health / exact / lookup",
            lambda r, s: " / ".join(f"{s['server_cpu_ms_per_call'][k]:.2f}" for k in ("health", "exact", "lookup"))
            + " ms"),
        row("embed-alone CPU p50 (this process)", lambda r, s: f"{r['embed_alone_cpu_p50_ms']:.2f} ms"),
        row("lookup p99", lambda r, s: f"{s['p99_ms']['lookup']:.2f} ms"),
        row("lookups/s, 16 callers / ceiling",
            lambda r, s: f"{s['throughput']['per_second']:.0f} / {r['ceiling_per_second']:.0f} = "
                         f"**{s['throughput_over_ceiling']:.2f}**", ">= 0.85"),
        row("16 callers: CPU per answered lookup, server / callers",
            lambda r, s: " / ".join(f"{s['throughput_cpu_ms_per_call'][k]:.2f}" for k in ("server", "client"))
            + f" ms (model alone: {r['ceiling_batch32_per_item_ms']:.2f} ms per prompt in 32-prompt batches)"),
        row("load average (1 min) at probes / after throughput",
            lambda r, s: f"{r['load_at_probes'][0]:.2f} / {r['load_after_throughput'][0]:.2f}"),
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--cpu-calls", type=int, default=300, help="calls per kind for the server CPU figures")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--gap-ms", type=float, default=5.0,
                        help="idle time before each timed gRPC probe (0: back to back, the earlier method)")
    parser.add_argument("--throughput-seconds", type=float, default=8.0, help="per window")
    parser.add_argument("--throughput-windows", type=int, default=2, help="per server (alternating with two)")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="also run the server from this source tree (e.g. an unpacked `git archive` of an "
                             "earlier commit) on its own copy of the data, probed alternately: before and after "
                             "in one run")
    parser.add_argument("--side-by-side", action="store_true",
                        help="one server per --entries size, all at once, every probe alternating between them: "
                             "the sizes compared under the same noise (e.g. p99 at 1M against 10k)")
    parser.add_argument("--floor", action="store_true",
                        help="also probe two bench/grpc_floor.py servers (grpc.aio with only the embedding in it: "
                             "the model on a worker thread, and on the event loop), alternately with the others")
    parser.add_argument("--ceiling-batches", type=int, default=8, help="32-prompt batches timed for the ceiling")
    parser.add_argument("--ceiling-repeats", type=int, default=5)
    parser.add_argument("--max-chars", type=int, default=500, help="stored ShareGPT prompts are cut to this")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--prompts", type=Path, default=DATA_DIR / "sharegpt_first_prompts.jsonl")
    parser.add_argument("--questions", type=Path, default=DATA_DIR / "qqp_gptcache_dev.jsonl")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `cachesvc serve` flag for the started server, e.g. hnsw-threshold=20000")
    parser.add_argument("--server-log-level", default="INFO")
    parser.add_argument("--base-dir", type=Path, default=None,
                        help="keep the data directory filled through gRPC here and reuse it on later runs (the "
                             "fill takes minutes; the server's snapshot format must not change in between)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "overhead.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.side_by_side and args.baseline_tree is not None:
        parser.error("--side-by-side and --baseline-tree do not go together (one compares sizes, the other trees)")
    args.target = None  # load.server() starts its own server ...
    args.server_source = None  # ... from this tree
    args.server_cpus = None  # ... on every core
    plain = PlainSession(args.model_dir)
    prompts = sharegpt_prompts(args.prompts, args.max_chars)
    questions = short_questions(args.questions, set(prompts), 60_000, seed=2)
    tokens = [sum(plain.tokenizer.encode(q).attention_mask) for q in questions[:2000]]
    print(f"probes: QQP questions, median {statistics.median(tokens):.0f} tokens (with [CLS]/[SEP]); stored: "
          f"{len(prompts)} unique ShareGPT prompts cut to {args.max_chars} chars, the rest filler", flush=True)
    stored = prompts[:min(args.entries)]
    results = []
    with tempfile.TemporaryDirectory(prefix="cachesvc-overhead-base-") as scratch:
        base = str(args.base_dir or scratch)
        Path(base).mkdir(parents=True, exist_ok=True)
        marker = Path(base) / "overhead-fill.json"
        if args.base_dir is not None and marker.exists():  # a directory filled by an earlier run: reuse it
            fill = json.loads(marker.read_text(encoding="utf-8"))
            assert fill["stored_through_grpc"] == len(stored), f"{base} holds another fill; remove it"
        else:
            print(f"storing {len(stored)} prompts through gRPC (load {os.getloadavg()[0]:.2f})", flush=True)
            fill = fill_server(args, base, stored)
            marker.write_text(json.dumps(fill), encoding="utf-8")
        print(json.dumps(fill), flush=True)
        for sizes in ([args.entries] if args.side_by_side else [[e] for e in args.entries]):
            print(f"== {', '.join(f'{e:,}' for e in sizes)} entries (load {os.getloadavg()[0]:.2f})", flush=True)
            r = measure(args, sizes, Path(base), stored, plain, questions)
            r["fill"] = fill
            results.append(r)
            print(report([r]), flush=True)
    table = report(results)
    print()
    print(table)
    write_json(args.out, {"date": utc_now(), "command": command_line(), "machine": machine(),
                          "probe_tokens_median": statistics.median(tokens), "results": results, "markdown": table})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
