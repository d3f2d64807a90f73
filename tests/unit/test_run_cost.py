"""The cost model of model runs: a prompt's cost from its length, seconds per unit from recent runs."""

from __future__ import annotations

import pytest

from cachesvc.embedding.run_cost import SecondsPerUnit, text_cost


def test_a_prompts_cost_grows_with_its_length_up_to_the_models_input_limit() -> None:
    short, medium, at_limit, past_limit = (text_cost(t, max_tokens=256)
                                           for t in ("hi", "word " * 100, "word " * 203, "word " * 2000))
    assert short < medium < at_limit
    assert at_limit == past_limit  # the embedder truncates: more text costs no more
    assert past_limit > 25 * short  # a page of text against a few words


def test_multibyte_text_is_costed_by_its_bytes() -> None:
    assert text_cost("é" * 40, max_tokens=256) == text_cost("e" * 80, max_tokens=256)


def test_seconds_per_unit_is_the_slowest_of_the_recent_runs_and_forgets_old_ones() -> None:
    rate = SecondsPerUnit(window=3)
    assert rate.value == 0.0  # nothing measured yet
    rate.observe(0.010, 10)
    rate.observe(0.040, 10)  # a slow run
    rate.observe(0.010, 10)
    rate.observe(0.010, 10)
    assert rate.value == pytest.approx(0.004)
    rate.observe(0.010, 10)  # three runs after it, the slow one is forgotten
    assert rate.value == pytest.approx(0.001)
    rate.observe(1.0, 0)  # an empty run says nothing
    assert rate.value == pytest.approx(0.001)


def test_the_window_must_hold_a_run() -> None:
    with pytest.raises(ValueError):
        SecondsPerUnit(window=0)


def test_over_many_runs_the_estimate_is_a_high_quantile_so_one_freak_run_does_not_set_it() -> None:
    rate = SecondsPerUnit(window=256, quantile=0.99)
    for _ in range(98):
        rate.observe(0.010, 10)
    rate.observe(1.0, 10)  # one run stalled by a pause of the whole process
    assert rate.value == pytest.approx(0.1)  # fewer than 100 runs: the slowest counts
    for _ in range(157):
        rate.observe(0.010, 10)
    assert rate.value == pytest.approx(0.001)  # of 256, the 99th percentile is the third slowest
    rate.observe(0.030, 10)
    rate.observe(0.020, 10)  # slow runs that come back are what the estimate keeps
    assert rate.value == pytest.approx(0.002)


def test_the_quantile_must_be_a_share() -> None:
    for quantile in (0.0, 1.5):
        with pytest.raises(ValueError):
            SecondsPerUnit(quantile=quantile)
