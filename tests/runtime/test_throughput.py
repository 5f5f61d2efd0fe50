"""mpee-bench --throughput on the tiny bundle against tiny full models (a masked bag of embeddings written
with onnx: padding-invariant, so padded batches must give the unpadded answers): every variant at every
batch size, the record round-trips, MPEE's labels are engine.predict's, bad options write nothing."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest

from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bench.throughput.cli import strip_command, wants_throughput
from mpee_runtime.bench.throughput.records import ThroughputRecord
from mpee_runtime.bench.throughput.report import PLOT, RECORD, TABLE
from mpee_runtime.bench.throughput.run import parse_batch_sizes
from mpee_runtime.bench.throughput.runners import make_batches, ready_us
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.bundle.reference import FUSED, FUSED_INT8
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.padding import pad_rows

onnx = pytest.importorskip("onnx")
from tiny_full_model import bag_weights, write_bag_model

TEXTS = [("the movie is great", "entailment"), ("a boring film", "not_entailment"),
         ("very good acting and plot", "entailment"), ("awful plot", "not_entailment"),
         ("it was fun", "entailment"), ("not good , not fun , and the acting was awful !", "not_entailment")] * 2


def _expected_full(engine: MpeeEngine, weights: dict[str, np.ndarray]) -> list[int]:
    """The full model's labels, computed with numpy on each example alone (no padding)."""
    out = []
    for text, _ in TEXTS:
        ids, types = engine.encode(text)
        s = (weights["words"][ids[0]] + weights["types"][types[0]]).sum(axis=0)
        out.append(int((s @ weights["head"]).argmax()))
    return out


@pytest.fixture(scope="module")
def folders(built, tmp_path_factory):
    """The tiny bundle, a reference folder with an fp32 and an "int8" full model, and a labelled file."""
    tmp = tmp_path_factory.mktemp("throughput")
    bundle = built / "bundle"
    vocab = Manifest.load(bundle).model.vocab_size
    ref = tmp / "ref"
    ref.mkdir()
    weights = {FUSED: bag_weights(vocab, 1), FUSED_INT8: bag_weights(vocab, 2)}
    for name, w in weights.items():
        write_bag_model(ref / name, w)
    data = tmp / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in TEXTS))
    return bundle, ref, data, weights, tmp


