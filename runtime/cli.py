"""The ``threadline`` command: ``serve``, ``token``, ``delete-user`` and ``--version``.

The options (each from a flag or a ``THREADLINE_*`` variable, a flag winning) are declared in
``threadline.options``; this module checks them, runs the commands (what ``serve`` runs once
started is ``threadline.serving``) and says what went wrong. What an operator can
fix (a port in use, a store that cannot be opened, an unreadable key file, a short secret, a bad
value) is said in one line with exit status 2, never as a traceback: tracebacks are for bugs. Logs
go to stderr through ``threadline.logs``, which masks every token and password; stdout has only the
``ready:`` line (and, when the server made up its secret, a demo token, on purpose; with
``--demo``, the ``open:`` address of the chat page, after them).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import secrets
import socket
import sys
from typing import Sequence
from urllib.parse import urlsplit

import attrs
import trio

from threadline.actors.agents import echo_agent, echo_tools
from threadline.actors.engine import Agent
from threadline.actors.messages import is_user_id
from threadline.actors.tools import ToolRegistry
from threadline.transport.auth import MIN_SECRET_BYTES, Authenticator, KeyFileError, mint
from threadline.transport.limits import Limits

from .logs import mask, setup_logging
from .options import SERVE_OPTIONS, fill_from_environment, parser
from .serving import serve
from .stores import DEFAULT_STORE, StoreError, StoreInUse, describe_store, open_journal

# SERVE_OPTIONS is re-exported: tests and tools read the option table from here.
__all__ = ["SERVE_OPTIONS", "Refusal", "main", "problem_of", "load_agent", "check_secret"]

log = logging.getLogger("threadline")


class Refusal(Exception):
    """A setting or an environment the server cannot start with: one line, exit status 2."""


# -- the commands -------------------------------------------------------------------------------

def check_secret(secret: str) -> None:
    if (size := len(secret.encode())) < MIN_SECRET_BYTES:
        raise Refusal(f"the secret is {size} bytes; HS256 needs at least {MIN_SECRET_BYTES} "
                      "(RFC 7518 §3.2: a key at least as long as the hash output, 256 bits)")


def load_agent(spec: str, model: str | None = None,
               system_prompt: str | None = None) -> tuple[Agent, ToolRegistry]:
    """``echo``; ``openai`` (``threadline.agents.openai``, offered the echo agent's calculator
    as a tool); or ``module:callable``: the callable is the agent, a module attribute ``TOOLS``
    (a ``ToolRegistry``) gives its tools. The current directory is searched too, as by
    ``python -m``: the installed ``threadline`` script does not put it on ``sys.path``."""
    if spec == "echo":
        return echo_agent, echo_tools()
    if spec == "openai":
        return load_openai_agent(model, system_prompt), echo_tools()
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


def load_openai_agent(model: str | None, system_prompt: str | None) -> Agent:
    """``model`` and ``system_prompt`` come from the flags or ``THREADLINE_*`` (``options``);
    the SDK reads ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` itself."""
    if not model:
        raise Refusal("--agent openai needs a model: --model NAME or THREADLINE_MODEL")
    try:
        from threadline.agents.openai import OpenAIAgent, OpenAIConfig
    except ImportError:
        raise Refusal("--agent openai needs the openai package: pip install "
                      "'threadline[openai]'") from None
    if not os.environ.get("OPENAI_API_KEY"):
        raise Refusal("--agent openai needs OPENAI_API_KEY (any value for an endpoint that "
                      "takes no key; OPENAI_BASE_URL names the endpoint)")
    return OpenAIAgent(OpenAIConfig(model, system_prompt))


def run_serve(args: argparse.Namespace) -> int:
    if args.cluster and urlsplit(args.store).scheme not in ("postgresql", "postgres"):
        raise Refusal(f"--cluster needs a PostgreSQL store (--store postgresql://...), not "
                      f"{describe_store(args.store)}")
    if args.cluster and args.peer_address[0] in ("0.0.0.0", "::", "") and \
            not args.peer_advertise:
        raise Refusal("--peer-address on every interface needs --peer-advertise HOST:PORT, "
                      "the address the other nodes reach this one at")
    if args.made_up and args.cluster:
        from threadline.cluster.admission import shared_token_secret

        args.secret = shared_token_secret(args.store)
        mask(args.secret)
        log.warning("no --secret or THREADLINE_SECRET: using the cluster's own, made up by its "
                    "first node and kept in the store, so that every node takes the same tokens")
    elif args.made_up:
        log.warning("no --secret or THREADLINE_SECRET: made one for this run only; tokens "
                    "will not survive a restart")
    if args.secret:
        check_secret(args.secret)
    try:
        auth = Authenticator(secret=args.secret, public_key_file=args.jwt_public_key,
                             jwks_file=args.jwks, leeway=args.token_leeway,
                             allowed_origins=args.allow_origin)
        limits = attrs.evolve(Limits(), **dict(args.limit or []))
    except (KeyFileError, ValueError, TypeError) as exc:
        raise Refusal(str(exc)) from None
    agent, tools = load_agent(args.agent, args.model, args.system_prompt)
    if args.otel:
        try:
            importlib.import_module("threadline.otel")
        except ImportError:
            raise Refusal("--otel needs the OpenTelemetry packages: pip install "
                          "'threadline[otel]'") from None
    admit(args)
    return trio.run(serve, args, auth, agent, tools, limits)


def admit(args: argparse.Namespace) -> None:
    """A cluster node: its id free and its tokens checked as the live nodes check them. A
    server without ``--cluster`` on PostgreSQL: no live node on that store (``admission``)."""
    if args.cluster:
        from threadline.cluster.admission import auth_fingerprint, check_node
        from threadline.cluster.config import made_up_node_id

        args.node_id = args.node_id or made_up_node_id()
        check_node(args.store, args.node_id, args.lease_ttl,
                   auth_fingerprint(args.secret, args.jwt_public_key, args.jwks))
    elif urlsplit(args.store).scheme in ("postgresql", "postgres"):
        from threadline.cluster.admission import check_standalone

        check_standalone(args.store)


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


def run_delete_user(args: argparse.Namespace) -> int:
    """Erase every thread of ``args.user`` from the store, straight through the journal (no
    runtime: no recovery of other users' runs). A store a server uses is refused (its SQLite
    file is locked; a live cluster on PostgreSQL is checked): the server keeps a cache of its
    threads, so delete through it instead (HTTP ``DELETE``, ``Runtime.delete_user``)."""
    if not is_user_id(args.user):
        raise Refusal(f"invalid user id {args.user!r}: 1-128 characters of "
                      "A-Z a-z 0-9 _ . : @ -")
    url = args.store or os.environ.get("THREADLINE_STORE") or DEFAULT_STORE
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if path and not os.path.exists(path):  # a typo would make an empty store and say "0"
            raise Refusal(f"no SQLite store at {os.path.abspath(path)}: nothing deleted "
                          "(check --store or THREADLINE_STORE; the default is threadline.db "
                          "in the current folder)")
    if urlsplit(url).scheme in ("postgresql", "postgres"):
        from threadline.cluster.admission import ClusterRefusal, check_standalone

        try:
            check_standalone(url)  # live cluster nodes would go on writing the deleted threads
        except ClusterRefusal as exc:
            raise Refusal(f"{str(exc).split(':', 1)[0]}: stop every node first, or delete the "
                          "user's threads through a node's HTTP API (DELETE "
                          "/v1/threads/THREAD_ID with the user's token)") from None

    async def delete() -> int:
        async with open_journal(url) as journal:
            infos = await journal.threads(args.user)
            async with trio.open_nursery() as nursery:  # one transaction for many, batched
                for info in infos:
                    nursery.start_soon(journal.delete_thread, info.key)
            await journal.delete_user_attachments(args.user)  # those never sent too
            await journal.delete_user_usage(args.user)
            return len(infos)

    try:
        count = trio.run(delete)
    except StoreInUse as exc:
        raise Refusal(f"{exc}. A running server deletes a user's threads itself: DELETE "
                      "/v1/threads/THREAD_ID over its HTTP API with the user's token, or "
                      "Runtime.delete_user in a program that embeds it") from None
    print(f"deleted {count} thread{'' if count == 1 else 's'} of user {args.user}")
    return 0


COMMANDS = {"serve": run_serve, "token": run_token, "delete-user": run_delete_user}


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
        if any(ls is None for ls in lines):
            return None
        return list(dict.fromkeys(x for ls in lines if ls is not None for x in ls))
    if isinstance(exc, (Refusal, StoreError, KeyFileError)):
        return [str(exc)]
    line = _listen_problem(exc) if isinstance(exc, OSError) else None
    return None if line is None else [line]


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "serve":
        fill_from_environment(p, args)
        # Made up before logging starts, so that the log masks it as it masks a given one.
        args.made_up = not (args.secret or args.jwt_public_key or args.jwks)
        if args.made_up:
            args.secret = secrets.token_urlsafe(32)
        setup_logging(args.log, args.log_format,
                      secrets=[args.secret or "", args.metrics_token or "",
                               os.environ.get("OPENAI_API_KEY", "")])
    else:
        setup_logging("warning")
    try:
        return COMMANDS[args.command](args)
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
