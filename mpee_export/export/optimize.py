"""Fused layer graphs: onnxruntime's transformer fusions plus the attention fusion our graphs need.

The default bundle (`graph_ops: "fused"`) runs each layer graph through
`onnxruntime.transformers.optimizer.optimize_model(model_type="bert", opt_level=0)` (BiasGelu, ...), fuses
the attention of every layer (below), and writes each residual + LayerNorm as Sum + LayerNormalization.
`--standard-ops` keeps the graphs as exported: standard ONNX operators only. docs/fused_graphs.md describes
the graphs; benchmarks/results/fusion_log.md has the measurements behind each choice.

Why our own attention fusion. onnxruntime's `FusionAttention` matches our attention (it is the standard
BERT pattern), but the token score is computed on the side from the same Q and K tensors
(`modeling.query_scores`): the fusion deletes the Q/K projection, Reshape and Transpose nodes it matched
without checking their other consumers, so the score's nodes are left reading tensors nothing produces,
and the topological sort fails with "Graph is not a DAG". Here:

- a layer without a token score (after the last pruning layer) gets one com.microsoft `Attention` node
  (packed Q/K/V weight): the operator the fused full model runs, QAttention once quantized;
- a layer with a token score gets the packed Q/K/V product as a MatMul of its own (DynamicQuantizeMatMul
  once quantized), a Split, and com.microsoft `MultiHeadAttention` on Q, K and V. The score reads the same
  Q and K: its query row is a Slice ("cls") or ReduceMean ("mean") of Q, K split into heads is a Reshape
  (`score_q_*` nodes), so W_q is read once per run (projecting the row a second time, with its own copy
  of W_q, measured slower: benchmarks/results/fusion_log.md).

Batch layer graphs (`subgraphs.BatchLayerGraph`) add each row's padding mask to the attention logits
(Softmax(QK^T / sqrt(dh) + bias)): there every attention becomes the MultiHeadAttention form, with the rows'
real lengths (the graph's `lengths` input, as int32) as its key padding mask, so padding never enters a
softmax; QAttention could not be used for them anyway, as its input scale is one per tensor (quantize.py).

Where the attention probabilities themselves are read (scoring "all"), nothing is fused for attention
(the fused operator does not return them); the other rewrites still apply, and the score's mean of the
probabilities over heads and query rows is one matrix-vector product (`received_attention_rows`: the
ReduceMean over axes (1, 2) as exported is a slow strided reduction; at 400 tokens it cost as much as an
FFN product: benchmarks/results/long_inputs/profile.md); so is the "mean" score's mean of a family's attention
bias over the query rows (`bias_row_means`). A pattern that does not match exactly is left as it is, so the
graph always stays correct.

No SkipLayerNormalization: onnxruntime's CPU kernel measured slower than Add + LayerNormalization at MiniLM
width (benchmarks/results/fusion_log.md). The Sum form also keeps the session-level SkipLayerNormFusion,
which fires once the fused attention makes the shapes known, from bringing it back.
"""

from __future__ import annotations

import logging
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mpee_runtime.bundle.contract import LENGTHS
from mpee_runtime.bundle.manifest import GraphEntry

MS_DOMAIN = "com.microsoft"
# Prefix of the nodes that take the token score's query row and keys from the packed Q/K/V product.
SCORE_PREFIX = "score_q"


def fusion_options(model_type: str = "bert"):
    from onnxruntime.transformers.fusion_options import FusionOptions
    options = FusionOptions(model_type)
    options.enable_attention = False   # fused below (fuse_attention), keeping the token score's inputs
    options.enable_skip_layer_norm = False   # slower than Add + LayerNormalization (module docstring)
    return options


def optimize_layers(folder: Path, entries: list[GraphEntry], *, num_heads: int, hidden: int,
                    model_type: str = "bert") -> list[GraphEntry]:
    """Fuse every layer graph in place (`fuse_layer`); return the entries (the caller seals them:
    bundle.seal_graphs stamps and hashes the rewritten files)."""
    for e in entries:
        if e.layer is not None:
            fuse_layer(folder / e.file, num_heads=num_heads, hidden=hidden, model_type=model_type)
    return entries


