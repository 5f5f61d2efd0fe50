"""Export a checkpoint to a bundle (docs/design.md, "Export"), as a pipeline of stages:

    write graphs -> validate (validate.py) -> [quantize, validate int8] -> [single graph (single_graph.py),
    checked against the chain] -> [calibrate (calibrate.py)] -> publish

Everything happens in a hidden temporary folder beside `out/`. The manifest is built in memory, handed to
the runtime engine that validation and calibration run, and written once, last, sealed with its integrity
record (`Manifest.dump`); then the folder is renamed into place. An interrupted export leaves no folder
that `mpee-run` accepts. Every graph is stamped with its role, its precision, the bundle's identity
(`bundle_id`) and the tokenizer's sha256 (`seal_graphs`), so that the runtime refuses a graph of another
bundle or precision, or a replaced tokenizer, even when every checksum in the manifest is re-computed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import transformers

from mpee_runtime import __version__ as runtime_version
from mpee_runtime.bundle.contract import (
    EMBEDDING_OUTPUTS,
    EMBEDDINGS,
    GRAPH_OPS,
    OPSET,
    SINGLE_GRAPH,
    SINGLE_GRAPH_NAME,
    SINGLE_GRAPH_OUTPUTS,
    TOKENIZER,
    batch_layer_file,
    batch_layer_name,
    dynamic_axes,
    graph_stamp,
    layer_file,
    layer_name,
    single_graph_inputs,
)
from mpee_runtime.bundle.integrity import digest_of, sha256_of
from mpee_runtime.bundle.manifest import (
    ExitSection,
    ExportSection,
    FileRef,
    GraphEntry,
    Manifest,
    ModelSection,
    PruningSection,
    SpecialTokens,
    TaskSection,
    ValidationSection,
)
from mpee_runtime.core.flops import FLOPS_CONVENTION
from mpee_runtime.files import AtomicFolder, write_text

from ..errors import MpeeExportError, ParityError
from ..model.modeling import MpeeModel
from ..version import __version__
from .calibrate import Calibration
from .dummies import batch_dummy_feeds, dummy_feeds
from .quantize import quantize_layers, record_exit_head
from .single_graph import SingleGraphCheck, check_single_graph, compose_single_graph
from .subgraphs import BatchLayerGraph, ChainGraph, EmbeddingsGraph, LayerGraph
from .validate import Validation, exporter_engine, validate_bundle, validation_examples

VALIDATION_RECORD = "validation.json"


@dataclass
class ExportOptions:
    opset: int = OPSET
    quantize: str | None = None          # None or "int8"
    force: bool = False
    untrained_exits: bool = False        # the manifest records it
    graph_ops: str = "fused"             # "fused": com.microsoft fused operators (optimize.py); "standard": ONNX only
    keep_failed: bool = False            # publish a bundle that failed fp32 validation (recorded as not passed)
    int8_embeddings: bool = True         # with quantize "int8": the embedding tables too (the recipe's Gather)
    sign_key: Path | None = None         # Ed25519 private key: sign the bundle (mpee_runtime.bundle.signing)
    batch_graphs: bool = True            # also write the batch layer graphs (MpeeEngine.predict_batch)
    single_graph: bool = True            # also write mpee.onnx, the bundle as one graph (single_graph.py)


@dataclass(frozen=True)
class CalibrationRequest:
    """What calibration needs: labelled examples (token ids, class indices), the task's metric and the fp32
    full model's value of it (a fraction), and how many points below it the bundle may go."""

    max_drop: float
    examples: list
    labels: list[int]
    full_metric: float
    metric: str = "accuracy"
    length_buckets: list[int] | None = None   # also a point per input-length bucket (calibrate_length_points)


