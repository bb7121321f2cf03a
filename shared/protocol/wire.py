"""Wire format v1: msgpack requests, JSON results and errors (spec: docs/wire-format.md).

Packing is deterministic (fixed key order, tensor params sorted), so a packed
request is a stable test vector. Unpacking trusts nothing: msgpack runs with
tight length limits, every field is checked, and only ``WireError`` (the
message) or ``CodecError`` (the tensor) escape, their text starting with the
path of the offending field, e.g. ``route[1].exit: 1.5 is outside [0, 1]``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import msgpack

from splitmq.shared.codecs import DEFAULT_MAX_BYTES, MAX_RANK, EncodedTensor, check, parse_codec
from splitmq.shared.errors import CodecError, WireError
from splitmq.shared.protocol.topics import MAX_CUT, TIERS, Tier

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_REQUEST",
    "ERROR_CODES",
    "MAX_HOPS",
    "WIRE_VERSION",
    "DeviceTiming",
    "ErrorReport",
    "Hop",
    "HopLatency",
    "HopTiming",
    "Request",
    "Result",
    "Timing",
    "TopK",
    "expiry_interval",
    "latency_breakdown",
    "pack_error",
    "pack_request",
    "pack_result",
    "unpack_error",
    "unpack_request",
    "unpack_result",
]

WIRE_VERSION = 1
CONTENT_TYPE_REQUEST = "application/x-splitmq-request+msgpack;v=1"
CONTENT_TYPE_JSON = "application/json"
MAX_HOPS = 4
MAX_VERSION = 2**31 - 1
ERROR_CODES = frozenset(
    {
        "bad_payload",
        "unknown_model",
        "unknown_cut",
        "bad_tensor",
        "bad_route",
        "expired",
        "internal",
    }
)
MAX_MESSAGE = 1000  # characters of an error's human-readable message
MAX_TOP = 1000  # entries of a result's top-k list

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MODEL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # as in topics: no leading '.'
_ID_RULE = "1..64 characters of A-Z a-z 0-9 _ -"
_MODEL_RULE = "1..64 characters of A-Z a-z 0-9 _ - . not starting with '.'"
_TIMES = (0.0, 1e11)  # unix seconds: anything outside is a bug, not a clock


# --- field checks: each raises WireError("<field>: <problem>") -------------------------


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def _text(field: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WireError(f"{field}: {value!r} is not {rule}")
    return value


def _int(field: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{field}: expected an int, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise WireError(f"{field}: {value} is outside {lo}..{hi}")
    return value


def _number(field: str, value: object, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite float within [lo, hi]; ints are accepted, as C clients may send them."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{field}: expected a float, got {_type_name(value)}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise WireError(f"{field}: {value!r} is not a finite number in [{lo:g}, {hi:g}]")
    return float(value)


def _free_text(field: str, value: object, max_len: int) -> str:
    """Human text (labels, messages): any characters that UTF-8 can carry."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise WireError(f"{field}: expected a string of 1..{max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"{field}: not encodable as UTF-8 ({exc.reason})") from exc
    return value


def _tier(field: str, value: object, tiers: tuple[str, ...] = TIERS) -> str:
    if not isinstance(value, str) or value not in tiers:
        raise WireError(f"{field}: {value!r} is not one of {', '.join(tiers)}")
    return value


def _normalise_times(record: object, names: tuple[str, ...]) -> None:
    """Check unix-time fields and store them as floats (frozen dataclass, so via object)."""
    for name in names:
        object.__setattr__(record, name, _number(name, getattr(record, name), *_TIMES))


@contextmanager
def _at(path: str) -> Iterator[None]:
    """Prefix the field named by an inner error with where it sits, e.g. ``route[1].``."""
    try:
        yield
    except (WireError, CodecError) as exc:
        raise type(exc)(f"{path}.{exc}") from exc


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
        _tier("tier", self.tier)
        if self.to is not None:
            _int("to", self.to, 0, MAX_CUT)
        if self.exit is not None:
            object.__setattr__(self, "exit", _number("exit", self.exit, 0.0, 1.0))
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
        _normalise_times(self, ("t_start", "t_head_done", "t_encoded", "t_sent"))


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
        _tier("tier", self.tier)
        _text("worker", self.worker, _ID, _ID_RULE)
        _normalise_times(self, ("t_recv", "t_start", "t_done", "t_sent"))
        _int("bytes", self.bytes, 0, 2**63 - 1)


