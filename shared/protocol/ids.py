"""The naming rules every part of splitmq checks against: one definition each.

Ids (devices, workers, requests, roles) become topic levels and file names,
so they may never contain ``/``, ``+``, ``#`` or a newline; model names also
become pool folders, so they may not start with ``.`` (no ``..``). Callers
raise their own error class (``UserError`` for flags, ``WireError`` for
messages, ``PoolError`` for the pool) with the rule's text.
"""

from __future__ import annotations

import re
from typing import Literal, TypeGuard, get_args

Tier = Literal["edge", "cloud"]
#: The tiers a request can be routed to; the device is where a request starts.
TIERS: tuple[Tier, ...] = get_args(Tier)

MAX_CUT = 999_999
MAX_VERSION = 2**31 - 1

ID_RULE = "1..64 characters of A-Z a-z 0-9 _ -"
MODEL_RULE = "1..64 characters of A-Z a-z 0-9 _ - . starting with a letter or digit"
CUT_RULE = f"an integer 0..{MAX_CUT} (0 = model input)"

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A model (or family) name, as a pydantic pattern.
MODEL_PATTERN = f"^{_MODEL.pattern}$"
_CUT_TEXT = re.compile(r"0|[1-9][0-9]{0,5}")  # canonical: "07" would not round-trip


def is_id(value: object) -> bool:
    """A device, worker, request or role id (``fullmatch``: no trailing newline slips in)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def is_model_name(value: object) -> bool:
    return isinstance(value, str) and _MODEL.fullmatch(value) is not None


def is_cut(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_CUT


def is_cut_text(value: str) -> bool:
    """A cut as a topic level: canonical decimal, so it round-trips."""
    return _CUT_TEXT.fullmatch(value) is not None


def is_tier(value: object) -> TypeGuard[Tier]:
    return isinstance(value, str) and value in TIERS
