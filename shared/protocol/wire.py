"""Wire format v1: the msgpack request (spec: docs/wire-format.md; results: ``results``).

Packing is deterministic (fixed key order, tensor params sorted), so a packed
request is a stable test vector. Unpacking trusts nothing: msgpack runs with
tight length limits, every field is checked, and only ``WireError`` (the
message) or ``CodecError`` (the tensor) escape, their text starting with the
path of the offending field, e.g. ``route[1].exit: 1.5 is outside [0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import msgpack

from splitmq.shared.codecs import DEFAULT_MAX_BYTES, MAX_RANK, EncodedTensor, check, parse_codec
from splitmq.shared.errors import CodecError, WireError
from splitmq.shared.protocol.fields import (
    TIMES,
    array,
    as_map,
    exact_map,
    ident,
    integer,
    model_name,
    names,
    normalise_times,
    number,
    prefixed,
    tier_field,
    type_name,
    unique_map,
)
from splitmq.shared.protocol.ids import MAX_CUT, MAX_VERSION, Tier

_T = TypeVar("_T")

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_REQUEST",
    "MAX_HOPS",
    "WIRE_VERSION",
    "DeviceTiming",
    "Hop",
    "HopTiming",
    "Origin",
    "Request",
    "Timing",
    "expiry_interval",
    "pack_request",
    "unpack_request",
]

WIRE_VERSION = 1
CONTENT_TYPE_REQUEST = "application/x-splitmq-request+msgpack;v=1"
CONTENT_TYPE_JSON = "application/json"
MAX_HOPS = 4


# --- the request ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One hop of a source route: ``tier`` runs the model from the current cut to ``to``.

    ``to`` None means "to the model outputs" (only the last hop); ``exit`` is the
    confidence threshold for early-exit heads inside the hop, None for no early exit;
    ``codec`` encodes the tensor the hop forwards, None for the codec it received.
    """

    tier: Tier
    to: int | None = None
    exit: float | None = None
    codec: str | None = None

    def __post_init__(self) -> None:
        tier_field("tier", self.tier)
        if self.to is not None:
            integer("to", self.to, 0, MAX_CUT)
        if self.exit is not None:
            object.__setattr__(self, "exit", number("exit", self.exit, 0.0, 1.0))
        if self.codec is not None:
            try:
                parse_codec(self.codec)
            except CodecError as exc:  # a field of the message, not a tensor problem
                raise WireError(str(exc)) from exc


@dataclass(frozen=True)
class DeviceTiming:
    """The device's clock: head started, head done, tensor encoded, request published."""

    t_start: float
    t_head_done: float
    t_encoded: float
    t_sent: float

    def __post_init__(self) -> None:
        normalise_times(self, ("t_start", "t_head_done", "t_encoded", "t_sent"))


@dataclass(frozen=True)
class HopTiming:
    """One worker's clock for its hop, and the size of the payload it received."""

    tier: Tier
    worker: str
    t_recv: float
    t_start: float
    t_done: float
    t_sent: float
    bytes: int

    def __post_init__(self) -> None:
        tier_field("tier", self.tier)
        ident("worker", self.worker)
        normalise_times(self, ("t_recv", "t_start", "t_done", "t_sent"))
        integer("bytes", self.bytes, 0, 2**63 - 1)


@dataclass(frozen=True)
class Timing:
    """The ``t`` field: the device's record, then one record per finished hop."""

    device: DeviceTiming
    hops: tuple[HopTiming, ...] = ()

    def appended(self, record: HopTiming) -> Timing:
        return Timing(self.device, (*self.hops, record))


@dataclass(frozen=True)
class Origin:
    """What the device sent: its cut and codec. A forward carries a later cut in the hop's
    codec, so it carries this on for the tier that answers to report (and store)."""

    cut: int
    codec: str

    def __post_init__(self) -> None:
        integer("cut", self.cut, 0, MAX_CUT)
        try:
            parse_codec(self.codec)
        except CodecError as exc:
            raise WireError(str(exc)) from exc