def fuse_layer(path: Path, *, num_heads: int, hidden: int, model_type: str = "bert") -> dict:
    """Rewrite one layer graph with the fused operators; return the fused-op counts. `model_type`: the model type
    onnxruntime's optimizer is given (`Family.ort_model_type`; every family here is "bert" to it, as our
    attention is written the same way for all)."""
    from onnxruntime.transformers.optimizer import optimize_model
    logger = logging.getLogger("onnxruntime.transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        model = optimize_model(str(path), model_type=model_type, num_heads=num_heads, hidden_size=hidden,
                               optimization_options=fusion_options(model_type), opt_level=0)
        fuse_attention(model, num_heads)
        received_attention_rows(model)
        bias_row_means(model)
        residual_sums(model)
        model.prune_graph()
        model.topological_sort()
        model.save_model_to_file(str(path))   # adds the com.microsoft opset import the fused ops need
    finally:
        logger.setLevel(level)
    onnx.checker.check_model(str(path))
    return fused_op_counts(path)


def fused_op_counts(path: Path) -> dict:
    counts = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node
                     if n.domain == MS_DOMAIN)
    return dict(counts)


# ---------------------------------------------------------------- residual + LayerNorm
def residual_sums(model) -> int:
    """LayerNormalization(Add(Add(b, y), r)) -> LayerNormalization(Sum(y, r, b)); return how many.

    One node instead of two, and a pattern onnxruntime's session-level SkipLayerNormFusion does not take:
    once the fused attention gives the residual's shape, the session would otherwise fuse it into the slow
    SkipLayerNormalization (see fusion_options)."""
    producer = model.output_name_to_node()
    consumers = model.input_name_to_nodes()
    done = 0
    for ln in list(model.get_nodes_by_op_type("LayerNormalization")):
        outer = producer.get(ln.input[0])
        if outer is None or outer.op_type != "Add" or len(consumers.get(outer.output[0], [])) != 1:
            continue
        for inner_in, residual in ((0, 1), (1, 0)):
            inner = producer.get(outer.input[inner_in])
            if inner is None or inner.op_type != "Add" or len(consumers.get(inner.output[0], [])) != 1:
                continue
            bias = [i for i in inner.input if (t := model.get_initializer(i)) is not None and len(t.dims) == 1]
            if len(bias) != 1:
                continue
            other = inner.input[1] if inner.input[0] == bias[0] else inner.input[0]
            model.remove_nodes([inner, outer])
            model.add_node(helper.make_node("Sum", [other, outer.input[residual], bias[0]], [outer.output[0]],
                                            name=outer.name + "_sum"))
            producer = model.output_name_to_node()
            consumers = model.input_name_to_nodes()
            done += 1
            break
    return done


# ---------------------------------------------------------------- scoring "all"
def received_attention_rows(model) -> int:
    """ReduceMean(P, axes=[1, 2], keepdims=0) of attention probabilities P (1, H, N, N) -> ones(1, H N) x
    Reshape(P, [H N, N]) / (H N); return how many.

    The same (1, N) mean (the graphs are batch 1), as one matrix-vector product. onnxruntime's CPU ReduceMean
    over the two middle axes of a 4-D tensor is a slow strided reduction: at 400 tokens it took as long as an
    FFN product (7.9 ms against 1.0 ms for the product, 2 threads; a ReduceMean over the leading axis of the
    reshaped matrix, 2.8 ms, is fast on one thread but not on two: benchmarks/results/long_inputs/profile.md)."""
    if not _batch_one(model):
        return 0
    producer = model.output_name_to_node()
    done = 0
    for node in list(model.get_nodes_by_op_type("ReduceMean")):
        softmax = producer.get(node.input[0])
        if softmax is None or softmax.op_type != "Softmax" or _attr(softmax, "axis", -1) not in (-1, 3):
            continue
        if sorted(_reduced_axes(model, node) or []) != [1, 2] or _attr(node, "keepdims", 1) != 0:
            continue
        pre = node.name + "_rows"
        minus1 = numpy_helper.from_array(np.asarray([-1], dtype=np.int64), pre + "_minus1")
        model.add_initializer(minus1)
        p = node.input[0]
        flat = [helper.make_node("Shape", [p], [pre + "_n"], name=pre + "_n", start=3),
                helper.make_node("Concat", [minus1.name, pre + "_n"], [pre + "_shape"], name=pre + "_shape", axis=0),
                helper.make_node("Reshape", [p, pre + "_shape"], [pre + "_flat"], name=pre + "_flat"),   # (H N, N)
                helper.make_node("Shape", [pre + "_flat"], [pre + "_hn"], name=pre + "_hn", end=1)]
        _mean_as_product(model, node, flat, pre + "_flat", pre + "_hn", lead=[1])
        done += 1
    return done


