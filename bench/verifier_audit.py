"""A blind reading of served hits on the QQP held-back split: precision by readers, not only by QQP's labels.

QQP's labels are noisy (many pairs labelled 0 are plainly the same question, and some labelled 1 are not), so
"precision of served hits" on QQP mixes two things: hits that answer a different question, and disagreement with
QQP's labelling. This script compares the plain threshold (static 0.90) with the shipped verifier by readers'
judgments of "would the answer written for A correctly answer B?", on the held-back split only.

Design: the hits the two configurations serve fall in three strata (served by both, by the static threshold only,
by the verifier only). `draw` takes a random sample of each stratum (its members with the lowest seeded hash of
their id, so that a retrained model, which moves a few pairs between strata, keeps most of the sample), records
it in bench/audit/sample.json (stratum sizes, QQP's label share over each whole stratum, the sampled ids), and
writes the pairs a reader has not judged yet without labels, configuration or stratum (ids and texts only).
`score` needs no embeddings: each configuration's precision is the stratum-weighted share of sampled pairs judged
the same question (normal 95% intervals, without the finite-population correction, so slightly wide). Sampling
the strata where the two configurations differ is what makes their difference measurable with a few hundred
judgments. Nothing here is used for training or tuning.

    .venv/bin/python bench/verifier_audit.py draw [--reader NAME]   # bench/out/audit-blind.jsonl: pairs to read
    # each reader appends to bench/audit/judgments-NAME.jsonl: {"id": "...", "same": true|false, "why": "..."}
    .venv/bin/python bench/verifier_audit.py score bench/audit/judgments-*.jsonl

The judgment files also hold pairs of earlier draws; `score` counts only the recorded sample. Ids are the first
12 hex digits of sha256(a + "\\n" + b), so judgments stay tied to the pairs of
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
from bench.verifier_data import QQP, EmbeddingCache, pair_vectors, qqp_split, read_jsonl
from bench.verifier_eval import Config, configs, served_pairs
from cachesvc.core.verify import WEIGHTS_FILE

AUDIT_DIR = Path(__file__).resolve().parent / "audit"
SAMPLE_FILE = AUDIT_DIR / "sample.json"
BLIND_FILE = OUT_DIR / "audit-blind.jsonl"
PER_STRATUM = 200
SEED = 0
Z95 = 1.96
STRATA = ("both", "static only", "verifier only")


def pair_id(pair: dict[str, Any]) -> str:
    return hashlib.sha256(f"{pair['a']}\n{pair['b']}".encode()).hexdigest()[:12]


def audited_configs() -> tuple[Config, Config]:
    """The plain threshold the verifier's recall is matched to, and the shipped default."""
    every = configs(WEIGHTS_FILE)
    return every[0], every[-1]


@dataclass(frozen=True)
class Stratum:
    name: str
    served: int  # served hits in the stratum
    label_share: float  # share labelled 1 by QQP over the whole stratum
    sample: list[str]  # ids of the sampled pairs


def draw_sample(per_stratum: int) -> dict[str, Any]:
    """The strata of the shipped configuration and their samples (needs the held-back split's embeddings)."""
    _train, held = qqp_split(None, None)
    ua, vb = pair_vectors(EmbeddingCache(), held)
    cfgs = audited_configs()
    static, verifier = ({pair_id(p) for p, s in zip(held, served_pairs(held, ua, vb, cfg), strict=True) if s}
                        for cfg in cfgs)
    label = {pair_id(p): int(p["label"]) for p in held}
    strata = {}
    for name, ids in zip(STRATA, (static & verifier, static - verifier, verifier - static), strict=True):
        chosen = sorted(ids, key=lambda i: hashlib.sha256(f"{SEED}:{i}".encode()).digest())[:per_stratum]
        strata[name] = {"served": len(ids), "label_share": sum(label[i] for i in ids) / len(ids), "sample": chosen}
    return {"configs": [c.name for c in cfgs], "weights_sha256": hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest(),
            "seed": SEED, "strata": strata}


def load_strata(path: Path = SAMPLE_FILE) -> list[Stratum]:
    recorded = json.loads(path.read_text(encoding="utf-8"))["strata"]
    return [Stratum(name, int(recorded[name]["served"]), float(recorded[name]["label_share"]),
                    list(recorded[name]["sample"])) for name in STRATA]


def read_judgments(path: Path) -> dict[str, bool]:
    return {r["id"]: bool(r["same"]) for r in read_jsonl(path)}


def draw(per_stratum: int, reader: str | None) -> int:
    sample = draw_sample(per_stratum)
    AUDIT_DIR.mkdir(parents=True, exist_ok=True)
    SAMPLE_FILE.write_text(json.dumps(sample, indent=1) + "\n", encoding="utf-8")
    wanted = {i for s in sample["strata"].values() for i in s["sample"]}
    if reader is not None:
        path = AUDIT_DIR / f"judgments-{reader}.jsonl"
        unread = wanted - (read_judgments(path).keys() if path.is_file() else set())
    else:  # what some existing reader still lacks (everything, if there is no reader yet)
        judged = [read_judgments(p).keys() for p in sorted(AUDIT_DIR.glob("judgments-*.jsonl"))]
        unread = wanted - set.intersection(*(set(j) for j in judged)) if judged else wanted
    pairs = {pair_id(p): p for p in read_jsonl(QQP)}
    ids = sorted(unread)
    random.Random(SEED).shuffle(ids)  # strata mixed, so a reader cannot tell where a pair came from
    BLIND_FILE.parent.mkdir(parents=True, exist_ok=True)
    with BLIND_FILE.open("w", encoding="utf-8") as f:
        for i in ids:
            f.write(json.dumps({"id": i, "a": pairs[i]["a"], "b": pairs[i]["b"]}, ensure_ascii=False) + "\n")
    print(f"recorded the sample in {SAMPLE_FILE}; wrote {len(ids)} pairs to read to {BLIND_FILE}", file=sys.stderr)
    return 0


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}-{self.high:.3f}]"

    def scaled(self, factor: float) -> str:
        return f"{self.value * factor:.0f} [{self.low * factor:.0f}-{self.high * factor:.0f}]"


