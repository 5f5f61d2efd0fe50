"""Every encoder family end to end, on a tiny random model of each (tests/families.py): mpee-train (a few steps)
-> mpee-eval -> mpee-export (fp32, int8, batch graphs) -> mpee-run and predict_batch, every answer against
PyTorch; and a user's fine-tuned classifier -> mpee-train --from-classifier --freeze-backbone -> mpee-export and
mpee-export reference: at full depth the bundle answers as the user's own model."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from families import ALL_FAMILIES, SENTENCES, tiny_family_folder
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from mpee_export.cli.eval import evaluate
from mpee_export.cli.export import export
from mpee_export.cli.train import train
from mpee_export.model.checkpoint import load_checkpoint
from mpee_export.model.families import FAMILIES as REGISTRY
from mpee_export.model.modeling import memories_to_probs
from mpee_runtime.bundle.contract import INPUT_IDS, POSITIONS, POSITIONS_OUT, TOKEN_TYPE_IDS
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.bundle.reference import FUSED, REFERENCE_HF, ReferenceRecord
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import ExitPolicy

pytest.importorskip("optimum.exporters.onnx")
pytestmark = pytest.mark.integration

POSITIVE = ("good", "great", "fun")
FUSED_ATTENTION = {"Attention", "MultiHeadAttention", "QAttention"}
QUANTIZED = {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}


@dataclass
class Pipeline:
    family: str
    root: Path
    dev: Path
    ckpt: Path
    bundle: Path
    int8: Path
    classifier: Path
    frozen: Path
    frozen_bundle: Path
    reference: Path


def _ok(command, args: list[str]) -> str:
    res = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def pipeline(request, tmp_path_factory) -> Pipeline:
    family = request.param
    root = tmp_path_factory.mktemp(family)
    rows = [(s.replace(",", ""), "pos" if any(w in s.split() for w in POSITIVE) else "neg") for s in SENTENCES]
    train_csv, dev_csv = _write(root / "train.csv", rows * 3), _write(root / "dev.csv", rows)
    data = ["--train", train_csv, "--dev", dev_csv, "--text-column", "text", "--label-column", "label",
            "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu"]
    p = Pipeline(family, root, dev_csv, root / "ckpt", root / "bundle", root / "bundle-int8",
                 tiny_family_folder(family, root / "classifier", labels=["neg", "pos"], seed=1), root / "frozen",
                 root / "frozen-bundle", root / "reference")
    backbone = tiny_family_folder(family, root / "backbone")
    _ok(train, data + ["--backbone", backbone, "--out", p.ckpt, "--prune-layers", "0,1", "--keep-ratio", "0.5"])
    _ok(export, [p.ckpt, p.bundle, "--dev", dev_csv])
    _ok(export, [p.ckpt, p.int8, "--dev", dev_csv, "--quantize", "int8", "--calibrate", "--max-drop", "50"])
    _ok(train, data + ["--from-classifier", p.classifier, "--freeze-backbone", "--out", p.frozen])
    _ok(export, [p.frozen, p.frozen_bundle, "--dev", dev_csv])
    _ok(export, ["reference", p.frozen, p.reference])
    return p


def _texts(p: Pipeline) -> list[str]:
    return [line.split(",")[0] for line in p.dev.read_text().splitlines()[1:]]


def test_eval_reads_the_checkpoints(pipeline):
    for ckpt in (pipeline.ckpt, pipeline.frozen):
        assert "accuracy" in _ok(evaluate, [ckpt, "--dev", pipeline.dev])


def test_the_manifest_says_what_the_device_feeds(pipeline):
    family = REGISTRY[pipeline.family]
    tok = AutoTokenizer.from_pretrained(str(pipeline.ckpt))
    manifest = Manifest.load(pipeline.bundle)
    assert manifest.validation.passed and manifest.model.family == pipeline.family
    assert manifest.graphs[0].inputs == list(family.embedding_inputs)
    assert (TOKEN_TYPE_IDS in manifest.graphs[0].inputs) == (pipeline.family in ("bert", "electra"))
    special = manifest.model.special_tokens
    assert (special.cls, special.sep, special.pad) == (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    # MPNet's layers carry the tokens' positions: in after layer 0, out of every layer, batch graphs too
    relative = pipeline.family == "mpnet"
    assert manifest.model.relative_positions == relative
    for entry in manifest.layers + manifest.batch_graphs:
        assert (POSITIONS in entry.inputs) == (relative and entry.layer > 0), entry
        assert (entry.outputs[-1] == POSITIONS_OUT) == relative, entry


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_attention_is_fused_in_every_layer_graph_fp32_and_int8(pipeline):
    for bundle, int8 in ((pipeline.bundle, False), (pipeline.int8, True)):
        manifest = Manifest.load(bundle)
        assert manifest.precision == ("int8" if int8 else "fp32")
        for entry in manifest.layers + manifest.batch_graphs:
            ops = _ops(bundle / entry.file)
            assert ops.keys() & FUSED_ATTENTION, (entry.file, ops)
            if entry.layer > max(manifest.pruning.prune_layers):   # no token score: no Softmax but the attention's
                assert "Softmax" not in ops, (entry.file, ops)
            if int8:
                assert ops.keys() & QUANTIZED, (entry.file, ops)


def _spread_threshold(model, tok, texts: list[str]) -> float:
    """A threshold between the examples' first-layer entropies, so that exits spread over layers."""
    first = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            out = model(enc["input_ids"], None, enc.get("token_type_ids"))
        first.append(memories_to_probs(out.memories)[1][0, 0])
    return float(np.median(first))


