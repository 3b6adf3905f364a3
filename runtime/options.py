"""The ``threadline`` command's options: what each flag is, where it comes from, how it is read.

Invariants: every ``serve`` option is declared once, in ``SERVE_OPTIONS``, with its flag, its
``THREADLINE_*`` variable, its parser and the default ``--help`` shows; nothing else reads the
environment for a ``serve`` option. A flag wins over the environment, and a repeatable flag
replaces the environment's whole list. A bad value is one line and exit status 2: a flag's
quotes what was typed; a variable's names the variable but never its value, which may be a
secret.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import attrs

from threadline.transport.auth import MIN_SECRET_BYTES, normalize_origin
from threadline.transport.limits import Limits, media_types

from .logs import parse_format, parse_level
from .stores import DEFAULT_STORE

TOKEN_TTL = 24 * 3600.0  # ``threadline token`` and the demo token: a day, unless told


def version() -> str:
    """The installed distribution's; in a source tree not installed, its pyproject.toml's (one
    place to change it, rather than a constant that drifts); else ``unknown``."""
    try:
        return importlib.metadata.version("threadline")
    except importlib.metadata.PackageNotFoundError:
        try:
            pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, ValueError, KeyError):
            return "unknown"



# -- values of options: each raises ValueError saying what is expected ---------------------------

def port(text: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()) or int(text) > 65535:
        raise ValueError("a port is 0-65535 (0: any free port)")
    return int(text)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def seconds(text: str, positive: bool = False) -> float:
    value = _number(text)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"a number of seconds {'>' if positive else '>='} 0")
    return value


def address(text: str) -> tuple[str, int]:
    host, _, number = text.rpartition(":")
    if not host:
        raise ValueError("HOST:PORT, e.g. 127.0.0.1:9100 or [::1]:9100")
    return host.removeprefix("[").removesuffix("]"), port(number)


def lease_ttl(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value >= 1):
        raise ValueError("a number of seconds >= 1")
    return value


def node_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,50}", text):
        raise ValueError("1-50 characters of A-Z a-z 0-9 _ . : @ -")
    return text


def origin(text: str) -> str:
    return "*" if text.strip() == "*" else normalize_origin(text)


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("true or false (1/0, yes/no, on/off)")
    return value in ("1", "true", "yes", "on")


def limit(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` for a field of ``Limits``, a number > 0 (``none`` for an optional one), or
    for a list (``attachment_types``) media types separated by commas, semicolons or spaces
    (in ``THREADLINE_LIMIT``, itself split at commas: semicolons or spaces)."""
    kinds = {f.name: str(f.type) for f in attrs.fields(Limits)}
    name, sep, value = text.partition("=")
    if not sep or name not in kinds:
        raise ValueError(f"NAME=VALUE with NAME one of {', '.join(kinds)}")
    if kinds[name].startswith("tuple[str"):  # a list: attachment_types=image/png,text/*
        return name, media_types(value)
    if value.strip().lower() == "none" and "None" in kinds[name]:
        return name, None
    number = _number(value)
    whole = kinds[name].startswith("int")  # "int", "int | None"
    if not (math.isfinite(number) and number > 0) or (whole and not number.is_integer()):
        raise ValueError(f"{name} must be a {'whole ' if whole else ''}number > 0")
    return name, int(number) if whole else number


