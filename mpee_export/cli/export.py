"""mpee-export: CKPT OUT (the export), `reference` (the full-model baselines), `validate` (re-check a bundle),
`keygen` (a key pair for --sign)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from mpee_runtime.bundle.contract import OPSET
from mpee_runtime.bundle.reference import QUANT_RECIPES, REFERENCE_HF, REFERENCE_RECORD
from mpee_runtime.files import check_output_file, check_output_folder, write_text

from ..errors import MpeeCommand, MpeeExportError, ParityError, UserErrors
from .common import dev_file_option, eval_source, export_data_option


class ParityFailed(click.ClickException):
    """A bundle that does not match PyTorch: `Error:` line and exit code 3, from the export and from
    `mpee-export validate` alike (bad input stays exit 2)."""

    exit_code = ParityError.exit_code


class ExportGroup(UserErrors, click.Group):
    """`mpee-export CKPT OUT` runs the export; `mpee-export reference CKPT REF`, `mpee-export validate
    BUNDLE CKPT` and `mpee-export keygen KEY` are subcommands.

    Rule: a first word that is a subcommand's name (reference, validate, keygen, run) is that subcommand; any other
    first word is the checkpoint of the export (the subcommand `run`). A checkpoint folder named like a
    subcommand is given as a path: `mpee-export ./validate OUT`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=ExportGroup)
def export() -> None:
    """Export an MPEE checkpoint to a bundle of per-layer ONNX graphs (`mpee-export CKPT OUT`)."""


def _load_for_export(checkpoint: Path, allow_untrained_exits: bool, task: str | None):
    """An MPEE checkpoint, or (with --allow-untrained-exits) a plain BERT folder with fresh exit heads."""
    from ..data.glue import get_task
    from ..model.checkpoint import (
        from_backbone,
        is_mpee_checkpoint,
        load_backbone_config,
        load_checkpoint,
        load_tokenizer,
    )
    from ..model.config import MpeeConfig
    if not allow_untrained_exits or is_mpee_checkpoint(checkpoint):
        return load_checkpoint(checkpoint)
    config = load_backbone_config(checkpoint)
    labels = list(get_task(task).labels) if task else [config.id2label[i] for i in range(config.num_labels)]
    from ..model.families import family_of
    mpee = MpeeConfig.build(num_layers=family_of(config).sizes(config).layers, labels=labels, task=task)
    return from_backbone(checkpoint, mpee).eval(), load_tokenizer(checkpoint)


def _dev_examples(data: str | None, dev_file: Path | None, model, task: str | None, limit: int | None):
    source = eval_source(data, dev_file, task, model.mpee)
    return source.load("dev", limit=limit), source.task


def _schedule(text: str, prune_layers: list[int]) -> list[float]:
    """--keep-ratio: one ratio for every pruning layer, or one per pruning layer separated by ':'."""
    from ..model.config import check_keep_ratio
    try:
        ratios = [float(x) for x in text.split(":")]
    except ValueError:
        raise MpeeExportError(f"--keep-ratio: expected a number or numbers separated by ':', got {text!r}") from None
    if len(ratios) == 1:
        ratios = ratios * len(prune_layers)
    if len(ratios) != len(prune_layers):
        raise MpeeExportError(f"--keep-ratio {text}: {len(ratios)} ratios for the {len(prune_layers)} pruning "
                              f"layers {prune_layers}")
    for r in ratios:
        check_keep_ratio(r)
    return ratios


def _layers(text: str) -> list[int]:
    """--prune-layers: comma-separated 0-based layer indices, each once."""
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise MpeeExportError(f"--prune-layers: expected 0-based layer numbers separated by ',', got {text!r}") from None
    if len(set(layers)) != len(layers):
        raise MpeeExportError(f"--prune-layers {text}: a layer is named twice")
    return sorted(layers)


