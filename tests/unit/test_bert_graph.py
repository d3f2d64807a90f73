"""The torch-free export on a tiny random BERT: the ONNX graph against a plain numpy BERT, padding, pooling,
int8, determinism, and the layouts it refuses. Needs onnx and safetensors (the export extra), never torch.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from cachesvc.embedding.bert_graph import INPUTS, OUTPUT, build_bert_graph
from cachesvc.embedding.export import ExportRequest, Via, export_model
from cachesvc.embedding.manifest import MANIFEST_FILE, ONNX_FILE, TOKENIZER_FILE, Output, Precision, read_manifest
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.embedding.quantize import quantize_weights_int8
from cachesvc.embedding.st_layout import BertConfig, Pooling, Weights, read_sentence_model
from cachesvc.errors import ModelError

ROOT = Path(__file__).resolve().parents[2]
# Dense weights of 64 x 64 are the smallest that quantize.py quantizes (MIN_WEIGHT_ELEMENTS). A large epsilon,
# so that a graph ignoring config.json's (BERT's is 1e-12) would fail the comparison with numpy.
CONFIG = BertConfig(vocab_size=60, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    max_position_embeddings=32, type_vocab_size=2, layer_norm_eps=0.05)
MAX_SEQ_LENGTH = 24
WORDS = [f"w{i}" for i in range(CONFIG.vocab_size - 1)]


def random_weights(config: BertConfig, seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    h, i = config.hidden_size, config.intermediate_size

    def normal(*shape: int, scale: float = 0.2) -> np.ndarray[Any, Any]:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights: Weights = {
        "embeddings.word_embeddings.weight": normal(config.vocab_size, h, scale=1.0),
        "embeddings.position_embeddings.weight": normal(config.max_position_embeddings, h, scale=1.0),
        "embeddings.token_type_embeddings.weight": normal(config.type_vocab_size, h, scale=1.0),
        "embeddings.LayerNorm.weight": 1 + normal(h, scale=0.1),
        "embeddings.LayerNorm.bias": normal(h, scale=0.1),
    }
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            weights[f"{p}{part}.weight"], weights[f"{p}{part}.bias"] = normal(h, h), normal(h, scale=0.1)
        weights[f"{p}intermediate.dense.weight"], weights[f"{p}intermediate.dense.bias"] = normal(i, h), normal(i)
        weights[f"{p}output.dense.weight"], weights[f"{p}output.dense.bias"] = normal(h, i), normal(h, scale=0.1)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[f"{p}{norm}.weight"], weights[f"{p}{norm}.bias"] = 1 + normal(h, scale=0.1), normal(h, scale=0.1)
    return weights


def numpy_bert(weights: Weights, config: BertConfig, ids: list[int], types: list[int], *, pooling: Pooling,
               normalize: bool) -> np.ndarray[Any, Any]:
    """BertModel's forward pass for ONE unpadded text, in float64: the reference the graph must reproduce."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    erf = np.vectorize(math.erf)

    def layer_norm(x: np.ndarray[Any, Any], prefix: str) -> np.ndarray[Any, Any]:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + config.layer_norm_eps) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]

    def dense(x: np.ndarray[Any, Any], prefix: str) -> np.ndarray[Any, Any]:
        return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]

    n, heads, d = len(ids), config.num_attention_heads, config.head_size
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][types])
    x = layer_norm(x, "embeddings.LayerNorm")
    for layer in range(config.num_hidden_layers):
        p = f"encoder.layer.{layer}"
        q, k, v = (dense(x, f"{p}.attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = layer_norm(dense(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        inner = dense(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        x = layer_norm(dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pooled = x.mean(0) if pooling is Pooling.MEAN else x[0]
    return pooled / np.linalg.norm(pooled) if normalize else pooled


def run_padded(session: ort.InferenceSession, texts: list[tuple[list[int], list[int]]]) -> np.ndarray[Any, Any]:
    width = max(len(ids) for ids, _ in texts)
    feeds = {name: np.zeros((len(texts), width), dtype=np.int64) for name in INPUTS}
    for row, (ids, types) in enumerate(texts):
        feeds["input_ids"][row, :len(ids)] = ids
        feeds["attention_mask"][row, :len(ids)] = 1
        feeds["token_type_ids"][row, :len(ids)] = types
        feeds["input_ids"][row, len(ids):] = 7  # padding must not matter, whatever id it carries
    (out,) = session.run([OUTPUT], feeds)
    return np.asarray(out)


def sample_texts(seed: int = 1) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    texts = []
    for length in (1, 2, 5, 9, 17, CONFIG.max_position_embeddings):
        ids = rng.integers(0, CONFIG.vocab_size, length).tolist()
        types = [0] * (length // 2) + [1] * (length - length // 2)
        texts.append((ids, types))
    return texts


@pytest.mark.parametrize(("pooling", "normalize"), [(Pooling.MEAN, True), (Pooling.MEAN, False), (Pooling.CLS, True)])
def test_the_graph_matches_a_numpy_bert_alone_and_inside_padded_batches(pooling: Pooling, normalize: bool) -> None:
    weights = random_weights(CONFIG)
    model = build_bert_graph(config=CONFIG, weights=weights, pooling=pooling, normalize=normalize)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    texts = sample_texts()
    reference = np.stack([numpy_bert(weights, CONFIG, ids, types, pooling=pooling, normalize=normalize)
                          for ids, types in texts])
    alone = np.concatenate([run_padded(session, [t]) for t in texts])
    batched = run_padded(session, texts)
    shuffled = run_padded(session, texts[::-1])[::-1]
    assert alone.shape == (len(texts), CONFIG.hidden_size)
    np.testing.assert_allclose(alone, reference, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(batched, reference, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(batched, alone, atol=1e-6)
    np.testing.assert_allclose(shuffled, alone, atol=1e-6)


def test_int8_weights_quantize_every_dense_layer_and_stay_batch_invariant(tmp_path: Path) -> None:
    weights = random_weights(CONFIG)
    path = tmp_path / "model.onnx"
    path.write_bytes(build_bert_graph(config=CONFIG, weights=weights, pooling=Pooling.MEAN,
                                      normalize=True).SerializeToString())
    fp32 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert quantize_weights_int8(path, path) == 6 * CONFIG.num_hidden_layers  # q, k, v, out, in, out per layer
    int8 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    texts = sample_texts(seed=2)
    alone = np.concatenate([run_padded(int8, [t]) for t in texts])
    np.testing.assert_allclose(run_padded(int8, texts), alone, atol=1e-6)
    assert ((alone * run_padded(fp32, texts)).sum(axis=1)).min() > 0.99


# -- a tiny sentence-transformers directory, through `export_model` and `OnnxEmbedder` ---------------------------


def write_model_dir(root: Path, weights: Weights, *, pooling: str = "mean", normalize: bool = True,
                    prefix: str = "") -> Path:
    root.mkdir(parents=True)
    config = {"model_type": "bert", "architectures": ["BertModel"], "hidden_act": "gelu",
              "position_embedding_type": "absolute", "vocab_size": CONFIG.vocab_size,
              "hidden_size": CONFIG.hidden_size, "num_hidden_layers": CONFIG.num_hidden_layers,
              "num_attention_heads": CONFIG.num_attention_heads, "intermediate_size": CONFIG.intermediate_size,
              "max_position_embeddings": CONFIG.max_position_embeddings, "type_vocab_size": CONFIG.type_vocab_size,
              "layer_norm_eps": CONFIG.layer_norm_eps}
    (root / "config.json").write_text(json.dumps(config))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": CONFIG.hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH,
                                                                "do_lower_case": False}))
    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.enable_truncation(max_length=8)  # the upstream trap, in miniature: the export must drop it
    (root / TOKENIZER_FILE).write_text(tokenizer.to_str())
    # A BertFor* checkpoint keeps the encoder under `bert.` next to heads the export ignores.
    tensors = {f"{prefix}{name}": value for name, value in weights.items()}
    tensors[f"{prefix}pooler.dense.weight"] = np.zeros((CONFIG.hidden_size, CONFIG.hidden_size), np.float32)
    tensors[f"{prefix}embeddings.position_ids"] = np.arange(CONFIG.max_position_embeddings)[None].astype(np.int64)
    save_file(tensors, str(root / "model.safetensors"))
    return root


def words(n: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + 7 * i) % len(WORDS)] for i in range(n))


