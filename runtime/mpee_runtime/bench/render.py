"""The report's files and console output from `BenchResults`: table.md (the table and the table by input
length), sweep.csv, tradeoff.png, speedup_by_length.png and results.json (`write_outputs`), and the summary on
stdout (`print_summary`)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..files import write_text
from .analysis import PLOT_BIN_TOKENS
from .results import AAControl, Baselines, BenchResults, LengthBreakdown, VariantSummary
from .tradeoff import Curve, Level, plot_tradeoff

RESULTS, TABLE, SWEEP_CSV, PLOT = "results.json", "table.md", "sweep.csv", "tradeoff.png"
PLOT_INT8 = "tradeoff_int8.png"   # the int8 sweep's (--int8-points), against the best int8 full model


LENGTH_PLOT = "speedup_by_length.png"


LENGTH_PLOT_VARIANTS = ("mpee", "pruning", "exits", "chain", "mpee_int8", "chain_int8", "mpee_length",
                        "mpee_int8_length")


def _speedup_cell(r: VariantSummary, suffix: str = "") -> str:
    mean, p50 = getattr(r, f"speedup_mean{suffix}"), getattr(r, f"speedup_p50{suffix}")
    return "-" if mean is None else f"{mean:.2f}x ({p50:.2f}x)"


def markdown_table(rows: Sequence[VariantSummary], task: str, baselines: Baselines, aa: AAControl | None = None
                   ) -> str:
    """Rows laid out like the paper's Table 1 (method, metric, FLOPs speed-up, measured speed-ups), headed by
    what each speed-up column is against and followed by the A/A control."""
    b = baselines
    if b.plain_fp32:
        intro = (f"Measured speed-ups, mean latency (p50). \"vs best full model\": against the fastest full model "
                 f"of the row's precision, {b.fp32} for fp32 rows and {b.int8} for int8 rows. \"vs plain "
                 f"fp32\": against {b.plain_fp32}, the plain fp32 optimum export.")
        best_col = f"speed-up vs best full model (fp32: {b.fp32}, int8: {b.int8})"
        plain_col = f"speed-up vs plain fp32 ({b.plain_fp32})"
    else:
        intro = ("Measured speed-ups, mean latency (p50), against our chain (no --reference: no full model "
                 "measured; int8 rows too).")
        best_col, plain_col = "speed-up vs chain", None
    lines = [intro, ""]
    head = (f"| Method | precision | {task} {rows[0].metric_name or 'metric'} | FLOPs speed-up rho | "
            f"rho (pad 128) | {best_col} | " + (f"{plain_col} | " if plain_col else "")
            + "mean exit layer | p50 / p99 latency (ms) |")
    lines += [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    for r in rows:
        metric = "-" if r.metric is None else f"{100 * r.metric:.2f}"
        lines.append(f"| {r.variant}: {r.description} | {r.precision} | {metric} | "
                     f"{r.rho:.2f}x | {r.rho_pad128:.2f}x | {_speedup_cell(r)} | "
                     + (f"{_speedup_cell(r, '_vs_plain_fp32')} | " if plain_col else "")
                     + f"{r.mean_exit_layer:.2f} | "
                     f"{r.p50_us / 1e3:.2f} / {r.latency['p99_us'] / 1e3:.2f} |")
    if aa is not None:
        a, b2 = aa.variants
        verdict = "FLAGGED, above" if aa.flagged else "within"
        lines += ["", (f"A/A control: {a} and {b2} (the same variant measured twice, on two loads of the bundle) "
                       f"differ by {100 * aa.mean_spread:.1f}% in mean latency and "
                       f"{100 * aa.p50_spread:.1f}% in p50 "
                       f"({verdict} {100 * aa.threshold:.0f}%).")]
    return "\n".join(lines) + "\n"


def _against(baselines: Baselines) -> str:
    return ("the best full model of the row's precision on the bucket's examples" if baselines.fp32 != "chain"
            else "our chain (no --reference: no full model measured; int8 rows too)")


def length_table(lb: LengthBreakdown, overall: Sequence[VariantSummary], baselines: Baselines) -> str:
    """The table by input length: for every bucket (and "all", the overall rows) each variant's metric, p50,
    speed-up against the bucket's baseline of its precision, FLOPs rho and realisation."""
    edges = ",".join(map(str, lb.edges)) or "none"
    intro = (f"Input length = tokens given to the model, [CLS]/[SEP] included; buckets cut at {edges} "
             f"(--length-buckets). Speed-up: mean latency (p50) against {_against(baselines)}, named per row; "
             "FLOPs rho: full-model FLOPs / the variant's FLOPs over the bucket's examples; realisation: "
             f"speed-up (mean) / rho. *: fewer than {lb.min_examples} examples (noisy).")
    lines = ["## By input length", "", intro, ""]
    metric = next((r.metric_name for r in overall if r.metric_name), None) or "metric"
    head = (f"| inputs (tokens) | examples | mean tokens | Method | precision | {metric} | p50 latency (ms) | "
            "speed-up vs | speed-up | FLOPs rho | realisation |")
    lines += [head, "|---|---:|---:|---|---|" + "---:|---:|---|" + "---:|" * 3]
    groups = [("all", lb.examples, lb.mean_tokens, lb.examples < lb.min_examples, overall)] + [
        (b.label, b.examples, b.mean_tokens, b.few, b.variants) for b in lb.buckets]
    for label, n, tokens, few, rows in groups:
        for r in rows:
            score = "-" if r.metric is None else f"{100 * r.metric:.2f}"
            lines.append(f"| {label}{' *' if few else ''} | {n} | {tokens:.1f} | {r.variant} | {r.precision} | "
                         f"{score} | {r.p50_us / 1e3:.2f} | {r.speedup_baseline} | {_speedup_cell(r)} | "
                         f"{r.rho:.2f}x | {r.realisation:.2f} |")
    return "\n".join(lines) + "\n"


