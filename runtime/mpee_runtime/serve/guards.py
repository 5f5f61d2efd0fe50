"""The guards in front of the routes (`Guards`, `GuardRequests`): the Host header against the allowed hosts
(DNS rebinding), the API key (`Authorization: Bearer KEY`, as text-embeddings-inference takes it), and a JSON
content type on POST (a web page's form or `no-cors` fetch cannot send one without a CORS preflight, which this
server never grants). Each refusal is one JSON error line with its status: 421, 401, 415; docs/serving.md
"Exposure" says when to use which.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field

from ..errors import MpeeRuntimeError

LOCAL_NAMES = ("localhost",)
OPEN_ROUTES = ("/healthz",)   # open without the key unless `protect_healthz`


def _host_name(header: str) -> str:
    """The host of a Host header without its port, lower case: `[::1]:8000` -> `::1`, `Example:80` -> `example`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Guards:
    """Who may be answered. `allowed_hosts`: the Host header names accepted ("*": any); an address is accepted
    when it is a loopback address, the bound address, or any address when the server is bound to all of them
    (0.0.0.0, ::): a DNS-rebinding page reaches the server through a name, never an address. `api_key`:
    required as `Authorization: Bearer KEY` on every route but /healthz (and on it too with `protect_healthz`)."""

    allowed_hosts: tuple[str, ...] = LOCAL_NAMES
    api_key: str | None = field(default=None, repr=False)
    protect_healthz: bool = False
    bound_address: str | None = None       # the address the server listens on, when it is one

    @classmethod
    def of(cls, bound_host: str, extra_hosts: list[str] | None = None, api_key: str | None = None,
           protect_healthz: bool = False) -> Guards:
        """The guards of a server bound to `bound_host`: localhost, the bound name (when not an address) and
        `extra_hosts`; a key of printable ASCII without spaces, at least 16 characters."""
        if api_key is not None and (len(api_key) < 16 or not api_key.isascii() or not api_key.isprintable()
                                    or " " in api_key):
            raise MpeeRuntimeError("--api-key must be at least 16 printable ASCII characters without spaces "
                                   f"(got {len(api_key)} characters)")
        bound = _host_name(bound_host)
        extra = [h.strip().lower() for h in extra_hosts or []]
        if any(not h for h in extra):
            raise MpeeRuntimeError("--allowed-host must not be empty")
        names = [*LOCAL_NAMES, *([] if _is_ip(bound) else [bound]), *extra]
        return cls(tuple(dict.fromkeys(names)), api_key, protect_healthz, bound if _is_ip(bound) else None)

    def describe(self) -> dict:
        """What /v1/model says about them (never the key)."""
        return {"allowed_hosts": list(self.allowed_hosts), "auth": "bearer" if self.api_key else None,
                "healthz_needs_key": bool(self.api_key) and self.protect_healthz}

    def host_ok(self, header: str | None) -> bool:
        """Whether a request with this Host header is answered; None (no header: not a browser, whose requests
        always name their host) is."""
        if "*" in self.allowed_hosts or header is None:
            return True
        if not header.strip():
            return False
        name = _host_name(header)
        if not _is_ip(name):
            return name in self.allowed_hosts
        address = ipaddress.ip_address(name)
        bound = None if self.bound_address is None else ipaddress.ip_address(self.bound_address)
        return address.is_loopback or address == bound or (bound is not None and bound.is_unspecified)

    def refusal(self, method: str, path: str, raw_headers: list[tuple[bytes, bytes]]) -> Refusal | None:
        """The guards in order Host (421), key (401), content type of a POST (415): the first refusal, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        if not self.host_ok(headers.get("host")):
            return 421, "host", f"host {headers.get('host', '')[:80]!r} is not served here (--allowed-host)", {}
        if (path not in OPEN_ROUTES or self.protect_healthz) and not self.key_ok(headers.get("authorization")):
            return 401, "auth", "missing or wrong API key: send Authorization: Bearer KEY", {"www-authenticate": "Bearer"}
        if method == "POST" and not _json_type(headers.get("content-type")):
            return 415, "content_type", "Content-Type must be application/json", {}
        return None

    def key_ok(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


Refusal = tuple[int, str, str, dict]   # status, reason (the metric's label), message, extra headers


def _json_type(header: str | None) -> bool:
    media = (header or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class GuardRequests:
    """ASGI middleware: the guards, in order Host (421), key (401), content type of a POST (415); the refusal is
    counted by `on_refusal(reason)` and never reaches the routes."""

    def __init__(self, app, guards: Guards, on_refusal=None) -> None:
        self.app, self.guards, self.on_refusal = app, guards, on_refusal

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.guards.refusal(scope["method"], scope["path"], scope["headers"])
        if refusal is None:
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse
        status, reason, message, extra = refusal
        if self.on_refusal is not None:
            self.on_refusal(reason)
        await JSONResponse({"error": message, "field": None}, status_code=status, headers=extra)(scope, receive, send)
