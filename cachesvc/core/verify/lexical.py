"""The model's lexical features: word overlap weighted by rarity, bigrams, common runs, question kinds, lengths."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cachesvc.core.verify.text import KIND_COUNT, Text

_RARE_IDF = 7.0  # a word in about 1 of 150 train-split texts, or rarer
_IDF_SUM_CAP = 40.0
LEXICAL_COUNT = 15 + 2 * KIND_COUNT


def _common_run(a: Iterable[str], b: Iterable[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Idf:
    """Inverse document frequency of lower-cased tokens over the train split's texts; unseen words get `unknown`."""

    weights: dict[str, float]
    unknown: float

    def __call__(self, word: str) -> float:
        return self.weights.get(word, self.unknown)


def lexical_features(q: Text, c: Text, idf: Idf) -> NDArray[np.float32]:
    """Word-overlap features weighted by rarity: a shared rare word ("Gobi") says more than a shared common one
    ("country"), and a rare word only one text has usually means a different question."""
    shared, union = q.token_set & c.token_set, q.token_set | c.token_set
    # fsum: exact, so the result does not depend on the sets' iteration order (the string hash seed).
    idf_jaccard = math.fsum(idf(w) for w in shared) / max(math.fsum(idf(w) for w in union), 1e-6)
    q_stems, c_stems = q.stems, c.stems
    only_q = [q_stems[k] for k in q_stems.keys() - c_stems.keys()]
    only_c = [c_stems[k] for k in c_stems.keys() - q_stems.keys()]
    both = [q_stems[k] for k in q_stems.keys() & c_stems.keys()]
    sum_q, sum_c, sum_both = (math.fsum(idf(w) for w in words) for words in (only_q, only_c, both))
    idf_content_jaccard = sum_both / max(sum_both + sum_q + sum_c, 1e-6) if q_stems or c_stems else 1.0
    max_q = max((idf(w) for w in only_q), default=0.0)
    max_c = max((idf(w) for w in only_c), default=0.0)
    stem_union = len(q_stems.keys() | c_stems.keys())
    q_bigrams, c_bigrams = q.bigrams, c.bigrams
    n_q, n_c = len(q.tokens), len(c.tokens)
    longest = max(n_q, n_c, 1)
    kinds = np.zeros(2 * KIND_COUNT, dtype=np.float32)
    kinds[q.question_kind] = 1.0
    kinds[KIND_COUNT + c.question_kind] = 1.0
    head = np.array([
        idf_jaccard, idf_content_jaccard, max(max_q, max_c), min(max_q, max_c), min(sum_q, _IDF_SUM_CAP),
        min(sum_c, _IDF_SUM_CAP), len(only_q) + len(only_c), sum(1 for w in only_q + only_c if idf(w) > _RARE_IDF),
        len(both) / max(stem_union, 1),
        len(q_bigrams & c_bigrams) / max(len(q_bigrams | c_bigrams), 1),
        _common_run(q.tokens, c.tokens) / longest, _common_run(reversed(q.tokens), reversed(c.tokens)) / longest,
        n_q, n_c, abs(n_q - n_c),
    ], dtype=np.float32)
    return np.concatenate([head, kinds])
