"""The model directory format: `model.onnx`, `tokenizer.json` and `manifest.json` describing both."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from cachesvc.errors import ModelError

FORMAT = "cachesvc-model/1"
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


class Precision(StrEnum):
    FP32 = "fp32"
    # int8 weights, fp32 activations: unlike dynamic quantization, a text's vector does not depend on its
    # batch neighbours, which a micro-batcher plus a similarity threshold requires.
    INT8_WEIGHTS = "int8-weights"


class Output(StrEnum):
    SENTENCE_EMBEDDING = "sentence_embedding"  # graph already pools and normalises: (batch, dim)
    TOKEN_EMBEDDINGS = "token_embeddings"  # last hidden state: (batch, seq, dim); we mean-pool


@dataclass(frozen=True, kw_only=True)
class ModelManifest:
    name: str
    dimension: int
    pooling: str
    normalize: bool
    max_seq_length: int
    source: str
    onnx_sha256: str
    precision: Precision
    output: Output
    batch_invariant: bool
    format: str = FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["precision"] = self.precision.value
        data["output"] = self.output.value
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, path: Path) -> ModelManifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            # CLS pooling happens inside the graph only; the embedder itself can only mean-pool token outputs.
            poolings = ("mean", "cls") if data.get("output") == Output.SENTENCE_EMBEDDING.value else ("mean",)
            if data.get("pooling") not in poolings:
                raise ValueError(f"pooling is {data.get('pooling')!r}; supported here: {', '.join(poolings)}")
            manifest = cls(
                name=str(data["name"]),
                dimension=int(data["dimension"]),
                pooling=str(data["pooling"]),
                normalize=bool(data["normalize"]),
                max_seq_length=int(data["max_seq_length"]),
                source=str(data["source"]),
                onnx_sha256=str(data["onnx_sha256"]),
                precision=Precision(data["precision"]),
                output=Output(data["output"]),
                batch_invariant=bool(data["batch_invariant"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: unreadable model manifest: {exc}") from exc
        if manifest.dimension <= 0 or manifest.max_seq_length <= 0:
            raise ModelError(f"{path}: dimension and max_seq_length must be positive")
        return manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> ModelManifest:
    """Reads and checks a model directory's manifest and files.

    Raises:
        ModelError: a file is missing, the manifest is unreadable, or the ONNX checksum differs.
    """
    for name in (MANIFEST_FILE, ONNX_FILE, TOKENIZER_FILE):
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir / name}: missing (a model directory holds {MANIFEST_FILE}, "
                             f"{ONNX_FILE} and {TOKENIZER_FILE}; make one with `cachesvc model export`)")
    path = model_dir / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable model manifest: {exc}") from exc
    manifest = ModelManifest.from_json(text, path=path)
    actual = sha256_of(model_dir / ONNX_FILE)
    if actual != manifest.onnx_sha256:
        raise ModelError(f"{model_dir / ONNX_FILE}: sha256 is {actual}, the manifest expects {manifest.onnx_sha256}")
    return manifest
