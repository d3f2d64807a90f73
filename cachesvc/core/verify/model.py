"""The learned verifier: boosted trees over pair features, read from `verifier_weights.npz`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cachesvc.core.verify.lexical import Idf, lexical_features
from cachesvc.core.verify.protocol import RejectReason, Verdict, VerifyInput
from cachesvc.core.verify.signals import Signals, signals_between
from cachesvc.core.verify.text import Analyses, Text

WEIGHTS_FILE = Path(__file__).parent.parent / "verifier_weights.npz"


def features(
    query_vector: NDArray[np.float32], candidate_vector: NDArray[np.float32], similarity: float, s: Signals,
    lexical: NDArray[np.float32], topic: NDArray[np.float32],
) -> NDArray[np.float32]:
    """The model's input, shared by serving and `bench/train_verifier.py`: cosine, summaries of |u-v| and u*v
    (L1 distance, largest coordinate gap, largest and smallest product), the text signals, the lexical features
    and the pair's topic (its mean vector projected on the train split's top principal components; none in the
    shipped model).

    The full 768 coordinates of |u-v| and u*v, and learned projections of the vectors, overfit on out-of-fold QQP
    train predictions. The topic raises QQP precision because how often near pairs are the same question varies by
    subject, but that is a prior about one traffic and it costs recall elsewhere: only for verifiers trained on a
    user's own pairs.
    """
    u = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    v = np.asarray(candidate_vector, dtype=np.float32).reshape(-1)
    gap, product = np.abs(u - v), u * v
    head = np.array([similarity, gap.sum(), gap.max(), product.max(), product.min()], dtype=np.float32)
    return np.concatenate([head, s.as_array(), lexical, topic])


@dataclass(frozen=True)
class ModelWeights:
    """Boosted trees over `features`, stored as complete binary trees of one depth so that all trees are walked
    together with a few numpy gathers (a short leaf repeats its value down to the common depth).

    Attributes:
        feature, threshold: (trees, 2**depth - 1) split feature and threshold of each inner node, heap order;
            `x[feature] <= threshold` goes left.
        leaf: (trees, 2**depth) leaf values (log-odds, learning rate applied).
        bias: the log-odds before any tree.
        idf: the lexical features' word weights.
        topic_mean, topic_axes: the topic projection, (dim,) and (k, dim).
        accept_threshold: the probability a candidate needs to be served.
        embedding_model: the name of the embedding model whose vectors the model was trained on (its manifest's
            `name`); its features mean nothing for another model's vectors.
        dimension: that model's vector dimension.
    """

    feature: NDArray[np.intp]
    threshold: NDArray[np.float32]
    leaf: NDArray[np.float32]
    bias: float
    idf: Idf
    topic_mean: NDArray[np.float32]
    topic_axes: NDArray[np.float32]
    accept_threshold: float
    embedding_model: str
    dimension: int

    @classmethod
    def load(cls, path: Path = WEIGHTS_FILE) -> ModelWeights:
        """Reads weights written by `bench/train_verifier.py`.

        Raises:
            OSError: the file cannot be read.
            KeyError: an array is missing.
            ValueError: the arrays do not fit together.
        """
        with np.load(path, allow_pickle=False) as data:
            words = bytes(np.asarray(data["idf_words"], dtype=np.uint8)).decode("utf-8").split("\n")
            idf_values = np.asarray(data["idf_values"], dtype=np.float64).tolist()
            if len(words) != len(idf_values):
                raise ValueError("idf_words and idf_values differ in length")
            weights = cls(
                feature=np.asarray(data["feature"], dtype=np.intp),
                threshold=np.asarray(data["threshold"], dtype=np.float32),
                leaf=np.asarray(data["leaf"], dtype=np.float32),
                bias=float(data["bias"]),
                idf=Idf(dict(zip(words, idf_values, strict=True)), float(data["idf_unknown"])),
                topic_mean=np.asarray(data["topic_mean"], dtype=np.float32),
                topic_axes=np.asarray(data["topic_axes"], dtype=np.float32),
                accept_threshold=float(data["accept_threshold"]),
                embedding_model=str(data["embedding_model"]),
                dimension=int(data["dimension"]),
            )
        if weights.leaf.shape[1] != weights.feature.shape[1] + 1 or weights.feature.shape != weights.threshold.shape:
            raise ValueError("tree arrays do not fit together")
        return weights

    @property
    def depth(self) -> int:
        return int(self.leaf.shape[1]).bit_length() - 1

    def topic(self, query_vector: NDArray[np.float32], candidate_vector: NDArray[np.float32]) -> NDArray[np.float32]:
        mean = (np.asarray(query_vector, dtype=np.float32) + np.asarray(candidate_vector, dtype=np.float32)) / 2
        return np.asarray(self.topic_axes @ (mean.reshape(-1) - self.topic_mean), dtype=np.float32)

    @cached_property
    def _flat(self) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32], NDArray[np.intp],
                             NDArray[np.float32]]:
        """The trees as flat arrays with each tree's offset: `take` on them is faster than 2-D fancy indexing."""
        trees, inner = self.feature.shape
        return (np.arange(trees, dtype=np.intp) * inner, np.ascontiguousarray(self.feature).ravel(),
                np.ascontiguousarray(self.threshold).ravel(), np.arange(trees, dtype=np.intp) * (inner + 1) - inner,
                np.ascontiguousarray(self.leaf).ravel())

    def probability(self, x: NDArray[np.float32]) -> float:
        """P(right answer) for one feature vector: every tree walked at once, one level per step."""
        inner_base, feature, threshold, leaf_base, leaf = self._flat
        node = np.zeros(len(inner_base), dtype=np.intp)
        for _ in range(self.depth):
            at = inner_base + node
            node = 2 * node + 1 + (x.take(feature.take(at)) > threshold.take(at))
        logit = self.bias + float(leaf.take(leaf_base + node).sum())
        return 1.0 / (1.0 + math.exp(-min(max(logit, -30.0), 30.0)))


class ModelVerifier:
    """Accepts a candidate when the learned model's probability reaches its shipped threshold."""

    def __init__(self, weights: ModelWeights, *, accept_threshold: float | None = None) -> None:
        self._weights = weights
        self._threshold = weights.accept_threshold if accept_threshold is None else accept_threshold
        self._analyses = Analyses()

    @property
    def threshold(self) -> float:
        return self._threshold

    def signals(self, item: VerifyInput) -> tuple[Text, Text, Signals]:
        """The two texts' analyses and the rule signals between them."""
        q, c = self._analyses(item.query), self._analyses(item.candidate)
        return q, c, signals_between(q, c)

    def features(self, item: VerifyInput, analysed: tuple[Text, Text, Signals] | None = None,
                 ) -> NDArray[np.float32]:
        """The model's input for one candidate (`analysed`: `signals(item)`, if known)."""
        q, c, s = self.signals(item) if analysed is None else analysed
        lexical = lexical_features(q, c, self._weights.idf)
        topic = self._weights.topic(item.query_vector, item.candidate_vector)
        return features(item.query_vector, item.candidate_vector, item.similarity, s, lexical, topic)

    def probability(self, x: NDArray[np.float32]) -> float:
        return self._weights.probability(x)

    def verify(self, item: VerifyInput) -> Verdict:
        return self.decide(self.probability(self.features(item)))

    def decide(self, p: float) -> Verdict:
        if p >= self._threshold:
            return Verdict(accepted=True, reason=None, score=p)
        return Verdict(accepted=False, reason=RejectReason.MODEL_SCORE, score=p)