def bias_row_means(model) -> int:
    """ReduceMean(B, axes=[2], keepdims=0) of an attention bias B (batch, H, N, N) laid out by a Transpose ->
    MatMul(ones(1, 1, 1, N), B), squeezed, / N; return how many.

    The family's attention bias averaged over the query rows (MPNet's relative position bias, read by the "mean"
    token score: `modeling.query_scores`). onnxruntime's CPU ReduceMean over the third of four axes is a strided
    reduction: on IMDB reviews (272 tokens) the profiler charged it 12 ms of an int8 MPNet's 176 ms
    (benchmarks/results/map_imdb/profile_mpnet_int8.md); the product reads the bias once, contiguously, and saves
    about 1% of an fp32 MPNet at full depth unprofiled (map_imdb/mpnet/position_bias_fix.md)."""
    producer = model.output_name_to_node()
    done = 0
    for node in list(model.get_nodes_by_op_type("ReduceMean")):
        source = producer.get(node.input[0])
        if (source is None or source.op_type != "Transpose" or len(_attr(source, "perm", [])) != 4
                or _reduced_axes(model, node) != [2] or _attr(node, "keepdims", 1) != 0):
            continue
        pre = node.name + "_rows"
        rows = helper.make_node("Shape", [node.input[0]], [pre + "_n"], name=pre + "_n", start=2, end=3)
        _mean_as_product(model, node, [rows], node.input[0], pre + "_n", lead=[1, 1, 1], squeeze=2)
        done += 1
    return done


def _reduced_axes(model, node) -> list[int] | None:
    """The axes (mod 4) a ReduceMean reduces, from its attribute (opset < 18) or its constant input."""
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1:
        axes = model.get_constant_value(node.input[1])
    return None if axes is None else [int(a) % 4 for a in np.asarray(axes).reshape(-1)]


def _mean_as_product(model, node, before: list, matrix: str, rows: str, *, lead: list[int],
                     squeeze: int | None = None) -> None:
    """Replace the ReduceMean `node` by `before` (the nodes that make `matrix` and `rows`), then
    MatMul(ones(lead + [R]), matrix) / R, where `rows` holds [R], the length of the reduced axis of `matrix`;
    `squeeze`: the axis of the product to drop (the ones' row)."""
    pre = node.name + "_rows"
    shape = numpy_helper.from_array(np.asarray(lead, dtype=np.int64), pre + "_lead")
    model.add_initializer(shape)
    ones = numpy_helper.from_array(np.asarray([1.0], dtype=np.float32), pre + "_ones_value")
    new = before + [
        helper.make_node("Concat", [shape.name, rows], [pre + "_ones_shape"], name=pre + "_ones_shape", axis=0),
        helper.make_node("ConstantOfShape", [pre + "_ones_shape"], [pre + "_ones"], name=pre + "_ones", value=ones),
        helper.make_node("MatMul", [pre + "_ones", matrix], [pre + "_sum"], name=pre + "_sum"),
        helper.make_node("Cast", [rows], [pre + "_count"], name=pre + "_count", to=onnx.TensorProto.FLOAT)]
    total = pre + "_sum"
    if squeeze is not None:
        axis = numpy_helper.from_array(np.asarray([squeeze], dtype=np.int64), pre + "_axis")
        model.add_initializer(axis)
        new.append(helper.make_node("Squeeze", [total, axis.name], [pre + "_flat_sum"], name=pre + "_flat_sum"))
        total = pre + "_flat_sum"
    new.append(helper.make_node("Div", [total, pre + "_count"], [node.output[0]], name=pre))
    model.remove_node(node)
    for n in new:
        model.add_node(n)


def _batch_one(model) -> bool:
    """Whether every input tensor of rank >= 2 has batch (axis 0) fixed at 1, as the bundle schema's do."""
    dims = [i.type.tensor_type.shape.dim for i in model.model.graph.input]
    return all(len(d) < 2 or d[0].dim_value == 1 for d in dims)


