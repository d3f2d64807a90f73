"""A blind reading of served hits on the QQP held-back split: precision by careful readers, not only by QQP's labels.

QQP's labels are noisy (many pairs labelled 0 are plainly the same question, and some labelled 1 are not), so
"precision of served hits" on QQP mixes two things: hits that answer a different question, and disagreement with
QQP's labelling. This script compares the plain threshold (static 0.90) with the shipped verifier by readers'
judgments of "would the answer written for A correctly answer B?", on the held-back split only.

Design: the hits the two configurations serve fall in three strata (served by both, by the static threshold only,
by the verifier only). A random sample of each stratum (its members with the lowest seeded hash of their id, so
that a retrained model, which moves a few pairs between strata, keeps most of the sample) is written without
labels, configuration or stratum (ids and texts only), read separately by each reader, and each configuration's
precision is the stratum-weighted mean of the readers' majority verdicts. Sampling the strata where the two
differ is what makes the difference between them measurable with a few hundred judgments. Nothing here is used
for training or tuning.

    .venv/bin/python bench/verifier_audit.py draw        # writes bench/out/audit-blind.jsonl (unjudged pairs only)
    # each reader appends to bench/audit/judgments-NAME.jsonl: {"id": "...", "same": true|false, "why": "..."}
    .venv/bin/python bench/verifier_audit.py score bench/audit/judgments-*.jsonl

The judgments in bench/audit/ also hold pairs of earlier draws; `score` counts only the current sample.

Ids are the first 12 hex digits of sha256(a + "\\n" + b), so judgments stay tied to the pairs of
../shared/data/qqp_gptcache_dev.jsonl whatever the order of the data file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import cohen_kappa_score

from bench.common import OUT_DIR, markdown_table, write_json
from bench.verifier_data import EmbeddingCache, pair_vectors, qqp_split, read_jsonl
from bench.verifier_eval import Config, configs, served_pairs
from cachesvc.core.verify import WEIGHTS_FILE

BLIND_FILE = OUT_DIR / "audit-blind.jsonl"
JUDGMENTS_DIR = Path(__file__).resolve().parent / "audit"
PER_STRATUM = 200
SEED = 0
Z95 = 1.96


def pair_id(pair: dict[str, Any]) -> str:
    return hashlib.sha256(f"{pair['a']}\n{pair['b']}".encode()).hexdigest()[:12]


def audited_configs() -> tuple[Config, Config]:
    """The plain threshold the verifier's recall is matched to, and the shipped default."""
    every = configs(WEIGHTS_FILE)
    return every[0], every[-1]


@dataclass(frozen=True)
class Stratum:
    name: str
    members: frozenset[str]  # ids of the served hits in the stratum
    sample: list[str]  # the random sample of them that readers judge

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class Audit:
    pairs: dict[str, dict[str, Any]]  # id -> held-back pair
    both: Stratum
    static_only: Stratum
    verifier_only: Stratum


def draw_strata(per_stratum: int) -> Audit:
    _train, held = qqp_split(None, None)
    ua, vb = pair_vectors(EmbeddingCache(), held)
    static, verifier = ({pair_id(p) for p, s in zip(held, served_pairs(held, ua, vb, cfg), strict=True) if s}
                        for cfg in audited_configs())

    def stratum(name: str, ids: set[str]) -> Stratum:
        chosen = sorted(ids, key=lambda i: hashlib.sha256(f"{SEED}:{i}".encode()).digest())[:per_stratum]
        return Stratum(name, frozenset(ids), chosen)

    return Audit({pair_id(p): p for p in held}, stratum("both", static & verifier),
                 stratum("static only", static - verifier), stratum("verifier only", verifier - static))


def draw(per_stratum: int) -> int:
    audit = draw_strata(per_stratum)
    judged = {r["id"] for path in JUDGMENTS_DIR.glob("judgments-*.jsonl") for r in read_jsonl(path)}
    ids = sorted({i for s in (audit.both, audit.static_only, audit.verifier_only) for i in s.sample} - judged)
    random.Random(SEED).shuffle(ids)  # strata mixed, so a reader cannot tell where a pair came from
    BLIND_FILE.parent.mkdir(parents=True, exist_ok=True)
    with BLIND_FILE.open("w", encoding="utf-8") as f:
        for i in ids:
            pair = audit.pairs[i]
            f.write(json.dumps({"id": i, "a": pair["a"], "b": pair["b"]}, ensure_ascii=False) + "\n")
    print(f"wrote {len(ids)} unjudged pairs to {BLIND_FILE}", file=sys.stderr)
    return 0


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}-{self.high:.3f}]"


def stratified(parts: list[tuple[float, list[bool]]]) -> Estimate:
    """Sum of weight * (share of True) over independent stratum samples, with a normal 95% interval."""
    value = sum(w * sum(xs) / len(xs) for w, xs in parts)
    variance = sum(w * w * (p := sum(xs) / len(xs)) * (1 - p) / max(len(xs) - 1, 1) for w, xs in parts)
    half = Z95 * math.sqrt(variance)
    return Estimate(value, value - half, value + half)


