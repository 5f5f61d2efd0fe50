"""benchmarks/pruning_schedule.py: the schedules it sweeps and the schedules it chooses, on a synthetic record."""

from __future__ import annotations

import json

from scripts import load_script as _load


def load_script():
    return _load("pruning_schedule")


def test_default_schedules_have_one_ratio_per_pruning_layer():
    ps = load_script()
    for n in (1, 3, 4):
        schedules = ps.default_schedules(n)
        assert len(set(schedules)) == len(schedules)
        assert all(len(ps._schedule(s, n)) == n for s in schedules)
    assert ps.default_schedules(1) == ["1", "0.7", "0.5", "0.3", "0.2"]
    assert "1:0.3:0.3:0.3" in ps.default_schedules(4) and "0.5:1:1:1" in ps.default_schedules(4)


def test_chooses_the_fastest_schedule_within_max_drop_with_and_without_exits(tmp_path):
    ps = load_script()

    def result(schedule, exits, metric, speedup):
        return {"schedule": schedule, "exits": exits, "metric": metric, "speedup": speedup, "rho": speedup,
                "realisation": 1.0, "mean_exit_layer": 2.0 if exits else 6.0, "tokens_last_layer": 10.0}
    results = [result([1.0, 1.0], False, 0.890, 1.0), result([0.3, 0.3], False, 0.881, 1.9),   # 0.9 below: kept
               result([0.2, 0.2], False, 0.879, 2.1),                                             # 1.1 below: out
               result([1.0, 1.0], True, 0.885, 2.5), result([0.3, 0.3], True, 0.870, 3.5),
               result([0.5, 0.5], True, 0.884, 3.0)]
    record = {"bundle": "b", "input": "dev.csv", "examples": 10, "min_tokens": 257, "mean_tokens": 400.0,
              "precision": "fp32", "prune_layers": [1, 2], "threads": 2, "max_drop": 1.0, "baseline": "onnx_fused",
              "baseline_mean_ms": 50.0, "aa": {"mean_spread": 0.01, "flagged": False}, "metric_name": "accuracy",
              "chain_metric": 0.890, "chain_speedup": 0.95, "results": results}
    lines = ps.write_outputs(tmp_path, record)
    written = json.loads((tmp_path / "schedules.json").read_text())
    assert written["chosen"] == [0.3, 0.3] and written["chosen_mpee"] == [0.5, 0.5]
    assert lines[-1].endswith("0.3:0.3; the fastest with exits (the bundle's exit rule) within 1.0 points: 0.5:0.5")
    assert (tmp_path / "schedules.md").read_text().count("**chosen**") == 2
