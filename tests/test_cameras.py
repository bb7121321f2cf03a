"""Cameras and files as `splitmq device --source`: real streams, real device runs.

An HTTP camera (MJPEG and snapshots) runs in the test process, GStreamer's RTSP server
in a subprocess (``cameras.py``); the device runs `mnist-cnn` from the real pool on the
device alone, as `splitmq device` does before a planner answers. The frames are crops
of real photos; videos are H.264 that PyAV writes.
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cameras import (
    HttpCamera,
    RtspCamera,
    frames_of_photos,
    jpeg,
    serving_http_camera,
    serving_rtsp_camera,
    write_video,
)
from clitools import cli_env, run_cli, start_cli
from PIL import Image

from splitmq.device.capture import Camera
from splitmq.device.media import CameraError, Media
from splitmq.device.sources import open_source
from splitmq.shared.errors import UserError

pytestmark = pytest.mark.slow  # real models, real streams


@pytest.fixture
def env(settings, real_pool) -> dict[str, str]:
    return cli_env(settings.model_copy(update={"pool": real_pool.root}))


@pytest.fixture
def http_camera() -> Iterator[HttpCamera]:
    with serving_http_camera() as camera:
        yield camera


@pytest.fixture(scope="module")
def rtsp_camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspCamera]:
    with serving_rtsp_camera(tmp_path_factory.mktemp("rtsp")) as camera:
        yield camera


def device(env: dict[str, str], source: str, *flags: str) -> tuple[dict, str]:
    """A `splitmq device --json` run of mnist-cnn: its summary line and its stderr."""
    r = run_cli("device", "--model", "mnist-cnn", "--source", source, "--json", *flags, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1]), r.stderr


def ok(summary: dict, frames: int) -> None:
    assert summary["frames"] == summary["answered"] == frames, summary
    assert (summary["failed"], summary["lost"]) == (0, 0), summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mjpeg_stream_frames_reach_the_device(http_camera: HttpCamera, env) -> None:
    summary, _ = device(env, http_camera.url("/stream.mjpg"), "--frames", "6")
    ok(summary, 6)
    assert http_camera.connections == 1


def test_snapshot_url_is_polled_at_fps(http_camera: HttpCamera, env) -> None:
    summary, _ = device(env, http_camera.url("/snapshot.jpg"), "--frames", "4", "--fps", "10")
    ok(summary, 4)
    assert 4 + summary["stale"] <= http_camera.snapshots, summary  # each sent or dropped


def test_rtsp_frames_reach_the_device_and_stale_ones_are_counted(
    rtsp_camera: RtspCamera, env
) -> None:
    """The server plays 15 fps; the device asks 3 a second: the others are dropped, counted."""
    summary, _ = device(env, rtsp_camera.url, "--frames", "4", "--fps", "3")
    ok(summary, 4)
    assert summary["stale"] >= 5, summary


def test_a_slow_consumer_gets_the_newest_frames_and_no_queue(http_camera: HttpCamera) -> None:
    """Every frame the camera delivered was sent, dropped as stale, or is the one waiting."""
    served = [np.asarray(Image.open(io.BytesIO(j)), dtype=np.int16) for j in http_camera.jpegs]
    with Camera(http_camera.url("/stream.mjpg"), "http") as camera:
        frames = camera.frames(fps=5)  # the camera sends 25
        taken = [next(frames) for _ in range(4)]
    assert camera.latest.captured - camera.stale - len(taken) in (0, 1)
    assert camera.stale > 0, (camera.latest.captured, camera.stale)
    for frame in taken:  # real photos, as JPEG decodes them
        assert frame.shape == (240, 320, 3)
        assert min(np.abs(frame.astype(np.int16) - s).mean() for s in served) < 3


def test_a_dropped_http_stream_reconnects(http_camera: HttpCamera, env) -> None:
    http_camera.drop_after = 3  # the first connection ends after 3 frames
    summary, err = device(env, http_camera.url("/stream.mjpg"), "--frames", "8")
    ok(summary, 8)
    assert http_camera.connections >= 2
    dropped = r"camera http://\S+: stream dropped \(.+\); reconnecting in 0.5 s \(try 1\)"
    assert re.search(dropped, err), err
    assert "back after" in err, err


def test_stopping_a_camera_run_ends_it_with_a_summary(http_camera: HttpCamera, env) -> None:
    """No --frames: a camera streams until SIGTERM, which also ends the wait for a frame."""
    proc = start_cli(
        "device", "--model", "mnist-cnn", "--source", http_camera.url("/stream.mjpg"), "--json",
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # streaming: an answer is in
        assert "error" not in first, first
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["frames"] >= 1 and summary["lost"] == 0 and summary["failed"] == 0, summary


def test_bad_urls_say_which_and_why(http_camera: HttpCamera, env) -> None:
    port = free_port()
    r = run_cli(
        "device",
        "--model",
        "mnist-cnn",
        "--source",
        f"rtsp://cam:hunter2@127.0.0.1:{port}/x",
        env=env,
    )
    assert r.returncode == 2, r.stderr
    assert f"error: rtsp://cam:***@127.0.0.1:{port}/x: cannot open (Connection refused)" in r.stderr
    assert "hunter2" not in r.stderr
    with pytest.raises(
        UserError, match=r"/nothing-here: cannot open \(Server returned 404 Not Found\)"
    ):
        open_source(http_camera.url("/nothing-here"))
    with pytest.raises(UserError, match="--loop repeats files"):
        open_source(http_camera.url("/stream.mjpg"), loop=True)


def test_v4l2_device_missing_or_not_a_camera() -> None:
    """No /dev/video* here: a missing one says so; FFmpeg's V4L2 input (bundled in PyAV's
    wheel) refuses a device that is no camera with the kernel's reason."""
    with pytest.raises(UserError, match=r"/dev/video9: no such V4L2 device"):
        open_source("/dev/video9")
    with pytest.raises(CameraError, match=r"/dev/null: cannot open \(Inappropriate ioctl"):
        Media("/dev/null", "v4l2")


