"""The calibration math on small hand-computed examples."""

from __future__ import annotations

import math

import pytest

from cachesvc.calibrate import (
    Criterion,
    Observation,
    choose_threshold,
    nearest_point,
    served,
    stream_point,
    sweep,
    thresholds_grid,
    wilson,
)


def obs(similarity: float, positive: bool, right: bool | None = None, candidate: bool = True) -> Observation:
    return Observation(similarity=similarity, positive=positive, right=positive if right is None else right,
                       candidate=candidate)


# Five queries, hand-scored below: sims 0.95+, 0.90+, 0.85-, 0.80+, 0.50- (+ = label 1).
FIVE = [obs(0.95, True), obs(0.90, True), obs(0.85, False), obs(0.80, True), obs(0.50, False)]


class TestWilson:
    @pytest.mark.parametrize(
        ("successes", "trials", "low", "high"),
        [
            (0, 10, 0.0, 0.2775),  # textbook values (Wilson 1927; Newcombe 1998, table I)
            (5, 10, 0.2366, 0.7634),
            (10, 10, 0.7225, 1.0),
            (1, 1, 0.2065, 1.0),
            (81, 263, 0.2553, 0.3662),  # Newcombe's 81/263 example
        ],
    )
    def test_known_values(self, successes: int, trials: int, low: float, high: float) -> None:
        rate = wilson(successes, trials)
        assert rate.value == pytest.approx(successes / trials)
        assert rate.low == pytest.approx(low, abs=1e-4)
        assert rate.high == pytest.approx(high, abs=1e-4)

    def test_no_trials_is_undefined_with_the_whole_interval(self) -> None:
        rate = wilson(0, 0)
        assert rate.value is None and (rate.low, rate.high) == (0.0, 1.0)

    def test_symmetric(self) -> None:
        a, b = wilson(3, 20), wilson(17, 20)
        assert a.low == pytest.approx(1 - b.high) and a.high == pytest.approx(1 - b.low)

    @pytest.mark.parametrize(("successes", "trials"), [(-1, 5), (6, 5), (0, -1)])
    def test_rejects_impossible_counts(self, successes: int, trials: int) -> None:
        with pytest.raises(ValueError):
            wilson(successes, trials)


class TestSweep:
    def test_hand_computed_counts(self) -> None:
        points = {p.threshold: p for p in sweep(FIVE, [0.0, 0.8, 0.85, 0.9, 1.0], bootstrap=0)}
        p0 = points[0.0]
        assert (p0.hits, p0.true_hits, p0.false_hits) == (5, 3, 2)
        assert p0.precision.value == pytest.approx(3 / 5)
        assert p0.recall.value == 1.0 and p0.false_hit_rate.value == 1.0 and p0.hit_rate.value == 1.0
        assert p0.f1 == pytest.approx(2 * 0.6 / 1.6)

        p80 = points[0.8]  # hits 0.95, 0.90, 0.85(-), 0.80
        assert (p80.hits, p80.true_hits, p80.false_hits) == (4, 3, 1)
        assert p80.precision.value == pytest.approx(0.75)
        assert p80.false_hit_rate.value == pytest.approx(0.5)

        p90 = points[0.9]
        assert (p90.hits, p90.true_hits) == (2, 2)
        assert p90.precision.value == 1.0 and p90.recall.value == pytest.approx(2 / 3)
        assert p90.false_hit_rate.value == 0.0
        assert p90.f1 == pytest.approx(0.8)

        p100 = points[1.0]
        assert p100.hits == 0 and p100.precision.value is None
        assert p100.recall.value == 0.0 and p100.f1 == 0.0

    def test_similarity_equal_to_threshold_is_served(self) -> None:
        # 0.8 is not exact in binary; the server compares float32 values, and so does the sweep.
        assert served(0.8, 0.8) and served(0.80000001, 0.8) and not served(0.79, 0.8)
        (point,) = sweep([obs(0.8, True)], [0.8], bootstrap=0)
        assert point.hits == 1

    def test_no_candidate_is_a_miss_even_at_zero(self) -> None:
        (point,) = sweep([obs(0.0, False, candidate=False), obs(0.0, True)], [0.0], bootstrap=0)
        assert point.hits == 1 and point.recall.value == 1.0 and point.false_hit_rate.value == 0.0

    def test_shared_scope_wrong_candidate_for_a_positive_costs_precision_not_false_hit_rate(self) -> None:
        # A positive query whose nearest entry is another pair's (wrong) text, and a negative query that found
        # a right text of another pair.
        (point,) = sweep([obs(0.9, True, right=False), obs(0.9, False, right=True)], [0.5], bootstrap=0)
        assert point.precision.value == 0.5
        assert point.recall.value == 0.0  # the positive was served a wrong answer
        assert point.false_hit_rate.value == 0.0  # the negative was served a right one

    def test_recall_at_threshold_zero_is_one_per_pair(self) -> None:
        points = sweep(FIVE, thresholds_grid(0.05), bootstrap=0)
        assert points[0].threshold == 0.0 and points[0].recall.value == 1.0
        assert points[-1].threshold == 1.0
        recalls = [p.recall.value for p in points]
        assert recalls == sorted(recalls, reverse=True)  # recall never rises with the threshold

    def test_f1_interval_brackets_the_estimate_and_repeats_with_the_seed(self) -> None:
        many = FIVE * 20
        first = sweep(many, [0.8], bootstrap=300, seed=7)[0]
        again = sweep(many, [0.8], bootstrap=300, seed=7)[0]
        assert first.f1 is not None and first.f1_low is not None and first.f1_high is not None
        assert first.f1_low <= first.f1 <= first.f1_high
        assert (first.f1_low, first.f1_high) == (again.f1_low, again.f1_high)

    def test_perfect_separation_has_a_degenerate_f1_interval(self) -> None:
        data = [obs(0.95, True)] * 10 + [obs(0.3, False)] * 10
        (point,) = sweep(data, [0.5], bootstrap=100)
        assert point.f1 == 1.0 and point.f1_low == 1.0 and point.f1_high == 1.0

    def test_no_positives_leaves_recall_and_f1_undefined(self) -> None:
        (point,) = sweep([obs(0.9, False)], [0.5])
        assert point.recall.value is None and point.f1 is None and point.f1_low is None

    def test_empty_input(self) -> None:
        (point,) = sweep([], [0.5])
        assert point.queries == 0 and point.hits == 0 and point.precision.value is None

    @pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan])
    def test_rejects_thresholds_outside_unit_interval(self, bad: float) -> None:
        with pytest.raises(ValueError):
            sweep(FIVE, [bad])


