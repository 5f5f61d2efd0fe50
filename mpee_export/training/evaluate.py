"""Evaluation: per-layer traces of the model on a data set, then the exit policy, metrics and FLOPs.

The model runs every layer once per example and records each layer's blended prediction and token
counts. Layer l's output does not depend on whether the sample would have stopped earlier, so the
exit layer for any threshold is read off these traces with the runtime's own exit rule; a sweep over
thresholds costs one pass per keep ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mpee_runtime.bench.tradeoff import Curve, Level, pareto_front, plot_tradeoff
from mpee_runtime.core.flops import FLOPS_CONVENTION
from mpee_runtime.core.policy import check_threshold, first_exit_layers

from ..data.batching import Encoded, collate, eval_batches
from ..data.glue import Task, compute_metrics
from ..errors import MpeeExportError
from ..model.modeling import MpeeModel, memories_to_probs

DEFAULT_THRESHOLDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_KEEP_RATIOS = (0.5, 0.7, 1.0)
ROW_KINDS = ("mpee", "static", "full model")


@dataclass(frozen=True)
class EvalRow:
    """One operating point of mpee-eval. `kind`: "mpee" (early exit at `threshold` under `policy`),
    "static" (every sample leaves at exit `threshold`, policy "depth") or "full model" (last exit, no
    pruning, policy "none"; it alone has `per_exit_accuracy`). Scores are fractions; the metric is the
    task's headline (`metric_name`), `f1` is set when that is F1."""

    kind: str
    task: str
    n: int
    policy: str
    threshold: float
    keep_ratio: float | None
    metric_name: str
    metric: float
    accuracy: float
    f1: float | None
    mean_exit_layer: float
    exit_layer_histogram: dict[str, int]
    mean_tokens_per_layer: list[float | None]
    mean_ffn_tokens_per_layer: list[float | None]
    mean_input_tokens: float
    flops_executed_per_example: float
    rho: float
    rho_pad128: float
    flops_convention: str = FLOPS_CONVENTION
    per_exit_accuracy: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalRow:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or data.get("kind") not in ROW_KINDS:
            raise MpeeExportError(f"not an mpee-eval row (kind {data.get('kind')!r}, unknown fields {unknown})")
        return cls(**data)


@dataclass(frozen=True)
class EvalResult:
    """mpee-eval's --json document: the checkpoint, its full-model row and the evaluated rows."""

    checkpoint: str
    full_model: EvalRow
    rows: list[EvalRow]

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "full_model": self.full_model.to_dict(),
                "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        return cls(data["checkpoint"], EvalRow.from_dict(data["full_model"]),
                   [EvalRow.from_dict(r) for r in data["rows"]])

    @classmethod
    def read(cls, path: Path) -> EvalResult:
        import json
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MpeeExportError(f"{path}: not an mpee-eval --json file ({e.__class__.__name__}: {e})") from None


@dataclass
class Traces:
    probs: np.ndarray       # (n, L, C) blended probabilities after each layer
    entropies: np.ndarray   # (n, L) nats
    attn_lens: np.ndarray   # (n, L) tokens the attention ran on
    ffn_lens: np.ndarray    # (n, L) tokens the FFN ran on
    seq_lens: np.ndarray    # (n,) real input length
    labels: np.ndarray      # (n,)
    keep_ratio: float | None


@torch.no_grad()
def compute_traces(model: MpeeModel, data: Encoded, *, keep_ratio: float | None = None,
                   batch_size: int = 64, progress: bool = False) -> Traces:
    """Run all layers on every example (batched; each sample pruned by its own length)."""
    model.eval()
    n, layers, labels = len(data), model.mpee.num_layers, model.mpee.num_labels
    probs = np.zeros((n, layers, labels), dtype=np.float32)
    ent = np.zeros((n, layers), dtype=np.float32)
    attn = np.zeros((n, layers), dtype=np.int64)
    ffn = np.zeros((n, layers), dtype=np.int64)
    batches = list(eval_batches(data, batch_size))
    for idx in tqdm(batches, desc=f"eval r={keep_ratio}", disable=not progress, leave=False):
        b = collate(data, idx)
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], keep_ratio=keep_ratio)
        p, e = memories_to_probs(out.memories)
        probs[idx], ent[idx] = p, e
        attn[idx], ffn[idx] = out.attn_lens.numpy(), out.ffn_lens.numpy()
    seq = np.array([len(x) for x in data.input_ids], dtype=np.int64)
    return Traces(probs, ent, attn, ffn, seq, np.array(data.labels, dtype=np.int64), keep_ratio)


def exit_layers(model: MpeeModel, traces: Traces, policy: str, threshold: float) -> np.ndarray:
    """(n,) 1-based exit layer of every example under the policy (the last layer without layer exits)."""
    if not model.mpee.layer_exit:
        check_threshold(policy, threshold)
        return np.full(len(traces.labels), model.mpee.num_layers, dtype=np.int64)
    return first_exit_layers(traces.probs, traces.entropies, policy, threshold)