def score(paths: list[Path], per_stratum: int, out: Path) -> int:
    audit = draw_strata(per_stratum)
    readers = {p.stem.removeprefix("judgments-"): {r["id"]: bool(r["same"]) for r in read_jsonl(p)} for p in paths}
    strata = (audit.both, audit.static_only, audit.verifier_only)
    for name, judged in readers.items():
        missing = {i for s in strata for i in s.sample} - judged.keys()
        if missing:
            raise SystemExit(f"{name}: {len(missing)} sampled pairs have no judgment; run `draw` and read them")
    names = sorted(readers)
    judged_ids = {s.name: s.sample for s in strata}
    sampled = [i for s in strata for i in judged_ids[s.name]]
    verdicts: dict[str, dict[str, bool]] = {
        "QQP labels": {i: bool(audit.pairs[i]["label"]) for i in sampled},
        **{n: {i: readers[n][i] for i in sampled} for n in names},
        "majority of readers": {i: 2 * sum(readers[n][i] for n in names) > len(names) for i in sampled},
    }
    static_n = audit.both.size + audit.static_only.size
    verifier_n = audit.both.size + audit.verifier_only.size

    def share(judge: str, s: Stratum) -> list[bool]:
        return [verdicts[judge][i] for i in judged_ids[s.name]]

    result: dict[str, Any] = {"strata": {s.name: {"served": s.size, "judged": len(judged_ids[s.name])} for s in strata}}
    rows = []
    for judge in verdicts:
        static = stratified([(audit.both.size / static_n, share(judge, audit.both)),
                             (audit.static_only.size / static_n, share(judge, audit.static_only))])
        verifier = stratified([(audit.both.size / verifier_n, share(judge, audit.both)),
                               (audit.verifier_only.size / verifier_n, share(judge, audit.verifier_only))])
        difference = stratified([(audit.both.size / verifier_n - audit.both.size / static_n, share(judge, audit.both)),
                                 (audit.verifier_only.size / verifier_n, share(judge, audit.verifier_only)),
                                 (-audit.static_only.size / static_n, share(judge, audit.static_only))])
        per_stratum_share = {s.name: sum(share(judge, s)) / len(judged_ids[s.name]) for s in strata}
        result[judge] = {"static": static.__dict__, "verifier": verifier.__dict__, "difference": difference.__dict__,
                         "same_by_stratum": per_stratum_share}
        rows.append([judge, *(f"{per_stratum_share[s.name]:.3f}" for s in strata), str(static), str(verifier),
                     str(difference)])
    # The same figures from QQP's labels over every served hit (no sampling): how far the sample's label-based
    # estimate lands from the whole population's.
    everyone = {i: bool(audit.pairs[i]["label"]) for s in strata for i in s.members}
    exact = {s.name: sum(everyone[i] for i in s.members) / s.size for s in strata}
    exact_static = (exact["both"] * audit.both.size + exact["static only"] * audit.static_only.size) / static_n
    exact_verifier = (exact["both"] * audit.both.size + exact["verifier only"] * audit.verifier_only.size) / verifier_n
    result["QQP labels, every served hit"] = {"static": exact_static, "verifier": exact_verifier,
                                              "same_by_stratum": exact}
    rows.append(["QQP labels, every served hit (no sampling)", *(f"{exact[s.name]:.3f}" for s in strata),
                 f"{exact_static:.3f}", f"{exact_verifier:.3f}", f"{exact_verifier - exact_static:.3f}"])
    def judgments(judge: str) -> list[bool]:
        return [verdicts[judge][i] for i in sampled]

    agreement = {f"{n} vs QQP labels": float(cohen_kappa_score(judgments(n), judgments("QQP labels"))) for n in names}
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            agreement[f"{a} vs {b}"] = float(cohen_kappa_score(judgments(a), judgments(b)))
    result["kappa"] = agreement
    static_cfg, verifier_cfg = audited_configs()
    text = "\n".join([
        f"QQP held-back split: served hits of `{static_cfg.name}` ({static_n}) and `{verifier_cfg.name}` "
        f"({verifier_n}), in three strata: both {audit.both.size}, static only {audit.static_only.size}, verifier "
        f"only {audit.verifier_only.size}; judged by every reader: "
        + ", ".join(f"{s.name} {len(judged_ids[s.name])}" for s in strata)
        + ". Share judged the same question per stratum, and precision of served hits per configuration "
        "(stratum-weighted, normal 95% intervals):", "",
        markdown_table(["judged by", *(f"same: {s.name}" for s in strata), "precision, static 0.90",
                        "precision, shipped verifier", "verifier - static"], rows), "",
        "Cohen's kappa over the sampled pairs: " + "; ".join(f"{k} {v:.2f}" for k, v in agreement.items()) + ".",
    ])
    write_json(out, result)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["draw", "score"])
    parser.add_argument("judgments", nargs="*", type=Path, help="score: the readers' judgment files")
    parser.add_argument("--per-stratum", type=int, default=PER_STRATUM)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "verifier-audit.json")
    args = parser.parse_args(argv)
    if args.command == "draw":
        return draw(args.per_stratum)
    if not args.judgments:
        parser.error("score needs at least one judgments file")
    return score(args.judgments, args.per_stratum, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
