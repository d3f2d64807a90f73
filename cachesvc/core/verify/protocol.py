"""The hit verifier's seam: what a verifier is given, what it answers, and the modes a server can run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class VerifierMode(StrEnum):
    """Which verifier a server runs (`--verifier`)."""

    OFF = "off"
    RULES = "rules"
    MODEL = "model"
    COMBINED = "combined"


class RejectReason(Enum):
    """Why a verifier rejected a candidate. Values are the wire names (lower case)."""

    NEGATION = "negation"
    NUMBER = "number"
    UNIT = "unit"
    ENTITY = "entity"
    DIRECTION = "direction"
    OPPOSITE = "opposite"  # antonyms and comparatives: more/less, buy/sell, best/worst
    MODEL_SCORE = "model_score"
    DETAIL = "detail"  # long prompts that differ in more than form: an added instruction, other numbers or names
    FEEDBACK = "feedback"  # callers reported the entry wrong for this prompt, or at this similarity


@dataclass(frozen=True, kw_only=True)
class VerifyInput:
    """One candidate to verify.

    Attributes:
        query: the lookup's normalised prompt.
        candidate: the candidate entry's normalised prompt.
        query_vector: the lookup's L2-normalised embedding.
        candidate_vector: the candidate's stored embedding.
        similarity: their cosine similarity, in [0, 1].
    """

    query: str
    candidate: str
    query_vector: NDArray[np.float32]
    candidate_vector: NDArray[np.float32]
    similarity: float


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """A verifier's decision.

    Attributes:
        accepted: serve the candidate.
        reason: why it was rejected (None when accepted).
        score: the verifier's confidence that the candidate is a right answer, in [0, 1] (rules: 1 or 0).
    """

    accepted: bool
    reason: RejectReason | None
    score: float


ACCEPT = Verdict(accepted=True, reason=None, score=1.0)


class HitVerifier(Protocol):
    def verify(self, item: VerifyInput) -> Verdict:
        """Accepts or rejects one candidate; must be cheap (it runs on the lookup path) and never raise."""
        ...