# ---------------------------------------------------------------- attention
def fuse_attention(model, num_heads: int) -> int:
    """Replace each matched attention (Q/K/V projections, QK^T / sqrt(dh), Softmax, x V, head merge) of the
    onnxruntime `OnnxModel` by one com.microsoft Attention node; return how many were fused."""
    fused = 0
    for softmax in list(model.get_nodes_by_op_type("Softmax")):
        match = _match(model, softmax, num_heads)
        if match is not None:
            _rewrite(model, match, num_heads)
            fused += 1
    if fused and not any(o.domain == MS_DOMAIN for o in model.model.opset_import):
        model.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return fused


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _only(consumers: dict, name: str) -> onnx.NodeProto | None:
    nodes = consumers.get(name, [])
    return nodes[0] if len(nodes) == 1 else None


def _projection(model, producer: dict, add: onnx.NodeProto | None, width: int):
    """(x, W, b) of add = x @ W + b with W (width, width) and b (width,) constants, else None."""
    if add is None or add.op_type != "Add":
        return None
    for bias_in, mm_in in ((0, 1), (1, 0)):
        bias = model.get_initializer(add.input[bias_in])
        matmul = producer.get(add.input[mm_in])
        if bias is None or matmul is None or matmul.op_type != "MatMul":
            continue
        weight = model.get_initializer(matmul.input[1])
        if weight is None:
            return None
        w, b = numpy_helper.to_array(weight), numpy_helper.to_array(bias)
        if w.shape == (width, width) and b.shape == (width,):
            return matmul.input[0], w, b, matmul
    return None


def _heads_of_reshape(model, producer: dict, reshape: onnx.NodeProto) -> tuple[int, int] | None:
    """(H, dh) when the Reshape splits the last axis into [.., H, dh] with constant H and dh."""
    shape = model.get_constant_value(reshape.input[1])
    if shape is not None:
        return (int(shape[-2]), int(shape[-1])) if shape.size == 4 else None
    concat = producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    last = [model.get_constant_value(n) for n in concat.input[2:]]
    if any(v is None or v.size != 1 for v in last):
        return None
    return int(last[0].reshape(-1)[0]), int(last[1].reshape(-1)[0])


def _match(model, softmax, num_heads: int) -> dict | None:
    """The nodes of one standard attention ending in `softmax`, or None when anything differs."""
    producer = model.output_name_to_node()
    consumers = model.input_name_to_nodes()
    core = _match_core(model, producer, consumers, softmax)
    if core is None:
        return None
    branches = _match_branches(model, producer, core)
    if branches is None:
        return None
    heads, head_dim = _heads_of_reshape(model, producer, branches["q"][1])
    if heads != num_heads or any(_heads_of_reshape(model, producer, r) != (heads, head_dim)
                                 for _, r, _ in branches.values()):
        return None
    if not np.isclose(core["scale"], 1.0 / np.sqrt(head_dim), rtol=1e-5):
        return None
    proj = {k: _projection(model, producer, add, heads * head_dim) for k, (_, _, add) in branches.items()}
    if any(p is None for p in proj.values()) or len({p[0] for p in proj.values()}) != 1:
        return None
    if not _only_score_readers(consumers, core, branches, proj):
        return None
    return _attention_match(model, consumers, core, branches, proj, heads, head_dim)


def _scaled_qk(producer: dict, node) -> bool:
    """Whether `node` is QK^T's scaling: a Div or Mul of a MatMul."""
    return (node is not None and node.op_type in ("Div", "Mul") and producer.get(node.input[0]) is not None
            and producer[node.input[0]].op_type == "MatMul")


