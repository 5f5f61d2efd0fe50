"""mpee-bench against the full models of `mpee-export reference` (optimum export, fused, fused int8): the
measuring pass runs where torch cannot be imported, PyTorch is timed in a pass of its own, and the report
joins them: baselines and speed-ups recomputed from the rows, the A/A pair, the notes of older folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import tiny_model
from transformers import AutoTokenizer

from mpee_export.baselines.bench_pytorch import main as pytorch_main
from mpee_export.cli.export import export
from mpee_export.model.checkpoint import save_checkpoint
from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bench.records import PYTORCH_ROWS, ROWS, RUN, RunRecord, read_rows
from mpee_runtime.bundle.reference import FUSED, FUSED_INT8, REFERENCE_RECORD, ReferenceRecord

pytest.importorskip("optimum.exporters.onnx")
pytestmark = pytest.mark.integration

TEXTS = [("the movie is great", 1), ("a boring film", 0), ("fun", 1)]
NO_TORCH = ("import sys\nfor m in ('torch', 'transformers'): sys.modules[m] = None\n"
            "from mpee_runtime.bench.cli import main\nsys.exit(main(sys.argv[1:]))")


def _folders(tmp_path, backbone, **model_kw):
    model = tiny_model(layers=3, prune_layers=[1], task="sst2", **model_kw)
    ckpt, ref = tmp_path / "ckpt", tmp_path / "ref"
    save_checkpoint(model, AutoTokenizer.from_pretrained(str(backbone)), ckpt)
    runner = CliRunner()
    for args in (["reference", str(ckpt), str(ref)], ["run", str(ckpt), str(tmp_path / "b")],
                 ["run", str(ckpt), str(tmp_path / "b8"), "--quantize", "int8"]):
        res = runner.invoke(export, args)
        assert res.exit_code == 0, res.output
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t} \t{y}\n" for t, y in TEXTS))
    return model, ref, data


def _measure_without_torch(args):
    res = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr
    return res


@dataclass
class Bench:
    """One full benchmark of the tiny model: measured where torch cannot be imported, PyTorch in a pass
    of its own, then `mpee-bench report`."""

    model: object
    folder: Path
    ref: Path
    data: Path
    out: Path
    measure_stdout: str
    interleaved: list[str]
    result: dict

    @property
    def rows(self) -> dict[str, dict]:
        return {v["variant"]: v for v in self.result["variants"]}

    @property
    def best_fp32(self) -> str:
        full, fused = self.rows["onnx_full"], self.rows["onnx_fused"]
        return min((full, fused), key=lambda r: r["latency"]["mean_us"])["variant"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, shared_backbone) -> Bench:
    folder = tmp_path_factory.mktemp("bench")
    model, ref, data = _folders(folder, shared_backbone)
    out = folder / "bench"
    res = _measure_without_torch([folder / "b", "--input", data, "--reference", ref, "--int8", folder / "b8",
                                  "--out", out, "--threads", "1", "--warmup", "1", "--no-sweep"])
    interleaved = RunRecord.load(out / RUN).passes[0]["variants"]
    pt = CliRunner().invoke(pytorch_main, [str(ref), "--input", str(data), "--threads", "1", "--out", str(out),
                                           "--warmup", "1"])
    assert pt.exit_code == 0, pt.output
    assert bench_main(["report", str(out)]) == 0
    return Bench(model, folder, ref, data, out, res.stdout, interleaved,
                 json.loads((out / "results.json").read_text()))


def test_measuring_leaves_pytorch_to_its_own_pass(bench):
    assert "pytorch: not measured yet" in bench.measure_stdout and "mpee_export.baselines.bench_pytorch" in bench.measure_stdout
    assert "pytorch" not in bench.interleaved
    assert {"onnx_full", "onnx_fused", "onnx_fused_int8", "chain_aa"} <= set(bench.interleaved)
    assert {r.variant for r in read_rows(bench.out / ROWS)} == set(bench.interleaved)
    assert {r.variant for r in read_rows(bench.out / PYTORCH_ROWS)} == {"pytorch"}


def test_report_joins_the_passes(bench):
    assert list(bench.rows) == ["pytorch", "onnx_full", "onnx_fused", "onnx_fused_int8", "chain", "chain_aa",
                                "exits", "pruning", "mpee", "chain_int8", "mpee_int8", "graph", "mpee_graph",
                                "mpee_int8_graph"]
    assert [p["variants"] for p in bench.result["measurement"]["passes"]] == [bench.interleaved, ["pytorch"]]
    assert not any("not measured yet" in n for n in bench.result["notes"])


def test_baselines_are_the_best_full_model_of_each_precision(bench):
    b = bench.result["baselines"]
    assert (b["fp32"], b["int8"], b["plain_fp32"]) == (bench.best_fp32, "onnx_fused_int8", "onnx_full")
    assert {r["variant"] for r in bench.result["variants"] if r["precision"] == "int8"} == {
        "onnx_fused_int8", "chain_int8", "mpee_int8", "mpee_int8_graph"}


def test_speedups_recomputed_from_the_rows(bench):
    rows, full = bench.rows, bench.rows["onnx_full"]
    for row in bench.result["variants"]:
        base = rows[bench.best_fp32] if row["precision"] == "fp32" else rows["onnx_fused_int8"]
        assert row["speedup_baseline"] == base["variant"]
        assert row["speedup_mean"] == pytest.approx(base["latency"]["mean_us"] / row["latency"]["mean_us"])
        assert row["speedup_p50"] == pytest.approx(base["latency"]["p50_us"] / row["latency"]["p50_us"])
        assert row["speedup_mean_vs_plain_fp32"] == pytest.approx(full["latency"]["mean_us"] / row["latency"]["mean_us"])


def test_reference_recipe_is_reported(bench):
    record = ReferenceRecord.load(bench.ref)
    assert bench.result["reference_export"]["recipe"] == record.recipe
    assert record.recipe in bench.rows["onnx_fused_int8"]["description"]


def test_every_full_depth_variant_gives_the_same_answers(bench):
    rows = bench.rows
    assert rows["pytorch"]["accuracy"] == rows["onnx_full"]["accuracy"] == rows["onnx_fused"]["accuracy"] \
        == rows["chain"]["accuracy"]
    assert rows["chain_int8"]["mean_exit_layer"] == 3
    assert rows["chain_int8"]["rho"] == pytest.approx(rows["chain"]["rho"])


def test_aa_control(bench):
    """The A/A pair: reported, recomputed from its rows, flagged above 3%, named under the table."""
    aa, rows = bench.result["aa_control"], bench.rows
    a_mean, b_mean = rows["chain"]["latency"]["mean_us"], rows["chain_aa"]["latency"]["mean_us"]
    assert aa["variants"] == ["chain", "chain_aa"]
    assert aa["mean_spread"] == pytest.approx(abs(a_mean - b_mean) / ((a_mean + b_mean) / 2))
    assert aa["flagged"] == (max(aa["mean_spread"], aa["p50_spread"]) > 0.03)
    assert (bench.result["warning"] is not None) == aa["flagged"]
    table = (bench.out / "table.md").read_text()
    assert f"fp32: {bench.best_fp32}, int8: onnx_fused_int8" in table and "vs plain fp32 (onnx_full)" in table
    assert "A/A control: chain and chain_aa" in table


def test_chain_flops_count_every_exit_head(bench, shared_backbone):
    """The chain runs every layer's exit head, the full model one head, on the same lengths."""
    fm = bench.model.flops_model
    tok = AutoTokenizer.from_pretrained(str(shared_backbone))
    lens = [len(tok(t)["input_ids"]) for t, _ in TEXTS]
    executed = [3 * (fm.layer_flops(n, n) + fm.exit_flops()) for n in lens]
    chain = bench.rows["chain"]
    assert chain["rho"] == pytest.approx(sum(fm.full_flops(n) for n in lens) / sum(executed)) and chain["rho"] < 1


