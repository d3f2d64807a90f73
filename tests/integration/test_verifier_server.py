"""The hit verifier through the real server: explain output, the miss reason, metrics, and the hand-written
adversarial pairs in tests/data/adversarial_pairs.jsonl (no development data is read here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachesvc.app import App
from cachesvc.core.verify import RejectReason as CoreReason
from cachesvc_client import AsyncCacheClient, CandidateOutcome, RejectReason, Scope

StartApp = Callable[..., Any]
PAIRS = Path(__file__).resolve().parents[1] / "data" / "adversarial_pairs.jsonl"


def _pairs() -> list[dict[str, Any]]:
    with PAIRS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_adversarial_file_covers_every_kind() -> None:
    pairs = _pairs()
    assert len(pairs) >= 60
    for kind in ("negation", "number", "entity", "direction", "unit"):
        labels = {p["label"] for p in pairs if p["kind"] == kind}
        assert labels == {0, 1}, kind


async def test_rejected_candidate_is_explained_and_counted(start_app: StartApp) -> None:
    app: App = await start_app(verifier="combined")
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        await client.store("How do I install Python on Windows?", "Use the installer.")
        miss = await client.lookup("How do I install Python on Ubuntu?", explain=True)
        assert not miss.hit
        assert miss.rejected_reason is RejectReason.ENTITY
        assert miss.min_similarity == pytest.approx(app.settings.recall_similarity)
        best = miss.candidates[0]
        assert best.outcome is CandidateOutcome.REJECTED
        assert best.reason is RejectReason.ENTITY and best.verifier_score == 0.0

        hit = await client.lookup("How can I install Python on Windows?", explain=True)
        assert hit.hit and hit.completion == "Use the installer."
        assert hit.candidates[0].outcome is CandidateOutcome.SERVED and hit.rejected_reason is None
        assert hit.candidates[0].verifier_score is not None
    assert app.service is not None
    rejections = app.service.counters.rejections()
    assert sum(n for (_t, _ns, reason), n in rejections.items() if reason is CoreReason.ENTITY) == 1


async def test_rejection_lets_the_next_candidate_be_served(start_app: StartApp) -> None:
    app: App = await start_app(verifier="rules")
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        await client.store("What is 2 + 3?", "5")
        await client.store("Calculate two plus two for me", "4")
        result = await client.lookup("What is 2 + 2?", min_similarity=0.3, explain=True)
        assert result.hit and result.completion == "4"
        outcomes = [(c.prompt, c.outcome) for c in result.candidates[:2]]
        assert outcomes == [("What is 2 + 3?", CandidateOutcome.REJECTED),
                            ("Calculate two plus two for me", CandidateOutcome.SERVED)]


async def test_verifier_off_keeps_the_plain_threshold(start_app: StartApp) -> None:
    app: App = await start_app(verifier="off")
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        await client.store("What is the capital of France?", "Paris.")
        result = await client.lookup("What is the capital of Germany?", min_similarity=0.5, explain=True)
        assert result.hit and result.rejected_reason is None
        assert result.candidates[0].verifier_score is None


@pytest.mark.slow
async def test_adversarial_pairs_precision_and_recall(start_app: StartApp) -> None:
    """Each pair in its own scope: store `a`, look up `b`, with the server's shipped verifier defaults."""
    app: App = await start_app(verifier="combined")
    pairs = _pairs()
    served_right = served_wrong = positives = 0
    wrong: list[str] = []
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        for p in pairs:
            scope = Scope(namespace="adversarial", context=p["id"])
            await client.store(p["a"], f"answer for {p['id']}", scope=scope)
            result = await client.lookup(p["b"], scope=scope)
            positives += p["label"]
            if result.hit:
                if p["label"]:
                    served_right += 1
                else:
                    served_wrong += 1
                    wrong.append(p["id"])
    precision = served_right / max(served_right + served_wrong, 1)
    recall = served_right / positives
    assert precision >= 0.98, f"precision {precision:.3f}; served wrongly: {wrong}"
    assert recall >= 0.80, f"paraphrase recall {recall:.3f}"


async def test_a_namespace_can_run_its_own_verifier(start_app: StartApp) -> None:
    app: App = await start_app(verifier="combined", namespace_verifiers={"plain": "off"})
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        for namespace in ("plain", "checked"):
            await client.store("How do I cancel my subscription?", "Settings > Billing > Cancel.",
                               scope=Scope(namespace=namespace))
        swap = "How do I not cancel my subscription?"
        plain = await client.lookup(swap, scope=Scope(namespace="plain"), min_similarity=0.85, explain=True)
        checked = await client.lookup(swap, scope=Scope(namespace="checked"), min_similarity=0.85, explain=True)
        assert plain.hit and plain.candidates[0].verifier_score is None
        assert not checked.hit and checked.rejected_reason is RejectReason.NEGATION
        paraphrase = await client.lookup("How can I cancel my subscription?", scope=Scope(namespace="checked"),
                                         explain=True)
        score = paraphrase.candidates[0].verifier_score
        assert paraphrase.hit and score is not None and 0.0 < score < 1.0  # the learned model ran (rules give 0 or 1)
        # Each namespace's default threshold goes with its verifier.
        assert (await client.lookup("Unrelated: what is the boiling point of water?",
                                    scope=Scope(namespace="plain"))).min_similarity == pytest.approx(
            app.settings.min_similarity)
        assert (await client.lookup("Unrelated: what is the boiling point of water?",
                                    scope=Scope(namespace="checked"))).min_similarity == pytest.approx(
            app.settings.recall_similarity)
