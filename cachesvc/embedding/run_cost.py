"""What a model run will cost: a prompt's cost from its length, and seconds per unit of cost from recent runs.

The model's time grows with a text's tokens, up to the model's input limit (the embedder truncates there), plus a
fixed part per text and one per run. Prompts mix a few words with pages of text (256 tokens take ~17x as long as 8
alone), so a count of prompts misjudges both the work queued ahead and how long a run will take. Tokens are
estimated from UTF-8 bytes without tokenizing on the event loop: a steady bias in the estimate is absorbed by the
measured seconds per unit; only the ratio between prompts matters.
"""

from __future__ import annotations

import collections
import heapq
import math

BYTES_PER_TOKEN = 4  # English through a WordPiece vocabulary (ShareGPT prompts: median 4.1, p10 2.8, p90 5.0)
SPECIAL_TOKENS = 2  # [CLS] and [SEP]
# What a text costs beyond its tokens, in tokens: alone in a run, an 8-token text takes about as long as a
# 16-token one takes per text in a batch (bench/RESULTS.md, "Overload: a cost model per prompt").
PER_TEXT_COST = 6
# What a run costs beyond its texts, in tokens: a run has a fixed part too (a short question alone takes 5.1 ms,
# 3.7-3.8 ms each in runs of 4-8: ~1.5-2 ms per run, ~7 tokens' worth; bench/RESULTS.md, "Lookup overhead, fourth
# round"). Counted once per run, so that lone and batched runs give the same seconds per unit: counted per text,
# a queue that will run in a few batches was judged at the pace of lone prompts.
PER_RUN_COST = 7


def run_cost(texts_cost: int) -> int:
    """A run's cost in units: its texts' costs and the run's own fixed part."""
    return texts_cost + PER_RUN_COST


def text_cost(text: str, *, max_tokens: int) -> int:
    """A text's cost in units (about one token each), from its length."""
    tokens = -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN) + SPECIAL_TOKENS
    return min(tokens, max_tokens) + PER_TEXT_COST


class SecondsPerUnit:
    """Seconds per unit of cost: a quantile of the last `window` runs, not a mean (the batcher keeps a high one
    for deadlines and the median for sizing runs and judging waits).

    Runs slowed by CPU contention (the model's threads compete with the event loop, gRPC and other processes) raise
    a high quantile within a few runs (three once the window is full, the first one before), where a mean would lag
    behind and let runs overshoot their callers' deadlines. The quantile is taken over many runs so that the estimate
    covers the slow runs that come back every few seconds under overload (when it also sized runs, with the slowest
    of only the last 16, 3-4% of accepted lookups outran the budget plus one run; bench/RESULTS.md), yet one freak
    run (a pause of the whole process) is not what the next 256 are judged by.
    Until `window` runs are seen the quantile covers fewer; below 1 / (1 - quantile) runs it is the slowest. 0
    until the first run.
    """

    def __init__(self, *, window: int = 256, quantile: float = 0.99) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if not 0.0 < quantile <= 1.0:
            raise ValueError("quantile must lie in (0, 1]")
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._quantile = quantile
        self._value = 0.0

    def observe(self, seconds: float, units: int) -> None:
        if units > 0:
            self._recent.append(max(seconds, 0.0) / units)
            # Nearest rank: the k-th largest, k = n - ceil(q * n) + 1. Computed here, once per run, because
            # `value` is read for every prompt that arrives.
            n = len(self._recent)
            k = n - math.ceil(self._quantile * n - 1e-9) + 1
            self._value = heapq.nlargest(k, self._recent)[-1]

    @property
    def value(self) -> float:
        return self._value
