"""Hit verification: the stage between "the nearest entry clears the threshold" and "serve it".

An embedding blurs exactly the differences that make a cached answer wrong: "cancel" / "don't cancel", "2015" /
"2016", "Paris" / "Lyon", "litres to kg" / "kg to litres" score 0.89-0.99 cosine with all-MiniLM-L6-v2. A
`HitVerifier` sees both texts, both vectors and their similarity and accepts or rejects with a reason:

- `RuleVerifier`: mismatch checks on the texts (negation, numbers and dates, units, named entities, opposites
  and comparatives, "X to Y" direction). Pure Python, tens of microseconds.
- `ModelVerifier`: gradient-boosted trees over pair features (cosine, summaries of |u-v| and u*v, the rule
  signals, IDF-weighted word overlap, question kinds and lengths; optionally the pair's topic), stored as numpy
  arrays with their IDF table in `verifier_weights.npz` next to this module, trained by `bench/train_verifier.py`
  on the train split of the development QQP pairs (or another file's, served with `--verifier-weights`). The
  weights name the embedding model they were trained for; `build_verifier` checks it.
- `CombinedVerifier`: rules first (a hard veto), then the model.

No I/O at verification time; the weights are read once when the verifier is built.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from cachesvc.errors import ModelError

WEIGHTS_FILE = Path(__file__).with_name("verifier_weights.npz")


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


# Text signals

_TOKEN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*|[$€£¥%°]")
_NEGATIONS = frozenset({
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot", "cant", "dont",
    "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "shouldnt", "wouldnt", "couldnt", "havent",
    "hasnt", "hadnt", "mustnt", "neednt", "aint",
})
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6,
    "billion": 10**9, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "half": 0.5, "twice": 2, "double": 2, "triple": 3, "dozen": 12,
}
_CALENDAR = frozenset({
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
    "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "monday",
    "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "tomorrow", "yesterday",
    "tonight",
})
_CALENDAR_AMBIGUOUS = frozenset({"may", "march", "mar", "jan", "dec", "sat", "sun", "second"})
_UNITS = {
    # canonical name <- spellings
    "km": ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"),
    "mile": ("mile", "miles", "mi"),
    "m": ("meter", "meters", "metre", "metres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "ft": ("ft", "foot", "feet"),
    "in": ("inch", "inches"),
    "yd": ("yard", "yards", "yd"),
    "kg": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme", "kilogrammes"),
    "g": ("gram", "grams", "gramme", "grammes"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "oz": ("oz", "ounce", "ounces"),
    "ton": ("ton", "tons", "tonne", "tonnes"),
    "l": ("litre", "litres", "liter", "liters", "ltr"),
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "gal": ("gallon", "gallons", "gal"),
    "cup": ("cup", "cups"),
    "c": ("celsius", "centigrade"),
    "f": ("fahrenheit",),
    "k": ("kelvin",),
    "usd": ("usd", "dollar", "dollars", "$"),
    "eur": ("eur", "euro", "euros", "€"),
    "gbp": ("gbp", "sterling", "£"),
    "jpy": ("jpy", "yen", "¥"),
    "inr": ("inr", "rupee", "rupees", "rs"),
    "s": ("second", "seconds", "sec", "secs"),
    "min": ("minute", "minutes", "mins"),
    "h": ("hour", "hours", "hr", "hrs"),
    "day": ("day", "days"),
    "week": ("week", "weeks"),
    "month": ("month", "months"),
    "year": ("year", "years", "yr", "yrs"),
    "mph": ("mph",),
    "kph": ("kph", "kmh"),
    "kb": ("kb", "kilobyte", "kilobytes"),
    "mb": ("mb", "megabyte", "megabytes"),
    "gb": ("gb", "gigabyte", "gigabytes"),
    "tb": ("tb", "terabyte", "terabytes"),
    "w": ("watt", "watts", "kw", "kilowatt", "kilowatts"),
    "v": ("volt", "volts"),
    "pct": ("%", "percent", "percentage"),
}
_UNIT_OF = {spelling: canonical for canonical, spellings in _UNITS.items() for spelling in spellings}
# Unit words that are too often something else when no number is near ("second place", "in", "day off").
_UNIT_NEEDS_NUMBER = frozenset({"s", "day", "week", "month", "year", "h", "min", "cup"})
_OPPOSITES = [
    ("more", "less"), ("more", "fewer"), ("most", "least"), ("better", "worse"), ("best", "worst"),
    ("bigger", "smaller"), ("biggest", "smallest"), ("larger", "smaller"), ("largest", "smallest"),
    ("higher", "lower"), ("highest", "lowest"), ("faster", "slower"), ("fastest", "slowest"),
    ("cheaper", "expensive"), ("cheapest", "expensive"), ("older", "younger"), ("oldest", "youngest"),
    ("increase", "decrease"), ("increase", "reduce"), ("raise", "lower"), ("buy", "sell"), ("buying", "selling"),
    ("before", "after"), ("up", "down"), ("open", "close"), ("add", "remove"), ("enable", "disable"),
    ("start", "stop"), ("win", "lose"), ("import", "export"), ("upload", "download"), ("above", "below"),
    ("min", "max"), ("minimum", "maximum"), ("male", "female"), ("men", "women"), ("man", "woman"),
    ("boy", "girl"), ("hot", "cold"), ("warm", "cold"), ("long", "short"), ("longer", "shorter"),
    ("heavy", "light"), ("heavier", "lighter"), ("early", "late"), ("earlier", "later"), ("first", "last"),
    ("positive", "negative"), ("pros", "cons"), ("advantages", "disadvantages"), ("benefits", "risks"),
    ("success", "failure"), ("gain", "lose"), ("gain", "loss"), ("profit", "loss"), ("north", "south"),
    ("east", "west"), ("left", "right"), ("inside", "outside"), ("legal", "illegal"), ("safe", "dangerous"),
    ("easy", "hard"), ("easiest", "hardest"), ("easier", "harder"), ("deposit", "withdraw"),
    ("encrypt", "decrypt"), ("encode", "decode"), ("install", "uninstall"), ("lock", "unlock"),
    ("subscribe", "unsubscribe"), ("login", "logout"), ("push", "pull"), ("send", "receive"),
    ("sent", "received"), ("borrow", "lend"), ("true", "false"), ("pass", "fail"),
    ("accept", "reject"), ("allow", "deny"), ("allow", "block"), ("join", "leave"), ("hire", "fire"),
    ("rich", "poor"), ("strong", "weak"), ("stronger", "weaker"), ("happy", "sad"), ("love", "hate"),
    ("good", "bad"), ("like", "dislike"), ("healthy", "unhealthy"), ("possible", "impossible"),
    ("always", "never"), ("all", "none"), ("morning", "evening"), ("day", "night"),
    ("summer", "winter"), ("spring", "autumn"), ("input", "output"), ("client", "server"),
    ("ascending", "descending"), ("uppercase", "lowercase"), ("upper", "lower"),
]
_OPPOSITE_OF: dict[str, frozenset[str]] = {}
for _a, _b in _OPPOSITES:
    _OPPOSITE_OF[_a] = _OPPOSITE_OF.get(_a, frozenset()) | {_b}
    _OPPOSITE_OF[_b] = _OPPOSITE_OF.get(_b, frozenset()) | {_a}
_STOPWORDS = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "am", "do", "does", "did", "i", "you", "he",
    "she", "it", "we", "they", "me", "my", "your", "our", "their", "his", "her", "its", "of", "in", "on", "at",
    "for", "with", "by", "and", "or", "but", "if", "so", "as", "what", "which", "who", "whom", "how", "why",
    "when", "where", "this", "that", "these", "those", "there", "here", "can", "could", "should", "would",
    "will", "shall", "may", "might", "must", "to", "from", "into", "than", "some", "any", "much", "many",
    "about", "get", "best", "way", "ways", "good", "go", "make", "use", "using", "there's", "what's", "it's",
    "i'm", "have", "has", "had", "just", "really", "very", "please", "tell", "know", "want", "need", "also",
    "like", "one", "someone", "something", "thing", "things", "out", "up", "all", "more", "most",
})
_ALIASES = {
    "us": "usa", "america": "usa", "u.s": "usa", "states": "usa", "uk": "britain", "england": "britain",
    "british": "britain", "american": "usa", "americans": "usa",
}
# "X to Y" connectors (first, second) and their reversed-order counterparts ("Y from X").
_FORWARD = frozenset({"to", "into", "than", "->", "towards", "toward"})
_BACKWARD = frozenset({"from"})
_DIRECTION_WINDOW = 3


@dataclass(frozen=True)
class _Text:
    text: str
    raw_tokens: tuple[str, ...]
    tokens: tuple[str, ...]  # lower-cased, apostrophes dropped ("don't" -> "dont")
    token_set: frozenset[str]
    negations: int
    numbers: frozenset[float]
    calendar: frozenset[str]
    units: frozenset[str]
    entities: frozenset[str]
    content: frozenset[str]
    spans: tuple[tuple[frozenset[str], frozenset[str]], ...]  # "X to Y": (X words, Y words)

    # What the signals and the model's lexical features need of one text, computed once per text (analyses are
    # cached, so a lookup's query is done once for all its candidates).
    @cached_property
    def trigrams(self) -> frozenset[str]:
        return _trigrams(self.text)

    @cached_property
    def stems(self) -> dict[str, str]:
        # Sorted: when two words share a stem, which one stands for it (and so its IDF) must not depend on the
        # process's string hash seed, or the same pair could be judged differently after a restart.
        return {_stem(w): w for w in sorted(self.content)}

    @cached_property
    def bigrams(self) -> frozenset[tuple[str, str]]:
        return frozenset(zip(self.tokens, self.tokens[1:], strict=False))

    @cached_property
    def question_kind(self) -> int:
        return _question_kind(self)


def _number(token: str) -> float | None:
    if token[0].isdigit():
        try:
            return float(token.replace(",", ""))
        except ValueError:
            return None
    return _NUMBER_WORDS.get(token)


def _analyse(text: str) -> _Text:
    raw = tuple(_TOKEN.findall(text.replace("\u2019", "'")))
    tokens = tuple(t.lower().replace("'", "") for t in raw)
    negations = sum(1 for t in tokens if t in _NEGATIONS)
    numbers: set[float] = set()
    units: set[str] = set()
    calendar: set[str] = set()
    has_digit = any(t[0].isdigit() for t in tokens)
    for i, t in enumerate(tokens):
        value = _number(t)
        if value is not None and not (t == "one" and not has_digit) and not (t == "second" and not has_digit):
            numbers.add(value)
        unit = _UNIT_OF.get(t)
        if unit is not None and (unit not in _UNIT_NEEDS_NUMBER or _near_number(tokens, i)):
            units.add(unit)
        if t in _CALENDAR and (t not in _CALENDAR_AMBIGUOUS or raw[i][0].isupper()):
            calendar.add(t[:3])
    entities: set[str] = set()
    for i, (r, t) in enumerate(zip(raw, tokens, strict=True)):
        starts_sentence = i == 0 or raw[i - 1] in (".", "?", "!")
        if (r[0].isupper() and not starts_sentence and t not in ("i", "im") and t not in _STOPWORDS
                and t not in _CALENDAR and t not in _UNIT_OF) or (len(r) > 1 and r.isupper() and r.isalpha()):
            entities.add(_ALIASES.get(t, t))
    content = frozenset(_ALIASES.get(t, t) for t in tokens if t not in _STOPWORDS and t not in _NEGATIONS)
    return _Text(text=text, raw_tokens=raw, tokens=tokens, token_set=frozenset(tokens), negations=negations,
                 numbers=frozenset(numbers), calendar=frozenset(calendar), units=frozenset(units),
                 entities=frozenset(entities), content=content, spans=_spans(tokens))


def _near_number(tokens: tuple[str, ...], i: int) -> bool:
    return any(_number(tokens[j]) is not None for j in range(max(0, i - 2), min(len(tokens), i + 2)) if j != i)


def _side(tokens: Iterable[str]) -> frozenset[str]:
    words: list[str] = []
    for t in tokens:
        if t in _FORWARD or t in _BACKWARD or t in _STOPWORDS:
            if words:
                break
            continue
        words.append(_UNIT_OF.get(t, _ALIASES.get(t, t)))
        if len(words) == _DIRECTION_WINDOW:
            break
    return frozenset(words)


def _spans(tokens: tuple[str, ...]) -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
    found = []
    for i, t in enumerate(tokens):
        if t in _FORWARD or t in _BACKWARD:
            before = _side(reversed(tokens[:i]))
            after = _side(tokens[i + 1:])
            if before and after:
                found.append((before, after) if t in _FORWARD else (after, before))
    return tuple(found)


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


def _trigrams(text: str) -> frozenset[str]:
    t = " ".join(text.lower().split())
    return frozenset(t[i:i + 3] for i in range(max(len(t) - 2, 1)))


def _question_word(t: _Text) -> str:
    return next((w for w in t.tokens if w in _QUESTION_WORDS), "")


def _last_content(t: _Text) -> str:
    return next((w for w in reversed(t.tokens) if w in t.content), "")


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _substituted(a: frozenset[str], b: frozenset[str], a_text: _Text, b_text: _Text) -> bool:
    """Each side has an item the other text does not mention at all: a swap, not an addition."""
    return bool(a - b_text.content - b_text.token_set) and bool(b - a_text.content - a_text.token_set)


def signals(query: str, candidate: str) -> Signals:
    """The mismatch signals between two normalised prompts (see `RuleVerifier` for what each means)."""
    return _signals(_analyse(query), _analyse(candidate))


def _signals(q: _Text, c: _Text) -> Signals:
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
        if _OPPOSITE_OF.get(word, frozenset()) & only_c:
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


# Verifiers

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
    """

    def verify(self, item: VerifyInput) -> Verdict:
        reason = rule_reason(signals(item.query, item.candidate))
        return ACCEPT if reason is None else Verdict(accepted=False, reason=reason, score=0.0)


