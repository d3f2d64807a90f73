"""Calibration and the hit-quality benchmark end to end, on a tiny labelled set written here, through the real
server (in-process on 127.0.0.1) with the real model."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachesvc.calibrate import Criterion, choose_threshold, sweep, thresholds_grid
from cachesvc.calibration_run import (
    PairRecord,
    ScopeMode,
    StreamItem,
    collect_pairs,
    load_pairs,
    load_stream,
    replay_stream,
)
from cachesvc_client import AsyncCacheClient, Scope

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180.0  # a guard against hangs only

PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ("What time does the store open on Sunday?", "When does the store open on Sundays?"),
    ("How many calories are in a banana?", "How many calories does a banana have?"),
]
UNRELATED = [
    ("How do I bake sourdough bread?", "What is the speed of light in a vacuum?"),
    ("Recommend a good science fiction novel.", "How do I change a flat tire on a bicycle?"),
    ("What is the tallest mountain in Africa?", "How do I export a spreadsheet to PDF?"),
    ("Explain how vaccines train the immune system.", "Which football club won the 1998 cup final?"),
]

StartApp = Callable[..., Any]


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"a": a, "b": b, "label": 1} for a, b in PARAPHRASES] + [{"a": a, "b": b, "label": 0}
                                                                       for a, b in UNRELATED]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
async def target(start_app: StartApp) -> str:
    app = await start_app(verifier="off")  # the plain threshold: at 0 every lookup serves its nearest entry
    return f"127.0.0.1:{app.port}"


@pytest.mark.parametrize("mode", list(ScopeMode))
async def test_pairs_collection_and_sweep(target: str, pairs_file: Path, mode: ScopeMode) -> None:
    pairs = load_pairs(pairs_file)
    assert len(pairs) == len(PARAPHRASES) + len(UNRELATED)
    async with AsyncCacheClient(target) as client:
        records = await asyncio.wait_for(
            collect_pairs(client, pairs, mode=mode, namespace="smoke", concurrency=4), TIMEOUT)
        assert (await client.stats("smoke")).total.entries == len(pairs)  # every `a` is stored
    assert [r.index for r in records] == list(range(len(pairs)))
    assert all(0.0 <= r.similarity <= 1.0 and r.nearest_prompt is not None for r in records)
    positives = [r for r in records if r.positive]
    negatives = [r for r in records if not r.positive]
    # Every paraphrase's nearest entry is its own `a`, in either mode: this set is easy on purpose.
    assert all(r.right for r in positives) and not any(r.right for r in negatives)
    assert min(r.similarity for r in positives) > max(r.similarity for r in negatives)

    points = sweep([r.observation() for r in records], thresholds_grid(0.01), bootstrap=50)
    at_zero, at_one = points[0], points[-1]
    assert at_zero.recall.value == 1.0 and at_zero.hit_rate.value == 1.0
    assert at_zero.false_hit_rate.value == 1.0  # threshold 0 serves the nearest entry to every negative
    assert at_one.hits == 0 and at_one.recall.value == 0.0  # no paraphrase is identical
    choice = choose_threshold(points, 1.0, criterion=Criterion.POINT)
    assert choice.point is not None
    assert max(r.similarity for r in negatives) < choice.point.threshold <= min(r.similarity for r in positives)
    assert choice.point.recall.value == 1.0 and choice.point.false_hit_rate.value == 0.0


async def test_stream_replay_stores_on_miss_per_threshold(target: str) -> None:
    items = [
        StreamItem(text="How do I reset my password?", cls="password"),
        StreamItem(text="What is the weather like in Paris today?", cls="weather"),
        StreamItem(text="How can I reset my password?", cls="password"),
        StreamItem(text="How do I reset my password?", cls="password"),  # exact repeat
        StreamItem(text="Play some jazz music.", cls="music"),
    ]
    async with AsyncCacheClient(target) as client:
        loose, exact_only = await asyncio.wait_for(
            replay_stream(client, items, [0.0, 1.0], namespace="stream"), TIMEOUT)
    # Threshold 0: only the first text is stored; every later one is served it (right for the same class).
    assert (loose.hits, loose.right_hits) == (4, 2)
    # Threshold 1: only the exact repeat hits.
    assert (exact_only.hits, exact_only.right_hits) == (1, 1)
    assert loose.repeat_rate.successes == exact_only.repeat_rate.successes == 2
    assert exact_only.precision.value == 1.0 and loose.precision.value == 0.5


def test_loaders_sample_with_a_seed_and_keep_order(tmp_path: Path, pairs_file: Path) -> None:
    first = load_pairs(pairs_file, limit=4, seed=1)
    assert first == load_pairs(pairs_file, limit=4, seed=1) and len(first) == 4
    everything = load_pairs(pairs_file)
    assert [everything.index(p) for p in first] == sorted(everything.index(p) for p in first)
    stream = tmp_path / "stream.jsonl"
    stream.write_text("".join(json.dumps({"text": f"text {i} " * 10, "cls": i % 3}) + "\n" for i in range(10)),
                      encoding="utf-8")
    items = load_stream(stream, limit=5, seed=2, max_chars=12)
    assert len(items) == 5 and all(len(i.text) <= 12 for i in items)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "x", "b": "y", "label": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_pairs(bad)


async def run(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_hitrate_script_against_a_running_server(target: str, pairs_file: Path, tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    stream.write_text("".join(json.dumps({"text": t, "cls": c}) + "\n" for t, c in [
        ("How do I reset my password?", "password"), ("Play some jazz music.", "music"),
        ("How can I reset my password?", "password")]), encoding="utf-8")
    plot = importlib.util.find_spec("matplotlib") is not None
    out_dir = tmp_path / "out"
    code, out, err = await run(
        "bench/hitrate.py", "--target", target, "--pairs", str(pairs_file), "--stream", str(stream),
        "--stream-thresholds", "0.5", "--out-dir", str(out_dir), "--no-progress", "--targets", "0.9",
        "--markdown-out", str(tmp_path / "tables.md"), *([] if plot else ["--no-plot"]))
    assert code == 0, err
    assert "static 0.60" in out and "RedisVL default" in out and "precision >= 0.90" in out

    pairs = json.loads((out_dir / "hitrate-pairs.json").read_text(encoding="utf-8"))
    assert pairs["kind"] == "pairs" and pairs["pairs"] == len(PARAPHRASES) + len(UNRELATED)
    assert pairs["machine"]["cpus"] >= 1 and pairs["command"] and pairs["date"]
    assert set(pairs["modes"]) == {"per-pair", "shared"}
    per_pair = pairs["modes"]["per-pair"]
    assert len(per_pair["sweep"]) == 101
    assert per_pair["sweep"][0]["threshold"] == 0.0 and per_pair["sweep"][0]["recall"]["value"] == 1.0
    assert {c["criterion"] for c in per_pair["choices"]} == {"lower-bound", "point"}

    replay = json.loads((out_dir / "hitrate-stream.json").read_text(encoding="utf-8"))
    thresholds = [p["threshold"] for p in replay["points"]]
    assert thresholds == sorted(thresholds) and {0.5, 0.6, 0.9} <= set(thresholds)
    assert "| threshold |" in (tmp_path / "tables.md").read_text(encoding="utf-8")
    if plot:
        assert (out_dir / "hitrate-pairs.png").read_bytes()[:4] == b"\x89PNG"


async def test_calibrate_command_with_its_own_server(pairs_file: Path, model_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "calibration.json"
    code, out, err = await run(
        "-m", "cachesvc", "calibrate", "--pairs", str(pairs_file), "--model-dir", str(model_dir),
        "--target-precision", "0.9", "1.0", "--criterion", "point", "--json-out", str(report), "--quiet",
        "--verifier", "off")
    assert code == 0, err
    assert "target precision 0.900 (by its point estimate): threshold" in out
    assert "by 95% lower bound instead" in out and "built-in default" in out
    data = json.loads(report.read_text(encoding="utf-8"))
    point_choices = [c for c in data["choices"] if c["criterion"] == "point"]
    assert [c["target_precision"] for c in point_choices] == [0.9, 1.0]
    assert all(c["threshold"] is not None for c in point_choices)  # this tiny set separates cleanly
    assert data["sweep"][0]["recall"]["value"] == 1.0


async def test_calibrate_command_rejects_bad_input(tmp_path: Path) -> None:
    code, _, err = await run("-m", "cachesvc", "calibrate", "--pairs", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in err
    code, _, err = await run("-m", "cachesvc", "calibrate", "--pairs", str(tmp_path / "x"),
                             "--target-precision", "1.5")
    assert code == 2 and "not in (0, 1]" in err


async def test_calibration_sees_what_a_server_with_a_verifier_serves(start_app: StartApp) -> None:
    pairs = load_pairs(ROOT / "tests" / "data" / "adversarial_pairs.jsonl")
    found: dict[str, list[PairRecord]] = {}
    for verifier in ("off", "combined"):
        app = await start_app(verifier=verifier)
        async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
            found[verifier] = await asyncio.wait_for(
                collect_pairs(client, pairs, mode=ScopeMode.PER_PAIR, namespace="adv", concurrency=8), TIMEOUT)
    plain, verified = found["off"], found["combined"]
    assert all(r.nearest_prompt is not None for r in plain)  # threshold 0 without a verifier serves every time
    floor = 0.80
    # Above the floor, what the verifier turns away is mostly the swaps.
    rejected = [v for p, v in zip(plain, verified, strict=True) if v.nearest_prompt is None and p.similarity >= floor]
    assert sum(not v.positive for v in rejected) > 2 * sum(v.positive for v in rejected)
    # A served entry keeps its similarity: the verifier decides whether, not how close.
    assert all(v.similarity == pytest.approx(p.similarity, abs=1e-5)
               for p, v in zip(plain, verified, strict=True) if v.nearest_prompt is not None)
    plain_point, verified_point = (next(p for p in sweep([r.observation() for r in rs], thresholds_grid(0.01),
                                                         bootstrap=20) if p.threshold >= floor)
                                   for rs in (plain, verified))
    assert verified_point.precision.value is not None and plain_point.precision.value is not None
    assert verified_point.precision.value >= 0.98 > plain_point.precision.value


async def test_calibration_records_the_similarity_of_the_candidate_a_verifier_serves(start_app: StartApp,
                                                                                  tmp_path: Path) -> None:
    # One shared scope: the nearest `a` to the query is a number swap the rules reject, the next one is served.
    path = tmp_path / "pairs.jsonl"
    rows = [{"a": "What is 2 + 2?", "b": "What is 2 + 3?", "label": 0},
            {"a": "Tell me the sum of 2 and 3.", "b": "Tell me the sum of 2 and 3, please.", "label": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    app = await start_app(verifier="rules")
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        records = await asyncio.wait_for(
            collect_pairs(client, load_pairs(path), mode=ScopeMode.SHARED, namespace="next", concurrency=1), TIMEOUT)
        explained = await client.lookup("What is 2 + 3?", scope=Scope(namespace="next"), min_similarity=0.0,
                                        explain=True)
    best, served = explained.candidates[0], explained.candidates[1]
    assert best.outcome.name == "REJECTED" and served.outcome.name == "SERVED" and served.similarity < best.similarity
    first = records[0]
    assert first.nearest_prompt == "Tell me the sum of 2 and 3."
    assert first.similarity == pytest.approx(served.similarity, abs=1e-6)  # the served one's, not the nearest's


async def test_floor_server_answers_stored_prompts_exactly_and_embeds_the_rest(model_dir: Path,
                                                                               tmp_path: Path) -> None:
    """bench/grpc_floor.py, the server bench/overhead.py --floor measures against: the same wire answers as ours."""
    import socket

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cachesvc_client.v1 import cache_pb2 as pb
    from cachesvc_client.v1 import cache_pb2_grpc as pb_grpc

    stored = tmp_path / "stored.txt"
    stored.write_text("How do I reset my password?\nWhat is the capital of France?", encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for embed_on in ("thread", "loop"):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "bench/grpc_floor.py", f"--port={port}", f"--stored={stored}", f"--embed-on={embed_on}",
            f"--model-dir={model_dir}", cwd=ROOT)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                  wait_for_ready=True, timeout=TIMEOUT)
                assert (await check).status == health_pb2.HealthCheckResponse.SERVING
                cache = pb_grpc.SemanticCacheStub(channel)
                exact = await cache.Lookup(pb.LookupRequest(prompt="What is the capital of France?"), timeout=30)
                assert exact.hit and exact.exact and exact.entry.prompt == "What is the capital of France?"
                assert exact.entry.completion
                miss = await cache.Lookup(pb.LookupRequest(prompt="How can I reset my password?"), timeout=30)
                assert not miss.hit and miss.timings.embed_ms > 0
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), TIMEOUT)
