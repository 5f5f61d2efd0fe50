"""Data that could be read two ways is refused in one line naming the file and line (issue 36, item 8):
duplicate header names, empty labels, JSONL labels that are not strings or integers, and CSV errors."""

from __future__ import annotations

import json

import pytest

from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.text.readers import Columns, read_examples

COLUMNS = Columns("review", None, "sentiment")


def _read(path, **kw):
    return read_examples(path, COLUMNS, require_label=True, **kw)


@pytest.mark.parametrize("header", ["review,sentiment,review", "review,sentiment,sentiment"])
def test_a_column_named_twice_is_refused(tmp_path, header):
    path = tmp_path / "data.csv"
    path.write_text(f"{header}\ngood,pos,bad\n")
    with pytest.raises(MpeeRuntimeError, match=r"data.csv:1: header names column '\w+' 2 times .* rename all but one"):
        _read(path)


@pytest.mark.parametrize("suffix, body, line", [
    (".csv", "review,sentiment\ngood,pos\nbad,\n", 3),
    (".tsv", "review\tsentiment\ngood\tpos\nbad\t  \n", 3),
    (".jsonl", '{"review": "good", "sentiment": "pos"}\n{"review": "bad", "sentiment": ""}\n', 2),
])
def test_an_empty_label_is_refused(tmp_path, suffix, body, line):
    path = tmp_path / f"data{suffix}"
    path.write_text(body)
    with pytest.raises(MpeeRuntimeError, match=rf"data{suffix}:{line}: the label is empty"):
        _read(path)


@pytest.mark.parametrize("label, kind", [(1.0, "a number with a fraction"), (True, "a boolean"),
                                         ([1], "an array"), ({"a": 1}, "an object"), (1e3, "a number with")])
def test_jsonl_labels_are_strings_or_integers(tmp_path, label, kind):
    path = tmp_path / "data.jsonl"
    rows = [{"review": "good", "sentiment": 1}, {"review": "fine", "sentiment": "1"},
            {"review": "bad", "sentiment": label}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MpeeRuntimeError, match=rf"data.jsonl:3: label .* is {kind}"):
        _read(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert [e.label for e in _read(path)] == ["1", "1"]   # 1 and "1": the same class, as documented


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('review,sentiment\ngood,pos\n"unclosed,pos\nmore,neg\n')
    with pytest.raises(MpeeRuntimeError, match=r"data.csv:\d+: unreadable CSV"):
        _read(path)
    big = tmp_path / "big.csv"
    big.write_text("review,sentiment\ngood,pos\nfine,pos\n" + '"' + "x" * 2_000_000 + '",neg\n')
    with pytest.raises(MpeeRuntimeError, match=r"big.csv:4: unreadable CSV \(field larger than field limit"):
        _read(big, max_chars=1000)
