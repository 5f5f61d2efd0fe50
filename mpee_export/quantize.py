"""int8 dynamic quantization of the layer graphs, with the recipe of the fused int8 full-model baseline.

The settings are those of optimum's dynamic recipe for this CPU (`reference.quantization_recipe()`:
avx512_vnni / avx512 / avx2 / arm64, `AutoQuantizationConfig.<recipe>(is_static=False, per_channel=False)`),
the recipe `mpee-export reference` quantizes the fused full model with: QOperator format, IntegerOps,
activations uint8 asymmetric, weights int8 symmetric (uint8 for avx2), per tensor, full range. They are
applied with `onnxruntime.quantization.quantize_dynamic` (optimum's quantizer does the same call but cannot
exclude nodes by our rules and is an optional dependency). So a fused layer graph gets the operators of the
fused int8 full model: QAttention for the attention, MatMulInteger (DynamicQuantizeMatMul once the session
fuses it) for the dense layers.

The embeddings graph is quantized too (unless `embeddings=False`), as the recipe's `Gather` does to the
full model's embedding lookups (its QEmbedLayerNormalization): the three tables are stored int8 and only
the gathered rows are dequantized, so the bundle is about a quarter the size at a small cost per request
(docs/results.md). Left fp32: the exit heads (nodes named `exits`: tiny, and their probabilities decide where samples
stop). In a layer that computes a token score, the packed Q/K/V product is a MatMul of its own
(optimize.py) and becomes DynamicQuantizeMatMul, the same int8 product QAttention runs inside; the score
reads its Q and K.
Matrix products of two activations (the attention of standard-ops graphs) stay fp32 (`MatMulConstBOnly`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from mpee_runtime import schema as S

# optimum's ORT_DEFAULT_OPS_DYNAMIC_QUANTIZATION, for when optimum is not installed.
DYNAMIC_OPS = ["Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization"]


def recipe_settings(recipe: str | None = None, per_channel: bool = False) -> dict:
    """{"recipe", "reason", "settings"}: optimum's dynamic recipe for this CPU, as reference.py applies it to
    the full model. Without optimum, the same values from a copy of optimum's table."""
    from .reference import _settings, quantization_config, quantization_recipe
    reason = "given"
    if recipe is None:
        recipe, reason = quantization_recipe()
    try:
        settings = _settings(quantization_config(recipe, per_channel))
    except ImportError:
        settings = fallback_settings(recipe, per_channel)
    return {"recipe": recipe, "reason": reason, "settings": settings}


def fallback_settings(recipe: str, per_channel: bool = False) -> dict:
    """optimum's AutoQuantizationConfig.<recipe>(is_static=False) settings without optimum."""
    return {"is_static": False, "format": "QOperator", "mode": "IntegerOps", "activations_dtype": "QUInt8",
            "activations_symmetric": False, "weights_dtype": "QUInt8" if recipe == "avx2" else "QInt8",
            "weights_symmetric": True, "per_channel": per_channel, "reduce_range": False,
            "operators_to_quantize": list(DYNAMIC_OPS)}


def excluded_nodes(path: Path) -> list[str]:
    """The nodes quantization leaves fp32: the exit heads' products (module path `exits.*`)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and "exits" in n.name]
    # quantize_dynamic first rewrites each Gemm as a MatMul named NAME_MatMul: exclude that name too
    return names + [n + "_MatMul" for n in names]


def quantize_layers(folder: Path, entries: list[S.GraphEntry], *, exits_fp32: bool = True,
                    embeddings: bool = True, recipe: str | None = None) -> list[S.GraphEntry]:
    """Quantize the graphs in place (the layers; with `embeddings` the embeddings graph too); return the
    entries with their new precision (the caller seals them: export.seal_graphs stamps and hashes the
    rewritten files)."""
    s = recipe_settings(recipe)["settings"]
    extra = {"WeightSymmetric": s["weights_symmetric"], "ActivationSymmetric": s["activations_symmetric"],
             "ForceSymmetric": s["weights_symmetric"] and s["activations_symmetric"], "EnableSubgraph": False,
             "MatMulConstBOnly": True,
             "DefaultTensorType": onnx.TensorProto.FLOAT}   # types of the fused ops' outputs
    out = []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # quantize_dynamic logs per-node chatter
    try:
        for e in entries:
            if e.layer is None and not embeddings:
                out.append(e)
                continue
            src = folder / e.file
            tmp = src.with_suffix(".int8.onnx")
            exclude = excluded_nodes(src) if exits_fp32 and e.layer is not None else []
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType[s["weights_dtype"]],
                             op_types_to_quantize=list(s["operators_to_quantize"]), per_channel=s["per_channel"],
                             reduce_range=s["reduce_range"], nodes_to_exclude=exclude, extra_options=extra)
            tmp.replace(src)
            out.append(replace(e, precision="int8"))
    finally:
        root.setLevel(level)
    return out
