"""How much FLOPs speed-up (rho) a checkpoint's exits allow within a point of its full model: the exit bound.

    python benchmarks/exit_bound.py CKPT [--data GLUE_DIR | --dev dev.csv] [--max-eval-samples N]
        [--task T] [--keep-ratios 0.5,0.7,1.0] [--max-drop 1.0] [--out exit_bound.md]

A measured speed-up is rho times the realisation (measured speed-up / rho, below 1 on a CPU: the per-layer work the
FLOPs formula leaves out). So a target speed-up S needs a point with rho >= S / realisation within the allowed
drop. This script asks how high rho can go at all with the checkpoint's exits, in PyTorch (no timing, one pass of
every layer per keep ratio, `training.evaluate.compute_traces`), for three exit rules of rising freedom:

- **one threshold** (MPEE's rule, `entropy` policy): the best F, trying every entropy seen (`candidates`);
- **a threshold per layer** (entropy < F_l at layer l), fitted by coordinate ascent on the data, then the honest
  figure: fitted on one half of the examples and scored on the other (two folds, seeded split; each fold's drop
  is measured against its own half's full model);
- **the stability oracle**: every example leaves at the first layer after which its blended prediction never
  changes, i.e. exactly the full model's answers at the least depth any rule could give them; it knows the
  future and is no deployable rule: an upper bound on what an exit rule that keeps the full model's answers gets.

The full model is the checkpoint's last exit without pruning (the `full model` row of mpee-eval). FLOPs and rho
are the product's (`mpee_runtime.core.flops`): ratio of sums over the data set, embeddings not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MAX_CANDIDATES = 2000   # thresholds tried per search: the entropies seen, or this many of their quantiles
SWEEPS = 4              # coordinate-ascent passes over the layers


def candidates(entropies: np.ndarray) -> np.ndarray:
    """Thresholds worth trying: 0 and, just above each entropy seen (the rule is entropy < F), that entropy; every
    other threshold stops the same examples as one of these (exactly while at most MAX_CANDIDATES are seen)."""
    seen = np.unique(entropies.astype(np.float64))
    if len(seen) > MAX_CANDIDATES:
        seen = np.unique(np.quantile(seen, np.linspace(0, 1, MAX_CANDIDATES)))
    return np.concatenate([[0.0], np.nextafter(seen, np.inf)])


@dataclass(frozen=True)
class Trace:
    """Every layer of every example at one keep ratio: blended probabilities, their entropies, FLOPs."""

    keep_ratio: float
    probs: np.ndarray      # (n, L, C)
    entropies: np.ndarray  # (n, L)
    flops: np.ndarray      # (n, L) FLOPs executed by an example that leaves after layer l (exit heads included)
    full: np.ndarray       # (n,) the full model's FLOPs on the example
    labels: np.ndarray     # (n,)

    def outcome(self, thresholds: np.ndarray, rows: np.ndarray) -> tuple[float, float, float]:
        """(accuracy, rho, mean exit layer) of `rows` when layer l stops an example with entropy < thresholds[l]."""
        fire = self.entropies[rows] < thresholds[None, :]
        fire[:, -1] = True
        exits = fire.argmax(1)
        right = self.probs[rows, exits].argmax(-1) == self.labels[rows]
        return float(right.mean()), float(self.full[rows].sum() / self.flops[rows, exits].sum()), float(exits.mean() + 1)


@dataclass(frozen=True)
class BoundRow:
    """One exit rule at one keep ratio; accuracies in percent. `full` is the full model's accuracy on the rows the
    figure is scored on (all examples, or the held-out half). No thresholds (and no accuracy, rho, exit layer):
    no threshold of the rule keeps the fitted rows within the allowed drop at this keep ratio."""

    keep_ratio: float
    rule: str
    accuracy: float | None
    full: float
    rho: float | None
    mean_exit_layer: float | None
    thresholds: list[float] | None


def traces(checkpoint: Path, data: str | None, dev: Path | None, task: str | None, limit: int | None,
           keep_ratios: list[float]) -> list[Trace]:
    """One Trace per keep ratio: the checkpoint on the dev split read the way mpee-eval reads it."""
    import torch

    from mpee_export.cli.common import eval_source
    from mpee_export.data.batching import encode
    from mpee_export.model.checkpoint import load_checkpoint, read_mpee_config
    from mpee_export.training.evaluate import compute_traces

    torch.set_num_threads(2)
    _, mpee = read_mpee_config(checkpoint)
    examples = eval_source(data, dev, task, mpee).load("dev", limit=limit)
    model, tokenizer = load_checkpoint(checkpoint)
    encoded = encode(examples, tokenizer, mpee.max_length, mpee.truncation)
    fm, out = model.flops_model, []
    for ratio in keep_ratios:
        t = compute_traces(model, encoded, keep_ratio=ratio, batch_size=32, progress=True)
        layers = t.attn_lens.shape[1]
        flops = np.array([[fm.executed_flops(t.attn_lens[i, :e], t.ffn_lens[i, :e]) for e in range(1, layers + 1)]
                          for i in range(len(t.labels))], dtype=np.float64)
        full = np.array([fm.full_flops(int(s)) for s in t.seq_lens], dtype=np.float64)
        out.append(Trace(ratio, t.probs, t.entropies, flops, full, t.labels))
    return out


def best_single(trace: Trace, rows: np.ndarray, floor: float) -> np.ndarray | None:
    """The one-threshold vector of highest rho with accuracy >= floor on `rows` (None: no threshold qualifies)."""
    layers = trace.entropies.shape[1]
    best, best_rho = None, -1.0
    for f in candidates(trace.entropies[rows]):
        acc, rho, _ = trace.outcome(np.full(layers, f), rows)
        if acc >= floor and rho > best_rho:
            best, best_rho = np.full(layers, f), rho
    return best


def fit_per_layer(trace: Trace, rows: np.ndarray, floor: float) -> np.ndarray | None:
    """Per-layer thresholds by coordinate ascent from the best single threshold: each layer's F in turn moves to
    the candidate of highest rho that keeps accuracy >= floor on `rows`."""
    thresholds = best_single(trace, rows, floor)
    if thresholds is None:
        return None
    for _ in range(SWEEPS):
        for layer in range(len(thresholds) - 1):   # the last layer stops every example anyway
            best_rho = trace.outcome(thresholds, rows)[1]
            for f in candidates(trace.entropies[rows, layer]):
                trial = thresholds.copy()
                trial[layer] = f
                acc, rho, _ = trace.outcome(trial, rows)
                if acc >= floor and rho > best_rho:
                    thresholds, best_rho = trial, rho
    return thresholds


def stability_oracle(trace: Trace, rows: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, rho, mean exit layer) when each example leaves at the first layer from which its prediction
    equals the last layer's at every later layer."""
    preds = trace.probs[rows].argmax(-1)                       # (n, L)
    disagree = preds != preds[:, -1:]
    # 0-based exit: the layer after the last one that disagrees with the last layer (0 where none does)
    exits = np.where(disagree.any(1), disagree.shape[1] - disagree[:, ::-1].argmax(1), 0)
    right = preds[:, -1] == trace.labels[rows]
    return float(right.mean()), float(trace.full[rows].sum() / trace.flops[rows, exits].sum()), float(exits.mean() + 1)