def _with_prune_layers(mpee, layers: list[int], keep_ratio: str | None):
    """The model's config with the pruning step at `layers` (the config checks they exist), at --keep-ratio's
    schedule, or at the checkpoint's keep ratio when it is one value for all its pruning layers."""
    own = set(mpee.keep_ratios)
    if keep_ratio is None and len(own) != 1:
        raise MpeeExportError(f"--prune-layers: the checkpoint's keep ratios {mpee.keep_ratios} are not one value; "
                              "give --keep-ratio")
    ratios = [own.pop()] * len(layers) if keep_ratio is None else _schedule(keep_ratio, layers)
    return replace(mpee, prune_layers=layers, keep_ratios=ratios)


def _texts(examples) -> list[tuple[str, str | None]]:
    return [(e.text_a, e.text_b) for e in examples]


@export.command("run", cls=MpeeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Quantize the layer graphs and the embedding tables.")
@click.option("--fp32-embeddings", is_flag=True,
              help="With --quantize int8: keep the embedding tables fp32 (a larger bundle).")
@export_data_option
@dev_file_option
@click.option("--task", default=None, help="GLUE task of --data [default: the checkpoint's].")
@click.option("--keep-ratio", "keep_ratio", default=None, metavar="R|R:R:...",
              help="The bundle's default keep ratio: one for every pruning layer, or one per pruning layer "
                   "separated by ':' (1 = no pruning there; benchmarks/pruning_schedule.py measures schedules) "
                   "[default: the checkpoint's]. Calibration runs at it.")
@click.option("--prune-layers", "prune_layers", default=None, metavar="L,L,...",
              help="0-based layers whose pruning step is in the bundle's graphs [default: the checkpoint's, "
                   "the layers it was trained with]. The weights do not depend on it; a layer the model was not "
                   "trained to prune at may cost accuracy: measure it (benchmarks/pruning_schedule.py). "
                   "Needs --keep-ratio unless the checkpoint has one ratio for all its pruning layers.")
@click.option("--calibrate", is_flag=True, help="Pick the default threshold on dev (needs --data or --dev).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="With --calibrate: points of the task's metric (accuracy; F1 for MRPC and QQP) allowed "
                   "below the fp32 full model.")
@click.option("--length-buckets", "length_buckets", default=None, metavar="N,N,...",
              help="With --calibrate: also store a point (threshold, keep ratio) per input length: texts of at "
                   "most each N tokens, and longer ones; chosen together within --max-drop over all of dev "
                   "(accuracy tasks). The runtime applies each text's row when no knob is given.")
@click.option("--opset", default=OPSET, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace a non-empty OUT.")
@click.option("--allow-untrained-exits", is_flag=True,
              help="Export a plain BERT checkpoint with untrained exit heads (recorded in the manifest).")
@click.option("--standard-ops", is_flag=True,
              help="Layer graphs with standard ONNX operators only (default: onnxruntime's fused operators, "
                   "com.microsoft Attention and BiasGelu; recorded as export.graph_ops).")
@click.option("--no-batch-graphs", "no_batch_graphs", is_flag=True,
              help="Leave out the batch layer graphs (layer_XX.batch.onnx): a smaller bundle whose "
                   "predict_batch / mpee-run --batch-size run rows one by one.")
@click.option("--no-single-graph", "no_single_graph", is_flag=True,
              help="Leave out mpee.onnx, the bundle as one graph with the exit rule inside (for any onnxruntime "
                   "host, and MpeeEngine(engine='graph')): a bundle about half the size.")
@click.option("--validation-examples", default=200, show_default=True, type=click.IntRange(min=1),
              help="Dev examples for the chain parity check.")
@click.option("--keep-failed", is_flag=True,
              help="Publish the bundle even if fp32 parity fails (marked unvalidated: mpee-run then needs "
                   "--allow-unvalidated).")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path), metavar="KEY",
              help="Sign the bundle with this Ed25519 private key (from `mpee-export keygen KEY`): "
                   "OUT/manifest.json.sig, checked by mpee-run/mpee-bench --trust KEY.pub.")
