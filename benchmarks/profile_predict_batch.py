"""Where a `MpeeEngine.predict_batch` call's time goes: onnxruntime (every `InferenceSession.run`), tokenizing
(the engine's tokenizer calls) and the rest (Python: padding, slicing the rows that go on, the exit test,
building the answers). One engine of one thread, the dev set in batches of N in input order, the median of 5
passes after 3 warm-up batches.

    python benchmarks/profile_predict_batch.py BUNDLE --input dev.tsv --batch-size 16

It also runs against the runtime before issue 32 (flat modules), to compare the two: run it with that
checkout's runtime first on PYTHONPATH.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import click
import onnxruntime as ort

try:   # the runtime's layout since issue 32
    from mpee_runtime import MpeeEngine
    from mpee_runtime.cli.common import input_columns
    from mpee_runtime.text.readers import read_examples
except ImportError:   # before it: the flat modules
    from mpee_runtime.cli import input_columns
    from mpee_runtime.data import read_examples
    from mpee_runtime.engine import MpeeEngine


def _timed(spent: dict, key: str, fn):
    def wrap(*a, **kw):
        t = time.perf_counter_ns()
        try:
            return fn(*a, **kw)
        finally:
            spent[key] += time.perf_counter_ns() - t
    return wrap


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--passes", type=int, default=5, show_default=True)
def main(bundle: Path, input_path: Path, batch_size: int, passes: int) -> None:
    engine = MpeeEngine(bundle, threads=1, shared_arena=False)
    columns, _ = input_columns(input_path, engine.manifest.task)
    texts = [ex.text for ex in read_examples(input_path, columns, labels=engine.labels, require_label=False)]
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    spent = {"onnxruntime": 0, "tokenizing": 0}
    ort.InferenceSession.run = _timed(spent, "onnxruntime", ort.InferenceSession.run)
    if hasattr(engine, "text"):
        engine.text.encode_batch = _timed(spent, "tokenizing", engine.text.encode_batch)
    else:
        engine.encode_cut = _timed(spent, "tokenizing", engine.encode_cut)
    for batch in batches[:3]:
        engine.predict_batch(batch)
    runs = []
    for _ in range(passes):
        spent.update(onnxruntime=0, tokenizing=0)
        start = time.perf_counter_ns()
        for batch in batches:
            engine.predict_batch(batch)
        runs.append((time.perf_counter_ns() - start, spent["onnxruntime"], spent["tokenizing"]))
    wall, ort_ns, tok_ns = sorted(runs)[len(runs) // 2]
    n = len(batches)
    click.echo(f"batch {batch_size}: {wall / n / 1e3:.0f} us per batch = onnxruntime {ort_ns / n / 1e3:.0f} us "
               f"({100 * ort_ns / wall:.1f}%) + tokenizing {tok_ns / n / 1e3:.0f} us ({100 * tok_ns / wall:.1f}%) + "
               f"rest {(wall - ort_ns - tok_ns) / n / 1e3:.0f} us ({100 * (wall - ort_ns - tok_ns) / wall:.1f}%); "
               f"{len(texts) / wall * 1e9:.0f} texts/s (spread of the passes "
               f"{100 * statistics.pstdev([r[0] for r in runs]) / wall:.1f}%)")


if __name__ == "__main__":
    main()
