"""Response compression, negotiated per RFC 9110: `Accept-Encoding: gzip;q=0` means "not gzip".

Starlette's GZipMiddleware compresses whenever the header contains the text "gzip", so a client
that refuses gzip with `q=0` (or prefers it off with `gzip;q=0, *`) was sent gzip anyway. Every
response, the tensor listing's stored gzip included, is decided here by `accepts_gzip`.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware, GZipResponder, IdentityResponder
from starlette.types import Receive, Scope, Send

_GZIP = ("gzip", "x-gzip")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether gzip is acceptable: its own entry's q > 0, else the `*` entry's; not listed: no.

    An entry without q= has q=1; a malformed q counts as 0 (unsure: send it plain, which every
    client reads)."""
    explicit = wildcard = None
    for item in accept_encoding.lower().split(","):
        coding, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if q != q:  # NaN
                    q = 0.0
        if coding in _GZIP:
            explicit = q if explicit is None else max(explicit, q)
        elif coding == "*":
            wildcard = q
    chosen = explicit if explicit is not None else wildcard
    return chosen is not None and chosen > 0


class NegotiatedGZipMiddleware(GZipMiddleware):
    """Starlette's GZip middleware, with the choice made by `accepts_gzip` instead of a search for
    the text "gzip" in the header (which also missed `*`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if accepts_gzip(Headers(scope=scope).get("accept-encoding", "")):
            responder = GZipResponder(self.app, self.minimum_size, compresslevel=self.compresslevel,
                                      thread_minimum_size=self.thread_minimum_size,
                                      exclude_content_types=self.exclude_content_types)
        else:  # plain, still marked Vary: Accept-Encoding
            responder = IdentityResponder(self.app, self.minimum_size, exclude_content_types=self.exclude_content_types)
        await responder(scope, receive, send)
