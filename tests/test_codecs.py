"""Codecs: round trips within their error bounds, golden values, and validation errors."""

import tracemalloc

import lz4.frame
import numpy as np
import pytest
import zstandard

from splitmq.shared import codecs
from splitmq.shared.codecs import EncodedTensor, decode, encode, parse_codec
from splitmq.shared.errors import CodecError

RNG = np.random.default_rng(7)
FEATURES = np.maximum(RNG.standard_normal((2, 4, 5, 7)), 0).astype(np.float32) * 3
LOSSY_FLOAT = ["int8", "int8c", "q4", "q4c", "q2", "q2c"]


def _step(name: str, tensor: EncodedTensor) -> np.ndarray:
    """The codec's quantisation step, per tensor or per channel, broadcastable to FEATURES."""
    params = tensor.params
    if name.startswith("int8"):
        scale = params["scale"]
        return np.frombuffer(scale, "<f4")[:, None, None] if isinstance(scale, bytes) else scale
    levels = (1 << int(name[1])) - 1
    lo, hi = params["lo"], params["hi"]
    if isinstance(lo, bytes):
        lo, hi = np.frombuffer(lo, "<f4")[:, None, None], np.frombuffer(hi, "<f4")[:, None, None]
    return (np.float64(hi) - lo) / levels


@pytest.mark.parametrize("name", LOSSY_FLOAT)
def test_quantisers_stay_within_half_a_step(name: str) -> None:
    tensor = encode(FEATURES, name)
    out = decode(tensor)
    assert out.dtype == np.float32 and out.shape == FEATURES.shape
    bound = _step(name, tensor) / 2 * (1 + 1e-5) + 1e-6
    assert (np.abs(out - FEATURES) <= bound).all()


@pytest.mark.parametrize("dtype", list(codecs.DTYPES))
def test_raw_is_exact_for_every_dtype(dtype: str) -> None:
    x = (RNG.standard_normal((3, 5)) * 100).astype(dtype)
    out = decode(encode(x, "raw"))
    assert out.dtype == x.dtype and out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x)


def test_raw_accepts_big_endian_and_strided_input() -> None:
    x = FEATURES.astype(">f4")[:, ::2]
    tensor = encode(x, "raw")
    assert tensor.data == np.ascontiguousarray(x, dtype="<f4").tobytes()
    np.testing.assert_array_equal(decode(tensor), x)


def test_fp16_keeps_eleven_bits_and_saturates() -> None:
    x = np.array([1.0, 1 / 3, -2.5e-3, 7e4, -1e9], dtype=np.float32)
    out = decode(encode(x, "fp16"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:3], x[:3], rtol=2**-11)
    assert out[3] == 65504 and out[4] == -65504


def test_fp16_is_exact_for_float16_input() -> None:
    x = RNG.standard_normal(64).astype(np.float16)
    np.testing.assert_array_equal(decode(encode(x, "fp16")), x)


@pytest.mark.parametrize("name", ["int8", "int8c"])
def test_int8_keeps_zero_exact(name: str) -> None:
    out = decode(encode(FEATURES, name))
    assert (out[FEATURES == 0] == 0).all()


def test_clip4_golden_values() -> None:
    x = np.array([-1, 0, 1, 1.0666, 1.0667, 16, 31.9, 32, 100], dtype=np.float32)
    tensor = encode(x, "clip4")
    assert tensor.params == {"lo": 0.0, "hi": 32.0}
    # codes 0 0 0 0 1 8 15 15 15, two per byte, high nibble first, a zero nibble of padding
    assert tensor.data == bytes([0x00, 0x00, 0x18, 0xFF, 0xF0])
    np.testing.assert_allclose(decode(tensor), np.array([0, 0, 0, 0, 1, 8, 15, 15, 15]) * 32 / 15)


def test_clip4_packs_a_resnet_stage_into_an_eighth() -> None:
    x = RNG.uniform(-2, 40, (1, 64, 56, 56)).astype(np.float32)
    tensor = encode(x, "clip4")
    assert len(tensor.data) == x.nbytes // 8 == 100_352  # 4 bits for each 32-bit float
    codes = np.floor((np.clip(x, 0, 32) / 32) * 15 + 0.5)
    np.testing.assert_allclose(decode(tensor), codes * 32 / 15, rtol=1e-6, atol=1e-5)


