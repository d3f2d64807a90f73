"""The operating point behind bench/cross_encoder_probe.py's figures (precision at a given recall)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from tests.conftest import bench_script


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    return bench_script("cross_encoder_probe")


def test_best_scored_candidates_are_served_until_the_recall_is_reached(probe: ModuleType) -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 1, 0])
    # 4 positive pairs in all (one never became a candidate): recall 0.5 needs 2 right hits, which the three
    # best-scored candidates give.
    point = probe.at_recall(score, np.ones(5, dtype=bool), labels, 4, 0.5)
    assert point == {"precision": pytest.approx(2 / 3), "recall": 0.5, "served": 3, "threshold": 0.7}


def test_a_vetoed_candidate_is_never_served_whatever_its_score(probe: ModuleType) -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([0, 1, 1, 0])
    allowed = np.array([False, True, True, True])
    point = probe.at_recall(score, allowed, labels, 2, 1.0)
    assert point == {"precision": 1.0, "recall": 1.0, "served": 2, "threshold": 0.7}