@dataclass(frozen=True)
class Request:
    """A source-routed inference request, validated on creation (WireError/CodecError).

    Fields are the wire's keys, except ``timing``, which travels as ``t``.
    """

    id: str
    device: str
    model: str
    version: int
    cut: int
    route: tuple[Hop, ...]
    hop: int
    tensor: EncodedTensor
    deadline: float | None
    timing: Timing
    origin: Origin | None = None  # a forward's: what the device sent (``sent``)

    def __post_init__(self) -> None:
        ident("id", self.id)
        ident("device", self.device)
        model_name("model", self.model)
        integer("version", self.version, 1, MAX_VERSION)
        integer("cut", self.cut, 0, MAX_CUT)
        if not isinstance(self.tensor, EncodedTensor):
            raise WireError(f"tensor: expected an EncodedTensor, got {type_name(self.tensor)}")
        if self.deadline is not None:
            object.__setattr__(self, "deadline", number("deadline", self.deadline, *TIMES))
        self._check_route()
        self._check_timing()
        if self.origin is not None and (not isinstance(self.origin, Origin) or not self.hop):
            raise WireError("origin: only a forwarded request (hop 1 on) carries one")

    @property
    def sent(self) -> Origin | None:
        """The device's cut and codec: its own request's, or those a forward carries on
        (None from a forwarder that did not)."""
        return Origin(self.cut, self.tensor.codec) if self.hop == 0 else self.origin

    def _check_route(self) -> None:
        route = self.route
        if not isinstance(route, tuple) or not all(isinstance(hop, Hop) for hop in route):
            raise WireError("route: expected a tuple of Hop")
        if not 1 <= len(route) <= MAX_HOPS:
            raise WireError(f"route: {len(route)} hops, expected 1..{MAX_HOPS}")
        for index, hop in enumerate(route):
            last = index == len(route) - 1
            if (hop.to is None) != last:
                problem = "the last hop must run to the outputs (nil)" if last else "must be a cut"
                raise WireError(f"route[{index}].to: {problem}")
            if last and hop.codec is not None:
                raise WireError(f"route[{index}].codec: the last hop forwards nothing (nil)")
        stops = [hop.to for hop in route[:-1] if hop.to is not None]  # checked above
        for index in range(1, len(stops)):
            if stops[index] <= stops[index - 1]:
                raise WireError(f"route[{index}].to: cuts must increase along the route")
        integer("hop", self.hop, 0, len(route) - 1)
        current = route[self.hop]
        if self.hop and route[self.hop - 1].to != self.cut:
            raise WireError(
                f"cut: {self.cut}, but the previous hop stopped at {route[self.hop - 1].to}"
            )
        if current.to is not None and current.to <= self.cut:
            raise WireError(f"route[{self.hop}].to: {current.to} is not after cut {self.cut}")

    def _check_timing(self) -> None:
        timing = self.timing
        if not isinstance(timing, Timing) or not isinstance(timing.device, DeviceTiming):
            raise WireError("t: expected a Timing with a DeviceTiming")
        if not isinstance(timing.hops, tuple) or len(timing.hops) != self.hop:
            raise WireError(f"t: expected the device's record and {self.hop} hop records")
        for index, record in enumerate(timing.hops):
            if not isinstance(record, HopTiming):
                raise WireError(f"t[{index + 1}]: expected a HopTiming")
            if record.tier != self.route[index].tier:
                raise WireError(
                    f"t[{index + 1}].tier: {record.tier}, but route[{index}] is "
                    f"{self.route[index].tier}"
                )

    @property
    def current(self) -> Hop:
        """The hop being executed now."""
        return self.route[self.hop]

    def expired(self, now: float) -> bool:
        """Workers drop expired requests (and count them) instead of running them."""
        return self.deadline is not None and now >= self.deadline

    def forwarded(self, cut: int, tensor: EncodedTensor, record: HopTiming) -> Request:
        """The request for the next hop: the tensor at ``cut``, this hop's record appended."""
        return replace(
            self,
            cut=cut,
            tensor=tensor,
            hop=self.hop + 1,
            timing=self.timing.appended(record),
            origin=self.sent,
        )


def expiry_interval(deadline: float | None, now: float) -> int | None:
    """MQTT MessageExpiryInterval for a request: whole seconds left (at least 1), or None."""
    if deadline is None:
        return None
    return max(1, math.ceil(deadline - now))


