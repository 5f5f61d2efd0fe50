"""Length-aware operating points (schema 9, manifest exit.length_points): a run that sets no knob runs each text
at its length's point, in every path (predict, batches of mixed lengths, the single graph, the server's
backend); a knob given overrides them; bad tables are refused naming the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from make_bundle import WORDS

from mpee_runtime.bundle.contract import MANIFEST
from mpee_runtime.bundle.integrity import seal
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.serve.backends import Knobs, MpeeBackend, Row

POINTS = [{"max_tokens": 6, "threshold": 0.69, "keep_ratio": 1.0},
          {"max_tokens": 12, "threshold": 0.6, "keep_ratio": 0.3},
          {"max_tokens": None, "threshold": 0.0, "keep_ratio": None}]


def _with_points(src: Path, dst: Path, points) -> Path:
    bundle = Path(shutil.copytree(src, dst))
    data = json.loads((bundle / MANIFEST).read_text())
    data.pop("integrity", None)
    data["exit"]["length_points"] = points
    (bundle / MANIFEST).write_text(json.dumps(seal(data)))
    return bundle


@pytest.fixture(scope="module")
def bundle(built, tmp_path_factory) -> Path:
    return _with_points(built / "bundle", tmp_path_factory.mktemp("points") / "bundle", POINTS)


def _texts() -> list[str]:
    words = [w for w in WORDS if w.isalpha() and len(w) > 1]
    return [" ".join(words[(3 * i + j) % len(words)] for j in range(1 + i % 15)) for i in range(30)]


def _point(manifest: Manifest, n: int) -> dict:
    p = manifest.exit.point_for(n)
    return {"threshold": p.threshold, "keep_ratio": p.keep_ratio}


def _same(a, b, tol: float = 0.0) -> None:
    assert (a.label, a.exit_layer, a.tokens_per_layer, a.ffn_tokens_per_layer) == (
        b.label, b.exit_layer, b.tokens_per_layer, b.ffn_tokens_per_layer)
    assert max(abs(x - y) for x, y in zip(a.probs, b.probs)) <= tol


@pytest.mark.parametrize("engine_kind", ["chain", "graph"])
def test_each_text_runs_at_its_lengths_point(bundle, engine_kind):
    engine = MpeeEngine(bundle, threads=1, engine=engine_kind)
    m = engine.manifest
    assert [p.max_tokens for p in m.exit.length_points] == [6, 12, None]
    seen = set()
    for text in _texts():
        n = engine.encode(text)[0].shape[1]
        seen.add(m.exit.point_for(n).max_tokens)
        _same(engine.predict(text), engine.predict(text, **_point(m, n)))
        _same(engine.predict(text, policy=engine.default_policy), engine.predict(text, **_point(m, n)))
    assert seen == {6, 12, None}   # every bucket was exercised
    # a knob given: the table is off
    text = _texts()[-1]
    _same(engine.predict(text, threshold=0.69), engine.predict(text, threshold=0.69, keep_ratio=None))
    # the table changes answers: some text runs otherwise than at the bundle's default point
    default = {"threshold": engine.default_threshold, "keep_ratio": None}
    assert any((engine.predict(t).exit_layer, engine.predict(t).tokens_per_layer)
               != (engine.predict(t, **default).exit_layer, engine.predict(t, **default).tokens_per_layer)
               for t in _texts())
    explicit = engine.predict(text, keep_ratio=1.0)   # the default threshold, not the row's
    _same(explicit, engine.predict(text, threshold=engine.default_threshold, keep_ratio=1.0))


def test_batches_of_mixed_lengths_give_each_rows_point(bundle):
    engine = MpeeEngine(bundle, threads=1)
    texts = _texts()
    alone = [engine.predict(t) for t in texts]
    for slack in (None, 0.25):
        for got, want in zip(engine.predict_batch(texts, pad_slack=slack), alone):
            _same(got, want, tol=1e-5)
    answers = MpeeBackend(engine).run([Row(t, None) for t in texts], Knobs(None, None, None))
    assert [(a.label, a.exit_layer, a.tokens_per_layer) for a in answers] == [
        (p.label, p.exit_layer, p.tokens_per_layer) for p in alone]
    assert MpeeBackend(engine).summary().length_points[1] == {"max_tokens": 12, "threshold": 0.6, "keep_ratio": 0.3}


@pytest.mark.parametrize("points, needle", [
    ([{"max_tokens": 12, "threshold": 0.6}, {"max_tokens": 6, "threshold": 0.6},
      {"max_tokens": None, "threshold": 0.6}], "increasing max_tokens"),
    ([{"max_tokens": 12, "threshold": 0.6}], "the last with max_tokens null"),
    ([{"max_tokens": None, "threshold": -1}], "threshold"),
    ([{"max_tokens": None, "threshold": 0.5, "keep_ratio": 0}], "keep_ratio"),
    ([{"max_tokens": 0, "threshold": 0.5}, {"max_tokens": None, "threshold": 0.5}], "max_tokens"),
    ([], "a list of 1 to"),
    ("all", "a list of 1 to"),
])
def test_bad_length_points_are_refused(built, tmp_path, points, needle):
    bundle = _with_points(built / "bundle", tmp_path / "bad", points)
    with pytest.raises(MpeeRuntimeError, match="length_points") as e:
        Manifest.load(bundle)
    assert needle in str(e.value)


def test_schema_8_bundles_ignore_the_key(built, tmp_path):
    bundle = Path(shutil.copytree(built / "bundle", tmp_path / "old"))
    data = json.loads((bundle / MANIFEST).read_text())
    data.pop("integrity", None)
    data["schema_version"] = 8
    data["exit"]["length_points"] = POINTS
    (bundle / MANIFEST).write_text(json.dumps(seal(data)))
    assert Manifest.load(bundle).exit.length_points is None


def test_mpee_run_says_it_ran_at_the_length_points(bundle, tmp_path, capsys):
    from mpee_runtime.cli.run import main
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts()[:5]))
    assert main([str(bundle), "--input", str(src), "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["threshold"] is None and summary["keep_ratio"] is None
    assert [p["max_tokens"] for p in summary["length_points"]] == [6, 12, None]
    assert main([str(bundle), "--input", str(src), "--threads", "1", "--threshold", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["threshold"] == 0.5 and "length_points" not in summary
