"""Evaluation: per-layer traces of the model on a data set, then the exit policy, metrics and FLOPs.

The model runs every layer once per example and records each layer's blended prediction and token
counts. Layer l's output does not depend on whether the sample would have stopped earlier, so the
exit layer for any threshold is read off these traces with the runtime's own exit rule; a sweep over
thresholds costs one pass per keep ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mpee_runtime.bench import pareto_front
from mpee_runtime.flops import FLOPS_CONVENTION
from mpee_runtime.policy import check_threshold, first_exit_layers

from .batching import Encoded, collate, eval_batches
from .glue import GlueTask, compute_metrics
from .modeling import MpeeModel, memories_to_probs

DEFAULT_THRESHOLDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_KEEP_RATIOS = (0.5, 0.7, 1.0)


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


def summarize(model: MpeeModel, task: GlueTask, traces: Traces, exits: np.ndarray, *,
              policy: str, threshold: float) -> dict:
    """Metrics, exit statistics and FLOPs speed-up of one operating point."""
    n, layers = traces.attn_lens.shape
    rows = np.arange(n)
    final = traces.probs[rows, exits - 1]
    preds = final.argmax(-1)
    metrics = compute_metrics(task, preds.tolist(), traces.labels.tolist())
    fm = model.flops_model
    executed = [fm.executed_flops(traces.attn_lens[i, :e], traces.ffn_lens[i, :e]) for i, e in enumerate(exits.tolist())]
    rho, rho128 = fm.dataset_speedups(traces.seq_lens.tolist(), executed)
    ran = np.arange(1, layers + 1)[None, :] <= exits[:, None]   # (n, L) layer executed
    reached = ran.sum(0)

    def mean_per_layer(lens: np.ndarray) -> list[float | None]:
        return [round(float(lens[ran[:, j], j].mean()), 3) if reached[j] else None for j in range(layers)]

    return {
        "task": task.name, "n": int(n), "policy": policy, "threshold": threshold,
        "keep_ratio": traces.keep_ratio,
        "metric": metrics["metric"], "accuracy": metrics["accuracy"],
        **({"f1": metrics["f1"]} if "f1" in metrics else {}),
        "mean_exit_layer": float(exits.mean()),
        "exit_layer_histogram": {str(j): int((exits == j).sum()) for j in range(1, layers + 1)},
        "mean_tokens_per_layer": mean_per_layer(traces.attn_lens),
        "mean_ffn_tokens_per_layer": mean_per_layer(traces.ffn_lens),
        "mean_input_tokens": float(traces.seq_lens.mean()),
        "flops_executed_per_example": sum(executed) / n,
        "rho": rho,
        "rho_pad128": rho128,
        "flops_convention": FLOPS_CONVENTION,
    }


def full_model_row(model: MpeeModel, task: GlueTask, data: Encoded, *, batch_size: int = 64) -> dict:
    """The reference row: last exit, no pruning (keep ratio 1), no early exit; with the accuracy each
    exit would have if every sample ran to it (no pruning)."""
    traces = compute_traces(model, data, keep_ratio=1.0, batch_size=batch_size)
    exits = np.full(len(data), model.mpee.num_layers, dtype=np.int64)
    return summarize(model, task, traces, exits, policy="none", threshold=0.0) | {
        "row": "full model", "per_exit_accuracy": per_exit_accuracy(traces)}


def sweep(model: MpeeModel, task: GlueTask, data: Encoded, *, thresholds: Sequence[float],
          keep_ratios: Sequence[float], policy: str = "entropy", batch_size: int = 64,
          progress: bool = False, static: bool = False) -> list[dict]:
    """One row per (keep ratio, threshold); one model pass per keep ratio. With `static`, also one row per
    (keep ratio, depth k): the same model always leaving at exit k (policy "depth", "row": "static"),
    the simplest alternative to early exit."""
    rows = []
    for ratio in keep_ratios:
        traces = compute_traces(model, data, keep_ratio=ratio, batch_size=batch_size, progress=progress)
        for thr in thresholds:
            exits = exit_layers(model, traces, policy, thr)
            rows.append(summarize(model, task, traces, exits, policy=policy, threshold=thr))
        for k in range(1, model.mpee.num_layers + 1) if static else ():
            exits = exit_layers(model, traces, "depth", k)
            rows.append(summarize(model, task, traces, exits, policy="depth", threshold=k) | {"row": "static"})
    return rows


def plot_tradeoff(path, models: Sequence[tuple[str, Sequence[dict]]], *, title: str) -> None:
    """Metric against FLOPs rho: per model, the Pareto front of its early-exit rows, its static-depth rows
    ("row": "static") as separate markers, and its full-model row ("row": "full model") as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, rows in models:
        exits = [{"rho": r["rho"], "metric": r["metric"]["value"]} for r in rows
                 if r.get("row") not in ("static", "full model")]
        front = pareto_front(exits, x="rho", y="metric")
        line, = ax.plot([p["rho"] for p in front], [100 * p["metric"] for p in front], "o-", ms=3,
                        label=f"{label}: MPEE front")
        static = sorted((r for r in rows if r.get("row") == "static"), key=lambda r: r["rho"])
        if static:
            ax.plot([r["rho"] for r in static], [100 * r["metric"]["value"] for r in static], "s--",
                    color=line.get_color(), alpha=0.6, label=f"{label}: static depth (exit k, each r)")
        full = next((r for r in rows if r.get("row") == "full model"), None)
        if full:
            ax.axhline(100 * full["metric"]["value"], color=line.get_color(), lw=0.8, ls=":",
                       label=f"{label}: full model")
    any_rows = next(iter(models))[1]
    ax.set_xlabel("FLOPs speed-up rho over the full model (x)")
    ax.set_ylabel(f"dev {any_rows[0]['metric']['name']} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



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
