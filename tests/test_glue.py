"""GLUE loading on the real dev files and on synthetic TSVs, its one-line errors, and the metrics."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from mpee_export.data.glue import (
    TASKS,
    TaskExample,
    compute_metrics,
    get_task,
    infer_task,
    load_split,
    read_examples,
    resolve_task_dir,
    split_path,
)
from mpee_export.errors import MpeeExportError

GLUE = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))


def real(folder: str) -> Path:
    if not (GLUE / folder / "dev.tsv").is_file():
        pytest.skip(f"GLUE data not found at {GLUE / folder}")
    return GLUE


def write(path: Path, lines: list[str], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# Real dev files: canonical sizes and label counts.

@pytest.mark.parametrize("name, rows, label_counts", [
    ("sst2", 872, {1: 444, 0: 428}),
    ("mrpc", 408, {1: 279, 0: 129}),
    ("rte", 277, {0: 146, 1: 131}),
])
def test_real_dev_counts(name, rows, label_counts):
    task = get_task(name)
    examples = load_split(real(task.folder), task, "dev")
    assert len(examples) == rows
    assert Counter(ex.label for ex in examples) == label_counts
    assert [ex.index for ex in examples] == list(range(rows))
    assert all(ex.text_a and ex.text_a == ex.text_a.strip() for ex in examples)
    if task.text_b is None:
        assert all(ex.text_b is None for ex in examples)
    else:
        assert all(ex.text_b and ex.text_b == ex.text_b.strip() for ex in examples)


@pytest.mark.parametrize("name, rows", [("sst2", 67349), ("mrpc", 3668), ("rte", 2490)])
def test_real_train_counts(name, rows):
    task = get_task(name)
    examples = load_split(real(task.folder), task, "train")
    assert len(examples) == rows
    assert {ex.label for ex in examples} == {0, 1}


def test_real_sst2_first_example_is_stripped():
    task = get_task("sst2")
    first = load_split(real("SST-2"), task, "dev", limit=1)
    assert first == [TaskExample(0, "it 's a charming and often affecting journey .", None, 1)]


def test_real_mrpc_first_example_has_no_bom():
    task = get_task("mrpc")
    ex = load_split(real("MRPC") / "MRPC", task, "dev", limit=2)[0]
    assert ex.text_a == ("He said the foodservice pie business doesn 't fit the company 's long-term growth "
                         "strategy .")
    assert ex.text_b == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert ex.label == 1


def test_real_rte_first_example_and_limit():
    task = get_task("rte")
    examples = load_split(real("RTE"), task, "train", limit=5)
    assert len(examples) == 5
    dev = load_split(real("RTE"), task, "dev", limit=1)[0]
    assert dev.text_a.startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert dev.text_b == "Christopher Reeve had an accident."
    assert task.labels[dev.label] == "not_entailment"


# Synthetic files for the tasks without real data here.

def test_synthetic_qnli(tmp_path):
    write(tmp_path / "QNLI" / "dev.tsv", [
        "index\tquestion\tsentence\tlabel",
        "0\tWhat is it? \tIt is a test.\tentailment",
        "1\tWho \"said\" it?\tNobody.\tnot_entailment",
    ])
    examples = load_split(tmp_path, get_task("qnli"), "dev")
    assert examples == [TaskExample(0, "What is it?", "It is a test.", 0),
                        TaskExample(1, 'Who "said" it?', "Nobody.", 1)]


def test_synthetic_qqp_columns_by_name(tmp_path):
    write(tmp_path / "QQP" / "train.tsv", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "7\t1\t2\tHow old are you?\tWhat is your age?\t1",
        "8\t3\t4\tWhy?\tWhy not?\t0",
    ])
    examples = load_split(tmp_path / "QQP", TASKS["qqp"], "train")
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("How old are you?", "What is your age?", 1), ("Why?", "Why not?", 0)]


def test_synthetic_mnli_dev_matched(tmp_path):
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
    labels = ["neutral", "contradiction", "entailment"]
    rows = [f"{i}\t{i}\t{i}n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tPremise {i}.\tHypothesis {i}.\t{lab}\t{lab}"
            for i, lab in enumerate(labels)]
    write(tmp_path / "MNLI" / "dev_matched.tsv", [header, *rows])
    task = get_task("MNLI")
    assert split_path(tmp_path / "MNLI", task, "dev").name == "dev_matched.tsv"
    examples = load_split(tmp_path, task, "dev")
    assert [(e.text_a, e.text_b) for e in examples] == [(f"Premise {i}.", f"Hypothesis {i}.") for i in range(3)]
    assert [task.labels[e.label] for e in examples] == labels


def test_bom_header_and_trailing_blank_line(tmp_path):
    path = write(tmp_path / "dev.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tA .\tB .", ""],
                 bom=True)
    assert read_examples(path, TASKS["mrpc"]) == [TaskExample(0, "A .", "B .", 0)]


# Tasks, folders and splits.

def test_get_task_aliases():
    for alias in ("sst2", "SST-2", "sst-2", "Sst2", "SST2"):
        assert get_task(alias) is TASKS["sst2"]
    assert get_task("mnli").dev_file == "dev_matched.tsv"
    assert set(TASKS) == {"sst2", "mrpc", "rte", "qnli", "qqp", "mnli"}


def test_get_task_unknown_lists_known():
    with pytest.raises(MpeeExportError) as excinfo:
        get_task("cola")
    message = one_line_error(excinfo)
    assert "'cola'" in message
    assert all(name in message for name in TASKS)


def test_infer_task(tmp_path, monkeypatch):
    assert infer_task(Path("/data/glue/SST-2")) is TASKS["sst2"]
    assert infer_task(Path("glue/MNLI/")) is TASKS["mnli"]
    assert infer_task(Path("/data/glue")) is None
    (tmp_path / "RTE").mkdir()
    monkeypatch.chdir(tmp_path / "RTE")
    assert infer_task(Path(".")) is TASKS["rte"]


def test_resolve_task_dir(tmp_path):
    task = TASKS["qnli"]
    write(tmp_path / "QNLI" / "train.tsv", ["index\tquestion\tsentence\tlabel"])
    assert resolve_task_dir(tmp_path, task) == tmp_path / "QNLI"
    assert resolve_task_dir(tmp_path / "QNLI", task) == tmp_path / "QNLI"
    only_dev = tmp_path / "elsewhere"
    write(only_dev / "dev_matched.tsv", ["x"])
    assert resolve_task_dir(only_dev, TASKS["mnli"]) == only_dev
    for missing in (tmp_path / "nope", only_dev):
        with pytest.raises(MpeeExportError) as excinfo:
            resolve_task_dir(missing, task)
        message = one_line_error(excinfo)
        assert "GLUE" in message and "QNLI" in message and str(missing) in message
        assert "download_glue_data.py" in message and "GLUE_DIR" in message


def test_split_path_unknown_split(tmp_path):
    assert split_path(tmp_path, TASKS["rte"], "train") == tmp_path / "train.tsv"
    assert split_path(tmp_path, TASKS["rte"], "dev") == tmp_path / "dev.tsv"
    with pytest.raises(MpeeExportError, match="'test'"):
        split_path(tmp_path, TASKS["rte"], "test")


def test_limit(tmp_path):
    path = write(tmp_path / "train.tsv", ["sentence\tlabel", *[f"s{i} \t{i % 2}" for i in range(10)]])
    assert [e.text_a for e in read_examples(path, TASKS["sst2"], limit=3)] == ["s0", "s1", "s2"]
    assert read_examples(path, TASKS["sst2"], limit=0) == []
    assert len(read_examples(path, TASKS["sst2"])) == 10


# Malformed input: one line naming the file, and the line for row errors.

def test_missing_file(tmp_path):
    with pytest.raises(MpeeExportError) as excinfo:
        read_examples(tmp_path / "gone.tsv", TASKS["rte"])
    message = one_line_error(excinfo)
    assert "gone.tsv" in message and "not found" in message


@pytest.mark.parametrize("content", ["", "\n", "\ufeff"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MpeeExportError) as excinfo:
        read_examples(path, TASKS["sst2"])
    message = one_line_error(excinfo)
    assert "empty.tsv" in message and "empty" in message


def test_header_missing_column(tmp_path):
    path = write(tmp_path / "dev.tsv", ["index\tsentence1\tsentence\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(MpeeExportError) as excinfo:
        read_examples(path, TASKS["rte"])
    message = one_line_error(excinfo)
    assert "dev.tsv" in message and "'sentence2'" in message and "sentence1" in message


def test_wrong_field_count(tmp_path):
    path = write(tmp_path / "train.tsv", ["sentence\tlabel", "good\t1", "bad\t0\textra", "fine\t1"])
    with pytest.raises(MpeeExportError) as excinfo:
        read_examples(path, TASKS["sst2"])
    message = one_line_error(excinfo)
    assert "train.tsv:3" in message and "3" in message and "2" in message


def test_unknown_label(tmp_path):
    path = write(tmp_path / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment",
                                        "1\ta\tb\tentailment", "2\ta\tb\tcontradiction"])
    with pytest.raises(MpeeExportError) as excinfo:
        read_examples(path, TASKS["rte"])
    message = one_line_error(excinfo)
    assert "dev.tsv:4" in message and "'contradiction'" in message
    assert "entailment" in message and "not_entailment" in message


def test_bad_label_after_limit_is_not_read(tmp_path):
    path = write(tmp_path / "dev.tsv", ["sentence\tlabel", "ok\t1", "broken\t7"])
    assert len(read_examples(path, TASKS["sst2"], limit=1)) == 1


def test_not_utf8(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(MpeeExportError) as excinfo:
        read_examples(path, TASKS["sst2"])
    assert "dev.tsv" in one_line_error(excinfo)


# Metrics.

def test_metrics_f1_task():
    out = compute_metrics(TASKS["mrpc"], [1, 1, 0, 0], [1, 0, 0, 1])
    assert out.accuracy == pytest.approx(0.5)
    assert out.f1 == pytest.approx(0.5)
    assert (out.metric_name, out.metric) == ("f1", pytest.approx(0.5))


def test_metrics_hand_computed_f1():
    # tp=2, fp=1, fn=2: precision 2/3, recall 1/2, f1 = 4/7; accuracy 3/6.
    out = compute_metrics(TASKS["qqp"], [1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0])
    assert out.accuracy == pytest.approx(0.5)
    assert out.f1 == pytest.approx(4 / 7)
    assert out.metric == pytest.approx(4 / 7)


def test_metrics_no_positives_f1_zero():
    out = compute_metrics(TASKS["mrpc"], [0, 0, 0], [0, 0, 0])
    assert out.accuracy == 1.0 and out.f1 == 0.0


def test_metrics_accuracy_task_has_no_f1():
    out = compute_metrics(TASKS["mnli"], [0, 1, 2, 2], [0, 1, 1, 2])
    assert out.to_dict() == {"metric_name": "accuracy", "metric": 0.75, "accuracy": 0.75, "f1": None}
    assert isinstance(out.accuracy, float)


@pytest.mark.parametrize("preds, labels", [([], []), ([1, 0], [1])])
def test_metrics_bad_lengths(preds, labels):
    with pytest.raises(ValueError):
        compute_metrics(TASKS["sst2"], preds, labels)
