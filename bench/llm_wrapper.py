"""What `cachesvc_client.openai.CachedOpenAI` adds to an LLM call, and what it saves on a real prompt stream.

    .venv/bin/python bench/llm_wrapper.py --sample 2000

Starts a cachesvc server (`python -m cachesvc serve` on a free 127.0.0.1 port, temporary data directory) and the
tests' OpenAI-compatible stub server (real HTTP and JSON; a fixed latency per call and per completion token),
then measures:

1. Overhead (sequential, interleaved, same run): the wrapper's hit against a bare `CacheClient.lookup` of the
   same stored prompt, and the wrapper's miss against the same steps written by hand (lookup, `OpenAI` call,
   store). Distinct ShareGPT prompts serve as misses, so neither path has anything cached for them.
2. Replay: a seeded sample of ShareGPT first prompts (in file order) through the wrapper, then through the bare
   `OpenAI` client, both with `--workers` threads: hit rate, LLM calls avoided, tokens and dollars saved (the
   server's own counters) and end-to-end latency percentiles.

Writes bench/out/llm_wrapper.json. Figures are only comparable within one run; note `uptime` next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    DATA_DIR,
    DEFAULT_MODEL_DIR,
    OUT_DIR,
    REPO_ROOT,
    command_line,
    machine,
    percentile,
    progress_bar,
    text_table,
    utc_now,
    write_json,
)
from load import free_port, wait_serving
from openai import OpenAI

from cachesvc_client import CacheClient
from cachesvc_client.openai import CachedOpenAI, CachePlan, ModelPrice, Outcome, cache_info, plan_request

sys.path.insert(0, str(REPO_ROOT))
from tests.openai_stub import ModelBehaviour, StubLLM

MODEL = "stub-model"
NAMESPACE = "bench"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR / "sharegpt_first_prompts.jsonl")
    parser.add_argument("--sample", type=int, default=2000, help="prompts replayed (file order)")
    parser.add_argument("--overhead-calls", type=int, default=200, help="calls per overhead measurement")
    parser.add_argument("--workers", type=int, default=8, help="concurrent callers in the replay")
    parser.add_argument("--latency-ms", type=float, default=300.0, help="stub latency per LLM call")
    parser.add_argument("--per-token-ms", type=float, default=10.0, help="stub latency per completion token")
    parser.add_argument("--answer-words", type=int, default=60, help="filler words in every stub answer")
    parser.add_argument("--price-in", type=float, default=2.50, help="USD per million input tokens")
    parser.add_argument("--price-out", type=float, default=10.00, help="USD per million output tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "llm_wrapper.json")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args()


@contextlib.contextmanager
def cachesvc(model_dir: Path) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cachesvc-llm-bench-") as data_dir:
        argv = [sys.executable, "-m", "cachesvc", "serve", f"--port={port}", "--metrics-port=-1",
                f"--data-dir={data_dir}", f"--model-dir={model_dir}", "--log-level=WARNING"]
        process = subprocess.Popen(argv, cwd=REPO_ROOT)
        try:
            wait_serving(f"127.0.0.1:{port}", timeout=300)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


def messages(prompt: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": prompt}]


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def p(values: list[float], q: float) -> float:
    value = percentile(values, q)
    return round(value, 2) if value is not None else float("nan")


def overhead(llm: CachedOpenAI, bare: OpenAI, cache: CacheClient, prompts: list[str], calls: int) -> dict[str, Any]:
    """p50 of wrapper vs hand-written calls, interleaved so load drifts hit both alike.

    Each miss gets a system prompt of its own (a scope of its own), so it is a miss whatever its text; distinct
    prompt texts of one length keep the embedding work alike (and out of the embedding memo).
    """
    stored = prompts[0]
    llm.chat.completions.create(model=MODEL, messages=messages(stored))  # a miss: stored now
    plan = plan_request({"model": MODEL, "messages": messages(stored)}, namespace=NAMESPACE)
    assert isinstance(plan, CachePlan)
    times: dict[str, list[float]] = {"bare hit (lookup)": [], "wrapper hit": [],
                                     "bare miss (lookup + LLM + store)": [], "wrapper miss": []}

    def own_scope(prompt: str, n: int) -> list[dict[str, str]]:
        return [{"role": "system", "content": f"You are assistant number {n}."}, {"role": "user", "content": prompt}]

    def bare_miss(prompt: str, n: int) -> None:
        miss_plan = plan_request({"model": MODEL, "messages": own_scope(prompt, n)}, namespace=NAMESPACE)
        assert isinstance(miss_plan, CachePlan)
        found = cache.lookup(miss_plan.prompt, scope=miss_plan.scope)
        assert not found.hit
        reply = bare.chat.completions.create(model=MODEL, messages=own_scope(prompt, n))
        cache.store(miss_plan.prompt, reply.choices[0].message.content or "", scope=miss_plan.scope)

    def wrapper_miss(prompt: str, n: int) -> None:
        reply = llm.chat.completions.create(model=MODEL, messages=own_scope(prompt, n))
        info = cache_info(reply)
        assert info is not None and info.outcome is Outcome.MISS

    for i in range(calls):
        ms, found = timed(lambda: cache.lookup(plan.prompt, scope=plan.scope))
        assert found.hit
        times["bare hit (lookup)"].append(ms)
        ms, reply = timed(lambda: llm.chat.completions.create(model=MODEL, messages=messages(stored)))
        info = cache_info(reply)
        assert info is not None and info.cached
        times["wrapper hit"].append(ms)
        bare_prompt, wrapped_prompt = prompts[1 + 2 * i], prompts[2 + 2 * i]
        times["bare miss (lookup + LLM + store)"].append(timed(lambda: bare_miss(bare_prompt, 2 * i))[0])  # noqa: B023
        times["wrapper miss"].append(timed(lambda: wrapper_miss(wrapped_prompt, 2 * i + 1))[0])  # noqa: B023
    return {name: {"p50_ms": p(values, 50), "p90_ms": p(values, 90)} for name, values in times.items()}


def replay(call: Callable[[str], Any], prompts: list[str], workers: int, desc: str, progress: bool
           ) -> tuple[list[float], list[Any]]:
    bar = progress_bar(len(prompts), desc, enabled=progress)

    def one(prompt: str) -> tuple[float, Any]:
        result = timed(lambda: call(prompt))
        bar.update()
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, prompts))
    bar.close()
    return [ms for ms, _ in results], [r for _, r in results]


def main() -> None:
    args = parse_args()
    with args.data.open(encoding="utf-8") as lines:  # not splitlines(): prompts hold U+2028 and friends
        rows = [json.loads(line) for line in lines if line.strip()]
    texts = [r["text"] for r in rows if r["text"].strip()]
    start = random.Random(args.seed).randrange(0, max(1, len(texts) - args.sample))
    sample = texts[start:start + args.sample]
    others = [t for t in dict.fromkeys(texts[:start] + texts[start + args.sample:]) if t not in set(sample)]
    price = ModelPrice(input_per_million=args.price_in, output_per_million=args.price_out)

    stub = StubLLM(behaviours={MODEL: ModelBehaviour(answer_words=args.answer_words)}).start()
    try:
        with cachesvc(args.model_dir) as target, CacheClient(target) as cache:
            bare = OpenAI(base_url=stub.base_url, api_key="bench", max_retries=0)
            llm = CachedOpenAI(OpenAI(base_url=stub.base_url, api_key="bench", max_retries=0), cache=cache,
                               namespace=NAMESPACE, prices={MODEL: price}, lookup_timeout=5.0)
            # 1. Overhead, with an instant stub: the LLM's own time is the same for both paths.
            # Distinct prompts cut to one length, so both paths embed alike.
            short = [" ".join(t.split()[:16]) for t in others if len(t.split()) >= 16]
            costs = overhead(llm, bare, cache, list(dict.fromkeys(short))[:2 * args.overhead_calls + 1],
                             args.overhead_calls)
            cache.delete_scope(NAMESPACE)

            # 2. Replay with a realistic-shaped latency: a fixed part plus a part per completion token.
            behaviour = stub.behaviour(MODEL)
            behaviour.latency_seconds = args.latency_ms / 1000
            behaviour.per_token_seconds = args.per_token_ms / 1000
            calls_before = stub.calls[MODEL]
            stats_before = cache.stats(NAMESPACE).namespaces[0]
            cached_ms, replies = replay(
                lambda prompt: llm.chat.completions.create(model=MODEL, messages=messages(prompt)), sample,
                args.workers, "with cache", not args.no_progress)
            llm_calls = stub.calls[MODEL] - calls_before
            stats = cache.stats(NAMESPACE).namespaces[0]
            bare_ms, _ = replay(lambda prompt: bare.chat.completions.create(model=MODEL, messages=messages(prompt)),
                                sample, args.workers, "without cache", not args.no_progress)
    finally:
        stub.stop()

    outcomes: dict[str, int] = {o.value: 0 for o in Outcome}
    for reply in replies:
        info = cache_info(reply)
        outcomes[info.outcome.value if info is not None else "unknown"] += 1
    hits = outcomes["hit"]
    result = {
        "when": utc_now(), "command": command_line(), "machine": machine(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "overhead": costs,
        "replay": {
            "prompts": len(sample), "outcomes": outcomes, "hit_rate": round(hits / len(sample), 4),
            "llm_calls": llm_calls, "llm_calls_avoided": len(sample) - llm_calls,
            "tokens_saved": stats.tokens_saved - stats_before.tokens_saved,
            "cost_saved_usd": round(stats.cost_saved_usd - stats_before.cost_saved_usd, 6),
            "latency_ms": {
                "with_cache": {"p50": p(cached_ms, 50), "p99": p(cached_ms, 99), "mean": round(
                    sum(cached_ms) / len(cached_ms), 2)},
                "without_cache": {"p50": p(bare_ms, 50), "p99": p(bare_ms, 99), "mean": round(
                    sum(bare_ms) / len(bare_ms), 2)},
            },
        },
    }
    write_json(args.out, result)
    print(text_table(["path", "p50 ms", "p90 ms"], [[k, v["p50_ms"], v["p90_ms"]] for k, v in costs.items()]))
    r = result["replay"]
    print()
    print(text_table(["replay", "value"], [
        ["prompts", r["prompts"]], ["outcomes", r["outcomes"]], ["hit rate", r["hit_rate"]],
        ["LLM calls avoided", r["llm_calls_avoided"]], ["tokens saved", r["tokens_saved"]],
        ["USD saved", r["cost_saved_usd"]],
        ["p50 / p99 ms with cache", f'{r["latency_ms"]["with_cache"]["p50"]} / {r["latency_ms"]["with_cache"]["p99"]}'],
        ["p50 / p99 ms without", f'{r["latency_ms"]["without_cache"]["p50"]} / '
                                 f'{r["latency_ms"]["without_cache"]["p99"]}'],
    ]))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
