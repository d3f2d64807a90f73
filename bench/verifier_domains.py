"""Verifier configurations per development domain, for choosing defaults by data: right hits and precision of
what a cache at those settings serves, per domain, and the worst domain.

    nice -n 10 .venv/bin/python bench/verifier_domains.py

Domains (development data only; nothing here reads a held-out set):
- banking77, clinc150: seeded 3,000-text samples of the train streams, replayed in order, store on miss; a hit
  is right when the served entry's text has the query's intent;
- qqp: the held-back part of the QQP development pairs (3,000; the shipped model trained on the other part),
  every `a` in one shared scope, every `b` looked up; right when the served `a` is in `b`'s component of
  label-1 pairs (or is `b` itself);
- gptcache: GPTCache's paraphrase pairs, shared scope, the same rule (all positive: recall only);
- adversarial: tests/data/adversarial_pairs.jsonl, one scope per pair (near-miss negatives and paraphrases).

The cache's decision is simulated in process, the way `CacheService.lookup` takes it: the exact path first, then
the top 4 candidates by cosine, best first, down to the threshold; the first the verifier accepts is served. The
vectors are the server's (the same ONNX model on normalised prompts, cached in bench/out). This is the fast
development loop; bench/hitrate.py measures the same through the real server.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA_DIR, OUT_DIR, machine, markdown_table, text_table, utc_now, write_json
from bench.verifier_data import ADVERSARIAL, EmbeddingCache, qqp_split, read_jsonl, split_pairs
from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.verify import (
    WEIGHTS_FILE,
    CombinedVerifier,
    HitVerifier,
    ModelVerifier,
    ModelWeights,
    RuleVerifier,
    VerifyInput,
)

TOP_K = 4
STREAMS = {"banking77": DATA_DIR / "banking77_train_stream.jsonl",
           "clinc150": DATA_DIR / "clinc150_trainval_stream.jsonl"}
GPTCACHE = DATA_DIR / "gptcache_mock_positive_only.jsonl"


@dataclass(frozen=True)
class Config:
    name: str
    threshold: float
    verifier: Callable[[], HitVerifier | None]


@dataclass
class Tally:
    lookups: int = 0
    hits: int = 0
    right: int = 0
    positives: int = 0  # pairs domains: queries with a right answer in the cache

    def row(self) -> dict[str, Any]:
        return {"lookups": self.lookups, "hits": self.hits, "right": self.right,
                "precision": self.right / self.hits if self.hits else None,
                "hit_rate": self.hits / max(self.lookups, 1),
                "recall": self.right / self.positives if self.positives else None}


class Index:
    """A growing matrix of stored vectors with their texts and labels (one scope)."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.texts: list[str] = []
        self.labels: list[str] = []
        self.exact: dict[str, int] = {}
        self._buffer: list[np.ndarray] = []

    def add(self, text: str, vector: np.ndarray, label: str) -> None:
        if text in self.exact:  # a store of the same prompt replaces the entry
            self.labels[self.exact[text]] = label
            return
        self.exact[text] = len(self.texts)
        self.texts.append(text)
        self.labels.append(label)
        self._buffer.append(vector)

    def matrix(self) -> np.ndarray:
        if self._buffer:
            self.vectors = np.vstack([self.vectors, np.stack(self._buffer)])
            self._buffer.clear()
        return self.vectors


def decide(index: Index, text: str, vector: np.ndarray, config: Config, verifier: HitVerifier | None) -> int | None:
    """The served entry's position, or None: the exact path, then the walk over the top candidates."""
    if text in index.exact:
        return index.exact[text]
    matrix = index.matrix()
    if not len(matrix):
        return None
    sims = matrix @ vector
    top = np.argsort(-sims)[:TOP_K]
    for i in top.tolist():
        similarity = float(min(max(sims[i], 0.0), 1.0))
        if similarity < config.threshold:
            return None
        if verifier is None:
            return i
        verdict = verifier.verify(VerifyInput(query=text, candidate=index.texts[i], query_vector=vector,
                                              candidate_vector=matrix[i], similarity=similarity))
        if verdict.accepted:
            return i
    return None


def run_stream(items: list[tuple[str, str]], vectors: np.ndarray, config: Config) -> Tally:
    verifier = config.verifier()
    index = Index(vectors.shape[1])
    tally = Tally()
    for (text, cls), vector in zip(items, vectors, strict=True):
        tally.lookups += 1
        served = decide(index, text, vector, config, verifier)
        if served is None:
            index.add(text, vector, cls)
        else:
            tally.hits += 1
            tally.right += index.labels[served] == cls
    return tally


def components(pairs: list[dict[str, Any]]) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        a, b = normalize_prompt(p["a"]), normalize_prompt(p["b"])
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        if p["label"] == 1:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {t: find(t) for t in parent}


