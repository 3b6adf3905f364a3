"""What an operator gets wrong is one line and a non-zero exit, never a traceback: the real
``threadline`` command as a subprocess, real sockets on loopback, real store files."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from threadline.cli import problem_of
from threadline.stores import StoreError
from tests.servers import ROOT, SECRET


def cli(*args: str, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    return subprocess.run([sys.executable, "-m", "threadline", *args], cwd=cwd,
                          env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def refused(out: subprocess.CompletedProcess[str], says: str) -> str:
    """The one line that says ``says``; exit status 2, no traceback, no other error line."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and "Error:" not in out.stderr.replace(says, ""), \
        out.stderr
    lines = [line for line in out.stderr.splitlines() if says in line]
    errors = [line for line in out.stderr.splitlines() if " ERROR " in line or
              line.startswith("threadline")]
    assert len(lines) == 1 and errors == lines, out.stderr
    return lines[0]


def serve(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT):
    return cli("serve", "--store", "memory", "--port", "0", *args,
               env={"THREADLINE_SECRET": SECRET, **(env or {})}, cwd=cwd)


# -- listening -----------------------------------------------------------------------------------

@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line(busy_port):
    out = serve("--port", str(busy_port))
    refused(out, f"threadline: cannot listen on 127.0.0.1:{busy_port}: address already in use")


def test_a_metrics_address_in_use_is_one_line(busy_port):
    out = serve("--metrics-address", f"127.0.0.1:{busy_port}")
    refused(out, f"cannot listen on 127.0.0.1:{busy_port}: address already in use")


@pytest.mark.skipif(Path("/proc/sys/net/ipv4/ip_nonlocal_bind").exists() and
                    Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0",
                    reason="this machine lets a socket bind any address")
def test_an_address_not_on_this_machine_is_one_line():
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): bind() fails at once, nothing is sent anywhere.
    refused(serve("--host", "192.0.2.1"), "cannot listen on 192.0.2.1:0: no such address")


async def test_problem_of_walks_exception_groups(busy_port):
    try:
        await trio.open_tcp_listeners(busy_port, host="127.0.0.1")
    except OSError as exc:
        bind_error = exc
    assert bind_error.errno == errno.EADDRINUSE
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [bind_error]),
                                      StoreError("SQLite x.db: not a SQLite database")])
    assert problem_of(nested) == [
        f"cannot listen on 127.0.0.1:{busy_port}: address already in use",
        "SQLite x.db: not a SQLite database"]
    # A bug beside them keeps its traceback; an OSError from elsewhere is not a listen problem.
    assert problem_of(ExceptionGroup("g", [bind_error, KeyError("x")])) is None
    assert problem_of(OSError(errno.EADDRINUSE, "in use")) is None


# -- stores --------------------------------------------------------------------------------------

def test_a_broken_sqlite_file_is_one_line(tmp_path):
    (tmp_path / "broken.db").write_bytes(b"this is not a database\n" * 100)
    out = serve("--store", "sqlite:///broken.db", cwd=tmp_path)
    refused(out, "SQLite broken.db: not a SQLite database")


def test_an_unreachable_postgresql_is_one_line_without_its_password():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = serve("--store", f"postgresql://ada:pw-never-logged@127.0.0.1:{port}/db")
    line = refused(out, f"PostgreSQL 127.0.0.1:{port}/db: unreachable")
    assert "pw-never-logged" not in out.stderr + out.stdout, line


# -- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, env, says", [
    (["--log", "foo"], {}, "argument --log: 'foo': not a log level"),
    ([], {"THREADLINE_LOG": "foo"}, "THREADLINE_LOG: not a log level"),
    (["--log-format", "xml"], {}, "argument --log-format: 'xml': not a log format"),
    ([], {"THREADLINE_LOG_FORMAT": "xml"}, "THREADLINE_LOG_FORMAT: not a log format"),
    (["--port", "70000"], {}, "argument --port: '70000': a port is 0-65535"),
    ([], {"THREADLINE_GRACE": "soon"}, "THREADLINE_GRACE: a number of seconds >= 0"),
    (["--grace", "-1"], {}, "argument --grace: '-1': a number of seconds >= 0"),
    (["--token-leeway", "nan"], {}, "argument --token-leeway: 'nan': a number of seconds"),
    (["--metrics-address", "9100"], {}, "argument --metrics-address: '9100': HOST:PORT"),
    (["--allow-origin", "http://x/p"], {}, "an origin is scheme://host[:port]"),
    ([], {"THREADLINE_ALLOW_ORIGIN": "https://a.example, ftp:x"}, "THREADLINE_ALLOW_ORIGIN:"),
    (["--limit", "rate=abc"], {}, "rate must be a number > 0"),
    (["--limit", "rate=-1"], {}, "rate must be a number > 0"),
    (["--limit", "rate=inf"], {}, "rate must be a number > 0"),
    (["--limit", "max_threads=1.5"], {}, "max_threads must be a whole number > 0"),
    (["--limit", "max_threads=none"], {}, "max_threads must be a whole number > 0"),
    (["--limit", "nope=1"], {}, "NAME=VALUE with NAME one of max_frame_bytes"),
    (["--limit", "rate"], {}, "NAME=VALUE with NAME one of"),
    ([], {"THREADLINE_LIMIT": "rate=5,burst=x"}, "THREADLINE_LIMIT: burst must be"),
])
def test_a_bad_setting_is_one_line(args, env, says):
    refused(serve(*args, env=env), says)


