"""The edge's frame ingress: a camera that runs no splitmq publishes a bare JPEG or PNG.

``frame/<model>/<device>`` (or a camera's own topic mapped onto it by the
``frame_topics`` setting, e.g. ``frigate/+/+/snapshot=efficientnet-lite0``)
carries the file itself. The edge checks it before decoding anything big —
magic bytes, payload size, the dimensions in the header against a pixel
budget — then applies the model's preprocessing and turns it into the
request a device would have sent with input codec ``u8``: the same hop
executor runs it and the same result document answers on ``result/<device>``.
Such a camera is input-only: it never runs a head, so the edge runs the model
from its input. ``Frames`` plugs into the shared worker as an ingress
(``shared.runtime.ingress``): only edge workers take frames.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

from PIL import Image

from splitmq.shared.codecs import encode
from splitmq.shared.errors import BrokerError, ImageError, RequestFailed, UserError, WireError
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.preprocess import read_image, to_pixels
from splitmq.shared.protocol.ids import ID_RULE, MODEL_RULE, is_id, is_model_name
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.protocol.wire import DeviceTiming, Request, Timing
from splitmq.shared.runtime.ingress import Intake
from splitmq.shared.settings import Settings
from splitmq.shared.transport.messages import Message

log = logging.getLogger(__name__)

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
        device = "-".join(levels)
        if not is_id(device):
            raise RequestFailed("bad_route", f"{topic}: the camera's levels are no {ID_RULE}")
        return device


def parse_mappings(text: str | None, topics: Topics) -> list[Mapping]:
    """``FILTER=MODEL[,FILTER=MODEL...]`` from the ``frame_topics`` setting.

    A filter must have a wildcard (its levels name the device) and lie outside splitmq's
    own tree and ``$SYS``: mapped topics are the cameras' own, written by whoever the
    broker lets write them, so they never stand in for a splitmq topic."""
    mappings = []
    for entry in filter(None, (part.strip() for part in (text or "").split(","))):
        filt, sep, model = entry.rpartition("=")
        levels = filt.split("/")
        if (
            not sep
            or filt.startswith(("$", f"{topics.prefix}/"))
            or not any(level in ("+", "#") for level in levels)
            or any(("+" in lv or "#" in lv) and len(lv) > 1 for lv in levels)
            or "#" in levels[:-1]
        ):
            raise UserError(
                f"frame_topics: {entry!r} is not FILTER=MODEL with a + or a final # in the "
                f"filter, outside $SYS and {topics.prefix}/ (e.g. frigate/+/+/snapshot=m)"
            )
        if not is_model_name(model):
            raise UserError(f"frame_topics: bad model name {model!r}: use {MODEL_RULE}")
        mappings.append(Mapping(filt, model))
    return mappings


@dataclass(frozen=True)
class Refused:
    """Why a frame is not queued: ``stale`` (a retained snapshot) or ``busy``."""

    code: str
    device: str | None
    why: str


class Frames:
    """Which topics are frames, which frames to take, and the request each becomes: the
    edge worker's ingress (``shared.runtime.ingress.Ingress``)."""

    def __init__(self, settings: Settings) -> None:
        self.topics, self.max_bytes = settings.topics, settings.max_payload_bytes
        self.mappings = parse_mappings(settings.frame_topics, self.topics)
        self.backlog = 0  # the worker's capacity, once started
        self._waiting = 0
        self._lock = threading.Lock()
        self._intake: Intake | None = None

    def start(self, intake: Intake) -> None:
        self._intake, self.backlog = intake, intake.capacity
        for filt in self.filters():
            try:
                intake.client.subscribe(filt, self._take, qos=1)
            except BrokerError as exc:
                if filt == self.topics.shared_frames():
                    raise
                raise UserError(
                    f"SPLITMQ_FRAME_TOPICS: the broker refused {filt} ({exc}): a --secure "
                    "broker's ACLs cover only the topic contract, so cameras there publish "
                    "to frame/<model>/<device>"
                ) from None

    def stop(self) -> None:
        assert self._intake is not None
        for filt in self.filters():
            self._intake.client.unsubscribe(filt)

    def device(self, msg: Message) -> str:
        return self._route(msg.topic)[1]

    def request(self, msg: Message, t_recv: float) -> Request:
        """The ``u8`` input request a device would have sent for this image."""
        assert self._intake is not None
        model, device = self._route(msg.topic)
        mv = self._intake.sessions.model(model)
        pre = mv.manifest.preprocess
        if pre is None:
            raise ImageError(f"{mv.name} has no image preprocessing: it takes tensors, not frames")
        image = self.decode(msg.payload)
        pixels = to_pixels(image, pre)
        plan = make_plan(mv, 0, "u8", "edge", reason="frame from a camera")
        return Request(
            id=msg.correlation_id() or f"f{uuid.uuid4().hex[:31]}",  # same bytes twice: 2 frames
            device=device,
            model=mv.name,
            version=mv.version,
            cut=0,
            route=plan.route,
            hop=0,
            tensor=encode(pixels, "u8", mv.codec_params(0, "u8")),
            deadline=t_recv + FRAME_TIMEOUT_S,
            timing=Timing(DeviceTiming(t_recv, t_recv, t_recv, t_recv)),  # no device part
        )

    def _take(self, msg: Message) -> None:
        """A camera's frame: queued, or refused at once (never waited for on paho's thread)."""
        assert self._intake is not None
        refused = self.admit(msg)
        if refused is None:
            self._intake.submit(msg, self)
            return
        self._intake.stats.count(f"frames_{refused.code}")
        msg.ack()  # not queued: a QoS 1 frame must not hold a slot of the Receive Maximum
        if refused.code == "busy":  # the camera hears it: nothing ends in silence
            self._intake.fail(refused.device, msg.correlation_id(), "busy", refused.why)
        else:
            log.info("%s: %s", self._intake.id, refused.why)

    def admit(self, msg: Message) -> Refused | None:
        """None: queue this frame (it then counts until ``finished``). A retained frame is
        a camera's last snapshot, which a new subscriber gets again, not a new frame; and
        cameras publish at QoS 0, which no Receive Maximum holds back, so past ``backlog``
        waiting frames the next is refused rather than waited for."""
        if msg.retain:
            return Refused("stale", None, f"{msg.topic}: a retained (old) frame: not run")
        with self._lock:
            if self._waiting < self.backlog:
                self._waiting += 1
                return None
        try:
            target = self.route(msg.topic)
        except RequestFailed:
            target = None
        why = f"{self.backlog} frames are waiting at this edge worker: frame dropped"
        return Refused("busy", target[1] if target else None, why)

    def finished(self) -> None:
        with self._lock:
            self._waiting -= 1

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

    def _route(self, topic: str) -> tuple[str, str]:
        """(model, device) of a topic this ingress subscribed to."""
        found = self.route(topic)
        if found is None:
            raise RequestFailed("bad_route", f"{topic} is no frame topic")
        return found

    def decode(self, data: bytes) -> Image.Image:
        """The image in ``data``, refused before decoding when it is not one or too big."""
        if len(data) > self.max_bytes:
            raise ImageError(f"frame of {len(data)} B > {self.max_bytes} B")
        return read_image(data, "frame")


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
