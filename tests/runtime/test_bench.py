"""mpee-bench: its statistics on synthetic timings, and a smoke run on the tiny bundle."""

from __future__ import annotations

import json

import pytest

from mpee_runtime.bench import main as bench_main
from mpee_runtime.bench import operating_point, pareto_front
from mpee_runtime.metrics import classification_metrics, latency_summary


def _pt(name, speedup, metric, p50_us):
    return {"name": name, "speedup_mean": speedup, "metric": metric, "latency": {"p50_us": p50_us}}


POINTS = [_pt("a", 1.0, 0.90, 1000), _pt("b", 2.0, 0.89, 500), _pt("c", 2.0, 0.85, 480),
          _pt("d", 3.0, 0.80, 330), _pt("e", 1.5, 0.88, 650)]


def test_latency_summary_percentiles():
    s = latency_summary(list(range(1, 101)))     # 1..100 us
    assert (s["n"], s["mean_us"], s["p50_us"]) == (100, 50.5, 50.5)
    assert s["p90_us"] == pytest.approx(90.1) and s["p99_us"] == pytest.approx(99.01)
    with pytest.raises(ValueError):
        latency_summary([])


def test_pareto_front():
    assert [p["name"] for p in pareto_front(POINTS)] == ["a", "b", "d"]   # c is dominated by b, e by b


def test_operating_point():
    assert operating_point(POINTS, reference_metric=0.90, max_drop=1.0)["name"] == "b"
    assert operating_point(POINTS, reference_metric=0.90, max_drop=10.0)["name"] == "d"
    assert operating_point(POINTS, reference_metric=0.99, max_drop=1.0) is None
    assert operating_point(POINTS, budget_ms=0.6)["name"] == "b"            # best metric within 600 us
    assert operating_point(POINTS, budget_ms=0.1) is None
    with pytest.raises(ValueError):
        operating_point(POINTS, reference_metric=0.9, max_drop=1, budget_ms=1)


def test_classification_metrics():
    assert classification_metrics([1, 1, 0, 0], [1, 0, 0, 1], with_f1=True) == {"accuracy": 0.5, "f1": 0.5}


def test_bench_smoke(built, tmp_path, capsys):
    data = tmp_path / "dev.jsonl"
    rows = [("the movie is great", "entailment"), ("a boring film", "not_entailment"), ("very good acting", "entailment"),
            ("awful plot", "not_entailment"), ("it was fun", "entailment"), ("not good", "not_entailment")] * 2
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    out = tmp_path / "bench"
    code = bench_main([str(built / "bundle"), "--input", str(data), "--out", str(out), "--threads", "1",
                       "--warmup", "2", "--thresholds", "0,0.6", "--keep-ratios", "0.5,1", "--max-drop", "50"])
    assert code == 0, capsys.readouterr()
    result = json.loads((out / "results.json").read_text())
    assert [v["variant"] for v in result["variants"]] == ["chain", "exits", "pruning", "mpee"]
    assert len(result["sweep"]) == 4 and result["examples"] == 12
    assert result["environment"]["threads"] == 1 and len(result["environment"]["manifest_sha256"]) == 64
    assert result["operating_point"] is not None and result["pareto"]
    chain = result["variants"][0]
    assert chain["mean_exit_layer"] == 3 and chain["speedup_p50"] == 1.0
    assert "| chain" in (out / "table.md").read_text()
    assert (out / "sweep.csv").read_text().count("\n") == 5
    assert any("onnx_full" in n for n in result["notes"])


def test_bench_bad_input(built, tmp_path, capsys):
    assert bench_main([str(built / "bundle"), "--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
