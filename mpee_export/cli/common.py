"""What the commands share: grouped options, number lists, the data options and where a checkpoint is evaluated.

User errors (bad paths, arguments, checkpoints) print one `Error: ...` line on stderr and exit 2; Ctrl-C prints
`Error: interrupted` and exits 130 (`mpee_export.errors.MpeeCommand`, the commands' class); anything else is a
bug and keeps its traceback. torch is imported inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..errors import MpeeExportError


def grouped(into: str, options: Sequence[Callable], build: Callable[..., Any]) -> Callable:
    """Decorator: add `options` (click.option decorators, in --help order) to a command and hand their values
    to it as one argument `into`, built by `build(**values)`: the command receives one typed record instead
    of a parameter per option (shared option decorators, as pip-tools' options.py has them)."""
    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in names}
            return f(*args, **kwargs, **{into: build(**values)})
        params = getattr(command, "__click_params__", None)
        before = len(params) if params is not None else 0
        for option in reversed(options):
            command = option(command)
        names = [p.name for p in command.__click_params__[before:]]
        return command
    return decorate


def parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MpeeExportError(f"expected comma-separated numbers, got {text!r}") from None


def _data_dir(data: str | None) -> Path:
    if data is None:
        from ..data.glue import GLUE_HINT
        raise MpeeExportError(f"no GLUE data given: {GLUE_HINT}")
    return Path(data)


data_option = click.option("--data", envvar="GLUE_DIR", help="GLUE folder (root or task folder); env GLUE_DIR.")
# Export validates on real data only when asked explicitly (not from the environment).
export_data_option = click.option("--data", help="GLUE folder: validate on its dev set (and calibrate on it).")


@dataclass(frozen=True)
class FileData:
    """--train, --dev and the column options: a task on the user's own files (data/datasets.py)."""

    train: Path | None
    dev: Path | None
    text_column: str | None
    pair_column: str | None
    label_column: str | None

    @property
    def given(self) -> bool:
        return self.train is not None

    def columns(self):
        from mpee_runtime.text.readers import Columns

        from ..data.datasets import DEFAULT_LABEL, DEFAULT_TEXT
        return Columns(self.text_column or DEFAULT_TEXT, self.pair_column, self.label_column or DEFAULT_LABEL)

    def source(self, task: str | None, data: str | None, metric: str = "accuracy"):
        """Training's data: the user's files (--train, --dev), or the GLUE task --task in --data."""
        from ..data.datasets import file_source, glue_source
        if self.train is None:
            if self.dev is not None or self.text_column or self.pair_column or self.label_column:
                raise MpeeExportError("--dev and the column options go with --train FILE (your own data)")
            if task is None:
                raise MpeeExportError("give --task and --data (GLUE), or --train FILE --dev FILE (your own data)")
            return glue_source(_data_dir(data), task)
        if self.dev is None:
            raise MpeeExportError("--train needs --dev FILE (split one off with `mpee-split`)")
        return file_source(self.train, self.dev, self.columns(), metric, name=task)


_file_option = functools.partial(click.option, type=click.Path(path_type=Path))
file_data_options = grouped("files", [
    _file_option("--train", help="Your training file: .csv, .jsonl or tab-separated, with a header (not JSONL)."),
    _file_option("--dev", help="Your dev file, in the same columns (calibration and every figure use it)."),
    click.option("--text-column", help="Column (CSV/TSV header name, JSONL key) of the text [default: text]."),
    click.option("--pair-column", help="Column of the second text of a pair [default: none]."),
    click.option("--label-column", help="Column of the label [default: label]; labels are the training "
                                        "file's values, sorted."),
], FileData)


def eval_source(data: str | None, dev: Path | None, task: str | None, mpee):
    """Where a checkpoint is evaluated (mpee-eval, mpee-export --calibrate and validate): --dev FILE, read
    with the columns the checkpoint recorded (its own files' or its GLUE task's), or the GLUE task (--task,
    else the checkpoint's, else the folder's name) in --data. The task's labels must be the checkpoint's."""
    from ..data.datasets import DataSource, checkpoint_task
    from ..data.glue import get_task, infer_task, resolve_task_dir
    if dev is not None:   # --dev wins over --data, which may come from the environment (GLUE_DIR)
        own = checkpoint_task(mpee)
        if own is None:
            raise MpeeExportError("the checkpoint names no task, so its columns are unknown: pass --task with --dev")
        if task is not None and task != own.name:
            own = get_task(task)
        source = DataSource(own, dev=Path(dev))
    else:
        if mpee.text_column is not None:
            raise MpeeExportError(f"the checkpoint was trained on your own files (task {mpee.task!r}): give its "
                                  "dev file with --dev FILE")
        data_dir = _data_dir(data)
        name = task or mpee.task or getattr(infer_task(data_dir), "name", None)
        if name is None:
            raise MpeeExportError(f"cannot tell the task of {data_dir}: pass --task")
        source = DataSource(get_task(name), glue_dir=data_dir)
        resolve_task_dir(data_dir, source.task)
    if tuple(source.task.labels) != tuple(mpee.labels):
        raise MpeeExportError(f"task {source.task.name} has labels {list(source.task.labels)} but the checkpoint "
                              f"was trained on {mpee.labels}")
    return source


dev_file_option = _file_option("--dev", "dev_file",
                               help="Dev file (CSV, JSONL, TSV) in the columns the checkpoint was trained on "
                                    "(instead of --data and GLUE_DIR).")
