"""The optional torch export: traces a sentence-transformers model with `torch.onnx.export`.

For models the torch-free export (`bert_graph.py`) does not rebuild: other architectures, or a hub name. Needs the
`export-torch` extra (sentence-transformers, onnxscript) and a CPU torch; serving never imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cachesvc.embedding.export import ExportedGraph
from cachesvc.embedding.manifest import ONNX_FILE, TOKENIZER_FILE, Output
from cachesvc.embedding.st_layout import Pooling
from cachesvc.embedding.tokenizer_file import write_tokenizer
from cachesvc.errors import ModelError

OPSET = 17
MISSING = ("`--via torch` needs the export-torch extra and a CPU torch: pip install torch==2.13.0 "
           "'cachesvc[export-torch]' (a bare `torch` pulls a multi-GB CUDA build)")


def export_with_torch(load_from: str, staging: Path) -> ExportedGraph:
    """Writes `model.onnx` and `tokenizer.json` into `staging`; returns what the manifest records about them.

    Raises:
        ModelError: torch or sentence-transformers is missing, or the model is not a mean-pooling one.
    """
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelError(f"{MISSING} ({exc})") from exc

    st = SentenceTransformer(load_from, device="cpu")
    transformer = st[0]
    pooling_modes = [m for m in st if type(m).__name__ == "Pooling"]
    if pooling_modes and getattr(pooling_modes[0], "pooling_mode_mean_tokens", True) is not True:
        raise ModelError(f"{load_from}: only mean-pooling models are supported by the torch export")
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

    sample = st.tokenizer(["a short example", "a longer example sentence for tracing"], padding=True,
                          return_tensors="pt")
    args = (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"])
    with torch.no_grad():
        torch.onnx.export(
            Pooled().eval(),
            args,
            str(staging / ONNX_FILE),
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
    source_dir = Path(load_from)
    if (source_dir / TOKENIZER_FILE).is_file():
        write_tokenizer(source_dir / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    else:
        write_tokenizer(json.loads(st.tokenizer.backend_tokenizer.to_str()), staging / TOKENIZER_FILE)
    return ExportedGraph(dimension=dimension, pooling=Pooling.MEAN, normalize=bool(normalize),
                         max_seq_length=max_seq_length)
