"""int8 dynamic quantization of the layer graphs with onnxruntime.quantization.

Weights of the layers' MatMuls become int8 (activations are quantized on the fly). The embeddings graph
stays fp32 (lookups, no matrix products). Exit heads stay fp32 by default: they are tiny, and
their probabilities decide where samples stop.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from mpee_runtime import schema as S


def exit_head_nodes(path: Path) -> list[str]:
    """Names of the MatMul/Gemm nodes of the exit head (module path `exits.*`)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and "exits" in n.name]


def quantize_layers(folder: Path, entries: list[S.GraphEntry], *, exits_fp32: bool = True) -> list[S.GraphEntry]:
    """Quantize every layer graph in place; return the entries with their new precision (the caller seals
    them: export.seal_graphs stamps and hashes the rewritten files)."""
    out = []
    logging.getLogger("root").setLevel(logging.ERROR)   # quantize_dynamic logs per-node chatter
    for e in entries:
        if e.layer is None:
            out.append(e)
            continue
        src = folder / e.file
        tmp = src.with_suffix(".int8.onnx")
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=exit_head_nodes(src) if exits_fp32 else [],
                         extra_options={"MatMulConstBOnly": True})
        tmp.replace(src)
        out.append(replace(e, precision="int8"))
    return out