def test_clip4_takes_a_calibrated_range() -> None:
    tensor = encode(np.array([0, 5, 10], dtype=np.float32), "clip4", {"hi": 10})
    assert tensor.params == {"lo": 0.0, "hi": 10.0}
    assert tensor.data == bytes([0x08, 0xF0])


def test_q2_packs_four_codes_per_byte_high_bits_first() -> None:
    tensor = encode(np.array([0, 1, 2, 3, 3], dtype=np.float32), "q2")
    assert tensor.data == bytes([0b00011011, 0b11000000])


@pytest.mark.parametrize("name", ["int8c", "q4c", "q2c"])
def test_per_channel_codecs_use_per_channel_ranges(name: str) -> None:
    x = np.stack([RNG.uniform(0, 1, (6, 6)), RNG.uniform(0, 100, (6, 6))])[None].astype(np.float32)
    per_channel = decode(encode(x, name))
    per_tensor = decode(encode(x, name[:-1]))
    # Half a step of channel 0's own range [0, 1]; a per-tensor range of [0, 100] misses it.
    bound = {"int8c": 1 / 255, "q4c": 1 / 15, "q2c": 1 / 3}[name] / 2 + 1e-6
    assert np.abs(per_channel[0, 0] - x[0, 0]).max() <= bound
    assert np.abs(per_tensor[0, 0] - x[0, 0]).max() > 2 * bound


def test_per_channel_params_travel_as_float32_bytes() -> None:
    tensor = encode(FEATURES, "q4c")
    lo = np.frombuffer(tensor.params["lo"], "<f4")
    hi = np.frombuffer(tensor.params["hi"], "<f4")
    np.testing.assert_array_equal(lo, FEATURES.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(hi, FEATURES.max(axis=(0, 2, 3)))


def test_calibrated_ranges_clip_per_channel() -> None:
    lo, hi = np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0])
    out = decode(encode(FEATURES, "q4c", {"lo": lo, "hi": hi}))
    np.testing.assert_allclose(out.max(axis=(0, 2, 3)), hi, rtol=1e-6)
    broadcast = encode(FEATURES, "q4c", {"lo": 0, "hi": 2})
    assert broadcast.params["hi"] == np.full(4, 2, "<f4").tobytes()


def test_constant_tensors_and_dead_channels_decode_exactly() -> None:
    x = np.zeros((1, 3, 4, 4), dtype=np.float32)
    x[0, 1] = 5
    for name in LOSSY_FLOAT:
        np.testing.assert_array_equal(decode(encode(x, name)), x, err_msg=name)


@pytest.mark.parametrize("inner", ["raw", "fp16", "int8", "int8c", "q4", "q4c", "q2c", "clip4"])
@pytest.mark.parametrize("stage", ["zstd", "lz4"])
def test_lossless_stages_return_the_inner_codec_output_exactly(inner: str, stage: str) -> None:
    plain, staged = encode(FEATURES, inner), encode(FEATURES, f"{inner}+{stage}")
    assert staged.params == plain.params
    assert codecs.STAGES[stage].decompress(staged.data, len(plain.data)) == plain.data
    np.testing.assert_array_equal(decode(staged), decode(plain))


def test_u8_keeps_pixels_as_they_are() -> None:
    x = RNG.integers(0, 256, (1, 3, 8, 9), dtype=np.uint8)
    tensor = encode(x, "u8+lz4")
    out = decode(tensor)
    assert out.dtype == np.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_gives_back_uint8_nchw_of_the_same_shape(channels: int) -> None:
    ramp = np.add.outer(np.arange(24), np.arange(40)).astype(np.uint8) * 2
    x = np.broadcast_to(ramp, (1, channels, 24, 40)).copy()
    tensor = encode(x, "jpeg:90")
    assert tensor.data[:2] == b"\xff\xd8" and tensor.codec == "jpeg:90"
    out = decode(tensor)
    assert out.dtype == np.uint8 and out.shape == x.shape and out.flags.writeable
    assert np.abs(out.astype(int) - x).mean() < 3


def test_jpeg_quality_changes_the_size() -> None:
    x = RNG.integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    assert len(encode(x, "jpeg:10").data) < len(encode(x, "jpeg:95").data)


