"""OnnxEmbedder: tokenizers + onnxruntime, no torch at run time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from cachesvc.embedding.manifest import ONNX_FILE, TOKENIZER_FILE, ModelManifest, Output, read_manifest
from cachesvc.embedding.protocol import Matrix
from cachesvc.embedding.text import DEFAULT_MAX_TEXT_BYTES, checked_text
from cachesvc.errors import ModelError

# A call's texts are sorted by length and cut into runs; a run ends before padding would exceed this share of
# its real tokens, or its padded size this many tokens. Big padded batches run slower per text than small
# ones on this model (bench/RESULTS.md: 16 x 256 tokens, 91 ms per text in one run vs 84 ms one at a time).
DEFAULT_MAX_BATCH_TOKENS = 2048
MAX_PADDING_RATIO = 0.25


class OnnxEmbedder:
    """Embeds texts with an exported model directory (see `cachesvc.embedding.manifest`).

    Thread-safe: onnxruntime sessions may be run from several threads at once, and with one intra-op thread
    each call runs on its caller's thread, so N worker threads use N cores without contending.
    """

    def __init__(
        self,
        *,
        model_dir: Path,
        intra_op_threads: int = 1,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    ) -> None:
        """Loads and checks the model.

        Raises:
            ModelError: a file is missing or corrupt, or the model's output does not match its manifest.
        """
        if intra_op_threads < 1:
            raise ValueError("intra_op_threads must be >= 1")
        self.manifest: ModelManifest = read_manifest(model_dir)
        self._max_batch_tokens = max_batch_tokens
        self._max_text_bytes = max_text_bytes
        try:
            tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelError(f"{model_dir / TOKENIZER_FILE}: unreadable tokenizer: {exc}") from exc
        # The shipped tokenizer.json pads every text to 128 tokens and truncates at 128; we pad per batch
        # ourselves and truncate where the model was trained to.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.manifest.max_seq_length)
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(model_dir / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{model_dir / ONNX_FILE}: onnxruntime cannot load it: {exc}") from exc
        self._input_names = {i.name for i in self._session.get_inputs()}
        # `_run`, not `embed`: embed writes into a (n, manifest.dimension) array and would fail on a mismatch
        # with a bare numpy ValueError before this check could name the file.
        probe = self._run(self._tokenizer.encode_batch(["cachesvc start-up probe"]))
        if probe.shape != (1, self.manifest.dimension):
            raise ModelError(
                f"{model_dir / ONNX_FILE}: produces vectors of shape {probe.shape[1:]}, "
                f"the manifest says dimension {self.manifest.dimension}"
            )

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embeds `texts` in order; see `Embedder.embed`."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        clean = [checked_text(t, max_bytes=self._max_text_bytes) for t in texts]
        encodings = self._tokenizer.encode_batch(clean)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for run in self._runs(order, [len(e.ids) for e in encodings]):
            out[run] = self._run([encodings[i] for i in run])
        return out

    def _runs(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        runs: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in order:  # ascending length, so lengths[i] is the padded width if i joins the run
            padded = (len(current) + 1) * lengths[i]
            if current and (padded > self._max_batch_tokens
                            or padded - (real + lengths[i]) > MAX_PADDING_RATIO * (real + lengths[i])):
                runs.append(current)
                current, real = [], 0
            current.append(i)
            real += lengths[i]
        if current:
            runs.append(current)
        return runs

    def _run(self, encodings: list[Encoding]) -> Matrix:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        try:
            (result,) = self._session.run(None, {k: v for k, v in feeds.items() if k in self._input_names})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"model run failed: {exc}") from exc
        vectors = np.asarray(result, dtype=np.float32)
        if self.manifest.output is Output.TOKEN_EMBEDDINGS:
            weights = mask[:, :, None].astype(np.float32)
            vectors = (vectors * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.manifest.output is Output.TOKEN_EMBEDDINGS or not self.manifest.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors
