"""mpee-convert (a research-code checkpoint into an MPEE checkpoint) and mpee-split (a seeded, stratified dev
split of a labelled file)."""

from __future__ import annotations

from pathlib import Path

import click

from mpee_runtime.files import check_output_folder

from ..errors import MpeeCommand


@click.command(cls=MpeeCommand)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--task", default=None, help="GLUE task the model was trained on (sets labels).")
@click.option("--force", is_flag=True, help="Overwrite a non-empty OUT.")
def convert(source, out, task, force) -> None:
    """Convert a checkpoint saved by the MPEE research code (JunKong5/MPEE) into an MPEE checkpoint."""
    check_output_folder(out, force=force)
    from ..data.glue import get_task
    from ..model.convert import convert_research_checkpoint
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
    from ..data.split import split_file
    counts = split_file(source, out, dev_size=dev_size, label_column=label_column, text_column=text_column,
                        seed=seed, force=force)
    click.echo(f"wrote {out}: train {sum(counts.train.values())} {counts.train}, "
               f"dev {sum(counts.dev.values())} {counts.dev}")
