"""mpee-serve: a bundle as a local HTTP service (Starlette on uvicorn, the `serve` extra), batched dynamically
(batcher.py), protected against overload, measured in Prometheus format (docs/serving.md).

    mpee-serve BUNDLE [--host 127.0.0.1] [--port 8000] [--threads N] [--max-batch 16] [--max-wait-ms 5] ...
    mpee-serve BUNDLE --full-model REF/model_fused.onnx     the reference full model behind the same API
    mpee-serve BUNDLE --workers N                           N server processes on the port (workers.py)

Routes: POST /v1/classify, GET /healthz, GET /v1/model, GET /metrics. The server stack (starlette, uvicorn,
prometheus_client) is imported only when a server is built, so the core package keeps its three dependencies
and a missing extra is one `Error:` line. Everything that can be refused (flags, the bundle's verification,
the port) is refused before the server listens: one `Error:` line, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from ..cli.common import add_bundle_options, add_engine_option, add_pool_options
from ..errors import MpeeRuntimeError, exit_2_on_error
from .app import make_app
from .connections import ConnectionLimits, raise_fd_limit
from .server import (
    SWITCH_INTERVAL_S,
    bind,
    clean_exit_on_sigterm,
    guards_of,
    load_backend,
    require_stack,
    uvicorn_server,
)
from .settings import ServeSettings

MAX_WORKERS = 64
log = logging.getLogger("mpee_runtime.serve")


# ---------------------------------------------------------------- request parsing


# ---------------------------------------------------------------- metrics


# ---------------------------------------------------------------- the app


# ---------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    from ..cli.common import ErrorLineParser
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
    add_pool_options(p)
    add_engine_option(p)
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
    p.add_argument("--max-held-bytes", type=int, default=d.max_held_bytes,
                   help="request bodies held at once (being read, queued or running); beyond, 503 with Retry-After "
                   f"[default: {d.max_held_bytes}]")
    c = d.connections
    p.add_argument("--header-timeout-s", type=float, default=c.header_timeout_s,
                   help=f"seconds for a request's head to arrive; beyond, 408 and closed [default: {c.header_timeout_s:g}]")
    p.add_argument("--body-timeout-s", type=float, default=c.body_timeout_s,
                   help=f"seconds for a body to arrive after its head; beyond, 408 [default: {c.body_timeout_s:g}]")
    p.add_argument("--keep-alive-s", type=float, default=c.keep_alive_s,
                   help=f"an idle kept-alive connection is closed after this [default: {c.keep_alive_s:g}]")
    p.add_argument("--max-header-bytes", type=int, default=c.max_header_bytes,
                   help=f"request line and headers at most; beyond, 431 [default: {c.max_header_bytes}]")
    p.add_argument("--max-headers", type=int, default=c.max_headers,
                   help=f"header lines at most; beyond, 431 [default: {c.max_headers}]")
    p.add_argument("--max-connections", type=int, default=c.max_connections,
                   help="open connections per server process; beyond, the one waiting longest for a request is "
                   "closed, or 503 when all have one in flight (the open-file limit is raised to fit) "
                   f"[default: {c.max_connections}]")
    p.add_argument("--full-model", type=Path, metavar="ONNX",
                   help="serve this full-model graph of `mpee-export reference` (REF/model_fused.onnx) instead of "
                   "the bundle's chain, with the same batching and API (the bundle still tokenizes)")
    add_bundle_options(p)
    p.add_argument("--api-key", metavar="KEY", help="answer only requests sent with Authorization: Bearer KEY (at least "
                   "16 characters; /healthz stays open unless --protect-healthz); the environment variable "
                   "MPEE_SERVE_API_KEY or --api-key-file keep it out of the process list")
    p.add_argument("--api-key-file", type=Path, metavar="FILE", help="read the API key from FILE (its first line)")
    p.add_argument("--protect-healthz", action="store_true", help="with a key, /healthz needs it too")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name to answer besides localhost and the --host name (repeatable; '*': any); "
                   "requests naming another host get 421 (DNS rebinding). Addresses: loopback, the bound one, "
                   "any when bound to 0.0.0.0 or ::")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning",
                   help="uvicorn's and the server's log level [default: warning]")
    p.add_argument("--access-log", action="store_true", help="log every request (costs time on a slow core)")
    return p


def settings_of(args: argparse.Namespace) -> ServeSettings:
    limits = ConnectionLimits(header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                              keep_alive_s=args.keep_alive_s, max_header_bytes=args.max_header_bytes,
                              max_headers=args.max_headers, max_connections=args.max_connections)
    s = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                      max_inputs=args.max_inputs, max_body_bytes=args.max_body_bytes,
                      max_text_chars=args.max_text_chars, timeout_s=args.timeout_s, pad_slack=args.pad_slack,
                      max_held_bytes=args.max_held_bytes, connections=limits)
    s.check()
    if args.threads is not None and args.threads < 1:
        raise MpeeRuntimeError(f"--threads must be >= 1, got {args.threads}")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise MpeeRuntimeError(f"--workers must be in 1..{MAX_WORKERS}, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise MpeeRuntimeError(f"--port must be in 0..65535, got {args.port}")
    return s


@exit_2_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    settings = settings_of(args)
    args.guards = guards_of(args)
    require_stack()
    logging.basicConfig(level=args.log_level.upper(), format="mpee-serve: %(levelname)s %(message)s")
    fit = raise_fd_limit(settings.connections.max_connections)   # before the workers start: they inherit it
    if fit < settings.connections.max_connections:
        print(f"mpee-serve: the open-file limit (ulimit -n) fits {fit} connections per process, not "
              f"{settings.connections.max_connections}: --max-connections lowered to {fit}", file=sys.stderr)
        settings = replace(settings, connections=replace(settings.connections, max_connections=fit))
    sock = bind(args.host, args.port)
    what = f"full model {args.full_model.name}" if args.full_model else f"bundle {args.bundle}"
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}"
    if args.workers > 1:
        from .workers import run_workers, worker_threads
        args.threads = worker_threads(args.threads, args.workers)
        return run_workers(args, settings, sock, f"mpee-serve: {what} on {url} ({args.workers} workers, threads "
                           f"{args.threads} each, max batch {settings.max_batch}); every worker is warmed up")
    engine, backend = load_backend(args)
    app = make_app(backend, settings, threads=engine.threads, guards=args.guards)
    server = uvicorn_server(app, args, settings)
    signal.signal(signal.SIGTERM, clean_exit_on_sigterm)
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
