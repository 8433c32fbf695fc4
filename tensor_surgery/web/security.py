"""Request checks that run before any route, for HTTP and WebSocket alike (pure ASGI middleware).

- Host: on a loopback bind, only loopback names are accepted. A page on evil.example whose name
  is re-pointed at 127.0.0.1 (DNS rebinding) still sends `Host: evil.example` and is refused.
- Origin: a state-changing request (anything but GET/HEAD/OPTIONS) and every WebSocket handshake
  must come from our own origin when the browser says where it comes from (`Origin`, or
  `Sec-Fetch-Site: cross-site`). Clients that send neither (curl, the CLI) are not browsers and
  cannot be driven by a hostile page.
- Token: bound to anything but loopback, every request needs the token: `Authorization: Bearer`,
  the `ts_token` cookie, or `?token=` once (which sets the cookie).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import LOOPBACK_HOSTS

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_COOKIE = "ts_token"


def split_host(value: str) -> tuple[str, str | None]:
    """('host', 'port') from a Host header value; IPv6 keeps its brackets off."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value, None
    return host, port


def is_loopback_name(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, loopback_only: bool, token: str | None) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._check(scope, headers)
        if problem is None and self.token:
            problem = self._check_token(scope, headers)
            if problem is None and scope["type"] == "http" and _query_token(scope):
                return await self.app(scope, receive, _set_cookie(send, self.token))
        if problem is None:
            return await self.app(scope, receive, send)
        status, code, message = problem
        if scope["type"] == "websocket":
            # refuse the handshake: closing before accept makes the server answer 403
            await send({"type": "websocket.close", "code": 4403, "reason": message[:120]})
            return
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})

    def _check(self, scope: Scope, headers: dict[str, str]):
        host_header = headers.get("host", "")
        host, _ = split_host(host_header)
        if self.loopback_only and not is_loopback_name(host):
            return (
                400,
                "bad_host",
                f"Host {host_header!r} is not a loopback name; this server answers only "
                "http://127.0.0.1 or http://localhost (protection against DNS rebinding)",
            )
        method = scope.get("method", "GET")
        if scope["type"] == "websocket" or method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None:
                if _origin_host(origin) != _host_with_port(host_header, scope):
                    return (
                        403,
                        "cross_origin",
                        f"cross-origin request from {origin!r} refused: "
                        "only pages served by this server may change state",
                    )
            elif headers.get("sec-fetch-site") == "cross-site":
                return 403, "cross_origin", "cross-site request refused"
        return None

    def _check_token(self, scope: Scope, headers: dict[str, str]):
        given = None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None and "cookie" in headers:
            c = SimpleCookie()
            try:
                c.load(headers["cookie"])
            except Exception:
                c = SimpleCookie()
            if TOKEN_COOKIE in c:
                given = c[TOKEN_COOKIE].value
        if given is None:
            given = _query_token(scope)
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return (
            401,
            "token_required",
            "this server is bound to a non-loopback address and needs its token: open the URL "
            "printed at start (…/?token=…) or send 'Authorization: Bearer <token>'",
        )


def _origin_host(origin: str) -> str | None:
    """'host:port' of an Origin header, or None when it is 'null' or malformed."""
    try:
        o = urlsplit(origin)
        return f"{o.hostname}:{o.port or _default_port(o.scheme)}" if o.hostname else None
    except ValueError:
        return None


def _default_port(scheme: str) -> int:
    return 443 if scheme in ("https", "wss") else 80


def _host_with_port(host_header: str, scope: Scope) -> str:
    host, port = split_host(host_header)
    if port is None:
        scheme = scope.get("scheme", "http")
        port = str(_default_port(scheme))
    return f"{host}:{port}"


def _query_token(scope: Scope) -> str | None:
    qs = scope.get("query_string", b"").decode("latin-1")
    if "token=" not in qs:
        return None
    values = parse_qs(qs).get("token")
    return values[0] if values else None


def _set_cookie(send: Send, token: str) -> Send:
    async def wrapped(message):
        if message["type"] == "http.response.start":
            cookie = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/".encode()
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return wrapped
