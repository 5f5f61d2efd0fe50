"""mpee-run --batch-size / --bucket-window: the output lines and the summary are those of --batch-size 1
(timing fields aside), in input order however the rows were grouped; bad values are refused before the
bundle is loaded, with nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from cli_checks import run_error
from make_bundle import WORDS

from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.cli.run import plan_batches, run_examples
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.text.readers import Example

LINES = 1000
BATCH = 32
KNOBS = {"policy": "max_prob", "threshold": 0.505}   # the tiny bundle exits at each of its 3 layers with these
TIMING = ("latency", "examples_per_s")            # summary fields that may differ between batch sizes
SETTINGS = ("batch_size", "bucket_window")        # and the settings themselves
_KNOB_ARGS = ["--threads", "1", "--policy", KNOBS["policy"], "--threshold", str(KNOBS["threshold"])]
_TOKENS = [w for w in WORDS if not w.startswith(("[", "##"))]   # one token per word


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_TOKENS) for _ in range(words))


def _write_input(path: Path) -> Path:
    """LINES labelled JSONL examples of 1 to 30 words (past the model's 24 tokens too), a third of them pairs,
    and a few longer than the engine's character limit (cut: `chars_cut` lines)."""
    rng = random.Random(0)
    rows = []
    for i in range(LINES):
        row = {"text": _text(rng, rng.randint(1, 30)), "label": rng.choice(["entailment", "not_entailment"])}
        if i % 3 == 0:
            row["text_pair"] = _text(rng, rng.randint(1, 12))
        if i % 250 == 7:
            row["text"] = _text(rng, 2000)
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


def _run(args: list[str]) -> dict:
    """mpee-run's main with `args`; its summary (stdout captured here, so module fixtures can call it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli(args) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def reference(built, tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    """The input file, and the summary and output lines of --batch-size 1 on it."""
    folder = tmp_path_factory.mktemp("batches")
    inp = _write_input(folder / "in.jsonl")
    out = folder / "b1.jsonl"
    summary = _run([str(built / "bundle"), "--input", str(inp), "--output", str(out), *_KNOB_ARGS])
    return inp, summary, [json.loads(x) for x in out.read_text().splitlines()]


def _same_lines(got: list[dict], want: list[dict]) -> None:
    """Line by line: the same fields and values, probs within 1e-5 (a batched engine pads; rounding to 6
    digits may then differ in the last one)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w), (g, w)
        assert {k: v for k, v in g.items() if k != "probs"} == {k: v for k, v in w.items() if k != "probs"}
        np.testing.assert_allclose(g["probs"], w["probs"], atol=1e-5)


@pytest.mark.parametrize("window", [0, 3 * BATCH])   # off; windows of 96 (the last one holds 40 rows)
def test_batched_run_equals_batch_size_1(built, reference, tmp_path, window):
    inp, want_summary, want_lines = reference
    assert [x["index"] for x in want_lines] == list(range(LINES))
    assert len({x["exit_layer"] for x in want_lines}) == 3 and any(x.get("chars_cut") for x in want_lines)
    out = tmp_path / "b32.jsonl"
    summary = _run([str(built / "bundle"), "--input", str(inp), "--output", str(out), *_KNOB_ARGS,
                    "--batch-size", str(BATCH), "--bucket-window", str(window)])
    _same_lines([json.loads(x) for x in out.read_text().splitlines()], want_lines)
    assert (summary["batch_size"], summary["bucket_window"]) == (BATCH, window)
    assert (want_summary["batch_size"], want_summary["bucket_window"]) == (1, 0)
    assert set(summary) == set(want_summary)
    drop = (*TIMING, *SETTINGS)
    assert {k: v for k, v in summary.items() if k not in drop} == {
        k: v for k, v in want_summary.items() if k not in drop}
    assert summary["latency"]["n"] == LINES and summary["examples_per_s"] > 0


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
    (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
    (["--bucket-window", "-32"], "--bucket-window must be 0 (off) or a positive multiple"),
    (["--batch-size", "32", "--bucket-window", "48"], "multiple of --batch-size (32), got 48"),
    (["--bucket-window", "y"], "argument --bucket-window: invalid int value"),
])
def test_bad_batching_refused_before_loading(tmp_path, capsys, args, needle):
    """Refused on the arguments alone: the bundle path does not even exist, and no output file is made."""
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "a film"}\n')
    out = tmp_path / "preds.jsonl"
    run_error(capsys, [str(tmp_path / "no_bundle"), "--input", str(inp), "--output", str(out), *args], needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_batching_needs_input(tmp_path, capsys):
    run_error(capsys, [str(tmp_path / "no_bundle"), "a film", "--batch-size", "4"], "need --input")


def test_plan_batches_rule():
    lengths = [9, 3, 7, 1, 5, 5, 2, 8, 6, 4]
    assert plan_batches(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # windows of 4: [0..3] by length, [4..7] by length (4 and 5 tie: input order), then [8, 9]
    assert plan_batches(10, 2, window=4, length=lengths.__getitem__) == [
        [3, 1], [2, 0], [6, 4], [5, 7], [9, 8]]
    whole = plan_batches(10, 2, window=16, length=lengths.__getitem__)   # a window past the end sorts it all
    assert [i for b in whole for i in b] == sorted(range(10), key=lengths.__getitem__)
    assert plan_batches(0, 4, window=8, length=lengths.__getitem__) == []


@pytest.fixture(scope="module")
def engine(built) -> MpeeEngine:
    return MpeeEngine(built / "bundle", threads=1)


def test_bucketing_reorders_but_answers_stay_in_input_order(engine, monkeypatch):
    """Longest first in the input: bucketing runs each window shortest first, and the lines still follow the
    input, each the answer `predict` gives its own example."""
    rng = random.Random(1)
    examples = [Example(_text(rng, words), None, None) for words in range(20, 0, -1)]
    batches = []

    def recording(texts, pairs=None, **knobs):
        batches.append(list(texts))
        return MpeeEngine.predict_batch(engine, texts, pairs, **knobs)

    monkeypatch.setattr(engine, "predict_batch", recording)
    summary, lines = run_examples(engine, examples, batch_size=4, bucket_window=8, **KNOBS)
    ran = [t for b in batches for t in b]
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    assert ran[:8] == [ex.text for ex in examples[:8]][::-1] and ran != [ex.text for ex in examples]
    got = [json.loads(x) for x in lines]
    assert [x["index"] for x in got] == list(range(len(examples)))
    for ex, line in zip(examples, got):
        want = engine.predict(ex.text, **KNOBS)
        assert (line["label"], line["exit_layer"]) == (want.label, want.exit_layer)
        np.testing.assert_allclose(line["probs"], want.probs, atol=1e-5)
    assert summary["batch_size"] == 4 and summary["bucket_window"] == 8
