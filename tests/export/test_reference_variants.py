"""`mpee-export reference`: the int8 recipe chosen from the CPU flags, the quantize_dynamic fallback, and
all-or-nothing writing."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.baselines import reference
from mpee_export.cli.export import export
from mpee_export.errors import MpeeExportError
from mpee_export.export import recipe
from mpee_export.model.checkpoint import save_checkpoint
from mpee_runtime.bundle.reference import ReferenceRecord

pytest.importorskip("optimum.onnxruntime")


@pytest.mark.parametrize(("cpu", "machine", "want"), [
    ({"cpu_flags": ["avx2", "avx512_vnni", "avx512f"], "avx512_vnni": True}, "x86_64", "avx512_vnni"),
    ({"cpu_flags": ["avx2", "avx_vnni"], "avx512_vnni": True}, "x86_64", "avx512_vnni"),   # AVX-VNNI: u8 x s8 too
    ({"cpu_flags": ["avx2", "avx512f"], "avx512_vnni": False}, "x86_64", "avx512"),
    ({"cpu_flags": ["avx2", "fma"], "avx512_vnni": False}, "x86_64", "avx2"),
    ({"cpu_flags": [], "avx512_vnni": False}, "x86_64", "avx2"),
    ({"cpu_flags": ["asimd", "asimddp"], "avx512_vnni": False}, "aarch64", "arm64"),
])
def test_recipe_from_cpu_flags(cpu, machine, want):
    name, why = recipe.quantization_recipe(cpu, machine)
    assert name == want and why
    q = recipe.quantization_config(name, per_channel=False)
    assert not q.is_static and q.activations_dtype.name == "QUInt8"
    # optimum: u8/s8 everywhere but avx2 (u8/u8, against VPMADDUBSW saturation)
    assert q.weights_dtype.name == ("QUInt8" if name == "avx2" else "QInt8")


def test_unknown_recipe_is_refused():
    with pytest.raises(MpeeExportError, match="unknown quantization recipe"):
        recipe.quantization_config("avx9000", per_channel=False)


def test_only_the_known_harmless_messages_are_silenced(caplog):
    """The reference export's filters drop exactly the listed messages: another message of the same loggers or
    of the same warning category still shows, and nothing is filtered once the export is over."""
    import logging
    import warnings

    import torch
    convert, config = logging.getLogger("optimum.exporters.onnx.convert"), logging.getLogger(
        "transformers.configuration_utils")
    harmless = [(convert, ("Opset 17 is lower than the recommended minimum opset (18) to export bert. The ONNX "
                           "export may fail or the exported model may be suboptimal.")),
                (config, "`torch_dtype` is deprecated! Use `dtype` instead!")]
    tracer = "torch.tensor results are registered as constants in the trace. You can safely ignore this warning"
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with reference.known_harmless_messages_silenced():
            for logger, message in harmless:
                logger.warning(message)
            convert.warning("Opset 17 is not supported by this model")
            warnings.warn(tracer, torch.jit.TracerWarning, stacklevel=1)
            warnings.warn("Converting a tensor to a Python boolean might cause the trace to be incorrect",
                          torch.jit.TracerWarning, stacklevel=1)
        shown = [r.getMessage() for r in caplog.records]
        assert shown == ["Opset 17 is not supported by this model"]
        assert [str(w.message) for w in seen] == [
            "Converting a tensor to a Python boolean might cause the trace to be incorrect"]
        for logger, message in harmless:   # after the block: shown again
            logger.warning(message)
        warnings.warn(tracer, torch.jit.TracerWarning, stacklevel=1)
    assert [r.getMessage() for r in caplog.records][1:] == [m for _, m in harmless]
    assert str(seen[-1].message) == tracer


def _ckpt(tmp_path, tiny_backbone):
    model = tiny_model(layers=2, task="sst2")
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    save_checkpoint(model, tok, tmp_path / "ckpt")
    return model, tok


def _logits(path, ids):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]


@pytest.mark.integration
def test_fallback_to_quantize_dynamic(tmp_path, tiny_backbone, monkeypatch):
    model, tok = _ckpt(tmp_path, tiny_backbone)

    def refuse(*args, **kwargs):
        raise RuntimeError("Unable to find data type for weight_name='x' (simulated)")
    monkeypatch.setattr(reference, "_optimum_quantize", refuse)
    out = tmp_path / "ref"
    record = reference.export_reference(model, tok, out, recipe="avx2", per_channel=True)
    q = record.quantization
    assert q["quantizer"] == "onnxruntime.quantization.quantize_dynamic" and "simulated" in q["fallback_reason"]
    assert q["extra_options"]["DefaultTensorType"] == "FLOAT" and q["recipe_reason"] == "given"
    assert q["settings"]["weights_dtype"] == "QUInt8" and q["settings"]["per_channel"] is True   # avx2's settings
    assert ReferenceRecord.load(out) == record       # reference.json, read back by its one reader
    assert q["quantized_nodes"]["QAttention"] == 2
    ids = np.array([[2, 30, 31, 40, 33, 12, 3]], dtype=np.int64)
    plain, int8 = _logits(out / "model.onnx", ids), _logits(out / "model_fused_int8.onnx", ids)
    assert np.abs(int8 - plain).max() <= 0.15 * np.abs(plain).max()


@pytest.mark.integration
def test_nothing_written_when_a_stage_fails(tmp_path, tiny_backbone, monkeypatch):
    _ckpt(tmp_path, tiny_backbone)

    def broken(*args, **kwargs):
        raise RuntimeError("optimizer crashed")
    monkeypatch.setattr(reference, "fuse", broken)
    res = CliRunner().invoke(export, ["reference", str(tmp_path / "ckpt"), str(tmp_path / "ref")])
    assert res.exit_code != 0
    assert not (tmp_path / "ref").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ref")]   # no temporary folder left


def test_non_empty_out_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "mine.txt").write_text("keep")

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before OUT was checked")
    monkeypatch.setattr("mpee_export.model.checkpoint.load_checkpoint", no_load)
    res = CliRunner().invoke(export, ["reference", str(tmp_path / "nothing"), str(tmp_path / "ref")])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (tmp_path / "ref" / "mine.txt").read_text() == "keep"
