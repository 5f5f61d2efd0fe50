"""mpee_export: MPEE on Hugging Face BERT (model, training, evaluation) and its export to ONNX bundles.

The public API (everything else may move between versions):

    from mpee_export import MpeeModel, load_checkpoint, export_bundle, ExportOptions
    model, tokenizer = load_checkpoint("ckpt/")                  # eval-mode MpeeModel and its tokenizer
    record = export_bundle(model, tokenizer, "bundle/", ExportOptions(quantize="int8"))
    print(record.describe())                                     # the fp32 verdict and the int8 report

    from mpee_export import TrainArgs, train, MpeeConfig, save_checkpoint, validate_bundle, export_reference

Names are imported on first use, so `import mpee_export` costs nothing (no torch) and the command-line entry
points load only what they run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the module that defines it (its one home)
_PUBLIC = {
    "MpeeConfig": "mpee_export.model.config",
    "MpeeModel": "mpee_export.model.modeling",
    "load_checkpoint": "mpee_export.model.checkpoint",
    "save_checkpoint": "mpee_export.model.checkpoint",
    "TrainArgs": "mpee_export.training.loop",
    "train": "mpee_export.training.loop",
    "ExportOptions": "mpee_export.export.bundle",
    "export_bundle": "mpee_export.export.bundle",
    "validate_bundle": "mpee_export.export.validate",
    "export_reference": "mpee_export.baselines.reference",
    "MpeeExportError": "mpee_export.errors",
}
__all__ = [
    "ExportOptions",
    "MpeeConfig",
    "MpeeExportError",
    "MpeeModel",
    "TrainArgs",
    "__version__",
    "export_bundle",
    "export_reference",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "validate_bundle",
]

if TYPE_CHECKING:
    from .baselines.reference import export_reference
    from .errors import MpeeExportError
    from .export.bundle import ExportOptions, export_bundle
    from .export.validate import validate_bundle
    from .model.checkpoint import load_checkpoint, save_checkpoint
    from .model.config import MpeeConfig
    from .model.modeling import MpeeModel
    from .training.loop import TrainArgs, train


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mpee_export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
