"""Frame ingress: a camera that runs no splitmq publishes a bare JPEG/PNG and gets the
same result document as a splitmq device; bad frames get a specific error."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from kit import eventually
from PIL import Image
from skimage import data

from splitmq.edge.frames import Mapping, parse_mappings
from splitmq.edge.worker import edge_worker
from splitmq.shared.errors import UserError
from splitmq.shared.model.preprocess import MAX_PIXELS
from splitmq.shared.protocol.results import unpack_result
from splitmq.shared.protocol.topics import Topics

pytestmark = pytest.mark.slow
MODEL = "efficientnet-lite0"
#: ImageNet classes a photo of Chelsea the cat may fairly be called.
CAT = {"tabby", "tiger cat", "Egyptian cat"}


def jpeg(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and holds no pixels: what a
    decompression bomb's header says."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.fixture
def cfg(settings, real_pool):
    return settings.model_copy(update={"pool": real_pool.root})


def test_mosquitto_pub_of_a_cat_photo_is_answered_with_a_cat(
    cfg, topics, broker, make_client, inbox, tmp_path
):
    mosquitto_pub = shutil.which("mosquitto_pub")
    assert mosquitto_pub, "mosquitto-clients is installed by `make mosquitto`"
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(jpeg(data.chelsea()))
    results = inbox("results for cam-1")
    make_client("watcher").subscribe(topics.result("cam-1"), results, qos=1)
    with edge_worker(cfg, "edge-frames", threads=1):
        topic = topics.frame(MODEL, "cam-1")
        subprocess.run(
            [mosquitto_pub, "-p", str(broker.port), "-q", "1", "-t", topic, "-f", str(photo)],
            check=True,
            timeout=30,
        )
        got = results.wait(1, timeout=60)
    result = unpack_result(got[0].payload)
    assert result.device == "cam-1" and result.model == MODEL and result.tier == "edge"
    assert result.top[0].label in CAT, result.top
    assert result.bytes == photo.stat().st_size  # what the camera sent: the file itself
    assert json.loads(got[0].payload)["id"]  # the same result document a device gets


def test_bad_frames_get_a_specific_error_and_the_edge_keeps_serving(
    cfg, topics, make_client, inbox
):
    errors, results = inbox("errors for cam-2"), inbox("results for cam-2")
    cam = make_client("cam-2")
    cam.subscribe(topics.error("cam-2"), errors, qos=1)
    cam.subscribe(topics.result("cam-2"), results, qos=1)
    topic = topics.frame(MODEL, "cam-2")
    with edge_worker(cfg, "edge-bad", threads=1):
        cam.publish(topic, b"GIF89a not a frame format we take", qos=1)
        cam.publish(topic, png_header_only(8_000, 8_000), qos=1)  # refused before decoding
        cam.publish(topic, png_header_only(100_000, 100_000), qos=1)  # Pillow's bomb limit
        cam.publish(topic, jpeg(data.chelsea())[:200], qos=1)  # truncated
        cam.publish(topics.frame("no-such-model", "cam-2"), jpeg(data.coffee()), qos=1)
        cam.publish(topic, jpeg(data.coffee()), qos=1)  # and then a good one
        got = [json.loads(m.payload) for m in errors.wait(5, timeout=60)]
        results.wait(1, timeout=60)
    codes = [e["code"] for e in got]
    assert codes == ["bad_image"] * 4 + ["unknown_model"], got
    assert "not a JPEG or PNG" in got[0]["message"]
    assert f"8000x8000 is over {MAX_PIXELS:,} pixels" in got[1]["message"]
    assert "pixels" in got[2]["message"]
    assert "does not decode" in got[3]["message"]


def test_a_retained_snapshot_is_not_run_and_a_burst_is_refused_not_queued(
    cfg, topics, make_client, inbox
):
    """Cameras publish at QoS 0 (no Receive Maximum holds them back) and often retained:
    the old snapshot a new subscriber gets is not run; past the backlog, a frame gets
    `busy` at once; every frame ends as an answer or an error."""
    errors, results = inbox("errors for cam-3"), inbox("results for cam-3")
    cam = make_client("cam-3")
    cam.subscribe(topics.error("cam-3"), errors, qos=1)
    cam.subscribe(topics.result("cam-3"), results, qos=1)
    photo, topic = jpeg(data.chelsea()), topics.frame(MODEL, "cam-3")
    cam.publish(topic, photo, qos=1, retain=True, wait=5)  # before any edge listens
    with edge_worker(cfg, "edge-burst", threads=1, queue_size=0) as worker:  # backlog 1
        burst = 12
        for _ in range(burst):
            cam.publish(topic, photo, qos=0)
        eventually(lambda: len(results.items) + len(errors.items) >= burst, "every frame", 60)
        counts = worker.stats.snapshot_counts()
    cam.publish(topic, b"", qos=1, retain=True, wait=5)  # clear the retained frame
    codes = {json.loads(m.payload)["code"] for m in errors.items}
    assert len(results.items) + len(errors.items) == burst  # the stale one: neither
    assert codes == {"busy"} and 1 <= len(results.items) < burst
    assert counts["frames_stale"] == 1 and counts["frames_busy"] == len(errors.items)


def test_a_cameras_own_topics_map_onto_frames(cfg, topics, make_client, inbox):
    mapped = cfg.model_copy(update={"frame_topics": f"{topics.prefix}-cams/+/+/snapshot={MODEL}"})
    results = inbox("results for front-person")
    cam = make_client("bridge")
    cam.subscribe(topics.result("front-person"), results, qos=1)
    with edge_worker(mapped, "edge-mapped", threads=1):
        cam.publish(f"{topics.prefix}-cams/front/person/snapshot", jpeg(data.chelsea()), qos=1)
        got = results.wait(1, timeout=60)
    assert unpack_result(got[0].payload).top[0].label in CAT


def test_frame_topic_mappings_are_checked():
    topics = Topics()
    assert parse_mappings("frigate/+/+/snapshot=m, cams/#=n", topics) == [
        Mapping("frigate/+/+/snapshot", "m"),
        Mapping("cams/#", "n"),
    ]
    mapping = Mapping("frigate/+/+/snapshot", "m")
    assert mapping.device("frigate/door/person/snapshot") == "door-person"
    assert mapping.device("frigate/door/snapshot") is None
    assert Mapping("cams/#", "n").device("cams/a/b") == "a-b"
    bad = ["frigate/+/snapshot", "a/#/b=m", "$SYS/+=m", "a/+=../m", "cams/door=m", "a#=m"]
    bad += [f"{topics.prefix}/#=m", "cams/x+=m"]
    for entry in bad:
        with pytest.raises(UserError, match="frame_topics"):
            parse_mappings(entry, topics)
