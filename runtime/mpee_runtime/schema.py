"""The contracts between exporter and runtime (docs/design.md, "The bundle"): the bundle's file names,
tensor names, dummy inputs and the typed `Manifest`, the only code that reads or writes manifest.json; and
the reference folder of `mpee-export reference` (`FULL_MODELS`, `ReferenceRecord`), the full models every
speed-up is measured against. The choice lists of the model's options (scoring, selection, exit pooling,
metric, precision) and the ONNX opset are defined here once; the exporter imports them.

The exporter writes bundles with these names and the runtime reads them; nothing else spells them.
A bundle folder holds manifest.json, tokenizer.json, embeddings.onnx and layer_XX.onnx per layer.
`Manifest.load` refuses, before any session exists, an unknown schema version, a manifest whose content
differs from its integrity record (`Manifest.check_integrity`: any edit not made by `Manifest.dump`, the
exporter's publish step), a missing, mistyped or out-of-range field, a file name that is too long or holds
a non-printable character, a file that is missing, does not match its sha256 or lies outside the folder;
each refusal is one MpeeRuntimeError line naming the field or file. Every graph carries stamps
(`graph_stamp`: its role, precision, the bundle's identity and the tokenizer's sha256) that the engine
compares with the manifest when it opens the graph.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MpeeRuntimeError
from .files import write_text
from .flops import FlopsModel
from .policy import POLICIES, check_threshold

# 2: typed manifest; validation.passed; graphs stamped with their identity; flops facts read from "model".
# 3: the manifest's integrity record; export.bundle_id; graphs stamped with bundle, precision and tokenizer.
# 4: model.truncation (head, head+tail): a runtime that does not know it must not read a head+tail bundle.
# 5: batch_graphs (optional): per-layer graphs that run a padded batch row by row (`batch_layer_inputs`); the
#    embeddings graph takes any batch. Bundles of 3 and 4 have none: they run batches one row at a time.
SCHEMA_VERSION = 5
SUPPORTED_SCHEMA_VERSIONS = (3, 4, 5)
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
TRUNCATIONS = ("head", "head+tail")   # which tokens of a long text are kept (truncation.py states the rule)
# Keys of the ONNX metadata entries stamped into every graph at export (`graph_stamp`) and compared with the
# manifest when the engine opens it, so a graph file replaced by another, even with every checksum and
# digest re-computed, is refused: its role (manifest entry name: another layer's file), its precision (an
# int8 graph in an fp32 bundle), the bundle's identity (a graph of another bundle), the sha256 of the
# tokenizer it was exported with (a different tokenizer; tokenizer.json cannot carry a stamp of its own,
# because the tokenizers library refuses unknown keys).
GRAPH_ID_KEY = "mpee_graph"
PRECISION_KEY = "mpee_precision"
BUNDLE_ID_KEY = "mpee_bundle"
TOKENIZER_KEY = "mpee_tokenizer_sha256"
# The manifest's integrity record (top-level key) and how its digests are computed (`digest_of`).
INTEGRITY = "integrity"
INTEGRITY_ALGORITHM = "sha256 of canonical JSON (sorted keys, compact separators, UTF-8)"
MAX_FILE_NAME = 255               # bytes in UTF-8: the common file-system limit of one name

# Tensor names. Layer graphs take the state of the previous layer and return the next one.
INPUT_IDS, TOKEN_TYPE_IDS = "input_ids", "token_type_ids"
HIDDEN, SCORES, MEMORY, KEEP_RATIO = "hidden", "scores", "memory", "keep_ratio"
HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY = "hidden_out", "scores_out", "memory_out", "probs", "entropy"
# Batch graphs: each row's real tokens are a prefix of its padded row, `lengths` (B,) int64 long, [CLS] included.
LENGTHS, LENGTHS_OUT = "lengths", "lengths_out"
EMBEDDING_INPUTS, EMBEDDING_OUTPUTS = (INPUT_IDS, TOKEN_TYPE_IDS), (HIDDEN,)
LAYER_OUTPUTS = (HIDDEN_OUT, SCORES_OUT, MEMORY_OUT, PROBS, ENTROPY)
BATCH_LAYER_OUTPUTS = LAYER_OUTPUTS + (LENGTHS_OUT,)
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


def batch_layer_file(i: int) -> str:
    return f"layer_{i:02d}.batch.onnx"


def batch_layer_name(i: int) -> str:
    return f"batch_layer_{i:02d}"


def batch_layer_inputs(i: int, prunes: bool) -> list[str]:
    """A batch layer graph's inputs: those of `layer_inputs` with each row's real length after the hidden states."""
    names = layer_inputs(i, prunes)
    return names[:1] + [LENGTHS] + names[1:]


def dynamic_axes(names: list[str], batch: bool = False) -> dict[str, dict[int, str]]:
    """Dynamic axes for torch.onnx.export: the sequence axis of every token-shaped tensor; with `batch`, the
    batch axis of every tensor but the keep ratio too (batch-1 graphs have it fixed at 1, which their
    optimizations rely on)."""
    axes = {INPUT_IDS: {1: "seq"}, TOKEN_TYPE_IDS: {1: "seq"}, HIDDEN: {1: "seq"}, SCORES: {1: "seq_minus_1"},
            HIDDEN_OUT: {1: "seq_out"}, SCORES_OUT: {1: "seq_out_minus_1"}}
    if batch:
        axes = {n: {0: "batch"} | axes.get(n, {}) for n in (*axes, MEMORY, MEMORY_OUT, PROBS, ENTROPY, LENGTHS,
                                                              LENGTHS_OUT)}
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


def batch_dummy_feeds(names: list[str], *, hidden: int, num_labels: int, vocab_size: int,
                      lengths: tuple[int, ...] = (DUMMY_SEQ, DUMMY_SEQ - 5, DUMMY_SEQ - 9), keep_ratio: float = 0.7,
                      rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """`dummy_feeds` for a padded batch with rows of `lengths` real tokens (padding zeroed, each row's scores a
    distribution over its own positions 1..n-1): batch graphs' export tracing and parity checks."""
    rng = rng or np.random.default_rng(0)
    b, n = len(lengths), max(lengths)
    per_row = [n for n in names if n != LENGTHS]
    rows = [dummy_feeds(per_row, hidden=hidden, num_labels=num_labels, vocab_size=vocab_size, seq=m,
                        keep_ratio=keep_ratio, rng=rng) for m in lengths]
    feeds = {}
    for name in names:
        if name == KEEP_RATIO:
            feeds[name] = rows[0][name]
        elif name == LENGTHS:
            feeds[name] = np.asarray(lengths, dtype=np.int64)
        elif name == MEMORY:
            feeds[name] = np.concatenate([r[name] for r in rows])
        else:
            width = n - 1 if name == SCORES else n
            out = np.zeros((b, width) + rows[0][name].shape[2:], dtype=rows[0][name].dtype)
            for j, r in enumerate(rows):
                out[j, :r[name].shape[1]] = r[name][0]
            feeds[name] = out
    return feeds


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that its digests are computed on: sorted keys, no whitespace,
    UTF-8 (lone surrogates kept as they are, so that hashing never fails)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8",
                                                                                               "surrogatepass")