def length_brief(lb: LengthBreakdown, overall: Sequence[VariantSummary]) -> str:
    """The table by input length in a few lines: one per variant, one column per bucket, each cell
    "speed-up (mean) / rho = realisation"."""
    cols = [("all", lb.examples, lb.mean_tokens, lb.examples < lb.min_examples, {r.variant: r for r in overall})] + [
        (b.label, b.examples, b.mean_tokens, b.few, {r.variant: r for r in b.variants}) for b in lb.buckets]
    heads = [f"{label}{'*' if few else ''} n={n} {tokens:.1f} tok" for label, n, tokens, few, _ in cols]
    cells = [[f"{r.speedup_mean:.2f}x/{r.rho:.2f}x={r.realisation:.2f}" for _, _, _, _, by in cols
              for r in [by[v.variant]]] for v in overall]
    width = max(len(x) for x in heads + [c for row in cells for c in row])
    name_w = max(len(v.variant) for v in overall)
    against = "the chain" if overall[0].speedup_baseline == "chain" else "the bucket's best full model of its precision"
    title = (f"by input length (speed-up, mean latency, vs {against} / FLOPs rho = realisation; *: under "
             f"{lb.min_examples} examples):")
    lines = [title, "  " + " " * name_w + "  " + "  ".join(h.rjust(width) for h in heads)]
    lines += ["  " + v.variant.ljust(name_w) + "  " + "  ".join(c.rjust(width) for c in row)
              for v, row in zip(overall, cells)]
    return "\n".join(lines)


CSV_COLUMNS = ("variant", "precision", "threshold", "keep_ratio", "metric", "accuracy", "mean_exit_layer", "rho",
               "rho_pad128", "speedup_baseline", "speedup_p50", "speedup_mean", "speedup_p50_vs_plain_fp32",
               "speedup_mean_vs_plain_fp32")


def write_csv(path: Path, rows: Sequence[VariantSummary]) -> None:
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(list(CSV_COLUMNS) + ["p50_us", "p90_us", "p99_us", "mean_us"])
    for r in rows:
        w.writerow([getattr(r, c) for c in CSV_COLUMNS] + [r.latency[k] for k in ("p50_us", "p90_us", "p99_us",
                                                                                   "mean_us")])
    write_text(path, text.getvalue())


