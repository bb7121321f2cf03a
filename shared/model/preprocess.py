"""Turning an image into the model's input, split in two halves on purpose.

``to_pixels`` (resize, centre crop, NCHW uint8) runs on the device; the
``normalize`` half ((x - mean) / std as float32) runs wherever the first
partition runs. That is what lets cut 0 travel as uint8 or JPEG and be
normalised by the receiving tier.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from splitmq.shared.errors import ImageError, UserError
from splitmq.shared.model.manifest import Preprocess

if TYPE_CHECKING:
    from splitmq.shared.model.pool import ModelVersion


#: Pixels an image may have: a 24 MP camera's fit, a decompression bomb's do not.
MAX_PIXELS = 25_000_000
#: The image formats splitmq reads from bytes, by their magic bytes.
MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}


def read_image(data: bytes, what: str = "the image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A JPEG or PNG from bytes that came from a network or a user, decoded only after
    its magic bytes and the size in its header passed; ``ImageError`` says what is wrong."""
    kind = next((name for name, magic in MAGIC.items() if data.startswith(magic)), None)
    if kind is None:
        raise ImageError(f"{what} is not a JPEG or PNG image (starts {data[:8].hex()})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{what}: {kind} over {max_pixels:,} pixels ({exc})") from None
    except Exception as exc:  # Pillow's many ways to say a file is broken
        raise ImageError(f"{what}: {kind} does not decode: {exc}") from None
    width, height = image.size  # from the header: nothing decoded yet
    if width * height > max_pixels:
        raise ImageError(f"{what}: {kind} of {width}x{height} is over {max_pixels:,} pixels")
    try:
        image.load()
    except Exception as exc:
        raise ImageError(f"{what}: {kind} does not decode: {exc}") from None
    return image


def framing(pre: Preprocess, width: int, height: int) -> tuple[tuple[int, int], int, int]:
    """How a ``width`` x ``height`` image becomes the model's input: the size it is
    resized to, then the (left, top) of the centre crop taken from it."""
    rows, cols = pre.size
    if not pre.resize:
        return (cols, rows), 0, 0  # stretched to the input's size
    scale = pre.resize / min(width, height)
    resized = (max(cols, round(width * scale)), max(rows, round(height * scale)))
    return resized, (resized[0] - cols) // 2, (resized[1] - rows) // 2


def to_pixels(image: np.ndarray | Image.Image, pre: Preprocess) -> np.ndarray:
    """An HxW(xC) uint8 image (or PIL image) -> (1, C, H, W) uint8 at the model's size."""
    img = image if isinstance(image, Image.Image) else _as_pil(image)
    img = img.convert("RGB" if pre.channels == "BGR" else pre.channels)
    height, width = pre.size
    resized, left, top = framing(pre, img.width, img.height)
    if img.size != resized:
        img = img.resize(resized, Image.Resampling.BILINEAR)
    if img.size != (width, height):
        img = img.crop((left, top, left + width, top + height))
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if pre.channels == "BGR":
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def normalize(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(N, C, H, W) uint8 -> float32 model input, in the model's layout."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    x = (pixels.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if pre.layout == "NHWC" else x


def model_input(frame: np.ndarray, mv: ModelVersion, pixels: bool = False) -> np.ndarray:
    """What a device feeds its head: an image preprocessed (only to pixels when
    ``pixels``: an input codec sends them and the receiving tier normalises), or a
    float array of the model input's shape as it is. UserError for anything else."""
    pre, spec = mv.manifest.preprocess, mv.manifest.input
    if frame.dtype == np.uint8 and pre is not None:
        image = to_pixels(frame, pre)
        return image if pixels else normalize(image, pre)
    shape = tuple(frame.shape) if frame.ndim == len(spec.shape) else (1, *frame.shape)
    if shape[1:] != tuple(spec.shape[1:]) or frame.dtype != np.dtype(spec.dtype):
        raise UserError(
            f"{mv.name} takes images or {spec.dtype} arrays of shape "
            f"{spec.shape}, got {frame.dtype} {list(frame.shape)}"
        )
    return frame.reshape(shape)


def _as_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise UserError(f"an image must be HxW or HxWxC uint8, got {image.dtype} {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(image)
