"""What callers' feedback does to serving: per-entry thresholds under a bound on the false-hit rate.

A caller reports a served hit right or wrong (`Feedback`). Three things follow, in the spirit of vCache's
per-embedding thresholds (which ask an LLM for the labels; here the caller gives them):

- A pair reported wrong is never served again: that entry, for that normalised prompt (exact hits included).
- Each entry gets its own threshold. Reports are (similarity, right or wrong) observations of the entry's hits.
  For a threshold t, the reports at similarity >= t say how often hits served at t or above were wrong: k wrong
  of n. The entry's threshold is the lowest t whose false-hit rate is bounded by `max_false_hit_rate`:
  - at or above the server's threshold (the calibrated default, which stands until reports say otherwise),
    t is allowed when no report at or above it is wrong, or when the Wilson upper confidence bound of k / n is
    within the bound (many right reports can outweigh a wrong one);
  - below it, down to `floor_similarity`, only with evidence: reports at or above t whose Wilson upper bound is
    within the bound (with none wrong and a 5% bound at 95% confidence, about 50 right reports).
  So a wrong report at similarity s lifts the entry's threshold just above s, and right reports can bring it
  down again, never below the floor.
- An entry whose wrong reports reach `block_after` and whose wrong rate is confidently above the bound (the
  Wilson lower bound of wrong / reported exceeds it) is served to no paraphrase at all; exact hits still are.

Pure functions of an entry's reports: no I/O, no state of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from cachesvc.records import EntryFeedback

# Thresholds are set this far above a wrong report's similarity and below a right one's: the same pair's cosine
# differs by about 1e-7 between the index's search and a direct float32 dot product.
_MARGIN = 1e-5


@dataclass(frozen=True, kw_only=True)
class FeedbackOptions:
    """How feedback moves thresholds.

    Attributes:
        max_false_hit_rate: the bound on an entry's rate of wrong hits, in (0, 1).
        confidence: of the Wilson bounds, in (0.5, 1).
        floor_similarity: the lowest an entry's threshold can fall on right reports.
        block_after: wrong reports after which an entry with a confidently high wrong rate serves no paraphrase.
    """

    max_false_hit_rate: float = 0.05
    confidence: float = 0.95
    floor_similarity: float = 0.80
    block_after: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.max_false_hit_rate < 1.0:
            raise ValueError("max_false_hit_rate must be in (0, 1)")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError("confidence must be in (0.5, 1)")
        if not 0.0 <= self.floor_similarity <= 1.0:
            raise ValueError("floor_similarity must be in [0, 1]")
        if self.block_after < 1:
            raise ValueError("block_after must be >= 1")

    @property
    def z(self) -> float:
        """One-sided normal quantile of the confidence."""
        return NormalDist().inv_cdf(self.confidence)


def wilson_upper(wrong: int, n: int, z: float) -> float:
    """Upper Wilson score bound of the rate wrong / n (1.0 with no observations)."""
    if n == 0:
        return 1.0
    p = wrong / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def wilson_lower(wrong: int, n: int, z: float) -> float:
    """Lower Wilson score bound of the rate wrong / n (0.0 with no observations)."""
    if n == 0:
        return 0.0
    p = wrong / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def entry_threshold(feedback: EntryFeedback | None, *, base: float, options: FeedbackOptions,
                    relax: bool = True) -> float:
    """The similarity a paraphrase needs to be served from an entry with these reports.

    Args:
        base: the threshold without feedback (the request's, else the server's).
        relax: whether right reports may bring the threshold below `base` (not when the caller set it).

    Returns:
        a threshold in [min(base, floor), 1 + a little]: above 1, nothing but an exact hit is served.
    """
    if feedback is None or not feedback.reports:
        return base
    bound, z = options.max_false_hit_rate, options.z
    reports = sorted(feedback.reports, key=lambda r: r.similarity, reverse=True)
    # Candidate thresholds, highest first: just below each report's similarity (the report counts there) and just
    # above each wrong one's (it does not). Walking down, k and n are the reports at or above the candidate.
    candidates = sorted({base, *(r.similarity - _MARGIN for r in reports),
                         *(r.similarity + _MARGIN for r in reports if not r.correct)}, reverse=True)
    floor = min(base, options.floor_similarity) if relax else base
    # Just above the highest wrong report is always allowed (nothing wrong at or above it): the worst case.
    best = max([base, *(r.similarity + _MARGIN for r in reports if not r.correct)])
    i = wrong = n = 0
    for t in candidates:
        while i < len(reports) and reports[i].similarity >= t:
            wrong += not reports[i].correct
            n += 1
            i += 1
        if t < floor:
            break
        bounded = wilson_upper(wrong, n, z) <= bound
        if (t >= base and (wrong == 0 or bounded)) or (t < base and n > 0 and bounded):
            best = min(best, t)
    return best


def serves_paraphrases(feedback: EntryFeedback | None, options: FeedbackOptions) -> bool:
    """False once the entry has been reported wrong often enough, and at a rate confidently above the bound."""
    if feedback is None or feedback.wrong < options.block_after:
        return True
    return wilson_lower(feedback.wrong, feedback.wrong + feedback.right, options.z) <= options.max_false_hit_rate


def pair_blocked(feedback: EntryFeedback | None, prompt: str) -> bool:
    """The entry was reported wrong for this normalised prompt."""
    return feedback is not None and prompt in feedback.wrong_prompts
