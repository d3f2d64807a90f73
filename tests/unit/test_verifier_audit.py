"""The estimators behind bench/verifier_audit.py (precision of served hits from stratified reader judgments)."""

from __future__ import annotations

import math
from types import ModuleType

import pytest

from tests.conftest import bench_script


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    return bench_script("verifier_audit")


def test_stratified_precision_is_the_weighted_mean_of_stratum_shares(audit: ModuleType) -> None:
    # A quarter of the served hits in a stratum where 1 of 4 sampled pairs is right, three quarters in one where
    # 3 of 4 are: 0.25 * 0.25 + 0.75 * 0.75.
    estimate = audit.stratified([(0.25, [True, False, False, False]), (0.75, [True, True, True, False])])
    assert estimate.value == pytest.approx(0.625)
    # Each stratum's share has variance p(1-p)/(n-1) (here 0.1875/3 in both); the interval is 1.96 standard errors.
    standard_error = math.sqrt(0.25 ** 2 * 0.1875 / 3 + 0.75 ** 2 * 0.1875 / 3)
    assert (estimate.low, estimate.high) == pytest.approx((0.625 - 1.96 * standard_error,
                                                           0.625 + 1.96 * standard_error))


def test_stratified_interval_closes_when_every_stratum_agrees(audit: ModuleType) -> None:
    estimate = audit.stratified([(0.5, [True] * 10), (0.5, [False] * 10)])
    assert (estimate.low, estimate.value, estimate.high) == pytest.approx((0.5, 0.5, 0.5))


def test_a_difference_uses_negative_weights(audit: ModuleType) -> None:
    estimate = audit.stratified([(1.0, [True, True]), (-1.0, [True, False])])
    assert estimate.value == pytest.approx(0.5)

