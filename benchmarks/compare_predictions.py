"""Runtime predictions of a bundle, dumped at full precision, and the comparison of two dumps: the check that
a change of code (or a re-export) moved no answer.

    python benchmarks/compare_predictions.py dump BUNDLE --input DEV.tsv --out preds.jsonl [--threshold 0 --keep-ratio 1]
    python benchmarks/compare_predictions.py compare OLD.jsonl NEW.jsonl

A dump holds, per example: label, exit layer, tokens entering each layer's attention and FFN, FLOPs and the
probabilities as float64 (mpee-run rounds them to 6 decimals). `compare` counts identical fields and prints
the largest probability difference; it exits 1 when any exit layer or label differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mpee_runtime.cli import input_columns
from mpee_runtime.data import read_examples
from mpee_runtime.engine import MpeeEngine
from mpee_runtime.files import write_text


@click.group()
def cli() -> None:
    """Dump and compare runtime predictions."""


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=None, help="[default: the bundle's]")
@click.option("--keep-ratio", type=float, default=None, help="[default: the bundle's]")
@click.option("--threads", type=int, default=2, show_default=True)
def dump(bundle: Path, input_path: Path, out: Path, threshold: float | None, keep_ratio: float | None,
         threads: int) -> None:
    engine = MpeeEngine(bundle, threads=threads)
    columns, _ = input_columns(input_path, engine.manifest.task)
    examples = read_examples(input_path, columns, labels=engine.labels, require_label=False)
    lines = []
    for ex in examples:
        p = engine.predict(ex.text, ex.pair, threshold=threshold, keep_ratio=keep_ratio)
        lines.append(json.dumps({"label": p.label, "exit": p.exit_layer, "tokens": p.tokens_per_layer,
                                 "ffn": p.ffn_tokens_per_layer, "flops": p.flops, "probs": p.probs}))
    write_text(out, "\n".join(lines) + "\n")
    click.echo(f"wrote {out}: {len(lines)} examples")


@cli.command()
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def compare(old: Path, new: Path) -> None:
    a = [json.loads(x) for x in old.read_text().splitlines()]
    b = [json.loads(x) for x in new.read_text().splitlines()]
    if len(a) != len(b):
        raise click.ClickException(f"{len(a)} examples in {old}, {len(b)} in {new}")
    same = {k: sum(x[k] == y[k] for x, y in zip(a, b)) for k in ("label", "exit", "tokens", "ffn", "flops", "probs")}
    dp = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x["probs"], y["probs"]))
    click.echo(f"{len(a)} examples; identical: " + ", ".join(f"{k} {v}" for k, v in same.items())
               + f"; max |probability difference| {dp:.3g}")
    if same["label"] != len(a) or same["exit"] != len(a):
        sys.exit(1)


if __name__ == "__main__":
    cli()
