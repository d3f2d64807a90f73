"""Feedback through the real gRPC server: replay labelled streams, report a share of the wrong hits, compare with
static thresholds.

    .venv/bin/python bench/feedback_replay.py --stream ../shared/data/banking77_train_stream.jsonl \\
        --stream ../shared/data/clinc150_trainval_stream.jsonl

Each stream (`{"text", "cls"}`) is replayed in order, store on miss, once per configuration, every configuration in
a scope of its own on one in-process server (the replays advance together, so each text is embedded once):

- static thresholds (a grid): the plain cache, no feedback;
- feedback at base threshold b (one per --bases): the same, and each wrong hit is reported wrong (`Feedback`,
  correct=false) with probability --report-share (seeded), the way a caller that notices some wrong answers would.
  Right hits are not reported. After a report the caller has asked the LLM anyway, and stores the query's right
  answer (as a caller wrapping an LLM would; --no-store-after-report to leave that out).

A hit is right when the served entry was stored from a text of the query's class. For each feedback run the
table gives its hit precision and hit rate over the whole stream (and over its second half, once the cache has
learned), and the best static threshold whose precision is at least as high: the feedback run should serve at
least as many hits at that precision. The in-process server runs --verifier (default off: the threshold alone)
and --max-false-hit-rate. Writes bench/out/feedback-replay-<file>.json; prints the tables (Markdown with
--markdown-out) and the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_MODEL_DIR,
    OUT_DIR,
    command_line,
    machine,
    markdown_table,
    progress_bar,
    text_table,
    utc_now,
    write_json,
)

from cachesvc.calibration_run import StreamItem, load_stream, run_namespace
from cachesvc_client import AsyncCacheClient, Scope

Z95 = 1.96


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre, spread = p + Z95 * Z95 / (2 * n), Z95 * math.sqrt(p * (1 - p) / n + Z95 * Z95 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + Z95 * Z95 / n)), min(1.0, (centre + spread) / (1 + Z95 * Z95 / n))


@dataclass
class Run:
    """One configuration's replay: its scope, threshold and whether it reports wrong hits."""

    name: str
    threshold: float
    feedback: bool
    scope: Scope
    outcomes: list[tuple[bool, bool]] = field(default_factory=list)  # (hit, right) per item
    reports: int = 0

    def summary(self, start: int = 0) -> dict[str, Any]:
        part = self.outcomes[start:]
        hits = sum(h for h, _r in part)
        right = sum(r for _h, r in part)
        return {"lookups": len(part), "hits": hits, "right": right, "hit_rate": hits / max(len(part), 1),
                "precision": right / hits if hits else None, "precision_ci": wilson(right, hits),
                "right_hit_rate": right / max(len(part), 1)}


@contextlib.asynccontextmanager
async def in_process_server(args: argparse.Namespace) -> AsyncIterator[str]:
    from cachesvc.app import App
    from cachesvc.config import load_settings

    with tempfile.TemporaryDirectory(prefix="cachesvc-feedback-") as data_dir:
        settings = load_settings(environ={}, flags={
            "host": "127.0.0.1", "port": "0", "metrics_port": "-1", "model_dir": str(args.model_dir),
            "data_dir": data_dir, "grace_seconds": "1", "fsync": "no", "verifier": args.verifier,
            "max_false_hit_rate": str(args.max_false_hit_rate), "feedback_block_after": str(args.block_after),
        })
        async with App(settings) as app:
            yield f"127.0.0.1:{app.port}"


async def replay(client: AsyncCacheClient, items: list[StreamItem], runs: list[Run], rng: random.Random,
                 args: argparse.Namespace) -> None:
    async def step(run: Run, item: StreamItem, report: bool) -> None:
        result = await client.lookup(item.text, scope=run.scope, min_similarity=run.threshold)
        if result.hit and result.entry is not None:
            right = result.entry.completion == item.cls
            run.outcomes.append((True, right))
            if run.feedback and not right and report:
                await client.feedback(item.text, result.entry.id, correct=False, scope=run.scope)
                run.reports += 1
                if args.store_after_report:  # the caller asked the LLM after all, and caches the right answer
                    await client.store(item.text, item.cls, scope=run.scope)
        else:
            run.outcomes.append((False, False))
            await client.store(item.text, item.cls, scope=run.scope)

    bar = progress_bar(len(items), f"replay x{len(runs)}", enabled=not args.no_progress)
    try:
        for item in items:
            report = rng.random() < args.report_share  # one draw per item: every feedback run reports alike
            await asyncio.gather(*(step(run, item, report) for run in runs))
            bar.update(1)
    finally:
        bar.close()


def best_static(static: list[dict[str, Any]], precision: float) -> dict[str, Any] | None:
    """The static run with the highest hit rate among those at least as precise as `precision`."""
    eligible = [s for s in static if s["precision"] is not None and s["precision"] >= precision]
    return max(eligible, key=lambda s: s["hit_rate"]) if eligible else None


HEADERS = ["run", "hits", "hit rate", "precision [95% CI]", "2nd half: hit rate / precision", "wrong reported",
           "best static at >= precision: threshold, hit rate", "hit rate vs it"]


