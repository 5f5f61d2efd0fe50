"""Your own data: training, evaluation, export and the device on CSV / JSONL files with named columns, the
labels they carry, mpee-split, and every bad file refused with one `Error:` line and nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli_checks import click_error
from click.testing import CliRunner

from mpee_export.cli.eval import evaluate
from mpee_export.cli.export import export
from mpee_export.cli.tools import split
from mpee_export.cli.train import train
from mpee_export.data.datasets import checkpoint_task
from mpee_export.model.checkpoint import read_mpee_config
from mpee_runtime.bundle import manifest as S
from mpee_runtime.cli.run import main as run_cli

POS = ["the movie is great", "a fun film", "very good acting", "great plot and fun", "it was good"]
NEG = ["the movie is awful", "a boring film", "very bad acting", "awful plot and boring", "it was bad"]


def _write_csv(path: Path, rows: list[tuple[str, str]], header=("review", "sentiment")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"body": t, "tag": y}) + "\n" for t, y in rows), encoding="utf-8")
    return path


def _rows(pos="positive", neg="negative") -> list[tuple[str, str]]:
    # commas and quotes inside fields: the CSV must be parsed, not split
    return [(f'{s}, "really"', pos) for s in POS] + [(f"{s}, sadly", neg) for s in NEG]


@pytest.fixture
def csv_data(tmp_path) -> tuple[Path, Path]:
    return _write_csv(tmp_path / "train.csv", _rows() * 4), _write_csv(tmp_path / "dev.csv", _rows())


def _train_args(train_file: Path, dev_file: Path, backbone: Path, out: Path, *cols: str) -> list[str]:
    return ["--train", str(train_file), "--dev", str(dev_file), *cols, "--backbone", str(backbone),
            "--out", str(out), "--batch-size", "8", "--lr", "1e-3", "--epochs", "2"]


def test_csv_train_eval_export_and_device_labels(csv_data, tiny_backbone, tmp_path, capsys):
    train_file, dev_file = csv_data
    ckpt = tmp_path / "ckpt"
    cols = ("--text-column", "review", "--label-column", "sentiment")
    res = CliRunner().invoke(train, _train_args(train_file, dev_file, tiny_backbone, ckpt, *cols, "--task", "reviews"))
    assert res.exit_code == 0, res.output
    _, mpee = read_mpee_config(ckpt)
    # labels come from the data, sorted; the columns and the metric are recorded
    assert mpee.labels == ["negative", "positive"] and mpee.task == "reviews"
    task = checkpoint_task(mpee)
    assert (task.text_a, task.text_b, task.label_column, task.metric) == ("review", None, "sentiment", "accuracy")
    js = tmp_path / "eval.json"
    preds = tmp_path / "preds.jsonl"
    res = CliRunner().invoke(evaluate, [str(ckpt), "--dev", str(dev_file), "--json", str(js), "--predictions",
                                        str(preds), "--threshold", "0"])
    assert res.exit_code == 0, res.output
    row = json.loads(js.read_text())["rows"][0]
    assert row["n"] == 10 and row["task"] == "reviews"
    torch_preds = [json.loads(x) for x in preds.read_text().splitlines()]
    bundle = tmp_path / "bundle"
    res = CliRunner().invoke(export, [str(ckpt), str(bundle), "--dev", str(dev_file), "--calibrate",
                                      "--max-drop", "1"])
    assert res.exit_code == 0, res.output
    manifest = S.Manifest.load(bundle)
    assert manifest.labels == ["negative", "positive"]
    assert (manifest.task.name, manifest.task.text_a, manifest.task.label_column) == ("reviews", "review", "sentiment")
    # the device reads the same CSV by the manifest's columns and answers with the label strings
    out = tmp_path / "run.jsonl"
    capsys.readouterr()
    assert run_cli([str(bundle), "--input", str(dev_file), "--output", str(out), "--threshold", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["label"], x["exit_layer"]) for x in lines] == [(x["label"], x["exit_layer"]) for x in torch_preds]
    assert {x["label"] for x in lines} <= {"negative", "positive"}
    assert summary["accuracy"] == pytest.approx(row["accuracy"])


def test_jsonl_train_with_f1(tiny_backbone, tmp_path):
    train_file = _write_jsonl(tmp_path / "train.jsonl", _rows("yes", "no") * 4)
    dev_file = _write_jsonl(tmp_path / "dev.jsonl", _rows("yes", "no"))
    ckpt = tmp_path / "ckpt"
    res = CliRunner().invoke(train, _train_args(train_file, dev_file, tiny_backbone, ckpt, "--text-column", "body",
                                                "--label-column", "tag", "--metric", "f1"))
    assert res.exit_code == 0, res.output
    _, mpee = read_mpee_config(ckpt)
    # no --task: a file called train.* names the task after its folder
    assert mpee.labels == ["no", "yes"] and mpee.metric == "f1" and mpee.task == tmp_path.name
    js = tmp_path / "eval.json"
    res = CliRunner().invoke(evaluate, [str(ckpt), "--dev", str(dev_file), "--json", str(js)])
    assert res.exit_code == 0, res.output
    full = json.loads(js.read_text())["full_model"]
    assert full["metric_name"] == "f1" and full["metric"] == full["f1"]
    # an F1 task's table: F1 (the headline) and accuracy, each once
    lines = res.output.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("row")))
    assert lines[header].split() == ["row", "policy", "F", "r", "F1", "accuracy", "exit", "rho", "rho128"]
    assert lines[header + 2].split()[5:7] == [f"{100 * full['f1']:.2f}", f"{100 * full['accuracy']:.2f}"]


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a bad training file, what the error says)."""
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    bad = {}
    bad["unknown column"] = (_write_csv(d / "cols.csv", _rows(), header=("text", "sentiment")), "no column 'review'")
    bad["single class"] = (_write_csv(d / "one.csv", [(t, "positive") for t, _ in _rows()]), "at least 2 classes")
    (d / "empty.csv").write_text("")
    bad["empty"] = (d / "empty.csv", "empty")
    (d / "header.csv").write_text("review,sentiment\n")
    bad["header only"] = (d / "header.csv", "no examples")
    (d / "ragged.csv").write_text("review,sentiment\na fun film,positive\nthe movie,is,bad,negative\n")
    bad["ragged"] = (d / "ragged.csv", ":3: 4 comma-separated fields, the header has 2")
    (d / "latin1.csv").write_bytes("review,sentiment\ncaf\u00e9 film,positive\n".encode("latin-1"))
    bad["invalid utf-8"] = (d / "latin1.csv", "not UTF-8")
    (d / "blank.csv").write_text('review,sentiment\na fun film,positive\n"   ",negative\n')
    bad["blank text"] = (d / "blank.csv", ":3: 'review' is empty")
    return bad


