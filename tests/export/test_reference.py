"""`mpee-export reference`: the full models users deploy (optimum export, fused, fused int8), the benchmark's
baselines, and their record. The folder is exported once per module; each test checks one property."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.baselines.reference import op_counts, to_hf_classifier
from mpee_export.cli.export import export
from mpee_export.export.recipe import quantization_recipe
from mpee_export.model.checkpoint import save_checkpoint
from mpee_runtime.bundle.integrity import sha256_of
from mpee_runtime.bundle.reference import FULL_MODELS, FUSED, FUSED_INT8, PLAIN, REFERENCE_HF, ReferenceRecord

pytest.importorskip("optimum.exporters.onnx")
pytestmark = pytest.mark.integration


def _logits(path, ids_list):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    out = []
    for ids in ids_list:
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        out.append(sess.run(None, {k: v for k, v in feeds.items() if k in names})[0][0])
    return np.array(out)


def _random_ids(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(5, 60, size=(1, int(rng.integers(3, 24))))
        ids[0, 0], ids[0, -1] = 2, 3
        out.append(ids.astype(np.int64))
    return out


def _export_reference(folder, backbone, *, own_process=False, **model_kw):
    """(model, reference folder, the command's stdout and stderr). `own_process`: run `mpee-export reference` as
    a user does (`python -m mpee_export.cli export reference`), so that everything it prints is seen (in-process,
    pytest and the loggers' earlier handlers would take some of it)."""
    model = tiny_model(layers=3, prune_layers=[1], task="sst2", **model_kw)
    ckpt, ref = folder / "ckpt", folder / "ref"
    save_checkpoint(model, AutoTokenizer.from_pretrained(str(backbone)), ckpt)
    if own_process:
        res = subprocess.run([sys.executable, "-m", "mpee_export.cli", "export", "reference", str(ckpt), str(ref)],
                             check=False, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        return model, ref, res.stdout + res.stderr
    res = CliRunner().invoke(export, ["reference", str(ckpt), str(ref)])
    assert res.exit_code == 0, res.output
    return model, ref, res.output


@pytest.fixture(scope="module")
def cls_ref(tmp_path_factory, shared_backbone):
    """(model, reference folder, everything the command printed) of a [CLS]-pooled model."""
    return _export_reference(tmp_path_factory.mktemp("cls"), shared_backbone, own_process=True)


@pytest.fixture(scope="module")
def mean_ref(tmp_path_factory, shared_backbone):
    return _export_reference(tmp_path_factory.mktemp("mean"), shared_backbone, exit_pooling="mean")


def test_command_reports_fusion_and_recipe(cls_ref):
    _, ref, output = cls_ref
    assert "3 Attention" in output and f"recipe {quantization_recipe()[0]}" in output
    assert sorted(p.name for p in ref.iterdir()) == sorted([*(m.file for m in FULL_MODELS), REFERENCE_HF,
                                                            "reference.json"])


def test_command_prints_no_third_party_noise(cls_ref):
    """The messages of transformers, optimum and the tracer that a user cannot act on stay out of the output."""
    _, _, output = cls_ref
    for needle in ("`torch_dtype` is deprecated", "lower than the recommended minimum opset", "TracerWarning",
                   "inverted_mask", "registered as constants in the trace"):
        assert needle not in output, output


def test_plain_export_is_exit_L_of_the_unpruned_model(cls_ref):
    model, ref, _ = cls_ref
    ids = torch.tensor([[2, 30, 31, 40, 33, 3]])
    (logits,) = _logits(ref / PLAIN, [ids.numpy()])
    with torch.no_grad():
        hf = to_hf_classifier(model)(ids).logits.numpy()[0]
        last_exit = model.exits[-1](model.bert(ids).last_hidden_state).numpy()[0]
    np.testing.assert_allclose(logits, hf, atol=1e-5)
    np.testing.assert_allclose(hf, last_exit, atol=1e-5)


def test_fused_graph_is_fused(cls_ref):
    _, ref, _ = cls_ref
    plain_ops, fused_ops = op_counts(ref / PLAIN), op_counts(ref / FUSED)
    assert plain_ops["Attention"] == 0 and fused_ops["Attention"] == 3 and fused_ops["SkipLayerNormalization"] == 6
    assert fused_ops["BiasGelu"] + fused_ops["FastGelu"] + fused_ops["Gelu"] == 3
    assert sum(fused_ops.values()) < sum(plain_ops.values()) / 3


def test_fused_graph_computes_the_plain_logits(cls_ref):
    _, ref, _ = cls_ref
    inputs = _random_ids(20)
    np.testing.assert_allclose(_logits(ref / FUSED, inputs), _logits(ref / PLAIN, inputs), atol=1e-5)


def test_int8_graph_is_quantized_and_close(cls_ref):
    """Quantized attention and matmuls; logits within 15% of the logit scale, argmax agrees on >= 90%."""
    _, ref, _ = cls_ref
    int8_ops = op_counts(ref / FUSED_INT8)
    assert int8_ops["QAttention"] == 3 and int8_ops["MatMulInteger"] > 0
    inputs = _random_ids(20)
    plain, q = _logits(ref / PLAIN, inputs), _logits(ref / FUSED_INT8, inputs)
    assert np.abs(q - plain).max() <= 0.15 * np.abs(plain).max()
    assert (q.argmax(1) == plain.argmax(1)).mean() >= 0.9


def test_record_names_recipe_and_quantizer(cls_ref):
    _, ref, _ = cls_ref
    q = ReferenceRecord.load(ref).quantization
    assert q["recipe"] == quantization_recipe()[0]
    assert q["call"].startswith(f"AutoQuantizationConfig.{quantization_recipe()[0]}(")
    assert q["quantizer"] == "optimum.onnxruntime.ORTQuantizer"   # no fallback needed
    assert q["settings"]["is_static"] is False


def test_record_counts_fused_nodes(cls_ref):
    _, ref, _ = cls_ref
    fusion = ReferenceRecord.load(ref).fusion
    assert fusion["fused_nodes"]["attention"] == 3 and fusion["fully_fused"]
    assert fusion["plain_nodes"] == sum(op_counts(ref / PLAIN).values())


def test_record_hashes_every_graph(cls_ref):
    _, ref, _ = cls_ref
    record = ReferenceRecord.load(ref)
    assert set(record.files) == {m.file for m in FULL_MODELS}
    for name, f in record.files.items():
        assert f["sha256"] == sha256_of(ref / name)
    assert record.environment["versions"]["onnxruntime"] == ort.__version__
    assert record.exit_pooling == "cls" and record.opset >= 17


def test_mean_pooled_reference(mean_ref):
    """A mean-pooled model's reference: optimum's encoder export with exit L's head on the token mean appended;
    every reference graph gives exit L on the unpruned model."""
    model, ref, _ = mean_ref
    assert ReferenceRecord.load(ref).exit_pooling == "mean"
    ids_list = _random_ids(6)
    with torch.no_grad():
        want = np.array([model.exits[-1](model.bert(torch.from_numpy(ids)).last_hidden_state)[0].numpy()
                         for ids in ids_list])
    np.testing.assert_allclose(_logits(ref / PLAIN, ids_list), want, atol=1e-5)
    np.testing.assert_allclose(_logits(ref / FUSED, ids_list), want, atol=1e-4)
    assert op_counts(ref / FUSED)["Attention"] == 3     # the appended head leaves fusion intact
