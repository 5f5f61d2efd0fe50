"""Data-parallel (torchrun, gloo), gradient accumulation and mixed precision, on CPU with tiny backbones.

Comparing 1 process with 2 cannot be bit-exact: each rank runs the forward pass on its own slice of
the global batch (other matrix shapes, other padding width) and the gradients are summed in another
order, so they differ from the single-process ones in the last bits (about 1e-7 relative). AdamW divides
each gradient by its running RMS, which amplifies such differences where a gradient is tiny; over the
7 steps here they stay below 1e-5 (measured), so weights are compared with atol 1e-4. Weighting the
slices wrongly (a plain average of uneven slice means) moves weights by about 5e-3 over the same steps.
teacher.score.bias is left out: its gradient is zero in exact arithmetic (the bias cancels in the
softmax over exits), so what AdamW does with it is rounding noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file
from tiny import tiny_bert_config

from mpee_export.cli.train import train as train_cli
from mpee_export.data.datasets import glue_source
from mpee_export.data.glue import get_task
from mpee_export.errors import MpeeExportError
from mpee_export.training.distributed import weighted_micro_batches
from mpee_export.training.loop import TrainArgs, mpee_config
from mpee_export.training.loop import train as run_training

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
ATOL = 1e-4
NOISE_ONLY = {"teacher.score.bias"}
POS = ["the movie is great", "a fun film", "very good acting", "great plot and fun", "it was good"]
NEG = ["the movie is awful", "a boring film", "very bad acting", "awful plot and boring", "it was bad"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for s in POS + NEG for w in s.split()})
# 43 rows in batches of 7: six full batches (sliced 4 + 3 over 2 ranks) and one of a single example
# (rank 1 gets nothing), so the uneven and empty slices are exercised every epoch.
N_TRAIN, BATCH = 43, 7


@pytest.fixture(scope="module")
def sst_data(tmp_path_factory) -> Path:
    """A synthetic SST-2 folder (GLUE layout) with N_TRAIN training rows."""
    folder = tmp_path_factory.mktemp("data") / "glue" / "SST-2"
    folder.mkdir(parents=True)
    rows = [(s, 1) for s in POS] + [(s, 0) for s in NEG]
    train_rows = (rows * 5)[:N_TRAIN]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in train_rows))
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))
    return folder.parent


@pytest.fixture(scope="module")
def nodrop_backbone(tmp_path_factory) -> Path:
    """A tiny random BERT without dropout: 1 and 2 processes can then draw no different random masks."""
    from transformers import BertModel, BertTokenizerFast
    folder = tmp_path_factory.mktemp("backbone")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    torch.manual_seed(0)
    config = tiny_bert_config(3, vocab_size=len(WORDS), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(str(folder))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    return folder


def _args(data: Path, backbone: Path, out: Path, **kw) -> TrainArgs:
    return TrainArgs(data=glue_source(data, "sst2"), backbone=backbone, out=out, mpee=mpee_config(backbone, get_task("sst2")),
                     batch_size=BATCH, lr=1e-3, seed=3, device="cpu", **kw)


def _cli_args(data: Path, backbone: Path, out: Path, *extra: str) -> list[str]:
    return ["--task", "sst2", "--data", str(data), "--backbone", str(backbone), "--out", str(out),
            "--batch-size", str(BATCH), "--lr", "1e-3", "--seed", "3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def one_process(sst_data, nodrop_backbone, tmp_path_factory) -> Path:
    """The reference: one process, whole batches, fp32."""
    out = tmp_path_factory.mktemp("ref") / "ckpt"
    run_training(_args(sst_data, nodrop_backbone, out), log=lambda m: None)
    return out


def torchrun(args: list[str], tmp: Path, nproc: int = 2) -> str:
    """`torchrun --standalone --nproc_per_node N -m mpee_export.cli train ARGS`; returns its output.

    One thread per rank, so that 2 ranks on 2 cores do not fight; TMPDIR keeps torchrun's log folders
    in the test's temporary folder.
    """
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmp)}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), "-m", "mpee_export.cli", "train", *args]
    res = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-4000:]
    return output


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_update(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in sorted(wa.keys() - NOISE_ONLY):
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=ATOL, msg=lambda m, k=key: f"{k}: {m}")


def rank0_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


@pytest.mark.integration
def test_two_processes_match_one_process(sst_data, nodrop_backbone, one_process, tmp_path):
    out = tmp_path / "ddp"
    log = torchrun(_cli_args(sst_data, nodrop_backbone, out), tmp_path)
    assert "2 process(es)" in log
    assert_same_update(one_process, out)
    assert "train_log.json" in rank0_files(out) and "train_state" not in rank0_files(out)


def test_grad_accum_matches_whole_batches(sst_data, nodrop_backbone, one_process, tmp_path):
    out = tmp_path / "accum"
    run_training(_args(sst_data, nodrop_backbone, out, grad_accum=2), log=lambda m: None)
    assert_same_update(one_process, out)


@pytest.mark.integration
def test_grad_accum_under_two_processes(sst_data, nodrop_backbone, one_process, tmp_path):
    """Slices of 4 and 3 cut into micro-batches of 2+2 and 2+1; the single example of the last batch
    leaves rank 1 a zero-weight pass. Ranks run different numbers of micro-batches per step."""
    out = tmp_path / "ddp_accum"
    log = torchrun(_cli_args(sst_data, nodrop_backbone, out, "--grad-accum", "2"), tmp_path)
    assert "grad-accum 2" in log
    assert_same_update(one_process, out)


@pytest.mark.integration
def test_resume_under_two_processes(sst_data, tiny_backbone, tmp_path):
    """With dropout on (the conftest backbone): each step reseeds dropout from (seed, step, rank), so an
    interrupted and resumed 2-process run is bit-identical to an uninterrupted one."""
    common = ("--epochs", "2", "--save-every", "2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(_cli_args(sst_data, tiny_backbone, straight, *common), tmp_path)
    log = torchrun(_cli_args(sst_data, tiny_backbone, resumed, *common, "--max-steps", "3"), tmp_path)
    assert "stopped at step 3" in log
    assert (resumed / "train_state" / "progress.json").is_file() and "train_log.json" not in rank0_files(resumed)
    log = torchrun(_cli_args(sst_data, tiny_backbone, resumed, *common), tmp_path)
    assert "resuming" in log and "at step 3/" in log
    assert rank0_files(resumed) == rank0_files(straight)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bf16_on_cpu_saves_fp32_checkpoint(sst_data, nodrop_backbone, one_process, tmp_path):
    out = tmp_path / "bf16"
    run_training(_args(sst_data, nodrop_backbone, out, precision="bf16"), log=lambda m: None)
    w, ref = weights(out), weights(one_process)
    assert {t.dtype for t in w.values() if t.is_floating_point()} == {torch.float32}
    # autocast did run: bf16 arithmetic moves the weights away from the fp32 run
    assert any(not torch.equal(w[k], ref[k]) for k in w)
    from mpee_export.model.checkpoint import load_checkpoint
    model, _ = load_checkpoint(out)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resume_refuses_changed_precision_or_accumulation(sst_data, nodrop_backbone, tmp_path):
    out = tmp_path / "run"
    run_training(_args(sst_data, nodrop_backbone, out, max_steps=1), log=lambda m: None)
    for change, name in (({"grad_accum": 2}, "grad_accum"), ({"precision": "bf16"}, "precision")):
        with pytest.raises(MpeeExportError, match=name):
            run_training(_args(sst_data, nodrop_backbone, out, **change), log=lambda m: None)


def _bad(args: list[str]) -> str:
    res = CliRunner().invoke(train_cli, args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and res.output.startswith("Error: "), res.output
    return res.output


def test_bad_device_precision_and_batching_exit_2(sst_data, nodrop_backbone, tmp_path, monkeypatch):
    out = tmp_path / "never"
    base = _cli_args(sst_data, nodrop_backbone, out)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _bad([*base, "--device", "cuda"])
    assert "fp16" in _bad([*base, "--precision", "fp16"])
    assert "--grad-accum 8 is larger than --batch-size 7" in _bad([*base, "--grad-accum", "8"])
    # as rank 0 of a 2-process torchrun job: refused before joining the process group
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert "2 processes x --grad-accum 4" in _bad([*base, "--grad-accum", "4"])
    assert not out.exists()


@given(n=st.integers(1, 40), world=st.integers(1, 5), k=st.integers(1, 4))
def test_micro_batch_weights_give_every_example_one_nth(n, world, k):
    """Summed over ranks and micro-batches and divided by world size (DDP's average), each example's
    loss is weighted 1/n, as in one process; the examples are each used once, in order."""
    batch = list(range(100, 100 + n))
    used, per_example = [], {}
    for rank in range(world):
        for part, weight in weighted_micro_batches(batch, rank, world, k):
            if weight == 0:
                assert len(part) == 1 and n < world
                continue
            used += part
            for i in part:
                per_example[i] = weight / len(part) / world
    assert used == batch
    for w in per_example.values():
        assert w == pytest.approx(1 / n, rel=1e-12)
