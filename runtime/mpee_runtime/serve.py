"""mpee-serve: a bundle as a local HTTP service (Starlette on uvicorn, the `serve` extra), batched dynamically
(serve_batcher.py), protected against overload, measured in Prometheus format (docs/serving.md).

    mpee-serve BUNDLE [--host 127.0.0.1] [--port 8000] [--threads N] [--max-batch 16] [--max-wait-ms 5] ...
    mpee-serve BUNDLE --full-model REF/model_fused.onnx     the reference full model behind the same API
    mpee-serve BUNDLE --workers N                           N server processes on the port (serve_workers.py)

Routes: POST /v1/classify, GET /healthz, GET /v1/model, GET /metrics. The server stack (starlette, uvicorn,
prometheus_client) is imported only when a server is built, so the core package keeps its three dependencies
and a missing extra is one `Error:` line. Everything that can be refused (flags, the bundle's verification,
the port) is refused before the server listens: one `Error:` line, exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import socket
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import TYPE_CHECKING, Any

from .errors import MpeeRuntimeError, exit_2_on_error
from .policy import POLICIES
from .serve_batcher import (
    BatcherClosed,
    BatchObserver,
    FieldError,
    FullModelBackend,
    Job,
    Knobs,
    MpeeBackend,
    MpeeBatcher,
    QueueFull,
    Row,
    RowAnswer,
)

if TYPE_CHECKING:   # the server stack is optional: only its types are named here
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

INSTALL_HINT = "pip install 'mpee-runtime[serve]'"
SWITCH_INTERVAL_S = 0.0002   # sys.setswitchinterval in the server process (main)
ROUTES = ("/v1/classify", "/healthz", "/v1/model", "/metrics")   # metric label values; anything else is "other"
TOP_FIELDS = ("text", "text_pair", "inputs", "threshold", "keep_ratio", "policy")
ROW_FIELDS = ("text", "text_pair")
MAX_WORKERS = 64
STATUS_CLIENT_GONE = 499    # nginx's code for "client closed the request": counted, never seen by the client
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
log = logging.getLogger("mpee_runtime.serve")


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits (docs/serving.md "Protection"); the CLI's flags with their defaults."""

    max_batch: int = 16               # rows per backend call at most
    max_wait_ms: float = 5.0          # how long the oldest waiting row waits for its batch to fill
    max_queue: int = 256              # rows waiting at most; more: 503 with Retry-After
    max_inputs: int = 64              # rows per request at most; more: 413
    max_body_bytes: int = 1 << 20     # request body at most; more: 413
    max_text_chars: int = 100_000     # characters per text or pair at most; more: 413 (the engine cuts at max_chars)
    timeout_s: float = 30.0           # from queued to answered at most; later: 504 (and rows not started dropped)
    pad_slack: float = 0.25           # a batch runs in groups of similar length: padding at most this share

    def check(self) -> None:
        """Refuse limits that cannot work, in one line naming the flag."""
        whole = {"--max-batch": self.max_batch, "--max-queue": self.max_queue, "--max-inputs": self.max_inputs,
                 "--max-body-bytes": self.max_body_bytes, "--max-text-chars": self.max_text_chars}
        for flag, value in whole.items():
            if value < 1:
                raise MpeeRuntimeError(f"{flag} must be >= 1, got {value}")
        if not math.isfinite(self.max_wait_ms) or self.max_wait_ms < 0:
            raise MpeeRuntimeError(f"--max-wait-ms must be a finite number >= 0, got {self.max_wait_ms}")
        if not math.isfinite(self.pad_slack) or self.pad_slack < 0:
            raise MpeeRuntimeError(f"--pad-slack must be a finite number >= 0, got {self.pad_slack}")
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise MpeeRuntimeError(f"--timeout-s must be a finite number > 0, got {self.timeout_s}")
        if self.max_inputs > self.max_queue:   # such a request could never be queued
            raise MpeeRuntimeError(f"--max-inputs ({self.max_inputs}) must be <= --max-queue ({self.max_queue})")


class TooLarge(FieldError):
    """A request over a size limit (HTTP 413); `field` names what is too large (body, inputs, a text)."""


@dataclass(frozen=True)
class ClassifyRequest:
    """A parsed `POST /v1/classify` body: its rows, its knobs, and whether it was one text (`{"text": ...}`,
    answered by one object) or a list (`{"inputs": [...]}`, answered by `{"predictions": [...]}`)."""

    rows: list[Row]
    knobs: Knobs
    single: bool


