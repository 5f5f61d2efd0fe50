"""mpee-bench: its statistics on synthetic timings, the interleaved pass on fake variants, and runs on the
tiny bundle: measuring writes one row per timed request, and the report is rebuilt from those rows alone."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from mpee_runtime.bench import env as env_mod
from mpee_runtime.bench.analysis import (
    aa_control,
    add_speedups,
    choose_baselines,
    operating_point,
    static_comparison,
)
from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bench.measure import Outcome, Variant, measure, measure_alone
from mpee_runtime.bench.records import ROWS, RUN, RunRecord, VariantInfo, read_rows
from mpee_runtime.bench.render import markdown_table
from mpee_runtime.bench.results import AAControl, BenchResults, VariantSummary
from mpee_runtime.bench.tradeoff import pareto_front
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.metrics import Scores, latency_summary


def _pt(name, speedup, metric, p50_us):
    return VariantSummary(name, name, "fp32", 3.0, 1.0, 1.0, {"p50_us": p50_us, "mean_us": p50_us},
                          speedup_mean=speedup, metric=metric)


POINTS = [_pt("a", 1.0, 0.90, 1000), _pt("b", 2.0, 0.89, 500), _pt("c", 2.0, 0.85, 480),
          _pt("d", 3.0, 0.80, 330), _pt("e", 1.5, 0.88, 650)]


def test_latency_summary_percentiles():
    s = latency_summary(list(range(1, 101)))     # 1..100 us
    assert (s["n"], s["mean_us"], s["p50_us"]) == (100, 50.5, 50.5)
    assert s["p90_us"] == pytest.approx(90.1) and s["p99_us"] == pytest.approx(99.01)
    with pytest.raises(ValueError):
        latency_summary([])


def test_pareto_front():
    assert [p.variant for p in pareto_front(POINTS)] == ["a", "b", "d"]   # c is dominated by b, e by b


def test_operating_point():
    assert operating_point(POINTS, reference_metric=0.90, max_drop=1.0).variant == "b"
    assert operating_point(POINTS, reference_metric=0.90, max_drop=10.0).variant == "d"
    assert operating_point(POINTS, reference_metric=0.99, max_drop=1.0) is None
    assert operating_point(POINTS, budget_ms=0.6).variant == "b"            # best metric within 600 us
    assert operating_point(POINTS, budget_ms=0.1) is None
    with pytest.raises(ValueError):
        operating_point(POINTS, reference_metric=0.9, max_drop=1, budget_ms=1)


def test_static_depth_is_compared_within_its_precision():
    """An int8 sweep point faster and more accurate than an fp32 static point does not count against it."""
    def row(name, precision, metric, speedup, rho):
        return VariantSummary(name, name, precision, 1.0, rho, rho, {"p50_us": 1.0, "mean_us": 1.0},
                              threshold=1, keep_ratio=1.0, metric=metric, speedup_mean=speedup)
    static = [row("static_k1_r1.0", "fp32", 0.80, 3.0, 3.0), row("static_int8_k1_r1.0", "int8", 0.79, 2.5, 3.0)]
    sweep = [row("sweep_F0.6_r1.0", "fp32", 0.82, 3.2, 3.1), row("sweep_int8_F0.6_r1.0", "int8", 0.90, 4.0, 4.0)]
    fp32, int8 = static_comparison(sweep, static)
    assert (fp32.precision, fp32.mpee_metric_measured, fp32.mpee_metric_rho) == ("fp32", 0.82, 0.82)
    assert (int8.precision, int8.mpee_metric_measured) == ("int8", 0.90)
    assert int8.gain_measured == pytest.approx(0.11)


def test_scores():
    s = Scores.of([1, 1, 0, 0], [1, 0, 0, 1], "f1")
    assert (s.metric_name, s.metric, s.accuracy, s.f1) == ("f1", 0.5, 0.5, 0.5)


def _row(name, mean_us, p50_us=None, precision="fp32"):
    return VariantSummary(name, name, precision, mean_exit_layer=3.0, rho=1.0, rho_pad128=1.0,
                          latency={"mean_us": mean_us, "p50_us": p50_us or mean_us, "p99_us": 2 * mean_us},
                          metric=0.9, metric_name="accuracy")


def test_baselines_best_full_model_of_each_precision():
    table = [_row("onnx_full", 1000), _row("onnx_fused", 800, 700), _row("onnx_fused_int8", 400, 380, "int8"),
             _row("chain", 1100), _row("mpee", 500, 450), _row("mpee_int8", 300, 280, "int8")]
    sweep = [_row("sweep_F0.1_r1.0", 600)]
    b = choose_baselines(table)
    assert (b.fp32, b.int8, b.plain_fp32) == ("onnx_fused", "onnx_fused_int8", "onnx_full")
    add_speedups(table + sweep, table, b)
    rows = {r.variant: r for r in table + sweep}
    assert rows["mpee"].speedup_mean == pytest.approx(800 / 500) and rows["mpee"].speedup_p50 == pytest.approx(700 / 450)
    assert rows["mpee"].speedup_mean_vs_plain_fp32 == pytest.approx(1000 / 500)
    rows["mpee"].rho = 2.0                                                       # realisation: speed-up / rho
    add_speedups(table, table, b)
    assert rows["mpee"].realisation == pytest.approx(800 / 500 / 2.0)
    assert rows["mpee_int8"].speedup_mean == pytest.approx(400 / 300)           # int8 against int8
    assert rows["mpee_int8"].speedup_baseline == "onnx_fused_int8"
    assert rows["mpee_int8"].speedup_mean_vs_plain_fp32 == pytest.approx(1000 / 300)
    assert rows["sweep_F0.1_r1.0"].speedup_mean == pytest.approx(800 / 600)      # the sweep: best fp32
    assert rows["onnx_fused"].speedup_mean == 1 and rows["onnx_full"].speedup_mean == pytest.approx(0.8)
    # the fused graph is not always the faster one (e.g. short inputs): then the plain export is the baseline
    table[1].latency["mean_us"] = 1200
    assert choose_baselines(table).fp32 == "onnx_full"
    # an older reference folder (no fused files): int8 rows fall back to the fp32 full model
    b = choose_baselines([_row("onnx_full", 1000), _row("chain", 900), _row("mpee_int8", 300, None, "int8")])
    assert (b.fp32, b.int8) == ("onnx_full", "onnx_full")
    # no --reference: the chain, for every precision, and no plain-fp32 column
    table = [_row("chain", 1000), _row("mpee_int8", 250, None, "int8")]
    b = choose_baselines(table)
    assert (b.fp32, b.int8, b.plain_fp32) == ("chain", "chain", None)
    add_speedups(table, table, b)
    assert table[1].speedup_mean == pytest.approx(4.0) and "speedup_mean_vs_plain_fp32" not in table[1].to_dict()


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
    assert aa.mean_spread == pytest.approx(20 / 1010) and aa.p50_spread == pytest.approx(27 / 913.5)
    assert not aa.flagged and aa.warning is None
    aa = aa_control(_row("chain", 1000, 900), _row("chain_aa", 1000, 950))   # p50 5.4% apart: flagged
    assert aa.flagged and "chain_aa" in aa.warning and "5.4%" in aa.warning
    assert aa_control(_row("a", 1000), _row("b", 1040)).flagged == (40 / 1020 > 0.03)
    assert AAControl.from_dict(aa.to_dict()) == aa


def _fake(name, log):
    def run(ids, types):
        log.append((name, int(ids[0, 0])))
        return Outcome(0, 1, 1, [int(ids.shape[1])])
    return Variant(VariantInfo(name, name), run)


def test_measure_interleaves_and_measure_alone_runs_one_variant():
    inputs = [(np.full((1, n), n, dtype=np.int64), np.zeros((1, n), dtype=np.int64)) for n in range(3, 43)]
    log = []
    variants = [_fake(n, log) for n in "abcd"]
    timed_rows = measure(variants, inputs, warmup=2, progress=False, block=8)
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
    assert all(len(v.rows) == len(inputs) for v in variants)
    # the rows come back in the order they were timed: per turn, one variant's 8 examples of the block
    assert [(r.variant, r.example) for r in timed_rows] == [
        (name, 8 * (i // 4) + j) for i, turn in enumerate(turns) for j, (name, _) in enumerate(turn[1:])]
    assert [r.input_tokens for r in timed_rows[:8]] == [n for n in range(3, 11)]
    log2 = []
    measure([_fake(n, log2) for n in "abcd"], inputs, warmup=2, progress=False, block=8)
    assert log2 == log                                        # seeded: the same orders every run
    log1 = []
    measure([_fake(n, log1) for n in "abcd"], inputs, warmup=0, progress=False, block=1)
    assert len(log1) == 4 * len(inputs)                       # block 1: example by example, no re-warm run
    assert all(sorted(n for n, _ in log1[4 * i: 4 * i + 4]) == list("abcd") for i in range(len(inputs)))
    alone_log = []
    pt = _fake("pytorch", alone_log)
    measure_alone(pt, inputs, warmup=3, progress=False)
    assert [n for n, _ in alone_log] == ["pytorch"] * (3 + len(inputs)) and len(pt.rows) == len(inputs)


def _data(tmp_path):
    data = tmp_path / "dev.jsonl"
    rows = [("the movie is great", "entailment"), ("a boring film", "not_entailment"), ("very good acting", "entailment"),
            ("awful plot", "not_entailment"), ("it was fun", "entailment"), ("not good", "not_entailment")] * 2
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return data


SMOKE = ["--threads", "1", "--warmup", "2", "--thresholds", "0,0.6", "--keep-ratios", "0.5,1", "--max-drop", "50"]


@pytest.fixture(scope="module")
def smoke(built, tmp_path_factory):
    """One measured run on the tiny bundle (its own copy, deleted afterwards): OUT and what it printed."""
    tmp = tmp_path_factory.mktemp("smoke")
    bundle = shutil.copytree(built / "bundle", tmp / "bundle")
    out = tmp / "bench"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = bench_main([str(bundle), "--input", str(_data(tmp)), "--out", str(out), *SMOKE])
    shutil.rmtree(bundle)                       # the report must not need it
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def test_bench_smoke(smoke):
    out, stdout, stderr = smoke
    result = json.loads((out / "results.json").read_text())
    assert [v["variant"] for v in result["variants"]] == ["chain", "chain_aa", "exits", "pruning", "mpee", "graph",
                                                          "mpee_graph"]
    # the single graph's rows do the chain's work: the same answers, exits and FLOPs, in one call each
    rows = {v["variant"]: v for v in result["variants"]}
    for chain_row, graph_row in (("chain", "graph"), ("mpee", "mpee_graph")):
        for key in ("accuracy", "rho", "mean_exit_layer"):
            assert rows[graph_row][key] == rows[chain_row][key], (graph_row, key)
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
    assert ("warning: A/A control" in stderr) == aa["flagged"]
    # the A/A line once, in the table's phrasing (no second phrasing after the table)
    assert "A/A control (" not in stdout and len(re.findall(r"in p50 \((within|FLAGGED, above) 3%\)", stdout)) == 1
    mpee = result["variants"][4]
    assert (f"the bundle's operating point (row mpee): entropy F={mpee['threshold']:g} r={mpee['keep_ratio']:g}"
            in stdout)
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
    assert BenchResults.from_dict(result).to_dict() == result    # results.json is one typed record
    # by input length: the tiny inputs all lie in the first default bucket, whose rows are the overall ones
    lb = result["length_buckets"]
    assert lb["edges"] == [128, 256] and [(b["label"], b["examples"]) for b in lb["buckets"]] == [("<=128", 12)]
    assert lb["buckets"][0]["variants"] == result["variants"] and lb["buckets"][0]["baselines"] == b
    assert "## By input length" in table and "by input length" in stdout and "<=128 n=12" in stdout
    assert all(r["realisation"] == pytest.approx(r["speedup_mean"] / r["rho"]) for r in result["variants"])
    if importlib.util.find_spec("matplotlib"):
        assert (out / "speedup_by_length.png").is_file() and (out / "tradeoff.png").is_file()


def test_rows_one_line_per_timed_request(smoke):
    out = smoke[0]
    run = RunRecord.load(out / RUN)
    lines = (out / ROWS).read_text().splitlines()
    names = run.passes[0]["variants"]
    assert len(names) == 7 + 4 + 6 and [v.name for v in run.variants] == names   # table (2 of the single graph)
    assert len(lines) == 12 * len(names)                      # every variant on every example, once
    first = json.loads(lines[0])
    assert set(first) == {"variant", "example", "exit_layer", "input_tokens", "tokens_per_layer", "label_index",
                          "flops", "time_us"}
    rows = read_rows(out / ROWS)
    for name in names:
        mine = [r for r in rows if r.variant == name]
        assert sorted(r.example for r in mine) == list(range(12))
    for r in rows:
        assert len(r.tokens_per_layer) == r.exit_layer and r.tokens_per_layer[0] == r.input_tokens
        assert r.time_us > 0 and r.flops > 0 and r.label_index in (0, 1)
    # pruning at the bundle's keep ratio (0.6) drops tokens at layers 0 and 1; no pruning keeps them all
    prune = [r for r in rows if r.variant == "pruning" and r.input_tokens >= 6]
    assert prune and all(r.tokens_per_layer[2] < r.input_tokens for r in prune)
    assert all(len(set(r.tokens_per_layer)) == 1 for r in rows if r.variant == "chain")
    # the run record: what the report needs without the bundle
    assert run.gold is not None and len(run.gold) == 12 and run.labels == ["entailment", "not_entailment"]
    assert run.metric_name == "accuracy" and len(run.tokenize_us) == 12 and run.flops_model["num_layers"] == 3
    assert {v.name: v.group for v in run.variants}["sweep_F0.6_r0.5"] == "sweep"
    env = run.environment
    assert {"cpu_freq_khz", "temperature_c", "throttled"} <= set(env["cpu_before"]) == set(env["cpu_after"])


def test_report_from_rows_reproduces_the_summary(smoke, tmp_path, capsys):
    out = smoke[0]
    before = json.loads((out / "results.json").read_text())
    alone = tmp_path / "alone"                                # the rows and the run record, nothing else
    alone.mkdir()
    for name in (ROWS, RUN):
        shutil.copy(out / name, alone / name)
    assert bench_main(["report", str(alone)]) == 0
    assert len(re.findall(r"in p50 \((within|FLAGGED, above) 3%\)", capsys.readouterr().out)) == 1
    after = json.loads((alone / "results.json").read_text())
    assert after == before                                    # the same figures, the operating point too
    assert (alone / "table.md").read_text() == (out / "table.md").read_text()
    assert (alone / "sweep.csv").read_text() == (out / "sweep.csv").read_text()
    # ... and they are the rows' figures
    rows = read_rows(out / ROWS)
    gold = RunRecord.load(out / RUN).gold
    chain = sorted((r for r in rows if r.variant == "chain"), key=lambda r: r.example)
    row = after["variants"][0]
    assert row["latency"]["mean_us"] == pytest.approx(np.mean([r.time_us for r in chain]))
    assert row["accuracy"] == np.mean([r.label_index == y for r, y in zip(chain, gold)])
    # another operating point, chosen from the same rows
    assert bench_main(["report", str(alone), "--budget-ms", "1000"]) == 0
    assert "sweep point, the most accurate with p50 within 1000 ms: F=" in capsys.readouterr().out
    op = json.loads((alone / "results.json").read_text())["operating_point"]
    assert op["metric"] == max(p["metric"] for p in after["sweep"])
    assert bench_main(["report", str(tmp_path / "none")]) == 2
    assert bench_main(["report", str(alone), "--max-drop", "1", "--budget-ms", "1"]) == 2


@pytest.mark.integration
def test_report_runs_without_torch_or_onnxruntime(smoke, tmp_path):
    """`mpee-bench report` in a process where torch, transformers and onnxruntime cannot be imported."""
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in (ROWS, RUN):
        shutil.copy(smoke[0] / name, alone / name)
    code = ("import sys\nfor m in ('torch', 'transformers', 'onnxruntime'): sys.modules[m] = None\n"
            "from mpee_runtime.bench.cli import main\nsys.exit(main(['report', sys.argv[1]]))")
    res = subprocess.run([sys.executable, "-c", code, str(alone)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads((alone / "results.json").read_text())["variants"] == \
        json.loads((smoke[0] / "results.json").read_text())["variants"]


def test_cpu_state_reads_sysfs(tmp_path):
    for cpu, khz in ((0, 1800000), (1, 1500000), (10, 600000)):
        d = tmp_path / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{khz}\n")
    (tmp_path / "class" / "thermal" / "thermal_zone0").mkdir(parents=True)
    (tmp_path / "class" / "thermal" / "thermal_zone0" / "temp").write_text("61300\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text("cpu  100 0 50 800 20 5 5 20 0 0\ncpu0 50 0 25 400 10 2 3 10 0 0\n")
    state = env_mod.cpu_state(tmp_path, vcgencmd=None, proc_root=tmp_path / "proc")
    hz = os.sysconf("SC_CLK_TCK")
    assert {k: state[k] for k in ("cpu_freq_khz", "temperature_c", "throttled")} == {
        "cpu_freq_khz": [1800000, 1500000, 600000], "temperature_c": [61.3], "throttled": None}
    assert state["cpu_times"] == {"busy_s": 160 / hz, "idle_s": 820 / hz, "steal_s": 20 / hz}
    assert len(state["load_avg"]) == 3 and state["own_cpu_s"] > 0
    empty = env_mod.cpu_state(tmp_path / "nothing", vcgencmd="no-such-command-here", proc_root=tmp_path / "nothing")
    assert {k: empty[k] for k in ("cpu_freq_khz", "temperature_c", "throttled", "cpu_times")} == {
        "cpu_freq_khz": None, "temperature_c": None, "throttled": None, "cpu_times": None}


def test_busy_machine_flags_the_run():
    """Other processes' CPU time (the machine's busy time less this process's own) and steal between two
    readings: above 10% and 5% of the machine's CPU time, the run is flagged."""
    def st(busy, idle, steal, own, load=5.0):
        return {"cpu_times": {"busy_s": busy, "idle_s": idle, "steal_s": steal}, "own_cpu_s": own,
                "load_avg": [load, load, load]}
    quiet = env_mod.cpu_warning(st(0, 0, 0, 0), st(100, 100, 0, 95))         # others: 5 of 200 s
    assert quiet is None
    busy = env_mod.cpu_warning(st(0, 0, 0, 0), st(150, 50, 0, 100))          # others: 50 of 200 s
    assert busy and "other processes used 25% of the machine's CPU time" in busy and "load average 5.00" in busy
    stolen = env_mod.cpu_warning(st(0, 0, 0, 0), st(100, 80, 20, 100))       # steal: 20 of 200 s
    assert stolen and "the hypervisor took 10% of the CPU time (steal" in stolen
    assert env_mod.busy_share({}, {}) == (None, None)


