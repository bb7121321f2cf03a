"""Where a device's frames come from: image files, a folder, .npy arrays, photos, or a
labelled dataset.

Every source yields uint8 images (HxW or HxWxC) or float arrays already shaped
like the model input; the device preprocesses images with the model's
metadata. ``synthetic`` draws random crops of scikit-image's bundled photos
(or MNIST digits for a grayscale model), so a demo needs no files at all.
``fashion-mnist:test`` (or ``:train``) streams a Fashion-MNIST split in order,
and ``labels`` gives its true classes, so a run can report its accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import cycle, islice
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from splitmq.shared.errors import UserError

SYNTHETIC_DISTINCT = 64  # frames made once and cycled: a device may run for days
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def frames(
    source: str, count: int | None = None, channels: str = "RGB", seed: int = 0
) -> Iterator[np.ndarray]:
    """``count`` frames (None: all a finite source has; synthetic ones without end)."""
    if source.startswith(LABELLED):
        images, _ = _labelled(source)
        return islice(iter(images), count)
    if source == "synthetic":
        distinct = synthetic(min(count or SYNTHETIC_DISTINCT, SYNTHETIC_DISTINCT), channels, seed)
        return islice(cycle(distinct), count)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | {".npy"})
        if not files:
            raise UserError(f"{path}: no images or .npy files in this folder")
        return islice((f for p in files for f in _from_file(p)), count)
    if path.is_file():
        return islice(_from_file(path), count)
    raise UserError(
        f"{source}: no such file or folder (or use 'synthetic' or 'fashion-mnist:test')"
    )


LABELLED = "fashion-mnist:"


def labels(source: str) -> list[int] | None:
    """The true class of each frame of a labelled source, in order; None for the others."""
    return [int(y) for y in _labelled(source)[1]] if source.startswith(LABELLED) else None


def _labelled(source: str) -> tuple[np.ndarray, np.ndarray]:
    from splitmq.shared.offline.datasets import fashion_mnist

    return fashion_mnist(source.removeprefix(LABELLED))


def synthetic(count: int, channels: str = "RGB", seed: int = 0) -> list[np.ndarray]:
    from splitmq.shared.offline.datasets import mnist_digits, photos

    if channels == "L":
        images, _ = mnist_digits()
        rng = np.random.default_rng(seed)
        return [images[i] for i in rng.integers(0, len(images), count)]
    return photos(count, seed=seed)


def _from_file(path: Path) -> Iterator[np.ndarray]:
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path}: not a readable .npy array ({exc})") from exc
        if arr.dtype == np.uint8 and arr.ndim in (2, 3) and (arr.ndim == 2 or arr.shape[2] <= 4):
            yield arr  # one image
        else:
            yield from arr  # a stack of images or model inputs
        return
    try:
        with Image.open(path) as img:
            yield np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not an image Pillow can read") from exc
