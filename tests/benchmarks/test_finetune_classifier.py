"""benchmarks/finetune_classifier.py: the plain transformers fine-tune, on GLUE and on the user's files, and its
resume (a run stopped and resumed ends with the weights of a run that never stopped)."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.torch import load_file

from scripts import load_script, write_tiny_sst2


@pytest.fixture(scope="module")
def ft():
    return load_script("finetune_classifier")


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_stopped_and_resumed_run_ends_with_the_uninterrupted_weights(ft, tmp_path, tiny_backbone):
    glue = write_tiny_sst2(tmp_path / "glue")
    common = ["--data", str(glue), "--task", "sst2", "--backbone", str(tiny_backbone), "--epochs", "2",
              "--batch-size", "4", "--max-length", "32", "--threads", "1"]
    ft.main([*common, "--out", str(tmp_path / "straight")])
    resumed = tmp_path / "resumed"
    ft.main([*common, "--out", str(resumed), "--save-every", "3", "--max-steps", "5"])   # epoch 1 = 4 steps
    assert (resumed / "train_state" / "state.pt").is_file()
    assert len(json.loads((resumed / "finetune.json").read_text())["epochs"]) == 1
    ft.main([*common, "--out", str(resumed), "--save-every", "3"])
    assert not (resumed / "train_state").exists()
    a, b = weights(tmp_path / "straight"), weights(resumed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    record = json.loads((resumed / "finetune.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["epochs"][1]["dev_examples"] == 8


def test_a_state_from_other_settings_is_refused(ft, tmp_path, tiny_backbone):
    glue = write_tiny_sst2(tmp_path / "glue")
    common = ["--data", str(glue), "--task", "sst2", "--backbone", str(tiny_backbone), "--batch-size", "4",
              "--max-length", "32", "--threads", "1", "--out", str(tmp_path / "out")]
    ft.main([*common, "--max-steps", "2"])
    with pytest.raises(SystemExit, match="another run"):
        ft.main([*common, "--lr", "1e-3"])


def test_own_csv_files_with_head_and_tail(ft, tmp_path, tiny_backbone):
    for name, n in (("train", 12), ("dev", 6)):
        with open(tmp_path / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["review", "sentiment"])
            for i in range(n):
                w.writerow([" ".join(["good film"] * (10 + i)), "positive" if i % 2 else "negative"])
    out = tmp_path / "clf"
    ft.main(["--train", str(tmp_path / "train.csv"), "--dev", str(tmp_path / "dev.csv"), "--text-column", "review",
             "--label-column", "sentiment", "--backbone", str(tiny_backbone), "--max-length", "16",
             "--truncation", "head+tail", "--batch-size", "4", "--threads", "1", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert json.loads((out / "finetune.json").read_text())["epochs"][0]["dev_examples"] == 6
