"""mpee-serve --workers N: N server processes on one port, each with its own engine, batcher and event loop.

One Python process serves at most what one GIL lets it parse, hand over and answer: measured on SST-2, the MPEE
server saturates at the same rate with one intra-op thread as with two (docs/serving.md). Workers multiply that
part; each gets `--threads` intra-op threads (default: the cores divided among the workers).

Rules (`run_workers`, the parent; `_worker`, each child):
- the parent binds the port (a port in use is refused before any bundle loads) and starts the workers with
  multiprocessing's spawn method (no fork of a process with threads); every worker accepts on the one socket;
- each worker loads and verifies the bundle, opens and warms its sessions, then reports ready; the parent says
  the server is up only when all have. A worker that fails before it is ready stops the server: every worker is
  stopped, its one-line reason is the `Error:` line, exit code 2;
- SIGTERM or SIGINT to the parent: each worker gets SIGTERM (it stops accepting, finishes what is in flight and
  exits 0, as a single server does); the parent exits 0 when every worker did;
- a worker that dies while serving (killed, out of memory) is replaced by a new one on the same socket; a
  replacement that cannot start stops the server (exit 1); a parent that dies (even by SIGKILL) takes the
  workers with it: each sees its pipe to the parent close and stops as on SIGTERM;
- metrics: the workers write prometheus_client's multiprocess files into one temporary folder
  (PROMETHEUS_MULTIPROC_DIR, removed at exit), so `GET /metrics` on any worker reports the sum over all of them
  (the queue depth: over the live ones).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import MpeeRuntimeError

log = logging.getLogger("mpee_runtime.serve")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"   # prometheus_client's own variable: read when it is first imported
READY_TIMEOUT_S = 600.0                      # loading, verifying and warming one bundle, on a slow board
POLL_S = 0.2                                 # how often the parent looks for signals and dead workers


def worker_threads(threads: int | None, workers: int) -> int:
    """Intra-op threads per worker: `threads` when given, else the cores (at most 4, as a single server) shared
    out among the workers, at least 1 each."""
    if threads is not None:
        return threads
    return max(1, min(os.cpu_count() or 1, 4) // workers)


@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: Connection            # the parent's end: the worker sends ("ready", threads) or ("error", message); the
                                # worker stops when it closes (the parent is gone)


def _ignore_signal(sig, frame) -> None:
    """A worker's SIGINT (a terminal's Ctrl-C reaches the whole process group): the parent sends SIGTERM."""


def _worker(index: int, args, settings, sock: socket.socket, conn: Connection) -> None:
    """A worker's life: load, report ready (or the reason it cannot), serve until SIGTERM."""
    from .app import make_app
    from .server import SWITCH_INTERVAL_S, clean_exit_on_sigterm, load_backend, uvicorn_server
    signal.signal(signal.SIGINT, _ignore_signal)   # SIGTERM keeps its default (stop at once) while loading
    logging.basicConfig(level=args.log_level.upper(), format=f"mpee-serve[{index}]: %(levelname)s %(message)s")
    try:
        engine, backend = load_backend(args)
        app = make_app(backend, settings, threads=engine.threads, workers=args.workers, guards=args.guards)
    except MpeeRuntimeError as e:
        conn.send(("error", str(e)))
        sys.exit(2)
    except Exception as e:   # a bug: its one line to the parent, the traceback to the log
        log.exception("worker %d failed to start", index)
        conn.send(("error", f"worker {index} failed to start ({type(e).__name__}: {e})"))
        sys.exit(2)
    server = uvicorn_server(app, args, settings)

    def report_ready() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        app.state.batcher.wait_warm()
        try:
            conn.send(("ready", engine.threads))
        except OSError:   # the parent is gone: watch_parent stops this worker
            pass

    def watch_parent() -> None:
        try:
            conn.recv()   # the parent never sends: this returns (EOFError) when it is gone, even killed
        except (EOFError, OSError):
            pass
        log.warning("worker %d: the parent process is gone: stopping", index)
        server.handle_exit(signal.SIGTERM, None)
    threading.Thread(target=report_ready, name="mpee-ready", daemon=True).start()
    threading.Thread(target=watch_parent, name="mpee-parent", daemon=True).start()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    signal.signal(signal.SIGTERM, clean_exit_on_sigterm)   # uvicorn's own handler while it serves
    server.run(sockets=[sock])
    sys.exit(0 if server.started else 1)


