"""Measuring, the device half of mpee-bench (torch-free: it runs on the Pi): build the variants, time them,
and write what was measured, one JSON line per timed request (OUT/rows.jsonl), and the run record
(OUT/run.json). `mpee_runtime.bench.report` turns those files into tables and plots, anywhere.

Rules (the method and why: docs/benchmarking.md):
- Every onnxruntime variant, the sweep's and the static-depth points too, runs in one interleaved pass in
  blocks of --block examples: per block the variants take turns in a fresh random order drawn from
  ORDER_SEED, each running the whole block back to back after one untimed run of its first example; the
  first --warmup examples are run by every variant beforehand and not kept.
- The sweep and the static-depth points run on the fp32 bundle and, with --int8-points, on the --int8 bundle too
  (rows of precision int8, named sweep_int8_* and static_int8_*).
- Only the model is timed; tokenisation is timed once per example and recorded apart.
- The A/A control: the chain is measured twice (AA_NAMES), each on its own load of the bundle.
- A companion model (--companion BUNDLE2 [--companion-reference REF2]: another model of the same task, e.g. a
  smaller one a user might deploy instead) runs in the same pass, on its own tokenizer's ids of the same texts:
  its full models and its MPEE at its bundle's operating point (group "companion"); its rows record the main
  model's input length, so their FLOPs rho is against the main full model, as their speed-ups are.
- PyTorch is never measured here: `python -m mpee_export.baselines.bench_pytorch` times it in a process of its own,
  after this pass, on the same examples (checked by `inputs_sha256`), into OUT/rows_pytorch.jsonl.
- The CPU's frequency, temperature and throttling flags are read before and after the pass; a run whose
  frequency dropped or that was throttled carries a `device_warning` (env.cpu_warning).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..bundle.contract import MANIFEST
from ..bundle.integrity import sha256_of
from ..bundle.reference import FULL_MODELS
from ..core.policy import NO_EXIT, check_threshold
from ..errors import MpeeRuntimeError
from ..files import check_output_folder
from .records import (
    AA_NAMES,
    ROWS,
    RUN,
    RequestRow,
    RunRecord,
    VariantInfo,
    inputs_digest,
    reference_export,
    write_rows,
)

ORDER_SEED = 0        # the interleaved pass's per-block orders are drawn from this seed
BLOCK = 16            # examples per block of the interleaved pass (--block)


class Outcome(NamedTuple):
    """What one request of a variant gives back."""

    label_index: int
    exit_layer: int
    flops: int
    tokens_per_layer: list[int]      # tokens entering each executed layer


@dataclass
class Variant:
    """A variant being measured: `run(ids, types)` answers one request; `rows` collects its timed ones. `inputs`:
    its own token ids of the examples (a companion model's tokenizer), None: the pass's."""

    info: VariantInfo
    run: Callable[[np.ndarray, np.ndarray], Outcome]
    rows: list[RequestRow] = field(default_factory=list)
    inputs: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def name(self) -> str:
        return self.info.name


# ---------------------------------------------------------------- timing
def measure(variants: list[Variant], inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int,
            progress: bool = True, block: int = BLOCK) -> list[RequestRow]:
    """The interleaved pass (rules in the module docstring); returns the rows in the order they were timed."""
    return _timed_pass(variants, inputs, warmup, progress, shuffle=True, block=block)


def measure_alone(variant: Variant, inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int,
                  progress: bool = True) -> list[RequestRow]:
    """A pass of its own for one variant (PyTorch): its own warm-up, nothing else run meanwhile."""
    return _timed_pass([variant], inputs, warmup, progress)


def _timed_pass(variants: list[Variant], inputs: list[tuple[np.ndarray, np.ndarray]], warmup: int,
                progress: bool, shuffle: bool = False, block: int | None = None) -> list[RequestRow]:
    """Time every variant on every input. `block` None: each variant runs all inputs in turn (one variant:
    a pass of its own); else blocks of `block` inputs, the variants taking turns within each block."""
    rng = np.random.default_rng(ORDER_SEED)
    for i in range(warmup):
        for v in variants:
            v.run(*(v.inputs or inputs)[i % len(inputs)])
    start, done, timed = time.time(), 0, []
    size = block or len(inputs)
    for b in range(0, len(inputs), size):
        chunk = inputs[b:b + size]
        for k in (rng.permutation(len(variants)) if shuffle else range(len(variants))):
            v = variants[k]
            own = chunk if v.inputs is None else v.inputs[b:b + size]
            if block and block > 1:
                v.run(*own[0])   # its caches back after the other variants' turns; not timed
            for j, (ids, types) in enumerate(own):
                t = time.perf_counter_ns()
                out = v.run(ids, types)
                us = (time.perf_counter_ns() - t) / 1e3
                row = RequestRow(v.name, b + j, out.exit_layer, int(chunk[j][0].shape[1]),
                                 list(out.tokens_per_layer), out.label_index, out.flops, us)
                v.rows.append(row)
                timed.append(row)
        if progress and (b + len(chunk)) // 50 > done // 50:
            print(f"  {b + len(chunk)}/{len(inputs)} examples, {time.time() - start:.0f} s", file=sys.stderr)
        done = b + len(chunk)
    return timed


# ---------------------------------------------------------------- variants
def chain_variant(info: VariantInfo, engine) -> Variant:
    """Our chain on `engine` with the exit rule and keep ratio of `info`."""
    policy, threshold, ratio = info.policy, info.threshold, info.keep_ratio

    def run(ids, types):
        p = engine.run_ids(ids, types, threshold=threshold, keep_ratio=ratio, policy=policy)
        return Outcome(p.label_index, p.exit_layer, p.flops, p.tokens_per_layer)
    return Variant(info, run)


def full_model_variant(info: VariantInfo, flops_model, threads: int, spinning: bool,
                       thread_pool: str = "session") -> Variant:
    """A full model (one ONNX graph with input_ids / attention_mask / token_type_ids) run by onnxruntime."""
    from ..core.session import open_session
    sess = open_session(Path(info.path), threads=threads, spinning=spinning, thread_pool=thread_pool)
    names = {i.name for i in sess.get_inputs()}
    layers = flops_model.num_layers

    def run(ids, types):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        (logits,) = sess.run(None, {k: v for k, v in feeds.items() if k in names})
        n = int(ids.shape[1])
        return Outcome(int(logits[0].argmax()), layers, flops_model.full_flops(n), [n] * layers)
    return Variant(info, run)


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
    input: dict                      # how the examples were read (the PyTorch pass reads them the same way)
    texts: list[tuple[str, str | None]] = field(default_factory=list)   # as read (a companion tokenizes them)


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MpeeRuntimeError(f"expected comma-separated numbers, got {text!r}") from None


def open_engine(args: argparse.Namespace, bundle: Path, engine: str | None = None):
    """A bundle's engine with the run's thread, spinning, validation and --trust options (every chain
    variant's: the bundle, its A/A twin and the --int8 bundle are each verified when they are opened), running
    batch-1 rows the --engine way unless `engine` says otherwise."""
    from ..core.engine import MpeeEngine
    return MpeeEngine(bundle, threads=args.threads, spinning=args.spinning,
                      allow_unvalidated=args.allow_unvalidated, thread_pool=args.thread_pool,
                      trust=args.trust, engine=engine or getattr(args, "engine", "chain"))


def load_setup(args: argparse.Namespace) -> Setup:
    """Check the arguments, load the bundle, read and tokenise the examples (tokenisation timed apart)."""
    from ..cli.common import input_columns
    from ..text.readers import read_examples
    if args.max_drop is not None and args.budget_ms is not None:
        raise MpeeRuntimeError("give at most one of --max-drop and --budget-ms")
    if args.block < 1:
        raise MpeeRuntimeError(f"--block must be at least 1, got {args.block}")
    if getattr(args, "companion_reference", None) is not None and getattr(args, "companion", None) is None:
        raise MpeeRuntimeError("--companion-reference needs --companion (the companion's bundle: its tokenizer)")
    if getattr(args, "int8_points", False) and args.int8 is None:
        raise MpeeRuntimeError("--int8-points needs --int8 (the int8 bundle the points run on)")
    check_output_folder(args.out, force=True)
    engine = open_engine(args, args.bundle)
    policy = args.policy or engine.default_policy
    threshold = engine.default_threshold if args.threshold is None else args.threshold
    ratio = args.keep_ratio if args.keep_ratio is not None else (engine.manifest.pruning.keep_ratios or [1.0])[0]
    grid_t, grid_r = floats(args.thresholds), floats(args.keep_ratios)
    for t in [threshold, *grid_t]:
        check_threshold(policy, t)
    for r in [ratio, *grid_r]:
        engine.keep_ratio_feeds(r)
    columns, require_label = input_columns(args.input, engine.manifest.task, text=args.text_column,
                                           pair=args.pair_column, label=args.label_column)
    # Texts are cut to the engine's limit as they are read (data.cut_text), as mpee-run cuts them.
    examples = read_examples(args.input, columns, labels=engine.labels, require_label=require_label,
                             limit=args.max_examples, max_chars=engine.max_chars,
                             tail=engine.truncation != "head")
    label_ids = {label: i for i, label in enumerate(engine.labels)}
    labels = None if any(ex.label is None for ex in examples) else [label_ids[ex.label] for ex in examples]
    tok_us, inputs, cut = [], [], 0
    for ex in examples:
        t = time.perf_counter_ns()
        ids, types, cut_here = engine.encode_cut(ex.text, ex.pair)
        tok_us.append((time.perf_counter_ns() - t) / 1e3)
        inputs.append((ids, types))
        cut += ex.cut or cut_here
    read = {"path": str(args.input), "columns": asdict(columns), "require_label": require_label,
            "max_examples": args.max_examples, "max_length": engine.manifest.model.max_length,
            "truncation": engine.truncation,
            "examples": len(examples), "max_chars": engine.max_chars, "texts_cut": cut}
    return Setup(engine, policy, threshold, ratio, grid_t, grid_r, inputs, labels, tok_us, read,
                 [(ex.text, ex.pair) for ex in examples])


@dataclass
class Plan:
    """What to measure: the table's onnxruntime variants, the sweep and the static-depth points, all in one
    interleaved pass, and what the notes say about what was left out."""

    table: list[Variant]
    sweep: list[Variant]
    static: list[Variant]                  # static depth: exit k for every example
    notes: list[str]
    reference_export: dict | None = None   # summary of REF/reference.json
    companion: list[Variant] = field(default_factory=list)   # another model of the task (--companion)
    companion_flops_model: dict | None = None                # its FlopsModel fields

    @property
    def variants(self) -> list[Variant]:
        return self.table + self.sweep + self.static + self.companion


COMPANION = "companion"   # the prefix of a companion model's variant names and their group


def full_models(ref: Path, notes: list[str], prefix: str = "", group: str = "table", what: str = ""
                ) -> tuple[list[VariantInfo], dict | None]:
    """The full models of a reference folder `ref` (FULL_MODELS), as variants named `prefix` + their name, and
    what REF/reference.json says; a file the folder lacks is a note."""
    plain = FULL_MODELS[0].file
    if not (ref / plain).is_file():
        raise MpeeRuntimeError(f"{ref}: no {plain} (make it with `mpee-export reference`)")
    ref_export = reference_export(ref, notes)
    recipe = (ref_export or {}).get("recipe")
    infos = []
    for m in FULL_MODELS:
        if not (ref / m.file).is_file():
            notes.append(f"{prefix}{m.variant}: skipped, {ref} has no {m.file} (made by an older `mpee-export "
                         "reference`; re-run it for the fused fp32 and int8 baselines)")
            continue
        description = what + m.description + (f" (optimum recipe {recipe})" if m.precision == "int8" and recipe else "")
        infos.append(VariantInfo(prefix + m.variant, description, m.precision, group=group, path=str(ref / m.file)))
    return infos, ref_export


def flops_fields(engine) -> dict:
    """An engine's FlopsModel as the run record stores it."""
    fm = engine.flops_model
    return {"hidden": fm.hidden, "ffn": fm.ffn, "num_labels": fm.num_labels, "num_layers": fm.num_layers}


def companion_variants(setup: Setup, args: argparse.Namespace, notes: list[str]) -> tuple[list[Variant], dict]:
    """The companion model's variants (module docstring): its fused full models (fp32, int8) when
    --companion-reference is given, and its MPEE at its bundle's operating point, on its own token ids; and its
    FlopsModel fields."""
    engine = open_engine(args, args.companion)
    inputs = [engine.encode(text, pair) for text, pair in setup.texts]
    m = engine.manifest.model
    what = f"companion ({m.family}, {m.num_layers} layers x {m.hidden_size}): "
    if engine.labels != setup.engine.labels:
        raise MpeeRuntimeError(f"--companion {args.companion}: labels {engine.labels} are not the bundle's "
                               f"{setup.engine.labels}")
    variants = []
    if args.companion_reference is not None:
        infos, _ = full_models(args.companion_reference, notes, COMPANION + "_", COMPANION, what)
        variants += [full_model_variant(i, engine.flops_model, args.threads, args.spinning, args.thread_pool)
                     for i in infos if i.name != COMPANION + "_" + FULL_MODELS[0].variant]   # the fused ones
    variants.append(chain_variant(VariantInfo(COMPANION + "_mpee", what + "MPEE at its bundle's operating point",
                                              engine.manifest.precision, group=COMPANION,
                                              policy=engine.default_policy, threshold=engine.default_threshold,
                                              keep_ratio=(engine.manifest.pruning.keep_ratios or [1.0])[0]), engine))
    for v in variants:
        v.inputs = inputs
    return variants, flops_fields(engine)


def length_point_variants(setup: Setup, args: argparse.Namespace, int8) -> list[Variant]:
    """`mpee_length` (and `mpee_int8_length`): MPEE at the bundle's length points (schema 9, `mpee-export
    --calibrate --length-buckets`), each text at its length's point: no knob given, as mpee-run runs it."""
    rows = []
    for name, engine, precision in (("mpee_length", setup.engine, "fp32"), ("mpee_int8_length", int8, "int8")):
        if engine is not None and engine.manifest.exit.length_points:
            info = VariantInfo(name, f"MPEE{' int8' if precision == 'int8' else ''} at the bundle's length points",
                               precision)
            rows.append(chain_variant(info, engine))
    return rows


def single_graph_variants(setup: Setup, args: argparse.Namespace, exit_rule: dict, notes: list[str]) -> list[Variant]:
    """With the chain engine and bundles that have a single graph (mpee.onnx), the same rows in one call each:
    `graph` (every layer, no pruning: against `chain`), `mpee_graph` and `mpee_int8_graph` (against `mpee` and
    `mpee_int8`), so that one pass says which engine is faster."""
    if getattr(args, "engine", "chain") != "chain":
        return []
    if setup.engine.manifest.single_graph is None:
        notes.append("graph, mpee_graph: skipped (the bundle has no single graph, mpee.onnx)")
        return []
    graph = open_engine(args, args.bundle, engine="graph")
    rows = [chain_variant(VariantInfo("graph", "the single graph (mpee.onnx), no exit, no pruning", **NO_EXIT,
                                      keep_ratio=1.0), graph),
            chain_variant(VariantInfo("mpee_graph", "MPEE in the single graph", **exit_rule,
                                      keep_ratio=setup.keep_ratio), graph)]
    if args.int8 is not None:
        from ..bundle.manifest import load_manifest
        if load_manifest(args.int8, verify=False).single_graph is not None:   # the engine verifies it
            int8 = open_engine(args, args.int8, engine="graph")
            rows.append(chain_variant(VariantInfo("mpee_int8_graph", "MPEE int8 in the single graph", "int8",
                                                  policy=int8.default_policy, threshold=int8.default_threshold,
                                                  keep_ratio=setup.keep_ratio), int8))
    return rows


def _tag(precision: str) -> str:
    return "" if precision == "fp32" else f"{precision}_"


def sweep_variants(setup: Setup, engine, precision: str) -> list[Variant]:
    """The threshold x keep-ratio grid on one bundle: `sweep_F{t}_r{r}` (fp32), `sweep_int8_F{t}_r{r}`."""
    return [chain_variant(VariantInfo(f"sweep_{_tag(precision)}F{t}_r{r}", "sweep point", precision, group="sweep",
                                      policy=setup.policy, threshold=t, keep_ratio=r), engine)
            for r in setup.grid_ratios for t in setup.grid_thresholds]


def static_variants(setup: Setup, engine, precision: str) -> list[Variant]:
    """Exit k for every example, k = 1..L, at keep ratio 1 and the bundle's: `static_k{k}_r{r}` (fp32),
    `static_int8_k{k}_r{r}`."""
    return [chain_variant(VariantInfo(f"static_{_tag(precision)}k{k}_r{r}", f"static depth: exit {k}", precision,
                                      group="static", policy="depth", threshold=k, keep_ratio=r), engine)
            for r in sorted({1.0, setup.keep_ratio}) for k in range(1, engine.num_layers + 1)]


def build_variants(setup: Setup, args: argparse.Namespace) -> Plan:
    """The table's variants (full models, chain and its A/A twin, exits, pruning, MPEE, MPEE int8), the
    sweep's and the static-depth points, and notes."""
    engine, notes, table = setup.engine, [], []
    exit_rule = {"policy": setup.policy, "threshold": setup.threshold}
    ref_export = None
    if args.reference is not None:
        infos, ref_export = full_models(args.reference, notes)
        table += [full_model_variant(info, engine.flops_model, args.threads, args.spinning, args.thread_pool)
                  for info in infos]
    else:
        notes.append("pytorch, onnx_full, onnx_fused, onnx_fused_int8: skipped (no --reference); every speed-up, "
                     "int8 rows too, is against the chain, not a full model")
    twin = open_engine(args, args.bundle)
    table += [chain_variant(VariantInfo(AA_NAMES[0], "our chain, no exit, no pruning", **NO_EXIT, keep_ratio=1.0),
                            engine),
              chain_variant(VariantInfo(AA_NAMES[1], "A/A control: the chain again, second load of the bundle",
                                        **NO_EXIT, keep_ratio=1.0), twin),
              chain_variant(VariantInfo("exits", "layer exits only", **exit_rule, keep_ratio=1.0), engine),
              chain_variant(VariantInfo("pruning", "token pruning only", **NO_EXIT, keep_ratio=setup.keep_ratio),
                            engine),
              chain_variant(VariantInfo("mpee", "MPEE", **exit_rule, keep_ratio=setup.keep_ratio), engine)]
    int8 = open_engine(args, args.int8) if args.int8 is not None else None
    if int8 is not None:
        table += [chain_variant(VariantInfo("chain_int8", "our int8 chain, no exit, no pruning", "int8", **NO_EXIT,
                                            keep_ratio=1.0), int8),
                  chain_variant(VariantInfo("mpee_int8", "MPEE int8", "int8", policy=int8.default_policy,
                                            threshold=int8.default_threshold, keep_ratio=setup.keep_ratio), int8)]
    else:
        notes.append("mpee_int8: skipped (no --int8 bundle)")
    table += length_point_variants(setup, args, int8)
    table += single_graph_variants(setup, args, exit_rule, notes)
    engines = [(engine, "fp32")] + ([(int8, "int8")] if getattr(args, "int8_points", False) else [])
    sweep = [] if args.no_sweep else [v for e, precision in engines for v in sweep_variants(setup, e, precision)]
    static = [] if args.no_static else [v for e, precision in engines for v in static_variants(setup, e, precision)]
    companion, companion_flops = [], None
    if getattr(args, "companion", None) is not None:
        companion, companion_flops = companion_variants(setup, args, notes)
    return Plan(table, sweep, static, notes, ref_export, companion, companion_flops)


def run(args: argparse.Namespace, *, progress: bool = True) -> tuple[RunRecord, list[RequestRow]]:
    """Set up, measure every onnxruntime variant in the interleaved pass (the CPU read before and after),
    and write OUT/rows.jsonl and OUT/run.json; return the record and the rows."""
    from .env import cpu_state, cpu_warning, environment
    setup = load_setup(args)
    plan = build_variants(setup, args)
    if setup.input["texts_cut"]:
        plan.notes.append(f"{setup.input['texts_cut']} of {setup.input['examples']} examples had a text longer "
                          f"than {setup.input['max_chars']:,} characters, cut before tokenizing (docs/design.md, "
                          "input limits)")
    variants = plan.variants
    print(f"mpee-bench: {len(setup.inputs)} examples x {len(variants)} onnxruntime variants interleaved, "
          f"{args.threads} threads", file=sys.stderr)
    before = cpu_state()
    rows = measure(variants, setup.inputs, args.warmup, progress=progress, block=args.block)
    after = cpu_state()
    engine = setup.engine
    manifest = engine.manifest
    env = environment(threads=engine.threads, thread_pool=engine.thread_pool,
                      spinning=args.spinning if engine.thread_pool == "session" else "onnxruntime default",
                      manifest_sha256=sha256_of(args.bundle / MANIFEST))
    bundles = {"fp32": args.bundle, "int8": args.int8, COMPANION: getattr(args, "companion", None)}
    record = RunRecord(
        run_id=uuid.uuid4().hex, task=manifest.task.name if manifest.task else "task",
        metric_name=manifest.task.metric if manifest.task else "accuracy", labels=list(engine.labels),
        gold=setup.labels, inputs_sha256=inputs_digest(setup.inputs), input=setup.input,
        flops_model=flops_fields(engine),
        environment=env | {"cpu_before": before, "cpu_after": after},
        variants=[v.info for v in variants],
        passes=[{"pass": 1, "mode": "interleaved", "block": args.block, "runtime": "onnxruntime",
                 "warmup": args.warmup, "variants": [v.name for v in variants]}],
        tokenize_us=setup.tokenize_us, notes=plan.notes, reference_export=plan.reference_export,
        policy=setup.policy, choice={"max_drop": args.max_drop, "budget_ms": args.budget_ms},
        device_warning=cpu_warning(before, after), command=["mpee-bench", *map(str, getattr(args, "argv", []))],
        bundles={k: str(v) for k, v in bundles.items() if v is not None},
        companion_flops_model=plan.companion_flops_model)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / ROWS, rows)
    record.dump(args.out / RUN)
    return record, rows
