"""The HTTP connections of one server process (`connection_protocol`): uvicorn's httptools protocol with the
limits a server reachable by slow or hostile clients needs, which uvicorn does not have (docs/serving.md
"Protection"). Every refusal is one JSON error line, counted by reason (`on_refusal`).

Rules (`ConnectionLimits`):
- request head: the request line and headers at most `max_header_bytes` and `max_headers` lines, counted as
  they arrive (a head trickled byte by byte is refused as soon as it is too long): 431, connection closed;
- head timeout: a request's head must be complete `header_timeout_s` after its first byte (after the
  connection opened, for the first request): 408 (a silent connection is closed without an answer);
- body timeout: the body must be complete `body_timeout_s` after the head: 408 (or the connection closed, when
  the answer has started);
- keep-alive: a connection that sends nothing for `keep_alive_s` after an answer is closed (uvicorn's timer);
- connections: at most `max_connections` per process. A new connection beyond it closes the connection that has
  waited longest for a request head (idle keep-alive or a head still arriving: no request of it is in
  flight, as nginx reuses keep-alive connections); when every connection has a request in flight, the new one
  gets 503 with Retry-After and is closed;
- a malformed request (uvicorn's "Invalid HTTP request") is a JSON 400 like every other refusal;
- a refused connection is answered, its writing side shut, and closed LINGER_S later, while what the client still
  sends is read and dropped (a lingering close, as nginx's): a close with unread data would reset the connection
  and the client's system would drop the answer.
Admission of the requests themselves is the batcher's (rows, expected wait) and the app's (bytes held): no
connection count refuses a request that the queue would take. When the queue would refuse even one row, a
classify request that passes the guards is shed by the connection as soon as its head is in (`door`): 503 with
Retry-After, the body dropped, the connection kept alive.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MpeeRuntimeError

LINGER_S = 2.0      # a refused connection is closed this long after its answer (module docstring)
FD_RESERVE = 256    # descriptors a server process needs besides its connections (bundle, sessions, logs, pipes)


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection and per-process limits (mpee-serve's flags of the same names)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_header_bytes: int = 16 * 1024      # as h11's default and Node's --max-http-header-size
    max_headers: int = 100                 # as Apache's LimitRequestFields
    max_connections: int = 4096


REASONS = {   # refusal reason -> (status, message); the reason labels mpee_refusals_total
    "header_too_large": (431, "request head larger than {max_header_bytes} bytes (--max-header-bytes)"),
    "too_many_headers": (431, "more than {max_headers} header lines (--max-headers)"),
    "timeout_headers": (408, "request head not complete within {header_timeout_s:g} s (--header-timeout-s)"),
    "timeout_body": (408, "request body not complete within {body_timeout_s:g} s (--body-timeout-s)"),
    "connections": (503, "{max_connections} connections busy with requests (--max-connections); retry later"),
    "malformed_http": (400, "invalid HTTP request"),
}


def error_response(status: int, message: str, retry_after: int | None = None, close: bool = True) -> bytes:
    """A whole HTTP/1.1 response (closing the connection unless `close` is False): the app's one-line JSON error."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE
    body = json.dumps({"error": message, "field": None}).encode()
    headers = [b"content-type: application/json", b"content-length: " + str(len(body)).encode()]
    if close:
        headers.append(b"connection: close")
    if retry_after is not None:
        headers.append(b"retry-after: " + str(retry_after).encode())
    return STATUS_LINE[status] + b"\r\n".join(headers) + b"\r\n\r\n" + body


class _TooManyHeaders(Exception):
    """Raised in the parser's header callback: stops the parser (which reports it as its own error)."""


Door = Callable[[str, str, list], "int | None"]   # (method, path, headers) -> Retry-After seconds to shed it now


