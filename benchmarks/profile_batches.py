"""Where a batch's time goes (benchmarks/results/sst2_throughput/README.md):

    python benchmarks/profile_batches.py BUNDLE --input DEV.tsv [--rows 64 --tokens 30]

1. onnxruntime's profiler, one thread: the first batch layer graph at ROWS x TOKENS against the batch-1 layer
   graph at 1 x TOKENS (time per run, per row, and by operator);
2. `MpeeEngine.predict_batch` on one thread over the dev set's length-sorted batches of ROWS: tokenizing,
   embeddings and each layer (the times of each batch's last row to answer), and exits per layer.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mpee_export.export.dummies import batch_dummy_feeds, dummy_feeds
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine


def profile_graphs(bundle: Path, rows: int, tokens: int, runs: int = 20) -> None:
    manifest = Manifest.load(bundle)
    m = manifest.model
    for g in (manifest.batch_graphs[0], manifest.graphs[1]):
        with tempfile.TemporaryDirectory() as tmp:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / g.name)
            sess = ort.InferenceSession(str(bundle / g.file), opts, providers=["CPUExecutionProvider"])
            b = rows if g.batch else 1
            kw = {"hidden": m.hidden_size, "num_labels": m.num_labels, "vocab_size": m.vocab_size}
            feeds = (batch_dummy_feeds(g.inputs, lengths=(tokens,) * b, **kw) if g.batch
                     else dummy_feeds(g.inputs, seq=tokens, **kw))
            for _ in range(runs):
                sess.run(None, feeds)
            events = [e for e in json.loads(Path(sess.end_profiling()).read_text()) if e.get("cat") == "Node"]
        by_op = collections.Counter()
        for e in events:
            by_op[e["args"]["op_name"]] += e["dur"] / runs
        total = sum(by_op.values())
        print(f"{g.name}: {b} x {tokens}: {total / 1e3:.2f} ms per run, {total / b / 1e3:.3f} ms per row")
        for op, us in by_op.most_common(6):
            print(f"    {op:24s} {us / 1e3:8.2f} ms ({100 * us / total:.0f}%)")


def profile_stages(bundle: Path, dev: Path, rows: int) -> None:
    texts = [line.split("\t")[0] for line in dev.read_text().splitlines()[1:]]
    engine = MpeeEngine(bundle, threads=1)
    lengths = [engine.encode(t)[0].shape[1] for t in texts]
    order = np.argsort(lengths, kind="stable")
    batches = [[texts[i] for i in order[s:s + rows]] for s in range(0, len(texts), rows)]
    tokenize = embed = 0.0
    layers = np.zeros(engine.num_layers)
    exits = np.zeros(engine.num_layers, dtype=int)
    start = time.perf_counter()
    for batch in batches:
        preds = engine.predict_batch(batch)
        last = max(preds, key=lambda p: p.timings_us["total"])
        tokenize += last.timings_us["tokenize"]
        embed += last.timings_us["embeddings"]
        layers[:len(last.timings_us["layers"])] += last.timings_us["layers"]
        for p in preds:
            exits[p.exit_layer - 1] += 1
    wall = time.perf_counter() - start
    print(f"predict_batch, batches of {rows}, 1 thread: {wall:.2f} s for {len(texts)} texts "
          f"({len(texts) / wall:.0f} texts/s); tokenize {tokenize / 1e3:.0f} ms, embeddings {embed / 1e3:.0f} ms, "
          f"layers {[round(x / 1e3) for x in layers]} ms; exits per layer {exits.tolist()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", type=Path, required=True, help="a GLUE TSV whose first column is the text")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--tokens", type=int, default=30)
    a = p.parse_args()
    profile_graphs(a.bundle, a.rows, a.tokens)
    profile_stages(a.bundle, a.input, a.rows)


if __name__ == "__main__":
    main()
