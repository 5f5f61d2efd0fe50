"""int8 dynamic quantization of the layer graphs, with the recipe of the fused int8 full-model baseline.

The settings are those of optimum's dynamic recipe for this CPU (`recipe.quantization_recipe()`:
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
(docs/results.md). Left fp32: the exit heads (tiny, and their probabilities decide where samples stop), and
the lookups of a layer graph in a weight table (`table_lookups`: MPNet's relative position bias). They
are recognised by what they read, not by their names: when the exporter writes a layer graph it records in the
graph's metadata (`EXIT_HEAD_KEY`, `record_exit_head`) the initializer names of the exit head's weight
matrices, taken from the PyTorch module (`subgraphs.exit_head_weights`); the MatMul / Gemm nodes that read
them are the head's products (`exit_head_nodes`). A graph without the record, or whose recorded weights no
product reads, is refused rather than quantized whole. (quantize_dynamic writes an excluded Gemm as MatMul + Add
on its transposed weight, still fp32.)

In a layer that computes a token score, the packed Q/K/V product is a MatMul of its own (optimize.py) and
becomes DynamicQuantizeMatMul, the same int8 product QAttention runs inside; the score reads its Q and K.
Matrix products of two activations (the attention of standard-ops graphs) stay fp32 (`MatMulConstBOnly`).

Batch layer graphs (`per_row=True`) are quantized the same way, then every activation's quantization is made
per row (`per_row_activations`): DynamicQuantizeLinear computes one scale and zero point over the whole
tensor, so at batch B a row's int8 values would depend on the other rows and on the padding. Each row gets
the scale and zero point DynamicQuantizeLinear computes for it alone, over its real tokens only (onnxruntime's
rule: the range of the values and 0, scale = range / 255, zero point = round-half-even(clip(-min / scale))),
the row is quantized with a per-axis QuantizeLinear, and since onnxruntime's MatMulInteger takes one zero
point for A, the product runs without it and subtracts zero point x column sums of B afterwards: the same
integers, so a row's products are those it gets alone, to float rounding.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mpee_runtime.bundle.contract import HIDDEN, LENGTHS, LENGTHS_OUT
from mpee_runtime.bundle.manifest import GraphEntry

from ..errors import MpeeExportError
from .recipe import recipe_settings

# ONNX metadata key of a layer graph: the JSON list of its exit head's weight initializers
# (`record_exit_head`).
EXIT_HEAD_KEY = "mpee_exit_head_weights"
PRODUCTS = ("MatMul", "Gemm")


def record_exit_head(path: Path, weights: list[str]) -> None:
    """Record in the graph at `path` which initializers are its exit head's weights (the exporter, as it writes
    each layer graph); refused when one of them is not in the graph."""
    if not weights:
        raise MpeeExportError(f"{path.name}: no exit head weights to record")
    proto = onnx.load(str(path))
    missing = sorted(set(weights) - {t.name for t in proto.graph.initializer})
    if missing:
        raise MpeeExportError(f"{path.name}: the exit head's weights {missing} are not initializers of "
                              "the graph")
    props = {p.key: p.value for p in proto.metadata_props} | {EXIT_HEAD_KEY: json.dumps(sorted(weights))}
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def exit_head_nodes(path: Path) -> list[str]:
    """The exit head's products in the layer graph at `path`, in graph order: the MatMul / Gemm nodes that read
    a weight recorded by `record_exit_head`. Refused (MpeeExportError) when the graph has no record, or when a
    recorded weight is read by no product: its head would otherwise be quantized silently."""
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if EXIT_HEAD_KEY not in props:
        raise MpeeExportError(f"{path.name}: the graph does not record its exit head ({EXIT_HEAD_KEY}); "
                              "refusing to quantize it (export it with mpee_export.export.bundle.export_graphs)")
    weights = json.loads(props[EXIT_HEAD_KEY])
    nodes = [n for n in proto.graph.node if n.op_type in PRODUCTS and any(w in n.input for w in weights)]
    unread = sorted(w for w in weights if not any(w in n.input for n in nodes))
    if not weights or unread:
        raise MpeeExportError(f"{path.name}: no MatMul/Gemm node reads the exit head's weights "
                              f"{unread or weights}; refusing to quantize a graph whose exit head cannot be found")
    return [n.name for n in nodes]


def excluded_nodes(path: Path) -> list[str]:
    """The nodes quantization leaves fp32 in a layer graph: the exit head's products (`exit_head_nodes`) and
    every lookup in a table of weights (`Gather` of an initializer)."""
    names = exit_head_nodes(path)
    # quantize_dynamic first rewrites each Gemm as a MatMul named NAME_MatMul: exclude that name too
    return names + [n + "_MatMul" for n in names] + table_lookups(path)


def table_lookups(path: Path) -> list[str]:
    """The Gather nodes of the graph at `path` that read a table of weights (an initializer).

    The recipe quantizes Gather for the embedding tables, which live in the embeddings graph. In a layer graph
    the only such table is a family's relative position bias (MPNet: the bias of every distance, (2 positions - 1)
    x heads floats), gathered into a (1, N, N, heads) tensor in every layer: quantized, each layer dequantizes all
    of it to save nothing (on IMDB reviews the int8 MPNet runs 9-11% faster without it:
    benchmarks/results/map_imdb/mpnet/position_bias_fix.md)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in tables]


