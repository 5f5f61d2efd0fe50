"""mpee-serve's dynamic batcher and the models behind it: requests' rows queue up, one worker thread cuts them
into batches and runs each group of rows with the same knobs as one call (no server stack imported here).

Batching rule (`MpeeBatcher`):
- a request's rows enter a FIFO queue whole, or not at all: it is refused (`QueueFull`, with a Retry-After
  estimate) when the queue would hold more than `max_queue` rows, or when the rows waiting and its own would
  take longer than `shed_after_s` to run at recent speed (they would time out: shed now, not time out later);
- the worker takes the next batch as soon as `max_batch` rows wait, or the oldest waiting row has waited
  `max_wait_s`, whichever comes first (at once while the server drains); a batch is the first `max_batch`
  rows in queue order, so a large request may span batches and share them with others;
- a batch's rows are grouped by knobs (threshold, keep ratio, policy; first appearance order) and each group
  is one `Backend.run` call, so a row gets the answer it would get alone (`MpeeEngine.predict_batch`); the
  backend runs the call's rows in groups of similar length (`pad_slack`, padding.length_groups);
- a group whose call fails is run again request by request, so one request's fault fails only that request;
- a cancelled request (timeout, client gone) leaves the queue with its rows not yet taken; rows already in a
  batch finish, and their answers are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from time import monotonic

from ..errors import MpeeRuntimeError
from .backends import Knobs, Row, RowAnswer

log = logging.getLogger("mpee_runtime.serve")

_EWMA = 0.2            # weight of the newest batch in the seconds-per-row estimate behind Retry-After


class QueueFull(MpeeRuntimeError):
    """The queue cannot take the request's rows now (HTTP 503); `retry_after_s` estimates when it could."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherClosed(MpeeRuntimeError):
    """The server is shutting down and takes no new rows (HTTP 503)."""


# ---------------------------------------------------------------- the models behind the batcher


# ---------------------------------------------------------------- the batcher
class BatchObserver:
    """What the batcher reports as it works (serve.py's Prometheus metrics); called from any thread."""

    def queue_depth(self, rows: int) -> None:
        """Rows waiting, after each change."""

    def batch(self, rows: int) -> None:
        """Rows of one `Backend.run` call."""

    def answered(self, answer: RowAnswer) -> None:
        """One row answered."""

    def dropped(self, rows: int) -> None:
        """Rows of a cancelled request that left the queue before they ran."""


@dataclass(eq=False)
class Job:
    """One request's rows on their way through the batcher. The worker thread fills `answers`; the event loop's
    future gets them (or the first error) once every row is done."""

    rows: list[Row]
    knobs: Knobs
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=monotonic)
    answers: list[RowAnswer | None] = field(default_factory=list)
    taken: int = 0                   # rows handed to the worker (rows before it are in flight or done)
    done: int = 0                    # rows answered or failed
    cancelled: bool = False
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.rows)


Piece = tuple[Job, int]             # a job and the index of one of its rows


def _settle_all(jobs: list[Job]) -> None:
    """In the event loop: hand each job's answers (or its error) to its future, unless nobody waits any more."""
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(list(job.answers))


