"""benchmarks/ablations.py report: operating-point selection and the written tables, on synthetic run files."""

from __future__ import annotations

import json

from click.testing import CliRunner

from scripts import load_script as _load
from scripts import write_tiny_sst2


def load_script():
    return _load("ablations")


def fake_run(ab, variant: str, full: float, acc: dict, rho: dict) -> dict:
    """A run file whose grid metric is acc[(threshold, r)] (default `full`) and rho rho[(threshold, r)]."""
    def row(t, r, value, speed):
        return {"threshold": t, "keep_ratio": r, "metric_name": "accuracy", "metric": value, "accuracy": value,
                "rho": speed, "rho_pad128": 5 * speed, "mean_exit_layer": 6.0}
    grid = [row(t, r, acc.get((t, r), full), rho.get((t, r), 1.0)) for r in ab.KEEP_RATIOS for t in ab.THRESHOLDS]
    rec = {"task": "sst2", "seed": 42, "variant": variant, "full_model": row(0.0, 1.0, full, 1.0), "grid": grid,
           "train_seconds": 10.0, "eval_seconds": 1.0, "environment": {"threads": 2}}
    if variant == "mpee":
        rec["bottom_selection_no_exit"] = [row(0.0, r, 0.5, 1.0) for r in ab.KEEP_RATIOS]
    return rec


def test_report_picks_fastest_point_within_one_point(tmp_path):
    ab = load_script()
    runs = tmp_path / "runs"
    runs.mkdir()
    # Reference: the full MPEE model's full-model row (0.90). Its fastest point within 1 point is (0.5, 0.5);
    # (0.6, 0.3) is faster but 2 points down.
    mpee = fake_run(ab, "mpee", 0.90, {(0.5, 0.5): 0.895, (0.6, 0.3): 0.88}, {(0.5, 0.5): 2.5, (0.6, 0.3): 3.0})
    # The ablation never gets within 1 point of the reference: no matched point.
    worse = fake_run(ab, "no_layer_exit", 0.85, {}, {(ab.FIXED["threshold"], ab.FIXED["keep_ratio"]): 1.3})
    for rec in (mpee, worse):
        (runs / f"sst2-s42-{rec['variant']}.json").write_text(json.dumps(rec))
    result = CliRunner().invoke(ab.cli, ["report", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads((tmp_path / "ablations.json").read_text())["rows"]}
    assert rows["mpee"]["matched_point"] == [0.5, 0.5] and rows["mpee"]["matched_rho"] == 2.5
    assert rows["no_layer_exit"]["matched_point"] is None
    assert rows["no_layer_exit"]["fixed_rho"] == 1.3
    md = (tmp_path / "ablations.md").read_text()
    assert "| w/o layer exits | 85.00 | 85.00 | 1.30 |" in md
    assert (tmp_path / "fig5_top_vs_bottom.png").stat().st_size > 0


def test_report_without_runs_is_a_clear_error(tmp_path):
    ab = load_script()
    result = CliRunner().invoke(ab.cli, ["report", "--results", str(tmp_path)])
    assert result.exit_code != 0 and "no run files" in result.output


def test_run_on_another_backbone_records_its_schedule_and_refuses_a_changed_one(tmp_path, tiny_backbone):
    ab = load_script()
    glue = write_tiny_sst2(tmp_path / "glue")
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    common = ["--data", str(glue), "--tasks", "sst2", "--backbone", str(tiny_backbone), "--exit-pooling", "mean",
              "--results", str(results), "--artifacts", str(artifacts), "--threads", "1", "--max-length", "32"]
    result = CliRunner().invoke(ab.cli, ["run", *common, "--variants", "mpee,no_self_distill", "--epochs", "1",
                                         "--max-train-samples", "8", "--lr", "1e-4"])
    assert result.exit_code == 0, result.output
    for variant in ("mpee", "no_self_distill"):
        rec = json.loads((results / "runs" / f"sst2-s42-{variant}.json").read_text())
        assert rec["backbone"] == tiny_backbone.name
        assert rec["schedule"] | {"epochs": 1, "max_train_samples": 8, "lr": 1e-4} == rec["schedule"]
        assert len(rec["grid"]) == len(ab.THRESHOLDS) * len(ab.KEEP_RATIOS)
    # A checkpoint trained on one schedule is not silently evaluated as another.
    (results / "runs" / "sst2-s42-mpee.json").unlink()
    result = CliRunner().invoke(ab.cli, ["run", *common, "--variants", "mpee", "--epochs", "1",
                                         "--max-train-samples", "12", "--lr", "1e-4"])
    assert result.exit_code != 0 and "another schedule" in result.output


def test_report_names_the_backbone_and_the_schedule_the_runs_recorded(tmp_path):
    ab = load_script()
    runs = tmp_path / "runs"
    runs.mkdir()
    schedule = {"epochs": 1, "max_train_samples": 16000, "lr": 2e-5, "batch_size": 32}
    for variant in ("mpee", "no_self_distill"):
        rec = fake_run(ab, variant, 0.9, {}, {}) | {"backbone": "all-mpnet-base-v2", "schedule": schedule}
        (runs / f"sst2-s42-{variant}.json").write_text(json.dumps(rec))
    result = CliRunner().invoke(ab.cli, ["report", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "ablations.md").read_text()
    assert md.startswith("# MPEE ablations (paper Table 2, Table 3, Figure 5) on all-mpnet-base-v2,")
    assert f"sst2: {json.dumps(schedule, sort_keys=True)}" in md