@dataclass(frozen=True)
class ExportRecord:
    """OUT/validation.json: the checks of each precision and, when calibrated, the calibration."""

    fp32: Validation
    int8: Validation | None = None
    calibration: Calibration | None = None
    single_graph: SingleGraphCheck | None = None

    @property
    def validations(self) -> list[Validation]:
        return [v for v in (self.fp32, self.int8) if v is not None]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> ExportRecord:
        return cls(Validation.from_dict(d["fp32"]), Validation.from_dict(d["int8"]) if "int8" in d else None,
                   Calibration.from_dict(d["calibration"]) if "calibration" in d else None,
                   SingleGraphCheck.from_dict(d["single_graph"]) if "single_graph" in d else None)

    def describe(self) -> str:
        """The lines mpee-export prints: one per precision, and the calibrated point."""
        lines = [v.describe() for v in self.validations]
        lines += [self.single_graph.describe()] if self.single_graph else []
        return "\n".join(lines + ([self.calibration.describe()] if self.calibration else []))


def check_opset(opset: int) -> None:
    if opset < OPSET:
        raise MpeeExportError(f"opset {opset} is below the minimum {OPSET}")
    if opset > onnx.defs.onnx_opset_version():
        raise MpeeExportError(f"opset {opset} is above what onnx {onnx.__version__} knows "
                              f"({onnx.defs.onnx_opset_version()})")


def _torch_export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                  opset: int, batch: bool = False) -> None:
    # A fresh wrapper module is in training mode, and export restores that mode afterwards, which
    # would switch the wrapped model's dropout on: put the wrapper in eval mode first.
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer warnings about shape-dependent Python values
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes(inputs + outputs, batch), opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    onnx.checker.check_model(str(path))


def dummy_inputs(model: MpeeModel, names: list[str], batch: bool = False) -> tuple[torch.Tensor, ...]:
    """The bundle contract's dummy inputs for `names` (with `batch`, a padded batch of rows of different lengths), as
    torch tensors (tracing)."""
    make = batch_dummy_feeds if batch else dummy_feeds
    feeds = make(names, hidden=model.sizes.hidden, num_labels=model.mpee.num_labels, vocab_size=model.sizes.vocab)
    return tuple(torch.from_numpy(feeds[n]) for n in names)


# The export options that change the graphs (not where or whether the bundle is written).
IDENTITY_OPTIONS = ("opset", "quantize", "graph_ops", "untrained_exits", "int8_embeddings")