@pytest.mark.parametrize("name", ["u8", "jpeg:80"])
def test_input_codecs_take_only_uint8(name: str) -> None:
    with pytest.raises(CodecError, match=r"^dtype: codec .* takes uint8, not float32"):
        encode(np.zeros((1, 3, 4, 4), dtype=np.float32), name)


def test_quantisers_refuse_integer_tensors() -> None:
    with pytest.raises(CodecError, match=r"^dtype: codec q4 takes float16"):
        encode(np.zeros((4,), dtype=np.int32), "q4")


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("q4c+zstd", codecs.CodecName("q4c", None, "zstd")),
        ("jpeg:85", codecs.CodecName("jpeg", 85, None)),
        ("raw", codecs.CodecName("raw")),
        ("u8+lz4", codecs.CodecName("u8", None, "lz4")),
    ],
)
def test_parse_codec(name: str, parsed: codecs.CodecName) -> None:
    assert parse_codec(name) == parsed
    assert str(parsed) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("q5", "unknown codec 'q5'"),
        ("q4+gzip", "unknown lossless stage '+gzip'"),
        ("jpeg", "needs jpeg:N with N in 1..100"),
        ("jpeg:0", "needs jpeg:N"),
        ("jpeg:101", "needs jpeg:N"),
        ("jpeg:085", "needs jpeg:N"),
        ("jpeg:85+zstd", "no lossless stage after it"),
        ("q4:3", "takes no ':N' argument"),
        ("Q4", "is not a codec name"),
        (" q4", "is not a codec name"),
        ("", "is not a codec name"),
        (None, "is not a codec name"),
    ],
)
def test_parse_codec_rejects_with_a_reason(name: str, problem: str) -> None:
    with pytest.raises(CodecError, match=r"^codec: ") as info:
        parse_codec(name)
    assert problem in str(info.value)


def test_listing_says_which_codecs_are_lossless() -> None:
    listed = {info.name: info.lossless for info in codecs.list_codecs()}
    assert listed == {
        "raw": True, "fp16": False, "int8": False, "int8c": False, "q4": False, "q4c": False,
        "q2": False, "q2c": False, "clip4": False, "u8": True, "jpeg:Q": False,
    }  # fmt: skip
    assert codecs.is_lossless("raw+zstd") and not codecs.is_lossless("q4c+lz4")


def _good(**changes: object) -> dict[str, object]:
    base = encode(FEATURES, "int8")
    fields = {"dtype": base.dtype, "shape": base.shape, "codec": base.codec}
    return {**fields, "params": dict(base.params), "data": base.data, **changes}


