"""The files the server hands to browsers, from ``transport/static/`` (shipped in the wheel):
``/v1/client.js`` (the JavaScript client) and its types always; only with ``threadline serve
--demo``, the chat page at ``/`` and what it loads: ``/v1/markdown.js`` (Markdown as sanitized
DOM) with its stylesheet and the libraries it vendors (marked, DOMPurify, highlight.js: their
versions and checksums in ``static/VENDORED.md``, their licences at ``/v1/vendor-LICENSES.txt``).
Read once, kept in memory; nothing else is ever served from disk (the paths are a fixed table: no
path from a request reaches the filesystem)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent / "static"

#: request path -> (file in ``static/``, content type, served without ``--demo``)
ASSETS: dict[str, tuple[str, str, bool]] = {
    "/v1/client.js": ("client.js", "text/javascript; charset=utf-8", True),
    "/v1/client.d.ts": ("client.d.ts", "text/plain; charset=utf-8", True),
    "/": ("index.html", "text/html; charset=utf-8", False),
    "/v1/markdown.js": ("markdown.js", "text/javascript; charset=utf-8", False),
    "/v1/markdown.css": ("markdown.css", "text/css; charset=utf-8", False),
    "/v1/vendor-marked.esm.js": ("vendor-marked.esm.js", "text/javascript; charset=utf-8", False),
    "/v1/vendor-purify.es.mjs": ("vendor-purify.es.mjs", "text/javascript; charset=utf-8", False),
    "/v1/vendor-highlight.min.js": ("vendor-highlight.min.js", "text/javascript; charset=utf-8",
                                    False),
    "/v1/vendor-LICENSES.txt": ("vendor-LICENSES.txt", "text/plain; charset=utf-8", False),
}


@lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return (HERE / name).read_bytes()


def asset(path: str, *, demo: bool) -> tuple[str, bytes] | None:
    """``(content type, body)`` of the file served at ``path``, or None (404)."""
    entry = ASSETS.get(path)
    if entry is None or not (entry[2] or demo):
        return None
    name, content_type, _ = entry
    try:
        return content_type, _read(name)
    except FileNotFoundError:
        return None
