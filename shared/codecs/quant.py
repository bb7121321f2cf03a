"""Quantising codecs: affine int8 (``int8``, ``int8c``) and uniform N-bit codes (``qN``, ``clip4``).

All arithmetic is float32 and vectorised over the whole tensor; per-channel
codecs view the tensor as (N, C, rest) and broadcast (C, 1) params, so per-tensor
and per-channel share one code path. Rounding is half-up (``floor(v + 0.5)``),
which a C client reproduces with ``floorf``; the byte layouts are specified in
docs/wire-format.md.
"""

from collections.abc import Mapping

import numpy as np

from splitmq.shared.codecs.base import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    FLOAT_DTYPES,
    Params,
    array_param,
    channels,
    expect_keys,
    float_param,
    int_param,
    num_elements,
    to_wire,
)
from splitmq.shared.errors import CodecError

_RANGE_KEYS = frozenset({"lo", "hi"})


def _view(shape: tuple[int, ...], per_channel: bool) -> tuple[int, ...]:
    """The shape arithmetic runs on: (N, C, rest) per channel, flat per tensor."""
    if per_channel:
        return (shape[0], channels(shape), num_elements(shape[2:]))
    return (num_elements(shape),)


def _bcast(values: np.ndarray) -> np.ndarray:
    """Per-channel (C,) params as (C, 1), so they broadcast over (N, C, rest)."""
    return values.reshape(-1, 1) if values.ndim else values


