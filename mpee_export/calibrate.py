"""Calibration: the default exit threshold (and keep ratio) of a bundle, chosen on labelled examples.

Returns values and a new manifest; it never changes the PyTorch model.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mpee_runtime import schema as S
from mpee_runtime.engine import MpeeEngine
from mpee_runtime.metrics import classification_metrics
from mpee_runtime.policy import first_exit_layers

from .errors import MpeeExportError


def calibrate_threshold(engine: MpeeEngine, examples, labels: list[int], *, full_metric: float,
                        max_drop: float, metric: str = "accuracy", policy: str = "entropy",
                        thresholds=None) -> dict:
    """The threshold with the fewest FLOPs executed (measured by the runtime on `examples`) whose task
    metric (`metric`: "accuracy", or "f1" for MRPC / QQP) stays within `max_drop` points of `full_metric`,
    the fp32 full model's. One full-depth pass per keep ratio, then the exit rule offline. Keep ratios
    tried: the bundle's own and 1 (no pruning), because pruning alone can cost more than `max_drop` on
    some tasks; the chosen one becomes the bundle's default.

    Returns:
        {"policy", "metric", "max_drop_points", "fp32_full_model", "examples", "cost", "chosen",
        "candidates"}; chosen/candidates: {"threshold", "keep_ratio" (None: the bundle's), "accuracy",
        ("f1",) "mean_exit_layer", "rho"}.
    """
    if metric not in S.METRICS:
        raise MpeeExportError(f"calibration metric must be one of {', '.join(S.METRICS)}, got {metric!r}")
    if thresholds is None:   # entropy ranges over [0, log C]
        thresholds = [round(float(x), 4) for x in np.linspace(0, np.log(len(engine.labels)), 70)]
    ratios = [None] + ([1.0] if any(r != 1.0 for r in engine.default_keep_ratios.values()) else [])
    fm = engine.flops_model
    seq_lens = [int(ids.shape[1]) for ids, _ in examples]
    candidates = []
    for ratio in ratios:
        traces = [engine.run_ids(ids, types, threshold=0.0, policy="entropy", keep_ratio=ratio, record=True)
                  for ids, types in examples]
        probs = np.array([t.layer_probs for t in traces])             # (n, L, C)
        ents = np.array([t.layer_entropies for t in traces])
        for thr in thresholds:
            exits = first_exit_layers(probs, ents, policy, thr)
            preds = probs[np.arange(len(exits)), exits - 1].argmax(-1)
            flops = [fm.executed_flops(t.tokens_per_layer[:e], t.ffn_tokens_per_layer[:e])
                     for t, e in zip(traces, exits.tolist())]
            scores = classification_metrics(preds.tolist(), labels, with_f1=metric == "f1")
            candidates.append({"threshold": thr, "keep_ratio": ratio, **scores,
                               "mean_exit_layer": float(exits.mean()),
                               "rho": fm.dataset_speedups(seq_lens, flops)[0]})
    floor = full_metric - max_drop / 100
    ok = [c for c in candidates if c[metric] >= floor]
    if not ok:
        raise MpeeExportError(f"no threshold keeps {metric} within {max_drop} points of {full_metric:.4f}")
    best = max(ok, key=lambda c: c["rho"])
    return {"policy": policy, "metric": metric, "max_drop_points": max_drop, "fp32_full_model": full_metric,
            "examples": len(examples), "cost": "FLOPs executed by the runtime", "chosen": best,
            "candidates": candidates}


def apply_calibration(manifest: S.Manifest, calibration: dict) -> S.Manifest:
    """The manifest with the calibrated default threshold (and keep ratio, when one was chosen) and a
    summary of how they were chosen (the candidate list stays in validation.json)."""
    chosen = calibration["chosen"]
    summary = {k: v for k, v in calibration.items() if k != "candidates"}
    exit_ = replace(manifest.exit, default_policy=calibration["policy"], default_threshold=chosen["threshold"],
                    calibration=summary)
    pruning = manifest.pruning
    if chosen["keep_ratio"] is not None:
        pruning = replace(pruning, keep_ratios=[chosen["keep_ratio"]] * len(pruning.prune_layers))
    return replace(manifest, exit=exit_, pruning=pruning)
