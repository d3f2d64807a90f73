"""Collects calibration data from a real server through the Python client: labelled pairs and labelled streams.

Used by `cachesvc calibrate` and by `bench/hitrate.py`. The math lives in `cachesvc.calibrate`.

Data formats (JSON lines):
    pairs   {"a": str, "b": str, "label": 0 | 1, ...}: 1 means an answer cached for `a` is right for `b`.
    stream  {"text": str, "cls": str, ...}: a hit is right when the served entry's text has the same class.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cachesvc.calibrate import Observation, StreamPoint, stream_point
from cachesvc.core.normalize import normalize_prompt
from cachesvc_client import AsyncCacheClient, Scope

Progress = Callable[[int], None]
COMPLETION = "calibration"  # the completions are never read; only which entry was served matters


class ScopeMode(StrEnum):
    PER_PAIR = "per-pair"  # each pair's `a` alone in a scope of its own: the threshold's view of one pair
    SHARED = "shared"  # every `a` in one scope, as in a real cache: near neighbours compete


@dataclass(frozen=True, kw_only=True)
class Pair:
    a: str
    b: str
    label: bool


@dataclass(frozen=True, kw_only=True)
class StreamItem:
    text: str
    cls: str


@dataclass(frozen=True, kw_only=True)
class PairRecord:
    """One looked-up `b`: what the server served at threshold 0 (with a hit verifier: the best candidate it
    accepted; None when it accepted none), and how it was judged."""

    index: int
    similarity: float
    nearest_prompt: str | None
    positive: bool
    right: bool
    unlabelled: bool  # shared mode: the served `a` belongs to another pair and no label says whether it is right

    def observation(self) -> Observation:
        return Observation(similarity=self.similarity, positive=self.positive, right=self.right,
                           candidate=self.nearest_prompt is not None)


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, object]]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object")
                yield number, row


def _sample(rows: list[object], limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded random sample of `limit` rows, kept in file order (all rows when limit is None)."""
    if limit is None or limit >= len(rows):
        return list(range(len(rows)))
    if limit < 1:
        raise ValueError("limit must be >= 1")
    return sorted(random.Random(seed).sample(range(len(rows)), limit))


def load_pairs(path: Path, *, limit: int | None = None, seed: int = 0) -> list[Pair]:
    """Reads a pairs file; with `limit`, a seeded random sample of that many pairs (in file order).

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is not a pair.
    """
    pairs: list[Pair] = []
    for number, row in _read_jsonl(path):
        a, b, label = row.get("a"), row.get("b"), row.get("label")
        if not isinstance(a, str) or not isinstance(b, str) or label not in (0, 1):
            raise ValueError(f"{path}:{number}: expected {{'a': str, 'b': str, 'label': 0 or 1}}")
        if not normalize_prompt(a) or not normalize_prompt(b):
            continue  # the server rejects empty prompts
        pairs.append(Pair(a=a, b=b, label=label == 1))
    return [pairs[i] for i in _sample(list(pairs), limit, seed)]


def load_stream(path: Path, *, limit: int | None = None, seed: int = 0, max_chars: int | None = None) -> list[
        StreamItem]:
    """Reads a stream file, keeping its order; with `limit`, a seeded random sample kept in stream order.

    Args:
        max_chars: Cut texts to this many characters (the server refuses prompts over its byte limit).

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is not a stream item.
    """
    items: list[StreamItem] = []
    for number, row in _read_jsonl(path):
        text, cls = row.get("text"), row.get("cls")
        if not isinstance(text, str) or not isinstance(cls, str | int):
            raise ValueError(f"{path}:{number}: expected {{'text': str, 'cls': str}}")
        text = text[:max_chars] if max_chars is not None else text
        if normalize_prompt(text):
            items.append(StreamItem(text=text, cls=str(cls)))
    return [items[i] for i in _sample(list(items), limit, seed)]