def plot(path: Path, sweep: Sequence[VariantSummary], reference: VariantSummary, task: str,
         static: Sequence[VariantSummary] = (), precision: str = "fp32") -> str | None:
    """Metric against measured speed-up and against FLOPs rho per keep ratio (one colour per ratio), the
    static-depth points in black, the baseline's metric as a level, for the rows of one precision (`reference`:
    the best full model of that precision); None or why it was skipped."""
    sweep = [r for r in sweep if r.precision == precision]
    static = [r for r in static if r.precision == precision]
    base = reference.variant
    curves = []
    for ratio in sorted({r.keep_ratio for r in sweep}):
        pts = sorted((r for r in sweep if r.keep_ratio == ratio), key=lambda r: r.threshold)
        ys = [r.metric for r in pts]
        curves += [Curve(f"measured vs {base} (mean latency), keep ratio {ratio}", [r.speedup_mean for r in pts], ys,
                         "o-", group=f"r{ratio}", markersize=6),
                   Curve(f"FLOPs rho, keep ratio {ratio}", [r.rho for r in pts], ys, "x--", group=f"r{ratio}",
                         alpha=0.6, markersize=6)]
    for ratio in sorted({r.keep_ratio for r in static}):
        pts = sorted((r for r in static if r.keep_ratio == ratio), key=lambda r: r.threshold)
        curves.append(Curve(f"static depth (exit k), measured, keep ratio {ratio}", [r.speedup_mean for r in pts],
                            [r.metric for r in pts], "s:", color="black", alpha=0.35 + 0.4 * (ratio == 1.0)))
    what = f"best {precision} full model" if base != "chain" else "our chain, no --reference"
    return plot_tradeoff(path, curves, xlabel=f"speed-up over {base} ({what}; mean latency) (x)",
                         ylabel=f"{task} {reference.metric_name or 'metric'} (%)",
                         title=f"MPEE trade-off on {task}: measured latency vs FLOPs ({precision})",
                         levels=[Level(reference.metric, f"{base} ({what})")])


def plot_by_length(path: Path, bins: LengthBreakdown, task: str) -> str | None:
    """Measured speed-up (mean latency) against input length for LENGTH_PLOT_VARIANTS, each against the
    best full model of its precision within each bin; x = the bin's mean length; open markers: bins of
    fewer than `bins.min_examples` examples. None, or why the plot was skipped."""
    curves = []
    for name in LENGTH_PLOT_VARIANTS:
        pts = [(b, r) for b in bins.buckets for r in [b.row(name)] if r is not None]
        if not pts:
            continue
        precision = pts[0][1].precision
        curves.append(Curve(f"{name} ({precision})", [b.mean_tokens for b, _ in pts],
                            [r.speedup_mean for _, r in pts], "o--" if precision == "int8" else "o-",
                            hollow=[i for i, (b, _) in enumerate(pts) if b.few]))
    if not curves:
        return "skipped: none of " + ", ".join(LENGTH_PLOT_VARIANTS) + " measured"
    against = ("best full model of its precision" if bins.buckets[0].baselines.fp32 != "chain"
               else "our chain (no --reference)")
    return plot_tradeoff(path, curves, xlabel=f"input tokens (bins of {PLOT_BIN_TOKENS}, at their mean; open "
                         f"marker: under {bins.min_examples} examples)",
                         ylabel=f"speed-up (x), mean latency,\nvs {against} in the bin",
                         title=f"MPEE on {task}: measured speed-up by input length",
                         levels=[Level(1.0, "baseline (1x)")], percent=False, legend_loc="best")


def table_text(res: BenchResults) -> str:
    """The main table, the A/A line and the warnings (empty when the input has no labels)."""
    if res.variants[0].metric is None:
        return ""
    text = markdown_table(res.variants, res.task, res.baselines, res.aa_control)
    if res.companion:
        text += ("\n## Another model, in the same pass (--companion)\n\nOn its own tokenizer's ids of the same "
                 "texts; speed-ups against this model's full models as above; FLOPs rho: this model's full-model "
                 "FLOPs / the row's.\n\n" + markdown_table(res.companion, res.task, res.baselines))
    for w in ([res.warning] if res.warning else []) + res.device_warnings:
        text += f"\n**Warning:** {w}\n"
    return text