@attrs.frozen
class Option:
    """A ``serve`` flag, read from ``THREADLINE_<env>`` when not given."""
    flag: str
    env: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    many: bool = False         # repeatable; the environment gives a comma-separated list
    shown: str | None = None   # the default as --help says it, when not str(default)
    metavar: str | None = None
    switch: bool = False       # a flag without a value (it sets True); the environment: boolean

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, p: argparse.ArgumentParser) -> None:
        shown = self.shown or ("none" if self.default is None else str(self.default))
        where = f"env THREADLINE_{self.env}" + (", comma-separated" if self.many else "")
        text = f"{self.help} (default: {shown}; {where})".replace("%", "%%")
        if self.switch:
            p.add_argument(self.flag, dest=self.dest, action="store_const", const=True,
                           help=text)
            return
        p.add_argument(self.flag, dest=self.dest, type=_checked(self.parse), metavar=self.metavar,
                       action="append" if self.many else "store", help=text)

    def from_environment(self) -> Any:
        """The environment's value, else the default. Raises ValueError naming the variable
        but not its value, which may be a secret."""
        text = os.environ.get(f"THREADLINE_{self.env}", "")
        try:
            if self.many:
                return [self.parse(t.strip()) for t in text.split(",") if t.strip()] or \
                    self.default
            return self.parse(text) if text else self.default
        except ValueError as exc:
            raise ValueError(f"THREADLINE_{self.env}: {exc}") from None


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return check


