"""Logging for ``threadline serve``: a level, a format (``text`` or ``json`` lines) and redaction.

Invariant: no line the handler writes carries a token or a password. The ``Redactor`` filter sits
on the handler, so it sees every record, ours and the libraries' (websockets logs the request
line, ``?token=`` included, and every header, ``Authorization`` included, at debug level on
``threadline.wire``). It rewrites the formatted message, the traceback text and string ``extra``
fields, before any formatter runs, replacing:

- the values the process knows to be secret (``--secret``, ``--metrics-token``);
- ``token=...`` / ``access_token=...`` in query strings, ``password=...`` in key=value DSNs;
- ``Authorization:`` and ``Cookie:`` header values (the scheme stays: ``Bearer ***``);
- the password of a URL (``postgresql://u:***@h``);
- JWT-shaped strings: a base64url JSON header (``eyJ``/``ew``) and two more dotted parts (the
  dots perhaps percent-encoded);
- the value of a query parameter whose name is percent-encoded (``?%74oken=...``).

Quiet by default: websockets (``threadline.wire``) and the model SDK (``openai``, and its HTTP
client ``httpx``, published here as ``httpx2``) log every connection, request and retry at
INFO; below ``--log debug`` only their warnings pass. A run the model failed is one line of our
own (``threadline.agent``, ``actors/execution.py``), not five of theirs.

Patterns rather than a list of known tokens: a client's wrong token, or one from another
issuer, is a credential too, and the server never learns it in advance.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any, Callable, Iterable, TextIO

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
MASK = "***"
#: Libraries that log routine traffic at INFO: shown from ``--log debug`` only.
QUIET_LOGGERS = ("threadline.wire", "openai", "httpx", "httpx2")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Set on a record by Logger.makeRecord; anything else in its __dict__ came from ``extra=``.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_B64 = r"[A-Za-z0-9_\-]"
_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # A JWT's header is a JSON object, so its base64url starts with "ey" or "ew".
    (re.compile(rf"\be[yw]{_B64}+(?:\.|%2[eE]){_B64}+(?:\.|%2[eE]){_B64}*"), MASK),
    # A query parameter whose name is percent-encoded (``%74oken=``): its value, whatever it is.
    (re.compile(r"(?i)([?&][^=&\s]*%[0-9a-f]{2}[^=&\s]*=)[^&\s\"',;]*"), rf"\1{MASK}"),
    (re.compile(r"(?i)\b(\w*(?:token|password|passwd|pwd|secret))=[^&\s\"',;]*"),
     rf"\1={MASK}"),
    (re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)(?:([A-Za-z][\w.+-]*)\s+)?"
                r"[^\s\"',;]+"), lambda m: f"{m[1]}{m[2] + ' ' if m[2] else ''}{MASK}"),
    (re.compile(r"(?i)\b((?:set-)?cookie\s*:\s*).*"), rf"\1{MASK}"),
    # user:password@ in a URL; greedy to the last @ before the path (a password may hold @).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^\s/]*@"), rf"\1{MASK}@"),
]


class Redactor(logging.Filter):
    """A handler filter that rewrites each record so that it carries no secret (see the
    module's docstring). Never drops a record; bounded by the record's size."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so that a secret containing another is masked whole. Very short
        # values would mask ordinary words; the CLI refuses short secrets anyway.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)  # type: ignore[arg-type]
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a caller's bad format string: the handler would have said so
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            # An extra that is not a plain value becomes its (redacted) text: a dict or an
            # object's repr can hold a secret as well as a string can.
            if name not in _RECORD_FIELDS and not isinstance(value, (bool, int, float,
                                                                     type(None))):
                setattr(record, name, self.redact(str(value)))
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``message``,
    any ``extra`` fields, and ``exc`` / ``stack`` text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for name, value in record.__dict__.items():
            if name not in _RECORD_FIELDS and name not in line:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def parse_level(value: str) -> str:
    """A level name of ``LEVELS``, any case; ``ValueError`` otherwise."""
    if value.strip().lower() not in LEVELS:
        raise ValueError(f"not a log level: one of {', '.join(LEVELS)}")
    return value.strip().lower()


def parse_format(value: str) -> str:
    """``text`` or ``json``, any case; ``ValueError`` otherwise."""
    if value.strip().lower() not in FORMATS:
        raise ValueError("not a log format: text or json")
    return value.strip().lower()


def setup_logging(level: str = "info", fmt: str = "text", *, secrets: Iterable[str] = (),
                  stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to ``stream`` (stderr), formatted
    as ``fmt``, through a ``Redactor`` that also masks ``secrets``. Replaces a handler a
    previous call installed. Returns the handler."""
    level, fmt = parse_level(level), parse_format(fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Redactor(secrets))
    handler.set_name("threadline")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "threadline"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # websockets logs every connection opened and closed at INFO on ``threadline.wire``: a
    # server holding 10,000 connections can log at INFO without that; the model SDK logs each
    # request and each retry. --log debug shows them.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    return handler


def mask(secret: str) -> None:
    """Mask ``secret`` too in what the installed handler writes from now on (a secret learnt
    after logging started: a cluster's shared one, read from the store)."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "threadline":
            for f in handler.filters:
                if isinstance(f, Redactor) and secret and len(secret) >= 4:
                    f.secrets = sorted({*f.secrets, secret}, key=len, reverse=True)