def _given(value: object, key: str, per_channel: bool, count: int) -> np.ndarray:
    """A calibration bound from the caller: a float, or one float per channel."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"params.{key}: expected a float or floats, got {value!r}") from exc
    if array.ndim and (not per_channel or array.shape != (count,)):
        want = f"a float or {count} floats (one per channel)" if per_channel else "a float"
        raise CodecError(f"params.{key}: expected {want}, got shape {list(array.shape)}")
    if not (np.abs(array) <= FLOAT32_MAX).all():
        raise CodecError(f"params.{key}: values must be finite float32")
    return np.broadcast_to(array, (count,) if per_channel else ()).astype(np.float32)


def _calibrate(
    x: np.ndarray,
    params: Mapping[str, object],
    per_channel: bool,
    default: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """View x as float32 and find its clip range: from params, the codec default or the data.

    Returns the view, lo, hi and whether both bounds came from the data. Min and
    max are always computed: they reject NaN and infinity, which would otherwise
    cast to arbitrary codes.
    """
    unknown = sorted(str(key) for key in params.keys() - _RANGE_KEYS)
    if unknown:
        raise CodecError(f"params: only 'lo' and 'hi' are accepted, got unknown {unknown}")
    view = x.reshape(_view(x.shape, per_channel))
    axis = (0, 2) if per_channel else None
    mins, maxs = view.min(axis=axis), view.max(axis=axis)
    if not (np.abs(mins) <= FLOAT32_MAX).all() or not (np.abs(maxs) <= FLOAT32_MAX).all():
        raise CodecError("x: the tensor holds NaN, infinity or values beyond float32")
    count = view.shape[1] if per_channel else 1
    bounds = []
    for key, data_bound, index in (("lo", mins, 0), ("hi", maxs, 1)):
        if key in params:
            bounds.append(_given(params[key], key, per_channel, count))
        elif default is not None:
            bounds.append(_given(default[index], key, per_channel, count))
        else:
            bounds.append(data_bound.astype(np.float32))
    from_data = default is None and not params
    return view.astype(np.float32, copy=False), bounds[0], bounds[1], from_data


def _check_range(lo: np.ndarray, hi: np.ndarray, levels: int) -> None:
    """lo < hi with a step of at least the smallest normal float32 (else 1/step overflows)."""
    bad = np.flatnonzero(~((hi.astype(np.float64) - lo) / levels >= FLOAT32_TINY))
    if bad.size:
        at = f"channel {bad[0]}: " if lo.ndim else ""
        low, high = lo.reshape(-1)[bad[0]], hi.reshape(-1)[bad[0]]
        raise CodecError(f"params.hi: {at}hi ({high}) must exceed lo ({low}) by a normal step")


def _positive(scale: np.ndarray) -> None:
    if scale.ndim == 0 and scale >= FLOAT32_TINY:
        return  # one scale, fine: numpy's index search costs more than the codec's check
    bad = np.flatnonzero(~(scale >= FLOAT32_TINY))
    if bad.size:
        at = f"channel {bad[0]}: " if scale.ndim else ""
        raise CodecError(f"params.scale: {at}{scale.reshape(-1)[bad[0]]} is not a positive float32")


class AffineInt8:
    """x ≈ (q − zp)·scale with int8 q, the range widened to include 0 so zeros stay exact.

    Same semantics as ONNX QuantizeLinear/DequantizeLinear (int8), except rounding
    half-up, so a receiving graph could consume the codes directly.
    """

    lossless = False
    dtypes = FLOAT_DTYPES

    def __init__(self, name: str, per_channel: bool, summary: str) -> None:
        self.name = name
        self.per_channel = per_channel
        self.summary = summary

    def encode(
        self, x: np.ndarray, level: int | None, params: Mapping[str, object]
    ) -> tuple[Params, bytes]:
        view, lo, hi, _ = _calibrate(x, params, self.per_channel, None)
        lo64 = np.minimum(lo, 0).astype(np.float64)
        hi64 = np.maximum(hi, 0).astype(np.float64)
        scale = np.maximum((hi64 - lo64) / 255, FLOAT32_TINY).astype(np.float32)
        zp = np.clip(np.floor(-128 - lo64 / scale + 0.5), -128, 127)
        inv = (1 / scale.astype(np.float64)).astype(np.float32)
        # b = q + 128 is non-negative, so the uint8 cast truncates exactly like floor. All
        # in float32, step by step, as docs/wire-format.md specifies (and its vector checks).
        v = view.astype(np.float32) * _bcast(inv)
        v += _bcast((zp + 128.5).astype(np.float32))
        np.clip(v, 0, 255.5, out=v)
        codes = v.astype(np.uint8)
        codes ^= 0x80
        if self.per_channel:
            wire: Params = {"scale": to_wire(scale, "float32"), "zp": to_wire(zp, "int8")}
        else:
            wire = {"scale": float(scale), "zp": int(zp)}
        return wire, codes.tobytes()

    def _params(self, shape: tuple[int, ...], params: Params) -> tuple[np.ndarray, np.ndarray]:
        expect_keys(params, frozenset({"scale", "zp"}), self.name)
        if self.per_channel:
            count = channels(shape)
            scale = array_param(params, "scale", "float32", count)
            zp = array_param(params, "zp", "int8", count)
        else:
            scale = np.asarray(float_param(params, "scale"), np.float32)
            zp = np.asarray(int_param(params, "zp", -128, 127), np.int8)
        _positive(np.asarray(scale))
        return scale, zp

    def check(self, dtype: str, shape: tuple[int, ...], params: Params) -> int:
        self._params(shape, params)
        return num_elements(shape)

    def decode(self, data: bytes, dtype: str, shape: tuple[int, ...], params: Params) -> np.ndarray:
        scale, zp = self._params(shape, params)
        codes = np.frombuffer(data, dtype=np.int8).reshape(_view(shape, self.per_channel))
        out = codes.astype(np.float32)
        out -= _bcast(np.asarray(zp, dtype=np.float32))
        out *= _bcast(np.asarray(scale))
        return out.reshape(shape).astype(dtype, copy=False)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ``bits``-bit codes densely, first code in the high bits of each byte.

    The last byte is padded with zero codes.
    """
    per = 8 // bits
    pad = -codes.size % per
    if pad:
        codes = np.concatenate((codes, np.zeros(pad, dtype=np.uint8)))
    groups = codes.reshape(-1, per)
    packed = groups[:, 0] << (8 - bits)
    for i in range(1, per):
        packed |= groups[:, i] << (8 - bits * (i + 1))
    return packed.tobytes()