# ---------------------------------------------------------------- request parsing
def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")   # Python's json reads NaN and Infinity; JSON has neither


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise FieldError("body", f"not UTF-8 (byte {e.start}: {e.reason})") from None
    except (ValueError, RecursionError) as e:   # JSONDecodeError is a ValueError; RecursionError: deep nesting
        raise FieldError("body", f"not valid JSON ({str(e)[:120]})") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if _number(value) else type(value).__name__)


def _text(value: Any, where: str, settings: ServeSettings, optional: bool = False) -> str | None:
    """A text field: a string (or null/absent when optional), valid Unicode, at most max_text_chars."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FieldError(where, f"must be a string, got {_type_name(value)}")
    if len(value) > settings.max_text_chars:
        raise TooLarge(where, f"{len(value)} characters, at most {settings.max_text_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:   # JSON's \\ud800 escapes give lone surrogates, which the tokenizer refuses
        raise FieldError(where, "not valid Unicode (it holds a lone surrogate)") from None
    return value


def _check_keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise FieldError(f"{where}{key}", f"unknown field (allowed: {', '.join(allowed)})")


def _rows(data: dict, settings: ServeSettings) -> tuple[list[Row], bool]:
    """The request's rows, and whether it was a single text; exactly one of text and inputs."""
    if ("text" in data) == ("inputs" in data):
        raise FieldError("text", "give either text (one input) or inputs (a list of {text, text_pair})")
    if "text" in data:
        return [Row(_text(data["text"], "text", settings), _text(data.get("text_pair"), "text_pair", settings,
                                                                 optional=True))], True
    if "text_pair" in data:
        raise FieldError("text_pair", "with inputs, each input has its own text_pair")
    inputs = data["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise FieldError("inputs", f"must be a non-empty array of {{text, text_pair}} objects, got "
                         f"{'an empty array' if isinstance(inputs, list) else _type_name(inputs)}")
    if len(inputs) > settings.max_inputs:
        raise TooLarge("inputs", f"{len(inputs)} inputs, at most {settings.max_inputs} per request")
    rows = []
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise FieldError(where, f"must be an object {{text, text_pair}}, got {_type_name(item)}")
        _check_keys(item, ROW_FIELDS, where + ".")
        if "text" not in item:
            raise FieldError(where + ".text", "missing")
        rows.append(Row(_text(item["text"], where + ".text", settings),
                        _text(item.get("text_pair"), where + ".text_pair", settings, optional=True)))
    return rows, False


def _knobs(data: dict) -> Knobs:
    """The knobs' JSON types (null: the bundle's value); their ranges are the backend's check."""
    threshold, ratio, policy = data.get("threshold"), data.get("keep_ratio"), data.get("policy")
    if threshold is not None and not _number(threshold):
        raise FieldError("threshold", f"must be a number, got {_type_name(threshold)}")
    if isinstance(ratio, list):
        if not ratio or not all(_number(r) for r in ratio):
            raise FieldError("keep_ratio", "a schedule is a non-empty array of numbers, one per pruning layer")
        ratio = tuple(ratio)
    elif ratio is not None and not _number(ratio):
        raise FieldError("keep_ratio", f"must be a number or an array of numbers, got {_type_name(ratio)}")
    if policy is not None and not isinstance(policy, str):
        raise FieldError("policy", f"must be a string, one of {', '.join(POLICIES)}; got {_type_name(policy)}")
    return Knobs(threshold, ratio, policy)


def parse_classify(body: bytes, settings: ServeSettings, backend) -> ClassifyRequest:
    """Parse and check a classify body: `{"text": T, "text_pair"?: P}` or `{"inputs": [{"text": T,
    "text_pair"?: P}, ...]}`, each with optional `threshold`, `keep_ratio` (a number, or one per pruning
    layer) and `policy`, checked by the backend as mpee-run checks them. Raises FieldError (400) or TooLarge
    (413), each naming the field; unknown fields are refused, so a misspelt knob is not silently ignored."""
    data = _load_json(body)
    if not isinstance(data, dict):
        raise FieldError("body", f"must be a JSON object with text or inputs, got {_type_name(data)}")
    _check_keys(data, TOP_FIELDS, "")
    rows, single = _rows(data, settings)
    knobs = _knobs(data)
    backend.check_knobs(knobs)
    return ClassifyRequest(rows, knobs, single)