def _match_core(model, producer: dict, consumers: dict, softmax) -> dict | None:
    """QK^T, its scale, the additive biases between the scale and the softmax, the softmax, the context product
    and the head merge, or None.

    The biases, in the order the model adds them: the family's attention bias (MPNet's relative positions,
    `Family.attention_bias`), then the padding mask: in a batch layer graph its Add goes (the fused attention
    takes the rows' lengths instead); any other bias, a full model's extended attention mask included, becomes
    the fused attention's `attention_bias` (summed, when two). An Add whose other input is QK^T's scaling or
    another such Add is one of them; at most two."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    adds, node = [], producer.get(softmax.input[0])
    while node is not None and node.op_type == "Add" and len(adds) < 2:
        inner = [producer.get(i) for i in node.input]
        chained = [j for j, n in enumerate(inner) if _scaled_qk(producer, n) or (n is not None and n.op_type == "Add")]
        if len(chained) != 1:
            return None
        adds.append((node, node.input[1 - chained[0]]))
        node = inner[chained[0]]
    scale_node = node
    if not _scaled_qk(producer, scale_node):
        return None
    mask_add = None
    if adds and _has_lengths(model):   # the padding mask is added last
        mask_add = adds.pop(0)[0]
    adds.reverse()                     # in the order they are added
    scale = model.get_constant_value(scale_node.input[1])
    qk = producer.get(scale_node.input[0])
    if scale is None or scale.size != 1 or qk is None or qk.op_type != "MatMul":
        return None
    pv = _only(consumers, softmax.output[0])          # the probabilities feed only the context product
    if pv is None or pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        return None
    merge_t = _only(consumers, pv.output[0])
    if merge_t is None or merge_t.op_type != "Transpose" or list(_attr(merge_t, "perm", [])) != [0, 2, 1, 3]:
        return None
    merge_r = _only(consumers, merge_t.output[0])
    if merge_r is None or merge_r.op_type != "Reshape":
        return None
    value = float(scale.reshape(-1)[0])
    return {"softmax": softmax, "scale_node": scale_node, "mask_add": mask_add, "bias_adds": [a for a, _ in adds],
            "biases": [b for _, b in adds], "qk": qk, "pv": pv, "merge_t": merge_t, "merge_r": merge_r,
            "scale": 1.0 / value if scale_node.op_type == "Div" else value}


def _has_lengths(model) -> bool:
    """Whether the graph takes each row's real length (a batch layer graph)."""
    return any(i.name == LENGTHS for i in model.model.graph.input)


def _match_branches(model, producer: dict, core: dict) -> dict | None:
    """q: Transpose(0,2,1,3) of Reshape(x Wq + bq); k: Transpose(0,2,3,1) of Reshape(x Wk + bk); v as q.
    Each as (transpose, reshape, add), or None."""
    qk, pv = core["qk"], core["pv"]
    branches = {}
    for key, tensor, perm in (("q", qk.input[0], [0, 2, 1, 3]), ("k", qk.input[1], [0, 2, 3, 1]),
                              ("v", pv.input[1], [0, 2, 1, 3])):
        t = producer.get(tensor)
        if t is None or t.op_type != "Transpose" or list(_attr(t, "perm", [])) != perm:
            return None
        r = producer.get(t.input[0])
        if r is None or r.op_type != "Reshape" or _heads_of_reshape(model, producer, r) is None:
            return None
        branches[key] = (t, r, producer.get(r.input[0]))
    return branches


def _only_score_readers(consumers: dict, core: dict, branches: dict, proj: dict) -> bool:
    """Whether the matched nodes have no readers besides each other, the token score's query row (of q)
    and K per head (of k's Reshape), the only other readers supported."""
    q_t, q_r, q_add = branches["q"]
    k_t, k_r, k_add = branches["k"]
    v_t, v_r, v_add = branches["v"]
    qk, scale_node, softmax, pv = core["qk"], core["scale_node"], core["softmax"], core["pv"]
    checks = [(q_add, [q_r]), (k_add, [k_r]), (v_add, [v_r]), (q_r, [q_t]), (v_r, [v_t]), (v_t, [pv]), (k_t, [qk]),
              (proj["q"][3], [q_add]), (proj["k"][3], [k_add]), (proj["v"][3], [v_add]), (qk, [scale_node])]
    chain = [scale_node, *core["bias_adds"]] + ([core["mask_add"]] if core["mask_add"] else []) + [softmax]
    checks += [(a, [b]) for a, b in pairwise(chain)]
    for node, allowed in checks:
        if any(c is not node and all(c is not a for a in allowed) for out in node.output
               for c in consumers.get(out, [])):
            return False
    return True


