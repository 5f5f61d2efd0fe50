"""How far MPEE's measured speed-up can come to its FLOPs speed-up at batch 1: the realisation ceiling.

    python benchmarks/realisation_ceiling.py BUNDLE REF/model_fused.onnx --input dev.tsv [--examples 300]
        [--engine chain|graph] [--threads 2]

Realisation is speed-up / rho (rho: the full model's FLOPs over the FLOPs executed, embeddings not counted). A
run that exits at some layer still pays the embeddings in full, so even layers that cost exactly their share of
the full model's time give

    T_ideal = T_emb + (T_full - T_emb_full) / rho,    ceiling = T_full / (rho x T_ideal)

with T_emb the bundle's embeddings graph and T_emb_full the full model's own embeddings (the fused graph cut at
its embeddings' LayerNormalization). T_layers counts layers instead of FLOPs (each executed layer at the full
model's mean layer time): the gap between the two is what pruning saves in FLOPs but not in time. What the bundle
spends above T_ideal is the method's own work per executed layer (exit head, score, pruning step, exit rule, the
call or branch per layer): `extra per layer` below, against the `budget per layer` a target realisation leaves.
Every model runs on the same token ids in mpee-bench's interleaved pass (`bench.measure.measure`: blocks of 16
examples, a shuffled turn order, one untimed run first), 2 threads on onnxruntime's process-wide pool (as the
map's runs), the runtime's session options; MPEE at the bundle's own operating point (its default threshold and
keep ratios, or its length points).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx

from mpee_runtime.bench.measure import Outcome, Variant, chain_variant, full_model_variant, measure
from mpee_runtime.bench.records import VariantInfo
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.session import open_session, session_options
from mpee_runtime.text.readers import Columns, read_examples

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


def graph_variant(name: str, path: Path, threads: int, thread_pool: str) -> Variant:
    """One graph on the embeddings' inputs (a cut of the full model, the bundle's embeddings graph), as a Variant
    of mpee-bench's interleaved pass; its outcome fields are placeholders (only its time is read)."""
    sess = open_session(path, session_options(threads, thread_pool=thread_pool))
    names = {x.name for x in sess.get_inputs()}

    def run(ids, types):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        sess.run(None, {k: v for k, v in feeds.items() if k in names})
        return Outcome(0, 0, 0, [])
    return Variant(VariantInfo(name, name), run)


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
    fm = manifest.flops_model()
    full = full_model_variant(VariantInfo("full", "the full model", path=str(a.full_model)), fm, a.threads,
                              True, a.thread_pool)
    variants = [full, graph_variant("full_emb", cut, a.threads, a.thread_pool),
                graph_variant("bundle_emb", a.bundle / manifest.graphs[0].file, a.threads, a.thread_pool),
                chain_variant(VariantInfo("mpee", "MPEE at the bundle's point"), engine)]
    for _ in range(a.rounds):
        measure(variants, ids, warmup=0, progress=False)
    times = {v.name: [r.time_us for r in v.rows] for v in variants}
    mpee = variants[-1].rows[:len(ids)]
    rho, _ = fm.dataset_speedups([r.input_tokens for r in mpee], [r.flops for r in mpee])
    layers = float(np.mean([r.exit_layer for r in mpee]))
    us = {k: float(np.mean(v)) for k, v in times.items()}
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