class _Supervisor:
    """The parent: starts, watches, replaces and stops the workers (module docstring)."""

    def __init__(self, args, settings, sock: socket.socket, banner: str) -> None:
        self.args, self.settings, self.sock, self.banner = args, settings, sock, banner
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.stopping = False

    def _on_signal(self, sig, frame) -> None:
        self.stopping = True

    def start(self, index: int) -> _Worker:
        parent_end, child_end = self.ctx.Pipe()   # duplex: the worker sees the parent's end close
        process = self.ctx.Process(target=_worker, name=f"mpee-serve-{index}", daemon=False,
                                   args=(index, self.args, self.settings, self.sock, child_end))
        process.start()
        child_end.close()
        return _Worker(index, process, parent_end)

    def wait_ready(self, pending: list[_Worker]) -> str | None:
        """Wait until every pending worker is ready; the first failure's message (None: all ready, or stopping)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(pending)
        while pending and not self.stopping:
            if time.monotonic() > deadline:
                return f"worker {pending[0].index} not ready after {READY_TIMEOUT_S:g} s"
            for w in wait([w.conn for w in pending] + [w.process.sentinel for w in pending], POLL_S):
                worker = next(x for x in pending if w in (x.conn, x.process.sentinel))
                message = self._message(worker)
                if message is None:
                    continue
                kind, value = message
                if kind == "error":
                    return value
                log.info("worker %d (pid %d) ready, %d threads", worker.index, worker.process.pid, value)
                pending.remove(worker)
        return None

    @staticmethod
    def _message(worker: _Worker) -> tuple[str, Any] | None:
        """The worker's handshake message; ("error", why) when it died without one; None when not there yet."""
        if worker.conn.poll():
            try:
                return worker.conn.recv()
            except EOFError:
                pass
        elif worker.process.is_alive():
            return None
        worker.process.join(5)
        return "error", f"worker {worker.index} exited with code {worker.process.exitcode} before it was ready"

    def stop_all(self, timeout_s: float) -> bool:
        """SIGTERM to every worker, wait for them (then kill what is left); True when every one exited 0 (or was
        stopped by that SIGTERM before it served: still loading)."""
        for w in self.workers:
            if w.process.is_alive():
                os.kill(w.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        clean = True
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                log.error("worker %d (pid %d) did not stop in %.0f s: killed", w.index, w.process.pid, timeout_s)
                w.process.kill()
                w.process.join()
            clean = clean and w.process.exitcode in (0, -signal.SIGTERM)
        return clean

    def replace_dead(self) -> str | None:
        """Start a new worker for each one that died while serving; the reason when a replacement cannot start."""
        for i, w in enumerate(self.workers):
            if w.process.is_alive() or self.stopping:
                continue
            w.process.join()
            _forget_gauges(w.process.pid)
            log.error("worker %d (pid %d) exited with code %s while serving: starting another", w.index,
                      w.process.pid, w.process.exitcode)
            self.workers[i] = self.start(w.index)
            failure = self.wait_ready([self.workers[i]])
            if failure:
                return failure
        return None

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        grace_s = self.settings.timeout_s + 10
        try:
            self.workers = [self.start(i) for i in range(self.args.workers)]
            failure = self.wait_ready(self.workers)
            if failure:
                self.stop_all(grace_s)
                raise MpeeRuntimeError(failure)
            if not self.stopping:
                print(self.banner, file=sys.stderr, flush=True)
            while not self.stopping:
                wait([w.process.sentinel for w in self.workers], POLL_S)
                failure = self.replace_dead()
                if failure:
                    self.stop_all(grace_s)
                    print(f"Error: a worker could not be replaced: {failure}", file=sys.stderr, flush=True)
                    return 1
            return 0 if self.stop_all(grace_s) else 1
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _forget_gauges(pid: int) -> None:
    """Drop a dead worker's live gauges (the queue depth) from the aggregate, as prometheus_client asks."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid)


def run_workers(args, settings, sock: socket.socket, banner: str) -> int:
    """Serve with `args.workers` processes on `sock` (bound, not listening) until SIGTERM; the exit code.
    `banner` goes to stderr once every worker is ready."""
    multiprocessing.allow_connection_pickling()   # the bound socket travels to each spawned worker
    metrics_dir = tempfile.mkdtemp(prefix="mpee-serve-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir      # inherited by the workers, read by their prometheus_client
    try:
        return _Supervisor(args, settings, sock, banner).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
