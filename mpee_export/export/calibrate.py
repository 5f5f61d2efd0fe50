"""Calibration: the default exit threshold (and keep ratio) of a bundle, chosen on labelled examples.

Returns a typed record and a new manifest; it never changes the PyTorch model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from mpee_runtime.bundle.contract import METRICS
from mpee_runtime.bundle.manifest import LengthPoint, Manifest
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
class LengthRow:
    """The point chosen for one input-length bucket (texts of more than the previous row's `max_tokens` and at
    most its own; None: every longer text), and what it gives on the bucket's examples."""

    max_tokens: int | None
    threshold: float
    keep_ratio: float | None        # None: the bundle's own
    examples: int
    scores: Scores | None           # None: no example in the bucket (the global point is used)
    rho: float | None

    @classmethod
    def from_dict(cls, d: dict) -> LengthRow:
        return cls(d["max_tokens"], d["threshold"], d["keep_ratio"], d["examples"],
                   None if d["scores"] is None else Scores.from_dict(d["scores"]), d["rho"])


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
    # --length-buckets: one point per bucket, chosen together so that the metric over all the examples stays
    # within max_drop_points (`calibrate_length_points`); their metric and rho over all the examples
    length_rows: list[LengthRow] | None = None
    length_scores: Scores | None = None
    length_rho: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        rows = d.get("length_rows")
        return cls(d["policy"], d["metric"], d["max_drop_points"], d["fp32_full_model"], d["examples"],
                   Candidate.from_dict(d["chosen"]), [Candidate.from_dict(c) for c in d["candidates"]],
                   d.get("cost", COST), None if rows is None else [LengthRow.from_dict(r) for r in rows],
                   None if d.get("length_scores") is None else Scores.from_dict(d["length_scores"]),
                   d.get("length_rho"))

    def summary(self) -> dict:
        """What the manifest records (exit.calibration): everything but the candidate list."""
        return {k: v for k, v in self.to_dict().items() if k != "candidates"}

    def describe(self) -> str:
        ch = self.chosen
        ratio = "the bundle's" if ch.keep_ratio is None else ch.keep_ratio
        f1 = f", F1 {100 * ch.scores.f1:.2f}" if ch.scores.f1 is not None else ""
        text = (f"calibrated threshold {ch.threshold} (keep ratio {ratio}; {self.metric} within "
                f"{self.max_drop_points} points of the fp32 full model's {100 * self.fp32_full_model:.2f}): "
                f"accuracy {100 * ch.scores.accuracy:.2f}{f1}, mean exit layer {ch.mean_exit_layer:.2f}, "
                f"rho {ch.rho:.2f}")
        if self.length_rows:
            rows = "; ".join(
                f"<= {r.max_tokens if r.max_tokens is not None else 'any'} tokens: F {r.threshold}, keep ratio "
                f"{'the bundle' + chr(39) + 's' if r.keep_ratio is None else r.keep_ratio} ({r.examples} examples"
                + ("" if r.scores is None else f", accuracy {100 * r.scores.accuracy:.2f}, rho {r.rho:.2f}") + ")"
                for r in self.length_rows)
            text += (f"\nlength points (together: accuracy {100 * self.length_scores.accuracy:.2f}, rho "
                     f"{self.length_rho:.2f}): {rows}")
        return text


def calibrate_threshold(engine: MpeeEngine, examples, labels: list[int], *, full_metric: float,
                        max_drop: float, metric: str = "accuracy", policy: str = "entropy",
                        thresholds=None, passes: FullDepthPasses | None = None) -> Calibration:
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
    passes = passes or FullDepthPasses(engine, examples)
    candidates = [c for ratio in ratios
                  for c in _candidates(engine, examples, labels, ratio, thresholds, policy, metric, passes)]
    floor = full_metric - max_drop / 100
    ok = [c for c in candidates if c.scores.metric >= floor]
    if not ok:
        raise MpeeExportError(f"no threshold keeps {metric} within {max_drop} points of {full_metric:.4f}")
    best = max(ok, key=lambda c: c.rho)
    return Calibration(policy, metric, max_drop, full_metric, len(examples), best, candidates)


