"""mpee-run: classify texts with a bundle on the device (argparse only: no extra dependency).

    mpee-run BUNDLE "text" [--pair "text"]              prints one JSON object
    mpee-run BUNDLE --input FILE --output preds.jsonl   GLUE TSV or JSONL in, JSON lines out, summary
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import MpeeRuntimeError
from .metrics import classification_metrics, latency_summary
from .policy import POLICIES


def read_inputs(path: Path, task: dict | None) -> Iterator[tuple[str, str | None, str | None]]:
    """(text, text_pair, label or None) per example, from JSONL or a GLUE-style TSV."""
    if not path.is_file():
        raise MpeeRuntimeError(f"{path}: input file not found")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = row["text"]
                except (ValueError, KeyError, TypeError):
                    raise MpeeRuntimeError(f"{path}:{line_no}: expected a JSON object with \"text\"") from None
                label = row.get("label")
                yield text, row.get("text_pair"), None if label is None else str(label)
        return
    if not task:
        raise MpeeRuntimeError(f"{path}: the bundle names no task, so its TSV columns are unknown; use JSONL")
    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None) or []
        if task["text_a"] not in header:
            raise MpeeRuntimeError(f"{path}: no column {task['text_a']!r} in header {header}")
        ia = header.index(task["text_a"])
        ib = header.index(task["text_b"]) if task.get("text_b") else None
        il = header.index(task["label_column"]) if task.get("label_column") in header else None
        for line_no, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise MpeeRuntimeError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
            yield (row[ia].strip(), row[ib].strip() if ib is not None else None,
                   row[il].strip() if il is not None else None)


def _progress(items, total: int | None):
    try:
        from tqdm import tqdm
    except ImportError:   # tqdm is optional on the device
        return items
    return tqdm(items, total=total, desc="mpee-run", file=sys.stderr, mininterval=1)


def run_file(engine, path: Path, output: Path | None, **knobs) -> dict:
    """Predict every example of `path`; write JSON lines to `output`; return the summary."""
    task = engine.manifest.get("task")
    label_ids = {label: i for i, label in enumerate(engine.labels)}
    preds, golds, exits, rhos, latencies, lines = [], [], [], [], [], []
    if not path.is_file():
        raise MpeeRuntimeError(f"{path}: input file not found")
    with path.open("rb") as f:
        n_lines = sum(1 for _ in f) - (0 if path.suffix == ".jsonl" else 1)
    for index, (text, pair, label) in enumerate(_progress(read_inputs(path, task), n_lines)):
        pred = engine.predict(text, pair, **knobs)
        lines.append(json.dumps({"index": index, "label": pred.label, "exit_layer": pred.exit_layer,
                                 "probs": [round(p, 6) for p in pred.probs]}))
        preds.append(pred.label_index)
        exits.append(pred.exit_layer)
        rhos.append((pred.flops, pred.rho * pred.flops, pred.rho_pad128 * pred.flops))
        latencies.append(pred.timings_us["total"])
        if label is not None:
            if label not in label_ids:
                raise MpeeRuntimeError(f"{path}: example {index} has label {label!r}, not one of {engine.labels}")
            golds.append(label_ids[label])
    if not preds:
        raise MpeeRuntimeError(f"{path}: no examples")
    if output is not None:
        tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, output)
    executed = sum(r[0] for r in rhos)
    summary = {"examples": len(preds), "mean_exit_layer": sum(exits) / len(exits),
               "rho": sum(r[1] for r in rhos) / executed, "rho_pad128": sum(r[2] for r in rhos) / executed,
               "latency": latency_summary(latencies), "threads": engine.threads, **knobs}
    if len(golds) == len(preds):
        metric = (task or {}).get("metric", "accuracy")
        scores = classification_metrics(preds, golds, with_f1=metric == "f1")
        summary |= scores | {"metric": {"name": metric, "value": scores[metric]}}
    return summary


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one "Error:" line and exit code 2, like every other bad input
        raise MpeeRuntimeError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mpee-run", description="Run an MPEE bundle (early exit + token pruning).")
    p.add_argument("bundle", type=Path, help="bundle folder written by mpee-export")
    p.add_argument("text", nargs="?", help="text to classify")
    p.add_argument("--pair", help="second text of a sentence pair")
    p.add_argument("--input", type=Path, help="GLUE TSV or JSONL (text, text_pair, label) file")
    p.add_argument("--output", type=Path, help="with --input: write one JSON line per example here")
    p.add_argument("--threshold", type=float, help="exit threshold [default: the bundle's]")
    p.add_argument("--keep-ratio", type=float, help="keep ratio at the pruning layers [default: the bundle's]")
    p.add_argument("--policy", choices=POLICIES, help="exit policy [default: the bundle's]")
    p.add_argument("--threads", type=int, help="intra-op threads [default: cores, at most 4]")
    p.add_argument("--spinning", action="store_true", help="let onnxruntime's thread pool spin")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_intermixed_args(argv)
        if (args.text is None) == (args.input is None):
            raise MpeeRuntimeError("give either a TEXT or --input FILE")
        if args.output is not None and args.input is None:
            raise MpeeRuntimeError("--output needs --input")
        if args.threads is not None and args.threads < 1:
            raise MpeeRuntimeError(f"--threads must be >= 1, got {args.threads}")
        from .engine import MpeeEngine
        from .policy import check_threshold
        engine = MpeeEngine(args.bundle, threads=args.threads, spinning=args.spinning)
        knobs = {"threshold": args.threshold, "keep_ratio": args.keep_ratio, "policy": args.policy}
        check_threshold(args.policy or engine.default_policy,
                        engine.default_threshold if args.threshold is None else args.threshold)
        engine.keep_ratio_feeds(args.keep_ratio)
        if args.input is not None:
            print(json.dumps(run_file(engine, args.input, args.output, **knobs), indent=1))
        else:
            print(json.dumps(engine.predict(args.text, args.pair, **knobs).to_dict()))
    except MpeeRuntimeError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