def test_cpu_warning():
    def st(mhz, throttled=None):
        return {"cpu_freq_khz": [mhz * 1000] * 4, "temperature_c": [50.0], "throttled": throttled}
    assert env_mod.cpu_warning(st(1800), st(1800, "0x0")) is None
    assert env_mod.cpu_warning(st(1800), st(1720)) is None                     # 4.4%: within 5%
    w = env_mod.cpu_warning(st(1800), st(1500))
    assert w and "dropped by 16.7%" in w and "1800 MHz before, 1500 MHz after" in w
    assert "throttled" in env_mod.cpu_warning(st(1800, "0x0"), st(1800, "0x4"))    # throttled now
    assert "occurred during the run" in env_mod.cpu_warning(st(1800, "0x0"), st(1800, "0x20000"))
    assert env_mod.cpu_warning(st(1800, "0x20000"), st(1800, "0x20000")) is None   # since boot, not this run
    none = {"cpu_freq_khz": None, "temperature_c": None, "throttled": None}
    assert env_mod.cpu_warning(none, none) is None


def test_frequency_drop_flags_the_run(built, tmp_path, monkeypatch, capsys):
    readings = iter([{"cpu_freq_khz": [1500000] * 4, "temperature_c": [48.0], "throttled": "0x0"},
                     {"cpu_freq_khz": [1000000] * 4, "temperature_c": [80.5], "throttled": "0x0"}])
    monkeypatch.setattr(env_mod, "cpu_state", lambda *a, **kw: next(readings))
    out = tmp_path / "bench"
    assert bench_main([str(built / "bundle"), "--input", str(_data(tmp_path)), "--out", str(out), "--threads", "1",
                       "--warmup", "0", "--no-sweep", "--no-static", "--max-examples", "4"]) == 0
    err = capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    assert len(result["device_warnings"]) == 1 and "dropped by 33.3%" in result["device_warnings"][0]
    assert "warning: CPU: the mean CPU frequency dropped by 33.3%" in err
    assert "dropped by 33.3%" in (out / "table.md").read_text()
    env = result["environment"]
    assert env["cpu_before"]["temperature_c"] == [48.0] and env["cpu_after"]["temperature_c"] == [80.5]


