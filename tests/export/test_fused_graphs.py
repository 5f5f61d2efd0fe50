"""Fused layer graphs (com.microsoft Attention, BiasGelu; optimize.py) against PyTorch, the standard-ops
option, the manifest's graph_ops field and the int8 recipe, on tiny random models (hidden 32, 4 heads)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.cli.export import export
from mpee_export.errors import MpeeExportError
from mpee_export.export.bundle import ExportOptions, export_bundle, export_graphs
from mpee_export.export.dummies import DUMMY_SEQ, dummy_feeds
from mpee_export.export.optimize import fuse_layer
from mpee_export.export.quantize import EXIT_HEAD_KEY
from mpee_export.export.recipe import fallback_settings, recipe_settings
from mpee_export.model.checkpoint import save_checkpoint
from mpee_runtime.bundle.contract import EMBEDDINGS, MANIFEST, OPSET, layer_file
from mpee_runtime.bundle.integrity import seal
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import ExitPolicy
from mpee_runtime.errors import MpeeRuntimeError

TEXTS = [("the movie is great", None), ("a boring film", "it was bad"), ("very good acting and plot", None),
         ("it", "the plot is not fun , not very good , and the acting was awful !")]


def _ops(path) -> Counter:
    return Counter((n.domain or "", n.op_type) for n in onnx.load(str(path)).graph.node)


def _export(tmp_path, backbone, model, **opts):
    out = tmp_path / "bundle"
    record = export_bundle(model, AutoTokenizer.from_pretrained(str(backbone)), out, ExportOptions(**opts),
                           texts=TEXTS, labels=[1, 0, 1, 0], log=lambda m: None)
    return out, record


def _same_as_pytorch(out, model, backbone, ratios=(None, 0.3, 1.0), thresholds=(0.0, 0.69)):
    engine = MpeeEngine(out, threads=1)
    tok = AutoTokenizer.from_pretrained(str(backbone))
    for a, b in TEXTS:
        enc = tok(a, b, return_tensors="pt")
        for ratio in ratios:
            for threshold in thresholds:
                ref = model.predict(enc["input_ids"], enc["token_type_ids"], keep_ratio=ratio,
                                    policy=ExitPolicy("entropy", threshold, 2))
                got = engine.predict(a, b, threshold=threshold, keep_ratio=ratio, policy="entropy")
                assert (got.exit_layer, got.label_index) == (ref.exit_layer, ref.label)
                assert got.tokens_per_layer == ref.attn_lens and got.ffn_tokens_per_layer == ref.ffn_lens
                np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)


@pytest.mark.parametrize("kw", [
    {"layers": 3, "prune_layers": [0, 1], "keep_ratio": 0.5},
    {"layers": 3, "prune_layers": [1], "keep_ratio": 0.4, "scoring": "mean", "exit_pooling": "mean"},
])
def test_fused_bundle_round_trip(tmp_path, tiny_backbone, kw):
    model = tiny_model(**kw)
    out, record = _export(tmp_path, tiny_backbone, model)   # fused is the default
    assert record.fp32.passed and record.fp32.graphs.max_abs_diff_overall < 1e-4
    manifest = Manifest.load(out)
    assert manifest.export.graph_ops == "fused"
    assert json.loads((out / MANIFEST).read_text())["export"]["graph_ops"] == "fused"
    for g in manifest.layers:
        ops = _ops(out / g.file)
        scores = g.layer <= max(kw["prune_layers"])   # only layers up to the last pruning layer compute a score
        # a layer with a score: the packed Q/K/V product, then MultiHeadAttention on its Q, K and V, which the
        # score reads too; without: the Attention operator of the fused full model
        assert ops[("com.microsoft", "MultiHeadAttention")] == scores
        assert ops[("com.microsoft", "Attention")] == (not scores) and ops[("com.microsoft", "BiasGelu")] == 1
        # the slower SkipLayerNormalization is avoided, the attention's pieces are gone
        assert not ops[("com.microsoft", "SkipLayerNormalization")] and not ops[("", "Erf")]
        # only the token score's softmax is left, without Unsqueeze / Gather around it
        assert ops[("", "Softmax")] == scores
        # 3 dense products, the packed Q/K/V product of a scoring layer, the fused token's weighted sum
        assert ops[("", "MatMul")] == 3 + scores + g.prunes
        # the query row is not projected a second time: the packed weight has one reader, no W_q copy
        graph = onnx.load(str(out / g.file)).graph
        inits = {t.name: list(t.dims) for t in graph.initializer}
        width = model.config.hidden_size
        assert not [n for n in graph.node if n.op_type == "Slice" and n.input[0] in inits]
        assert sum(dims == [width, width] for dims in inits.values()) == 2   # attention output + exit pooler
        if g.prunes:                       # pruning still happens inside the graph, on the FFN's input
            assert ops[("", "TopK")] == 1
    assert {op.domain for op in onnx.load(str(out / EMBEDDINGS)).opset_import} <= {"", "ai.onnx"}
    _same_as_pytorch(out, model, tiny_backbone)


def test_scoring_all_keeps_the_attention_unfused(tmp_path):
    """'all' reads the attention probabilities, which the fused operator does not return: left as is."""
    model = tiny_model(layers=2, prune_layers=[1], scoring="all")
    export_graphs(model, tmp_path, OPSET, graph_ops="fused")
    ops = _ops(tmp_path / layer_file(1))
    assert not ops[("com.microsoft", "Attention")] and ops[("com.microsoft", "BiasGelu")] == 1


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_scoring_all_mean_is_one_product(tmp_path, tiny_backbone, quantize):
    """'all': the score's mean of the probabilities over heads and query rows is one fp32 matrix-vector
    product on the probabilities reshaped to (H N, N), not onnxruntime's slow ReduceMean over axes (1, 2)
    (benchmarks/results/long_inputs/profile.md); the bundle still matches PyTorch."""
    model = tiny_model(layers=3, prune_layers=[0, 1], keep_ratio=0.5, scoring="all")
    out, record = _export(tmp_path, tiny_backbone, model, quantize=quantize)
    assert record.fp32.passed and record.fp32.graphs.max_abs_diff_overall < 1e-4
    for g in Manifest.load(out).layers:
        graph = onnx.load(str(out / g.file)).graph
        producer = {o: n for n in graph.node for o in n.output}
        means = [n for n in graph.node if n.op_type == "ReduceMean" and producer[n.input[0]].op_type == "Softmax"]
        rows = [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith("_rows_sum")]
        assert not means and len(rows) == (g.layer <= 1)   # scoring layers only; kept fp32 in int8
    if quantize is None:
        _same_as_pytorch(out, model, tiny_backbone)


def test_standard_ops_option(tmp_path, tiny_backbone):
    model = tiny_model(layers=2, prune_layers=[1])
    out, record = _export(tmp_path, tiny_backbone, model, graph_ops="standard")
    assert record.fp32.passed
    manifest = Manifest.load(out)
    assert manifest.export.graph_ops == "standard"
    for g in manifest.graphs:
        proto = onnx.load(str(out / g.file))
        assert {op.domain for op in proto.opset_import} <= {"", "ai.onnx"}
        assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    _same_as_pytorch(out, model, tiny_backbone, ratios=(None,), thresholds=(0.0,))


def test_cli_standard_ops_flag(tmp_path, tiny_backbone):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model(layers=2), tok, ckpt)
    res = CliRunner().invoke(export, [str(ckpt), str(tmp_path / "std"), "--standard-ops"])
    assert res.exit_code == 0, res.output
    assert Manifest.load(tmp_path / "std").export.graph_ops == "standard"
    res = CliRunner().invoke(export, [str(ckpt), str(tmp_path / "x"), "--optimize"])   # removed: fused is the default
    assert res.exit_code == 2 and "No such option" in res.output
    with pytest.raises(MpeeExportError, match="graph_ops"):
        export_bundle(tiny_model(layers=2), tok, tmp_path / "y", ExportOptions(graph_ops="turbo"))


def test_manifest_refuses_bad_graph_ops(tmp_path, tiny_backbone):
    out, _ = _export(tmp_path, tiny_backbone, tiny_model(layers=2))
    data = json.loads((out / MANIFEST).read_text())
    for bad in ("turbo", None, True):   # re-sealed, so that the typed check, not the integrity record, refuses
        data["export"]["graph_ops"] = bad
        (out / MANIFEST).write_text(json.dumps(seal(data)))
        with pytest.raises(MpeeRuntimeError, match="export.graph_ops"):
            Manifest.load(out)
    del data["export"]["graph_ops"]
    (out / MANIFEST).write_text(json.dumps(seal(data)))
    with pytest.raises(MpeeRuntimeError, match="missing field .*export.graph_ops"):
        Manifest.load(out)


def test_cli_fp32_embeddings_flag(tmp_path, tiny_backbone):
    """--fp32-embeddings keeps the embeddings graph fp32 in an int8 bundle; alone it is refused."""
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model(layers=2), tok, ckpt)
    res = CliRunner().invoke(export, [str(ckpt), str(tmp_path / "q"), "--quantize", "int8", "--fp32-embeddings"])
    assert res.exit_code == 0, res.output
    manifest = Manifest.load(tmp_path / "q")
    assert manifest.graphs[0].precision == "fp32" and all(g.precision == "int8" for g in manifest.layers)
    proto = onnx.load(str(tmp_path / "q" / EMBEDDINGS))
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in proto.graph.initializer if len(t.dims) == 2)
    res = CliRunner().invoke(export, [str(ckpt), str(tmp_path / "x"), "--fp32-embeddings"])
    assert res.exit_code == 2 and "--fp32-embeddings needs --quantize int8" in res.output
    assert not (tmp_path / "x").exists()


def test_fused_int8(tmp_path, tiny_backbone):
    model = tiny_model(layers=3, prune_layers=[1])
    out, record = _export(tmp_path, tiny_backbone, model, quantize="int8")
    manifest = Manifest.load(out)
    assert manifest.export.graph_ops == "fused" and manifest.precision == "int8"
    for g in manifest.layers:
        proto = onnx.load(str(out / g.file))
        graph = proto.graph
        ops = Counter(n.op_type for n in graph.node)
        if g.layer <= 1:   # scores: the packed Q/K/V product is quantized, MultiHeadAttention reads it
            assert ops["MultiHeadAttention"] == 1 and not ops["QAttention"] and ops["MatMulInteger"] >= 4
        else:
            assert ops["QAttention"] == 1 and ops["MatMulInteger"] >= 3
        assert not ops["Attention"]
        # exit heads stay fp32 (the products reading the weights the exporter recorded as the head's: test_int8_heads);
        # nothing dequantizes a weight on every run
        heads = set(json.loads({p.key: p.value for p in proto.metadata_props}[EXIT_HEAD_KEY]))
        heads |= {h + "_Transposed" for h in heads}   # quantize_dynamic writes a kept Gemm as MatMul + Add
        assert [n.op_type for n in graph.node if heads & set(n.input)] == ["MatMul", "MatMul"]
        assert not ops["DequantizeLinear"]
    # the embedding tables are int8 as in the int8 full model (the recipe quantizes Gather); rows are
    # dequantized after the lookup, never the whole table
    emb = manifest.graphs[0]
    assert emb.layer is None and emb.precision == "int8"
    graph = onnx.load(str(out / emb.file)).graph
    inits = {t.name: t for t in graph.initializer}
    word = [t for t in inits.values() if list(t.dims) == [model.config.vocab_size, model.config.hidden_size]]
    assert len(word) == 1 and word[0].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    for n in graph.node:
        if n.op_type == "DequantizeLinear":
            assert n.input[0] not in inits   # dequantizes gathered rows, not a table
    assert record.int8.chain.accuracy_runtime is not None
    assert record.int8.chain.same_label >= 0.75
    pred = MpeeEngine(out, threads=1).predict("the movie is great", threshold=0.0)
    assert pred.exit_layer == 3 and abs(sum(pred.probs) - 1) < 1e-5


def test_int8_recipe_is_the_reference_recipe():
    settings = recipe_settings()["settings"]
    assert settings["is_static"] is False and settings["per_channel"] is False
    assert "MatMul" in settings["operators_to_quantize"] and "Attention" in settings["operators_to_quantize"]
    pytest.importorskip("optimum.onnxruntime")
    from mpee_runtime.bundle.reference import QUANT_RECIPES as RECIPES
    for recipe in RECIPES:   # the copy used without optimum says what optimum says
        assert fallback_settings(recipe) == recipe_settings(recipe)["settings"]


def test_unmatched_attention_is_left_alone(tmp_path):
    """A pattern that differs (here: a scale that is not 1/sqrt(head size)) is not fused; the graph still runs."""
    model = tiny_model(layers=1, prune_layers=[])
    export_graphs(model, tmp_path, 17)
    path = tmp_path / layer_file(0)
    proto = onnx.load(str(path))
    div = next(n for n in proto.graph.node if n.op_type == "Div" and any(
        c.op_type == "Softmax" for c in proto.graph.node if n.output[0] in c.input))
    const = next(n for n in proto.graph.node if n.output[0] == div.input[1])
    value = onnx.numpy_helper.to_array(const.attribute[0].t) * 2
    const.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32)))
    onnx.save(proto, str(path))
    counts = fuse_layer(path, num_heads=4, hidden=32)
    assert "Attention" not in counts and counts.get("BiasGelu") == 1
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dummy_feeds([i.name for i in sess.get_inputs()], hidden=32, num_labels=2, vocab_size=99)
    assert sess.run(None, feeds)[0].shape == (1, DUMMY_SEQ, 32)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_mpnet_bias_row_mean_is_one_product_and_its_table_stays_fp32(tmp_path, quantize):
    """MPNet with the "mean" token score: the relative position bias is one lookup in a table of every distance
    (no bucketing of the N x N distances in the layer graph); averaged over the query rows it is one matrix-vector
    product (optimize.bias_row_means), not onnxruntime's strided ReduceMean over the third axis; in int8 the table's
    lookup stays fp32 (quantize.table_lookups), so no layer dequantizes a (1, H, N, N) tensor. The bundle still
    gives PyTorch's exit layers, labels, tokens and probabilities (fp32)."""
    from families import SENTENCES, tiny_family_folder

    from mpee_export.model.checkpoint import from_backbone
    from mpee_export.model.config import MpeeConfig
    folder = tiny_family_folder("mpnet", tmp_path / "mpnet")
    torch.manual_seed(0)
    model = from_backbone(folder, MpeeConfig.build(num_layers=3, labels=["0", "1"], prune_layers=[0, 1],
                                                   keep_ratio=0.5, scoring="mean", exit_pooling="mean")).eval()
    for p in model.backbone.encoder.parameters():   # peaky attention: rankings far from ties
        if p.ndim == 2:
            p.data.normal_(0, 0.2)
    tok = AutoTokenizer.from_pretrained(str(folder))
    config = model.backbone.config
    out = tmp_path / "bundle"
    record = export_bundle(model, tok, out, ExportOptions(quantize=quantize), texts=[(s, None) for s in SENTENCES],
                           labels=[i % 2 for i in range(len(SENTENCES))], log=lambda m: None)
    assert record.fp32.passed
    manifest = Manifest.load(out)
    for g in manifest.layers:
        graph = onnx.load(str(out / g.file)).graph
        producer = {o: n for n in graph.node for o in n.output}
        strided = [n for n in graph.node if n.op_type == "ReduceMean" and n.input[0] in producer
                   and producer[n.input[0]].op_type in ("Transpose", "DequantizeLinear")]
        rows = [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith("_rows_sum")]
        assert not strided and len(rows) == (g.layer <= 1), g.file   # scoring layers only
        # the bias of every distance is one fp32 table (2 P - 1, heads), looked up once per layer
        tables = {t.name: t for t in graph.initializer}
        lookups = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in tables]
        assert [(list(tables[n.input[0]].dims), tables[n.input[0]].data_type) for n in lookups] == [
            ([2 * config.max_position_embeddings - 1, config.num_attention_heads], onnx.TensorProto.FLOAT)], g.file
        assert not {"Log", "Where", "Less", "Abs"} & {n.op_type for n in graph.node}, g.file   # no bucketing
        assert not [n for n in graph.node if n.op_type == "DequantizeLinear"
                    and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "Transpose"]
    if quantize is None:
        engine = MpeeEngine(out, threads=1)
        for text in SENTENCES:
            enc = tok(text, return_tensors="pt")
            for ratio, threshold in ((0.5, 0.0), (1.0, 0.0), (0.5, 0.6)):
                ref = model.predict(enc["input_ids"], None, keep_ratio=ratio, policy=ExitPolicy("entropy", threshold, 2))
                got = engine.predict(text, threshold=threshold, keep_ratio=ratio, policy="entropy")
                assert (got.exit_layer, got.label_index) == (ref.exit_layer, ref.label)
                assert got.tokens_per_layer == ref.attn_lens and got.ffn_tokens_per_layer == ref.ffn_lens
                np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)
