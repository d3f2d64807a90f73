"""Composition: rules then model, and the verifier a server runs for a mode."""

from __future__ import annotations

from pathlib import Path

from cachesvc.core.verify.detail import is_long
from cachesvc.core.verify.model import WEIGHTS_FILE, ModelVerifier, ModelWeights
from cachesvc.core.verify.protocol import ACCEPT, HitVerifier, Verdict, VerifierMode, VerifyInput
from cachesvc.core.verify.rules import RuleVerifier, rules_reason
from cachesvc.errors import ModelError


class CombinedVerifier:
    """Rules first (a hard veto, score 0), then the model on what they let through; long prompts that differ in
    form only are accepted without the model (it was trained on short questions)."""

    def __init__(self, model: ModelVerifier) -> None:
        self._model = model

    def verify(self, item: VerifyInput) -> Verdict:
        analysed = self._model.signals(item)
        reason = rules_reason(*analysed)
        if reason is not None:  # vetoed before the model's features are computed
            return Verdict(accepted=False, reason=reason, score=0.0)
        if is_long(analysed[0], analysed[1]):
            return ACCEPT
        return self._model.decide(self._model.probability(self._model.features(item, analysed)))


def build_verifier(mode: VerifierMode, *, embedding_model: str | None = None, dimension: int | None = None,
                   weights_path: Path = WEIGHTS_FILE, min_score: float | None = None) -> HitVerifier | None:
    """The verifier for `mode` (None for OFF), for a server embedding with `embedding_model` (a manifest name; None
    = the one the weights were trained on); `min_score` is the model's probability a candidate needs (None = the
    one the weights record).

    Raises:
        ModelError: `model` or `combined` with an embedding model the weights were not trained on. Their features
            mean nothing for another model's vectors, and falling back to the rules alone at the verifier's low
            default threshold would quietly serve more wrong answers: the operator chooses.
        OSError, KeyError, ValueError: the model's weights cannot be read (modes MODEL and COMBINED).
    """
    mode = VerifierMode(mode)  # a plain string from a test or a caller that built Settings by hand
    if mode is VerifierMode.OFF:
        return None
    if mode is VerifierMode.RULES:
        return RuleVerifier()
    weights = ModelWeights.load(weights_path)
    matches = (embedding_model is None or embedding_model == weights.embedding_model) and (
        dimension is None or dimension == weights.dimension)
    if not matches:
        raise ModelError(
            f"the hit verifier's model ({weights_path.name}) was trained on {weights.embedding_model} "
            f"({weights.dimension}-d) vectors, and this server embeds with {embedding_model} ({dimension}-d): train "
            "one for this model (bench/train_verifier.py, then --verifier-weights), or choose --verifier rules or off")
    model = ModelVerifier(weights, accept_threshold=min_score)
    return model if mode is VerifierMode.MODEL else CombinedVerifier(model)
