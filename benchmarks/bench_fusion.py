"""Layer graphs against the fused full model: where the time goes (onnxruntime's profiler) and how fast the
standard-ops and fused bundles run, in fp32 and int8 (docs/fused_graphs.md; the measurement log: benchmarks/results/fusion_log.md).

Usage: python benchmarks/bench_fusion.py [--out benchmarks/results/fusion.json] [--threads 1] [--rounds 7]

Random MiniLM-L6-sized weights (`bench_export.random_model("minilm-l6")`). Variants:
  full_fused, full_fused_int8   `mpee-export reference`: optimum export + offline fusions (+ optimum's int8 recipe)
  chain_standard[_int8]         our bundle, standard ONNX operators (--standard-ops)
  chain_fused[_int8]            our bundle, fused operators (the default)
Chains run through MpeeEngine at full depth (threshold 0: no exit; keep ratio 1: no pruning), on the same token
ids as the full model. Timing: every variant once per step, interleaved; `runs` steps per round; the figure is
the median over rounds of each round's median. The profile (onnxruntime's profiler, kernel time per node,
median over runs) is taken while the whole chain runs, for the non-pruning layers after layer 0; the full
models' figures are per layer (the whole graph / 6, so embeddings and head are spread over the layers).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import random_model

from mpee_export.baselines.reference import export_reference
from mpee_export.export.bundle import ExportOptions, export_bundle
from mpee_export.export.dummies import dummy_feeds
from mpee_export.model.checkpoint import default_backbone
from mpee_runtime.bench.env import environment
from mpee_runtime.bundle.contract import (
    CARRY,
    HIDDEN,
    HIDDEN_OUT,
    INPUT_IDS,
    KEEP_RATIO,
    SCORES_OUT,
    TOKEN_TYPE_IDS,
    layer_file,
    layer_inputs,
)
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.bundle.reference import FUSED, FUSED_INT8
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import NO_EXIT
from mpee_runtime.core.session import open_session, session_options
from mpee_runtime.files import write_text

CHAINS = {"chain_standard": ("standard", None), "chain_fused": ("fused", None),
          "chain_standard_int8": ("standard", "int8"), "chain_fused_int8": ("fused", "int8")}
FULLS = {"full_fused": FUSED, "full_fused_int8": FUSED_INT8}


def token_ids(seq: int) -> np.ndarray:
    rng = np.random.default_rng(seq)
    ids = rng.integers(1000, 30000, (1, seq)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return ids


# ---------------------------------------------------------------- profile
def _ancestors(graph, names: set[str]) -> set[str]:
    producer = {o: n for n in graph.node for o in n.output}
    seen, todo = set(), [producer[t] for t in names if t in producer]
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        todo += [producer[i] for i in node.input if i in producer]
    return seen


def categories(graph) -> dict[str, str]:
    """Node name -> what it does, for the session-optimized graph (the names the profiler reports)."""
    outputs = {o.name for o in graph.output}
    main = _ancestors(graph, outputs & {HIDDEN_OUT, "last_hidden_state"}) if outputs & {HIDDEN_OUT} else None
    score = _ancestors(graph, {SCORES_OUT}) if SCORES_OUT in outputs else set()
    out = {}
    for n in graph.node:
        op, name = n.op_type, n.name
        if op in ("DynamicQuantizeLinear", "DequantizeLinear", "QuantizeLinear"):
            kind = "quantize activations"
        elif op in ("EmbedLayerNormalization", "QEmbedLayerNormalization") or "embeddings" in name:
            kind = "embeddings"
        elif "exits" in name or "pooler" in name or "classifier" in name or (
                main is not None and name not in main and name not in score):
            kind = "exit head + memory"
        elif main is not None and name not in main:
            kind = "scoring (side query row, K)"
        elif op in ("Attention", "QAttention", "MultiHeadAttention") or any(
                k in name for k in ("query", "key", "value")):
            kind = "attention (QKV, softmax, context)"
        elif "intermediate" in name or "output/dense" in name or "dense_1" in name:
            kind = ("GELU" if "act_fn" in name or "Gelu" in op else "dense GEMMs (out, FFN)")
        elif "Gelu" in op or op == "Erf":
            kind = "GELU"
        elif op in ("LayerNormalization", "SkipLayerNormalization", "Add", "Sum"):
            kind = "bias + residual + LayerNorm"
        elif op in ("Softmax", "Transpose", "Reshape", "MatMul", "FusedMatMul", "Shape", "Gather", "Unsqueeze",
                    "Concat", "Div", "Slice", "Cast", "ReduceSum"):
            kind = "attention (QKV, softmax, context)" if main is not None else "mask / shape"
        else:
            kind = "other"
        out[name] = kind
    return out


def _profiled(path: Path, threads: int, tmp: Path, tag: str) -> tuple[ort.InferenceSession, dict[str, str]]:
    opts = session_options(threads, False)
    opts.optimized_model_filepath = str(tmp / f"{tag}.opt.onnx")
    open_session(path, opts)
    kinds = categories(onnx.load(str(tmp / f"{tag}.opt.onnx")).graph)
    opts = session_options(threads, False)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / tag)
    return open_session(path, opts), kinds


def _kernel_times(sess: ort.InferenceSession, kinds: dict[str, str], warmup: int) -> dict[str, float]:
    """Median over runs (after `warmup`) of each category's summed kernel time in one run()."""
    events = json.loads(Path(sess.end_profiling()).read_text())
    run_ends = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    buckets: list[dict[str, float]] = [defaultdict(float) for _ in run_ends]
    j = 0
    for e in sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                    key=lambda e: e["ts"]):
        while j < len(run_ends) - 1 and e["ts"] > run_ends[j]:
            j += 1
        buckets[j][kinds.get(e["name"][:-len("_kernel_time")], "other")] += e["dur"]
    cats = set(kinds.values())
    return {k: statistics.median(b.get(k, 0.0) for b in buckets[warmup:]) for k in cats}


