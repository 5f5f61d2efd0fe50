"""Bounded inputs: each text is tokenized from at most `max_chars` characters (data.cut_text), the answer is
unchanged when the first max_length tokens lie inside the limit, cut texts are counted the same way in the
Python API, mpee-run and the bench, and a 50 MB line costs no more memory than a short one."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mpee_runtime.bench.cli import build_parser as bench_parser
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.text import readers as D
from mpee_runtime.text.readers import Columns, cut_text, max_chars_for, read_examples

WORDS = ["the", "movie", "is", "great", "not", "fun", "boring", "acting", "plot", "films", "very", "good", "bad"]
PUNCT = [",", ".", "!"]
MAX_LENGTH = 24   # the tiny bundle's


@pytest.fixture(scope="module")
def engine(built) -> MpeeEngine:
    return MpeeEngine(built / "bundle", threads=1, warmup=0)


def _ids(engine, text, pair=None) -> list[int]:
    """The bundle tokenizer's ids of the whole text, truncated to max_length (what the limit must not change)."""
    enc = engine.tokenizer.encode(text, pair) if pair is not None else engine.tokenizer.encode(text)
    return enc.ids


def _count(engine, text) -> int:
    """Tokens of the whole text, not truncated."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(engine.tokenizer.to_str())
    tok.no_truncation()
    return len(tok.encode(text, add_special_tokens=False).ids)


def _random_text(rng: random.Random, chars: int) -> str:
    """Words, punctuation and whitespace runs of 1-3 characters (space, tab, newline), about `chars` long."""
    parts: list[str] = []
    size = 0
    while size < chars:
        piece = rng.choice(PUNCT) if rng.random() < 0.15 else rng.choice(WORDS)
        parts.append(piece + "".join(rng.choice(" \t\n ") for _ in range(rng.randint(0, 3) if piece in PUNCT
                                                                           else rng.randint(1, 3))))
        size += len(parts[-1])
    return "".join(parts)


# ---------------------------------------------------------------- the rule
def test_limit_derived_from_max_length(engine):
    assert engine.max_chars == max_chars_for(MAX_LENGTH) == 101 * (MAX_LENGTH + 1)
    assert max_chars_for(128) == 13_029 and max_chars_for(512) == 51_813


def test_cut_text_rule():
    assert cut_text("short text", 20) == ("short text", False)
    assert cut_text("x" * 20, 20) == ("x" * 20, False)
    assert cut_text("abc def ghi", 9) == ("abc def", True)        # the word crossing the limit goes whole
    assert cut_text("abc def\tghi", 8) == ("abc def", True)       # a tab is a boundary too
    assert cut_text("abc def ghi", 7) == ("abc def", True)        # text[7] is the space: nothing lost
    assert cut_text("x" * 500, 300) == ("x" * 300, True)          # one run longer than a word: cut in it
    assert cut_text("a " + "x" * 400, 300) == ("a " + "x" * 298, True)   # the space is > 101 chars back
    assert cut_text("abc\u3000def", 5) == ("abc\u3000d", True)    # only ASCII whitespace is a cut point
    assert cut_text("anything", None) == ("anything", False)
    for text in ("abc def ghi " * 50, "x" * 1000):
        once, _ = cut_text(text, 333)
        assert cut_text(once, 333) == (once, False)               # the engine's cut of a read text is a no-op


# ---------------------------------------------------------------- the answer never changes inside the limit
def test_ids_unchanged_around_the_limit(engine):
    """Random texts of max_chars - 150 .. max_chars + 150 characters, and far longer ones: same ids."""
    rng = random.Random(0)
    cut = 0
    for n in [*range(engine.max_chars - 150, engine.max_chars + 150, 7), 10_000, 200_000]:
        text = _random_text(rng, n)
        kept, was_cut = cut_text(text, engine.max_chars)
        cut += was_cut
        assert engine.encode(text)[0][0].tolist() == _ids(engine, text) == _ids(engine, kept)
    assert cut > 20    # most of them were cut: the comparison is not vacuous


def test_worst_case_of_the_bound(engine):
    """Words of 100 characters with one space each give one [UNK] each, the fewest tokens per character an
    ordinary text can have: max_length tokens still lie inside the limit. With 150-character words they do
    not, and the cut text has fewer tokens: the bound's condition is needed, and the test can fail."""
    worst = " ".join(["a" * 100] * 400)
    assert _ids(engine, cut_text(worst, engine.max_chars)[0]) == _ids(engine, worst)
    assert len(_ids(engine, worst)) == MAX_LENGTH
    beyond = " ".join(["a" * 150] * 400)
    assert len(_ids(engine, cut_text(beyond, engine.max_chars)[0])) < MAX_LENGTH