def run_shared_pairs(pairs: list[dict[str, Any]], a_vectors: np.ndarray, b_vectors: np.ndarray,
                     config: Config) -> Tally:
    verifier = config.verifier()
    component = components(pairs)
    index = Index(a_vectors.shape[1])
    for p, vector in zip(pairs, a_vectors, strict=True):
        a = normalize_prompt(p["a"])
        index.add(a, vector, component[a])
    stored_components = set(index.labels)
    tally = Tally()
    for p, vector in zip(pairs, b_vectors, strict=True):
        b = normalize_prompt(p["b"])
        tally.lookups += 1
        tally.positives += component[b] in stored_components and p["label"] == 1
        served = decide(index, b, vector, config, verifier)
        if served is not None:
            tally.hits += 1
            tally.right += index.labels[served] == component[b]
    return tally


def run_per_pair(pairs: list[dict[str, Any]], a_vectors: np.ndarray, b_vectors: np.ndarray,
                 config: Config) -> Tally:
    verifier = config.verifier()
    tally = Tally()
    for p, av, bv in zip(pairs, a_vectors, b_vectors, strict=True):
        index = Index(av.shape[0])
        index.add(normalize_prompt(p["a"]), av, "a")
        tally.lookups += 1
        tally.positives += p["label"] == 1
        if decide(index, normalize_prompt(p["b"]), bv, config, verifier) is not None:
            tally.hits += 1
            tally.right += p["label"] == 1
    return tally


# Generated adversarial development pairs: near-miss rewrites of development texts that change the answer (0) and
# rewrites that keep it (1). Words are swapped for words of other development texts, not from the rules' own
# lexicons only, so that the rules are not measured on their own word lists.
_AUX = re.compile(r"\b(can|do|does|is|are|should|will|would|did|could)\b( I| you| we| they| it| my)?\b",
                  re.IGNORECASE)
_NUMBER = re.compile(r"\b\d+\b")
_FROM_TO = re.compile(r"\bfrom (\w+) to (\w+)\b")
_KEEP_PREFIX = ("Can you tell me: ", "Please, ", "Quick question: ", "I was wondering, ")
_SYNONYMS = {"buy": "purchase", "big": "large", "help": "assist", "fast": "quick", "start": "begin",
             "get": "obtain", "money": "funds", "card": "bank card", "phone": "mobile phone", "fix": "repair",
             "best": "top", "show": "display", "cancel": "call off", "wrong": "incorrect"}


def adversarial_dev(texts: list[str], rng: random.Random, n: int) -> list[dict[str, Any]]:
    from cachesvc.core.verify.text import STOPWORDS

    vocabulary = sorted({w for t in texts for w in re.findall(r"[a-z]{5,}", t) if w not in STOPWORDS})
    pairs: list[dict[str, Any]] = []
    for text in rng.sample(texts, min(n, len(texts))):
        changed: list[tuple[str, str]] = []
        m = _AUX.search(text)
        if m:
            changed.append(("negation", text[:m.end()] + " not" + text[m.end():]))
        m = _NUMBER.search(text)
        if m:
            changed.append(("number", text[:m.start()] + str(int(m.group(0)) + rng.randint(1, 9)) + text[m.end():]))
        m = _FROM_TO.search(text)
        if m:
            changed.append(("direction", text[:m.start()] + f"from {m.group(2)} to {m.group(1)}" + text[m.end():]))
        words = [w for w in re.findall(r"[a-z]{5,}", text) if w not in STOPWORDS and text.count(w) == 1]
        if words:
            old = rng.choice(words)
            changed.append(("substitution", re.sub(rf"\b{old}\b", rng.choice(vocabulary), text)))
        kept = [("prefix", rng.choice(_KEEP_PREFIX) + text[0].lower() + text[1:]), ("casing", text.lower()),
                ("punctuation", re.sub(r"[?.!,]", "", text))]
        synonyms = [w for w in _SYNONYMS if re.search(rf"\b{w}\b", text)]
        if synonyms:
            w = rng.choice(synonyms)
            kept.append(("synonym", re.sub(rf"\b{w}\b", _SYNONYMS[w], text)))
        kind, b = rng.choice(changed) if changed and rng.random() < 0.5 else rng.choice(kept)
        label = 0 if (kind, b) in changed else 1
        if normalize_prompt(b) != normalize_prompt(text):
            pairs.append({"a": text, "b": b, "label": label, "kind": kind})
    return pairs


