"""Tasks: what a classification task reads and how it is scored, the GLUE table (SST-2, MRPC, RTE, QNLI,
QQP, MNLI), TSV loading and metrics. Tasks on the user's own files are made in datasets.py."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mpee_runtime.core.metrics import Scores
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.text.readers import Columns
from mpee_runtime.text.readers import read_examples as read_labelled

from ..errors import MpeeExportError

GLUE_HINT = ("download it with the standard GLUE script (download_glue_data.py, https://gluebenchmark.com/tasks) "
             "and pass --data DIR or set GLUE_DIR")


@dataclass(frozen=True)
class Task:
    """A task: its name, the columns of its files, its label strings (class-index order) and its metric."""

    name: str
    folder: str | None     # the GLUE folder name; None for a task on the user's own files
    text_a: str
    text_b: str | None
    label_column: str
    labels: tuple[str, ...]
    metric: str
    dev_file: str = "dev.tsv"


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sst2", "SST-2", "sentence", None, "label", ("0", "1"), "accuracy"),
    Task("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), "f1"),
    Task("rte", "RTE", "sentence1", "sentence2", "label", ("entailment", "not_entailment"), "accuracy"),
    Task("qnli", "QNLI", "question", "sentence", "label", ("entailment", "not_entailment"), "accuracy"),
    Task("qqp", "QQP", "question1", "question2", "is_duplicate", ("0", "1"), "f1"),
    Task("mnli", "MNLI", "sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral"),
             "accuracy", "dev_matched.tsv"),
]}


@dataclass(frozen=True)
class TaskExample:
    index: int
    text_a: str
    text_b: str | None
    label: int


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_task(name: str) -> Task:
    """The task named `name`, case-insensitive, with or without the dash ("sst2", "SST-2")."""
    task = TASKS.get(_key(name))
    if task is None:
        raise MpeeExportError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return task


def infer_task(data_dir: Path) -> Task | None:
    """The task whose GLUE folder name `data_dir` has, or None."""
    # abspath, not resolve: "." should give the folder's own name, but a symlink keeps the name it was given.
    return TASKS.get(_key(Path(os.path.abspath(data_dir)).name))


def resolve_task_dir(data: Path, task: Task) -> Path:
    """The task folder, given either the GLUE root or the task folder itself."""
    data = Path(data)
    if (data / task.folder).is_dir():
        return data / task.folder
    if (data / "train.tsv").is_file() or (data / task.dev_file).is_file():
        return data
    raise MpeeExportError(f"GLUE data for {task.folder} not found at {data}: {GLUE_HINT}")


def split_path(task_dir: Path, task: Task, split: str) -> Path:
    """The TSV file of `split` ("train" or "dev") in the task folder."""
    if split not in ("train", "dev"):
        raise MpeeExportError(f"unknown split {split!r} for {task.name} (known: train, dev)")
    return Path(task_dir) / ("train.tsv" if split == "train" else task.dev_file)


def read_examples(path: Path, task: Task, limit: int | None = None) -> list[TaskExample]:
    """The examples of one labelled file of `task` (TSV, CSV or JSONL by its suffix), the first `limit` of
    them if given (the runtime's strict reader); a label outside the task's is refused."""
    columns = Columns(task.text_a, task.text_b, task.label_column)
    try:
        rows = read_labelled(path, columns, labels=task.labels, require_label=True, limit=limit)
    except MpeeRuntimeError as e:
        seen = " (the labels of the training data)" if task.folder is None and "is not one of" in str(e) else ""
        raise MpeeExportError(f"{e}{seen}") from None
    label_ids = {label: i for i, label in enumerate(task.labels)}
    return [TaskExample(i, r.text, r.pair, label_ids[r.label]) for i, r in enumerate(rows)]


def load_split(data: Path, task: Task, split: str, limit: int | None = None) -> list[TaskExample]:
    """The examples of `split` under `data` (the GLUE root or the task folder)."""
    return read_examples(split_path(resolve_task_dir(data, task), task, split), task, limit)


def compute_metrics(task: Task, preds: Sequence[int], labels: Sequence[int]) -> Scores:
    """The task's scores: its headline metric, accuracy, and F1 of class 1 for MRPC/QQP."""
    return Scores.of(preds, labels, task.metric)
