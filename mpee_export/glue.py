"""GLUE tasks: the task table, TSV loading (SST-2, MRPC, RTE, QNLI, QQP, MNLI) and metrics."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    return name.lower().replace("-", "").replace("_", "")


def get_task(name: str) -> GlueTask:
    task = TASKS.get(_key(name))
    if task is None:
        raise MpeeExportError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return task


def infer_task(data_dir: Path) -> GlueTask | None:
    return TASKS.get(_key(Path(data_dir).name))


def resolve_task_dir(data: Path, task: GlueTask) -> Path:
    data = Path(data)
    if (data / task.folder).is_dir():
        return data / task.folder
    if (data / "train.tsv").is_file() or (data / task.dev_file).is_file():
        return data
    raise MpeeExportError(f"GLUE data for {task.folder} not found at {data}: {GLUE_HINT}")


def split_path(task_dir: Path, task: GlueTask, split: str) -> Path:
    if split not in ("train", "dev"):
        raise MpeeExportError(f"unknown split {split!r} (train or dev)")
    return Path(task_dir) / ("train.tsv" if split == "train" else task.dev_file)


def read_examples(path: Path, task: GlueTask, limit: int | None = None) -> list[GlueExample]:
    path = Path(path)
    if not path.is_file():
        raise MpeeExportError(f"{path} not found")
    csv.field_size_limit(sys.maxsize)
    label_ids = {label: i for i, label in enumerate(task.labels)}
    examples: list[GlueExample] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if not header:
            raise MpeeExportError(f"{path} is empty")
        needed = [c for c in (task.text_a, task.text_b, task.label_column) if c is not None]
        missing = [c for c in needed if c not in header]
        if missing:
            raise MpeeExportError(f"{path}: header has no column {missing[0]!r} (header: {header})")
        ia, il = header.index(task.text_a), header.index(task.label_column)
        ib = header.index(task.text_b) if task.text_b else None
        for line, row in enumerate(rows, start=2):
            if limit is not None and len(examples) >= limit:
                break
            if len(row) != len(header):
                raise MpeeExportError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            label = row[il].strip()
            if label not in label_ids:
                raise MpeeExportError(f"{path}:{line}: label {label!r} not in {list(task.labels)}")
            examples.append(GlueExample(len(examples), row[ia].strip(),
                                        row[ib].strip() if ib is not None else None, label_ids[label]))
    return examples


def load_split(data: Path, task: GlueTask, split: str, limit: int | None = None) -> list[GlueExample]:
    return read_examples(split_path(resolve_task_dir(data, task), task, split), task, limit)


def compute_metrics(task: GlueTask, preds: Sequence[int], labels: Sequence[int]) -> dict:
    if len(preds) != len(labels) or not preds:
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    acc = sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)
    out: dict = {"accuracy": acc}
    if task.name in ("mrpc", "qqp"):
        tp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 1)
        fp = sum(1 for p, y in zip(preds, labels) if p == 1 and y != 1)
        fn = sum(1 for p, y in zip(preds, labels) if p != 1 and y == 1)
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    out["metric"] = {"name": task.metric, "value": out[task.metric]}
    return out
