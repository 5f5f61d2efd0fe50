"""Export benchmark: time to export, bundle size against one single graph, and whether the optional
graph optimisation (onnxruntime transformer fusions) or int8 helps the per-layer graphs.

Usage: python benchmarks/bench_export.py [--out benchmarks/results/export.json] [--repeats 200]
Random weights; sizes: bert-base (12 x 768, FFN 3072, 12 heads) and all-MiniLM-L6-v2 (6 x 384, 1536).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch
from transformers import AutoTokenizer, BertConfig

from mpee_export.export.bundle import ExportOptions, export_bundle, export_chain_graph, export_graphs
from mpee_export.export.dummies import dummy_feeds
from mpee_export.export.optimize import optimize_layers
from mpee_export.export.quantize import quantize_layers
from mpee_export.model.checkpoint import default_backbone
from mpee_export.model.config import MpeeConfig
from mpee_export.model.modeling import MpeeModel
from mpee_runtime.bench.env import environment
from mpee_runtime.bundle.contract import OPSET, layer_file, layer_inputs
from mpee_runtime.core.session import open_session
from mpee_runtime.files import write_text

SIZES = {
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "minilm-l6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
}


def random_model(size: str) -> MpeeModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, **SIZES[size])
    mpee = MpeeConfig.build(num_layers=config.num_hidden_layers, labels=["0", "1"])
    return MpeeModel(config, mpee).eval()


def folder_bytes(folder: Path, suffix: str = ".onnx") -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffix))


def layer_latency_us(paths: dict[str, Path], feeds: dict, repeats: int, threads: int) -> dict[str, float]:
    """Median latency of each variant's graph, the variants interleaved call by call."""
    sessions = {k: open_session(p, threads=threads, spinning=False) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(repeats + 20):
        for k, s in sessions.items():
            t = time.perf_counter_ns()
            s.run(None, feeds)
            if i >= 20:   # warm-up
                times[k].append((time.perf_counter_ns() - t) / 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/export.json"))
@click.option("--repeats", default=200, show_default=True)
@click.option("--threads", default=2, show_default=True)
def main(out: Path, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    backbone = default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    results: dict = {"environment": environment(threads=threads)}
    for size in SIZES:
        model = random_model(size)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            graphs = tmp / "graphs"
            graphs.mkdir()
            t = time.perf_counter()
            entries = export_graphs(model, graphs, OPSET)
            graph_s = time.perf_counter() - t
            t = time.perf_counter()
            export_bundle(model, tokenizer, tmp / "bundle", ExportOptions(), log=lambda m: None)
            bundle_s = time.perf_counter() - t
            export_chain_graph(model, tmp / "single.onnx")
            single = (tmp / "single.onnx").stat().st_size
            bundle = folder_bytes(tmp / "bundle")
            row = {"export_graphs_s": round(graph_s, 2), "export_bundle_with_validation_s": round(bundle_s, 2),
                   "bundle_onnx_bytes": bundle, "single_graph_bytes": single,
                   "size_ratio": round(bundle / single, 4)}
            # per-layer latency: plain vs fused vs int8, on layer 1 (not pruning) and the first pruning layer
            variants = {"fp32": graphs}
            heads, hidden = model.config.num_attention_heads, model.config.hidden_size

            def fused(f, e, heads=heads, hidden=hidden):
                return optimize_layers(f, e, num_heads=heads, hidden=hidden)

            for name, fn in (("fp32_optimized", fused), ("int8", quantize_layers)):
                folder = tmp / name
                folder.mkdir()
                for e in entries:
                    (folder / e.file).write_bytes((graphs / e.file).read_bytes())
                fn(folder, entries)
                variants[name] = folder
            d, prune_at = model.config.hidden_size, model.mpee.prune_layers[0]
            for layer in (1, prune_at):
                for seq in (16, 64):
                    names = layer_inputs(layer, layer in model.mpee.prune_layers)
                    feeds = dummy_feeds(names, hidden=d, num_labels=2, vocab_size=model.config.vocab_size,
                                          seq=seq)
                    lat = layer_latency_us({k: v / layer_file(layer) for k, v in variants.items()}, feeds,
                                           repeats, threads)
                    row[f"layer{layer}_seq{seq}_median_us"] = {k: round(v, 1) for k, v in lat.items()}
            results[size] = row
            click.echo(f"{size}: {json.dumps(row)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(results, indent=1) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