def export_run(checkpoint, out, quantize, fp32_embeddings, data, dev_file, task, keep_ratio, prune_layers, calibrate,
               max_drop, length_buckets, opset, force, allow_untrained_exits, standard_ops, no_batch_graphs,
               validation_examples, keep_failed, sign_key, no_single_graph) -> None:
    """Export CHECKPOINT to the bundle folder OUT, validate it against PyTorch, optionally quantize."""
    from ..export.bundle import ExportOptions, check_opset, export_bundle
    if calibrate and ((data is None and dev_file is None) or max_drop is None):
        raise MpeeExportError("--calibrate needs --data (or --dev) and --max-drop")
    if max_drop is not None and not calibrate:
        raise MpeeExportError("--max-drop needs --calibrate")
    buckets = None if length_buckets is None else _length_buckets(length_buckets)
    if buckets is not None and not calibrate:
        raise MpeeExportError("--length-buckets needs --calibrate")
    if fp32_embeddings and quantize != "int8":
        raise MpeeExportError("--fp32-embeddings needs --quantize int8")
    check_output_folder(out, force=force)
    check_opset(opset)
    if sign_key is not None:   # a missing or bad key is refused before any work
        from mpee_runtime.bundle.signing import key_id, load_private_key
        signer = key_id(load_private_key(sign_key).public_key())
    layers = None if prune_layers is None else _layers(prune_layers)
    model, tokenizer = _load_for_export(checkpoint, allow_untrained_exits, task)
    if layers is not None:
        model.mpee = _with_prune_layers(model.mpee, layers, keep_ratio)
    elif keep_ratio is not None:
        model.mpee.keep_ratios = _schedule(keep_ratio, model.mpee.prune_layers)
    opts = ExportOptions(opset=opset, quantize=quantize, force=force, untrained_exits=allow_untrained_exits,
                         keep_failed=keep_failed, int8_embeddings=not fp32_embeddings, sign_key=sign_key,
                         batch_graphs=not no_batch_graphs, single_graph=not no_single_graph,
                         **({"graph_ops": "standard"} if standard_ops else {}))
    texts = labels = calibration = None
    if data is not None or dev_file is not None:
        examples, glue_task = _dev_examples(data, dev_file, model, task, None)
        texts, labels = _texts(examples[:validation_examples]), [e.label for e in examples[:validation_examples]]
    if calibrate:
        if buckets is not None and glue_task.metric != "accuracy":
            raise MpeeExportError(f"--length-buckets needs an accuracy task ({glue_task.name} is judged by "
                                  f"{glue_task.metric})")
        calibration = _calibration_request(model, tokenizer, examples, glue_task, max_drop, buckets)
    try:
        record = export_bundle(model, tokenizer, out, opts, texts=texts, labels=labels, calibration=calibration,
                               log=lambda m: click.echo(m, err=True))
    except ParityError as e:
        raise ParityFailed(str(e)) from None
    click.echo(record.describe())
    click.echo(f"wrote {out}" + (f", signed with key {signer}" if sign_key is not None else ""))


def _length_buckets(spec: str) -> list[int]:
    """`--length-buckets`: increasing token counts >= 1, separated by commas (at most MAX_LENGTH_POINTS - 1)."""
    from mpee_runtime.bundle.manifest import MAX_LENGTH_POINTS
    try:
        edges = [int(x) for x in spec.split(",")]
    except ValueError:
        raise MpeeExportError(f"--length-buckets: token counts separated by commas, got {spec!r}") from None
    if not edges or edges != sorted(set(edges)) or edges[0] < 1 or len(edges) >= MAX_LENGTH_POINTS:
        raise MpeeExportError(f"--length-buckets: 1 to {MAX_LENGTH_POINTS - 1} increasing token counts >= 1, "
                              f"got {spec!r}")
    return edges


def _calibration_request(model, tokenizer, examples, glue_task, max_drop: float, buckets: list[int] | None = None):
    """The dev examples as token ids with their labels, and the fp32 full model's metric on them."""
    from ..data.batching import encode
    from ..export.bundle import CalibrationRequest
    from ..export.validate import validation_examples as to_ids
    from ..training.evaluate import full_model_row
    full = full_model_row(model, glue_task, encode(examples, tokenizer, model.mpee.max_length, model.mpee.truncation))
    return CalibrationRequest(max_drop=max_drop, examples=to_ids(tokenizer, _texts(examples), model),
                              labels=[e.label for e in examples], full_metric=full.metric,
                              metric=glue_task.metric, length_buckets=buckets)


