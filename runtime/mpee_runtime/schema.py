"""The contracts between exporter and runtime (docs/design.md, "The bundle"): the bundle's file names,
tensor names, dummy inputs and the typed `Manifest`, the only code that reads or writes manifest.json; and
the reference folder of `mpee-export reference` (`FULL_MODELS`, `ReferenceRecord`), the full models every
speed-up is measured against. The choice lists of the model's options (scoring, selection, exit pooling,
metric, precision) and the ONNX opset are defined here once; the exporter imports them.

The exporter writes bundles with these names and the runtime reads them; nothing else spells them.
A bundle folder holds manifest.json, tokenizer.json, embeddings.onnx and layer_XX.onnx per layer.
`Manifest.load` refuses, before any session exists, a manifest with a missing, mistyped or out-of-range
field, an unknown schema version, a file that is missing, does not match its sha256 or lies outside the
folder; each refusal is one MpeeRuntimeError line naming the field or file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MpeeRuntimeError
from .files import write_text
from .flops import FlopsModel
from .policy import POLICIES, check_threshold

# 2: typed manifest; validation.passed; graphs stamped with their identity; flops facts read from "model".
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (2,)
FORMAT = "mpee-bundle"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
EMBEDDINGS = "embeddings.onnx"
OPSET = 17                        # the default ONNX opset of every graph, and the lowest the runtime reads
BUNDLE_PRECISIONS = ("fp32", "int8")   # of a bundle's graphs (training precisions are another list)
SCORINGS = ("cls", "all", "mean")     # token score: [CLS] query row, mean over all query rows, mean query
SELECTIONS = ("top", "bottom")        # which tokens a pruning layer keeps
METRICS = ("accuracy", "f1")          # a task's headline metric (f1: of class 1)
EXIT_POOLINGS = ("cls", "mean")       # exit head input: [CLS] vector or mean of the tokens
# Key of the ONNX metadata entry that names the graph (its manifest entry name): a layer file swapped
# for another layer's, even with re-computed checksums, is refused.
GRAPH_ID_KEY = "mpee_graph"

# Tensor names. Layer graphs take the state of the previous layer and return the next one.
INPUT_IDS, TOKEN_TYPE_IDS = "input_ids", "token_type_ids"
HIDDEN, SCORES, MEMORY, KEEP_RATIO = "hidden", "scores", "memory", "keep_ratio"
HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY = "hidden_out", "scores_out", "memory_out", "probs", "entropy"
EMBEDDING_INPUTS, EMBEDDING_OUTPUTS = (INPUT_IDS, TOKEN_TYPE_IDS), (HIDDEN,)
LAYER_OUTPUTS = (HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY)
# Which output feeds which input of the next layer.
CARRY = {HIDDEN_OUT: HIDDEN, SCORES_OUT: SCORES, MEMORY_OUT: MEMORY}
# Export dummies: a length that is neither 1 nor a model constant, so no axis is traced as fixed.
DUMMY_SEQ = 16


def layer_file(i: int) -> str:
    return f"layer_{i:02d}.onnx"


def layer_name(i: int) -> str:
    return f"layer_{i:02d}"


def layer_inputs(i: int, prunes: bool) -> list[str]:
    """Layer 0 starts both memories, so it takes only the hidden states (and the keep ratio if it prunes)."""
    names = [HIDDEN] if i == 0 else [HIDDEN, SCORES, MEMORY]
    return names + [KEEP_RATIO] if prunes else names


def dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    """Dynamic axes for torch.onnx.export: the sequence axis of every token-shaped tensor."""
    axes = {INPUT_IDS: {1: "seq"}, TOKEN_TYPE_IDS: {1: "seq"}, HIDDEN: {1: "seq"}, SCORES: {1: "seq_minus_1"},
            HIDDEN_OUT: {1: "seq_out"}, SCORES_OUT: {1: "seq_out_minus_1"}}
    return {n: axes[n] for n in names if n in axes}


def dummy_feeds(names: list[str], *, hidden: int, num_labels: int, vocab_size: int, seq: int = DUMMY_SEQ,
                keep_ratio: float = 0.7, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Random inputs (batch 1, `seq` tokens) for the graph inputs `names`: export tracing and parity checks.

    Token ids start with id 2 or 101 as a stand-in [CLS]; the second half of the tokens is segment 1;
    scores are a distribution over positions 1..seq-1, as a score memory is.
    """
    rng = rng or np.random.default_rng(0)
    ids = rng.integers(5, vocab_size, (1, seq)).astype(np.int64)
    ids[0, 0] = 101 if vocab_size > 101 else 2
    scores = rng.random((1, seq - 1)).astype(np.float32)
    values = {INPUT_IDS: ids, TOKEN_TYPE_IDS: (np.arange(seq)[None] >= seq // 2).astype(np.int64),
              HIDDEN: rng.standard_normal((1, seq, hidden)).astype(np.float32),
              SCORES: scores / scores.sum(), MEMORY: rng.standard_normal((1, num_labels)).astype(np.float32),
              KEEP_RATIO: np.asarray(keep_ratio, dtype=np.float32)}
    return {n: values[n] for n in names}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- field checks
class _Fields:
    """Typed access to one JSON object of the manifest; every refusal names the field's path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise MpeeRuntimeError(f"{MANIFEST}: {where} must be an object, got {type(data).__name__}")
        self.data, self.where = data, where

    def _fail(self, key: str, what: str) -> MpeeRuntimeError:
        shown = repr(self.data[key]) if key in self.data else "nothing"
        return MpeeRuntimeError(f"{MANIFEST}: {self.where}.{key} must be {what}, got {shown}"[:300])

    def get(self, key: str, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise MpeeRuntimeError(f"{MANIFEST}: missing field {self.where}.{key}")
        return self.data[key]

    def integer(self, key: str, *, lo: int | None = None, optional: bool = False) -> int | None:
        v = self.get(key, optional)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            raise self._fail(key, "an integer" + (f" >= {lo}" if lo is not None else ""))
        return v

    def number(self, key: str, *, lo: float, hi: float, lo_open: bool = False) -> float:
        v = self.get(key)
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > lo if lo_open else v >= lo) and v <= hi)
        if not ok:
            raise self._fail(key, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")
        return float(v)

    def flag(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self._fail(key, "true or false")
        return v

    def text(self, key: str, *, choices: tuple[str, ...] | None = None, optional: bool = False) -> str | None:
        v = self.get(key, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v or (choices is not None and v not in choices):
            raise self._fail(key, f"one of {list(choices)}" if choices else "a non-empty string")
        return v

    def items(self, key: str, item: type, *, what: str) -> list:
        v = self.get(key)
        if not isinstance(v, list) or not all(isinstance(x, item) and not isinstance(x, bool) for x in v):
            raise self._fail(key, f"a list of {what}")
        return list(v)

    def section(self, key: str, *, optional: bool = False) -> _Fields | None:
        v = self.get(key, optional)
        return None if v is None and optional else _Fields(v, f"{self.where}.{key}")


# ---------------------------------------------------------------- sections
@dataclass(frozen=True)
class ModelSection:
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    labels: list[str]                 # label strings in class-index order
    max_length: int                   # tokens, [CLS] and [SEP] included
    vocab_size: int
    task: str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def parse(cls, f: _Fields) -> ModelSection:
        labels = f.items("labels", str, what="label strings")
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
            raise f._fail("labels", "at least 2 distinct non-empty label strings")
        return cls(num_layers=f.integer("num_layers", lo=1), hidden_size=f.integer("hidden_size", lo=1),
                   intermediate_size=f.integer("intermediate_size", lo=1), num_heads=f.integer("num_heads", lo=1),
                   labels=labels, max_length=f.integer("max_length", lo=2), vocab_size=f.integer("vocab_size", lo=1),
                   task=f.text("task", optional=True))


@dataclass(frozen=True)
class TaskSection:
    """How to read the task's GLUE files and score predictions: column names and the headline metric."""

    name: str
    text_a: str
    label_column: str
    metric: str
    text_b: str | None = None

    @classmethod
    def parse(cls, f: _Fields) -> TaskSection:
        return cls(name=f.text("name"), text_a=f.text("text_a"), label_column=f.text("label_column"),
                   metric=f.text("metric", choices=METRICS), text_b=f.text("text_b", optional=True))


@dataclass(frozen=True)
class PruningSection:
    prune_layers: list[int]           # 0-based layers that prune after attention
    keep_ratios: list[float]          # default keep ratio of each pruning layer (a graph input)
    scoring: str
    prune_select: str
    fuse_token: bool
    betas: list[float]                # score memory weight per layer
    lam: float                        # classifier memory weight

    @classmethod
    def parse(cls, f: _Fields, num_layers: int) -> PruningSection:
        layers = f.items("prune_layers", int, what="layer indices")
        if sorted(set(layers)) != layers or any(not 0 <= i < num_layers for i in layers):
            raise f._fail("prune_layers", f"increasing distinct layer indices in 0..{num_layers - 1}")
        ratios = f.items("keep_ratios", (int, float), what="numbers")
        if len(ratios) != len(layers) or not all(0 < r <= 1 for r in ratios):
            raise f._fail("keep_ratios", f"{len(layers)} keep ratios in (0, 1], one per pruning layer")
        betas = f.items("betas", (int, float), what="numbers")
        if len(betas) != num_layers or not all(0 < b <= 1 for b in betas):
            raise f._fail("betas", f"{num_layers} numbers in (0, 1], one per layer")
        return cls(prune_layers=layers, keep_ratios=[float(r) for r in ratios],
                   scoring=f.text("scoring", choices=SCORINGS), prune_select=f.text("prune_select", choices=SELECTIONS),
                   fuse_token=f.flag("fuse_token"), betas=[float(b) for b in betas],
                   lam=f.number("lam", lo=0, hi=1, lo_open=True))


@dataclass(frozen=True)
class ExitSection:
    default_policy: str
    default_threshold: float
    layer_exit: bool                  # False: the model has one exit, at the last layer
    pooling: str = "cls"              # exit head input, computed inside the layer graphs: [CLS] or token mean
    calibration: dict | None = None   # how the default threshold was chosen, when it was

    @classmethod
    def parse(cls, f: _Fields) -> ExitSection:
        pooling = f.text("pooling", choices=EXIT_POOLINGS)
        policy = f.text("default_policy", choices=POLICIES)
        threshold = f.number("default_threshold", lo=0, hi=math.inf)
        try:
            check_threshold(policy, threshold)
        except MpeeRuntimeError as e:
            raise MpeeRuntimeError(f"{MANIFEST}: {f.where}.default_threshold: {e}") from None
        calibration = f.section("calibration", optional=True)
        return cls(policy, threshold, f.flag("layer_exit"), pooling,
                   None if calibration is None else calibration.data)


@dataclass(frozen=True)
class FileRef:
    file: str
    sha256: str

    @classmethod
    def parse(cls, f: _Fields) -> FileRef:
        digest = f.text("sha256")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise f._fail("sha256", "64 lowercase hex digits")
        return cls(f.text("file"), digest)


@dataclass(frozen=True)
class GraphEntry:
    name: str                         # "embeddings" or layer_name(i); also stamped inside the ONNX file
    file: str
    sha256: str
    inputs: list[str]
    outputs: list[str]
    layer: int | None = None       # None for the embeddings graph
    prunes: bool = False
    precision: str = "fp32"

    @classmethod
    def parse(cls, f: _Fields) -> GraphEntry:
        ref = FileRef.parse(f)
        return cls(name=f.text("name"), file=ref.file, sha256=ref.sha256,
                   inputs=f.items("inputs", str, what="tensor names"), outputs=f.items("outputs", str, what="tensor names"),
                   layer=f.integer("layer", lo=0, optional=True), prunes=f.flag("prunes"),
                   precision=f.text("precision", choices=BUNDLE_PRECISIONS))

    def expected_io(self) -> tuple[list[str], list[str]]:
        """The inputs and outputs the contract requires of this graph."""
        if self.layer is None:
            return list(EMBEDDING_INPUTS), list(EMBEDDING_OUTPUTS)
        return layer_inputs(self.layer, self.prunes), list(LAYER_OUTPUTS)


# "standard": ONNX-domain operators only; "fused": with onnxruntime's com.microsoft fused operators
# (Attention, SkipLayerNormalization, BiasGelu), which need onnxruntime to run.
GRAPH_OPS = ("standard", "fused")


@dataclass(frozen=True)
class ExportSection:
    opset: int
    quantization: str | None       # None or "int8"
    graph_ops: str                    # one of GRAPH_OPS: the operators the layer graphs use
    untrained_exits: bool             # exported from a plain BERT with random exit heads

    @classmethod
    def parse(cls, f: _Fields) -> ExportSection:
        return cls(opset=f.integer("opset", lo=OPSET), quantization=f.text("quantization", choices=("int8",),
                                                                          optional=True),
                   graph_ops=f.text("graph_ops", choices=GRAPH_OPS), untrained_exits=f.flag("untrained_exits"))


@dataclass(frozen=True)
class ValidationSection:
    """The export's parity verdict. `passed` is False only for bundles written with --allow-unvalidated."""

    passed: bool
    checks: dict = field(default_factory=dict)   # per precision: graph max |diff|, chain agreement, ...

    @classmethod
    def parse(cls, f: _Fields) -> ValidationSection:
        checks = f.section("checks")
        return cls(f.flag("passed"), checks.data)


@dataclass(frozen=True)
class Manifest:
    model: ModelSection
    pruning: PruningSection
    exit: ExitSection
    tokenizer: FileRef
    graphs: list[GraphEntry]
    export: ExportSection
    validation: ValidationSection
    task: TaskSection | None = None
    flops_convention: str = ""        # what the FLOPs figures count (flops.FLOPS_CONVENTION)
    versions: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT

    # -------------------------------------------------------- derived facts
    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def layers(self) -> list[GraphEntry]:
        return self.graphs[1:]

    @property
    def precision(self) -> str:
        """int8 when any layer graph is quantized."""
        return "int8" if any(g.precision == "int8" for g in self.graphs) else "fp32"

    @property
    def default_keep_ratios(self) -> dict[int, float]:
        return dict(zip(self.pruning.prune_layers, self.pruning.keep_ratios))

    def flops_model(self) -> FlopsModel:
        m = self.model
        return FlopsModel(m.hidden_size, m.intermediate_size, m.num_labels, m.num_layers)

    # -------------------------------------------------------- reading and writing
    def to_dict(self) -> dict:
        return asdict(self)

    def dump(self, folder: Path) -> None:
        """Write manifest.json into `folder` (atomically)."""
        write_text(Path(folder) / MANIFEST, json.dumps(self.to_dict(), indent=1) + "\n")

    def with_changes(self, **changes) -> Manifest:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Check every field's presence, type and range; refuse with the first bad field's path."""
        top = _Fields(data, "manifest")
        version = data.get("schema_version")
        if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
            raise MpeeRuntimeError(f"{MANIFEST}: schema_version {version!r} unsupported (this runtime reads "
                                   f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}; re-export the bundle)")
        top.text("format", choices=(FORMAT,))
        model = ModelSection.parse(top.section("model"))
        graph_list = top.get("graphs")
        if not isinstance(graph_list, list):
            raise top._fail("graphs", "a list")
        graphs = [GraphEntry.parse(_Fields(g, f"manifest.graphs[{i}]")) for i, g in enumerate(graph_list)]
        pruning = PruningSection.parse(top.section("pruning"), model.num_layers)
        task = top.section("task", optional=True)
        manifest = cls(model=model, pruning=pruning, exit=ExitSection.parse(top.section("exit")),
                       tokenizer=FileRef.parse(top.section("tokenizer")), graphs=graphs,
                       export=ExportSection.parse(top.section("export")),
                       validation=ValidationSection.parse(top.section("validation")),
                       task=None if task is None else TaskSection.parse(task),
                       flops_convention=top.text("flops_convention"), versions=top.section("versions").data,
                       schema_version=version)
        manifest._check_graphs()
        return manifest

    def _check_graphs(self) -> None:
        """The graph list matches the model: embeddings, then layer 0..L-1 with the contract's tensor names."""
        n = self.model.num_layers
        if len(self.graphs) != n + 1:
            raise MpeeRuntimeError(f"{MANIFEST}: {len(self.graphs)} graphs for {n} layers (expected {n + 1})")
        files = [g.file for g in self.graphs] + [self.tokenizer.file]
        if len(set(files)) != len(files):
            raise MpeeRuntimeError(f"{MANIFEST}: a file is listed twice ({files})")
        prune = set(self.pruning.prune_layers)
        for i, g in enumerate(self.graphs):
            want_layer, want_name = (None, "embeddings") if i == 0 else (i - 1, layer_name(i - 1))
            where = f"{MANIFEST}: graphs[{i}]"
            if g.layer != want_layer or g.name != want_name:
                raise MpeeRuntimeError(f"{where} is {g.name!r} (layer {g.layer}), expected {want_name!r}")
            if g.layer is not None and g.prunes != (g.layer in prune):
                raise MpeeRuntimeError(f"{where}.prunes is {g.prunes} but pruning.prune_layers is {sorted(prune)}")
            inputs, outputs = g.expected_io()
            if g.inputs != inputs or g.outputs != outputs:
                raise MpeeRuntimeError(f"{where} has inputs {g.inputs} and outputs {g.outputs}, "
                                       f"expected {inputs} and {outputs}")

    @classmethod
    def load(cls, folder: Path, *, verify: bool = True) -> Manifest:
        """Read and check `folder`/manifest.json; with `verify`, also every file's presence and sha256."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise MpeeRuntimeError(f"{folder}: no {MANIFEST} (not an MPEE bundle, or an unfinished export)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise MpeeRuntimeError(f"{path}: not valid JSON ({str(e)[:120]})") from None
        if not isinstance(data, dict):
            raise MpeeRuntimeError(f"{path}: not a JSON object")
        manifest = cls.from_dict(data)
        if verify:
            manifest.verify_files(folder)
        return manifest

    def verify_files(self, folder: Path) -> None:
        """Every file named by the manifest is inside `folder`, present, and matches its sha256."""
        refs = [(self.tokenizer.file, self.tokenizer.sha256, "tokenizer")]
        refs += [(g.file, g.sha256, f"graph {g.name}") for g in self.graphs]
        for name, digest, what in refs:
            target = self.path_of(folder, name, what)
            if not target.is_file():
                raise MpeeRuntimeError(f"{folder}: {what} file {name} is missing")
            if sha256_of(target) != digest:
                raise MpeeRuntimeError(f"{folder}: {what} file {name} does not match its sha256 (modified?)")

    @staticmethod
    def path_of(folder: Path, name: str, what: str = "file") -> Path:
        """`folder`/`name`, refused when `name` points outside the bundle."""
        folder = Path(folder)
        path = (folder / name).resolve()
        if Path(name).is_absolute() or folder.resolve() not in path.parents:
            raise MpeeRuntimeError(f"{MANIFEST}: {what} path {name!r} points outside the bundle")
        return path


# ---------------------------------------------------------------- the reference folder
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
        f = _Fields(data, "reference")
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