def test_bench_bad_input(built, tmp_path, capsys):
    assert bench_main([str(built / "bundle"), "--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_int8_points_run_the_sweep_and_static_depth_on_the_int8_bundle(built, tmp_path):
    """--int8-points: the sweep and the static-depth points on the --int8 bundle too, as int8 rows against the
    int8 baseline; the Pareto front and the operating point stay the fp32 sweep's; the map lists the int8 points
    with the mpee-run line of the int8 bundle. (The tiny bundle stands in for both bundles: its int8 rows must
    give its fp32 rows' answers.)"""
    from mpee_runtime.bench.deployment_map import build_map
    out = tmp_path / "bench"
    bundle = str(built / "bundle")
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert bench_main([bundle, "--input", str(_data(tmp_path)), "--int8", bundle, "--int8-points",
                           "--out", str(out), *SMOKE]) == 0
    result = json.loads((out / "results.json").read_text())
    by_name = {r["variant"]: r for r in result["sweep"] + result["static"]}
    int8 = [r for r in result["sweep"] + result["static"] if r["precision"] == "int8"]
    assert sorted(r["variant"] for r in int8) == sorted(
        [f"sweep_int8_F{t}_r{r}" for t in (0.0, 0.6) for r in (0.5, 1.0)]
        + [f"static_int8_k{k}_r{r}" for k in (1, 2, 3) for r in (0.6, 1.0)])
    for r in int8:
        twin = by_name[r["variant"].replace("_int8_", "_")]
        assert twin["precision"] == "fp32"
        assert (r["accuracy"], r["mean_exit_layer"], r["rho"]) == (twin["accuracy"], twin["mean_exit_layer"], twin["rho"])
        assert r["speedup_baseline"] == result["baselines"]["int8"]
    res = BenchResults.from_dict(result)
    fp32_sweep = [r for r in res.sweep if r.precision == "fp32"]
    assert result["pareto"] == [p.point() for p in pareto_front(fp32_sweep)]
    assert result["operating_point"]["latency"] in [r.latency for r in fp32_sweep]
    assert [c.to_dict() for c in res.static_comparison] == [c.to_dict() for c in static_comparison(res.sweep, res.static)]
    assert {c.precision for c in res.static_comparison} == {"fp32", "int8"}
    if importlib.util.find_spec("matplotlib"):
        assert (out / "tradeoff.png").is_file() and (out / "tradeoff_int8.png").is_file()
    dmap = build_map([str(out)])
    int8_sweep = [p for p in dmap.points if p.kind == "sweep" and p.precision == "int8"]
    assert len(int8_sweep) == 4 and all(p.deploy.startswith(f"mpee-run {bundle} ") for p in int8_sweep)


def test_int8_points_need_an_int8_bundle(built, tmp_path, capsys):
    assert bench_main([str(built / "bundle"), "--input", str(_data(tmp_path)), "--int8-points",
                       "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error:") and "--int8-points needs --int8" in err and err.count("\n") == 1


def test_bench_measures_the_length_points(built, tmp_path):
    """A bundle with length points (schema 9) gets an `mpee_length` row: each text at its length's point, the
    answers mpee-run gives without knobs."""
    from test_length_points import POINTS, _with_points
    bundle = _with_points(built / "bundle", tmp_path / "bundle", POINTS)
    out = tmp_path / "bench"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert bench_main([str(bundle), "--input", str(_data(tmp_path)), "--out", str(out), *SMOKE, "--no-sweep",
                           "--no-static"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert "mpee_length" in [v["variant"] for v in result["variants"]]
    engine = MpeeEngine(bundle, threads=1)
    texts = [json.loads(line)["text"] for line in _data(tmp_path).read_text().splitlines()]
    rows = [r for r in read_rows(out / ROWS) if r.variant == "mpee_length"]
    want = {i: engine.predict(t) for i, t in enumerate(texts)}
    assert rows and all(r.exit_layer == want[r.example].exit_layer and r.flops == want[r.example].flops for r in rows)
