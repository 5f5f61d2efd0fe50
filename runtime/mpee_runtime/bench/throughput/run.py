"""The throughput run: check the arguments, load the models, plan every variant (both ways, the A/A twin),
read the inputs, run them interleaved and summarise into a `ThroughputRecord` (rules: the package docstring)."""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...bundle.contract import MANIFEST
from ...bundle.integrity import sha256_of
from ...bundle.reference import FULL_MODELS, FUSED, FUSED_INT8, PLAIN
from ...errors import MpeeRuntimeError
from ...files import check_output_folder
from .records import AA_SUFFIX, FULL, MPEE, PARALLEL, SINGLE, Settings, ThroughputRecord
from .runners import Batch, Encode, Runner, Variant, full_model_runner, make_batches, mpee_runner
from .summary import compare, row_notes, summarize
from .timing import interleave

BATCH_SIZES = (1, 4, 16, 64)
LATENCY_NOTE = ("a request's latency runs from its batch's start to its answer: for the full models the batch's "
                "end; for MPEE rows their own answer, timed by the engine (Prediction.timings_us['total']: from "
                "the batch's start when predict_batch runs the rows together, else the running sum over the rows "
                "run before it and its own), clipped to the batch's wall time")
TOKENIZE_NOTE = ("texts/s and latencies include tokenizing (the bundle's tokenizer, for the full models too) and "
                 "padding: text in, label out")


# ---------------------------------------------------------------- typed records


# ---------------------------------------------------------------- batches and runners


# ---------------------------------------------------------------- timing


# ---------------------------------------------------------------- summaries


# ---------------------------------------------------------------- the run
def parse_batch_sizes(text: str) -> list[int]:
    """Comma-separated whole numbers >= 1, returned sorted without repeats."""
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MpeeRuntimeError(f"--batch-sizes: expected comma-separated whole numbers, got {text!r}") from None
    if not sizes:
        raise MpeeRuntimeError("--batch-sizes: give at least one batch size")
    bad = [s for s in sizes if s < 1]
    if bad:
        raise MpeeRuntimeError(f"--batch-sizes: a batch size is at least 1, got {bad[0]}")
    return sorted(set(sizes))


