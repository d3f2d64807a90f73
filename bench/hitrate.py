"""Hit quality through the real gRPC server: labelled pairs and labelled streams, over a sweep of thresholds.

    .venv/bin/python bench/hitrate.py --pairs ../shared/data/qqp_gptcache_dev.jsonl \\
        --stream ../shared/data/banking77_train_stream.jsonl

Pairs (`{"a", "b", "label"}`): store every `a`, look up every `b` once at threshold 0 and record the best
candidate; every threshold's outcome follows from that record, because the server serves its best live candidate
iff the similarity >= the threshold (`cachesvc.calibrate`). Two scope modes: `per-pair` (each pair alone in a
scope) and `shared` (every `a` in one scope, as in a real cache; near neighbours compete). Reports precision of
served hits, recall of positives, false-hit rate on negatives, hit rate and F1, with 95% intervals.

Streams (`{"text", "cls"}`): replay in order, store on miss; what is cached depends on the threshold, so each
listed threshold replays in its own scope (the replays share one embedding per text). A hit is right when the
served entry's text has the query's class.

The static baselines sit in the same table: 0.6 (what GPTCache's default similarity_threshold=0.8 amounts to)
and 0.9 (RedisVL's default), next to the server's built-in default and the thresholds calibrated on the same
file for each --targets precision (lowest threshold whose Wilson 95% lower bound reaches it; the point-estimate
choice is in the JSON). Without --target, an in-process server on 127.0.0.1 runs the model from --model-dir.
Writes bench/out/hitrate-<file>.json and .png; prints the tables (and Markdown with --markdown-out).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
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

from cachesvc.calibrate import (
    Criterion,
    Rate,
    ThresholdPoint,
    choose_threshold,
    nearest_point,
    sweep,
    thresholds_grid,
)
from cachesvc.calibration_run import (
    PairRecord,
    ScopeMode,
    collect_pairs,
    load_pairs,
    load_stream,
    replay_stream,
    run_namespace,
    server_target,
)
from cachesvc.config import Settings
from cachesvc_client import AsyncCacheClient

BASELINES = {"GPTCache default (0.8 -> cos 0.6)": 0.6, "RedisVL default": 0.9}
STREAM_THRESHOLDS = [0.6, 0.7, 0.8, 0.85, 0.9, 0.95]


def fmt(rate: Rate) -> str:
    if rate.value is None:
        return "n/a"
    return f"{rate.value:.3f} [{rate.low:.3f}-{rate.high:.3f}]"


def fmt_f1(p: ThresholdPoint) -> str:
    if p.f1 is None:
        return "n/a"
    if p.f1_low is None or p.f1_high is None:
        return f"{p.f1:.3f}"
    return f"{p.f1:.3f} [{p.f1_low:.3f}-{p.f1_high:.3f}]"


def parse_named(values: list[str]) -> dict[str, float]:
    named: dict[str, float] = {}
    for raw in values:
        name, sep, value = raw.rpartition("=")
        named[name if sep else f"{float(value):.3f}"] = float(value)
    return named


def labelled_thresholds(args: argparse.Namespace) -> dict[str, float]:
    """Named rows of the tables; names of the same threshold are joined into one row."""
    named = [(f"static {v:.2f}, {k}", v) for k, v in BASELINES.items()]
    named.append((f"built-in default {Settings().min_similarity:.2f}", Settings().min_similarity))
    named += list(parse_named(args.extra_thresholds).items())
    by_value: dict[float, list[str]] = {}
    for name, value in named:
        by_value.setdefault(round(value, 4), []).append(name)
    return {" = ".join(names): value for value, names in by_value.items()}


# Pairs

PAIR_HEADERS = ["threshold", "row", "hits", "precision [95% CI]", "recall [95% CI]", "false-hit rate [95% CI]",
                "hit rate", "F1 [95% CI]"]


def pair_row(p: ThresholdPoint, label: str) -> list[object]:
    return [f"{p.threshold:.2f}", label, p.hits, fmt(p.precision), fmt(p.recall), fmt(p.false_hit_rate),
            f"{p.hit_rate.value or 0.0:.3f}", fmt_f1(p)]


def pair_rows(points: list[ThresholdPoint], args: argparse.Namespace,
              choices: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[tuple[float, str, ThresholdPoint]] = []
    for label, t in labelled_thresholds(args).items():
        rows.append((t, label, nearest_point(points, t)))
    for c in choices:
        if c["criterion"] == Criterion.LOWER_BOUND.value:
            t = c["threshold"]
            label = f"calibrated: precision >= {c['target_precision']:.2f} (95% lower bound)"
            if t is None:
                rows.append((2.0, f"{label}: unreachable (best lower bound {c['best_precision_low']:.3f})",
                             nearest_point(points, 1.0)))
            else:
                rows.append((t, label, nearest_point(points, t)))
    for t in (0.5, 0.7, 0.8, 0.85, 0.95, 0.97, 0.99):
        if all(abs(t - r[0]) > 1e-9 for r in rows):
            rows.append((t, "sweep", nearest_point(points, t)))
    rows.sort(key=lambda r: r[0])
    out = []
    for t, label, p in rows:
        row = pair_row(p, label)
        if t > 1.0:
            row = ["-", label, "-", "-", "-", "-", "-", "-"]
        out.append(row)
    return out


async def run_pairs(client: AsyncCacheClient, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    pairs = load_pairs(path, limit=args.limit or None, seed=args.seed)
    positives = sum(p.label for p in pairs)
    result: dict[str, Any] = {"file": str(path), "kind": "pairs", "pairs": len(pairs), "positives": positives,
                              "negatives": len(pairs) - positives, "limit": args.limit, "seed": args.seed,
                              "modes": {}}
    grid = thresholds_grid(args.step)
    for mode in (ScopeMode(m) for m in args.modes):
        bar = progress_bar(2 * len(pairs), f"{path.stem} {mode.value}", enabled=not args.no_progress)
        namespace = run_namespace()
        started = time.perf_counter()
        try:
            records: list[PairRecord] = await collect_pairs(client, pairs, mode=mode, namespace=namespace,
                                                            concurrency=args.concurrency, progress=bar.update)
        finally:
            bar.close()
            await client.delete_scope(namespace)
        elapsed = time.perf_counter() - started
        points = sweep([r.observation() for r in records], grid, seed=args.seed)
        choices = []
        for target in args.targets:
            for criterion in Criterion:
                choice = choose_threshold(points, target, criterion=criterion)
                choices.append({"target_precision": target, "criterion": criterion.value,
                                "threshold": None if choice.point is None else choice.point.threshold,
                                "best_precision": choice.best_precision,
                                "best_precision_low": choice.best_precision_low})
        result["modes"][mode.value] = {
            "seconds": round(elapsed, 1), "calls_per_second": round(2 * len(pairs) / elapsed, 1),
            "unlabelled_nearest": sum(r.unlabelled for r in records),
            "choices": choices, "sweep": [dataclasses.asdict(p) for p in points],
            "records": [dataclasses.asdict(r) for r in records] if args.keep_records else None,
            "table": pair_rows(points, args, choices),
        }
    return result


# Streams

STREAM_HEADERS = ["threshold", "row", "hits", "hit rate [95% CI]", "precision [95% CI]", "right-hit rate",
                  "repeat rate (ceiling)"]


async def run_stream(client: AsyncCacheClient, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    items = load_stream(path, limit=args.stream_limit or None, seed=args.seed, max_chars=args.max_chars)
    labels = labelled_thresholds(args)
    thresholds = sorted({round(t, 4) for t in [*args.stream_thresholds, *labels.values()]})
    bar = progress_bar(len(items), f"{path.stem} stream x{len(thresholds)}", enabled=not args.no_progress)
    namespace = run_namespace()
    started = time.perf_counter()
    try:
        points = await replay_stream(client, items, thresholds, namespace=namespace, progress=bar.update)
    finally:
        bar.close()
        await client.delete_scope(namespace)
    elapsed = time.perf_counter() - started
    by_value = {round(v, 4): k for k, v in labels.items()}
    table = [[f"{p.threshold:.2f}", by_value.get(round(p.threshold, 4), "sweep"), p.hits, fmt(p.hit_rate),
              fmt(p.precision), f"{p.right_hit_rate.value or 0.0:.3f}", f"{p.repeat_rate.value or 0.0:.3f}"]
             for p in points]
    return {"file": str(path), "kind": "stream", "items": len(items), "limit": args.stream_limit,
            "seed": args.seed, "max_chars": args.max_chars, "classes": len({i.cls for i in items}),
            "seconds": round(elapsed, 1), "points": [dataclasses.asdict(p) for p in points], "table": table}


# Plots

def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    if result["kind"] == "pairs":
        for mode, style in (("per-pair", "-"), ("shared", "--")):
            if mode not in result["modes"]:
                continue
            pts = [ThresholdPointView(p) for p in result["modes"][mode]["sweep"]]
            xs = [p.t for p in pts]
            for name, color in (("precision", "tab:blue"), ("recall", "tab:orange"),
                                ("false_hit_rate", "tab:red")):
                ys, lo, hi = zip(*[p.rate(name) for p in pts], strict=True)
                left.plot(xs, ys, style, color=color, label=f"{name.replace('_', '-')} ({mode})")
                left.fill_between(xs, lo, hi, color=color, alpha=0.12)
            hr = [p.rate("hit_rate")[0] for p in pts]
            pr = [p.rate("precision")[0] for p in pts]
            right.plot(hr, pr, style, color="tab:blue", label=f"{mode}")
        left.set_title("pairs: precision, recall, false-hit rate vs threshold (95% CI)")
        right.set_xlabel("hit rate (served / lookups)")
    else:
        pts = result["points"]
        xs = [p["threshold"] for p in pts]
        for name, color in (("precision", "tab:blue"), ("hit_rate", "tab:green"), ("right_hit_rate", "tab:purple")):
            ys = [p[name]["value"] if p[name]["value"] is not None else float("nan") for p in pts]
            left.plot(xs, ys, "o-", color=color, label=name.replace("_", " "))
            if name != "right_hit_rate":
                left.fill_between(xs, [p[name]["low"] for p in pts], [p[name]["high"] for p in pts], color=color,
                                  alpha=0.12)
        left.set_title("stream (store on miss): rates vs threshold (95% CI)")
        right.plot([p["hit_rate"]["value"] for p in pts],
                   [p["precision"]["value"] if p["precision"]["value"] is not None else float("nan") for p in pts],
                   "o-", color="tab:blue", label="stream")
        right.set_xlabel("hit rate")
    for t, name in ((0.6, "0.6"), (0.9, "0.9")):
        left.axvline(t, color="grey", linestyle=":", linewidth=1)
        left.text(t, 0.02, f" static {name}", color="grey", fontsize=8)
    left.set_xlabel("threshold (cosine similarity)")
    left.set_ylim(0, 1.02)
    left.legend(fontsize=7, loc="center left")
    right.set_ylabel("precision of served hits")
    right.set_title("precision vs hit rate")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=8)
    fig.suptitle(Path(result["file"]).name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class ThresholdPointView:
    """Reads a ThresholdPoint from its JSON form, NaN for undefined values (for plotting)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.t = float(data["threshold"])
        self._data = data

    def rate(self, name: str) -> tuple[float, float, float]:
        r = self._data[name]
        value = float("nan") if r["value"] is None else float(r["value"])
        return value, float(r["low"]), float(r["high"])


