"""Export a checkpoint to a bundle (DESIGN 2-3): one ONNX graph for the embeddings and one per layer,
tokenizer.json and manifest.json, validated against PyTorch, optionally quantized, written atomically.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers

from mpee_runtime import __version__ as runtime_version
from mpee_runtime import schema as S
from mpee_runtime.engine import MpeeEngine
from mpee_runtime.flops import FLOPS_CONVENTION

from . import __version__
from .errors import MpeeExportError
from .modeling import MpeeModel
from .subgraphs import ChainGraph, EmbeddingsGraph, LayerGraph
from .validate import ATOL, MIN_AGREEMENT, check_chain, check_graphs

DEFAULT_OPSET = 17
DUMMY_SEQ = 16  # neither 1 nor a model constant, so no axis is traced as fixed


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    quantize: str | None = None          # None or "int8"
    force: bool = False
    untrained_exits: bool = False        # the manifest records it
    optimize: bool = False               # onnxruntime transformer fusions on the layer graphs


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty or unwritable output before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MpeeExportError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise MpeeExportError(f"{out} is not empty (pass --force to replace it)")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise MpeeExportError(f"parent folder of {out} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise MpeeExportError(f"{out} is not writable")


def check_opset(opset: int) -> None:
    if opset < S.MIN_OPSET:
        raise MpeeExportError(f"opset {opset} is below the minimum {S.MIN_OPSET}")
    if opset > onnx.defs.onnx_opset_version():
        raise MpeeExportError(f"opset {opset} is above what onnx {onnx.__version__} knows "
                              f"({onnx.defs.onnx_opset_version()})")


def _torch_export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                  opset: int) -> None:
    # A fresh wrapper module is in training mode, and export restores that mode afterwards, which
    # would switch the wrapped model's dropout on: put the wrapper in eval mode first.
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer warnings about shape-dependent Python values
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=S.dynamic_axes(inputs + outputs), opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    onnx.checker.check_model(str(path))


def dummy_inputs(model: MpeeModel, names: list[str]) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    d, c, n = model.config.hidden_size, model.mpee.num_labels, DUMMY_SEQ
    values = {S.INPUT_IDS: torch.randint(5, model.config.vocab_size, (1, n), generator=g),
              S.TOKEN_TYPE_IDS: (torch.arange(n)[None] >= n // 2).long(),
              S.HIDDEN: torch.randn(1, n, d, generator=g), S.SCORES: torch.rand(1, n - 1, generator=g),
              S.MEMORY: torch.randn(1, c, generator=g), S.KEEP_RATIO: torch.tensor(0.7)}
    return tuple(values[k] for k in names)


def export_graphs(model: MpeeModel, folder: Path, opset: int) -> list[S.GraphEntry]:
    """Write embeddings.onnx and layer_XX.onnx into `folder`; return their manifest entries."""
    model.eval()
    entries = []
    emb_in, emb_out = [S.INPUT_IDS, S.TOKEN_TYPE_IDS], [S.HIDDEN]
    _torch_export(EmbeddingsGraph(model), dummy_inputs(model, emb_in), folder / S.EMBEDDINGS, emb_in, emb_out,
                  opset)
    entries.append(S.GraphEntry("embeddings", S.EMBEDDINGS, S.sha256_of(folder / S.EMBEDDINGS), emb_in, emb_out))
    for i in range(model.mpee.num_layers):
        graph = LayerGraph(model, i)
        path = folder / S.layer_file(i)
        _torch_export(graph, dummy_inputs(model, graph.input_names), path, graph.input_names,
                      list(S.LAYER_OUTPUTS), opset)
        entries.append(S.GraphEntry(f"layer_{i:02d}", path.name, S.sha256_of(path), graph.input_names,
                                    list(S.LAYER_OUTPUTS), layer=i, prunes=graph.prunes))
    return entries


def export_chain_graph(model: MpeeModel, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """The whole model as one graph (no early exit): the single-graph reference for size and latency."""
    graph = ChainGraph(model)
    names = list(graph.input_names)
    _torch_export(graph, dummy_inputs(model, names), path, names, list(graph.output_names), opset)


def task_block(task_name: str | None) -> dict | None:
    """What the runtime needs to read the task's GLUE TSV files and score them."""
    if task_name is None:
        return None
    from .glue import get_task
    t = get_task(task_name)
    return {"name": t.name, "text_a": t.text_a, "text_b": t.text_b, "label_column": t.label_column,
            "metric": t.metric}


