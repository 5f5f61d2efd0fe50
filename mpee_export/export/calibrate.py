"""Calibration: the default exit threshold (and keep ratio) of a bundle, chosen on labelled examples.

Returns a typed record and a new manifest; it never changes the PyTorch model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from mpee_runtime.bundle.contract import METRICS
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.metrics import Scores
from mpee_runtime.core.policy import NO_EXIT, first_exit_layers

from ..errors import MpeeExportError

COST = "FLOPs executed by the runtime"


@dataclass(frozen=True)
class Candidate:
    """One (threshold, keep ratio) point: its scores, mean exit layer and FLOPs speed-up on the examples."""

    threshold: float
    keep_ratio: float | None        # None: the bundle's own
    scores: Scores
    mean_exit_layer: float
    rho: float

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(d["threshold"], d["keep_ratio"], Scores.from_dict(d["scores"]), d["mean_exit_layer"], d["rho"])


@dataclass(frozen=True)
class Calibration:
    """How the bundle's default threshold was chosen: the highest rho whose `metric` stays within
    `max_drop_points` of `fp32_full_model` (the fp32 full model's, as a fraction)."""

    policy: str
    metric: str
    max_drop_points: float
    fp32_full_model: float
    examples: int
    chosen: Candidate
    candidates: list[Candidate]
    cost: str = COST

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(d["policy"], d["metric"], d["max_drop_points"], d["fp32_full_model"], d["examples"],
                   Candidate.from_dict(d["chosen"]), [Candidate.from_dict(c) for c in d["candidates"]],
                   d.get("cost", COST))

    def summary(self) -> dict:
        """What the manifest records (exit.calibration): everything but the candidate list."""
        return {k: v for k, v in self.to_dict().items() if k != "candidates"}

    def describe(self) -> str:
        ch = self.chosen
        ratio = "the bundle's" if ch.keep_ratio is None else ch.keep_ratio
        f1 = f", F1 {100 * ch.scores.f1:.2f}" if ch.scores.f1 is not None else ""
        return (f"calibrated threshold {ch.threshold} (keep ratio {ratio}; {self.metric} within "
                f"{self.max_drop_points} points of the fp32 full model's {100 * self.fp32_full_model:.2f}): "
                f"accuracy {100 * ch.scores.accuracy:.2f}{f1}, mean exit layer {ch.mean_exit_layer:.2f}, "
                f"rho {ch.rho:.2f}")


def calibrate_threshold(engine: MpeeEngine, examples, labels: list[int], *, full_metric: float,
                        max_drop: float, metric: str = "accuracy", policy: str = "entropy",
                        thresholds=None) -> Calibration:
    """The threshold with the fewest FLOPs executed (measured by the runtime on `examples`) whose task
    metric (`metric`: "accuracy", or "f1" for MRPC / QQP) stays within `max_drop` points of `full_metric`,
    the fp32 full model's. One full-depth pass per keep ratio, then the exit rule offline. Keep ratios
    tried: the bundle's own and 1 (no pruning), because pruning alone can cost more than `max_drop` on
    some tasks; the chosen one becomes the bundle's default.
    """
    if metric not in METRICS:
        raise MpeeExportError(f"calibration metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if thresholds is None:   # entropy ranges over [0, log C]
        thresholds = [round(float(x), 4) for x in np.linspace(0, np.log(len(engine.labels)), 70)]
    ratios = [None] + ([1.0] if any(r != 1.0 for r in engine.default_keep_ratios.values()) else [])
    candidates = [c for ratio in ratios
                  for c in _candidates(engine, examples, labels, ratio, thresholds, policy, metric)]
    floor = full_metric - max_drop / 100
    ok = [c for c in candidates if c.scores.metric >= floor]
    if not ok:
        raise MpeeExportError(f"no threshold keeps {metric} within {max_drop} points of {full_metric:.4f}")
    best = max(ok, key=lambda c: c.rho)
    return Calibration(policy, metric, max_drop, full_metric, len(examples), best, candidates)


def _candidates(engine: MpeeEngine, examples, labels: list[int], ratio: float | None, thresholds,
                policy: str, metric: str) -> list[Candidate]:
    """Every threshold at one keep ratio, read off one full-depth pass of the runtime."""
    fm = engine.flops_model
    seq_lens = [int(ids.shape[1]) for ids, _ in examples]
    traces = [engine.run_ids(ids, types, **NO_EXIT, keep_ratio=ratio, record=True) for ids, types in examples]
    probs = np.array([t.layer_probs for t in traces])             # (n, L, C)
    ents = np.array([t.layer_entropies for t in traces])
    out = []
    for thr in thresholds:
        exits = first_exit_layers(probs, ents, policy, thr)
        preds = probs[np.arange(len(exits)), exits - 1].argmax(-1)
        flops = [fm.executed_flops(t.tokens_per_layer[:e], t.ffn_tokens_per_layer[:e])
                 for t, e in zip(traces, exits.tolist())]
        out.append(Candidate(thr, ratio, Scores.of(preds.tolist(), labels, metric), float(exits.mean()),
                             fm.dataset_speedups(seq_lens, flops)[0]))
    return out


def apply_calibration(manifest: Manifest, calibration: Calibration) -> Manifest:
    """The manifest with the calibrated default threshold (and keep ratio, when one was chosen) and a
    summary of how they were chosen (the candidate list stays in validation.json)."""
    chosen = calibration.chosen
    exit_ = replace(manifest.exit, default_policy=calibration.policy, default_threshold=chosen.threshold,
                    calibration=calibration.summary())
    pruning = manifest.pruning
    if chosen.keep_ratio is not None:
        pruning = replace(pruning, keep_ratios=[chosen.keep_ratio] * len(pruning.prune_layers))
    return replace(manifest, exit=exit_, pruning=pruning)
