"""mpee-bench's table by input length: per-bucket baselines, speed-ups, FLOPs rho and realisation on a
synthetic measurement (rows.jsonl and run.json written through the measurement's own writers, with known
times and token counts), and a run on the tiny bundle that finds the bucket table and the length plot."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from mpee_runtime.bench.analysis import bucket_label, build_results, load_measurement, parse_length_edges
from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bench.records import ROWS, RUN, RequestRow, RunRecord, VariantInfo, read_rows, write_rows
from mpee_runtime.bench.render import LENGTH_PLOT
from mpee_runtime.bench.report import report
from mpee_runtime.bench.results import BenchResults
from mpee_runtime.core.flops import FlopsModel

FM = FlopsModel(hidden=4, ffn=8, num_labels=2, num_layers=2)
SHORT, MID, LONG = 60, 150, 300                  # tokens: one length per default bucket
# Variant -> (precision, group of the speed-up baseline, time per request in us on short / mid / long inputs,
# FLOPs divisor on short / mid / long inputs). The fused graph is the faster fp32 model on short inputs, the
# plain export on long ones (and overall): each bucket must choose its own baseline.
TIMES = {
    "onnx_full": ("fp32", (1000, 2000, 4000), (1, 1, 1)),
    "onnx_fused": ("fp32", (800, 2200, 5000), (1, 1, 1)),
    "onnx_fused_int8": ("int8", (500, 1000, 2000), (1, 1, 1)),
    "chain": ("fp32", (1100, 2100, 4100), (1, 1, 1)),
    "chain_aa": ("fp32", (1100, 2100, 4100), (1, 1, 1)),
    "exits": ("fp32", (900, 1500, 2500), (2, 2, 2)),
    "pruning": ("fp32", (1000, 1500, 2000), (1, 2, 3)),
    "mpee": ("fp32", (800, 1000, 1000), (2, 3, 5)),
    "chain_int8": ("int8", (600, 1100, 2100), (1, 1, 1)),
    "mpee_int8": ("int8", (400, 500, 500), (2, 3, 5)),
}
FULL = ("onnx_full", "onnx_fused", "onnx_fused_int8")


def _lengths(n_short=10, n_mid=2, n_long=10):
    return [SHORT] * n_short + [MID] * n_mid + [LONG] * n_long


def _measurement(out, lengths, variants=TIMES):
    """Write OUT/rows.jsonl and OUT/run.json: every variant on every example, its time and FLOPs from
    TIMES (times scaled by length within a bucket: exact at SHORT, MID, LONG); gold labels all 1, mpee wrong
    on the long examples with an odd index."""
    infos, rows = [], []
    for name, (precision, times, divisors) in variants.items():
        infos.append(VariantInfo(name, name, precision, path=f"{name}.onnx" if name in FULL else None))
        for e, n in enumerate(lengths):
            k = 0 if n <= 128 else 1 if n <= 256 else 2
            wrong = name == "mpee" and n == LONG and e % 2
            rows.append(RequestRow(name, e, 2, n, [n, n], 0 if wrong else 1, FM.full_flops(n) // divisors[k],
                                   times[k] * n / (SHORT, MID, LONG)[k]))
    run = RunRecord(run_id="r", task="imdb", metric_name="accuracy", labels=["neg", "pos"], gold=[1] * len(lengths),
                    inputs_sha256="0" * 64, input={"max_length": 512, "examples": len(lengths)},
                    flops_model={"hidden": 4, "ffn": 8, "num_labels": 2, "num_layers": 2}, environment={},
                    variants=infos, passes=[{"pass": 1, "mode": "interleaved"}])
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / ROWS, rows)
    run.dump(out / RUN)
    return out


def _rho(lengths, divisor):
    return sum(FM.full_flops(n) for n in lengths) / sum(FM.full_flops(n) // divisor for n in lengths)


def test_buckets_choose_their_own_baselines_and_give_speedup_rho_realisation(tmp_path):
    res = build_results(load_measurement(_measurement(tmp_path / "m", _lengths())))
    assert res.baselines.fp32 == "onnx_full"                     # overall: the plain export is faster
    lb = res.length_buckets
    assert lb.edges == [128, 256] and lb.examples == 22 and lb.mean_tokens == pytest.approx(
        (10 * SHORT + 2 * MID + 10 * LONG) / 22)
    assert [(b.label, b.lo, b.hi, b.examples, b.mean_tokens, b.few) for b in lb.buckets] == [
        ("<=128", 1, 128, 10, SHORT, False), ("129-256", 129, 256, 2, MID, True), ("257-512", 257, None, 10, LONG, False)]
    # within each bucket the faster fp32 full model on that bucket's rows: fused (short), plain (mid, long)
    assert [(b.baselines.fp32, b.baselines.int8, b.baselines.plain_fp32) for b in lb.buckets] == [
        ("onnx_fused", "onnx_fused_int8", "onnx_full"), ("onnx_full", "onnx_fused_int8", "onnx_full"),
        ("onnx_full", "onnx_fused_int8", "onnx_full")]
    for b, k, lengths in zip(lb.buckets, range(3), ([SHORT] * 10, [MID] * 2, [LONG] * 10)):
        assert [r.variant for r in b.variants] == list(TIMES)     # every table variant, in the table's order
        base_fp32 = TIMES[b.baselines.fp32][1][k]
        for r in b.variants:
            precision, times, divisors = TIMES[r.variant]
            base = TIMES["onnx_fused_int8"][1][k] if precision == "int8" else base_fp32
            assert r.speedup_baseline == (b.baselines.int8 if precision == "int8" else b.baselines.fp32)
            assert r.speedup_mean == pytest.approx(base / times[k]) == r.speedup_p50
            assert r.speedup_mean_vs_plain_fp32 == pytest.approx(TIMES["onnx_full"][1][k] / times[k])
            assert r.rho == pytest.approx(_rho(lengths, divisors[k]))
            assert r.realisation == pytest.approx(r.speedup_mean / r.rho)
            assert r.p50_us == times[k] and r.latency["n"] == len(lengths)
    mpee = [b.row("mpee") for b in lb.buckets]
    assert [r.accuracy for r in mpee] == [1.0, 1.0, 0.5]          # wrong on half the long examples
    assert mpee[0].speedup_mean == pytest.approx(800 / 800) and mpee[2].speedup_mean == pytest.approx(4000 / 1000)
    assert lb.buckets[2].row("mpee_int8").speedup_mean == pytest.approx(2000 / 500)
    # overall: the same definitions over every example (rho a ratio of sums, as in the main table)
    overall = {r.variant: r for r in res.variants}
    assert overall["mpee"].rho == pytest.approx(
        sum(FM.full_flops(n) for n in _lengths()) / sum(FM.full_flops(n) // {SHORT: 2, MID: 3, LONG: 5}[n]
                                                        for n in _lengths()))
    assert overall["mpee"].realisation == pytest.approx(overall["mpee"].speedup_mean / overall["mpee"].rho)
    assert BenchResults.from_dict(res.to_dict()).to_dict() == res.to_dict()   # one typed reader / writer
    # the plot's bins: 64 tokens wide, each with its own baselines
    assert [(b.label, b.examples) for b in res.length_bins.buckets] == [("<=64", 10), ("129-192", 2),
                                                                         ("257-320", 10)]
    assert res.length_bins.buckets[0].baselines.fp32 == "onnx_fused"


def test_empty_buckets_are_left_out_and_edges_are_an_option(tmp_path):
    m = load_measurement(_measurement(tmp_path / "m", _lengths()))
    lb = build_results(m, length_edges=[100, 200, 250]).length_buckets
    assert [(b.label, b.examples) for b in lb.buckets] == [("<=100", 10), ("101-200", 2), ("251-512", 10)]
    lb = build_results(m, length_edges=[]).length_buckets       # no edge: one bucket, every example
    assert [(b.label, b.examples) for b in lb.buckets] == [("<=512", 22)]
    assert parse_length_edges("128,256") == [128, 256] and parse_length_edges(" 64 , 512 ") == [64, 512]
    for bad in ("256,128", "128,128", "0,128", "a,b", "12.5"):
        with pytest.raises(Exception, match="--length-buckets"):
            parse_length_edges(bad)
    assert (bucket_label(1, 128), bucket_label(129, 256), bucket_label(5, 5)) == ("<=128", "129-256", "5")
    assert (bucket_label(257, None, 512), bucket_label(257, None), bucket_label(1, None)) == (
        "257-512", ">=257", "all")


def test_short_inputs_give_one_bucket_equal_to_the_overall_figures(tmp_path, capsys):
    out = _measurement(tmp_path / "sst2", [20, 35, 60, 128] * 3)     # SST-2-like: all within the first bucket
    res = report(out)
    (bucket,) = res.length_buckets.buckets
    assert (bucket.label, bucket.examples, bucket.few) == ("<=128", 12, False)
    assert bucket.baselines == res.baselines
    assert [r.to_dict() for r in bucket.variants] == [r.to_dict() for r in res.variants]
    printed = capsys.readouterr().out
    assert "by input length" in printed and "<=128 n=12" in printed and "all n=12" in printed
    table = (out / "table.md").read_text()
    assert "## By input length" in table
    mpee = res.variants[[r.variant for r in res.variants].index("mpee")]
    for label in ("all", "<=128"):
        assert (f"| {label} | 12 | 60.8 | mpee | fp32 | 100.00 | {mpee.p50_us / 1e3:.2f} | onnx_fused | "
                f"{mpee.speedup_mean:.2f}x ({mpee.speedup_p50:.2f}x) | {mpee.rho:.2f}x | "
                f"{mpee.realisation:.2f} |") in table


def test_report_writes_the_bucket_table_json_and_plot(tmp_path, capsys):
    out = _measurement(tmp_path / "m", _lengths())
    assert bench_main(["report", str(out), "--length-buckets", "128,256"]) == 0
    printed = capsys.readouterr().out
    assert "129-256* n=2" in printed and "257-512 n=10" in printed
    line = next(s for s in printed.splitlines() if s.strip().startswith("mpee "))
    assert "4.00x/" in line                                        # the long bucket: 4000 / 1000 us
    table = (out / "table.md").read_text()
    assert "| 129-256 * | 2 | 150.0 | mpee | fp32 |" in table and "| 257-512 | 10 | 300.0 | mpee | fp32 |" in table
    assert "| <=128 | 10 | 60.0 | onnx_full | fp32 | 100.00 | 1.00 | onnx_fused | 0.80x (0.80x) |" in table
    data = json.loads((out / "results.json").read_text())
    assert [b["label"] for b in data["length_buckets"]["buckets"]] == ["<=128", "129-256", "257-512"]
    assert data["length_buckets"]["buckets"][1]["few"] is True
    assert BenchResults.from_dict(data).to_dict() == data
    pytest.importorskip("matplotlib")
    assert (out / LENGTH_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # another choice of edges, from the same rows; a bad one is refused with exit code 2
    assert bench_main(["report", str(out), "--length-buckets", "200"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert [(b["label"], b["examples"]) for b in data["length_buckets"]["buckets"]] == [("<=200", 12),
                                                                                      ("201-512", 10)]
    assert bench_main(["report", str(out), "--length-buckets", "256,128"]) == 2
    assert "--length-buckets" in capsys.readouterr().err


def test_plot_without_int8_or_full_models(tmp_path):
    """No --reference, no --int8: the plot and buckets still come, every speed-up against the chain."""
    variants = {k: v for k, v in TIMES.items() if k in ("chain", "chain_aa", "exits", "pruning", "mpee")}
    out = _measurement(tmp_path / "m", _lengths(), variants)
    res = report(out)
    assert all(b.baselines.fp32 == "chain" for b in res.length_buckets.buckets)
    assert res.length_buckets.buckets[2].row("mpee").speedup_mean == pytest.approx(4100 / 1000)
    assert "against our chain (no --reference" in (out / "table.md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert (out / LENGTH_PLOT).is_file() and not any(n.startswith("length plot") for n in res.notes)


TINY = ["--threads", "1", "--warmup", "1", "--no-sweep", "--no-static"]


def test_bench_on_the_tiny_bundle_reports_by_length(built, tmp_path, capsys):
    """mpee-bench + report on the tiny bundle: edges that cut its short inputs into buckets, counted from
    the rows; then the default edges (everything <=128): one bucket equal to the overall rows."""
    data = tmp_path / "dev.jsonl"
    texts = [("awful plot", "not_entailment"), ("a boring film", "not_entailment"), ("very good acting", "entailment"),
             ("the movie is great", "entailment"), ("it was fun", "entailment"), ("not good", "not_entailment")]
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in texts * 2))
    out = tmp_path / "bench"
    bundle = shutil.copytree(built / "bundle", tmp_path / "bundle")
    assert bench_main([str(bundle), "--input", str(data), "--out", str(out), *TINY,
                       "--length-buckets", "4,5,100"]) == 0
    printed = capsys.readouterr().out
    assert "by input length" in printed
    rows = read_rows(out / ROWS)
    tokens = {r.example: r.input_tokens for r in rows}
    want = [(label, n) for label, n in (("<=4", sum(t <= 4 for t in tokens.values())),
                                        ("5", sum(t == 5 for t in tokens.values())),
                                        ("6-100", sum(5 < t <= 100 for t in tokens.values()))) if n]
    result = json.loads((out / "results.json").read_text())
    got = [(b["label"], b["examples"]) for b in result["length_buckets"]["buckets"]]
    assert got == want and len(got) >= 2                          # the bucket past 100 tokens: empty, left out
    for b in result["length_buckets"]["buckets"]:
        assert [v["variant"] for v in b["variants"]] == ["chain", "chain_aa", "exits", "pruning", "mpee", "graph",
                                                         "mpee_graph"]
        chain = b["variants"][0]
        for v in b["variants"]:
            assert v["speedup_baseline"] == "chain"
            assert v["speedup_mean"] == pytest.approx(chain["latency"]["mean_us"] / v["latency"]["mean_us"])
            assert v["realisation"] == pytest.approx(v["speedup_mean"] / v["rho"])
            assert v["latency"]["n"] == b["examples"]
    table = (out / "table.md").read_text()
    assert "## By input length" in table
    assert all(f"| {label} * | {n} |" in table for label, n in want)   # under 10 examples each: marked
    if importlib.util.find_spec("matplotlib"):
        assert (out / LENGTH_PLOT).is_file() and not (out / "tradeoff.png").exists()   # --no-sweep: no trade-off
    # the report again with the default edges: one bucket (<=128), the overall figures
    assert bench_main(["report", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    (bucket,) = result["length_buckets"]["buckets"]
    assert bucket["label"] == "<=128" and bucket["examples"] == 12
    assert bucket["variants"] == result["variants"]