# Main

def print_result(result: dict[str, Any], markdown: list[str]) -> None:
    name = Path(result["file"]).name
    if result["kind"] == "pairs":
        for mode, data in result["modes"].items():
            title = (f"{name}: {result['pairs']} pairs ({result['positives']} positive), scopes {mode}, "
                     f"{data['seconds']} s")
            if mode == "shared":
                title += f", {data['unlabelled_nearest']} nearest entries from other pairs without a label"
            print(f"\n{title}\n{text_table(PAIR_HEADERS, data['table'])}")
            markdown.append(f"**{title}**\n\n{markdown_table(PAIR_HEADERS, data['table'])}\n")
    else:
        title = (f"{name}: stream of {result['items']} texts ({result['classes']} classes), store on miss, "
                 f"{result['seconds']} s")
        print(f"\n{title}\n{text_table(STREAM_HEADERS, result['table'])}")
        markdown.append(f"**{title}**\n\n{markdown_table(STREAM_HEADERS, result['table'])}\n")


async def main_async(args: argparse.Namespace) -> int:
    markdown: list[str] = []
    run = {"date": utc_now(), "command": command_line(), "machine": machine(), "verifier": args.verifier,
           "server": args.target or f"in-process, model {args.model_dir}"}
    jobs = [(run_pairs, path) for path in args.pairs] + [(run_stream, path) for path in args.stream]
    async with server_target(args.target, model_dir=args.model_dir, verifier=args.verifier) as target, \
            AsyncCacheClient(target, api_key=args.api_key, timeout=120.0) as client:
        for job, path in jobs:  # each file's results are written as soon as they are in
            result = await job(client, path, args)
            print_result(result, markdown)
            stem = f"hitrate-{Path(result['file']).stem}"
            write_json(args.out_dir / f"{stem}.json", {**run, **result})
            if not args.no_plot:
                plot(result, args.out_dir / f"{stem}.png")
            if args.markdown_out is not None:
                header = f"- **Date:** {run['date']}\n- **Command:** `{run['command']}`\n"
                args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
                args.markdown_out.write_text(header + "\n" + "\n".join(markdown), encoding="utf-8")
    print(f"\nwrote {len(jobs)} JSON file(s){'' if args.no_plot else ' and plots'} to {args.out_dir}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, action="append", default=[], help="labelled pairs file (repeatable)")
    parser.add_argument("--stream", type=Path, action="append", default=[], help="labelled stream (repeatable)")
    parser.add_argument("--modes", nargs="+", choices=[m.value for m in ScopeMode], default=["per-pair", "shared"])
    parser.add_argument("--limit", type=int, default=3000, help="pairs sampled per file (0 = all)")
    parser.add_argument("--stream-limit", type=int, default=3000, help="stream texts sampled, order kept (0 = all)")
    parser.add_argument("--max-chars", type=int, default=2000, help="cut stream texts to this many characters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=float, default=0.01, help="pairs threshold grid step")
    parser.add_argument("--stream-thresholds", type=float, nargs="+", default=STREAM_THRESHOLDS,
                        help="thresholds replayed for streams (baselines and --extra-thresholds are added)")
    parser.add_argument("--extra-thresholds", nargs="*", default=[],
                        help="more labelled rows, NAME=VALUE (e.g. 'QQP P>=0.90=0.95')")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95, 0.99],
                        help="precision targets to calibrate for on each pairs file")
    parser.add_argument("--verifier", choices=["off", "rules", "model", "combined"], default="off",
                        help="hit verifier of the in-process server (default off: the plain threshold)")
    parser.add_argument("--target", default=None,
                        help="host:port of a running server to measure, with its own verifier (default: in-process)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--markdown-out", type=Path, default=None)
    parser.add_argument("--keep-records", action="store_true", help="keep every lookup's record in the JSON")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not args.pairs and not args.stream:
        parser.error("give at least one --pairs or --stream file")
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
