"""throughput.md, throughput.png and throughput.json from a `ThroughputRecord`, and the console summary."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ...files import AtomicFolder, write_text
from .records import SINGLE, AASpread, ThroughputRecord, ThroughputRow

RECORD, TABLE, PLOT = "throughput.json", "throughput.md", "throughput.png"


def _way(r: ThroughputRow) -> str:
    return f"{r.way} ({r.sessions} x {r.threads_per_session} thread{'s' if r.threads_per_session > 1 else ''})"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


TABLE_INTRO = ("Speed-up: texts/s against the faster full-model way of the row's precision at the same batch "
               "size. Way: sessions (MPEE: engines) running at once x threads each.")


TABLE_HEAD = ("| batch size | variant | way | precision | texts/s | p50 ms | p99 ms | accuracy | mean exit layer "
              "| speed-up vs best full model (same precision) |")


def markdown(rec: ThroughputRecord) -> str:
    """throughput.md: the table of every row, the comparisons, the A/A line, warnings and notes."""
    s = rec.settings
    lines = [f"# Throughput on {rec.task}: {s.examples} examples, {s.threads} threads, {s.repeats} repetitions",
             "", TABLE_INTRO, "", TABLE_HEAD, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rec.rows:
        acc = None if r.accuracy is None else 100 * r.accuracy
        lines.append(f"| {r.batch_size} | {r.variant} | {_way(r)} | {r.precision} | {r.texts_per_s:.1f} | "
                     f"{r.latency.p50_us / 1e3:.2f} | {r.latency.p99_us / 1e3:.2f} | {_num(acc, '.2f')} | "
                     f"{r.mean_exit_layer:.2f} | {_num(r.speedup, '.2f')}x |")
    lines += ["", "| batch size | precision | best full model | texts/s | best MPEE | texts/s | speed-up |",
              "|---:|---|---|---:|---|---:|---:|"]
    for c in rec.comparisons:
        lines.append(f"| {c.batch_size} | {c.precision} | {c.baseline} | {c.baseline_texts_per_s:.1f} | "
                     f"{c.best_mpee or '-'} | {_num(c.best_mpee_texts_per_s, '.1f')} | {_num(c.speedup, '.2f')}x |")
    lines += ["", aa_line(rec.aa)]
    lines += [f"\n**Warning:** {w}" for w in rec.warnings]
    lines += ["", "Notes:", *[f"- {n}" for n in rec.notes]]
    return "\n".join(lines) + "\n"


def aa_line(aa: Sequence[AASpread]) -> str:
    """One line: the A/A pair's spreads at every batch size and whether any is above its threshold."""
    if not aa:
        return "A/A control: not measured"
    parts = ", ".join(f"b={a.batch_size}: {100 * a.texts_per_s_spread:.1f}% texts/s, {100 * a.p50_spread:.1f}% p50"
                      for a in aa)
    verdict = "FLAGGED" if any(a.flagged for a in aa) else "within"
    return (f"A/A control: {' and '.join(aa[0].variants)} (the same variant on two loads) differ by {parts} "
            f"({verdict} {100 * aa[0].threshold:.0f}%).")


def plot(path: Path, rec: ThroughputRecord) -> str | None:
    """Throughput (x) against p99 latency (y, log) per variant and way, each point labelled by its batch
    size; None, or why the plot was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib not installed"
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key in dict.fromkeys(r.key for r in rec.rows):
        pts = sorted((r for r in rec.rows if r.key == key), key=lambda r: r.batch_size)
        xs, ys = [r.texts_per_s for r in pts], [r.latency.p99_us / 1e3 for r in pts]
        style = ("o" if pts[0].way == SINGLE else "s") + ("-" if pts[0].precision == "fp32" else "--")
        ax.plot(xs, ys, style, ms=5, label=f"{key} ({pts[0].precision})")
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(f"b={r.batch_size}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("throughput (texts/s)")
    ax.set_ylabel("p99 latency per request (ms, log)")
    ax.set_title(f"Throughput vs p99 latency on {rec.task}, {rec.settings.threads} threads")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_outputs(rec: ThroughputRecord, out: Path) -> list[Path]:
    """throughput.png (when matplotlib is installed), throughput.md and throughput.json into `out`, published
    together (files.AtomicFolder, merged into an existing folder, the record last); the paths written."""
    with AtomicFolder(out, merge=True, last=RECORD) as tmp:
        note = plot(tmp / PLOT, rec)
        if note and f"plot: {note}" not in rec.notes:
            rec.notes.append(f"plot: {note}")
        write_text(tmp / TABLE, markdown(rec))
        rec.dump(tmp / RECORD)
        names = sorted(p.name for p in tmp.iterdir())
    return [out / name for name in names]


def print_summary(rec: ThroughputRecord, written: Sequence[Path]) -> None:
    """The comparisons and the A/A line on stdout, warnings on stderr."""
    for c in rec.comparisons:
        print(f"batch {c.batch_size:>3} {c.precision}: best full {c.baseline} {c.baseline_texts_per_s:.1f} texts/s"
              + (f", best MPEE {c.best_mpee} {c.best_mpee_texts_per_s:.1f} texts/s: {c.speedup:.2f}x"
                 if c.best_mpee else ""))
    print(aa_line(rec.aa))
    for w in rec.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)))
