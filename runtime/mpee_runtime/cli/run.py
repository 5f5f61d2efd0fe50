"""mpee-run: classify texts with a bundle on the device (argparse only: no extra dependency).

    mpee-run BUNDLE "text" [--pair "text"]              prints one JSON object
    mpee-run BUNDLE --input FILE --output preds.jsonl   GLUE TSV or JSONL in, JSON lines out, summary
    mpee-run BUNDLE --input FILE --batch-size 32 --bucket-window 1024    the same answers, batched

With `--batch-size N` > 1 the examples go to `engine.predict_batch` N at a time (N = 1, the default, calls
`engine.predict` per example); `--bucket-window W` groups rows of similar token length into a batch
(`plan_batches`). Output lines and summary are those of N = 1 whatever N and W, timing fields aside.

Each text is tokenized from at most `engine.max_chars` characters (readers.cut_text, docs/design.md "Input
limits"); the summary's `texts_cut` counts the examples cut, and their output lines say `"chars_cut": true`.
Ctrl-C exits 130 with one line, and no output file is left (written atomically at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns

from ..core.metrics import Scores, latency_summary
from ..core.policy import POLICIES, check_threshold
from ..errors import MpeeRuntimeError, exit_2_on_error
from ..files import check_output_file, write_text
from ..text.readers import (
    Example,
    check_input_file,
    read_examples,
)
from .common import (
    ErrorLineParser,
    add_bundle_options,
    add_column_options,
    add_engine_option,
    add_pool_options,
    input_columns,
)


def _progress(items, total: int):
    try:
        from tqdm import tqdm
    except ImportError:   # tqdm is optional on the device
        return items
    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests)
    return tqdm(items, total=total, desc="mpee-run", file=sys.stderr, mininterval=1, disable=None)


def check_batching(batch_size: int, bucket_window: int) -> None:
    """`--batch-size` is at least 1; `--bucket-window` is 0 (off) or a positive multiple of the batch size, so
    that each window splits into whole batches and no batch holds rows of two windows."""
    if batch_size < 1:
        raise MpeeRuntimeError(f"--batch-size must be >= 1, got {batch_size}")
    if bucket_window < 0 or bucket_window % batch_size:
        raise MpeeRuntimeError(f"--bucket-window must be 0 (off) or a positive multiple of --batch-size "
                               f"({batch_size}), got {bucket_window}")


def plan_batches(count: int, batch_size: int, *, window: int = 0,
                 length: Callable[[int], int] | None = None) -> list[list[int]]:
    """Indices of `count` examples, batch by batch, in the order they are run.

    Window 0: input order, cut into batches of `batch_size` (the last may be shorter). Window W > 0 (a multiple
    of `batch_size`, `check_batching`): the examples are taken W at a time in input order, each window sorted by
    `length(index)` (shortest first; equal lengths keep input order), then cut into batches. Either way only
    the last batch can be short. W bounds how far a row moves from its place; W >= count sorts the whole input."""
    order = list(range(count))
    if window:
        lengths = [length(i) for i in order]
        order = [i for start in range(0, count, window)
                 for i in sorted(range(start, min(start + window, count)), key=lengths.__getitem__)]
    return [order[i:i + batch_size] for i in range(0, count, batch_size)]


def predict_examples(engine, examples: list[Example], *, batch_size: int = 1, bucket_window: int = 0,
                     **knobs) -> list:
    """One Prediction per example, in input order, however the batches were planned (`plan_batches`; window
    lengths are token counts from `engine.encode`). Batch size 1 calls `engine.predict` per example, a larger
    one `engine.predict_batch` per batch."""
    def tokens(i: int) -> int:
        return int(engine.encode(examples[i].text, examples[i].pair)[0].shape[1])

    batches = plan_batches(len(examples), batch_size, window=bucket_window, length=tokens)
    preds: list = [None] * len(examples)
    for batch in _progress(batches, len(batches)):
        rows = [examples[i] for i in batch]
        if batch_size == 1:
            got = [engine.predict(rows[0].text, rows[0].pair, **knobs)]
        else:
            got = engine.predict_batch([ex.text for ex in rows], [ex.pair for ex in rows], **knobs)
        if len(got) != len(batch):   # no zip(strict=True): the device package supports Python 3.9
            raise MpeeRuntimeError(f"the engine answered {len(got)} of a batch of {len(batch)} rows")
        for i, pred in zip(batch, got):
            preds[i] = pred
    return preds


def applied_knobs(engine, *, threshold: float | None = None, keep_ratio=None, policy: str | None = None) -> dict:
    """The exit policy, threshold and keep ratio a run applied: the ones given, else the bundle's (its keep
    ratio: one number when every pruning layer has the same, else the schedule in layer order; 1.0 when no
    layer prunes). A run at the bundle's length points says so: threshold and keep ratio null, and the points."""
    if engine.knobs_unset(threshold, keep_ratio, policy) and engine.manifest.exit.length_points:
        return {"policy": engine.default_policy, "threshold": None, "keep_ratio": None,
                "length_points": [dict(p.__dict__) for p in engine.manifest.exit.length_points]}
    if keep_ratio is None:
        ratios = [engine.default_keep_ratios[i] for i in sorted(engine.default_keep_ratios)]
        keep_ratio = ratios[0] if len(set(ratios)) == 1 else ratios if ratios else 1.0
    return {"policy": policy or engine.default_policy,
            "threshold": engine.default_threshold if threshold is None else threshold, "keep_ratio": keep_ratio}


