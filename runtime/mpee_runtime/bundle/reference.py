"""The reference folder's contract: what `mpee-export reference CKPT REF` writes and mpee-bench reads, the
same fine-tuned model as users would deploy it without MPEE (docs/benchmarking.md, "Baselines"): the full
models (`FULL_MODELS`), the record of how they were made (`ReferenceRecord`, REF/reference.json) and the
PyTorch folder (REF/hf)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import MpeeRuntimeError
from ..files import write_text
from .contract import EXIT_POOLINGS, OPSET
from .fields import Fields

# What `mpee-export reference CKPT REF` writes and mpee-bench reads: the same fine-tuned model as users would
# deploy it without MPEE (docs/benchmarking.md, "Baselines").
REFERENCE_RECORD = "reference.json"
REFERENCE_HF = "hf"                   # BertForSequenceClassification + tokenizer: the PyTorch eager baseline
REFERENCE_SCHEMA = 2


@dataclass(frozen=True)
class FullModel:
    """One full-model graph of the reference folder and the benchmark variant that runs it."""

    variant: str
    file: str
    precision: str
    description: str


FULL_MODELS = (
    FullModel("onnx_full", "model.onnx", "fp32", "full model, optimum export (plain), onnxruntime"),
    FullModel("onnx_fused", "model_fused.onnx", "fp32", "full model, optimum export + onnxruntime transformer fusions"),
    FullModel("onnx_fused_int8", "model_fused_int8.onnx", "int8", "full model, fused, dynamic int8"),
)


PLAIN, FUSED, FUSED_INT8 = (m.file for m in FULL_MODELS)
QUANT_RECIPES = ("avx512_vnni", "avx512", "avx2", "arm64")   # optimum's AutoQuantizationConfig methods


@dataclass(frozen=True)
class ReferenceRecord:
    """REF/reference.json: how the full models were made (the tools' own reports) and their files."""

    exit_pooling: str
    opset: int
    fusion: dict                      # offline optimizer: fused_nodes by kind, plain_nodes, fully_fused, warning
    quantization: dict                # recipe, recipe_reason, quantizer, settings, (fallback_reason)
    files: dict                       # file name -> {"sha256", "bytes"}
    warnings: list[str]
    environment: dict
    schema: int = REFERENCE_SCHEMA

    @property
    def recipe(self) -> str | None:
        return self.quantization.get("recipe")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ReferenceRecord:
        f = Fields(data, "reference", REFERENCE_RECORD)
        if f.get("schema") != REFERENCE_SCHEMA:
            raise MpeeRuntimeError(f"{REFERENCE_RECORD}: schema {f.get('schema')!r} unsupported (this version "
                                   f"reads {REFERENCE_SCHEMA}; re-run `mpee-export reference`)")
        return cls(exit_pooling=f.text("exit_pooling", choices=EXIT_POOLINGS), opset=f.integer("opset", lo=OPSET),
                   fusion=f.section("fusion").data, quantization=f.section("quantization").data,
                   files=f.section("files").data, warnings=f.items("warnings", str, what="strings"),
                   environment=f.section("environment").data)

    def dump(self, folder: Path) -> None:
        write_text(Path(folder) / REFERENCE_RECORD, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ReferenceRecord:
        path = Path(folder) / REFERENCE_RECORD
        if not path.is_file():
            raise MpeeRuntimeError(f"{folder}: no {REFERENCE_RECORD} (not a reference folder of "
                                   "`mpee-export reference`, or an unfinished one)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise MpeeRuntimeError(f"{path}: not valid JSON ({str(e)[:120]})") from None
        return cls.from_dict(data)