class MpeeBatcher:
    """The queue and its one worker thread (module docstring: the batching rule).

    One worker runs one call at a time: the engine's intra-op threads are the parallelism, and a second worker
    would only make two calls share the same cores. `submit` and `cancel` are called from the event loop and
    take the lock only to change the queue, so the loop never waits for a batch.
    """

    def __init__(self, backend, *, max_batch: int, max_wait_s: float, max_queue: int,
                 shed_after_s: float | None = None, pad_slack: float | None = None,
                 observer: BatchObserver | None = None) -> None:
        self.backend, self.pad_slack = backend, pad_slack
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.shed_after_s = shed_after_s
        self.observer = observer or BatchObserver()
        self._cond = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._queued = 0                  # rows waiting (not yet taken by the worker)
        self._closing = False
        self._row_s = 0.0                 # seconds per row of recent calls (EWMA): the Retry-After estimate
        self._ready = threading.Event()
        self._warmed = threading.Event()  # set once the warm-up is over, whether it worked or not
        self.warmup_error: str | None = None
        self._thread: threading.Thread | None = None

    # -- state
    @property
    def ready(self) -> bool:
        """Warmed up and not shutting down."""
        return self._ready.is_set() and not self._closing

    def wait_warm(self, timeout_s: float | None = None) -> bool:
        """Wait until the warm-up is over (`ready`, or `warmup_error` says why not); False on timeout."""
        return self._warmed.wait(timeout_s)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued_rows(self) -> int:
        return self._queued

    # -- event loop side
    def submit(self, rows: list[Row], knobs: Knobs, loop: asyncio.AbstractEventLoop) -> Job:
        """Queue a request's rows (all or none); its future resolves to one RowAnswer per row, in order.
        Raises QueueFull when they do not fit, BatcherClosed while shutting down."""
        with self._cond:
            if self._closing:
                raise BatcherClosed("shutting down: not taking new requests")
            self._check_room(len(rows))
            job = Job(list(rows), knobs, loop, loop.create_future())
            self._jobs.append(job)
            self._queued += len(rows)
            self._cond.notify()
        self.observer.queue_depth(self._queued)
        return job

    def refuses_one(self) -> int | None:
        """Retry-After seconds when even a one-row request would be refused now (QueueFull), else None. Read
        without the lock: the connections' quick check under overload (connections.py); `submit` decides."""
        try:
            self._check_room(1)
        except QueueFull as e:
            return e.retry_after_s
        return None

    def _check_room(self, rows: int) -> None:
        """Raise QueueFull when `rows` more rows do not fit (the rule in the module docstring; under the lock)."""
        wait_s = (self._queued + rows) * self._row_s   # 0 until a call has been timed
        retry_after = max(1, math.ceil(wait_s))
        if self._queued + rows > self.max_queue:
            raise QueueFull(f"queue full: {self._queued} of {self.max_queue} rows waiting, this request has {rows}",
                            retry_after)
        if self.shed_after_s is not None and self._queued and wait_s > self.shed_after_s:
            raise QueueFull(f"overloaded: the {self._queued} rows waiting and this request's {rows} would take "
                            f"about {wait_s:.1f} s, over the {self.shed_after_s:g} s timeout", retry_after)

    def cancel(self, job: Job) -> int:
        """Take the job's rows that have not started out of the queue; returns how many left."""
        with self._cond:
            if job.cancelled:
                return 0
            job.cancelled = True
            left = len(job.rows) - job.taken
            if left:
                self._jobs.remove(job)   # a job with rows left is still queued
                self._queued -= left
                job.taken = len(job.rows)
        if left:
            self.observer.queue_depth(self._queued)
            self.observer.dropped(left)
        return left

    # -- lifetime
    def start(self) -> None:
        """Start the worker: it warms the backend up (then `ready`), then serves the queue."""
        # A daemon, so that a call that never returns cannot keep the process alive past close()'s timeout.
        self._thread = threading.Thread(target=self._work, name="mpee-batcher", daemon=True)
        self._thread.start()

    def stop_taking(self) -> None:
        """Refuse new rows from now on; those queued run at once, without waiting for their batches to fill.
        Safe in a signal handler of the thread that submits (the lock is reentrant)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def close(self, timeout_s: float | None = None) -> None:
        """`stop_taking`, then wait (at most `timeout_s`) for the worker to run what was queued and stop."""
        self.stop_taking()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- worker side
    def _work(self) -> None:
        try:
            self.backend.warm_up(self.max_batch)
        except Exception as e:  # reported by /healthz; requests still get their own errors
            self.warmup_error = f"{type(e).__name__}: {e}"
            log.exception("warm-up failed")
        else:
            self._ready.set()
        finally:
            self._warmed.set()
        while True:
            pieces = self._next_batch()
            if pieces is None:
                return
            self._run(pieces)

    def _next_batch(self) -> list[Piece] | None:
        """Wait for a batch (the rule in the module docstring); None once closing with nothing queued."""
        with self._cond:
            while True:
                if self._queued == 0:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                wait = self._jobs[0].enqueued + self.max_wait_s - monotonic()
                if self._queued >= self.max_batch or wait <= 0 or self._closing:
                    return self._take()
                self._cond.wait(wait)

    def _take(self) -> list[Piece]:
        """The first max_batch waiting rows, in queue order (under the lock)."""
        pieces: list[Piece] = []
        while self._jobs and len(pieces) < self.max_batch:
            job = self._jobs[0]
            n = min(self.max_batch - len(pieces), len(job.rows) - job.taken)
            pieces += [(job, i) for i in range(job.taken, job.taken + n)]
            job.taken += n
            if job.taken == len(job.rows):
                self._jobs.popleft()
        self._queued -= len(pieces)
        self.observer.queue_depth(self._queued)
        return pieces

    def _run(self, pieces: list[Piece]) -> None:
        """One backend call per group of equal knobs, answers delivered as each group finishes."""
        groups: dict[Knobs, list[Piece]] = {}
        for piece in pieces:
            groups.setdefault(piece[0].knobs, []).append(piece)
        for knobs, group in groups.items():
            start = monotonic()
            try:
                answers: list = self.backend.run([job.rows[i] for job, i in group], knobs, self.pad_slack)
                self.observer.batch(len(group))
            except Exception:  # noqa: BLE001 -- isolated below: each request then gets its own answer or error
                answers = self._run_alone(group, knobs)
            row_s = (monotonic() - start) / len(group)
            self._row_s = row_s if self._row_s == 0 else (1 - _EWMA) * self._row_s + _EWMA * row_s
            finished: dict[asyncio.AbstractEventLoop, list[Job]] = {}
            for (job, i), answer in zip(group, answers):
                if self._deliver(job, i, answer):
                    finished.setdefault(job.loop, []).append(job)
            for loop, jobs in finished.items():   # one wake-up of the loop per call, not one per request
                try:
                    loop.call_soon_threadsafe(_settle_all, jobs)
                except RuntimeError:   # the loop has closed: nobody waits for these answers any more
                    pass

    def _run_alone(self, group: list[Piece], knobs: Knobs) -> list:
        """A failed group again, one request at a time: per row a RowAnswer, or the exception its request got."""
        by_job: dict[Job, list[int]] = {}
        for job, i in group:
            by_job.setdefault(job, []).append(i)
        answers: dict[Piece, object] = {}
        for job, rows in by_job.items():
            try:
                got: list = self.backend.run([job.rows[i] for i in rows], knobs, self.pad_slack)
                self.observer.batch(len(rows))
            except Exception as e:  # handed to the request (500, or 400 for a MpeeRuntimeError)
                if not isinstance(e, MpeeRuntimeError):
                    log.error("request failed", exc_info=e)
                got = [e] * len(rows)
            answers.update({(job, i): a for i, a in zip(rows, got)})
        return [answers[piece] for piece in group]

    def _deliver(self, job: Job, index: int, answer) -> bool:
        """Record one row's answer (or error); True when it was the job's last row and someone still waits."""
        if isinstance(answer, BaseException):
            job.error = job.error or answer
        else:
            job.answers[index] = answer
            self.observer.answered(answer)
        job.done += 1
        return job.done == len(job.rows) and not job.cancelled
