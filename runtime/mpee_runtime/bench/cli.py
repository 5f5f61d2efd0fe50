"""mpee-bench: on-device latency and the accuracy/speed trade-off, side by side with the full model.

    mpee-bench BUNDLE --input DEV [--reference REF] [--int8 B] ... --out OUT   measure, then report
    mpee-bench report OUT [--max-drop D | --budget-ms B] [--length-buckets N,M]   report again from OUT's rows
    mpee-bench map RESULTS[=NAME] ... --out MAP   several results folders of one task on one accuracy/latency map
    mpee-bench --throughput BUNDLE --input DEV --reference REF ... --out OUT   texts/s by batch size
    mpee-bench throughput-report OUT       the throughput report again (`mpee_runtime.bench.throughput`)

Measuring (`mpee_runtime.bench.measure`, torch-free) writes OUT/rows.jsonl (one line per timed request) and
OUT/run.json; reporting (`mpee_runtime.bench.report`) reads them and writes results.json, table.md (with the table
by input length), sweep.csv, tradeoff.png and speedup_by_length.png. The PyTorch eager baseline is timed by
`python -m mpee_export.baselines.bench_pytorch REF --input DEV --threads N --out OUT` after the measurement, in a
process of its own; `mpee-bench report OUT` then puts it in the table. Variants: the full models of REF
(bundle.reference.FULL_MODELS), our chain (twice: the A/A control), exits only, pruning only, MPEE, the int8 chain and
MPEE int8, a threshold x keep-ratio sweep and the static-depth points (exit k for every example), on the int8
bundle too with --int8-points. The method, its rules and why: docs/benchmarking.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.common import add_bundle_options, add_column_options, add_engine_option, add_pool_options
from ..core.policy import POLICIES
from ..errors import exit_2_on_error

REPORT = "report"   # `mpee-bench report OUT`; a bundle folder named "report" is given as ./report


def build_parser() -> argparse.ArgumentParser:
    from ..cli.common import ErrorLineParser
    from .measure import BLOCK
    from .report import add_length_buckets_option
    p = ErrorLineParser(prog="mpee-bench", description=__doc__.split("\n")[0],
                epilog="mpee-bench report OUT [--max-drop D | --budget-ms B] [--length-buckets N,M]: the report "
                "again, from OUT's rows")
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", type=Path, required=True, help="GLUE TSV or JSONL with labels (e.g. dev.tsv)")
    add_column_options(p)
    p.add_argument("--reference", type=Path, help="folder from `mpee-export reference`: model.onnx, "
                   "model_fused.onnx, model_fused_int8.onnx (+ hf/ for python -m mpee_export.baselines.bench_pytorch)")
    p.add_argument("--int8", type=Path, help="int8 bundle of the same model")
    p.add_argument("--companion", type=Path, metavar="BUNDLE2",
                   help="another model's bundle for the same task (e.g. a smaller model), measured in the same "
                   "interleaved pass on its own tokenizer: its MPEE at its operating point")
    p.add_argument("--companion-reference", type=Path, metavar="REF2",
                   help="the companion's `mpee-export reference` folder: its fused full models, fp32 and int8")
    p.add_argument("--policy", choices=POLICIES, help="exit policy of exits/mpee/sweep [default: the bundle's]")
    p.add_argument("--threshold", type=float, help="threshold for exits/mpee [default: the bundle's]")
    p.add_argument("--keep-ratio", type=float, default=None, help="r for pruning/mpee [default: the bundle's]")
    p.add_argument("--thresholds", default="0,0.05,0.1,0.2,0.3,0.4,0.5,0.6", help="sweep thresholds")
    p.add_argument("--keep-ratios", default="0.5,0.7,1.0", help="sweep keep ratios")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--no-static", action="store_true", help="skip the static-depth points (exit k for every example)")
    p.add_argument("--int8-points", action="store_true",
                   help="the sweep and the static-depth points on the --int8 bundle too (the int8 trade-off and "
                   "the deployment map's int8 points)")
    p.add_argument("--max-examples", type=int, help="use the first N examples")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--block", type=int, default=BLOCK,
                   help="examples each variant runs back to back in its turn (1: interleave example by example)")
    p.add_argument("--threads", type=int, default=2)
    add_pool_options(p)
    add_engine_option(p)
    add_bundle_options(p)
    p.add_argument("--max-drop", type=float, help="name the fastest point within D points of the full model")
    p.add_argument("--budget-ms", type=float, help="name the most accurate point with p50 within B ms")
    add_length_buckets_option(p)   # a report-time choice; given here so a bad value fails before measuring
    p.add_argument("--out", type=Path, required=True,
                   help="folder for rows.jsonl, run.json, results.json, sweep.csv, table.md, plot")
    return p


@exit_2_on_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from . import report
    if argv[:1] == [REPORT]:
        return report.main(argv[1:])
    from . import deployment_map
    if argv[:1] == [deployment_map.COMMAND]:
        return deployment_map.main(argv[1:])
    from .throughput import cli as throughput
    if argv[:1] == [throughput.REPORT_COMMAND]:
        return throughput.report_main(argv[1:])
    if throughput.wants_throughput(argv):
        return throughput.main(throughput.strip_command(argv))
    from . import measure
    args = build_parser().parse_intermixed_args(argv)
    args.argv = argv   # recorded in run.json: each point of a report names the command that measured it
    measure.run(args)
    report.report(args.out, length_edges=args.length_buckets)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