class TestChooseThreshold:
    def test_point_estimate_picks_lowest_threshold_reaching_target(self) -> None:
        points = sweep(FIVE, thresholds_grid(0.01), bootstrap=0)
        choice = choose_threshold(points, 0.75, criterion=Criterion.POINT)
        assert choice.point is not None and choice.point.threshold == 0.51  # 0.85- and 0.50- both served at 0.50
        assert choice.point.precision.value == pytest.approx(0.75)
        strict = choose_threshold(points, 1.0, criterion=Criterion.POINT)
        assert strict.point is not None and strict.point.threshold == 0.86

    def test_lower_bound_is_stricter_and_unreachable_on_small_data(self) -> None:
        points = sweep(FIVE, thresholds_grid(0.01), bootstrap=0)
        choice = choose_threshold(points, 0.75)
        assert choice.criterion is Criterion.LOWER_BOUND
        assert choice.point is None and not choice.reached
        assert choice.best_precision == 1.0
        assert choice.best_precision_low == pytest.approx(wilson(2, 2).low)  # 2 of 2 at 0.86-0.90
        message = choice.describe()
        assert "not reachable" in message and "lower confidence bound" in message

    def test_lower_bound_reached_with_enough_data(self) -> None:
        data = [obs(0.95, True)] * 200 + [obs(0.85, True)] * 100 + [obs(0.84, False)] * 100
        points = sweep(data, thresholds_grid(0.01), bootstrap=0)
        choice = choose_threshold(points, 0.95)
        assert choice.point is not None and choice.point.threshold == 0.85
        assert choice.point.precision.low >= 0.95 and choice.point.recall.value == 1.0
        text = choice.describe()
        assert "threshold 0.850" in text and "95% lower confidence bound" in text and "gives up 0.0%" in text

    def test_ties_go_to_the_lowest_threshold(self) -> None:
        # Every threshold in (0.50, 0.90] has the same outcome; the lowest of them wins.
        data = [obs(0.9, True)] * 50 + [obs(0.5, False)] * 50
        points = sweep(data, [0.9, 0.7, 0.6, 0.51, 0.5], bootstrap=0)  # any order
        choice = choose_threshold(points, 0.9)
        assert choice.point is not None and choice.point.threshold == 0.51

    def test_thresholds_without_hits_never_qualify(self) -> None:
        points = sweep([obs(0.6, False)], [0.5, 0.7, 1.0], bootstrap=0)
        assert choose_threshold(points, 0.01, criterion=Criterion.POINT).point is None
        assert choose_threshold([], 0.5).point is None

    @pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, math.nan])
    def test_rejects_targets_outside_unit_interval(self, bad: float) -> None:
        with pytest.raises(ValueError):
            choose_threshold(sweep(FIVE, [0.5]), bad)


def test_thresholds_grid() -> None:
    assert thresholds_grid(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    grid = thresholds_grid(0.01)
    assert len(grid) == 101 and grid[37] == 0.37 and grid[-1] == 1.0
    with pytest.raises(ValueError):
        thresholds_grid(0.0)


def test_nearest_point() -> None:
    points = sweep(FIVE, [0.75, 0.25, 0.5], bootstrap=0)
    assert nearest_point(points, 0.7).threshold == 0.75
    assert nearest_point(points, 0.375).threshold == 0.25  # a tie (exact in binary) goes to the lower threshold
    with pytest.raises(ValueError):
        nearest_point([], 0.5)


def test_stream_point() -> None:
    outcomes = [(False, False), (True, True), (True, False), (False, False)]
    point = stream_point(0.8, outcomes, repeats=3)
    assert (point.queries, point.hits, point.right_hits) == (4, 2, 1)
    assert point.hit_rate.value == 0.5 and point.precision.value == 0.5 and point.right_hit_rate.value == 0.25
    assert point.repeat_rate.value == 0.75
    with pytest.raises(ValueError):
        stream_point(0.8, [(False, True)], repeats=0)


def test_observation_without_candidate_cannot_be_right() -> None:
    with pytest.raises(ValueError):
        Observation(similarity=0.0, positive=True, right=True, candidate=False)
