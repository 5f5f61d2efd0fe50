"""Hostile input to the torch-side commands: one `Error:` line, exit 2, nothing left behind; interrupted
exports leave nothing that mpee-run accepts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_checks import click_error
from click.testing import CliRunner

from mpee_export.cli.eval import evaluate
from mpee_export.cli.export import export
from mpee_export.cli.train import train
from mpee_export.errors import MpeeExportError
from mpee_export.model.checkpoint import WEIGHTS_NAME, load_checkpoint
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.files import AtomicFolder

_bad = click_error


@pytest.fixture
def sst2(tmp_path) -> Path:
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    rows = "".join(f"{t} \t{y}\n" for t, y in [("the movie is great", 1), ("a boring film", 0)] * 3)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + rows)
    return folder.parent


def test_checkpoint_without_tokenizer_files(ckpt, tmp_path, sst2):
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (ckpt / name).unlink(missing_ok=True)
    _bad(export, [str(ckpt), str(tmp_path / "out")], "no tokenizer files")
    _bad(evaluate, [str(ckpt), "--data", str(sst2)], "no tokenizer files")
    assert not (tmp_path / "out").exists()


def test_header_only_tsv(ckpt, tmp_path, sst2, tiny_backbone):
    (sst2 / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
    _bad(evaluate, [str(ckpt), "--data", str(sst2)], "no examples")
    (sst2 / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    _bad(train, ["--task", "sst2", "--data", str(sst2), "--backbone", str(tiny_backbone), "--out",
                 str(tmp_path / "trained")], "no examples")
    assert not (tmp_path / "trained").exists()


def test_reference_into_a_file(ckpt, tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    _bad(export, ["reference", str(ckpt), str(target)], "not a folder")
    assert target.read_text() == "mine"


def test_eval_json_into_a_folder(ckpt, tmp_path, sst2):
    folder = tmp_path / "results"
    folder.mkdir()
    _bad(evaluate, [str(ckpt), "--data", str(sst2), "--json", str(folder)], "is a folder")
    _bad(evaluate, [str(ckpt), "--data", str(sst2), "--json", str(tmp_path / "no" / "r.json")], "does not exist")
    assert not os.listdir(folder) and not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_flipped_byte_in_the_weights(ckpt, tmp_path):
    path = ckpt / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01                          # inside the tensor data: safetensors itself cannot tell
    path.write_bytes(bytes(data))
    with pytest.raises(MpeeExportError, match="sha256"):
        load_checkpoint(ckpt)
    _bad(export, [str(ckpt), str(tmp_path / "out")], "sha256")


def test_checkpoint_folder_named_like_a_subcommand(ckpt, tmp_path, monkeypatch):
    """A subcommand's name is always the subcommand; a checkpoint folder of that name is given as a path."""
    monkeypatch.chdir(tmp_path)
    os.rename(ckpt, tmp_path / "validate")
    res = CliRunner().invoke(export, ["./validate", "out"])          # CKPT=./validate, OUT=out
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "manifest.json").is_file()
    res = CliRunner().invoke(export, ["validate", "out", "validate"])   # the subcommand: BUNDLE CKPT
    assert res.exit_code == 0 and "PASSED" in res.output, res.output
    res = CliRunner().invoke(export, ["validate", "out"])            # the subcommand, missing its CKPT
    assert res.exit_code == 2 and "CHECKPOINT" in res.output, res.output
    assert not (tmp_path / "validate" / "manifest.json").exists()


def test_keep_failed_bundle_needs_allow_unvalidated(ckpt, tmp_path, monkeypatch, capsys):
    from mpee_export.export import validate as validate_mod
    monkeypatch.setitem(validate_mod.ATOL, "fp32", -1.0)      # every graph "fails"
    res = CliRunner().invoke(export, [str(ckpt), str(tmp_path / "out")])
    assert res.exit_code == 3 and res.output.splitlines()[-1].startswith("Error: fp32 parity check failed")
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(export, [str(ckpt), str(tmp_path / "out"), "--keep-failed"])
    assert res.exit_code == 0 and "FAILED" in res.output, res.output
    assert run_cli([str(tmp_path / "out"), "great"]) == 2
    assert "--allow-unvalidated" in capsys.readouterr().err
    assert run_cli([str(tmp_path / "out"), "great", "--allow-unvalidated"]) == 0


def test_sigterm_inside_an_atomic_folder_cleans_up(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo, AtomicFolder(out) as tmp:
        (tmp / "half.onnx").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)                          # the handler raises before this ends
    assert excinfo.value.code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is restored


def slowed_cli(module: str, function: str, said: str, cli: str, command: str, prog: str) -> str:
    """A script that runs the real CLI `command` of `cli` (as `prog`), slowed down after the first call of `module`'s
    `function`: it prints `said` and sleeps, so that the test can signal the process at that point."""
    return textwrap.dedent(f"""
        import sys, time
        import {module} as target
        real = target.{function}
        def slow(*args, **kw):
            real(*args, **kw)
            print("{said}", flush=True)
            time.sleep(60)
        target.{function} = slow
        from {cli} import {command}
        sys.argv = ["{prog}", *sys.argv[1:]]
        {command}()
    """)


# A real `mpee-export` process, slowed down after its first graph so that it can be signalled mid-export.
SLOW_EXPORT = slowed_cli("mpee_export.export.bundle", "_torch_export", "graph written", "mpee_export.cli.export",
                         "export", "mpee-export")


def _start_export(ckpt: Path, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, str(ckpt), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "graph written", proc.stderr.read()
    return proc


def _temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.mark.integration
def test_killed_export_leaves_nothing_mpee_run_accepts(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    proc = _start_export(ckpt, out)
    assert len(_temps(out)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not out.exists() and _temps(out) == []              # SIGTERM: cleaned up

    proc = _start_export(ckpt, out)
    proc.kill()                                                 # SIGKILL: no chance to clean up
    proc.wait(timeout=30)
    (stale,) = _temps(out)
    assert run_cli([str(stale), "great"]) == 2                  # no manifest until the export has passed
    assert "not an MPEE bundle" in capsys.readouterr().err
    res = CliRunner().invoke(export, [str(ckpt), str(out)])     # the next export removes the stale folder
    assert res.exit_code == 0, res.output
    assert _temps(out) == [] and (out / "manifest.json").is_file()


# A real `mpee-train` process, slowed down after it saves its first state so that it can be signalled mid-training.
SLOW_TRAIN = slowed_cli("mpee_export.training.loop", "_save_state", "state saved", "mpee_export.cli.train", "train",
                        "mpee-train")


@pytest.mark.integration
def test_sigterm_ends_training_in_one_line_and_it_resumes(tiny_backbone, tmp_path):
    """SIGTERM mid-training: `Error: terminated`, exit 143, no traceback; the state saved so far resumes."""
    data = tmp_path / "glue" / "SST-2"
    data.mkdir(parents=True)
    rows = "".join(f"{s} \t{y}\n" for s, y in [("the movie is great", 1), ("a boring film", 0)] * 8)
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    args = ["--task", "sst2", "--data", str(data.parent), "--backbone", str(tiny_backbone), "--out",
            str(tmp_path / "ckpt"), "--batch-size", "4", "--save-every", "1", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "state saved", proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    err = proc.stderr.read()
    assert err.strip().splitlines()[-1] == "Error: terminated" and "Traceback" not in err, err
    res = CliRunner().invoke(train, args)
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and (tmp_path / "ckpt" / "model.safetensors").is_file()