@pytest.mark.parametrize(("pooling", "prefix"), [("mean", ""), ("cls", "bert.")])
def test_export_of_a_tiny_model_directory_embeds_like_numpy_through_the_embedder(
    tmp_path: Path, pooling: str, prefix: str
) -> None:
    weights = random_weights(CONFIG, seed=3)
    source = write_model_dir(tmp_path / "source", weights, pooling=pooling, prefix=prefix)
    manifest = export_model(ExportRequest(source=str(source), out_dir=tmp_path / "out"))
    assert read_manifest(tmp_path / "out") == manifest
    assert (manifest.name, manifest.source) == ("source", str(source))
    assert (manifest.dimension, manifest.max_seq_length, manifest.pooling) == (64, MAX_SEQ_LENGTH, pooling)
    assert manifest.normalize and manifest.batch_invariant and manifest.output is Output.SENTENCE_EMBEDDING
    shipped = json.loads((tmp_path / "out" / TOKENIZER_FILE).read_text())
    assert shipped["padding"] is None and shipped["truncation"] is None

    embedder = OnnxEmbedder(model_dir=tmp_path / "out")
    texts = [words(1), words(3, 1), words(12, 2), words(MAX_SEQ_LENGTH + 10, 3)]
    assert embedder.token_counts(texts) == [1, 3, 12, MAX_SEQ_LENGTH]  # truncated at the manifest's length, not 8
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / TOKENIZER_FILE))
    reference = np.stack([
        numpy_bert(weights, CONFIG, ids[:MAX_SEQ_LENGTH], [0] * len(ids[:MAX_SEQ_LENGTH]), pooling=Pooling(pooling),
                   normalize=True)
        for ids in (tokenizer.encode(t).ids for t in texts)])
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(alone, reference, atol=2e-5)
    np.testing.assert_allclose(embedder.embed(texts[::-1])[::-1], alone, atol=1e-6)