# A rule vetoes only when the texts are otherwise close: the mismatch is then the difference between them, not
# one of many (on the QQP train split, loose vetoes removed about as many true duplicates as wrong ones).
_TIGHT_SHARE = 0.5
_TIGHT_WORDS = 2
_NEGATION_WORDS = 2


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


# The model

# First question word of a text, one-hot per side: QQP pairs that open differently ("why" / "how") are rarely the
# same question even when their words agree.
_QUESTION_KINDS = ("what", "why", "how", "which", "who", "when", "where")
_YES_NO = frozenset({"is", "are", "can", "do", "does", "should", "will", "would", "was", "did", "could", "has",
                     "have"})
_KIND_COUNT = len(_QUESTION_KINDS) + 2  # + yes/no question + none
_RARE_IDF = 7.0  # a word in about 1 of 150 train-split texts, or rarer
_IDF_SUM_CAP = 40.0
_SUFFIXES = ("ing", "ed", "es", "s", "ly")
LEXICAL_COUNT = 15 + 2 * _KIND_COUNT


def _stem(word: str) -> str:
    """Crude suffix stripping, so that "study" / "studying" do not count as a word one text lacks."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _question_kind(t: _Text) -> int:
    word = next((w for w in t.tokens[:4] if w in _QUESTION_KINDS or w in _YES_NO), "")
    if word in _QUESTION_KINDS:
        return _QUESTION_KINDS.index(word)
    return len(_QUESTION_KINDS) if word else len(_QUESTION_KINDS) + 1


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


def lexical_features(q: _Text, c: _Text, idf: Idf) -> NDArray[np.float32]:
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
    kinds = np.zeros(2 * _KIND_COUNT, dtype=np.float32)
    kinds[q.question_kind] = 1.0
    kinds[_KIND_COUNT + c.question_kind] = 1.0
    head = np.array([
        idf_jaccard, idf_content_jaccard, max(max_q, max_c), min(max_q, max_c), min(sum_q, _IDF_SUM_CAP),
        min(sum_c, _IDF_SUM_CAP), len(only_q) + len(only_c), sum(1 for w in only_q + only_c if idf(w) > _RARE_IDF),
        len(both) / max(stem_union, 1),
        len(q_bigrams & c_bigrams) / max(len(q_bigrams | c_bigrams), 1),
        _common_run(q.tokens, c.tokens) / longest, _common_run(reversed(q.tokens), reversed(c.tokens)) / longest,
        n_q, n_c, abs(n_q - n_c),
    ], dtype=np.float32)
    return np.concatenate([head, kinds])


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


class _Analyses:
    """Recent texts' analyses, least recently used dropped first: a lookup's query is analysed once for all its
    candidates, and a stored prompt that comes up again is not analysed again. One per verifier; not thread-safe
    (verification runs on the event loop)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._held: OrderedDict[str, _Text] = OrderedDict()

    def __call__(self, text: str) -> _Text:
        held = self._held.get(text)
        if held is not None:
            self._held.move_to_end(text)
            return held
        analysed = self._held[text] = _analyse(text)
        if len(self._held) > self._size:
            self._held.popitem(last=False)
        return analysed


