"""Wire format v1: the JSON result and error documents (spec: docs/wire-format.md).

Human-facing, so JSON that ``mosquitto_sub`` shows as it is; strict on the
way in (UTF-8, no NaN, no duplicate keys, bounded size, every field checked).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from splitmq.shared.codecs import DEFAULT_MAX_BYTES, parse_codec
from splitmq.shared.errors import ERROR_CODES, CodecError, WireError
from splitmq.shared.protocol.fields import (
    TIMES,
    array,
    as_map,
    exact_map,
    free_text,
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
from splitmq.shared.protocol.ids import MAX_CUT, MAX_VERSION, TIERS, Tier
from splitmq.shared.protocol.wire import MAX_HOPS, Hop, Timing

__all__ = [
    "Box",
    "ErrorReport",
    "HopLatency",
    "RawOutput",
    "Result",
    "TopK",
    "latency_breakdown",
    "pack_error",
    "pack_result",
    "unpack_error",
    "unpack_result",
]

MAX_MESSAGE = 1000  # characters of an error's human-readable message
MAX_TOP = MAX_BOXES = 1000  # entries of a result's top-k list, a detection result's boxes
MAX_RAW = 16  # a raw result's output tensors


@dataclass(frozen=True)
class TopK:
    """One class of a result: its index in the model's outputs, label (or None), score."""

    index: int
    label: str | None
    score: float

    def __post_init__(self) -> None:
        integer("index", self.index, 0, 2**31 - 1)
        if self.label is not None:
            free_text("label", self.label, 256)
        object.__setattr__(self, "score", number("score", self.score))


