"""Where the single graph's time goes, by operator kind, against the fused full model (onnxruntime's profiler).

    python benchmarks/profile_single_graph.py BUNDLE REF/model_fused.onnx --input dev.tsv [--examples 200]

Both run every layer (threshold 0, keep ratio 1) on the same token ids, 2 threads, one session each with
onnxruntime's profiler on; the kernel times of every node are summed by operator type (nodes inside the `If`
branches included) and divided by the number of examples. The rest of each run (the session's own overhead,
the `If` nodes' branch switches, thread hand-offs) is the wall time minus the kernels. An `If` node's own time
includes its branches', so it is shown apart and left out of the sums. The profiler costs time per node: read
the figures as shares, and the unprofiled latency from mpee-bench.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mpee_runtime.bundle.contract import KEEP_RATIOS, POLICY, THRESHOLD
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.text.readers import Columns, read_examples


def profile(path: Path, feeds: list[dict], threads: int) -> tuple[Counter, float, float]:
    """Kernel microseconds per operator type per run (If nodes left out), the mean wall microseconds of one run
    under the profiler, and the If nodes' inclusive microseconds per run."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = f"/tmp/profile_{path.stem}"
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for f in feeds[:10]:
        sess.run(None, f)
    t = time.perf_counter()
    for f in feeds:
        sess.run(None, f)
    wall = (time.perf_counter() - t) / len(feeds) * 1e6
    trace = Path(sess.end_profiling())
    ops: Counter = Counter()
    events = json.loads(trace.read_text())
    runs = sum(1 for e in events if e.get("name") == "model_run")
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ops[e["args"]["op_name"]] += e["dur"]
    nested = ops.pop("If", 0)
    return Counter({k: v / runs for k, v in ops.items()}), wall, nested / runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("full_model", type=Path)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    manifest = Manifest.load(a.bundle)
    engine = MpeeEngine(a.bundle, threads=a.threads, warmup=0)
    task = manifest.task
    rows = read_examples(a.input, Columns(task.text_a, task.text_b, task.label_column), limit=a.examples)
    ids = [engine.encode(r.text, r.pair) for r in rows]
    graph_feeds, full_feeds = [], []
    for i, t in ids:
        f = engine.embedding_feeds(i, t) | {THRESHOLD: np.asarray(0.0), POLICY: np.asarray(0, dtype=np.int64)}
        if manifest.pruning.prune_layers:
            f[KEEP_RATIOS] = np.ones(len(manifest.pruning.prune_layers), dtype=np.float32)
        graph_feeds.append(f)
        full_feeds.append({"input_ids": i, "attention_mask": np.ones_like(i), "token_type_ids": t})
    full = ort.InferenceSession(str(a.full_model), providers=["CPUExecutionProvider"])
    names = {x.name for x in full.get_inputs()}
    full_feeds = [{k: v for k, v in f.items() if k in names} for f in full_feeds]
    tokens = np.mean([i.shape[1] for i, _ in ids])
    results = {"single graph": profile(a.bundle / manifest.single_graph.file, graph_feeds, a.threads),
               "fused full model": profile(a.full_model, full_feeds, a.threads)}
    kinds = sorted(set().union(*(r[0] for r in results.values())), key=lambda k: -results["single graph"][0][k])
    print(f"{len(ids)} examples, {tokens:.1f} tokens on average, {a.threads} threads, every layer, keep ratio 1\n")
    print("| microseconds per text | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    print("| wall (one run) | " + " | ".join(f"{r[1]:.0f}" for r in results.values()) + " |")
    print("| kernels, all | " + " | ".join(f"{sum(r[0].values()):.0f}" for r in results.values()) + " |")
    print("| not in a kernel | " + " | ".join(f"{r[1] - sum(r[0].values()):.0f}" for r in results.values()) + " |")
    print("| If (inclusive: its branches' kernels, not summed) | " + " | ".join(f"{r[2]:.0f}" for r in results.values())
          + " |")
    for k in kinds:
        print(f"| {k} | " + " | ".join(f"{r[0].get(k, 0):.0f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