def test_the_export_is_reproducible_byte_for_byte(tmp_path: Path) -> None:
    source = write_model_dir(tmp_path / "source", random_weights(CONFIG, seed=4))
    first = export_model(ExportRequest(source=str(source), out_dir=tmp_path / "a"))
    second = export_model(ExportRequest(source=str(source), out_dir=tmp_path / "b"))
    assert first.onnx_sha256 == second.onnx_sha256
    assert (tmp_path / "a" / ONNX_FILE).read_bytes() == (tmp_path / "b" / ONNX_FILE).read_bytes()


def test_int8_export_of_a_tiny_model_directory_records_its_precision(tmp_path: Path) -> None:
    source = write_model_dir(tmp_path / "source", random_weights(CONFIG, seed=5))
    manifest = export_model(ExportRequest(source=str(source), out_dir=tmp_path / "out",
                                          precision=Precision.INT8_WEIGHTS))
    assert manifest.precision is Precision.INT8_WEIGHTS and manifest.batch_invariant
    assert json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["precision"] == "int8-weights"
    assert OnnxEmbedder(model_dir=tmp_path / "out").embed([words(4)]).shape == (1, 64)


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


REFUSALS: dict[str, tuple[str, dict[str, Any], str]] = {
    "roberta": ("config.json", {"model_type": "roberta"}, "'model_type'"),
    "tanh-gelu": ("config.json", {"hidden_act": "gelu_new"}, "'hidden_act'"),
    "relative-positions": ("config.json", {"position_embedding_type": "relative_key"}, "'position_embedding_type'"),
    "decoder": ("config.json", {"is_decoder": True}, "decoder"),
    "heads": ("config.json", {"num_attention_heads": 5}, "num_attention_heads"),
    "bool-size": ("config.json", {"hidden_size": True}, "'hidden_size'"),
    "max-pooling": ("1_Pooling/config.json", {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True},
                    "pooling modes"),
    "two-poolings": ("1_Pooling/config.json", {"pooling_mode_cls_token": True}, "pooling modes"),
    "lower-case": ("sentence_bert_config.json", {"do_lower_case": True}, "'do_lower_case'"),
    "too-long": ("sentence_bert_config.json", {"max_seq_length": 512}, "'max_seq_length'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_an_unsupported_layout_is_refused_naming_the_file_and_field(tmp_path: Path, case: str) -> None:
    file, changes, field = REFUSALS[case]
    source = write_model_dir(tmp_path / "source", random_weights(CONFIG))
    edit_json(source / file, **changes)
    with pytest.raises(ModelError) as info:
        export_model(ExportRequest(source=str(source), out_dir=tmp_path / "out"))
    assert str(source / file) in str(info.value) and field in str(info.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["source"]  # no staging directory left behind


@pytest.mark.parametrize("case", ["dense-module", "no-modules", "no-weights", "no-tokenizer", "missing-tensor",
                                  "wrong-shape"])
def test_other_unsupported_sources_are_refused_with_the_torch_route_named(tmp_path: Path, case: str) -> None:
    weights = random_weights(CONFIG)
    if case == "missing-tensor":
        del weights["encoder.layer.1.output.dense.bias"]
    if case == "wrong-shape":
        weights["encoder.layer.0.intermediate.dense.weight"] = np.zeros((64, 64), np.float32)
    source = write_model_dir(tmp_path / "source", weights)
    if case == "dense-module":
        modules = json.loads((source / "modules.json").read_text())
        modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        (source / "modules.json").write_text(json.dumps(modules))
    removed = {"no-modules": "modules.json", "no-weights": "model.safetensors", "no-tokenizer": TOKENIZER_FILE}
    if case in removed:
        (source / removed[case]).unlink()
    with pytest.raises(ModelError) as info:
        read_sentence_model(source)
    message = str(info.value)
    named = {"dense-module": "modules.json", "missing-tensor": "model.safetensors", "wrong-shape": "model.safetensors"}
    assert str(source / named.get(case, removed.get(case, ""))) in message
    if case != "wrong-shape":  # a corrupt file is not a reason to switch route
        assert "export-torch" in message and "--via torch" in message


def test_a_hub_name_is_refused_by_the_direct_route_with_the_torch_route_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not a local directory.*--via torch"):
        export_model(ExportRequest(source="someone/some-model", out_dir=tmp_path / "out", via=Via.DIRECT))


def test_the_direct_export_runs_with_torch_unimportable(tmp_path: Path) -> None:
    """The export extra alone is enough: the direct route never imports torch or sentence-transformers."""
    source = write_model_dir(tmp_path / "source", random_weights(CONFIG))
    code = textwrap.dedent(
        """
        import sys
        for name in ("torch", "sentence_transformers", "transformers", "onnxscript"):
            sys.modules[name] = None  # makes `import name` raise ImportError, installed or not
        from cachesvc.cli import main
        code = main(["model", "export", "--source", sys.argv[1], "--out", sys.argv[2]])
        sys.exit(code)
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pooling"] == "mean"
    assert read_manifest(tmp_path / "out").dimension == CONFIG.hidden_size


def test_the_torch_route_without_torch_names_the_extra(tmp_path: Path) -> None:
    source = write_model_dir(tmp_path / "source", random_weights(CONFIG))
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        from cachesvc.cli import main
        sys.exit(main(["model", "export", "--via", "torch", "--source", sys.argv[1], "--out", sys.argv[2]]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "cachesvc[export-torch]" in done.stderr and "torch==2.13.0" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
