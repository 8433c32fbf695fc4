"""Request checks that run before any route, for HTTP and WebSocket alike (pure ASGI middleware).

- Host: on a loopback bind, only loopback names are accepted. A page on evil.example whose name
  is re-pointed at 127.0.0.1 (DNS rebinding) still sends `Host: evil.example` and is refused.
- Origin: a state-changing request (anything but GET/HEAD/OPTIONS) and every WebSocket handshake
  must come from our own origin when the browser says where it comes from (`Origin`, or
  `Sec-Fetch-Site: cross-site`). Clients that send neither (curl, the CLI) are not browsers and
  cannot be driven by a hostile page.
- Reads: an `/api` GET that the browser says comes from another site's page (`Sec-Fetch-Site:
  cross-site`, or `same-site`: another port of localhost) is refused too: that page cannot read
  the answer, but it can make the server spend seconds of CPU (a rank, a whole-model listing) for
  every image tag it plants.
- Headers: a request with two `Host` (or `Origin`, `Sec-Fetch-Site`, `Authorization`) headers is
  refused; frameworks disagree on which of the two counts.
- Token: bound to anything but loopback, every request needs the token: `Authorization: Bearer`,
  the `ts_token` cookie, or `?token=` once (which sets the cookie).
- JSON bodies must be strict JSON (see `json_problem`): no NaN/Infinity, no number beyond the
  range of float64 or int64, no unpaired surrogate. Python's parser takes all of these and they
  then fail deep inside (SQLite, numpy casts, UTF-8 encoding) as 500s; refused here, every route
  is covered at once, the WebSocket's messages included (it calls the same check).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import re
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import LOOPBACK_HOSTS

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_COOKIE = "ts_token"
SINGLE_HEADERS = (b"host", b"origin", b"sec-fetch-site", b"authorization")
FOREIGN_SITES = frozenset({"cross-site", "same-site"})  # same-site: another port of localhost
INT64 = (-(1 << 63), (1 << 63) - 1)  # every integer we store or index with fits int64
# A number that may overflow: 19+ digits in a row (|int| >= 2**63 needs 19) or a 3-digit exponent.
_BIG_NUMBER = re.compile(rb"\d{19}|[eE][+-]?\d{3}")


class _Constant:
    def __init__(self, text: str) -> None:
        self.text = text


def json_problem(body: bytes | str) -> tuple[str, str | None] | None:
    """(message, field) if `body` is JSON that strict JSON would refuse; None if it is strict
    JSON (or not JSON at all: the route's own parser reports that, as before).

    orjson refuses NaN/Infinity and unpaired surrogates by itself; the rare body that it refuses,
    or that holds a number which might overflow, is parsed again leniently to name the field.
    """
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    try:
        orjson.loads(raw)
        if not _BIG_NUMBER.search(raw):
            return None
    except orjson.JSONDecodeError:
        pass
    try:
        obj = json.loads(raw, parse_constant=_Constant)
    except (ValueError, RecursionError):
        return None  # not JSON (or absurdly deep): the route's parser answers as it always did
    stack: list[tuple[object, str]] = [(obj, "")]
    while stack:
        value, where = stack.pop()
        problem = None
        if isinstance(value, _Constant):
            problem = f"{value.text} is not a JSON number; send a finite number"
        elif isinstance(value, float) and not math.isfinite(value):
            problem = "the number is beyond the range of a 64-bit float"
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            problem = f"the integer is out of range (at most {INT64[1]:,} in size)"
        elif isinstance(value, str) and not _is_unicode(value):
            problem = "the text holds an unpaired surrogate (e.g. \\ud800), which is not Unicode"
        elif isinstance(value, dict):
            for k, v in value.items():
                if not _is_unicode(k):
                    return f"{where or 'body'}: a key holds an unpaired surrogate, which is not Unicode", where or None
                stack.append((v, f"{where}.{k}" if where else k))
        elif isinstance(value, list):
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(value))
        if problem:
            return f"{where or 'body'}: {problem}", where or None
    return None


def _is_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        problem = _duplicate_header(scope)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if problem is None:
            problem = self._check(scope, headers)
        if problem is None and self.token:
            problem = self._check_token(scope, headers)
        if problem is None and scope["type"] == "http" and _has_json_body(scope, headers):
            receive, problem = await _checked_body(receive)
        if problem is None:
            if self.token and scope["type"] == "http" and _query_token(scope):
                send = _set_cookie(send, self.token)
            return await self.app(scope, receive, send)
        status, code, message, *field = problem
        if scope["type"] == "websocket":
            # refuse the handshake: closing before accept makes the server answer 403
            await send({"type": "websocket.close", "code": 4403, "reason": message[:120]})
            return
        context = {"field": field[0]} if field and field[0] else {}
        body = json.dumps({"error": {"code": code, "message": message, **context}}).encode()
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
        elif scope.get("path", "").startswith("/api/"):
            site = headers.get("sec-fetch-site")
            if site in FOREIGN_SITES:
                return (
                    403,
                    "cross_origin",
                    f"{site} read of {scope.get('path')} refused: the API answers only pages served by "
                    "this server (open the page itself, or call it without a browser)",
                )
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


def _duplicate_header(scope: Scope):
    seen = set()
    for k, _ in scope["headers"]:
        k = k.lower()
        if k in SINGLE_HEADERS:
            if k in seen:
                name = k.decode("latin-1").title()
                return 400, "duplicate_header", f"the request has two {name} headers; send one"
            seen.add(k)
    return None


def _has_json_body(scope: Scope, headers: dict[str, str]) -> bool:
    """A body FastAPI would parse as JSON: a JSON content type, or none at all (it tries JSON)."""
    if scope.get("method") in SAFE_METHODS:
        return False
    ctype = headers.get("content-type")
    if ctype is None:
        return True
    main = ctype.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


async def _checked_body(receive: Receive) -> tuple[Receive, tuple | None]:
    """Read the whole body, check it, and hand the route a receive that replays it."""
    chunks = []
    more = True
    extra: list[Message] = []
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client left: let the app see it
            extra.append(message)
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    problem = json_problem(body) if body else None
    replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *extra]

    async def replayed() -> Message:
        return replay.pop(0) if replay else await receive()

    if problem:
        message, field = problem
        return replayed, (422, "invalid_request", message, field)
    return replayed, None


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
