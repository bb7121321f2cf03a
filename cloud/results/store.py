"""The results store: answers kept in SQLite (WAL) or PostgreSQL, one API for both.

Opening a store connects and applies the migrations it lacks (``schema``), in one
transaction that holds the store's write lock (SQLite's ``BEGIN IMMEDIATE``, a
PostgreSQL advisory lock): an edge and a cloud worker opening one fresh store at
once both find it migrated once. SQLite runs in WAL mode with a busy timeout, so
several processes can write one file while ``splitmq results`` reads it.

A store is used by one thread at a time: the workers' ``Recorder`` owns one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from splitmq.cloud.results.schema import COLUMNS, JSON_COLUMNS, MIGRATIONS, VERSION_TABLE
from splitmq.cloud.results.url import StoreUrl
from splitmq.shared.errors import UserError

BUSY_TIMEOUT_S = 10.0  # how long a SQLite writer waits for another one's lock
CONNECT_TIMEOUT_S = 5  # PostgreSQL
_MIGRATION_LOCK = 0x73706C69746D71  # "splitmq": the PostgreSQL advisory lock of migrations
_JSON_TYPE = {"sqlite": "TEXT", "postgresql": "JSONB"}


class ResultsStore:
    """An open results store (see module docstring); ``create=False`` opens only an
    existing SQLite file, as a reader should."""

    def __init__(self, url: StoreUrl | str, *, create: bool = True) -> None:
        self.url = url if isinstance(url, StoreUrl) else StoreUrl.parse(url)
        self._pg = self.url.backend == "postgresql"
        if not create and not self._pg and not Path(self.url.target).is_file():
            raise UserError(f"no results store at {self.url}: nothing has been recorded there")
        self._conn: Any = self._connect()
        try:
            self.schema_version = self._migrate()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # --- connecting and migrating ----------------------------------------------------

    def _connect(self) -> Any:
        """A connection in autocommit mode (transactions are explicit), errors as UserError."""
        if self._pg:
            import psycopg

            try:
                return psycopg.connect(
                    self.url.target, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
            except psycopg.Error as exc:
                raise UserError(f"cannot open the results store {self.url}: {_line(exc)}") from exc
        path = Path(self.url.target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            _wal(conn)  # readers never block the writers
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL keeps the file whole on a crash
            return conn
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the results store {self.url}: {_line(exc)}") from exc

    def _migrate(self) -> int:
        """Apply the migrations the store lacks, in order; its schema version."""
        with self._transaction() as cur:
            if self._pg:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(VERSION_TABLE)
            cur.execute("SELECT MAX(version) FROM schema_version")
            current = cur.fetchone()[0] or 0
            if current > len(MIGRATIONS):
                raise UserError(
                    f"the results store {self.url} has schema version {current}, newer than "
                    f"this splitmq knows ({len(MIGRATIONS)}): upgrade splitmq"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    cur.execute(statement.format(json=_JSON_TYPE[self.url.backend]))
                cur.execute(
                    self._q("INSERT INTO schema_version VALUES (?, ?)"), (version, time.time())
                )
        return len(MIGRATIONS)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        if self._pg and self._conn.closed:  # the server went away: try again from scratch
            self._conn = self._connect()
        cur = self._conn.cursor()
        cur.execute("BEGIN" if self._pg else "BEGIN IMMEDIATE")  # SQLite: the write lock now
        try:
            yield cur
        except BaseException:
            with suppress(Exception):
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _q(self, sql: str) -> str:
        """SQL written with ``?`` placeholders, in this backend's style."""
        return sql.replace("?", "%s") if self._pg else sql

    # --- writing and reading ---------------------------------------------------------

    def add(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows (``schema.row``) in one transaction; an answer already kept (the
        same device and request id, answered again after a retry) is left as it was."""
        marks = ", ".join("?" * len(COLUMNS))
        sql = (
            f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES ({marks}) "
            "ON CONFLICT (device, request_id) DO NOTHING"
        )
        try:
            with self._transaction() as cur:
                cur.executemany(self._q(sql), rows)
        except Exception:
            if not (self._pg and self._conn.closed):
                raise
            with self._transaction() as cur:  # the server dropped us (a restart): once more
                cur.executemany(self._q(sql), rows)

    def forget(self, before: float) -> int:
        """Delete the answers given before ``before`` (Unix seconds, the answering tier's
        clock): the store's retention. How many went."""
        with self._transaction() as cur:
            cur.execute(self._q("DELETE FROM results WHERE answered_at < ?"), (before,))
            return int(cur.rowcount)

    def query(
        self,
        *,
        device: str | None = None,
        model: str | None = None,
        version: int | None = None,
        tier: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The newest answers first, each a dict of ``COLUMNS`` (JSON columns decoded);
        ``since`` in Unix seconds, compared with the answering worker's clock."""
        where: list[str] = []
        params: list[object] = []
        equal = (("device", device), ("model", model), ("version", version), ("tier", tier))
        for column, value in equal:
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("answered_at >= ?")
            params.append(since)
        sql = f"SELECT {', '.join(COLUMNS)} FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY answered_at DESC LIMIT ?"
        cur = self._conn.execute(self._q(sql), (*params, limit))
        return [_decoded(dict(zip(COLUMNS, values))) for values in cur.fetchall()]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """JSON columns as values: SQLite hands back their text, psycopg already decoded JSONB."""
    for column in JSON_COLUMNS:
        if isinstance(row[column], str):
            row[column] = json.loads(row[column])
    return row


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _wal(conn: sqlite3.Connection) -> None:
    """Switch a store to WAL. The switch takes the file's exclusive lock, and SQLite
    answers "database is locked" at once, not after its busy timeout, to one of two
    processes opening a fresh store together (an edge and a cloud worker): that one
    tries again, until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
