"""Exit policies (docs/design.md 2.1): the one exit rule, shared by the device runtime and offline evaluation.

A policy looks at the blended prediction after each layer (probabilities of the classifier memory and
their entropy in nats) and says whether the sample stops there:
- ``entropy``: stop when H(p) < threshold (MPEE, DeeBERT).
- ``normalized_entropy``: stop when H(p) / log C < threshold (FastBERT), threshold in [0, 1].
- ``max_prob``: stop when max(p) > threshold, threshold in [0, 1].
- ``patience``: stop once threshold + 1 consecutive layers agree on the argmax (PABEE); the threshold
  is a non-negative integer. Note that patience 0 stops at layer 1.
- ``depth``: stop after layer `threshold` whatever the prediction (a static-depth model, the simplest
  alternative to early exit); the threshold is a layer number >= 1.
If no layer stops the sample, the prediction is the last layer's.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import MpeeRuntimeError, shown

POLICIES = ("entropy", "normalized_entropy", "max_prob", "patience", "depth")
STATEFUL = ("patience", "depth")   # rules that count layers within a sample: one instance per request
# The rule that runs every layer, whatever a bundle's default policy is: entropy is never below 0.
NO_EXIT = {"policy": "entropy", "threshold": 0.0}


def check_threshold(policy: str, threshold: float) -> None:
    """Raise MpeeRuntimeError when `policy` is unknown or `threshold` is outside its range."""
    if policy not in POLICIES:
        raise MpeeRuntimeError(f"unknown exit policy {policy!r} (choose from {', '.join(POLICIES)})")
    try:   # an integer too large for a float (a JSON request's 400 digits) is not a threshold either
        finite = math.isfinite(threshold)
    except (OverflowError, TypeError):
        finite = False
    if not finite or threshold < 0:
        raise MpeeRuntimeError(f"threshold must be a finite number >= 0, got {shown(threshold)}")
    if policy in ("normalized_entropy", "max_prob") and threshold > 1:
        raise MpeeRuntimeError(f"threshold for policy {policy} must be in [0, 1], got {threshold}")
    if policy in STATEFUL and threshold != int(threshold):
        raise MpeeRuntimeError(f"threshold for policy {policy} is a whole number of layers, got {threshold}")
    if policy == "depth" and threshold < 1:
        raise MpeeRuntimeError(f"threshold for policy depth is a layer number >= 1, got {threshold}")


class ExitPolicy:
    """Streaming exit decision for one sample; call `reset()` before each sample. The rule is bound once, at
    construction (`should_exit` is the policy's own method), so a layer costs one comparison."""

    def __init__(self, policy: str, threshold: float, num_labels: int) -> None:
        check_threshold(policy, threshold)
        self.policy = policy
        self.threshold = float(threshold)
        self._log_c = math.log(num_labels) if num_labels > 1 else 1.0
        self._last = -1
        self._streak = 0
        self._layer = 0
        self.should_exit = getattr(self, f"_{policy}")

    def reset(self) -> None:
        self._last, self._streak, self._layer = -1, 0, 0

    def should_exit(self, probs: np.ndarray, entropy: float) -> bool:   # replaced by the bound rule in __init__
        """Decide after one layer. `probs`: (C,) blended probabilities; `entropy`: H(probs) in nats."""
        raise NotImplementedError

    def _entropy(self, probs: np.ndarray, entropy: float) -> bool:
        return entropy < self.threshold

    def _normalized_entropy(self, probs: np.ndarray, entropy: float) -> bool:
        return entropy / self._log_c < self.threshold

    def _max_prob(self, probs: np.ndarray, entropy: float) -> bool:
        return float(probs.max()) > self.threshold

    def _depth(self, probs: np.ndarray, entropy: float) -> bool:
        self._layer += 1
        return self._layer >= self.threshold

    def _patience(self, probs: np.ndarray, entropy: float) -> bool:
        label = int(probs.argmax())
        self._streak = self._streak + 1 if label == self._last else 1
        self._last = label
        return self._streak > self.threshold


class BatchExitRule:
    """The exit rule of `ExitPolicy` for the rows of a batch at once: one numpy comparison per layer, whatever
    the number of rows, and the same decisions as one ExitPolicy per row (entropies compared in float64, as
    `ExitPolicy` compares Python floats). Patience and depth keep their count per row of the original batch.
    """

    def __init__(self, policy: str, threshold: float, num_labels: int, rows: int) -> None:
        check_threshold(policy, threshold)
        self.policy = policy
        self.threshold = float(threshold)
        self._log_c = math.log(num_labels) if num_labels > 1 else 1.0
        self._last = np.full(rows, -1, dtype=np.int64)      # patience: each row's previous label
        self._streak = np.zeros(rows, dtype=np.int64)        # patience: layers in a row agreeing on it
        self._layers = np.zeros(rows, dtype=np.int64)        # depth: layers each row has run
        self.fires = getattr(self, f"_{policy}")

    def fires(self, probs: np.ndarray, entropy: np.ndarray, rows: np.ndarray) -> np.ndarray:   # bound in __init__
        """(k,) bool: which of the k running rows stop after this layer. `probs` (k, C) and `entropy` (k,): their
        blended probabilities and entropies; `rows` (k,): their indices in the original batch."""
        raise NotImplementedError

    def _entropy(self, probs: np.ndarray, entropy: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return entropy.astype(np.float64) < self.threshold

    def _normalized_entropy(self, probs: np.ndarray, entropy: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return entropy.astype(np.float64) / self._log_c < self.threshold

    def _max_prob(self, probs: np.ndarray, entropy: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return probs.max(axis=1).astype(np.float64) > self.threshold

    def _depth(self, probs: np.ndarray, entropy: np.ndarray, rows: np.ndarray) -> np.ndarray:
        self._layers[rows] += 1
        return self._layers[rows] >= self.threshold

    def _patience(self, probs: np.ndarray, entropy: np.ndarray, rows: np.ndarray) -> np.ndarray:
        labels = probs.argmax(axis=1)
        streak = np.where(labels == self._last[rows], self._streak[rows] + 1, 1)
        self._streak[rows], self._last[rows] = streak, labels
        return streak > self.threshold


def first_exit_layers(probs: np.ndarray, entropies: np.ndarray, policy: str, threshold: float) -> np.ndarray:
    """Exit layer (1-based) of each sample, given every layer's prediction.

    Args:
        probs: (n, L, C) blended probabilities after each layer.
        entropies: (n, L) their entropies in nats.
    Returns:
        (n,) int array; L where no layer stops the sample.
    """
    n, num_layers, num_labels = probs.shape
    rule = BatchExitRule(policy, threshold, num_labels, n)
    exits = np.full(n, num_layers, dtype=np.int64)
    running = np.arange(n)
    for layer in range(num_layers):
        if not len(running):
            break
        fire = rule.fires(probs[running, layer], entropies[running, layer], running)
        exits[running[fire]] = layer + 1
        running = running[~fire]
    return exits
