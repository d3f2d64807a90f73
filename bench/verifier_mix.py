"""The mixed development set the verifier is trained and selected on: labelled pairs from several domains, each
split into a FIT part and a held-back DEVELOPMENT part (for choosing), so that no text crosses the split.

Domains (development data only, from ../shared/data or generated from it; no held-out set is read):
- qqp: the QQP development pairs' train split (bench/verifier_data.py; its held-back 30% is never read here);
  fit / development by connected component of texts.
- banking77, clinc150: pairs derived from the train streams, minus the texts bench/verifier_domains.py replays
  (its evaluation sample); same intent = same meaning. Each sampled text is paired with its nearest text of the
  same intent (label 1) and its two nearest texts of other intents (hard negatives, label 0). Fit / development
  by intent, so a development intent was never fitted on.
- gptcache: GPTCache's paraphrase pairs (all label 1) of one component split (70% fit), each query `b` also
  paired with its nearest other `a` (label 0: another sentence about a near subject).
- perturbed: rewrites of fit-split texts of every domain that change the answer (negation, a number, a date, an
  entity, a unit, a direction, a content word) and that keep it (a polite prefix, casing, punctuation, a synonym,
  a contraction). Fit / development by source text. The texts bench/verifier_domains.py perturbs for its own
  adversarial-dev set are left out.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.verifier_data import EmbeddingCache, qqp_split, read_jsonl, split_pairs
from bench.verifier_domains import (
    _AUX,
    _FROM_TO,
    _KEEP_PREFIX,
    _NUMBER,
    _SYNONYMS,
    GPTCACHE,
    STREAMS,
    evaluation_streams,
)
from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.verify.text import STOPWORDS

DOMAINS = ("qqp", "banking77", "clinc150", "gptcache", "perturbed")
QQP_FIT_LIMIT = 12000  # of the ~26,000 fit-split pairs: enough, and keeps one domain from dominating the fit
STREAM_TEXTS = 2400  # texts sampled per stream outside the evaluation sample
PERTURB_SOURCES = 3000


@dataclass
class Split:
    fit: list[dict[str, Any]]
    dev: list[dict[str, Any]]


def _bucket(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10


def _qqp() -> Split:
    train, _held_back = qqp_split()  # the held-back split is not read
    dev = [p for p in train if p["component"] % 10 == 6]
    fit = [p for p in train if p["component"] % 10 != 6][:QQP_FIT_LIMIT]
    return Split(fit, dev)


def _nearest_pairs(texts: list[str], classes: list[str], vectors: np.ndarray, domain: str) -> list[dict[str, Any]]:
    """Each text with its nearest same-class text (1) and its two nearest other-class texts (0)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1.0)
    labels = np.array(classes)
    pairs = []
    seen: set[tuple[int, int]] = set()
    for i in range(len(texts)):
        order = np.argsort(-sims[i])
        same = [j for j in order[:200].tolist() if labels[j] == labels[i]][:1]
        other = [j for j in order[:50].tolist() if labels[j] != labels[i]][:2]
        for j in same + other:
            key = (min(i, j), max(i, j))
            if key in seen or texts[i] == texts[j]:
                continue
            seen.add(key)
            pairs.append({"a": texts[j], "b": texts[i], "label": int(labels[j] == labels[i]), "domain": domain,
                          "group": classes[i]})
    return pairs


def _stream(name: str, cache: EmbeddingCache, rng: random.Random, limit: int, seed: int) -> Split:
    evaluated = evaluation_streams(limit, seed)[name]
    rows = [r for r in read_jsonl(STREAMS[name]) if normalize_prompt(r["text"]) not in evaluated]
    rows = rng.sample(rows, min(STREAM_TEXTS, len(rows)))
    out = Split([], [])
    for dev in (False, True):
        part = [r for r in rows if (_bucket(str(r["cls"])) < 3) == dev]  # 30% of intents held back
        texts = [normalize_prompt(r["text"]) for r in part]
        pairs = _nearest_pairs(texts, [str(r["cls"]) for r in part], cache.get(texts), name)
        (out.dev if dev else out.fit).extend(pairs)
    return out


def _gptcache(cache: EmbeddingCache) -> Split:
    train, _rest = split_pairs(GPTCACHE)  # the same 70% component split as QQP's; the rest is not read
    out = Split([], [])
    for dev in (False, True):
        part = [p for p in train if (p["component"] % 10 == 6) == dev]
        a_vectors, b_vectors = cache.get([p["a"] for p in part]), cache.get([p["b"] for p in part])
        sims = b_vectors @ a_vectors.T
        np.fill_diagonal(sims, -1.0)
        pairs = [{**p, "domain": "gptcache", "group": str(p["component"])} for p in part]
        for i, p in enumerate(part):
            j = int(np.argmax(sims[i]))
            if part[j]["component"] != p["component"]:
                pairs.append({"a": part[j]["a"], "b": p["b"], "label": 0, "domain": "gptcache",
                              "group": str(p["component"])})
        (out.dev if dev else out.fit).extend(pairs)
    return out


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_MONTH = re.compile(r"\b(" + "|".join(_MONTHS) + r")\b", re.IGNORECASE)
_YEAR = re.compile(r"\b(19|20)\d\d\b")
_UNITS = {"km": "miles", "miles": "km", "kg": "pounds", "pounds": "kg", "celsius": "fahrenheit",
          "fahrenheit": "celsius", "meters": "feet", "feet": "meters", "dollars": "euros", "euros": "dollars",
          "liters": "gallons", "gallons": "liters", "hours": "minutes", "minutes": "hours", "days": "weeks",
          "weeks": "days"}
