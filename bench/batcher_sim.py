"""The batcher's overload policy alone, against a model whose run time is simulated: its workers sleep.

    .venv/bin/python bench/batcher_sim.py --rate 270 --duration 20
    .venv/bin/python bench/batcher_sim.py --source /tmp/other-checkout   # that checkout's batcher

An open loop of ShareGPT first prompts (cut to --max-chars) into a `MicroBatcher` with the server's defaults (2
workers, 50 ms queueing budget), every call with a --deadline-ms deadline. The fake model takes what the real one
takes on a quiet box (DESIGN.md: ~7 ms for a short prompt alone, ~4.5-5.6 ms each in a batch, 71-76 ms at 256
tokens): 2 ms per run + 1.5 ms per text + 0.275 ms per token, tokens counted by the model's tokenizer and cut at
its input limit. CPU contention: times a slowdown factor that jumps to a random value in [1, --contention] every
--contention-ms, and times (runs at once / --cores) when more runs than cores start together. Sleeping holds no
core, so the figures are the policy's and not this box's load: the accepted calls' time from `encode` to vector
(queue wait + model run), next to one embedding of a prompt at the input limit.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    DATA_DIR,
    DEFAULT_MODEL_DIR,
    OUT_DIR,
    REPO_ROOT,
    command_line,
    machine,
    percentile,
    utc_now,
    write_json,
)
from load import load_prompts
from tokenizers import Tokenizer

RUN_MS, TEXT_MS, TOKEN_MS = 2.0, 1.5, 0.275
DIM = 8


class SleepingModel:
    """An `Embedder` that sleeps for the modelled run time of its texts."""

    dimension = DIM

    def __init__(self, tokens: dict[str, int], *, contention: float, contention_ms: float, cores: float,
                 seed: int) -> None:
        self._tokens = tokens
        self._cores = cores
        self._active = 0
        self._contention = contention
        self._period = contention_ms / 1000
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._factor, self._until = 1.0, 0.0

    def tokens(self, text: str) -> int:
        return self._tokens[text]

    def factor(self) -> float:
        with self._lock:
            now = time.monotonic()
            if now >= self._until:
                self._factor, self._until = self._rng.uniform(1.0, self._contention), now + self._period
            return self._factor

    def run_seconds(self, texts: Sequence[str]) -> float:
        return (RUN_MS + sum(TEXT_MS + TOKEN_MS * self._tokens[t] for t in texts)) / 1000

    def embed(self, texts: Sequence[str]) -> Any:
        with self._lock:
            self._active += 1
            sharing = max(1.0, self._active / self._cores)  # runs that start together share the cores
        try:
            time.sleep(self.run_seconds(texts) * self.factor() * sharing)
        finally:
            with self._lock:
                self._active -= 1
        return np.ones((len(texts), DIM), np.float32) / np.sqrt(DIM)


async def drive(args: argparse.Namespace, prompts: list[str], model: SleepingModel) -> dict[str, Any]:
    batcher_module = importlib.import_module("cachesvc.embedding.batcher")
    errors = importlib.import_module("cachesvc.errors")
    options = batcher_module.BatcherOptions(max_queue_ms=args.max_queue_ms or None, workers=args.workers)
    accepted: list[float] = []
    shed_waits: list[float] = []  # how long each shed call waited for its answer
    codes: dict[str, int] = {}
    rng = random.Random(args.seed)

    async def call(text: str) -> None:
        started = time.monotonic()
        code = "OK"
        try:
            await batcher.encode(text, deadline=started + args.deadline_ms / 1000)
            accepted.append((time.monotonic() - started) * 1000)
        except errors.Overloaded:
            code = "Overloaded"
            shed_waits.append((time.monotonic() - started) * 1000)
        codes[code] = codes.get(code, 0) + 1

    batcher = batcher_module.MicroBatcher(embedder=model, options=options)
    await batcher.start()
    try:
        # warm-up at the saturated rate's order of magnitude, so that the policy has measured the model
        for text in rng.sample(prompts, 20):
            await call(text)
        accepted.clear()
        shed_waits.clear()
        codes.clear()
        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        n = int(args.rate * args.duration)
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
            tasks.append(asyncio.create_task(call(rng.choice(prompts))))
        await asyncio.gather(*tasks)
    finally:
        await batcher.aclose()
    one_long = model.run_seconds([max(prompts, key=model.tokens)]) * 1000
    mean_alone = sum(model.run_seconds([t]) for t in prompts) / len(prompts)
    return {
        "offered": n, "codes": codes, "goodput_per_second": round(len(accepted) / args.duration, 1),
        "accepted_p50_ms": percentile(accepted, 50), "accepted_p99_ms": percentile(accepted, 99),
        "accepted_max_ms": max(accepted, default=None),
        "accepted_within": {f"{b}ms": round(sum(ms <= b for ms in accepted) / max(len(accepted), 1), 4)
                            for b in (50, 100, 125, 150, 200)},
        "past_deadline": sum(ms > args.deadline_ms for ms in accepted),
        # Shed at arrival (the queue ahead was judged too long) or at the head of the queue, after waiting.
        "shed_after_waiting": sum(ms > 1.0 for ms in shed_waits),
        "shed_after_waiting_p50_ms": percentile([ms for ms in shed_waits if ms > 1.0], 50),
        "capacity_one_at_a_time_per_second": round(args.workers / mean_alone, 1),
        "one_long_embedding_ms": round(one_long, 1),
        "one_long_embedding_slowest_ms": round(one_long * args.contention, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="checkout whose cachesvc batcher to run")
    parser.add_argument("--rate", type=float, default=270.0, help="calls per second (open loop)")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--max-queue-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--contention", type=float, default=1.0, help="largest slowdown factor of a model run")
    parser.add_argument("--contention-ms", type=float, default=200.0, help="how long one slowdown factor holds")
    parser.add_argument("--cores", type=float, default=2.0,
                        help="cores the model gets: runs at once beyond it are slowed in proportion")
    parser.add_argument("--prompts", type=Path, default=DATA_DIR / "sharegpt_first_prompts.jsonl")
    parser.add_argument("--max-chars", type=int, default=2000)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.source.resolve()))
    module_file = Path(importlib.import_module("cachesvc").__file__ or "").resolve()
    if not module_file.is_relative_to(args.source.resolve()):
        raise SystemExit(f"cachesvc came from {module_file}, not from {args.source}")
    prompts = load_prompts(args.prompts, args.max_chars, 5000)
    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(json.loads((args.model_dir / "manifest.json").read_text())
                                               ["max_seq_length"]))
    tokens = {t: len(e.ids) for t, e in zip(prompts, tokenizer.encode_batch(prompts), strict=True)}
    model = SleepingModel(tokens, contention=args.contention, contention_ms=args.contention_ms,
                          cores=args.cores, seed=args.seed)
    result = asyncio.run(drive(args, prompts, model))
    result = {"date": utc_now(), "command": command_line(), "machine": machine(), "source": str(args.source),
              "rate": args.rate, "contention": args.contention, **result}
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "command")}, indent=1))
    write_json(args.out or OUT_DIR / "batcher-sim.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
