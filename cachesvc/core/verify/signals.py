"""Mismatch signals between two analysed texts: what the rules decide on and the model takes as features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cachesvc.core.verify.text import OPPOSITE_OF, Text, analyse

# A rule vetoes only when the texts are otherwise close: the mismatch is then the difference between them, not
# one of many (on the QQP train split, loose vetoes removed about as many true duplicates as wrong ones).
_TIGHT_SHARE = 0.5
_TIGHT_WORDS = 2
_NEGATION_WORDS = 2


@dataclass(frozen=True, kw_only=True)
class Signals:
    """Mismatch signals between two texts (1.0 = the check fires)."""

    negation: float
    number: float
    number_one_sided: float
    calendar: float
    unit: float
    entity: float
    entity_one_sided: float
    direction: float
    opposite: float
    jaccard: float
    content_jaccard: float
    only_query: float  # content words only in the query, as a share of its content words
    only_candidate: float
    length_ratio: float
    only_query_words: float  # how many content words only the query has (capped at 5)
    only_candidate_words: float
    char_jaccard: float  # of character trigrams
    question_word: float  # the texts open with different question words (what / why / how / ...)
    same_start: float  # the first three tokens agree
    same_end: float  # the last content words agree
    close: bool = True  # each text has at most 2 content words, or half of its content words, the other lacks

    def as_array(self) -> NDArray[np.float32]:
        return np.array([self.negation, self.number, self.number_one_sided, self.calendar, self.unit, self.entity,
                         self.entity_one_sided, self.direction, self.opposite, self.jaccard, self.content_jaccard,
                         self.only_query, self.only_candidate, self.length_ratio, self.only_query_words,
                         self.only_candidate_words, self.char_jaccard, self.question_word, self.same_start,
                         self.same_end], dtype=np.float32)


SIGNAL_COUNT = 20
_QUESTION_WORDS = ("what", "why", "how", "which", "who", "whom", "when", "where", "is", "are", "can", "do", "does",
                   "should", "will", "would")


def _question_word(t: Text) -> str:
    return next((w for w in t.tokens if w in _QUESTION_WORDS), "")


def _last_content(t: Text) -> str:
    return next((w for w in reversed(t.tokens) if w in t.content), "")


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _substituted(a: frozenset[str], b: frozenset[str], a_text: Text, b_text: Text) -> bool:
    """Each side has an item the other text does not mention at all: a swap, not an addition."""
    return bool(a - b_text.content - b_text.token_set) and bool(b - a_text.content - a_text.token_set)


def signals(query: str, candidate: str) -> Signals:
    """The mismatch signals between two normalised prompts (see `RuleVerifier` for what each means)."""
    return signals_between(analyse(query), analyse(candidate))


def signals_between(q: Text, c: Text) -> Signals:
    only_q, only_c = q.content - c.content, c.content - q.content
    # Negation is judged only between texts that otherwise say nearly the same thing: across rewordings a cue
    # ("not eating", "refuse") comes and goes without changing the question.
    negation = float((q.negations > 0) != (c.negations > 0) and len(only_q) + len(only_c) <= _NEGATION_WORDS)
    number = float(bool(q.numbers) and bool(c.numbers) and q.numbers != c.numbers)
    number_one_sided = float(bool(q.numbers) != bool(c.numbers))
    calendar = float(bool(q.calendar) and bool(c.calendar) and q.calendar != c.calendar)
    unit = float(bool(q.units - c.units) and bool(c.units - q.units))
    entity = float(_substituted(q.entities, c.entities, q, c))
    entity_one_sided = float(bool(q.entities - c.content - c.token_set) or bool(c.entities - q.content - q.token_set))
    # Swapped: what stands before the connector in one text (and not in the other's) stands after it there.
    direction = float(any(
        ((qa - ca) & cb) and ((qb - cb) & ca) for qa, qb in q.spans for ca, cb in c.spans
    ))
    opposite = 0.0
    for word in only_q:
        if OPPOSITE_OF.get(word, frozenset()) & only_c:
            opposite = 1.0
            break
    n_q, n_c = max(len(q.tokens), 1), max(len(c.tokens), 1)
    return Signals(
        negation=negation, number=number, number_one_sided=number_one_sided, calendar=calendar, unit=unit,
        entity=entity, entity_one_sided=entity_one_sided, direction=direction, opposite=opposite,
        jaccard=_jaccard(q.token_set, c.token_set), content_jaccard=_jaccard(q.content, c.content),
        only_query=len(only_q) / max(len(q.content), 1), only_candidate=len(only_c) / max(len(c.content), 1),
        length_ratio=min(n_q, n_c) / max(n_q, n_c),
        only_query_words=float(min(len(only_q), 5)), only_candidate_words=float(min(len(only_c), 5)),
        char_jaccard=_jaccard(q.trigrams, c.trigrams),
        question_word=float(_question_word(q) != _question_word(c)),
        same_start=float(q.tokens[:3] == c.tokens[:3]), same_end=float(_last_content(q) == _last_content(c)),
        close=all(len(only) <= _TIGHT_WORDS or len(only) <= _TIGHT_SHARE * len(t.content)
                  for only, t in ((only_q, q), (only_c, c))),
    )