SERVE_OPTIONS = [
    Option("--host", "HOST", "127.0.0.1", "address to listen on"),
    Option("--port", "PORT", 8765, "port to listen on; 0: any free port", port),
    Option("--store", "STORE", DEFAULT_STORE, "sqlite:///PATH, postgresql://user:pw@host:port/db"
           " or memory", metavar="URL"),
    Option("--secret", "SECRET", None, f"HS256 key tokens are checked with, {MIN_SECRET_BYTES}+ "
           "bytes", shown="made up for the run, unless a public key is given"),
    Option("--jwt-public-key", "JWT_PUBLIC_KEY", None, "PEM file of an RSA or EC P-256 public "
           "key or certificate: RS256/ES256 tokens", metavar="FILE"),
    Option("--jwks", "JWKS", None, "JSON Web Key Set file: RS256/ES256 tokens, the key chosen "
           "by the token's kid", metavar="FILE"),
    Option("--token-leeway", "TOKEN_LEEWAY", 30.0, "clock skew allowed for a token's exp, nbf "
           "and iat", seconds, metavar="SECONDS"),
    Option("--allow-origin", "ALLOW_ORIGIN", None, "a browser origin allowed to connect, "
           "scheme://host[:port] or *; repeatable", origin, many=True, metavar="ORIGIN",
           shown="no Origin, a loopback origin, the server's own host"),
    Option("--metrics-token", "METRICS_TOKEN", None, "scrapes of /metrics need "
           "Authorization: Bearer TOKEN", shown="none, /metrics is open", metavar="TOKEN"),
    Option("--metrics-address", "METRICS_ADDRESS", None, "serve /metrics on HOST:PORT instead "
           "of the main port", address, shown="the main port", metavar="HOST:PORT"),
    Option("--agent", "AGENT", "echo", "echo; openai (a model behind an OpenAI-compatible API: "
           "OPENAI_BASE_URL, OPENAI_API_KEY); or module:callable (also from the current "
           "directory), whose module attribute TOOLS gives its tools", metavar="SPEC"),
    Option("--model", "MODEL", None, "the model --agent openai asks, e.g. gpt-4o-mini",
           shown="none: required with --agent openai", metavar="NAME"),
    Option("--system-prompt", "SYSTEM_PROMPT", None, "the system prompt of --agent openai",
           metavar="TEXT"),
    Option("--delta-interval", "DELTA_INTERVAL", 0.05, "at most one agent_delta per run this "
           "often: how streamed answers are coalesced", seconds, metavar="SECONDS"),
    Option("--grace", "GRACE", 5.0, "seconds active runs get on shutdown", seconds,
           metavar="SECONDS"),
    Option("--limit", "LIMIT", None, "a connection limit, repeatable, e.g. rate=500; names: "
           + ", ".join(f.name for f in attrs.fields(Limits)), limit, many=True,
           shown="PROTOCOL.md's", metavar="NAME=VALUE"),
    Option("--demo", "DEMO", False, "serve the chat page at / (and print its address to "
           "open)", boolean, shown="off", switch=True),
    Option("--otel", "OTEL", False, "trace runs with OpenTelemetry (the extra threadline[otel]), "
           "exported as the OTEL_* environment variables say (OTLP over HTTP by default)",
           boolean, shown="off", switch=True),
    Option("--cluster", "CLUSTER", False, "one node of a cluster over the --store PostgreSQL: "
           "several processes, one owner per thread", boolean, shown="off", switch=True),
    Option("--node-id", "NODE_ID", None, "this node's name in the cluster", node_id,
           shown="made up: host-pid-random", metavar="NAME"),
    Option("--peer-address", "PEER_ADDRESS", ("127.0.0.1", 0), "where this node listens for "
           "requests other nodes forward to it", address, shown="127.0.0.1:0, a free port",
           metavar="HOST:PORT"),
    Option("--peer-advertise", "PEER_ADVERTISE", None, "the address other nodes reach this "
           "one at", address, shown="the --peer-address bound", metavar="HOST:PORT"),
    Option("--peer-cert", "PEER_CERT", None, "PEM certificate this node presents on the peer "
           "link (mutual TLS, with the key and CA flags below); it must name the host other "
           "nodes reach it at (a DNS or IP subjectAltName)", shown="none", metavar="FILE"),
    Option("--peer-key", "PEER_KEY", None, "PEM private key of --peer-cert, unencrypted",
           shown="none", metavar="FILE"),
    Option("--peer-ca", "PEER_CA", None, "PEM certificate(s) of the CA other nodes' "
           "certificates are checked against, both ways (the only CA trusted)", shown="none",
           metavar="FILE"),
    Option("--peer-plaintext", "PEER_PLAINTEXT", False, "a peer link without TLS on a "
           "non-loopback address (a network you trust)", boolean,
           shown="off: plaintext only on loopback", switch=True),
    Option("--lease-ttl", "LEASE_TTL", 10.0, "seconds a node's shard leases last without "
           "renewal: how soon a dead node's threads move; at least 1", lease_ttl,
           metavar="SECONDS"),
    Option("--log", "LOG", "info", "log level: debug, info, warning, error", parse_level,
           metavar="LEVEL"),
    Option("--log-format", "LOG_FORMAT", "text", "text, or json (one object a line)",
           parse_format, metavar="FORMAT"),
]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        # One line rather than the usage block (serve's is a screenful); --help is named.
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="threadline", description="An actor runtime on trio for multi-user AI "
               "chat backends.")
    p.add_argument("--version", action="version", version=f"threadline {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the WebSocket server")
    for option in SERVE_OPTIONS:
        option.add_to(s)
    d = sub.add_parser("delete-user", help="erase every thread of a user from the store; only "
                       "while no server uses the store (a running server would go on writing "
                       "the deleted threads: delete through it, DELETE over HTTP or "
                       "Runtime.delete_user)")
    d.add_argument("user")
    d.add_argument("--store", metavar="URL", help="the store (default: env THREADLINE_STORE, "
                   f"else {DEFAULT_STORE})")
    t = sub.add_parser("token", help="print a token for a user, signed with the secret")
    t.add_argument("user")
    t.add_argument("--secret", help="the server's HS256 secret (default: env THREADLINE_SECRET)")
    ttl = t.add_mutually_exclusive_group()
    ttl.add_argument("--ttl", default=TOKEN_TTL, metavar="SECONDS",
                     type=_checked(lambda t: seconds(t, positive=True)),
                     help="how long it is valid (default: 86400, a day)")
    ttl.add_argument("--no-expiry", action="store_true",
                     help="a token that never expires: only a new secret revokes it")
    return p


def fill_from_environment(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Each ``serve`` option not given as a flag, from its variable or else its default. A bad
    value exits with status 2 through ``p.error``."""
    for option in SERVE_OPTIONS:
        if getattr(args, option.dest) is None:
            try:
                setattr(args, option.dest, option.from_environment())
            except ValueError as exc:
                p.error(str(exc))
