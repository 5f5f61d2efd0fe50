"""The report's statistics, from the rows of a measurement folder (`load_measurement`) to `BenchResults`
(`build_results`): per-variant summaries, baselines and speed-ups, the A/A control, the operating point, the
static-depth comparison and the table by input length. The rules: `bench/report.py`'s docstring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.flops import FlopsModel
from ..core.metrics import Scores, latency_summary
from ..errors import MpeeRuntimeError
from .records import (
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
from .results import (
    AAControl,
    Baselines,
    BenchResults,
    LengthBreakdown,
    LengthBucket,
    StaticComparison,
    VariantSummary,
)
from .tradeoff import fastest_within, pareto_front

AA_THRESHOLD = 0.03   # relative spread of the A/A pair above which a run is flagged


LENGTH_EDGES = (128, 256)    # default buckets: <=128, 129-256, 257 up to the model's max length (IMDB: 512)


MIN_BUCKET_EXAMPLES = 10     # below this a bucket's latency statistics are too few to read much into


PLOT_BIN_TOKENS = 64         # the length plot's bins: finer than the buckets, so the curve has a shape


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
    """For each static-depth point, the best MPEE sweep point of its precision at least as fast (by measured
    mean-latency speed-up, each against the best full model of that precision, and separately by FLOPs rho)."""
    out = []
    for st in static:
        best = {}
        for key in ("speedup_mean", "rho"):
            faster = [p for p in sweep if p.precision == st.precision and getattr(p, key) >= getattr(st, key)]
            best[key] = max(faster, key=lambda p: p.metric).metric if faster else None
        gain = {k: None if m is None else m - st.metric for k, m in best.items()}
        out.append(StaticComparison(int(st.threshold), st.keep_ratio, st.metric, st.speedup_mean, st.rho,
                                    best["speedup_mean"], gain["speedup_mean"], best["rho"], gain["rho"],
                                    st.precision))
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
                           f"{run.run_id} on these inputs); ignored (re-run python -m mpee_export.baselines.bench_pytorch)")
        else:
            m.pytorch, m.pytorch_rows = pt, read_rows(out / PYTORCH_ROWS)
    elif run.reference_export is not None or any(v.path for v in run.variants):
        m.notes.append(f"pytorch: not measured yet (mpee-bench never imports torch): run `python -m "
                       f"mpee_export.baselines.bench_pytorch REF --input {run.input.get('path')} --threads "
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
    companion = [summaries[v.name] for v in infos if v.group == "companion"]
    baselines = choose_baselines(table)
    add_speedups(table + sweep + static + companion, table, baselines)
    by_name = {r.variant: r for r in table}
    aa = aa_control(by_name[AA_NAMES[0]], by_name[AA_NAMES[1]])
    notes = list(run.notes) + (list(m.pytorch.notes) if m.pytorch else []) + m.notes
    res = BenchResults(task=run.task, examples=run.examples, environment=run.environment, baselines=baselines,
                       aa_control=aa, warning=aa.warning,
                       measurement={"passes": passes, "aa_threshold": AA_THRESHOLD},
                       reference_export=run.reference_export, policy=run.policy,
                       tokenize=latency_summary(run.tokenize_us) if run.tokenize_us else None, notes=notes,
                       variants=table, sweep=sweep, static=static, device_warnings=device, companion=companion,
                       command=list(run.command))
    table_infos = [v for v in infos if v.group == "table"]
    max_length = run.input.get("max_length")
    res.length_buckets = length_breakdown(table_infos, by_variant, run.gold, run.metric_name, fm, length_edges,
                                          max_length)
    longest = max(r.input_tokens for r in m.rows)
    res.length_bins = length_breakdown(table_infos, by_variant, run.gold, run.metric_name, fm,
                                       plot_bin_edges(longest), max_length)
    fp32_sweep = [p for p in sweep if p.precision == "fp32"]   # the operating point's rule is the fp32 bundle's
    if run.gold is not None and fp32_sweep:
        res.pareto = [p.point() for p in pareto_front(fp32_sweep)]
        if max_drop is not None or budget_ms is not None:
            best = operating_point(fp32_sweep, reference_metric=res.reference.metric, max_drop=max_drop,
                                   budget_ms=budget_ms)
            res.operating_point, res.asked_point = best and best.point(with_latency=True), True
            res.point_rule = (f"the fastest within {max_drop:g} point{'' if max_drop == 1 else 's'} of "
                              f"{res.reference.variant}'s "
                              f"{res.reference.metric_name or 'metric'}" if max_drop is not None else
                              f"the most accurate with p50 within {budget_ms:g} ms")
        if static:
            res.static_comparison = static_comparison(sweep, static)
    return res
