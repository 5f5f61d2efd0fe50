"""MpeeEngine.predict_batch on the tiny bundle (no torch): PyTorch's batch-1 answers for every row, batches of
one, over-long rows, bad batches, concurrent callers, and bundles from before batch graphs."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from make_bundle import SETTINGS, TEXTS

from mpee_runtime.bundle.contract import MANIFEST
from mpee_runtime.bundle.integrity import seal
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import NO_EXIT
from mpee_runtime.errors import MpeeRuntimeError

PROB_TOL = 1e-5


@pytest.fixture(scope="module")
def engine(built) -> MpeeEngine:
    return MpeeEngine(built / "bundle", threads=1)


def _key(p) -> tuple:
    return p.exit_layer, p.label, p.tokens_per_layer, p.ffn_tokens_per_layer


def _same(got, want) -> None:
    assert _key(got) == _key(want)
    np.testing.assert_allclose(got.probs, want.probs, atol=PROB_TOL, rtol=0)


def test_every_row_gets_pytorchs_batch_one_answer(engine, expected):
    """All texts (pairs and single texts mixed, 3 to 24 tokens) in one batch, at each setting of the PyTorch
    record: every row's exit layer, label, tokens per layer and probabilities are PyTorch's at batch 1."""
    assert engine.manifest.supports_batches
    texts, pairs = [t for t, _ in TEXTS], [p for _, p in TEXTS]
    for threshold, ratio in SETTINGS:
        got = engine.predict_batch(texts, pairs, threshold=threshold, keep_ratio=ratio, policy="entropy")
        for g, (text, pair) in zip(got, TEXTS):
            want = next(e for e in expected if (e["text"], e["pair"], e["threshold"], e["keep_ratio"]) ==
                        (text, pair, threshold, ratio))
            assert (g.label, g.exit_layer, g.tokens_per_layer) == (want["label"], want["exit_layer"],
                                                                   want["tokens_per_layer"])
            np.testing.assert_allclose(g.probs, want["probs"], atol=PROB_TOL, rtol=0)


def _spread(engine, texts, pairs, **knobs) -> float:
    """The max_prob threshold at which the rows leave at the most different layers (the random model's
    probabilities sit near 1/2, so no fixed threshold spreads them): a midpoint between two of the rows'
    per-layer max probabilities at full depth, so rounding cannot move an exit."""
    max_probs = np.asarray([[max(p) for p in engine.run_ids(*engine.encode(a, b), record=True, **NO_EXIT,
                                                          **knobs).layer_probs] for a, b in zip(texts, pairs)])
    values = np.unique(max_probs)

    def layers(t: float) -> int:
        fired = max_probs > t
        return len(set(np.where(fired.any(axis=1), fired.argmax(axis=1), -1)))
    return float(max((values[1:] + values[:-1]) / 2, key=layers))


def test_rules_count_per_row(engine):
    """Stateful rules (patience, depth) count each row's layers; rows leave the batch at every layer."""
    texts, pairs = [t for t, _ in TEXTS] * 2, [p for _, p in TEXTS] * 2
    for ratio in (0.5, None):
        spread = _spread(engine, texts, pairs, keep_ratio=ratio)
        for policy, threshold in (("patience", 1), ("depth", 2), ("max_prob", spread)):
            got = engine.predict_batch(texts, pairs, threshold=threshold, policy=policy, keep_ratio=ratio)
            for g, t, p in zip(got, texts, pairs):
                _same(g, engine.predict(t, p, threshold=threshold, policy=policy, keep_ratio=ratio))
            if policy == "max_prob":
                assert len({g.exit_layer for g in got}) >= 2