_Q4C = encode(FEATURES, "q4c")
_BAD_TENSORS = [
    ({"dtype": "complex64"}, "dtype: 'complex64' is not one of"),
    ({"dtype": 3}, "dtype: 3 is not one of"),
    ({"dtype": "int32"}, "dtype: codec int8 takes float16, float32, float64, not int32"),
    ({"codec": "int9"}, "codec: unknown codec 'int9'"),
    ({"shape": [2, 4, 5, 7]}, "shape: expected a tuple"),
    ({"shape": ()}, "shape: rank 0 is outside 1..8"),
    ({"shape": (1,) * 9}, "shape: rank 9 is outside 1..8"),
    ({"shape": (2, 0, 5, 7)}, r"shape\[1\]: 0 is outside"),
    ({"shape": (2, -4, 5, 7)}, r"shape\[1\]: -4 is outside"),
    ({"shape": ("2", 4, 5, 7)}, r"shape\[0\]: expected an int, got str"),
    ({"shape": (True, 4, 5, 7)}, r"shape\[0\]: expected an int, got bool"),
    ({"shape": (10**6, 10**6)}, "shape: .* has more than 2147483647 elements"),
    ({"shape": (2, 4, 5, 8)}, "data: 280 bytes, but float32 .* in int8 takes 320"),
    ({"data": "abc"}, "data: expected bytes, got str"),
    ({"params": [1]}, "params: expected a map, got list"),
    ({"params": {1: 2}}, "params: keys must be strings"),
    ({"params": {"scale": 0.1, "zp": [0]}}, r"params\.zp: list is not int, float, str or bin"),
    ({"params": {"scale": 0.1}}, r"params: codec int8 needs \['zp'\], missing"),
    ({"params": {"scale": 0.1, "zp": 0, "x": 1}}, r"params: codec int8 takes only"),
    ({"params": {"scale": float("nan"), "zp": 0}}, r"params\.scale: nan is not a finite"),
    ({"params": {"scale": float("inf"), "zp": 0}}, r"params\.scale: inf is not a finite"),
    ({"params": {"scale": 1e39, "zp": 0}}, r"params\.scale: 1e\+39 is not a finite"),
    ({"params": {"scale": 0.0, "zp": 0}}, r"params\.scale: 0.0 is not a positive"),
    ({"params": {"scale": -1.0, "zp": 0}}, r"params\.scale: -1.0 is not a positive"),
    ({"params": {"scale": "1", "zp": 0}}, r"params\.scale: expected a number, got str"),
    ({"params": {"scale": 0.1, "zp": 200}}, r"params\.zp: 200 is outside \[-128, 127\]"),
    ({"params": {"scale": 0.1, "zp": 1.0}}, r"params\.zp: expected an int, got float"),
    (
        {"codec": "q4", "params": {"lo": 1.0, "hi": 1.0}, "data": b"\0" * 140},
        r"params\.hi: hi \(1.0\) must exceed lo \(1.0\)",
    ),
    (
        {"codec": "q4c", "params": {**_Q4C.params, "lo": b"\0" * 12}, "data": _Q4C.data},
        r"params\.lo: expected 16 bytes \(4 x float32\), got 12",
    ),
    (
        {"codec": "q4c", "params": {**_Q4C.params, "hi": np.full(4, np.nan, "<f4").tobytes()}},
        r"params\.hi: values must be finite",
    ),
    (
        {"codec": "q4c", "params": {**_Q4C.params, "lo": _Q4C.params["hi"]}, "data": _Q4C.data},
        r"params\.hi: channel 0: hi \(.*\) must exceed lo",
    ),
    (
        {"codec": "q4c", "params": {**_Q4C.params, "lo": 0.0}, "data": _Q4C.data},
        r"params\.lo: expected bin \(4 x float32\), got float",
    ),
    (
        {"codec": "int8c", "shape": (280,), "params": {"scale": b"", "zp": b""}},
        r"shape: per-channel codecs need rank >= 2",
    ),
    ({"codec": "jpeg:50", "dtype": "uint8", "params": {}}, r"shape: jpeg needs \(1, C, H, W\)"),
]


@pytest.mark.parametrize(("changes", "message"), _BAD_TENSORS)
def test_invalid_tensors_name_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(CodecError, match=f"^{message}"):
        EncodedTensor(**_good(**changes))  # type: ignore[arg-type]


def test_huge_declared_shape_fails_before_allocating() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match=r"^shape\[0\]: 1000000000000 is outside"):
            EncodedTensor("float32", (10**12,), "raw", {}, b"")
        with pytest.raises(CodecError, match=r"^shape: .* more than"):
            EncodedTensor("float32", (10**6, 10**6), "q4+zstd", {"lo": 0.0, "hi": 1.0}, b"")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_decode_enforces_max_bytes_before_decoding() -> None:
    tensor = encode(FEATURES, "q4+zstd")
    with pytest.raises(CodecError, match=r"^shape: float32 \[2, 4, 5, 7\] decodes to 1120 bytes"):
        decode(tensor, max_bytes=1000)
    codecs.check(tensor, max_bytes=1120)
    tiny_jpeg = encode(np.zeros((1, 1, 4, 4), np.uint8), "jpeg:50")  # 16 pixels, ~300 bytes
    with pytest.raises(CodecError, match=r"^data: \d+ bytes, over the limit of 100"):
        codecs.check(tiny_jpeg, max_bytes=100)


def _staged(stage: str, data: bytes, shape: tuple[int, ...] = (64,)) -> EncodedTensor:
    return EncodedTensor("uint8", shape, f"raw+{stage}", {}, data)