def test_video_file_every_frame_in_order_and_loop(tmp_path: Path, env) -> None:
    video = write_video(tmp_path / "clip.mkv", frames_of_photos(3, seed=5), repeat=4)
    summary, _ = device(env, str(video))
    ok(summary, 12)
    assert summary["stale"] == 0
    summary, err = device(env, str(video), "--frames", "20")
    ok(summary, 12)
    assert f"note: {video}: sent all 12 frames, fewer than --frames 20 (--loop repeats them)" in err
    summary, _ = device(env, str(video), "--frames", "30", "--loop")
    ok(summary, 30)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three photos, a text file and a file named .jpg that is no image."""
    path = tmp_path / "shots"
    path.mkdir()
    for i, frame in enumerate(frames_of_photos(3, seed=6)):
        (path / f"{i}.jpg").write_bytes(jpeg(frame))
    (path / "1b-broken.jpg").write_text("not a jpeg")
    (path / "notes.txt").write_text("camera notes")
    return path


def test_folder_shorter_than_frames_says_so_and_skips_non_images(folder: Path, env) -> None:
    summary, err = device(env, str(folder), "--frames", "5")
    ok(summary, 3)
    assert summary["skipped"] == 2
    assert f"skipped {folder}/1b-broken.jpg: not an image Pillow can read" in err
    assert f"skipped {folder}/notes.txt" in err
    assert f"note: {folder}: sent all 3 files, fewer than --frames 5 (--loop repeats them)" in err


def test_folder_loops_until_frames(folder: Path, env) -> None:
    summary, err = device(env, str(folder), "--frames", "8", "--loop")
    ok(summary, 8)
    assert summary["skipped"] == 2 and err.count("skipped ") == 2  # warned once, not per pass
    assert "note:" not in err


def test_a_folder_without_a_readable_image_ends_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.png").write_text("no png")
    with caplog.at_level(logging.WARNING), open_source(str(tmp_path), 5, loop=True) as source:
        assert list(source) == []
    assert source.skipped == 1 and "a.png: not an image" in caplog.text
    assert source.note == f"{tmp_path}: no readable image (1 file skipped)"
