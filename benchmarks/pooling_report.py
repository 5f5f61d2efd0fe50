"""[CLS] against mean-pooled exits: one report from the `mpee-eval --sweep --json` files of several models.

    python benchmarks/pooling_report.py --model cls=benchmarks/results/sst2_cls/eval_sweep.json \
        --model mean=benchmarks/results/sst2_mean/eval_sweep.json --out benchmarks/results/pooling_sst2

Writes OUT/pooling.md (accuracy of each exit, the FLOPs speed-up rho within 0.5 and 1 point of each
model's own full-model metric, and MPEE against the static-depth alternative at equal rho), OUT/pooling.json
and OUT/pooling.png (the Pareto front of every model, with its static-depth points, in one plot).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from mpee_export.training.evaluate import EvalResult, EvalRow, plot_eval
from mpee_runtime.bench.analysis import static_comparison
from mpee_runtime.bench.results import StaticComparison
from mpee_runtime.bench.tradeoff import fastest_within
from mpee_runtime.files import write_text

DROPS = (0.5, 1.0)   # points of the dev metric (x100) below the model's own full-model metric
BEST_KEYS = ("rho", "threshold", "keep_ratio", "metric", "mean_exit_layer")


@dataclass(frozen=True)
class _RhoPoint:
    """An mpee-eval row as mpee-bench's report reads a point, with rho standing in for the measured
    speed-up, so that the benchmark's static-comparison rule applies unchanged."""

    row: EvalRow

    def __getattr__(self, name: str):
        return self.row.rho if name == "speedup_mean" else getattr(self.row, name)


def best_within(result: EvalResult, drop: float) -> EvalRow | None:
    """The early-exit row with the largest rho whose metric is within `drop` points of the full model's."""
    exits = [r for r in result.rows if r.kind == "mpee"]
    return fastest_within(exits, floor=result.full_model.metric - drop / 100, speed="rho", y="metric")


def static_against_mpee(rows: list[EvalRow]) -> list[StaticComparison]:
    """For each static-depth row, the best early-exit row with at least its rho (report.static_comparison)."""
    return static_comparison([_RhoPoint(r) for r in rows if r.kind == "mpee"],
                             [_RhoPoint(r) for r in rows if r.kind == "static"])


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def load_models(models: tuple[str, ...]) -> list[tuple[str, EvalResult]]:
    loaded = []
    for spec in models:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            raise click.BadParameter(f"expected NAME=FILE with an existing file, got {spec!r}", param_hint="--model")
        loaded.append((name, EvalResult.read(Path(path))))
    return loaded


def per_exit_section(loaded: list[tuple[str, EvalResult]]) -> list[str]:
    layers = max(len(d.full_model.per_exit_accuracy) for _, d in loaded)
    md = ["## Accuracy of each exit (every sample runs to it, no pruning)", "",
          "| model | " + " | ".join(f"exit {i + 1}" for i in range(layers)) + " |", "|---|" + "---:|" * layers]
    for name, d in loaded:
        md.append(f"| {name} | " + " | ".join(pct(a) for a in d.full_model.per_exit_accuracy) + " |")
    return md


def within_section(loaded: list[tuple[str, EvalResult]]) -> tuple[list[str], dict]:
    """The FLOPs speed-up within each drop of the model's own full-model metric, and pooling.json's records."""
    md = ["", "## FLOPs speed-up within D points of the model's own full-model metric", "",
          "| model | full model | " + " | ".join(f"within {d:g}: rho (F, r, metric)" for d in DROPS) + " |",
          "|---|---:|" + "---|" * len(DROPS)]
    record = {}
    for name, d in loaded:
        full = d.full_model.metric
        cells, rec = [], {"full_model": full, "per_exit_accuracy": d.full_model.per_exit_accuracy}
        for drop in DROPS:
            b = best_within(d, drop)
            rec[f"within_{drop:g}"] = b and {k: getattr(b, k) for k in BEST_KEYS}
            cells.append("-" if b is None else f"{b.rho:.2f} ({b.threshold:g}, {b.keep_ratio}, {pct(b.metric)})")
        rec["static_against_mpee"] = [c.to_dict() for c in static_against_mpee(d.rows)]
        record[name] = rec
        md.append(f"| {name} | {pct(full)} | " + " | ".join(cells) + " |")
    return md, record


def static_section(record: dict) -> list[str]:
    md = ["", "## MPEE against static depth (exit k for every sample) at equal or higher rho", "",
          "| model | exit k | r | static rho | static metric | best MPEE metric at >= that rho | MPEE - static (points) |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rec in record.items():
        for c in rec["static_against_mpee"]:
            gain = "-" if c["gain_rho"] is None else f"{100 * c['gain_rho']:+.2f}"
            md.append(f"| {name} | {c['exit']} | {c['keep_ratio']} | {c['static_rho']:.2f} | "
                      f"{pct(c['static_metric'])} | {pct(c['mpee_metric_rho'])} | {gain} |")
    return md + [""]


@click.command()
@click.option("--model", "models", multiple=True, required=True, help="NAME=eval_sweep.json (repeat).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--title", default="SST-2 dev: [CLS] against mean-pooled exits")
def main(models: tuple[str, ...], out: Path, title: str) -> None:
    loaded = load_models(models)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", "Generated by `python benchmarks/pooling_report.py` from `mpee-eval --sweep --json` files: "
          + ", ".join(f"{n} = `{s.partition('=')[2]}`" for (n, _), s in zip(loaded, models)) + ".", ""]
    md += per_exit_section(loaded)
    within, record = within_section(loaded)
    md += within + static_section(record)
    plot_eval(out / "pooling.png", loaded, title=title)
    md += ["![trade-off](pooling.png)", ""]
    write_text(out / "pooling.md", "\n".join(md))
    write_text(out / "pooling.json", json.dumps(record, indent=1) + "\n")
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
