"""Timing the throughput passes: one variant's pass over every batch (a single runner, or worker threads
sharing a queue), warm-up, and the interleaved order of every variant at every batch size."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .records import ORDER_SEED
from .runners import Batch, Runner, Variant


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
