"""Reporting, the half of mpee-bench that runs anywhere (numpy, matplotlib optional): read the rows and run
records a measuring pass left in OUT (`mpee_runtime.measure`, `mpee_export.bench_pytorch`) and write
results.json, table.md, sweep.csv, tradeoff.png and speedup_by_length.png. `mpee-bench report OUT` does
this alone.

Rules (the method and why: docs/benchmarking.md):
- Every speed-up says what it is against. speedup_mean / speedup_p50: against the best full model of the
  row's precision (fp32 rows, the sweep's too: the faster of onnx_full and onnx_fused by mean latency; int8
  rows: onnx_fused_int8), named by `speedup_baseline`; *_vs_plain_fp32: against onnx_full. Without full
  models every speed-up, int8 rows too, is against the chain.
- rho and rho_pad128 are FLOPs ratios (flops.py), summed over the data set.
- The A/A control: the relative spread |a - b| / ((a + b) / 2) of the mean and of the p50 latencies of
  `chain` and `chain_aa`; above AA_THRESHOLD the run is flagged (`warning`), and so is a run whose CPU
  clock dropped or was throttled (`device_warnings`).
- The operating point: the fastest sweep point (mean latency) within --max-drop points of the fp32 baseline's
  metric, or the most accurate one whose p50 fits --budget-ms.
- By input length (--length-buckets, input tokens as given to the model, [CLS]/[SEP] included): every table
  variant summarised again on the examples of each bucket, its speed-ups against the best full model of its
  precision *on those examples* (chosen again per bucket), rho over those examples, and realisation =
  speedup_mean / rho (mean latency and rho are both ratios of sums over the examples). Empty buckets are
  left out; a bucket of fewer than MIN_BUCKET_EXAMPLES examples is marked `few`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import MpeeRuntimeError
from .files import write_text
from .flops import FlopsModel
from .measure import (
    AA_NAMES,
    PYTORCH_ROWS,
    PYTORCH_RUN,
    ROWS,
    RUN,
    RequestRow,
    RunRecord,
    VariantInfo,
    read_rows,
)
from .metrics import Scores, latency_summary
from .tradeoff import Curve, Level, fastest_within, pareto_front, plot_tradeoff

AA_THRESHOLD = 0.03   # relative spread of the A/A pair above which a run is flagged
RESULTS, TABLE, SWEEP_CSV, PLOT = "results.json", "table.md", "sweep.csv", "tradeoff.png"
LENGTH_PLOT = "speedup_by_length.png"
LENGTH_EDGES = (128, 256)    # default buckets: <=128, 129-256, 257 up to the model's max length (IMDB: 512)
MIN_BUCKET_EXAMPLES = 10     # below this a bucket's latency statistics are too few to read much into
PLOT_BIN_TOKENS = 64         # the length plot's bins: finer than the buckets, so the curve has a shape
LENGTH_PLOT_VARIANTS = ("mpee", "pruning", "exits", "chain", "mpee_int8", "chain_int8")


# ---------------------------------------------------------------- typed records
@dataclass
class VariantSummary:
    """One row of the report: a variant's settings, scores, FLOPs speed-ups, latency and measured speed-ups."""

    variant: str
    description: str
    precision: str
    mean_exit_layer: float
    rho: float
    rho_pad128: float
    latency: dict                    # metrics.latency_summary: n, mean_us, p50_us, p90_us, p99_us
    group: str = "table"
    threshold: float | None = None
    keep_ratio: float | None = None
    policy: str | None = None
    path: str | None = None
    torch_threads: int | None = None
    metric: float | None = None      # None: the input has no labels
    metric_name: str | None = None
    accuracy: float | None = None
    f1: float | None = None
    speedup_baseline: str | None = None
    speedup_p50: float | None = None
    speedup_mean: float | None = None
    speedup_p50_vs_plain_fp32: float | None = None
    speedup_mean_vs_plain_fp32: float | None = None
    realisation: float | None = None   # speedup_mean / rho: how much of the FLOPs saving the latency shows

    @property
    def p50_us(self) -> float:
        return self.latency["p50_us"]

    @property
    def mean_us(self) -> float:
        return self.latency["mean_us"]

    def to_dict(self) -> dict:
        """The row of results.json: fields that do not apply (None) are left out; `group` is implied by the
        list the row is in."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "group"}

    @classmethod
    def from_dict(cls, data: dict, group: str = "table") -> VariantSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}, **({} if "group" in data else {"group": group}))

    def point(self, *, with_latency: bool = False) -> dict:
        """The fields of a chosen point (Pareto front, operating point)."""
        keys = ("threshold", "keep_ratio", "metric", "speedup_mean", "speedup_p50", "rho", "speedup_baseline",
                "speedup_mean_vs_plain_fp32") + (("latency",) if with_latency else ())
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Baselines:
    """Which measured row each precision's speed-ups are against."""

    fp32: str
    int8: str
    plain_fp32: str | None
    rule: str

    def of(self, precision: str) -> str:
        return self.int8 if precision == "int8" else self.fp32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Baselines:
        return cls(data["fp32"], data["int8"], data.get("plain_fp32"), data["rule"])