async def _bounded(jobs: Iterable[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    """Runs the jobs with at most `concurrency` in flight; the first failure cancels the rest."""
    semaphore = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await job()

    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(run(job))
    except ExceptionGroup as group_error:
        raise group_error.exceptions[0] from None


def _positive_labels(pairs: Sequence[Pair]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(positive, negative) pairs of normalised texts, in both directions (a paraphrase is symmetric)."""
    positive: set[tuple[str, str]] = set()
    negative: set[tuple[str, str]] = set()
    for p in pairs:
        a, b = normalize_prompt(p.a), normalize_prompt(p.b)
        (positive if p.label else negative).update({(a, b), (b, a)})
    return positive, negative


async def collect_pairs(
    client: AsyncCacheClient,
    pairs: Sequence[Pair],
    *,
    mode: ScopeMode,
    namespace: str,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> list[PairRecord]:
    """Stores every `a`, then looks up every `b` at threshold 0 and records the best candidate.

    Judging: per-pair, the only candidate is the pair's own `a`, so the hit is right iff the label is 1. Shared,
    the best candidate may be another pair's `a`: it is right when it is the same text as `b` or as a labelled
    positive `a` of `b`, and wrong otherwise (also when no label covers it: counted, and reported as
    `unlabelled`). A query is positive when its own label is 1.

    Args:
        client: A client of a running server.
        pairs: The pairs.
        mode: One scope per pair, or one shared scope.
        namespace: Namespace to write into; the caller deletes it afterwards if the server is shared.
        concurrency: Calls in flight (the server's micro-batcher groups them).
        progress: Called with the number of calls just completed.

    Returns:
        One record per pair, in order.

    Raises:
        CacheClientError: a call failed.
    """
    def scope(i: int) -> Scope:
        return Scope(namespace=namespace, context=f"pair-{i}" if mode is ScopeMode.PER_PAIR else "")

    async def store(i: int) -> None:
        await client.store(pairs[i].a, COMPLETION, scope=scope(i), ttl_seconds=0)
        if progress is not None:
            progress(1)

    # In a shared scope a repeated `a` replaces the earlier entry: the text is what is judged, not the entry.
    await _bounded([functools.partial(store, i) for i in range(len(pairs))], concurrency)
    positive, negative = _positive_labels(pairs)
    records: list[PairRecord | None] = [None] * len(pairs)

    async def look(i: int) -> None:
        pair = pairs[i]
        # At threshold 0 the served entry is the best candidate, or with a hit verifier the best one it accepts.
        # Verdicts do not depend on the threshold, and the candidates it rejected are all closer, so at any
        # threshold t this same entry is served if its similarity reaches t, and nothing is served otherwise.
        result = await client.lookup(pair.b, scope=scope(i), min_similarity=0.0, explain=True)
        nearest = result.entry.prompt if result.entry is not None else None
        served_similarity = next((c.similarity for c in result.candidates
                                  if result.entry is not None and c.entry_id == result.entry.id), result.similarity)
        unlabelled = False
        if nearest is None:
            right = False
        elif mode is ScopeMode.PER_PAIR:
            right = pair.label
        else:
            key = (normalize_prompt(pair.b), normalize_prompt(nearest))
            right = key[0] == key[1] or key in positive
            unlabelled = not right and key not in negative
        records[i] = PairRecord(index=i, similarity=served_similarity if nearest is not None else 0.0,
                                nearest_prompt=nearest, positive=pair.label, right=right, unlabelled=unlabelled)
        if progress is not None:
            progress(1)

    await _bounded([functools.partial(look, i) for i in range(len(pairs))], concurrency)
    return [r for r in records if r is not None]


async def replay_stream(
    client: AsyncCacheClient,
    items: Sequence[StreamItem],
    thresholds: Sequence[float],
    *,
    namespace: str,
    progress: Progress | None = None,
) -> list[StreamPoint]:
    """Replays the stream once per threshold, in order: look up (the server applies the threshold), store on miss.

    What is cached depends on the threshold (only misses are stored), so each threshold gets a scope of its own.
    The replays advance together, one item at a time: the item's lookups in every scope run concurrently and
    share one embedding (the server embeds each text once and reuses the vector).

    Args:
        client: A client of a running server.
        items: The stream, in order.
        thresholds: Thresholds in [0, 1].
        namespace: Namespace to write into.
        progress: Called with 1 after each item.

    Returns:
        One point per threshold, in the given order.

    Raises:
        CacheClientError: a call failed.
    """
    outcomes: list[list[tuple[bool, bool]]] = [[] for _ in thresholds]
    seen: set[str] = set()
    repeats = 0

    async def step(j: int, item: StreamItem) -> None:
        scope = Scope(namespace=namespace, context=f"threshold-{j}")
        result = await client.lookup(item.text, scope=scope, min_similarity=thresholds[j])
        if result.hit and result.entry is not None:
            outcomes[j].append((True, result.entry.metadata.get("cls") == item.cls))
        else:
            outcomes[j].append((False, False))
            await client.store(item.text, COMPLETION, scope=scope, metadata={"cls": item.cls}, ttl_seconds=0)

    for item in items:
        repeats += item.cls in seen
        seen.add(item.cls)
        await _bounded([functools.partial(step, j, item) for j in range(len(thresholds))], len(thresholds))
        if progress is not None:
            progress(1)
    return [stream_point(t, outcomes[j], repeats) for j, t in enumerate(thresholds)]


def run_namespace() -> str:
    """A namespace of its own for one run, so runs against a shared server never see each other's entries."""
    return f"calibrate-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def server_target(target: str | None, *, model_dir: Path, verifier: str, top_k: int = 4) -> AsyncIterator[str]:
    """Yields `target`, or starts an in-process server on 127.0.0.1 (any free port) and yields its address.

    The in-process server runs the hit verifier `verifier` (a `--verifier` value), keeps its state in a
    temporary directory and is stopped on exit. A server given by `target` is measured with whatever verifier it
    runs.

    Raises:
        ModelError: the model directory is missing or corrupt.
    """
    if target is not None:
        yield target
        return
    from cachesvc.app import App
    from cachesvc.config import load_settings

    with tempfile.TemporaryDirectory(prefix="cachesvc-calibrate-") as data_dir:
        # Through load_settings (flags as text, no environment), so settings this build lacks are skipped. The
        # entries are throwaway: no fsync. A batch job with one client: no time bound on the model queue, which
        # would shed its concurrent calls on a busy machine.
        settings = load_settings(environ={}, flags={
            "host": "127.0.0.1", "port": "0", "metrics_port": "-1", "model_dir": str(model_dir),
            "data_dir": data_dir, "top_k": str(top_k), "grace_seconds": "1", "fsync": "no", "verifier": verifier,
            "max_queue_ms": "0",
        })
        async with App(settings) as app:
            yield f"127.0.0.1:{app.port}"
