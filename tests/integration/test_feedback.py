"""Callers' feedback through the real server and model: a pair reported wrong stops, an entry's threshold moves
as documented (core/feedback.py), feedback survives a restart, and it is per tenant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachesvc.app import App
from cachesvc.core.feedback import FeedbackOptions, wilson_upper
from cachesvc_client import AsyncCacheClient, CandidateOutcome, NotFoundError, RejectReason, Scope

StartApp = Callable[..., Any]
STORED = "How do I reset my password?"
# all-MiniLM-L6-v2 cosines to STORED, measured by each test before it relies on their order.
FAR = "I forgot my password, what should I do?"  # ~0.83
MID = "How do I change my password?"  # ~0.87
STEPS = "What are the steps to reset my password?"  # ~0.94
PLEASE = "How do I reset my password please?"  # ~0.97
NEAR = "How can I reset my password?"  # ~0.99


async def similarities(client: AsyncCacheClient, *prompts: str, scope: Scope | None = None) -> list[float]:
    found = [await client.lookup(p, min_similarity=0.0, scope=scope) for p in prompts]
    return [f.similarity for f in found]


async def served(client: AsyncCacheClient, prompt: str, scope: Scope | None = None) -> bool:
    return (await client.lookup(prompt, scope=scope)).hit


async def test_wrong_reports_stop_the_pair_lift_the_threshold_and_finally_stop_paraphrases(
        start_app: StartApp) -> None:
    app: App = await start_app(verifier="off", min_similarity=0.8, recall_similarity=0.8)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        stored = await client.store(STORED, "Use the 'Forgot password' link.")
        far, mid, steps, please, near = await similarities(client, FAR, MID, STEPS, PLEASE, NEAR)
        assert 0.8 <= far < mid < steps < please < near < 1.0
        for prompt in (FAR, MID, STEPS, PLEASE, NEAR):
            assert await served(client, prompt)

        result = await client.feedback(MID, stored.id, correct=False)
        assert result.similarity == pytest.approx(mid, abs=1e-4)
        assert mid < result.entry_min_similarity <= mid + 1e-4 and result.serves_paraphrases
        explained = await client.lookup(MID, explain=True)
        assert not explained.hit and explained.rejected_reason is RejectReason.FEEDBACK
        assert explained.candidates[0].outcome is CandidateOutcome.REJECTED
        assert not await served(client, FAR)  # below the lifted threshold
        assert await served(client, STEPS) and await served(client, NEAR)

        result = await client.feedback(STEPS, stored.id, correct=False)
        assert steps < result.entry_min_similarity <= steps + 1e-4
        assert not await served(client, STEPS) and await served(client, PLEASE)

        result = await client.feedback(PLEASE, stored.id, correct=False)
        assert not result.serves_paraphrases  # three wrong reports, none right: confidently above the bound
        assert not await served(client, NEAR)  # never reported, and above every reported similarity
        exact = await client.lookup(STORED)
        assert exact.hit and exact.exact and exact.entry is not None and exact.entry.id == stored.id

        stats_before = await client.stats()
        with pytest.raises(NotFoundError):
            await client.feedback(MID, "no-such-entry", correct=False)
        with pytest.raises(NotFoundError):  # the entry exists, but not in this scope
            await client.feedback(MID, stored.id, correct=False, scope=Scope(namespace="other"))
        assert (await client.stats()).total.entries == stats_before.total.entries


async def test_right_reports_relax_an_entrys_threshold_to_the_bound_they_prove(start_app: StartApp) -> None:
    bound = 0.3
    app: App = await start_app(verifier="off", min_similarity=0.95, max_false_hit_rate=bound,
                               feedback_floor_similarity=0.8)
    z = FeedbackOptions(max_false_hit_rate=bound).z
    needed = next(n for n in range(1, 100) if wilson_upper(0, n, z) <= bound)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        stored = await client.store(STORED, "Use the 'Forgot password' link.")
        far, mid, steps = await similarities(client, FAR, MID, STEPS)
        assert 0.8 <= far < mid < steps < 0.95
        assert not await served(client, MID) and not await served(client, STEPS)
        for n in range(1, needed + 1):
            result = await client.feedback(MID, stored.id, correct=True)
            if n < needed:
                assert result.entry_min_similarity == pytest.approx(0.95)
        assert result.entry_min_similarity == pytest.approx(mid, abs=1e-4)
        assert await served(client, MID) and await served(client, STEPS)
        assert not await served(client, FAR)  # below what the reports prove
        # A lookup's own threshold is never relaxed by feedback.
        assert not (await client.lookup(MID, min_similarity=0.95)).hit


async def test_feedback_survives_a_restart(start_app: StartApp, tmp_path: Path) -> None:
    settings = {"data_dir": tmp_path / "data", "verifier": "off", "min_similarity": 0.8, "recall_similarity": 0.8}
    app: App = await start_app(**settings)
    async with AsyncCacheClient(f"127.0.0.1:{app.port}") as client:
        stored = await client.store(STORED, "Use the 'Forgot password' link.")
        assert await served(client, STEPS)
        await client.feedback(STEPS, stored.id, correct=False)
        assert not await served(client, STEPS)
    await app.aclose()

    restarted: App = await start_app(**settings)
    async with AsyncCacheClient(f"127.0.0.1:{restarted.port}") as client:
        again = await client.lookup(STEPS, explain=True)
        assert not again.hit and again.rejected_reason is RejectReason.FEEDBACK
        assert await served(client, NEAR)
        result = await client.feedback(NEAR, stored.id, correct=True)
        assert result.similarity > 0.98 and result.entry_min_similarity > again.similarity


async def test_a_tenant_cannot_report_on_another_tenants_entry(start_app: StartApp) -> None:
    app: App = await start_app(verifier="off", min_similarity=0.8, recall_similarity=0.8,
                               api_keys={"key-a": "tenant-a", "key-b": "tenant-b"})
    target = f"127.0.0.1:{app.port}"
    async with AsyncCacheClient(target, api_key="key-a") as a, AsyncCacheClient(target, api_key="key-b") as b:
        stored = await a.store(STORED, "Use the 'Forgot password' link.")
        assert await served(a, STEPS)
        with pytest.raises(NotFoundError):
            await b.feedback(STEPS, stored.id, correct=False)
        assert await served(a, STEPS)  # nothing changed for the owner
        await a.feedback(STEPS, stored.id, correct=False)
        assert not await served(a, STEPS)