def bound_rows(all_traces: list[Trace], max_drop: float, seed: int = 0) -> list[BoundRow]:
    """Every rule at every keep ratio. The floor is the full model's accuracy (keep ratio 1, last exit) on the
    rows a rule is fitted on, minus `max_drop` points; held-out figures are scored on the other half."""
    full_trace = next(t for t in all_traces if t.keep_ratio == 1.0)
    n = len(full_trace.labels)

    def full_acc(rows: np.ndarray) -> float:
        return float((full_trace.probs[rows, -1].argmax(-1) == full_trace.labels[rows]).mean())

    everyone = np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    folds = [(perm[: n // 2], perm[n // 2:]), (perm[n // 2:], perm[: n // 2])]
    out = []

    def add(t: Trace, rule: str, thresholds: np.ndarray | None, rows: np.ndarray) -> None:
        if thresholds is None:
            out.append(BoundRow(t.keep_ratio, rule, None, 100 * full_acc(rows), None, None, None))
            return
        acc, rho, exit_layer = t.outcome(thresholds, rows)
        out.append(BoundRow(t.keep_ratio, rule, 100 * acc, 100 * full_acc(rows), rho, exit_layer,
                            [round(float(f), 4) for f in thresholds]))

    for t in all_traces:
        floor = full_acc(everyone) - max_drop / 100
        add(t, "one threshold", best_single(t, everyone, floor), everyone)
        add(t, "a threshold per layer, fitted on all (in-sample)", fit_per_layer(t, everyone, floor), everyone)
        for k, (fit, score) in enumerate(folds, start=1):
            fold_floor = full_acc(fit) - max_drop / 100
            add(t, f"one threshold, fitted on half {k}, scored on the other", best_single(t, fit, fold_floor), score)
            add(t, f"a threshold per layer, fitted on half {k}, scored on the other",
                fit_per_layer(t, fit, fold_floor), score)
        acc, rho, exit_layer = stability_oracle(t, everyone)
        out.append(BoundRow(t.keep_ratio, "stability oracle (knows the later layers: not a rule)", 100 * acc,
                            100 * full_acc(everyone), rho, exit_layer, []))
    return out


def render(rows: list[BoundRow], command: str, max_drop: float) -> str:
    lines = [f"Exit bound: rho within {max_drop:g} point(s) of the full model (`benchmarks/exit_bound.py`)", "",
             f"    {command}", "",
             "| keep ratio | rule | accuracy | full model (same rows) | drop | rho | mean exit layer |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.rho is None:
            lines.append(f"| {r.keep_ratio:g} | {r.rule} | none within the drop | {r.full:.2f} | | | |")
            continue
        lines.append(f"| {r.keep_ratio:g} | {r.rule} | {r.accuracy:.2f} | {r.full:.2f} | {r.full - r.accuracy:+.2f} "
                     f"| {r.rho:.2f} | {r.mean_exit_layer:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", default=None, help="GLUE folder (the checkpoint's task)")
    p.add_argument("--task", default=None, help="GLUE task [default: the checkpoint's]")
    p.add_argument("--dev", type=Path, default=None, help="the dev file of a checkpoint trained on your own files")
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--keep-ratios", default="0.5,0.7,1.0")
    p.add_argument("--max-drop", type=float, default=1.0, help="allowed drop below the full model, in points")
    p.add_argument("--out", type=Path, default=None, help="write the table here (and the rows as .json beside it)")
    args = p.parse_args(argv)
    try:
        ratios = sorted({float(x) for x in args.keep_ratios.split(",")} | {1.0})
    except ValueError:
        p.error(f"--keep-ratios {args.keep_ratios!r}: give numbers in (0, 1] separated by commas")
    if not all(0 < r <= 1 for r in ratios) or args.max_drop < 0:
        p.error("keep ratios must be in (0, 1] and --max-drop >= 0")
    from mpee_export.errors import MpeeExportError
    try:
        found = traces(args.checkpoint, args.data, args.dev, args.task, args.max_eval_samples, ratios)
    except MpeeExportError as e:   # no checkpoint, no data, wrong task: one line, as the CLIs do
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
    rows = bound_rows(found, args.max_drop)
    command = "python benchmarks/exit_bound.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = render(rows, command, args.max_drop)
    print(table)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n",
                                                 encoding="utf-8")


if __name__ == "__main__":
    main()
