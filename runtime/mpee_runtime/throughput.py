"""mpee-bench --throughput: texts per second and per-request p50/p99 latency at several batch sizes, MPEE
against the full models of `mpee-export reference`, every variant in one interleaved run (torch-free).

    mpee-bench --throughput BUNDLE --input DEV --reference REF [--int8 B8] [--batch-sizes 1,4,16,64]
                [--repeats N] [--threads T] [--max-examples N] --out OUT
    mpee-bench throughput-report OUT      throughput.md and throughput.png again from OUT/throughput.json

Writes OUT/throughput.json (`ThroughputRecord`), OUT/throughput.md and OUT/throughput.png.

Rules:
- Batches: the examples sorted by length in tokens (ties by position), cut in that order into batches of b
  rows (the last may be shorter); every variant runs the same batches. A full model gets each batch padded
  to its longest row (attention_mask 0 on the padding); MPEE gets the batch's texts (`predict_batch`).
- Ways, T = --threads threads in all: `single`, one session (MPEE: one engine) with T intra-op threads,
  running the batches in order; `parallel`, T single-thread sessions (engines) in T worker threads, each
  taking the next batch from one shared queue (onnxruntime releases the GIL in `run`). Every session has a
  pool of its own (session.py, thread_pool "session"); onnxruntime's process-wide pool is never created, and
  a process where it exists is refused (every session would run on it, whatever T says).
- Models: the fp32 full model (REF/model_fused.onnx, else REF/model.onnx) against BUNDLE, the int8 full
  model (REF/model_fused_int8.onnx) against the --int8 bundle, each where it exists.
- Timed, text in and label out: tokenizing (the bundle's tokenizer, for the full models too), padding and
  the model. texts/s = texts / wall time of the pass (first batch's start to last answer; parallel: from
  releasing the workers to joining them), summed over the repetitions. A request's latency runs from the
  start of its batch to its answer: a full model's rows all answer at the batch's end; an MPEE row answers
  at its own exit, as the engine times it (`ready_us`), else (no timings) at the batch's end, and the row's
  `latency_source` says which.
- Interleaved: per repetition and batch size the variants take turns in a fresh random order drawn from
  ORDER_SEED; each turn first runs the pass's largest batch (rows x tokens) --warmup times untimed on each of
  its sessions, so caches and arenas are back before the clock starts.
- Baseline per batch size and precision: the faster (texts/s) of the full model's two ways; a row's
  speed-up is its texts/s over the baseline's, and the headline (`Comparison`) is the faster MPEE way's.
- The A/A control: the fp32 full model's single way twice, on two loads (`<name>` and `<name>_aa`); at each
  batch size the relative spread |a - b| / ((a + b) / 2) of texts/s and of p50, flagged above report.AA_THRESHOLD.
- Agreement: each model (not its A/A twin) first answers every example alone at batch 1, untimed (MPEE:
  `engine.predict`, the full model unpadded); each row records the fraction of its labels equal to those.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .errors import MpeeRuntimeError
from .files import AtomicFolder, check_output_folder, write_text
from .metrics import latency_summary
from .policy import POLICIES
from .report import AA_THRESHOLD, relative_spread
from .schema import FULL_MODELS, FUSED, FUSED_INT8, MANIFEST, PLAIN, sha256_of

RECORD, TABLE, PLOT = "throughput.json", "throughput.md", "throughput.png"
FLAG, COMMAND, REPORT_COMMAND = "--throughput", "throughput", "throughput-report"   # how mpee-bench asks for it
RECORD_SCHEMA = 1
BATCH_SIZES = (1, 4, 16, 64)
SINGLE, PARALLEL = "single", "parallel"
FULL, MPEE = "full", "mpee"
AA_SUFFIX = "_aa"
ORDER_SEED = 0
PAD_ID = 0             # padding is masked out, so any valid id would do; BERT's [PAD] is 0
LATENCY_NOTE = ("a request's latency runs from its batch's start to its answer: for the full models the batch's "
                "end; for MPEE rows their own answer, timed by the engine (Prediction.timings_us['total']: from "
                "the batch's start when predict_batch runs the rows together, else the running sum over the rows "
                "run before it and its own), clipped to the batch's wall time")
FALLBACK_NOTE = ("{key} at batch size {size}: the engine gave no per-row times (Prediction.timings_us['total']), "
                 "so every row's latency is its batch's wall time (an upper bound for rows that exit early)")
BATCH_END, ENGINE = "batch_end", "engine"   # ThroughputRow.latency_source
TOKENIZE_NOTE = ("texts/s and latencies include tokenizing (the bundle's tokenizer, for the full models too) and "
                 "padding: text in, label out")


# ---------------------------------------------------------------- typed records
@dataclass(frozen=True)
class Latency:
    """Per-request latency statistics in microseconds (metrics.latency_summary)."""

    n: int
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float

    @classmethod
    def of(cls, values_us: Sequence[float]) -> Latency:
        s = latency_summary(values_us)
        return cls(s["n"], s["mean_us"], s["p50_us"], s["p90_us"], s["p99_us"])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Latency:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass
class ThroughputRow:
    """One variant at one batch size, over every repetition."""

    variant: str                     # the model: onnx_fused, onnx_fused_aa, onnx_fused_int8, mpee, mpee_int8
    way: str                         # SINGLE or PARALLEL
    kind: str                        # FULL or MPEE
    precision: str
    batch_size: int
    sessions: int                    # sessions (MPEE: engines) running at once
    threads_per_session: int
    source: str                      # the graph (full model) or the bundle folder (MPEE)
    texts: int                       # per pass
    batches: int                     # per pass
    pass_s: list[float]              # wall time of each repetition's pass
    texts_per_s: float               # texts of every pass / their summed wall time
    latency: Latency                 # per request, every repetition
    accuracy: float | None           # None: the input has no labels
    agreement: float                 # fraction of labels equal to the model's alone at batch 1
    latency_source: str              # BATCH_END: every row at its batch's end; ENGINE: each row's own answer
    mean_exit_layer: float
    predictions: list[int]           # label index per example, in the input's order (last repetition)
    speedup: float | None = None     # texts_per_s / the baseline's (same precision and batch size)
    baseline: str | None = None      # the baseline's key

    @property
    def key(self) -> str:
        return f"{self.variant}/{self.way}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ThroughputRow:
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**(kw | {"latency": Latency.from_dict(data["latency"])}))


@dataclass(frozen=True)
class Comparison:
    """At one batch size and precision: the best full model (the baseline) and the best MPEE way."""

    batch_size: int
    precision: str
    baseline: str                    # key of the faster full-model way
    baseline_texts_per_s: float
    best_mpee: str | None            # None: no MPEE bundle of this precision
    best_mpee_texts_per_s: float | None
    speedup: float | None            # best MPEE / baseline

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class AASpread:
    """The A/A pair at one batch size: relative spreads of texts/s and of p50 latency."""

    batch_size: int
    variants: list[str]
    texts_per_s_spread: float
    p50_spread: float
    threshold: float = AA_THRESHOLD

    @property
    def flagged(self) -> bool:
        return max(self.texts_per_s_spread, self.p50_spread) > self.threshold

    def to_dict(self) -> dict:
        return asdict(self) | {"flagged": self.flagged}   # for the reader; recomputed on reading

    @classmethod
    def from_dict(cls, data: dict) -> AASpread:
        return cls(data["batch_size"], list(data["variants"]), data["texts_per_s_spread"], data["p50_spread"],
                   data["threshold"])


@dataclass(frozen=True)
class Settings:
    """What was run, on what."""

    bundle: str
    int8_bundle: str | None
    reference: str
    input: str
    examples: int
    max_examples: int | None
    texts_cut: int                   # texts longer than the engine's max_chars, cut before tokenizing
    batch_sizes: list[int]
    repeats: int
    warmup: int
    threads: int                     # in all, per variant
    spinning: bool
    policy: str | None               # None: each bundle's own (as engine.predict)
    threshold: float | None
    keep_ratio: float | None
    order_seed: int = ORDER_SEED

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class ThroughputRecord:
    """OUT/throughput.json: the run's settings, the machine, every row, the comparisons and the A/A control."""

    run_id: str
    task: str
    labels: list[str]
    gold: list[int] | None
    settings: Settings
    environment: dict                # env.environment(), plus cpu_before / cpu_after
    rows: list[ThroughputRow]
    comparisons: list[Comparison] = field(default_factory=list)
    aa: list[AASpread] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference_export: dict | None = None   # summary of REF/reference.json (measure.reference_export)
    device_warning: str | None = None
    schema: int = RECORD_SCHEMA

    @property
    def warnings(self) -> list[str]:
        """The A/A control when flagged, and the CPU's warning."""
        out = []
        flagged = [a for a in self.aa if a.flagged]
        if flagged:
            worst = max(flagged, key=lambda a: max(a.texts_per_s_spread, a.p50_spread))
            out.append(f"A/A control: {' and '.join(worst.variants)} (the same variant, two loads) differ by "
                       f"{100 * worst.texts_per_s_spread:.1f}% in texts/s and {100 * worst.p50_spread:.1f}% in p50 "
                       f"at batch size {worst.batch_size}, above {100 * worst.threshold:.0f}%: differences of that "
                       "size are noise (re-run on an idle machine)")
        return out + ([self.device_warning] if self.device_warning else [])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows"] = [r.to_dict() for r in self.rows]
        out["aa"] = [a.to_dict() for a in self.aa]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ThroughputRecord:
        if data.get("schema") != RECORD_SCHEMA:
            raise MpeeRuntimeError(f"throughput record schema {data.get('schema')!r} unsupported (this version "
                                   f"reads {RECORD_SCHEMA}; re-run mpee-bench --throughput)")
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kw |= {"settings": Settings.from_dict(data["settings"]),
               "rows": [ThroughputRow.from_dict(r) for r in data["rows"]],
               "comparisons": [Comparison.from_dict(c) for c in data.get("comparisons", [])],
               "aa": [AASpread.from_dict(a) for a in data.get("aa", [])]}
        return cls(**kw)

    def dump(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> ThroughputRecord:
        if not path.is_file():
            raise MpeeRuntimeError(f"{path}: not found (run mpee-bench --throughput BUNDLE ... --out "
                                   f"{path.parent} first)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            raise MpeeRuntimeError(f"{path}: not a throughput record ({str(e)[:120]})") from None


# ---------------------------------------------------------------- batches and runners
@dataclass(frozen=True)
class Batch:
    """Rows of the input run together."""

    rows: np.ndarray                 # example indices, int64 (b,)
    texts: list[str]
    pairs: list[str | None] | None   # None: the input has no second texts
    tokens: int                      # the longest row's length in tokens: the padded length

    @property
    def size(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Answers:
    """A runner's answers for one batch, per row."""

    labels: list[int]
    exit_layers: list[int]
    ready_us: list[float] | None = None   # from the batch's start to the row's answer; None: the batch's end


Runner = Callable[[Batch], Answers]
Encode = Callable[[str, "str | None"], tuple[np.ndarray, np.ndarray]]


def make_batches(texts: Sequence[str], pairs: Sequence[str | None] | None, lengths: Sequence[int],
                 size: int) -> list[Batch]:
    """Batches of `size` rows of the examples sorted by length (ties by position), in that order."""
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = []
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        batches.append(Batch(np.asarray(rows, dtype=np.int64), [texts[i] for i in rows],
                             None if pairs is None else [pairs[i] for i in rows], max(lengths[i] for i in rows)))
    return batches


def pad_rows(encoded: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask and token_type_ids, int64 (b, T) with T the longest row; padding has mask 0.

    Args:
        encoded: per row, token ids and token type ids, int64 (1, t).
    """
    width = max(ids.shape[1] for ids, _ in encoded)
    ids = np.full((len(encoded), width), PAD_ID, dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for r, (row_ids, row_types) in enumerate(encoded):
        n = row_ids.shape[1]
        ids[r, :n], mask[r, :n], types[r, :n] = row_ids[0], 1, row_types[0]
    return ids, mask, types


def full_model_runner(session, encode: Encode, num_layers: int) -> Runner:
    """A full model (inputs input_ids / attention_mask / token_type_ids, output logits (b, labels)) on padded
    batches; the graph's own input names decide which of the three it is fed."""
    names = {i.name for i in session.get_inputs()}

    def run(batch: Batch) -> Answers:
        pairs = batch.pairs or [None] * batch.size
        ids, mask, types = pad_rows([encode(t, p) for t, p in zip(batch.texts, pairs)])
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (logits,) = session.run(None, {k: v for k, v in feeds.items() if k in names})
        return Answers([int(x) for x in logits.argmax(axis=1)], [num_layers] * batch.size)
    return run


def rows_together(engine, size: int) -> bool:
    """Whether `engine.predict_batch` runs a batch of `size` rows together (batch graphs) or row by row."""
    return size > 1 and bool(getattr(engine.manifest, "supports_batches", False))


def ready_us(preds: Sequence, together: bool) -> list[float] | None:
    """Each row's time from the batch's start to its answer, from the engine's own timings: rows run together
    carry it in timings_us["total"]; rows run one by one carry their own time there, so a row's answer comes
    after the running sum. None when a row has no total."""
    totals = [p.timings_us.get("total") for p in preds]
    if any(t is None for t in totals):
        return None
    return [float(t) for t in (totals if together else np.cumsum(totals))]


def mpee_runner(engine, exit_args: dict) -> Runner:
    """`engine.predict_batch` on the batch's texts with the run's exit policy, threshold and keep ratio."""
    def run(batch: Batch) -> Answers:
        preds = engine.predict_batch(batch.texts, batch.pairs, **exit_args)
        return Answers([p.label_index for p in preds], [p.exit_layer for p in preds],
                       ready_us(preds, rows_together(engine, batch.size)))
    return run


@dataclass
class Variant:
    """A model run one way: one runner per session (engine) that runs at once."""

    name: str
    kind: str
    precision: str
    way: str
    source: str
    runners: list[Runner]
    threads_per_session: int
    model: str                       # whose batch-1 labels the rows are checked against

    @property
    def key(self) -> str:
        return f"{self.name}/{self.way}"


# ---------------------------------------------------------------- timing
@dataclass
class PassResult:
    """One variant's pass over every batch."""

    wall_ns: int
    latency_ns: np.ndarray           # per example, int64 (n,)
    labels: np.ndarray               # per example, int64 (n,)
    exit_layers: np.ndarray          # per example, int64 (n,)
    batch_end: bool = False          # some batch's rows had no times of their own: the batch's end was taken


def _run_batch(runner: Runner, batch: Batch, out: PassResult) -> None:
    start = time.perf_counter_ns()
    answers = runner(batch)
    wall = time.perf_counter_ns() - start
    if answers.ready_us is None:
        out.latency_ns[batch.rows] = wall
        out.batch_end = True
    else:
        out.latency_ns[batch.rows] = np.minimum(np.asarray(answers.ready_us) * 1e3, wall).astype(np.int64)
    out.labels[batch.rows], out.exit_layers[batch.rows] = answers.labels, answers.exit_layers


def run_pass(variant: Variant, batches: Sequence[Batch], n: int) -> PassResult:
    """Time one pass: a single runner in this thread, several in worker threads sharing a queue of batches
    (started and held at a barrier, so thread start-up is not timed)."""
    out = PassResult(0, np.zeros(n, np.int64), np.full(n, -1, np.int64), np.zeros(n, np.int64))
    if len(variant.runners) == 1:
        start = time.perf_counter_ns()
        for batch in batches:
            _run_batch(variant.runners[0], batch, out)
        out.wall_ns = time.perf_counter_ns() - start
        return out
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for batch in batches:
        todo.put(batch)
    barrier, errors = threading.Barrier(len(variant.runners) + 1), []

    def work(runner: Runner) -> None:
        barrier.wait()
        try:
            while True:
                try:
                    batch = todo.get_nowait()
                except queue.Empty:
                    return
                _run_batch(runner, batch, out)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
            errors.append(e)
    workers = [threading.Thread(target=work, args=(r,), daemon=True) for r in variant.runners]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for w in workers:
        w.join()
    out.wall_ns = time.perf_counter_ns() - start
    if errors:
        raise errors[0]
    return out


def warm(variant: Variant, batches: Sequence[Batch], times: int) -> None:
    """Run the largest batch (rows x tokens) `times` times on each of the variant's runners, untimed."""
    largest = max(batches, key=lambda b: (b.size * b.tokens, b.size))
    for runner in variant.runners:
        for _ in range(times):
            runner(largest)


def interleave(variants: Sequence[Variant], batches: dict[int, list[Batch]], n: int, *, repeats: int,
               warmup: int, progress: bool = True) -> dict[tuple[str, int], list[PassResult]]:
    """Every variant's passes at every batch size, `repeats` times, in the order of the module docstring;
    keyed by (variant key, batch size)."""
    rng = np.random.default_rng(ORDER_SEED)
    out: dict[tuple[str, int], list[PassResult]] = {}
    start = time.time()
    for rep in range(repeats):
        for size, bs in batches.items():
            for k in rng.permutation(len(variants)):
                v = variants[k]
                warm(v, bs, warmup)
                out.setdefault((v.key, size), []).append(run_pass(v, bs, n))
        if progress:
            print(f"  repetition {rep + 1}/{repeats}, {time.time() - start:.0f} s", file=sys.stderr)
    return out


# ---------------------------------------------------------------- summaries
def summarize(v: Variant, size: int, passes: Sequence[PassResult], gold: Sequence[int] | None,
              alone: np.ndarray, n_batches: int) -> ThroughputRow:
    """A row from a variant's passes at one batch size."""
    last = passes[-1]
    latency = Latency.of(np.concatenate([p.latency_ns for p in passes]) / 1e3)
    wall_s = [p.wall_ns / 1e9 for p in passes]
    n = len(last.labels)
    accuracy = None if gold is None else float(np.mean(last.labels == np.asarray(gold)))
    source = BATCH_END if v.kind == FULL or any(p.batch_end for p in passes) else ENGINE
    return ThroughputRow(v.name, v.way, v.kind, v.precision, size, len(v.runners), v.threads_per_session, v.source,
                         n, n_batches, wall_s, n * len(passes) / sum(wall_s), latency, accuracy,
                         float(np.mean(last.labels == alone)), source, float(np.mean(last.exit_layers)),
                         [int(x) for x in last.labels])


def compare(rows: list[ThroughputRow]) -> tuple[list[ThroughputRow], list[Comparison], list[AASpread]]:
    """Rows with their speed-ups, the comparisons and the A/A spreads (rules in the module docstring)."""
    out, comparisons, aa = [], [], []
    for size in sorted({r.batch_size for r in rows}):
        here = [r for r in rows if r.batch_size == size]
        for precision in sorted({r.precision for r in here}):
            mine = [r for r in here if r.precision == precision]
            full = [r for r in mine if r.kind == FULL and not r.variant.endswith(AA_SUFFIX)]
            mpee = [r for r in mine if r.kind == MPEE]
            base = max(full, key=lambda r: r.texts_per_s) if full else None
            best = max(mpee, key=lambda r: r.texts_per_s) if mpee else None
            out += [replace(r, speedup=r.texts_per_s / base.texts_per_s if base else None,
                            baseline=base.key if base else None) for r in mine]
            if base is not None:
                comparisons.append(Comparison(size, precision, base.key, base.texts_per_s,
                                              best.key if best else None, best.texts_per_s if best else None,
                                              best.texts_per_s / base.texts_per_s if best else None))
        twins = [(a, b) for a in here for b in here if b.variant == a.variant + AA_SUFFIX and a.way == b.way]
        for a, b in twins:
            aa.append(AASpread(size, [a.key, b.key], relative_spread(a.texts_per_s, b.texts_per_s),
                               relative_spread(a.latency.p50_us, b.latency.p50_us)))
    return out, comparisons, aa


def row_notes(rows: Sequence[ThroughputRow]) -> list[str]:
    """A note for every row whose labels differ from its model's alone at batch 1, and for every MPEE row
    whose latencies are its batches' wall times."""
    notes = [f"{r.key} at batch size {r.batch_size}: {round(r.agreement * r.texts)} of {r.texts} labels equal the "
             f"model's alone at batch 1 ({'engine.predict' if r.kind == MPEE else 'unpadded'})"
             for r in rows if r.agreement < 1]
    return notes + [FALLBACK_NOTE.format(key=r.key, size=r.batch_size) for r in rows
                    if r.kind == MPEE and r.latency_source == BATCH_END]


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
    from .session import global_pool_width
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
    from .engine import MpeeEngine
    return MpeeEngine(bundle, threads=threads, spinning=args.spinning, allow_unvalidated=args.allow_unvalidated,
                      thread_pool="session", trust=args.trust, shared_arena=shared_arena)


def exit_args(args: argparse.Namespace, engine) -> dict:
    """The exit policy, threshold and keep ratio of the run (None: the bundle's), checked on `engine`."""
    if args.policy is not None or args.threshold is not None:
        engine.exit_rule(args.policy, args.threshold)
    engine.keep_ratio_feeds(args.keep_ratio)
    return {"policy": args.policy, "threshold": args.threshold, "keep_ratio": args.keep_ratio}


def full_variants(name: str, precision: str, path: Path, args: argparse.Namespace, encode: Encode,
                  num_layers: int, aa: bool) -> list[Variant]:
    """A full model's single way (and its A/A twin, on a second load) and its parallel way."""
    from .session import open_session
    T = args.threads

    def runner(threads: int) -> Runner:
        sess = open_session(path, threads=threads, spinning=args.spinning, thread_pool="session")
        return full_model_runner(sess, encode, num_layers)
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
    from .cli import input_columns
    from .data import read_examples
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
    from .measure import reference_export
    ref_export = reference_export(args.reference, notes)
    layers = engine.num_layers
    variants = full_variants(*models[0], args, engine.encode, layers, aa=True)
    variants += mpee_variants("mpee", "fp32", engine, args)
    engines = {"mpee": engine}
    if engine.manifest.precision != "fp32":
        notes.append(f"{args.bundle} holds {engine.manifest.precision} graphs; it is compared with the fp32 full "
                     "model all the same")
    for name, precision, path in models[1:]:
        variants += full_variants(name, precision, path, args, engine.encode, layers, aa=False)
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
    from .env import cpu_state, cpu_warning, environment
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
def _way(r: ThroughputRow) -> str:
    return f"{r.way} ({r.sessions} x {r.threads_per_session} thread{'s' if r.threads_per_session > 1 else ''})"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


TABLE_INTRO = ("Speed-up: texts/s against the faster full-model way of the row's precision at the same batch "
               "size. Way: sessions (MPEE: engines) running at once x threads each.")
TABLE_HEAD = ("| batch size | variant | way | precision | texts/s | p50 ms | p99 ms | accuracy | mean exit layer "
              "| speed-up vs best full model (same precision) |")


def markdown(rec: ThroughputRecord) -> str:
    """throughput.md: the table of every row, the comparisons, the A/A line, warnings and notes."""
    s = rec.settings
    lines = [f"# Throughput on {rec.task}: {s.examples} examples, {s.threads} threads, {s.repeats} repetitions",
             "", TABLE_INTRO, "", TABLE_HEAD, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rec.rows:
        acc = None if r.accuracy is None else 100 * r.accuracy
        lines.append(f"| {r.batch_size} | {r.variant} | {_way(r)} | {r.precision} | {r.texts_per_s:.1f} | "
                     f"{r.latency.p50_us / 1e3:.2f} | {r.latency.p99_us / 1e3:.2f} | {_num(acc, '.2f')} | "
                     f"{r.mean_exit_layer:.2f} | {_num(r.speedup, '.2f')}x |")
    lines += ["", "| batch size | precision | best full model | texts/s | best MPEE | texts/s | speed-up |",
              "|---:|---|---|---:|---|---:|---:|"]
    for c in rec.comparisons:
        lines.append(f"| {c.batch_size} | {c.precision} | {c.baseline} | {c.baseline_texts_per_s:.1f} | "
                     f"{c.best_mpee or '-'} | {_num(c.best_mpee_texts_per_s, '.1f')} | {_num(c.speedup, '.2f')}x |")
    lines += ["", aa_line(rec.aa)]
    lines += [f"\n**Warning:** {w}" for w in rec.warnings]
    lines += ["", "Notes:", *[f"- {n}" for n in rec.notes]]
    return "\n".join(lines) + "\n"


def aa_line(aa: Sequence[AASpread]) -> str:
    """One line: the A/A pair's spreads at every batch size and whether any is above its threshold."""
    if not aa:
        return "A/A control: not measured"
    parts = ", ".join(f"b={a.batch_size}: {100 * a.texts_per_s_spread:.1f}% texts/s, {100 * a.p50_spread:.1f}% p50"
                      for a in aa)
    verdict = "FLAGGED" if any(a.flagged for a in aa) else "within"
    return (f"A/A control: {' and '.join(aa[0].variants)} (the same variant on two loads) differ by {parts} "
            f"({verdict} {100 * aa[0].threshold:.0f}%).")


def plot(path: Path, rec: ThroughputRecord) -> str | None:
    """Throughput (x) against p99 latency (y, log) per variant and way, each point labelled by its batch
    size; None, or why the plot was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib not installed"
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key in dict.fromkeys(r.key for r in rec.rows):
        pts = sorted((r for r in rec.rows if r.key == key), key=lambda r: r.batch_size)
        xs, ys = [r.texts_per_s for r in pts], [r.latency.p99_us / 1e3 for r in pts]
        style = ("o" if pts[0].way == SINGLE else "s") + ("-" if pts[0].precision == "fp32" else "--")
        ax.plot(xs, ys, style, ms=5, label=f"{key} ({pts[0].precision})")
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(f"b={r.batch_size}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("throughput (texts/s)")
    ax.set_ylabel("p99 latency per request (ms, log)")
    ax.set_title(f"Throughput vs p99 latency on {rec.task}, {rec.settings.threads} threads")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_outputs(rec: ThroughputRecord, out: Path) -> list[Path]:
    """throughput.png (when matplotlib is installed), throughput.md and throughput.json into `out`, published
    together (files.AtomicFolder, merged into an existing folder, the record last); the paths written."""
    with AtomicFolder(out, merge=True, last=RECORD) as tmp:
        note = plot(tmp / PLOT, rec)
        if note and f"plot: {note}" not in rec.notes:
            rec.notes.append(f"plot: {note}")
        write_text(tmp / TABLE, markdown(rec))
        rec.dump(tmp / RECORD)
        names = sorted(p.name for p in tmp.iterdir())
    return [out / name for name in names]


def print_summary(rec: ThroughputRecord, written: Sequence[Path]) -> None:
    """The comparisons and the A/A line on stdout, warnings on stderr."""
    for c in rec.comparisons:
        print(f"batch {c.batch_size:>3} {c.precision}: best full {c.baseline} {c.baseline_texts_per_s:.1f} texts/s"
              + (f", best MPEE {c.best_mpee} {c.best_mpee_texts_per_s:.1f} texts/s: {c.speedup:.2f}x"
                 if c.best_mpee else ""))
    print(aa_line(rec.aa))
    for w in rec.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)))


def build_parser() -> argparse.ArgumentParser:
    from .cli import ErrorLineParser
    p = ErrorLineParser(prog="mpee-bench --throughput", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path, help="the (fp32) MPEE bundle")
    p.add_argument("--input", type=Path, required=True, help="GLUE TSV or JSONL with labels (e.g. dev.tsv)")
    p.add_argument("--text-column", help="column (TSV) or key (JSONL) of the text [default: as mpee-run]")
    p.add_argument("--pair-column", help="column of the second text [default: as mpee-run]")
    p.add_argument("--label-column", help="column of the gold label [default: as mpee-run]")
    p.add_argument("--reference", type=Path, required=True, help="folder from `mpee-export reference` "
                   "(model_fused.onnx or model.onnx; model_fused_int8.onnx for the int8 rows)")
    p.add_argument("--int8", type=Path, help="int8 bundle of the same model")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="[default: %(default)s]")
    p.add_argument("--repeats", type=int, default=3, help="passes of every variant at every batch size, "
                   "interleaved [default: %(default)s]")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of the largest batch on each session "
                   "before each pass [default: %(default)s]")
    p.add_argument("--threads", type=int, default=2, help="threads in all, per variant [default: %(default)s]")
    p.add_argument("--max-examples", type=int, help="use the first N examples")
    p.add_argument("--policy", choices=POLICIES, help="exit policy of MPEE [default: the bundle's]")
    p.add_argument("--threshold", type=float, help="threshold of MPEE [default: the bundle's]")
    p.add_argument("--keep-ratio", type=float, help="keep ratio of MPEE [default: the bundle's]")
    p.add_argument("--no-spinning", dest="spinning", action="store_false",
                   help="idle pool threads sleep instead of spinning during a run")
    p.add_argument("--allow-unvalidated", action="store_true", help="accept bundles that failed validation")
    p.add_argument("--trust", type=Path, metavar="PUBKEY", help="refuse bundles not signed with this public key")
    p.add_argument("--out", type=Path, required=True, help="folder for throughput.json, .md and .png")
    return p


def wants_throughput(argv: Sequence[str]) -> bool:
    """mpee-bench's arguments ask for this benchmark: `throughput` first, or `--throughput` anywhere (a bundle
    folder named "throughput" is given as ./throughput)."""
    return argv[:1] == [COMMAND] or FLAG in argv


def strip_command(argv: Sequence[str]) -> list[str]:
    """The arguments without the leading `throughput` or the first `--throughput`."""
    argv = list(argv)
    if argv[:1] == [COMMAND]:
        return argv[1:]
    del argv[argv.index(FLAG)]
    return argv


def main(argv: list[str] | None = None) -> int:
    """`mpee-bench --throughput ...` (argv without the flag: `strip_command`); errors become exit code 2 in
    bench.main."""
    args = build_parser().parse_intermixed_args(argv)
    rec = run(args)
    print_summary(rec, write_outputs(rec, args.out))
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """`mpee-bench throughput-report OUT`: throughput.md and throughput.png again from OUT/throughput.json."""
    from .cli import ErrorLineParser
    p = ErrorLineParser(prog="mpee-bench throughput-report", description=report_main.__doc__)
    p.add_argument("out", type=Path, help="folder of a `mpee-bench --throughput ... --out OUT` run")
    args = p.parse_args(argv)
    rec = ThroughputRecord.load(args.out / RECORD)
    print_summary(rec, write_outputs(rec, args.out))
    return 0
