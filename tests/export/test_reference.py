"""The optimum-exported full model (the benchmark's reference) and mpee-bench with every variant."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.checkpoint import save_checkpoint
from mpee_export.cli import export
from mpee_export.reference import to_hf_classifier
from mpee_runtime.bench import main as bench_main

pytest.importorskip("optimum.exporters.onnx")


def test_reference_and_full_bench(tmp_path, tiny_backbone):
    model = tiny_model(layers=3, prune_layers=[1], task="sst2")
    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, AutoTokenizer.from_pretrained(str(tiny_backbone)), ckpt)
    runner = CliRunner()
    res = runner.invoke(export, ["reference", str(ckpt), str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    ids = torch.tensor([[2, 30, 31, 40, 33, 3]])
    sess = ort.InferenceSession(str(tmp_path / "ref" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
             "token_type_ids": np.zeros_like(ids.numpy())}
    (logits,) = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
    with torch.no_grad():
        hf = to_hf_classifier(model)(ids).logits.numpy()
        last_exit = model.exits[-1](model.bert(ids).last_hidden_state).numpy()
    np.testing.assert_allclose(logits, hf, atol=1e-5)
    np.testing.assert_allclose(hf, last_exit, atol=1e-5)   # the reference is exit L on the unpruned model
    for args in (["run", str(ckpt), str(tmp_path / "b")], ["run", str(ckpt), str(tmp_path / "b8"), "--quantize", "int8"]):
        assert runner.invoke(export, args).exit_code == 0
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t} \t{y}\n" for t, y in [("the movie is great", 1),
                                                                              ("a boring film", 0), ("fun", 1)]))
    out = tmp_path / "bench"
    code = bench_main([str(tmp_path / "b"), "--input", str(data), "--reference", str(tmp_path / "ref"),
                       "--int8", str(tmp_path / "b8"), "--out", str(out), "--threads", "1", "--warmup", "1",
                       "--no-sweep"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    names = [v["variant"] for v in result["variants"]]
    assert names == ["pytorch", "onnx_full", "chain", "exits", "pruning", "mpee", "mpee_int8"]
    assert result["reference"] == "onnx_full" and result["variants"][1]["speedup_p50"] == 1.0
    pt, full = result["variants"][0], result["variants"][1]
    assert pt["accuracy"] == full["accuracy"] and pt["rho"] == full["rho"] == 1.0