_UNIT = re.compile(r"\b(" + "|".join(_UNITS) + r")\b", re.IGNORECASE)
_ENTITY = re.compile(r"(?<=\w )([A-Z][a-z]{2,})\b")
_CONTRACTIONS = {"what is": "what's", "do not": "don't", "i am": "i'm", "can not": "can't", "it is": "it's",
                 "how is": "how's", "is not": "isn't", "i have": "i've"}


def perturbations(text: str, rng: random.Random, vocabulary: list[str], entities: list[str],
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(changed, kept): rewrites of `text` that change the answer and rewrites that keep it, with their kinds."""
    changed: list[tuple[str, str]] = []
    m = _AUX.search(text)
    if m:
        changed.append(("negation", text[:m.end()] + " not" + text[m.end():]))
    m = _NUMBER.search(text)
    if m and not _YEAR.fullmatch(m.group(0)):
        changed.append(("number", text[:m.start()] + str(int(m.group(0)) + rng.randint(1, 9)) + text[m.end():]))
    m = _YEAR.search(text)
    if m:
        changed.append(("date", text[:m.start()] + str(int(m.group(0)) + rng.choice((-2, -1, 1, 3)))
                        + text[m.end():]))
    m = _MONTH.search(text)
    if m:
        other = rng.choice([x for x in _MONTHS if x != m.group(0).lower()])
        changed.append(("date", text[:m.start()] + other + text[m.end():]))
    m = _UNIT.search(text)
    if m:
        changed.append(("unit", text[:m.start()] + _UNITS[m.group(0).lower()] + text[m.end():]))
    m = _FROM_TO.search(text)
    if m:
        changed.append(("direction", text[:m.start()] + f"from {m.group(2)} to {m.group(1)}" + text[m.end():]))
    m = _ENTITY.search(text)
    if m and entities:
        other = rng.choice(entities)
        if other != m.group(0):
            changed.append(("entity", text[:m.start()] + other + text[m.end():]))
    words = [w for w in re.findall(r"[a-z]{5,}", text) if w not in STOPWORDS and text.count(w) == 1]
    if words and vocabulary:
        old = rng.choice(words)
        changed.append(("substitution", re.sub(rf"\b{old}\b", rng.choice(vocabulary), text)))
    kept = [("prefix", rng.choice(_KEEP_PREFIX) + text[0].lower() + text[1:]), ("casing", text.lower()),
            ("punctuation", re.sub(r"[?.!,]", "", text))]
    synonyms = [w for w in _SYNONYMS if re.search(rf"\b{w}\b", text)]
    if synonyms:
        w = rng.choice(synonyms)
        kept.append(("synonym", re.sub(rf"\b{w}\b", _SYNONYMS[w], text)))
    lowered = text.lower()
    for long, short in _CONTRACTIONS.items():
        if re.search(rf"\b{long}\b", lowered):
            kept.append(("contraction", re.sub(rf"\b{long}\b", short, lowered)))
            break
    return changed, kept


def _perturbed(sources: list[str], rng: random.Random) -> Split:
    vocabulary = sorted({w for t in sources for w in re.findall(r"[a-z]{5,}", t) if w not in STOPWORDS})
    entities = sorted({m.group(0) for t in sources for m in _ENTITY.finditer(t)})
    out = Split([], [])
    for text in rng.sample(sources, min(PERTURB_SOURCES, len(sources))):
        changed, kept = perturbations(text, rng, vocabulary, entities)
        chosen = ([(rng.choice(changed), 0)] if changed else []) + [(rng.choice(kept), 1)]
        for (kind, b), label in chosen:
            if normalize_prompt(b) != normalize_prompt(text):
                pair = {"a": text, "b": b, "label": label, "domain": "perturbed", "kind": kind, "group": text}
                (out.dev if _bucket(text) < 2 else out.fit).append(pair)
    return out


def build_mix(cache: EmbeddingCache, *, seed: int = 0, evaluation_limit: int = 3000) -> dict[str, Split]:
    """The mixed development set, per domain (seeded: the same arguments give the same pairs)."""
    rng = random.Random(seed)
    mix = {"qqp": _qqp()}
    for p in mix["qqp"].fit + mix["qqp"].dev:
        p["domain"], p["group"] = "qqp", str(p["component"])
    for name in STREAMS:
        mix[name] = _stream(name, cache, rng, evaluation_limit, seed)
    mix["gptcache"] = _gptcache(cache)
    # Perturbation sources: fit-side texts only, minus the QQP texts bench/verifier_domains.py perturbs itself
    # (the `a` of the first 2,000 train-split pairs).
    excluded = {normalize_prompt(p["a"]) for p in qqp_split(2000, 0)[0]}
    sources = sorted({p[k] for name in ("qqp", *STREAMS) for p in mix[name].fit for k in ("a", "b")
                      if normalize_prompt(p[k]) not in excluded and 15 <= len(p[k]) <= 150})
    mix["perturbed"] = _perturbed(sources, rng)
    return mix