def stream_samples(limit: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """The seeded samples of the streams that are replayed: (normalised text, class) in stream order."""
    rng = random.Random(seed)
    out = {}
    for name, path in STREAMS.items():
        rows = read_jsonl(path)
        keep = sorted(rng.sample(range(len(rows)), min(limit, len(rows))))
        out[name] = [(normalize_prompt(rows[i]["text"]), str(rows[i]["cls"])) for i in keep]
    return out


def evaluation_streams(limit: int, seed: int) -> dict[str, set[str]]:
    """The normalised texts of the replayed samples, per stream (for keeping them out of training)."""
    return {name: {t for t, _c in items} for name, items in stream_samples(limit, seed).items()}


def configs(weights: ModelWeights, model_thresholds: list[float], floors: list[float],
            baselines: bool, static: list[float], compare: ModelWeights | None) -> list[Config]:
    out = [Config("rules 0.85", 0.85, RuleVerifier)]
    out += [Config(f"off {t:.2f}", t, lambda: None) for t in static]
    if compare is not None:
        for floor in floors:
            for p in model_thresholds:
                out.append(Config(f"compared weights: combined {floor:.2f}, p>={p:.2f}", floor,
                                  lambda p=p: CombinedVerifier(ModelVerifier(compare, accept_threshold=p))))
    if baselines:
        out += [Config("off 0.85", 0.85, lambda: None), Config("rules 0.80", 0.80, RuleVerifier)]
    for floor in floors:
        if baselines:
            out.append(Config(f"combined {floor:.2f} (shipped p>={weights.accept_threshold:.2f})", floor,
                              lambda: CombinedVerifier(ModelVerifier(weights))))
        for p in model_thresholds:
            out.append(Config(f"combined {floor:.2f}, p>={p:.2f}", floor,
                              lambda p=p: CombinedVerifier(ModelVerifier(weights, accept_threshold=p))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--model-thresholds", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--adversarial-dev", type=int, default=1500,
                        help="generated adversarial development pairs (from QQP train-split and stream texts)")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.80, 0.85])
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="only rules 0.85 and the combined rows with --model-thresholds")
    parser.add_argument("--static", type=float, nargs="*", default=[],
                        help="plain thresholds (verifier off) to add, e.g. 0.90")
    parser.add_argument("--compare-weights", type=Path, default=None,
                        help="a second weights file, run at the same floors and model thresholds")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "verifier-domains.json")
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cache = EmbeddingCache()
    streams = {name: (items, cache.get([t for t, _c in items]))
               for name, items in stream_samples(args.limit, args.seed).items()}
    _train, held = qqp_split(args.limit, args.limit)
    gptcache = read_jsonl(GPTCACHE)
    # The part of GPTCache's pairs a verifier trained on the mixed development set never saw (bench/verifier_mix.py).
    _fitted, gptcache_held = split_pairs(GPTCACHE)
    adversarial = read_jsonl(ADVERSARIAL)
    dev_texts = [p["a"] for p in _train[:2000]] + [t for items, _v in streams.values() for t, _c in items[:1000]]
    generated = adversarial_dev(dev_texts, random.Random(args.seed), args.adversarial_dev)
    pairs = {"qqp (held-back dev)": held, "gptcache": gptcache, "gptcache (held-back)": gptcache_held}
    pair_vectors = {name: (cache.get([p["a"] for p in ps]), cache.get([p["b"] for p in ps]))
                    for name, ps in {**pairs, "adversarial": adversarial, "adversarial-dev": generated}.items()}
    weights = ModelWeights.load(args.weights)
    results: list[dict[str, Any]] = []
    compare = ModelWeights.load(args.compare_weights) if args.compare_weights is not None else None
    for config in configs(weights, args.model_thresholds, args.floors, args.baselines, args.static, compare):
        row: dict[str, Any] = {"config": config.name}
        for name, (items, vectors) in streams.items():
            row[name] = run_stream(items, vectors, config).row()
        for name, ps in pairs.items():
            row[name] = run_shared_pairs(ps, *pair_vectors[name], config).row()
        row["adversarial"] = run_per_pair(adversarial, *pair_vectors["adversarial"], config).row()
        row["adversarial-dev"] = run_per_pair(generated, *pair_vectors["adversarial-dev"], config).row()
        results.append(row)
        print(f"  {config.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    reference = next(r for r in results if r["config"] == "rules 0.85")
    domains = [*streams, *pairs]
    headers = ["config", *(f"{d}: right hits / precision" for d in domains), "worst right hits vs rules 0.85",
               "adversarial: precision / recall", f"adversarial-dev ({len(generated)}): precision / recall"]
    table = []
    for r in results:
        ratios = [r[d]["right"] / max(reference[d]["right"], 1) for d in domains]
        adv, gen = r["adversarial"], r["adversarial-dev"]
        table.append([r["config"], *(f"{r[d]['right']} / {r[d]['precision']:.3f}" if r[d]["precision"] is not None
                                     else f"{r[d]['right']} / n/a" for d in domains),
                      f"{min(ratios):.3f}",
                      f"{adv['precision']:.3f} / {adv['recall']:.3f}" if adv["precision"] is not None else "n/a",
                      f"{gen['precision']:.3f} / {gen['recall']:.3f}" if gen["precision"] is not None else "n/a"])
    elapsed = time.perf_counter() - started
    print(text_table(headers, table))
    print(f"\nruntime {elapsed:.1f} s; load average {machine()['load_average']}")
    write_json(args.out, {"date": utc_now(), "machine": machine(), "seconds": round(elapsed, 1), "results": results,
                          "limit": args.limit, "seed": args.seed})
    if args.markdown_out is not None:
        args.markdown_out.write_text(markdown_table(headers, table) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