@pytest.mark.parametrize("keep_ratio", [0.5, 1.0])
def test_the_chain_answers_as_pytorch_on_every_example(pipeline, keep_ratio):
    """Batch 1 and batches, fp32, texts and pairs: exit layer, label and tokens per layer equal PyTorch's,
    probabilities within 1e-5, at a threshold where exits spread over several layers; batch rows equal batch 1
    (runtime and PyTorch)."""
    model, tok = load_checkpoint(pipeline.ckpt)
    texts = _texts(pipeline)
    threshold = _spread_threshold(model, tok, texts)
    engine = MpeeEngine(pipeline.bundle, threads=1)
    exits = []
    pairs = [None] * len(texts) + texts[1:] + texts[:1]
    texts = texts * 2
    for text, pair in zip(texts, pairs):
        enc = tok(text, pair, return_tensors="pt")
        want = model.predict(enc["input_ids"], enc.get("token_type_ids"), keep_ratio=keep_ratio,
                             policy=ExitPolicy("entropy", threshold, 2))
        got = engine.predict(text, pair, threshold=threshold, keep_ratio=keep_ratio, policy="entropy")
        assert (got.exit_layer, got.label_index) == (want.exit_layer, want.label), text
        assert got.tokens_per_layer == want.attn_lens and got.ffn_tokens_per_layer == want.ffn_lens, text
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
        exits.append(got.exit_layer)
    assert len(set(exits)) >= 2, exits
    batch = engine.predict_batch(texts, pairs, threshold=threshold, keep_ratio=keep_ratio, policy="entropy")
    ones = [engine.predict(t, p, threshold=threshold, keep_ratio=keep_ratio, policy="entropy")
            for t, p in zip(texts, pairs)]
    assert [(b.exit_layer, b.label, b.tokens_per_layer) for b in batch] == [
        (o.exit_layer, o.label, o.tokens_per_layer) for o in ones]
    texts, ones = texts[:len(texts) // 2], ones[:len(texts) // 2]   # transformers pads texts or pairs, not a mix
    padded = tok(texts, padding=True, return_tensors="pt")
    torch_batch = model.predict_batch(padded["input_ids"], padded["attention_mask"], padded.get("token_type_ids"),
                                      keep_ratio=keep_ratio, policy=ExitPolicy("entropy", threshold, 2))
    assert [(b.exit_layer, b.label, b.attn_lens) for b in torch_batch] == [
        (o.exit_layer, o.label_index, o.tokens_per_layer) for o in ones]


def _branch_ops(graph: onnx.GraphProto, inside: bool = False) -> Counter:
    """Op types of the nodes inside the single graph's If branches (where layers 2..L run)."""
    ops = Counter()
    for node in graph.node:
        if inside:
            ops[node.op_type] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops += _branch_ops(attr.g, True)
    return ops


@pytest.mark.parametrize("keep_ratio", [0.5, 1.0])
def test_the_single_graph_answers_as_the_chain_fp32_and_int8(pipeline, keep_ratio):
    """mpee.onnx in one call against the chain of the same bundle, texts and pairs, every policy at rules whose
    exits spread over the layers: the same exit layer, label and tokens per layer, probabilities within 1e-5;
    its attention fused (and quantized in int8) inside the If branches; the export's own check passed."""
    model, tok = load_checkpoint(pipeline.ckpt)
    texts = _texts(pipeline)
    spread = _spread_threshold(model, tok, texts)
    rules = [("entropy", spread), ("entropy", 0.0), ("normalized_entropy", spread / np.log(2)),
             ("max_prob", 0.55), ("patience", 0), ("patience", 1), ("depth", 1), ("depth", 2)]
    pairs = [None] * len(texts) + texts[1:] + texts[:1]
    for bundle, int8 in ((pipeline.bundle, False), (pipeline.int8, True)):
        record = json.loads((bundle / "validation.json").read_text())["single_graph"]
        assert record["passed"] and len(record["exit_layers"]) >= 2, record
        chain, graph = MpeeEngine(bundle, threads=1), MpeeEngine(bundle, threads=1, engine="graph")
        exits = set()
        for policy, threshold in rules:
            for text, pair in zip(texts * 2, pairs):
                want = chain.predict(text, pair, policy=policy, threshold=threshold, keep_ratio=keep_ratio)
                got = graph.predict(text, pair, policy=policy, threshold=threshold, keep_ratio=keep_ratio)
                assert (got.exit_layer, got.label, got.tokens_per_layer, got.ffn_tokens_per_layer) == (
                    want.exit_layer, want.label, want.tokens_per_layer, want.ffn_tokens_per_layer), (policy, text)
                np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
                exits.add(got.exit_layer)
        assert len(exits) >= 2, exits
        manifest = Manifest.load(bundle)
        ops = _branch_ops(onnx.load(str(bundle / manifest.single_graph.file)).graph)
        assert sum(ops[op] for op in FUSED_ATTENTION) == manifest.model.num_layers - 1, ops
        assert not int8 or ops.keys() & QUANTIZED, ops


def test_mpee_run_classifies_a_file(pipeline, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    assert run_cli([str(pipeline.int8), "--input", str(pipeline.dev), "--output", str(out), "--batch-size", "4"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(SENTENCES) and {x["label"] for x in lines} <= {"neg", "pos"}


def test_a_frozen_backbone_keeps_the_users_classifier_bit_for_bit(pipeline):
    prefix = REGISTRY[pipeline.family].prefix
    user = load_file(str(pipeline.classifier / "model.safetensors"))
    ours = load_file(str(pipeline.frozen / "model.safetensors"))
    encoder = [k for k in user if k.startswith(prefix + ".") and ".pooler." not in k]
    assert encoder and all(torch.equal(user[k], ours[k]) for k in encoder)
    head = REGISTRY[pipeline.family].classifier_head(
        AutoModelForSequenceClassification.from_pretrained(str(pipeline.classifier)))
    model, _ = load_checkpoint(pipeline.frozen)
    assert torch.equal(model.exits[-1].pooler.weight, head.dense.weight)
    assert torch.equal(model.exits[-1].classifier.weight, head.classifier.weight)


def test_at_full_depth_the_bundle_answers_as_the_users_model(pipeline):
    """Threshold 0, keep ratio 1: the same label on every example as the user's classifier exported by
    `mpee-export reference` (its fused graph) and as the classifier in PyTorch; probabilities within 1e-5."""
    engine = MpeeEngine(pipeline.frozen_bundle, threads=1)
    tok = AutoTokenizer.from_pretrained(str(pipeline.classifier))
    user = AutoModelForSequenceClassification.from_pretrained(str(pipeline.classifier)).eval()
    reference = AutoModelForSequenceClassification.from_pretrained(str(pipeline.reference / REFERENCE_HF))
    assert all(torch.equal(a, b) for a, b in zip(user.state_dict().values(), reference.state_dict().values()))
    session = ort.InferenceSession(str(pipeline.reference / FUSED), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for text in _texts(pipeline):
        got = engine.predict(text, threshold=0.0, keep_ratio=1.0, policy="entropy")
        enc = tok(text, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        logits = session.run(None, feeds)[0][0]
        fused = np.exp(logits - logits.max())
        fused /= fused.sum()
        with torch.no_grad():
            mine = user(**tok(text, return_tensors="pt")).logits.softmax(-1)[0].numpy()
        assert got.exit_layer == 3 and got.label_index == int(fused.argmax()) == int(mine.argmax())
        np.testing.assert_allclose(got.probs, fused, atol=1e-5)
        np.testing.assert_allclose(got.probs, mine, atol=1e-5)
    assert INPUT_IDS in names
    record = ReferenceRecord.load(pipeline.reference)
    assert record.fusion["fused_nodes"]["attention"] == 3 and record.fusion["fully_fused"], record.fusion
