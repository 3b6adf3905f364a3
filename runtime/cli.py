"""The ``threadline`` command: ``serve``, ``token`` and ``--version``.

Every ``serve`` option also comes from a ``THREADLINE_*`` variable (``--help`` names each, with
its default); a flag wins over the environment, and a repeatable flag replaces the environment's
whole list. What an operator can fix (a port in use, a store that cannot be opened, an unreadable
key file, a short secret, a bad value) is said in one line with exit status 2, never as a
traceback: tracebacks are for bugs. Logs go to stderr through ``runtime.logs``, which masks every
token and password; stdout has only the ``ready:`` line (and, when the server made up its
secret, a demo token, on purpose).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.metadata
import logging
import math
import os
import secrets
import signal
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import trio

from actors.agents import echo_agent, echo_tools
from actors.engine import Agent, ToolRegistry
from transport.auth import MIN_SECRET_BYTES, Authenticator, KeyFileError, mint, normalize_origin
from transport.limits import Limits

from .api import RuntimeConfig, open_runtime
from .logs import parse_format, parse_level, setup_logging
from .server import open_server
from .stores import DEFAULT_STORE, StoreError, describe_store, open_journal
from .tuning import raise_fd_limit, tune_gc

log = logging.getLogger("threadline")
DEMO_USER = "demo"
TOKEN_TTL = 24 * 3600.0  # ``threadline token`` and the demo token: a day, unless told


class Refusal(Exception):
    """A setting or an environment the server cannot start with: one line, exit status 2."""


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


def origin(text: str) -> str:
    return "*" if text.strip() == "*" else normalize_origin(text)


def limit(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` for a field of ``Limits``, a number > 0 (``none`` for an optional one)."""
    kinds = {f.name: str(f.type) for f in attrs.fields(Limits)}
    name, sep, value = text.partition("=")
    if not sep or name not in kinds:
        raise ValueError(f"NAME=VALUE with NAME one of {', '.join(kinds)}")
    if value.strip().lower() == "none" and "None" in kinds[name]:
        return name, None
    number = _number(value)
    if not (math.isfinite(number) and number > 0) or \
            (kinds[name] == "int" and not number.is_integer()):
        raise ValueError(f"{name} must be a {'whole ' if kinds[name] == 'int' else ''}number > 0")
    return name, int(number) if kinds[name] == "int" else number


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

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, p: argparse.ArgumentParser) -> None:
        shown = self.shown or ("none" if self.default is None else str(self.default))
        where = f"env THREADLINE_{self.env}" + (", comma-separated" if self.many else "")
        p.add_argument(self.flag, dest=self.dest, type=_checked(self.parse), metavar=self.metavar,
                       action="append" if self.many else "store",
                       help=f"{self.help} (default: {shown}; {where})".replace("%", "%%"))

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
    Option("--agent", "AGENT", "echo", "echo, or module:callable (also from the current "
           "directory); a module attribute TOOLS gives its tools", metavar="SPEC"),
    Option("--grace", "GRACE", 5.0, "seconds active runs get on shutdown", seconds,
           metavar="SECONDS"),
    Option("--limit", "LIMIT", None, "a connection limit, repeatable, e.g. rate=500; names: "
           + ", ".join(f.name for f in attrs.fields(Limits)), limit, many=True,
           shown="PROTOCOL.md's", metavar="NAME=VALUE"),
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
    t = sub.add_parser("token", help="print a token for a user, signed with the secret")
    t.add_argument("user")
    t.add_argument("--secret", help="the server's HS256 secret (default: env THREADLINE_SECRET)")
    ttl = t.add_mutually_exclusive_group()
    ttl.add_argument("--ttl", default=TOKEN_TTL, type=_checked(lambda t: seconds(t, positive=True)),
                     metavar="SECONDS", help="how long it is valid (default: 86400, a day)")
    ttl.add_argument("--no-expiry", action="store_true",
                     help="a token that never expires: only a new secret revokes it")
    return p


# -- the commands -------------------------------------------------------------------------------

def check_secret(secret: str) -> None:
    if (size := len(secret.encode())) < MIN_SECRET_BYTES:
        raise Refusal(f"the secret is {size} bytes; HS256 needs at least {MIN_SECRET_BYTES} "
                      "(RFC 7518 §3.2: a key at least as long as the hash output, 256 bits)")