def stratified(parts: list[tuple[float, list[bool]]]) -> Estimate:
    """Sum of weight * (share of True) over independent stratum samples, with a normal 95% interval."""
    value = sum(w * sum(xs) / len(xs) for w, xs in parts)
    variance = sum(w * w * (p := sum(xs) / len(xs)) * (1 - p) / max(len(xs) - 1, 1) for w, xs in parts)
    half = Z95 * math.sqrt(variance)
    return Estimate(value, value - half, value + half)


def score(paths: list[Path], out: Path) -> int:
    both, static_only, verifier_only = strata = load_strata()
    readers = {p.stem.removeprefix("judgments-"): read_judgments(p) for p in paths}
    sampled = [i for s in strata for i in s.sample]
    for name, judged in readers.items():
        missing = set(sampled) - judged.keys()
        if missing:
            raise SystemExit(f"{name}: {len(missing)} sampled pairs have no judgment; run `draw --reader {name}`")
    labels = {pair_id(p): bool(p["label"]) for p in read_jsonl(QQP)}
    names = sorted(readers)
    verdicts: dict[str, dict[str, bool]] = {
        "QQP labels": {i: labels[i] for i in sampled},
        **{n: {i: readers[n][i] for i in sampled} for n in names},
        "majority of readers": {i: 2 * sum(readers[n][i] for n in names) > len(names) for i in sampled},
    }
    static_n, verifier_n = both.served + static_only.served, both.served + verifier_only.served

    def share(judge: str, s: Stratum) -> list[bool]:
        return [verdicts[judge][i] for i in s.sample]

    result: dict[str, Any] = {"strata": {s.name: {"served": s.served, "sampled": len(s.sample)} for s in strata}}
    rows, counts = [], []
    for judge in verdicts:
        static = stratified([(both.served / static_n, share(judge, both)),
                             (static_only.served / static_n, share(judge, static_only))])
        verifier = stratified([(both.served / verifier_n, share(judge, both)),
                               (verifier_only.served / verifier_n, share(judge, verifier_only))])
        difference = stratified([(both.served / verifier_n - both.served / static_n, share(judge, both)),
                                 (verifier_only.served / verifier_n, share(judge, verifier_only)),
                                 (-static_only.served / static_n, share(judge, static_only))])
        # Right hits: the same sums unnormalised; the verifier's minus static's only involves the strata that differ.
        right_change = stratified([(float(verifier_only.served), share(judge, verifier_only)),
                                   (-float(static_only.served), share(judge, static_only))])
        by_stratum = {s.name: sum(share(judge, s)) / len(s.sample) for s in strata}
        result[judge] = {"static": static.__dict__, "verifier": verifier.__dict__, "difference": difference.__dict__,
                         "right_hits_change": right_change.__dict__, "same_by_stratum": by_stratum}
        rows.append([judge, *(f"{by_stratum[s.name]:.3f}" for s in strata), str(static), str(verifier),
                     str(difference)])
        counts.append([judge, static.scaled(static_n), verifier.scaled(verifier_n),
                       f"{right_change.value:+.0f} [{right_change.low:+.0f} to {right_change.high:+.0f}]",
                       f"{static_n * (1 - static.value):.0f}", f"{verifier_n * (1 - verifier.value):.0f}"])
    # QQP's labels over every served hit (no sampling): how far the sample's label-based estimate lands from it.
    exact = {s.name: s.label_share for s in strata}
    exact_static = (exact["both"] * both.served + exact["static only"] * static_only.served) / static_n
    exact_verifier = (exact["both"] * both.served + exact["verifier only"] * verifier_only.served) / verifier_n
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
    text = "\n".join([
        f"QQP held-back split: {static_n} hits served by static 0.90 and {verifier_n} by the shipped verifier, in "
        f"three strata: both {both.served}, static only {static_only.served}, verifier only {verifier_only.served}; "
        + ", ".join(f"{len(s.sample)}" for s in strata) + " sampled. Share judged the same question per stratum, and "
        "precision of served hits per configuration (stratum-weighted, normal 95% intervals):", "",
        markdown_table(["judged by", *(f"same: {s.name}" for s in strata), "precision, static 0.90",
                        "precision, shipped verifier", "verifier - static"], rows), "",
        "Right and wrong served hits (estimated counts on the held-back split):", "",
        markdown_table(["judged by", "right, static 0.90", "right, verifier", "right: verifier - static",
                        "wrong, static 0.90", "wrong, verifier"], counts), "",
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
    parser.add_argument("--per-stratum", type=int, default=PER_STRATUM, help="draw: pairs sampled per stratum")
    parser.add_argument("--reader", help="draw: write the sampled pairs this reader has not judged yet")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "verifier-audit.json")
    args = parser.parse_args(argv)
    if args.command == "draw":
        return draw(args.per_stratum, args.reader)
    if not args.judgments:
        parser.error("score needs at least one judgments file")
    return score(args.judgments, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