def build_manifest(model: MpeeModel, entries: list[S.GraphEntry], tokenizer_sha: str, opts: ExportOptions,
                   extra: dict | None = None) -> dict:
    c, m = model.config, model.mpee
    return {
        "schema_version": S.SCHEMA_VERSION,
        "format": "mpee-bundle",
        "model": {"num_layers": m.num_layers, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
                  "num_heads": c.num_attention_heads, "num_labels": m.num_labels, "labels": m.labels,
                  "task": m.task, "max_length": m.max_length, "vocab_size": c.vocab_size},
        "pruning": {"prune_layers": m.prune_layers, "keep_ratios": m.keep_ratios, "scoring": m.scoring,
                    "prune_select": m.prune_select, "fuse_token": m.fuse_token, "betas": m.betas, "lam": m.lam},
        "task": task_block(m.task),
        "exit": {"default_policy": m.default_policy, "default_threshold": m.default_threshold,
                 "layer_exit": m.layer_exit},
        "flops": {"hidden": c.hidden_size, "ffn": c.intermediate_size, "num_labels": m.num_labels,
                  "num_layers": m.num_layers, "convention": FLOPS_CONVENTION},
        "tokenizer": {"file": S.TOKENIZER, "sha256": tokenizer_sha},
        "graphs": [asdict(e) for e in entries],
        "export": {"opset": opts.opset, "quantization": opts.quantize, "optimized": opts.optimize,
                   "untrained_exits": opts.untrained_exits},
        "versions": {"mpee_export": __version__, "mpee_runtime": runtime_version, "torch": torch.__version__,
                     "transformers": transformers.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "python": platform.python_version()},
    } | (extra or {})


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / S.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def validation_examples(tokenizer, texts: list[tuple[str, str | None]] | None, model: MpeeModel,
                        n_random: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids of real texts (when given) or of random token sequences of varied length."""
    if texts:
        examples = []
        for a, b in texts:
            enc = tokenizer(a, b, truncation=True, max_length=model.mpee.max_length)
            examples.append((np.asarray([enc["input_ids"]], dtype=np.int64),
                             np.asarray([enc["token_type_ids"]], dtype=np.int64)))
        return examples
    rng = np.random.default_rng(1)
    out = []
    for n in rng.integers(3, min(64, model.mpee.max_length), n_random):
        ids = rng.integers(5, model.config.vocab_size, (1, n)).astype(np.int64)
        ids[0, 0] = tokenizer.cls_token_id
        ids[0, -1] = tokenizer.sep_token_id
        out.append((ids, np.zeros_like(ids)))
    return out


def validate_bundle(model: MpeeModel, folder: Path, examples, labels=None, *, precision: str = "fp32") -> dict:
    """Graph-level and chain-level checks of the bundle at `folder` against `model`."""
    manifest = S.load_manifest(folder)
    graphs = check_graphs(model, folder, S.graph_entries(manifest), examples[:8])
    engine = MpeeEngine(folder, threads=2, warmup=0)
    policy, threshold = manifest["exit"]["default_policy"], manifest["exit"]["default_threshold"]
    chain = check_chain(model, engine, examples, policy=policy, threshold=threshold, labels=labels)
    full = check_chain(model, engine, examples, policy="entropy", threshold=0.0, labels=labels)
    result = {"precision": precision, "graphs": graphs, "chain": chain, "chain_full_depth": full}
    if precision == "fp32":
        bad = [f"{k}: {v:.2e}" for k, v in graphs["max_abs_diff"].items() if v > ATOL["fp32"]]
        problems = graphs["errors"] + bad
        if chain["same_exit_layer"] < MIN_AGREEMENT or chain["same_label"] < MIN_AGREEMENT:
            problems.append(f"chain agreement exit {chain['same_exit_layer']:.4f} label {chain['same_label']:.4f} "
                            f"< {MIN_AGREEMENT}")
        result["passed"] = not problems
        result["problems"] = problems
    else:
        result["passed"] = None   # int8 is reported, not gated
    return result


def atomic_publish(tmp: Path, out: Path) -> None:
    """Move the finished bundle into place; an existing `out` (with --force) is replaced."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def make_temp_beside(out: Path) -> Path:
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))