def test_older_reference_folder(bench):
    """model.onnx and hf/ only: what is there runs, the notes say what is missing."""
    old = bench.folder / "old_ref"
    shutil.copytree(bench.ref, old)
    for name in (FUSED, FUSED_INT8, REFERENCE_RECORD):
        (old / name).unlink()
    out = bench.folder / "bench_old"
    assert bench_main([str(bench.folder / "b"), "--input", str(bench.data), "--reference", str(old), "--int8",
                       str(bench.folder / "b8"), "--out", str(out), "--threads", "1", "--warmup", "0",
                       "--no-sweep"]) == 0
    result = json.loads((out / "results.json").read_text())
    names = [v["variant"] for v in result["variants"]]
    assert "onnx_full" in names and "onnx_fused" not in names and "onnx_fused_int8" not in names
    assert (result["baselines"]["fp32"], result["baselines"]["int8"]) == ("onnx_full", "onnx_full")
    assert any("no model_fused.onnx" in n for n in result["notes"])
    assert any("no model_fused_int8.onnx" in n for n in result["notes"])


def test_mean_pooled_pytorch_row(tmp_path, shared_backbone):
    """A mean-pooled model: the PyTorch row (exit L's head on the token mean) agrees with the reference graph
    and the chain."""
    _, ref, data = _folders(tmp_path, shared_backbone, exit_pooling="mean")
    out = tmp_path / "bench"
    assert bench_main([str(tmp_path / "b"), "--input", str(data), "--reference", str(ref), "--out", str(out),
                       "--threads", "1", "--warmup", "1", "--no-sweep"]) == 0
    res = CliRunner().invoke(pytorch_main, [str(ref), "--input", str(data), "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert bench_main(["report", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["variants"]}
    assert rows["pytorch"]["accuracy"] == rows["onnx_full"]["accuracy"] == rows["chain"]["accuracy"]
