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

Then the server CPU time per call of each kind in short runs of one kind (from /proc/<pid>/stat: robust to the
box's load, unlike wall time), and the throughput with --callers concurrent callers on unseen prompts against the
2-core ceiling: cores / the per-item time of a 32-prompt batch through the plain session. Prints a table and writes
JSON to --out. Runs are bounded (--probes, --throughput-seconds); the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
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
from load import COMPLETION, SCOPE, preload, proc_sample, server
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


def measure(args: argparse.Namespace, entries: int, base_dir: Path, stored: list[str], plain: PlainSession,
            questions: list[str]) -> dict[str, Any]:
    """Figures on a copy of `base_dir` (the prompts stored through gRPC) grown to `entries` with filler."""
    from filler import extend
    from load import synthetic_prompt

    result: dict[str, Any] = {"entries": entries, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="cachesvc-overhead-") as scratch:
        data_dir = Path(scratch) / "data"
        shutil.copytree(base_dir, data_dir, ignore=shutil.ignore_patterns("LOCK", "overhead-fill.json", "*.log"))
        if entries > len(stored):
            result["filler"] = extend(data_dir, total=entries, prompt=synthetic_prompt, completion=COMPLETION,
                                      seed=0)
        started = time.perf_counter()
        with server(args, data_dir=str(data_dir)) as srv:
            assert srv.pid is not None
            result["restart_to_serving_seconds"] = round(time.perf_counter() - started, 1)
            result["idle_wait_seconds"] = round(settle(srv.target, srv.pid, entries), 1)
            result.update(probe(args, srv.target, srv.pid, plain, stored, questions))
    result["load_after"] = os.getloadavg()
    return result


def settle(target: str, pid: int, entries: int, *, timeout: float = 1800.0) -> float:
    """Waits (bounded) until no index build runs: three quiet seconds in a row (under 0.1 cores), and past the
    HNSW threshold a search that is no longer the flat scan. On a loaded box a starved build can look quiet for a
    second, so one quiet second is not enough. Returns the seconds waited."""
    started = time.monotonic()
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


def probe(args: argparse.Namespace, target: str, pid: int, plain: PlainSession, stored: list[str],
          questions: list[str]) -> dict[str, Any]:
    rng = random.Random(1)
    unseen = iter(questions)
    times: dict[str, list[float]] = {k: [] for k in ("lookup", "embed", "exact", "health")}
    reported: dict[str, list[float]] = {k: [] for k in ("embed_ms", "search_ms", "total_ms")}
    embed_cpu: list[float] = []
    with grpc.insecure_channel(target) as channel:
        cache = pb_grpc.SemanticCacheStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")

        def lookup(prompt: str) -> pb.LookupResponse:
            return cache.Lookup(pb.LookupRequest(scope=WIRE_SCOPE, prompt=prompt), timeout=10.0)

        for _ in range(10):  # warm-up: channel, lazy set-up, caches
            lookup(next(unseen))
            plain.embed([stored[0]])
            health.Check(check, timeout=10.0)
        for _ in range(args.probes):
            prompt = next(unseen)
            t = time.perf_counter()
            reply = lookup(prompt)
            times["lookup"].append((time.perf_counter() - t) * 1000)
            reported["embed_ms"].append(reply.timings.embed_ms)
            reported["search_ms"].append(reply.timings.search_ms)
            reported["total_ms"].append(reply.timings.total_ms)
            t, c = time.perf_counter(), time.thread_time()
            plain.embed([prompt])
            times["embed"].append((time.perf_counter() - t) * 1000)
            embed_cpu.append((time.thread_time() - c) * 1000)
            t = time.perf_counter()
            reply = lookup(stored[rng.randrange(len(stored))])
            times["exact"].append((time.perf_counter() - t) * 1000)
            assert reply.exact, "a stored prompt must be an exact hit"
            t = time.perf_counter()
            health.Check(check, timeout=10.0)
            times["health"].append((time.perf_counter() - t) * 1000)
        # Server CPU per call, one kind at a time (CPU time does not grow with the box's load as wall time does).
        n = args.cpu_calls
        cpu = {
            "health": cpu_per_call(pid, n, lambda i: health.Check(check, timeout=10.0)),
            "exact": cpu_per_call(pid, n, lambda i: lookup(stored[i % len(stored)])),
            "lookup": cpu_per_call(pid, n, lambda i: lookup(next(unseen))),
        }
    p50 = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {
        "p50_ms": p50, "p99_ms": {k: percentile(v, 99) for k, v in times.items()},
        "server_reported_p50_ms": {k: statistics.median(v) for k, v in reported.items()},
        "embed_alone_cpu_p50_ms": statistics.median(embed_cpu),
        "server_cpu_ms_per_call": cpu,
        "lookup_over_embed": p50["lookup"] / p50["embed"],
        "exact_over_health": p50["exact"] / p50["health"],
        "load_at_probes": os.getloadavg(),
    }
    # Throughput: the 2-core ceiling first (server idle), then --callers closed-loop callers on unseen prompts.
    batch = [next(unseen) for _ in range(32)]
    plain.embed(batch)
    per_item = []
    for _ in range(args.ceiling_repeats):
        t = time.perf_counter()
        plain.embed(batch)
        per_item.append((time.perf_counter() - t) / 32)
    cores = os.cpu_count() or 2
    ceiling = cores / statistics.median(per_item)
    flood = [f"{q} ({i})" for i, q in enumerate(unseen)]
    out["throughput"] = asyncio.run(closed_loop_lookups(target, flood, callers=args.callers,
                                                        seconds=args.throughput_seconds))
    out["ceiling_per_second"] = ceiling
    out["ceiling_batch32_per_item_ms"] = statistics.median(per_item) * 1000
    out["throughput_over_ceiling"] = out["throughput"]["per_second"] / ceiling
    out["load_after_throughput"] = os.getloadavg()
    return out


def report(results: list[dict[str, Any]]) -> str:
    headers = ["figure", *[f"{r['entries']:,} entries" for r in results], "target"]

    def row(name: str, fn: Any, target: str = "") -> list[object]:
        return [name, *[fn(r) for r in results], target]

    rows = [
        row("lookup p50 / embed-alone p50",
            lambda r: f"{r['p50_ms']['lookup']:.2f} / {r['p50_ms']['embed']:.2f} ms = "
                      f"**{r['lookup_over_embed']:.2f}x**",
            "<= 1.2x"),
        row("server-reported p50: embed / search / total",
            lambda r: " / ".join(f"{r['server_reported_p50_ms'][k]:.2f}" for k in ("embed_ms", "search_ms",
                                                                                   "total_ms")) + " ms"),
        row("exact hit p50 / health check p50",
            lambda r: f"{r['p50_ms']['exact']:.3f} / {r['p50_ms']['health']:.3f} ms = "
                      f"**{r['exact_over_health']:.2f}x**", "<= 1.2x"),
        row("server CPU per call: health / exact / lookup",
            lambda r: " / ".join(f"{r['server_cpu_ms_per_call'][k]:.2f}" for k in ("health", "exact", "lookup"))
            + " ms"),
        row("embed-alone CPU p50 (this process)", lambda r: f"{r['embed_alone_cpu_p50_ms']:.2f} ms"),
        row("lookup p99", lambda r: f"{r['p99_ms']['lookup']:.2f} ms"),
        row("lookups/s, 16 callers / ceiling",
            lambda r: f"{r['throughput']['per_second']:.0f} / {r['ceiling_per_second']:.0f} = "
                      f"**{r['throughput_over_ceiling']:.2f}**", ">= 0.85"),
        row("load average (1 min) at probes / after throughput",
            lambda r: f"{r['load_at_probes'][0]:.2f} / {r['load_after_throughput'][0]:.2f}"),
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--cpu-calls", type=int, default=300, help="calls per kind for the server CPU figures")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--throughput-seconds", type=float, default=15.0)
    parser.add_argument("--ceiling-repeats", type=int, default=15)
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
    args.target = None  # load.server() starts its own server
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
        for entries in args.entries:
            print(f"== {entries:,} entries (load {os.getloadavg()[0]:.2f})", flush=True)
            r = measure(args, entries, Path(base), stored, plain, questions)
            r["fill"] = fill
            results.append(r)
            print(json.dumps({k: r[k] for k in ("p50_ms", "lookup_over_embed", "exact_over_health",
                                                 "server_cpu_ms_per_call", "throughput_over_ceiling")},
                             default=str), flush=True)
    table = report(results)
    print()
    print(table)
    write_json(args.out, {"date": utc_now(), "command": command_line(), "machine": machine(),
                          "probe_tokens_median": statistics.median(tokens), "results": results, "markdown": table})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
