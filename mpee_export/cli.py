"""Command-line entry points: mpee-train (cli_train.py), mpee-eval (cli_eval.py), mpee-export
(cli_export.py) and mpee-convert (here); `python -m mpee_export.cli train ...` runs the same commands as
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

__all__ = ["convert", "default_backbone", "evaluate", "export", "main", "train"]


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


@click.group()
def main() -> None:
    """MPEE commands as subcommands: `python -m mpee_export.cli train ...` (torchrun launches modules)."""


for _command in (train, evaluate, convert, export):
    main.add_command(_command)

if __name__ == "__main__":
    main()
