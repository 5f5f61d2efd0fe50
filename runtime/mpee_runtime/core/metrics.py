"""Task scores (accuracy, binary F1) and latency statistics, shared by mpee-run, mpee-eval, calibration and mpee-bench."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..bundle.contract import METRICS


@dataclass(frozen=True)
class Scores:
    """A task's scores on labelled data: its headline `metric` (named `metric_name`, one of bundle.contract.METRICS),
    accuracy, and F1 of class 1 when the headline is F1 (MRPC, QQP). Fractions in [0, 1]."""

    metric_name: str
    metric: float
    accuracy: float
    f1: float | None = None

    @classmethod
    def of(cls, preds: Sequence[int], labels: Sequence[int], metric: str = "accuracy") -> Scores:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if len(preds) != len(labels) or len(preds) == 0:
            raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
        p, y = np.asarray(preds), np.asarray(labels)
        accuracy = float((p == y).mean())
        f1 = None
        if metric == "f1":
            tp = int(((p == 1) & (y == 1)).sum())
            fp = int(((p == 1) & (y != 1)).sum())
            fn = int(((p != 1) & (y == 1)).sum())
            f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        return cls(metric, f1 if metric == "f1" else accuracy, accuracy, f1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scores:
        return cls(data["metric_name"], data["metric"], data["accuracy"], data.get("f1"))


def latency_summary(values_us: Sequence[float]) -> dict:
    """Mean, p50, p90, p99 (linear interpolation) of latencies in microseconds."""
    v = np.asarray(values_us, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no latencies")
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"n": int(v.size), "mean_us": float(v.mean()), "p50_us": float(p50), "p90_us": float(p90),
            "p99_us": float(p99)}