def weights_sha256(model: MpeeModel) -> str:
    """sha256 of the model's state dict: every tensor's name, dtype, shape and bytes, in name order. It also
    identifies models that have no checkpoint digest (--allow-untrained-exits: fresh exit heads)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def bundle_id(model: MpeeModel, opts: ExportOptions) -> str:
    """The bundle's identity (manifest export.bundle_id, stamped into every graph): sha256 of the canonical
    JSON of the weights' digest, the export options that shape the graphs and the model's MPEE config. Two
    exports of the same model with the same options share it; any other pair of bundles does not."""
    return digest_of({"weights_sha256": weights_sha256(model), "mpee": model.mpee.to_dict(),
                        "options": {k: getattr(opts, k) for k in IDENTITY_OPTIONS}})


def seal_graphs(folder: Path, entries: list[GraphEntry], bundle: str = "", tokenizer_sha256: str = ""
                ) -> list[GraphEntry]:
    """Stamp each graph file (ONNX metadata, `contract.graph_stamp`: its role, its entry's precision, the
    bundle's identity and the tokenizer's sha256, which the runtime compares with the manifest) and record
    its sha256. Run after every stage that rewrites graph files or changes their precision."""
    sealed = []
    for e in entries:
        path = folder / e.file
        stamp = graph_stamp(e.name, e.precision, bundle, tokenizer_sha256)
        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        if any(props.get(k) != v for k, v in stamp.items()):
            onnx.helper.set_model_props(proto, props | stamp)
            onnx.save(proto, str(path))
        sealed.append(replace(e, sha256=sha256_of(path)))
    return sealed


def export_graphs(model: MpeeModel, folder: Path, opset: int, graph_ops: str = "standard", *, bundle: str = "",
                  tokenizer_sha256: str = "") -> list[GraphEntry]:
    """Write embeddings.onnx and layer_XX.onnx into `folder`; return their (sealed) manifest entries, the
    graphs stamped with `bundle` (the bundle id) and `tokenizer_sha256`. Each layer graph records its exit
    head's weights (`quantize.record_exit_head`), so that quantization keeps exactly the head fp32.

    graph_ops "fused" rewrites the layer graphs with onnxruntime's fused operators (optimize.py); the
    embeddings graph stays standard. The embeddings graph takes any batch (the batch graphs share it)."""
    model.eval()
    embeddings = EmbeddingsGraph(model)
    emb_in, emb_out = list(embeddings.input_names), list(EMBEDDING_OUTPUTS)
    _torch_export(embeddings, dummy_inputs(model, emb_in), folder / EMBEDDINGS, emb_in, emb_out, opset, batch=True)
    entries = [GraphEntry("embeddings", EMBEDDINGS, "", emb_in, emb_out)]
    for i in range(model.mpee.num_layers):
        graph = LayerGraph(model, i)
        path = folder / layer_file(i)
        _torch_export(graph, dummy_inputs(model, graph.input_names), path, graph.input_names,
                      graph.output_names, opset)
        record_exit_head(path, graph.exit_head_weights())   # what quantization keeps fp32
        entries.append(GraphEntry(layer_name(i), path.name, "", graph.input_names, graph.output_names,
                                    layer=i, prunes=graph.prunes))
    if graph_ops == "fused":
        from .optimize import optimize_layers
        entries = optimize_layers(folder, entries, num_heads=model.sizes.heads, hidden=model.sizes.hidden,
                                  model_type=model.family.ort_model_type)
    return seal_graphs(folder, entries, bundle, tokenizer_sha256)


def export_batch_graphs(model: MpeeModel, folder: Path, opset: int, graph_ops: str = "standard", *,
                        bundle: str = "", tokenizer_sha256: str = "") -> list[GraphEntry]:
    """Write layer_XX.batch.onnx into `folder` (`BatchLayerGraph`); return their sealed manifest entries.
    graph_ops "fused": the attention is fused with each row's key lengths as its mask (optimize.py)."""
    model.eval()
    entries = []
    for i in range(model.mpee.num_layers):
        graph = BatchLayerGraph(model, i)
        path = folder / batch_layer_file(i)
        _torch_export(graph, dummy_inputs(model, graph.input_names, batch=True), path, graph.input_names,
                      graph.output_names, opset, batch=True)
        record_exit_head(path, graph.exit_head_weights())
        entries.append(GraphEntry(batch_layer_name(i), path.name, "", graph.input_names, graph.output_names, layer=i,
                                    prunes=graph.prunes, batch=True))
    if graph_ops == "fused":
        from .optimize import optimize_layers
        entries = optimize_layers(folder, entries, num_heads=model.sizes.heads, hidden=model.sizes.hidden,
                                  model_type=model.family.ort_model_type)
    return seal_graphs(folder, entries, bundle, tokenizer_sha256)


def export_chain_graph(model: MpeeModel, path: Path, opset: int = OPSET) -> None:
    """The whole model as one graph (no early exit): the single-graph reference for size and latency."""
    graph = ChainGraph(model)
    names = list(graph.input_names)
    _torch_export(graph, dummy_inputs(model, names), path, names, list(graph.output_names), opset)