_REQUEST_KEYS: tuple[str, ...] = ("v", "id", "device", "model", "version", "cut", "route")
_REQUEST_KEYS += ("hop", "tensor", "deadline", "t", "origin")
_HOP_KEYS = names(Hop)
_TENSOR_KEYS = names(EncodedTensor)
_DEVICE_KEYS = names(DeviceTiming)
_RECORD_KEYS = names(HopTiming)
_ORIGIN_KEYS = names(Origin)


def pack_request(request: Request) -> bytes:
    """msgpack bytes of a request; the same request always packs to the same bytes."""
    tensor = request.tensor
    doc = {
        "v": WIRE_VERSION,
        "id": request.id,
        "device": request.device,
        "model": request.model,
        "version": request.version,
        "cut": request.cut,
        "route": [as_map(hop, _HOP_KEYS) for hop in request.route],
        "hop": request.hop,
        "tensor": {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "codec": tensor.codec,
            "params": {key: tensor.params[key] for key in sorted(tensor.params)},
            "data": tensor.data,
        },
        "deadline": request.deadline,
        "t": [
            as_map(request.timing.device, _DEVICE_KEYS),
            *(as_map(record, _RECORD_KEYS) for record in request.timing.hops),
        ],
    }
    if request.origin is not None:
        doc["origin"] = as_map(request.origin, _ORIGIN_KEYS)
    return msgpack.packb(doc, use_bin_type=True)


def unpack_request(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    """Parse and validate a request; raises only WireError or CodecError.

    The tensor is checked (codec, dtype, shape, params, data length, decoded size
    <= ``max_bytes``) but not decoded; ``codecs.decode`` does that, bounded too.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"payload: expected bytes, got {type_name(payload)}")
    if len(payload) > max_bytes:
        raise WireError(f"payload: {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        doc = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=unique_map,
            max_str_len=256,
            max_bin_len=max_bytes,
            max_array_len=64,
            max_map_len=32,
            max_ext_len=0,
        )
    except WireError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise WireError(f"payload: not a valid msgpack document ({exc})") from exc
    version = doc.get("v", WIRE_VERSION) if isinstance(doc, dict) else WIRE_VERSION
    if type(version) is not int or version != WIRE_VERSION:
        raise WireError(f"v: unsupported format version {version!r}, expected {WIRE_VERSION}")
    doc = exact_map(doc, "request", _REQUEST_KEYS, optional=("origin",))
    origin = None
    if "origin" in doc:
        origin_doc = exact_map(doc["origin"], "origin", _ORIGIN_KEYS)
        origin = _made(Origin, origin_doc, "origin")
    route = []
    for index, item in enumerate(array(doc["route"], "route", 1, MAX_HOPS)):
        hop = exact_map(item, f"route[{index}]", _HOP_KEYS)
        route.append(_made(Hop, hop, f"route[{index}]"))
    records = array(doc["t"], "t", 1, MAX_HOPS + 1)
    device_doc = exact_map(records[0], "t[0]", _DEVICE_KEYS)
    device = _made(DeviceTiming, device_doc, "t[0]")
    hops = []
    for index, item in enumerate(records[1:], 1):
        record = exact_map(item, f"t[{index}]", _RECORD_KEYS)
        hops.append(_made(HopTiming, record, f"t[{index}]"))
    tensor_doc = exact_map(doc["tensor"], "tensor", _TENSOR_KEYS)
    shape = array(tensor_doc["shape"], "tensor.shape", 1, MAX_RANK)
    tensor = _made(EncodedTensor, {**tensor_doc, "shape": tuple(shape)}, "tensor")
    try:
        check(tensor, max_bytes)
    except CodecError as exc:
        raise prefixed(exc, "tensor") from exc
    return Request(
        id=doc["id"],
        device=doc["device"],
        model=doc["model"],
        version=doc["version"],
        cut=doc["cut"],
        route=tuple(route),
        hop=doc["hop"],
        tensor=tensor,
        deadline=doc["deadline"],
        timing=Timing(device, tuple(hops)),
        origin=origin,
    )


def _made(kind: type[_T], fields: dict[str, Any], path: str) -> _T:
    """``kind(**fields)``; an error names its field from ``path`` on, e.g. ``route[1].to``."""
    try:
        return kind(**fields)
    except (WireError, CodecError) as exc:
        raise prefixed(exc, path) from exc