def test_pair_ids_unchanged(engine):
    """A long side and a short one, in either order, and both long (same density): same ids."""
    rng = random.Random(1)
    checked = 0
    for n_short in (5, 20, 40, 60, 200):
        short = _random_text(rng, n_short)
        for n_long in (engine.max_chars + 1, engine.max_chars + 60, 3 * engine.max_chars):
            long = _random_text(rng, n_long)
            for a, b in ((long, short), (short, long)):
                want = _ids(engine, a, b)
                assert engine.encode(a, b)[0][0].tolist() == want
                assert _ids(engine, cut_text(a, engine.max_chars)[0], cut_text(b, engine.max_chars)[0]) == want
                checked += 1
    assert checked == 30
    # Both sides over half the budget: the longer side keeps the odd token. A cut side counts as the longer:
    # right here although its kept part has fewer tokens than the other side (the tokenizer alone would err).
    sparse, dense = " ".join(["a" * 100] * 700), "good , " * 300
    assert _count(engine, cut_text(sparse, engine.max_chars)[0]) < _count(engine, dense) < _count(engine, sparse)
    for a, b in ((sparse, dense), (dense, sparse)):
        assert engine.encode(a, b)[0][0].tolist() == _ids(engine, a, b)
    longer, long = "good , " * 1_000, "bad " * 700   # both cut; the first stays the longer after the cut
    assert engine.encode(longer, long)[0][0].tolist() == _ids(engine, longer, long)


def test_pair_exception_both_sides_cut(engine):
    """The one documented exception: both sides cut, the longer one in full not the longer one kept. Which
    side keeps the odd token of an odd budget (max_length - 3 = 21 here) then differs; nothing else does."""
    a, b = "good " * 2_000, "good " * 600          # kept parts tie; the whole first side is longer
    got, want = engine.encode_cut(a, b)[0][0].tolist(), _ids(engine, a, b)
    assert got != want and sorted(got) == sorted(want)
    assert got[:11] == want[:11] and got.count(3) == want.count(3) == 2


def test_prediction_says_it_was_cut(engine):
    text = _random_text(random.Random(2), 3 * engine.max_chars)
    pred = engine.predict(text, threshold=0.0)
    assert pred.chars_cut and pred.to_dict()["chars_cut"] is True
    same = engine.predict(cut_text(text, engine.max_chars)[0], threshold=0.0)
    assert not same.chars_cut and same.probs == pred.probs
    assert not engine.predict("the movie is great").chars_cut
    assert engine.predict("it", "x " * engine.max_chars).chars_cut   # a cut pair counts too


# ---------------------------------------------------------------- the reader: cut as it reads, same rule
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reader_cuts_like_the_engine(engine, tmp_path):
    long = _random_text(random.Random(3), 4 * engine.max_chars).replace("\t", " ").replace("\n", " ")   # TSV-safe
    jsonl = _jsonl(tmp_path / "in.jsonl", [{"text": long, "text_pair": "fine"}, {"text": "short"}])
    tsv = tmp_path / "in.tsv"
    tsv.write_text(f"sentence1\tsentence2\n{long}\tfine\nshort\tx\n")
    for path in (jsonl, tsv):
        ex = read_examples(path, Columns("text", "text_pair") if path == jsonl else Columns("sentence1", "sentence2"),
                           max_chars=engine.max_chars)
        assert ex[0].cut and not ex[1].cut and ex[1].text == "short"
        assert ex[0].text == long[:engine.max_chars + 1]      # what cut_text looks at, and no more
        assert cut_text(ex[0].text, engine.max_chars) == cut_text(long, engine.max_chars)
        assert engine.encode_cut(ex[0].text, ex[0].pair)[0].tolist() == engine.encode(long, "fine")[0].tolist()
        assert engine.encode_cut(ex[0].text, ex[0].pair)[2]   # the engine knows the reader's text was cut
    # Without max_chars (training, evaluation) texts are read whole.
    assert read_examples(jsonl, Columns("text"))[0].text == long.strip()


def _random_json_line(rng: random.Random) -> dict:
    alphabet = ["a", "b", " ", "\t", "\n", '"', "\\", "/", "\u00e9", "\u4e00", "\U0001F600", "\u3000", "\x01", "}"]

    def s(n):
        return "".join(rng.choice(alphabet) for _ in range(n))
    row = {"text": "a" + s(rng.randint(0, 80)), "label": rng.choice(["x", "y"])}   # never blank: refused
    if rng.random() < 0.5:
        row["text_pair"] = "b" + s(rng.randint(0, 80))
    if rng.random() < 0.3:
        row["other"] = [1, 2.5, {"k": s(rng.randint(0, 40))}, None, True]
    return row