@pytest.mark.parametrize("slack", [0.0, 0.25, 100.0])
def test_rows_grouped_by_length_get_the_same_answers(engine, slack):
    """With pad_slack the rows run in groups of similar length (some of one row, on the batch-1 graphs): each
    row's answer is still predict's, in input order, and each row's total time counts from the batch's start."""
    texts, pairs = [t for t, _ in TEXTS] * 2, [p for _, p in TEXTS] * 2
    spread = _spread(engine, texts, pairs)
    got = engine.predict_batch(texts, pairs, threshold=spread, policy="max_prob", pad_slack=slack)
    for g, t, p in zip(got, texts, pairs):
        _same(g, engine.predict(t, p, threshold=spread, policy="max_prob"))
        assert g.timings_us["total"] >= g.timings_us["tokenize"] > 0
    lengths = {g.tokens_per_layer[0] for g in got}
    assert len(lengths) > 2   # rows of several lengths: slack 0 and 0.25 really cut the batch


@pytest.mark.parametrize("slack", [-0.1, float("nan")])
def test_bad_pad_slack_refused(engine, slack):
    with pytest.raises(MpeeRuntimeError, match="pad slack must be a number >= 0"):
        engine.predict_batch(["a", "b"], pad_slack=slack)


def test_batch_of_one_and_over_long_rows(engine):
    long = " ".join(["great fun film"] * 40)   # far over the bundle's 24 tokens
    (one,) = engine.predict_batch(["a boring film"], threshold=0.6)
    _same(one, engine.predict("a boring film", threshold=0.6))
    texts = ["it", long, "the movie is great", long + " !"]
    got = engine.predict_batch(texts, ["bad", None, long, None], threshold=0.6, keep_ratio=0.5)
    assert got[1].tokens_per_layer[0] == engine.manifest.model.max_length
    for g, t, p in zip(got, texts, ["bad", None, long, None]):
        _same(g, engine.predict(t, p, threshold=0.6, keep_ratio=0.5))


@pytest.mark.parametrize("texts, pairs, message", [
    ([], None, "empty batch"),
    ("a single string", None, "a batch is a list of strings"),
    (["ok", 3], None, "batch row 1: text must be a string"),
    (["ok", None], None, "batch row 1: text must be a string"),
    (["ok", "fine"], ["one pair"], "2 texts but 1 pairs"),
    (["ok", "fine"], [None, b"bytes"], "batch row 1: text_pair must be a string or None"),
])
def test_bad_batches_refused(engine, texts, pairs, message):
    with pytest.raises(MpeeRuntimeError, match=message):
        engine.predict_batch(texts, pairs)


def test_bad_knobs_refused(engine):
    with pytest.raises(MpeeRuntimeError, match="keep ratio"):
        engine.predict_batch(["a", "b"], keep_ratio=1.5)
    with pytest.raises(MpeeRuntimeError, match="threshold"):
        engine.predict_batch(["a", "b"], policy="patience", threshold=0.5)


def test_concurrent_batches_give_the_single_threaded_answers(engine):
    texts = [t for t, _ in TEXTS] * 3
    jobs = [{"threshold": t, "keep_ratio": r, "policy": "entropy"} for t, r in SETTINGS] + [
        {"threshold": 1, "keep_ratio": None, "policy": "patience"}]
    want = [[_key(p) + (tuple(p.probs),) for p in engine.predict_batch(texts, **job)] for job in jobs]
    results: dict[tuple[int, int], list] = {}
    errors = []

    def worker(w: int) -> None:
        try:
            for rep in range(4):
                j = (w + rep) % len(jobs)
                results[w, rep] = (j, engine.predict_batch(texts, **jobs[j]))
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 16
    for j, preds in results.values():
        for p, w in zip(preds, want[j]):
            assert _key(p) == w[:4]
            np.testing.assert_allclose(p.probs, w[4], atol=PROB_TOL, rtol=0)


def test_bundle_from_before_batch_graphs_runs_rows_one_by_one(bundle):
    """A schema-4 manifest (no batch_graphs, no `batch` keys) still loads; predict_batch then runs each row on
    the batch-1 graphs, and asking for the batch sessions says why there are none."""
    data = json.loads((bundle / MANIFEST).read_text())
    for g in data.pop("batch_graphs"):
        (bundle / g["file"]).unlink()
    for g in data["graphs"]:
        g.pop("batch", None)
    data["schema_version"] = 4
    (bundle / MANIFEST).write_text(json.dumps(seal(data)))
    engine = MpeeEngine(bundle, threads=1)
    assert not engine.manifest.supports_batches
    texts = [t for t, _ in TEXTS]
    for g, t in zip(engine.predict_batch(texts, threshold=0.6), texts):
        _same(g, engine.predict(t, threshold=0.6))
    with pytest.raises(MpeeRuntimeError, match="no batch graphs"):
        engine.batch_sessions()


