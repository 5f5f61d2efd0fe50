"""A throughput row from a variant's passes, the speed-ups against the best full model of each precision
and batch size, the A/A spreads, and the notes on rows that differ from batch 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..analysis import relative_spread
from .records import AA_SUFFIX, BATCH_END, ENGINE, FULL, MPEE, AASpread, Comparison, Latency, ThroughputRow
from .runners import Variant
from .timing import PassResult

FALLBACK_NOTE = ("{key} at batch size {size}: the engine gave no per-row times (Prediction.timings_us['total']), "
                 "so every row's latency is its batch's wall time (an upper bound for rows that exit early)")


def summarize(v: Variant, size: int, passes: Sequence[PassResult], gold: Sequence[int] | None,
              alone: np.ndarray, n_batches: int) -> ThroughputRow:
    """A row from a variant's passes at one batch size."""
    last = passes[-1]
    latency = Latency.of(np.concatenate([p.latency_ns for p in passes]) / 1e3)
    wall_s = [p.wall_ns / 1e9 for p in passes]
    n = len(last.labels)
    accuracy = None if gold is None else float(np.mean(last.labels == np.asarray(gold)))
    source = BATCH_END if v.kind == FULL or any(p.batch_end for p in passes) else ENGINE
    return ThroughputRow(v.name, v.way, v.kind, v.precision, size, len(v.runners), v.threads_per_session, v.source,
                         n, n_batches, wall_s, n * len(passes) / sum(wall_s), latency, accuracy,
                         float(np.mean(last.labels == alone)), source, float(np.mean(last.exit_layers)),
                         [int(x) for x in last.labels])


def compare(rows: list[ThroughputRow]) -> tuple[list[ThroughputRow], list[Comparison], list[AASpread]]:
    """Rows with their speed-ups, the comparisons and the A/A spreads (rules in the module docstring)."""
    out, comparisons, aa = [], [], []
    for size in sorted({r.batch_size for r in rows}):
        here = [r for r in rows if r.batch_size == size]
        for precision in sorted({r.precision for r in here}):
            mine = [r for r in here if r.precision == precision]
            full = [r for r in mine if r.kind == FULL and not r.variant.endswith(AA_SUFFIX)]
            mpee = [r for r in mine if r.kind == MPEE]
            base = max(full, key=lambda r: r.texts_per_s) if full else None
            best = max(mpee, key=lambda r: r.texts_per_s) if mpee else None
            out += [replace(r, speedup=r.texts_per_s / base.texts_per_s if base else None,
                            baseline=base.key if base else None) for r in mine]
            if base is not None:
                comparisons.append(Comparison(size, precision, base.key, base.texts_per_s,
                                              best.key if best else None, best.texts_per_s if best else None,
                                              best.texts_per_s / base.texts_per_s if best else None))
        twins = [(a, b) for a in here for b in here if b.variant == a.variant + AA_SUFFIX and a.way == b.way]
        for a, b in twins:
            aa.append(AASpread(size, [a.key, b.key], relative_spread(a.texts_per_s, b.texts_per_s),
                               relative_spread(a.latency.p50_us, b.latency.p50_us)))
    return out, comparisons, aa


def row_notes(rows: Sequence[ThroughputRow]) -> list[str]:
    """A note for every row whose labels differ from its model's alone at batch 1, and for every MPEE row
    whose latencies are its batches' wall times."""
    notes = [f"{r.key} at batch size {r.batch_size}: {round(r.agreement * r.texts)} of {r.texts} labels equal the "
             f"model's alone at batch 1 ({'engine.predict' if r.kind == MPEE else 'unpadded'})"
             for r in rows if r.agreement < 1]
    return notes + [FALLBACK_NOTE.format(key=r.key, size=r.batch_size) for r in rows
                    if r.kind == MPEE and r.latency_source == BATCH_END]