def summarize(model: MpeeModel, task: Task, traces: Traces, exits: np.ndarray, *,
              policy: str, threshold: float, kind: str = "mpee") -> EvalRow:
    """Scores, exit statistics and FLOPs speed-up of one operating point."""
    n, layers = traces.attn_lens.shape
    final = traces.probs[np.arange(n), exits - 1]
    scores = compute_metrics(task, final.argmax(-1).tolist(), traces.labels.tolist())
    fm = model.flops_model
    executed = [fm.executed_flops(traces.attn_lens[i, :e], traces.ffn_lens[i, :e]) for i, e in enumerate(exits.tolist())]
    rho, rho128 = fm.dataset_speedups(traces.seq_lens.tolist(), executed)
    ran = np.arange(1, layers + 1)[None, :] <= exits[:, None]   # (n, L) layer executed
    reached = ran.sum(0)

    def mean_per_layer(lens: np.ndarray) -> list[float | None]:
        return [round(float(lens[ran[:, j], j].mean()), 3) if reached[j] else None for j in range(layers)]

    return EvalRow(
        kind=kind, task=task.name, n=int(n), policy=policy, threshold=threshold, keep_ratio=traces.keep_ratio,
        metric_name=scores.metric_name, metric=scores.metric, accuracy=scores.accuracy, f1=scores.f1,
        mean_exit_layer=float(exits.mean()),
        exit_layer_histogram={str(j): int((exits == j).sum()) for j in range(1, layers + 1)},
        mean_tokens_per_layer=mean_per_layer(traces.attn_lens),
        mean_ffn_tokens_per_layer=mean_per_layer(traces.ffn_lens),
        mean_input_tokens=float(traces.seq_lens.mean()),
        flops_executed_per_example=sum(executed) / n, rho=rho, rho_pad128=rho128)


def full_model_row(model: MpeeModel, task: Task, data: Encoded, *, batch_size: int = 64) -> EvalRow:
    """The reference row: last exit, no pruning (keep ratio 1), no early exit; with the accuracy each
    exit would have if every sample ran to it (no pruning)."""
    traces = compute_traces(model, data, keep_ratio=1.0, batch_size=batch_size)
    exits = np.full(len(data), model.mpee.num_layers, dtype=np.int64)
    row = summarize(model, task, traces, exits, policy="none", threshold=0.0, kind="full model")
    return replace(row, per_exit_accuracy=per_exit_accuracy(traces))


def sweep(model: MpeeModel, task: Task, data: Encoded, *, thresholds: Sequence[float],
          keep_ratios: Sequence[float], policy: str = "entropy", batch_size: int = 64,
          progress: bool = False, static: bool = False) -> list[EvalRow]:
    """One row per (keep ratio, threshold); one model pass per keep ratio. With `static`, also one row per
    (keep ratio, depth k): the same model always leaving at exit k (policy "depth", kind "static"),
    the simplest alternative to early exit."""
    rows = []
    for ratio in keep_ratios:
        traces = compute_traces(model, data, keep_ratio=ratio, batch_size=batch_size, progress=progress)
        for thr in thresholds:
            exits = exit_layers(model, traces, policy, thr)
            rows.append(summarize(model, task, traces, exits, policy=policy, threshold=thr))
        for k in range(1, model.mpee.num_layers + 1) if static else ():
            exits = exit_layers(model, traces, "depth", k)
            rows.append(summarize(model, task, traces, exits, policy="depth", threshold=k, kind="static"))
    return rows


def tradeoff_curves(label: str, result: EvalResult) -> tuple[list[Curve], Level]:
    """One model's series of the trade-off plot: the Pareto front of its early-exit rows, its static-depth
    rows as separate markers (one colour per model), and its full-model metric as a line."""
    front = pareto_front([r for r in result.rows if r.kind == "mpee"], x="rho", y="metric")
    curves = [Curve(f"{label}: MPEE front", [p.rho for p in front], [p.metric for p in front], "o-",
                    group=label, markersize=3)]
    static = sorted((r for r in result.rows if r.kind == "static"), key=lambda r: r.rho)
    if static:
        curves.append(Curve(f"{label}: static depth (exit k, each r)", [r.rho for r in static],
                            [r.metric for r in static], "s--", group=label, alpha=0.6, markersize=6))
    return curves, Level(result.full_model.metric, f"{label}: full model", group=label)


def plot_eval(path: Path, models: Sequence[tuple[str, EvalResult]], *, title: str) -> str | None:
    """Metric against FLOPs rho for one or more models' sweeps (mpee_runtime.bench.tradeoff.plot_tradeoff)."""
    curves, levels = [], []
    for label, result in models:
        c, level = tradeoff_curves(label, result)
        curves += c
        levels.append(level)
    return plot_tradeoff(path, curves, xlabel="FLOPs speed-up rho over the full model (x)",
                         ylabel=f"dev {models[0][1].full_model.metric_name} (%)", title=title, levels=levels)


def per_exit_accuracy(traces: Traces) -> list[float]:
    """Accuracy of each layer's blended prediction when every sample runs to that layer."""
    preds = traces.probs.argmax(-1)                 # (n, L)
    return [float(v) for v in (preds == traces.labels[:, None]).mean(0)]


def prediction_lines(traces: Traces, exits: np.ndarray, labels: Sequence[str]) -> list[dict]:
    """One record per example: index, label (predicted label name), exit_layer, probs (label order)."""
    rows = np.arange(len(exits))
    probs = traces.probs[rows, exits - 1]
    return [{"index": int(i), "label": labels[int(p.argmax())], "exit_layer": int(e),
             "probs": [round(float(x), 6) for x in p]} for i, (p, e) in enumerate(zip(probs, exits))]
