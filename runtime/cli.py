"""The ``threadline`` command: ``serve`` and ``token``.

Every option also comes from the environment (``THREADLINE_HOST``, ``THREADLINE_PORT``,
``THREADLINE_STORE``, ``THREADLINE_SECRET``, ``THREADLINE_AGENT``, ``THREADLINE_GRACE``,
``THREADLINE_LOG``); a flag wins over the environment.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import signal
import sys
from typing import Any, Sequence

import attrs
import trio

from actors.agents import echo_agent, echo_tools
from actors.engine import Agent, ToolRegistry
from transport.auth import mint
from transport.limits import Limits

from .api import RuntimeConfig, open_runtime
from .server import open_server
from .stores import DEFAULT_STORE, SchemaTooNew, StoreURLError, describe_store, open_journal
from .tuning import raise_fd_limit, tune_gc

log = logging.getLogger("threadline")

DEMO_USER = "demo"


def env(name: str, default: Any) -> Any:
    return os.environ.get(f"THREADLINE_{name}", default)


def load_agent(spec: str) -> tuple[Agent, ToolRegistry]:
    """``echo``, or ``module:callable``. The callable is the agent; a module attribute
    ``TOOLS`` (a ``ToolRegistry``) gives its tools."""
    if spec == "echo":
        return echo_agent, echo_tools()
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise SystemExit(f"--agent must be echo or module:callable, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
        agent = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load agent {spec!r}: {exc}") from None
    tools = getattr(module, "TOOLS", None)
    return agent, tools if isinstance(tools, ToolRegistry) else ToolRegistry()


def parse_limits(items: Sequence[str]) -> Limits:
    """``NAME=VALUE`` pairs over the defaults of ``Limits``; ``none`` for an optional one."""
    fields = {f.name: f for f in attrs.fields(Limits)}
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--limit {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(fields)}")
        kind = type(fields[name].default)
        try:
            changes[name] = None if value.lower() == "none" else kind(float(value)) \
                if kind is int else float(value)
        except ValueError:
            raise SystemExit(f"--limit {item!r}: {value!r} is not a number") from None
    return attrs.evolve(Limits(), **changes)


async def serve(args: argparse.Namespace) -> int:
    secret = args.secret
    if not secret:
        secret = secrets.token_urlsafe(32)
        log.warning("no --secret or THREADLINE_SECRET: made one for this run only; tokens "
                    "will not survive a restart")
    agent, tools = load_agent(args.agent)
    limits = parse_limits(args.limit)
    config = RuntimeConfig(shutdown_grace=args.grace)
    tune_gc()
    log.info("open files limit %d", raise_fd_limit())
    log.info("store %s", describe_store(args.store))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_journal(args.store) as journal, \
                open_runtime(journal=journal, agent=agent, tools=tools, config=config) as rt:
            async with open_server(rt, host=args.host, port=args.port, secret=secret,
                                   limits=limits) as server:
                log.info("agent %s", args.agent)
                if not args.secret:
                    token = mint(DEMO_USER, secret, ttl=24 * 3600)
                    print(f"ready: {server.url}\n"
                          f"demo token (user {DEMO_USER!r}, 24 h): {token}\n"
                          f"connect:  {server.url}?token={token}", flush=True)
                else:
                    print(f"ready: {server.url}", flush=True)
                async for signum in signals:
                    log.info("%s: shutting down (runs get %ss)", signal.Signals(signum).name,
                             args.grace)
                    break
                await server.shutdown(args.grace)
    log.info("stopped")
    return 0


def token(args: argparse.Namespace) -> int:
    if not args.secret:
        print("threadline token: give --secret or THREADLINE_SECRET (the server's)",
              file=sys.stderr)
        return 2
    try:
        print(mint(args.user, args.secret, ttl=args.ttl))
    except ValueError as exc:
        print(f"threadline token: {exc}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threadline", description="An actor runtime on trio for "
                                "multi-user AI chat backends.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the WebSocket server")
    s.add_argument("--host", default=env("HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(env("PORT", 8765)), help="0: any free port")
    s.add_argument("--store", default=env("STORE", DEFAULT_STORE),
                   help="sqlite:///PATH (default: ./threadline.db), postgresql://..., or memory")
    s.add_argument("--secret", default=env("SECRET", ""), help="HS256 secret for tokens")
    s.add_argument("--agent", default=env("AGENT", "echo"), help="echo or module:callable")
    s.add_argument("--grace", type=float, default=float(env("GRACE", 5.0)),
                   help="seconds active runs get on shutdown")
    s.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="a connection limit, e.g. rate=500 or outgoing_queue=2000 (repeatable; "
                        f"names: {', '.join(f.name for f in attrs.fields(Limits))})")
    s.add_argument("--log", default=env("LOG", "info"), help="log level")
    s.set_defaults(func=lambda a: trio.run(serve, a))
    t = sub.add_parser("token", help="print a token for a user")
    t.add_argument("user")
    t.add_argument("--secret", default=env("SECRET", ""))
    t.add_argument("--ttl", type=float, default=None, help="seconds; default: no expiry")
    t.set_defaults(func=token, log="warning")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log.lower() != "debug":
        logging.getLogger("threadline.wire").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except BaseException as exc:
        problem = _store_problem(exc)
        if problem is None:
            raise
        log.error("%s", problem)
        return 2


def _store_problem(exc: BaseException) -> BaseException | None:
    """A store that cannot be used (a URL naming no store, a newer schema), however deep in
    trio's exception groups: said in one line, not a traceback."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, (SchemaTooNew, StoreURLError)) else None


if __name__ == "__main__":
    sys.exit(main())
