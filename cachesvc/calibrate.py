"""Threshold calibration math: sweep thresholds over recorded lookups, score them, choose one. No I/O.

The data comes from one lookup per query at threshold 0 (see `cachesvc.calibration_run`): the best live
candidate's similarity, and whether that candidate is a right answer for the query. The server serves the best
live candidate iff its similarity >= the threshold, so every threshold's outcome follows from that one record;
`served` does the comparison in float32, as the server sees both numbers on the wire.

Per threshold t, over the queries (an `Observation` each):
    hit            similarity >= t
    true hit       hit and the served candidate is a right answer
    false hit      hit and it is not
    precision      true hits / hits                      (how often a served answer is right)
    recall         true hits / positive queries          (positives: a right answer is in the cache)
    false-hit rate false hits on negatives / negatives   (negatives: no right answer is in the cache)
    hit rate       hits / queries
Precision, recall, false-hit rate and hit rate carry Wilson score 95% intervals; F1 = 2PR / (P + R) carries a
seeded percentile-bootstrap 95% interval (F1 is not a proportion, so Wilson does not apply).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile
DEFAULT_STEP = 0.01
DEFAULT_BOOTSTRAP = 200


@dataclass(frozen=True, kw_only=True)
class Rate:
    """A proportion with its Wilson score interval.

    Attributes:
        successes: The numerator.
        trials: The denominator.
        value: successes / trials, or None when there were no trials.
        low: Lower bound of the interval (0.0 when there were no trials).
        high: Upper bound of the interval (1.0 when there were no trials).
    """

    successes: int
    trials: int
    value: float | None
    low: float
    high: float


def wilson(successes: int, trials: int, *, z: float = Z95) -> Rate:
    """The Wilson score interval of a binomial proportion (95% by default).

    Args:
        successes: Number of successes, 0 <= successes <= trials.
        trials: Number of trials, >= 0.
        z: The standard normal quantile of the interval's level.

    Returns:
        The proportion and its interval; with no trials, value None and the interval [0, 1].

    Raises:
        ValueError: counts out of range.
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Rate(successes=0, trials=0, value=None, low=0.0, high=1.0)
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # Clamp float noise at the ends (x = 0 or x = n gives exactly 0 or 1 in exact arithmetic).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Rate(successes=successes, trials=trials, value=p, low=low, high=high)


def _f32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def served(similarity: float, threshold: float) -> bool:
    """Whether the server serves a best candidate of this similarity at this threshold.

    Both travel as float32 on the wire (`LookupResponse.similarity`, `LookupRequest.min_similarity`), so the
    comparison is made in float32 too: a similarity equal to the threshold is served.
    """
    return _f32(similarity) >= _f32(threshold)


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One query's lookup at threshold 0.

    Attributes:
        similarity: The best live candidate's cosine similarity.
        positive: A right answer for this query is in the cache (pairs: label 1).
        right: The best candidate is a right answer (in a scope of its own pair: the same as `positive`).
        candidate: There was a candidate at all (False: the scope was empty, a miss at every threshold).
    """

    similarity: float
    positive: bool
    right: bool
    candidate: bool = True

    def __post_init__(self) -> None:
        if self.right and not self.candidate:
            raise ValueError("an observation without a candidate cannot be right")


@dataclass(frozen=True, kw_only=True)
class ThresholdPoint:
    """The outcome of every query at one threshold."""

    threshold: float
    queries: int
    hits: int
    true_hits: int
    false_hits: int
    precision: Rate
    recall: Rate
    false_hit_rate: Rate
    hit_rate: Rate
    f1: float | None
    f1_low: float | None
    f1_high: float | None


def thresholds_grid(step: float = DEFAULT_STEP) -> list[float]:
    """Thresholds 0, step, 2 step, ..., 1 (rounded to 6 decimals so they print and compare cleanly).

    Raises:
        ValueError: step not in (0, 1].
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must lie in (0, 1], got {step}")
    count = round(1 / step)
    values = [round(i * step, 6) for i in range(count + 1) if i * step <= 1 + 1e-9]
    if values[-1] != 1.0:
        values.append(1.0)
    return values


