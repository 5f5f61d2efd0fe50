"""What a measuring pass leaves in OUT, with its one reader and writer each: one `RequestRow` per timed request
(rows.jsonl, rows_pytorch.jsonl) and the `RunRecord` (run.json, run_pytorch.json); `inputs_digest`, the check
that two passes measured the same token ids; `reference_export`, what REF/reference.json says about the
baselines."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.reference import REFERENCE_RECORD, ReferenceRecord
from ..errors import MpeeRuntimeError
from ..files import write_text

AA_NAMES = ("chain", "chain_aa")


# What a measuring pass leaves in OUT: the rows and the run record, for the onnxruntime pass and for PyTorch's.
ROWS, RUN = "rows.jsonl", "run.json"


PYTORCH_ROWS, PYTORCH_RUN = "rows_pytorch.jsonl", "run_pytorch.json"


RUN_SCHEMA = 1


@dataclass(frozen=True)
class RequestRow:
    """One timed request: a line of rows.jsonl."""

    variant: str
    example: int                     # index of the example in the input file (after --max-examples)
    exit_layer: int
    input_tokens: int                # the example's length in tokens
    tokens_per_layer: list[int]      # tokens entering each executed layer (len == exit_layer)
    label_index: int                 # predicted class
    flops: int
    time_us: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RequestRow:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class VariantInfo:
    """What a variant is: its name, what it runs, its precision, which part of the report it belongs to
    (`group`: the table, the sweep or the static-depth points) and its settings."""

    name: str
    description: str
    precision: str = "fp32"
    group: str = "table"             # "table", "sweep", "static" or "companion" (another model: measure.COMPANION)
    runtime: str = "onnxruntime"
    threshold: float | None = None
    keep_ratio: float | None = None
    policy: str | None = None
    path: str | None = None          # full models: the graph
    torch_threads: int | None = None  # PyTorch

    def settings(self) -> dict:
        """The settings that apply, in the order of the report's rows."""
        keys = ("threshold", "keep_ratio", "policy", "path", "torch_threads")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VariantInfo:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class RunRecord:
    """run.json (and run_pytorch.json): everything the report needs besides the rows."""

    run_id: str                      # the PyTorch pass carries the run_id of the pass it joins
    task: str
    metric_name: str
    labels: list[str]                # label strings in class-index order
    gold: list[int] | None           # the examples' gold labels (None: the input has none)
    inputs_sha256: str               # of the token ids of every example (inputs_digest)
    input: dict                      # path, columns, require_label, max_examples, max_length
    flops_model: dict                # FlopsModel's fields: rho is computed from the rows with them
    environment: dict                # env.environment(), plus cpu_before / cpu_after
    variants: list[VariantInfo]
    passes: list[dict]
    tokenize_us: list[float] = field(default_factory=list)   # per example; the onnxruntime pass only
    notes: list[str] = field(default_factory=list)
    reference_export: dict | None = None   # summary of REF/reference.json
    policy: str | None = None
    choice: dict = field(default_factory=dict)             # max_drop / budget_ms asked for
    device_warning: str | None = None
    command: list[str] = field(default_factory=list)       # the command line that measured (empty: not recorded)
    bundles: dict[str, str] = field(default_factory=dict)  # the bundle folders run, by role: fp32, int8, companion
    companion_flops_model: dict | None = None              # the companion's FlopsModel fields (--companion)
    schema: int = RUN_SCHEMA

    @property
    def examples(self) -> int:
        return len(self.gold) if self.gold is not None else self.input.get("examples", 0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["variants"] = [v.to_dict() for v in self.variants]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        if data.get("schema") != RUN_SCHEMA:
            raise MpeeRuntimeError(f"run record schema {data.get('schema')!r} unsupported (this version reads "
                                   f"{RUN_SCHEMA}; re-run the measurement)")
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        kw["variants"] = [VariantInfo.from_dict(v) for v in data["variants"]]
        return cls(**kw)

    def dump(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        if not path.is_file():
            raise MpeeRuntimeError(f"{path}: not found (no measurement in {path.parent}: run mpee-bench BUNDLE "
                                   f"--input ... --out {path.parent} first)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            raise MpeeRuntimeError(f"{path}: not a run record ({str(e)[:120]})") from None


def write_rows(path: Path, rows: Sequence[RequestRow]) -> None:
    write_text(path, "".join(json.dumps(r.to_dict()) + "\n" for r in rows))


def read_rows(path: Path) -> list[RequestRow]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(RequestRow.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                raise MpeeRuntimeError(f"{path}:{n}: not a row of mpee-bench") from None
    return rows


def inputs_digest(inputs: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 of every example's token ids and token type ids: two passes measured the same inputs iff equal."""
    h = hashlib.sha256()
    for ids, types in inputs:
        for a in (ids, types):
            a = np.ascontiguousarray(a, dtype=np.int64)
            h.update(np.asarray(a.shape, dtype=np.int64).tobytes())
            h.update(a.tobytes())
    return h.hexdigest()


def reference_export(ref: Path, notes: list[str]) -> dict | None:
    """What REF/reference.json says about the baselines (recipe, fusions), its warnings as notes."""
    if not (ref / REFERENCE_RECORD).is_file():
        notes.append(f"{ref}: no {REFERENCE_RECORD} (an older `mpee-export reference`): recipe and fusions unknown")
        return None
    rec = ReferenceRecord.load(ref)
    notes += [f"reference: {w}" for w in rec.warnings]
    return {"recipe": rec.recipe, "quantizer": rec.quantization.get("quantizer"),
            "per_channel": rec.quantization.get("settings", {}).get("per_channel"),
            "fused_nodes": rec.fusion.get("fused_nodes"), "fully_fused": rec.fusion.get("fully_fused"),
            "files": rec.files}
