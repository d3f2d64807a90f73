"""Weights-only int8 quantization that keeps embeddings batch-invariant.

onnxruntime's `quantize_dynamic` picks activation scales per batch, so a text's vector changes with its batch
neighbours; with a micro-batcher and a similarity threshold that is a correctness bug. Here only the MatMul
weights are stored as int8 (symmetric, per output column) behind a DequantizeLinear node; activations stay
fp32, so every row of a batch is computed exactly as it would be alone. The MatMul weights shrink 4x (the
file ~35%: embedding tables stay fp32). It is no faster: dequantizing costs 20-45% more time per text than
fp32 here (bench/RESULTS.md), so it is a memory option, not a speed one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_WEIGHT_ELEMENTS = 4096


def quantize_weights_int8(source: Path, target: Path) -> int:
    """Rewrites `source` into `target` with int8 MatMul weights; returns how many weights were quantized."""
    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    new_nodes: list[onnx.NodeProto] = []
    quantized = 0
    for node in graph.node:
        weight_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        init = initializers.get(weight_name) if weight_name else None
        if init is None or weight_name is None or consumers.get(weight_name, 0) != 1:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(init).astype(np.float32)
        if weight.ndim != 2 or weight.size < MIN_WEIGHT_ELEMENTS:
            new_nodes.append(node)
            continue
        scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0  # one scale per output column
        q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        q_name, s_name, z_name, dq_name = (f"{weight_name}_q", f"{weight_name}_scale", f"{weight_name}_zp",
                                           f"{weight_name}_dq")
        graph.initializer.remove(init)
        graph.initializer.extend([
            numpy_helper.from_array(q, q_name),
            numpy_helper.from_array(scale.astype(np.float32), s_name),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), z_name),
        ])
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_name], axis=1,
                                          name=f"{node.name}_dequantize"))
        node.input[1] = dq_name
        new_nodes.append(node)
        quantized += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return quantized
