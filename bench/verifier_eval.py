"""Hit quality and cost with and without the hit verifier.

Quality is computed offline from cached embeddings (bench/verifier_data.py; the same normalised-prompt vectors
the server computes) with the server's own decision code (`cachesvc.core.verify`), replaying what a lookup does:
- pairs (per-pair scopes): store `a`, look up `b`; served when the cosine clears the threshold and the verifier
  (if any) accepts. Precision of served hits, recall of positives, false-hit rate on negatives, Wilson 95% CIs.
- streams (one shared scope): replay in order, exact path first, else the top-4 nearest best first; store on a
  miss. A hit is right when the entry came from a text of the same class.
Cost is measured through two real in-process gRPC servers (verifier off / shipped default), same prompts, one run.

    .venv/bin/python bench/verifier_data.py --full     # once: embeds the whole held-back split (cached)
    .venv/bin/python bench/verifier_eval.py [--stream-limit 1500] [--latency-lookups 400] [--skip-latency]

QQP figures are on the whole held-back split (~18,000 pairs) and on its 3,000-pair sample (the first 3,000 of the
same seeded shuffle); nothing was trained or tuned on either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA_DIR, DEFAULT_MODEL_DIR, OUT_DIR, machine, markdown_table, percentile, utc_now, write_json
from bench.verifier_data import (
    ADVERSARIAL,
    HELDOUT_LIMIT,
    STATIC_BASELINE,
    EmbeddingCache,
    pair_vectors,
    qqp_split,
    read_jsonl,
)
from cachesvc.calibrate import Rate, wilson
from cachesvc.config import Fsync, Settings
from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.verify import (
    WEIGHTS_FILE,
    CombinedVerifier,
    HitVerifier,
    ModelVerifier,
    ModelWeights,
    RuleVerifier,
    VerifierMode,
    VerifyInput,
)

DEFAULTS = Settings()


def fmt(rate: Rate) -> str:
    if rate.value is None:
        return "n/a"
    return f"{rate.value:.3f} [{rate.low:.3f}-{rate.high:.3f}]"


class Config:
    def __init__(self, name: str, threshold: float, verifier: HitVerifier | None) -> None:
        self.name, self.threshold, self.verifier = name, threshold, verifier


def configs(weights: Path) -> list[Config]:
    model = ModelVerifier(ModelWeights.load(weights))
    floor = DEFAULTS.recall_similarity
    # Fixed static baselines (not the server's current default threshold), so runs stay comparable: 0.90 is the
    # one whose recall the verifier's decision threshold is tuned to match.
    return [
        Config("static 0.90 (verifier off)", STATIC_BASELINE, None),
        Config("static 0.95", 0.95, None),
        Config(f"static {floor:.2f}", floor, None),
        Config(f"rules, floor {floor:.2f}", floor, RuleVerifier()),
        Config(f"rules, floor {STATIC_BASELINE:.2f}", STATIC_BASELINE, RuleVerifier()),
        Config(f"model, floor {floor:.2f}", floor, model),
        Config(f"combined, floor {floor:.2f} (shipped)", floor, CombinedVerifier(model)),
    ]


def accepts(cfg: Config, query: str, candidate: str, qv: np.ndarray, cv: np.ndarray, sim: float) -> bool:
    if sim < cfg.threshold:
        return False
    if cfg.verifier is None:
        return True
    return cfg.verifier.verify(VerifyInput(query=query, candidate=candidate, query_vector=qv, candidate_vector=cv,
                                           similarity=sim)).accepted


def served_pairs(pairs: list[dict[str, Any]], ua: np.ndarray, vb: np.ndarray, cfg: Config) -> list[bool]:
    """Per pair (store `a`, look up `b` in a scope of its own): is `a`'s answer served?"""
    sims = np.clip(np.sum(ua * vb, axis=1), 0.0, 1.0)
    return [
        normalize_prompt(p["a"]) == normalize_prompt(p["b"])  # the exact path
        or accepts(cfg, normalize_prompt(p["b"]), normalize_prompt(p["a"]), v, u, float(s))
        for p, u, v, s in zip(pairs, ua, vb, sims, strict=True)
    ]


