"""Command-line entry points: mpee-train (cli_train.py), mpee-eval (cli_eval.py), mpee-export
(cli_export.py), mpee-convert and mpee-split (here); `python -m mpee_export.cli train ...` runs the same commands as
subcommands (torchrun launches modules).
"""

from __future__ import annotations

from pathlib import Path

import click

from mpee_runtime.files import check_output_folder

from .cli_common import MpeeCommand, default_backbone
from .cli_eval import evaluate
from .cli_export import export
from .cli_train import train

__all__ = ["convert", "default_backbone", "evaluate", "export", "main", "split", "train"]


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


@click.command(cls=MpeeCommand)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for train.<ext> and dev.<ext>.")
@click.option("--dev-size", required=True, type=click.IntRange(min=1), help="Rows in the dev split.")
@click.option("--text-column", default="text", show_default=True, help="Column of the text (checked).")
@click.option("--label-column", default="label", show_default=True, help="Column of the label (stratified).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace existing train/dev files in OUT.")
def split(source, out, dev_size, text_column, label_column, seed, force) -> None:
    """Split SOURCE (CSV, JSONL or TSV with labels) into OUT/train and OUT/dev: a seeded dev split of
    --dev-size rows with the labels in the file's proportions (for data without a dev set, such as IMDB)."""
    from .split import split_file
    counts = split_file(source, out, dev_size=dev_size, label_column=label_column, text_column=text_column,
                        seed=seed, force=force)
    click.echo(f"wrote {out}: train {sum(counts.train.values())} {counts.train}, "
               f"dev {sum(counts.dev.values())} {counts.dev}")


@click.group()
def main() -> None:
    """MPEE commands as subcommands: `python -m mpee_export.cli train ...` (torchrun launches modules)."""


for _command in (train, evaluate, convert, export, split):
    main.add_command(_command)

if __name__ == "__main__":
    main()