def profile_chain(bundle: Path, ids: np.ndarray, threads: int, runs: int) -> dict:
    """Kernel time per category of the non-pruning layers after layer 0 (their mean), profiled while the whole
    chain runs (so the weights are as cold in cache as in real use), and the node count per layer."""
    manifest = Manifest.load(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = [_profiled(bundle / g.file, threads, Path(tmp), g.name) for g in manifest.graphs]
        ratio = np.asarray(1.0, np.float32)
        for _ in range(runs):
            (hidden,) = sessions[0][0].run(None, {INPUT_IDS: ids, TOKEN_TYPE_IDS: np.zeros_like(ids)})
            state = {HIDDEN: hidden}
            for g, (sess, _) in zip(manifest.layers, sessions[1:]):
                feeds = {n: state[n] for n in g.inputs if n != KEEP_RATIO} | ({KEEP_RATIO: ratio} if g.prunes else {})
                outs = dict(zip(g.outputs, sess.run(None, feeds)))
                state = {CARRY[k]: v for k, v in outs.items() if k in CARRY}
        per_layer = [_kernel_times(sess, kinds, runs // 4) for sess, kinds in sessions[1:]]
        nodes = [len(kinds) for _, kinds in sessions[1:]]
    plain = [i for i, g in enumerate(manifest.layers) if not g.prunes and i > 0]
    cats = sorted({k for i in plain for k in per_layer[i]})
    mean = {k: statistics.mean(per_layer[i].get(k, 0.0) for i in plain) for k in cats}
    prune = [i for i, g in enumerate(manifest.layers) if g.prunes]
    extra = (statistics.mean(sum(per_layer[i].values()) for i in prune) - sum(mean.values())) if prune else None
    return {"layers": plain, "kernel_us": {k: round(v, 1) for k, v in mean.items()},
            "kernel_sum_us": round(sum(mean.values()), 1),
            "chain_kernel_sum_us": round(sum(sum(p.values()) for p in per_layer), 1),
            "nodes_per_layer": round(statistics.mean(nodes[i] for i in plain), 1),
            "pruning_layer_extra_kernel_us_at_keep_1": None if extra is None else round(extra, 1)}


def profile_full(path: Path, feeds: dict, threads: int, runs: int, layers: int) -> dict:
    """Kernel time per category of the full model, per layer (/ layers), and its node count per layer."""
    with tempfile.TemporaryDirectory() as tmp:
        sess, kinds = _profiled(path, threads, Path(tmp), "full")
        for _ in range(runs):
            sess.run(None, feeds)
        med = _kernel_times(sess, kinds, runs // 4)
    return {"kernel_us": {k: round(v / layers, 1) for k, v in sorted(med.items())},
            "kernel_sum_us": round(sum(med.values()) / layers, 1), "chain_kernel_sum_us": round(sum(med.values()), 1),
            "nodes_per_layer": round(len(kinds) / layers, 1)}


class Chain:
    """Session-like wrapper: one full-depth prediction (threshold 0: no exit; keep ratio 1: no pruning)."""

    def __init__(self, engine: MpeeEngine, ids: np.ndarray, layers: int) -> None:
        self.engine, self.ids, self.types, self.layers = engine, ids, np.zeros_like(ids), layers

    def run(self, _outputs, _feeds) -> None:
        pred = self.engine.run_ids(self.ids, self.types, **NO_EXIT, keep_ratio=1.0)
        assert pred.exit_layer == self.layers


def wall_us(sessions: dict[str, ort.InferenceSession], feeds: dict[str, dict], rounds: int, runs: int
            ) -> dict[str, float]:
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        rnd: dict[str, list[float]] = defaultdict(list)
        for _ in range(runs):
            for k, s in sessions.items():
                t = time.perf_counter_ns()
                s.run(None, feeds[k])
                rnd[k].append((time.perf_counter_ns() - t) / 1e3)
        for k, v in rnd.items():
            times[k].append(statistics.median(v))
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


# ---------------------------------------------------------------- main
@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/fusion.json"))
@click.option("--threads", default=1, show_default=True)
@click.option("--rounds", default=7, show_default=True)
@click.option("--runs", default=30, show_default=True, help="Interleaved steps per round.")
@click.option("--seqs", default="16,32,64", show_default=True)
def main(out: Path, threads: int, rounds: int, runs: int, seqs: str) -> None:
    torch.set_num_threads(1)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(default_backbone()))
    model = random_model("minilm-l6")
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    results: dict = {"environment": environment(threads=threads, spinning=False, shared_arena=True),
                     "load_average_start": os.getloadavg(), "rounds": rounds, "runs_per_round": runs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record = export_reference(model, tokenizer, tmp / "ref")
        results["reference_quantization"] = record["quantization"]["settings"] | {"recipe": record["quantization"]["recipe"]}
        for name, (ops, quant) in CHAINS.items():
            export_bundle(model, tokenizer, tmp / name, ExportOptions(graph_ops=ops, quantize=quant), log=lambda m: None)
        engines = {k: MpeeEngine(tmp / k, threads=threads) for k in CHAINS}
        full = {k: open_session(tmp / "ref" / f, session_options(threads, False)) for k, f in FULLS.items()}
        layer1 = {k: open_session(tmp / k / layer_file(1), session_options(threads, False, True)) for k in CHAINS}
        for seq in [int(s) for s in seqs.split(",")]:
            ids = token_ids(seq)
            full_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            layer_feeds = dummy_feeds(layer_inputs(1, False), hidden=hidden, num_labels=2, vocab_size=30522,
                                        seq=seq)

            sessions = {**full, **{k: Chain(e, ids, layers) for k, e in engines.items()}}
            feeds = {k: full_feeds for k in sessions}
            chain = wall_us(sessions, feeds, rounds, runs)
            layer = wall_us(layer1, dict.fromkeys(layer1, layer_feeds), rounds, runs)
            prof = {k: profile_chain(tmp / k, ids, threads, 120) for k in CHAINS}
            prof |= {k: profile_full(tmp / "ref" / f, full_feeds, threads, 120, layers) for k, f in FULLS.items()}
            for k, p in prof.items():   # wall time outside the kernels: session.run, executor, Python, per layer
                p["non_kernel_us_per_layer"] = round((chain[k] - p["chain_kernel_sum_us"]) / layers, 1)
            row = {"seq": seq, "end_to_end_us": chain, "layer_01_run_us": layer, "profile_per_layer": prof,
                   "full_over_chain": {k: round(chain["full_fused" if "int8" not in k else "full_fused_int8"]
                                                / chain[k], 3) for k in CHAINS}}
            results[f"seq{seq}"] = row
            click.echo(json.dumps(row))
    results["load_average_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(results, indent=1) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