def connection_protocol(limits: ConnectionLimits, on_refusal: Callable[[str], None], door: Door | None = None
                        ) -> type:
    """uvicorn's HttpToolsProtocol with `limits` (module docstring); a class per server, which holds the server's
    connections that wait for a request head, oldest first (the ones a new connection may close). `door` (the
    app's `ShedAtTheDoor`): a request it sheds is answered 503 by the connection as soon as its head is in, its body
    dropped unread, the connection kept alive: under overload a refusal costs a few microseconds of the one
    Python thread that also feeds the model, not the app's parsing."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    waiting: OrderedDict = OrderedDict()       # protocol -> None: connections with no request in flight
    answers = {reason: error_response(status, message.format(**limits.__dict__), 1 if status == 503 else None)
               for reason, (status, message) in REASONS.items()}
    shed_answers: dict[tuple[int, bool], bytes] = {}

    def shed_answer(retry_after: int, keep_alive: bool) -> bytes:
        key = (retry_after, keep_alive)
        if key not in shed_answers:
            shed_answers[key] = error_response(503, f"overloaded: the queue takes no more rows now; retry in "
                                               f"{retry_after} s", retry_after, close=not keep_alive)
        return shed_answers[key]

    class LimitedHttpProtocol(HttpToolsProtocol):
        def __init__(self, config, server_state, app_state, _loop=None) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.timeout_keep_alive = limits.keep_alive_s
            self._head_bytes = 0               # bytes received of the head being parsed
            self._head_lines = 0
            self._awaiting_head = True
            self._body_pending = False         # the head is in, the body is not
            self._timer = None                 # the head's or the body's deadline
            self._refusal: str | None = None   # set in a parser callback, answered by data_received
            self._lingering = False            # refused and answered: reading until the close
            self._shed = False                 # answered at the door: the body that follows is dropped

        # ------------------------------------------------------------ the connection
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections and not self._make_room():
                self.refuse("connections")
                return
            waiting[self] = None
            self._arm(limits.header_timeout_s, self._head_timed_out)

        def connection_lost(self, exc) -> None:
            waiting.pop(self, None)
            self._disarm()
            super().connection_lost(exc)

        def _make_room(self) -> bool:
            """Close the connection that has waited longest for a request head; False when none waits."""
            for victim in waiting:
                if victim is not self:
                    waiting.pop(victim)
                    self.connections.discard(victim)   # gone now, not when its close is processed
                    victim._disarm()
                    on_refusal("evicted")
                    victim.transport.close()
                    return True
            return False

        def refuse(self, reason: str) -> None:
            """Answer `reason`'s error (REASONS) unless an answer has started, and close the connection: after
            an answer, a lingering close (as nginx's), so that the client can read it."""
            on_refusal(reason)
            waiting.pop(self, None)
            self._disarm()
            if self.transport.is_closing():
                return
            if self._shed or (self.cycle is not None and self.cycle.response_started):
                self.transport.close()
                return
            self.transport.write(answers[reason])
            self.linger()

        def linger(self) -> None:
            """Close after LINGER_S, reading and dropping what the client still sends meanwhile: closing a socket
            with unread data sends a reset, which makes the client's system drop the answer before it is read."""
            self._lingering = True
            self.flow.resume_reading()
            if self.transport.can_write_eof():
                self.transport.write_eof()   # the client reads the answer, then the end
            self._timer = self.loop.call_later(LINGER_S, self.transport.close)

        def send_400_response(self, msg: str) -> None:   # uvicorn's plain-text 400, as JSON and counted
            self.refuse("malformed_http")

        # ------------------------------------------------------------ timers
        def _arm(self, seconds: float, callback) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _head_timed_out(self) -> None:
            self._timer = None
            if self._awaiting_head and not self.transport.is_closing():
                if self._head_bytes:
                    self.refuse("timeout_headers")
                else:   # nothing sent: nobody to answer
                    on_refusal("timeout_headers")
                    waiting.pop(self, None)
                    self.transport.close()

        def _body_timed_out(self) -> None:
            self._timer = None
            if self._body_pending and not self.transport.is_closing():
                self.refuse("timeout_body")

        # ------------------------------------------------------------ parsing
        def data_received(self, data: bytes) -> None:
            if self._lingering:   # refused: what else comes is dropped
                return
            self._unset_keepalive_if_required()
            if self._awaiting_head:
                self._head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._unsupported_upgrade_warning()   # the app serves no WebSocket (uvicorn's ws="none")
                return
            except httptools.HttpParserError:
                self.refuse(self._refusal or "malformed_http")
                return
            if self._refusal is not None:   # set by on_headers_complete
                self.refuse(self._refusal)
            elif self._awaiting_head and self._head_bytes:
                if self._head_bytes > limits.max_header_bytes:
                    self.refuse("header_too_large")
                elif self._timer is None:   # the first bytes of a request on a kept-alive connection
                    self._arm(limits.header_timeout_s, self._head_timed_out)
            elif self._body_pending and self._timer is None:
                self._arm(limits.body_timeout_s, self._body_timed_out)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_lines += 1
            if self._head_lines > limits.max_headers:
                self._refusal = "too_many_headers"
                raise _TooManyHeaders()
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            waiting.pop(self, None)
            self._awaiting_head = False
            # The exact head size: the head may have arrived with its body in one read.
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) + 16
            self._head_bytes, self._head_lines = 0, 0
            if size > limits.max_header_bytes:
                self._refusal = "header_too_large"
                return
            self._body_pending = True
            if door is not None and (self.cycle is None or self.cycle.response_complete) and not self.pipeline:
                retry_after = door(self.parser.get_method().decode("ascii"),
                                   self.url.split(b"?", 1)[0].decode("latin-1"), self.headers)
                if retry_after is not None:
                    keep_alive = self.parser.should_keep_alive()
                    self.transport.write(shed_answer(retry_after, keep_alive))
                    self._shed = True
                    if not keep_alive:
                        self.linger()
                    return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._refusal is None and not self._shed:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refusal is not None:
                return
            if self._shed:   # its answer is out: wait for the next request, as uvicorn does after an answer
                self._shed, self._body_pending, self._awaiting_head = False, False, True
                self._disarm()
                if not self.transport.is_closing():
                    waiting[self] = None
                    self.timeout_keep_alive_task = self.loop.call_later(limits.keep_alive_s,
                                                                        self.timeout_keep_alive_handler)
                return
            self._body_pending = False
            self._disarm()
            self._awaiting_head = True   # what follows is the next request's head
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._awaiting_head and not self.pipeline:
                waiting[self] = None   # kept alive, waiting for its next request (uvicorn's keep-alive timer)

    return LimitedHttpProtocol


def raise_fd_limit(connections: int) -> int:
    """Raise this process's soft limit on open files so that `connections` connections fit (with FD_RESERVE for
    everything else; children inherit it); return how many connections fit when the hard limit is lower."""
    try:
        import resource
    except ImportError:   # Windows: no such limit to raise
        return connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return connections
    fit = soft - FD_RESERVE
    if fit < 16:
        raise MpeeRuntimeError(f"the open-file limit ({soft}, ulimit -n) leaves no room for connections")
    return fit
