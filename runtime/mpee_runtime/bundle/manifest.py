"""The typed `Manifest`, the only code that reads or writes manifest.json (docs/design.md, "The bundle").

`Manifest.load` refuses, before any session exists, an unknown schema version, a manifest whose content
differs from its integrity record (`integrity.check_integrity`: any edit not made by `Manifest.dump`, the
exporter's publish step), a missing, mistyped or out-of-range field, a file name that is too long or holds
a non-printable character, a file that is missing, does not match its sha256 or lies outside the folder;
each refusal is one MpeeRuntimeError line naming the field or file. Every graph carries stamps
(`contract.graph_stamp`: its role, precision, the bundle's identity and the tokenizer's sha256) that the
engine compares with the manifest when it opens the graph.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.flops import FlopsModel
from ..core.policy import POLICIES, check_threshold
from ..errors import MpeeRuntimeError, shown
from ..files import write_text
from .contract import (
    BERT_PAD_ID,
    BUNDLE_PRECISIONS,
    EMBEDDING_INPUT_SETS,
    EMBEDDING_OUTPUTS,
    EXIT_POOLINGS,
    FORMAT,
    GRAPH_OPS,
    MANIFEST,
    METRICS,
    OPSET,
    SCHEMA_VERSION,
    SCORINGS,
    SELECTIONS,
    SINGLE_GRAPH_NAME,
    SINGLE_GRAPH_OUTPUTS,
    SUPPORTED_SCHEMA_VERSIONS,
    TRUNCATIONS,
    batch_layer_inputs,
    batch_layer_name,
    batch_layer_outputs,
    check_file_name,
    graph_stamp,
    layer_inputs,
    layer_name,
    layer_outputs,
    single_graph_inputs,
)
from .fields import Fields
from .integrity import check_integrity, seal, sha256_of


# ---------------------------------------------------------------- sections
@dataclass(frozen=True)
class SpecialTokens:
    """The tokenizer's special token ids the model was exported with: the first token ([CLS] / <s>), the separator,
    and the pad id that padded rows are filled with (masked out; families such as RoBERTa count positions
    over the tokens that are not padding, so it must be this id)."""

    cls: int
    sep: int
    pad: int

    @classmethod
    def parse(cls, f: Fields, vocab_size: int) -> SpecialTokens:
        hi = vocab_size - 1
        return cls(cls=f.integer("cls", lo=0, hi=hi), sep=f.integer("sep", lo=0, hi=hi), pad=f.integer("pad", lo=0, hi=hi))


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
    family: str = "bert"              # the encoder's model_type (schema 6); informative: the graphs say the rest
    special_tokens: SpecialTokens | None = None   # schema 6; None before (BERT: [PAD] = 0)
    # schema 7: the layer graphs carry each token's original position (a relative position bias: MPNet)
    relative_positions: bool = False

    @property
    def pad_token_id(self) -> int:
        return BERT_PAD_ID if self.special_tokens is None else self.special_tokens.pad

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def parse(cls, f: Fields, version: int = SCHEMA_VERSION) -> ModelSection:
        labels = f.items("labels", str, what="label strings")
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
            raise f.fail("labels", "at least 2 distinct non-empty label strings")
        vocab_size = f.integer("vocab_size", lo=1)
        family, special, relative = "bert", None, False
        if version >= 6:
            family = f.text("family")
            special = SpecialTokens.parse(f.section("special_tokens"), vocab_size)
        if version >= 7:
            relative = f.flag("relative_positions")
        return cls(num_layers=f.integer("num_layers", lo=1), hidden_size=f.integer("hidden_size", lo=1),
                   intermediate_size=f.integer("intermediate_size", lo=1), num_heads=f.integer("num_heads", lo=1),
                   labels=labels, max_length=f.integer("max_length", lo=2), vocab_size=vocab_size,
                   task=f.text("task", optional=True),
                   truncation=f.text("truncation", choices=TRUNCATIONS, optional=True) or "head",
                   family=family, special_tokens=special, relative_positions=relative)


@dataclass(frozen=True)
class TaskSection:
    """How to read the task's GLUE files and score predictions: column names and the headline metric."""

    name: str
    text_a: str
    label_column: str
    metric: str
    text_b: str | None = None

    @classmethod
    def parse(cls, f: Fields) -> TaskSection:
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
    def parse(cls, f: Fields, num_layers: int) -> PruningSection:
        layers = f.items("prune_layers", int, what="layer indices")
        if sorted(set(layers)) != layers or any(not 0 <= i < num_layers for i in layers):
            raise f.fail("prune_layers", f"increasing distinct layer indices in 0..{num_layers - 1}")
        ratios = f.items("keep_ratios", (int, float), what="numbers")
        if len(ratios) != len(layers) or not all(0 < r <= 1 for r in ratios):
            raise f.fail("keep_ratios", f"{len(layers)} keep ratios in (0, 1], one per pruning layer")
        betas = f.items("betas", (int, float), what="numbers")
        if len(betas) != num_layers or not all(0 < b <= 1 for b in betas):
            raise f.fail("betas", f"{num_layers} numbers in (0, 1], one per layer")
        return cls(prune_layers=layers, keep_ratios=[float(r) for r in ratios],
                   scoring=f.text("scoring", choices=SCORINGS), prune_select=f.text("prune_select", choices=SELECTIONS),
                   fuse_token=f.flag("fuse_token"), betas=[float(b) for b in betas],
                   lam=f.number("lam", lo=0, hi=1, lo_open=True))


