"""mpee-split: carve a seeded, label-stratified dev split out of a labelled file (a dataset without one, e.g.
IMDB's training reviews), writing OUT/train.<ext> and OUT/dev.<ext> in the input's own format.

Rules: the file is first read by the strict reader (every bad line is one error, nothing written); each
label gets round(dev_size * its share) dev rows (largest remainders make the total exact), drawn with
random.Random(seed); both outputs are shuffled with the same generator, so `--max-eval-samples N` later
reads a random sample. Rows are written as parsed (a CSV is re-quoted minimally; JSONL and TSV lines are
copied as they were).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.files import AtomicFolder, check_output_place, write_text
from mpee_runtime.text.readers import Columns, check_input_file, read_examples

from ..errors import MpeeExportError


@dataclass(frozen=True)
class SplitCounts:
    train: dict[str, int]
    dev: dict[str, int]


def _rows(path: Path, label_column: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The header line (None for JSONL) and each row as (label, the row's text as it will be written)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        return None, [(str(json.loads(line)[label_column]).strip(), line) for line in lines]
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = [r for r in (csv.reader(f, strict=True) if suffix == ".csv"
                            else csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)) if r]
    header, body = rows[0], rows[1:]
    il = [h.strip() for h in header].index(label_column)
    if suffix == ".csv":
        def line(r: list[str]) -> str:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(r)
            return buf.getvalue()[:-1]
        return line(header), [(r[il].strip(), line(r)) for r in body]
    return "\t".join(header), [(r[il].strip(), "\t".join(r)) for r in body]


def dev_counts(counts: dict[str, int], dev_size: int) -> dict[str, int]:
    """Dev rows per label: proportional to the label's share, rounded by largest remainders."""
    total = sum(counts.values())
    exact = {k: dev_size * n / total for k, n in counts.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], k))[:dev_size - sum(out.values())]:
        out[k] += 1
    return out


def split_file(path: Path, out: Path, *, dev_size: int, label_column: str, text_column: str,
               seed: int = 0, force: bool = False) -> SplitCounts:
    """Write OUT/train.<ext> and OUT/dev.<ext>; returns the rows per label in each."""
    path = check_input_file(path)
    check_output_place(out)
    try:   # the strict reader's checks first: a bad file is one error and nothing is written
        read_examples(path, Columns(text_column, None, label_column), require_label=True)
    except MpeeRuntimeError as e:
        raise MpeeExportError(str(e)) from None
    header, rows = _rows(path, label_column)
    by_label: dict[str, list[str]] = defaultdict(list)
    for label, line in rows:
        by_label[label].append(line)
    if len(by_label) < 2:
        raise MpeeExportError(f"{path}: every row has the label {next(iter(by_label))!r}: nothing to stratify")
    if not 0 < dev_size < len(rows):
        raise MpeeExportError(f"--dev-size must be between 1 and {len(rows) - 1} ({path} has {len(rows)} rows)")
    want = dev_counts({k: len(v) for k, v in by_label.items()}, dev_size)
    rng = random.Random(seed)
    train, dev = [], []
    for label in sorted(by_label):
        lines = by_label[label][:]
        rng.shuffle(lines)
        dev += lines[:want[label]]
        train += lines[want[label]:]
    rng.shuffle(train)
    rng.shuffle(dev)
    suffix = path.suffix if path.suffix.lower() in (".csv", ".jsonl") else ".tsv"
    targets = [out / f"train{suffix}", out / f"dev{suffix}"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise MpeeExportError(f"{', '.join(existing)} exist; pass --force to replace them")
    # Both files in a temporary folder, then moved in (dev last): a failed write (a full disk) leaves neither.
    try:
        with AtomicFolder(out, merge=True, last=targets[1].name) as tmp:
            for target, lines in zip(targets, (train, dev)):
                write_text(tmp / target.name, "".join(f"{line}\n" for line in
                                                      ([header] if header is not None else []) + lines))
    except OSError as e:   # named by the output folder, not the temporary one
        raise OSError(e.errno, e.strerror, str(out)) from None
    count = {k: len(v) for k, v in by_label.items()}
    return SplitCounts({k: count[k] - want[k] for k in sorted(count)}, {k: want[k] for k in sorted(want)})
