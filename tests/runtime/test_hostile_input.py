"""Hostile input to the device runtime: every failure is one `Error:` line, exit 2, nothing left behind;
Ctrl-C is one line and exit 130.

Bundles here are tampered with and then re-hashed and re-sealed, so neither the sha256 check nor the
manifest's integrity record can catch them: the typed manifest, the graphs' stamps and the tokenizer checks
must (tests/runtime/test_integrity.py has the edits that are not re-sealed).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import run_error

from mpee_runtime.bundle.contract import MANIFEST, TOKENIZER, layer_file
from mpee_runtime.bundle.integrity import seal, sha256_of
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.text.readers import Columns, read_examples

_error = run_error


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def _write_sealed(bundle: Path, manifest: dict) -> None:
    """Write the manifest with its integrity record re-computed, as someone editing it on purpose would."""
    (bundle / MANIFEST).write_text(json.dumps(seal(manifest)))


def _write_rehashed(bundle: Path, manifest: dict) -> None:
    """Recompute every listed file's sha256, as someone replacing files on purpose would."""
    manifest["tokenizer"]["sha256"] = sha256_of(bundle / manifest["tokenizer"]["file"])
    for g in manifest["graphs"]:
        g["sha256"] = sha256_of(bundle / g["file"])
    _write_sealed(bundle, manifest)


# ---------------------------------------------------------------- input files
def test_lone_surrogate_in_jsonl(built, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "\\ud800 broken"}\n')
    _error(capsys, [str(built / "bundle"), "--input", str(path)], "in.jsonl:2")
    with pytest.raises(MpeeRuntimeError, match="surrogate"):
        MpeeEngine(built / "bundle", threads=1, warmup=0).predict("\ud800")


@pytest.mark.parametrize("name", ["in.jsonl", "in.tsv"])
def test_not_utf8(built, tmp_path, capsys, name):
    path = tmp_path / name
    header = b"" if name.endswith("jsonl") else b"index\tsentence1\tsentence2\tlabel\n"
    row = b'{"text": "caf\xe9"}\n' if name.endswith("jsonl") else b"0\tcaf\xe9\tx\tentailment\n"
    path.write_bytes(header + row)
    _error(capsys, [str(built / "bundle"), "--input", str(path)], "not UTF-8")


