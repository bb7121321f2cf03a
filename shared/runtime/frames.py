"""Frame ingress: a camera that runs no splitmq publishes a bare JPEG or PNG.

``frame/<model>/<device>`` (or a camera's own topic mapped onto it by the
``frame_topics`` setting, e.g. ``frigate/+/+/snapshot=efficientnet-lite0``)
carries the file itself. The edge checks it before decoding anything big —
magic bytes, payload size, the dimensions in the header against a pixel
budget — then applies the model's preprocessing and turns it into the
request a device would have sent with input codec ``u8``: the same hop
executor runs it and the same result document answers on ``result/<device>``.
Such a camera is input-only: it never runs a head, so the edge runs the model
from its input.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass

from PIL import Image

from splitmq.shared.codecs import encode
from splitmq.shared.errors import RequestFailed, UserError, WireError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.preprocess import to_pixels
from splitmq.shared.protocol.ids import ID_RULE, MODEL_RULE, is_id, is_model_name
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.protocol.wire import DeviceTiming, Request, Timing

#: (magic bytes, format) of the images a frame may be.
FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))
#: Decoded pixels a frame may have (a 24 MP camera still fits; a decompression bomb not).
MAX_PIXELS = 25_000_000
#: How long a frame may wait for the edge before it is dropped as expired.
FRAME_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Mapping:
    """A camera's own topic filter whose messages are frames for ``model``."""

    filter: str
    model: str

    def device(self, topic: str) -> str | None:
        """The device id of a matching topic: the levels the filter's wildcards matched,
        joined by ``-``; None when ``topic`` does not match; RequestFailed when those
        levels make no valid id (nobody to answer)."""
        levels = _wildcard_levels(self.filter, topic)
        if levels is None:
            return None
        device = "-".join(levels) or self.model
        if not is_id(device):
            raise RequestFailed("bad_route", f"{topic}: the camera's levels are no {ID_RULE}")
        return device


def parse_mappings(text: str | None) -> list[Mapping]:
    """``FILTER=MODEL[,FILTER=MODEL...]`` from the ``frame_topics`` setting."""
    mappings = []
    for entry in filter(None, (part.strip() for part in (text or "").split(","))):
        filt, sep, model = entry.rpartition("=")
        if not sep or not filt or filt.startswith("$") or "#" in filt[:-1]:
            raise UserError(f"frame_topics: {entry!r} is not FILTER=MODEL (e.g. cam/+/jpeg=m)")
        if not is_model_name(model):
            raise UserError(f"frame_topics: bad model name {model!r}: use {MODEL_RULE}")
        mappings.append(Mapping(filt, model))
    return mappings


class Frames:
    """Which topics are frames, and the request each frame becomes."""

    def __init__(self, topics: Topics, mappings: list[Mapping], max_bytes: int) -> None:
        self.topics, self.mappings, self.max_bytes = topics, mappings, max_bytes

    def filters(self) -> list[str]:
        """The shared subscriptions the edge takes frames on."""
        return [self.topics.shared_frames(), *(f"$share/edge/{m.filter}" for m in self.mappings)]

    def route(self, topic: str) -> tuple[str, str] | None:
        """(model, device) when ``topic`` carries frames; None for any other topic."""
        if topic.startswith(f"{self.topics.prefix}/frame/"):
            try:
                return self.topics.parse_frame(topic)
            except WireError as exc:
                raise RequestFailed("bad_route", str(exc)) from exc
        for mapping in self.mappings:
            device = mapping.device(topic)
            if device is not None:
                return mapping.model, device
        return None

    def request(
        self, data: bytes, mv: ModelVersion, device: str, request_id: str | None, t_recv: float
    ) -> Request:
        """The ``u8`` input request a device would have sent for this image."""
        pre = mv.manifest.preprocess
        if pre is None:
            raise RequestFailed(
                "bad_image", f"{mv.name} has no image preprocessing: it takes tensors, not frames"
            )
        image = self.decode(data)
        pixels = to_pixels(image, pre)
        plan = make_plan(mv, 0, "u8", "edge", reason="frame from a camera")
        return Request(
            id=request_id or f"f{hashlib.sha256(data).hexdigest()[:31]}",
            device=device,
            model=mv.name,
            version=mv.version,
            cut=0,
            route=plan.route,
            hop=0,
            tensor=encode(pixels, "u8", mv.codec_params(0, "u8")),
            deadline=t_recv + FRAME_TIMEOUT_S,
            timing=Timing(DeviceTiming(t_recv, t_recv, t_recv, time.time())),
        )

    def decode(self, data: bytes) -> Image.Image:
        """The image in ``data``, refused before decoding when it is not one or too big."""
        if len(data) > self.max_bytes:
            raise RequestFailed("bad_image", f"frame of {len(data)} B > {self.max_bytes} B")
        kind = next((name for magic, name in FORMATS if data.startswith(magic)), None)
        if kind is None:
            raise RequestFailed(
                "bad_image", f"frame is not a JPEG or PNG image (starts {data[:8].hex()})"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data), formats=[kind])
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > MAX_PIXELS:
                    raise RequestFailed(
                        "bad_image", f"{kind} of {width}x{height} > {MAX_PIXELS} pixels"
                    )
                image.load()
        except RequestFailed:
            raise
        except Exception as exc:  # Pillow's many ways to say the file is broken
            raise RequestFailed("bad_image", f"{kind} does not decode: {exc}") from exc
        return image


def _wildcard_levels(filt: str, topic: str) -> list[str] | None:
    """The levels of ``topic`` that the MQTT filter's ``+`` and ``#`` matched, or None
    when it does not match."""
    want, got = filt.split("/"), topic.split("/")
    picked: list[str] = []
    for index, level in enumerate(want):
        if level == "#":
            return picked + got[index:]
        if index >= len(got) or level not in ("+", got[index]):
            return None
        if level == "+":
            picked.append(got[index])
    return picked if len(got) == len(want) else None
