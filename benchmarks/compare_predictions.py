"""Runtime predictions of a bundle, dumped at full precision, and the comparison of two dumps: the check that
a change of code (or a re-export) moved no answer.

    python benchmarks/compare_predictions.py dump BUNDLE --input DEV.tsv --out preds.jsonl [--threshold 0 --keep-ratio 1]
        [--batch-size 16]
    python benchmarks/compare_predictions.py compare OLD.jsonl NEW.jsonl

A dump holds, per example: label, exit layer, tokens entering each layer's attention and FFN, FLOPs and the
probabilities as float64 (mpee-run rounds them to 6 decimals). With --batch-size N > 1 the examples go to
`MpeeEngine.predict_batch` N at a time, in input order. `compare` counts identical fields and prints
the largest probability difference; it exits 1 when any exit layer or label differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mpee_runtime.cli.common import input_columns
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.files import write_text
from mpee_runtime.text.readers import read_examples


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
@click.option("--batch-size", type=int, default=1, show_default=True)
def dump(bundle: Path, input_path: Path, out: Path, threshold: float | None, keep_ratio: float | None,
         threads: int, batch_size: int) -> None:
    engine = MpeeEngine(bundle, threads=threads)
    columns, _ = input_columns(input_path, engine.manifest.task)
    examples = read_examples(input_path, columns, labels=engine.labels, require_label=False)
    knobs = {"threshold": threshold, "keep_ratio": keep_ratio}
    preds = []
    for s in range(0, len(examples), batch_size):
        rows = examples[s:s + batch_size]
        if batch_size == 1:
            preds.append(engine.predict(rows[0].text, rows[0].pair, **knobs))
        else:
            preds += engine.predict_batch([ex.text for ex in rows], [ex.pair for ex in rows], **knobs)
    lines = []
    for p in preds:
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