def digest_of(value: Any) -> str:
    """sha256 (hex) of a JSON value's canonical form: any change of a key, a value or a type changes it."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def graph_stamp(name: str, precision: str, bundle_id: str, tokenizer_sha256: str) -> dict[str, str]:
    """The ONNX metadata entries a graph of the bundle carries: written by the exporter, compared by the
    engine (`Manifest.graph_stamp` gives the ones the manifest expects)."""
    return {GRAPH_ID_KEY: name, PRECISION_KEY: precision, BUNDLE_ID_KEY: bundle_id,
            TOKENIZER_KEY: tokenizer_sha256}


def shown(value: Any, limit: int = 60) -> str:
    """`value` for a one-line message: its repr (control characters escaped), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


def check_file_name(name: str, where: str) -> None:
    """A file name from the manifest, checked before the file system sees it: at most MAX_FILE_NAME bytes,
    printable characters only (no NUL byte, newline or other control or format character)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_NAME:
        raise MpeeRuntimeError(f"{MANIFEST}: {where} {shown(name)} is {size} bytes long (a file name is at "
                               f"most {MAX_FILE_NAME})")
    bad = next((c for c in name if not c.isprintable()), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else f"the non-printable character {bad!r}"
        raise MpeeRuntimeError(f"{MANIFEST}: {where} {shown(name)} holds {what}")


def _sections(keys: list[str]) -> str:
    return ("section " if len(keys) == 1 else "sections ") + ", ".join(shown(k, 40) for k in keys)


_HEX64 = re.compile(r"[0-9a-f]{64}")


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

    def hex64(self, key: str) -> str:
        v = self.text(key)
        if not _HEX64.fullmatch(v):
            raise self._fail(key, "64 lowercase hex digits")
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
    truncation: str = "head"          # TRUNCATIONS; bundles written before it was recorded cut the head


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
                   task=f.text("task", optional=True),
                   truncation=f.text("truncation", choices=TRUNCATIONS, optional=True) or "head")


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
        name = f.text("file")
        check_file_name(name, f"{f.where}.file")
        return cls(name, f.hex64("sha256"))


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
    batch: bool = False            # a batch layer graph (batch_layer_inputs); written from schema 5 on

    @classmethod
    def parse(cls, f: _Fields) -> GraphEntry:
        ref = FileRef.parse(f)
        return cls(name=f.text("name"), file=ref.file, sha256=ref.sha256,
                   inputs=f.items("inputs", str, what="tensor names"), outputs=f.items("outputs", str, what="tensor names"),
                   layer=f.integer("layer", lo=0, optional=True), prunes=f.flag("prunes"),
                   precision=f.text("precision", choices=BUNDLE_PRECISIONS),
                   batch=f.flag("batch") if "batch" in f.data else False)

    def expected_io(self) -> tuple[list[str], list[str]]:
        """The inputs and outputs the contract requires of this graph."""
        if self.layer is None:
            return list(EMBEDDING_INPUTS), list(EMBEDDING_OUTPUTS)
        if self.batch:
            return batch_layer_inputs(self.layer, self.prunes), list(BATCH_LAYER_OUTPUTS)
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
    bundle_id: str                    # sha256 of the weights, export options and MPEE config; in every graph

    @classmethod
    def parse(cls, f: _Fields) -> ExportSection:
        return cls(opset=f.integer("opset", lo=OPSET), quantization=f.text("quantization", choices=("int8",),
                                                                          optional=True),
                   graph_ops=f.text("graph_ops", choices=GRAPH_OPS), untrained_exits=f.flag("untrained_exits"),
                   bundle_id=f.hex64("bundle_id"))


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
    batch_graphs: list[GraphEntry] = field(default_factory=list)   # one per layer, or none (schema 5)
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
    def supports_batches(self) -> bool:
        """Whether the bundle has batch layer graphs (`MpeeEngine.predict_batch` runs rows together)."""
        return bool(self.batch_graphs)

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

    def graph_stamp(self, entry: GraphEntry) -> dict[str, str]:
        """The metadata entries the ONNX file of `entry` must carry."""
        return graph_stamp(entry.name, entry.precision, self.export.bundle_id, self.tokenizer.sha256)

    # -------------------------------------------------------- reading and writing
    def to_dict(self) -> dict:
        return asdict(self)

    def dump(self, folder: Path) -> None:
        """Write manifest.json into `folder` (atomically), sealed: with the integrity record of its content
        (`seal`). The exporter's publish step is its one caller, so any later edit is refused."""
        data = json.loads(json.dumps(self.to_dict()))   # as the file will read back: lists, string keys
        write_text(Path(folder) / MANIFEST, json.dumps(self.seal(data), indent=1) + "\n")

    @staticmethod
    def seal(data: dict) -> dict:
        """`data` (a manifest as JSON) with its integrity record: the digest of every top-level section and
        of the whole manifest, `integrity` excluded (`digest_of`). Whoever can run this can re-seal an edited
        manifest: it protects against accidents and hand edits, signatures against deliberate changes."""
        body = {k: v for k, v in data.items() if k != INTEGRITY}
        return body | {INTEGRITY: {"algorithm": INTEGRITY_ALGORITHM,
                                   "sections": {k: digest_of(v) for k, v in sorted(body.items())},
                                   "manifest": digest_of(body)}}

    @staticmethod
    def check_integrity(data: dict) -> None:
        """Refuse, in one line naming the sections, a manifest whose content is not what `seal` recorded: a
        section edited, added or deleted, or the integrity record itself edited."""
        def refuse(what: str) -> MpeeRuntimeError:
            return MpeeRuntimeError(f"{MANIFEST}: {what} (edited after export?): re-export the bundle")

        record = data.get(INTEGRITY)
        if record is None:
            raise refuse(f"no {INTEGRITY} record, so its content cannot be checked")
        sections = record.get("sections") if isinstance(record, dict) else None
        if (not isinstance(record, dict) or set(record) != {"algorithm", "sections", "manifest"}
                or record["algorithm"] != INTEGRITY_ALGORITHM or not isinstance(sections, dict)
                or not all(isinstance(v, str) for v in sections.values())):
            raise refuse(f"the {INTEGRITY} record is not the one the exporter writes")
        body = {k: v for k, v in data.items() if k != INTEGRITY}
        changed = sorted(k for k in body.keys() & sections.keys() if digest_of(body[k]) != sections[k])
        added, deleted = sorted(body.keys() - sections.keys()), sorted(sections.keys() - body.keys())
        problems = []
        if changed:
            problems.append(f"{_sections(changed)} "
                            + ("differs from its digest" if len(changed) == 1 else "differ from their digests"))
        if added:
            problems.append(f"{_sections(added)} added (not in the {INTEGRITY} record)")
        if deleted:
            problems.append(f"{_sections(deleted)} deleted (listed in the {INTEGRITY} record)")
        if problems:
            raise refuse("; ".join(problems))
        if digest_of(body) != record["manifest"]:
            raise refuse("the whole-manifest digest differs from its content")

    def with_changes(self, **changes) -> Manifest:
        return replace(self, **changes)

    @staticmethod
    def check_version(data: dict) -> int:
        version = data.get("schema_version")
        if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
            raise MpeeRuntimeError(f"{MANIFEST}: schema_version {shown(version)} unsupported (this runtime reads "
                                   f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}; re-export the bundle)")
        return version

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Check every field's presence, type and range; refuse with the first bad field's path. (The
        integrity record is `load`'s to check: this also reads manifests built in memory.)"""
        top = _Fields(data, "manifest")
        version = cls.check_version(data)
        top.text("format", choices=(FORMAT,))
        model = ModelSection.parse(top.section("model"))
        graph_list = top.get("graphs")
        if not isinstance(graph_list, list):
            raise top._fail("graphs", "a list")
        graphs = [GraphEntry.parse(_Fields(g, f"manifest.graphs[{i}]")) for i, g in enumerate(graph_list)]
        batch_list = top.get("batch_graphs", optional=True)
        if batch_list is None:
            batch_list = []
        if not isinstance(batch_list, list):
            raise top._fail("batch_graphs", "a list")
        batch_graphs = [GraphEntry.parse(_Fields(g, f"manifest.batch_graphs[{i}]")) for i, g in enumerate(batch_list)]
        pruning = PruningSection.parse(top.section("pruning"), model.num_layers)
        task = top.section("task", optional=True)
        manifest = cls(model=model, pruning=pruning, exit=ExitSection.parse(top.section("exit")),
                       tokenizer=FileRef.parse(top.section("tokenizer")), graphs=graphs,
                       export=ExportSection.parse(top.section("export")),
                       validation=ValidationSection.parse(top.section("validation")),
                       task=None if task is None else TaskSection.parse(task),
                       flops_convention=top.text("flops_convention"), versions=top.section("versions").data,
                       schema_version=version, batch_graphs=batch_graphs)
        manifest._check_graphs()
        return manifest

    def _check_graphs(self) -> None:
        """The graph list matches the model: embeddings, then layer 0..L-1 with the contract's tensor names."""
        n = self.model.num_layers
        if len(self.graphs) != n + 1:
            raise MpeeRuntimeError(f"{MANIFEST}: {len(self.graphs)} graphs for {n} layers (expected {n + 1})")
        files = [g.file for g in self.graphs + self.batch_graphs] + [self.tokenizer.file]
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
            self._check_io(g, where)
            if g.batch:
                raise MpeeRuntimeError(f"{where} is a batch graph (those are listed in batch_graphs)")
        if self.batch_graphs and len(self.batch_graphs) != n:
            raise MpeeRuntimeError(f"{MANIFEST}: {len(self.batch_graphs)} batch graphs for {n} layers (expected {n} or none)")
        for i, g in enumerate(self.batch_graphs):
            where = f"{MANIFEST}: batch_graphs[{i}]"
            if g.layer != i or g.name != batch_layer_name(i) or not g.batch:
                raise MpeeRuntimeError(f"{where} is {g.name!r} (layer {g.layer}, batch {g.batch}), expected "
                                       f"{batch_layer_name(i)!r}")
            if g.prunes != (i in prune):
                raise MpeeRuntimeError(f"{where}.prunes is {g.prunes} but pruning.prune_layers is {sorted(prune)}")
            self._check_io(g, where)

    @staticmethod
    def _check_io(g: GraphEntry, where: str) -> None:
        inputs, outputs = g.expected_io()
        if g.inputs != inputs or g.outputs != outputs:
            raise MpeeRuntimeError(f"{where} has inputs {g.inputs} and outputs {g.outputs}, "
                                   f"expected {inputs} and {outputs}")

    @classmethod
    def load(cls, folder: Path, *, verify: bool = True) -> Manifest:
        """Read and check `folder`/manifest.json: its schema version, then its integrity record, then every
        field; with `verify`, also every file's presence and sha256."""
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
        cls.check_version(data)
        cls.check_integrity(data)
        manifest = cls.from_dict(data)
        if verify:
            manifest.verify_files(folder)
        return manifest

    def verify_files(self, folder: Path) -> None:
        """Every file named by the manifest is inside `folder`, present, and matches its sha256."""
        refs = [(self.tokenizer.file, self.tokenizer.sha256, "tokenizer")]
        refs += [(g.file, g.sha256, f"graph {g.name}") for g in self.graphs + self.batch_graphs]
        for name, digest, what in refs:
            target = self.path_of(folder, name, what)
            try:
                if not target.is_file():
                    raise MpeeRuntimeError(f"{folder}: {what} file {name} is missing")
                if sha256_of(target) != digest:
                    raise MpeeRuntimeError(f"{folder}: {what} file {name} does not match its sha256 (modified?)")
            except OSError as e:
                raise MpeeRuntimeError(f"{folder}: {what} file {name} cannot be read ({e.strerror})") from None

    @staticmethod
    def path_of(folder: Path, name: str, what: str = "file") -> Path:
        """`folder`/`name`, refused when `name` is not a valid file name (`check_file_name`, before the file
        system sees it) or points outside the bundle."""
        check_file_name(name, f"{what} file name")
        folder = Path(folder)
        try:
            path = (folder / name).resolve()
            inside = folder.resolve() in path.parents
        except (OSError, RuntimeError) as e:   # a symlink loop; RuntimeError before Python 3.13
            raise MpeeRuntimeError(f"{MANIFEST}: {what} path {shown(name)} cannot be resolved ({e})"[:300]) from None
        if Path(name).is_absolute() or not inside:
            raise MpeeRuntimeError(f"{MANIFEST}: {what} path {shown(name)} points outside the bundle")
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