_BOMB = b"\0" * (64 << 20)
_BAD_STAGES = [
    ("zstd", b"not zstd", "data: not a zstd frame of 64 bytes"),
    ("zstd", zstandard.ZstdCompressor().compress(b"\0" * 65), "data: zstd frame declares 65 bytes"),
    ("zstd", zstandard.ZstdCompressor().compress(_BOMB), "data: zstd frame declares 67108864"),
    (
        "zstd",
        zstandard.ZstdCompressor(write_content_size=False).compress(_BOMB),
        "data: not a zstd frame of 64 bytes",
    ),
    ("zstd", zstandard.ZstdCompressor().compress(b"\0" * 64) + b"x", "data: not a zstd frame"),
    ("zstd", zstandard.ZstdCompressor().compress(b"\0" * 63), "data: zstd frame declares 63"),
    ("lz4", b"not lz4", "data: not an lz4 frame"),
    ("lz4", lz4.frame.compress(_BOMB), "data: not one complete lz4 frame of 64 bytes"),
    ("lz4", lz4.frame.compress(b"\0" * 64)[:-4], "data: not one complete lz4 frame"),
    ("lz4", lz4.frame.compress(b"\0" * 64) + b"x", "data: not one complete lz4 frame"),
    ("lz4", lz4.frame.compress(b"\0" * 60), "data: not one complete lz4 frame"),
]
del _BOMB


@pytest.mark.parametrize(("stage", "data", "message"), _BAD_STAGES)
def test_bad_stages_are_bounded_codec_errors(stage: str, data: bytes, message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match=f"^{message}"):
            decode(_staged(stage, data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_jpeg_data_must_match_the_declared_image() -> None:
    x = np.zeros((1, 3, 16, 16), dtype=np.uint8)
    jpeg = encode(x, "jpeg:75").data
    with pytest.raises(CodecError, match=r"^data: JPEG is RGB 16x16, shape says RGB 16x8"):
        decode(EncodedTensor("uint8", (1, 3, 8, 16), "jpeg:75", {}, jpeg))
    with pytest.raises(CodecError, match=r"^data: JPEG is RGB 16x16, shape says L 16x16"):
        decode(EncodedTensor("uint8", (1, 1, 16, 16), "jpeg:75", {}, jpeg))
    with pytest.raises(CodecError, match=r"^data: not a decodable JPEG"):
        decode(EncodedTensor("uint8", (1, 3, 16, 16), "jpeg:75", {}, b"GIF89a" + jpeg))
    with pytest.raises(CodecError, match=r"^data: not a decodable JPEG"):
        decode(EncodedTensor("uint8", (1, 3, 16, 16), "jpeg:75", {}, jpeg[:200]))


@pytest.mark.parametrize(
    ("x", "name", "params", "message"),
    [
        ([1.0], "raw", None, "x: expected a numpy array, got list"),
        (np.array([1.0, np.nan], np.float32), "q4", None, "x: the tensor holds NaN"),
        (np.array([1.0, np.inf], np.float32), "int8", None, "x: the tensor holds NaN"),
        (np.array([1.0, 1e300]), "q4", None, "x: the tensor holds NaN, infinity or values beyond"),
        (np.zeros(4, np.float32), "raw", {"lo": 0}, r"params: codec raw takes only \[\]"),
        (np.zeros(4, np.float32), "q4", {"low": 0}, r"params: only 'lo' and 'hi' are accepted"),
        (np.zeros(4, np.float32), "q4", {"lo": [0, 1]}, r"params\.lo: expected a float, got"),
        (np.zeros((1, 2)), "q4c", {"hi": [1, 2, 3]}, r"params\.hi: expected a float or 2 floats"),
        (np.zeros(4, np.float32), "q4", {"lo": "x"}, r"params\.lo: expected a float or floats"),
        (np.zeros(4, np.float32), "q4", {"lo": 2, "hi": 1}, r"params\.hi: hi \(1.0\) must exceed"),
        (np.zeros(4, np.float32), "q2", {"hi": float("inf")}, r"params\.hi: values must be fin"),
        (np.zeros(4, np.complex64), "raw", None, "dtype: 'complex64' is not one of"),
        (np.zeros((1, 3, 4, 4), np.uint8), "jpeg:80", {"q": 1}, r"params: codec jpeg takes only"),
        (np.zeros((2, 3, 4, 4), np.uint8), "jpeg:80", None, r"shape: jpeg needs \(1, C, H, W\)"),
        (np.zeros(()), "raw", None, "shape: rank 0 is outside 1..8"),
        (np.zeros((1, 0)), "raw", None, r"shape\[1\]: 0 is outside"),
    ],
)
def test_encode_errors_name_the_field(x: object, name: str, params: object, message: str) -> None:
    with pytest.raises(CodecError, match=f"^{message}"):
        encode(x, name, params)  # type: ignore[arg-type]
