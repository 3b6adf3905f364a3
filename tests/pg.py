"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, a free loopback
port, run as an unprivileged user (PostgreSQL refuses to run as root). Never skipped: without
PostgreSQL the tests fail and say how to get it (``bash tests/run.sh`` installs it)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

PG_USER = os.environ.get("THREADLINE_PG_OS_USER", "postgres")  # the Debian package's user


def bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if not found and shutil.which("initdb"):
        found = [shutil.which("initdb")]
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found (initdb). Run the tests with "
                           "`bash tests/run.sh`, which installs them (apt-get install postgresql).")
    return Path(found[0]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, *, fsync: bool = False) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="threadline-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.fsync = fsync
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                entry = pwd.getpwnam(PG_USER)
            except KeyError:
                raise RuntimeError(f"running as root, PostgreSQL needs an unprivileged user: "
                                   f"no user {PG_USER!r} (set THREADLINE_PG_OS_USER)") from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.dsn = f"postgresql://threadline@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}{log[-2000:]}")

    def init(self) -> "Cluster":
        self._run("initdb", "-D", str(self.data), "-U", "threadline", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        return self.start()

    def start(self) -> "Cluster":
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def reset(self) -> str:
        """Empty the database; its DSN."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self.dsn

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