@dataclass(frozen=True)
class Timing:
    """The ``t`` field: the device's record, then one record per finished hop."""

    device: DeviceTiming
    hops: tuple[HopTiming, ...] = ()

    def appended(self, record: HopTiming) -> Timing:
        return Timing(self.device, (*self.hops, record))


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

    def __post_init__(self) -> None:
        _text("id", self.id, _ID, _ID_RULE)
        _text("device", self.device, _ID, _ID_RULE)
        _text("model", self.model, _MODEL, _MODEL_RULE)
        _int("version", self.version, 1, MAX_VERSION)
        _int("cut", self.cut, 0, MAX_CUT)
        if not isinstance(self.tensor, EncodedTensor):
            raise WireError(f"tensor: expected an EncodedTensor, got {_type_name(self.tensor)}")
        if self.deadline is not None:
            object.__setattr__(self, "deadline", _number("deadline", self.deadline, *_TIMES))
        self._check_route()
        self._check_timing()

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
        stops = [hop.to for hop in route[:-1]]
        for index in range(1, len(stops)):
            if stops[index] <= stops[index - 1]:
                raise WireError(f"route[{index}].to: cuts must increase along the route")
        _int("hop", self.hop, 0, len(route) - 1)
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
            self, cut=cut, tensor=tensor, hop=self.hop + 1, timing=self.timing.appended(record)
        )


def expiry_interval(deadline: float | None, now: float) -> int | None:
    """MQTT MessageExpiryInterval for a request: whole seconds left (at least 1), or None."""
    if deadline is None:
        return None
    return max(1, math.ceil(deadline - now))


def _names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names: the keys of its map on the wire, in packing order."""
    return tuple(field.name for field in fields(cls))


_REQUEST_KEYS = ("v", "id", "device", "model", "version", "cut", "route", "hop", "tensor")
_REQUEST_KEYS += ("deadline", "t")
_HOP_KEYS = _names(Hop)
_TENSOR_KEYS = _names(EncodedTensor)
_DEVICE_KEYS = _names(DeviceTiming)
_RECORD_KEYS = _names(HopTiming)


def _record(value: object, keys: tuple[str, ...]) -> dict[str, Any]:
    """The map a dataclass packs to, keys in the spec's order."""
    return {key: getattr(value, key) for key in keys}


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
        "route": [_record(hop, _HOP_KEYS) for hop in request.route],
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
            _record(request.timing.device, _DEVICE_KEYS),
            *(_record(record, _RECORD_KEYS) for record in request.timing.hops),
        ],
    }
    return msgpack.packb(doc, use_bin_type=True)


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack/JSON would keep the last of duplicate keys; two readers could disagree."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise WireError("payload: a map has duplicate keys")
    return doc