class FullDepthPasses:
    """The runtime's full-depth passes over the calibration examples, one per keep ratio, each run once and
    shared by `calibrate_threshold` and `calibrate_length_points` (on IMDB's 1,000 reviews a pass is minutes):
    every layer's probabilities and entropies (n, L, C), (n, L), and the FLOPs executed up to each layer (n, L)."""

    def __init__(self, engine: MpeeEngine, examples) -> None:
        self.engine, self.examples = engine, examples
        self._passes: dict = {}

    def of(self, ratio: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if ratio not in self._passes:
            fm = self.engine.flops_model
            traces = [self.engine.run_ids(ids, types, **NO_EXIT, keep_ratio=ratio, record=True)
                      for ids, types in self.examples]
            per_layer = np.array([[fm.layer_flops(a, f) + fm.exit_flops()
                                   for a, f in zip(t.tokens_per_layer, t.ffn_tokens_per_layer)] for t in traces],
                                 dtype=np.float64)
            self._passes[ratio] = (np.array([t.layer_probs for t in traces]),
                                   np.array([t.layer_entropies for t in traces]), np.cumsum(per_layer, axis=1))
        return self._passes[ratio]


def _outcomes(engine: MpeeEngine, examples, ratio: float | None, thresholds, policy: str,
              passes: FullDepthPasses | None = None):
    """Per threshold at one keep ratio, read off one full-depth pass of the runtime: each example's exit
    layer, predicted class and executed FLOPs, as (exits, preds, flops) arrays (n,)."""
    probs, ents, cumulative = (passes or FullDepthPasses(engine, examples)).of(ratio)
    for thr in thresholds:
        exits = first_exit_layers(probs, ents, policy, thr)
        rows = np.arange(len(exits))
        yield thr, exits, probs[rows, exits - 1].argmax(-1), cumulative[rows, exits - 1]


def _candidates(engine: MpeeEngine, examples, labels: list[int], ratio: float | None, thresholds,
                policy: str, metric: str, passes: FullDepthPasses) -> list[Candidate]:
    """Every threshold at one keep ratio, read off one full-depth pass of the runtime."""
    seq_lens = [int(ids.shape[1]) for ids, _ in examples]
    return [Candidate(thr, ratio, Scores.of(preds.tolist(), labels, metric), float(exits.mean()),
                      engine.flops_model.dataset_speedups(seq_lens, flops.tolist())[0])
            for thr, exits, preds, flops in _outcomes(engine, examples, ratio, thresholds, policy, passes)]


EXTRA_LENGTH_RATIOS = (0.5, 1.0)   # keep ratios the length points may choose besides the bundle's own


def calibrate_length_points(engine: MpeeEngine, examples, labels: list[int], edges: list[int], *,
                            base: Calibration, thresholds=None, passes: FullDepthPasses | None = None
                            ) -> Calibration:
    """`base` with one (threshold, keep ratio) per input-length bucket (`edges`: the buckets' largest token
    counts, increasing; one more bucket takes every longer text), chosen together: the fewest FLOPs executed
    over all the examples whose accuracy over all of them stays within `base.max_drop_points` of the fp32 full
    model's (exact: a dynamic programme over the number of correct answers, bucket by bucket). Keep ratios
    tried: the bundle's own, EXTRA_LENGTH_RATIOS. A bucket without examples takes `base`'s point. Accuracy only:
    F1 is not a sum over examples."""
    if base.metric != "accuracy":
        raise MpeeExportError(f"length points need an accuracy task (this one is judged by {base.metric})")
    if not edges or any(e < 1 for e in edges) or edges != sorted(set(edges)):
        raise MpeeExportError(f"length buckets: increasing token counts >= 1, got {edges}")
    if thresholds is None:
        thresholds = [round(float(x), 4) for x in np.linspace(0, np.log(len(engine.labels)), 70)]
    own = [engine.default_keep_ratios[i] for i in sorted(engine.default_keep_ratios)]
    ratios = [None] + [r for r in EXTRA_LENGTH_RATIOS if any(x != r for x in own)]
    gold = np.asarray(labels)
    seq_lens = np.array([int(ids.shape[1]) for ids, _ in examples])
    bucket = np.searchsorted(np.asarray(edges), seq_lens, side="left")   # index of the first edge >= length
    passes = passes or FullDepthPasses(engine, examples)
    options = [(thr, ratio, preds, preds == gold, flops) for ratio in ratios
               for thr, _, preds, flops in _outcomes(engine, examples, ratio, thresholds, base.policy, passes)]
    n, buckets = len(examples), len(edges) + 1
    floor = int(np.ceil((base.fp32_full_model - base.max_drop_points / 100) * n - 1e-9))
    # best[c]: the fewest FLOPs of the buckets so far with c correct answers; choice[b][c]: bucket b's option
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    choices = []
    for b in range(buckets):
        members = bucket == b
        if not members.any():
            choices.append(None)
            continue
        nxt, pick = np.full(n + 1, np.inf), np.full(n + 1, -1)
        for j, (_, _, _, right, flops) in enumerate(options):
            c, cost = int(right[members].sum()), float(flops[members].sum())
            shifted = np.full(n + 1, np.inf)
            shifted[c:] = best[:n + 1 - c] + cost
            better = shifted < nxt
            nxt[better], pick[better] = shifted[better], j
        best = nxt
        choices.append(pick)
    reachable = np.flatnonzero(np.isfinite(best[floor:])) + floor
    if not len(reachable):
        raise MpeeExportError(f"no length points keep accuracy within {base.max_drop_points} points")
    c = int(reachable[np.argmin(best[reachable])])
    chosen: list[int | None] = [None] * buckets
    for b in reversed(range(buckets)):   # walk the choices back from the best final count
        if choices[b] is None:
            continue
        j = int(choices[b][c])
        chosen[b] = j
        c -= int(options[j][3][bucket == b].sum())
    rows, preds_all, flops_all = [], np.zeros(n, np.int64), np.zeros(n)
    fm = engine.flops_model
    for b, j in enumerate(chosen):
        members = bucket == b
        edge = edges[b] if b < len(edges) else None
        if j is None:
            rows.append(LengthRow(edge, base.chosen.threshold, base.chosen.keep_ratio, 0, None, None))
            continue
        thr, ratio, preds, _, flops = options[j]
        preds_all[members], flops_all[members] = preds[members], flops[members]
        rows.append(LengthRow(edge, thr, ratio, int(members.sum()),
                              Scores.of(preds[members].tolist(), gold[members].tolist(), "accuracy"),
                              fm.dataset_speedups(seq_lens[members].tolist(), flops[members].tolist())[0]))
    return replace(base, length_rows=rows, length_scores=Scores.of(preds_all.tolist(), gold.tolist(), "accuracy"),
                   length_rho=fm.dataset_speedups(seq_lens.tolist(), flops_all.tolist())[0])


def apply_calibration(manifest: Manifest, calibration: Calibration) -> Manifest:
    """The manifest with the calibrated default threshold (and keep ratio, when one was chosen) and a
    summary of how they were chosen (the candidate list stays in validation.json)."""
    chosen = calibration.chosen
    points = None
    if calibration.length_rows:   # the bundle's own ratios as numbers: the global point may change the default
        own = manifest.pruning.keep_ratios
        if any(r.keep_ratio is None for r in calibration.length_rows) and len(set(own)) > 1:
            raise MpeeExportError("length points with a keep-ratio schedule are not supported")
        points = [LengthPoint(r.max_tokens, r.threshold, own[0] if r.keep_ratio is None and own else r.keep_ratio)
                  for r in calibration.length_rows]
    exit_ = replace(manifest.exit, default_policy=calibration.policy, default_threshold=chosen.threshold,
                    calibration=calibration.summary(), length_points=points)
    pruning = manifest.pruning
    if chosen.keep_ratio is not None:
        pruning = replace(pruning, keep_ratios=[chosen.keep_ratio] * len(pruning.prune_layers))
    return replace(manifest, exit=exit_, pruning=pruning)