def write_outputs(res: BenchResults, out: Path) -> None:
    """results.json, table.md (with the table by input length), sweep.csv, tradeoff.png and
    speedup_by_length.png into `out` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    if res.sweep:
        write_csv(out / SWEEP_CSV, res.sweep + res.static)
        if res.sweep[0].metric is not None:
            rows = {r.variant: r for r in res.variants}
            for precision, name in (("fp32", PLOT), ("int8", PLOT_INT8)):
                if any(r.precision == precision for r in res.sweep):
                    note = plot(out / name, res.sweep, rows[res.baselines.of(precision)], res.task, res.static,
                                precision)
                    if note:
                        res.notes.append(f"plot ({precision}): {note}")
    text = table_text(res)
    if res.length_buckets is not None:
        text += ("\n" if text else "") + length_table(res.length_buckets, res.variants, res.baselines)
    if res.length_bins is not None:
        note = plot_by_length(out / LENGTH_PLOT, res.length_bins, res.task)
        if note:
            res.notes.append(f"length plot: {note}")
    write_text(out / TABLE, text)
    res.write(out / RESULTS)


def point_lines(res: BenchResults) -> list[str]:
    """The bundle's own operating point (the mpee row: its calibrated or given threshold and keep ratio) and,
    when one was asked for, the sweep point chosen by the rule, each named as what it is."""
    lines = []
    mine = next((r for r in res.variants if r.variant == "mpee"), None)
    if mine is not None and mine.metric is not None and mine.speedup_mean is not None:
        knobs = " ".join(f"{k}={v:g}" for k, v in (("F", mine.threshold), ("r", mine.keep_ratio)) if v is not None)
        lines.append(f"the bundle's operating point (row mpee): {mine.policy or ''} {knobs}: "
                     f"{mine.metric_name or 'metric'} {100 * mine.metric:.2f}, speed-up {mine.speedup_mean:.2f}x vs "
                     f"{mine.speedup_baseline} (mean latency)")
    op = res.operating_point
    if res.asked_point:
        rule = res.point_rule or "the chosen sweep point"
        lines.append(f"sweep point, {rule}: " + (
            f"F={op['threshold']:g} r={op['keep_ratio']:g}: metric {100 * op['metric']:.2f}, speed-up "
            f"{op['speedup_mean']:.2f}x vs {op['speedup_baseline']} (mean latency), p50 "
            f"{op['latency']['p50_us'] / 1e3:.2f} ms" if op else "none qualifies"))
    return lines


def print_summary(res: BenchResults, out: Path) -> None:
    """The table with its A/A line (or the rows and the A/A line when the input has no labels), the table by
    input length in brief, notes and the operating points (`point_lines`) on stdout; every warning on
    stderr."""
    table = table_text(res)   # holds the A/A line
    print(table or json.dumps([r.to_dict() for r in res.variants], indent=1))
    if not table:
        aa = res.aa_control
        print(f"A/A control ({' vs '.join(aa.variants)}): mean latency {100 * aa.mean_spread:.1f}%, "
              f"p50 {100 * aa.p50_spread:.1f}% apart (limit {100 * aa.threshold:.0f}%)")
    for r in res.companion:
        print(f"companion {r.variant}: {r.metric_name or 'metric'} "
              f"{'-' if r.metric is None else f'{100 * r.metric:.2f}'}, mean {r.mean_us / 1e3:.2f} ms, "
              f"speed-up {_speedup_cell(r)} vs {r.speedup_baseline}")
    if res.length_buckets is not None:
        print(length_brief(res.length_buckets, res.variants))
    for note in res.notes:
        print(f"note: {note}")
    for line in point_lines(res):
        print(line)
    for w in ([res.warning] if res.warning else []) + res.device_warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {out}")