def quantize_layers(folder: Path, entries: list[GraphEntry], *, exits_fp32: bool = True,
                    embeddings: bool = True, recipe: str | None = None, per_row: bool = False) -> list[GraphEntry]:
    """Quantize the graphs in place (the layers; with `embeddings` the embeddings graph too); return the
    entries with their new precision (the caller seals them: bundle.seal_graphs stamps and hashes the
    rewritten files). `per_row`: batch layer graphs, each activation quantized per row (`per_row_activations`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # 0.7 s: imported when quantizing
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
            if per_row:
                per_row_activations(tmp)
            tmp.replace(src)
            out.append(replace(e, precision="int8"))
    finally:
        root.setLevel(level)
    return out


def per_row_activations(path: Path) -> int:
    """Rewrite each DynamicQuantizeLinear of a quantized batch layer graph, and the MatMulIntegers it feeds, to
    quantize every row on its own over its real tokens (module docstring); return how many were rewritten.

    A row's real tokens are a prefix: `lengths` long before the pruning step, `lengths_out` after it. A tensor
    is after the pruning step when its length differs from the input's; when no longest row shrinks, no row
    does (the kept count rises with the length: k = ceil(r (n - 1))), so then the two are equal."""
    model = onnx.load(str(path))
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {t.name: t for t in graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    new_nodes, new_inits = [], []

    def const(name: str, value) -> str:
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        new_nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def reduce(op: str, x: str, output: str) -> str:
        if opset >= 18:
            return node(op, [x, const(output + "_axes", np.asarray([1, 2], dtype=np.int64))], output, keepdims=0)
        return node(op, [x], output, axes=[1, 2], keepdims=0)

    n_in = node("Shape", [HIDDEN], "per_row_n_in", start=1, end=2)
    one_d = const("per_row_shape_b11", np.asarray([-1, 1, 1], dtype=np.int64))
    zero = const("per_row_zero", np.asarray(0.0, dtype=np.float32))
    rewritten = 0
    for dql in [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]:
        x, (xq, xs, xzp) = dql.input[0], dql.output
        pre = f"per_row_{rewritten}"
        n_x = node("Shape", [x], pre + "_n", start=1, end=2)
        lengths = node("Where", [node("Equal", [n_x, n_in], pre + "_before"), LENGTHS, LENGTHS_OUT],
                       pre + "_lengths")
        positions = node("Range", [const(pre + "_start", np.asarray(0, dtype=np.int64)),
                                   node("Squeeze", [n_x], pre + "_n0"),
                                   const(pre + "_step", np.asarray(1, dtype=np.int64))], pre + "_positions")
        real = node("Less", [node("Unsqueeze", [positions, const(pre + "_ax0", np.asarray([0], dtype=np.int64))],
                                  pre + "_pos_row"),
                             node("Unsqueeze", [lengths, const(pre + "_ax1", np.asarray([1], dtype=np.int64))],
                                  pre + "_len_col")], pre + "_real")
        real = node("Unsqueeze", [real, const(pre + "_ax2", np.asarray([2], dtype=np.int64))], pre + "_real3")
        masked = node("Where", [real, x, zero], pre + "_masked")   # padding as 0: the range includes 0 anyway
        lo = node("Min", [reduce("ReduceMin", masked, pre + "_min"), zero], pre + "_lo")
        hi = node("Max", [reduce("ReduceMax", masked, pre + "_max"), zero], pre + "_hi")
        scale = node("Div", [node("Sub", [hi, lo], pre + "_range"),
                             const(pre + "_255", np.asarray(255.0, dtype=np.float32))], pre + "_scale_raw")
        scale = node("Where", [node("Equal", [hi, lo], pre + "_flat"), const(pre + "_one", np.asarray(1.0, dtype=np.float32)),
                               scale], pre + "_scale")
        zp = node("Clip", [node("Neg", [node("Div", [lo, scale], pre + "_lo_q")], pre + "_zp_raw"), zero,
                           const(pre + "_max_q", np.asarray(255.0, dtype=np.float32))], pre + "_zp_clip")
        zp = node("Cast", [node("Round", [zp], pre + "_zp_round")], pre + "_zp", to=onnx.TensorProto.UINT8)
        node("QuantizeLinear", [x, scale, zp], xq, axis=0)
        node("Reshape", [scale, one_d], xs)                     # (B, 1, 1): broadcasts over a row's products
        zp_b11 = node("Reshape", [node("Cast", [zp], pre + "_zp_i32", to=onnx.TensorProto.INT32), one_d], pre + "_zp_b11")
        for mm in consumers.get(xzp, []):
            if mm.op_type != "MatMulInteger":
                raise ValueError(f"{path}: {xzp} feeds {mm.op_type} {mm.name}, not a MatMulInteger")
            weight, w_zp = inits[mm.input[1]], inits[mm.input[3]] if len(mm.input) > 3 and mm.input[3] else None
            w = numpy_helper.to_array(weight).astype(np.int32)
            if w_zp is not None:
                w = w - numpy_helper.to_array(w_zp).astype(np.int32)
            col_sums = const(mm.name + "_col_sums", w.sum(axis=0).astype(np.int32))
            out = mm.output[0]
            mm.input[2] = ""                                    # no zero point for A: subtracted below
            mm.output[0] = out + "_no_zp"
            node("Sub", [out + "_no_zp", node("Mul", [zp_b11, col_sums], mm.name + "_zp_sums")], out)
        graph.node.remove(dql)
        rewritten += 1
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _sort_topologically(graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return rewritten


def _sort_topologically(graph) -> None:
    """Order `graph`'s nodes so that each comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise ValueError("graph has a cycle or a dangling input")
        for n in progress:
            ordered.append(n)
            ready.update(n.output)
        pending = [n for n in pending if all(n is not p for p in progress)]
    del graph.node[:]
    graph.node.extend(ordered)
