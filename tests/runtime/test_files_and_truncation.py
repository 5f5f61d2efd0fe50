"""The reader's CSV format and its refusals, and the truncation rule, without torch (the device's half)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.text import truncation as T
from mpee_runtime.text.readers import Columns, cut_text, read_examples

COLS = Columns("review", None, "sentiment")


def _csv(tmp_path: Path, body: str, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(body.encode("utf-8"))
    return path


def test_csv_fields_are_parsed_as_rfc_4180(tmp_path):
    path = _csv(tmp_path, '\ufeffreview,sentiment\n"a, b ""c""\nd",positive\nplain,negative\n\n')
    rows = read_examples(path, COLS, require_label=True)
    assert [(r.text, r.label) for r in rows] == [('a, b "c"\nd', "positive"), ("plain", "negative")]


@pytest.mark.parametrize("body,needle", [
    ("review,sentiment\na,positive,extra\n", ":2: 3 comma-separated fields, the header has 2"),
    ("review,sentiment\n   ,positive\n", ":2: 'review' is empty"),
    ("text,sentiment\na,positive\n", "no column 'review'"),
    ("", "is empty"),
    ("review,sentiment\n", "no examples"),
    ('review,sentiment\n"open,positive\n', "unreadable CSV"),
])
def test_bad_csv_refused(tmp_path, body, needle):
    with pytest.raises(MpeeRuntimeError) as e:
        read_examples(_csv(tmp_path, body), COLS, require_label=True)
    assert needle in str(e.value)


def test_invalid_utf8_and_blank_jsonl_text_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"review,sentiment\ncaf\xe9,positive\n")
    with pytest.raises(MpeeRuntimeError, match="not UTF-8"):
        read_examples(path, COLS)
    jsonl = tmp_path / "blank.jsonl"
    jsonl.write_text('{"text": "fine", "label": "x"}\n{"text": " \\t ", "label": "x"}\n')
    with pytest.raises(MpeeRuntimeError, match=":2: 'text' is empty"):
        read_examples(jsonl, Columns("text", None, "label"))


@pytest.fixture(scope="module")
def tokenizer(built) -> Tokenizer:
    tok = Tokenizer.from_file(str(built / "bundle" / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def test_head_rule_is_the_tokenizers_truncation(tokenizer):
    """`head` through truncation.encode gives exactly the library's longest-first truncation, pairs too."""
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha()]
    rng = random.Random(0)
    lib = Tokenizer.from_str(tokenizer.to_str())
    for max_length in (8, 9, 16, 17):
        lib.enable_truncation(max_length=max_length)
        for _ in range(60):
            a = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 25)))
            b = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 25))) if rng.random() < 0.5 else None
            want = lib.encode(a, b) if b else lib.encode(a)
            got = T.encode(tokenizer, a, b, max_length, "head")
            assert (got.ids, got.type_ids) == (want.ids, want.type_ids)


def test_head_tail_rule(tokenizer):
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha()]
    text = " ".join(vocab[i % len(vocab)] for i in range(60))
    piece = tokenizer.encode(text, add_special_tokens=False).ids
    got = T.encode(tokenizer, text, None, 14, "head+tail")   # budget 12: first 3, last 9
    assert got.ids[1:-1] == piece[:3] + piece[-9:]
    short = " ".join(vocab[:5])
    assert T.encode(tokenizer, short, None, 14, "head+tail").ids == tokenizer.encode(short).ids
    with pytest.raises(MpeeRuntimeError, match="truncation must be one of"):
        T.check_truncation("tail")


@pytest.mark.parametrize("rule", ["head", "head+tail"])
def test_a_cut_pair_keeps_no_overflowing_pieces(tokenizer, rule):
    """A cut side keeps none of the pieces `Encoding.truncate` leaves as overflowing: post-processing a pair pairs
    every piece of one side with every piece of the other (two sides of 2,000 words held all memory)."""
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha()]
    a = " ".join(vocab[i % len(vocab)] for i in range(2000))
    b = " ".join(vocab[(7 * i) % len(vocab)] for i in range(1500))
    got = T.encode(tokenizer, a, b, 24, rule)
    assert len(got.ids) == 24 and got.overflowing == []
    whole_a = tokenizer.encode(a, add_special_tokens=False).ids
    whole_b = tokenizer.encode(b, add_special_tokens=False).ids
    ka, kb = T.pair_budgets(len(whole_a), len(whole_b), 21)
    if rule == "head":
        assert got.ids[1:1 + ka] == whole_a[:ka] and got.ids[2 + ka:-1] == whole_b[:kb]
    else:
        ha, hb = T.head_tokens(ka), T.head_tokens(kb)
        assert got.ids[1:1 + ka] == whole_a[:ha] + whole_a[len(whole_a) - (ka - ha):]
        assert got.ids[2 + ka:-1] == whole_b[:hb] + whole_b[len(whole_b) - (kb - hb):]


def test_head_tail_character_cut():
    text = "start " + "word " * 3000 + "finish"
    cut, was_cut = cut_text(text, 1000, tail=True)
    assert was_cut and len(cut) <= 1000 and cut.startswith("start ") and cut.endswith(" finish")
    assert cut_text(cut, 1000, tail=True) == (cut, False)
    assert all(w in ("start", "word", "finish") for w in cut.split())   # words stay whole at both cuts
    assert cut_text("short", 1000, tail=True) == ("short", False)


def test_jsonl_columns_fall_back_on_the_first_object(tmp_path):
    """A bundle's own JSONL keys when the file has them, else text / text_pair / label (decided once)."""
    own = Columns("body", None, "tag", fallback=Columns("text", "text_pair", "label"))
    a = tmp_path / "own.jsonl"
    a.write_text('{"body": "fine film", "tag": "yes"}\n{"body": "bad film", "tag": "no"}\n')
    assert [(e.text, e.label) for e in read_examples(a, own)] == [("fine film", "yes"), ("bad film", "no")]
    b = tmp_path / "default.jsonl"
    b.write_text('{"text": "fine film", "label": "yes"}\n{"body": "bad film", "label": "no"}\n')
    with pytest.raises(MpeeRuntimeError, match=":2: expected a JSON object with 'text'"):
        read_examples(b, own)
    assert Columns.from_dict({"text": "body", "pair": None, "label": "tag",
                              "fallback": {"text": "text", "pair": None, "label": None}}) == Columns(
        "body", None, "tag", Columns("text"))