def test_long_line_path_reads_as_json_loads(tmp_path, monkeypatch):
    """Lines over the piece size are reduced while read (strings kept to a window): the examples must be
    exactly those of json.loads on the whole line. Pieces of 7 bytes put every boundary (escapes, surrogate
    pairs, UTF-8 sequences) across pieces."""
    rng = random.Random(4)
    rows = [_random_json_line(rng) for _ in range(300)]
    for ensure_ascii in (True, False):
        path = tmp_path / f"in{ensure_ascii}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8")
        columns = Columns("text", "text_pair", "label")
        for max_chars in (1, 10, 30):
            whole = read_examples(path, columns, max_chars=max_chars)
            monkeypatch.setattr(D, "_LONG_LINE", 7)
            monkeypatch.setattr(D, "_MIN_WINDOW", 10)   # longer than every key here
            pieces = read_examples(path, columns, max_chars=max_chars)
            monkeypatch.undo()
            assert pieces == whole
            assert any(e.cut for e in whole) and not all(e.cut for e in whole)


@pytest.mark.parametrize("line", ['{"text": "abc\\x"}', '{"text": "ab\x01c"}', '{"text": "abc"', '["text"]',
                                  '{"text": "abc"} extra', '{"text": "' + "a" * 50 + '\\q"}'])
def test_long_line_path_refuses_what_json_refuses(tmp_path, monkeypatch, line):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(MpeeRuntimeError) as whole:
        read_examples(path, Columns("text"), max_chars=10)
    monkeypatch.setattr(D, "_LONG_LINE", 5)
    with pytest.raises(MpeeRuntimeError) as pieces:
        read_examples(path, Columns("text"), max_chars=10)
    assert str(pieces.value) == str(whole.value)


def test_long_tsv_line_is_one_error(built, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(D, "TSV_LINE_LIMIT", 1000)
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\t" + "x " * 600 + "\tb\tentailment\n")
    assert run_cli([str(built / "bundle"), "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "dev.tsv:3" in err and "1,000" in err


# ---------------------------------------------------------------- counted the same in mpee-run and the bench
def test_cli_counts_cut_texts(built, engine, tmp_path, capsys):
    long = _random_text(random.Random(5), 3 * engine.max_chars)
    path = _jsonl(tmp_path / "in.jsonl", [{"text": "the movie is great"}, {"text": long}, {"text": "a", "text_pair": long}])
    out = tmp_path / "preds.jsonl"
    assert run_cli([str(built / "bundle"), "--input", str(path), "--output", str(out), "--threshold", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["texts_cut"] == 2 and summary["max_chars"] == engine.max_chars
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x.get("chars_cut", False) for x in lines] == [False, True, True]
    want = engine.predict(long, threshold=0.0)
    assert lines[1]["probs"] == [round(p, 6) for p in want.probs]


def test_bench_records_cut_texts(built, engine, tmp_path):
    from mpee_runtime.bench.measure import load_setup
    long = _random_text(random.Random(6), 3 * engine.max_chars)
    path = _jsonl(tmp_path / "in.jsonl", [{"text": long, "label": "entailment"},
                                          {"text": "fine", "label": "not_entailment"}])
    args = bench_parser().parse_intermixed_args([str(built / "bundle"), "--input", str(path), "--out",
                                                 str(tmp_path / "out"), "--threads", "1"])
    setup = load_setup(args)
    assert setup.input["texts_cut"] == 1 and setup.input["max_chars"] == engine.max_chars
    assert setup.inputs[0][0].tolist() == engine.encode(long)[0].tolist()


# ---------------------------------------------------------------- memory: a 50 MB line
# VmHWM: the peak resident memory of this process image (ru_maxrss would count the forking pytest's too).
_PEAK = """
import sys
from mpee_runtime.cli.run import main
code = main(sys.argv[1:])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) // 1024, file=sys.stderr)
sys.exit(code)
"""


def _peak_mb(bundle: Path, path: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(bundle), "--input", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["texts_cut"] == ("big" in path.name)
    return int(proc.stderr.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux's /proc")
def test_50_mb_line_memory(built, tmp_path):
    """Today's figure was 6.3 GB; the line must cost no more than a few MB over a one-line file."""
    big = tmp_path / "big.jsonl"
    with big.open("w") as f:
        f.write('{"text": "' + "the movie is great , not very good ! " * 1_400_000 + '"}\n{"text": "fine"}\n')
    assert big.stat().st_size > 50_000_000
    small = _jsonl(tmp_path / "small.jsonl", [{"text": "fine"}])
    base, peak = _peak_mb(built / "bundle", small), _peak_mb(built / "bundle", big)
    assert peak < 300 and peak - base < 40, (base, peak)