MAX_LENGTH_POINTS = 16


def _threshold(f: Fields, key: str, policy: str) -> float:
    """A threshold valid for `policy` (core.policy.check_threshold), refused naming its field."""
    threshold = f.number(key, lo=0, hi=math.inf)
    try:
        check_threshold(policy, threshold)
    except MpeeRuntimeError as e:
        raise MpeeRuntimeError(f"{MANIFEST}: {f.where}.{key}: {e}") from None
    return threshold


@dataclass(frozen=True)
class LengthPoint:
    """The operating point of the texts of at most `max_tokens` tokens (special tokens included; None: every
    longer text): the default policy's threshold and the keep ratio of every pruning layer (None: the bundle's
    `pruning.keep_ratios`)."""

    max_tokens: int | None
    threshold: float
    keep_ratio: float | None = None

    @classmethod
    def parse(cls, f: Fields, policy: str) -> LengthPoint:
        max_tokens = f.integer("max_tokens", lo=1, optional=True)
        threshold = _threshold(f, "threshold", policy)
        ratio = f.get("keep_ratio", optional=True)
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
            raise f.fail("keep_ratio", "null or a number in (0, 1]")
        return cls(max_tokens, float(threshold), None if ratio is None else float(ratio))


@dataclass(frozen=True)
class ExitSection:
    default_policy: str
    default_threshold: float
    layer_exit: bool                  # False: the model has one exit, at the last layer
    pooling: str = "cls"              # exit head input, computed inside the layer graphs: [CLS] or token mean
    calibration: dict | None = None   # how the default threshold was chosen, when it was
    # Schema 9: length-aware operating points (`mpee-export --calibrate --length-buckets`), by increasing
    # max_tokens, the last for every longer text. A run that sets no knob (or only the default policy) applies
    # the row of each text's token count instead of the default threshold and keep ratios.
    length_points: list[LengthPoint] | None = None

    @classmethod
    def parse(cls, f: Fields, version: int = SCHEMA_VERSION) -> ExitSection:
        pooling = f.text("pooling", choices=EXIT_POOLINGS)
        policy = f.text("default_policy", choices=POLICIES)
        threshold = _threshold(f, "default_threshold", policy)
        calibration = f.section("calibration", optional=True)
        points = f.get("length_points", optional=True) if version >= 9 else None
        if points is not None:
            if not isinstance(points, list) or not 1 <= len(points) <= MAX_LENGTH_POINTS:
                raise f.fail("length_points", f"null or a list of 1 to {MAX_LENGTH_POINTS} points")
            points = [LengthPoint.parse(Fields(p, f"{f.where}.length_points[{i}]"), policy)
                      for i, p in enumerate(points)]
            edges = [p.max_tokens for p in points]
            if edges[-1] is not None or None in edges[:-1] or edges[:-1] != sorted(set(edges[:-1])):
                raise f.fail("length_points", "points by increasing max_tokens, the last with max_tokens null")
        return cls(policy, threshold, f.flag("layer_exit"), pooling,
                   None if calibration is None else calibration.data, points)

    def point_for(self, tokens: int) -> LengthPoint | None:
        """The length point of a text of `tokens` tokens, or None when the bundle has none."""
        if not self.length_points:
            return None
        return next(p for p in self.length_points if p.max_tokens is None or tokens <= p.max_tokens)


@dataclass(frozen=True)
class FileRef:
    file: str
    sha256: str

    @classmethod
    def parse(cls, f: Fields) -> FileRef:
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
    def parse(cls, f: Fields) -> GraphEntry:
        ref = FileRef.parse(f)
        return cls(name=f.text("name"), file=ref.file, sha256=ref.sha256,
                   inputs=f.items("inputs", str, what="tensor names"), outputs=f.items("outputs", str, what="tensor names"),
                   layer=f.integer("layer", lo=0, optional=True), prunes=f.flag("prunes"),
                   precision=f.text("precision", choices=BUNDLE_PRECISIONS),
                   batch=f.flag("batch") if "batch" in f.data else False)

    def expected_io(self, positions: bool = False) -> tuple[list[str], list[str]]:
        """The inputs and outputs the contract requires of this graph (the embeddings graph: the input set it
        records, when it is one of the contract's); `positions`: the model carries token positions."""
        if self.layer is None:
            inputs = next((list(s) for s in EMBEDDING_INPUT_SETS if list(s) == self.inputs), EMBEDDING_INPUT_SETS[0])
            return list(inputs), list(EMBEDDING_OUTPUTS)
        if self.batch:
            return batch_layer_inputs(self.layer, self.prunes, positions), batch_layer_outputs(positions)
        return layer_inputs(self.layer, self.prunes, positions), layer_outputs(positions)


