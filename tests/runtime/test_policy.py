import math

import numpy as np
import pytest

from mpee_runtime.core.policy import NO_EXIT, BatchExitRule, ExitPolicy, check_threshold, first_exit_layers
from mpee_runtime.errors import MpeeRuntimeError

# three layers of two-class predictions: unsure, confident, very confident
PROBS = np.array([[[0.55, 0.45], [0.9, 0.1], [0.99, 0.01]],
                  [[0.5, 0.5], [0.4, 0.6], [0.45, 0.55]]])
# entropies in nats, written out: H(p) = -sum p log p
ENT = -(PROBS * np.log(PROBS)).sum(-1)


def test_entropies_of_the_fixture():
    assert ENT[1, 0] == pytest.approx(math.log(2))


def test_no_exit_rule_runs_every_layer():
    certain = np.array([[[1.0 - 1e-9, 1e-9]] * 3])
    ent = np.zeros((1, 3))   # even an entropy of exactly 0 does not stop a sample
    assert first_exit_layers(certain, ent, **NO_EXIT).tolist() == [3]


def test_entropy_policy_exit_layers():
    # H(0.9, 0.1) = 0.325; H(0.99, 0.01) = 0.056
    assert first_exit_layers(PROBS, ENT, "entropy", 0.4).tolist() == [2, 3]
    assert first_exit_layers(PROBS, ENT, "entropy", 0.1).tolist() == [3, 3]
    assert first_exit_layers(PROBS, ENT, "entropy", 0.0).tolist() == [3, 3]   # never stops early
    assert first_exit_layers(PROBS, ENT, "entropy", 1.0).tolist() == [1, 1]   # H <= log 2 < 1


def test_other_policies():
    assert first_exit_layers(PROBS, ENT, "normalized_entropy", 0.5).tolist() == [2, 3]
    assert first_exit_layers(PROBS, ENT, "max_prob", 0.85).tolist() == [2, 3]
    # patience 1: two consecutive layers with the same argmax
    assert first_exit_layers(PROBS, ENT, "patience", 1).tolist() == [2, 3]
    assert first_exit_layers(PROBS, ENT, "patience", 0).tolist() == [1, 1]


def test_policy_state_resets_between_samples():
    rule = ExitPolicy("patience", 1, 2)
    assert not rule.should_exit(np.array([0.9, 0.1]), 0.3)
    rule.reset()
    assert not rule.should_exit(np.array([0.9, 0.1]), 0.3)
    assert rule.should_exit(np.array([0.8, 0.2]), 0.5)


@pytest.mark.parametrize("policy,threshold", [("entropy", -0.1), ("entropy", float("nan")),
                                              ("max_prob", 1.5), ("patience", 1.5), ("nope", 0.1)])
def test_bad_thresholds_rejected(policy, threshold):
    with pytest.raises(MpeeRuntimeError):
        check_threshold(policy, threshold)


def test_depth_policy_is_a_static_exit():
    for k in (1, 2, 3):
        assert first_exit_layers(PROBS, ENT, "depth", k).tolist() == [k, k]
    assert first_exit_layers(PROBS, ENT, "depth", 7).tolist() == [3, 3]     # past the last layer: the last
    for bad in (0, 1.5):
        with pytest.raises(MpeeRuntimeError, match="depth"):
            check_threshold("depth", bad)


@pytest.mark.parametrize("policy, thresholds", [("entropy", [0.05, 0.3, 0.6]), ("normalized_entropy", [0.2, 0.7]),
                                                ("max_prob", [0.6, 0.9]), ("patience", [0, 1, 2]),
                                                ("depth", [1, 3, 6])])
def test_batch_rule_decides_as_one_rule_per_row(policy, thresholds):
    """BatchExitRule on rows that leave at different layers makes, row for row, the decisions of an ExitPolicy
    per row (float32 entropies near the threshold included: compared in float64 as ExitPolicy compares them)."""
    rng = np.random.default_rng(0)
    n, layers, classes = 64, 6, 3
    logits = rng.normal(0, 2, (n, layers, classes)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ent = (-(probs * np.log(probs)).sum(-1)).astype(np.float32)
    for threshold in thresholds:
        ent[:8, 1] = np.float32(threshold)       # exactly at the threshold in float32 (not below it)
        want = []
        for i in range(n):
            rule = ExitPolicy(policy, threshold, classes)
            want.append(next((k + 1 for k in range(layers) if rule.should_exit(probs[i, k], float(ent[i, k]))), layers))
        batch = BatchExitRule(policy, threshold, classes, n)
        got = np.full(n, layers)
        running = np.arange(n)
        for k in range(layers):
            fire = batch.fires(probs[running, k], ent[running, k], running)
            got[running[fire]] = k + 1
            running = running[~fire]
        assert got.tolist() == want
        assert first_exit_layers(probs, ent, policy, threshold).tolist() == want


@pytest.mark.parametrize("policy", ["entropy", "max_prob", "patience", "depth"])
@pytest.mark.parametrize("threshold", [10 ** 400, -(10 ** 400), float("inf"), "0.5", None])
def test_threshold_out_of_any_float_refused_in_one_line(policy, threshold):
    """A number no float holds (a 401-digit integer from a JSON request), infinity or a non-number: one
    MpeeRuntimeError line, never OverflowError or TypeError."""
    with pytest.raises(MpeeRuntimeError, match="threshold must be a finite number >= 0") as e:
        check_threshold(policy, threshold)
    assert "\n" not in str(e.value) and len(str(e.value)) < 120