def test_a_flag_wins_over_the_environment():
    out = serve("--log", "info", "--store", "mongo://x", env={"THREADLINE_LOG": "foo"})
    refused(out, "unknown store 'mongo://x'")
    out = cli("serve", "--store", "memory", env={"THREADLINE_PORT": "http"})
    refused(out, "THREADLINE_PORT: a port is 0-65535")


@pytest.mark.parametrize("command", [["serve", "--store", "memory", "--port", "0"],
                                     ["token", "ada"]])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_secret_shorter_than_32_bytes_is_refused(command, how):
    short = "only-31-bytes-long-secret-12345"
    assert len(short) == 31
    args, env = (["--secret", short], {}) if how == "flag" else ([], {"THREADLINE_SECRET": short})
    out = cli(*command, *args, env=env)
    line = refused(out, "the secret is 31 bytes; HS256 needs at least 32 (RFC 7518 §3.2")
    assert short not in out.stderr + out.stdout, line


@pytest.mark.parametrize("ttl", ["0", "-5", "nan", "inf", "soon"])
def test_a_token_ttl_that_is_not_positive_is_refused(ttl):
    refused(cli("token", "ada", "--secret", SECRET, "--ttl", ttl),
            f"argument --ttl: '{ttl}': a number of seconds > 0")


def test_unreadable_key_files_are_one_line(tmp_path):
    refused(serve("--jwt-public-key", str(tmp_path / "missing.pem")),
            f"cannot read key file {tmp_path / 'missing.pem'}: No such file or directory")
    (tmp_path / "garbage.pem").write_text("not a key")
    refused(serve("--jwt-public-key", str(tmp_path / "garbage.pem")),
            "not a PEM public key or certificate")
    (tmp_path / "jwks.json").write_text('{"keys": "nope"}')
    refused(serve("--jwks", str(tmp_path / "jwks.json")), "not a JWKS")


def test_an_agent_that_cannot_load_is_one_line(tmp_path):
    (tmp_path / "broken_agent.py").write_text("raise RuntimeError('no model configured')\n")
    (tmp_path / "not_callable.py").write_text("agent = 42\n")
    refused(serve("--agent", "broken_agent:agent", cwd=tmp_path),
            "cannot load agent 'broken_agent:agent': RuntimeError: no model configured")
    refused(serve("--agent", "not_callable:agent", cwd=tmp_path),
            "cannot load agent 'not_callable:agent': agent is not callable")
    refused(serve("--agent", "justamodule", cwd=tmp_path),
            "--agent must be echo or module:callable, not 'justamodule'")


# -- the openai agent ----------------------------------------------------------------------------

def test_the_openai_agent_without_a_model_is_one_line():
    out = serve("--agent", "openai", env={"OPENAI_API_KEY": "sk-x"})
    refused(out, "threadline: --agent openai needs a model: --model NAME or THREADLINE_MODEL")


def test_the_openai_agent_without_an_api_key_is_one_line():
    clean = {k: "" for k in ("OPENAI_API_KEY",)}
    out = serve("--agent", "openai", "--model", "m", env=clean)
    refused(out, "threadline: --agent openai needs OPENAI_API_KEY")


def test_the_openai_agent_without_the_openai_package_says_how_to_install_it(tmp_path):
    # A module named openai that cannot be imported, first on the path: as if it were missing.
    (tmp_path / "openai.py").write_text("raise ImportError('No module named openai')\n")
    out = serve("--agent", "openai", "--model", "m",
                env={"OPENAI_API_KEY": "sk-x", "PYTHONPATH": str(tmp_path)})
    refused(out, "threadline: --agent openai needs the openai package: pip install "
                 "'threadline[openai]'")
