"""The deployment map: `mpee-bench map RESULTS[=NAME] ... --out OUT` puts the measured points of several
`mpee-bench` result folders of one task (a small and a large model, say) on one accuracy-against-latency map.

Rules:
- A point is a row of a folder's results.json: its full models, our chain and MPEE rows, the threshold x keep-ratio
  sweep, the static-depth points (exit k for every example) and the companion rows (another model measured in the
  same pass, `mpee-bench --companion`), the A/A twin left out. Latency is the measured mean (and p99) per example,
  batch 1, as that folder's pass measured it; the accuracy is the task metric on the same examples.
- A point belongs to the model its folder names (NAME, or "<layers> layers x <hidden>" from run.json); a companion
  row to the other folder whose model has the companion's layers and width (run.json), else to "companion of NAME".
- The Pareto front: the points no other point beats in both mean latency (lower or equal) and metric (higher or
  equal), one strictly.
- "At the latency of X": for every full fp32 model X (onnx_fused), the most accurate point of each other model
  whose mean latency is at most X's; `same_pass` says whether both were measured in one interleaved pass (a
  companion row and the folder's own rows), else the two latencies come from two runs.
- Every point names the command that measured it (the folder's recorded mpee-bench command) and, for a chain
  point, the `mpee-run` line that deploys it.
- The map's title: --title, else the folders' task when they all name the same one, else the measured file's name
  (tasks on a user's files are named after each model's training folder).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import MpeeRuntimeError
from ..files import write_text
from .measure import COMPANION
from .records import AA_NAMES, RUN, RunRecord
from .render import RESULTS
from .results import BenchResults, VariantSummary
from .tradeoff import pareto_front

MAP_JSON, MAP_TABLE, MAP_PLOT = "map.json", "map.md", "map.png"
COMMAND = "map"   # `mpee-bench map ...`
FULL_FP32 = "onnx_fused"


@dataclass
class MapModel:
    """One results folder on the map."""

    name: str
    folder: str
    identity: str                     # "<layers> layers x <hidden>"
    command: list[str]                # the mpee-bench command that measured it (empty: not recorded)
    bundles: dict[str, str]           # the bundles it ran, by role (RunRecord.bundles)
    companion_identity: str | None    # the identity of the model it ran as --companion
    aa_mean_spread: float
    examples: int


@dataclass
class MapPoint:
    model: str
    kind: str                         # full (onnxruntime), pytorch, chain, mpee, exits, pruning, sweep, static
    variant: str
    precision: str
    metric: float
    mean_ms: float
    p99_ms: float
    folder: str                       # the results folder (the pass) that measured it
    speedup_mean: float | None        # against its folder's best full model of its precision
    threshold: float | None = None
    keep_ratio: float | None = None
    policy: str | None = None
    path: str | None = None
    deploy: str | None = None         # the mpee-run line of a chain point
    on_front: bool = False

    @property
    def label(self) -> str:
        exit_knob = "k" if self.policy == "depth" else "F"   # the depth policy's threshold is the exit layer
        knobs = " ".join(f"{k}={v:g}" for k, v in ((exit_knob, self.threshold), ("r", self.keep_ratio))
                         if v is not None)
        return f"{self.variant}" + (f" ({knobs})" if knobs else "")


@dataclass
class LatencyAnswer:
    """At the mean latency of `at` (a full fp32 model), the most accurate point of `model`."""

    at_model: str
    at_variant: str
    at_ms: float
    at_metric: float
    model: str
    best: MapPoint | None
    gain_points: float | None
    same_pass: bool


@dataclass
class DeploymentMap:
    task: str
    metric_name: str
    models: list[MapModel]
    points: list[MapPoint]
    answers: list[LatencyAnswer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def _kind(row: VariantSummary) -> str:
    if row.group in ("sweep", "static"):
        return row.group
    name = row.variant.removeprefix("companion_").removesuffix("_graph")   # the single graph's rows: same kinds
    if name.startswith("pytorch"):
        return "pytorch"
    if name.startswith("onnx_"):
        return "full"
    return "chain" if name.startswith("chain") or name == "graph" else name.removesuffix("_int8")


def _identity(flops_model: dict) -> str:
    return f"{flops_model['num_layers']} layers x {flops_model['hidden']}"


def _deploy(row: VariantSummary, bundle: str | None) -> str | None:
    if bundle is None or row.path is not None or row.policy is None:
        return None
    return (f"mpee-run {bundle} --policy {row.policy} --threshold {row.threshold:g}"
            + (f" --keep-ratio {row.keep_ratio:g}" if row.keep_ratio is not None else "")
            + (" --engine graph" if row.variant.endswith("graph") else "") + " --input TEXTS")


def parse_folder(spec: str) -> tuple[Path, str | None]:
    """FOLDER or FOLDER=NAME."""
    folder, _, name = spec.partition("=")
    return Path(folder), (name or None)


def load_model(folder: Path, name: str | None) -> tuple[MapModel, BenchResults]:
    path = folder / RESULTS
    if not path.is_file():
        raise MpeeRuntimeError(f"{folder}: no {RESULTS} (run `mpee-bench BUNDLE ... --out {folder}` or "
                               f"`mpee-bench report {folder}` first)")
    try:
        res = BenchResults.load(path)
    except (ValueError, KeyError, TypeError) as e:
        raise MpeeRuntimeError(f"{path}: not an mpee-bench results file ({str(e)[:120]})") from None
    run = RunRecord.load(folder / RUN)
    if res.variants[0].metric is None:
        raise MpeeRuntimeError(f"{folder}: measured without labels: the map needs each point's accuracy")
    identity = _identity(run.flops_model)
    companion = None if run.companion_flops_model is None else _identity(run.companion_flops_model)
    return MapModel(name or identity, str(folder), identity, list(res.command or run.command), dict(run.bundles),
                    companion, res.aa_control.mean_spread, res.examples), res


def points_of(model: MapModel, res: BenchResults, companion_name: str) -> list[MapPoint]:
    rows = [r for r in res.variants if r.variant != AA_NAMES[1]] + res.sweep + res.static + res.companion
    out = []
    for r in rows:
        owner = companion_name if r.group == COMPANION else model.name
        bundle = model.bundles.get(COMPANION if r.group == COMPANION else r.precision)
        out.append(MapPoint(owner, _kind(r), r.variant, r.precision, r.metric, r.mean_us / 1e3,
                            r.latency["p99_us"] / 1e3, model.folder, r.speedup_mean, r.threshold, r.keep_ratio,
                            r.policy, r.path, _deploy(r, bundle)))
    return out


def build_map(specs: Sequence[str], title: str | None = None) -> DeploymentMap:
    folders = [parse_folder(s) for s in specs]
    loaded = [load_model(*f) for f in folders]
    if not loaded:
        raise MpeeRuntimeError("give at least one results folder")
    # One map per data set: the same examples in the same order (their gold labels), whatever each checkpoint
    # called its task (a task on the user's files is named after its training folder).
    runs = [RunRecord.load(folder / RUN) for folder, _ in folders]
    golds = {(tuple(run.gold or ()), tuple(run.labels)) for run in runs}
    if len(golds) > 1:
        tasks = ", ".join(sorted({res.task for _, res in loaded}))
        raise MpeeRuntimeError(f"the folders measured different examples ({tasks}: their gold labels differ): one "
                               "map per data set, measured on the same examples")
    tasks = sorted({res.task for _, res in loaded})
    if title is None:
        title = tasks[0] if len(tasks) == 1 else Path(runs[0].input["path"]).name
    names = [m.name for m, _ in loaded]
    if len(set(names)) != len(names):
        raise MpeeRuntimeError(f"two folders have the same model name ({names}): name them, FOLDER=NAME")
    points, notes = [], []
    for model, res in loaded:
        owner = next((m.name for m, _ in loaded if m is not model and m.identity == model.companion_identity), None)
        points += points_of(model, res, owner or f"companion of {model.name}")
        notes += [f"{model.name}: {n}" for n in ([res.warning] if res.warning else []) + res.device_warnings]
    for p in _front(points):
        p.on_front = True
    metric = next((r.metric_name for _, res in loaded for r in res.variants if r.metric_name), None) or "metric"
    dmap = DeploymentMap(title, metric, [m for m, _ in loaded], points, notes=notes)
    dmap.answers = latency_answers(dmap)
    return dmap


def _front(points: Sequence[MapPoint]) -> list[MapPoint]:
    """The Pareto front: lower mean latency and higher metric (`tradeoff.pareto_front` on speed = 1 / latency)."""
    @dataclass
    class _P:
        speed: float
        metric: float
        point: MapPoint
    return [p.point for p in pareto_front([_P(1 / q.mean_ms, q.metric, q) for q in points], x="speed", y="metric")]


def latency_answers(dmap: DeploymentMap) -> list[LatencyAnswer]:
    answers = []
    models = [m.name for m in dmap.models] + sorted({p.model for p in dmap.points} - {m.name for m in dmap.models})
    for at in (p for p in dmap.points if p.variant.removeprefix("companion_") == FULL_FP32):
        for model in models:
            if model == at.model:
                continue
            fit = [p for p in dmap.points if p.model == model and p.mean_ms <= at.mean_ms]
            best = max(fit, key=lambda p: (p.metric, -p.mean_ms)) if fit else None
            answers.append(LatencyAnswer(at.model, at.variant, at.mean_ms, at.metric, model, best,
                                         None if best is None else 100 * (best.metric - at.metric),
                                         best is not None and best.folder == at.folder))
    return answers


# ---------------------------------------------------------------- outputs
def markdown(dmap: DeploymentMap) -> str:
    lines = [f"# Deployment map: {dmap.task}", "",
             (f"{dmap.metric_name} against measured latency per example (batch 1), every point of each results folder "
             "(`mpee-bench map`; rules in `mpee_runtime/bench/deployment_map.py`). Speed-up: against the best full "
             "model of the row's precision in its own folder. *: on the Pareto front (mean latency)."), "",
             "| model | measured by | A/A spread (mean) | examples |", "|---|---|---:|---:|"]
    for m in dmap.models:
        cmd = " ".join(m.command) or "(not recorded)"
        lines.append(f"| {m.name} ({m.identity}) | `{cmd}` | {100 * m.aa_mean_spread:.1f}% | {m.examples} |")
    lines += ["", "## At the latency of a full model", "",
              (f"| at the mean latency of | its {dmap.metric_name} | model | most accurate point at or below it | "
              f"{dmap.metric_name} | gain (points) | mean ms | same pass |"), "|---|---:|---|---|---:|---:|---:|---|"]
    for a in dmap.answers:
        if a.best is None:
            lines.append(f"| {a.at_model} {a.at_variant} ({a.at_ms:.2f} ms) | {100 * a.at_metric:.2f} | {a.model} | "
                         "none is as fast | - | - | - | - |")
            continue
        lines.append(f"| {a.at_model} {a.at_variant} ({a.at_ms:.2f} ms) | {100 * a.at_metric:.2f} | {a.model} | "
                     f"{a.best.label} | {100 * a.best.metric:.2f} | {a.gain_points:+.2f} | {a.best.mean_ms:.2f} | "
                     f"{'yes' if a.same_pass else 'no'} |")
    lines += ["", "## Every point", "",
              f"| model | kind | point | precision | {dmap.metric_name} | mean ms | p99 ms | speed-up | deploy |",
              "|---|---|---|---|---:|---:|---:|---:|---|"]
    for p in sorted(dmap.points, key=lambda p: (p.model, p.mean_ms)):
        speed = "-" if p.speedup_mean is None else f"{p.speedup_mean:.2f}x"
        deploy = f"`{p.deploy}`" if p.deploy else (f"`{p.path}`" if p.path else "")
        lines.append(f"| {p.model} | {p.kind} | {p.label}{' *' if p.on_front else ''} | {p.precision} | "
                     f"{100 * p.metric:.2f} | {p.mean_ms:.2f} | {p.p99_ms:.2f} | {speed} | {deploy} |")
    lines += [""] + [f"Note: {n}" for n in dmap.notes]
    return "\n".join(lines).rstrip() + "\n"


MARKERS = {"full": "s", "pytorch": "P", "static": "^", "sweep": ".", "mpee": "o", "chain": "D", "exits": "v",
           "pruning": "<"}


def plot(path: Path, dmap: DeploymentMap) -> str | None:
    """Two panels, metric against mean and against p99 latency (log scale), one colour per model, one marker per
    kind, the front as a step line; None, or why the plot was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "skipped: matplotlib not installed"
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    models = list(dict.fromkeys(p.model for p in dmap.points))
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    for ax, attr, what in ((axes[0], "mean_ms", "mean"), (axes[1], "p99_ms", "p99")):
        for m in models:
            for kind, marker in MARKERS.items():
                for precision, fill in (("fp32", colors[m]), ("int8", "white")):
                    pts = [p for p in dmap.points if p.model == m and p.kind == kind and p.precision == precision]
                    if pts:
                        ax.scatter([getattr(p, attr) for p in pts], [100 * p.metric for p in pts], marker=marker,
                                   facecolors=fill, edgecolors=colors[m], s=30 if kind != "sweep" else 14,
                                   label=f"{m}: {kind} {precision}" if ax is axes[0] else None)
        for p in dmap.points:   # name the fused full models, the points a user compares against
            if p.variant.removeprefix("companion_") == FULL_FP32:
                ax.annotate(f"{p.model} full fp32", (getattr(p, attr), 100 * p.metric), fontsize=6,
                            xytext=(4, -8), textcoords="offset points")
        if attr == "mean_ms":
            front = sorted((p for p in dmap.points if p.on_front), key=lambda p: p.mean_ms)
            ax.step([p.mean_ms for p in front], [100 * p.metric for p in front], "k-", where="post", lw=0.8,
                    label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())   # decade labels only: no overlap
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(f"{what} latency per example, ms (batch 1, log scale)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"{dmap.task} {dmap.metric_name} (%)")
    axes[0].set_title(f"{dmap.task}: accuracy against mean latency")
    axes[1].set_title("against p99 latency")
    axes[0].legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_map(dmap: DeploymentMap, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    note = plot(out / MAP_PLOT, dmap)
    if note:
        dmap.notes.append(f"plot: {note}")
    write_text(out / MAP_TABLE, markdown(dmap))
    dmap.write(out / MAP_JSON)


def build_parser() -> argparse.ArgumentParser:
    from ..cli.common import ErrorLineParser
    p = ErrorLineParser(prog="mpee-bench map", description="One accuracy-against-latency map of several mpee-bench "
                        "results folders of one task: every point, the Pareto front, and the most accurate point of "
                        "each model at the latency of each full model.")
    p.add_argument("folders", nargs="+", metavar="RESULTS[=NAME]", help="a folder with results.json and run.json "
                   "(mpee-bench --out), optionally with the model's name on the map")
    p.add_argument("--out", type=Path, required=True, help="folder for map.json, map.md and map.png")
    p.add_argument("--title", help="the data set's name on the map [default: the folders' task when they agree, "
                   "else the measured file's name]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dmap = build_map(args.folders, args.title)
    write_map(dmap, args.out)
    for a in dmap.answers:
        if a.best is not None:
            print(f"at {a.at_model} {a.at_variant} ({a.at_ms:.2f} ms, {100 * a.at_metric:.2f}): {a.model} "
                  f"{a.best.label} {100 * a.best.metric:.2f} ({a.gain_points:+.2f} points, {a.best.mean_ms:.2f} ms"
                  f"{', same pass' if a.same_pass else ''})")
    print(f"wrote {args.out}")
    return 0