def test_bundle_from_before_families_runs_as_bert(bundle):
    """A schema-5 manifest (no model.family, no special_tokens: every bundle then was BERT's) loads as BERT's,
    padding with [PAD] = 0, and gives the same answers, batch 1 and batches."""
    before = MpeeEngine(bundle, threads=1)
    texts = [t for t, _ in TEXTS]
    want = [before.predict(t, threshold=0.6) for t in texts]
    data = json.loads((bundle / MANIFEST).read_text())
    del data["model"]["family"], data["model"]["special_tokens"], data["model"]["relative_positions"]
    data["schema_version"] = 5
    (bundle / MANIFEST).write_text(json.dumps(seal(data)))
    engine = MpeeEngine(bundle, threads=1)
    assert engine.manifest.model.family == "bert" and engine.manifest.model.pad_token_id == 0
    for got, w in zip(engine.predict_batch(texts, threshold=0.6), want):
        _same(got, w)
    for t, w in zip(texts, want):
        _same(engine.predict(t, threshold=0.6), w)


def test_bundle_from_before_positions_runs_as_before(bundle):
    """A schema-6 manifest (no model.relative_positions: no graph carried positions then) loads and gives the same
    answers; a manifest that claims positions for graphs that take none is refused in one line."""
    before = MpeeEngine(bundle, threads=1)
    texts = [t for t, _ in TEXTS]
    want = [before.predict(t, threshold=0.6) for t in texts]
    data = json.loads((bundle / MANIFEST).read_text())
    assert data["model"]["relative_positions"] is False
    claimed = json.loads(json.dumps(data))
    claimed["model"]["relative_positions"] = True
    (bundle / MANIFEST).write_text(json.dumps(seal(claimed)))
    with pytest.raises(MpeeRuntimeError, match=r"graphs\[1\] has .* expected .*'positions_out'\]$"):
        MpeeEngine(bundle, threads=1)
    del data["model"]["relative_positions"]
    data["schema_version"] = 6
    (bundle / MANIFEST).write_text(json.dumps(seal(data)))
    engine = MpeeEngine(bundle, threads=1)
    assert not engine.manifest.model.relative_positions
    for got, w in zip(engine.predict_batch(texts, threshold=0.6), want):
        _same(got, w)


def test_batch_graph_file_checked_like_the_others(bundle):
    """A batch graph whose bytes changed is refused when the bundle loads (its sha256 is in the manifest)."""
    data = json.loads((bundle / MANIFEST).read_text())
    path = bundle / data["batch_graphs"][1]["file"]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(MpeeRuntimeError, match="does not match its sha256"):
        MpeeEngine(bundle, threads=1)


def test_batch_tokenizing_gives_each_rows_own_ids(engine):
    """`TextEncoder.encode_batch` (one tokenizer call for the rows the library truncates itself, the others row
    by row: a side cut by the input limit) gives every row the ids, types and cut flag of `encode`."""
    long = "word " * (engine.max_chars // 4)
    texts = ["the movie is great", long, "a boring film", "it", long, "fun " * 40]
    pairs = [None, None, "the plot is not good", "it", "short", None]
    got = engine.text.encode_batch(texts, pairs)
    want = [engine.text.encode(t, p) for t, p in zip(texts, pairs)]
    assert [g.cut for g in got] == [w.cut for w in want] == [False, True, False, False, True, False]
    for g, w in zip(got, want):
        assert g.ids.tolist() == w.ids.tolist() and g.types.tolist() == w.types.tolist()
    with pytest.raises(MpeeRuntimeError, match="not valid Unicode"):
        engine.text.encode_batch(["fine", "bad \ud800"], [None, None])


def test_predictions_are_immutable(engine):
    import dataclasses
    pred = engine.predict_batch(["a fine film", "dull"])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.label = "changed"