def _attention_match(model, consumers: dict, core: dict, branches: dict, proj: dict, heads: int,
                     head_dim: int) -> dict | None:
    """The match record _rewrite needs: the packed Q/K/V weight, the score's readers, the nodes to remove."""
    q_t, q_r, q_add = branches["q"]
    k_t, k_r, k_add = branches["k"]
    v_t, v_r, v_add = branches["v"]
    others = [c for c in consumers.get(q_t.output[0], []) if c is not core["qk"]]
    q_rows = [c for c in others if _row_axis(model, c) is not None]
    # Other readers of Q per head (the masked mean query row of a batch graph) get it rebuilt from Q.
    q_shared = len(q_rows) < len(others)
    if q_shared and not core["mask_add"]:
        return None
    # K split into heads (B, N, H, dh) may have other readers (the score): they get the same tensor back
    k_shared = any(c is not k_t for c in consumers.get(k_r.output[0], []))
    return {"x": proj["q"][0], "w": np.concatenate([proj[k][1] for k in "qkv"], axis=1),
            "b": np.concatenate([proj[k][2] for k in "qkv"]),
            "heads": heads, "head_dim": head_dim, "context": core["merge_r"].output[0], "q_rows": q_rows,
            "q_shared": q_shared, "q_split": q_t.output[0],
            "k_shared": k_shared, "k_split": k_r.output[0],
            "q_row_users": {r.output[0]: consumers.get(r.output[0], []) for r in q_rows},
            "masked": core["mask_add"] is not None, "biases": core["biases"],
            "remove": [core["qk"], core["scale_node"], core["softmax"], core["pv"], core["merge_t"],
                       core["merge_r"], q_t, q_r, q_add, k_t, k_r, k_add, v_t, v_r, v_add,
                       proj["q"][3], proj["k"][3], proj["v"][3]]
                      + core["bias_adds"] + ([core["mask_add"]] if core["mask_add"] else [])}


def _row_axis(model, node) -> str | None:
    """'slice' / 'mean' when `node` takes rows of Q (B, H, N, dh) along the token axis only, else None."""
    if node.op_type == "Slice" and len(node.input) >= 4:
        axes = model.get_constant_value(node.input[3])
        if axes is not None and [int(a) % 4 for a in axes.reshape(-1)] == [2] and all(
                model.get_constant_value(n) is not None for n in node.input[1:]):
            return "slice"
    if node.op_type == "ReduceMean" and _attr(node, "keepdims", 1) == 1:
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1:
            axes = model.get_constant_value(node.input[1])
        if axes is not None and [int(a) % 4 for a in np.asarray(axes).reshape(-1)] == [2]:
            return "mean"
    return None


def _rewrite(model, m: dict, num_heads: int) -> None:
    # Attention (and QAttention, its int8 form) takes no attention bias: a biased attention is MultiHeadAttention.
    if m["q_rows"] or m["q_shared"] or m["k_shared"] or m["masked"] or m["biases"]:
        _rewrite_scored(model, m, num_heads)
        return
    name = model.create_node_name("Attention", "Attention_")
    w = numpy_helper.from_array(m["w"].astype(np.float32), name + "_qkv_weight")
    b = numpy_helper.from_array(m["b"].astype(np.float32), name + "_qkv_bias")
    model.add_initializer(w)
    model.add_initializer(b)
    model.remove_nodes(m["remove"])
    model.add_node(helper.make_node("Attention", [m["x"], w.name, b.name], [m["context"]], name=name,
                                    domain=MS_DOMAIN, num_heads=num_heads))


KEY_LENGTHS = "lengths_int32"   # the batch graph's row lengths as MultiHeadAttention's 1-D key padding mask


def _key_lengths(model) -> str:
    """The int32 copy of the graph's `lengths` input (made once): right padding, one key length per row."""
    if not any(KEY_LENGTHS in n.output for n in model.model.graph.node):
        model.add_node(helper.make_node("Cast", [LENGTHS], [KEY_LENGTHS], name=KEY_LENGTHS,
                                        to=onnx.TensorProto.INT32))
    return KEY_LENGTHS


def _attention_bias(model, biases: list[str]) -> str:
    """The one tensor MultiHeadAttention adds to its scaled logits: the bias, or the sum of two (made once for
    every attention that adds the same pair: a full model's position bias and extended mask)."""
    if len(biases) < 2:
        return biases[0] if biases else ""
    name = "attention_bias_sum_" + "_".join(b.strip("/").replace("/", "_") for b in biases)
    if not any(name in n.output for n in model.model.graph.node):
        model.add_node(helper.make_node("Add", biases, [name], name=name))
    return name


def _optional_inputs(model, m: dict) -> list[str]:
    """MultiHeadAttention's inputs after Q, K, V: bias (none), key_padding_mask (the rows' lengths in a batch
    graph), attention_bias ((B or 1, H or 1, N, N), added to the scaled logits: `_attention_bias`)."""
    inputs = ["", _key_lengths(model) if m["masked"] else "", _attention_bias(model, m["biases"])]
    while inputs and not inputs[-1]:
        inputs.pop()
    return inputs