def write_single_graph(folder: Path, manifest: Manifest) -> GraphEntry:
    """Compose mpee.onnx from the bundle's (final) graphs in `folder`; return its sealed manifest entry."""
    onnx.save(compose_single_graph(folder, manifest), str(folder / SINGLE_GRAPH))
    entry = GraphEntry(SINGLE_GRAPH_NAME, SINGLE_GRAPH, "",
                       single_graph_inputs(manifest.graphs[0].inputs, bool(manifest.pruning.prune_layers)),
                       list(SINGLE_GRAPH_OUTPUTS), precision=manifest.precision)
    return seal_graphs(folder, [entry], manifest.export.bundle_id, manifest.tokenizer.sha256)[0]


def task_section(mpee) -> TaskSection | None:
    """What the runtime needs to read the task's files and score them: the checkpoint's task (its GLUE
    task's columns, or the columns of the user's files it was trained on)."""
    from ..data.datasets import checkpoint_task
    t = checkpoint_task(mpee)
    if t is None:
        return None
    return TaskSection(name=t.name, text_a=t.text_a, text_b=t.text_b, label_column=t.label_column, metric=t.metric)


def build_manifest(model: MpeeModel, entries: list[GraphEntry], tokenizer_sha: str, opts: ExportOptions,
                   bundle: str, batch_entries: list[GraphEntry] | None = None,
                   special_tokens: SpecialTokens | None = None) -> Manifest:
    """The bundle's manifest for `model`, not yet validated (validation.passed is False). `special_tokens`: the
    tokenizer's (`Family.special_tokens`; None: the family config's pad id, for tests without a tokenizer)."""
    s, m = model.sizes, model.mpee
    if special_tokens is None:
        pad = model.config.pad_token_id or 0
        special_tokens = SpecialTokens(pad, pad, pad)
    return Manifest(
        model=ModelSection(num_layers=m.num_layers, hidden_size=s.hidden, intermediate_size=s.intermediate,
                           num_heads=s.heads, labels=list(m.labels), max_length=m.max_length, vocab_size=s.vocab,
                           task=m.task, truncation=m.truncation, family=model.family.model_type,
                           special_tokens=special_tokens, relative_positions=model.family.relative_positions),
        pruning=PruningSection(prune_layers=list(m.prune_layers), keep_ratios=list(m.keep_ratios),
                                 scoring=m.scoring, prune_select=m.prune_select, fuse_token=m.fuse_token,
                                 betas=list(m.betas), lam=m.lam),
        exit=ExitSection(m.default_policy, m.default_threshold, m.layer_exit, m.exit_pooling),
        tokenizer=FileRef(TOKENIZER, tokenizer_sha), graphs=entries,
        export=ExportSection(opset=opts.opset, quantization=opts.quantize, graph_ops=opts.graph_ops,
                               untrained_exits=opts.untrained_exits, bundle_id=bundle),
        validation=ValidationSection(passed=False), task=task_section(m), flops_convention=FLOPS_CONVENTION,
        batch_graphs=list(batch_entries or []),
        versions={"mpee_export": __version__, "mpee_runtime": runtime_version, "torch": torch.__version__,
                  "transformers": transformers.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort.__version__, "python": platform.python_version()})


