"""Builds the ONNX graph of a BERT sentence encoder from its weights, with the `onnx` package alone (no torch).

The graph computes what sentence-transformers computes for a BERT model (transformers' `BertModel` in eval
mode, then pooling and normalisation), in fp32:

    inputs   input_ids, attention_mask, token_type_ids: int64 (batch, sequence)
    embed    word[input_ids] + position[0..sequence-1] + token_type[token_type_ids], LayerNorm
    layer xN q, k, v = x W + b, split into heads; softmax(q k^T / sqrt(head) + mask bias) v; dense; + x; LayerNorm;
             GELU (exact, erf) of x W1 + b1; dense; + x; LayerNorm
    pool     mean over the tokens where attention_mask is 1 (or the first token, for CLS pooling)
    output   sentence_embedding: float32 (batch, hidden), L2-normalised when the model normalises

Padding never changes a text's vector: padded keys get the float32 minimum added to their scores, so their
softmax weight is exactly 0, and padded tokens are left out of the mean. The same text therefore embeds alike
alone and inside any padded batch. The build is deterministic: the same weights give the same bytes.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cachesvc.embedding.st_layout import BertConfig, Pooling, Weights, check_weights

OPSET = 17  # LayerNormalization is a standard op from 17; onnxruntime >= 1.14 runs it
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
PRODUCER = "cachesvc"
# The clamps of sentence-transformers' mean (on the token count) and of torch's normalize (on the norm): they
# only matter for a row without a real token, which then gives zeros rather than NaN.
COUNT_EPS = 1e-9
NORM_EPS = 1e-12


class _Graph:
    """Collects nodes and initializers; every value and node gets a deterministic, readable name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: object) -> str:
        self._count += 1
        output = f"{name}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{op_type}_{self._count}", **attrs))
        return output