def fmt_precision(s: dict[str, Any]) -> str:
    if s["precision"] is None:
        return "n/a"
    low, high = s["precision_ci"]
    return f"{s['precision']:.3f} [{low:.3f}-{high:.3f}]"


async def run_file(client: AsyncCacheClient, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    items = load_stream(path, limit=args.limit or None, seed=args.seed, max_chars=args.max_chars)
    namespace = run_namespace()
    runs = [Run(name=f"static {t:.2f}", threshold=t, feedback=False, scope=Scope(namespace=namespace,
                                                                                  context=f"static-{t}"))
            for t in args.static]
    runs += [Run(name=f"feedback, base {b:.2f}", threshold=b, feedback=True,
                 scope=Scope(namespace=namespace, context=f"feedback-{b}")) for b in args.bases]
    started = time.perf_counter()
    try:
        await replay(client, items, runs, random.Random(args.seed), args)
    finally:
        await client.delete_scope(namespace)
    elapsed = time.perf_counter() - started
    half = len(items) // 2
    static = [{"threshold": r.threshold, **r.summary()} for r in runs if not r.feedback]
    rows, adaptive = [], []
    for run in runs:
        whole, second = run.summary(), run.summary(half)
        entry = {"name": run.name, "threshold": run.threshold, "feedback": run.feedback, "reports": run.reports,
                 "whole": whole, "second_half": second}
        if run.feedback and whole["precision"] is not None:
            best = best_static(static, whole["precision"])
            entry["best_static"] = best
            adaptive.append(entry)
        if run.feedback or run.threshold in args.show_static:
            best = entry.get("best_static")
            rows.append([
                run.name, whole["hits"], f"{whole['hit_rate']:.3f}", fmt_precision(whole),
                f"{second['hit_rate']:.3f} / "
                + (f"{second['precision']:.3f}" if second["precision"] is not None else "n/a"),
                run.reports if run.feedback else "-",
                "-" if not run.feedback else ("none" if best is None
                                              else f"{best['threshold']:.2f}, {best['hit_rate']:.3f}"),
                "-" if not run.feedback or best is None else f"{whole['hit_rate'] / max(best['hit_rate'], 1e-9):.2f}x",
            ])
    return {"file": str(path), "items": len(items), "limit": args.limit, "seed": args.seed,
            "classes": len({i.cls for i in items}), "seconds": round(elapsed, 1), "static": static,
            "adaptive": adaptive, "table": rows}


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    run = {"date": utc_now(), "command": command_line(), "machine": machine(), "verifier": args.verifier,
           "max_false_hit_rate": args.max_false_hit_rate, "report_share": args.report_share,
           "block_after": args.block_after, "store_after_report": args.store_after_report}
    markdown: list[str] = []
    async with in_process_server(args) as target, AsyncCacheClient(target, timeout=120.0) as client:
        for path in args.stream:
            result = await run_file(client, path, args)
            title = (f"{path.name}: {result['items']} texts ({result['classes']} classes), verifier {args.verifier}, "
                     f"--max-false-hit-rate {args.max_false_hit_rate}, {args.report_share:.0%} of wrong hits "
                     f"reported, {result['seconds']} s")
            print(f"\n{title}\n{text_table(HEADERS, result['table'])}")
            markdown.append(f"**{title}**\n\n{markdown_table(HEADERS, result['table'])}\n")
            write_json(args.out_dir / f"feedback-replay-{path.stem}-{args.verifier}.json", {**run, **result})
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(f"- **Date:** {run['date']}\n- **Command:** `{run['command']}`\n\n"
                                     + "\n".join(markdown), encoding="utf-8")
    print(f"\nruntime {time.perf_counter() - started:.1f} s; load average {machine()['load_average']}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", type=Path, action="append", required=True, help="labelled stream (repeatable)")
    parser.add_argument("--limit", type=int, default=3000, help="texts sampled per stream, order kept (0 = all)")
    parser.add_argument("--max-chars", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bases", type=float, nargs="+", default=[0.80, 0.85, 0.90],
                        help="base thresholds of the feedback runs")
    parser.add_argument("--static", type=float, nargs="+", default=[round(0.70 + 0.02 * i, 2) for i in range(15)],
                        help="static thresholds replayed (default 0.70 .. 0.98 by 0.02)")
    parser.add_argument("--show-static", type=float, nargs="*", default=[0.80, 0.85, 0.90, 0.95],
                        help="static thresholds shown in the table (all are in the JSON)")
    parser.add_argument("--report-share", type=float, default=0.5, help="share of wrong hits reported")
    parser.add_argument("--no-store-after-report", dest="store_after_report", action="store_false",
                        help="do not store the query's right answer after reporting a wrong hit")
    parser.add_argument("--max-false-hit-rate", type=float, default=0.05)
    parser.add_argument("--block-after", type=int, default=3)
    parser.add_argument("--verifier", choices=["off", "rules", "model", "combined"], default="off")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--markdown-out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
