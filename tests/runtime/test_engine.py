"""The device runtime on the tiny bundle: same answers as PyTorch, refusals, robustness, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpee_runtime.bundle.contract import MANIFEST, TOKENIZER, layer_file
from mpee_runtime.bundle.integrity import seal
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.errors import MpeeRuntimeError


@pytest.fixture(scope="module")
def engine(built) -> MpeeEngine:
    return MpeeEngine(built / "bundle", threads=1)


def test_same_answers_as_pytorch(engine, expected):
    assert len(expected) == 25
    for case in expected:
        pred = engine.predict(case["text"], case["pair"], threshold=case["threshold"], keep_ratio=case["keep_ratio"],
                              policy="entropy")
        assert (pred.label, pred.exit_layer) == (case["label"], case["exit_layer"]), case
        assert pred.tokens_per_layer == case["tokens_per_layer"]
        np.testing.assert_allclose(pred.probs, case["probs"], atol=1e-5)


def test_prediction_fields(engine):
    pred = engine.predict("the movie is great", threshold=0.0)
    assert pred.exit_layer == 3 and len(pred.timings_us["layers"]) == 3
    assert {"tokenize", "embeddings", "layers", "total"} <= set(pred.timings_us)
    assert pred.flops == engine.flops_model.executed_flops(pred.tokens_per_layer, pred.ffn_tokens_per_layer)
    assert pred.rho == pytest.approx(engine.flops_model.full_flops(pred.tokens_per_layer[0]) / pred.flops)
    early = engine.predict("the movie is great", threshold=10.0)     # above log 2: stops at layer 1
    assert early.exit_layer == 1 and early.rho > 2
    for policy, thr in (("normalized_entropy", 1.0), ("max_prob", 0.0), ("patience", 0), ("depth", 1)):
        assert engine.predict("great", policy=policy, threshold=thr).exit_layer == 1
    assert [engine.predict("great", policy="depth", threshold=k).exit_layer for k in (2, 3, 2)] == [2, 3, 2]


def test_bad_knobs(engine):
    engine.predict("x", threshold=0.5, keep_ratio=0.5)      # valid knobs are cached; bad ones still refused
    with pytest.raises(MpeeRuntimeError, match="threshold"):
        engine.predict("x", threshold=-1.0)
    with pytest.raises(MpeeRuntimeError, match="keep ratio"):
        engine.predict("x", keep_ratio=0.0)
    with pytest.raises(MpeeRuntimeError, match="policy"):
        engine.predict("x", policy="vote")


def test_patience_state_is_per_request(engine):
    # Patience counts agreeing layers within one sample; a rule reused across requests would carry the count over.
    first = [engine.predict(t, policy="patience", threshold=1).exit_layer for t in ("great", "a boring film")]
    again = [engine.predict(t, policy="patience", threshold=1).exit_layer for t in ("great", "a boring film")]
    assert first == again and all(e >= 2 for e in first)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), pair=st.one_of(st.none(), st.text(max_size=300)),
       ratio=st.floats(0.01, 1.0), threshold=st.floats(0.0, 1.0))
def test_arbitrary_unicode_never_crashes(engine, text, pair, ratio, threshold):
    pred = engine.predict(text, pair, keep_ratio=ratio, threshold=threshold)
    assert 1 <= pred.exit_layer <= 3 and abs(sum(pred.probs) - 1) < 1e-4
    assert 2 <= pred.tokens_per_layer[0] <= engine.manifest.model.max_length


@pytest.mark.parametrize("text,pair", [("", None), ("   \t\n ", None), ("x" * 10_000, None),
                                       ("\x00\x01\x7f\u200b\ufeff", "\U0001F600 ñ 漢字 عربى"),
                                       ("word " * 5000, "other " * 5000), ("", "")])
def test_edge_inputs(engine, text, pair):
    pred = engine.predict(text, pair, threshold=0.0)
    assert pred.exit_layer == 3
    assert pred.tokens_per_layer[0] <= engine.manifest.model.max_length


def _refused(bundle: Path, monkeypatch, needle: str) -> None:
    def no_session(*a, **k):
        raise AssertionError("a session was created before the bundle was verified")
    monkeypatch.setattr(ort, "InferenceSession", no_session)
    with pytest.raises(MpeeRuntimeError, match=needle):
        MpeeEngine(bundle)


def test_tampered_graph_refused(bundle, monkeypatch):
    path = bundle / layer_file(1)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    _refused(bundle, monkeypatch, "sha256")


def test_missing_file_refused(bundle, monkeypatch):
    (bundle / TOKENIZER).unlink()
    _refused(bundle, monkeypatch, "missing")


def test_path_outside_bundle_refused(bundle, monkeypatch):
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["graphs"][2]["file"] = "../elsewhere.onnx"
    (bundle / MANIFEST).write_text(json.dumps(seal(manifest)))   # re-sealed: the path check's turn
    _refused(bundle, monkeypatch, "outside")


@pytest.mark.parametrize("version", [0, 1, 2, 10, "3", None, True])
def test_unknown_schema_refused(bundle, monkeypatch, version):
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["schema_version"] = version
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    _refused(bundle, monkeypatch, "schema_version")


def test_not_a_bundle(tmp_path, monkeypatch):
    _refused(tmp_path, monkeypatch, "manifest")


def test_cli_text_and_files(built, tmp_path, capsys):
    bundle = built / "bundle"
    assert run_cli([str(bundle), "the movie is great", "--threshold", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exit_layer"] == 3 and out["label"] in ("entailment", "not_entailment")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "great film", "label": "entailment"}\n{"text": "bad", "text_pair": "awful", "label": "not_entailment"}\n')
    preds = tmp_path / "preds.jsonl"
    assert run_cli([str(bundle), "--input", str(jsonl), "--output", str(preds), "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1]
    assert set(lines[0]) == {"index", "label", "exit_layer", "probs", "tokens_per_layer", "ffn_tokens_per_layer"}
    # the summary scores the written predictions against the gold labels
    right = [lines[0]["label"] == "entailment", lines[1]["label"] == "not_entailment"]
    assert summary["examples"] == 2 and summary["latency"]["p99_us"] > 0
    assert summary["metric_name"] == "accuracy" and summary["accuracy"] == summary["metric"] == sum(right) / 2


@pytest.mark.parametrize("args,needle", [
    (["--threshold", "-1", "x"], "threshold"), (["--keep-ratio", "2", "x"], "keep ratio"), ([], "TEXT"),
    (["--input", "/nonexistent.jsonl"], "not found"), (["x", "--output", "o.jsonl"], "--input"),
])
def test_cli_bad_input(built, capsys, args, needle):
    assert run_cli([str(built / "bundle"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error") and needle in err and err.count("\n") == 1


@pytest.mark.integration
def test_runtime_imports_no_torch():
    """Every module of the runtime but the server (whose stack is an extra) imported in one fresh process."""
    code = ("import importlib, pkgutil, sys, mpee_runtime\n"
            "for m in pkgutil.walk_packages(mpee_runtime.__path__, 'mpee_runtime.'):\n"
            "    if not m.name.startswith(('mpee_runtime.serve', 'mpee_runtime.__main__')): importlib.import_module(m.name)\n"
            "bad = [m for m in ('torch', 'transformers', 'mpee_export') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_glue_tsv_with_pairs(built, tmp_path, capsys):
    """A GLUE TSV (RTE layout, the tiny bundle's task) is read by the columns the manifest names."""
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("index\tsentence1\tsentence2\tlabel\n0\tthe movie is great\tit was fun\tentailment\n"
                   "1\ta boring film\tthe plot is not good\tnot_entailment\n2\tit\tit\tentailment\n")
    preds = tmp_path / "preds.jsonl"
    assert run_cli([str(built / "bundle"), "--input", str(tsv), "--output", str(preds), "--threshold", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 3 and summary["metric_name"] == "accuracy"
    assert summary["mean_exit_layer"] == 3
    engine = MpeeEngine(built / "bundle", threads=1, warmup=0)
    # the knobs applied, not nulls: the threshold given, the bundle's policy and keep ratio
    ratios = sorted(set(engine.default_keep_ratios.values()))
    assert (summary["policy"], summary["threshold"]) == (engine.default_policy, 0.0)
    assert summary["keep_ratio"] == (ratios[0] if len(ratios) == 1 else [engine.default_keep_ratios[i] for i in
                                                                         sorted(engine.default_keep_ratios)])
    got = [json.loads(x) for x in preds.read_text().splitlines()]
    want = engine.predict("a boring film", "the plot is not good", threshold=0.0)
    assert got[1]["label"] == want.label and got[1]["probs"] == [round(p, 6) for p in want.probs]
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\tonly two\tfields\n")
    assert run_cli([str(built / "bundle"), "--input", str(bad)]) == 2
    assert "bad.tsv:2" in capsys.readouterr().err


_POOLS = """
import json, sys
from mpee_runtime import MpeeEngine
bundle = sys.argv[1]
texts = ["a fine film", "dull , flat and far too long", "the acting is good but the plot is not"]
engines = [MpeeEngine(bundle, threads=2),                          # a pool per session, spinning during a run
           MpeeEngine(bundle, threads=2, spinning=False),
           MpeeEngine(bundle, threads=1, thread_pool="global"),     # creates the process-wide pool, 1 thread
           MpeeEngine(bundle, threads=2)]                          # must use it now: onnxruntime's rule
preds = [[(p.exit_layer, p.label_index, p.probs) for p in (e.predict(t, threshold=0.3) for t in texts)]
         for e in engines]
print(json.dumps({"pools": [(e.thread_pool, e.threads) for e in engines], "preds": preds}))
"""


@pytest.mark.integration
def test_thread_pools(built):
    """The global pool is process-wide state: checked in a fresh process. Once it exists every engine runs on
    it (onnxruntime refuses sessions with pools of their own), and every setting gives the same predictions."""
    res = subprocess.run([sys.executable, "-c", _POOLS, str(built / "bundle")], check=False, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["pools"] == [["session", 2], ["session", 2], ["global", 1], ["global", 1]]
    ref = out["preds"][0]
    for preds in out["preds"][1:]:
        assert [p[:2] for p in preds] == [p[:2] for p in ref]
        np.testing.assert_allclose([p[2] for p in preds], [p[2] for p in ref], atol=1e-6)


def test_bad_thread_pool(built):
    with pytest.raises(MpeeRuntimeError, match="thread pool"):
        MpeeEngine(built / "bundle", thread_pool="shared")
