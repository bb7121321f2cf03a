"""Fuzzing the readers: whatever arrives, only WireError or CodecError escape, and a
hostile message costs a bounded amount of memory.

Every example goes through what a worker does with a payload (unpack, then decode
the tensor) with a 1 MiB limit, and tracemalloc checks the peak it allocated.
"""

import contextlib
import io
import json
import math
import tracemalloc
from dataclasses import replace
from typing import Any

import lz4.frame
import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import make_request
from PIL import Image

from splitmq.shared.codecs import EncodedTensor, decode, encode
from splitmq.shared.errors import CodecError, WireError
from splitmq.shared.protocol.results import unpack_error, unpack_result
from splitmq.shared.protocol.wire import (
    DeviceTiming,
    Hop,
    Request,
    Timing,
    pack_request,
    unpack_request,
)

MAX_BYTES = 1 << 20
PEAK = 4 << 20  # what reading one payload may allocate


# The example count and the deadline come from the profile (tests/conftest.py): few
# locally, the full count in CI. What is left is these strategies' own business:
# recursive documents and whole payloads are big draws, and big draws are slow.
fuzz = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _read(payload: bytes) -> None:
    """Unpack and decode like a worker; anything but the two typed errors fails the test.

    tracemalloc runs only around the read, so hypothesis's own allocations neither
    count nor slow down.
    """
    tracemalloc.start()
    try:
        with contextlib.suppress(WireError, CodecError):
            decode(unpack_request(payload, MAX_BYTES).tensor, MAX_BYTES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK


# --- valid requests -----------------------------------------------------------------------

_ID_CHARS = "ABCXYZabcxyz0189_-"
IDS = st.text(_ID_CHARS, min_size=1, max_size=8)
MODELS = st.builds(  # a model name starts with a letter or a digit
    "{}{}{}".format,
    st.sampled_from(_ID_CHARS.strip("_-")),
    st.text(_ID_CHARS, max_size=7),
    st.sampled_from(["", ".v2", "-lite0.onnx"]),
) | st.just("m" * 63 + ".")
IDS = IDS | st.just("x" * 64)
TIMES = st.floats(0, 1e10)
FOUR_TIMES = st.lists(TIMES, min_size=4, max_size=4)
EXITS = st.none() | st.floats(0, 1)
TIERS = st.sampled_from(["edge", "cloud"])
FORWARD_CODECS = st.none() | st.sampled_from(["q4c+zstd", "int8", "fp16+lz4"])
CODECS = [
    "raw", "fp16", "int8", "int8c", "q4", "q4c", "q2", "q2c", "clip4", "raw+zstd", "q4c+zstd",
    "int8+lz4", "q2+lz4", "u8", "u8+zstd", "jpeg:50",
]  # fmt: skip


def _tensor(codec: str, seed: int, dims: list[int]) -> EncodedTensor:
    """A tensor for ``codec`` with random contents; jpeg gets an image shape from ``dims``."""
    rng = np.random.default_rng(seed)
    shape = (1, 1 + 2 * (seed % 2), dims[0], dims[-1]) if codec.startswith("jpeg") else (1, *dims)
    if codec.startswith(("u8", "jpeg")):
        return encode(rng.integers(0, 256, shape, dtype=np.uint8), codec)
    return encode(rng.standard_normal(shape).astype(np.float32), codec)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    hops = draw(st.integers(1, 4))
    start = draw(st.integers(0, 10))
    stops = sorted(draw(st.sets(st.integers(start + 1, 99), min_size=hops - 1, max_size=hops - 1)))
    route = tuple(
        Hop(draw(TIERS), to, draw(EXITS), draw(FORWARD_CODECS) if to else None)
        for to in [*stops, None]
    )
    dims = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    tensor = _tensor(draw(st.sampled_from(CODECS)), draw(st.integers(0, 2**32 - 1)), dims)
    request = make_request(
        route,
        hop=draw(st.integers(0, hops - 1)),
        start=start,
        tensor=tensor,
        at=1.0,
        id=draw(IDS),
        device=draw(IDS),
        model=draw(MODELS),
        version=draw(st.integers(1, 2**31 - 1)),
        deadline=draw(st.none() | TIMES),
    )
    device = DeviceTiming(*draw(FOUR_TIMES))
    records = tuple(replace(r, worker=draw(IDS)) for r in request.timing.hops)
    return replace(request, timing=Timing(device, records))


def _pool() -> list[bytes]:
    """Valid payloads of every codec and route shape, for the mutation tests."""
    routes = [
        (Hop("cloud"),),
        (Hop("edge", 3, 0.8, "q4c+zstd"), Hop("cloud")),
        (Hop("edge", 2), Hop("edge", 5, 0.5, "fp16"), Hop("cloud", None, 0.9)),
        (Hop("edge", 1, None, "int8"), Hop("cloud", 2), Hop("edge", 3), Hop("cloud")),
    ]
    pool = []
    for index, codec in enumerate(CODECS * 2):
        route = routes[index % len(routes)]
        tensor = _tensor(codec, index, [1 + index % 3, 2, 3])
        deadline = 1700000000.5 if index % 2 else None
        hop = index % len(route)
        pool.append(
            make_request(route, hop=hop, start=0, tensor=tensor, at=1.0, id="r1", deadline=deadline)
        )
    return [pack_request(request) for request in pool]


POOL = _pool()
PAYLOADS = st.sampled_from(POOL)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.sampled_from(["edge", "cloud", "float32", "int8", "q4c+zstd", "jpeg:50", "raw+lz4"])
    | st.sampled_from([10**12, 2**31, 2**63 - 1, -1, 0, math.inf, math.nan])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=20,
)


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a decoded request where a value sits."""
    found = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*path, index))
    return found


# --- the readers see garbage --------------------------------------------------------------


@fuzz
@given(st.binary(max_size=600))
def test_random_bytes(payload: bytes) -> None:
    _read(payload)


@fuzz
@given(VALUES)
def test_random_msgpack_documents(value: Any) -> None:
    _read(msgpack.packb(value))


@fuzz
@given(requests())
def test_valid_requests_round_trip(request: Request) -> None:
    payload = pack_request(request)
    assert unpack_request(payload) == request
    assert decode(request.tensor).shape == request.tensor.shape


@fuzz
@given(PAYLOADS, st.data())
def test_truncated_requests(payload: bytes, data: st.DataObject) -> None:
    _read(payload[: data.draw(st.integers(0, len(payload) - 1))])


@fuzz
@given(PAYLOADS, st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_bytes(payload: bytes, flips: list[tuple[int, int]]) -> None:
    corrupted = bytearray(payload)
    for position, value in flips:
        corrupted[position % len(corrupted)] = value
    _read(bytes(corrupted))


@fuzz
@given(PAYLOADS, st.data())
def test_mutated_fields(payload: bytes, data: st.DataObject) -> None:
    doc = msgpack.unpackb(payload)
    *parent_path, key = data.draw(st.sampled_from(_paths(doc)[1:]))
    parent = doc
    for step in parent_path:
        parent = parent[step]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[key] = data.draw(VALUES)
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(VALUES)
    else:
        parent.append(data.draw(VALUES))
    _read(msgpack.packb(doc))


# --- hostile sizes ------------------------------------------------------------------------

_SMALL = msgpack.unpackb(
    pack_request(make_request((Hop("cloud"),), start=0, at=1.0, id="r1", deadline=None))
)


def _with_tensor(**tensor: Any) -> bytes:
    doc = dict(_SMALL)
    doc["tensor"] = {**_SMALL["tensor"], **tensor}
    return msgpack.packb(doc)


DIMS = st.integers(-(2**63), 2**64 - 1) | st.sampled_from([10**12, 2**31, 2**31 - 1, 2**16])


@fuzz
@given(
    st.lists(DIMS, min_size=0, max_size=10),
    st.sampled_from(CODECS),
    st.sampled_from(["float32", "float64", "uint8", "int64"]),
    st.dictionaries(st.sampled_from(["lo", "hi", "scale", "zp"]), SCALARS, max_size=4),
    st.binary(max_size=64),
)
def test_huge_declared_shapes(
    shape: list[int], codec: str, dtype: str, params: dict[str, Any], data: bytes
) -> None:
    _read(_with_tensor(shape=shape, codec=codec, dtype=dtype, params=params, data=data))


def test_a_declared_terabyte_is_refused_before_allocating() -> None:
    for shape in ([10**12], [10**6, 10**6], [2**20, 2**20, 2**20]):
        with pytest.raises(CodecError, match=r"^tensor\.shape"):
            unpack_request(_with_tensor(shape=shape, codec="raw+zstd", data=b""))
        _read(_with_tensor(shape=shape, codec="raw+zstd", data=b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A valid small JPEG whose frame header (SOF0) claims another size."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(jpeg)


_ZEROS = bytes(32 << 20)
BOMBS = {
    "zstd": [
        zstandard.ZstdCompressor().compress(_ZEROS),
        zstandard.ZstdCompressor(write_content_size=False).compress(_ZEROS),
        zstandard.ZstdCompressor(level=19).compress(_ZEROS[: 1 << 20]),
    ],
    "lz4": [lz4.frame.compress(_ZEROS), lz4.frame.compress(_ZEROS, store_size=False)],
    "jpeg": [_jpeg_claiming(65000, 65000), _jpeg_claiming(10000, 10000), _jpeg_claiming(1, 8)],
}
del _ZEROS


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@fuzz
@given(
    st.sampled_from(["zstd", "lz4", "jpeg"]),
    st.data(),
    st.integers(1, 4096),
    st.sampled_from(["raw", "u8", "q4", "int8"]),
)
def test_decompression_bombs(kind: str, data: st.DataObject, size: int, inner: str) -> None:
    bomb = data.draw(st.sampled_from(BOMBS[kind]))
    if kind == "jpeg":
        tensor = {"dtype": "uint8", "shape": [1, 3, 8, 8], "codec": "jpeg:50", "params": {}}
    else:
        params = {"scale": 0.1, "zp": 0} if inner == "int8" else {"lo": 0.0, "hi": 1.0}
        dtype = "uint8" if inner in ("raw", "u8") else "float32"
        tensor = {
            "dtype": dtype,
            "shape": [size],
            "codec": f"{inner}+{kind}",
            "params": {} if dtype == "uint8" else params,
        }
    payload = _with_tensor(**tensor, data=bomb)
    with pytest.raises(CodecError, match=r"^data: "):
        decode(unpack_request(payload, MAX_BYTES).tensor, MAX_BYTES)
    _read(payload)


# --- JSON readers ----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@fuzz
@given(st.binary(max_size=300) | JSON_VALUES.map(lambda value: json.dumps(value).encode()))
def test_json_readers_on_garbage(payload: bytes) -> None:
    for read in (unpack_result, unpack_error):
        with contextlib.suppress(WireError):
            read(payload)
