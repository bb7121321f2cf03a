"""Feature-map and input codecs: ``encode`` a tensor into an ``EncodedTensor`` and back.

Codec names (contract; byte layouts in docs/wire-format.md): ``raw``, ``fp16``,
``int8``, ``int8c``, ``q4``, ``q4c``, ``q2``, ``q2c``, ``clip4``, ``u8`` and
``jpeg:Q``, each but ``jpeg`` optionally followed by a lossless stage ``+zstd`` or
``+lz4``. Decoding trusts nothing: every field is checked, and sizes are bounded
before anything is allocated, so a hostile message costs at most ``max_bytes``.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import lz4.frame
import numpy as np
import zstandard

from splitmq.shared.codecs.base import (
    DTYPES,
    MAX_ELEMENTS,
    MAX_RANK,
    Codec,
    ParamValue,
    num_elements,
)
from splitmq.shared.codecs.image import Jpeg
from splitmq.shared.codecs.plain import Fp16, Plain
from splitmq.shared.codecs.quant import AffineInt8, Uniform
from splitmq.shared.errors import CodecError

__all__ = [
    "CODECS",
    "DEFAULT_MAX_BYTES",
    "DTYPES",
    "INPUT_CODECS",
    "MAX_ELEMENTS",
    "MAX_RANK",
    "STAGES",
    "CodecInfo",
    "CodecName",
    "EncodedTensor",
    "check",
    "decode",
    "encode",
    "is_lossless",
    "list_codecs",
    "parse_codec",
]

#: Largest decoded tensor (and encoded message) accepted unless the caller says otherwise.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

CODECS: dict[str, Codec] = {
    "raw": Plain("raw", frozenset(DTYPES), "elements as they are, little-endian; any dtype"),
    "fp16": Fp16(),
    "int8": AffineInt8("int8", False, "affine int8, one scale and zero point per tensor"),
    "int8c": AffineInt8("int8c", True, "affine int8, a scale and zero point per channel"),
    "q4": Uniform("q4", 4, False, "4-bit codes over one clip range (calibrated or min/max)"),
    "q4c": Uniform("q4c", 4, True, "4-bit codes over a clip range per channel"),
    "q2": Uniform("q2", 2, False, "2-bit codes over one clip range (calibrated or min/max)"),
    "q2c": Uniform("q2c", 2, True, "2-bit codes over a clip range per channel"),
    "clip4": Uniform("clip4", 4, False, "4-bit codes over a fixed range, default [0, 32]", (0, 32)),
    "u8": Plain("u8", frozenset({"uint8"}), "uint8 input pixels as they are (cut 0)"),
    "jpeg": Jpeg(),
}
#: Codecs that carry the uint8 input image rather than a feature map.
INPUT_CODECS = frozenset({"u8", "jpeg"})
#: Codecs whose name carries an argument ``:N``, with its range.
_LEVELS = {"jpeg": (1, 100)}
_NAME = re.compile(r"([a-z0-9]+)(?::([0-9]+))?(?:\+([a-z0-9]+))?")
_MAX_WINDOW = 1 << 23  # zstd levels 1..19 stream with windows up to 8 MiB
# Level 1: on quantised feature maps as small as level 3 (sometimes smaller), 1.5x faster.
_ZSTD_LEVEL = 1


class Zstd:
    """A single zstd frame (RFC 8878) holding the inner codec's bytes."""

    def compress(self, data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)

    def decompress(self, data: bytes, size: int) -> bytes:
        """Exactly ``size`` bytes or a CodecError; never allocates more than ``size``."""
        try:
            declared = zstandard.frame_content_size(data)
            if declared not in (-1, size):
                raise CodecError(f"data: zstd frame declares {declared} bytes, expected {size}")
            window = max(_MAX_WINDOW, 1 << (size - 1).bit_length())
            out = zstandard.ZstdDecompressor(max_window_size=window).decompress(
                data, max_output_size=size, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise CodecError(f"data: not a zstd frame of {size} bytes ({exc})") from exc
        if len(out) != size:
            raise CodecError(f"data: zstd frame holds {len(out)} bytes, expected {size}")
        return out


class Lz4:
    """A single LZ4 frame (LZ4 frame format 1.6) holding the inner codec's bytes."""

    def compress(self, data: bytes) -> bytes:
        return lz4.frame.compress(data, store_size=True)

    def decompress(self, data: bytes, size: int) -> bytes:
        """Exactly ``size`` bytes or a CodecError; never allocates more than ``size``."""
        decompressor = lz4.frame.LZ4FrameDecompressor()
        try:
            out = decompressor.decompress(data, max_length=size)
        except RuntimeError as exc:
            raise CodecError(f"data: not an lz4 frame ({exc})") from exc
        if len(out) != size or not decompressor.eof or decompressor.unused_data:
            raise CodecError(f"data: not one complete lz4 frame of {size} bytes")
        return out


STAGES: dict[str, Zstd | Lz4] = {"zstd": Zstd(), "lz4": Lz4()}


@dataclass(frozen=True)
class CodecName:
    """A parsed codec name: ``base[:level][+stage]``; ``str()`` gives it back."""

    base: str
    level: int | None = None
    stage: str | None = None

    def __str__(self) -> str:
        level = "" if self.level is None else f":{self.level}"
        stage = "" if self.stage is None else f"+{self.stage}"
        return f"{self.base}{level}{stage}"

    @property
    def codec(self) -> Codec:
        return CODECS[self.base]

    @property
    def is_input(self) -> bool:
        """Whether it carries the input image (cut 0 of a model with preprocessing)."""
        return self.base in INPUT_CODECS


def parse_codec(name: str) -> CodecName:
    """Parse ``q4c+zstd`` or ``jpeg:85``; only the canonical spelling is accepted."""
    if type(name) is str and len(name) <= 32:
        return _parse(name)
    return _parse_any(name)


@lru_cache(maxsize=256)
def _parse(name: str) -> CodecName:
    """A valid name parsed once (every request names its codec), a bad one never kept."""
    return _parse_any(name)


def _parse_any(name: object) -> CodecName:
    match = _NAME.fullmatch(name) if isinstance(name, str) and len(name) <= 32 else None
    if match is None:
        raise CodecError(f"codec: {name!r} is not a codec name like 'q4c+zstd' or 'jpeg:85'")
    base, level, stage = match.groups()
    if base not in CODECS:
        raise CodecError(f"codec: unknown codec {base!r}; known: {', '.join(CODECS)}")
    if stage is not None and stage not in STAGES:
        raise CodecError(f"codec: unknown lossless stage '+{stage}'; known: +zstd, +lz4")
    if base in _LEVELS:
        low, high = _LEVELS[base]
        if level is None or str(int(level)) != level or not low <= int(level) <= high:
            raise CodecError(f"codec: {name!r} needs {base}:N with N in {low}..{high}")
        if stage is not None:
            raise CodecError(f"codec: {base} is entropy-coded already; no lossless stage after it")
        return CodecName(base, int(level))
    if level is not None:
        raise CodecError(f"codec: {base} takes no ':N' argument, got {name!r}")
    return CodecName(base, None, stage)


def is_lossless(name: str) -> bool:
    """Whether decode(encode(x)) == x for every input the codec accepts."""
    return parse_codec(name).codec.lossless


@dataclass(frozen=True)
class CodecInfo:
    """One codec for listings: ``jpeg`` is listed as ``jpeg:Q``."""

    name: str
    lossless: bool
    dtypes: tuple[str, ...]
    summary: str


def list_codecs() -> list[CodecInfo]:
    """Every base codec; any but ``jpeg:Q`` may add ``+zstd`` or ``+lz4`` (see ``STAGES``)."""
    return [
        CodecInfo(
            f"{base}:Q" if base in _LEVELS else base,
            codec.lossless,
            tuple(dtype for dtype in DTYPES if dtype in codec.dtypes),
            codec.summary,
        )
        for base, codec in CODECS.items()
    ]


def _check_shape(shape: object) -> tuple[int, ...]:
    """Rank 1..8, every dimension >= 1, at most MAX_ELEMENTS elements; nothing allocated."""
    if not isinstance(shape, tuple):
        raise CodecError(f"shape: expected a tuple of ints, got {type(shape).__name__}")
    if not 1 <= len(shape) <= MAX_RANK:
        raise CodecError(f"shape: rank {len(shape)} is outside 1..{MAX_RANK}")
    for axis, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise CodecError(f"shape[{axis}]: expected an int, got {type(dim).__name__}")
        if not 1 <= dim <= MAX_ELEMENTS:
            raise CodecError(f"shape[{axis}]: {dim} is outside 1..{MAX_ELEMENTS}")
    if num_elements(shape) > MAX_ELEMENTS:
        raise CodecError(f"shape: {list(shape)} has more than {MAX_ELEMENTS} elements")
    return shape


def _check_dtype(dtype: object, name: CodecName) -> None:
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CodecError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype not in name.codec.dtypes:
        allowed = ", ".join(d for d in DTYPES if d in name.codec.dtypes)
        raise CodecError(f"dtype: codec {name} takes {allowed}, not {dtype}")


def _check_params(params: object) -> None:
    """Only the value types the wire can carry; each codec checks its own keys and values."""
    if not isinstance(params, dict):
        raise CodecError(f"params: expected a map, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(key, str):
            raise CodecError(f"params: keys must be strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float | str | bytes):
            raise CodecError(f"params.{key}: {type(value).__name__} is not int, float, str or bin")


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor as it travels: enough to decode it, validated on creation.

    ``dtype`` and ``shape`` describe the decoded tensor; ``params`` are what the
    codec needs to decode (per-channel values as little-endian bin); ``data`` is
    the codec's bytes, after the lossless stage when the name has one.
    """

    dtype: str
    shape: tuple[int, ...]
    codec: str
    params: dict[str, ParamValue]
    data: bytes

    def __post_init__(self) -> None:
        name = parse_codec(self.codec)
        _check_dtype(self.dtype, name)
        _check_shape(self.shape)
        _check_params(self.params)
        if not isinstance(self.data, bytes):
            raise CodecError(f"data: expected bytes, got {type(self.data).__name__}")
        expected = name.codec.check(self.dtype, self.shape, self.params)
        if name.stage is None and expected is not None and len(self.data) != expected:
            raise CodecError(
                f"data: {len(self.data)} bytes, but {self.dtype} {list(self.shape)} "
                f"in {name} takes {expected}"
            )

    @property
    def nbytes(self) -> int:
        """Size of the decoded tensor in bytes."""
        return num_elements(self.shape) * DTYPES[self.dtype].itemsize


def encode(x: np.ndarray, codec: str, params: Mapping[str, object] | None = None) -> EncodedTensor:
    """Encode ``x`` with ``codec``; ``params`` are calibration values (``lo``, ``hi``)."""
    name = parse_codec(codec)
    if not isinstance(x, np.ndarray):
        raise CodecError(f"x: expected a numpy array, got {type(x).__name__}")
    dtype = _NAMES.get(x.dtype) or x.dtype.name  # numpy's ``name`` is slow Python code
    _check_dtype(dtype, name)
    shape = _check_shape(tuple(int(dim) for dim in x.shape))
    wire_params, data = name.codec.encode(np.ascontiguousarray(x), name.level, params or {})
    if name.stage is not None:
        data = STAGES[name.stage].compress(data)
    return EncodedTensor(dtype, shape, str(name), wire_params, data)


_NAMES = {dtype: dtype_name for dtype_name, dtype in DTYPES.items()}


def check(tensor: EncodedTensor, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Reject a tensor whose data or decoded size exceeds ``max_bytes``, without decoding it."""
    if tensor.nbytes > max_bytes:
        raise CodecError(
            f"shape: {tensor.dtype} {list(tensor.shape)} decodes to {tensor.nbytes} bytes, "
            f"over the limit of {max_bytes}"
        )
    if len(tensor.data) > max_bytes:
        raise CodecError(f"data: {len(tensor.data)} bytes, over the limit of {max_bytes}")


def decode(tensor: EncodedTensor, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode to a new writable, C-contiguous, native-order array of ``tensor.dtype``."""
    check(tensor, max_bytes)
    name = parse_codec(tensor.codec)
    data = tensor.data
    if name.stage is not None:
        size = name.codec.check(tensor.dtype, tensor.shape, tensor.params)
        # parse_codec allows stages only after fixed-size codecs, so size is an int here.
        assert size is not None
        data = STAGES[name.stage].decompress(data, size)
    return name.codec.decode(data, tensor.dtype, tensor.shape, tensor.params)
