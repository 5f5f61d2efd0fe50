"""mpee-bench: its statistics on synthetic timings, and a smoke run on the tiny bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpee_runtime.bench import (
    Variant,
    aa_control,
    aa_warning,
    add_speedups,
    choose_baselines,
    markdown_table,
    measure,
    measure_alone,
    operating_point,
    pareto_front,
)
from mpee_runtime.bench import main as bench_main
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


def _row(name, mean_us, p50_us=None, precision="fp32"):
    return {"variant": name, "description": name, "precision": precision, "rho": 1.0, "rho_pad128": 1.0,
            "mean_exit_layer": 3.0, "metric": 0.9, "metric_name": "accuracy",
            "latency": {"mean_us": mean_us, "p50_us": p50_us or mean_us, "p99_us": 2 * mean_us}}


def test_baselines_best_full_model_of_each_precision():
    table = [_row("onnx_full", 1000), _row("onnx_fused", 800, 700), _row("onnx_fused_int8", 400, 380, "int8"),
             _row("chain", 1100), _row("mpee", 500, 450), _row("mpee_int8", 300, 280, "int8")]
    sweep = [_row("sweep_F0.1_r1.0", 600)]
    b = choose_baselines(table)
    assert (b["fp32"], b["int8"], b["plain_fp32"]) == ("onnx_fused", "onnx_fused_int8", "onnx_full")
    add_speedups(table + sweep, table, b)
    rows = {r["variant"]: r for r in table + sweep}
    assert rows["mpee"]["speedup_mean"] == pytest.approx(800 / 500) and rows["mpee"]["speedup_p50"] == pytest.approx(700 / 450)
    assert rows["mpee"]["speedup_mean_vs_plain_fp32"] == pytest.approx(1000 / 500)
    assert rows["mpee_int8"]["speedup_mean"] == pytest.approx(400 / 300)           # int8 against int8
    assert rows["mpee_int8"]["speedup_baseline"] == "onnx_fused_int8"
    assert rows["mpee_int8"]["speedup_mean_vs_plain_fp32"] == pytest.approx(1000 / 300)
    assert rows["sweep_F0.1_r1.0"]["speedup_mean"] == pytest.approx(800 / 600)      # the sweep: best fp32
    assert rows["onnx_fused"]["speedup_mean"] == 1 and rows["onnx_full"]["speedup_mean"] == pytest.approx(0.8)
    # the fused graph is not always the faster one (e.g. short inputs): then the plain export is the baseline
    table[1]["latency"]["mean_us"] = 1200
    assert choose_baselines(table)["fp32"] == "onnx_full"
    # an older reference folder (no fused files): int8 rows fall back to the fp32 full model
    b = choose_baselines([_row("onnx_full", 1000), _row("chain", 900), _row("mpee_int8", 300, None, "int8")])
    assert (b["fp32"], b["int8"]) == ("onnx_full", "onnx_full")
    # no --reference: the chain, for every precision, and no plain-fp32 column
    table = [_row("chain", 1000), _row("mpee_int8", 250, None, "int8")]
    b = choose_baselines(table)
    assert (b["fp32"], b["int8"], b["plain_fp32"]) == ("chain", "chain", None)
    add_speedups(table, table, b)
    assert table[1]["speedup_mean"] == pytest.approx(4.0) and "speedup_mean_vs_plain_fp32" not in table[1]


def test_table_header_names_the_baselines():
    table = [_row("onnx_full", 1000), _row("onnx_fused", 800), _row("onnx_fused_int8", 400, None, "int8"),
             _row("chain", 1100), _row("chain_aa", 1150)]
    b = choose_baselines(table)
    add_speedups(table, table, b)
    aa = aa_control(table[3], table[4])
    text = markdown_table(table, "sst2", b, aa)
    head = next(line for line in text.splitlines() if line.startswith("| Method"))
    assert "vs best full model (fp32: onnx_fused, int8: onnx_fused_int8)" in head
    assert "vs plain fp32 (onnx_full)" in head
    assert "| chain: chain | fp32 | 90.00 | 1.00x | 1.00x | 0.73x (0.73x) | 0.91x (0.91x) |" in text
    assert "A/A control: chain and chain_aa" in text and "FLAGGED" in text     # 1100 vs 1150: 4.4%


def test_aa_control_spread_and_flag():
    aa = aa_control(_row("chain", 1000, 900), _row("chain_aa", 1020, 927))
    assert aa["mean_spread"] == pytest.approx(20 / 1010) and aa["p50_spread"] == pytest.approx(27 / 913.5)
    assert not aa["flagged"] and aa_warning(aa) is None
    aa = aa_control(_row("chain", 1000, 900), _row("chain_aa", 1000, 950))   # p50 5.4% apart: flagged
    assert aa["flagged"] and "chain_aa" in aa_warning(aa) and "5.4%" in aa_warning(aa)
    assert aa_control(_row("a", 1000), _row("b", 1040))["flagged"] == (40 / 1020 > 0.03)


def _fake(name, log):
    def run(ids, types):
        log.append(name)
        return 0, 1, 1
    return Variant(name, run, name)


def test_measure_interleaves_and_measure_alone_runs_one_variant():
    inputs = [(np.full((1, n), n, dtype=np.int64), np.zeros((1, n), dtype=np.int64)) for n in range(3, 43)]
    log = []

    def fake(name, log):
        def run(ids, types):
            log.append((name, int(ids[0, 0])))
            return 0, 1, 1
        return Variant(name, run, name)
    variants = [fake(n, log) for n in "abcd"]
    measure(variants, inputs, warmup=2, progress=False, block=8)
    timed = log[8:]                                    # 2 warm-up inputs x 4 variants first
    turns = [timed[9 * i: 9 * i + 9] for i in range(len(timed) // 9)]     # per turn: 1 re-warm + 8 timed
    assert len(turns) == 4 * 5 and len(timed) == 4 * 5 * 9
    for i, turn in enumerate(turns):
        block = [int(ids[0, 0]) for ids, _ in inputs[8 * (i // 4): 8 * (i // 4) + 8]]
        assert len({name for name, _ in turn}) == 1                   # one variant runs its whole block ...
        assert [x for _, x in turn] == [block[0]] + block             # ... after one run of its first input
    orders = [tuple(t[0][0] for t in turns[4 * b: 4 * b + 4]) for b in range(5)]
    assert all(sorted(o) == list("abcd") for o in orders)     # every variant once per block
    assert len(set(orders)) > 1                               # in varying orders
    assert all(len(v.times_us) == len(inputs) for v in variants)
    log2 = []
    measure([fake(n, log2) for n in "abcd"], inputs, warmup=2, progress=False, block=8)
    assert log2 == log                                        # seeded: the same orders every run
    log1 = []
    measure([fake(n, log1) for n in "abcd"], inputs, warmup=0, progress=False, block=1)
    assert len(log1) == 4 * len(inputs)                       # block 1: example by example, no re-warm run
    assert all(sorted(n for n, _ in log1[4 * i: 4 * i + 4]) == list("abcd") for i in range(len(inputs)))
    alone_log = []
    pt = _fake("pytorch", alone_log)
    measure_alone(pt, inputs, warmup=3, progress=False)
    assert alone_log == ["pytorch"] * (3 + len(inputs)) and len(pt.times_us) == len(inputs)


def test_bench_smoke(built, tmp_path, capsys):
    data = tmp_path / "dev.jsonl"
    rows = [("the movie is great", "entailment"), ("a boring film", "not_entailment"), ("very good acting", "entailment"),
            ("awful plot", "not_entailment"), ("it was fun", "entailment"), ("not good", "not_entailment")] * 2
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    out = tmp_path / "bench"
    code = bench_main([str(built / "bundle"), "--input", str(data), "--out", str(out), "--threads", "1",
                       "--warmup", "2", "--thresholds", "0,0.6", "--keep-ratios", "0.5,1", "--max-drop", "50"])
    captured = capsys.readouterr()
    assert code == 0, captured
    result = json.loads((out / "results.json").read_text())
    assert [v["variant"] for v in result["variants"]] == ["chain", "chain_aa", "exits", "pruning", "mpee"]
    assert len(result["sweep"]) == 4 and result["examples"] == 12
    assert result["environment"]["threads"] == 1 and len(result["environment"]["manifest_sha256"]) == 64
    assert result["operating_point"] is not None and result["pareto"]
    chain, twin = result["variants"][0], result["variants"][1]
    assert chain["mean_exit_layer"] == 3
    b = result["baselines"]
    assert (b["fp32"], b["int8"], b["plain_fp32"]) == ("chain", "chain", None)   # no --reference
    for row in result["variants"] + result["sweep"]:     # every speed-up is against the chain's latency
        assert row["speedup_baseline"] == "chain"
        assert row["speedup_mean"] == pytest.approx(chain["latency"]["mean_us"] / row["latency"]["mean_us"])
        assert row["speedup_p50"] == pytest.approx(chain["latency"]["p50_us"] / row["latency"]["p50_us"])
    assert result["policy"] == "entropy" and result["variants"][4]["policy"] == "entropy"   # the bundle's
    # the A/A pair: the same work (same predictions, same FLOPs), its spread recomputed from the two rows
    assert (twin["accuracy"], twin["rho"]) == (chain["accuracy"], chain["rho"])
    aa = result["aa_control"]
    p50s = chain["latency"]["p50_us"], twin["latency"]["p50_us"]
    assert aa["p50_spread"] == pytest.approx(abs(p50s[0] - p50s[1]) / (sum(p50s) / 2))
    assert (result["warning"] is not None) == aa["flagged"] == (max(aa["mean_spread"], aa["p50_spread"]) > 0.03)
    assert ("warning: A/A control" in captured.err) == aa["flagged"]
    assert "A/A control (chain vs chain_aa)" in captured.out
    assert [p["mode"] for p in result["measurement"]["passes"]] == ["interleaved"]
    table = (out / "table.md").read_text()
    assert "| chain" in table and "A/A control: chain and chain_aa" in table and "against our chain" in table
    # static depth (exit k for every example) at keep ratio 1 and at the bundle's (0.6): k = 1..3 each
    static = result["static"]
    assert [(r["keep_ratio"], r["threshold"], r["mean_exit_layer"]) for r in static] == [
        (ratio, k, k) for ratio in (0.6, 1.0) for k in (1, 2, 3)]
    full_static = next(r for r in static if r["keep_ratio"] == 1.0 and r["threshold"] == 3)
    assert (full_static["accuracy"], full_static["rho"]) == (chain["accuracy"], chain["rho"])   # = no exit
    for cmp in result["static_comparison"]:          # recomputed from the rows: best sweep point as fast
        st = next(r for r in static if r["threshold"] == cmp["exit"] and r["keep_ratio"] == cmp["keep_ratio"])
        faster = [p["metric"] for p in result["sweep"] if p["rho"] >= st["rho"]]
        assert cmp["mpee_metric_rho"] == (max(faster) if faster else None)
    assert (out / "sweep.csv").read_text().count("\n") == 1 + 4 + 6
    assert any("no --reference" in n and "against the chain" in n for n in result["notes"])


def test_bench_bad_input(built, tmp_path, capsys):
    assert bench_main([str(built / "bundle"), "--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
