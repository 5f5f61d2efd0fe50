"""Reporting, the half of mpee-bench that runs anywhere (numpy, matplotlib optional): read the rows and run
records a measuring pass left in OUT (`mpee_runtime.bench.measure`, `mpee_export.baselines.bench_pytorch`) and write
results.json, table.md, sweep.csv, tradeoff.png (tradeoff_int8.png for the int8 sweep) and speedup_by_length.png.
`mpee-bench report OUT` does this alone.

Rules (the method and why: docs/benchmarking.md):
- Every speed-up says what it is against. speedup_mean / speedup_p50: against the best full model of the
  row's precision (fp32 rows, the sweep's too: the faster of onnx_full and onnx_fused by mean latency; int8
  rows: onnx_fused_int8), named by `speedup_baseline`; *_vs_plain_fp32: against onnx_full. Without full
  models every speed-up, int8 rows too, is against the chain.
- rho and rho_pad128 are FLOPs ratios (flops.py), summed over the data set.
- The A/A control: the relative spread |a - b| / ((a + b) / 2) of the mean and of the p50 latencies of
  `chain` and `chain_aa`; above AA_THRESHOLD the run is flagged (`warning`), and so is a run whose CPU
  clock dropped or was throttled (`device_warnings`).
- The operating point and the Pareto front: of the fp32 sweep, the fastest point (mean latency) within
  --max-drop points of the fp32 baseline's metric, or the most accurate one whose p50 fits --budget-ms.
- The static comparison: each static-depth point against the most accurate sweep point of its own precision
  at least as fast (--int8-points gives int8 rows of both).
- By input length (--length-buckets, input tokens as given to the model, [CLS]/[SEP] included): every table
  variant summarised again on the examples of each bucket, its speed-ups against the best full model of its
  precision *on those examples* (chosen again per bucket), rho over those examples, and realisation =
  speedup_mean / rho (mean latency and rho are both ratios of sums over the examples). Empty buckets are
  left out; a bucket of fewer than MIN_BUCKET_EXAMPLES examples is marked `few`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import MpeeRuntimeError
from .analysis import LENGTH_EDGES, build_results, load_measurement, parse_length_edges
from .render import print_summary, write_outputs
from .results import BenchResults

# ---------------------------------------------------------------- typed records


# ---------------------------------------------------------------- statistics (unit-tested on synthetic data)


# ---------------------------------------------------------------- reading a measurement folder


# ---------------------------------------------------------------- tables, CSV, plot


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
    from ..cli.common import ErrorLineParser
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
