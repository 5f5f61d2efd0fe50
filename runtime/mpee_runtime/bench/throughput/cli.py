"""`mpee-bench --throughput` and `mpee-bench throughput-report`: their arguments and the run (rules in the
package docstring)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ...cli.common import add_bundle_options, add_column_options, add_pool_options
from ...core.policy import POLICIES
from .records import ThroughputRecord
from .report import RECORD, print_summary, write_outputs
from .run import BATCH_SIZES, run

FLAG, COMMAND, REPORT_COMMAND = "--throughput", "throughput", "throughput-report"   # how mpee-bench asks for it


def build_parser() -> argparse.ArgumentParser:
    from ...cli.common import ErrorLineParser
    p = ErrorLineParser(prog="mpee-bench --throughput", description="Texts per second and per-request latency at several batch sizes, MPEE against the full models.")
    p.add_argument("bundle", type=Path, help="the (fp32) MPEE bundle")
    p.add_argument("--input", type=Path, required=True, help="GLUE TSV or JSONL with labels (e.g. dev.tsv)")
    add_column_options(p)
    p.add_argument("--reference", type=Path, required=True, help="folder from `mpee-export reference` "
                   "(model_fused.onnx or model.onnx; model_fused_int8.onnx for the int8 rows)")
    p.add_argument("--int8", type=Path, help="int8 bundle of the same model")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="[default: %(default)s]")
    p.add_argument("--repeats", type=int, default=3, help="passes of every variant at every batch size, "
                   "interleaved [default: %(default)s]")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of the largest batch on each session "
                   "before each pass [default: %(default)s]")
    p.add_argument("--threads", type=int, default=2, help="threads in all, per variant [default: %(default)s]")
    p.add_argument("--max-examples", type=int, help="use the first N examples")
    p.add_argument("--policy", choices=POLICIES, help="exit policy of MPEE [default: the bundle's]")
    p.add_argument("--threshold", type=float, help="threshold of MPEE [default: the bundle's]")
    p.add_argument("--keep-ratio", type=float, help="keep ratio of MPEE [default: the bundle's]")
    add_pool_options(p, thread_pool=False)
    add_bundle_options(p)
    p.add_argument("--out", type=Path, required=True, help="folder for throughput.json, .md and .png")
    return p


def wants_throughput(argv: Sequence[str]) -> bool:
    """mpee-bench's arguments ask for this benchmark: `throughput` first, or `--throughput` anywhere (a bundle
    folder named "throughput" is given as ./throughput)."""
    return argv[:1] == [COMMAND] or FLAG in argv


def strip_command(argv: Sequence[str]) -> list[str]:
    """The arguments without the leading `throughput` or the first `--throughput`."""
    argv = list(argv)
    if argv[:1] == [COMMAND]:
        return argv[1:]
    del argv[argv.index(FLAG)]
    return argv


def main(argv: list[str] | None = None) -> int:
    """`mpee-bench --throughput ...` (argv without the flag: `strip_command`); errors become exit code 2 in
    bench.main."""
    args = build_parser().parse_intermixed_args(argv)
    rec = run(args)
    print_summary(rec, write_outputs(rec, args.out))
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """`mpee-bench throughput-report OUT`: throughput.md and throughput.png again from OUT/throughput.json."""
    from ...cli.common import ErrorLineParser
    p = ErrorLineParser(prog="mpee-bench throughput-report", description=report_main.__doc__)
    p.add_argument("out", type=Path, help="folder of a `mpee-bench --throughput ... --out OUT` run")
    args = p.parse_args(argv)
    rec = ThroughputRecord.load(args.out / RECORD)
    print_summary(rec, write_outputs(rec, args.out))
    return 0