def export_bundle(model: MpeeModel, tokenizer, out: Path, opts: ExportOptions, *, texts=None, labels=None,
                  calibration: CalibrationRequest | None = None, log=print) -> ExportRecord:
    """Export, validate, optionally quantize and calibrate; publish `out` only if everything succeeded.

    Args:
        texts / labels: real examples (text, pair) and their class indices for validation.
        calibration: pick the default threshold: the fewest FLOPs whose task metric stays within
            `max_drop` points of the fp32 full model's.
    Returns:
        The record also written to out/validation.json.
    Raises:
        ParityError when fp32 validation fails (unless opts.keep_failed).
    """
    out = Path(out)
    check_opset(opts.opset)
    if opts.graph_ops not in GRAPH_OPS:
        raise MpeeExportError(f"graph_ops must be one of {list(GRAPH_OPS)}, got {opts.graph_ops!r}")
    with AtomicFolder(out, force=opts.force) as tmp:
        # 1. tokenizer, then the graphs, stamped with the bundle's identity and the tokenizer's sha256
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER))
        tokenizer_sha, identity = sha256_of(tmp / TOKENIZER), bundle_id(model, opts)
        entries = export_graphs(model, tmp, opts.opset, graph_ops=opts.graph_ops, bundle=identity,
                                tokenizer_sha256=tokenizer_sha)
        batch_entries = None
        if opts.batch_graphs:
            batch_entries = export_batch_graphs(model, tmp, opts.opset, graph_ops=opts.graph_ops, bundle=identity,
                                                tokenizer_sha256=tokenizer_sha)
        manifest = build_manifest(model, entries, tokenizer_sha, opts, identity, batch_entries,
                                  model.family.special_tokens(model.config, tokenizer))
        # 2. validation (the decision is validate.py's)
        examples = validation_examples(tokenizer, texts, model)
        log(f"exported {len(entries)} graphs; validating on {len(examples)} "
            f"{'real' if texts else 'random'} examples")
        fp32 = validate_bundle(model, tmp, manifest, examples, labels)
        if not fp32.passed and not opts.keep_failed:
            raise ParityError("fp32 parity check failed: " + "; ".join(fp32.problems[:3]))
        int8 = None
        if opts.quantize == "int8":
            graphs = quantize_layers(tmp, manifest.graphs, embeddings=opts.int8_embeddings)
            batch = quantize_layers(tmp, manifest.batch_graphs, per_row=True)
            manifest = replace(manifest, graphs=seal_graphs(tmp, graphs, identity, tokenizer_sha),   # re-stamped int8
                               batch_graphs=seal_graphs(tmp, batch, identity, tokenizer_sha))
            int8 = validate_bundle(model, tmp, manifest, examples, labels, precision="int8")
        single = None
        if opts.single_graph:   # from the final graphs (int8 in an int8 bundle), checked against their chain
            manifest = replace(manifest, single_graph=write_single_graph(tmp, manifest))
            single = check_single_graph(tmp, manifest, examples)
            if not single.passed and not opts.keep_failed:
                raise ParityError(f"{single.describe()}; export with --no-single-graph to leave it out")
        # 3. calibration: returns values; the model is left as it was
        cal = None
        if calibration is not None:
            from .calibrate import (
                FullDepthPasses,
                apply_calibration,
                calibrate_length_points,
                calibrate_threshold,
            )
            engine = exporter_engine(tmp, manifest)
            passes = FullDepthPasses(engine, calibration.examples)   # shared: each keep ratio's pass runs once
            cal = calibrate_threshold(engine, calibration.examples, calibration.labels,
                                      full_metric=calibration.full_metric, max_drop=calibration.max_drop,
                                      metric=calibration.metric, passes=passes)
            if calibration.length_buckets:
                cal = calibrate_length_points(engine, calibration.examples, calibration.labels,
                                              calibration.length_buckets, base=cal, passes=passes)
            manifest = apply_calibration(manifest, cal)
        record = ExportRecord(fp32, int8, cal, single)
        # 4. publish: validation.json, then the manifest, written once and last and sealed (its integrity
        # record covers every section, validation and calibration included); then the rename
        checks = {v.precision: v.summary() for v in record.validations}
        if single is not None:
            checks["single_graph"] = {"passed": single.passed, "runs": sum(single.exit_layers.values()),
                                      "same_exit_layer": single.same_exit_layer, "max_prob_diff": single.max_prob_diff}
        manifest = replace(manifest, validation=ValidationSection(bool(fp32.passed), checks))
        write_text(tmp / VALIDATION_RECORD, json.dumps(record.to_dict(), indent=1) + "\n")
        manifest.dump(tmp)
        if opts.sign_key is not None:   # last: the signature covers manifest.json and validation.json
            from mpee_runtime.bundle.signing import sign_bundle
            sign_bundle(tmp, opts.sign_key)
    return record