# ---------------------------------------------------------------- metrics
class ServeMetrics(BatchObserver):
    """The app's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

    def __init__(self, num_layers: int, max_batch: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mpee_requests", "HTTP requests by route and status code (499: the client left)",
                                ["route", "status"], registry=r)
        self.latency = Histogram("mpee_request_duration_seconds", "Time from a request's arrival to its response",
                                 ["route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.exit_layer = Histogram("mpee_exit_layer", "Layer (1-based) each answered row exited at",
                                    buckets=tuple(range(1, num_layers + 1)), registry=r)
        sizes = sorted({2 ** k for k in range(max_batch.bit_length()) if 2 ** k < max_batch} | {max_batch})
        self.batch_rows = Histogram("mpee_batch_rows", "Rows per batch call (one group of equal knobs, run in groups of similar length)",
                                    buckets=tuple(sizes), registry=r)
        self.queue = Gauge("mpee_queue_rows", "Rows waiting for a batch", registry=r,
                           multiprocess_mode="livesum")   # with --workers: the sum over the live workers
        self.dropped_rows = Counter("mpee_rows_dropped", "Rows of timed-out or abandoned requests that never ran",
                                    registry=r)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def queue_depth(self, rows: int) -> None:
        self.queue.set(rows)

    def batch(self, rows: int) -> None:
        self.batch_rows.observe(rows)

    def answered(self, answer: RowAnswer) -> None:
        self.exit_layer.observe(answer.exit_layer)

    def dropped(self, rows: int) -> None:
        self.dropped_rows.inc(rows)


class _Measure:
    """ASGI middleware: every HTTP request counted by route and status, and timed (a pure ASGI wrapper, so that
    it sees the status of every response, errors included, and costs one closure per request)."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status, start = 500, perf_counter()   # 500 unless a response starts: an exception escaped

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(route, status, perf_counter() - start)


# ---------------------------------------------------------------- the app
class _ClientGone(Exception):
    pass


