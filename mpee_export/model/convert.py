"""Converter for checkpoints saved by the MPEE research code (JunKong5/MPEE, docs/design.md 3).

Key layout read: backbone `bert.embeddings.*`, `bert.encoder.layer.*`; exit heads
`bert.encoder.EElayer.{i}.pooler.dense.*` / `.classifier.*`; final head `bert.pooler.dense.*` +
`classifier.*`, which becomes exit L (the research code never trains `EElayer.{L-1}`, so it is
dropped); teacher `loss_fct.atten.pre_pooling_linear.*` (W_eta, b_eta) and
`loss_fct.atten.pooling_linear.*` (V). The converted model keeps the research code's pruning
schedule (layers 3, 6, 9 at 0.7) and beta schedule (1 for layers 1-4, then 0.5).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import MpeeExportError
from .checkpoint import CONFIG_NAME, load_config, load_state, load_tokenizer, save_checkpoint
from .config import MpeeConfig
from .modeling import MpeeModel

_RENAMES = [
    (r"^bert\.encoder\.EElayer\.(\d+)\.pooler\.dense\.", r"exits.\1.pooler."),
    (r"^bert\.encoder\.EElayer\.(\d+)\.classifier\.", r"exits.\1.classifier."),
    (r"^loss_fct\.atten\.pre_pooling_linear\.", "teacher.pre."),
    (r"^loss_fct\.atten\.pooling_linear\.", "teacher.score."),
    (r"^(bert\.(embeddings|encoder\.layer)\.)", r"\1"),
]


def read_research_state(src: Path) -> dict[str, torch.Tensor]:
    """The research checkpoint's state dict, loaded on CPU without unpickling arbitrary objects."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = src / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
        except (SafetensorError, RuntimeError, OSError, EOFError) as e:
            raise MpeeExportError(f"{path}: unreadable weights ({e.__class__.__name__})") from None
    raise MpeeExportError(f"{src} has neither model.safetensors nor pytorch_model.bin")


def convert_state(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename research-code keys to MpeeModel keys (see the module docstring)."""
    if not any(k.startswith("bert.encoder.EElayer.") for k in state):
        raise MpeeExportError("no bert.encoder.EElayer.* keys: not an MPEE research checkpoint")
    last = num_layers - 1
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(f"bert.encoder.EElayer.{last}."):
            continue  # untrained in the research code; the final head replaces it
        if key.startswith("bert.pooler.dense."):
            out[f"exits.{last}.pooler." + key.rsplit(".", 1)[1]] = value
            continue
        if key.startswith("classifier."):
            out[f"exits.{last}.{key}"] = value
            continue
        for pattern, repl in _RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
    return out


def convert_research_checkpoint(src: Path, out: Path, *, labels: list[str] | None = None,
                                task: str | None = None) -> MpeeModel:
    """Convert a research-code `save_pretrained` folder into an MPEE checkpoint folder at `out`."""
    src = Path(src)
    if not (src / CONFIG_NAME).is_file():
        raise MpeeExportError(f"{src} has no {CONFIG_NAME}")
    config = load_config(src)
    if labels is None:
        labels = [config.id2label[i] for i in range(config.num_labels)]
    mpee = MpeeConfig.build(num_layers=config.num_hidden_layers, labels=list(labels), task=task,
                            beta_schedule="research", prune_layers=[3, 6, 9] if config.num_hidden_layers == 12
                            else None, keep_ratio=0.7)
    model = MpeeModel(config, mpee)
    state = convert_state(read_research_state(src), config.num_hidden_layers)
    # Buffers the research code does not save (position_ids) keep their defaults.
    for key, value in model.state_dict().items():
        if key.endswith(("position_ids", "token_type_ids")):
            state.setdefault(key, value)
    load_state(model, state, src)
    save_checkpoint(model, load_tokenizer(src), out)
    return model.eval()
