"""CORS for the HTTP API (``HTTP.md``, "Browsers on other origins"): a page on an origin the
server allows may call the API and read its answers, errors included (a refused token's 401
from ``/v1/auth/check`` is the point: without it a page cannot learn why its WebSocket was
refused, and reconnects forever).

The origins allowed are the WebSocket's, decided by one function:
``Authenticator.origin_allowed`` (``--allow-origin``; without the option, loopback origins and
the server's own ``Host``).

Invariants:

- An answer to a request with one ``Origin``, allowed, carries ``Access-Control-Allow-Origin``
  (that origin, exactly as sent), ``Vary: Origin`` and ``Access-Control-Expose-Headers``. An
  answer to any other request (no ``Origin``, one not allowed, two of them) carries no CORS
  header at all, so a browser keeps the answer from the page.
- No cookie is involved: the token travels in ``Authorization``, which a preflight allows, so
  ``Access-Control-Allow-Credentials`` is never sent.
- A preflight (``OPTIONS``) needs no token and costs no quota: 204 with ``Allow`` (the route's
  methods), and, for an allowed origin, the methods, the request headers the API reads and how
  long the browser may keep the answer. Sans-IO: headers in, headers out; never raises.
"""

from __future__ import annotations

from typing import Sequence

from websockets.datastructures import Headers
from websockets.http11 import Response

from .auth import Authenticator
from .http import no_content

Extra = tuple[tuple[str, str], ...]

ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate"  # the body is readable anyway
MAX_AGE = 600  # seconds a browser may keep a preflight's answer


def cors_headers(auth: Authenticator, headers: Headers) -> Extra:
    """The CORS headers of any answer to a request with these ``headers``; () for none."""
    origins, hosts = headers.get_all("Origin"), headers.get_all("Host")
    if len(origins) != 1:
        return ()
    if not auth.origin_allowed(origins[0], hosts[0] if len(hosts) == 1 else None):
        return ()
    return (("Access-Control-Allow-Origin", origins[0]), ("Vary", "Origin"),
            ("Access-Control-Expose-Headers", EXPOSE_HEADERS))


def preflight(cors: Extra, methods: Sequence[str]) -> Response:
    """The answer to ``OPTIONS`` on a route that takes ``methods``, given ``cors_headers``."""
    extra = [("Allow", ", ".join((*methods, "OPTIONS")))]
    if cors:
        extra += [*cors, ("Access-Control-Allow-Methods", ", ".join(methods)),
                  ("Access-Control-Allow-Headers", ALLOW_HEADERS),
                  ("Access-Control-Max-Age", str(MAX_AGE))]
    return no_content(extra)
