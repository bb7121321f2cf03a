"""The base of every typed JSON document: frozen, strict about fields, versioned.

Telemetry, plans, profiles and calibration tables are read by other processes
(often another version of splitmq, or a person with ``mosquitto_pub``), so each
is validated when it is received and carries ``"v"``: a reader refuses a
version it does not know rather than guessing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from splitmq.shared.errors import WireError

DOCUMENT_VERSION: Final = 1


class Frozen(BaseModel):
    """A record that rejects unknown fields and never changes once parsed."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Document(Frozen):
    """A versioned document; ``parse`` turns any bad input into one ``WireError``."""

    v: Literal[1] = DOCUMENT_VERSION
    #: Fields added after v1 shipped: left out while None, so a reader that predates
    #: them (every document refuses unknown fields) still reads what a newer writer sends.
    LATER: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def parse(cls, data: bytes | str | Mapping[str, object], where: str = "document") -> Self:
        """Validate JSON bytes, text or an already-decoded mapping; errors name the field."""
        try:
            raw = json.loads(data) if isinstance(data, bytes | str) else data
        except (ValueError, UnicodeDecodeError) as exc:
            raise WireError(f"{where}: not JSON ({exc})") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise WireError(f"{where}: {describe(exc)}") from None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude=self.unset_later()).encode()

    def unset_later(self) -> dict[str, Any]:
        """What ``to_json`` leaves out (pydantic's ``exclude``)."""
        return {name: True for name in self.LATER if getattr(self, name) is None}


def describe(exc: ValidationError) -> str:
    """The first problem of a pydantic error as ``field.path: message`` (one line)."""
    first = exc.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(document)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {first['msg']}{more}"
