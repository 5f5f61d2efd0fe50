"""mpee-eval: evaluate a checkpoint in PyTorch (one operating point, or a threshold x keep-ratio sweep)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from mpee_runtime.core.policy import POLICIES, check_threshold
from mpee_runtime.files import check_output_file, write_text

from ..errors import MpeeCommand, MpeeExportError
from ..model.config import MpeeConfig, check_keep_ratio
from .common import data_option, dev_file_option, eval_source, grouped, parse_floats


@dataclass(frozen=True)
class OperatingPoint:
    """--threshold, --keep-ratio, --policy as given (None: the checkpoint's)."""

    threshold: float | None
    keep_ratio: float | None
    policy: str | None

    def resolved(self, mpee: MpeeConfig) -> OperatingPoint:
        """With the checkpoint's defaults filled in, checked."""
        policy = self.policy or mpee.default_policy
        threshold = mpee.default_threshold if self.threshold is None else self.threshold
        check_threshold(policy, threshold)
        if self.keep_ratio is not None:
            check_keep_ratio(self.keep_ratio)
        return OperatingPoint(threshold, self.keep_ratio, policy)


@dataclass(frozen=True)
class SweepGrid:
    """--sweep, --thresholds, --keep-ratios (None: the default grid)."""

    on: bool
    thresholds: list[float] | None
    keep_ratios: list[float] | None

    @classmethod
    def from_options(cls, sweep: bool, thresholds: str | None, keep_ratios: str | None) -> SweepGrid:
        return cls(sweep, parse_floats(thresholds) if thresholds else None, parse_floats(keep_ratios) if keep_ratios else None)

    def check(self, policy: str) -> None:
        for t in self.thresholds or []:
            check_threshold(policy, t)
        for r in self.keep_ratios or []:
            check_keep_ratio(r)
        if (self.thresholds or self.keep_ratios) and not self.on:
            raise MpeeExportError("--thresholds/--keep-ratios need --sweep")


@dataclass(frozen=True)
class Outputs:
    """--json, --predictions, --plot."""

    json_path: Path | None
    predictions: Path | None
    plot_path: Path | None

    def check(self, sweep: bool) -> None:
        if sweep and self.predictions:
            raise MpeeExportError("--predictions writes one operating point; drop --sweep")
        if self.plot_path is not None and not sweep:
            raise MpeeExportError("--plot needs --sweep")
        for path in (self.json_path, self.predictions, self.plot_path):
            if path is not None:
                check_output_file(path)


point_options = grouped("point", [
    click.option("--threshold", default=None, type=float, help="Exit threshold F [default: the checkpoint's]."),
    click.option("--keep-ratio", default=None, type=float, help="Keep ratio at every pruning layer."),
    click.option("--policy", type=click.Choice(POLICIES), default=None, help="Exit policy [default: entropy]."),
], OperatingPoint)
sweep_options = grouped("grid", [
    click.option("--sweep", is_flag=True, help="Evaluate a grid of thresholds x keep ratios."),
    click.option("--thresholds", default=None, help="Sweep thresholds, comma-separated."),
    click.option("--keep-ratios", default=None, help="Sweep keep ratios, comma-separated."),
], SweepGrid.from_options)
output_options = grouped("outputs", [
    click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results as JSON."),
    click.option("--predictions", type=click.Path(path_type=Path), help="Write one JSON line per example."),
    click.option("--plot", "plot_path", type=click.Path(path_type=Path),
                 help="With --sweep: write the trade-off plot (metric against rho, with the static-depth points)."),
], Outputs)


@click.command(cls=MpeeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@data_option
@dev_file_option
@click.option("--task", default=None, help="GLUE task [default: the checkpoint's task].")
@click.option("--split", default="dev", show_default=True, type=click.Choice(["dev", "train"]))
@point_options
@sweep_options
@click.option("--max-eval-samples", type=click.IntRange(min=1), help="Use only the first N rows.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@output_options
def evaluate(checkpoint: Path, data: str | None, dev_file: Path | None, task: str | None, split: str,
             point: OperatingPoint,
             grid: SweepGrid, max_eval_samples: int | None, batch_size: int, outputs: Outputs) -> None:
    """Evaluate an MPEE checkpoint: metric, exit layers, tokens per layer and FLOPs speed-up (rho).

    --sweep also evaluates the static-depth alternative: the same model always leaving at exit k."""
    from ..model.checkpoint import read_mpee_config
    _, mpee = read_mpee_config(checkpoint)
    point = point.resolved(mpee)
    grid.check(point.policy)
    outputs.check(grid.on)
    if dev_file is not None and split != "dev":
        raise MpeeExportError("--dev FILE is the dev split; drop --split")
    source = eval_source(data, dev_file, task, mpee)
    glue_task = source.task

    from ..data.batching import encode
    from ..model.checkpoint import load_checkpoint
    from ..training.evaluate import EvalResult, full_model_row
    examples = source.load(split, limit=max_eval_samples)
    model, tokenizer = load_checkpoint(checkpoint)
    data_enc = encode(examples, tokenizer, mpee.max_length, mpee.truncation)
    full = full_model_row(model, glue_task, data_enc, batch_size=batch_size)
    if grid.on:
        rows = _sweep(model, glue_task, data_enc, point.policy, grid, batch_size)
    else:
        rows = [_one_point(model, glue_task, data_enc, point, batch_size, outputs.predictions)]
    result = EvalResult(str(checkpoint), full, rows)
    click.echo(format_table([full] + rows))
    if outputs.plot_path is not None:
        from ..training.evaluate import plot_eval
        plot_eval(outputs.plot_path, [(checkpoint.name, result)],
                  title=f"{glue_task.name} {split}: MPEE against static depth")
    if outputs.json_path:
        write_text(outputs.json_path, json.dumps(result.to_dict(), indent=1) + "\n")


def _sweep(model, glue_task, data_enc, policy: str, grid: SweepGrid, batch_size: int) -> list:
    from ..training.evaluate import DEFAULT_KEEP_RATIOS, DEFAULT_THRESHOLDS, sweep
    return sweep(model, glue_task, data_enc, thresholds=grid.thresholds or DEFAULT_THRESHOLDS,
                 keep_ratios=grid.keep_ratios or DEFAULT_KEEP_RATIOS, policy=policy, batch_size=batch_size,
                 progress=True, static=True)


def _one_point(model, glue_task, data_enc, point: OperatingPoint, batch_size: int, predictions: Path | None):
    """The row of one operating point; with `predictions`, also one JSON line per example written there."""
    from ..training.evaluate import compute_traces, exit_layers, prediction_lines, summarize
    traces = compute_traces(model, data_enc, keep_ratio=point.keep_ratio, batch_size=batch_size)
    exits = exit_layers(model, traces, point.policy, point.threshold)
    if predictions:
        write_text(predictions, "".join(json.dumps(line) + "\n"
                                        for line in prediction_lines(traces, exits, model.mpee.labels)))
    return summarize(model, glue_task, traces, exits, policy=point.policy, threshold=point.threshold)


def format_table(rows: list) -> str:
    """EvalRows as an aligned text table (scores in percent). The task's metric is shown once: an accuracy task
    has one score column (accuracy); an F1 task two (F1, its headline, and accuracy)."""
    from tabulate import tabulate
    f1 = any(r.metric_name == "f1" for r in rows)
    scores = ["F1", "accuracy"] if f1 else ["accuracy"]
    body = [[r.kind, r.policy, f"{r.threshold:.3g}", "-" if r.keep_ratio is None else f"{r.keep_ratio:.2f}",
             *([f"{100 * r.metric:.2f}"] if f1 else []), f"{100 * r.accuracy:.2f}",
             f"{r.mean_exit_layer:.2f}", f"{r.rho:.2f}", f"{r.rho_pad128:.2f}"] for r in rows]
    return tabulate(body, headers=["row", "policy", "F", "r", *scores, "exit", "rho", "rho128"],
                    tablefmt="simple", disable_numparse=True, colalign=("left", "left") + ("right",) * (6 + f1))