def _f1(precision: float | None, recall: float | None) -> float | None:
    if recall is None:  # no positives: undefined
        return None
    if precision is None:  # no hits: nothing right was served
        return 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def sweep(
    observations: Sequence[Observation],
    thresholds: Iterable[float],
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> list[ThresholdPoint]:
    """Scores every threshold from one record per query.

    Args:
        observations: One per query.
        thresholds: Thresholds in [0, 1], in any order; the result follows the same order.
        bootstrap: Resamples for the F1 interval (0 leaves the F1 interval unset).
        seed: Seed of the bootstrap resampling, so runs repeat exactly.

    Returns:
        One point per threshold.

    Raises:
        ValueError: a threshold outside [0, 1].
    """
    levels = list(thresholds)
    for t in levels:
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold {t} is not in [0, 1]")
    n = len(observations)
    sims = np.array([_f32(o.similarity) for o in observations], dtype=np.float32)
    positive = np.array([o.positive for o in observations], dtype=bool)
    right = np.array([o.right for o in observations], dtype=bool)
    candidate = np.array([o.candidate for o in observations], dtype=bool)
    cut = np.array([_f32(t) for t in levels], dtype=np.float32)
    hit = (sims[:, None] >= cut[None, :]) & candidate[:, None]  # queries x thresholds
    true_hit = hit & right[:, None]
    false_hit = hit & ~right[:, None]
    negatives = int((~positive).sum())
    positives = int(positive.sum())

    f1_bounds: list[tuple[float | None, float | None]] = [(None, None)] * len(levels)
    if bootstrap > 0 and n > 0 and levels:
        f1_bounds = _bootstrap_f1(hit, true_hit, positive, bootstrap=bootstrap, seed=seed)

    points = []
    for j, t in enumerate(levels):
        hits = int(hit[:, j].sum())
        true_hits = int(true_hit[:, j].sum())
        precision = wilson(true_hits, hits)
        recall = wilson(int((true_hit[:, j] & positive).sum()), positives)
        points.append(ThresholdPoint(
            threshold=t, queries=n, hits=hits, true_hits=true_hits, false_hits=int(false_hit[:, j].sum()),
            precision=precision, recall=recall,
            false_hit_rate=wilson(int((false_hit[:, j] & ~positive).sum()), negatives),
            hit_rate=wilson(hits, n), f1=_f1(precision.value, recall.value),
            f1_low=f1_bounds[j][0], f1_high=f1_bounds[j][1],
        ))
    return points


def _bootstrap_f1(
    hit: np.ndarray, true_hit: np.ndarray, positive: np.ndarray, *, bootstrap: int, seed: int
) -> list[tuple[float | None, float | None]]:
    n = hit.shape[0]
    rng = np.random.default_rng(seed)
    # A resample is a vector of how often each query was drawn; counts are then weighted sums.
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)  # resamples x queries
    hits = weights @ hit.astype(np.float64)
    true_hits = weights @ true_hit.astype(np.float64)
    recalled = weights @ (true_hit & positive[:, None]).astype(np.float64)
    positives = weights @ positive.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = true_hits / hits
        recall = recalled / positives[:, None]
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1[hits == 0] = 0.0  # as in `_f1`: no hits, nothing right served
    f1[np.broadcast_to(positives[:, None] == 0, f1.shape)] = np.nan  # no positives: undefined
    bounds: list[tuple[float | None, float | None]] = []
    for j in range(hit.shape[1]):
        column = f1[:, j]
        column = column[~np.isnan(column)]  # resamples without positives have no F1
        if column.size == 0:
            bounds.append((None, None))
        else:
            bounds.append((float(np.percentile(column, 2.5)), float(np.percentile(column, 97.5))))
    return bounds


class Criterion(StrEnum):
    """How a threshold's precision is held against the target."""

    LOWER_BOUND = "lower-bound"  # the Wilson 95% lower bound must reach the target (the safe choice)
    POINT = "point"  # the point estimate must reach it


@dataclass(frozen=True, kw_only=True)
class Choice:
    """The outcome of `choose_threshold`.

    Attributes:
        target_precision: The precision asked for.
        criterion: Whether the lower confidence bound or the point estimate had to reach it.
        point: The lowest threshold that reached it, or None when none did.
        best_precision_low: The highest lower bound any threshold reached (to say how far off an unreachable
            target is).
        best_precision: The highest point precision any threshold reached.
    """

    target_precision: float
    criterion: Criterion
    point: ThresholdPoint | None
    best_precision_low: float
    best_precision: float | None

    @property
    def reached(self) -> bool:
        return self.point is not None

    def describe(self) -> str:
        """One paragraph for a terminal."""
        by = "its 95% lower confidence bound" if self.criterion is Criterion.LOWER_BOUND else "its point estimate"
        if self.point is None:
            best = "none" if self.best_precision is None else f"{self.best_precision:.3f}"
            return (f"target precision {self.target_precision:.3f} (by {by}): not reachable on this data; the best "
                    f"any threshold gave was {best} (lower bound {self.best_precision_low:.3f}). A static "
                    "threshold alone cannot get there: choose a lower target, or add a hit guard.")
        p = self.point
        assert p.precision.value is not None
        recall = "n/a" if p.recall.value is None else f"{p.recall.value:.3f}"
        given_up = "n/a" if p.recall.value is None else f"{1 - p.recall.value:.1%}"
        fhr = "n/a" if p.false_hit_rate.value is None else f"{p.false_hit_rate.value:.3f}"
        return (
            f"target precision {self.target_precision:.3f} (by {by}): threshold {p.threshold:.3f}\n"
            f"  precision {p.precision.value:.3f} [95% CI {p.precision.low:.3f}-{p.precision.high:.3f}] over "
            f"{p.hits} hits\n"
            f"  recall {recall} [{p.recall.low:.3f}-{p.recall.high:.3f}] (gives up {given_up} of the right "
            f"answers), hit rate {p.hit_rate.value or 0.0:.3f}, false-hit rate on negatives {fhr}"
        )