@dataclass(frozen=True)
class Box(TopK):
    """One detected object: a class answer (index, label or None, score) with corners
    ``[x0, y0, x1, y1]`` in the pixels of the model's input (after resize and crop)."""

    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        super().__post_init__()
        corners = self.box
        if not isinstance(corners, list | tuple) or len(corners) != 4:
            raise WireError("box: expected [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (number("box", v, -1e6, 1e6) for v in corners)
        if x1 < x0 or y1 < y0:
            raise WireError(f"box: {list(corners)} has a corner before its origin")
        object.__setattr__(self, "box", (x0, y0, x1, y1))


@dataclass(frozen=True)
class RawOutput:
    """One output tensor of a ``raw`` task's answer: a summary to read in JSON, and the
    values (``data``: base64 of the C-order little-endian bytes)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    min: float
    max: float
    mean: float
    data: str

    def __post_init__(self) -> None:
        free_text("name", self.name, 256)
        if not isinstance(self.shape, list | tuple) or len(self.shape) > 8:
            raise WireError("shape: expected at most 8 dims")
        object.__setattr__(
            self, "shape", tuple(integer("shape", d, 0, 2**31 - 1) for d in self.shape)
        )
        if self.dtype not in RAW_DTYPES:
            raise WireError(f"dtype: {self.dtype!r} is not one of {', '.join(RAW_DTYPES)}")
        for name in ("min", "max", "mean"):
            object.__setattr__(self, name, number(name, getattr(self, name)))
        if not isinstance(self.data, str):
            raise WireError(f"data: expected base64 text, got {type_name(self.data)}")


#: The dtypes a raw output travels in (a float64 output is sent as float32).
RAW_DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")


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
        tier_field("tier", self.tier, ("device", *TIERS))
        ident("id", self.id)
        for name in ("compute_ms", "encode_ms"):
            object.__setattr__(self, name, number(name, getattr(self, name)))
        if self.tier == "device":
            for name in ("transfer_ms", "queue_ms", "bytes"):
                if getattr(self, name) is not None:
                    raise WireError(f"{name}: must be null for the device's entry")
            return
        for name in ("transfer_ms", "queue_ms"):
            object.__setattr__(self, name, number(name, getattr(self, name)))
        integer("bytes", self.bytes, 0, 2**63 - 1)


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
    """What the answering tier publishes to ``result/<device>``: a worker, or the device
    for what it answered itself (``tier`` "device"), so every answer is on MQTT."""

    id: str
    device: str
    model: str
    version: int
    top: tuple[TopK, ...]
    tier: Tier | Literal["device"]
    exit: str | int
    latency: tuple[HopLatency, ...]
    bytes: int
    t_sent: float
    boxes: tuple[Box, ...] = ()  # a detector's answer (``top`` is empty)
    outputs: tuple[RawOutput, ...] = ()  # a raw task's answer (``top`` is empty)
    # How it went: the device's cut and codec (None: answered on the device), its route,
    # when the device sent it (its clock); None or () where a sender did not say.
    cut: int | None = None
    codec: str | None = None
    route: tuple[Hop, ...] = ()
    sent_at: float | None = None

    def __post_init__(self) -> None:
        ident("id", self.id)
        ident("device", self.device)
        model_name("model", self.model)
        self._check_path()
        for name, kind, most in (("boxes", Box, MAX_BOXES), ("outputs", RawOutput, MAX_RAW)):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, kind) for v in value):
                raise WireError(f"{name}: expected a tuple of {kind.__name__}")
            if len(value) > most:
                raise WireError(f"{name}: {len(value)} entries, expected at most {most}")
        integer("version", self.version, 1, MAX_VERSION)
        if not isinstance(self.top, tuple) or not all(isinstance(t, TopK) for t in self.top):
            raise WireError("top: expected a tuple of TopK")
        if len(self.top) > MAX_TOP:
            raise WireError(f"top: {len(self.top)} entries, expected at most {MAX_TOP}")
        tier_field("tier", self.tier, ("device", *TIERS))
        if isinstance(self.exit, bool) or not isinstance(self.exit, str | int):
            raise WireError(f"exit: expected an output name or index, got {type_name(self.exit)}")
        if isinstance(self.exit, int):
            integer("exit", self.exit, 0, 2**31 - 1)
        else:
            free_text("exit", self.exit, 256)
        if not isinstance(self.latency, tuple) or not all(
            isinstance(hop, HopLatency) for hop in self.latency
        ):
            raise WireError("latency: expected a tuple of HopLatency")
        if not 1 <= len(self.latency) <= MAX_HOPS + 1:
            raise WireError(f"latency: {len(self.latency)} entries, expected 1..{MAX_HOPS + 1}")
        integer("bytes", self.bytes, 0, 2**63 - 1)
        normalise_times(self, ("t_sent",))

    def _check_path(self) -> None:
        if self.cut is not None:
            integer("cut", self.cut, 0, MAX_CUT)
        if self.codec is not None:
            try:
                parse_codec(self.codec)
            except CodecError as exc:
                raise WireError(str(exc)) from exc
        if not isinstance(self.route, tuple) or len(self.route) > MAX_HOPS:
            raise WireError(f"route: expected at most {MAX_HOPS} hops")
        if not all(isinstance(hop, Hop) for hop in self.route):
            raise WireError("route: expected a tuple of Hop")
        if self.sent_at is not None:
            object.__setattr__(self, "sent_at", number("sent_at", self.sent_at, *TIMES))


@dataclass(frozen=True)
class ErrorReport:
    """What a worker publishes to ``error/<device>`` when it cannot serve a request."""

    id: str | None
    device: str
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.id is not None:
            ident("id", self.id)
        ident("device", self.device)
        if not isinstance(self.code, str) or self.code not in ERROR_CODES:
            raise WireError(f"code: {self.code!r} is not one of {', '.join(sorted(ERROR_CODES))}")
        free_text("message", self.message, MAX_MESSAGE)


_TOP_KEYS = names(TopK)
_BOX_KEYS = names(Box)
_RAW_KEYS = names(RawOutput)
_LATENCY_KEYS = names(HopLatency)
_HOP_KEYS = names(Hop)
_RESULT_KEYS = names(Result)
#: A result's fields that only some tasks or senders carry: packed when set.
_OPTIONAL = ("boxes", "outputs", "cut", "codec", "route", "sent_at")
_ERROR_KEYS = names(ErrorReport)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _reject_constant(name: str) -> None:
    raise WireError(f"payload: {name} is not JSON")


#: One decoder for every document: ``json.loads`` with hooks builds one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=unique_map, parse_constant=_reject_constant)


def _load(payload: bytes, max_bytes: int) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded size."""
    if not isinstance(payload, bytes | bytearray):
        raise WireError(f"payload: expected bytes, got {type_name(payload)}")
    if len(payload) > max_bytes:
        raise WireError(f"payload: {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        text = payload.decode("utf-8")
        if text.startswith("\ufeff"):  # what json.loads says, which _DECODER does not check
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
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
        "top": [as_map(entry, _TOP_KEYS) for entry in result.top],
        "tier": result.tier,
        "exit": result.exit,
        "latency": [as_map(hop, _LATENCY_KEYS) for hop in result.latency],
        "bytes": result.bytes,
        "t_sent": result.t_sent,
    }
    if result.boxes:
        doc["boxes"] = [{**as_map(b, _BOX_KEYS), "box": list(b.box)} for b in result.boxes]
    if result.outputs:
        doc["outputs"] = [{**as_map(o, _RAW_KEYS), "shape": list(o.shape)} for o in result.outputs]
    for name in ("cut", "codec", "sent_at"):
        if getattr(result, name) is not None:
            doc[name] = getattr(result, name)
    if result.route:
        doc["route"] = [as_map(hop, _HOP_KEYS) for hop in result.route]
    return _dump(doc)


def unpack_result(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Result:
    doc = exact_map(_load(payload, max_bytes), "result", _RESULT_KEYS, optional=_OPTIONAL)
    lists = {
        name: _items(doc.get(name, []), name, kind, least, most)
        for name, kind, least, most in (
            ("top", TopK, 0, MAX_TOP),
            ("latency", HopLatency, 1, MAX_HOPS + 1),
            ("boxes", Box, 0, MAX_BOXES),
            ("outputs", RawOutput, 0, MAX_RAW),
            ("route", Hop, 0, MAX_HOPS),
        )
    }
    return Result(**{**doc, **lists})


def _items(value: object, name: str, kind: type, least: int, most: int) -> tuple[Any, ...]:
    """A list of maps, each with exactly ``kind``'s fields, as ``kind`` objects."""
    items = []
    keys = names(kind)
    for index, item in enumerate(array(value, name, least, most)):
        try:
            items.append(kind(**exact_map(item, "", keys)))
        except (WireError, CodecError) as exc:  # the path is only spelled out for an error
            raise _at_item(exc, name, index) from exc
    return tuple(items)


def _at_item(exc: WireError | CodecError, name: str, index: int) -> WireError | CodecError:
    """``exc`` about item ``index`` of list ``name``: ``top[2].score: ...``, or for the item
    itself (``exact_map``'s, raised with an empty path) ``top[2]: ...``."""
    text = str(exc)
    if text.startswith(":"):
        return type(exc)(f"{name}[{index}]{text}")
    return prefixed(exc, f"{name}[{index}]")


def pack_error(error: ErrorReport) -> bytes:
    return _dump(as_map(error, _ERROR_KEYS))


def unpack_error(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ErrorReport:
    return ErrorReport(**exact_map(_load(payload, max_bytes), "error", _ERROR_KEYS))
