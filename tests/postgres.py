"""A real PostgreSQL for the tests: Debian's server, one per session, in a temp directory.

``initdb`` and ``pg_ctl`` run as the ``postgres`` user when the tests run as root
(PostgreSQL refuses root), on a free port of 127.0.0.1 with trust authentication,
the socket in the temp directory, fsync off; the server stops when the session
ends. Each test takes a fresh database (``Postgres.new_database``). Debian keeps
the binaries off PATH (/usr/lib/postgresql/VERSION/bin); `make postgresql`
installs the server where it is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest


@dataclass(frozen=True)
class Postgres:
    """A running server: its port, and fresh databases on demand."""

    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database no other test uses."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _bindir() -> Path:
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        pytest.fail(
            "PostgreSQL is missing (/usr/lib/postgresql/*/bin): make postgresql installs it"
        )
    newest = max(found, key=lambda path: int(Path(path).parts[-3]))
    return Path(newest).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the whole session (see module docstring)."""
    bindir = _bindir()
    # Not under pytest's tmp_path: its parents are private to root, and the server is not root.
    root = Path(tempfile.mkdtemp(prefix="splitmq-postgres-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=60)
        if done.returncode:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            pytest.fail(f"{args[0]} failed: {done.stdout}{done.stderr}{log}"[-2000:])

    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-N")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options,
            "-w", "-t", "30", "start")  # fmt: skip
        yield Postgres(port)
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
