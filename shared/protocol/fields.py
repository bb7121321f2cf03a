"""Field checks shared by the wire documents: each raises ``WireError("<field>: <problem>")``.

Private to ``splitmq.shared.protocol``: the request (``wire``) and the
result/error documents (``results``) validate with the same rules.
"""

from __future__ import annotations

import math
from dataclasses import fields
from functools import cache
from typing import Any

from splitmq.shared.errors import CodecError, WireError
from splitmq.shared.protocol.ids import ID_RULE, MODEL_RULE, TIERS, is_id, is_model_name

TIMES = (0.0, 1e11)  # unix seconds: anything outside is a bug, not a clock


def ident(field: str, value: object) -> str:
    """A device, worker or request id."""
    if not is_id(value):
        raise WireError(f"{field}: {value!r} is not {ID_RULE}")
    assert isinstance(value, str)
    return value


def model_name(field: str, value: object) -> str:
    if not is_model_name(value):
        raise WireError(f"{field}: {value!r} is not {MODEL_RULE}")
    assert isinstance(value, str)
    return value


def type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def integer(field: str, value: object, lo: int, hi: int) -> int:
    if type(value) is int and lo <= value <= hi:  # the common case first: checked per field
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{field}: expected an int, got {type_name(value)}")
    if not lo <= value <= hi:
        raise WireError(f"{field}: {value} is outside {lo}..{hi}")
    return value


def number(field: str, value: object, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite float within [lo, hi]; ints are accepted, as C clients may send them."""
    if type(value) is float and lo <= value <= hi and value - value == 0.0:  # finite
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{field}: expected a float, got {type_name(value)}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise WireError(f"{field}: {value!r} is not a finite number in [{lo:g}, {hi:g}]")
    return float(value)


def free_text(field: str, value: object, max_len: int) -> str:
    """Human text (labels, messages): any characters that UTF-8 can carry."""
    if type(value) is str and 1 <= len(value) <= max_len and value.isascii():
        return value
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise WireError(f"{field}: expected a string of 1..{max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"{field}: not encodable as UTF-8 ({exc.reason})") from exc
    return value


def tier_field(field: str, value: object, tiers: tuple[str, ...] = TIERS) -> str:
    if not isinstance(value, str) or value not in tiers:
        raise WireError(f"{field}: {value!r} is not one of {', '.join(tiers)}")
    return value


def normalise_times(record: object, names: tuple[str, ...]) -> None:
    """Check unix-time fields and store them as floats (frozen dataclass, so via object)."""
    for name in names:
        object.__setattr__(record, name, number(name, getattr(record, name), *TIMES))


def prefixed(exc: WireError | CodecError, path: str) -> WireError | CodecError:
    """``exc`` again, naming the field it is about from ``path`` on."""
    return type(exc)(f"{path}.{exc}")


@cache
def names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names: the keys of its map on the wire, in packing order
    (cached: every item of every message asks)."""
    return tuple(field.name for field in fields(cls))


def as_map(value: object, keys: tuple[str, ...]) -> dict[str, Any]:
    """The map a dataclass packs to, keys in the spec's order."""
    return {key: getattr(value, key) for key in keys}


def unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack/JSON would keep the last of duplicate keys; two readers could disagree."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise WireError("payload: a map has duplicate keys")
    return doc


def exact_map(
    value: object, path: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A map with exactly ``keys`` (those in ``optional`` may be left out): missing and
    unknown fields are both errors."""
    if not isinstance(value, dict):
        raise WireError(f"{path}: expected a map, got {type_name(value)}")
    if len(value) == len(keys) and not value.keys() - keys:
        return value  # the common case, checked at C speed
    missing = [key for key in keys if key not in value and key not in optional]
    if missing:
        raise WireError(f"{path}: missing field {missing[0]!r}")
    unknown = [key for key in value if key not in keys]
    if unknown:
        raise WireError(f"{path}: unknown field {unknown[0]!r}")
    return value


def array(value: object, path: str, lo: int, hi: int) -> list[Any]:
    if not isinstance(value, list):
        raise WireError(f"{path}: expected an array, got {type_name(value)}")
    if not lo <= len(value) <= hi:
        raise WireError(f"{path}: {len(value)} items, expected {lo}..{hi}")
    return value
