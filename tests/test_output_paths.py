"""Every output path of mpee-train and mpee-split is checked before any work (a file in its place, a missing
parent folder), and a write that fails later (a full disk, simulated) is one `Error:` line that leaves nothing
behind: no empty checkpoint folder, no half of a split (issue 36, item 5)."""

from __future__ import annotations

import csv
import errno

import pytest
from click.testing import CliRunner

from mpee_export.cli.tools import split
from mpee_export.cli.train import train


def _csv(path, n: int = 40):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            w.writerow([f"{'good' if i % 2 else 'bad'} film {i}", "pos" if i % 2 else "neg"])
    return path


def _one_error_line(result, needle: str, after_work: bool = False) -> None:
    """Exit 2 and one `Error:` line, no traceback; the only output unless the command had started its work."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == [lines[-1]] and needle in lines[-1] and "Traceback" not in result.output, result.output
    assert after_work or len(lines) == 1, result.output


def _train_args(tmp_path, backbone, out):
    data = _csv(tmp_path / "data.csv")
    return ["--train", str(data), "--dev", str(data), "--backbone", str(backbone), "--max-length", "32",
            "--max-steps", "1", "--out", str(out)]


@pytest.mark.parametrize("where, needle", [("file", "exists and is not a folder"),
                                           ("missing/parent/ckpt", "parent folder of")])
def test_train_refuses_an_output_it_cannot_make_before_any_work(tmp_path, tiny_backbone, monkeypatch, where,
                                                                needle):
    (tmp_path / "file").write_text("x")
    from mpee_export.training import loop
    monkeypatch.setattr(loop, "_setup", lambda *a, **k: pytest.fail("work started before --out was checked"))
    _one_error_line(CliRunner().invoke(train, _train_args(tmp_path, tiny_backbone, tmp_path / where)), needle)
    assert not (tmp_path / "missing").exists()


def test_train_on_a_full_disk_is_one_line_and_leaves_no_folder(tmp_path, tiny_backbone, monkeypatch):
    from mpee_export.model import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "ckpt"
    args = _train_args(tmp_path, tiny_backbone, out)
    args[args.index("--max-steps"):args.index("--max-steps") + 2] = []   # train to the end, then save
    _one_error_line(CliRunner().invoke(train, args), "No space left on device", after_work=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "data.csv"]   # no ckpt, no temporary folder


@pytest.mark.parametrize("where, needle", [("file", "exists and is not a folder"),
                                           ("missing/out", "parent folder of")])
def test_split_refuses_an_output_it_cannot_make(tmp_path, where, needle):
    (tmp_path / "file").write_text("x")
    data = _csv(tmp_path / "data.csv")
    _one_error_line(CliRunner().invoke(split, [str(data), "--out", str(tmp_path / where), "--dev-size", "10"]),
                    needle)
    assert not (tmp_path / "missing").exists()


def test_split_on_a_full_disk_leaves_neither_half(tmp_path, monkeypatch):
    """The disk fills while the second file (dev) is written: neither train nor dev is published, and a rerun
    needs no --force."""
    from mpee_runtime import files
    real = files.os.fdopen
    calls = []

    def fdopen(fd, *a, **k):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *a, **k)
    monkeypatch.setattr(files.os, "fdopen", fdopen)
    data, out = _csv(tmp_path / "data.csv"), tmp_path / "split"
    _one_error_line(CliRunner().invoke(split, [str(data), "--out", str(out), "--dev-size", "10"]),
                    f"{out}: No space left on device")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]
    monkeypatch.undo()
    result = CliRunner().invoke(split, [str(data), "--out", str(out), "--dev-size", "10"])
    assert result.exit_code == 0 and sorted(p.name for p in out.iterdir()) == ["dev.csv", "train.csv"]
