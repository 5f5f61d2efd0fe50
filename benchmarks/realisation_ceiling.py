"""How far MPEE's measured speed-up can come to its FLOPs speed-up at batch 1: the realisation ceiling.

    python benchmarks/realisation_ceiling.py BUNDLE REF/model_fused.onnx --input dev.tsv [--examples 300]
        [--engine chain|graph] [--threads 2]

Realisation is speed-up / rho (rho: the full model's FLOPs over the FLOPs executed, embeddings not counted). A
run that exits at some layer still pays the embeddings in full, so even layers that cost exactly their share of
the full model's time give

    T_ideal = T_emb + (T_full - T_emb_full) / rho,    ceiling = T_full / (rho x T_ideal)

with T_emb the bundle's embeddings graph and T_emb_full the full model's own embeddings (the fused graph cut at
its embeddings' LayerNormalization). T_layers counts layers instead of FLOPs (each executed layer at the full model's
mean layer time): the gap between the two is what pruning saves in FLOPs but not in time. What the bundle spends above T_ideal is the method's own work per executed layer
(exit head, score, pruning step, exit rule, the call or branch per layer): `extra per layer` below, against the
`budget per layer` a target realisation leaves. Every model runs on the same token ids, interleaved in blocks of
16 examples (each block after one untimed run), 2 threads on onnxruntime's process-wide pool (as the map's
runs), the runtime's session options; MPEE at the bundle's
own operating point (its default threshold and keep ratios, or its length points).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx

from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.session import open_session, session_options
from mpee_runtime.text.readers import Columns, read_examples

BLOCK = 16
TARGETS = (0.9, 0.97)


def embeddings_of(full_model: Path, out: Path) -> Path:
    """The fused full model cut after its (Q)EmbedLayerNormalization, or where onnxruntime fuses none (MPNet) after
    its first (Skip)LayerNormalization (word + position embeddings): what the full model spends on embeddings."""
    model = onnx.load(str(full_model))
    node = next((n for n in model.graph.node if n.op_type.endswith("EmbedLayerNormalization")), None) or next(
        n for n in model.graph.node if n.op_type in ("LayerNormalization", "SkipLayerNormalization"))
    inputs = [i.name for i in model.graph.input]
    onnx.save(onnx.utils.Extractor(model).extract_model(inputs, [node.output[0]]), str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("full_model", type=Path)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--engine", choices=("chain", "graph"), default="chain")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--thread-pool", choices=("global", "session"), default="global",
                   help="as mpee-bench's --thread-pool (the map's runs: global)")
    a = p.parse_args()
    manifest = Manifest.load(a.bundle)
    engine = MpeeEngine(a.bundle, threads=a.threads, engine=a.engine, thread_pool=a.thread_pool)
    task = manifest.task
    rows = read_examples(a.input, Columns(task.text_a, task.text_b, task.label_column), limit=a.examples)
    ids = [engine.encode(r.text, r.pair) for r in rows]
    cut = embeddings_of(a.full_model, Path("/tmp") / f"{a.full_model.stem}_embeddings.onnx")
    opts = session_options(a.threads, thread_pool=a.thread_pool)
    sessions = {"full": open_session(a.full_model, opts), "full_emb": open_session(cut, opts),
                "bundle_emb": open_session(a.bundle / manifest.graphs[0].file, opts)}
    feeds = {}
    for name, s in sessions.items():
        names = {x.name for x in s.get_inputs()}
        feeds[name] = [{k: v for k, v in (engine.embedding_feeds(i, t) | {"attention_mask": np.ones_like(i)}).items()
                        if k in names} for i, t in ids]
    times: dict[str, list[float]] = {name: [] for name in [*sessions, "mpee"]}
    predictions = [None] * len(ids)
    for _ in range(a.rounds):
        for start in range(0, len(ids), BLOCK):
            block = range(start, min(start + BLOCK, len(ids)))
            for name, s in sessions.items():
                s.run(None, feeds[name][block[0]])
                for j in block:
                    t = time.perf_counter()
                    s.run(None, feeds[name][j])
                    times[name].append(time.perf_counter() - t)
            engine.run_ids(*ids[block[0]])
            for j in block:
                t = time.perf_counter()
                predictions[j] = engine.run_ids(*ids[j])
                times["mpee"].append(time.perf_counter() - t)
    fm = manifest.flops_model()
    rho, _ = fm.dataset_speedups([i.shape[1] for i, _ in ids], [q.flops for q in predictions])
    layers = float(np.mean([q.exit_layer for q in predictions]))
    us = {k: float(np.mean(v)) * 1e6 for k, v in times.items()}
    ideal = us["bundle_emb"] + (us["full"] - us["full_emb"]) / rho
    extra = (us["mpee"] - ideal) / layers
    # The same by layers run rather than FLOPs: each executed layer at the full model's mean layer time. What
    # separates the two is pruning's FLOPs saving, which at short inputs saves less time (weights dominate).
    per_layer = (us["full"] - us["full_emb"]) / fm.num_layers
    by_layers = us["bundle_emb"] + layers * per_layer
    print(f"{a.bundle} ({manifest.precision}, engine {a.engine}), {len(ids)} examples x {a.rounds} rounds, "
          f"{np.mean([i.shape[1] for i, _ in ids]):.1f} tokens on average, {a.threads} threads\n")
    print("| figure | value |\n|---|---:|")
    print(f"| full model, mean us | {us['full']:.0f} |")
    print(f"| its embeddings (the fused graph cut after them), us | {us['full_emb']:.0f} |")
    print(f"| the bundle's embeddings graph, us | {us['bundle_emb']:.0f} |")
    print(f"| MPEE at its operating point, us | {us['mpee']:.0f} |")
    print(f"| rho / mean exit layer | {rho:.2f} / {layers:.2f} |")
    print(f"| speed-up / realisation | {us['full'] / us['mpee']:.2f}x / {us['full'] / us['mpee'] / rho:.3f} |")
    print(f"| T_ideal (layers at their FLOPs share), us | {ideal:.0f} |")
    print(f"| **ceiling** (realisation with no per-layer extra) | **{us['full'] / (rho * ideal):.3f}** |")
    print(f"| extra per executed layer, us | {extra:.1f} |")
    print(f"| the full model's mean layer, us | {per_layer:.0f} |")
    print(f"| T_layers (executed layers at that time), us / speed-up | {by_layers:.0f} / "
          f"{us['full'] / by_layers:.2f}x |")
    print(f"| extra per executed layer over T_layers, us | {(us['mpee'] - by_layers) / layers:.1f} |")
    for target in TARGETS:
        budget = (us["full"] / (rho * target) - ideal) / layers
        print(f"| budget per executed layer for realisation {target}, us | {budget:.1f} |")


if __name__ == "__main__":
    main()