def _map(value: object, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A map with exactly ``keys``: missing and unknown fields are both errors."""
    if not isinstance(value, dict):
        raise WireError(f"{path}: expected a map, got {_type_name(value)}")
    missing = [key for key in keys if key not in value]
    if missing:
        raise WireError(f"{path}: missing field {missing[0]!r}")
    unknown = [key for key in value if key not in keys]
    if unknown:
        raise WireError(f"{path}: unknown field {unknown[0]!r}")
    return value


def _list(value: object, path: str, lo: int, hi: int) -> list[Any]:
    if not isinstance(value, list):
        raise WireError(f"{path}: expected an array, got {_type_name(value)}")
    if not lo <= len(value) <= hi:
        raise WireError(f"{path}: {len(value)} items, expected {lo}..{hi}")
    return value


def unpack_request(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    """Parse and validate a request; raises only WireError or CodecError.

    The tensor is checked (codec, dtype, shape, params, data length, decoded size
    <= ``max_bytes``) but not decoded; ``codecs.decode`` does that, bounded too.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"payload: expected bytes, got {_type_name(payload)}")
    if len(payload) > max_bytes:
        raise WireError(f"payload: {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        doc = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_unique_map,
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
    doc = _map(doc, "request", _REQUEST_KEYS)
    route = []
    for index, item in enumerate(_list(doc["route"], "route", 1, MAX_HOPS)):
        hop = _map(item, f"route[{index}]", _HOP_KEYS)
        with _at(f"route[{index}]"):
            route.append(Hop(**hop))
    records = _list(doc["t"], "t", 1, MAX_HOPS + 1)
    device_doc = _map(records[0], "t[0]", _DEVICE_KEYS)
    with _at("t[0]"):
        device = DeviceTiming(**device_doc)
    hops = []
    for index, item in enumerate(records[1:], 1):
        record = _map(item, f"t[{index}]", _RECORD_KEYS)
        with _at(f"t[{index}]"):
            hops.append(HopTiming(**record))
    tensor_doc = _map(doc["tensor"], "tensor", _TENSOR_KEYS)
    shape = _list(tensor_doc["shape"], "tensor.shape", 1, MAX_RANK)
    with _at("tensor"):
        tensor = EncodedTensor(
            dtype=tensor_doc["dtype"],
            shape=tuple(shape),
            codec=tensor_doc["codec"],
            params=tensor_doc["params"],
            data=tensor_doc["data"],
        )
        check(tensor, max_bytes)
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
    )


# --- JSON documents: results and errors ---------------------------------------------------


@dataclass(frozen=True)
class TopK:
    """One class of a result: its index in the model's outputs, label (or None), score."""

    index: int
    label: str | None
    score: float

    def __post_init__(self) -> None:
        _int("index", self.index, 0, 2**31 - 1)
        if self.label is not None:
            _free_text("label", self.label, 256)
        object.__setattr__(self, "score", _number("score", self.score))


