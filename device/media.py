"""The one module that talks to PyAV (FFmpeg's libraries): open a camera or a video file,
decode its frames to RGB arrays, and turn FFmpeg's errors into a ``CameraError`` that
names the source (never its password) and FFmpeg's reason.

PyAV because its wheels bundle FFmpeg with RTSP, HTTP(S) (MJPEG streams and snapshots),
V4L2 and the common video containers and codecs, and ask for no other Python package.
It is imported when a camera or video is opened, so file and synthetic sources never
load FFmpeg.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from splitmq.shared.errors import UserError

if TYPE_CHECKING:
    import numpy as np

#: What a source is, by its name: decides how FFmpeg opens it.
Kind = Literal["rtsp", "http", "v4l2", "video"]

#: A decoded frame, converted to HxWx3 RGB uint8 when called.
Picture = Callable[[], "np.ndarray"]

#: Seconds to open a source, and to wait for its next packet before calling it dropped.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0

#: FFmpeg's options per kind: RTSP over TCP, as cameras behind NAT and lossy links need.
_OPTIONS: dict[Kind, dict[str, str]] = {
    "rtsp": {"rtsp_transport": "tcp"},
    "http": {},
    "v4l2": {},
    "video": {},
}
_FORMAT: dict[Kind, str | None] = {"rtsp": None, "http": None, "v4l2": "v4l2", "video": None}


class CameraError(UserError):
    """A camera or video cannot be opened or read; ``reason`` is FFmpeg's word for it."""

    def __init__(self, source: str, reason: str, doing: str = "cannot open") -> None:
        super().__init__(f"{redacted(source)}: {doing} ({reason})")
        self.reason = reason


def redacted(source: str) -> str:
    """``source`` without the password a URL may carry: logs and errors never show it."""
    parts = urlsplit(source)
    if not parts.scheme or parts.password is None:
        return source
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


class Media:
    """One open source: a live stream, a snapshot URL's one image, or a video file."""

    def __init__(self, source: str, kind: Kind) -> None:
        import av

        self.source = source
        try:
            self._container = av.open(
                source,
                format=_FORMAT[kind],
                options=_OPTIONS[kind],
                timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S),
            )
        except av.FFmpegError as exc:
            raise CameraError(source, _reason(exc)) from None
        if not self._container.streams.video:
            self._container.close()
            raise CameraError(source, "it has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # decode on several cores where the codec can
        #: A single image (FFmpeg's image demuxers): a snapshot URL, polled again for more.
        fmt = self._container.format.name
        self.still = fmt == "image2" or fmt.endswith("_pipe")

    def frames(self) -> Iterator[np.ndarray]:
        """Decoded frames as HxWx3 RGB uint8, in order, until the source ends."""
        for picture in self.pictures():
            yield picture()

    def pictures(self) -> Iterator[Picture]:
        """Decoded frames, each converted to RGB only when called: a camera converts only
        the frames it sends, not the stale ones it drops."""
        import av

        try:
            for frame in self._container.decode(video=0):
                yield partial(frame.to_ndarray, format="rgb24")
        except av.FFmpegError as exc:
            raise CameraError(self.source, _reason(exc), "cannot read") from None

    def close(self) -> None:
        self._container.close()