def run_examples(engine, examples: list[Example], *, metric: str = "accuracy", batch_size: int = 1,
                 bucket_window: int = 0, **knobs) -> tuple[dict, list[str]]:
    """Predict every example (`predict_examples`); return the summary and one JSON line per example, in input
    order. Only the summary's timing fields depend on the batch size and window: `latency` (each row's total
    as the engine reports it) and `examples_per_s` (examples over the wall time of planning and predicting)."""
    label_ids = {label: i for i, label in enumerate(engine.labels)}
    preds, exits, seq_lens, flops, latencies, lines = [], [], [], [], [], []
    cut = 0
    start = perf_counter_ns()
    predictions = predict_examples(engine, examples, batch_size=batch_size, bucket_window=bucket_window, **knobs)
    wall_s = max(perf_counter_ns() - start, 1) / 1e9
    for index, (ex, pred) in enumerate(zip(examples, predictions)):
        line = {"index": index, "label": pred.label, "exit_layer": pred.exit_layer,
                "probs": [round(p, 6) for p in pred.probs], "tokens_per_layer": pred.tokens_per_layer,
                "ffn_tokens_per_layer": pred.ffn_tokens_per_layer}
        if ex.cut or pred.chars_cut:   # cut by the reader (or by the engine, for examples not read by it)
            line["chars_cut"] = True
            cut += 1
        lines.append(json.dumps(line))
        preds.append(pred.label_index)
        exits.append(pred.exit_layer)
        seq_lens.append(pred.tokens_per_layer[0])
        flops.append(pred.flops)
        latencies.append(pred.timings_us["total"])
    rho, rho128 = engine.flops_model.dataset_speedups(seq_lens, flops)
    summary = {"examples": len(preds), "mean_exit_layer": sum(exits) / len(exits), "rho": rho, "rho_pad128": rho128,
               "latency": latency_summary(latencies), "examples_per_s": len(preds) / wall_s,
               "threads": engine.threads, "batch_size": batch_size, "bucket_window": bucket_window,
               "texts_cut": cut, "max_chars": engine.max_chars, **applied_knobs(engine, **knobs)}
    if all(ex.label is not None for ex in examples):
        summary |= Scores.of(preds, [label_ids[ex.label] for ex in examples], metric).to_dict()
    return summary, lines


def build_parser() -> argparse.ArgumentParser:
    p = ErrorLineParser(prog="mpee-run", description="Run an MPEE bundle (early exit + token pruning).")
    p.add_argument("bundle", type=Path, help="bundle folder written by mpee-export")
    p.add_argument("text", nargs="?", help="text to classify")
    p.add_argument("--pair", help="second text of a sentence pair")
    p.add_argument("--input", type=Path, help="GLUE-style TSV (with a header) or JSONL file")
    p.add_argument("--output", type=Path, help="with --input: write one JSON line per example here")
    add_column_options(p, "--input")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="with --input: classify N examples per engine call (predict_batch); the answers are "
                   "those of N = 1 [default: 1, one predict per example]")
    p.add_argument("--bucket-window", type=int, default=0, metavar="W",
                   help="with --input: sort the examples by token length within each run of W consecutive "
                   "examples before cutting batches, so a batch holds texts of similar length (less padding); "
                   "W is a multiple of --batch-size; output stays in input order [default: 0, off]")
    p.add_argument("--threshold", type=float, help="exit threshold [default: the bundle's]")
    p.add_argument("--keep-ratio", type=float, help="keep ratio at the pruning layers [default: the bundle's]")
    p.add_argument("--policy", choices=POLICIES, help="exit policy [default: the bundle's]")
    p.add_argument("--threads", type=int, help="intra-op threads [default: cores, at most 4]")
    add_pool_options(p)
    add_engine_option(p)
    add_bundle_options(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be refused before the bundle is loaded."""
    if (args.text is None) == (args.input is None):
        raise MpeeRuntimeError("give either a TEXT or --input FILE")
    if args.input is None and (args.output or args.text_column or args.pair_column or args.label_column):
        raise MpeeRuntimeError("--output and the --*-column options need --input")
    if args.input is None and (args.batch_size != 1 or args.bucket_window != 0):
        raise MpeeRuntimeError("--batch-size and --bucket-window need --input")
    check_batching(args.batch_size, args.bucket_window)
    if args.threads is not None and args.threads < 1:
        raise MpeeRuntimeError(f"--threads must be >= 1, got {args.threads}")
    if args.input is not None:
        check_input_file(args.input)
    if args.output is not None:
        check_output_file(args.output)


@exit_2_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    _check_args(args)
    from ..core.engine import MpeeEngine
    engine = MpeeEngine(args.bundle, threads=args.threads, spinning=args.spinning,
                        allow_unvalidated=args.allow_unvalidated, thread_pool=args.thread_pool, trust=args.trust,
                        engine=args.engine)
    knobs = {"threshold": args.threshold, "keep_ratio": args.keep_ratio, "policy": args.policy}
    check_threshold(args.policy or engine.default_policy,
                    engine.default_threshold if args.threshold is None else args.threshold)
    engine.keep_ratio_feeds(args.keep_ratio)
    if args.input is None:
        print(json.dumps(engine.predict(args.text, args.pair, **knobs).to_dict()))
        return 0
    task = engine.manifest.task
    columns, require_label = input_columns(args.input, task, text=args.text_column, pair=args.pair_column,
                                           label=args.label_column)
    # The whole file is read and checked before the first prediction, so a bad line fails at once; each text
    # is cut to the engine's limit as it is read, so a huge line costs no more memory than a short one.
    examples = read_examples(args.input, columns, labels=engine.labels, require_label=require_label,
                             max_chars=engine.max_chars, tail=engine.truncation != "head")
    summary, lines = run_examples(engine, examples, metric=task.metric if task else "accuracy",
                                  batch_size=args.batch_size, bucket_window=args.bucket_window, **knobs)
    if args.output is not None:
        write_text(args.output, "\n".join(lines) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