def check_args(args: argparse.Namespace) -> list[int]:
    """Refuse bad options, an unwritable --out and onnxruntime's process-wide pool before any work; return
    the batch sizes."""
    from ...core.session import global_pool_width
    sizes = parse_batch_sizes(args.batch_sizes)
    for name, low in (("repeats", 1), ("threads", 1), ("warmup", 0), ("max_examples", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise MpeeRuntimeError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.keep_ratio is not None and not 0 < args.keep_ratio <= 1:
        raise MpeeRuntimeError(f"--keep-ratio must be in (0, 1], got {args.keep_ratio}")
    check_output_folder(args.out, force=True)
    if global_pool_width() is not None:
        raise MpeeRuntimeError("onnxruntime's process-wide thread pool exists in this process: every session "
                               "would run on it, so the thread counts would not be what --threads says")
    return sizes


def full_models(ref: Path, notes: list[str]) -> list[tuple[str, str, Path]]:
    """(variant, precision, path) of the full models to run: the fp32 one (fused, else plain) and the int8
    one where REF has it; a REF without an fp32 full model is refused."""
    by_file = {m.file: m for m in FULL_MODELS}
    if not ref.is_dir():
        raise MpeeRuntimeError(f"--reference {ref}: not a folder (make it with `mpee-export reference`)")
    fp32 = next((f for f in (FUSED, PLAIN) if (ref / f).is_file()), None)
    if fp32 is None:
        raise MpeeRuntimeError(f"--reference {ref}: no {FUSED} or {PLAIN} (make it with `mpee-export reference`)")
    if fp32 == PLAIN:
        notes.append(f"{ref} has no {FUSED}: the fp32 full model is the plain export {PLAIN}")
    models = [(by_file[fp32].variant, "fp32", ref / fp32)]
    if (ref / FUSED_INT8).is_file():
        models.append((by_file[FUSED_INT8].variant, "int8", ref / FUSED_INT8))
    else:
        notes.append(f"{by_file[FUSED_INT8].variant}: skipped, {ref} has no {FUSED_INT8}")
    return models


def open_engine(args: argparse.Namespace, bundle: Path, threads: int, shared_arena: bool = True):
    from ...core.engine import MpeeEngine
    return MpeeEngine(bundle, threads=threads, spinning=args.spinning, allow_unvalidated=args.allow_unvalidated,
                      thread_pool="session", trust=args.trust, shared_arena=shared_arena)


def exit_args(args: argparse.Namespace, engine) -> dict:
    """The exit policy, threshold and keep ratio of the run (None: the bundle's), checked on `engine`."""
    if args.policy is not None or args.threshold is not None:
        engine.exit_rule(args.policy, args.threshold)
    engine.keep_ratio_feeds(args.keep_ratio)
    return {"policy": args.policy, "threshold": args.threshold, "keep_ratio": args.keep_ratio}


def full_variants(name: str, precision: str, path: Path, args: argparse.Namespace, encode: Encode,
                  num_layers: int, aa: bool, pad_id: int = 0) -> list[Variant]:
    """A full model's single way (and its A/A twin, on a second load) and its parallel way."""
    from ...core.session import open_session
    T = args.threads

    def runner(threads: int) -> Runner:
        sess = open_session(path, threads=threads, spinning=args.spinning, thread_pool="session")
        return full_model_runner(sess, encode, num_layers, pad_id)
    out = [Variant(name, FULL, precision, SINGLE, str(path), [runner(T)], T, name)]
    if aa:
        out.append(Variant(name + AA_SUFFIX, FULL, precision, SINGLE, str(path), [runner(T)], T, name))
    return out + [Variant(name, FULL, precision, PARALLEL, str(path), [runner(1) for _ in range(T)], 1, name)]


def mpee_variants(name: str, precision: str, engine, args: argparse.Namespace) -> list[Variant]:
    """MPEE's single way on `engine` (T threads) and its parallel way on T more engines of one thread each
    (arenas of their own: a shared one would make the workers allocate under one lock)."""
    kw = exit_args(args, engine)
    T, bundle = args.threads, engine.bundle
    workers = [open_engine(args, bundle, 1, shared_arena=False) for _ in range(T)]
    return [Variant(name, MPEE, precision, SINGLE, str(bundle), [mpee_runner(engine, kw)], T, name),
            Variant(name, MPEE, precision, PARALLEL, str(bundle), [mpee_runner(e, kw) for e in workers], 1, name)]


@dataclass
class Inputs:
    """The examples as read, their lengths in tokens and gold labels."""

    texts: list[str]
    pairs: list[str | None] | None
    lengths: list[int]
    gold: list[int] | None
    cut: int


def read_inputs(args: argparse.Namespace, engine) -> Inputs:
    """The labelled file, read as mpee-bench reads it (measure.load_setup), tokenised once for the lengths."""
    from ...cli.common import input_columns
    from ...text.readers import read_examples
    columns, require_label = input_columns(args.input, engine.manifest.task, text=args.text_column,
                                           pair=args.pair_column, label=args.label_column)
    examples = read_examples(args.input, columns, labels=engine.labels, require_label=require_label,
                             limit=args.max_examples, max_chars=engine.max_chars, tail=engine.truncation != "head")
    if not examples:
        raise MpeeRuntimeError(f"{args.input}: no examples")
    lengths, cut = [], 0
    for ex in examples:
        ids, _, cut_here = engine.encode_cut(ex.text, ex.pair)
        lengths.append(int(ids.shape[1]))
        cut += ex.cut or cut_here
    ids = {label: i for i, label in enumerate(engine.labels)}
    gold = None if any(ex.label is None for ex in examples) else [ids[ex.label] for ex in examples]
    pairs = None if all(ex.pair is None for ex in examples) else [ex.pair for ex in examples]
    return Inputs([ex.text for ex in examples], pairs, lengths, gold, cut)


def alone_labels(v: Variant, engine, kw: dict, data: Inputs) -> np.ndarray:
    """Each example's label from the model alone at batch 1: `engine.predict` for MPEE, else the variant's
    runner on a batch of that one row (unpadded)."""
    pairs = data.pairs or [None] * len(data.texts)
    if v.kind == MPEE:
        return np.asarray([engine.predict(t, p, **kw).label_index for t, p in zip(data.texts, pairs)])
    one = [Batch(np.asarray([i]), [t], None if data.pairs is None else [p], n)
           for i, (t, p, n) in enumerate(zip(data.texts, pairs, data.lengths))]
    return np.asarray([v.runners[0](b).labels[0] for b in one])


@dataclass
class Plan:
    """Every variant of the run, the engines of the MPEE models and the notes so far."""

    variants: list[Variant]
    engines: dict[str, object]       # MPEE model name -> its single-way engine
    exit_args: dict
    notes: list[str]
    reference_export: dict | None


def build_plan(args: argparse.Namespace, engine, models: list[tuple[str, str, Path]], notes: list[str]) -> Plan:
    """The full models (`full_models`) and the MPEE bundles, each run both ways, fp32 first; the A/A twin."""
    from ..records import reference_export
    ref_export = reference_export(args.reference, notes)
    layers = engine.num_layers
    pad_id = engine.manifest.model.pad_token_id
    variants = full_variants(*models[0], args, engine.encode, layers, aa=True, pad_id=pad_id)
    variants += mpee_variants("mpee", "fp32", engine, args)
    engines = {"mpee": engine}
    if engine.manifest.precision != "fp32":
        notes.append(f"{args.bundle} holds {engine.manifest.precision} graphs; it is compared with the fp32 full "
                     "model all the same")
    for name, precision, path in models[1:]:
        variants += full_variants(name, precision, path, args, engine.encode, layers, aa=False, pad_id=pad_id)
    if args.int8 is not None:
        int8 = open_engine(args, args.int8, args.threads)
        if int8.manifest.precision != "int8":
            notes.append(f"--int8 {args.int8} holds {int8.manifest.precision} graphs; it is compared with the int8 "
                         "full model all the same")
        variants += mpee_variants("mpee_int8", "int8", int8, args)
        engines["mpee_int8"] = int8
    else:
        notes.append("mpee_int8: skipped (no --int8 bundle)")
    return Plan(variants, engines, exit_args(args, engine), notes, ref_export)


def shape_notes(batches: dict[int, list[Batch]], n: int, threads: int) -> list[str]:
    """What the batch sizes mean for this input: one short batch, fewer batches than parallel workers."""
    notes = []
    for size, bs in batches.items():
        if size > n:
            notes.append(f"batch size {size} > {n} examples: one batch of {n}")
        if 1 < threads and len(bs) < threads:
            notes.append(f"batch size {size}: {len(bs)} batch(es) for {threads} parallel workers, so some workers "
                         "idle in the parallel way")
    return notes


def run(args: argparse.Namespace, *, progress: bool = True) -> ThroughputRecord:
    """Check, load, run every variant interleaved and summarise; nothing is written here."""
    from ..env import cpu_state, cpu_warning, environment
    sizes = check_args(args)
    notes: list[str] = []
    models = full_models(args.reference, notes)   # before any bundle is loaded: a bad REF fails at once
    engine = open_engine(args, args.bundle, args.threads)
    data = read_inputs(args, engine)
    plan = build_plan(args, engine, models, notes)
    n = len(data.texts)
    batches = {s: make_batches(data.texts, data.pairs, data.lengths, s) for s in sizes}
    alone = {v.model: alone_labels(v, plan.engines.get(v.model), plan.exit_args, data)
             for v in plan.variants if v.way == SINGLE and v.name == v.model}
    if progress:
        print(f"mpee-bench --throughput: {n} examples x {len(plan.variants)} variants x batch sizes "
              f"{','.join(map(str, sizes))} x {args.repeats} repetitions, {args.threads} threads", file=sys.stderr)
    before = cpu_state()
    passes = interleave(plan.variants, batches, n, repeats=args.repeats, warmup=args.warmup, progress=progress)
    after = cpu_state()
    rows = [summarize(v, s, passes[(v.key, s)], data.gold, alone[v.model], len(batches[s]))
            for s in sizes for v in plan.variants]
    rows, comparisons, aa = compare(rows)
    notes = [TOKENIZE_NOTE, LATENCY_NOTE, *plan.notes, *shape_notes(batches, n, args.threads),
             *row_notes(rows)]
    if data.cut:
        notes.append(f"{data.cut} of {n} examples had a text longer than {engine.max_chars:,} characters, cut "
                     "before tokenizing (docs/design.md, input limits)")
    settings = Settings(str(args.bundle), None if args.int8 is None else str(args.int8), str(args.reference),
                        str(args.input), n, args.max_examples, data.cut, sizes, args.repeats, args.warmup,
                        args.threads, args.spinning, args.policy, args.threshold, args.keep_ratio)
    env = environment(threads=args.threads, thread_pool="session", spinning=args.spinning,
                      manifest_sha256=sha256_of(args.bundle / MANIFEST),
                      int8_manifest_sha256=None if args.int8 is None else sha256_of(args.int8 / MANIFEST))
    manifest = engine.manifest
    return ThroughputRecord(uuid.uuid4().hex, manifest.task.name if manifest.task else "task", list(engine.labels),
                            data.gold, settings, env | {"cpu_before": before, "cpu_after": after}, rows,
                            comparisons, aa, notes, plan.reference_export, cpu_warning(before, after))


# ---------------------------------------------------------------- the report