class _RowsFailed(Exception):
    """The backend raised something other than MpeeRuntimeError for the request's rows (a bug; logged there)."""


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> Response:
    from starlette.responses import JSONResponse
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (TooLarge) as soon as it is longer than `limit` bytes, by its Content-Length or while
    it streams in (chunked bodies have none); raises _ClientGone when the client leaves while sending it."""
    from starlette.requests import ClientDisconnect
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge("body", f"{declared} bytes, at most {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge("body", f"more than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _ClientGone() from None
    return b"".join(chunks)


async def _disconnected(receive) -> None:
    """Return when the client has gone: after the body, the server's next ASGI message is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answers(batcher: MpeeBatcher, job: Job, receive, timeout_s: float) -> list[RowAnswer]:
    """The job's answers; raises TimeoutError after `timeout_s`, _ClientGone when the client leaves first. Either
    way the job's rows that have not started leave the queue (its place is freed)."""
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({job.future, watch}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:   # the server is stopping this task: its rows are nobody's any more
        batcher.cancel(job)
        job.future.cancel()
        raise
    finally:
        watch.cancel()
    if job.future in done:
        error = job.future.exception()
        if error is None:
            return job.future.result()
        if isinstance(error, MpeeRuntimeError):
            raise error
        raise _RowsFailed(f"{type(error).__name__}: {str(error)[:200]}")
    batcher.cancel(job)
    job.future.cancel()
    if watch in done:
        raise _ClientGone()
    raise TimeoutError()


def _body(req: ClassifyRequest, answers: list[RowAnswer], start_ns: int) -> dict:
    server_ms = (perf_counter_ns() - start_ns) / 1e6
    if req.single:
        return {**answers[0].to_dict(), "server_ms": server_ms}
    return {"predictions": [a.to_dict() for a in answers], "server_ms": server_ms}


def make_app(backend, settings: ServeSettings = ServeSettings(), *, threads: int | None = None,
             workers: int = 1) -> Starlette:
    """The ASGI app over `backend` (serve_batcher.MpeeBackend or FullModelBackend). Its lifespan starts the
    batcher's worker (which warms up; /healthz says 503 until it has) and, at shutdown, lets it run what is
    queued. `app.state` holds `batcher`, `metrics` and `settings`. With `workers` > 1 (one app per server process,
    serve_workers.py), /metrics reports the sum over every process's multiprocess files."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    metrics = ServeMetrics(backend.num_layers, settings.max_batch)
    batcher = MpeeBatcher(backend, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1e3,
                          max_queue=settings.max_queue, shed_after_s=settings.timeout_s,
                          pad_slack=settings.pad_slack, observer=metrics)
    summary = {**backend.summary().to_dict(),
               "serving": {**settings.__dict__, "threads": threads, "workers": workers}}

    async def classify(request: Request) -> Response:
        start = perf_counter_ns()
        try:
            req = parse_classify(await _read_body(request, settings.max_body_bytes), settings, backend)
            job = batcher.submit(req.rows, req.knobs, asyncio.get_running_loop())
            return JSONResponse(_body(req, await _answers(batcher, job, request.receive, settings.timeout_s), start))
        except TooLarge as e:
            return _error(413, str(e), e.field)
        except FieldError as e:
            return _error(400, str(e), e.field)
        except QueueFull as e:
            return _error(503, str(e), headers={"Retry-After": str(e.retry_after_s)})
        except BatcherClosed as e:
            return _error(503, str(e), headers={"Retry-After": "1", "Connection": "close"})
        except TimeoutError:
            return _error(504, f"no answer within {settings.timeout_s:g} s (--timeout-s)")
        except _ClientGone:
            return Response(status_code=STATUS_CLIENT_GONE)   # nobody reads it; the metrics count it
        except MpeeRuntimeError as e:   # the engine refused a row that passed the checks above
            return _error(400, str(e), "inputs")
        except _RowsFailed as e:
            return _error(500, f"internal error: {e}")

    async def healthz(request: Request) -> Response:
        if batcher.closing:
            return _error(503, "shutting down")
        if batcher.warmup_error:
            return _error(503, f"warm-up failed: {batcher.warmup_error}")
        if not batcher.ready:
            return _error(503, "warming up")
        return JSONResponse({"status": "ok"})

    async def model(request: Request) -> Response:
        return JSONResponse(summary)

    async def metrics_text(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        registry = metrics.registry
        if workers > 1:
            from prometheus_client.multiprocess import MultiProcessCollector
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:   # off the loop: the worker may still be running a batch
            await asyncio.get_running_loop().run_in_executor(None, batcher.close, settings.timeout_s)

    routes = [Route("/v1/classify", classify, methods=["POST"]), Route("/healthz", healthz, methods=["GET"]),
              Route("/v1/model", model, methods=["GET"]), Route("/metrics", metrics_text, methods=["GET"])]
    app = Starlette(routes=routes, middleware=[Middleware(_Measure, metrics=metrics)], lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings
    return app


# ---------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    from .cli import ErrorLineParser
    from .session import THREAD_POOLS
    d = ServeSettings()
    p = ErrorLineParser(prog="mpee-serve", description="Serve an MPEE bundle over HTTP (POST /v1/classify, GET /healthz, "
                "GET /v1/model, GET /metrics), with dynamic batching. Needs pip install 'mpee-runtime[serve]'.")
    p.add_argument("bundle", type=Path, help="bundle folder written by mpee-export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on [default: 127.0.0.1, this machine "
                   "only; 0.0.0.0 serves the network, with no authentication]")
    p.add_argument("--port", type=int, default=8000, help="TCP port [default: 8000]")
    p.add_argument("--threads", type=int, help="intra-op threads of each engine [default: cores, at most 4, "
                   "divided among the workers]")
    p.add_argument("--workers", type=int, default=1, help="server processes on the port, each with its own engine "
                   "(one Python process parses and answers on one core at a time) [default: 1]")
    p.add_argument("--thread-pool", choices=THREAD_POOLS, default="session", help="as mpee-run [default: session]")
    p.add_argument("--no-spinning", dest="spinning", action="store_false",
                   help="idle intra-op threads sleep instead of spinning during a run")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help=f"rows per model call [default: {d.max_batch}]")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"how long a row waits for its batch to fill [default: {d.max_wait_ms:g}]")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"rows waiting at most; beyond, 503 with Retry-After [default: {d.max_queue}]")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs,
                   help=f"inputs per request at most; beyond, 413 [default: {d.max_inputs}]")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"request body at most; beyond, 413 [default: {d.max_body_bytes}]")
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars,
                   help=f"characters per text at most; beyond, 413 [default: {d.max_text_chars}]")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s,
                   help=f"seconds from queued to answered at most; beyond, 504 [default: {d.timeout_s:g}]")
    p.add_argument("--pad-slack", type=float, default=d.pad_slack,
                   help="a batch runs in groups of similar length, each padded by at most this share of its real "
                   f"tokens (0: equal lengths only) [default: {d.pad_slack:g}]")
    p.add_argument("--full-model", type=Path, metavar="ONNX",
                   help="serve this full-model graph of `mpee-export reference` (REF/model_fused.onnx) instead of "
                   "the bundle's chain, with the same batching and API (the bundle still tokenizes)")
    p.add_argument("--allow-unvalidated", action="store_true",
                   help="serve a bundle that did not pass the export's parity check")
    p.add_argument("--trust", type=Path, metavar="PUBKEY",
                   help="refuse the bundle unless signed with this public key and unchanged since")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning",
                   help="uvicorn's and the server's log level [default: warning]")
    p.add_argument("--access-log", action="store_true", help="log every request (costs time on a slow core)")
    return p


def settings_of(args: argparse.Namespace) -> ServeSettings:
    s = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                      max_inputs=args.max_inputs, max_body_bytes=args.max_body_bytes,
                      max_text_chars=args.max_text_chars, timeout_s=args.timeout_s, pad_slack=args.pad_slack)
    s.check()
    if args.threads is not None and args.threads < 1:
        raise MpeeRuntimeError(f"--threads must be >= 1, got {args.threads}")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise MpeeRuntimeError(f"--workers must be in 1..{MAX_WORKERS}, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise MpeeRuntimeError(f"--port must be in 0..65535, got {args.port}")
    return s


def require_stack() -> None:
    """Refuse in one line when the serve extra is not installed."""
    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            raise MpeeRuntimeError(f"mpee-serve needs the serve extra (no module {module}): {INSTALL_HINT}") from None


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, not yet listening (uvicorn listens on it), so that a port in use is refused
    in one line before the bundle loads."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn does: restart over TIME_WAIT
        sock.bind(address)
    except OSError as e:
        raise MpeeRuntimeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def load_backend(args: argparse.Namespace):
    """The engine (the bundle verified, sessions opened and warmed: any failure raises here, before the server
    listens) and the backend that serves it."""
    from .engine import MpeeEngine
    engine = MpeeEngine(args.bundle, threads=args.threads, spinning=args.spinning,
                        allow_unvalidated=args.allow_unvalidated, thread_pool=args.thread_pool, trust=args.trust)
    if args.full_model is None:
        return engine, MpeeBackend(engine)
    return engine, FullModelBackend(engine, args.full_model, threads=engine.threads, spinning=args.spinning)


def _server(config, batcher: MpeeBatcher):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server; SIGTERM and SIGINT also make the batcher refuse new rows and run what is queued
        at once, while uvicorn stops listening and waits for the requests in flight."""

        def handle_exit(self, sig, frame) -> None:
            batcher.stop_taking()
            super().handle_exit(sig, frame)
    return Server(config)


def _clean_exit_on_sigterm(sig, frame) -> None:
    """uvicorn, once it has shut down gracefully, restores the previous SIGTERM handler and raises the signal
    again; this one makes that a clean exit (0) instead of death by signal."""


def uvicorn_server(app: Starlette, args: argparse.Namespace, settings: ServeSettings):
    """uvicorn's server on the app, with the flags' logging and the limits that go with the queue's."""
    import uvicorn
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, lifespan="on",
                            # uvicorn's own 503 (no Retry-After) only past what the queue would refuse anyway
                            limit_concurrency=settings.max_queue + settings.max_batch + 64,
                            timeout_graceful_shutdown=settings.timeout_s + 5)
    return _server(config, app.state.batcher)