def _bench(argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = bench_main([str(a) for a in argv])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def run(folders):
    """One short run: batch sizes 1 and 4, one repetition, 2 threads, the tiny bundle as --int8 too."""
    bundle, ref, data, _, tmp = folders
    out = tmp / "out"
    code, stdout, stderr = _bench(["--throughput", bundle, "--input", data, "--reference", ref, "--int8", bundle,
                                   "--batch-sizes", "1,4", "--repeats", "1", "--warmup", "1", "--threads", "2",
                                   "--out", out])
    assert code == 0, stderr
    return out, stdout, stderr


KEYS = ["onnx_fused/single", "onnx_fused_aa/single", "onnx_fused/parallel", "mpee/single", "mpee/parallel",
        "onnx_fused_int8/single", "onnx_fused_int8/parallel", "mpee_int8/single", "mpee_int8/parallel"]


def test_every_variant_at_every_batch_size(run):
    out, stdout, _ = run
    data = json.loads((out / RECORD).read_text())
    rec = ThroughputRecord.from_dict(data)
    assert rec.to_dict() == data                                  # one typed record, read back as written
    assert ThroughputRecord.load(out / RECORD).to_dict() == data
    assert rec.settings.batch_sizes == [1, 4] and rec.settings.examples == len(TEXTS) and rec.gold is not None
    assert [(r.batch_size, r.key) for r in rec.rows] == [(b, k) for b in (1, 4) for k in KEYS]
    for r in rec.rows:
        assert r.texts_per_s > 0 and len(r.pass_s) == 1 and r.texts == len(TEXTS)
        assert r.texts_per_s == pytest.approx(r.texts / r.pass_s[0])
        assert 0 < r.latency.p50_us <= r.latency.p99_us and r.latency.n == len(TEXTS)
        assert r.batches == -(-len(TEXTS) // r.batch_size)
        assert (r.sessions, r.threads_per_session) == ((1, 2) if r.way == "single" else (2, 1))
        assert r.accuracy is not None and 0 <= r.accuracy <= 1 and r.agreement == 1.0
        assert r.latency_source == ("engine" if r.kind == "mpee" else "batch_end")
        assert r.baseline in (f"{r.variant.removesuffix('_aa')}/single", f"{r.variant.removesuffix('_aa')}/parallel",
                              "onnx_fused/single", "onnx_fused/parallel", "onnx_fused_int8/single",
                              "onnx_fused_int8/parallel")
    by = {(r.batch_size, r.key): r for r in rec.rows}
    for c in rec.comparisons:                                     # best MPEE way over best full-model way
        name = "onnx_fused" if c.precision == "fp32" else "onnx_fused_int8"
        mpee = "mpee" if c.precision == "fp32" else "mpee_int8"
        base = max((by[(c.batch_size, f"{name}/{w}")] for w in ("single", "parallel")), key=lambda r: r.texts_per_s)
        best = max((by[(c.batch_size, f"{mpee}/{w}")] for w in ("single", "parallel")), key=lambda r: r.texts_per_s)
        assert (c.baseline, c.best_mpee) == (base.key, best.key)
        assert c.speedup == pytest.approx(best.texts_per_s / base.texts_per_s)
        assert by[(c.batch_size, best.key)].speedup == pytest.approx(c.speedup)
    assert [(c.batch_size, c.precision) for c in rec.comparisons] == [(1, "fp32"), (1, "int8"), (4, "fp32"),
                                                                      (4, "int8")]
    assert [(a.batch_size, a.variants) for a in rec.aa] == [(b, ["onnx_fused/single", "onnx_fused_aa/single"])
                                                            for b in (1, 4)]
    a = rec.aa[0]
    x, y = by[(1, "onnx_fused/single")].texts_per_s, by[(1, "onnx_fused_aa/single")].texts_per_s
    assert a.texts_per_s_spread == pytest.approx(abs(x - y) / ((x + y) / 2))
    assert data["aa"][0]["flagged"] == a.flagged
    assert rec.environment["threads"] == 2 and rec.environment["thread_pool"] == "session"
    assert any("timings_us" in n for n in rec.notes) and any("holds fp32 graphs" in n for n in rec.notes)
    table = (out / TABLE).read_text()
    assert table.count("\n| 4 | ") == len(KEYS) + 2 and "A/A control: onnx_fused/single and onnx_fused_aa/single" in table
    assert "| 1 | mpee | single (1 x 2 threads) | fp32 |" in table
    assert "A/A control" in stdout and "best MPEE" in stdout
    if importlib.util.find_spec("matplotlib"):
        assert (out / PLOT).stat().st_size > 0


def test_labels_equal_predict_and_unpadded_full_model(run, folders):
    """MPEE at every batch size and way gives engine.predict's labels; the full models on padded batches give
    the labels of each example alone (so the attention mask reached the graph)."""
    bundle, _, _, weights, _ = folders
    rec = ThroughputRecord.load(run[0] / RECORD)
    engine = MpeeEngine(bundle, threads=1)
    alone = [engine.predict(t).label_index for t, _ in TEXTS]
    full = {"onnx_fused": _expected_full(engine, weights[FUSED]),
            "onnx_fused_int8": _expected_full(engine, weights[FUSED_INT8])}
    for r in rec.rows:
        want = alone if r.kind == "mpee" else full[r.variant.removesuffix("_aa")]
        assert r.predictions == want, (r.key, r.batch_size)
    gold = [engine.labels.index(y) for _, y in TEXTS]
    mpee = next(r for r in rec.rows if r.key == "mpee/single")
    assert mpee.accuracy == pytest.approx(np.mean(np.asarray(alone) == gold))


def test_throughput_report_again_from_the_record(run, tmp_path):
    out = run[0]
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(out / RECORD, again / RECORD)
    code, _, stderr = _bench(["throughput-report", again])
    assert code == 0, stderr
    assert (again / TABLE).read_text() == (out / TABLE).read_text()
    assert json.loads((again / RECORD).read_text()) == json.loads((out / RECORD).read_text())
    code, _, stderr = _bench(["throughput-report", tmp_path / "none"])
    assert code == 2 and stderr.startswith("Error:") and "not found" in stderr


@pytest.mark.parametrize("change, message", [
    ({"--batch-sizes": "1,0"}, "batch size is at least 1, got 0"),
    ({"--batch-sizes": "1,x"}, "comma-separated whole numbers"),
    ({"--repeats": "0"}, "--repeats must be at least 1"),
    ({"--threads": "0"}, "--threads must be at least 1"),
    ({"--reference": "EMPTY"}, f"no {FUSED} or model.onnx"),
    ({"--reference": "MISSING"}, "not a folder"),
])
def test_bad_options_exit_2_and_write_nothing(folders, tmp_path, change, message):
    bundle, ref, data, _, _ = folders
    (tmp_path / "EMPTY").mkdir()
    opts = {"--input": data, "--reference": ref, "--batch-sizes": "1", "--repeats": "1", "--threads": "1"}
    for k, v in change.items():
        opts[k] = tmp_path / v if v in ("EMPTY", "MISSING") else v
    out = tmp_path / "out"
    code, stdout, stderr = _bench(["throughput", bundle, *[x for kv in opts.items() for x in kv], "--out", out])
    assert code == 2 and not out.exists() and stdout == ""
    assert stderr.startswith("Error:") and stderr.count("\n") == 1 and message in stderr, stderr


def test_batches_sorted_by_length_and_padded():
    texts, lengths = ["a", "b", "c", "d", "e"], [5, 2, 9, 2, 4]
    batches = make_batches(texts, None, lengths, 2)
    assert [b.texts for b in batches] == [["b", "d"], ["e", "a"], ["c"]]      # by length, ties by position
    assert [b.tokens for b in batches] == [2, 5, 9] and batches[0].pairs is None
    rows = [(np.asarray([[2, 7, 3]]), np.asarray([[0, 0, 0]])), (np.asarray([[2, 3]]), np.asarray([[0, 1]]))]
    ids, mask, types = pad_rows(rows)
    assert ids.tolist() == [[2, 7, 3], [2, 3, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert types.tolist() == [[0, 0, 0], [0, 1, 0]] and ids.dtype == np.int64
    assert parse_batch_sizes("16,1,4,4") == [1, 4, 16]
    assert wants_throughput(["throughput", "b"]) and wants_throughput(["b", "--throughput"])
    assert not wants_throughput(["b", "--input", "x"])
    assert strip_command(["throughput", "b"]) == ["b"] and strip_command(["b", "--throughput", "-x"]) == ["b", "-x"]


def test_refused_where_the_process_wide_pool_exists(folders, tmp_path, monkeypatch):
    """Every session would run on onnxruntime's process-wide pool: the thread counts would be wrong."""
    from mpee_runtime.core import session
    bundle, ref, data, _, _ = folders
    monkeypatch.setattr(session, "global_pool_width", lambda threads=None: 4)
    out = tmp_path / "out"
    code, _, stderr = _bench(["--throughput", bundle, "--input", data, "--reference", ref, "--out", out])
    assert code == 2 and "process-wide thread pool" in stderr and not out.exists()


def test_ready_times_from_the_engine_timings():
    """Rows run together: each total is from the batch's start; row by row: the running sum."""
    preds = [SimpleNamespace(timings_us={"total": t}) for t in (1.0, 2.0, 3.0)]
    assert ready_us(preds, together=True) == [1.0, 2.0, 3.0]
    assert ready_us(preds, together=False) == [1.0, 3.0, 6.0]
    assert ready_us([*preds, SimpleNamespace(timings_us={})], together=True) is None
