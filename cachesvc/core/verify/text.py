"""Text analysis for the verifier: the lexicons (negations, numbers, dates, units, opposites, stopwords) and one
text's analysis (tokens, numbers, units, entities, content words, "X to Y" spans), computed once per text."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*|[$€£¥%°]")
NEGATIONS = frozenset({
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
OPPOSITE_OF: dict[str, frozenset[str]] = {}
for _a, _b in _OPPOSITES:
    OPPOSITE_OF[_a] = OPPOSITE_OF.get(_a, frozenset()) | {_b}
    OPPOSITE_OF[_b] = OPPOSITE_OF.get(_b, frozenset()) | {_a}
STOPWORDS = frozenset({
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
class Text:
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
        return trigrams_of(self.text)

    @cached_property
    def stems(self) -> dict[str, str]:
        # Sorted: when two words share a stem, which one stands for it (and so its IDF) must not depend on the
        # process's string hash seed, or the same pair could be judged differently after a restart.
        return {stem(w): w for w in sorted(self.content)}

    @cached_property
    def bigrams(self) -> frozenset[tuple[str, str]]:
        return frozenset(zip(self.tokens, self.tokens[1:], strict=False))

    @cached_property
    def words(self) -> tuple[str, ...]:
        """Every word and number, lower-cased, in any script (punctuation and layout dropped): what the long-prompt
        check compares."""
        return tuple(_WORD.findall(self.text.lower()))

    @cached_property
    def question_kind(self) -> int:
        return question_kind_of(self)



# First question word of a text, one-hot per side in the model's lexical features: QQP pairs that open differently
# ("why" / "how") are rarely the same question even when their words agree.
QUESTION_KINDS = ("what", "why", "how", "which", "who", "when", "where")
_YES_NO = frozenset({"is", "are", "can", "do", "does", "should", "will", "would", "was", "did", "could", "has",
                     "have"})
KIND_COUNT = len(QUESTION_KINDS) + 2  # + yes/no question + none
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def _number(token: str) -> float | None:
    if token[0].isdigit():
        try:
            return float(token.replace(",", ""))
        except ValueError:
            return None
    return _NUMBER_WORDS.get(token)


def analyse(text: str) -> Text:
    raw = tuple(_TOKEN.findall(text.replace("\u2019", "'")))
    tokens = tuple(t.lower().replace("'", "") for t in raw)
    negations = sum(1 for t in tokens if t in NEGATIONS)
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
        if (r[0].isupper() and not starts_sentence and t not in ("i", "im") and t not in STOPWORDS
                and t not in _CALENDAR and t not in _UNIT_OF) or (len(r) > 1 and r.isupper() and r.isalpha()):
            entities.add(_ALIASES.get(t, t))
    content = frozenset(_ALIASES.get(t, t) for t in tokens if t not in STOPWORDS and t not in NEGATIONS)
    return Text(text=text, raw_tokens=raw, tokens=tokens, token_set=frozenset(tokens), negations=negations,
                 numbers=frozenset(numbers), calendar=frozenset(calendar), units=frozenset(units),
                 entities=frozenset(entities), content=content, spans=_spans(tokens))


def _near_number(tokens: tuple[str, ...], i: int) -> bool:
    return any(_number(tokens[j]) is not None for j in range(max(0, i - 2), min(len(tokens), i + 2)) if j != i)


def _side(tokens: Iterable[str]) -> frozenset[str]:
    words: list[str] = []
    for t in tokens:
        if t in _FORWARD or t in _BACKWARD or t in STOPWORDS:
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


def trigrams_of(text: str) -> frozenset[str]:
    t = " ".join(text.lower().split())
    return frozenset(t[i:i + 3] for i in range(max(len(t) - 2, 1)))



def stem(word: str) -> str:
    """Crude suffix stripping, so that "study" / "studying" do not count as a word one text lacks."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def question_kind_of(t: Text) -> int:
    word = next((w for w in t.tokens[:4] if w in QUESTION_KINDS or w in _YES_NO), "")
    if word in QUESTION_KINDS:
        return QUESTION_KINDS.index(word)
    return len(QUESTION_KINDS) if word else len(QUESTION_KINDS) + 1



class Analyses:
    """Recent texts' analyses, least recently used dropped first: a lookup's query is analysed once for all its
    candidates, and a stored prompt that comes up again is not analysed again. One per verifier; not thread-safe
    (verification runs on the event loop)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._held: OrderedDict[str, Text] = OrderedDict()

    def __call__(self, text: str) -> Text:
        held = self._held.get(text)
        if held is not None:
            self._held.move_to_end(text)
            return held
        analysed = self._held[text] = analyse(text)
        if len(self._held) > self._size:
            self._held.popitem(last=False)
        return analysed
