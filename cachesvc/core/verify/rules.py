"""The rule verifier: hard vetoes on mismatches an embedding blurs."""

from __future__ import annotations

from cachesvc.core.verify.detail import detail_changed, is_long
from cachesvc.core.verify.protocol import ACCEPT, RejectReason, Verdict, VerifyInput
from cachesvc.core.verify.signals import Signals, signals_between
from cachesvc.core.verify.text import Text, analyse


class RuleVerifier:
    """Rejects a candidate whose text differs from the query in a way the embedding blurs.

    Checks, in order (the first that fires is the reason):
    - NEGATION: one text has a negation cue ("not", "no", "never", "without", "don't", ...), the other none.
    - NUMBER: both mention numbers (digits or number words, ordinals) or dates (months, weekdays) and they
      differ: "2 + 2" / "2 + 3", "2015" / "2016", "in May" / "in June".
    - UNIT: both mention units (length, mass, volume, temperature, currency, time, data size) and they differ.
    - DIRECTION: "X to Y" (also "into", "than", and "Y from X") in one text is "Y to X" in the other.
    - OPPOSITE: one text has a word whose antonym is in the other only (more/less, buy/sell, best/worst,
      before/after, increase/decrease, ...).
    - ENTITY: each text names something (a capitalised word that does not start the sentence, or an
      acronym) that the other does not mention at all: "Paris" / "Lyon". Case-blind texts are the model's job.
    - DETAIL: either prompt is long (over 150 characters) and they differ in more than layout, casing,
      punctuation, typos and filler words (`detail.py`). For long prompts this is the only check: when they
      differ in form only, nothing above applies.
    """

    def verify(self, item: VerifyInput) -> Verdict:
        q, c = analyse(item.query), analyse(item.candidate)
        reason = rules_reason(q, c, signals_between(q, c))
        return ACCEPT if reason is None else Verdict(accepted=False, reason=reason, score=0.0)


def rules_reason(q: Text, c: Text, s: Signals) -> RejectReason | None:
    """The first rule that fires on two analysed texts and their signals, or None. Long prompts are judged by
    `detail_changed` alone (a more specific reason is given when a rule names one)."""
    if is_long(q, c):
        return (rule_reason(s) or RejectReason.DETAIL) if detail_changed(q, c) else None
    return rule_reason(s)


def rule_reason(s: Signals) -> RejectReason | None:
    """The first rule that fires on these signals, or None."""
    if not s.close:
        return None
    if s.negation:
        return RejectReason.NEGATION
    if s.number or s.calendar:
        return RejectReason.NUMBER
    if s.unit:
        return RejectReason.UNIT
    if s.direction:
        return RejectReason.DIRECTION
    if s.opposite:
        return RejectReason.OPPOSITE
    if s.entity:
        return RejectReason.ENTITY
    return None
