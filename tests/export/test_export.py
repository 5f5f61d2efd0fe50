"""mpee-export on tiny random models: parity, graph contract, bundle writing, int8, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_checks import click_error
from click.testing import CliRunner
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.cli.export import export
from mpee_export.errors import MpeeExportError
from mpee_export.export import bundle as export_mod
from mpee_export.export import validate as validate_mod
from mpee_export.export.bundle import CalibrationRequest, ExportOptions, ExportRecord, export_bundle
from mpee_export.export.validate import ChainCheck, GraphCheck, Validation
from mpee_export.model.checkpoint import save_checkpoint
from mpee_runtime.bundle.contract import (
    EMBEDDINGS,
    GRAPH_ID_KEY,
    HIDDEN,
    KEEP_RATIO,
    MANIFEST,
    MEMORY,
    OPSET,
    SCHEMA_VERSION,
    SCORES,
    layer_file,
)
from mpee_runtime.bundle.integrity import seal
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import ExitPolicy

TEXTS = [("the movie is great", None), ("a boring film", "it was bad"), ("very good acting and plot", None),
         ("it", "the plot is not fun , not very good , and the acting was awful !")]


def _tokenizer(backbone: Path):
    return AutoTokenizer.from_pretrained(str(backbone))


def _bundle(tmp_path, backbone, name="bundle", **model_kw) -> tuple[Path, object]:
    model = tiny_model(**model_kw)
    out = tmp_path / name
    export_bundle(model, _tokenizer(backbone), out, ExportOptions(), texts=TEXTS, log=lambda m: None)
    return out, model


@pytest.mark.parametrize("kw", [
    {"layers": 2},
    {"layers": 3, "prune_layers": [0, 1], "keep_ratio": 0.5},
    {"layers": 5, "prune_layers": [1, 3], "keep_ratio": [0.3, 0.9], "scoring": "all"},
    {"layers": 3, "prune_layers": [1], "fuse_token": False, "prune_select": "bottom"},
    {"layers": 3, "prune_layers": [0, 1], "keep_ratio": 0.5, "exit_pooling": "mean", "scoring": "mean"},
    {"layers": 4, "prune_layers": [1, 2], "keep_ratio": [0.4, 0.8], "scoring": "all", "exit_pooling": "mean"},
])
def test_parity_with_pytorch(tmp_path, tiny_backbone, kw):
    out, model = _bundle(tmp_path, tiny_backbone, **kw)
    record = json.loads((out / "validation.json").read_text())["fp32"]
    assert record["passed"] and record["graphs"]["max_abs_diff_overall"] < 1e-4
    assert Manifest.load(out).exit.pooling == kw.get("exit_pooling", "cls")
    engine = MpeeEngine(out, threads=1)
    tok = _tokenizer(tiny_backbone)
    # pairs, several keep ratios (a graph input) and thresholds: same exit, label, tokens and probs
    for (a, b) in TEXTS:
        enc = tok(a, b, return_tensors="pt")
        for ratio in (None, 0.2, 0.6, 1.0):
            for threshold in (0.0, 0.6, 0.69):
                rule = ExitPolicy("entropy", threshold, 2)
                ref = model.predict(enc["input_ids"], enc["token_type_ids"], policy=rule, keep_ratio=ratio)
                got = engine.predict(a, b, threshold=threshold, keep_ratio=ratio, policy="entropy")
                assert got.exit_layer == ref.exit_layer and got.label_index == ref.label
                assert got.tokens_per_layer == ref.attn_lens and got.ffn_tokens_per_layer == ref.ffn_lens
                np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)


def test_graph_contract(tmp_path, tiny_backbone):
    out, _ = _bundle(tmp_path, tiny_backbone, layers=3, prune_layers=[1])
    manifest = Manifest.load(out)
    assert manifest.schema_version == SCHEMA_VERSION and manifest.validation.passed
    assert [g.file for g in manifest.graphs] == [EMBEDDINGS] + [layer_file(i) for i in range(3)]
    for g in manifest.graphs:
        proto = onnx.load(str(out / g.file))
        onnx.checker.check_model(proto)
        assert [i.name for i in proto.graph.input] == g.inputs
        assert [o.name for o in proto.graph.output] == g.outputs
        assert {p.key: p.value for p in proto.metadata_props}[GRAPH_ID_KEY] == g.name
        # standard ops, plus onnxruntime's fused operators in fused layer graphs (the default graph_ops)
        domains = {"", "ai.onnx"} | ({"com.microsoft"} if g.layer is not None and
                                     manifest.export.graph_ops == "fused" else set())
        assert {op.domain for op in proto.opset_import} <= domains
        assert all(n.domain in domains for n in proto.graph.node)
        assert any(op.version >= OPSET for op in proto.opset_import)
        # the sequence axis is symbolic, never traced as a constant
        first = proto.graph.input[0].type.tensor_type.shape.dim[1]
        assert first.dim_param and not first.dim_value
    assert manifest.graphs[2].inputs == [HIDDEN, SCORES, MEMORY, KEEP_RATIO]
    assert manifest.graphs[1].inputs == [HIDDEN]
    ops = {n.op_type for n in onnx.load(str(out / layer_file(1))).graph.node}
    assert {"TopK", "Gather", "Concat"} <= ops
    assert manifest.versions["onnxruntime"] and manifest.model.hidden_size == 32


def test_refuses_non_empty_out_and_force_replaces(tmp_path, tiny_backbone):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model(layers=2), _tokenizer(tiny_backbone), ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(export, [str(ckpt), str(out)])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (out / "keep.txt").read_text() == "mine"
    res = CliRunner().invoke(export, [str(ckpt), str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert not (out / "keep.txt").exists() and (out / MANIFEST).is_file()
    assert "PASSED" in res.output


def test_failure_midway_leaves_nothing(tmp_path, tiny_backbone, monkeypatch):
    calls = []
    real = export_mod._torch_export

    def flaky(*args, **kw):
        calls.append(args[2])
        if len(calls) == 3:
            raise RuntimeError("simulated crash in the middle of the export")
        return real(*args, **kw)

    monkeypatch.setattr(export_mod, "_torch_export", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        export_bundle(tiny_model(layers=3), _tokenizer(tiny_backbone), tmp_path / "out", ExportOptions(),
                      log=lambda m: None)
    assert len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == ["backbone"]     # neither out/ nor a temporary folder


def test_failed_parity_leaves_no_bundle(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setitem(validate_mod.ATOL, "fp32", -1.0)
    with pytest.raises(MpeeExportError, match="parity"):
        export_bundle(tiny_model(layers=2), _tokenizer(tiny_backbone), tmp_path / "out", ExportOptions(),
                      log=lambda m: None)
    assert sorted(os.listdir(tmp_path)) == ["backbone"]


def test_int8_bundle_loads_and_predicts(tmp_path, tiny_backbone):
    model = tiny_model(layers=3, prune_layers=[1])
    out = tmp_path / "int8"
    record = export_bundle(model, _tokenizer(tiny_backbone), out, ExportOptions(quantize="int8"), texts=TEXTS,
                           labels=[1, 0, 1, 0], log=lambda m: None)
    manifest = Manifest.load(out)
    assert [g.precision for g in manifest.graphs] == ["int8", "int8", "int8", "int8"]   # embeddings too (the recipe)
    assert manifest.export.quantization == "int8" and manifest.precision == "int8"
    assert manifest.validation.passed and manifest.validation.checks["int8"]["passed"] is None
    assert record.int8.chain.accuracy_runtime is not None
    # with labels, int8 is judged by its accuracy against PyTorch fp32's on the same examples
    c = record.int8.chain
    line = record.describe().splitlines()[1]
    assert line.startswith(("int8: OK (quantized: judged by accuracy", "int8: CHECK (quantized: judged by accuracy"))
    assert (f"accuracy {100 * c.accuracy_runtime:.2f} vs PyTorch fp32 {100 * c.accuracy_pytorch:.2f}" in line
            and "on 4 labelled examples" in line and "max|diff|" not in line)
    ops = {n.op_type for n in onnx.load(str(out / layer_file(0))).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    pred = MpeeEngine(out, threads=1).predict("the movie is great", threshold=0.0)
    assert pred.exit_layer == 3 and abs(sum(pred.probs) - 1) < 1e-5


def _int8_validation(accuracy=None, pytorch=None, same_label=1.0):
    graphs = GraphCheck({"layer_00.memory": 4.27}, 4.27, [])
    chain = ChainCheck(200, "entropy", 0.1, None, 0.995, same_label, {"0": 200}, 0.2, accuracy, pytorch)
    return Validation("int8", graphs, chain, chain, None)


def test_int8_line_is_a_verdict():
    """int8 is judged by what the device answers: OK within INT8_MAX_DROP points of PyTorch fp32's accuracy (or,
    without labels, the same label on INT8_MIN_SAME_LABEL of the inputs), CHECK with advice otherwise; the graph
    max |diff|, which quantization makes meaningless, stays out of the line (it is in validation.json)."""
    ok = _int8_validation(0.815, 0.83).describe()
    assert ok.startswith("int8: OK (quantized: judged by accuracy, not compared exactly): accuracy 81.50 vs "
                         "PyTorch fp32 83.00 (-1.50 points; OK down to -2) on 200 labelled examples")
    assert "same label as PyTorch fp32 on 100.0%, same exit layer 99.5%" in ok and "max|diff|" not in ok
    worse = _int8_validation(0.80, 0.83).describe()
    assert worse.startswith("int8: CHECK") and "(-3.00 points; OK down to -2)" in worse
    assert worse.endswith("measure it on your own dev data before deploying it, or deploy the fp32 bundle")
    assert _int8_validation(same_label=0.96).describe().startswith(
        "int8: OK (quantized: judged by agreement with fp32, not compared exactly): same label as PyTorch fp32 on 96.0%")
    assert _int8_validation(same_label=0.90).describe().startswith("int8: CHECK")
    # the fp32 line keeps its verdict and figures
    fp32 = Validation("fp32", GraphCheck({"x": 1e-6}, 1e-6, []), _int8_validation().chain,
                      _int8_validation().chain, True)
    assert fp32.describe().startswith("fp32: PASSED  graph max|diff| 1.00e-06  chain on 200 examples")


def test_validate_command(tmp_path, tiny_backbone):
    tok = _tokenizer(tiny_backbone)
    ckpt, other = tmp_path / "ckpt", tmp_path / "other"
    model = tiny_model(layers=2, seed=0)
    save_checkpoint(model, tok, ckpt)
    save_checkpoint(tiny_model(layers=2, seed=1), tok, other)
    out = tmp_path / "bundle"
    assert CliRunner().invoke(export, [str(ckpt), str(out)]).exit_code == 0
    res = CliRunner().invoke(export, ["validate", str(out), str(ckpt)])
    assert res.exit_code == 0 and "PASSED" in res.output
    res = CliRunner().invoke(export, ["validate", str(out), str(other), "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 3 and "FAILED" in res.output        # other weights: the parity failure's code
    assert res.output.splitlines()[-1].startswith("Error: ") and "parity check failed" in res.output
    assert json.loads((tmp_path / "v.json").read_text())["fp32"]["passed"] is False   # the record is written


def _bad(args, needle):
    click_error(export, args, needle)


def test_bad_input(tmp_path, tiny_backbone):
    tok = _tokenizer(tiny_backbone)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model(layers=2), tok, ckpt)
    out = tmp_path / "out"
    _bad([str(tmp_path / "missing"), str(out)], "not found")
    _bad([str(ckpt), str(out), "--opset", "13"], "opset 13")
    _bad([str(tiny_backbone), str(out)], "mpee")                          # plain BERT, no exits
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ckpt.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    _bad([str(broken), str(out)], "model.safetensors")
    (broken / "model.safetensors").unlink()
    _bad([str(broken), str(out)], "model.safetensors")
    (broken / "config.json").write_text("{ not json")
    _bad([str(broken), str(out)], "config.json")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):                                      # root can write anywhere
        _bad([str(ckpt), str(locked / "out")], "not writable")
    locked.chmod(0o700)
    assert not out.exists()


def test_plain_bert_with_explicit_flag(tmp_path, tiny_backbone):
    out = tmp_path / "out"
    res = CliRunner().invoke(export, [str(tiny_backbone), str(out), "--allow-untrained-exits", "--task", "sst2"])
    assert res.exit_code == 0, res.output
    assert Manifest.load(out).export.untrained_exits is True


def test_chain_graph_matches_layers(tmp_path):
    model = tiny_model(layers=3, prune_layers=[0, 1], keep_ratio=0.5)
    path = tmp_path / "chain.onnx"
    export_mod.export_chain_graph(model, path)
    assert not model.training          # exporting must not switch dropout on
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = torch.randint(5, 99, (1, 21))
    (probs,) = sess.run(None, {"input_ids": ids.numpy(), "token_type_ids": np.zeros((1, 21), np.int64),
                               "keep_ratio": np.asarray(0.5, np.float32)})
    with torch.no_grad():
        ref = model(ids, keep_ratio=0.5).memories.softmax(-1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)


def test_fused_graph_ops_keep_parity(tmp_path, tiny_backbone):
    model = tiny_model(layers=3, prune_layers=[1])
    record = export_bundle(model, _tokenizer(tiny_backbone), tmp_path / "opt", ExportOptions(graph_ops="fused"),
                           texts=TEXTS, log=lambda m: None)
    assert record.fp32.passed
    assert Manifest.load(tmp_path / "opt").export.graph_ops == "fused"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt" / layer_file(1))).graph.node}
    assert {"MultiHeadAttention", "BiasGelu"} <= ops and "Erf" not in ops   # the fusions were applied (layer 1 scores)


def test_calibration_sets_the_default_threshold(tmp_path, tiny_backbone):
    model = tiny_model(layers=3, prune_layers=[1])
    tok = _tokenizer(tiny_backbone)
    examples = validate_mod.validation_examples(tok, TEXTS * 3, model)
    labels = [0, 1, 1, 0] * 3
    record = export_bundle(model, tok, tmp_path / "cal", ExportOptions(), texts=TEXTS, log=lambda m: None,
                           calibration=CalibrationRequest(max_drop=5.0, examples=examples, labels=labels,
                                                          full_metric=0.5))
    cal = record.calibration
    chosen = cal.chosen
    assert chosen.scores.accuracy >= 0.5 - 0.05
    # the cheapest admissible point: nothing admissible is faster
    assert all(c.rho <= chosen.rho for c in cal.candidates if c.scores.accuracy >= 0.45)
    manifest = Manifest.load(tmp_path / "cal")
    assert manifest.exit.default_threshold == chosen.threshold
    assert manifest.exit.calibration["max_drop_points"] == 5.0
    assert model.mpee.default_threshold == 0.1 and model.mpee.keep_ratios == [0.7]   # the model is untouched
    assert max(c.threshold for c in cal.candidates) == pytest.approx(np.log(2), abs=1e-4)
    # validation.json holds the same record, read back by its one reader
    written = ExportRecord.from_dict(json.loads((tmp_path / "cal" / "validation.json").read_text()))
    assert written == record
    with pytest.raises(MpeeExportError, match="no threshold"):
        export_bundle(model, tok, tmp_path / "none", ExportOptions(), log=lambda m: None,
                      calibration=CalibrationRequest(max_drop=0.0, examples=examples, labels=labels,
                                                     full_metric=1.01))
    assert not (tmp_path / "none").exists()


class _RecordedEngine:
    """What calibrate_threshold reads from an engine, with answers chosen by the test: every sample is
    predicted `early` at layer 1 (entropy 0.50) and `late` at layer 2 (entropy 0.33)."""

    def __init__(self, early: list[int], late: list[int]) -> None:
        from mpee_runtime.core.flops import FlopsModel
        self.labels, self.default_keep_ratios = ["0", "1"], {}
        self.flops_model = FlopsModel(hidden=32, ffn=64, num_labels=2, num_layers=2)
        self.answers = iter(zip(early, late))   # one full-depth pass: no keep ratio but the bundle's

    def run_ids(self, ids, types, **kw):
        from types import SimpleNamespace
        e, late = next(self.answers)
        p1 = [0.2, 0.8] if e == 1 else [0.8, 0.2]
        p2 = [0.1, 0.9] if late == 1 else [0.9, 0.1]
        return SimpleNamespace(layer_probs=[p1, p2], layer_entropies=[0.5004, 0.3251], tokens_per_layer=[5, 5],
                               ffn_tokens_per_layer=[5, 5])


def test_calibration_on_f1_chooses_by_f1():
    """F1 tasks (MRPC, QQP) are calibrated on F1: leaving at layer 1 predicts class 1 for everyone (accuracy
    0.5, F1 0.67), layer 2 is right (1.0 for both); 40 points below 1.0 admits layer 1 on F1 only."""
    from mpee_export.export.calibrate import calibrate_threshold
    labels = [1, 1, 0, 0]
    examples = [(np.zeros((1, 5), np.int64), np.zeros((1, 5), np.int64))] * 4
    early, late = [1, 1, 1, 1], labels
    by_acc = calibrate_threshold(_RecordedEngine(early, late), examples, labels, full_metric=1.0, max_drop=40)
    by_f1 = calibrate_threshold(_RecordedEngine(early, late), examples, labels, full_metric=1.0, max_drop=40,
                                metric="f1")
    assert by_acc.metric == "accuracy" and by_f1.metric == "f1"
    assert by_acc.chosen.mean_exit_layer == 2 and by_acc.chosen.scores.accuracy == 1.0
    assert by_f1.chosen.mean_exit_layer == 1 and by_f1.chosen.scores.f1 == pytest.approx(2 / 3)
    assert by_f1.chosen.rho > by_acc.chosen.rho
    with pytest.raises(MpeeExportError, match="metric must be"):
        calibrate_threshold(_RecordedEngine(early, late), examples, labels, full_metric=1.0, max_drop=40,
                            metric="mcc")


def test_chain_check_uses_the_bundles_default_keep_ratio(tmp_path, tiny_backbone):
    """After calibration moved the bundle's keep ratio, `validate` must compare at the bundle's setting."""
    from mpee_export.export.validate import check_chain
    model = tiny_model(layers=3, prune_layers=[0, 1], keep_ratio=0.3)
    out = tmp_path / "b"
    export_bundle(model, _tokenizer(tiny_backbone), out, ExportOptions(), texts=TEXTS, log=lambda m: None)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["pruning"]["keep_ratios"] = [1.0, 1.0]
    (out / MANIFEST).write_text(json.dumps(seal(manifest)))   # as calibration's publish would
    examples = validate_mod.validation_examples(_tokenizer(tiny_backbone), TEXTS, model)
    chain = check_chain(model, MpeeEngine(out, threads=1), examples, policy="entropy", threshold=0.0)
    assert chain.keep_ratio == 1.0 and chain.same_exit_layer == 1.0
    assert chain.max_prob_diff_same_exit < 1e-5


def test_keep_ratio_schedule_sets_the_bundle_default(tmp_path, ckpt):
    """--keep-ratio R or R:R:... (one per pruning layer) is the bundle's default; the engine takes schedules."""
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export, [str(ckpt), str(out), "--keep-ratio", "0.4"])
    assert res.exit_code == 0, res.output
    manifest = Manifest.load(out)
    assert manifest.pruning.keep_ratios == [0.4]
    engine = MpeeEngine(out, threads=1)
    text = "the movie is great and the plot is very good"
    assert engine.predict(text).tokens_per_layer == engine.predict(text, keep_ratio=[0.4]).tokens_per_layer
    assert engine.predict(text, keep_ratio=[1.0]).tokens_per_layer == engine.predict(text, keep_ratio=1.0).tokens_per_layer
    with pytest.raises(Exception, match="needs 1 ratios"):
        engine.predict(text, keep_ratio=[0.5, 0.5])
    click_error(export, [str(ckpt), str(tmp_path / "b2"), "--keep-ratio", "1:0.5"], "2 ratios for the 1 pruning layers")
    click_error(export, [str(ckpt), str(tmp_path / "b2"), "--keep-ratio", "0"], "keep ratio must be in (0, 1]")
    assert not (tmp_path / "b2").exists()


