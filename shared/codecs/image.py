"""``jpeg:Q``: compress a model input image (cut 0) instead of a feature map.

The tensor is uint8 (1, C, H, W) with C = 1 (greyscale) or 3 (RGB), before the
model's normalisation; the data is one JPEG file written by Pillow at quality Q.
"""

import io
import struct
from collections.abc import Mapping

import numpy as np
from PIL import Image

from splitmq.shared.codecs.base import Params, expect_keys
from splitmq.shared.errors import CodecError

_MODES = {1: "L", 3: "RGB"}
_MAX_SIDE = 65500  # the JPEG format's limit
_NO_KEYS: frozenset[str] = frozenset()
# What Pillow raises on corrupt or hostile JPEG data; open() raises the bomb error for
# headers over 2 * MAX_IMAGE_PIXELS, and warns over MAX_IMAGE_PIXELS (an error under -W error).
_PIL_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of a JPEG-able tensor shape, or a CodecError naming what is wrong."""
    if len(shape) != 4 or shape[0] != 1 or shape[1] not in _MODES:
        raise CodecError(f"shape: jpeg needs (1, C, H, W) with C = 1 or 3, got {list(shape)}")
    if max(shape[2:]) > _MAX_SIDE:
        raise CodecError(f"shape: jpeg images are at most {_MAX_SIDE} pixels a side")
    return shape[1], shape[2], shape[3]


class Jpeg:
    """JPEG at quality ``level`` (1..100); decodes to uint8 (1, C, H, W)."""

    lossless = False
    dtypes = frozenset({"uint8"})
    summary = "JPEG file of a uint8 (1, C, H, W) image, C = 1 or 3; Q = quality 1..100"
    name = "jpeg"

    def encode(
        self, x: np.ndarray, level: int | None, params: Mapping[str, object]
    ) -> tuple[Params, bytes]:
        expect_keys(params, _NO_KEYS, self.name)
        _image_shape(x.shape)
        pixels = x[0, 0] if x.shape[1] == 1 else np.ascontiguousarray(x[0].transpose(1, 2, 0))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=level)
        return {}, buffer.getvalue()

    def check(self, dtype: str, shape: tuple[int, ...], params: Params) -> None:
        expect_keys(params, _NO_KEYS, self.name)
        _image_shape(shape)

    def decode(self, data: bytes, dtype: str, shape: tuple[int, ...], params: Params) -> np.ndarray:
        channels, height, width = _image_shape(shape)
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                # Checked before load(): a header cannot make us allocate a larger image.
                if image.size != (width, height) or image.mode != _MODES[channels]:
                    raise CodecError(
                        f"data: JPEG is {image.mode} {image.size[0]}x{image.size[1]}, "
                        f"shape says {_MODES[channels]} {width}x{height}"
                    )
                pixels = np.asarray(image)
        except _PIL_ERRORS as exc:
            raise CodecError(f"data: not a decodable JPEG ({exc})") from exc
        if channels == 1:
            return pixels.reshape(shape).copy()
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))[None]
