"""What every codec module shares: the codec protocol, the dtype table and param checks.

Kept apart from ``codecs`` so the codec implementations can import it without a
cycle; users import ``splitmq.shared.codecs.core`` only.
"""

import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from splitmq.shared.errors import CodecError

ParamValue = int | float | str | bytes
Params = dict[str, ParamValue]

#: Every dtype a tensor may declare, mapped to its little-endian wire dtype.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64")
}
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
MAX_RANK = 8
#: Fits a signed 32-bit count, so C clients can use ``int32_t`` for element counts.
MAX_ELEMENTS = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The smallest normal float32: quantisation steps below it lose all precision.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


class Codec(Protocol):
    """One codec; ``codecs.encode``/``decode`` validate the tensor before calling it."""

    lossless: bool
    dtypes: frozenset[str]
    summary: str

    def encode(
        self, x: np.ndarray, level: int | None, params: Mapping[str, object]
    ) -> tuple[Params, bytes]:
        """Encode a C-contiguous array of an allowed dtype; ``level`` is N in ``name:N``."""
        ...

    def check(self, dtype: str, shape: tuple[int, ...], params: Params) -> int | None:
        """Validate shape and params; return the exact data length, None when it varies."""
        ...

    def decode(self, data: bytes, dtype: str, shape: tuple[int, ...], params: Params) -> np.ndarray:
        """Decode data already checked by ``check``; return a new native-order array."""
        ...


def num_elements(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def channels(shape: tuple[int, ...]) -> int:
    """Channel count of a per-channel codec: axis 1, so the tensor needs rank >= 2."""
    if len(shape) < 2:
        raise CodecError(f"shape: per-channel codecs need rank >= 2, got {list(shape)}")
    return shape[1]


def expect_keys(params: Mapping[str, object], keys: frozenset[str], codec: str) -> None:
    """Reject missing and unknown keys, so typos in calibration params never pass silently."""
    missing = sorted(keys - params.keys())
    extra = sorted(str(key) for key in params.keys() - keys)
    if missing:
        raise CodecError(f"params: codec {codec} needs {missing}, missing")
    if extra:
        raise CodecError(f"params: codec {codec} takes only {sorted(keys)}, got unknown {extra}")


def float_param(params: Mapping[str, object], key: str) -> float:
    """A per-tensor float param: int or float, finite as a float32."""
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"params.{key}: expected a number, got {type(value).__name__}")
    if not abs(value) <= FLOAT32_MAX:
        raise CodecError(f"params.{key}: {value!r} is not a finite float32")
    return float(value)


def int_param(params: Mapping[str, object], key: str, lo: int, hi: int) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"params.{key}: expected an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise CodecError(f"params.{key}: {value} is outside [{lo}, {hi}]")
    return value


def array_param(params: Mapping[str, object], key: str, dtype: str, count: int) -> np.ndarray:
    """A per-channel param: ``count`` little-endian values packed in a bin string."""
    value = params[key]
    wire = DTYPES[dtype]
    if not isinstance(value, bytes):
        raise CodecError(
            f"params.{key}: expected bin ({count} x {dtype}), got {type(value).__name__}"
        )
    if len(value) != count * wire.itemsize:
        raise CodecError(
            f"params.{key}: expected {count * wire.itemsize} bytes ({count} x {dtype}), "
            f"got {len(value)}"
        )
    array = np.frombuffer(value, dtype=wire).astype(wire.newbyteorder("="))
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CodecError(f"params.{key}: values must be finite")
    return array


def to_wire(array: np.ndarray, dtype: str) -> bytes:
    """Pack a per-channel param as little-endian bytes (see ``array_param``)."""
    return np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()
