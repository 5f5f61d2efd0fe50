"""mpee-bench --companion (another model in the same interleaved pass) and `mpee-bench map` (several results
folders on one accuracy/latency map), on the tiny bundle and tiny stand-in full models."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from tiny_full_model import bag_weights, write_bag_model

from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bench.records import ROWS, RUN, RunRecord, read_rows
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.bundle.reference import FULL_MODELS
from mpee_runtime.core.engine import MpeeEngine

TEXTS = [("the movie is great", "entailment"), ("a boring film", "not_entailment"), ("very good acting", "entailment"),
         ("awful plot", "not_entailment"), ("it was fun", "entailment"), ("not good", "not_entailment")] * 2
SMOKE = ["--threads", "1", "--warmup", "1", "--thresholds", "0,0.6", "--keep-ratios", "0.5,1"]


def _bench(argv: list) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = bench_main([str(a) for a in argv])
    return code, stdout.getvalue(), stderr.getvalue()


def _reference(folder, vocab: int, seed: int):
    folder.mkdir()
    for j, m in enumerate(FULL_MODELS):
        write_bag_model(folder / m.file, bag_weights(vocab, seed + j))
    return folder


@pytest.fixture(scope="module")
def runs(built, tmp_path_factory):
    """Run A: the tiny bundle with its reference and a companion (a second copy of the bundle, with its own
    reference); run B: the companion alone, as its own results folder."""
    pytest.importorskip("onnx", reason="building the stand-in full models needs onnx (the runtime alone has none)")
    tmp = tmp_path_factory.mktemp("map")
    big = shutil.copytree(built / "bundle", tmp / "big")
    small = shutil.copytree(built / "bundle", tmp / "small")
    vocab = Manifest.load(big).model.vocab_size
    ref_big, ref_small = _reference(tmp / "ref_big", vocab, 1), _reference(tmp / "ref_small", vocab, 11)
    data = tmp / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in TEXTS))
    a, b = tmp / "a", tmp / "b"
    code, _, err = _bench([big, "--input", data, "--reference", ref_big, "--companion", small,
                           "--companion-reference", ref_small, "--out", a, *SMOKE])
    assert code == 0, err
    code, _, err = _bench([small, "--input", data, "--reference", ref_small, "--out", b, *SMOKE])
    assert code == 0, err
    return {"a": a, "b": b, "big": big, "small": small, "ref_small": ref_small, "data": data, "tmp": tmp}


def test_the_companion_runs_in_the_same_pass_on_its_own_inputs(runs):
    result = json.loads((runs["a"] / "results.json").read_text())
    companion = {r["variant"]: r for r in result["companion"]}
    assert list(companion) == ["companion_onnx_fused", "companion_onnx_fused_int8", "companion_mpee"]
    run = RunRecord.load(runs["a"] / RUN)
    assert run.passes[0]["variants"][-3:] == list(companion)          # one interleaved pass, with the others
    assert run.command[:2] == ["mpee-bench", str(runs["big"])]
    assert run.bundles == {"fp32": str(runs["big"]), "companion": str(runs["small"])}
    assert run.companion_flops_model == RunRecord.load(runs["b"] / RUN).flops_model
    rows = [r for r in read_rows(runs["a"] / ROWS) if r.variant == "companion_onnx_fused"]
    assert sorted(r.example for r in rows) == list(range(len(TEXTS)))
    # its answers are its own model's: the companion's fused full model on the companion's token ids
    from onnxruntime import InferenceSession
    engine = MpeeEngine(runs["small"], threads=1, warmup=0)
    sess = InferenceSession(str(runs["ref_small"] / "model_fused.onnx"), providers=["CPUExecutionProvider"])
    for r in rows:
        ids, types = engine.encode(TEXTS[r.example][0])
        logits = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types})[0]
        assert r.label_index == int(logits[0].argmax())
    # speed-ups against this run's own full models of the row's precision
    best = result["baselines"]["fp32"]
    base = next(v for v in result["variants"] if v["variant"] == best)
    c = companion["companion_onnx_fused"]
    assert best in ("onnx_full", "onnx_fused") and c["speedup_baseline"] == best
    assert c["speedup_mean"] == pytest.approx(base["latency"]["mean_us"] / c["latency"]["mean_us"])
    assert companion["companion_onnx_fused_int8"]["speedup_baseline"] == "onnx_fused_int8"
    assert "Another model, in the same pass" in (runs["a"] / "table.md").read_text()


def res_task(folder) -> str:
    return json.loads((folder / "results.json").read_text())["task"]


def test_the_map_puts_every_point_of_both_folders_on_one_front(runs, tmp_path):
    out = tmp_path / "map"
    code, stdout, err = _bench(["map", f"{runs['a']}=big", f"{runs['b']}=small", "--out", out])
    assert code == 0, err
    dmap = json.loads((out / "map.json").read_text())
    assert [m["name"] for m in dmap["models"]] == ["big", "small"] and dmap["task"] == res_task(runs["a"])
    points = dmap["points"]
    res_a = json.loads((runs["a"] / "results.json").read_text())
    res_b = json.loads((runs["b"] / "results.json").read_text())
    n_a = len(res_a["variants"]) - 1 + len(res_a["sweep"]) + len(res_a["static"])   # the A/A twin left out
    assert len(points) == n_a + len(res_a["companion"]) + len(res_b["variants"]) - 1 + len(res_b["sweep"]) + len(
        res_b["static"])
    assert not any(p["variant"] == "chain_aa" for p in points)
    # the companion rows belong to the model of the same shape among the other folders: "small"
    assert {p["model"] for p in points if p["variant"].startswith("companion_")} == {"small"}
    # the front: exactly the points no other point beats in latency and accuracy
    for p in points:
        beaten = any(q["mean_ms"] <= p["mean_ms"] and q["metric"] >= p["metric"] and
                     (q["mean_ms"] < p["mean_ms"] or q["metric"] > p["metric"]) for q in points)
        assert p["on_front"] == (not beaten), p
    # at the latency of each full fp32 model: the most accurate point of every other model at or below it
    assert dmap["answers"]
    for a in dmap["answers"]:
        fit = [p for p in points if p["model"] == a["model"] and p["mean_ms"] <= a["at_ms"]]
        if not fit:
            assert a["best"] is None
            continue
        assert a["best"]["metric"] == max(p["metric"] for p in fit)
        assert a["gain_points"] == pytest.approx(100 * (a["best"]["metric"] - a["at_metric"]))
        assert a["same_pass"] == (a["best"]["folder"] == next(
            p["folder"] for p in points if p["model"] == a["at_model"] and p["variant"] == a["at_variant"]
            and p["mean_ms"] == a["at_ms"]))
    table = (out / "map.md").read_text()
    assert f"`mpee-bench {runs['big']} --input" in table
    assert f"mpee-run {runs['big']} --policy entropy --threshold 0.6 --keep-ratio 0.5" in table
    assert "## At the latency of a full model" in table and "wrote" in stdout


def test_map_bad_input_is_one_line(runs, tmp_path, capsys):
    assert bench_main(["map", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:") and "no results.json" in err[0]
    assert bench_main(["map", f"{runs['a']}=x", f"{runs['b']}=x", "--out", str(tmp_path / "m")]) == 2
    assert "same model name" in capsys.readouterr().err
    # A task named otherwise (a task on the user's files is named after its training folder) is the same data set
    # when the examples are: one map. Other examples (their gold labels differ) are refused.
    other = shutil.copytree(runs["b"], tmp_path / "other")
    data = json.loads((other / "results.json").read_text())
    data["task"] = "imdb_elsewhere"
    (other / "results.json").write_text(json.dumps(data))
    assert bench_main(["map", f"{runs['a']}=A", f"{other}=B", "--out", str(tmp_path / "same")]) == 0
    assert json.loads((tmp_path / "same" / "map.json").read_text())["task"] == "dev.jsonl"   # tasks differ: the file
    assert bench_main(["map", f"{runs['a']}=A", f"{other}=B", "--title", "IMDB", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "map.md").read_text().startswith("# Deployment map: IMDB\n")
    capsys.readouterr()
    run = json.loads((other / "run.json").read_text())
    run["gold"] = [1 - g for g in run["gold"]]
    (other / "run.json").write_text(json.dumps(run))
    assert bench_main(["map", str(runs["a"]), str(other), "--out", str(tmp_path / "m")]) == 2
    assert "measured different examples" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_companion_reference_needs_the_companion(runs, tmp_path, capsys):
    code = bench_main([str(runs["big"]), "--input", str(runs["data"]), "--companion-reference",
                       str(runs["ref_small"]), "--out", str(tmp_path / "x"), *SMOKE])
    assert code == 2 and "--companion-reference needs --companion" in capsys.readouterr().err