def eval_pairs(pairs: list[dict[str, Any]], ua: np.ndarray, vb: np.ndarray, cfgs: list[Config]) -> list[dict[str, Any]]:
    labels = [int(p["label"]) for p in pairs]
    rows = []
    for cfg in cfgs:
        served = served_pairs(pairs, ua, vb, cfg)
        tp = sum(1 for s, y in zip(served, labels, strict=True) if s and y)
        fp = sum(1 for s, y in zip(served, labels, strict=True) if s and not y)
        pos, neg = sum(labels), len(labels) - sum(labels)
        rows.append({"config": cfg.name, "precision": wilson(tp, tp + fp), "recall": wilson(tp, pos),
                     "false_hit_rate": wilson(fp, neg), "served": tp + fp, "pairs": len(pairs)})
    return rows


def eval_stream(items: list[dict[str, Any]], vectors: np.ndarray, cfg: Config, top_k: int = 4) -> dict[str, Any]:
    texts: list[str] = []
    classes: list[str] = []
    stored = np.zeros((len(items), vectors.shape[1]), dtype=np.float32)
    exact: dict[str, int] = {}
    hits = right = 0
    for item, v in zip(items, vectors, strict=True):
        text = normalize_prompt(item["text"])
        served: int | None = exact.get(text)
        if served is None and texts:
            sims = stored[:len(texts)] @ v
            order = np.argsort(-sims)[:top_k]
            for j in order:
                sim = float(np.clip(sims[j], 0.0, 1.0))
                if sim < cfg.threshold:
                    break
                if accepts(cfg, text, texts[j], v, stored[j], sim):
                    served = int(j)
                    break
                if cfg.verifier is None:
                    break
        if served is not None:
            hits += 1
            right += classes[served] == item["cls"]
        else:
            exact[text] = len(texts)
            stored[len(texts)] = v
            texts.append(text)
            classes.append(item["cls"])
    return {"config": cfg.name, "hit_rate": wilson(hits, len(items)), "precision": wilson(right, hits),
            "hits": hits, "queries": len(items)}


def sample_stream(path: Path, limit: int, max_chars: int) -> list[dict[str, Any]]:
    items = read_jsonl(path)
    if limit and len(items) > limit:
        keep = sorted(random.Random(0).sample(range(len(items)), limit))
        items = [items[i] for i in keep]
    return [{**it, "text": it["text"][:max_chars]} for it in items]


