"""Where training and evaluation read their examples: a GLUE folder, or the user's own CSV / JSONL / TSV files.

A task on the user's files is defined by its columns (text, optional pair, label) and its metric; its label
strings come from the training file, sorted, and are recorded in the checkpoint (MpeeConfig.labels and the
column fields), so evaluation, export and the device read dev files the same way without being told again.
Rules, each refused with one error naming the file: at least two classes in the training file, F1 only for
two classes (F1 of the second label in sorted order), every dev label seen in training (glue.read_examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpee_runtime.bundle.contract import METRICS
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.text.readers import Columns
from mpee_runtime.text.readers import read_examples as read_rows

from ..errors import MpeeExportError
from ..model.config import MpeeConfig
from .glue import Task, TaskExample, get_task, load_split, read_examples

SPLITS = ("train", "dev")
DEFAULT_TEXT, DEFAULT_LABEL = "text", "label"


@dataclass(frozen=True)
class DataSource:
    """The task and where its splits are: a GLUE folder (`glue_dir`), or the files `train` and `dev`."""

    task: Task
    glue_dir: Path | None = None
    train: Path | None = None
    dev: Path | None = None

    def load(self, split: str, limit: int | None = None) -> list[TaskExample]:
        """The examples of `split` ("train" or "dev"), the first `limit` if given."""
        if split not in SPLITS:
            raise MpeeExportError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        if self.glue_dir is not None:
            return load_split(self.glue_dir, self.task, split, limit)
        path = self.train if split == "train" else self.dev
        if path is None:
            raise MpeeExportError(f"no {split} file given (--{split} FILE)")
        return read_examples(path, self.task, limit)


def glue_source(data_dir: Path, task: str) -> DataSource:
    """The GLUE task `task` in `data_dir` (the GLUE root or the task folder)."""
    return DataSource(get_task(task), glue_dir=Path(data_dir))


def default_task_name(train: Path) -> str:
    """A name for a task on the user's files: the file's folder name when the file is called train.*
    (imdb/train.csv: "imdb"), else the file name without its suffix."""
    train = Path(train)
    return train.parent.resolve().name if train.stem.lower() == "train" else train.stem


def file_task(train: Path, columns: Columns, metric: str = "accuracy", name: str | None = None) -> Task:
    """The task of the user's training file: its columns, its metric, and its labels, sorted."""
    if metric not in METRICS:
        raise MpeeExportError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if columns.label is None:
        raise MpeeExportError("a training file needs a label column")
    try:
        rows = read_rows(train, columns, require_label=True)
    except MpeeRuntimeError as e:
        raise MpeeExportError(str(e)) from None
    labels = sorted({r.label for r in rows})
    if len(labels) < 2:
        raise MpeeExportError(f"{train}: every example has the label {labels[0]!r}: a classifier needs at least "
                              "2 classes")
    if metric == "f1" and len(labels) != 2:
        raise MpeeExportError(f"{train}: --metric f1 needs 2 classes, the file has {len(labels)} ({labels})")
    return Task(name or default_task_name(train), None, columns.text, columns.pair, columns.label, tuple(labels),
                metric)


def file_source(train: Path, dev: Path, columns: Columns, metric: str = "accuracy",
                name: str | None = None) -> DataSource:
    """A task on the user's files; the dev file is read once here so that a bad one fails before training."""
    source = DataSource(file_task(train, columns, metric, name), train=Path(train), dev=Path(dev))
    source.load("dev")
    return source


def checkpoint_task(mpee: MpeeConfig) -> Task | None:
    """The task a checkpoint was trained on: its recorded columns and labels (own files), or its GLUE task."""
    if mpee.text_column is not None:
        return Task(mpee.task or "task", None, mpee.text_column, mpee.pair_column, mpee.label_column,
                    tuple(mpee.labels), mpee.metric or "accuracy")
    return None if mpee.task is None else get_task(mpee.task)


def task_fields(task: Task) -> dict:
    """MpeeConfig fields that record `task` (columns and metric only for a task on the user's files)."""
    if task.folder is not None:
        return {"task": task.name}
    return {"task": task.name, "text_column": task.text_a, "pair_column": task.text_b,
            "label_column": task.label_column, "metric": task.metric}
