"""Runtime benchmark: the layer chain (no exit, no pruning) against the same model as one ONNX graph,
per-layer overhead, peak memory and import time.

Usage: python benchmarks/bench_runtime.py [--bundle BUNDLE] [--out benchmarks/results/runtime.json]

For each size (bert-base and MiniLM, random weights, or --bundle for a trained one), both are run in one
process, interleaved call by call, with the same token ids, the same thread count and spinning off.
Three overhead figures per (size, length), all medians over the interleaved repeats:
- overhead_per_layer_us = (chain - single graph) / L: everything the split costs, i.e. one session.run
  per layer (onnxruntime's per-call work and any kernel slow-down from running as separate sessions)
  plus the Python loop;
- python_loop_per_layer_us: the engine's own time between layers, outside every session.run call
  ((engine total - embeddings run - layer runs) / L, from the engine's perf_counter_ns stamps);
- python_per_request_us: the per-request Python work outside the layer loop (exit rule, keep-ratio
  feeds, FLOPs, building the result): wall time of run_ids minus the engine's total.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from mpee_runtime.bench.env import environment
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import NO_EXIT
from mpee_runtime.core.session import open_session, session_options
from mpee_runtime.files import write_text

sys.path.insert(0, str(Path(__file__).parent))
from bench_export import random_model

from mpee_export.export.bundle import ExportOptions, export_bundle, export_chain_graph
from mpee_export.model.checkpoint import default_backbone

TEXT = ("a gripping , beautifully acted drama that never loses its nerve , even when the plot takes "
        "one turn too many in the final act")


def compare(engine: MpeeEngine, single: Path, seq: int, repeats: int, threads: int) -> dict:
    ids, _ = engine.encode(TEXT)
    body = np.resize(ids[0, 1:-1], seq - 2)           # the sentence repeated to `seq` tokens
    ids = np.concatenate([ids[0, :1], body, ids[0, -1:]])[None].astype(np.int64)
    types = np.zeros_like(ids)
    sess = open_session(single, session_options(threads, False))
    feeds = {"input_ids": ids, "token_type_ids": types, "keep_ratio": np.asarray(1.0, np.float32)}
    chain_us, single_us, loop_us, request_us = [], [], [], []
    for i in range(repeats + 30):
        t = time.perf_counter_ns()
        pred = engine.run_ids(ids, types, **NO_EXIT, keep_ratio=1.0)
        chain = (time.perf_counter_ns() - t) / 1e3
        t = time.perf_counter_ns()
        sess.run(None, feeds)
        one = (time.perf_counter_ns() - t) / 1e3
        if i >= 30:
            chain_us.append(chain)
            single_us.append(one)
            stamps = pred.timings_us
            loop_us.append((stamps["total"] - stamps["embeddings"] - sum(stamps["layers"])) / len(stamps["layers"]))
            request_us.append(chain - stamps["total"])
    layers = engine.num_layers
    med_chain, med_single = statistics.median(chain_us), statistics.median(single_us)
    return {"seq": seq, "median_chain_us": round(med_chain, 1), "median_single_graph_us": round(med_single, 1),
            "ratio_chain_over_single": round(med_chain / med_single, 4),
            "overhead_per_layer_us": round((med_chain - med_single) / layers, 1),
            "python_loop_per_layer_us": round(statistics.median(loop_us), 1),
            "python_per_request_us": round(statistics.median(request_us), 1)}


def footprint(bundle: Path, threads: int) -> dict:
    """Import time (median of 5 fresh interpreters) and peak RSS with the bundle loaded and one prediction."""
    code_import = "import time; t = time.perf_counter(); import mpee_runtime.core.engine; print(time.perf_counter() - t)"
    times = [float(subprocess.check_output([sys.executable, "-c", code_import])) for _ in range(5)]
    # VmHWM of the child itself: getrusage's ru_maxrss would include the parent's peak from before exec.
    code_rss = (f"from mpee_runtime import MpeeEngine; "
                f"e = MpeeEngine({str(bundle)!r}, threads={threads}); e.predict('a fine film'); "
                "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    rss_kb = int(subprocess.check_output([sys.executable, "-c", code_rss]))
    size = sum(p.stat().st_size for p in bundle.iterdir())
    return {"import_s_median": round(statistics.median(times), 3), "peak_rss_mb": round(rss_kb / 1024, 1),
            "bundle_mb": round(size / 2**20, 1)}


@click.command()
@click.option("--bundle", type=click.Path(path_type=Path), help="Also measure this (trained) bundle's footprint.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/runtime.json"))
@click.option("--repeats", default=300, show_default=True)
@click.option("--threads", default=2, show_default=True)
def main(bundle: Path | None, out: Path, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(default_backbone()))
    results: dict = {"environment": environment(threads=threads, spinning=False, shared_arena=True),
                     "repeats": repeats}
    for size in ("minilm-l6", "bert-base"):
        model = random_model(size)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            export_bundle(model, tokenizer, tmp / "bundle", ExportOptions(), log=lambda m: None)
            export_chain_graph(model, tmp / "single.onnx")
            engine = MpeeEngine(tmp / "bundle", threads=threads)
            rows = [compare(engine, tmp / "single.onnx", seq, repeats, threads) for seq in (16, 64, 128)]
            results[size] = {"latency": rows, "footprint_random_weights": footprint(tmp / "bundle", threads)}
            for r in rows:
                click.echo(f"{size} {json.dumps(r)}")
            click.echo(f"{size} {json.dumps(results[size]['footprint_random_weights'])}")
    if bundle is not None:
        results["trained_bundle"] = {"path": str(bundle), **footprint(bundle, threads)}
        click.echo(json.dumps(results["trained_bundle"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(results, indent=1) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