def test_prune_layers_chosen_at_export(tmp_path, ckpt):
    """--prune-layers puts the pruning step in other layers than the checkpoint's (its graphs checked against
    PyTorch as always); the checkpoint's single keep ratio carries over unless --keep-ratio gives others."""
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export, [str(ckpt), str(out), "--prune-layers", "1,0", "--keep-ratio", "1:0.4"])
    assert res.exit_code == 0, res.output
    manifest = Manifest.load(out)
    assert manifest.pruning.prune_layers == [0, 1] and manifest.pruning.keep_ratios == [1.0, 0.4]
    text = "the movie is great and the plot is very good , the actors too"
    engine = MpeeEngine(out, threads=1)
    tokens = engine.predict(text, threshold=0.0).tokens_per_layer
    assert tokens[0] == tokens[1]                               # layer 0 keeps all at ratio 1
    alone = MpeeEngine(out, threads=1).predict(text, threshold=0.0, keep_ratio=[0.4, 1.0]).tokens_per_layer
    assert alone[1] < alone[0]                                  # layer 0 prunes when asked: the step is there
    res = CliRunner().invoke(export, [str(ckpt), str(tmp_path / "b1"), "--prune-layers", "1"])
    assert res.exit_code == 0, res.output
    assert Manifest.load(tmp_path / "b1").pruning.keep_ratios == [0.7]   # the checkpoint's own ratio
    for bad, message in [("2", "outside 0..1"), ("0,0", "named twice"), ("a", "expected 0-based layer numbers")]:
        click_error(export, [str(ckpt), str(tmp_path / "b2"), "--prune-layers", bad], message)
    assert not (tmp_path / "b2").exists()


