"""mpee-bench: on-device latency and the accuracy/speed trade-off, side by side with the full model.

Variants, on the same pre-tokenised inputs and thread count:
  pytorch          PyTorch eager full model (from REF/hf; needs torch + transformers, skipped with a note otherwise)
  onnx_full        full model, optimum's plain export (REF/model.onnx), fp32
  onnx_fused       onnx_full after onnxruntime's offline transformer fusions (REF/model_fused.onnx), fp32
  onnx_fused_int8  onnx_fused in dynamic int8 with optimum's recipe for the CPU (REF/model_fused_int8.onnx)
  chain            our chain, no exit, no pruning (fp32)
  chain_aa         the same chain again, from a second load of the bundle: the A/A control
  exits            layer exits only (threshold F, keep ratio 1)
  pruning          token pruning only (no exit, keep ratio r)
  mpee             MPEE (F, r)
  chain_int8       the int8 bundle's chain, no exit, no pruning
  mpee_int8        MPEE on the int8 bundle
plus one variant per point of the threshold x keep-ratio sweep (fp32 bundle), and the static-depth
alternative: the same model always leaving at exit k (k = 1..L; policy "depth"), at keep ratio 1 and at
the bundle's keep ratio; `static_comparison` says where MPEE beats it at equal speed-up. Exits use the bundle's exit
policy (or --policy) with threshold F; variants without exits run every layer. Latency is the model's
(tokenisation is timed once per example and reported apart).

Baselines. Every speed-up says what it is against:
  speedup_mean / speedup_p50   against the best full model of the row's precision: fp32 rows (the sweep
                               too) against the faster of onnx_full and onnx_fused by mean latency, int8
                               rows against onnx_fused_int8 (`speedup_baseline` names the row used);
  *_vs_plain_fp32              against onnx_full, the plain fp32 optimum export.
results.json's `baselines` block says which variant is the baseline of each precision. Without --reference
there is no full model: every speed-up (int8 rows too) is against the chain, and the notes say so.

Method. (1) Every onnxruntime variant, the sweep's too, runs in one interleaved pass, in blocks: the
examples are cut into blocks of --block consecutive examples (default 16); for each block the variants
take turns in a fresh random order (seeded, so reproducible), and each variant runs the whole block back
to back, after one untimed run of the block's first example. So every variant is timed as a deployed
model runs, with its own weights warm in the caches, and slow drifts of the machine still hit all variants
alike. Interleaving example by example (--block 1) timed each run right after another model's: the
weights of whichever variants shared a session (the fp32 bundle serves the chain, the exits, MPEE and the
whole sweep) stayed warm in the 32 MB L3 cache while the full models' and the int8 bundle's did not; the
same int8 chain measured as two variants, one of them twice per example, came out 13% faster in its
doubled copy (SST-2 dev, 2 threads). (2) PyTorch gets a pass of its own
after that one, with torch.set_num_threads(--threads); torch is not even imported before the onnxruntime
pass ends, because its OpenMP threads keep spinning after each call and, interleaved, slowed onnxruntime
by 20-40% on 2 cores (measured: onnx_full 5.8 ms alone, 7.1-8.1 ms with PyTorch in the rotation),
inflating every speed-up. Last, its spinning pool has nothing left to disturb. (3) The A/A control: the
chain is measured twice, as `chain` and `chain_aa`, each on its own engine (a second load of the same
bundle: its own sessions and memory); the relative difference of
their mean and of their p50 latencies, |a - b| / ((a + b) / 2), is the noise floor of the run
(`aa_control` in results.json, a line under table.md and on stdout). Above 3% the run is flagged
(`warning` in results.json, a `warning:` line on stderr, a warning under table.md): latency
differences of that size between variants are not evidence.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MpeeRuntimeError, exit_2_on_error
from .files import check_output_folder, write_text
from .metrics import classification_metrics, latency_summary
from .policy import POLICIES, check_threshold

AA_NAMES = ("chain", "chain_aa")
AA_THRESHOLD = 0.03   # relative spread of the A/A pair above which a run is flagged
ORDER_SEED = 0        # the interleaved pass's per-block orders are drawn from this seed
BLOCK = 16            # examples per block of the interleaved pass (--block)
# The full models of `mpee-export reference`: name, file, precision, description.
FULL_MODELS = (("onnx_full", "model.onnx", "fp32", "full model, optimum export (plain), onnxruntime"),
               ("onnx_fused", "model_fused.onnx", "fp32",
                "full model, optimum export + onnxruntime transformer fusions"),
               ("onnx_fused_int8", "model_fused_int8.onnx", "int8", "full model, fused, dynamic int8"))


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


def relative_spread(a: float, b: float) -> float:
    """|a - b| relative to their mean (symmetric: the order of the pair does not matter)."""
    return abs(a - b) / ((a + b) / 2)


def aa_control(a: dict, b: dict, threshold: float = AA_THRESHOLD) -> dict:
    """The A/A spread of two rows of the same variant: relative difference of mean and of p50 latency;
    `flagged` when either exceeds `threshold`."""
    mean = relative_spread(a["latency"]["mean_us"], b["latency"]["mean_us"])
    p50 = relative_spread(a["latency"]["p50_us"], b["latency"]["p50_us"])
    return {"variants": [a["variant"], b["variant"]], "mean_spread": mean, "p50_spread": p50,
            "threshold": threshold, "flagged": max(mean, p50) > threshold}


def aa_warning(aa: dict) -> str | None:
    if not aa["flagged"]:
        return None
    a, b = aa["variants"]
    return (f"A/A control: {a} and {b} (the same variant measured twice, on two loads of the bundle) differ by "
            f"{100 * aa['mean_spread']:.1f}% in mean latency and {100 * aa['p50_spread']:.1f}% in p50, above "
            f"{100 * aa['threshold']:.0f}%: the machine was not quiet; latency differences of that size are noise "
            "(re-run on an idle machine)")


def choose_baselines(table: list[dict]) -> dict:
    """Which measured row each precision's speed-ups are against (see the module docstring)."""
    rows = {r["variant"]: r for r in table}
    fulls = [rows[n] for n in ("onnx_full", "onnx_fused") if n in rows]
    if not fulls:
        return {"fp32": "chain", "int8": "chain", "plain_fp32": None,
                "rule": "no --reference, no full model: every speed-up (int8 rows too) is against the chain "
                        "(our chain, fp32, no exit, no pruning)"}
    fp32 = min(fulls, key=lambda r: r["latency"]["mean_us"])["variant"]
    int8 = "onnx_fused_int8" if "onnx_fused_int8" in rows else fp32
    plain = "onnx_full" if "onnx_full" in rows else None
    return {"fp32": fp32, "int8": int8, "plain_fp32": plain,
            "rule": (f"speedup_mean/speedup_p50: against the best full model of the row's precision (fp32: the "
                     f"faster of {' and '.join(r['variant'] for r in fulls)} by mean latency = {fp32}; int8: {int8}"
                     + ("" if int8 == "onnx_fused_int8" else ", no int8 full model measured") + ")"
                     + (f"; *_vs_plain_fp32: against {plain}, the plain fp32 optimum export" if plain else ""))}


