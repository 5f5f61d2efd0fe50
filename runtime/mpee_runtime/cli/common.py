"""What every device command shares (mpee-run, mpee-bench, mpee-serve): the argument parser whose errors are one
`Error:` line (`ErrorLineParser`), the input-file column options and their defaults from the bundle's task
(`add_column_options`, `input_columns`), and the engine options (`add_engine_options`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MpeeRuntimeError
from ..text.readers import (
    JSONL_LABEL,
    JSONL_PAIR,
    JSONL_TEXT,
    Columns,
)


def input_columns(path: Path, task, *, text: str | None = None, pair: str | None = None,
                  label: str | None = None) -> tuple[Columns, bool]:
    """Columns to read from `path` and whether the label column is required.

    Given names win; otherwise a TSV or CSV file is read by the columns of the bundle's task (a pair task
    needs its pair column; the label column is read when present), and JSONL by them too when its first
    object has the task's text key (a model trained on JSONL reads its own dev file), else by the keys
    text / text_pair / label (`Columns.fallback`, decided by the reader on the first object)."""
    if path.suffix == ".jsonl":
        keys = Columns(text or JSONL_TEXT, pair or JSONL_PAIR, label or JSONL_LABEL)
        if task is None or text is not None:
            return keys, label is not None
        return Columns(task.text_a, pair or task.text_b, label or task.label_column, fallback=keys), label is not None
    if task is None and text is None:
        raise MpeeRuntimeError(f"{path}: the bundle names no task, so its TSV columns are unknown; "
                               "pass --text-column (and --pair-column, --label-column) or use JSONL")
    return (Columns(text or task.text_a, pair or (task.text_b if task else None),
                    label or (task.label_column if task else None)), label is not None)


class ErrorLineParser(argparse.ArgumentParser):
    """The device's command-line parser (mpee-run, mpee-bench, mpee-serve): a bad argument is one `Error:`
    line and exit 2, and a text argument must be valid UTF-8."""

    def error(self, message: str):  # one "Error:" line and exit code 2, like every other bad input
        raise MpeeRuntimeError(message)

    def parse_intermixed_args(self, args=None, namespace=None):
        """Parse, then refuse a text argument that is not valid UTF-8 (Python hands its bytes over as lone
        surrogates, which would fail later as "lone surrogate"). Paths may hold any bytes, as on disk."""
        ns = super().parse_intermixed_args(args, namespace)
        for action in self._actions:
            value = getattr(ns, action.dest, None)
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raw = value.encode("utf-8", "surrogateescape")
                    name = action.option_strings[0] if action.option_strings else action.dest.upper()
                    raise MpeeRuntimeError(f"argument {name} is not valid UTF-8: {raw[:60]!r}"
                                           + ("..." if len(raw) > 60 else "")) from None
        return ns


def add_column_options(p: argparse.ArgumentParser, needs: str = "") -> None:
    """--text-column, --pair-column, --label-column: which columns (TSV, CSV) or keys (JSONL) of the input file
    to read; the defaults come from the bundle's task (`input_columns`). `needs`: the option they go with."""
    w = f"with {needs}: " if needs else ""
    p.add_argument("--text-column", help=f"{w}column (TSV, CSV) or key (JSONL) of the text "
                   "[default: the bundle task's, or 'text' for JSONL]")
    p.add_argument("--pair-column", help=f"{w}column of the second text [default: the task's, or 'text_pair' for "
                   "JSONL]")
    p.add_argument("--label-column", help=f"{w}column of the gold label, required when given [default: the task's, "
                   "or 'label' for JSONL, read when present]")


def add_pool_options(p: argparse.ArgumentParser, thread_pool: bool = True) -> None:
    """--thread-pool (with `thread_pool`) and --no-spinning: how the engine's onnxruntime sessions use threads
    (core.session.session_options)."""
    from ..core.session import THREAD_POOLS
    if thread_pool:
        p.add_argument("--thread-pool", choices=THREAD_POOLS, default="session",
                       help="session: a pool per onnxruntime session; global: every session on one process-wide "
                       "pool [default: session]")
    p.add_argument("--no-spinning", dest="spinning", action="store_false",
                   help="idle pool threads sleep instead of spinning during a run")


def add_engine_option(p: argparse.ArgumentParser) -> None:
    """--engine: how a batch-1 row runs (core.engine.ENGINES); batches run the batch graphs either way."""
    from ..core.engine import ENGINES
    p.add_argument("--engine", choices=ENGINES, default="chain",
                   help="chain: the layer graphs one by one from Python; graph: the bundle's single graph (mpee.onnx) "
                   "in one onnxruntime call, the exit rule inside; the same answers [default: chain]")


def add_bundle_options(p: argparse.ArgumentParser) -> None:
    """--allow-unvalidated and --trust: which bundles the command accepts."""
    p.add_argument("--allow-unvalidated", action="store_true",
                   help="accept a bundle that did not pass the export's parity check against PyTorch")
    p.add_argument("--trust", type=Path, metavar="PUBKEY",
                   help="refuse every bundle not signed with this public key (KEY.pub of mpee-export keygen) or "
                   "changed since; needs pip install 'mpee-runtime[sign]'")
