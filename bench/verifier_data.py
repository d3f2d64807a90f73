"""Development data for the hit verifier: the QQP train / held-back split and cached embeddings.

The split is by connected component of question texts (two pairs that share a text land in the same split), so
no held-back question was seen in training. Component -> split by a stable hash: 70% train, 30% held back.
Embeddings are of the normalised prompt (what the server embeds) and are cached in bench/out/ (gitignored), so
each text is embedded once across runs.

    .venv/bin/python bench/verifier_data.py            # embeds the samples the other scripts use
    .venv/bin/python bench/verifier_data.py --full     # embeds both whole splits (~100k texts; ~15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA_DIR, DEFAULT_MODEL_DIR, OUT_DIR
from cachesvc.core.normalize import normalize_prompt

QQP = DATA_DIR / "qqp_gptcache_dev.jsonl"
ADVERSARIAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "adversarial_pairs.jsonl"
# The plain threshold the verifier is compared with: its decision threshold is tuned to this one's recall.
STATIC_BASELINE = 0.90
CACHE_FILE = OUT_DIR / "verifier-embeddings.npz"
TRAIN_LIMIT = 30000
HELDOUT_LIMIT = 3000
SEED = 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _find(parent: dict[str, str], x: str) -> str:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def qqp_split(
    train_limit: int | None = TRAIN_LIMIT, held_limit: int | None = HELDOUT_LIMIT
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_back) samples of the QQP development pairs (see `split_pairs`)."""
    return split_pairs(QQP, train_limit, held_limit)


def split_pairs(
    path: Path, train_limit: int | None = None, held_limit: int | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_back) samples of a pairs file (JSONL a, b, label), split by connected component of texts.

    A limit of None keeps the whole split. The samples are prefixes of one seeded shuffle, so the default
    3,000-pair held-back sample is the first 3,000 pairs of the full held-back split.
    """
    pairs = read_jsonl(path)
    parent: dict[str, str] = {}
    for p in pairs:
        for t in (p["a"], p["b"]):
            parent.setdefault(t, t)
        ra, rb = _find(parent, p["a"]), _find(parent, p["b"])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    train, held = [], []
    for p in pairs:
        root = _find(parent, p["a"])
        digest = int(hashlib.sha256(root.encode()).hexdigest()[:8], 16)
        p["component"] = digest
        (train if digest % 10 < 7 else held).append(p)
    rng = random.Random(SEED)
    rng.shuffle(train)
    rng.shuffle(held)
    return train[:train_limit], held[:held_limit]


class EmbeddingCache:
    """normalised text -> vector, persisted in one .npz."""

    def __init__(self, path: Path = CACHE_FILE, model_dir: Path = DEFAULT_MODEL_DIR) -> None:
        self._path = path
        self._model_dir = model_dir
        self._vectors: dict[str, np.ndarray] = {}
        if path.is_file():
            data = np.load(path, allow_pickle=False)
            for text, vector in zip(data["texts"].tolist(), data["vectors"], strict=True):
                self._vectors[str(text)] = vector

    def get(self, texts: list[str], *, batch: int = 256) -> np.ndarray:
        """Vectors of the normalised `texts`, embedding (and saving) those not cached yet."""
        keys = [normalize_prompt(t) for t in texts]
        missing = sorted({k for k in keys if k not in self._vectors})
        if missing:
            from cachesvc.embedding.onnx_embedder import OnnxEmbedder

            embedder = OnnxEmbedder(model_dir=self._model_dir, intra_op_threads=1, max_text_bytes=1 << 20)
            for start in range(0, len(missing), batch):
                chunk = missing[start:start + batch]
                for text, vector in zip(chunk, embedder.embed(chunk), strict=True):
                    self._vectors[text] = vector
                print(f"  embedded {min(start + batch, len(missing))}/{len(missing)}", file=sys.stderr, flush=True)
            self.save()
        return np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 384), dtype=np.float32)

    def save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self._vectors)
        np.savez(self._path, texts=np.array(texts), vectors=np.stack([self._vectors[t] for t in texts]))


def pair_vectors(cache: EmbeddingCache, pairs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return cache.get([p["a"] for p in pairs]), cache.get([p["b"] for p in pairs])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="embed the whole train and held-back splits")
    args = parser.parse_args(argv)
    train, held = qqp_split(None, None) if args.full else qqp_split()
    print(f"QQP train sample {len(train)}, held-back sample {len(held)}", file=sys.stderr)
    cache = EmbeddingCache()
    pair_vectors(cache, train)
    pair_vectors(cache, held)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