@export.command("reference", cls=MpeeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--opset", default=OPSET, show_default=True, type=int)
@click.option("--recipe", type=click.Choice(["auto", *QUANT_RECIPES]), default="auto",
              show_default=True, help="optimum's int8 recipe (auto: from this machine's CPU flags).")
@click.option("--per-channel", is_flag=True, help="Per-channel int8 weights (optimum-cli's --per_channel).")
def export_reference_cmd(checkpoint, out, opset, recipe, per_channel) -> None:
    """Export the full model as users deploy it: OUT/hf (PyTorch), OUT/model.onnx (optimum, plain),
    OUT/model_fused.onnx (onnxruntime's offline transformer fusions), OUT/model_fused_int8.onnx (optimum's
    dynamic int8 recipe for this CPU) and OUT/reference.json: the baselines of mpee-bench."""
    from ..baselines.reference import export_reference
    from ..export.bundle import check_opset
    from ..model.checkpoint import load_checkpoint
    check_opset(opset)
    check_output_folder(out)
    model, tokenizer = load_checkpoint(checkpoint)
    record = export_reference(model, tokenizer, out, opset=opset, per_channel=per_channel,
                              recipe=None if recipe == "auto" else recipe)
    fused, quant = record.fusion["fused_nodes"], record.quantization
    click.echo(f"fused: {fused['attention']} Attention, {fused['skip_layer_norm']} SkipLayerNormalization, "
               f"{fused['gelu']} Gelu, {fused['embed_layer_norm']} EmbedLayerNormalization; "
               f"{fused['nodes']} nodes (plain export: {record.fusion['plain_nodes']})")
    click.echo(f"int8: optimum recipe {quant['recipe']} ({quant['recipe_reason']}), per_channel "
               f"{quant['settings']['per_channel']}, quantizer {quant['quantizer']}"
               + (f" ({quant['fallback_reason']})" if "fallback_reason" in quant else ""))
    for warning in record.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out}: {', '.join(record.files)}, {REFERENCE_RECORD}, {REFERENCE_HF}/")


@export.command("validate", cls=MpeeCommand)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@export_data_option
@dev_file_option
@click.option("--task", default=None)
@click.option("--validation-examples", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full record as JSON.")
def export_validate(bundle, checkpoint, data, dev_file, task, validation_examples, json_path) -> None:
    """Re-run the parity check of BUNDLE against CHECKPOINT (exit code 3 if fp32 parity fails, as for the
    export; the record is printed and written first)."""
    from mpee_runtime.bundle.manifest import Manifest

    from ..export.validate import validate_bundle
    from ..export.validate import validation_examples as to_ids
    from ..model.checkpoint import load_checkpoint
    if json_path is not None:
        check_output_file(json_path)
    manifest = Manifest.load(bundle)
    model, tokenizer = load_checkpoint(checkpoint)
    texts = labels = None
    if data is not None or dev_file is not None:
        examples, _ = _dev_examples(data, dev_file, model, task, validation_examples)
        texts, labels = _texts(examples), [e.label for e in examples]
    result = validate_bundle(model, bundle, manifest, to_ids(tokenizer, texts, model), labels,
                             precision=manifest.precision)
    click.echo(result.describe())
    if json_path:
        write_text(json_path, json.dumps({result.precision: result.to_dict()}, indent=1) + "\n")
    if result.passed is False:
        raise ParityFailed(f"{bundle}: fp32 parity check failed: " + "; ".join(result.problems[:3]))


@export.command("keygen", cls=MpeeCommand)
@click.argument("key", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing KEY and KEY.pub.")
def export_keygen(key, force) -> None:
    """Write a new Ed25519 key pair for signing bundles: KEY (private, PEM, mode 0600: keep it with the
    exporter) and KEY.pub (public: give it to the devices, `mpee-run BUNDLE ... --trust KEY.pub`)."""
    from mpee_runtime.bundle.signing import generate_key, public_key_path
    kid = generate_key(key, force=force)
    click.echo(f"wrote {key} (private, mode 0600) and {public_key_path(key)} (public), key id {kid}")