def add_speedups(rows: list[dict], table: list[dict], baselines: dict) -> None:
    """Speed-ups of `rows` against the baseline of each row's precision, and against the plain fp32 export."""
    by_name = {r["variant"]: r for r in table}
    plain = by_name[baselines["plain_fp32"]] if baselines.get("plain_fp32") else None
    for r in rows:
        base = by_name[baselines[r.get("precision", "fp32")]]
        r["speedup_baseline"] = base["variant"]
        r["speedup_p50"] = base["latency"]["p50_us"] / r["latency"]["p50_us"]
        r["speedup_mean"] = base["latency"]["mean_us"] / r["latency"]["mean_us"]
        if plain is not None:
            r["speedup_p50_vs_plain_fp32"] = plain["latency"]["p50_us"] / r["latency"]["p50_us"]
            r["speedup_mean_vs_plain_fp32"] = plain["latency"]["mean_us"] / r["latency"]["mean_us"]


# ---------------------------------------------------------------- variants
@dataclass
class Variant:
    name: str
    run: Callable[[np.ndarray, np.ndarray], tuple[int, int, int]]   # ids, types -> label, exit layer, FLOPs
    description: str
    settings: dict = field(default_factory=dict)
    times_us: list[float] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    flops: list[int] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)
    precision: str = "fp32"


# Entropy is never below 0, so this rule runs every layer, whatever the bundle's default policy is.
NO_EXIT = {"policy": "entropy", "threshold": 0.0}


def chain_variant(name: str, engine, description: str, *, policy: str, threshold: float,
                  keep_ratio: float | None, precision: str = "fp32") -> Variant:
    def run(ids, types):
        p = engine.run_ids(ids, types, threshold=threshold, keep_ratio=keep_ratio, policy=policy)
        return p.label_index, p.exit_layer, p.flops
    return Variant(name, run, description, {"threshold": threshold, "keep_ratio": keep_ratio, "policy": policy},
                   precision=precision)


