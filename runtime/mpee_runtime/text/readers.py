"""The one reader of labelled text files (GLUE-style TSV and JSONL), shared by training, evaluation and the runtime.

Strict: a header naming every requested column, the same number of fields on every line, UTF-8 text,
labels from the expected set, at least one example. Any violation is one MpeeRuntimeError naming the
file and line, so a malformed file never surfaces later as an IndexError or a tokenizer crash. A UTF-8 byte
order mark at the start of the file is skipped, in TSV and JSONL alike.

Input limits (`max_chars`, docs/design.md "Input limits"): the runtime tokenizes at most `max_chars`
characters of each text; `cut_text` is the one rule, applied by `MpeeEngine.encode` to every text it is
given. `read_examples(max_chars=...)` keeps of a longer text only what that rule looks at, its first
max_chars + 1 characters as written (not stripped; `Example.cut` is set), so the engine cuts it as it would
cut the whole text and knows that it did. With `max_chars`:
- JSONL is read line by line in pieces of at most 1 MiB; a longer line is never held whole: each of its
  strings keeps its first max(max_chars + 1, 65,536) characters as it is read (`cut_text` looks at the
  first max_chars + 1; keys stay whole), the rest is only checked to be valid JSON string text and dropped;
- a TSV line longer than TSV_LINE_LIMIT characters is refused with one error naming the line (use JSONL
  for such texts); texts of shorter lines are kept the same way.
Only the characters the cut keeps are checked to be valid Unicode (a lone surrogate in a dropped tail is ignored).
Without `max_chars` (training, evaluation) texts are read whole, as before.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MpeeRuntimeError

# JSONL keys used when no column names are given.
JSONL_TEXT, JSONL_PAIR, JSONL_LABEL = "text", "text_pair", "label"

WORD_CHARS = 100            # WordPiece's max_input_chars_per_word: a longer word is one [UNK]
TSV_LINE_LIMIT = 1 << 20    # characters of one TSV line when texts are limited (max_chars given)
_LONG_LINE = 1 << 20        # bytes: a longer JSONL line is read in pieces of this size
_REDUCED_LIMIT = 1 << 23    # characters a long JSONL line may hold besides the dropped tails of its strings
_MIN_WINDOW = 1 << 16       # characters of each string a long JSONL line keeps at least (keys stay whole)
_CUT_AT = " \t\n\r"         # where a text is cut: whitespace every BERT normalizer keeps as a word boundary
_BOM = codecs.BOM_UTF8


def max_chars_for(max_length: int, word_chars: int = WORD_CHARS) -> int:
    """The default limit for a model reading `max_length` tokens: (word_chars + 1) * (max_length + 1).

    Why it is safe: BERT's pre-tokenizer splits a text into words and punctuation marks, each of which gives
    at least one token; a piece of at most `word_chars` characters with the whitespace before it spans at most
    word_chars + 1 characters, so the first max_length tokens of any text whose pieces (with the whitespace
    before each) average at most word_chars + 1 characters lie within the first max_chars - (word_chars + 1)
    characters, which `cut_text` always keeps whole."""
    return (word_chars + 1) * (max_length + 1)


def cut_text(text: str, max_chars: int | None, word_chars: int = WORD_CHARS, *,
             tail: bool = False) -> tuple[str, bool]:
    """`text` limited to `max_chars` characters, and whether it was cut.

    A longer text keeps text[:k]: k is the last whitespace (space, tab, newline, carriage return) among
    the characters max_chars - word_chars - 1 .. max_chars, so the last word kept is whole; without such
    whitespace (one run longer than a word), k = max_chars. Every word and punctuation mark that ends before
    k is tokenized as in the whole text, so the token ids (truncated to max_length) are unchanged whenever
    the first max_length tokens come from the first max_chars - word_chars - 1 characters.

    `tail` (for `head+tail` truncation, which also reads a text's last tokens): a longer text keeps its
    head cut as above to max_chars // 4 characters, a space, and its tail: the last max_chars - max_chars // 4
    - 1 characters from the first whitespace among their first word_chars + 1 (so its first word is whole).
    The result is at most max_chars characters (cutting it again changes nothing), and its tokens are the
    whole text's first and last ones whenever the kept head and tail hold the tokens head+tail keeps."""
    if max_chars is None or len(text) <= max_chars:
        return text, False
    if tail:
        head_chars = max_chars // 4
        head, _ = cut_text(text, head_chars, word_chars)
        rest = text[len(text) - (max_chars - head_chars - 1):]
        k = min((i for i in (rest.find(c, 0, word_chars + 1) for c in _CUT_AT) if i >= 0), default=-1)
        return head + " " + (rest[k + 1:] if k >= 0 else rest), True
    lo = max(0, max_chars - word_chars - 1)
    k = max(text.rfind(c, lo, max_chars + 1) for c in _CUT_AT)
    return text[:k if k >= 0 else max_chars], True


@dataclass(frozen=True)
class Columns:
    """Which columns (TSV header names, or JSONL keys) hold the text, the optional pair and the label."""

    text: str
    pair: str | None = None
    label: str | None = None
    # JSONL only: the columns to read instead when the first object has no `text` key (the reader decides).
    fallback: Columns | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Columns:
        """The inverse of dataclasses.asdict (a run record's `input.columns`)."""
        fallback = d.get("fallback")
        return cls(d["text"], d.get("pair"), d.get("label"), None if fallback is None else cls.from_dict(fallback))


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None
    label: str | None   # as written in the file; None when the file has no label column
    cut: bool = False   # the text or the pair is longer than max_chars: its first max_chars + 1 characters


def check_input_file(path: Path) -> Path:
    """Refuse an input path that is not a readable regular file, saying what it is instead."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except ValueError:   # a NUL byte
        raise MpeeRuntimeError(f"{str(path)!r}: not a valid file name (NUL byte)") from None
    except FileNotFoundError:
        raise MpeeRuntimeError(f"{path}: input file not found") from None
    except OSError as e:
        raise MpeeRuntimeError(f"{path}: cannot read the input file ({e.strerror})") from None
    kinds = [(stat.S_ISDIR, "is a folder"), (stat.S_ISFIFO, "is a named pipe (FIFO)"),
             (stat.S_ISCHR, "is a device file"), (stat.S_ISBLK, "is a device file"),
             (stat.S_ISSOCK, "is a socket")]
    for test, what in kinds:
        if test(mode):
            raise MpeeRuntimeError(f"{path} {what}, not a regular file; give a TSV or JSONL file")
    if not os.access(path, os.R_OK):
        raise MpeeRuntimeError(f"{path}: input file not readable (permission denied)")
    return path


def _short(value: str, n: int = 60) -> str:
    return value if len(value) <= n else value[:n] + "..."


def bounded(text: str, max_chars: int | None, tail: bool = False) -> tuple[str, bool]:
    """What the reader keeps of a text: the text stripped, or, when it is longer than `max_chars`, its first
    max_chars + 1 characters (all `cut_text` looks at) and True; with `tail` (head+tail truncation) the text
    already cut by `cut_text(..., tail=True)`, which cutting again leaves as it is."""
    if max_chars is not None and len(text) > max_chars:
        return (cut_text(text, max_chars, tail=True)[0] if tail else text[:max_chars + 1]), True
    return text.strip(), False


def _checked_text(value: object, where: str, column: str, max_chars: int | None,
                  tail: bool = False) -> tuple[str, bool]:
    if not isinstance(value, str):
        raise MpeeRuntimeError(f"{where}: {column!r} must be a string, got {type(value).__name__}")
    value, cut = bounded(value, max_chars, tail)
    if not value.strip():
        raise MpeeRuntimeError(f"{where}: {column!r} is empty")
    try:
        (cut_text(value, max_chars)[0] if cut else value).encode("utf-8")
    except UnicodeEncodeError:   # JSON allows lone surrogates such as "\ud800"; no tokenizer does
        raise MpeeRuntimeError(f"{where}: {column!r} is not valid Unicode (lone surrogate)") from None
    return value, cut


def _checked_label(value: object, where: str, labels: Sequence[str] | None) -> str:
    """A label as its string: a string (stripped, not empty) or, in JSONL, an integer (1 and "1" are the same class);
    a float, a boolean, null, an array or an object is refused, since its string would be a class of its own
    ("1.0", "True")."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = {float: "a number with a fraction or exponent", bool: "a boolean", list: "an array",
                dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
        raise MpeeRuntimeError(f"{where}: label {_short(repr(value))} is {kind}; give labels as strings or integers")
    label = str(value).strip()
    if not label:
        raise MpeeRuntimeError(f"{where}: the label is empty")
    if labels is not None and label not in labels:
        raise MpeeRuntimeError(f"{where}: label {_short(label)!r} is not one of {list(labels)}")
    return label


# ---------------------------------------------------------------- JSONL
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')
_ESCAPE = re.compile(r'\\(?:["\\/bfnrt]|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u[0-9a-fA-F]{4})')
_SKIP = re.compile(r'(?:[^"\\\x00-\x1f]+|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*')
_JSON_SPACE = str.maketrans("", "", " \t\n\r")
_SKIP_SLICE = 1 << 15


def _reduced(pieces: Iterator[tuple[str, bool]], keep: int, where: str) -> str:
    """The JSON text of `pieces` with each string cut to its first `keep` characters (counted as json.loads
    decodes them: an escape, or a surrogate pair of escapes, is one character) and the whitespace between
    tokens dropped; the dropped tails are checked to be valid string content, nothing else is kept."""
    bad = MpeeRuntimeError(f"{where}: not a JSON object")
    out: list[str] = []
    size, in_str, n, s = 0, False, 0, ""
    for piece, final in pieces:
        s += piece
        i = 0
        while i < len(s):
            if not in_str:
                j = s.find('"', i)
                seg = (s[i:] if j < 0 else s[i:j + 1]).translate(_JSON_SPACE)
                out.append(seg)
                size += len(seg)
                if j < 0:
                    i = len(s)
                    break
                in_str, n, i = True, 0, j + 1
                continue
            if n >= keep:   # a tail to drop: skip valid content, stop at the quote or what needs a look
                # (in slices: the regex's backtracking stack grows with the escapes it passes)
                i = _SKIP.match(s, i, min(len(s), i + _SKIP_SLICE)).end()
            else:
                m = _PLAIN.match(s, i)
                if m:
                    take = min(m.end() - i, keep - n)
                    out.append(s[i:i + take])
                    n, i, size = n + take, i + take, size + take
                    continue
            if i == len(s):
                break
            c = s[i]
            if c not in '"\\' and c >= " ":   # the end of a slice, not a special character
                continue
            if c == '"':
                out.append('"')
                in_str, i, size = False, i + 1, size + 1
            elif c == "\\":
                if not final and len(s) - i < 12:   # an escape may continue in the next piece
                    break
                m = _ESCAPE.match(s, i)
                if m is None:
                    raise bad
                if n < keep:
                    out.append(m.group())
                    n, size = n + 1, size + len(m.group())
                i = m.end()
            else:   # a raw control character: not allowed in a JSON string
                raise bad
        s = s[i:]
        if size > _REDUCED_LIMIT:
            raise MpeeRuntimeError(f"{where}: more than {_REDUCED_LIMIT:,} characters besides the cut texts")
    return "".join(out) + s


def _line_pieces(first: bytes, f, offset: int, where: str) -> Iterator[tuple[str, bool]]:
    """A long line as decoded pieces (text, is_last), read `_LONG_LINE` bytes at a time up to its newline."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    raw = first
    while True:
        last = len(raw) < _LONG_LINE or raw.endswith(b"\n")
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(raw, final=last)
        except UnicodeDecodeError as e:
            raise MpeeRuntimeError(f"{where}: not UTF-8 text (byte {offset - pending + e.start}: {e.reason})"
                                   ) from None
        yield text, last
        if last:
            return
        offset += len(raw)
        raw = f.readline(_LONG_LINE)


def _jsonl_rows(path: Path, max_chars: int | None) -> Iterator[tuple[str, object]]:
    """(where, parsed line) for each non-blank line; lines over 1 MiB are reduced when `max_chars` is set."""
    with path.open("rb") as f:
        offset = 0
        for line_no in range(1, 1 << 62):
            raw = f.readline(_LONG_LINE if max_chars is not None else -1)
            if not raw:
                return
            where = f"{path}:{line_no}"
            start, long = offset, max_chars is not None and len(raw) == _LONG_LINE and not raw.endswith(b"\n")
            if line_no == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM):], start + len(_BOM)
            if long:
                keep = max(max_chars + 1, _MIN_WINDOW)   # any keep > max_chars gives the same cut
                text = _reduced(_line_pieces(raw, f, start, where), keep, where)
                offset = f.tell()
            else:
                offset = start + len(raw)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise MpeeRuntimeError(f"{where}: not UTF-8 text (byte {start + e.start}: {e.reason})"
                                           ) from None
            del raw
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except (ValueError, RecursionError):
                raise MpeeRuntimeError(f"{where}: not a JSON object") from None
            del text
            yield where, row


def _read_jsonl(path: Path, columns: Columns, labels, limit, require_label: bool, max_chars,
                tail: bool) -> list[Example]:
    out: list[Example] = []
    if limit is not None and limit <= 0:
        return out
    for where, row in _jsonl_rows(path, max_chars):
        if columns.fallback is not None:   # the first object decides
            if isinstance(row, dict) and columns.text not in row:
                columns = columns.fallback
            columns = Columns(columns.text, columns.pair, columns.label)
        if not isinstance(row, dict) or columns.text not in row:
            raise MpeeRuntimeError(f"{where}: expected a JSON object with {columns.text!r}")
        pair = row.get(columns.pair) if columns.pair else None
        label = row.get(columns.label) if columns.label else None
        if label is None and require_label:
            raise MpeeRuntimeError(f"{where}: no {columns.label!r}")
        text, cut_a = _checked_text(row[columns.text], where, columns.text, max_chars, tail)
        pair, cut_b = (None, False) if pair is None else _checked_text(pair, where, columns.pair, max_chars, tail)
        out.append(Example(text, pair, None if label is None else _checked_label(label, where, labels),
                           cut_a or cut_b))
        del row
        if limit is not None and len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- TSV and CSV
def _bounded_lines(f, path: Path, max_line: int) -> Iterator[str]:
    for line_no in range(1, 1 << 62):
        line = f.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line:
            raise MpeeRuntimeError(f"{path}:{line_no}: line longer than {max_line:,} characters (a TSV line is "
                                   "limited; give texts this long as JSONL, where they are cut to the limit)")
        yield line


def _kept(value: str, where: str, column: str, max_chars: int | None, tail: bool) -> tuple[str, bool]:
    text, cut = bounded(value, max_chars, tail)
    if not text.strip():
        raise MpeeRuntimeError(f"{where}: {column!r} is empty")
    return text, cut


def _read_table(path: Path, columns: Columns, labels, limit, require_label: bool, max_chars, tail: bool, *,
                comma: bool) -> list[Example]:
    """A TSV file (GLUE: no quoting) or, with `comma`, a CSV file (RFC 4180: quoted fields may hold commas,
    quotes doubled, line breaks)."""
    kind = "comma" if comma else "tab"
    # A CSV field may span lines, so its bound is the field size; a TSV line is bounded as it is read.
    csv.field_size_limit(TSV_LINE_LIMIT if comma and max_chars is not None else 1 << 30)
    out: list[Example] = []
    # utf-8-sig: MRPC starts with a byte order mark that would otherwise glue onto the first header name.
    with path.open(encoding="utf-8-sig", newline="") as f:
        lines = f if max_chars is None or comma else _bounded_lines(f, path, TSV_LINE_LIMIT)
        # QUOTE_NONE for TSV: GLUE texts contain unbalanced quotes, which are text, not CSV quoting.
        rows = csv.reader(lines, strict=True) if comma else csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(rows, [])]
        if not any(header):
            raise MpeeRuntimeError(f"{path} is empty (expected a header line)")
        wanted = [c for c in (columns.text, columns.pair) if c] + ([columns.label] if require_label else [])
        for column in wanted:
            if column not in header:
                raise MpeeRuntimeError(f"{path}:1: header has no column {column!r} (header: {header})")
        for column in {c for c in (columns.text, columns.pair, columns.label) if c}:
            if header.count(column) > 1:
                raise MpeeRuntimeError(f"{path}:1: header names column {column!r} {header.count(column)} times "
                                       f"(header: {header}); rename all but one")
        ia = header.index(columns.text)
        ib = header.index(columns.pair) if columns.pair else None
        il = header.index(columns.label) if columns.label in header else None
        try:
            for row in rows:
                if limit is not None and len(out) >= limit:
                    break
                if not row:   # a blank line, e.g. a second newline at the end of the file
                    continue
                where = f"{path}:{rows.line_num}"
                if len(row) != len(header):
                    raise MpeeRuntimeError(f"{where}: {len(row)} {kind}-separated fields, the header has "
                                           f"{len(header)}")
                text, cut_a = _kept(row[ia], where, columns.text, max_chars, tail)
                pair, cut_b = _kept(row[ib], where, columns.pair, max_chars, tail) if ib is not None else (None, False)
                out.append(Example(text, pair, _checked_label(row[il], where, labels) if il is not None else None,
                                   cut_a or cut_b))
        except csv.Error as e:   # the reader's line: where the bad field ends
            what = "CSV" if comma else "TSV"
            raise MpeeRuntimeError(f"{path}:{rows.line_num}: unreadable {what} ({e})") from None
    return out


def _read_tsv(*args, **kw) -> list[Example]:
    return _read_table(*args, **kw, comma=False)


def _read_csv(*args, **kw) -> list[Example]:
    return _read_table(*args, **kw, comma=True)


READERS = {".jsonl": _read_jsonl, ".csv": _read_csv}   # by file suffix; anything else is read as TSV


def read_examples(path: Path, columns: Columns, *, labels: Sequence[str] | None = None,
                  require_label: bool = False, limit: int | None = None,
                  max_chars: int | None = None, tail: bool = False) -> list[Example]:
    """Examples of a `.jsonl` file (one object per line), a `.csv` file (RFC 4180) or a tab-separated file,
    the latter two with a header line. A text or pair that is empty after stripping is refused.

    Args:
        columns: where text, pair and label are; a pair or label column that is None is not read.
        labels: the allowed label strings (None: any).
        require_label: refuse a file (or JSONL line) without the label column.
        limit: read only the first `limit` examples.
        max_chars: keep of each text and pair longer than this its first max_chars + 1 characters while
            reading (`bounded`; `Example.cut` says which were), so that a line costs bounded memory (see the
            module docstring); the engine then cuts them (`cut_text`). None: read texts whole.
        tail: the model truncates head+tail: a text longer than `max_chars` keeps its head and its tail
            (`cut_text(tail=True)`); a JSONL line over 1 MiB still keeps only the start of each string.
    Returns:
        At least one example unless `limit` is 0 (an empty file, or a header alone, is an error).
    """
    path = check_input_file(path)
    reader = READERS.get(path.suffix.lower(), _read_tsv)
    try:
        examples = reader(path, columns, labels, limit, require_label, max_chars, tail)
    except UnicodeDecodeError as e:
        raise MpeeRuntimeError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        what = "CSV" if path.suffix.lower() == ".csv" else "TSV"
        raise MpeeRuntimeError(f"{path}: unreadable {what} ({e})") from None
    except OSError as e:
        raise MpeeRuntimeError(f"{path}: cannot read the input file ({e.strerror})") from None
    if not examples and limit != 0:
        raise MpeeRuntimeError(f"{path}: no examples")
    return examples