def _unpack_table(bits: int) -> np.ndarray:
    """For each byte value, its codes; one unsigned int per row so ``np.take`` gathers fast."""
    per = 8 // bits
    byte = np.arange(256, dtype=np.uint8)
    rows = np.stack([(byte >> (8 - bits * (i + 1))) & ((1 << bits) - 1) for i in range(per)], 1)
    return np.ascontiguousarray(rows, dtype=np.uint8).view(f"u{per}").reshape(256)


_UNPACK = {bits: _unpack_table(bits) for bits in (2, 4)}


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_codes``: the first ``count`` codes as uint8."""
    return np.take(_UNPACK[bits], np.frombuffer(data, dtype=np.uint8)).view(np.uint8)[:count]


class Uniform:
    """``bits``-bit codes over a clip range [lo, hi].

    code = floor((clip(x, lo, hi) − lo)/(hi − lo)·L + 0.5) with L = 2^bits − 1 and
    decode = lo + code·(hi − lo)/L. The range comes from calibration (params
    ``lo``/``hi``), the codec default (``clip4``: [0, 32]) or the tensor's min/max.
    """

    lossless = False
    dtypes = FLOAT_DTYPES

    def __init__(
        self,
        name: str,
        bits: int,
        per_channel: bool,
        summary: str,
        default: tuple[float, float] | None = None,
    ) -> None:
        self.name = name
        self.bits = bits
        self.levels = (1 << bits) - 1
        self.per_channel = per_channel
        self.summary = summary
        self.default = default

    def encode(
        self, x: np.ndarray, level: int | None, params: Mapping[str, object]
    ) -> tuple[Params, bytes]:
        view, lo, hi, from_data = _calibrate(x, params, self.per_channel, self.default)
        if from_data:
            # A constant tensor (or channel) is exact at code 0 over any range starting at lo.
            flat = ~((hi.astype(np.float64) - lo) / self.levels >= FLOAT32_TINY)
            wider = lo + np.maximum(np.abs(lo.astype(np.float64)), 1)
            hi = np.where(flat, np.minimum(wider, FLOAT32_MAX), hi).astype(np.float32)
        _check_range(lo, hi, self.levels)
        factor = (self.levels / (hi.astype(np.float64) - lo)).astype(np.float32)
        v = view - _bcast(lo)
        v *= _bcast(factor)
        v += 0.5
        # Clipping after scaling equals clipping x to [lo, hi] first; the cast truncates
        # non-negative values, which makes it floor(v + 0.5).
        np.clip(v, 0.5, self.levels + 0.5, out=v)
        data = pack_codes(v.astype(np.uint8).reshape(-1), self.bits)
        if self.per_channel:
            return {"lo": to_wire(lo, "float32"), "hi": to_wire(hi, "float32")}, data
        return {"lo": float(lo), "hi": float(hi)}, data

    def _params(self, shape: tuple[int, ...], params: Params) -> tuple[np.ndarray, np.ndarray]:
        expect_keys(params, _RANGE_KEYS, self.name)
        if self.per_channel:
            count = channels(shape)
            lo = array_param(params, "lo", "float32", count)
            hi = array_param(params, "hi", "float32", count)
        else:
            lo = np.asarray(float_param(params, "lo"), dtype=np.float32)
            hi = np.asarray(float_param(params, "hi"), dtype=np.float32)
        _check_range(lo, hi, self.levels)
        return lo, hi

    def check(self, dtype: str, shape: tuple[int, ...], params: Params) -> int:
        self._params(shape, params)
        return -(-num_elements(shape) * self.bits // 8)

    def decode(self, data: bytes, dtype: str, shape: tuple[int, ...], params: Params) -> np.ndarray:
        lo, hi = self._params(shape, params)
        step = ((hi.astype(np.float64) - lo) / self.levels).astype(np.float32)
        codes = unpack_codes(data, self.bits, num_elements(shape))
        out = codes.reshape(_view(shape, self.per_channel)).astype(np.float32)
        out *= _bcast(step)
        out += _bcast(lo)
        return out.reshape(shape).astype(dtype, copy=False)