async def latency(lookups: int, entries: int, weights: Path, model_dir: Path) -> dict[str, Any]:
    """p50 of a semantic lookup through two real servers (verifier off / shipped), interleaved, same prompts."""
    import tempfile

    from cachesvc.app import App
    from cachesvc_client import AsyncCacheClient

    _train, held = qqp_split()
    rng = random.Random(1)
    stored = [p["a"] for p in held[:entries]]
    queries = [p["b"] for p in rng.sample(held, lookups)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        apps = {}
        # The plain server at the static baseline the verifier's recall is matched to; the verifier's at its floor.
        for name, mode in (("off", VerifierMode.OFF), ("combined", VerifierMode.COMBINED)):
            app = App(Settings(host="127.0.0.1", port=0, metrics_port=-1, data_dir=Path(tmp) / name,
                               model_dir=model_dir, fsync=Fsync.NO, verifier=mode, embed_workers=1,
                               min_similarity=STATIC_BASELINE, verifier_weights=str(weights)))
            await app.start()
            apps[name] = app
        try:
            clients = {n: AsyncCacheClient(f"127.0.0.1:{a.port}") for n, a in apps.items()}
            for c in clients.values():
                for text in stored:
                    await c.store(text, "x")
            wall: dict[str, list[float]] = {n: [] for n in apps}
            server: dict[str, list[float]] = {n: [] for n in apps}
            hits: dict[str, int] = dict.fromkeys(apps, 0)
            for i, q in enumerate(queries):
                for n in (("off", "combined") if i % 2 == 0 else ("combined", "off")):
                    t = time.perf_counter()
                    r = await clients[n].lookup(q)
                    wall[n].append((time.perf_counter() - t) * 1000)
                    server[n].append(r.timings.total_ms)
                    hits[n] += r.hit
            for c in clients.values():
                await c.aclose()
        finally:
            for app in apps.values():
                await app.aclose()
    for n in wall:
        results[n] = {"p50_ms": percentile(wall[n], 50), "p95_ms": percentile(wall[n], 95),
                      "server_p50_ms": percentile(server[n], 50), "hits": hits[n]}
    return {"entries": entries, "lookups": lookups, **results}


def verify_cost(pairs: list[dict[str, Any]], ua: np.ndarray, vb: np.ndarray, weights: Path) -> dict[str, float]:
    """Microseconds per verify() call of the shipped combined verifier (median of 5 passes), over all pairs and over
    the candidates only (cosine >= the default floor: the calls a server makes; the rules reject some early)."""
    verifier = CombinedVerifier(ModelVerifier(ModelWeights.load(weights)))
    inputs = [VerifyInput(query=normalize_prompt(p["b"]), candidate=normalize_prompt(p["a"]), query_vector=v,
                          candidate_vector=u, similarity=float(u @ v)) for p, u, v in zip(pairs, ua, vb, strict=True)]
    candidates = [item for item in inputs if item.similarity >= DEFAULTS.recall_similarity]
    cost = {}
    for name, items in (("us_per_verify", inputs), ("us_per_verify_candidates", candidates)):
        passes = []
        for _ in range(5):
            t = time.perf_counter()
            for item in items:
                verifier.verify(item)
            passes.append((time.perf_counter() - t) / len(items) * 1e6)
        cost[name] = statistics.median(passes)
    return cost


def pair_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(["config", "precision of served hits", "recall", "false-hit rate (negatives)", "served"],
                          [[r["config"], fmt(r["precision"]), fmt(r["recall"]), fmt(r["false_hit_rate"]),
                            r["served"]] for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream-limit", type=int, default=1500)
    parser.add_argument("--sharegpt-limit", type=int, default=600)
    parser.add_argument("--max-chars", type=int, default=2000)
    parser.add_argument("--latency-lookups", type=int, default=400)
    parser.add_argument("--latency-entries", type=int, default=1000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "verifier-eval.json")
    parser.add_argument("--weights", type=Path, default=WEIGHTS_FILE, help="the learned model to evaluate")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="the embedding model whose vectors the verifier sees (e.g. the int8 export)")
    args = parser.parse_args(argv)

    # The default model's vectors are the ones training cached; another model's get a cache of their own.
    cache = (EmbeddingCache() if args.model_dir.resolve() == DEFAULT_MODEL_DIR.resolve() else
             EmbeddingCache(OUT_DIR / f"verifier-embeddings-{args.model_dir.name}.npz", args.model_dir))
    cfgs = configs(args.weights)
    out: dict[str, Any] = {"date": utc_now(), "machine": machine(), "weights": str(args.weights),
                           "model_dir": str(args.model_dir), "defaults": {
                               "min_similarity": DEFAULTS.min_similarity,
                               "recall_similarity": DEFAULTS.recall_similarity}}
    md: list[str] = []

    _train, held_full = qqp_split(None, None)
    full_ua, full_vb = pair_vectors(cache, held_full)
    rows = eval_pairs(held_full, full_ua, full_vb, cfgs)
    out["qqp_held_back_full"] = rows
    md += [f"QQP held-back split, all of it ({len(held_full)} pairs, {sum(p['label'] for p in held_full)} positive), "
           "per-pair scopes:", "", pair_table(rows), ""]
    # The 3,000-pair sample is the first 3,000 of the same shuffled split (the figure reported before the full
    # split was embedded).
    held, ua, vb = held_full[:HELDOUT_LIMIT], full_ua[:HELDOUT_LIMIT], full_vb[:HELDOUT_LIMIT]
    rows = eval_pairs(held, ua, vb, cfgs)
    out["qqp_held_back"] = rows
    md += [f"QQP held-back sample ({len(held)} pairs, {sum(p['label'] for p in held)} positive), per-pair scopes:",
           "", pair_table(rows), ""]
    # The static threshold with the recall the shipped verifier gives, for a like-for-like precision.
    sims = np.clip(np.sum(ua * vb, axis=1), 0.0, 1.0)
    labels = np.array([p["label"] for p in held])
    shipped_recall = rows[-1]["recall"].value
    matched = None
    for t in np.round(np.arange(0.99, 0.5, -0.005), 3):
        served = sims >= t
        if labels[served].sum() / labels.sum() >= shipped_recall:
            tp = int(labels[served].sum())
            matched = {"threshold": float(t), "precision": wilson(tp, int(served.sum())),
                       "recall": wilson(tp, int(labels.sum()))}
            break
    out["qqp_matched_static"] = matched
    if matched is not None:
        md += [f"Static threshold with the same recall as the shipped verifier: {matched['threshold']:.3f}, "
               f"precision {fmt(matched['precision'])}, recall {fmt(matched['recall'])}.", ""]

    adv = read_jsonl(ADVERSARIAL)
    ua2, vb2 = pair_vectors(cache, adv)
    rows = eval_pairs(adv, ua2, vb2, cfgs)
    out["adversarial"] = rows
    md += [f"Adversarial pairs (tests/data/adversarial_pairs.jsonl, {len(adv)} pairs, "
           f"{sum(p['label'] for p in adv)} paraphrases):", "", pair_table(rows), ""]

    mock = read_jsonl(DATA_DIR / "gptcache_mock_positive_only.jsonl")
    ua3, vb3 = pair_vectors(cache, mock)
    rows = eval_pairs(mock, ua3, vb3, cfgs)
    out["gptcache_mock"] = rows
    md += [f"GPTCache mock pairs ({len(mock)} pairs, all positive: recall only):", "",
           markdown_table(["config", "recall"], [[r["config"], fmt(r["recall"])] for r in rows]), ""]

    for name, limit in (("banking77_train_stream", args.stream_limit), ("clinc150_trainval_stream", args.stream_limit),
                        ("sharegpt_first_prompts", args.sharegpt_limit)):
        items = sample_stream(DATA_DIR / f"{name}.jsonl", limit, args.max_chars)
        vectors = cache.get([it["text"] for it in items])
        stream_rows = [eval_stream(items, vectors, cfg) for cfg in cfgs]
        out[name] = stream_rows
        md += [f"{name} (stream, {len(items)} texts sampled in order, one shared scope, store on miss):", "",
               markdown_table(["config", "hit rate", "precision of hits", "hits"],
                              [[r["config"], fmt(r["hit_rate"]), fmt(r["precision"]), r["hits"]]
                               for r in stream_rows]), ""]

    out["verify_cost"] = verify_cost(held, ua, vb, args.weights)
    md += [f"verify() of the shipped combined verifier: {out['verify_cost']['us_per_verify']:.0f} us per call "
           f"({out['verify_cost']['us_per_verify_candidates']:.0f} us over the candidates with cosine >= "
           f"{DEFAULTS.recall_similarity:.2f}; median of 5 passes over the QQP held-back sample).", ""]
    if not args.skip_latency:
        lat = asyncio.run(latency(args.latency_lookups, args.latency_entries, args.weights, args.model_dir))
        out["latency"] = lat
        md += [f"Semantic lookup latency, two in-process servers in one run ({lat['entries']} entries, "
               f"{lat['lookups']} lookups each, interleaved):", "",
               markdown_table(["verifier", "client p50 ms", "client p95 ms", "server total p50 ms", "hits"],
                              [[n, f"{lat[n]['p50_ms']:.2f}", f"{lat[n]['p95_ms']:.2f}",
                                f"{lat[n]['server_p50_ms']:.2f}", lat[n]["hits"]] for n in ("off", "combined")]),
               ""]
    write_json(args.out, json.loads(json.dumps(out, default=lambda o: o.__dict__)))
    text = "\n".join(md)
    args.out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
