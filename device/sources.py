"""Where a device's frames come from: a camera, a video file, image files, a folder, .npy
arrays, photos, or a labelled dataset.

Every source yields uint8 images (HxW or HxWxC) or float arrays already shaped
like the model input; the device preprocesses images with the model's
metadata. A camera (``rtsp://``, ``http(s)://`` MJPEG or snapshot, ``/dev/videoN``)
is read at its own rate and sends its newest frame (``device.capture``); a video
file sends every frame in order. A folder sends its files in name order, skipping
(with a warning) those that are no image; ``loop`` repeats files and folders.
``synthetic`` draws random crops of scikit-image's bundled photos (or MNIST
digits for a grayscale model), so a demo needs no files at all.
``fashion-mnist:test`` (or ``:train``) streams a Fashion-MNIST split in order,
and ``labels`` gives its true classes, so a run can report its accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from splitmq.shared.errors import UserError

if TYPE_CHECKING:
    from splitmq.device.capture import Camera
    from splitmq.device.media import Kind

log = logging.getLogger(__name__)

SYNTHETIC_DISTINCT = 64  # frames made once and cycled: a device may run for days
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
VIDEO_SUFFIXES |= {".mjpeg", ".mjpg", ".h264", ".h265", ".flv", ".wmv"}
LABELLED = "fashion-mnist:"
SOURCES_HINT = (
    "a file, folder, video, rtsp:// or http(s):// URL, /dev/videoN, 'synthetic' "
    "or 'fashion-mnist:test'"
)


@dataclass
class Tally:
    """What a file source met on its way: files read, files skipped, why it ended early."""

    files: int = 0
    skipped: int = 0
    note: str | None = None


class Source:
    """The frames of one ``--source`` (at most ``count``), and what became of them:
    ``stale`` (camera frames dropped for newer ones), ``skipped`` (files in a folder
    that are no image) and ``note`` (why it sent fewer than ``count``). Iterate it once;
    ``close()`` ends it, a camera's capture thread too."""

    def __init__(
        self,
        name: str,
        frames: Iterable[np.ndarray],
        count: int | None,
        tally: Tally | None = None,
        camera: Camera | None = None,
    ) -> None:
        self.name, self.count, self.camera = name, count, camera
        self.tally = tally or Tally()
        self.sent = 0
        self._frames, self._closed = frames, False

    @property
    def stale(self) -> int:
        return self.camera.stale if self.camera else 0

    @property
    def skipped(self) -> int:
        return self.tally.skipped

    @property
    def note(self) -> str | None:
        return self.tally.note

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in islice(self._frames, self.count):
            if self._closed:
                return
            self.sent += 1
            yield frame
        if self._closed or self.tally.note:
            return
        if self.camera is not None and self.camera.failure:
            self.tally.note = f"camera {self.camera.name}: {self.camera.failure}"
        elif self.count is not None and self.sent < self.count:
            files = self.tally.files
            what = _plural(files, "file") if files else _plural(self.sent, "frame")
            if files and files != self.sent:
                what += f" ({_plural(self.sent, 'frame')})"
            self.tally.note = (
                f"{self.name}: sent all {what}, fewer than --frames {self.count} "
                "(--loop repeats them)"
            )

    def close(self) -> None:
        """Stop: the frames end at the next one (a camera's at once)."""
        self._closed = True
        if self.camera is not None:
            self.camera.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(
    source: str,
    count: int | None = None,
    channels: str = "RGB",
    seed: int = 0,
    *,
    loop: bool = False,
    fps: float | None = None,
) -> Source:
    """``source``'s frames, ``count`` of them (None: all a finite source has; a camera's
    and synthetic ones without end). Checked here, so a bad path or URL raises now."""
    kind = camera_kind(source)
    if kind is not None:
        if loop:
            raise UserError("--loop repeats files: a camera streams until stopped or --frames")
        from splitmq.device.capture import Camera

        camera = Camera(source, kind, poll_s=1 / fps if fps else None)
        return Source(camera.name, camera.frames(fps), count, camera=camera)
    if source.startswith(LABELLED):
        if loop:
            raise UserError(f"--loop: {source} is sent once, in order, to match its labels")
        images, _ = _labelled(source)
        return Source(source, iter(images), count)
    if source == "synthetic":
        distinct = synthetic(min(count or SYNTHETIC_DISTINCT, SYNTHETIC_DISTINCT), channels, seed)
        return Source(source, cycle(distinct), count)
    path, tally = Path(source), Tally()
    if path.is_dir():
        return Source(source, _folder(path, loop, tally), count, tally)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return Source(source, _video(path, loop, tally), count, tally)
    if path.is_file():
        try:
            arrays = list(_from_file(path))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return Source(source, cycle(arrays) if loop else iter(arrays), count, tally)
    raise UserError(f"{source}: no such file or folder (give {SOURCES_HINT})")


def camera_kind(source: str) -> Kind | None:
    """Which kind of camera ``source`` names, or None for files and the others."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "http"
    if source.startswith("/dev/video"):
        if not Path(source).exists():
            raise UserError(f"{source}: no such V4L2 device (the cameras here: ls /dev/video*)")
        return "v4l2"
    return None


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


def _folder(path: Path, loop: bool, tally: Tally) -> Iterator[np.ndarray]:
    """The folder's files in name order (again and again with ``loop``); a file that is
    no image or .npy is skipped with a warning, once. Listed here, so an empty folder
    fails at start."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.suffix.lower() in IMAGE_SUFFIXES | {".npy"} for p in files):
        raise UserError(f"{path}: no images or .npy files in this folder")

    def frames() -> Iterator[np.ndarray]:
        first = True
        while True:
            sent = 0
            for p in files:
                try:
                    arrays = list(_from_file(p))
                except ValueError as exc:
                    if first:
                        tally.skipped += 1
                        log.warning("skipped %s", exc)
                    continue
                tally.files += first
                for arr in arrays:
                    sent += 1
                    yield arr
            if not sent:
                tally.note = f"{path}: no readable image ({_plural(len(files), 'file')} skipped)"
            if not (loop and sent):
                return
            first = False

    return frames()


def _video(path: Path, loop: bool, tally: Tally) -> Iterator[np.ndarray]:
    """Every frame of a video file, in order (again and again with ``loop``): a file is
    not live, so none is dropped. Opened here, so an unreadable file fails at start."""
    from splitmq.device.media import CameraError, Media

    media: Media | None = Media(str(path), "video")

    def frames() -> Iterator[np.ndarray]:
        nonlocal media
        while True:
            sent = 0
            try:
                media = media or Media(str(path), "video")
                for frame in media.frames():
                    sent += 1
                    yield frame
            except CameraError as exc:  # mid-file: what was read counts, the run ends
                tally.note = str(exc)
                return
            finally:
                if media is not None:
                    media.close()
                media = None
            if not (loop and sent):
                return

    return frames()


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _from_file(path: Path) -> Iterator[np.ndarray]:
    """The image, or the arrays, a file holds; ValueError saying why it is neither."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc
        if arr.dtype == np.uint8 and arr.ndim in (2, 3) and (arr.ndim == 2 or arr.shape[2] <= 4):
            yield arr  # one image
        else:
            yield from arr  # a stack of images or model inputs
        return
    try:
        with Image.open(path) as img:
            yield np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not an image Pillow can read") from exc
