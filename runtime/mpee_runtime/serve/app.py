"""The ASGI app (Starlette): POST /v1/classify, GET /healthz, GET /v1/model, GET /metrics, each refusal an HTTP
status with a one-line JSON error naming the field."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from time import perf_counter_ns
from typing import TYPE_CHECKING

from ..errors import MpeeRuntimeError
from .backends import FieldError, RowAnswer
from .batcher import BatcherClosed, Job, MpeeBatcher, QueueFull
from .guards import GuardRequests, Guards
from .metrics import MeasureRequests, ServeMetrics
from .requests import ClassifyRequest, TooLarge, parse_classify
from .settings import DEFAULT_SETTINGS, ServeSettings

if TYPE_CHECKING:   # the server stack is optional: only its types are named here
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response


STATUS_CLIENT_GONE = 499    # nginx's code for "client closed the request": counted, never seen by the client


class _ClientGone(Exception):
    pass


class _RowsFailed(Exception):
    """The backend raised something other than MpeeRuntimeError for the request's rows (a bug; logged there)."""


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> Response:
    from starlette.responses import JSONResponse
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


class HeldBytes:
    """The bytes of request bodies the server holds at once (being read, queued or running), at most `limit`:
    admission in bytes beside the batcher's in rows, so that many large or slow bodies cannot fill the memory."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, n: int) -> None:
        """Hold `n` more bytes, or raise _Busy (the server's loop is one thread: no lock)."""
        if self.held + n > self.limit:
            raise _Busy(f"server busy: {self.held} bytes of requests held, at most {self.limit} (--max-held-bytes)")
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


class _Busy(Exception):
    pass


class ShedAtTheDoor:
    """The connections' quick refusal under overload (connections.Door): a POST /v1/classify that the guards let
    through, when the queue would refuse even a one-row request, is shed (503, counted as `queue_full` and in the
    request counter) before the app reads it. Its other refusals are unchanged; only a malformed or oversized body
    that arrives while the queue is full gets this 503 instead of its 400 or 413."""

    def __init__(self, batcher: MpeeBatcher, guards: Guards, metrics: ServeMetrics) -> None:
        self.batcher, self.guards, self.metrics = batcher, guards, metrics

    def __call__(self, method: str, path: str, headers: list) -> int | None:
        if path != "/v1/classify" or method != "POST":
            return None
        retry_after = self.batcher.refuses_one()
        if retry_after is None or self.guards.refusal(method, path, headers) is not None:
            return None
        self.metrics.refused("queue_full")
        self.metrics.request("/v1/classify", 503, 0.0)
        return retry_after


async def _read_body(request: Request, limit: int, held: HeldBytes) -> bytes:
    """The body, refused (TooLarge) as soon as it is longer than `limit` bytes, by its Content-Length or while
    it streams in (chunked bodies have none), each chunk taken from `held` as it arrives (the caller gives back
    len(body) when the request is done; this gives back what it took when it raises); raises _ClientGone when
    the client leaves while sending it."""
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
            held.take(len(chunk))
            chunks.append(chunk)
    except BaseException as e:
        held.give(sum(map(len, chunks)))
        if isinstance(e, ClientDisconnect):
            raise _ClientGone() from None
        raise
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


def make_app(backend, settings: ServeSettings = DEFAULT_SETTINGS, *, threads: int | None = None,
             workers: int = 1, guards: Guards | None = None) -> Starlette:
    """The ASGI app over `backend` (backends.MpeeBackend or FullModelBackend). Its lifespan starts the
    batcher's worker (which warms up; /healthz says 503 until it has) and, at shutdown, lets it run what is
    queued. `app.state` holds `batcher`, `metrics` and `settings`. With `workers` > 1 (one app per server process,
    workers.py), /metrics reports the sum over every process's multiprocess files. `guards` (default: localhost
    only, no key) refuse other hosts, a missing key and non-JSON bodies before the routes (guards.py)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    metrics = ServeMetrics(backend.num_layers, settings.max_batch)
    batcher = MpeeBatcher(backend, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1e3,
                          max_queue=settings.max_queue, shed_after_s=settings.timeout_s,
                          pad_slack=settings.pad_slack, observer=metrics)
    guards = guards or Guards()
    held = HeldBytes(settings.max_held_bytes)
    summary = {**backend.summary().to_dict(),
               "serving": {**settings.to_dict(), "threads": threads, "workers": workers, **guards.describe()}}

    async def classify(request: Request) -> Response:
        start, body = perf_counter_ns(), b""
        try:
            body = await _read_body(request, settings.max_body_bytes, held)
            req = parse_classify(body, settings, backend)
            job = batcher.submit(req.rows, req.knobs, asyncio.get_running_loop())
            return JSONResponse(_body(req, await _answers(batcher, job, request.receive, settings.timeout_s), start))
        except _Busy as e:
            metrics.refused("held_bytes")
            return _error(503, str(e), headers={"Retry-After": "1"})
        except TooLarge as e:
            metrics.refused("too_large")
            return _error(413, str(e), e.field)
        except FieldError as e:
            metrics.refused("bad_request")
            return _error(400, str(e), e.field)
        except QueueFull as e:
            metrics.refused("queue_full")
            return _error(503, str(e), headers={"Retry-After": str(e.retry_after_s)})
        except BatcherClosed as e:
            metrics.refused("shutting_down")
            return _error(503, str(e), headers={"Retry-After": "1", "Connection": "close"})
        except TimeoutError:
            metrics.refused("timeout")
            return _error(504, f"no answer within {settings.timeout_s:g} s (--timeout-s)")
        except _ClientGone:
            return Response(status_code=STATUS_CLIENT_GONE)   # nobody reads it; the metrics count it
        except MpeeRuntimeError as e:   # the engine refused a row that passed the checks above
            metrics.refused("bad_request")
            return _error(400, str(e), "inputs")
        except _RowsFailed as e:
            return _error(500, f"internal error: {e}")
        finally:
            held.give(len(body))

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
    app = Starlette(routes=routes, middleware=[Middleware(MeasureRequests, metrics=metrics),
                                              Middleware(GuardRequests, guards=guards, on_refusal=metrics.refused)],
                    lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.settings, app.state.held = batcher, metrics, settings, held
    app.state.door = ShedAtTheDoor(batcher, guards, metrics)
    return app
