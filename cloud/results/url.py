"""Where the results store lives: the parsed ``results`` setting (``SPLITMQ_RESULTS``).

A SQLite file is a bare path or ``sqlite:///PATH`` (three slashes, then the path:
``sqlite:///results.db`` is relative, ``sqlite:////var/lib/splitmq/results.db``
absolute, as SQLAlchemy spells them); PostgreSQL is a libpq URL,
``postgresql://user[:password]@host[:port]/db`` (``postgres://`` too), handed to
psycopg as it is. ``str()`` never shows a password, so logs and errors may print it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from splitmq.shared.errors import UserError

Backend = Literal["sqlite", "postgresql"]
_SCHEMES: dict[str, Backend] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}
_HINT = "set SPLITMQ_RESULTS or --results to a file path, sqlite:///PATH or postgresql://…"


@dataclass(frozen=True)
class StoreUrl:
    """A results store's address: the backend and its target (a file, or the libpq URL)."""

    backend: Backend
    target: str

    @classmethod
    def parse(cls, text: str) -> StoreUrl:
        """UserError, one line, for anything that is not one of the forms above."""
        text = text.strip()
        if not text:
            raise UserError(f"the results store is an empty string: {_HINT}")
        if "://" not in text:
            return cls("sqlite", str(Path(text).expanduser()))
        scheme = text.split("://", 1)[0].lower()
        backend = _SCHEMES.get(scheme)
        if backend is None:
            raise UserError(
                f"results store URL scheme must be sqlite or postgresql, got {scheme!r}: {_HINT}"
            )
        if backend == "sqlite":
            path = text.split("://", 1)[1]
            if not path.startswith("/") or path == "/":
                raise UserError(
                    f"a SQLite results store is sqlite:///PATH (three slashes), got {text!r}"
                )
            return cls("sqlite", str(Path(path[1:]).expanduser()))
        parts = urlsplit(text)
        try:
            parts.port  # noqa: B018  (parsing it is the check)
        except ValueError:
            raise UserError(f"results store URL has a bad port: {_redact(text)!r}") from None
        if parts.path in ("", "/"):
            raise UserError(
                f"a PostgreSQL results store names its database, e.g. "
                f"postgresql://user@host:5432/splitmq; got {_redact(text)!r}"
            )
        return cls("postgresql", text)

    def __str__(self) -> str:
        """The address without its password (safe for logs)."""
        return self.target if self.backend == "sqlite" else _redact(self.target)

    def __repr__(self) -> str:
        return f"StoreUrl({self})"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()
