"""Per-entry thresholds from callers' reports: how they move, and the statistics behind them."""

from __future__ import annotations

import math

import pytest

from cachesvc.core.feedback import (
    FeedbackOptions,
    entry_threshold,
    pair_blocked,
    serves_paraphrases,
    wilson_lower,
    wilson_upper,
)
from cachesvc.records import FEEDBACK_REPORTS_KEPT, EntryFeedback, FeedbackReport

OPTIONS = FeedbackOptions(max_false_hit_rate=0.05, confidence=0.95, floor_similarity=0.80, block_after=3)


def reports(*observations: tuple[str, float, bool]) -> EntryFeedback:
    feedback = EntryFeedback()
    for lsn, (prompt, similarity, correct) in enumerate(observations, start=1):
        feedback = feedback.with_report(FeedbackReport(prompt=prompt, similarity=similarity, correct=correct), lsn)
    return feedback


def test_wilson_bounds_bracket_the_rate_and_tighten_with_evidence() -> None:
    z = OPTIONS.z
    assert z == pytest.approx(1.6449, abs=1e-4)
    assert wilson_upper(0, 0, z) == 1.0 and wilson_lower(0, 0, z) == 0.0
    for wrong, n in ((0, 10), (1, 10), (5, 10), (10, 10), (3, 100)):
        assert wilson_lower(wrong, n, z) <= wrong / n <= wilson_upper(wrong, n, z)
    # No wrong report in n: the upper bound is z^2 / (n + z^2), so a 5% bound needs n >= z^2 / 0.05 - z^2.
    needed = math.ceil(z * z / 0.05 - z * z)
    assert wilson_upper(0, needed, z) <= 0.05 < wilson_upper(0, needed - 1, z)
    assert wilson_upper(1, 100, z) < wilson_upper(1, 10, z)


def test_no_reports_keep_the_base_threshold() -> None:
    assert entry_threshold(None, base=0.85, options=OPTIONS) == 0.85
    assert entry_threshold(EntryFeedback(), base=0.85, options=OPTIONS) == 0.85
    assert serves_paraphrases(None, OPTIONS) and not pair_blocked(None, "x")


def test_a_wrong_report_lifts_the_threshold_just_above_it() -> None:
    one = reports(("q1", 0.90, False))
    assert 0.90 < entry_threshold(one, base=0.85, options=OPTIONS) <= 0.90 + 1e-4
    assert pair_blocked(one, "q1") and not pair_blocked(one, "q2")
    # A wrong report below the base changes nothing for the threshold (the pair stays blocked).
    assert entry_threshold(reports(("q1", 0.82, False)), base=0.85, options=OPTIONS) == 0.85
    # The highest wrong report counts.
    two = reports(("q1", 0.90, False), ("q2", 0.93, False))
    assert 0.93 < entry_threshold(two, base=0.85, options=OPTIONS) <= 0.93 + 1e-4


def test_right_reports_outweigh_a_wrong_one_only_when_the_bound_holds() -> None:
    few = reports(("w", 0.90, False), *((f"r{i}", 0.95, True) for i in range(5)))
    assert entry_threshold(few, base=0.85, options=OPTIONS) > 0.90
    # With a wrong rate of 1 in n at and above 0.85, its Wilson upper bound must drop under 5%: find that n.
    n = next(n for n in range(2, 1000) if wilson_upper(1, n, OPTIONS.z) <= 0.05)
    many = reports(("w", 0.90, False), *((f"r{i}", 0.86, True) for i in range(n - 1)))
    assert entry_threshold(many, base=0.85, options=OPTIONS) == pytest.approx(0.85)
    fewer = reports(("w", 0.90, False), *((f"r{i}", 0.86, True) for i in range(n - 2)))
    assert entry_threshold(fewer, base=0.85, options=OPTIONS) > 0.90


def test_right_reports_relax_below_the_base_down_to_the_floor_with_evidence_only() -> None:
    needed = next(n for n in range(1, 1000) if wilson_upper(0, n, OPTIONS.z) <= 0.05)
    enough = reports(*((f"r{i}", 0.88, True) for i in range(needed)))
    assert entry_threshold(enough, base=0.95, options=OPTIONS) == pytest.approx(0.88, abs=1e-4)
    assert entry_threshold(enough, base=0.95, options=OPTIONS, relax=False) == 0.95
    short = reports(*((f"r{i}", 0.88, True) for i in range(needed - 1)))
    assert entry_threshold(short, base=0.95, options=OPTIONS) == 0.95
    below_floor = reports(*((f"r{i}", 0.70, True) for i in range(needed)))
    assert entry_threshold(below_floor, base=0.95, options=OPTIONS) == 0.95


def test_an_entry_reported_wrong_often_enough_serves_no_paraphrase() -> None:
    two = reports(("a", 0.9, False), ("b", 0.9, False))
    assert serves_paraphrases(two, OPTIONS)
    three = reports(("a", 0.9, False), ("b", 0.9, False), ("c", 0.9, False))
    assert not serves_paraphrases(three, OPTIONS)
    # Three wrong among many right: the wrong rate is not confidently above the bound.
    mostly_right = reports(("a", 0.9, False), ("b", 0.9, False), ("c", 0.9, False),
                           *((f"r{i}", 0.95, True) for i in range(200)))
    assert wilson_lower(3, 203, OPTIONS.z) <= 0.05
    assert serves_paraphrases(mostly_right, OPTIONS)


def test_reports_are_bounded_but_every_wrong_prompt_is_kept() -> None:
    feedback = reports(("wrong", 0.9, False), *((f"r{i}", 0.95, True) for i in range(FEEDBACK_REPORTS_KEPT + 10)))
    assert len(feedback.reports) == FEEDBACK_REPORTS_KEPT
    assert pair_blocked(feedback, "wrong") and feedback.wrong == 1 and feedback.right == FEEDBACK_REPORTS_KEPT + 10


def test_options_are_validated() -> None:
    for bad in ({"max_false_hit_rate": 0.0}, {"max_false_hit_rate": 1.0}, {"confidence": 0.5},
                {"floor_similarity": 1.5}, {"block_after": 0}):
        with pytest.raises(ValueError):
            FeedbackOptions(**bad)  # type: ignore[arg-type]
