"""The one reader of labelled text files (GLUE-style TSV and JSONL), shared by training, evaluation and the runtime.

Strict: a header naming every requested column, the same number of fields on every line, UTF-8 text,
labels from the expected set, at least one example. Any violation is one MpeeRuntimeError naming the
file and line, so a malformed file never surfaces later as an IndexError or a tokenizer crash.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import MpeeRuntimeError

# JSONL keys used when no column names are given.
JSONL_TEXT, JSONL_PAIR, JSONL_LABEL = "text", "text_pair", "label"


@dataclass(frozen=True)
class Columns:
    """Which columns (TSV header names, or JSONL keys) hold the text, the optional pair and the label."""

    text: str
    pair: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None
    label: str | None   # as written in the file; None when the file has no label column


def _checked_text(value: object, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise MpeeRuntimeError(f"{where}: {column!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:   # JSON allows lone surrogates such as "\ud800"; no tokenizer does
        raise MpeeRuntimeError(f"{where}: {column!r} is not valid Unicode (lone surrogate)") from None
    return value.strip()


def _checked_label(value: object, where: str, labels: Sequence[str] | None) -> str:
    label = str(value).strip()
    if labels is not None and label not in labels:
        raise MpeeRuntimeError(f"{where}: label {label!r} is not one of {list(labels)}")
    return label


def _read_jsonl(path: Path, columns: Columns, labels, limit, require_label: bool) -> list[Example]:
    out: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                raise MpeeRuntimeError(f"{where}: not a JSON object") from None
            if not isinstance(row, dict) or columns.text not in row:
                raise MpeeRuntimeError(f"{where}: expected a JSON object with {columns.text!r}")
            pair = row.get(columns.pair) if columns.pair else None
            label = row.get(columns.label) if columns.label else None
            if label is None and require_label:
                raise MpeeRuntimeError(f"{where}: no {columns.label!r}")
            out.append(Example(_checked_text(row[columns.text], where, columns.text),
                               None if pair is None else _checked_text(pair, where, columns.pair),
                               None if label is None else _checked_label(label, where, labels)))
    return out


def _read_tsv(path: Path, columns: Columns, labels, limit, require_label: bool) -> list[Example]:
    csv.field_size_limit(1 << 30)
    out: list[Example] = []
    # utf-8-sig: MRPC starts with a byte order mark that would otherwise glue onto the first header name.
    with path.open(encoding="utf-8-sig", newline="") as f:
        # QUOTE_NONE: GLUE texts contain unbalanced quotes, which are text, not CSV quoting.
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(rows, [])]
        if not any(header):
            raise MpeeRuntimeError(f"{path} is empty (expected a header line)")
        wanted = [c for c in (columns.text, columns.pair) if c] + ([columns.label] if require_label else [])
        for column in wanted:
            if column not in header:
                raise MpeeRuntimeError(f"{path}:1: header has no column {column!r} (header: {header})")
        ia = header.index(columns.text)
        ib = header.index(columns.pair) if columns.pair else None
        il = header.index(columns.label) if columns.label in header else None
        for row in rows:
            if limit is not None and len(out) >= limit:
                break
            if not row:   # a blank line, e.g. a second newline at the end of the file
                continue
            where = f"{path}:{rows.line_num}"
            if len(row) != len(header):
                raise MpeeRuntimeError(f"{where}: {len(row)} tab-separated fields, the header has {len(header)}")
            out.append(Example(row[ia].strip(), row[ib].strip() if ib is not None else None,
                               _checked_label(row[il], where, labels) if il is not None else None))
    return out


def read_examples(path: Path, columns: Columns, *, labels: Sequence[str] | None = None,
                  require_label: bool = False, limit: int | None = None) -> list[Example]:
    """Examples of a `.jsonl` file (one object per line) or of a tab-separated file with a header.

    Args:
        columns: where text, pair and label are; a pair or label column that is None is not read.
        labels: the allowed label strings (None: any).
        require_label: refuse a file (or JSONL line) without the label column.
        limit: read only the first `limit` examples.
    Returns:
        At least one example unless `limit` is 0 (an empty file, or a header alone, is an error).
    """
    path = Path(path)
    if not path.is_file():
        raise MpeeRuntimeError(f"{path}: input file not found")
    reader = _read_jsonl if path.suffix == ".jsonl" else _read_tsv
    try:
        examples = reader(path, columns, labels, limit, require_label)
    except UnicodeDecodeError as e:
        raise MpeeRuntimeError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        raise MpeeRuntimeError(f"{path}: unreadable TSV ({e})") from None
    if not examples and limit != 0:
        raise MpeeRuntimeError(f"{path}: no examples")
    return examples