class ModelVerifier:
    """Accepts a candidate when the learned model's probability reaches its shipped threshold."""

    def __init__(self, weights: ModelWeights, *, accept_threshold: float | None = None) -> None:
        self._weights = weights
        self._threshold = weights.accept_threshold if accept_threshold is None else accept_threshold
        self._analyses = _Analyses()

    @property
    def threshold(self) -> float:
        return self._threshold

    def signals(self, item: VerifyInput) -> tuple[_Text, _Text, Signals]:
        """The two texts' analyses and the rule signals between them."""
        q, c = self._analyses(item.query), self._analyses(item.candidate)
        return q, c, _signals(q, c)

    def features(self, item: VerifyInput, analysed: tuple[_Text, _Text, Signals] | None = None,
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


class CombinedVerifier:
    """Rules first (a hard veto, score 0), then the model on what they let through."""

    def __init__(self, model: ModelVerifier) -> None:
        self._model = model

    def verify(self, item: VerifyInput) -> Verdict:
        analysed = self._model.signals(item)
        reason = rule_reason(analysed[2])
        if reason is not None:  # vetoed before the model's features are computed
            return Verdict(accepted=False, reason=reason, score=0.0)
        return self._model.decide(self._model.probability(self._model.features(item, analysed)))


def build_verifier(mode: VerifierMode, *, embedding_model: str | None = None, dimension: int | None = None,
                   weights_path: Path = WEIGHTS_FILE) -> HitVerifier | None:
    """The verifier for `mode` (None for OFF), for a server embedding with `embedding_model` (a manifest name; None
    = the one the weights were trained on).

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
    model = ModelVerifier(weights)
    return model if mode is VerifierMode.MODEL else CombinedVerifier(model)
