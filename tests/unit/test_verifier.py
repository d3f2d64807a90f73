"""The hit verifier's rules on hand-written pairs, its model file, and its place in CacheService's walk."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.verify import (
    LEXICAL_COUNT,
    SIGNAL_COUNT,
    WEIGHTS_FILE,
    CombinedVerifier,
    HitVerifier,
    ModelVerifier,
    ModelWeights,
    RejectReason,
    RuleVerifier,
    Verdict,
    VerifierMode,
    VerifyInput,
    build_verifier,
    signals,
)


def _input(query: str, candidate: str, similarity: float = 0.95) -> VerifyInput:
    u = np.zeros(384, dtype=np.float32)
    u[0] = 1.0
    return VerifyInput(query=normalize_prompt(query), candidate=normalize_prompt(candidate), query_vector=u,
                       candidate_vector=u, similarity=similarity)


def _reason(query: str, candidate: str) -> RejectReason | None:
    return RuleVerifier().verify(_input(query, candidate)).reason


@pytest.mark.parametrize(("query", "candidate", "reason"), [
    ("Don't cancel my subscription", "Cancel my subscription", RejectReason.NEGATION),
    ("Why doesn't my laptop charge?", "Why does my laptop charge?", RejectReason.NEGATION),
    ("Which foods contain no gluten?", "Which foods contain gluten?", RejectReason.NEGATION),
    ("What is 2 + 3?", "What is 2 + 2?", RejectReason.NUMBER),
    ("Best phones of 2016", "Best phones of 2015", RejectReason.NUMBER),
    ("How many calories are in three eggs?", "How many calories are in 2 eggs?", RejectReason.NUMBER),
    ("Is it cold in Chicago in January?", "Is it cold in Chicago in March?", RejectReason.NUMBER),
    ("How long does it take to run 5 km?", "How long does it take to run 5 miles?", RejectReason.UNIT),
    ("What is 30 degrees Celsius?", "What is 30 degrees Fahrenheit?", RejectReason.UNIT),
    ("How do I convert kg to litres?", "How do I convert litres to kilograms?", RejectReason.DIRECTION),
    ("Flights from New York to Los Angeles", "Flights from Los Angeles to New York", RejectReason.DIRECTION),
    ("Is Java faster than Python?", "Is Python faster than Java?", RejectReason.DIRECTION),
    ("How do I decrease my credit score?", "How do I increase my credit score?", RejectReason.OPPOSITE),
    ("What is the best time to sell a car?", "What is the best time to buy a car?", RejectReason.OPPOSITE),
    ("What is the capital of Germany?", "What is the capital of France?", RejectReason.ENTITY),
    ("When was George Washington born?", "When was Abraham Lincoln born?", RejectReason.ENTITY),
])
def test_rules_reject_what_the_embedding_blurs(query: str, candidate: str, reason: RejectReason) -> None:
    assert _reason(query, candidate) is reason


@pytest.mark.parametrize(("query", "candidate"), [
    ("How can I cancel my subscription?", "How do I cancel my subscription?"),
    ("Why does my laptop not charge when it is plugged in?", "Why doesn't my laptop charge when plugged in?"),
    ("what is 2+2", "What is 2 + 2?"),
    ("How long does it take to run 5 kilometers?", "How long does it take to run 5 km?"),
    ("How many liters of water should I drink per day?", "How many litres of water should I drink a day?"),
    ("How can I translate from English to Spanish?", "How do I translate English to Spanish?"),
    ("What's the capital city of France?", "What is the capital of France?"),
    ("How can I raise my credit score?", "How do I increase my credit score?"),
    ("Is tap water in Lisbon safe to drink?", "Is it safe to drink tap water in Lisbon?"),
    ("How do I get from London to Paris?", "How do I travel from London to Paris?"),
])
def test_rules_accept_paraphrases(query: str, candidate: str) -> None:
    assert _reason(query, candidate) is None


def test_rules_ignore_mismatches_between_otherwise_different_texts() -> None:
    # Many words differ besides the negation cue: a rewording, left to the model.
    assert _reason("What should I do if my dog is vomiting yellow bile and not eating?",
                   "Why is my dog throwing up yellow bile? What should I do?") is None


def test_signals_are_symmetric_for_swaps() -> None:
    a, b = "Convert 100 USD to EUR", "Convert 100 EUR to USD"
    assert signals(a, b).direction == signals(b, a).direction == 1.0


def test_shipped_weights_load_and_score_in_range() -> None:
    weights = ModelWeights.load(WEIGHTS_FILE)
    assert WEIGHTS_FILE.stat().st_size < 2_000_000
    assert 0.0 < weights.accept_threshold < 1.0
    rng = np.random.default_rng(0)
    u = rng.standard_normal(384).astype(np.float32)
    u /= np.linalg.norm(u)
    item = VerifyInput(query="How do I cancel my plan?", candidate="How can I cancel my plan?", query_vector=u,
                       candidate_vector=u, similarity=1.0)
    verdict = ModelVerifier(weights).verify(item)
    assert 0.0 <= verdict.score <= 1.0
    assert verdict.accepted == (verdict.reason is None)


def test_model_input_matches_the_shipped_trees() -> None:
    weights = ModelWeights.load()
    rng = np.random.default_rng(1)
    u = rng.standard_normal(384).astype(np.float32)
    u /= np.linalg.norm(u)
    item = VerifyInput(query="Why is the Gobi desert so cold?", candidate="Why is the Thar desert so hot?",
                       query_vector=u, candidate_vector=u, similarity=0.9)
    x = ModelVerifier(weights).features(item)
    assert x.shape == (5 + SIGNAL_COUNT + LEXICAL_COUNT + weights.topic_axes.shape[0],)
    assert np.isfinite(x).all()
    assert int(weights.feature.max()) < x.shape[0]
    assert weights.leaf.shape[1] == 2 ** weights.depth


def test_rare_unshared_words_weigh_more_than_common_ones() -> None:
    verifier = ModelVerifier(ModelWeights.load())
    u = np.zeros(384, dtype=np.float32)
    u[0] = 1.0

    def lexical(query: str, candidate: str) -> np.ndarray:
        item = VerifyInput(query=query, candidate=candidate, query_vector=u, candidate_vector=u, similarity=0.9)
        return verifier.features(item)[5 + SIGNAL_COUNT:5 + SIGNAL_COUNT + LEXICAL_COUNT]

    rare = lexical("What is the Gobi desert like?", "What is the Thar desert like?")
    common = lexical("What is the big desert like?", "What is the large desert like?")
    assert rare[2] > common[2]  # the rarest word only one text has


def test_combined_vetoes_by_rule_before_the_model() -> None:
    verdict = CombinedVerifier(ModelVerifier(ModelWeights.load())).verify(_input("What is 2 + 3?", "What is 2 + 2?"))
    assert verdict == Verdict(accepted=False, reason=RejectReason.NUMBER, score=0.0)


@pytest.mark.parametrize("mode", list(VerifierMode))
def test_build_verifier_per_mode(mode: VerifierMode) -> None:
    verifier: HitVerifier | None = build_verifier(mode)
    assert (verifier is None) == (mode is VerifierMode.OFF)


def test_the_learned_model_runs_only_on_the_vectors_it_was_trained_on() -> None:
    from cachesvc.errors import ModelError

    trained_on = ModelWeights.load()
    same = build_verifier(VerifierMode.COMBINED, embedding_model=trained_on.embedding_model,
                          dimension=trained_on.dimension)
    assert isinstance(same, CombinedVerifier)
    for mode in (VerifierMode.COMBINED, VerifierMode.MODEL):
        with pytest.raises(ModelError, match=r"trained on .* and this server embeds with another/model"):
            build_verifier(mode, embedding_model="another/model", dimension=256)
    assert isinstance(build_verifier(VerifierMode.RULES, embedding_model="another/model", dimension=256),
                      RuleVerifier)


def test_features_do_not_depend_on_the_string_hash_seed() -> None:
    # "walked" and "walks" share the stem "walk"; which of them stands for it decides the IDF the features use.
    # Each process gets its own hash seed, and so its own set iteration order: all must compute the same input.
    script = (
        "import json; from cachesvc.core.verify import Idf, lexical_features; "
        "from cachesvc.core.verify.text import analyse; "
        "idf = Idf({'walked': 1.0, 'walks': 6.0, 'park': 2.0}, 3.0); "
        "q = analyse('How far have you walked or walks to the park'); c = analyse('How far is the park'); "
        "print(json.dumps(lexical_features(q, c, idf).tolist()))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                       capture_output=True, text=True, check=True).stdout
        for seed in range(8)
    }
    assert len(outputs) == 1