def load_agent(spec: str) -> tuple[Agent, ToolRegistry]:
    """``echo``, or ``module:callable``: the callable is the agent; a module attribute ``TOOLS``
    (a ``ToolRegistry``) gives its tools. The current directory is searched too, as by
    ``python -m``: the installed ``threadline`` script does not put it on ``sys.path``."""
    if spec == "echo":
        return echo_agent, echo_tools()
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise Refusal(f"--agent must be echo or module:callable, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last: a file here never shadows an installed package
    try:
        agent = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # the module's own errors too: said in a line
        raise Refusal(f"cannot load agent {spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(agent):
        raise Refusal(f"cannot load agent {spec!r}: {attr} is not callable")
    tools = getattr(sys.modules[module_name], "TOOLS", None)
    return agent, tools if isinstance(tools, ToolRegistry) else ToolRegistry()


def run_serve(args: argparse.Namespace) -> int:
    if args.secret:
        check_secret(args.secret)
    try:
        auth = Authenticator(secret=args.secret, public_key_file=args.jwt_public_key,
                             jwks_file=args.jwks, leeway=args.token_leeway,
                             allowed_origins=args.allow_origin)
        limits = attrs.evolve(Limits(), **dict(args.limit or []))
    except (KeyFileError, ValueError, TypeError) as exc:
        raise Refusal(str(exc)) from None
    agent, tools = load_agent(args.agent)
    if args.made_up:
        log.warning("no --secret or THREADLINE_SECRET: made one for this run only; tokens "
                    "will not survive a restart")
    return trio.run(serve, args, auth, agent, tools, limits)


async def serve(args: argparse.Namespace, auth: Authenticator, agent: Agent,
                tools: ToolRegistry, limits: Limits) -> int:
    """Open the store, the runtime and the server; print ``ready:``; on SIGINT or SIGTERM drain
    and stop (runs get ``--grace`` seconds). A signal while starting (say, a store that does
    not answer) abandons the start."""
    tune_gc()
    log.info("open files limit %d", raise_fd_limit())
    log.info("store %s", describe_store(args.store))
    stop, ready, starting = trio.Event(), trio.Event(), trio.CancelScope()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def watch() -> None:
            async for signum in signals:
                log.info("%s: shutting down (runs get %ss)", signal.Signals(signum).name,
                         args.grace)
                stop.set()
                if not ready.is_set():
                    starting.cancel()
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with starting:
                async with open_journal(args.store) as journal, \
                        open_runtime(journal=journal, agent=agent, tools=tools,
                                     config=RuntimeConfig(shutdown_grace=args.grace)) as rt, \
                        open_server(rt, host=args.host, port=args.port, auth=auth,
                                    limits=limits, metrics_token=args.metrics_token,
                                    metrics_address=args.metrics_address) as server:
                    ready.set()
                    log.info("agent %s", args.agent)
                    print(f"ready: {server.url}", flush=True)
                    if args.made_up:
                        token = mint(DEMO_USER, args.secret, ttl=TOKEN_TTL)
                        print(f"demo token (user {DEMO_USER!r}, 24 h): {token}\n"
                              f"connect:  {server.url}?token={token}", flush=True)
                    await stop.wait()
                    await server.shutdown(args.grace)
            nursery.cancel_scope.cancel()
    log.info("stopped")
    return 0


def run_token(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get("THREADLINE_SECRET", "")
    if not secret:
        raise Refusal("give --secret or THREADLINE_SECRET (the server's)")
    check_secret(secret)
    try:
        print(mint(args.user, secret, ttl=None if args.no_expiry else args.ttl))
    except ValueError as exc:
        raise Refusal(str(exc)) from None
    return 0


# -- one line for what an operator can fix -------------------------------------------------------

LISTEN_ERRORS = {errno.EADDRINUSE: "address already in use",
                 errno.EACCES: "permission denied (ports below 1024 need privileges)",
                 errno.EADDRNOTAVAIL: "no such address on this machine"}


def _listen_problem(exc: OSError) -> str | None:
    # trio.open_tcp_listeners lets bind()'s error out bare, without the address; its frame's
    # locals say which address failed (the main one, or the metrics one).
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_name != "open_tcp_listeners":
        tb = tb.tb_next
    if tb is None:
        return None
    host, number = tb.tb_frame.f_locals.get("host"), tb.tb_frame.f_locals.get("port")
    where = f"[{host}]:{number}" if ":" in str(host) else f"{host}:{number}"
    reason = ("unknown host" if isinstance(exc, socket.gaierror)
              else LISTEN_ERRORS.get(exc.errno or 0, (exc.strerror or str(exc)).lower()))
    return f"cannot listen on {where}: {reason}"


def problem_of(exc: BaseException) -> list[str] | None:
    """One line per failure in ``exc``, however deep in exception groups, if each is one an
    operator can fix; None if any is not (a bug, whose traceback is wanted)."""
    if isinstance(exc, BaseExceptionGroup):
        lines = [problem_of(sub) for sub in exc.exceptions]
        return None if None in lines else list(dict.fromkeys(x for ls in lines for x in ls))
    if isinstance(exc, (Refusal, StoreError, KeyFileError)):
        return [str(exc)]
    line = _listen_problem(exc) if isinstance(exc, OSError) else None
    return None if line is None else [line]


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "serve":
        for option in SERVE_OPTIONS:
            if getattr(args, option.dest) is None:
                try:
                    setattr(args, option.dest, option.from_environment())
                except ValueError as exc:
                    p.error(str(exc))
        # Made up before logging starts, so that the log masks it as it masks a given one.
        args.made_up = not (args.secret or args.jwt_public_key or args.jwks)
        if args.made_up:
            args.secret = secrets.token_urlsafe(32)
        setup_logging(args.log, args.log_format,
                      secrets=[args.secret or "", args.metrics_token or ""])
    else:
        setup_logging("warning")
    try:
        return run_serve(args) if args.command == "serve" else run_token(args)
    except BaseException as exc:
        lines = problem_of(exc)
        for line in lines or ():
            if args.command == "serve":
                log.error("%s", line)  # a log line: masked, and JSON with --log-format json
            else:
                print(f"threadline {args.command}: {line}", file=sys.stderr)
        if lines is not None:
            return 2
        if args.command != "serve" or not isinstance(exc, Exception):
            raise
        log.critical("threadline serve failed", exc_info=exc)  # masked, unlike a raw traceback
        return 1


if __name__ == "__main__":
    sys.exit(main())
