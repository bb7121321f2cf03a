"""Latest-frame capture from a live camera: RTSP, an HTTP MJPEG stream or snapshot URL, V4L2.

A thread reads the camera at the camera's own rate into one slot that keeps only the
newest frame, so a pipeline slower than the camera sends fresh frames and drops the
stale ones (and counts them) instead of queueing them: memory stays constant and a
frame sent is at most one frame old. A stream that drops is reopened with backoff, a
log line for each try; only the first open is fatal (``CameraError``), so a wrong URL
fails at start-up while a camera that reboots costs only the frames it missed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from splitmq.device.media import CameraError, Kind, Media, Picture, redacted

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: The wait after a drop, doubled per failed try up to the second; reset by a frame.
BACKOFF_S = (0.5, 10.0)
#: How often a snapshot URL is fetched when no --fps says.
SNAPSHOT_PERIOD_S = 1.0
#: How long ``close`` waits for the capture thread (blocked in a read at worst).
JOIN_S = 2.0


class LatestFrame:
    """One slot holding the newest frame (decoded, converted to RGB only once taken).
    Each frame is taken at most once; one replaced before it was taken is ``stale``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Picture | None = None
        self._closed = False
        self.captured = self.stale = 0

    def put(self, frame: Picture) -> None:
        with self._cond:
            self.stale += self._frame is not None
            self._frame = frame
            self.captured += 1
            self._cond.notify_all()

    def take(self) -> np.ndarray | None:
        """The newest frame not taken yet, waiting for one; None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed)
            frame, self._frame = self._frame, None
        return None if frame is None or self._closed else frame()  # converted outside the lock

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Camera:
    """A live source read by a thread of its own into a ``LatestFrame`` (see module
    docstring). The constructor opens the source once: one that never opens raises
    ``CameraError`` there, naming the URL and FFmpeg's reason."""

    def __init__(self, source: str, kind: Kind, poll_s: float | None = None) -> None:
        self.source, self.kind = source, kind
        self.name = redacted(source)
        self.latest = LatestFrame()
        self.reconnects = 0  # times the camera came back after a drop
        self.failure: str | None = None  # why capture stopped for good (a bug, not a drop)
        self._stop = threading.Event()
        media = Media(source, kind)
        self.snapshot = media.still  # a snapshot URL: fetched every poll_s
        self._poll_s = poll_s or SNAPSHOT_PERIOD_S
        self._thread = threading.Thread(
            target=self._capture, args=(media,), name=f"camera {self.name}", daemon=True
        )
        self._thread.start()

    @property
    def stale(self) -> int:
        """Frames the camera delivered that were replaced by a newer one before sending."""
        return self.latest.stale

    def frames(self, fps: float | None = None) -> Iterator[np.ndarray]:
        """The newest frame at each 1/fps tick (without fps: each new frame) until closed.
        Pacing before the take, not after, keeps each frame sent as fresh as the camera's."""
        start = time.monotonic()  # at the first frame asked for: generators start lazily
        for i in itertools.count():
            if fps and self._stop.wait(max(0.0, start + i / fps - time.monotonic())):
                return
            frame = self.latest.take()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        """Stop capturing; ``frames`` ends. Idempotent."""
        self._stop.set()
        self.latest.close()
        if self._thread is not threading.current_thread():
            self._thread.join(JOIN_S)

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _capture(self, media: Media | None) -> None:
        try:
            self._reconnecting(media)
        except Exception as exc:  # a bug, not a camera: end the frames and say why
            log.exception("camera %s: capture stopped", self.name)
            self.failure = f"capture stopped: {type(exc).__name__}: {exc}"
        finally:
            self.latest.close()

    def _reconnecting(self, media: Media | None) -> None:
        """Read sessions back to back: a snapshot after the poll period, a dropped stream
        (or a failed snapshot) after the backoff, until ``close``."""
        wait, tries, down_since = BACKOFF_S[0], 0, None
        while not self._stop.is_set():
            started, got, reason = time.monotonic(), 0, "the stream ended"
            try:
                if media is None:
                    media = Media(self.source, self.kind)
                got = self._read(media)
            except CameraError as exc:
                reason = exc.reason
            finally:
                if media is not None:
                    media.close()
                    media = None
            if got and down_since is not None:
                self.reconnects += 1
                log.warning(
                    "camera %s: back after %.1f s", self.name, time.monotonic() - down_since
                )
            if got:
                wait, tries, down_since = BACKOFF_S[0], 0, None
            if self.snapshot and got:  # the next snapshot one period after this one began
                if self._stop.wait(max(0.0, started + self._poll_s - time.monotonic())):
                    return
                continue
            if self._stop.is_set():
                return
            down_since = down_since or time.monotonic()
            tries += 1
            what = "snapshot failed" if self.snapshot else "stream dropped"
            log.warning(
                "camera %s: %s (%s); reconnecting in %.1f s (try %d)",
                self.name, what, reason, wait, tries,
            )  # fmt: skip
            if self._stop.wait(wait):
                return
            wait = min(2 * wait, BACKOFF_S[1])

    def _read(self, media: Media) -> int:
        """Frames from one open session into the slot until it ends (a snapshot: its one
        image) or the camera closes; how many."""
        got = 0
        for picture in media.pictures():
            self.latest.put(picture)
            got += 1
            if self._stop.is_set() or media.still:
                break
        return got