@exit_2_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    settings = settings_of(args)
    require_stack()
    logging.basicConfig(level=args.log_level.upper(), format="mpee-serve: %(levelname)s %(message)s")
    sock = bind(args.host, args.port)
    what = f"full model {args.full_model.name}" if args.full_model else f"bundle {args.bundle}"
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}"
    if args.workers > 1:
        from .serve_workers import run_workers, worker_threads
        args.threads = worker_threads(args.threads, args.workers)
        return run_workers(args, settings, sock, f"mpee-serve: {what} on {url} ({args.workers} workers, threads "
                           f"{args.threads} each, max batch {settings.max_batch}); every worker is warmed up")
    engine, backend = load_backend(args)
    app = make_app(backend, settings, threads=engine.threads)
    server = uvicorn_server(app, args, settings)
    signal.signal(signal.SIGTERM, _clean_exit_on_sigterm)
    # The event loop and the batching worker share the GIL; Python's default 5 ms switch interval delays each
    # hand-off between them by up to that. Measured on SST-2 (2 cores, 61 req/s): MPEE p99 58 -> 34 ms.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    print(f"mpee-serve: {what} on {url} (threads {engine.threads}, max batch {settings.max_batch}); GET /healthz "
          "says 200 once warmed up", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if not server.started:
        raise MpeeRuntimeError("the server did not start (see the log above)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