def test_bad_training_files_refused_and_nothing_written(csv_data, tiny_backbone, tmp_path):
    _, dev_file = csv_data
    out = tmp_path / "never"
    cols = ("--text-column", "review", "--label-column", "sentiment")
    for name, (path, needle) in _bad_files(tmp_path).items():
        click_error(train, _train_args(path, dev_file, tiny_backbone, out, *cols), needle)
        assert not out.exists(), name
    # bad dev files: a label never seen in training, and every bad-file case
    unseen = _write_csv(tmp_path / "unseen.csv", _rows() + [("a fun film", "neutral")])
    err = click_error(train, _train_args(csv_data[0], unseen, tiny_backbone, out, *cols), "'neutral'")
    assert "labels of the training data" in err and ":12:" in err
    for name, (path, needle) in _bad_files(tmp_path).items():
        if name != "single class":   # one class is a fine dev file
            click_error(train, _train_args(csv_data[0], path, tiny_backbone, out, *cols), needle)
    assert not out.exists()
    # option misuse
    three = _write_csv(tmp_path / "three.csv", _rows() + [("a fun film", "neutral")])
    click_error(train, _train_args(three, dev_file, tiny_backbone, out, *cols, "--metric", "f1"), "needs 2 classes")
    click_error(train, ["--train", str(csv_data[0]), "--backbone", str(tiny_backbone), "--out", str(out)],
                "--train needs --dev")
    click_error(train, _train_args(csv_data[0], dev_file, tiny_backbone, out, *cols, "--max-length", "65"),
                "more than the backbone's 64 positions")
    assert not out.exists()


def test_eval_and_export_refuse_bad_dev_files(csv_data, tiny_backbone, tmp_path):
    train_file, dev_file = csv_data
    ckpt = tmp_path / "ckpt"
    cols = ("--text-column", "review", "--label-column", "sentiment")
    res = CliRunner().invoke(train, _train_args(train_file, dev_file, tiny_backbone, ckpt, *cols, "--epochs", "1"))
    assert res.exit_code == 0, res.output
    js, bundle = tmp_path / "e.json", tmp_path / "bundle"
    for name, (path, needle) in _bad_files(tmp_path).items():
        if name == "single class":
            continue
        click_error(evaluate, [str(ckpt), "--dev", str(path), "--json", str(js)], needle)
        click_error(export, [str(ckpt), str(bundle), "--dev", str(path), "--calibrate", "--max-drop", "1"], needle)
    click_error(evaluate, [str(ckpt), "--data", str(tmp_path), "--json", str(js)], "give its dev file with --dev")
    assert not js.exists() and not bundle.exists()


def test_split_is_stratified_seeded_and_keeps_rows(tmp_path):
    rows = [(f"text {i}, with a comma", "a") for i in range(30)] + [(f'"quoted" {i}', "b") for i in range(10)]
    src = _write_csv(tmp_path / "all.csv", rows, header=("text", "label"))
    res = CliRunner().invoke(split, [str(src), "--out", str(tmp_path / "s1"), "--dev-size", "8"])
    assert res.exit_code == 0, res.output
    CliRunner().invoke(split, [str(src), "--out", str(tmp_path / "s2"), "--dev-size", "8"])

    def read(path):
        with path.open(newline="") as f:
            return [tuple(r) for r in csv.reader(f)][1:]
    dev, tr = read(tmp_path / "s1" / "dev.csv"), read(tmp_path / "s1" / "train.csv")
    assert sorted(dev + tr) == sorted(rows)                        # every row once, as it was
    assert sum(1 for _, y in dev if y == "a") == 6 and sum(1 for _, y in dev if y == "b") == 2
    assert read(tmp_path / "s2" / "dev.csv") == dev                # seeded
    res = CliRunner().invoke(split, [str(src), "--out", str(tmp_path / "s3"), "--dev-size", "8", "--seed", "1"])
    assert read(tmp_path / "s3" / "dev.csv") != dev
    click_error(split, [str(src), "--out", str(tmp_path / "s1"), "--dev-size", "8"], "--force")
    click_error(split, [str(src), "--out", str(tmp_path / "s4"), "--dev-size", "40"], "--dev-size must be")
    jsonl = _write_jsonl(tmp_path / "all.jsonl", rows)
    res = CliRunner().invoke(split, [str(jsonl), "--out", str(tmp_path / "j"), "--dev-size", "4",
                                     "--text-column", "body", "--label-column", "tag"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "j" / "dev.jsonl").read_text().splitlines()) == 4
    assert not (tmp_path / "s4").exists()
