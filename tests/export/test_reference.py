"""The full models users deploy (optimum export, fused, fused int8: the benchmark's baselines) and mpee-bench
with every variant: baselines, speed-ups recomputed from the rows, the A/A pair, PyTorch in a pass of its own."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.checkpoint import save_checkpoint
from mpee_export.cli import export
from mpee_export.reference import op_counts, quantization_recipe, to_hf_classifier
from mpee_runtime import bench
from mpee_runtime.bench import main as bench_main
from mpee_runtime.schema import sha256_of


def _tokenizer(backbone):
    return AutoTokenizer.from_pretrained(str(backbone))

pytest.importorskip("optimum.exporters.onnx")


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


def test_reference_and_full_bench(tmp_path, tiny_backbone, monkeypatch):
    model = tiny_model(layers=3, prune_layers=[1], task="sst2")
    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, AutoTokenizer.from_pretrained(str(tiny_backbone)), ckpt)
    runner = CliRunner()
    ref = tmp_path / "ref"
    res = runner.invoke(export, ["reference", str(ckpt), str(ref)])
    assert res.exit_code == 0, res.output
    assert "3 Attention" in res.output and "recipe" in res.output
    ids = torch.tensor([[2, 30, 31, 40, 33, 3]])
    (logits,) = _logits(ref / "model.onnx", [ids.numpy()])
    with torch.no_grad():
        hf = to_hf_classifier(model)(ids).logits.numpy()[0]
        last_exit = model.exits[-1](model.bert(ids).last_hidden_state).numpy()[0]
    np.testing.assert_allclose(logits, hf, atol=1e-5)
    np.testing.assert_allclose(hf, last_exit, atol=1e-5)   # the reference is exit L on the unpruned model

    # The fused graph really is fused (one Attention per layer, far fewer nodes) and computes the same logits.
    plain_ops, fused_ops = op_counts(ref / "model.onnx"), op_counts(ref / "model_fused.onnx")
    assert plain_ops["Attention"] == 0 and fused_ops["Attention"] == 3 and fused_ops["SkipLayerNormalization"] == 6
    assert fused_ops["BiasGelu"] + fused_ops["FastGelu"] + fused_ops["Gelu"] == 3
    assert sum(fused_ops.values()) < sum(plain_ops.values()) / 3
    inputs = _random_ids(20)
    plain, fused = _logits(ref / "model.onnx", inputs), _logits(ref / "model_fused.onnx", inputs)
    np.testing.assert_allclose(fused, plain, atol=1e-5)     # fp32 fusion: same numbers up to rounding
    # int8: quantized attention and matmuls; logits within 15% of the logit scale, argmax agrees on >= 90%
    int8_ops = op_counts(ref / "model_fused_int8.onnx")
    assert int8_ops["QAttention"] == 3 and int8_ops["MatMulInteger"] > 0
    q = _logits(ref / "model_fused_int8.onnx", inputs)
    assert np.abs(q - plain).max() <= 0.15 * np.abs(plain).max()
    assert (q.argmax(1) == plain.argmax(1)).mean() >= 0.9

    record = json.loads((ref / "reference.json").read_text())
    assert record["quantization"]["recipe"] == quantization_recipe()[0]
    assert record["quantization"]["call"].startswith(f"AutoQuantizationConfig.{quantization_recipe()[0]}(")
    assert record["quantization"]["quantizer"] == "optimum.onnxruntime.ORTQuantizer"   # no fallback needed
    assert record["quantization"]["settings"]["is_static"] is False
    assert record["fusion"]["fused_nodes"]["attention"] == 3 and record["fusion"]["fully_fused"]
    assert record["fusion"]["plain_nodes"] == sum(plain_ops.values())
    for name, f in record["files"].items():
        assert f["sha256"] == sha256_of(ref / name)
    assert record["environment"]["versions"]["onnxruntime"] == ort.__version__

    for args in (["run", str(ckpt), str(tmp_path / "b")], ["run", str(ckpt), str(tmp_path / "b8"), "--quantize", "int8"]):
        assert runner.invoke(export, args).exit_code == 0
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t} \t{y}\n" for t, y in [("the movie is great", 1),
                                                                              ("a boring film", 0), ("fun", 1)]))

    # Spy on the order of events: every run call, the two passes, and when the PyTorch model is built.
    events = []
    real_measure, real_alone, real_pt = bench.measure, bench.measure_alone, bench.pytorch_variant

    def logged(variants):
        for v in variants:
            def run(ids, types, _run=v.run, _name=v.name):
                events.append(("run", _name))
                return _run(ids, types)
            v.run = run

    def spy_measure(variants, *a, **kw):
        logged(variants)
        events.append(("interleaved", [v.name for v in variants]))
        return real_measure(variants, *a, **kw)

    def spy_alone(variant, *a, **kw):
        logged([variant])
        events.append(("alone", [variant.name]))
        return real_alone(variant, *a, **kw)

    def spy_pt(*a, **kw):
        events.append(("build", "pytorch"))
        return real_pt(*a, **kw)
    monkeypatch.setattr(bench, "measure", spy_measure)
    monkeypatch.setattr(bench, "measure_alone", spy_alone)
    monkeypatch.setattr(bench, "pytorch_variant", spy_pt)

    out = tmp_path / "bench"
    code = bench_main([str(tmp_path / "b"), "--input", str(data), "--reference", str(ref),
                       "--int8", str(tmp_path / "b8"), "--out", str(out), "--threads", "1", "--warmup", "1",
                       "--no-sweep"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    rows = {v["variant"]: v for v in result["variants"]}
    assert list(rows) == ["pytorch", "onnx_full", "onnx_fused", "onnx_fused_int8", "chain", "chain_aa", "exits",
                          "pruning", "mpee", "chain_int8", "mpee_int8"]

    # PyTorch: built after the interleaved pass, measured alone after it, never in the rotation.
    kinds = [e[0] for e in events]
    interleaved = next(e[1] for e in events if e[0] == "interleaved")
    assert "pytorch" not in interleaved and {"onnx_full", "onnx_fused", "onnx_fused_int8", "chain_aa"} <= set(interleaved)
    assert kinds.index("interleaved") < kinds.index("build") < kinds.index("alone")
    runs = [e[1] for e in events if e[0] == "run"]
    first_pt = runs.index("pytorch")
    assert set(runs[first_pt:]) == {"pytorch"} and "pytorch" not in runs[:first_pt]
    assert [p["variants"] for p in result["measurement"]["passes"]] == [interleaved, ["pytorch"]]

    # Baselines: fp32 = the faster of the two fp32 full models, int8 = the fused int8 model.
    full, fused = rows["onnx_full"], rows["onnx_fused"]
    best_fp32 = min((full, fused), key=lambda r: r["latency"]["mean_us"])["variant"]
    b = result["baselines"]
    assert (b["fp32"], b["int8"], b["plain_fp32"]) == (best_fp32, "onnx_fused_int8", "onnx_full")
    for row in result["variants"]:
        base = rows[best_fp32] if row["precision"] == "fp32" else rows["onnx_fused_int8"]
        assert row["speedup_baseline"] == base["variant"]
        assert row["speedup_mean"] == pytest.approx(base["latency"]["mean_us"] / row["latency"]["mean_us"])
        assert row["speedup_p50"] == pytest.approx(base["latency"]["p50_us"] / row["latency"]["p50_us"])
        assert row["speedup_mean_vs_plain_fp32"] == pytest.approx(full["latency"]["mean_us"] / row["latency"]["mean_us"])
    assert {r["variant"] for r in result["variants"] if r["precision"] == "int8"} == {"onnx_fused_int8", "chain_int8",
                                                                                      "mpee_int8"}
    assert result["reference_export"]["recipe"] == record["quantization"]["recipe"]
    assert record["quantization"]["recipe"] in rows["onnx_fused_int8"]["description"]
    pt, chain = rows["pytorch"], rows["chain"]
    assert pt["accuracy"] == full["accuracy"] == fused["accuracy"] == chain["accuracy"]
    assert rows["chain_int8"]["mean_exit_layer"] == 3 and rows["chain_int8"]["rho"] == pytest.approx(chain["rho"])

    # A/A pair: reported, recomputed from its rows, flagged above 3%.
    aa = result["aa_control"]
    a_mean, b_mean = chain["latency"]["mean_us"], rows["chain_aa"]["latency"]["mean_us"]
    assert aa["variants"] == ["chain", "chain_aa"]
    assert aa["mean_spread"] == pytest.approx(abs(a_mean - b_mean) / ((a_mean + b_mean) / 2))
    assert aa["flagged"] == (max(aa["mean_spread"], aa["p50_spread"]) > 0.03)
    assert (result["warning"] is not None) == aa["flagged"]
    table = (out / "table.md").read_text()
    assert f"fp32: {best_fp32}, int8: onnx_fused_int8" in table and "vs plain fp32 (onnx_full)" in table
    assert "A/A control: chain and chain_aa" in table

    # FLOPs: the chain runs every layer's exit head, the full model one head, on the same lengths
    fm = model.flops_model
    lens = [len(_tokenizer(tiny_backbone)(t)["input_ids"]) for t in ("the movie is great", "a boring film", "fun")]
    executed = [3 * (fm.layer_flops(n, n) + fm.exit_flops()) for n in lens]
    assert chain["rho"] == pytest.approx(sum(fm.full_flops(n) for n in lens) / sum(executed)) and chain["rho"] < 1

    # An older reference folder (model.onnx and hf/ only): what is there runs, the notes say what is missing.
    old = tmp_path / "old_ref"
    shutil.copytree(ref, old)
    for name in ("model_fused.onnx", "model_fused_int8.onnx", "reference.json"):
        (old / name).unlink()
    out2 = tmp_path / "bench_old"
    assert bench_main([str(tmp_path / "b"), "--input", str(data), "--reference", str(old), "--int8",
                       str(tmp_path / "b8"), "--out", str(out2), "--threads", "1", "--warmup", "0",
                       "--no-sweep"]) == 0
    result = json.loads((out2 / "results.json").read_text())
    names = [v["variant"] for v in result["variants"]]
    assert "onnx_full" in names and "onnx_fused" not in names and "onnx_fused_int8" not in names
    assert (result["baselines"]["fp32"], result["baselines"]["int8"]) == ("onnx_full", "onnx_full")
    assert any("no model_fused.onnx" in n for n in result["notes"])
    assert any("no model_fused_int8.onnx" in n for n in result["notes"])


def test_mean_pooled_reference(tmp_path, tiny_backbone):
    """A mean-pooled model's reference: optimum's encoder export with exit L's head on the token mean appended;
    every reference graph gives exit L on the unpruned model, and the PyTorch row agrees with it."""
    model = tiny_model(layers=3, prune_layers=[1], task="sst2", exit_pooling="mean")
    ckpt, ref = tmp_path / "ckpt", tmp_path / "ref"
    save_checkpoint(model, _tokenizer(tiny_backbone), ckpt)
    res = CliRunner().invoke(export, ["reference", str(ckpt), str(ref)])
    assert res.exit_code == 0, res.output
    assert json.loads((ref / "reference.json").read_text())["exit_pooling"] == "mean"
    ids_list = _random_ids(6)
    with torch.no_grad():
        want = np.array([model.exits[-1](model.bert(torch.from_numpy(ids)).last_hidden_state)[0].numpy()
                         for ids in ids_list])
    np.testing.assert_allclose(_logits(ref / "model.onnx", ids_list), want, atol=1e-5)
    np.testing.assert_allclose(_logits(ref / "model_fused.onnx", ids_list), want, atol=1e-4)
    assert op_counts(ref / "model_fused.onnx")["Attention"] == 3     # the appended head leaves fusion intact
    assert CliRunner().invoke(export, ["run", str(ckpt), str(tmp_path / "b")]).exit_code == 0
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in [("the movie is great", 1),
                                                                            ("a boring film", 0), ("fun", 1)]))
    out = tmp_path / "bench"
    assert bench_main([str(tmp_path / "b"), "--input", str(data), "--reference", str(ref), "--out", str(out),
                       "--threads", "1", "--warmup", "1", "--no-sweep"]) == 0
    rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["variants"]}
    assert rows["pytorch"]["accuracy"] == rows["onnx_full"]["accuracy"] == rows["chain"]["accuracy"]
