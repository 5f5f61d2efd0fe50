"""Training, resume, checkpoints, the converter and the CLIs, on a tiny random backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from tiny import tiny_model

from mpee_export.cli.eval import evaluate
from mpee_export.cli.tools import convert
from mpee_export.cli.train import train
from mpee_export.data.datasets import glue_source
from mpee_export.data.glue import get_task
from mpee_export.errors import MpeeExportError
from mpee_export.model.checkpoint import load_checkpoint, save_checkpoint
from mpee_export.training.loop import Stopped, TrainArgs, mpee_config
from mpee_export.training.loop import train as run_training

POS = ["the movie is great", "a fun film", "very good acting", "great plot and fun", "it was good"]
NEG = ["the movie is awful", "a boring film", "very bad acting", "awful plot and boring", "it was bad"]


@pytest.fixture
def sst_dir(tmp_path: Path) -> Path:
    """A synthetic SST-2 folder in GLUE layout."""
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    rows = [(s, 1) for s in POS] + [(s, 0) for s in NEG]
    train_rows = rows * 4
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in train_rows))
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))
    return folder.parent


def _args(sst_dir, backbone, out, **kw) -> TrainArgs:
    return TrainArgs(data=glue_source(sst_dir, "sst2"), backbone=backbone, out=out, mpee=mpee_config(backbone, get_task("sst2")),
                     batch_size=8, lr=1e-3, save_every=2, seed=3, **kw)


def test_resume_reproduces_uninterrupted_run(sst_dir, tiny_backbone, tmp_path):
    straight = tmp_path / "straight"
    run_training(_args(sst_dir, tiny_backbone, straight, epochs=2), log=lambda m: None)
    resumed = tmp_path / "resumed"
    assert run_training(_args(sst_dir, tiny_backbone, resumed, epochs=2, max_steps=3),
                        log=lambda m: None) == Stopped(step=3)
    assert (resumed / "train_state" / "progress.json").is_file()
    run_training(_args(sst_dir, tiny_backbone, resumed, epochs=2), log=lambda m: None)
    assert not (resumed / "train_state").exists()
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = json.loads((straight / "train_log.json").read_text())
    assert [h["epoch"] for h in log["history"]] == [1, 2]


def test_resume_refuses_changed_settings(sst_dir, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    run_training(_args(sst_dir, tiny_backbone, out, max_steps=1), log=lambda m: None)
    changed = _args(sst_dir, tiny_backbone, out)
    changed.lr = 0.5
    with pytest.raises(MpeeExportError, match="lr"):
        run_training(changed, log=lambda m: None)


def test_checkpoint_round_trip(tmp_path):
    from transformers import BertTokenizerFast
    model = tiny_model(layers=3)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n")
    save_checkpoint(model, BertTokenizerFast(vocab_file=str(vocab)), tmp_path / "ckpt")
    loaded, tok = load_checkpoint(tmp_path / "ckpt")
    assert loaded.mpee == model.mpee
    ids = torch.tensor([[2, 5, 6, 5, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).memories, model(ids).memories, rtol=0, atol=0)
    assert tok("a b")["input_ids"] == [2, 5, 6, 3]


def test_checkpoint_files_follow_the_umask(tmp_path):
    """Every file of a checkpoint gets the mode open() would give it (safetensors alone writes 0o600)."""
    import os

    from transformers import BertTokenizerFast
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n")
    old = os.umask(0o027)
    try:
        save_checkpoint(tiny_model(layers=2), BertTokenizerFast(vocab_file=str(vocab)), tmp_path / "ckpt")
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "ckpt").iterdir()}
    assert modes["model.safetensors"] == 0o640 and set(modes.values()) == {0o640}, modes


def research_state(model) -> dict[str, torch.Tensor]:
    """The model's weights under the research code's key names (docs/design.md 3), plus its untrained exit L."""
    last = model.mpee.num_layers - 1
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("bert."):
            out[key] = value
        elif key.startswith(f"exits.{last}.pooler."):
            out["bert.pooler.dense." + key.rsplit(".", 1)[1]] = value
        elif key.startswith(f"exits.{last}.classifier."):
            out["classifier." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("exits."):
            i, rest = key.split(".", 2)[1:]
            rest = rest.replace("pooler.", "pooler.dense.")
            out[f"bert.encoder.EElayer.{i}.{rest}"] = value
        elif key.startswith("teacher.pre."):
            out["loss_fct.atten.pre_pooling_linear." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("teacher.score."):
            out["loss_fct.atten.pooling_linear." + key.rsplit(".", 1)[1]] = value
    out[f"bert.encoder.EElayer.{last}.pooler.dense.weight"] = torch.randn(32, 32)   # never trained
    out[f"bert.encoder.EElayer.{last}.pooler.dense.bias"] = torch.randn(32)
    out[f"bert.encoder.EElayer.{last}.classifier.weight"] = torch.randn(2, 32)
    out[f"bert.encoder.EElayer.{last}.classifier.bias"] = torch.randn(2)
    return {k: v for k, v in out.items() if not k.endswith("position_ids")}


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_convert_research_checkpoint(tiny_backbone, tmp_path, fmt):
    model = tiny_model(layers=3, beta_schedule="research", keep_ratio=0.7)
    src = tmp_path / "research"
    src.mkdir()
    state = research_state(model)
    if fmt == "bin":
        torch.save(state, src / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(src / "model.safetensors"))
    model.config.to_json_file(str(src / "config.json"))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (src / name).write_bytes((tiny_backbone / name).read_bytes())
    result = CliRunner().invoke(convert, [str(src), str(tmp_path / "ckpt"), "--task", "sst2"])
    assert result.exit_code == 0, result.output
    converted, _ = load_checkpoint(tmp_path / "ckpt")
    ids = torch.randint(5, 40, (1, 12))
    ids[0, 0] = 2
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).memories, model(ids).memories, rtol=0, atol=0)
    assert converted.mpee.betas[:4] == [1.0, 1.0, 1.0] and converted.mpee.labels == ["0", "1"]
    assert converted.mpee.exit_pooling == "cls" and converted.mpee.scoring == "cls"   # the research code's heads


def test_convert_refuses_plain_bert(tiny_backbone, tmp_path):
    result = CliRunner().invoke(convert, [str(tiny_backbone), str(tmp_path / "out")])
    assert result.exit_code == 2 and "EElayer" in result.output
    assert not (tmp_path / "out").exists()


def test_train_and_eval_cli(sst_dir, tiny_backbone, tmp_path):
    runner = CliRunner()
    ckpt = tmp_path / "ckpt"
    res = runner.invoke(train, ["--task", "sst2", "--data", str(sst_dir), "--backbone", str(tiny_backbone),
                                "--out", str(ckpt), "--batch-size", "8", "--lr", "1e-3", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    js, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    res = runner.invoke(evaluate, [str(ckpt), "--data", str(sst_dir / "SST-2"), "--threshold", "0.3",
                                   "--keep-ratio", "0.5", "--json", str(js), "--predictions", str(preds)])
    assert res.exit_code == 0, res.output
    doc = json.loads(js.read_text())
    (out,) = doc["rows"]
    # the table shows the task's metric once: accuracy (an F1 task: test_own_data)
    lines = res.output.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("row")))
    assert lines[header].split() == ["row", "policy", "F", "r", "accuracy", "exit", "rho", "rho128"]
    assert lines[header + 3].split()[4] == f"{100 * out['accuracy']:.2f}"   # header, rule, full model, this row
    for key in ("metric", "accuracy", "mean_exit_layer", "exit_layer_histogram", "mean_tokens_per_layer",
                "rho", "rho_pad128", "flops_convention"):
        assert key in out
    assert out["kind"] == "mpee" and out["metric_name"] == "accuracy" and out["metric"] == out["accuracy"]
    assert sum(out["exit_layer_histogram"].values()) == out["n"] == 10
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(10))
    hist = {str(k): sum(1 for x in lines if x["exit_layer"] == k) for k in (1, 2, 3)}
    assert hist == out["exit_layer_histogram"]
    assert doc["full_model"]["mean_exit_layer"] == 3 and doc["full_model"]["rho"] < 1
    plot = tmp_path / "tradeoff.png"
    res = runner.invoke(evaluate, [str(ckpt), "--data", str(sst_dir), "--sweep", "--thresholds", "0,0.7",
                                   "--keep-ratios", "0.5,1", "--json", str(js), "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    assert plot.read_bytes()[:4] == b"\x89PNG"
    rows = json.loads(js.read_text())["rows"]
    exits = [r for r in rows if r["kind"] != "static"]
    assert [(r["keep_ratio"], r["threshold"]) for r in exits] == [(0.5, 0), (0.5, 0.7), (1.0, 0), (1.0, 0.7)]
    # threshold 0.7 > log 2: every sample stops at layer 1
    assert exits[1]["mean_exit_layer"] == 1 and exits[1]["rho"] > 2.5
    # static depth: exit k for every sample, at each keep ratio; k = 1 is exactly the all-exit-at-1 point
    static = [r for r in rows if r["kind"] == "static"]
    assert [(r["keep_ratio"], r["threshold"], r["mean_exit_layer"]) for r in static] == [
        (ratio, k, k) for ratio in (0.5, 1.0) for k in (1, 2, 3)]
    assert static[0]["rho"] == exits[1]["rho"] and static[0]["metric"] == exits[1]["metric"]
    assert static[0]["rho"] > static[1]["rho"] > static[2]["rho"]


def _bad(runner, cmd, args, tmp_path):
    res = runner.invoke(cmd, args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and res.output.startswith("Error"), res.output
    return res.output


def test_exit_pooling_default_follows_the_backbone(sst_dir, tiny_backbone, tmp_path):
    """No --exit-pooling: a sentence-transformers folder's declared pooling, else cls; the choice is printed."""
    runner = CliRunner()
    base = ["--task", "sst2", "--data", str(sst_dir), "--batch-size", "8", "--max-steps", "1"]

    def trained_with(backbone, out, *extra):
        res = runner.invoke(train, [*base, "--backbone", str(backbone), "--out", str(tmp_path / out), *extra])
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / out / "config.json").read_text())["mpee"], res.output

    mpee, output = trained_with(tiny_backbone, "plain")
    assert mpee["exit_pooling"] == "cls" and "exit pooling: cls (the backbone declares no pooling)" in output
    (tiny_backbone / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tiny_backbone / "1_Pooling").mkdir()
    (tiny_backbone / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    mpee, output = trained_with(tiny_backbone, "st")
    assert mpee["exit_pooling"] == "mean" and "exit pooling: mean (declared by" in output
    mpee, _ = trained_with(tiny_backbone, "given", "--exit-pooling", "cls", "--scoring", "all")
    assert (mpee["exit_pooling"], mpee["scoring"]) == ("cls", "all")


def test_bad_input_exits_2_and_writes_nothing(sst_dir, tiny_backbone, tmp_path):
    runner = CliRunner()
    out = tmp_path / "never"
    base = ["--task", "sst2", "--data", str(sst_dir), "--out", str(out)]
    assert "backbone" in _bad(runner, train, base + ["--backbone", str(tmp_path / "nope")], tmp_path)
    assert "unknown task" in _bad(runner, train, ["--task", "cola", "--data", str(sst_dir),
                                                  "--backbone", str(tiny_backbone), "--out", str(out)], tmp_path)
    assert "keep ratio" in _bad(runner, train, base + ["--backbone", str(tiny_backbone), "--keep-ratio", "1.5"],
                                tmp_path)
    assert "GLUE" in _bad(runner, train, ["--task", "sst2", "--data", str(tmp_path / "empty"),
                                          "--backbone", str(tiny_backbone), "--out", str(out)], tmp_path)
    assert not out.exists()
    # a checkpoint without the mpee block (a plain BERT folder), bad threshold and keep ratio
    js = tmp_path / "e.json"
    assert "mpee" in _bad(runner, evaluate, [str(tiny_backbone), "--data", str(sst_dir), "--json", str(js)],
                          tmp_path)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model(layers=3), _tokenizer(tiny_backbone), ckpt)
    assert "threshold" in _bad(runner, evaluate, [str(ckpt), "--data", str(sst_dir), "--threshold", "-1",
                                                  "--json", str(js)], tmp_path)
    for r in ("0", "1.01"):
        assert "keep ratio" in _bad(runner, evaluate, [str(ckpt), "--data", str(sst_dir), "--keep-ratio", r,
                                                       "--json", str(js)], tmp_path)
    assert "unknown task" in _bad(runner, evaluate, [str(ckpt), "--data", str(sst_dir), "--task", "xx",
                                                     "--json", str(js)], tmp_path)
    assert not js.exists()


def _tokenizer(folder):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))


def test_ablation_flags_set_the_config(sst_dir, tiny_backbone, tmp_path):
    """Each --no-* flag of mpee-train applies its config.ABLATIONS overrides (the table ablations.py uses)."""
    from mpee_export.model.config import ABLATIONS
    out = tmp_path / "ablated"
    flags = ["--" + name.replace("_", "-") for name in ABLATIONS]
    res = CliRunner().invoke(train, ["--task", "sst2", "--data", str(sst_dir), "--backbone", str(tiny_backbone),
                                     "--out", str(out), "--batch-size", "8", "--max-steps", "1",
                                     "--beta", "0.3", "--beta-schedule", "research", *flags])
    assert res.exit_code == 0, res.output
    mpee = json.loads((out / "config.json").read_text())["mpee"]
    assert mpee["betas"] == [1.0, 1.0, 1.0] and mpee["lam"] == 1.0 and mpee["prune_layers"] == []
    assert (mpee["self_distill"], mpee["fuse_token"], mpee["layer_exit"]) == (False, False, False)