def _rewrite_scored(model, m: dict, num_heads: int) -> None:
    """A layer whose token score reads Q and K, a batch graph's masked attention, or an attention with the family's
    bias: one packed Q/K/V product, a Split, and the com.microsoft MultiHeadAttention on the three parts (with the
    key lengths when masked, and the bias as its `attention_bias`); the score's query row and K per head are
    taken from the same Q and K (no second projection of the query row, no second copy of W_q)."""
    name = model.create_node_name("MultiHeadAttention", "MultiHeadAttention_")
    width = m["heads"] * m["head_dim"]
    w = numpy_helper.from_array(m["w"].astype(np.float32), name + "_qkv_weight")
    b = numpy_helper.from_array(m["b"].astype(np.float32), name + "_qkv_bias")
    sizes = numpy_helper.from_array(np.asarray([width] * 3, dtype=np.int64), name + "_split")
    axis1 = numpy_helper.from_array(np.asarray([1], dtype=np.int64), name + "_axis")
    shape = numpy_helper.from_array(np.asarray([0, -1, m["heads"], m["head_dim"]], dtype=np.int64),
                                    name + "_heads_shape")
    for t in (w, b, sizes, axis1, shape):
        model.add_initializer(t)
    q, k, v = (f"{name}_{p}" for p in "qkv")
    new = [helper.make_node("MatMul", [m["x"], w.name], [name + "_qkv_mm"], name=name + "_qkv_mm"),
           helper.make_node("Add", [name + "_qkv_mm", b.name], [name + "_qkv"], name=name + "_qkv_add"),
           helper.make_node("Split", [name + "_qkv", sizes.name], [q, k, v], name=name + "_split", axis=-1),
           helper.make_node("MultiHeadAttention", [q, k, v] + _optional_inputs(model, m), [m["context"]], name=name,
                            domain=MS_DOMAIN, num_heads=num_heads)]
    opset = model.get_opset_version()
    for j, row in enumerate(m["q_rows"]):   # the score's query row: rows of Q, split into heads
        prefix = f"{SCORE_PREFIX}_{name}_{j}"
        if _row_axis(model, row) == "slice":
            inputs = [q, row.input[1], row.input[2], axis1.name] + list(row.input[4:5])
            new.append(helper.make_node("Slice", inputs, [prefix + "_row"], name=prefix + "_row"))
        elif opset >= 18:
            new.append(helper.make_node("ReduceMean", [q, axis1.name], [prefix + "_row"], name=prefix + "_row",
                                        keepdims=1))
        else:
            new.append(helper.make_node("ReduceMean", [q], [prefix + "_row"], name=prefix + "_row", axes=[1],
                                        keepdims=1))
        users = m["q_row_users"][row.output[0]]
        if users and all(u.op_type == "Transpose" and list(_attr(u, "perm", [])) == [0, 2, 1, 3] for u in users):
            # the score reads the row token-major (B, 1, H, dh): what the Reshape gives, no transpose pair
            new += [helper.make_node("Reshape", [prefix + "_row", shape.name], [u.output[0]],
                                     name=f"{prefix}_split{i}") for i, u in enumerate(users)]
            model.remove_nodes(users)
        else:
            new += [helper.make_node("Reshape", [prefix + "_row", shape.name], [prefix + "_split"],
                                     name=prefix + "_split"),
                    helper.make_node("Transpose", [prefix + "_split"], [row.output[0]], name=prefix + "_heads",
                                     perm=[0, 2, 1, 3])]
    if m["q_shared"]:   # Q split into heads (B, H, N, dh), as its other readers read it
        new += [helper.make_node("Reshape", [q, shape.name], [name + "_query_heads"], name=name + "_query_heads"),
                helper.make_node("Transpose", [name + "_query_heads"], [m["q_split"]], name=name + "_query_t",
                                 perm=[0, 2, 1, 3])]
    if m["k_shared"]:   # K split into heads (B, N, H, dh), as the score reads it
        new.append(helper.make_node("Reshape", [k, shape.name], [m["k_split"]], name=name + "_key_heads"))
    model.remove_nodes(m["remove"] + m["q_rows"])
    for node in new:
        model.add_node(node)