@dataclass(frozen=True)
class HopLatency:
    """Where one hop's time went, in milliseconds (see docs/wire-format.md, Timing).

    transfer_ms spans two hosts' clocks, so it includes their offset and may be
    negative; the device's entry has no transfer, queue or bytes (None).
    """

    tier: str
    id: str
    transfer_ms: float | None
    queue_ms: float | None
    compute_ms: float
    encode_ms: float
    bytes: int | None

    def __post_init__(self) -> None:
        _tier("tier", self.tier, ("device", *TIERS))
        _text("id", self.id, _ID, _ID_RULE)
        for name in ("compute_ms", "encode_ms"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        if self.tier == "device":
            for name in ("transfer_ms", "queue_ms", "bytes"):
                if getattr(self, name) is not None:
                    raise WireError(f"{name}: must be null for the device's entry")
            return
        for name in ("transfer_ms", "queue_ms"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        _int("bytes", self.bytes, 0, 2**63 - 1)


def latency_breakdown(device: str, timing: Timing) -> tuple[HopLatency, ...]:
    """Per-hop compute, queue, transfer and encode times recovered from the ``t`` records."""
    dev = timing.device
    out = [
        HopLatency(
            "device",
            device,
            None,
            None,
            _ms(dev.t_head_done - dev.t_start),
            _ms(dev.t_sent - dev.t_head_done),
            None,
        )
    ]
    previous_sent = dev.t_sent
    for record in timing.hops:
        out.append(
            HopLatency(
                record.tier,
                record.worker,
                _ms(record.t_recv - previous_sent),
                _ms(record.t_start - record.t_recv),
                _ms(record.t_done - record.t_start),
                _ms(record.t_sent - record.t_done),
                record.bytes,
            )
        )
        previous_sent = record.t_sent
    return tuple(out)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass(frozen=True)
class Result:
    """What the answering worker publishes to ``result/<device>``."""

    id: str
    device: str
    model: str
    version: int
    top: tuple[TopK, ...]
    tier: Tier
    exit: str | int
    latency: tuple[HopLatency, ...]
    bytes: int
    t_sent: float

    def __post_init__(self) -> None:
        _text("id", self.id, _ID, _ID_RULE)
        _text("device", self.device, _ID, _ID_RULE)
        _text("model", self.model, _MODEL, _MODEL_RULE)
        _int("version", self.version, 1, MAX_VERSION)
        if not isinstance(self.top, tuple) or not all(isinstance(t, TopK) for t in self.top):
            raise WireError("top: expected a tuple of TopK")
        if len(self.top) > MAX_TOP:
            raise WireError(f"top: {len(self.top)} entries, expected at most {MAX_TOP}")
        _tier("tier", self.tier)
        if isinstance(self.exit, bool) or not isinstance(self.exit, str | int):
            raise WireError(f"exit: expected an output name or index, got {_type_name(self.exit)}")
        if isinstance(self.exit, int):
            _int("exit", self.exit, 0, 2**31 - 1)
        else:
            _free_text("exit", self.exit, 256)
        if not isinstance(self.latency, tuple) or not all(
            isinstance(hop, HopLatency) for hop in self.latency
        ):
            raise WireError("latency: expected a tuple of HopLatency")
        if not 1 <= len(self.latency) <= MAX_HOPS + 1:
            raise WireError(f"latency: {len(self.latency)} entries, expected 1..{MAX_HOPS + 1}")
        _int("bytes", self.bytes, 0, 2**63 - 1)
        _normalise_times(self, ("t_sent",))


@dataclass(frozen=True)
class ErrorReport:
    """What a worker publishes to ``error/<device>`` when it cannot serve a request."""

    id: str | None
    device: str
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.id is not None:
            _text("id", self.id, _ID, _ID_RULE)
        _text("device", self.device, _ID, _ID_RULE)
        if not isinstance(self.code, str) or self.code not in ERROR_CODES:
            raise WireError(f"code: {self.code!r} is not one of {', '.join(sorted(ERROR_CODES))}")
        _free_text("message", self.message, MAX_MESSAGE)


_TOP_KEYS = _names(TopK)
_LATENCY_KEYS = _names(HopLatency)
_RESULT_KEYS = _names(Result)
_ERROR_KEYS = _names(ErrorReport)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _reject_constant(name: str) -> None:
    raise WireError(f"payload: {name} is not JSON")


def _load(payload: bytes, max_bytes: int) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded size."""
    if not isinstance(payload, bytes | bytearray):
        raise WireError(f"payload: expected bytes, got {_type_name(payload)}")
    if len(payload) > max_bytes:
        raise WireError(f"payload: {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        return json.loads(
            payload.decode("utf-8"), object_pairs_hook=_unique_map, parse_constant=_reject_constant
        )
    except WireError:
        raise
    except (ValueError, RecursionError) as exc:
        raise WireError(f"payload: not a valid UTF-8 JSON document ({exc})") from exc


def pack_result(result: Result) -> bytes:
    doc = {
        "id": result.id,
        "device": result.device,
        "model": result.model,
        "version": result.version,
        "top": [_record(entry, _TOP_KEYS) for entry in result.top],
        "tier": result.tier,
        "exit": result.exit,
        "latency": [_record(hop, _LATENCY_KEYS) for hop in result.latency],
        "bytes": result.bytes,
        "t_sent": result.t_sent,
    }
    return _dump(doc)


def unpack_result(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Result:
    doc = _map(_load(payload, max_bytes), "result", _RESULT_KEYS)
    top = []
    for index, item in enumerate(_list(doc["top"], "top", 0, MAX_TOP)):
        entry = _map(item, f"top[{index}]", _TOP_KEYS)
        with _at(f"top[{index}]"):
            top.append(TopK(**entry))
    latency = []
    for index, item in enumerate(_list(doc["latency"], "latency", 1, MAX_HOPS + 1)):
        entry = _map(item, f"latency[{index}]", _LATENCY_KEYS)
        with _at(f"latency[{index}]"):
            latency.append(HopLatency(**entry))
    return Result(**{**doc, "top": tuple(top), "latency": tuple(latency)})


def pack_error(error: ErrorReport) -> bytes:
    return _dump(_record(error, _ERROR_KEYS))


def unpack_error(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ErrorReport:
    return ErrorReport(**_map(_load(payload, max_bytes), "error", _ERROR_KEYS))
