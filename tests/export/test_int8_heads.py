"""int8 keeps the exit heads fp32, recognised by what they are (the nodes that read the head's weights,
recorded by the exporter from the PyTorch module), not by their names; a graph whose head cannot be found is
refused."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.errors import MpeeExportError
from mpee_export.export.bundle import ExportOptions, export_batch_graphs, export_bundle, export_graphs
from mpee_export.export.quantize import EXIT_HEAD_KEY, exit_head_nodes, quantize_layers
from mpee_export.export.subgraphs import BatchLayerGraph, LayerGraph
from mpee_runtime.bundle.manifest import Manifest

QUANTIZED = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear", "QGemm")


def _record(proto) -> list[str]:
    return json.loads({p.key: p.value for p in proto.metadata_props}[EXIT_HEAD_KEY])


def _readers(graph, name: str) -> list:
    return [n for n in graph.node if name in n.input]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Fused fp32 layer graphs (batch 1 and batch) of a 3-layer model, and the model."""
    model = tiny_model(layers=3, prune_layers=[1])
    folder = tmp_path_factory.mktemp("graphs")
    entries = export_graphs(model, folder, 17, graph_ops="fused")
    batch = export_batch_graphs(model, folder, 17, graph_ops="fused")
    return model, folder, entries, batch


def test_each_layer_graph_records_its_exit_head(graphs):
    model, folder, entries, batch = graphs
    for e in entries[1:] + batch:
        module = (BatchLayerGraph if e.batch else LayerGraph)(model, e.layer)
        proto = onnx.load(str(folder / e.file))
        weights = _record(proto)
        # the head's two weight matrices (pooler, classifier), named as the export names them
        assert weights == module.exit_head_weights() and len(weights) == 2
        inits = {t.name: t for t in proto.graph.initializer}
        head = model.exits[e.layer]
        assert sorted(tuple(inits[w].dims) for w in weights) == sorted(
            [tuple(head.pooler.weight.shape), tuple(head.classifier.weight.shape)])
        nodes = exit_head_nodes(folder / e.file)
        by_name = {n.name: n for n in proto.graph.node}
        assert len(nodes) == 2 and all(by_name[n].op_type in ("MatMul", "Gemm") for n in nodes)
        assert {w for n in nodes for w in by_name[n].input if w in weights} == set(weights)
    assert not any(p.key == EXIT_HEAD_KEY for p in onnx.load(str(folder / entries[0].file)).metadata_props)


def test_heads_are_found_whatever_they_are_called(graphs, tmp_path):
    """Renaming the module attribute renames the graph's nodes and initializers: the heads are still found
    (the old rule, the substring "exits" in node names, would have found none and quantized them)."""
    _, folder, entries, _ = graphs
    src = folder / entries[2].file
    proto = onnx.load(str(src))
    renamed = json.loads(json.dumps(_record(proto)).replace("exits", "heads"))

    def rename(names):
        return [x.replace("exits", "heads") for x in names]
    for n in proto.graph.node:
        n.name = n.name.replace("exits", "heads")
        n.input[:], n.output[:] = rename(n.input), rename(n.output)
    for t in proto.graph.initializer:
        t.name = t.name.replace("exits", "heads")
    onnx.helper.set_model_props(proto, {p.key: p.value for p in proto.metadata_props} | {
        EXIT_HEAD_KEY: json.dumps(renamed)})
    path = tmp_path / src.name
    onnx.save(proto, str(path))
    nodes = exit_head_nodes(path)
    assert len(nodes) == 2 and not [n for n in nodes if "exits" in n]
    assert not [n.name for n in proto.graph.node if "exits" in n.name]


@pytest.mark.parametrize("damage", ["no record", "a weight the graph lacks", "nothing reads it",
                                    "empty record"])
def test_a_graph_whose_head_cannot_be_found_is_refused(graphs, tmp_path, damage):
    _, folder, entries, _ = graphs
    shutil.copyfile(folder / entries[0].file, tmp_path / entries[0].file)
    src = folder / entries[1].file
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    weights = _record(proto)
    if damage == "no record":
        del props[EXIT_HEAD_KEY]
    elif damage == "a weight the graph lacks":
        props[EXIT_HEAD_KEY] = json.dumps([w.replace("exits", "heads") for w in weights])
    elif damage == "nothing reads it":   # the head's products read a copy of the weight under another name
        for n in _readers(proto.graph, weights[0]):
            n.input[:] = [x if x != weights[0] else "copy" for x in n.input]
        copy = onnx.TensorProto()
        copy.CopyFrom(next(t for t in proto.graph.initializer if t.name == weights[0]))
        copy.name = "copy"
        proto.graph.initializer.append(copy)
    else:
        props[EXIT_HEAD_KEY] = "[]"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(tmp_path / src.name))
    with pytest.raises(MpeeExportError, match="exit head"):
        exit_head_nodes(tmp_path / src.name)
    with pytest.raises(MpeeExportError, match="exit head"):   # and quantization refuses the graph
        quantize_layers(tmp_path, entries[:2])


def _assert_heads_fp32(path) -> None:
    """The recorded head weights are still float, read only by float MatMul / Gemm nodes whose activation is
    float; the rest of the graph is quantized. (quantize_dynamic writes a Gemm it leaves alone as MatMul + Add
    on the transposed weight, W_Transposed, as it always has: the exit heads of earlier bundles too.)"""
    proto = onnx.load(str(path))
    graph = proto.graph
    weights = _record(proto)
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for w in weights:
        kept = [name for name in (w, w + "_Transposed") if name in inits]
        assert len(kept) == 1, f"{path.name}: the exit head weight {w} was quantized: {sorted(inits)}"
        kept = kept[0]
        assert inits[kept].data_type == onnx.TensorProto.FLOAT
        readers = _readers(graph, kept)
        assert len(readers) == 1 and readers[0].op_type in ("MatMul", "Gemm"), [n.op_type for n in readers]
        act = producer.get(readers[0].input[0])
        assert act is None or act.op_type not in ("DequantizeLinear", *QUANTIZED)
        assert not [t for t in inits if t.startswith(w) and t != kept]   # no quantized copy of the weight
    assert any(n.op_type in QUANTIZED for n in graph.node)


def test_int8_bundle_keeps_the_exit_heads_fp32(tmp_path, shared_backbone):
    model = tiny_model(layers=3, prune_layers=[1])
    tok = AutoTokenizer.from_pretrained(str(shared_backbone))
    record = export_bundle(model, tok, tmp_path / "b", ExportOptions(quantize="int8"), log=lambda m: None)
    manifest = Manifest.load(tmp_path / "b")
    assert manifest.precision == "int8"
    for g in manifest.layers + manifest.batch_graphs:
        _assert_heads_fp32(tmp_path / "b" / g.file)
    # the int8 line: a verdict, the figures it rests on, no graph max|diff| (kept in validation.json)
    line = record.describe().splitlines()[1]
    assert line.startswith(("int8: OK (quantized", "int8: CHECK (quantized")) and "max|diff|" not in line
    assert "same label as PyTorch fp32 on" in line and "give --data or --dev to compare accuracy" in line
    saved = json.loads((tmp_path / "b" / "validation.json").read_text())["int8"]
    assert saved["graphs"]["max_abs_diff_overall"] == record.int8.graphs.max_abs_diff_overall
