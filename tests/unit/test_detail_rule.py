"""The long-prompt rule: a change in the details of a long prompt is refused, a change of form is not."""

from __future__ import annotations

import numpy as np
import pytest

from cachesvc.core.verify import RejectReason, RuleVerifier, VerifierMode, VerifyInput, build_verifier
from cachesvc.core.verify.detail import LONG_PROMPT_CHARS, detail_changed
from cachesvc.core.verify.text import analyse

STORY = ("Write a short story for children about a young fox named Ruby who gets lost in the forest during a storm "
         "and is helped home by an old owl. Keep it under 500 words and give it a happy ending.")
MATH = ("Let r and p be real numbers with r != 0. Simplify the expression (r^2 - p^2) / r and explain each step of "
        "the simplification so that a high school student can follow along.")
VECTOR = np.zeros(4, dtype=np.float32)


def verdict(query: str, candidate: str) -> RejectReason | None:
    item = VerifyInput(query=query, candidate=candidate, query_vector=VECTOR, candidate_vector=VECTOR,
                       similarity=0.95)
    return RuleVerifier().verify(item).reason


@pytest.mark.parametrize("changed", [
    STORY + " Also include a moral at the end.",  # an added instruction
    STORY.replace("an old owl", "a friendly bear"),  # another plot element
    STORY.replace("during a storm", "during a snowstorm at night"),
    MATH.replace("r != 0", "p != 0").replace("/ r", "/ p"),  # swapped variables
    MATH.replace("high school student", "university student"),
])
def test_long_prompts_that_differ_in_their_details_are_refused(changed: str) -> None:
    assert len(STORY) > LONG_PROMPT_CHARS and len(MATH) > LONG_PROMPT_CHARS
    original = STORY if changed.startswith("Write") else MATH
    assert detail_changed(analyse(changed), analyse(original))
    assert verdict(changed, original) is not None


@pytest.mark.parametrize("kept", [
    STORY.replace(". ", ".\n\n"),  # reformatted
    "  " + STORY.replace(" ", "   ") + "  ",  # whitespace
    STORY.upper(),  # casing
    STORY.replace("forest", "forrest").replace("helped", "helpped"),  # typos (the stored prompt had them)
    STORY.replace("Keep it", "Please keep it"),  # filler
    MATH.replace("high school", "high-school"),  # punctuation
])
def test_long_prompts_that_differ_only_in_form_are_accepted(kept: str) -> None:
    assert not detail_changed(analyse(kept), analyse(STORY if kept.lower().startswith(("write", "  write")) else MATH))
    assert verdict(kept, STORY if "fox" in kept.lower() else MATH) is None


def test_short_prompts_are_left_to_the_other_rules() -> None:
    assert not detail_changed(analyse("How do I bake bread?"), analyse("How do I bake a cake?"))


def test_the_combined_verifier_leaves_long_prompts_to_the_detail_check() -> None:
    combined = build_verifier(VerifierMode.COMBINED)
    assert combined is not None
    zeros = np.zeros(384, dtype=np.float32)

    def accepted(query: str, candidate: str) -> bool:
        return combined.verify(VerifyInput(query=query, candidate=candidate, query_vector=zeros,
                                           candidate_vector=zeros, similarity=0.9)).accepted

    assert accepted(STORY.upper(), STORY)  # the model, trained on short questions, is not asked
    assert not accepted(STORY + " Also include a moral at the end.", STORY)