@pytest.mark.parametrize("name,content,needle", [
    ("dev.tsv", "index\tsentence1\tlabel\n0\tthe movie is great\tentailment\n", "'sentence2'"),   # RTE needs a pair
    ("dev.tsv", "index\tsentence1\tsentence2\tlabel\n", "no examples"),                         # header only
    ("in.jsonl", '{"text": "fine", "label": "entailment"}\n{"text": "x", "label": "maybe"}\n', "'maybe'"),
])
def test_malformed_input_is_refused_before_running(built, tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    _error(capsys, [str(built / "bundle"), "--input", str(path)], needle)


def test_other_task_columns(built, tmp_path, capsys):
    """A QNLI-format file (question, sentence) runs on the RTE bundle when its columns are named."""
    path = tmp_path / "qnli.tsv"
    path.write_text("index\tquestion\tsentence\tlabel\n0\tthe movie is great\tit was fun\tentailment\n"
                    "1\ta boring film\tthe plot is not good\tnot_entailment\n")
    _error(capsys, [str(built / "bundle"), "--input", str(path)], "'sentence1'")
    out = tmp_path / "preds.jsonl"
    assert run_cli([str(built / "bundle"), "--input", str(path), "--text-column", "question", "--pair-column",
                    "sentence", "--output", str(out), "--threshold", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 2 and "accuracy" in summary
    want = MpeeEngine(built / "bundle", threads=1, warmup=0).predict("a boring film", "the plot is not good",
                                                                     threshold=0.0)
    assert json.loads(out.read_text().splitlines()[1])["probs"] == [round(p, 6) for p in want.probs]
    _error(capsys, [str(built / "bundle"), "--input", str(path), "--text-column", "question", "--pair-column",
                    "sentence", "--label-column", "gold"], "'gold'")


# ---------------------------------------------------------------- outputs: checked before any work
def test_output_is_a_folder(built, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "fine"}\n')
    folder = tmp_path / "existing"
    folder.mkdir()
    _error(capsys, [str(built / "bundle"), "--input", str(inp), "--output", str(folder)], "is a folder")
    assert sorted(os.listdir(tmp_path)) == ["existing", "in.jsonl"] and not os.listdir(folder)


def test_output_in_missing_folder(built, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "fine"}\n')

    def no_engine(*a, **k):
        raise AssertionError("the bundle was loaded before the output path was checked")
    monkeypatch.setattr(MpeeEngine, "__init__", no_engine)
    _error(capsys, [str(built / "bundle"), "--input", str(inp), "--output", str(tmp_path / "no/such/p.jsonl")],
           "does not exist")


# ---------------------------------------------------------------- bundles: replaced files, re-hashed
def test_corrupt_tokenizer(bundle, capsys):
    (bundle / TOKENIZER).write_text('{"not": "a tokenizer"}')
    _write_rehashed(bundle, _manifest(bundle))
    _error(capsys, [str(bundle), "x"], "tokenizer.json")


def test_other_models_tokenizer(bundle, capsys):
    manifest = _manifest(bundle)
    manifest["model"]["vocab_size"] = 10          # fewer embeddings than the tokenizer's vocabulary
    _write_rehashed(bundle, manifest)
    _error(capsys, [str(bundle), "x"], "vocabulary")


def test_garbage_layer_graph(bundle, capsys):
    (bundle / layer_file(1)).write_bytes(b"\x08\x07garbage" * 100)
    _write_rehashed(bundle, _manifest(bundle))
    _error(capsys, [str(bundle), "x"], layer_file(1))


def test_two_layers_swapped(bundle, capsys):
    a, b = bundle / layer_file(1), bundle / layer_file(2)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    _write_rehashed(bundle, _manifest(bundle))
    _error(capsys, [str(bundle), "x"], "swapped")


@pytest.mark.parametrize("path,value,needle", [
    (("model", "max_length"), 1, "model.max_length"),
    (("model", "max_length"), "24", "model.max_length"),
    (("model", "labels"), [], "model.labels"),
    (("model", "labels"), ["a", "a"], "model.labels"),
    (("model", "num_layers"), 7, "pruning.betas must be 7 numbers"),
    (("model", "num_layers"), True, "model.num_layers"),
    (("pruning", "keep_ratios"), [0.0, 0.6], "pruning.keep_ratios"),
    (("pruning", "keep_ratios"), [0.6], "pruning.keep_ratios"),
    (("pruning", "prune_layers"), [0, 9], "pruning.prune_layers"),
    (("pruning", "betas"), "0.5", "pruning.betas"),
    (("exit", "default_policy"), "vote", "exit.default_policy"),
    (("exit", "default_threshold"), -1, "exit.default_threshold"),
    (("exit", "default_threshold"), float("nan"), "exit.default_threshold"),
    (("tokenizer", "sha256"), "abc", "tokenizer.sha256"),
    (("graphs",), {}, "graphs"),
    (("graphs", 1, "inputs"), ["hidden", "extra"], "graphs[1]"),
    (("graphs", 2, "prunes"), False, "prunes"),
    (("validation", "passed"), "yes", "validation.passed"),
    (("export", "opset"), 11, "export.opset"),
    (("model",), None, "model"),
    (("pruning", "lam"), None, "pruning.lam"),
    (("model", "family"), None, "model.family"),
    (("model", "special_tokens"), None, "model.special_tokens"),
    (("model", "special_tokens", "pad"), 10**6, "model.special_tokens.pad"),
    (("model", "special_tokens", "cls"), -1, "model.special_tokens.cls"),
    (("graphs", 0, "inputs"), ["token_type_ids"], "graphs[0]"),
])
def test_mistyped_manifest_fields(bundle, capsys, path, value, needle):
    manifest = _manifest(bundle)
    target = manifest
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    _write_sealed(bundle, manifest)
    err = _error(capsys, [str(bundle), "x"], needle)
    assert "Traceback" not in err


def test_graph_list_shorter_than_the_model(bundle, capsys):
    manifest = _manifest(bundle)
    manifest["graphs"].pop()
    _write_sealed(bundle, manifest)
    _error(capsys, [str(bundle), "x"], "3 graphs for 3 layers")


def test_deeply_nested_manifest(bundle, capsys):
    (bundle / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    _error(capsys, [str(bundle), "x"], "not valid JSON")


def test_unvalidated_bundle_needs_the_flag(bundle, capsys):
    manifest = _manifest(bundle)
    manifest["validation"]["passed"] = False
    _write_sealed(bundle, manifest)
    _error(capsys, [str(bundle), "x"], "--allow-unvalidated")
    assert run_cli([str(bundle), "x", "--allow-unvalidated"]) == 0
    assert json.loads(capsys.readouterr().out)["exit_layer"] >= 1


def test_unfinished_export_folder_is_not_a_bundle(bundle, capsys):
    (bundle / MANIFEST).unlink()              # what an interrupted export leaves: never a manifest
    _error(capsys, [str(bundle), "x"], "not an MPEE bundle")


# ---------------------------------------------------------------- Ctrl-C: exit 130, one line, no output
def test_ctrl_c_during_input_run(built, tmp_path):
    """SIGINT while mpee-run reads and predicts a large input: exit 130, one line, no output file left."""
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "the movie is great , not very good !"}\n' * 200_000)
    out = tmp_path / "preds.jsonl"
    # `python -m mpee_runtime` with Ctrl-C's usual handler, even when these tests run in a script's background job
    # (which ignores SIGINT; a child inherits that, and Python then installs no KeyboardInterrupt handler).
    run = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "sys.argv[0] = 'mpee-run'; runpy.run_module('mpee_runtime', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", run, str(built / "bundle"), "--input", str(inp),
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:   # started: the input file is open
            fds = Path(f"/proc/{proc.pid}/fd")
            try:
                if any(os.readlink(fd) == str(inp) for fd in fds.iterdir()):
                    break
            except OSError:   # an fd closed while it was listed
                pass
            time.sleep(0.002)
        assert proc.poll() is None, "mpee-run ended before it was interrupted"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr == "Error: interrupted\n" and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]    # no output, no temporary file


def test_ctrl_c_in_process(built, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(MpeeEngine, "predict", interrupted)
    assert run_cli([str(built / "bundle"), "x"]) == 130
    assert capsys.readouterr().err == "Error: interrupted\n"


def test_ctrl_c_in_click_commands():
    """mpee-export, mpee-train, mpee-eval: the same line and exit code as the runtime, not click's "Aborted!"."""
    click = pytest.importorskip("click")
    MpeeCommand = pytest.importorskip("mpee_export.errors").MpeeCommand   # the torch side's package
    from click.testing import CliRunner

    @click.command(cls=MpeeCommand)
    def cmd():
        raise KeyboardInterrupt
    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 130 and result.output.strip() == "Error: interrupted"


# ---------------------------------------------------------------- output modes follow the umask
@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                     (0o002, 0o664, 0o775)])
def test_outputs_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    from mpee_runtime.files import AtomicFolder, umask, write_text
    old = os.umask(mask)
    try:
        assert umask() == mask
        write_text(tmp_path / "out.json", "{}")
        with AtomicFolder(tmp_path / "folder") as tmp:
            write_text(tmp / "inside.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "folder" / "inside.json").stat().st_mode) == file_mode


# ---------------------------------------------------------------- BOM, input kinds, argument encoding
@pytest.mark.parametrize("name", ["in.jsonl", "in.tsv"])
def test_bom_accepted_at_the_start_in_tsv_and_jsonl(built, tmp_path, capsys, name):
    path = tmp_path / name
    body = ('{"text": "a boring film"}\n{"text": "fine"}\n' if name.endswith("jsonl") else
            "index\tsentence1\tsentence2\tlabel\n0\ta boring film\tit was bad\tentailment\n")
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert run_cli([str(built / "bundle"), "--input", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == (2 if name.endswith("jsonl") else 1)


def test_bom_inside_a_jsonl_file_is_refused(built, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "fine"}\n\xef\xbb\xbf{"text": "x"}\n')
    _error(capsys, [str(built / "bundle"), "--input", str(path)], "in.jsonl:2: not a JSON object")


def test_input_kinds(built, tmp_path, capsys, monkeypatch):
    def no_engine(*a, **k):
        raise AssertionError("the bundle was loaded before the input was checked")
    monkeypatch.setattr(MpeeEngine, "__init__", no_engine)
    bundle = str(built / "bundle")
    (tmp_path / "folder.jsonl").mkdir()
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    cases = [(tmp_path / "missing.jsonl", "missing.jsonl: input file not found"),
             (tmp_path / "folder.jsonl", "folder.jsonl is a folder, not a regular file"),
             (fifo, "pipe.jsonl is a named pipe (FIFO), not a regular file"),
             (Path("/dev/zero"), "/dev/zero is a device file, not a regular file")]
    for path, needle in cases:
        _error(capsys, [bundle, "--input", str(path)], needle)
    with pytest.raises(MpeeRuntimeError, match="is a folder"):   # the reader says the same
        read_examples(tmp_path / "folder.jsonl", Columns("text"))


@pytest.mark.parametrize("where", ["text", "pair", "column"])
def test_invalid_utf8_argument(built, tmp_path, capsys, where):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")    # how Python hands over the bytes of argv
    args = {"text": [bad], "pair": ["x", "--pair", bad],
            "column": ["--input", str(tmp_path / "x.jsonl"), "--text-column", bad]}[where]
    name = {"text": "TEXT", "pair": "--pair", "column": "--text-column"}[where]
    err = _error(capsys, [str(built / "bundle"), *args], f"argument {name} is not valid UTF-8")
    assert "caf\\xe9" in err and "surrogate" not in err


@pytest.mark.integration
def test_closed_stdout_is_no_traceback(built, tmp_path):
    """`mpee-run ... --input FILE | head -c 1`: the reader goes away; exit 141 (SIGPIPE's code), nothing on stderr."""
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"the movie is great {i}"}) + "\n" for i in range(50)))
    proc = subprocess.Popen([sys.executable, "-m", "mpee_runtime", str(built / "bundle"), "--input", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # nobody reads the summary
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()
