"""Per-op kernel time of the chain at full depth (embeddings + every layer graph, keep ratio 1) against the
fused full model, with onnxruntime's profiler, on one input of about N tokens (issue 22).

Usage: python benchmarks/results/long_inputs/profile_ops.py BUNDLE REF_MODEL.onnx --tsv imdb.tsv --tokens 400
       [--threads 2] [--runs 40]
Prints a markdown table: op type -> total us per request (median over runs), chain and full model, and the
top nodes of the chain. Shares are what matter (the machine is shared); absolute times are indicative.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from mpee_runtime.bundle import contract as S
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.session import open_session, session_options


def pick_input(engine: MpeeEngine, tsv: Path, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    best = None
    with open(tsv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            ids, types = engine.encode(row["sentence"])
            if best is None or abs(ids.shape[1] - tokens) < abs(best[0].shape[1] - tokens):
                best = (ids, types)
    return best


def profiled(path: Path, threads: int, tmp: Path, tag: str):
    opts = session_options(threads, True)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / tag)
    return open_session(path, opts)


def node_times(sess, warmup: int) -> tuple[dict, dict]:
    """(op type -> median us per run, node -> (op, median us per run)) after `warmup` runs."""
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session"
                  and e["name"] == "model_run")
    per_run_op = [defaultdict(float) for _ in runs]
    per_run_node = [defaultdict(float) for _ in runs]
    ops = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        j = next((i for i, (a, b) in enumerate(runs) if a <= e["ts"] <= b), None)
        if j is None:
            continue
        op = e["args"].get("op_name", "?")
        name = e["name"][:-len("_kernel_time")]
        ops[name] = op
        per_run_op[j][op] += e["dur"]
        per_run_node[j][name] += e["dur"]
    keep = slice(warmup, None)
    op_keys = {k for r in per_run_op for k in r}
    node_keys = {k for r in per_run_node for k in r}
    by_op = {k: statistics.median(r.get(k, 0.0) for r in per_run_op[keep]) for k in op_keys}
    by_node = {k: (ops[k], statistics.median(r.get(k, 0.0) for r in per_run_node[keep])) for k in node_keys}
    model_run = statistics.median(b - a for a, b in runs[keep])
    return by_op, by_node, model_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("full", type=Path)
    ap.add_argument("--tsv", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    engine = MpeeEngine(a.bundle, threads=a.threads)
    ids, types = pick_input(engine, a.tsv, a.tokens)
    manifest = engine.manifest
    ratio = np.asarray(1.0, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chain = [profiled(a.bundle / g.file, a.threads, tmp, g.name) for g in manifest.graphs]
        full = profiled(a.full, a.threads, tmp, "full")
        full_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        full_feeds = {k: v for k, v in full_feeds.items() if k in {i.name for i in full.get_inputs()}}
        for _ in range(a.runs):   # interleaved: one chain pass, one full-model pass
            (hidden,) = chain[0].run(None, engine.embedding_feeds(ids, types))
            state = {S.HIDDEN: hidden}
            for g, sess in zip(manifest.layers, chain[1:]):
                feeds = {n: state[n] for n in g.inputs if n != S.KEEP_RATIO} | (
                    {S.KEEP_RATIO: ratio} if g.prunes else {})
                outs = dict(zip(g.outputs, sess.run(None, feeds)))
                state = {S.CARRY[k]: v for k, v in outs.items() if k in S.CARRY}
            full.run(None, full_feeds)
        warm = a.runs // 4
        c_op, c_node, c_run = defaultdict(float), {}, 0.0
        per_graph = {}
        for g, sess in zip(manifest.graphs, chain):
            by_op, by_node, run = node_times(sess, warm)
            for k, v in by_op.items():
                c_op[k] += v
            c_node |= {f"{g.name}/{k}": v for k, v in by_node.items()}
            per_graph[g.name] = (sum(by_op.values()), run)
            c_run += run
        f_op, f_node, f_run = node_times(full, warm)
    c_tot, f_tot = sum(c_op.values()), sum(f_op.values())
    print(f"input: {ids.shape[1]} tokens, {a.threads} threads, {a.runs} runs (median after {warm})\n")
    print(f"| | chain | full model | chain / full |\n|---|---:|---:|---:|\n"
          f"| kernel sum us | {c_tot:.0f} | {f_tot:.0f} | {c_tot / f_tot:.2f} |\n"
          f"| model_run sum us | {c_run:.0f} | {f_run:.0f} | {c_run / f_run:.2f} |\n")
    print("| op type | chain us | chain % | full us | full % |\n|---|---:|---:|---:|---:|")
    for k in sorted(set(c_op) | set(f_op), key=lambda k: -(c_op.get(k, 0) + f_op.get(k, 0))):
        c, f = c_op.get(k, 0.0), f_op.get(k, 0.0)
        print(f"| {k} | {c:.0f} | {100 * c / c_tot:.1f} | {f:.0f} | {100 * f / f_tot:.1f} |")
    print("\n| graph | kernel us | model_run us |\n|---|---:|---:|")
    for k, (kern, run) in per_graph.items():
        print(f"| {k} | {kern:.0f} | {run:.0f} |")
    print(f"\ntop {a.top} chain nodes:\n\n| node | op | us |\n|---|---|---:|")
    for k, (op, v) in sorted(c_node.items(), key=lambda kv: -kv[1][1])[:a.top]:
        print(f"| {k} | {op} | {v:.0f} |")
    print(f"\ntop {a.top} full-model nodes:\n\n| node | op | us |\n|---|---|---:|")
    for k, (op, v) in sorted(f_node.items(), key=lambda kv: -kv[1][1])[:a.top]:
        print(f"| {k} | {op} | {v:.0f} |")


if __name__ == "__main__":
    main()