@dataclass(frozen=True)
class ExportSection:
    opset: int
    quantization: str | None       # None or "int8"
    graph_ops: str                    # one of GRAPH_OPS: the operators the layer graphs use
    untrained_exits: bool             # exported from a plain BERT with random exit heads
    bundle_id: str                    # sha256 of the weights, export options and MPEE config; in every graph

    @classmethod
    def parse(cls, f: Fields) -> ExportSection:
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
    def parse(cls, f: Fields) -> ValidationSection:
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
    single_graph: GraphEntry | None = None    # mpee.onnx, when the export wrote it (schema 8)
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
    def all_graphs(self) -> list[GraphEntry]:
        """Every graph file of the bundle: the chain's, the batch graphs and the single graph."""
        return self.graphs + self.batch_graphs + ([self.single_graph] if self.single_graph else [])

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
        write_text(Path(folder) / MANIFEST, json.dumps(seal(data), indent=1) + "\n")

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
        top = Fields(data, "manifest")
        version = cls.check_version(data)
        top.text("format", choices=(FORMAT,))
        model = ModelSection.parse(top.section("model"), version)
        graph_list = top.get("graphs")
        if not isinstance(graph_list, list):
            raise top.fail("graphs", "a list")
        graphs = [GraphEntry.parse(Fields(g, f"manifest.graphs[{i}]")) for i, g in enumerate(graph_list)]
        batch_list = top.get("batch_graphs", optional=True)
        if batch_list is None:
            batch_list = []
        if not isinstance(batch_list, list):
            raise top.fail("batch_graphs", "a list")
        batch_graphs = [GraphEntry.parse(Fields(g, f"manifest.batch_graphs[{i}]")) for i, g in enumerate(batch_list)]
        single = top.section("single_graph", optional=True) if version >= 8 else None
        pruning = PruningSection.parse(top.section("pruning"), model.num_layers)
        task = top.section("task", optional=True)
        manifest = cls(model=model, pruning=pruning, exit=ExitSection.parse(top.section("exit"), version),
                       tokenizer=FileRef.parse(top.section("tokenizer")), graphs=graphs,
                       export=ExportSection.parse(top.section("export")),
                       validation=ValidationSection.parse(top.section("validation")),
                       task=None if task is None else TaskSection.parse(task),
                       flops_convention=top.text("flops_convention"), versions=top.section("versions").data,
                       schema_version=version, batch_graphs=batch_graphs,
                       single_graph=None if single is None else GraphEntry.parse(single))
        manifest._check_graphs()
        return manifest

    def _check_graphs(self) -> None:
        """The graph list matches the model: embeddings, then layer 0..L-1 with the contract's tensor names."""
        n = self.model.num_layers
        if len(self.graphs) != n + 1:
            raise MpeeRuntimeError(f"{MANIFEST}: {len(self.graphs)} graphs for {n} layers (expected {n + 1})")
        files = [g.file for g in self.all_graphs] + [self.tokenizer.file]
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
            self._check_io(g, where, self.model.relative_positions)
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
            self._check_io(g, where, self.model.relative_positions)
        g = self.single_graph
        if g is not None:
            where = f"{MANIFEST}: single_graph"
            if g.name != SINGLE_GRAPH_NAME or g.layer is not None or g.batch or g.prunes:
                raise MpeeRuntimeError(f"{where} is {g.name!r} (layer {g.layer}, batch {g.batch}, prunes {g.prunes}), "
                                       f"expected {SINGLE_GRAPH_NAME!r} with no layer")
            inputs = single_graph_inputs(self.graphs[0].inputs, bool(self.pruning.prune_layers))
            if g.inputs != inputs or g.outputs != list(SINGLE_GRAPH_OUTPUTS):
                raise MpeeRuntimeError(f"{where} has inputs {g.inputs} and outputs {g.outputs}, "
                                       f"expected {inputs} and {list(SINGLE_GRAPH_OUTPUTS)}")

    @staticmethod
    def _check_io(g: GraphEntry, where: str, positions: bool) -> None:
        inputs, outputs = g.expected_io(positions)
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
        check_integrity(data)
        manifest = cls.from_dict(data)
        if verify:
            manifest.verify_files(folder)
        return manifest

    def verify_files(self, folder: Path) -> None:
        """Every file named by the manifest is inside `folder`, present, and matches its sha256."""
        refs = [(self.tokenizer.file, self.tokenizer.sha256, "tokenizer")]
        refs += [(g.file, g.sha256, f"graph {g.name}") for g in self.all_graphs]
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


def load_manifest(bundle: str | Path, *, verify: bool = True) -> Manifest:
    """The manifest of the bundle folder `bundle`, checked (`Manifest.load`): its schema version, integrity
    record and fields, and with `verify` every file's sha256."""
    return Manifest.load(Path(bundle), verify=verify)