def choose_threshold(
    points: Sequence[ThresholdPoint], target_precision: float, *, criterion: Criterion = Criterion.LOWER_BOUND
) -> Choice:
    """The lowest threshold whose precision reaches the target.

    Taken literally: the lowest swept threshold that has at least one hit and whose precision (lower bound or
    point estimate, per `criterion`) is >= the target; higher thresholds are not required to reach it as well.
    Thresholds with equal outcomes tie; the lowest of them wins.

    Args:
        points: The sweep, in any order.
        target_precision: In (0, 1].
        criterion: Whether the Wilson 95% lower bound or the point estimate must reach the target.

    Returns:
        The choice; `point` is None when no threshold reaches the target.

    Raises:
        ValueError: a target outside (0, 1].
    """
    if math.isnan(target_precision) or not 0 < target_precision <= 1:
        raise ValueError(f"target precision {target_precision} is not in (0, 1]")
    ordered = sorted(points, key=lambda p: p.threshold)
    with_hits = [p for p in ordered if p.hits > 0]

    def score(p: ThresholdPoint) -> float:
        if criterion is Criterion.LOWER_BOUND:
            return p.precision.low
        assert p.precision.value is not None
        return p.precision.value

    chosen = next((p for p in with_hits if score(p) >= target_precision), None)
    values = [p.precision.value for p in with_hits if p.precision.value is not None]
    return Choice(
        target_precision=target_precision, criterion=criterion, point=chosen,
        best_precision_low=max((p.precision.low for p in with_hits), default=0.0),
        best_precision=max(values) if values else None,
    )


def nearest_point(points: Sequence[ThresholdPoint], threshold: float) -> ThresholdPoint:
    """The swept point closest to `threshold` (for table rows at a named threshold).

    Raises:
        ValueError: an empty sweep.
    """
    if not points:
        raise ValueError("empty sweep")
    return min(points, key=lambda p: (abs(p.threshold - threshold), p.threshold))


@dataclass(frozen=True, kw_only=True)
class StreamPoint:
    """A stream replay's outcome at one threshold (stored on miss, so each threshold is its own replay).

    Attributes:
        threshold: The threshold the server applied.
        queries: Lookups made.
        hit_rate: Hits / queries.
        precision: Right hits (the served entry came from a text of the same class) / hits.
        right_hit_rate: Right hits / queries.
        repeat_rate: Queries whose class had appeared earlier in the stream / queries: a ceiling for the
            right-hit rate of a cache that stores every text.
    """

    threshold: float
    queries: int
    hits: int
    right_hits: int
    hit_rate: Rate
    precision: Rate
    right_hit_rate: Rate
    repeat_rate: Rate


def stream_point(threshold: float, outcomes: Sequence[tuple[bool, bool]], repeats: int) -> StreamPoint:
    """Scores one threshold's replay.

    Args:
        threshold: The threshold of the replay.
        outcomes: Per query, (hit, right): right means the served entry's class equals the query's.
        repeats: How many of the queries had a class seen earlier in the stream.

    Raises:
        ValueError: a right miss, or repeats out of range.
    """
    if any(right and not hit for hit, right in outcomes):
        raise ValueError("a miss cannot be right")
    n = len(outcomes)
    hits = sum(1 for hit, _ in outcomes if hit)
    right_hits = sum(1 for _, right in outcomes if right)
    return StreamPoint(
        threshold=threshold, queries=n, hits=hits, right_hits=right_hits, hit_rate=wilson(hits, n),
        precision=wilson(right_hits, hits), right_hit_rate=wilson(right_hits, n), repeat_rate=wilson(repeats, n),
    )