def test_length_points_are_the_cheapest_within_the_drop(tmp_path, tiny_backbone):
    """--length-buckets: one point per bucket, chosen together; no other combination of the candidate points
    (checked by brute force) runs fewer FLOPs with accuracy over all the examples within the drop; the manifest
    carries them and the engine runs each text at its bucket's point."""
    from dataclasses import replace
    from itertools import product

    from mpee_export.export.calibrate import _outcomes, calibrate_length_points, calibrate_threshold
    model = tiny_model(layers=3, prune_layers=[1])
    tok = _tokenizer(tiny_backbone)
    words = ["the", "movie", "is", "great", "a", "boring", "film", "it", "was", "bad", "very", "good", "acting", "and",
             "plot"]
    rng = np.random.default_rng(0)
    texts = [(" ".join(rng.choice(words, size=int(k))), None) for k in rng.integers(2, 20, size=40)]
    examples = validate_mod.validation_examples(tok, texts, model)
    export_bundle(model, tok, tmp_path / "plain", ExportOptions(), texts=TEXTS, log=lambda m: None)
    plain = MpeeEngine(tmp_path / "plain", threads=1)
    full = [plain.run_ids(ids, types, threshold=0.0, keep_ratio=1.0).label_index for ids, types in examples]
    labels = [1 - y if i % 4 == 0 else y for i, y in enumerate(full)]   # the full model: 75% right
    record = export_bundle(model, tok, tmp_path / "len", ExportOptions(), texts=TEXTS, log=lambda m: None,
                           calibration=CalibrationRequest(max_drop=10.0, examples=examples, labels=labels,
                                                          full_metric=0.75, length_buckets=[8, 14]))
    cal = record.calibration
    rows = cal.length_rows
    assert [r.max_tokens for r in rows] == [8, 14, None] and sum(r.examples for r in rows) == len(texts)
    assert cal.length_scores.accuracy >= 0.65 - 1e-9 and cal.length_rho >= cal.chosen.rho - 1e-9
    # brute force over the same candidates
    engine = MpeeEngine(tmp_path / "len", threads=1)
    base = calibrate_threshold(engine, examples, labels, full_metric=0.75, max_drop=10.0)
    again = calibrate_length_points(engine, examples, labels, [8, 14], base=base)
    assert again.length_rows == rows
    lens = np.array([int(ids.shape[1]) for ids, _ in examples])
    bucket = np.searchsorted([8, 14], lens, side="left")
    ratios = [None, 0.5, 1.0]
    options = [(r, thr, preds, flops) for r in ratios
               for thr, _, preds, flops in _outcomes(engine, examples, r, np.linspace(0, np.log(2), 70).round(4),
                                                     "entropy")]
    gold = np.asarray(labels)
    best = np.inf
    per_bucket = [[(int((o[2][bucket == b] == gold[bucket == b]).sum()), float(o[3][bucket == b].sum()))
                   for o in options] for b in range(3)]
    for combo in product(*[sorted(set(pb)) for pb in per_bucket]):
        if sum(c for c, _ in combo) >= np.ceil(0.65 * len(texts) - 1e-9):
            best = min(best, sum(f for _, f in combo))
    full = sum(engine.flops_model.full_flops(int(n)) for n in lens)
    assert cal.length_rho == pytest.approx(full / best)
    manifest = Manifest.load(tmp_path / "len")
    assert manifest.schema_version == 9 and [p.max_tokens for p in manifest.exit.length_points] == [8, 14, None]
    assert all(p.keep_ratio is not None for p in manifest.exit.length_points)   # the bundle's own, as a number
    assert manifest.exit.calibration["length_rows"][0]["max_tokens"] == 8
    with pytest.raises(MpeeExportError, match="accuracy task"):
        calibrate_length_points(engine, examples, labels, [8], base=replace(base, metric="f1"))
    with pytest.raises(MpeeExportError, match="increasing token counts"):
        calibrate_length_points(engine, examples, labels, [14, 8], base=base)


@pytest.mark.parametrize("args, message", [
    (["--length-buckets", "64"], "--length-buckets needs --calibrate"),
    (["--calibrate", "--max-drop", "1", "--dev", "DEV", "--length-buckets", "64,32"], "increasing token counts"),
    (["--calibrate", "--max-drop", "1", "--dev", "DEV", "--length-buckets", "a"], "token counts separated"),
])
def test_length_buckets_flag_refusals(ckpt, tmp_path, args, message):
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\na good film\t1\n")
    click_error(export, [str(ckpt), str(tmp_path / "out"), *[str(dev) if a == "DEV" else a for a in args]], message)
    assert not (tmp_path / "out").exists()
