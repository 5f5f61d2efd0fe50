"""Sweep the pruning schedule at long inputs: which layers prune and how many tokens they keep, measured.

A schedule is one keep ratio per pruning layer of the bundle (1 = that layer keeps every token), so
"1:1:0.5" prunes at the last pruning layer only. Every schedule runs twice, without exits (pruning only)
and with the bundle's calibrated exit rule (MPEE), in one blocked interleaved pass (mpee_runtime.measure)
with the full models of the reference folder, our chain and its A/A twin, on the examples of --input
longer than --min-tokens. Speed-ups are against the best full model of the bundle's precision, as
mpee-bench reports them (mean latency; rho and realisation = speed-up / rho beside them).

    python benchmarks/pruning_schedule.py BUNDLE --input dev.csv --reference REF --out DIR

writes DIR/schedules.json and DIR/schedules.md and prints the table; the chosen schedule is the fastest
pruning-only one within --max-drop points of the chain at full depth (the bundle's own full model).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from mpee_runtime.bench.analysis import aa_control, summarize
from mpee_runtime.bench.measure import chain_variant, full_model_variant, measure
from mpee_runtime.bench.records import VariantInfo
from mpee_runtime.bundle.reference import FULL_MODELS
from mpee_runtime.cli.common import input_columns
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import NO_EXIT
from mpee_runtime.files import write_text
from mpee_runtime.text.readers import read_examples


def default_schedules(n: int) -> list[str]:
    """The schedules swept for a bundle with `n` pruning layers: one ratio everywhere (1 = no pruning, 0.7,
    0.5, 0.3, 0.2); the first pruning layer alone (0.5, 0.3); every layer but the first (0.5, 0.3); and the
    first pruning less than the rest (0.7 or 0.5, then 0.3)."""
    def sched(first: float, rest: float) -> str:
        return ":".join(f"{r:g}" for r in [first] + [rest] * (n - 1))
    out = [sched(r, r) for r in (1, 0.7, 0.5, 0.3, 0.2)]
    if n > 1:
        out += [sched(0.5, 1), sched(0.3, 1), sched(1, 0.5), sched(1, 0.3), sched(0.7, 0.3), sched(0.5, 0.3)]
    return out


@dataclass(frozen=True)
class ScheduleResult:
    schedule: list[float]
    exits: bool                      # False: pruning only
    metric: float
    speedup: float                   # mean latency, against the best full model of the bundle's precision
    rho: float
    realisation: float
    mean_exit_layer: float
    tokens_last_layer: float         # mean tokens entering the last executed layer


def _schedule(text: str, n: int) -> list[float]:
    ratios = [float(x) for x in text.split(":")]
    if len(ratios) != n or not all(0 < r <= 1 for r in ratios):
        raise SystemExit(f"Error: schedule {text!r}: need {n} keep ratios in (0, 1] separated by ':'")
    return ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--schedules", nargs="+", default=None,
                   help="keep ratios per pruning layer, R:R:...; default: default_schedules() for the bundle")
    p.add_argument("--min-tokens", type=int, default=257, help="measure only inputs of at least this many tokens")
    p.add_argument("--max-examples", type=int, default=400)
    p.add_argument("--max-drop", type=float, default=1.0, help="points of the metric allowed below the chain")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--block", type=int, default=8)
    args = p.parse_args(argv)

    engine = MpeeEngine(args.bundle, threads=args.threads, thread_pool="global")
    twin = MpeeEngine(args.bundle, threads=args.threads, thread_pool="global")
    n_prune = len(engine.default_keep_ratios)
    schedules = [_schedule(s, n_prune) for s in args.schedules or default_schedules(n_prune)]
    columns, _ = input_columns(args.input, engine.manifest.task)
    examples = read_examples(args.input, columns, labels=engine.labels, require_label=True,
                             max_chars=engine.max_chars, tail=engine.truncation != "head")
    label_ids = {label: i for i, label in enumerate(engine.labels)}
    inputs, gold = [], []
    for ex in examples:
        ids, types = engine.encode(ex.text, ex.pair)
        if ids.shape[1] >= args.min_tokens:
            inputs.append((ids, types))
            gold.append(label_ids[ex.label])
        if len(inputs) >= args.max_examples:
            break
    precision = engine.manifest.precision
    variants = [full_model_variant(VariantInfo(m.variant, m.description, m.precision,
                                               path=str(args.reference / m.file)),
                                   engine.flops_model, args.threads, True, "global")
                for m in FULL_MODELS if m.precision == precision and (args.reference / m.file).is_file()]
    variants += [chain_variant(VariantInfo("chain", "chain, full depth", precision, **NO_EXIT, keep_ratio=1.0), engine),
                 chain_variant(VariantInfo("chain_aa", "A/A twin", precision, **NO_EXIT, keep_ratio=1.0), twin)]
    exit_rule = {"policy": engine.default_policy, "threshold": engine.default_threshold}
    for s in schedules:
        name = ":".join(f"{r:g}" for r in s)
        variants.append(chain_variant(VariantInfo(f"prune_{name}", "pruning only", precision, **NO_EXIT,
                                                  keep_ratio=s), engine))
        variants.append(chain_variant(VariantInfo(f"mpee_{name}", "MPEE", precision, **exit_rule, keep_ratio=s),
                                      engine))
    print(f"{len(inputs)} examples of >= {args.min_tokens} tokens x {len(variants)} variants", file=sys.stderr)
    measure(variants, inputs, args.warmup, progress=True, block=args.block)
    metric = engine.manifest.task.metric if engine.manifest.task else "accuracy"
    summaries = {v.name: summarize(v.info, v.rows, gold, metric, engine.flops_model) for v in variants}
    fulls = [summaries[m.variant] for m in FULL_MODELS if m.variant in summaries]
    best = min(fulls, key=lambda r: r.mean_us)
    aa = aa_control(summaries["chain"], summaries["chain_aa"])
    chain = summaries["chain"]
    results = []
    for v in variants[len(fulls) + 2:]:
        s = summaries[v.name]
        speedup = best.mean_us / s.mean_us
        last = [r.tokens_per_layer[-1] for r in v.rows]
        results.append(ScheduleResult(list(v.info.keep_ratio), v.info.threshold != NO_EXIT["threshold"], s.metric,
                                      speedup, s.rho, speedup / s.rho, s.mean_exit_layer, sum(last) / len(last)))
    mean_tokens = sum(i[0].shape[1] for i in inputs) / len(inputs)
    record = {"bundle": str(args.bundle), "input": str(args.input), "examples": len(inputs),
              "min_tokens": args.min_tokens, "mean_tokens": mean_tokens, "precision": precision,
              "prune_layers": sorted(engine.default_keep_ratios), "threads": args.threads, "max_drop": args.max_drop,
              "baseline": best.variant, "baseline_mean_ms": best.mean_us / 1e3, "aa": aa.to_dict(),
              "metric_name": metric, "chain_metric": chain.metric, "chain_speedup": best.mean_us / chain.mean_us,
              "results": [asdict(r) for r in results]}
    lines = write_outputs(args.out, record)
    print("\n".join(lines))
    return 0


def write_outputs(out: Path, record: dict) -> list[str]:
    """DIR/schedules.json (the record) and DIR/schedules.md (the table, the chosen schedule); returns the lines."""
    results = [ScheduleResult(**r) for r in record["results"]]
    floor = record["chain_metric"] - record["max_drop"] / 100
    ok = [r for r in results if not r.exits and r.metric >= floor]
    chosen = max(ok, key=lambda r: r.speedup) if ok else None
    ok_mpee = [r for r in results if r.exits and r.metric >= floor]
    chosen_mpee = max(ok_mpee, key=lambda r: r.speedup) if ok_mpee else None
    record = record | {"chosen": None if chosen is None else chosen.schedule,
                       "chosen_mpee": None if chosen_mpee is None else chosen_mpee.schedule}
    aa, metric = record["aa"], record["metric_name"]

    def name(r: ScheduleResult) -> str:
        return ":".join(f"{x:g}" for x in r.schedule)
    lines = [(f"# Pruning schedules on {record['examples']} inputs of >= {record['min_tokens']} tokens "
              f"(mean {record['mean_tokens']:.0f})"), "",
             (f"Bundle `{record['bundle']}` ({record['precision']}), prune layers {record['prune_layers']}; "
              f"speed-ups against {record['baseline']} (mean latency, {record['baseline_mean_ms']:.1f} ms), "
              f"{record['threads']} threads, blocked interleaved pass; A/A {100 * aa['mean_spread']:.1f}% (mean)"
              f"{' FLAGGED' if aa['flagged'] else ''}. Chain at full depth: {metric} "
              f"{100 * record['chain_metric']:.2f}, {record['chain_speedup']:.2f}x. Exits: the bundle's "
              "calibrated rule; tokens: mean tokens entering the last executed layer."), "",
             f"| schedule | exits | {metric} | speed-up | FLOPs rho | realisation | mean exit | tokens at last layer |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        mark = " **chosen**" if r is chosen or r is chosen_mpee else ""
        lines.append(f"| {name(r)}{mark} | {'yes' if r.exits else 'no'} | {100 * r.metric:.2f} | {r.speedup:.2f}x | "
                     f"{r.rho:.2f} | {r.realisation:.2f} | {r.mean_exit_layer:.2f} | {r.tokens_last_layer:.0f} |")
    lines += ["", f"Chosen: the fastest pruning-only schedule within {record['max_drop']} points of the chain: "
              + (name(chosen) if chosen else "none") + "; the fastest with exits (the bundle's exit rule) within "
              + f"{record['max_drop']} points: " + (name(chosen_mpee) if chosen_mpee else "none")]
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "schedules.md", "\n".join(lines) + "\n")
    write_text(out / "schedules.json", json.dumps(record, indent=1) + "\n")
    return lines


if __name__ == "__main__":
    sys.exit(main())
