"""`python -m mpee_export.cli COMMAND ...`: the console scripts as subcommands (train, evaluate, convert,
export, split), for launchers that start modules: `torchrun --nproc_per_node N -m mpee_export.cli train ...`."""

from __future__ import annotations

import click

from .eval import evaluate
from .export import export
from .tools import convert, split
from .train import train


@click.group()
def main() -> None:
    """MPEE commands as subcommands: `python -m mpee_export.cli train ...` (torchrun launches modules)."""


for _command in (train, evaluate, convert, export, split):
    main.add_command(_command)

if __name__ == "__main__":
    main()