def calibrate_threshold(engine: MpeeEngine, examples, labels: list[int], *, full_accuracy: float,
                        max_drop: float, policy: str = "entropy", thresholds=None) -> dict:
    """The threshold with the fewest FLOPs executed (measured by the runtime on `examples`) whose accuracy
    stays within `max_drop` points of `full_accuracy`. One full-depth pass per keep ratio, then the exit
    rule offline. Keep ratios tried: the bundle's own and 1 (no pruning), because pruning alone can cost
    more than `max_drop` on some tasks; the chosen one becomes the bundle's default."""
    from mpee_runtime.policy import first_exit_layers
    if thresholds is None:   # entropy ranges over [0, log C]
        thresholds = [round(float(x), 4) for x in np.linspace(0, np.log(len(engine.labels)), 70)]
    ratios = [None] + ([1.0] if any(r != 1.0 for r in engine.default_keep_ratios.values()) else [])
    fm = engine.flops_model
    full = sum(fm.full_flops(int(ids.shape[1])) for ids, _ in examples)
    candidates = []
    for ratio in ratios:
        traces = [engine.run_ids(ids, types, threshold=0.0, policy="entropy", keep_ratio=ratio, record=True)
                  for ids, types in examples]
        probs = np.array([t.layer_probs for t in traces])             # (n, L, C)
        ents = np.array([t.layer_entropies for t in traces])
        for thr in thresholds:
            exits = first_exit_layers(probs, ents, policy, thr)
            preds = probs[np.arange(len(exits)), exits - 1].argmax(-1)
            flops = sum(fm.executed_flops(t.tokens_per_layer[:e], t.ffn_tokens_per_layer[:e])
                        for t, e in zip(traces, exits.tolist()))
            candidates.append({"threshold": thr, "keep_ratio": ratio,
                               "accuracy": float((preds == np.array(labels)).mean()),
                               "mean_exit_layer": float(exits.mean()), "rho": full / flops})
    floor = full_accuracy - max_drop / 100
    ok = [c for c in candidates if c["accuracy"] >= floor]
    if not ok:
        raise MpeeExportError(f"no threshold keeps accuracy within {max_drop} points of {full_accuracy:.4f}")
    best = max(ok, key=lambda c: c["rho"])
    return {"policy": policy, "max_drop_points": max_drop, "fp32_full_model_accuracy": full_accuracy,
            "examples": len(examples), "cost": "FLOPs executed by the runtime", "chosen": best,
            "candidates": candidates}


def export_bundle(model: MpeeModel, tokenizer, out: Path, opts: ExportOptions, *, texts=None, labels=None,
                  calibration: dict | None = None, full_accuracy: float | None = None, log=print) -> dict:
    """Export, validate, optionally quantize and calibrate; publish `out` only if everything succeeded.

    Args:
        texts / labels: real examples (text, pair) and their class indices for validation and calibration.
        calibration: {"max_drop": D, "examples": [...], "labels": [...]} to pick the default threshold.
    Returns:
        The validation record (also written to out/validation.json).
    """
    out = Path(out)
    check_out_dir(out, opts.force)
    check_opset(opts.opset)
    tmp = make_temp_beside(out)
    try:
        entries = export_graphs(model, tmp, opts.opset)
        if opts.optimize:
            from .optimize import optimize_layers
            entries = optimize_layers(tmp, entries, num_heads=model.config.num_attention_heads,
                                      hidden=model.config.hidden_size)
        tokenizer.backend_tokenizer.save(str(tmp / S.TOKENIZER))
        tok_sha = S.sha256_of(tmp / S.TOKENIZER)
        write_manifest(tmp, build_manifest(model, entries, tok_sha, opts))
        examples = validation_examples(tokenizer, texts, model)
        log(f"exported {len(entries)} graphs; validating on {len(examples)} "
            f"{'real' if texts else 'random'} examples")
        record = {"fp32": validate_bundle(model, tmp, examples, labels)}
        if not record["fp32"]["passed"]:
            raise MpeeExportError("fp32 parity check failed: " + "; ".join(record["fp32"]["problems"][:3]))
        extra: dict = {}
        if opts.quantize == "int8":
            from .quantize import quantize_layers
            entries = quantize_layers(tmp, entries)
            write_manifest(tmp, build_manifest(model, entries, tok_sha, opts))
            record["int8"] = validate_bundle(model, tmp, examples, labels, precision="int8")
        if calibration is not None:
            engine = MpeeEngine(tmp, threads=2, warmup=0)
            cal = calibrate_threshold(engine, calibration["examples"], calibration["labels"],
                                      full_accuracy=full_accuracy, max_drop=calibration["max_drop"])
            extra["calibration"] = cal
            model.mpee.default_threshold = cal["chosen"]["threshold"]
            if cal["chosen"]["keep_ratio"] is not None:
                model.mpee.keep_ratios = [cal["chosen"]["keep_ratio"]] * len(model.mpee.prune_layers)
        summary = {k: {"passed": v["passed"], "graph_max_abs_diff": v["graphs"]["max_abs_diff_overall"],
                       **{f"chain_{x}": v["chain"][x] for x in ("examples", "same_exit_layer", "same_label",
                                                                "max_prob_diff_same_exit")}}
                   for k, v in record.items()}
        manifest = build_manifest(model, entries, tok_sha, opts, {"validation": summary})
        if "calibration" in extra:
            manifest["exit"]["calibration"] = {k: v for k, v in extra["calibration"].items() if k != "candidates"}
        write_manifest(tmp, manifest)
        (tmp / "validation.json").write_text(json.dumps(record | extra, indent=1) + "\n")
        atomic_publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record | extra
