"""The uvicorn server around the app: the serve extra's check, the listening socket, the backend behind the
server, SIGTERM handling, shared by one server process and by each worker of `--workers`."""

from __future__ import annotations

import argparse
import socket
from typing import TYPE_CHECKING

from ..errors import MpeeRuntimeError
from .backends import FullModelBackend, MpeeBackend
from .batcher import MpeeBatcher
from .guards import Guards
from .settings import ServeSettings

if TYPE_CHECKING:   # the server stack is optional: only its types are named here
    from starlette.applications import Starlette


INSTALL_HINT = "pip install 'mpee-runtime[serve]'"


SWITCH_INTERVAL_S = 0.0002   # sys.setswitchinterval in the server process (main)


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


API_KEY_ENV = "MPEE_SERVE_API_KEY"


def guards_of(args: argparse.Namespace) -> Guards:
    """The guards the flags ask for; the key from --api-key, --api-key-file or MPEE_SERVE_API_KEY (one of them)."""
    import os
    given = [k for k, v in (("--api-key", args.api_key), ("--api-key-file", args.api_key_file),
                            (API_KEY_ENV, os.environ.get(API_KEY_ENV))) if v]
    if len(given) > 1:
        raise MpeeRuntimeError(f"give the API key once: {' and '.join(given)} are both set")
    key = args.api_key or os.environ.get(API_KEY_ENV)
    if args.api_key_file is not None:
        try:
            key = (args.api_key_file.read_text(encoding="utf-8").splitlines() or [""])[0].strip()
        except (OSError, UnicodeDecodeError) as e:
            raise MpeeRuntimeError(f"--api-key-file {args.api_key_file}: cannot be read ({e})"[:300]) from None
    if args.protect_healthz and not key:
        raise MpeeRuntimeError("--protect-healthz needs an API key (--api-key, --api-key-file or MPEE_SERVE_API_KEY)")
    return Guards.of(args.host, args.allowed_host, key, args.protect_healthz)


def load_backend(args: argparse.Namespace):
    """The engine (the bundle verified, sessions opened and warmed: any failure raises here, before the server
    listens) and the backend that serves it."""
    from ..core.engine import MpeeEngine
    engine = MpeeEngine(args.bundle, threads=args.threads, spinning=args.spinning,
                        allow_unvalidated=args.allow_unvalidated, thread_pool=args.thread_pool, trust=args.trust,
                        engine=args.engine)
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


def clean_exit_on_sigterm(sig, frame) -> None:
    """uvicorn, once it has shut down gracefully, restores the previous SIGTERM handler and raises the signal
    again; this one makes that a clean exit (0) instead of death by signal."""


def uvicorn_server(app: Starlette, args: argparse.Namespace, settings: ServeSettings):
    """uvicorn's server on the app, with the flags' logging and the connections' limits (connections.py).
    uvicorn's own concurrency limit is off: it refused every request (plain 503, uncounted) once more
    connections were open than it allowed, before the queue could take any; admission is the queue's."""
    import uvicorn

    from .connections import connection_protocol
    limits = settings.connections
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, lifespan="on",
                            http=connection_protocol(limits, app.state.metrics.refused, app.state.door), ws="none",
                            limit_concurrency=None, timeout_keep_alive=limits.keep_alive_s,
                            backlog=max(2048, min(limits.max_connections, 65535)),
                            timeout_graceful_shutdown=settings.timeout_s + 5)
    return _server(config, app.state.batcher)
