"""Task metrics (accuracy, binary F1) and latency statistics, shared by mpee-run, mpee-eval and mpee-bench."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(preds: Sequence[int], labels: Sequence[int], *, with_f1: bool = False) -> dict:
    """Accuracy, and F1 of class 1 when `with_f1` (MRPC, QQP). Fractions in [0, 1]."""
    if len(preds) != len(labels) or len(preds) == 0:
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    p, y = np.asarray(preds), np.asarray(labels)
    out = {"accuracy": float((p == y).mean())}
    if with_f1:
        tp = int(((p == 1) & (y == 1)).sum())
        fp = int(((p == 1) & (y != 1)).sum())
        fn = int(((p != 1) & (y == 1)).sum())
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return out


def latency_summary(values_us: Sequence[float]) -> dict:
    """Mean, p50, p90, p99 (linear interpolation) of latencies in microseconds."""
    v = np.asarray(values_us, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no latencies")
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"n": int(v.size), "mean_us": float(v.mean()), "p50_us": float(p50), "p90_us": float(p90),
            "p99_us": float(p99)}
