"""Real cameras for the tests: an HTTP camera in the test process (an MJPEG stream and a
snapshot URL, serving JPEGs of real photos) and GStreamer's RTSP server in a subprocess
(Debian's, driven by ``rtsp_server.py`` under the system python3 with gi), serving a
video of real photos that PyAV writes. Both listen on free ports of 127.0.0.1.

`make gstreamer` installs the RTSP server where it is missing; without it the RTSP
tests fail, saying so, rather than skip.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from splitmq.shared.offline.datasets import photos

SIZE = (320, 240)  # width, height of every frame served
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi lives
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def frames_of_photos(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` real photo crops, all resized to ``SIZE``, as RGB arrays."""
    return [np.asarray(Image.fromarray(p).resize(SIZE)) for p in photos(count, seed=seed)]


def jpeg(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class HttpCamera:
    """What the HTTP camera serves and saw: ``url(path)``; ``connections`` to the stream,
    ``snapshots`` served; ``drop_after``: parts the next stream connection gets before
    the server closes it (None: endless)."""

    port: int
    fps: float
    jpegs: list[bytes]
    stopping: threading.Event = field(default_factory=threading.Event)
    drop_after: int | None = None
    connections: int = 0
    snapshots: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    camera: HttpCamera  # set on the subclass each server makes

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        cam = self.camera
        if self.path == "/snapshot.jpg":
            body = cam.jpegs[cam.snapshots % len(cam.jpegs)]
            cam.snapshots += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/stream.mjpg":
            cam.connections += 1
            parts, cam.drop_after = cam.drop_after, None
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=splitmqframe")
            self.end_headers()
            self._stream(parts)
        else:
            self.send_error(404, "no such camera")

    def _stream(self, parts: int | None) -> None:
        """JPEG parts at the camera's frame rate until the client leaves, the server
        stops, or ``parts`` were sent (then the connection closes: a dropped stream)."""
        cam, sent = self.camera, 0
        try:
            while parts is None or sent < parts:
                body = cam.jpegs[sent % len(cam.jpegs)]
                head = f"--splitmqframe\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}"
                self.wfile.write(head.encode() + b"\r\n\r\n" + body + b"\r\n")
                self.wfile.flush()
                sent += 1
                if cam.stopping.wait(1 / cam.fps):  # the camera's own pace
                    return
        except (BrokenPipeError, ConnectionResetError):
            return
        self.close_connection = True


@contextmanager
def serving_http_camera() -> Iterator[HttpCamera]:
    """An HTTP camera at 25 fps: /stream.mjpg (multipart/x-mixed-replace), /snapshot.jpg."""
    camera = HttpCamera(port=0, fps=25.0, jpegs=[jpeg(f) for f in frames_of_photos(8, seed=3)])
    handler = type("Handler", (_Handler,), {"camera": camera})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    camera.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="http-camera", daemon=True)
    thread.start()
    try:
        yield camera
    finally:
        camera.stopping.set()
        server.shutdown()
        server.server_close()


def write_video(path: Path, frames: list[np.ndarray], repeat: int, fps: int = 15) -> Path:
    """An H.264 MP4 (PyAV's libx264) showing each frame ``repeat`` times, in order."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"preset": "veryfast", "tune": "zerolatency"}
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for _ in range(repeat):
                out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    return path


@dataclass(frozen=True)
class RtspCamera:
    url: str
    video: Path
    frames: int  # in the video, served in real time from its start to each client


def _rtsp_answers(port: int) -> bool:
    """Whether an RTSP server on ``port`` answers OPTIONS."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"OPTIONS rtsp://127.0.0.1:{port}/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        return s.recv(64).startswith(b"RTSP/1.0 200")


@contextmanager
def serving_rtsp_camera(folder: Path) -> Iterator[RtspCamera]:
    """GStreamer's RTSP server on a free port, serving a 20 s video of real photos (written
    into ``folder``) at rtsp://127.0.0.1:PORT/cam; ready once it answers RTSP OPTIONS."""
    check = subprocess.run(
        [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--check"], capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.fail(
            "GStreamer's RTSP server is missing (make gstreamer installs it): "
            + (check.stderr.strip().splitlines() or ["no output"])[-1]
        )
    photos_ = frames_of_photos(30, seed=4)
    video = write_video(folder / "photos.mp4", photos_, repeat=10)
    server = subprocess.Popen(
        [SYSTEM_PYTHON, str(RTSP_SCRIPT), str(video)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""  # its port, once bound
        if not line.strip().isdigit():
            server.kill()
            _, err = server.communicate(timeout=10)
            pytest.fail(f"the RTSP server did not start: {line!r} {err.strip()[-500:]}")
        port = int(line)
        assert _rtsp_answers(port), "the RTSP server does not answer OPTIONS"
        yield RtspCamera(f"rtsp://127.0.0.1:{port}/cam", video, len(photos_) * 10)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