def build_bert_graph(
    *, config: BertConfig, weights: Weights, pooling: Pooling, normalize: bool
) -> onnx.ModelProto:
    """Returns the checked ONNX model of the sentence encoder (see the module docstring).

    Args:
        config: the encoder's shape, from `config.json`.
        weights: BertModel tensors by name (torch Linear layout, (out, in)); extra tensors are ignored.
        pooling: mean over real tokens, or the first ([CLS]) token.
        normalize: whether the graph L2-normalises its output.

    Raises:
        ModelError: a tensor is missing or its shape does not match `config`.
    """
    check_weights(weights, config, origin="weights")
    g = _Graph()
    h, heads = config.hidden_size, config.num_attention_heads

    def w(name: str) -> str:
        return g.const(name, np.ascontiguousarray(weights[name], dtype=np.float32))

    def linear(x: str, prefix: str) -> str:
        # torch stores (out, in); MatMul wants (in, out). Quantization (quantize.py) looks for this exact shape:
        # MatMul with a 2-D initializer as its second input.
        kernel = g.const(f"{prefix}.weight_t", np.ascontiguousarray(weights[f"{prefix}.weight"].T, dtype=np.float32))
        return g.op("Add", [g.op("MatMul", [x, kernel], prefix), w(f"{prefix}.bias")], prefix)

    def layer_norm(x: str, prefix: str) -> str:
        return g.op("LayerNormalization", [x, w(f"{prefix}.weight"), w(f"{prefix}.bias")], prefix, axis=-1,
                    epsilon=config.layer_norm_eps)

    one_f = g.const("one_f", np.array(1.0, dtype=np.float32))
    half_f = g.const("half_f", np.array(0.5, dtype=np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2), dtype=np.float32))
    one_i64 = g.const("one_i64", np.array([1], dtype=np.int64))
    zero_scalar = g.const("zero_scalar", np.array(0, dtype=np.int64))
    one_scalar = g.const("one_scalar", np.array(1, dtype=np.int64))
    heads_shape = g.const("heads_shape", np.array([0, 0, heads, config.head_size], dtype=np.int64))
    hidden_shape = g.const("hidden_shape", np.array([0, 0, h], dtype=np.int64))

    # -- embeddings
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"], "input_shape"), one_scalar], "seq_len", axis=0)
    positions = g.op("Range", [zero_scalar, seq_len, one_scalar], "position_ids")
    embedded = g.op("Add", [
        g.op("Add", [
            g.op("Gather", [w("embeddings.word_embeddings.weight"), "input_ids"], "word_embeddings"),
            g.op("Gather", [w("embeddings.token_type_embeddings.weight"), "token_type_ids"], "token_type_embeddings"),
        ], "embeddings"),
        g.op("Gather", [w("embeddings.position_embeddings.weight"), positions], "position_embeddings"),
    ], "embeddings")
    x = layer_norm(embedded, "embeddings.LayerNorm")

    # -- attention mask: (batch, 1, 1, sequence), 0 for real keys, float32 min for padding
    mask_f = g.op("Cast", ["attention_mask"], "mask_float", to=TensorProto.FLOAT)
    inverted = g.op("Sub", [one_f, mask_f], "mask_inverted")
    bias = g.op("Mul", [inverted, g.const("mask_fill", np.array(np.finfo(np.float32).min, dtype=np.float32))],
                "mask_bias")
    bias = g.op("Unsqueeze", [bias, g.const("mask_axes", np.array([1, 2], dtype=np.int64))], "mask_bias")
    scale = g.const("attention_scale", np.array(1.0 / math.sqrt(config.head_size), dtype=np.float32))

    # -- encoder layers
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}"

        def split_heads(t: str, perm: list[int], p: str = p) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, heads_shape], f"{p}.heads")], f"{p}.heads", perm=perm)

        q = split_heads(linear(x, f"{p}.attention.self.query"), [0, 2, 1, 3])  # (b, heads, s, head)
        k = split_heads(linear(x, f"{p}.attention.self.key"), [0, 2, 3, 1])  # (b, heads, head, s)
        v = split_heads(linear(x, f"{p}.attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, k], f"{p}.scores"), scale], f"{p}.scores")
        probs = g.op("Softmax", [g.op("Add", [scores, bias], f"{p}.scores_masked")], f"{p}.probs", axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v], f"{p}.context")], f"{p}.context", perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, hidden_shape], f"{p}.context")
        attended = linear(context, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", [attended, x], f"{p}.attention.residual"), f"{p}.attention.output.LayerNorm")

        inner = linear(x, f"{p}.intermediate.dense")
        # exact GELU, as BERT's "gelu": 0.5 x (1 + erf(x / sqrt 2)), in the Div form that onnxruntime fuses
        # into one BiasGelu kernel with the Add before it
        erf = g.op("Erf", [g.op("Div", [inner, sqrt2], f"{p}.gelu")], f"{p}.gelu")
        gelu = g.op("Mul", [g.op("Mul", [inner, g.op("Add", [erf, one_f], f"{p}.gelu")], f"{p}.gelu"), half_f],
                    f"{p}.gelu")
        out = linear(gelu, f"{p}.output.dense")
        x = layer_norm(g.op("Add", [out, x], f"{p}.output.residual"), f"{p}.output.LayerNorm")

    # -- pooling and normalisation
    if pooling is Pooling.MEAN:
        weights_3d = g.op("Unsqueeze", [mask_f, g.const("pool_axes", np.array([-1], dtype=np.int64))], "pool_weights")
        summed = g.op("ReduceSum", [g.op("Mul", [x, weights_3d], "pool_masked"), one_i64], "pool_sum", keepdims=0)
        count = g.op("ReduceSum", [weights_3d, one_i64], "pool_count", keepdims=0)
        count = g.op("Max", [count, g.const("count_eps", np.array(COUNT_EPS, dtype=np.float32))], "pool_count")
        pooled = g.op("Div", [summed, count], "pooled")
    else:
        pooled = g.op("Gather", [x, zero_scalar], "pooled", axis=1)
    if normalize:
        norm = g.op("ReduceL2", [pooled], "norm", axes=[1], keepdims=1)  # axes is an input only from opset 18
        norm = g.op("Max", [norm, g.const("norm_eps", np.array(NORM_EPS, dtype=np.float32))], "norm")
        pooled = g.op("Div", [pooled, norm], "normalized")
    g.nodes.append(helper.make_node("Identity", [pooled], [OUTPUT], name="output"))

    graph = helper.make_graph(
        g.nodes,
        "bert_sentence_encoder",
        inputs=[helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in INPUTS],
        outputs=[helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", h])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = 8  # what onnxruntime >= 1.14 reads; OPSET 17 needs at least this
    onnx.checker.check_model(model, full_check=True)
    return model