@dataclass(frozen=True)
class AAControl:
    """The A/A spread of two rows of the same variant."""

    variants: list[str]
    mean_spread: float
    p50_spread: float
    threshold: float
    flagged: bool

    @property
    def warning(self) -> str | None:
        if not self.flagged:
            return None
        a, b = self.variants
        return (f"A/A control: {a} and {b} (the same variant measured twice, on two loads of the bundle) differ by "
                f"{100 * self.mean_spread:.1f}% in mean latency and {100 * self.p50_spread:.1f}% in p50, above "
                f"{100 * self.threshold:.0f}%: the machine was not quiet; latency differences of that size are "
                "noise (re-run on an idle machine)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AAControl:
        return cls(list(data["variants"]), data["mean_spread"], data["p50_spread"], data["threshold"], data["flagged"])


@dataclass(frozen=True)
class StaticComparison:
    """A static-depth point against the best MPEE sweep point at least as fast, by measured mean-latency
    speed-up and by FLOPs rho: positive gain = MPEE is more accurate at equal speed-up."""

    exit: int
    keep_ratio: float
    static_metric: float
    static_speedup_mean: float
    static_rho: float
    mpee_metric_measured: float | None
    gain_measured: float | None
    mpee_metric_rho: float | None
    gain_rho: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StaticComparison:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass
class LengthBucket:
    """The table's variants on the examples whose input length lies in lo..hi tokens (hi None: no upper
    bound), with the speed-ups against this bucket's own baselines."""

    label: str
    lo: int
    hi: int | None
    examples: int
    mean_tokens: float
    few: bool                        # fewer than MIN_BUCKET_EXAMPLES examples
    baselines: Baselines
    variants: list[VariantSummary]

    def row(self, variant: str) -> VariantSummary | None:
        return next((r for r in self.variants if r.variant == variant), None)

    def to_dict(self) -> dict:
        return {"label": self.label, "lo": self.lo, "hi": self.hi, "examples": self.examples,
                "mean_tokens": self.mean_tokens, "few": self.few, "baselines": self.baselines.to_dict(),
                "variants": [r.to_dict() for r in self.variants]}

    @classmethod
    def from_dict(cls, data: dict) -> LengthBucket:
        return cls(data["label"], data["lo"], data["hi"], data["examples"], data["mean_tokens"], data["few"],
                   Baselines.from_dict(data["baselines"]),
                   [VariantSummary.from_dict(r, "table") for r in data["variants"]])


@dataclass
class LengthBreakdown:
    """The table by input length: the buckets with examples (empty ones left out), cut at `edges`."""

    edges: list[int]                 # a bucket ends at each edge (inclusive); the last one is open-ended
    examples: int                    # over all buckets, and their mean length: the "all" row's
    mean_tokens: float
    min_examples: int
    buckets: list[LengthBucket]

    def to_dict(self) -> dict:
        return {"edges": self.edges, "examples": self.examples, "mean_tokens": self.mean_tokens,
                "min_examples": self.min_examples, "buckets": [b.to_dict() for b in self.buckets]}

    @classmethod
    def from_dict(cls, data: dict) -> LengthBreakdown:
        return cls(list(data["edges"]), data["examples"], data["mean_tokens"], data["min_examples"],
                   [LengthBucket.from_dict(b) for b in data["buckets"]])


@dataclass
class BenchResults:
    """results.json: written by `write` only."""

    task: str
    examples: int
    environment: dict
    baselines: Baselines
    aa_control: AAControl
    warning: str | None              # the A/A control's
    measurement: dict                # passes and the A/A threshold
    reference_export: dict | None
    policy: str | None
    tokenize: dict | None            # latency_summary of the tokenisation times
    notes: list[str]
    variants: list[VariantSummary]
    sweep: list[VariantSummary]
    static: list[VariantSummary]
    device_warnings: list[str] = field(default_factory=list)   # CPU clock dropped or throttled, per pass
    pareto: list[dict] | None = None
    operating_point: dict | None = None
    static_comparison: list[StaticComparison] | None = None
    asked_point: bool = False        # an operating point was asked for (then `operating_point` is written, None too)
    length_buckets: LengthBreakdown | None = None   # the table by --length-buckets
    length_bins: LengthBreakdown | None = None      # the same in PLOT_BIN_TOKENS bins: the length plot's points

    @property
    def reference(self) -> VariantSummary:
        """The fp32 baseline row: the sweep's speed-ups are against it."""
        return next(r for r in self.variants if r.variant == self.baselines.fp32)

    def to_dict(self) -> dict:
        out = {"task": self.task, "examples": self.examples, "environment": self.environment,
               "baselines": self.baselines.to_dict(), "aa_control": self.aa_control.to_dict(),
               "warning": self.warning, "device_warnings": self.device_warnings, "measurement": self.measurement,
               "reference_export": self.reference_export, "policy": self.policy, "tokenize": self.tokenize,
               "notes": self.notes, "variants": [r.to_dict() for r in self.variants],
               "sweep": [r.to_dict() for r in self.sweep], "static": [r.to_dict() for r in self.static]}
        if self.pareto is not None:
            out["pareto"] = self.pareto
        if self.asked_point:
            out["operating_point"] = self.operating_point
        if self.static_comparison is not None:
            out["static_comparison"] = [c.to_dict() for c in self.static_comparison]
        for key in ("length_buckets", "length_bins"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BenchResults:
        return cls(task=data["task"], examples=data["examples"], environment=data["environment"],
                   baselines=Baselines.from_dict(data["baselines"]), aa_control=AAControl.from_dict(data["aa_control"]),
                   warning=data["warning"], measurement=data["measurement"],
                   reference_export=data.get("reference_export"), policy=data.get("policy"),
                   tokenize=data.get("tokenize"), notes=list(data["notes"]),
                   variants=[VariantSummary.from_dict(r, "table") for r in data["variants"]],
                   sweep=[VariantSummary.from_dict(r, "sweep") for r in data["sweep"]],
                   static=[VariantSummary.from_dict(r, "static") for r in data["static"]],
                   device_warnings=list(data.get("device_warnings", [])), pareto=data.get("pareto"),
                   operating_point=data.get("operating_point"),
                   static_comparison=None if data.get("static_comparison") is None else
                   [StaticComparison.from_dict(c) for c in data["static_comparison"]],
                   asked_point="operating_point" in data,
                   length_buckets=_breakdown(data.get("length_buckets")),
                   length_bins=_breakdown(data.get("length_bins")))

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> BenchResults:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _breakdown(data: dict | None) -> LengthBreakdown | None:
    return None if data is None else LengthBreakdown.from_dict(data)


# ---------------------------------------------------------------- statistics (unit-tested on synthetic data)
def summarize(info: VariantInfo, rows: Sequence[RequestRow], gold: Sequence[int] | None, metric: str,
              flops_model: FlopsModel) -> VariantSummary:
    """Metric, exit layers, rho (both conventions) and latency statistics of one variant's rows."""
    rows = sorted(rows, key=lambda r: r.example)
    rho, rho128 = flops_model.dataset_speedups([r.input_tokens for r in rows], [r.flops for r in rows])
    row = VariantSummary(info.name, info.description, info.precision,
                         mean_exit_layer=float(np.mean([r.exit_layer for r in rows])), rho=rho, rho_pad128=rho128,
                         latency=latency_summary([r.time_us for r in rows]), group=info.group, **info.settings())
    if gold is not None:
        s = Scores.of([r.label_index for r in rows], gold, metric)
        row.metric, row.metric_name, row.accuracy, row.f1 = s.metric, s.metric_name, s.accuracy, s.f1
    return row


def operating_point(points: Sequence[VariantSummary], *, reference_metric: float | None = None,
                    max_drop: float | None = None, budget_ms: float | None = None) -> VariantSummary | None:
    """Best point for an accuracy floor (fastest by mean latency within `max_drop` points of
    `reference_metric`) or for a latency budget (highest metric whose p50 latency fits `budget_ms`);
    None when nothing qualifies. Mean latency is the throughput view, comparable with FLOPs rho."""
    if (max_drop is None) == (budget_ms is None):
        raise ValueError("give exactly one of max_drop and budget_ms")
    if max_drop is not None:
        return fastest_within(points, floor=reference_metric - max_drop / 100)
    ok = [p for p in points if p.p50_us <= budget_ms * 1000]
    return max(ok, key=lambda p: (p.metric, p.speedup_mean)) if ok else None


def relative_spread(a: float, b: float) -> float:
    """|a - b| relative to their mean (symmetric: the order of the pair does not matter)."""
    return abs(a - b) / ((a + b) / 2)


def aa_control(a: VariantSummary, b: VariantSummary, threshold: float = AA_THRESHOLD) -> AAControl:
    """The A/A spread of two rows of the same variant; `flagged` when either spread exceeds `threshold`."""
    mean, p50 = relative_spread(a.mean_us, b.mean_us), relative_spread(a.p50_us, b.p50_us)
    return AAControl([a.variant, b.variant], mean, p50, threshold, max(mean, p50) > threshold)


def choose_baselines(table: Sequence[VariantSummary]) -> Baselines:
    """Which measured row each precision's speed-ups are against (rules in the module docstring)."""
    rows = {r.variant: r for r in table}
    fulls = [rows[n] for n in ("onnx_full", "onnx_fused") if n in rows]
    if not fulls:
        return Baselines("chain", "chain", None,
                         "no --reference, no full model: every speed-up (int8 rows too) is against the chain "
                         "(our chain, fp32, no exit, no pruning)")
    fp32 = min(fulls, key=lambda r: r.mean_us).variant
    int8 = "onnx_fused_int8" if "onnx_fused_int8" in rows else fp32
    plain = "onnx_full" if "onnx_full" in rows else None
    return Baselines(fp32, int8, plain,
                     f"speedup_mean/speedup_p50: against the best full model of the row's precision (fp32: the "
                     f"faster of {' and '.join(r.variant for r in fulls)} by mean latency = {fp32}; int8: {int8}"
                     + ("" if int8 == "onnx_fused_int8" else ", no int8 full model measured") + ")"
                     + (f"; *_vs_plain_fp32: against {plain}, the plain fp32 optimum export" if plain else ""))


def add_speedups(rows: Sequence[VariantSummary], table: Sequence[VariantSummary], baselines: Baselines) -> None:
    """Speed-ups of `rows` against the baseline of each row's precision, and against the plain fp32 export."""
    by_name = {r.variant: r for r in table}
    plain = by_name[baselines.plain_fp32] if baselines.plain_fp32 else None
    for r in rows:
        base = by_name[baselines.of(r.precision)]
        r.speedup_baseline = base.variant
        r.speedup_p50, r.speedup_mean = base.p50_us / r.p50_us, base.mean_us / r.mean_us
        r.realisation = r.speedup_mean / r.rho
        if plain is not None:
            r.speedup_p50_vs_plain_fp32 = plain.p50_us / r.p50_us
            r.speedup_mean_vs_plain_fp32 = plain.mean_us / r.mean_us


def static_comparison(sweep: Sequence[VariantSummary], static: Sequence[VariantSummary]) -> list[StaticComparison]:
    """For each static-depth point, the best MPEE sweep point at least as fast (by measured mean-latency
    speed-up, and separately by FLOPs rho)."""
    out = []
    for st in static:
        best = {}
        for key in ("speedup_mean", "rho"):
            faster = [p for p in sweep if getattr(p, key) >= getattr(st, key)]
            best[key] = max(faster, key=lambda p: p.metric).metric if faster else None
        gain = {k: None if m is None else m - st.metric for k, m in best.items()}
        out.append(StaticComparison(int(st.threshold), st.keep_ratio, st.metric, st.speedup_mean, st.rho,
                                    best["speedup_mean"], gain["speedup_mean"], best["rho"], gain["rho"]))
    return out


def parse_length_edges(text: str) -> list[int]:
    """`--length-buckets 128,256` -> [128, 256]: each bucket ends at an edge (inclusive), the last one is
    open-ended; "" gives one bucket of every example."""
    try:
        edges = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MpeeRuntimeError(f"--length-buckets: expected comma-separated token counts, got {text!r}") from None
    if any(e < 1 for e in edges) or edges != sorted(set(edges)):
        raise MpeeRuntimeError(f"--length-buckets: token counts must be positive and increasing, got {text!r}")
    return edges


def bucket_label(lo: int, hi: int | None, max_length: int | None = None) -> str:
    """"<=128", "129-256", "257-512" (the open-ended last bucket ends at the model's max length when known)."""
    if hi is None:
        hi = max_length if max_length is not None and max_length >= lo else None
        if hi is None:
            return "all" if lo == 1 else f">={lo}"
    return f"<={hi}" if lo == 1 else str(lo) if lo == hi else f"{lo}-{hi}"


def length_breakdown(infos: Sequence[VariantInfo], by_variant: dict[str, list[RequestRow]],
                     gold: Sequence[int] | None, metric: str, flops_model: FlopsModel, edges: Sequence[int],
                     max_length: int | None = None) -> LengthBreakdown:
    """Every variant of `infos` summarised on the examples of each length bucket, speed-ups against the
    best full model of its precision among that bucket's rows (choose_baselines again per bucket)."""
    # An example's length is the same in every variant's rows (the same token ids): read it from any.
    tokens = {r.example: r.input_tokens for info in infos for r in by_variant[info.name]}
    bounds = list(zip([1] + [e + 1 for e in edges], [*edges, None]))
    buckets = []
    for lo, hi in bounds:
        chosen = sorted(e for e, n in tokens.items() if lo <= n and (hi is None or n <= hi))
        if not chosen:
            continue
        keep = set(chosen)
        sub_gold = None if gold is None else [gold[e] for e in chosen]   # in example order, as summarize sorts
        table = [summarize(info, [r for r in by_variant[info.name] if r.example in keep], sub_gold, metric,
                           flops_model) for info in infos]
        baselines = choose_baselines(table)
        add_speedups(table, table, baselines)
        buckets.append(LengthBucket(bucket_label(lo, hi, max_length), lo, hi, len(chosen),
                                    float(np.mean([tokens[e] for e in chosen])),
                                    len(chosen) < MIN_BUCKET_EXAMPLES, baselines, table))
    return LengthBreakdown(list(edges), len(tokens), float(np.mean(list(tokens.values()))), MIN_BUCKET_EXAMPLES,
                           buckets)


def plot_bin_edges(max_tokens: int, width: int = PLOT_BIN_TOKENS) -> list[int]:
    """Edges of bins `width` tokens wide, the last one holding `max_tokens` (64, 128, ... up to it)."""
    return list(range(width, max_tokens + width, width))


# ---------------------------------------------------------------- reading a measurement folder
@dataclass
class Measurement:
    """What the measuring passes left in a folder: the onnxruntime pass, and PyTorch's when it joined it."""

    run: RunRecord
    rows: list[RequestRow]
    pytorch: RunRecord | None = None
    pytorch_rows: list[RequestRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_measurement(out: Path) -> Measurement:
    """OUT/run.json and OUT/rows.jsonl, plus OUT/run_pytorch.json and OUT/rows_pytorch.jsonl when they belong
    to the same run (same run_id and inputs); rows of another run are ignored with a note."""
    out = Path(out)
    run = RunRecord.load(out / RUN)
    if not (out / ROWS).is_file():
        raise MpeeRuntimeError(f"{out / ROWS}: not found (the measurement did not finish)")
    m = Measurement(run, read_rows(out / ROWS))
    if (out / PYTORCH_RUN).is_file() and (out / PYTORCH_ROWS).is_file():
        pt = RunRecord.load(out / PYTORCH_RUN)
        if pt.run_id != run.run_id or pt.inputs_sha256 != run.inputs_sha256 or pt.gold != run.gold:
            m.notes.append(f"pytorch: {out / PYTORCH_ROWS} belongs to another measurement (not run id "
                           f"{run.run_id} on these inputs); ignored (re-run python -m mpee_export.bench_pytorch)")
        else:
            m.pytorch, m.pytorch_rows = pt, read_rows(out / PYTORCH_ROWS)
    elif run.reference_export is not None or any(v.path for v in run.variants):
        m.notes.append(f"pytorch: not measured yet (mpee-bench never imports torch): run `python -m "
                       f"mpee_export.bench_pytorch REF --input {run.input.get('path')} --threads "
                       f"{run.environment.get('threads')} --out {out}`, then `mpee-bench report {out}`")
    return m


def _check_rows(info: VariantInfo, rows: Sequence[RequestRow], examples: int, where: str) -> None:
    got = sorted(r.example for r in rows)
    if got != list(range(examples)):
        raise MpeeRuntimeError(f"{where}: variant {info.name} has {len(rows)} rows for {examples} examples "
                               "(an incomplete or mixed measurement)")


def build_results(m: Measurement, *, max_drop: float | None = None, budget_ms: float | None = None,
                  length_edges: Sequence[int] = LENGTH_EDGES) -> BenchResults:
    """Summaries of every variant, speed-ups against their baselines, the A/A control, the chosen points and
    the table by input length (buckets cut at `length_edges`, and the plot's bins)."""
    if max_drop is not None and budget_ms is not None:
        raise MpeeRuntimeError("give at most one of --max-drop and --budget-ms")
    run = m.run
    fm = FlopsModel(**run.flops_model)
    infos = list(run.variants)
    by_variant: dict[str, list[RequestRow]] = {v.name: [] for v in infos}
    for r in m.rows:
        by_variant.setdefault(r.variant, []).append(r)
    passes = list(run.passes)
    device = [w for w in (run.device_warning,) if w]
    if m.pytorch is not None:
        infos = list(m.pytorch.variants) + infos        # PyTorch leads the table, as it always did
        for r in m.pytorch_rows:
            by_variant.setdefault(r.variant, []).append(r)
        passes += [p | {"environment": m.pytorch.environment} for p in m.pytorch.passes]
        device += [f"pytorch pass: {m.pytorch.device_warning}"] if m.pytorch.device_warning else []
    summaries = {}
    for info in infos:
        _check_rows(info, by_variant.get(info.name, []), run.examples, "rows")
        summaries[info.name] = summarize(info, by_variant[info.name], run.gold, run.metric_name, fm)
    table = [summaries[v.name] for v in infos if v.group == "table"]
    sweep = [summaries[v.name] for v in infos if v.group == "sweep"]
    static = [summaries[v.name] for v in infos if v.group == "static"]
    baselines = choose_baselines(table)
    add_speedups(table + sweep + static, table, baselines)
    by_name = {r.variant: r for r in table}
    aa = aa_control(by_name[AA_NAMES[0]], by_name[AA_NAMES[1]])
    notes = list(run.notes) + (list(m.pytorch.notes) if m.pytorch else []) + m.notes
    res = BenchResults(task=run.task, examples=run.examples, environment=run.environment, baselines=baselines,
                       aa_control=aa, warning=aa.warning,
                       measurement={"passes": passes, "aa_threshold": AA_THRESHOLD},
                       reference_export=run.reference_export, policy=run.policy,
                       tokenize=latency_summary(run.tokenize_us) if run.tokenize_us else None, notes=notes,
                       variants=table, sweep=sweep, static=static, device_warnings=device)
    table_infos = [v for v in infos if v.group == "table"]
    max_length = run.input.get("max_length")
    res.length_buckets = length_breakdown(table_infos, by_variant, run.gold, run.metric_name, fm, length_edges,
                                          max_length)
    longest = max(r.input_tokens for r in m.rows)
    res.length_bins = length_breakdown(table_infos, by_variant, run.gold, run.metric_name, fm,
                                       plot_bin_edges(longest), max_length)
    if run.gold is not None and sweep:
        res.pareto = [p.point() for p in pareto_front(sweep)]
        if max_drop is not None or budget_ms is not None:
            best = operating_point(sweep, reference_metric=res.reference.metric, max_drop=max_drop,
                                   budget_ms=budget_ms)
            res.operating_point, res.asked_point = best and best.point(with_latency=True), True
        if static:
            res.static_comparison = static_comparison(sweep, static)
    return res


# ---------------------------------------------------------------- tables, CSV, plot
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
         static: Sequence[VariantSummary] = ()) -> str | None:
    """Metric against measured speed-up and against FLOPs rho per keep ratio (one colour per ratio), the
    static-depth points in black, the baseline's metric as a level; None or why it was skipped."""
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
    what = "best fp32 full model" if base != "chain" else "our chain, no --reference"
    return plot_tradeoff(path, curves, xlabel=f"speed-up over {base} ({what}; mean latency) (x)",
                         ylabel=f"{task} {reference.metric_name or 'metric'} (%)",
                         title=f"MPEE trade-off on {task}: measured latency vs FLOPs (fp32)",
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
            note = plot(out / PLOT, res.sweep, res.reference, res.task, res.static)
            if note:
                res.notes.append(f"plot: {note}")
    text = table_text(res)
    if res.length_buckets is not None:
        text += ("\n" if text else "") + length_table(res.length_buckets, res.variants, res.baselines)
    if res.length_bins is not None:
        note = plot_by_length(out / LENGTH_PLOT, res.length_bins, res.task)
        if note:
            res.notes.append(f"length plot: {note}")
    write_text(out / TABLE, text)
    res.write(out / RESULTS)


def print_summary(res: BenchResults, out: Path) -> None:
    """The table (or the rows when the input has no labels), the A/A line, the table by input length in
    brief, notes and the operating point on stdout; every warning on stderr."""
    print(table_text(res) or json.dumps([r.to_dict() for r in res.variants], indent=1))
    aa = res.aa_control
    print(f"A/A control ({' vs '.join(aa.variants)}): mean latency {100 * aa.mean_spread:.1f}%, "
          f"p50 {100 * aa.p50_spread:.1f}% apart (limit {100 * aa.threshold:.0f}%)")
    if res.length_buckets is not None:
        print(length_brief(res.length_buckets, res.variants))
    for note in res.notes:
        print(f"note: {note}")
    op = res.operating_point
    if op:
        print(f"operating point: F={op['threshold']} r={op['keep_ratio']}: metric {100 * op['metric']:.2f}, "
              f"speed-up {op['speedup_mean']:.2f}x vs {op['speedup_baseline']} (mean latency), "
              f"p50 {op['latency']['p50_us'] / 1e3:.2f} ms")
    for w in ([res.warning] if res.warning else []) + res.device_warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {out}")


def report(out: Path, *, max_drop: float | None = None, budget_ms: float | None = None,
           use_recorded_choice: bool = True, length_edges: Sequence[int] = LENGTH_EDGES) -> BenchResults:
    """Read the measurement in `out`, write every report file there and print the summary. Without
    `max_drop` / `budget_ms`, the operating point asked for at measuring time is chosen again; the length
    buckets are a report-time choice (`length_edges`), not recorded with the measurement."""
    m = load_measurement(out)
    if use_recorded_choice and max_drop is None and budget_ms is None:
        max_drop, budget_ms = m.run.choice.get("max_drop"), m.run.choice.get("budget_ms")
    res = build_results(m, max_drop=max_drop, budget_ms=budget_ms, length_edges=length_edges)
    write_outputs(res, Path(out))
    print_summary(res, Path(out))
    return res


def build_parser() -> argparse.ArgumentParser:
    from .cli import ErrorLineParser
    p = ErrorLineParser(prog="mpee-bench report", description="Re-run the report of a measurement folder from its rows "
                "(OUT/rows.jsonl, OUT/run.json, and PyTorch's rows when present); no model is loaded.")
    p.add_argument("out", type=Path, help="folder of a `mpee-bench BUNDLE ... --out OUT` run")
    p.add_argument("--max-drop", type=float, help="name the fastest point within D points of the full model "
                   "[default: what the measurement asked for]")
    p.add_argument("--budget-ms", type=float, help="name the most accurate point with p50 within B ms")
    add_length_buckets_option(p)
    return p


def add_length_buckets_option(p: argparse.ArgumentParser) -> None:
    """--length-buckets, the same in `mpee-bench` and `mpee-bench report`."""
    p.add_argument("--length-buckets", type=parse_length_edges, default=",".join(map(str, LENGTH_EDGES)),
                   metavar="N,M,...", help="input-length buckets of the table by length, in tokens ([CLS]/[SEP] "
                   "included): each ends at an edge, the last runs to the longest input [default: %(default)s]")


def main(argv: list[str] | None = None) -> int:
    """`mpee-bench report OUT [--max-drop D | --budget-ms B] [--length-buckets N,M]` (errors become exit
    code 2 in bench.main)."""
    args = build_parser().parse_args(argv)
    if not args.out.is_dir():
        raise MpeeRuntimeError(f"{args.out}: not a folder")
    report(args.out, max_drop=args.max_drop, budget_ms=args.budget_ms, length_edges=args.length_buckets)
    return 0
