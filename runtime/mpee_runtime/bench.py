"""mpee-bench: on-device latency and the accuracy/speed trade-off, side by side with the full model.

In one run, on the same pre-tokenised inputs and thread count, every variant classifies every example;
the order of the variants rotates from one example to the next (interleaved), after a warm-up:
  (i)   pytorch      PyTorch eager full model (needs torch + transformers; skipped with a note otherwise)
  (ii)  onnx_full    the full model exported the ordinary way (optimum), run by onnxruntime: the reference
  (iii) chain        our chain, no exit, no pruning
  (iv)  exits        layer exits only (threshold F, keep ratio 1)
  (v)   pruning      token pruning only (no exit, keep ratio r)
  (vi)  mpee         MPEE (F, r)
  (vii) mpee_int8    MPEE on the int8 bundle
plus one variant per point of the threshold x keep-ratio sweep. Latency is the model's (tokenisation is
timed once per example and reported apart). Speed-up = reference latency / variant latency.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import MpeeRuntimeError
from .metrics import classification_metrics, latency_summary


# ---------------------------------------------------------------- statistics (unit-tested on synthetic data)
def pareto_front(points: Sequence[dict], x: str = "speedup_mean", y: str = "metric") -> list[dict]:
    """Points not dominated by another (higher or equal in both x and y, strictly higher in one)."""
    front = []
    for p in points:
        dominated = any(q[x] >= p[x] and q[y] >= p[y] and (q[x] > p[x] or q[y] > p[y]) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p[x])


def operating_point(points: Sequence[dict], *, reference_metric: float | None = None,
                    max_drop: float | None = None, budget_ms: float | None = None) -> dict | None:
    """Best point for an accuracy floor (fastest by mean latency within `max_drop` points of
    `reference_metric`) or for a latency budget (highest metric whose p50 latency fits `budget_ms`);
    None when nothing qualifies. Mean latency is the throughput view, comparable with FLOPs rho."""
    if (max_drop is None) == (budget_ms is None):
        raise ValueError("give exactly one of max_drop and budget_ms")
    if max_drop is not None:
        floor = reference_metric - max_drop / 100
        ok = [p for p in points if p["metric"] >= floor - 1e-12]
        return max(ok, key=lambda p: (p["speedup_mean"], p["metric"])) if ok else None
    ok = [p for p in points if p["latency"]["p50_us"] <= budget_ms * 1000]
    return max(ok, key=lambda p: (p["metric"], p["speedup_mean"])) if ok else None


# ---------------------------------------------------------------- environment record
def environment(threads: int, spinning: bool, bundle: Path) -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "cores": os.cpu_count(), "threads": threads, "spinning": spinning, "cpu": platform.processor(),
            "cpu_flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu part") and not info.get("cpu_model"):
                info["cpu_model"] = value.strip()
            if key in ("flags", "features") and not info["cpu_flags"]:
                info["cpu_flags"] = value.split()
    except OSError:
        pass
    flags = set(info["cpu_flags"])
    info["asimddp"] = "asimddp" in flags if info["machine"] in ("aarch64", "arm64") else None
    info["avx512_vnni"] = "avx512_vnni" in flags or "avx_vnni" in flags
    info["cpu_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "asimd", "asimddp",
                                        "sve", "i8mm", "bf16"})
    versions = {}
    for dist in ("onnxruntime", "numpy", "tokenizers", "torch", "transformers", "mpee-runtime"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info["versions"] = versions
    info["manifest_sha256"] = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    return info


# ---------------------------------------------------------------- variants
@dataclass
class Variant:
    name: str
    run: Callable[[np.ndarray, np.ndarray], tuple[int, int, int, int]]  # ids, types -> label, exit, flops, full
    description: str
    settings: dict = field(default_factory=dict)
    times_us: list[float] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    flops: list[int] = field(default_factory=list)


def chain_variant(name: str, engine, description: str, *, threshold: float, keep_ratio: float | None,
                  policy: str = "entropy") -> Variant:
    fm = engine.flops_model

    def run(ids, types):
        p = engine.run_ids(ids, types, threshold=threshold, keep_ratio=keep_ratio, policy=policy)
        return p.label_index, p.exit_layer, p.flops, fm.full_flops(int(ids.shape[1]))
    return Variant(name, run, description, {"threshold": threshold, "keep_ratio": keep_ratio, "policy": policy})


def onnx_full_variant(path: Path, engine, threads: int, spinning: bool) -> Variant:
    import onnxruntime as ort

    from .engine import session_options
    sess = ort.InferenceSession(str(path), session_options(threads, spinning), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    fm, layers = engine.flops_model, engine.num_layers

    def run(ids, types):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        (logits,) = sess.run(None, {k: v for k, v in feeds.items() if k in names})
        full = fm.full_flops(int(ids.shape[1]))
        return int(logits[0].argmax()), layers, full, full
    return Variant("onnx_full", run, "full model exported with optimum, onnxruntime", {"path": str(path)})


def pytorch_variant(hf_dir: Path, engine, threads: int) -> Variant | str:
    """PyTorch eager full model, or the reason it is skipped."""
    try:
        import torch
        from transformers import BertForSequenceClassification
    except ImportError:
        return "skipped: torch/transformers not installed"
    if not hf_dir.is_dir():
        return f"skipped: no {hf_dir}"
    torch.set_num_threads(threads)
    model = BertForSequenceClassification.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    fm, layers = engine.flops_model, engine.num_layers

    def run(ids, types):
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types)).logits
        full = fm.full_flops(int(ids.shape[1]))
        return int(logits[0].argmax()), layers, full, full
    return Variant("pytorch", run, "PyTorch eager full model", {"torch_threads": threads})


def measure(variants: list[Variant], inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int,
            progress: bool = True) -> None:
    """Every variant on every input, in rotating order; the first `warmup` inputs are run but not kept."""
    n_v = len(variants)
    for i in range(warmup):
        for v in variants:
            v.run(*inputs[i % len(inputs)])
    start = time.time()
    for i, (ids, types) in enumerate(inputs):
        for j in range(n_v):
            v = variants[(i + j) % n_v]
            t = time.perf_counter_ns()
            label, exit_layer, flops, full = v.run(ids, types)
            v.times_us.append((time.perf_counter_ns() - t) / 1e3)
            v.preds.append(label)
            v.exits.append(exit_layer)
            v.flops.append((flops, full))
        if progress and (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(inputs)} examples, {time.time() - start:.0f} s", file=sys.stderr)


def summarize(v: Variant, labels: list[int] | None, metric: str, pad128_full: int) -> dict:
    """Metric, exit layers, rho (both conventions) and latency statistics of one variant."""
    executed = sum(f for f, _ in v.flops)
    row = {"variant": v.name, "description": v.description, **v.settings,
           "mean_exit_layer": float(np.mean(v.exits)), "rho": sum(f for _, f in v.flops) / executed,
           "rho_pad128": len(v.flops) * pad128_full / executed, "latency": latency_summary(v.times_us)}
    if labels is not None:
        scores = classification_metrics(v.preds, labels, with_f1=metric == "f1")
        row |= {"metric": scores[metric], "metric_name": metric, "accuracy": scores["accuracy"]}
    return row


def add_speedups(rows: list[dict], reference: dict) -> None:
    for r in rows:
        r["speedup_p50"] = reference["latency"]["p50_us"] / r["latency"]["p50_us"]
        r["speedup_mean"] = reference["latency"]["mean_us"] / r["latency"]["mean_us"]


# ---------------------------------------------------------------- reports
def markdown_table(rows: list[dict], task: str) -> str:
    """Rows laid out like the paper's Table 1: method, metric, FLOPs speed-up, measured speed-up."""
    head = (f"| Method | {task} {rows[0].get('metric_name', 'metric')} | FLOPs speed-up rho | rho (pad 128) | "
            "measured speed-up, mean latency (p50) | mean exit layer | p50 / p99 latency (ms) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        metric = f"{100 * r['metric']:.2f}" if "metric" in r else "-"
        lines.append(f"| {r['variant']}: {r['description']} | {metric} | {r['rho']:.2f}x | {r['rho_pad128']:.2f}x | "
                     f"{r['speedup_mean']:.2f}x ({r['speedup_p50']:.2f}x) | {r['mean_exit_layer']:.2f} | "
                     f"{r['latency']['p50_us'] / 1e3:.2f} / {r['latency']['p99_us'] / 1e3:.2f} |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    cols = ["variant", "threshold", "keep_ratio", "metric", "accuracy", "mean_exit_layer", "rho", "rho_pad128",
            "speedup_p50", "speedup_mean"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + ["p50_us", "p90_us", "p99_us", "mean_us"])
        for r in rows:
            w.writerow([r.get(c) for c in cols] + [r["latency"][k] for k in ("p50_us", "p90_us", "p99_us", "mean_us")])


def plot(path: Path, sweep: list[dict], table: list[dict], reference: dict, task: str) -> str | None:
    """Metric against measured speed-up (and against FLOPs rho) per keep ratio; None or why it was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib not installed"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ratio in sorted({r["keep_ratio"] for r in sweep}):
        pts = sorted((r for r in sweep if r["keep_ratio"] == ratio), key=lambda r: r["threshold"])
        line, = ax.plot([r["speedup_mean"] for r in pts], [100 * r["metric"] for r in pts], "o-",
                        label=f"measured (mean latency), keep ratio {ratio}")
        ax.plot([r["rho"] for r in pts], [100 * r["metric"] for r in pts], "x--", color=line.get_color(),
                alpha=0.6, label=f"FLOPs rho, keep ratio {ratio}")
    ax.axhline(100 * reference["metric"], color="grey", lw=0.8, ls=":", label="full model (optimum/ORT)")
    ax.set_xlabel("speed-up over the full model (x)")
    ax.set_ylabel(f"{task} {reference.get('metric_name', 'metric')} (%)")
    ax.set_title(f"MPEE trade-off on {task}: measured latency vs FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- command
def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MpeeRuntimeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .cli import _Parser
    p = _Parser(prog="mpee-bench", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", type=Path, required=True, help="GLUE TSV or JSONL with labels (e.g. dev.tsv)")
    p.add_argument("--reference", type=Path, help="folder from `mpee-export reference`: model.onnx (+ hf/)")
    p.add_argument("--int8", type=Path, help="int8 bundle of the same model")
    p.add_argument("--threshold", type=float, help="F for exits/mpee [default: the bundle's]")
    p.add_argument("--keep-ratio", type=float, default=None, help="r for pruning/mpee [default: the bundle's]")
    p.add_argument("--thresholds", default="0,0.05,0.1,0.2,0.3,0.4,0.5,0.6", help="sweep thresholds")
    p.add_argument("--keep-ratios", default="0.5,0.7,1.0", help="sweep keep ratios")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--max-examples", type=int, help="use the first N examples")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spinning", action="store_true")
    p.add_argument("--max-drop", type=float, help="name the fastest point within D points of the full model")
    p.add_argument("--budget-ms", type=float, help="name the most accurate point with p50 within B ms")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, sweep.csv, table.md, plot")
    return p


def run(args: argparse.Namespace) -> dict:
    from .cli import read_inputs
    from .engine import MpeeEngine
    from .flops import PAD_LEN
    from .policy import check_threshold
    if args.max_drop is not None and args.budget_ms is not None:
        raise MpeeRuntimeError("give at most one of --max-drop and --budget-ms")
    engine = MpeeEngine(args.bundle, threads=args.threads, spinning=args.spinning)
    threshold = engine.default_threshold if args.threshold is None else args.threshold
    check_threshold("entropy", threshold)
    ratio = args.keep_ratio if args.keep_ratio is not None else (
        engine.manifest["pruning"]["keep_ratios"] or [1.0])[0]
    engine.keep_ratio_feeds(ratio)
    grid_t, grid_r = _floats(args.thresholds), _floats(args.keep_ratios)
    for t in grid_t:
        check_threshold("entropy", t)
    for r in grid_r:
        engine.keep_ratio_feeds(r)
    examples = list(read_inputs(args.input, engine.manifest.get("task")))[: args.max_examples]
    if not examples:
        raise MpeeRuntimeError(f"{args.input}: no examples")
    label_ids = {label: i for i, label in enumerate(engine.labels)}
    labels = [label_ids.get(x[2]) for x in examples]
    labels = None if any(x is None for x in labels) else labels
    tok_us, inputs = [], []
    for text, pair, _ in examples:
        t = time.perf_counter_ns()
        inputs.append(engine.encode(text, pair))
        tok_us.append((time.perf_counter_ns() - t) / 1e3)
    notes = []
    variants: list[Variant] = []
    if args.reference is not None:
        pt = pytorch_variant(args.reference / "hf", engine, args.threads)
        if isinstance(pt, str):
            notes.append(f"pytorch: {pt}")
        else:
            variants.append(pt)
        if not (args.reference / "model.onnx").is_file():
            raise MpeeRuntimeError(f"{args.reference}: no model.onnx (make it with `mpee-export reference`)")
        variants.append(onnx_full_variant(args.reference / "model.onnx", engine, args.threads, args.spinning))
    else:
        notes.append("pytorch, onnx_full: skipped (no --reference); speed-ups are against the chain")
    variants += [chain_variant("chain", engine, "our chain, no exit, no pruning", threshold=0.0, keep_ratio=1.0),
                 chain_variant("exits", engine, "layer exits only", threshold=threshold, keep_ratio=1.0),
                 chain_variant("pruning", engine, "token pruning only", threshold=0.0, keep_ratio=ratio),
                 chain_variant("mpee", engine, "MPEE", threshold=threshold, keep_ratio=ratio)]
    if args.int8 is not None:
        int8 = MpeeEngine(args.int8, threads=args.threads, spinning=args.spinning)
        variants.append(chain_variant("mpee_int8", int8, "MPEE int8", threshold=int8.default_threshold,
                                      keep_ratio=ratio))
    else:
        notes.append("mpee_int8: skipped (no --int8 bundle)")
    n_main = len(variants)
    if not args.no_sweep:
        variants += [chain_variant(f"sweep_F{t}_r{r}", engine, "sweep point", threshold=t, keep_ratio=r)
                     for r in grid_r for t in grid_t]
    print(f"mpee-bench: {len(inputs)} examples x {len(variants)} variants, {args.threads} threads",
          file=sys.stderr)
    measure(variants, inputs, args.warmup)
    task = (engine.manifest.get("task") or {}).get("name", "task")
    metric = (engine.manifest.get("task") or {}).get("metric", "accuracy")
    pad128 = engine.flops_model.full_flops(PAD_LEN)
    rows = [summarize(v, labels, metric, pad128) for v in variants]
    table, sweep = rows[:n_main], rows[n_main:]
    reference = next((r for r in table if r["variant"] == "onnx_full"), table[0] if table[0]["variant"] != "pytorch"
                     else table[1])
    add_speedups(rows, reference)
    result = {"task": task, "examples": len(inputs), "environment": environment(args.threads, args.spinning,
                                                                                 args.bundle),
              "reference": reference["variant"], "tokenize": latency_summary(tok_us), "notes": notes,
              "variants": table, "sweep": sweep}
    if labels is not None and sweep:
        result["pareto"] = [{k: p[k] for k in ("threshold", "keep_ratio", "metric", "speedup_mean", "speedup_p50",
                                               "rho")}
                            for p in pareto_front(sweep)]
        if args.max_drop is not None or args.budget_ms is not None:
            best = operating_point(sweep, reference_metric=reference["metric"], max_drop=args.max_drop,
                                   budget_ms=args.budget_ms)
            result["operating_point"] = best and {k: best[k] for k in ("threshold", "keep_ratio", "metric",
                                                                        "speedup_mean", "speedup_p50", "rho",
                                                                        "latency")}
    return result | {"_rows": (table, sweep, reference)}


def write_outputs(result: dict, out: Path) -> None:
    table, sweep, reference = result.pop("_rows")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown_table(table, result["task"]) if "metric" in table[0] else ""
    (out / "table.md").write_text(md)
    if sweep:
        write_csv(out / "sweep.csv", sweep)
        if "metric" in sweep[0]:
            note = plot(out / "tradeoff.png", sweep, table, reference, result["task"])
            if note:
                result["notes"].append(f"plot: {note}")
                (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_intermixed_args(argv)
        result = run(args)
        write_outputs(result, args.out)
    except MpeeRuntimeError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print((args.out / "table.md").read_text() or json.dumps(result["variants"], indent=1))
    for note in result["notes"]:
        print(f"note: {note}")
    if result.get("operating_point"):
        op = result["operating_point"]
        print(f"operating point: F={op['threshold']} r={op['keep_ratio']}: metric {100 * op['metric']:.2f}, "
              f"speed-up {op['speedup_mean']:.2f}x (mean latency), p50 {op['latency']['p50_us'] / 1e3:.2f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
