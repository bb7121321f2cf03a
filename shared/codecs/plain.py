"""Codecs that copy elements: ``raw`` and ``u8`` (as is) and ``fp16`` (halved precision)."""

from collections.abc import Mapping

import numpy as np

from splitmq.shared.codecs.base import DTYPES, FLOAT_DTYPES, Params, expect_keys, num_elements

_NO_KEYS: frozenset[str] = frozenset()
_F16_MAX = float(np.finfo(np.float16).max)


class Plain:
    """Elements as they are, C order, little-endian; ``u8`` is the same for uint8 pixels."""

    lossless = True

    def __init__(self, name: str, dtypes: frozenset[str], summary: str) -> None:
        self.name = name
        self.dtypes = dtypes
        self.summary = summary

    def encode(
        self, x: np.ndarray, level: int | None, params: Mapping[str, object]
    ) -> tuple[Params, bytes]:
        expect_keys(params, _NO_KEYS, self.name)
        return {}, x.astype(DTYPES[x.dtype.name], copy=False).tobytes()

    def check(self, dtype: str, shape: tuple[int, ...], params: Params) -> int:
        expect_keys(params, _NO_KEYS, self.name)
        return num_elements(shape) * DTYPES[dtype].itemsize

    def decode(self, data: bytes, dtype: str, shape: tuple[int, ...], params: Params) -> np.ndarray:
        # astype copies, so the caller owns a writable native-order array.
        return np.frombuffer(data, dtype=DTYPES[dtype]).astype(dtype).reshape(shape)


class Fp16:
    """IEEE half precision, little-endian; decodes back to the declared float dtype.

    Values beyond the float16 range saturate at ±65504 instead of becoming infinity.
    """

    lossless = False
    dtypes = FLOAT_DTYPES
    summary = "IEEE float16, 2 bytes per element"
    name = "fp16"

    def encode(
        self, x: np.ndarray, level: int | None, params: Mapping[str, object]
    ) -> tuple[Params, bytes]:
        expect_keys(params, _NO_KEYS, self.name)
        return {}, np.clip(x, -_F16_MAX, _F16_MAX).astype("<f2").tobytes()

    def check(self, dtype: str, shape: tuple[int, ...], params: Params) -> int:
        expect_keys(params, _NO_KEYS, self.name)
        return num_elements(shape) * 2

    def decode(self, data: bytes, dtype: str, shape: tuple[int, ...], params: Params) -> np.ndarray:
        return np.frombuffer(data, dtype="<f2").astype(dtype).reshape(shape)
