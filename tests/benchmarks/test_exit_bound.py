"""benchmarks/exit_bound.py: the exit rules' outcomes on a hand-made trace, and the script on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts import load_script as _load
from scripts import write_tiny_sst2


def load_script():
    return _load("exit_bound")


def _trace(eb, keep_ratio=1.0):
    """4 examples, 3 layers, 2 classes. Entropies and predictions per layer (label 1 for every example):
    ex 0: confident and right from layer 1; ex 1: confident but wrong at layer 1, right from layer 2;
    ex 2: right at 1, wrong at 2, right at 3 (never confident); ex 3: wrong everywhere."""
    right, wrong = [0.1, 0.9], [0.9, 0.1]
    probs = np.array([[right, right, right], [wrong, right, right], [right, wrong, right], [wrong, wrong, wrong]])
    entropies = np.array([[0.1, 0.1, 0.1], [0.2, 0.05, 0.05], [0.6, 0.6, 0.6], [0.3, 0.3, 0.3]])
    flops = np.tile([1.0, 2.0, 3.0], (4, 1))   # each layer costs 1
    return eb.Trace(keep_ratio, probs, entropies, flops, np.full(4, 3.0), np.ones(4, dtype=int))


def test_outcome_reads_the_first_layer_under_its_threshold():
    eb = load_script()
    t = _trace(eb)
    rows = np.arange(4)
    # F 0.15 everywhere: ex 0 at layer 1, ex 1 at layer 2, exs 2 and 3 run to layer 3
    acc, rho, exit_layer = t.outcome(np.full(3, 0.15), rows)
    assert (acc, exit_layer) == (0.75, (1 + 2 + 3 + 3) / 4) and rho == 12 / 9
    # F 0.25 at layer 1 also stops ex 1 there, wrongly
    acc, _, exit_layer = t.outcome(np.array([0.25, 0.15, 0.15]), rows)
    assert (acc, exit_layer) == (0.5, (1 + 1 + 3 + 3) / 4)


def test_per_layer_thresholds_never_fall_below_the_floor_and_beat_one_threshold():
    eb = load_script()
    t = _trace(eb)
    rows = np.arange(4)
    single = eb.best_single(t, rows, 0.75)
    per_layer = eb.fit_per_layer(t, rows, 0.75)
    acc_s, rho_s, _ = t.outcome(single, rows)
    acc_p, rho_p, _ = t.outcome(per_layer, rows)
    assert acc_s >= 0.75 and acc_p >= 0.75 and rho_p >= rho_s
    # the best a threshold rule keeping 3 of 4 right can do here: ex 0 at 1, ex 1 and ex 3 (wrong anyway) at 2 (a
    # layer-1 threshold above ex 3's 0.3 would stop ex 1 there, wrongly), ex 2 at 3
    assert rho_p == 12 / 8 and 0.1 < per_layer[0] <= 0.2 and per_layer[1] > 0.3
    assert eb.best_single(t, rows, 1.0) is None   # no threshold reaches 4 of 4


def test_stability_oracle_leaves_after_the_last_change_of_prediction():
    eb = load_script()
    acc, rho, exit_layer = eb.stability_oracle(_trace(eb), np.arange(4))
    # exits 1, 2, 3, 1: ex 2 changes its mind at layer 2, ex 3 never does
    assert (acc, exit_layer, rho) == (0.75, 7 / 4, 12 / 7)


def test_script_on_a_tiny_checkpoint(tmp_path, shared_backbone):
    from tiny import tiny_model
    from transformers import AutoTokenizer

    from mpee_export.model.checkpoint import save_checkpoint
    eb = load_script()
    save_checkpoint(tiny_model(layers=3), AutoTokenizer.from_pretrained(str(shared_backbone)), tmp_path / "ckpt")
    glue = write_tiny_sst2(tmp_path / "glue")
    out = tmp_path / "bound.md"
    eb.main([str(tmp_path / "ckpt"), "--data", str(glue), "--task", "sst2", "--keep-ratios", "0.5", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {r["keep_ratio"] for r in rows} == {0.5, 1.0}
    for r in rows:
        if r["rho"] is None:   # nothing within the drop on the fitted rows
            assert r["thresholds"] is None and r["accuracy"] is None
            continue
        assert r["rho"] > 0 and 1 <= r["mean_exit_layer"] <= 3
        if r["rule"].startswith("stability oracle") and r["keep_ratio"] == 1.0:
            assert r["accuracy"] == r["full"]   # the full model's answers, by construction
        if r["rule"].startswith(("one threshold", "a threshold per layer")) and "scored on the other" not in r["rule"]:
            assert r["full"] - r["accuracy"] <= 1.0 + 1e-9
    assert "| 1 | one threshold |" in out.read_text()


def test_candidates_cover_every_distinct_outcome():
    eb = load_script()
    t = _trace(eb)
    rows = np.arange(4)
    found = {t.outcome(np.full(3, f), rows) for f in eb.candidates(t.entropies)}
    dense = {t.outcome(np.full(3, f), rows) for f in np.linspace(0, 1, 1001)}
    # five distinct entropies (0.05, 0.1, 0.2, 0.3, 0.6) cut the thresholds into six intervals, six outcomes
    assert found == dense and len(found) == 6


def test_one_threshold_is_the_runtimes_exit_rule():
    """Trace.outcome with one threshold everywhere exits where mpee_runtime's entropy policy does."""
    from mpee_runtime.core.policy import first_exit_layers
    eb = load_script()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.5, 0.5], size=(50, 4))
    entropies = -(probs * np.log(probs)).sum(-1).astype(np.float32)
    t = eb.Trace(1.0, probs, entropies, np.tile([1.0, 2.0, 3.0, 4.0], (50, 1)), np.full(50, 4.0),
                 rng.integers(0, 2, 50))
    rows = np.arange(50)
    for f in (0.0, 0.2, 0.4, 0.6, 0.7):
        exits = first_exit_layers(probs, entropies, "entropy", f)
        acc = float((probs[rows, exits - 1].argmax(-1) == t.labels).mean())
        assert t.outcome(np.full(4, f), rows) == pytest.approx((acc, 200 / exits.sum(), exits.mean()))


def test_a_rule_with_nothing_within_the_drop_gets_a_row_that_says_so():
    eb = load_script()
    t = _trace(eb)   # the full model (last layer) gets 3 of 4; pruned trace: every layer wrong for every example
    pruned = eb.Trace(0.5, t.probs[:, :, ::-1].copy(), t.entropies, t.flops, t.full, t.labels)
    rows = eb.bound_rows([pruned, t], max_drop=1.0)
    empty = [r for r in rows if r.keep_ratio == 0.5 and r.rule == "one threshold"]
    assert len(empty) == 1 and empty[0].rho is None and empty[0].full == 75.0
    assert "| 0.5 | one threshold | none within the drop | 75.00 |" in eb.render(rows, "cmd", 1.0)


def test_bad_input_gets_one_line(tmp_path, capsys):
    eb = load_script()
    for argv in ([str(tmp_path), "--keep-ratios", "half"], [str(tmp_path), "--keep-ratios", "1.5"],
                 [str(tmp_path / "missing"), "--data", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            eb.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "error:" in err[-1].lower() and "Traceback" not in "\n".join(err)
