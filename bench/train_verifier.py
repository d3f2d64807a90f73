"""Trains the hit verifier's model and writes cachesvc/core/verifier_weights.npz.

Data: only the TRAIN split of ../shared/data/qqp_gptcache_dev.jsonl (70% of its connected components of
question texts, see bench/verifier_data.py); the held-back 30% is never read here. The decision threshold on the
model's probability is chosen on out-of-fold predictions (5 folds by component) of the train split: the highest
precision whose recall is at least what a static cosine threshold of 0.90 gives on the same pairs.

    .venv/bin/python bench/train_verifier.py [--hidden 32] [--epochs 40] [--out cachesvc/core/verifier_weights.npz]

The model: input standardisation -> one ReLU layer -> sigmoid, over `cachesvc.core.verify.features` (cosine,
|u-v|, u*v, the rule signals and lexical overlap). Trained with Adam and L2 on pairs whose cosine is at least
the candidate floor minus a margin (the verifier never sees pairs below the floor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT_DIR
from bench.verifier_data import EmbeddingCache, pair_vectors, qqp_split
from cachesvc.core.verify import WEIGHTS_FILE, rule_reason, signals
from cachesvc.core.verify import features as pair_features

STATIC_BASELINE = 0.90
TRAIN_MARGIN = 0.05


def build_features(pairs: list[dict[str, Any]], cache: EmbeddingCache) -> tuple[np.ndarray, ...]:
    """(X, cosine, label, rule-veto flag) for `pairs`."""
    ua, vb = pair_vectors(cache, pairs)
    cos = np.clip(np.sum(ua * vb, axis=1), 0.0, 1.0)
    rows, vetoed = [], []
    for p, u, v, c in zip(pairs, ua, vb, cos, strict=True):
        s = signals(p["b"], p["a"])  # query = b (looked up), candidate = a (stored)
        rows.append(pair_features(v, u, float(c), s))
        vetoed.append(rule_reason(s) is not None)
    labels = np.array([p["label"] for p in pairs], dtype=np.float32)
    return np.stack(rows), cos.astype(np.float32), labels, np.array(vetoed)


def train_mlp(x: np.ndarray, y: np.ndarray, *, hidden: int, epochs: int, l2: float, lr: float,
              seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = ((x - mean) / scale).astype(np.float32)
    d = z.shape[1]
    params = {
        "w1": (rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d)).astype(np.float32),
        "b1": np.zeros(hidden, dtype=np.float32),
        "w2": (rng.standard_normal((hidden, 1)) * np.sqrt(1.0 / hidden)).astype(np.float32),
        "b2": np.zeros(1, dtype=np.float32),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    s = {k: np.zeros_like(v) for k, v in params.items()}
    step = 0
    batch = 128
    for _epoch in range(epochs):
        order = rng.permutation(len(z))
        for start in range(0, len(z), batch):
            idx = order[start:start + batch]
            xb, yb = z[idx], y[idx].reshape(-1, 1)
            h_pre = xb @ params["w1"] + params["b1"]
            h = np.maximum(h_pre, 0)
            logit = h @ params["w2"] + params["b2"]
            p = 1 / (1 + np.exp(-np.clip(logit, -30, 30)))
            g_logit = (p - yb) / len(idx)
            grads = {"w2": h.T @ g_logit + l2 * params["w2"], "b2": g_logit.sum(axis=0)}
            g_h = (g_logit @ params["w2"].T) * (h_pre > 0)
            grads["w1"] = xb.T @ g_h + l2 * params["w1"]
            grads["b1"] = g_h.sum(axis=0)
            step += 1
            for k in params:
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                s[k] = 0.999 * s[k] + 0.001 * grads[k] ** 2
                m_hat = m[k] / (1 - 0.9 ** step)
                s_hat = s[k] / (1 - 0.999 ** step)
                params[k] -= (lr * m_hat / (np.sqrt(s_hat) + 1e-8)).astype(np.float32)
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32), **params}


def predict(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (x - weights["mean"]) / weights["scale"]
    h = np.maximum(z @ weights["w1"] + weights["b1"], 0)
    logit = (h @ weights["w2"] + weights["b2"]).reshape(-1)
    return np.asarray(1 / (1 + np.exp(-np.clip(logit, -30, 30))))


def operating_points(score: np.ndarray, served_mask: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """Precision and recall over all pairs for each probability threshold (candidates in served_mask only)."""
    positives = labels.sum()
    points = []
    for t in np.round(np.arange(0.05, 0.96, 0.01), 2):
        served = served_mask & (score >= t)
        tp = float((labels[served] == 1).sum())
        n = int(served.sum())
        points.append({"threshold": float(t), "precision": tp / n if n else 0.0, "recall": float(tp / positives),
                       "served": n})
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--floor", type=float, default=0.80, help="candidate floor (the server's recall_similarity)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args(argv)

    train, _held_back = qqp_split()  # the held-back split is not used here
    cache = EmbeddingCache()
    x, cos, y, vetoed = build_features(train, cache)
    components = np.array([p["component"] for p in train])
    keep = cos >= args.floor - TRAIN_MARGIN
    print(f"train split sample: {len(train)} pairs ({int(y.sum())} positive); "
          f"{int(keep.sum())} with cosine >= {args.floor - TRAIN_MARGIN:.2f} used for fitting", file=sys.stderr)

    baseline = cos >= STATIC_BASELINE
    base_recall = float(y[baseline].sum() / y.sum())
    base_precision = float(y[baseline].mean())
    print(f"static {STATIC_BASELINE}: precision {base_precision:.3f} recall {base_recall:.3f}", file=sys.stderr)

    # Rule vetoes on the train split: how often a veto removes a true duplicate.
    cand = cos >= args.floor
    print(f"rule vetoes among candidates (cos >= {args.floor}): {int((vetoed & cand).sum())} pairs, "
          f"{float(1 - y[vetoed & cand].mean()) if (vetoed & cand).any() else 0:.3f} of them labelled 0",
          file=sys.stderr)

    oof = np.zeros(len(train))
    folds = components % 5
    for fold in range(5):
        fit = keep & (folds != fold)
        weights = train_mlp(x[fit], y[fit], hidden=args.hidden, epochs=args.epochs, l2=args.l2, lr=args.lr,
                            seed=args.seed)
        oof[folds == fold] = predict(weights, x[folds == fold])
    results: dict[str, Any] = {"static": {"precision": base_precision, "recall": base_recall}}
    for name, mask in (("model", cand), ("combined", cand & ~vetoed)):
        points = operating_points(oof, mask, y)
        ok = [p for p in points if p["recall"] >= base_recall]
        best = max(ok, key=lambda p: p["precision"]) if ok else points[0]
        results[name] = {"chosen": best, "points": points}
        print(f"{name} (out-of-fold): at recall >= {base_recall:.3f}: threshold {best['threshold']:.2f} "
              f"precision {best['precision']:.3f} recall {best['recall']:.3f}", file=sys.stderr)
    threshold = results["combined"]["chosen"]["threshold"]

    weights = train_mlp(x[keep], y[keep], hidden=args.hidden, epochs=args.epochs, l2=args.l2, lr=args.lr,
                        seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, accept_threshold=np.float32(threshold), floor=np.float32(args.floor),
                        **{k: v.astype(np.float32) for k, v in weights.items()})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB), accept threshold {threshold:.2f}",
          file=sys.stderr)
    (OUT_DIR / "train-verifier.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
