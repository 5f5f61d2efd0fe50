"""GLUE tasks: the task table, TSV loading (SST-2, MRPC, RTE, QNLI, QQP, MNLI) and metrics."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mpee_runtime.metrics import classification_metrics

from .errors import MpeeExportError

GLUE_HINT = ("download it with the standard GLUE script (download_glue_data.py, https://gluebenchmark.com/tasks) "
             "and pass --data DIR or set GLUE_DIR")


@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str
    text_a: str
    text_b: str | None
    label_column: str
    labels: tuple[str, ...]
    metric: str
    dev_file: str = "dev.tsv"


TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("sst2", "SST-2", "sentence", None, "label", ("0", "1"), "accuracy"),
    GlueTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), "f1"),
    GlueTask("rte", "RTE", "sentence1", "sentence2", "label", ("entailment", "not_entailment"), "accuracy"),
    GlueTask("qnli", "QNLI", "question", "sentence", "label", ("entailment", "not_entailment"), "accuracy"),
    GlueTask("qqp", "QQP", "question1", "question2", "is_duplicate", ("0", "1"), "f1"),
    GlueTask("mnli", "MNLI", "sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral"),
             "accuracy", "dev_matched.tsv"),
]}


@dataclass(frozen=True)
class GlueExample:
    index: int
    text_a: str
    text_b: str | None
    label: int


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_task(name: str) -> GlueTask:
    """The task named `name`, case-insensitive, with or without the dash ("sst2", "SST-2")."""
    task = TASKS.get(_key(name))
    if task is None:
        raise MpeeExportError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return task


def infer_task(data_dir: Path) -> GlueTask | None:
    """The task whose GLUE folder name `data_dir` has, or None."""
    # abspath, not resolve: "." should give the folder's own name, but a symlink keeps the name it was given.
    return TASKS.get(_key(Path(os.path.abspath(data_dir)).name))


def resolve_task_dir(data: Path, task: GlueTask) -> Path:
    """The task folder, given either the GLUE root or the task folder itself."""
    data = Path(data)
    if (data / task.folder).is_dir():
        return data / task.folder
    if (data / "train.tsv").is_file() or (data / task.dev_file).is_file():
        return data
    raise MpeeExportError(f"GLUE data for {task.folder} not found at {data}: {GLUE_HINT}")


def split_path(task_dir: Path, task: GlueTask, split: str) -> Path:
    """The TSV file of `split` ("train" or "dev") in the task folder."""
    if split not in ("train", "dev"):
        raise MpeeExportError(f"unknown split {split!r} for {task.name} (known: train, dev)")
    return Path(task_dir) / ("train.tsv" if split == "train" else task.dev_file)


def read_examples(path: Path, task: GlueTask, limit: int | None = None) -> list[GlueExample]:
    """The examples of one GLUE TSV file, the first `limit` of them if given."""
    path = Path(path)
    if not path.is_file():
        raise MpeeExportError(f"{path} not found")
    label_ids = {label: i for i, label in enumerate(task.labels)}
    examples: list[GlueExample] = []
    # utf-8-sig: MRPC starts with a byte order mark that would otherwise glue onto the first header name.
    with path.open(encoding="utf-8-sig", newline="") as f:
        # QUOTE_NONE: GLUE texts contain unbalanced quotes, which are text, not CSV quoting.
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = [h.strip() for h in next(rows, [])]
            if not any(header):
                raise MpeeExportError(f"{path} is empty (expected a header line)")
            for column in (task.text_a, task.text_b, task.label_column):
                if column is not None and column not in header:
                    raise MpeeExportError(f"{path}:1: header has no column {column!r} "
                                          f"(needed by {task.name}; header: {header})")
            ia, il = header.index(task.text_a), header.index(task.label_column)
            ib = header.index(task.text_b) if task.text_b is not None else None
            for row in rows:
                if limit is not None and len(examples) >= limit:
                    break
                if not row:  # a blank line, e.g. a second newline at the end of the file
                    continue
                if len(row) != len(header):
                    raise MpeeExportError(f"{path}:{rows.line_num}: {len(row)} tab-separated fields, "
                                          f"the header has {len(header)}")
                label = row[il].strip()
                if label not in label_ids:
                    raise MpeeExportError(f"{path}:{rows.line_num}: label {label!r} is not one of "
                                          f"{list(task.labels)} (column {task.label_column!r})")
                examples.append(GlueExample(len(examples), row[ia].strip(),
                                            row[ib].strip() if ib is not None else None, label_ids[label]))
        except csv.Error as e:
            raise MpeeExportError(f"{path}:{rows.line_num}: unreadable TSV: {e}") from None
        except UnicodeDecodeError as e:
            raise MpeeExportError(f"{path}: not UTF-8 text ({e.reason})") from None
    return examples


def load_split(data: Path, task: GlueTask, split: str, limit: int | None = None) -> list[GlueExample]:
    """The examples of `split` under `data` (the GLUE root or the task folder)."""
    return read_examples(split_path(resolve_task_dir(data, task), task, split), task, limit)


def compute_metrics(task: GlueTask, preds: Sequence[int], labels: Sequence[int]) -> dict:
    """Accuracy (and F1 of class 1 for MRPC/QQP) plus {"metric": {"name", "value"}}: the task's headline."""
    out = classification_metrics(preds, labels, with_f1=task.metric == "f1")
    return out | {"metric": {"name": task.metric, "value": out[task.metric]}}
