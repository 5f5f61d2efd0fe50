"""Checkpoint folders (DESIGN 1.5): build from a backbone, save, and load with one call.

A checkpoint is a Hugging Face style folder: config.json (a BertConfig with an `mpee` block),
model.safetensors and the tokenizer files. Loading never unpickles.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .config import MpeeConfig
from .errors import MpeeExportError
from .modeling import MpeeModel

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _check_folder(path: Path, what: str, required: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise MpeeExportError(f"{what} folder not found: {path}")
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise MpeeExportError(f"{what} folder {path} has no {', '.join(missing)}")


def load_bert_config(path: Path) -> BertConfig:
    try:
        return BertConfig.from_json_file(str(path / CONFIG_NAME))
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise MpeeExportError(f"{path / CONFIG_NAME}: unreadable config ({e.__class__.__name__}: {e})") from None


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except (OSError, ValueError) as e:
        raise MpeeExportError(f"{path}: no usable tokenizer files ({e.__class__.__name__})") from None


def load_backbone_config(backbone: Path) -> BertConfig:
    """The BertConfig of a local Hugging Face BERT folder, with clear errors for anything else."""
    backbone = Path(backbone)
    _check_folder(backbone, "backbone", (CONFIG_NAME,))
    config = load_bert_config(backbone)
    if config.model_type != "bert":
        raise MpeeExportError(f"backbone {backbone} is a {config.model_type!r} model; MPEE needs BERT")
    return config


def from_backbone(backbone: Path, mpee: MpeeConfig) -> MpeeModel:
    """A fresh MPEE model on a local Hugging Face BERT folder; exit poolers copy the backbone's pooler."""
    config = load_backbone_config(backbone)
    config.num_labels = mpee.num_labels
    config.id2label = dict(enumerate(mpee.labels))
    config.label2id = {label: i for i, label in enumerate(mpee.labels)}
    model = MpeeModel(config, mpee)
    # The backbone's pooler, when it has trained weights, initialises every exit pooler.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        bert, info = BertModel.from_pretrained(str(backbone), add_pooling_layer=True,
                                               output_loading_info=True)
    except OSError as e:
        raise MpeeExportError(f"backbone {backbone}: no loadable weights ({e})") from None
    finally:
        hf_logging.set_verbosity(level)
    pooler = bert.pooler
    bert.pooler = None
    model.bert.load_state_dict(bert.state_dict())
    if not any(k.startswith("pooler.") for k in info["missing_keys"]):
        for head in model.exits:
            head.pooler.load_state_dict(pooler.dense.state_dict())
    return model


def save_checkpoint(model: MpeeModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Write the checkpoint folder atomically: a temporary folder beside `out`, renamed at the end."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = model.config
        config.mpee = model.mpee.to_dict()
        config.architectures = ["MpeeModel"]
        config.to_json_file(str(tmp / CONFIG_NAME))
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            # Replace file by file (config.json last) so that other content, such as a training
            # state, survives; each file is swapped atomically.
            names = sorted((p.name for p in tmp.iterdir()), key=lambda n: n == CONFIG_NAME)
            for name in names:
                os.replace(tmp / name, out / name)
            tmp.rmdir()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_mpee_config(path: Path) -> tuple[BertConfig, MpeeConfig]:
    path = Path(path)
    _check_folder(path, "checkpoint", (CONFIG_NAME,))
    config = load_bert_config(path)
    block = getattr(config, "mpee", None)
    if not isinstance(block, dict):
        raise MpeeExportError(
            f"{path / CONFIG_NAME} has no 'mpee' block: not an MPEE checkpoint "
            "(train one with mpee-train, or convert research-code weights with mpee-convert)")
    try:
        mpee = MpeeConfig.from_dict(block)
    except TypeError as e:
        raise MpeeExportError(f"{path / CONFIG_NAME}: bad mpee block ({e})") from None
    return config, mpee


def load_checkpoint(path: Path) -> tuple[MpeeModel, PreTrainedTokenizerBase]:
    """Load a checkpoint folder into an eval-mode model and its tokenizer."""
    path = Path(path)
    config, mpee = read_mpee_config(path)
    _check_folder(path, "checkpoint", (CONFIG_NAME, WEIGHTS_NAME))
    model = MpeeModel(config, mpee)
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError) as e:
        raise MpeeExportError(f"{path / WEIGHTS_NAME}: unreadable weights ({e})") from None
    load_state(model, state, path / WEIGHTS_NAME)
    return model.eval(), load_tokenizer(path)


def load_state(model: MpeeModel, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict with a one-line error naming what is missing, unexpected or mis-shaped."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:4]}" * bool(missing), f"unexpected {unexpected[:4]}" * bool(unexpected),
                 f"shape {shapes[:2]}" * bool(shapes)]
        raise MpeeExportError(f"{source}: weights do not match the config: {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state)