def full_model_variant(name: str, path: Path, description: str, precision: str, engine, threads: int,
                       spinning: bool, thread_pool: str = "session") -> Variant:
    """A full model (one ONNX graph with input_ids / attention_mask / token_type_ids) run by onnxruntime."""
    import onnxruntime as ort

    from .engine import session_options
    try:
        sess = ort.InferenceSession(str(path), session_options(threads, spinning, thread_pool=thread_pool),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 -- onnxruntime's errors derive from Exception only
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise MpeeRuntimeError(f"{path}: onnxruntime cannot load this graph ({first})") from None
    names = {i.name for i in sess.get_inputs()}
    fm, layers = engine.flops_model, engine.num_layers

    def run(ids, types):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        (logits,) = sess.run(None, {k: v for k, v in feeds.items() if k in names})
        return int(logits[0].argmax()), layers, fm.full_flops(int(ids.shape[1]))
    return Variant(name, run, description, {"path": str(path)}, precision=precision)


def pytorch_skip_reason(hf_dir: Path) -> str | None:
    """Why the PyTorch variant cannot run (checked without importing torch), or None."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        return "skipped: torch/transformers not installed"
    if not hf_dir.is_dir():
        return f"skipped: no {hf_dir}"
    return None


def pytorch_variant(hf_dir: Path, engine, threads: int) -> Variant | str:
    """PyTorch eager full model, or the reason it is skipped. Imports torch: build it only after the
    onnxruntime pass (torch's OpenMP pool would otherwise spin beside onnxruntime)."""
    reason = pytorch_skip_reason(hf_dir)
    if reason:
        return reason
    try:
        import torch
        from transformers import BertForSequenceClassification
    except ImportError:
        return "skipped: torch/transformers not importable"
    torch.set_num_threads(threads)
    model = BertForSequenceClassification.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    fm, layers = engine.flops_model, engine.num_layers
    mean = engine.manifest.exit.pooling == "mean"   # exit L's head on the mean of the tokens, not on [CLS]

    def run(ids, types):
        with torch.inference_mode():
            ids_t, types_t = torch.from_numpy(ids), torch.from_numpy(types)
            if mean:
                pooled = model.bert(input_ids=ids_t, token_type_ids=types_t).last_hidden_state.mean(dim=1)
                logits = model.classifier(torch.tanh(model.bert.pooler.dense(pooled)))
            else:
                logits = model(input_ids=ids_t, token_type_ids=types_t).logits
        return int(logits[0].argmax()), layers, fm.full_flops(int(ids.shape[1]))
    return Variant("pytorch", run, "PyTorch eager full model", {"torch_threads": threads})


def measure(variants: list[Variant], inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int,
            progress: bool = True, block: int = BLOCK) -> None:
    """The interleaved pass: every variant on every input, block by block, the variants in a fresh random
    order for each block (seeded: the same run order every time), each running the block back to back
    after one untimed run of its first input; the first `warmup` inputs are run beforehand, not kept."""
    _timed_pass(variants, inputs, warmup, progress, shuffle=True, block=block)


def measure_alone(variant: Variant, inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int,
                  progress: bool = True) -> None:
    """A pass of its own for one variant (PyTorch): its own warm-up, nothing else run meanwhile."""
    _timed_pass([variant], inputs, warmup, progress)


def _timed_pass(variants: list[Variant], inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int,
                progress: bool, shuffle: bool = False, block: int | None = None) -> None:
    """Time every variant on every input. `block` None: each variant runs all inputs in turn (one variant:
    a pass of its own); else blocks of `block` inputs, the variants taking turns within each block."""
    rng = np.random.default_rng(ORDER_SEED)
    for i in range(warmup):
        for v in variants:
            v.run(*inputs[i % len(inputs)])
    start, done = time.time(), 0
    size = block or len(inputs)
    for b in range(0, len(inputs), size):
        chunk = inputs[b:b + size]
        for k in (rng.permutation(len(variants)) if shuffle else range(len(variants))):
            v = variants[k]
            if block and block > 1:
                v.run(*chunk[0])   # its caches back after the other variants' turns; not timed
            for ids, types in chunk:
                t = time.perf_counter_ns()
                label, exit_layer, flops = v.run(ids, types)
                v.times_us.append((time.perf_counter_ns() - t) / 1e3)
                v.preds.append(label)
                v.exits.append(exit_layer)
                v.flops.append(flops)
                v.seq_lens.append(int(ids.shape[1]))
        if progress and (b + len(chunk)) // 50 > done // 50:
            print(f"  {b + len(chunk)}/{len(inputs)} examples, {time.time() - start:.0f} s", file=sys.stderr)
        done = b + len(chunk)


def summarize(v: Variant, labels: list[int] | None, metric: str, flops_model) -> dict:
    """Metric, exit layers, rho (both conventions) and latency statistics of one variant."""
    rho, rho128 = flops_model.dataset_speedups(v.seq_lens, v.flops)
    row = {"variant": v.name, "description": v.description, "precision": v.precision, **v.settings,
           "mean_exit_layer": float(np.mean(v.exits)), "rho": rho, "rho_pad128": rho128,
           "latency": latency_summary(v.times_us)}
    if labels is not None:
        scores = classification_metrics(v.preds, labels, with_f1=metric == "f1")
        row |= {"metric": scores[metric], "metric_name": metric, "accuracy": scores["accuracy"]}
    return row


# ---------------------------------------------------------------- reports
def _speedup_cell(r: dict, suffix: str = "") -> str:
    mean, p50 = r.get(f"speedup_mean{suffix}"), r.get(f"speedup_p50{suffix}")
    return "-" if mean is None else f"{mean:.2f}x ({p50:.2f}x)"


def markdown_table(rows: list[dict], task: str, baselines: dict, aa: dict | None = None) -> str:
    """Rows laid out like the paper's Table 1 (method, metric, FLOPs speed-up, measured speed-ups), headed by
    what each speed-up column is against and followed by the A/A control."""
    b = baselines
    if b.get("plain_fp32"):
        intro = (f"Measured speed-ups, mean latency (p50). \"vs best full model\": against the fastest full model "
                 f"of the row's precision, {b['fp32']} for fp32 rows and {b['int8']} for int8 rows. \"vs plain "
                 f"fp32\": against {b['plain_fp32']}, the plain fp32 optimum export.")
        best_col = f"speed-up vs best full model (fp32: {b['fp32']}, int8: {b['int8']})"
        plain_col = f"speed-up vs plain fp32 ({b['plain_fp32']})"
    else:
        intro = ("Measured speed-ups, mean latency (p50), against our chain (no --reference: no full model "
                 "measured; int8 rows too).")
        best_col, plain_col = "speed-up vs chain", None
    lines = [intro, ""]
    head = (f"| Method | precision | {task} {rows[0].get('metric_name', 'metric')} | FLOPs speed-up rho | "
            f"rho (pad 128) | {best_col} | " + (f"{plain_col} | " if plain_col else "")
            + "mean exit layer | p50 / p99 latency (ms) |")
    lines += [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    for r in rows:
        metric = f"{100 * r['metric']:.2f}" if "metric" in r else "-"
        lines.append(f"| {r['variant']}: {r['description']} | {r.get('precision', 'fp32')} | {metric} | "
                     f"{r['rho']:.2f}x | {r['rho_pad128']:.2f}x | {_speedup_cell(r)} | "
                     + (f"{_speedup_cell(r, '_vs_plain_fp32')} | " if plain_col else "")
                     + f"{r['mean_exit_layer']:.2f} | "
                     f"{r['latency']['p50_us'] / 1e3:.2f} / {r['latency']['p99_us'] / 1e3:.2f} |")
    if aa is not None:
        a, b2 = aa["variants"]
        verdict = "FLAGGED, above" if aa["flagged"] else "within"
        lines += ["", (f"A/A control: {a} and {b2} (the same variant measured twice, on two loads of the bundle) "
                       f"differ by {100 * aa['mean_spread']:.1f}% in mean latency and "
                       f"{100 * aa['p50_spread']:.1f}% in p50 "
                       f"({verdict} {100 * aa['threshold']:.0f}%).")]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    cols = ["variant", "precision", "threshold", "keep_ratio", "metric", "accuracy", "mean_exit_layer", "rho",
            "rho_pad128", "speedup_baseline", "speedup_p50", "speedup_mean", "speedup_p50_vs_plain_fp32",
            "speedup_mean_vs_plain_fp32"]
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(cols + ["p50_us", "p90_us", "p99_us", "mean_us"])
    for r in rows:
        w.writerow([r.get(c) for c in cols] + [r["latency"][k] for k in ("p50_us", "p90_us", "p99_us", "mean_us")])
    write_text(path, text.getvalue())


def plot(path: Path, sweep: list[dict], table: list[dict], reference: dict, task: str,
         static: Sequence[dict] = ()) -> str | None:
    """Metric against measured speed-up (and against FLOPs rho) per keep ratio; None or why it was skipped.
    `reference` is the fp32 baseline row: the sweep's speed-ups are against it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib not installed"
    base = reference["variant"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ratio in sorted({r["keep_ratio"] for r in sweep}):
        pts = sorted((r for r in sweep if r["keep_ratio"] == ratio), key=lambda r: r["threshold"])
        line, = ax.plot([r["speedup_mean"] for r in pts], [100 * r["metric"] for r in pts], "o-",
                        label=f"measured vs {base} (mean latency), keep ratio {ratio}")
        ax.plot([r["rho"] for r in pts], [100 * r["metric"] for r in pts], "x--", color=line.get_color(),
                alpha=0.6, label=f"FLOPs rho, keep ratio {ratio}")
    for ratio in sorted({r["keep_ratio"] for r in static}):
        pts = sorted((r for r in static if r["keep_ratio"] == ratio), key=lambda r: r["threshold"])
        ax.plot([r["speedup_mean"] for r in pts], [100 * r["metric"] for r in pts], "s:", color="black",
                alpha=0.35 + 0.4 * (ratio == 1.0), ms=4, label=f"static depth (exit k), measured, keep ratio {ratio}")
    what = "best fp32 full model" if base != "chain" else "our chain, no --reference"
    ax.axhline(100 * reference["metric"], color="grey", lw=0.8, ls=":", label=f"{base} ({what})")
    ax.set_xlabel(f"speed-up over {base} ({what}; mean latency) (x)")
    ax.set_ylabel(f"{task} {reference.get('metric_name', 'metric')} (%)")
    ax.set_title(f"MPEE trade-off on {task}: measured latency vs FLOPs (fp32)")
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
    from .engine import THREAD_POOLS
    p = _Parser(prog="mpee-bench", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", type=Path, required=True, help="GLUE TSV or JSONL with labels (e.g. dev.tsv)")
    p.add_argument("--text-column", help="column (TSV) or key (JSONL) of the text [default: as mpee-run]")
    p.add_argument("--pair-column", help="column of the second text [default: as mpee-run]")
    p.add_argument("--label-column", help="column of the gold label [default: as mpee-run]")
    p.add_argument("--reference", type=Path, help="folder from `mpee-export reference`: model.onnx, "
                   "model_fused.onnx, model_fused_int8.onnx (+ hf/)")
    p.add_argument("--int8", type=Path, help="int8 bundle of the same model")
    p.add_argument("--policy", choices=POLICIES, help="exit policy of exits/mpee/sweep [default: the bundle's]")
    p.add_argument("--threshold", type=float, help="threshold for exits/mpee [default: the bundle's]")
    p.add_argument("--keep-ratio", type=float, default=None, help="r for pruning/mpee [default: the bundle's]")
    p.add_argument("--thresholds", default="0,0.05,0.1,0.2,0.3,0.4,0.5,0.6", help="sweep thresholds")
    p.add_argument("--keep-ratios", default="0.5,0.7,1.0", help="sweep keep ratios")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--no-static", action="store_true", help="skip the static-depth points (exit k for every example)")
    p.add_argument("--max-examples", type=int, help="use the first N examples")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--block", type=int, default=BLOCK,
                   help="examples each variant runs back to back in its turn (1: interleave example by example)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--thread-pool", choices=THREAD_POOLS, default="session",
                   help="session: a pool per onnxruntime session; global: every session (full models too) on "
                   "one process-wide pool [default: session]")
    p.add_argument("--no-spinning", dest="spinning", action="store_false",
                   help="with --thread-pool session: idle pool threads sleep instead of spinning during a run")
    p.add_argument("--allow-unvalidated", action="store_true", help="accept bundles that failed validation")
    p.add_argument("--max-drop", type=float, help="name the fastest point within D points of the full model")
    p.add_argument("--budget-ms", type=float, help="name the most accurate point with p50 within B ms")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, sweep.csv, table.md, plot")
    return p


@dataclass
class Setup:
    """What every variant shares: the engine, the operating point, the sweep grid and the tokenised inputs."""

    engine: object
    policy: str
    threshold: float
    keep_ratio: float
    grid_thresholds: list[float]
    grid_ratios: list[float]
    inputs: list[tuple[np.ndarray, np.ndarray]]
    labels: list[int] | None
    tokenize_us: list[float]


def open_engine(args: argparse.Namespace, bundle: Path):
    """A bundle's engine with the run's thread, spinning and validation options (every chain variant's)."""
    from .engine import MpeeEngine
    return MpeeEngine(bundle, threads=args.threads, spinning=args.spinning,
                      allow_unvalidated=args.allow_unvalidated, thread_pool=args.thread_pool)


def load_setup(args: argparse.Namespace) -> Setup:
    """Check the arguments, load the bundle, read and tokenise the examples (tokenisation timed apart)."""
    from .cli import input_columns
    from .data import read_examples
    if args.max_drop is not None and args.budget_ms is not None:
        raise MpeeRuntimeError("give at most one of --max-drop and --budget-ms")
    if args.block < 1:
        raise MpeeRuntimeError(f"--block must be at least 1, got {args.block}")
    check_output_folder(args.out, force=True)
    engine = open_engine(args, args.bundle)
    policy = args.policy or engine.default_policy
    threshold = engine.default_threshold if args.threshold is None else args.threshold
    ratio = args.keep_ratio if args.keep_ratio is not None else (engine.manifest.pruning.keep_ratios or [1.0])[0]
    grid_t, grid_r = _floats(args.thresholds), _floats(args.keep_ratios)
    for t in [threshold, *grid_t]:
        check_threshold(policy, t)
    for r in [ratio, *grid_r]:
        engine.keep_ratio_feeds(r)
    columns, require_label = input_columns(args.input, engine.manifest.task, text=args.text_column,
                                           pair=args.pair_column, label=args.label_column)
    examples = read_examples(args.input, columns, labels=engine.labels, require_label=require_label,
                             limit=args.max_examples)
    label_ids = {label: i for i, label in enumerate(engine.labels)}
    labels = None if any(ex.label is None for ex in examples) else [label_ids[ex.label] for ex in examples]
    tok_us, inputs = [], []
    for ex in examples:
        t = time.perf_counter_ns()
        inputs.append(engine.encode(ex.text, ex.pair))
        tok_us.append((time.perf_counter_ns() - t) / 1e3)
    return Setup(engine, policy, threshold, ratio, grid_t, grid_r, inputs, labels, tok_us)




@dataclass
class Plan:
    """What to measure: the onnxruntime variants of the table (interleaved with the sweep's), the sweep, and
    PyTorch, built and measured in a pass of its own after them (None: not measured)."""

    table: list[Variant]
    sweep: list[Variant]
    static: list[Variant]                  # static depth: exit k for every example
    pytorch: Callable[[], Variant | str] | None
    notes: list[str]
    reference_export: dict | None = None   # summary of REF/reference.json


def _reference_export(ref: Path, notes: list[str]) -> dict | None:
    """What REF/reference.json says about the baselines (recipe, fusions), its warnings as notes."""
    path = ref / "reference.json"
    if not path.is_file():
        notes.append(f"{ref}: no reference.json (an older `mpee-export reference`): recipe and fusions unknown")
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        quant, fusion = rec.get("quantization", {}), rec.get("fusion", {})
        out = {"recipe": quant.get("recipe"), "quantizer": quant.get("quantizer"),
               "per_channel": quant.get("settings", {}).get("per_channel"),
               "fused_nodes": fusion.get("fused_nodes"), "fully_fused": fusion.get("fully_fused"),
               "files": rec.get("files")}
    except (ValueError, AttributeError):
        notes.append(f"{path}: not readable JSON; ignored")
        return None
    notes += [f"reference: {w}" for w in rec.get("warnings", [])]
    return out


def build_variants(setup: Setup, args: argparse.Namespace) -> Plan:
    """The table's variants (full models, chain and its A/A twin, exits, pruning, MPEE, MPEE int8), the
    sweep's, PyTorch's builder, and notes."""
    engine, notes, table = setup.engine, [], []
    exit_rule = {"policy": setup.policy, "threshold": setup.threshold}
    pytorch, ref_export = None, None
    if args.reference is not None:
        ref = args.reference
        if not (ref / "model.onnx").is_file():
            raise MpeeRuntimeError(f"{ref}: no model.onnx (make it with `mpee-export reference`)")
        ref_export = _reference_export(ref, notes)
        recipe = (ref_export or {}).get("recipe")
        for name, file, precision, description in FULL_MODELS:
            if not (ref / file).is_file():
                notes.append(f"{name}: skipped, {ref} has no {file} (made by an older `mpee-export reference`; "
                             "re-run it for the fused fp32 and int8 baselines)")
                continue
            if name == "onnx_fused_int8" and recipe:
                description += f" (optimum recipe {recipe})"
            table.append(full_model_variant(name, ref / file, description, precision, engine, args.threads,
                                            args.spinning, args.thread_pool))
        reason = pytorch_skip_reason(ref / "hf")
        if reason:
            notes.append(f"pytorch: {reason}")
        else:
            def pytorch():
                return pytorch_variant(ref / "hf", engine, args.threads)
    else:
        notes.append("pytorch, onnx_full, onnx_fused, onnx_fused_int8: skipped (no --reference); every speed-up, "
                     "int8 rows too, is against the chain, not a full model")
    twin = open_engine(args, args.bundle)
    table += [chain_variant(AA_NAMES[0], engine, "our chain, no exit, no pruning", **NO_EXIT, keep_ratio=1.0),
              chain_variant(AA_NAMES[1], twin, "A/A control: the chain again, second load of the bundle",
                            **NO_EXIT, keep_ratio=1.0),
              chain_variant("exits", engine, "layer exits only", **exit_rule, keep_ratio=1.0),
              chain_variant("pruning", engine, "token pruning only", **NO_EXIT, keep_ratio=setup.keep_ratio),
              chain_variant("mpee", engine, "MPEE", **exit_rule, keep_ratio=setup.keep_ratio)]
    if args.int8 is not None:
        int8 = open_engine(args, args.int8)
        table += [chain_variant("chain_int8", int8, "our int8 chain, no exit, no pruning", **NO_EXIT,
                                keep_ratio=1.0, precision="int8"),
                  chain_variant("mpee_int8", int8, "MPEE int8", policy=int8.default_policy,
                                threshold=int8.default_threshold, keep_ratio=setup.keep_ratio, precision="int8")]
    else:
        notes.append("mpee_int8: skipped (no --int8 bundle)")
    sweep = [] if args.no_sweep else [
        chain_variant(f"sweep_F{t}_r{r}", engine, "sweep point", policy=setup.policy, threshold=t, keep_ratio=r)
        for r in setup.grid_ratios for t in setup.grid_thresholds]
    static = [] if args.no_static else [
        chain_variant(f"static_k{k}_r{r}", engine, f"static depth: exit {k}", policy="depth", threshold=k,
                      keep_ratio=r)
        for r in sorted({1.0, setup.keep_ratio}) for k in range(1, engine.num_layers + 1)]
    return Plan(table, sweep, static, pytorch, notes, ref_export)


@dataclass
class BenchResult:
    record: dict           # what results.json holds
    table: list[dict]      # the main variants' rows
    sweep: list[dict]      # one row per sweep point
    reference: dict        # the fp32 baseline row (the sweep's speed-ups are against it)
    static: list[dict] = field(default_factory=list)   # one row per static-depth point


def choose_points(sweep: list[dict], reference: dict, args: argparse.Namespace) -> dict:
    """The Pareto front of the sweep and, when asked for, the operating point (accuracy floor or budget)."""
    keys = ("threshold", "keep_ratio", "metric", "speedup_mean", "speedup_p50", "rho", "speedup_baseline",
            "speedup_mean_vs_plain_fp32")
    out = {"pareto": [{k: p.get(k) for k in keys} for p in pareto_front(sweep)]}
    if args.max_drop is not None or args.budget_ms is not None:
        best = operating_point(sweep, reference_metric=reference["metric"], max_drop=args.max_drop,
                               budget_ms=args.budget_ms)
        out["operating_point"] = best and {k: best.get(k) for k in (*keys, "latency")}
    return out


def static_comparison(sweep: list[dict], static: list[dict]) -> list[dict]:
    """For each static-depth point, the best MPEE sweep point at least as fast (by measured mean-latency
    speed-up, and separately by FLOPs rho): positive `gain` = MPEE is more accurate at equal speed-up."""
    out = []
    for st in static:
        row = {"exit": int(st["threshold"]), "keep_ratio": st["keep_ratio"], "static_metric": st["metric"],
               "static_speedup_mean": st["speedup_mean"], "static_rho": st["rho"]}
        for key, name in (("speedup_mean", "measured"), ("rho", "rho")):
            faster = [p for p in sweep if p[key] >= st[key]]
            best = max(faster, key=lambda p: p["metric"]) if faster else None
            row[f"mpee_metric_{name}"] = best and best["metric"]
            row[f"gain_{name}"] = best and best["metric"] - st["metric"]
        out.append(row)
    return out


def run(args: argparse.Namespace) -> BenchResult:
    """Set up; measure the onnxruntime variants interleaved, then PyTorch alone; summarise, compute every
    speed-up against its baseline, check the A/A pair, and pick points on the sweep."""
    from .env import environment
    from .schema import MANIFEST, sha256_of
    setup = load_setup(args)
    plan = build_variants(setup, args)
    notes = plan.notes
    interleaved = plan.table + plan.sweep + plan.static
    print(f"mpee-bench: {len(setup.inputs)} examples x {len(interleaved)} onnxruntime variants interleaved"
          + (", then PyTorch alone" if plan.pytorch else "") + f", {args.threads} threads", file=sys.stderr)
    measure(interleaved, setup.inputs, args.warmup, block=args.block)
    passes = [{"pass": 1, "mode": "interleaved", "block": args.block, "runtime": "onnxruntime", "warmup": args.warmup,
               "variants": [v.name for v in interleaved]}]
    table_v = list(plan.table)
    if plan.pytorch is not None:
        pt = plan.pytorch()      # torch is imported here, after every onnxruntime variant was timed
        if isinstance(pt, str):
            notes.append(f"pytorch: {pt}")
        else:
            measure_alone(pt, setup.inputs, args.warmup)
            passes.append({"pass": 2, "mode": "alone", "runtime": "pytorch", "warmup": args.warmup,
                           "variants": [pt.name], "torch_threads": args.threads})
            table_v.insert(0, pt)
    manifest = setup.engine.manifest
    metric = manifest.task.metric if manifest.task else "accuracy"
    fm = setup.engine.flops_model
    table = [summarize(v, setup.labels, metric, fm) for v in table_v]
    sweep = [summarize(v, setup.labels, metric, fm) for v in plan.sweep]
    static = [summarize(v, setup.labels, metric, fm) for v in plan.static]
    baselines = choose_baselines(table)
    add_speedups(table + sweep + static, table, baselines)
    by_name = {r["variant"]: r for r in table}
    aa = aa_control(by_name[AA_NAMES[0]], by_name[AA_NAMES[1]])
    warning = aa_warning(aa)
    reference = by_name[baselines["fp32"]]
    record = {"task": manifest.task.name if manifest.task else "task", "examples": len(setup.inputs),
              "environment": environment(threads=setup.engine.threads, thread_pool=setup.engine.thread_pool,
                                         spinning=args.spinning if setup.engine.thread_pool == "session"
                                         else "onnxruntime default",
                                         manifest_sha256=sha256_of(args.bundle / MANIFEST)),
              "baselines": baselines, "aa_control": aa, "warning": warning,
              "measurement": {"passes": passes, "aa_threshold": AA_THRESHOLD},
              "reference_export": plan.reference_export, "policy": setup.policy,
              "tokenize": latency_summary(setup.tokenize_us), "notes": notes, "variants": table, "sweep": sweep,
              "static": static}
    if setup.labels is not None and sweep:
        record |= choose_points(sweep, reference, args)
        if static:
            record["static_comparison"] = static_comparison(sweep, static)
    return BenchResult(record, table, sweep, reference, static)


def write_outputs(result: BenchResult, out: Path) -> None:
    """results.json, table.md, sweep.csv and tradeoff.png into `out` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    record, table, sweep = result.record, result.table, result.sweep
    if sweep:
        write_csv(out / "sweep.csv", sweep + result.static)
        if "metric" in sweep[0]:
            note = plot(out / "tradeoff.png", sweep, table, result.reference, record["task"], result.static)
            if note:
                record["notes"].append(f"plot: {note}")
    text = markdown_table(table, record["task"], record["baselines"], record["aa_control"]) if "metric" in table[0] else ""
    if text and record["warning"]:
        text += f"\n**Warning:** {record['warning']}\n"
    write_text(out / "table.md", text)
    write_text(out / "results.json", json.dumps(record, indent=1) + "\n")


@exit_2_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    result = run(args)
    write_outputs(result, args.out)
    record = result.record
    print((args.out / "table.md").read_text() or json.dumps(record["variants"], indent=1))
    aa = record["aa_control"]
    print(f"A/A control ({' vs '.join(aa['variants'])}): mean latency {100 * aa['mean_spread']:.1f}%, "
          f"p50 {100 * aa['p50_spread']:.1f}% apart (limit {100 * aa['threshold']:.0f}%)")
    for note in record["notes"]:
        print(f"note: {note}")
    op = record.get("operating_point")
    if op:
        print(f"operating point: F={op['threshold']} r={op['keep_ratio']}: metric {100 * op['metric']:.2f}, "
              f"speed-up {op['speedup_mean']:.2f}x vs {op['speedup_baseline']} (mean latency), "
              f"p50 {op['latency']['p50_us'] / 1e3:.2f} ms")
    if record["warning"]:
        print(f"warning: {record['warning']}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
