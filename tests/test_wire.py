"""Wire format v1: the documented test vector both ways, validation, JSON documents."""

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from kit import make_request

from splitmq.shared.codecs import EncodedTensor, decode, encode
from splitmq.shared.errors import CodecError, WireError
from splitmq.shared.protocol.results import (
    ErrorReport,
    HopLatency,
    Result,
    TopK,
    latency_breakdown,
    pack_error,
    pack_result,
    unpack_error,
    unpack_result,
)
from splitmq.shared.protocol.wire import (
    DeviceTiming,
    Hop,
    HopTiming,
    Origin,
    Request,
    Timing,
    expiry_interval,
    pack_request,
    unpack_request,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"


def _doc_block(name: str) -> str:
    """The fenced block after ``<!-- test-vector: name -->`` in docs/wire-format.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- test-vector: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"test vector {name!r} is missing from {DOC}"
    return found.group(1)


VECTOR = bytes.fromhex(_doc_block("request-int8 hex"))
MEANING: dict[str, Any] = json.loads(_doc_block("request-int8 json"))


def _from_meaning(doc: dict[str, Any]) -> Request:
    """Build the request the doc's JSON describes, field by field: no defaults."""
    tensor = doc["tensor"]
    device, *hops = doc["t"]
    return make_request(
        tuple(Hop(**hop) for hop in doc["route"]),
        hop=doc["hop"],
        id=doc["id"],
        device=doc["device"],
        model=doc["model"],
        version=doc["version"],
        cut=doc["cut"],
        tensor=EncodedTensor(
            tensor["dtype"],
            tuple(tensor["shape"]),
            tensor["codec"],
            tensor["params"],
            bytes.fromhex(tensor["data"]),
        ),
        deadline=doc["deadline"],
        timing=Timing(DeviceTiming(**device), tuple(HopTiming(**hop) for hop in hops)),
    )


REQUEST = _from_meaning(MEANING)


def test_vector_unpacks_to_its_documented_meaning() -> None:
    assert MEANING["v"] == 1
    assert unpack_request(VECTOR) == REQUEST


def test_vector_packs_byte_for_byte() -> None:
    assert pack_request(REQUEST) == VECTOR


def test_vector_is_plain_msgpack_of_the_documented_map() -> None:
    doc = msgpack.unpackb(VECTOR)
    doc["tensor"]["data"] = doc["tensor"]["data"].hex()
    assert doc == MEANING
    assert list(doc) == list(MEANING)  # the documented key order is the packing order


def test_vector_tensor_decodes_to_the_documented_values() -> None:
    values = np.array(_doc_block("request-int8 values").split(), dtype=np.float64)
    out = decode(REQUEST.tensor)
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(out.ravel(), values.astype(np.float32))


def _int8_rounding_vector() -> tuple[np.ndarray, dict[str, Any], bytes]:
    lines = dict(line.split(": ", 1) for line in _doc_block("int8-rounding").splitlines())
    x = np.array([float.fromhex(v) for v in lines["x (float32, hex)"].split()], np.float32)
    params = {"scale": float(lines["scale"]), "zp": int(lines["zp"])}
    return x.reshape(1, -1), params, bytes.fromhex(lines["data"])


def test_int8_rounding_vector_is_what_the_encoder_writes() -> None:
    x, params, data = _int8_rounding_vector()
    tensor = encode(x, "int8")
    assert (tensor.params, tensor.data) == (params, data)


def test_int8_rounding_vector_follows_the_spec_step_by_step_and_hits_the_edge() -> None:
    """The spec's float32 steps, done one by one, give the vector; exact arithmetic would
    not (so the vector tells an implementation that adds 0.5 in exact arithmetic apart)."""
    x, params, data = _int8_rounding_vector()
    f32 = np.float32
    inv = f32(1 / np.float64(f32(params["scale"])))
    u = (x * inv).astype(f32) + f32(params["zp"] + 128.5)
    q = np.floor(np.clip(u, 0, 255.5)).astype(np.int16) - 128
    assert q.astype(np.int8).tobytes() == data
    exact = np.floor(x.astype(np.float64) * float(inv) + params["zp"] + 0.5).clip(-128, 127)
    assert (exact != q).sum() == 2


def _record(tier: str = "edge", worker: str = "edge-1", t0: float = 1700000000.01) -> HopTiming:
    return HopTiming(tier, worker, t0, t0 + 0.001, t0 + 0.003, t0 + 0.004, len(VECTOR))  # type: ignore[arg-type]


def test_forwarded_request_round_trips() -> None:
    tensor = encode(np.ones((1, 4, 3, 3), np.float32), "q4c+zstd")
    forwarded = REQUEST.forwarded(3, tensor, _record())
    assert (forwarded.hop, forwarded.cut, forwarded.current) == (1, 3, Hop("cloud"))
    assert forwarded.timing.hops == (_record(),)
    assert unpack_request(pack_request(forwarded)) == forwarded
    # what the device sent travels on, for the tier that answers to report
    assert forwarded.sent == Origin(REQUEST.cut, REQUEST.tensor.codec) != (3, "q4c+zstd")
    assert forwarded.tensor.codec == "q4c+zstd"


def test_only_a_forward_carries_the_devices_origin() -> None:
    with pytest.raises(WireError, match=r"^origin: only a forwarded request"):
        replace(REQUEST, origin=Origin(0, "raw"))
    doc = msgpack.unpackb(VECTOR, raw=False)
    doc["origin"] = {"cut": 2, "codec": "zip"}
    with pytest.raises(WireError, match=r"^origin\.codec: unknown codec 'zip'"):
        unpack_request(msgpack.packb(doc, use_bin_type=True))


def test_packing_is_canonical() -> None:
    tensor = REQUEST.tensor
    reordered = replace(tensor, params={"zp": tensor.params["zp"], "scale": tensor.params["scale"]})
    assert pack_request(replace(REQUEST, tensor=reordered)) == VECTOR
    assert pack_request(unpack_request(VECTOR)) == VECTOR


def test_ints_are_accepted_and_stored_as_floats() -> None:
    hop = Hop("edge", 3, 1)  # type: ignore[arg-type]
    assert hop.exit == 1.0 and isinstance(hop.exit, float)
    request = replace(REQUEST, route=(hop, Hop("cloud")), deadline=1700000002)
    assert isinstance(request.deadline, float)
    assert unpack_request(pack_request(request)) == request


def test_expiry() -> None:
    assert not REQUEST.expired(1700000001.4) and REQUEST.expired(1700000001.5)
    assert not replace(REQUEST, deadline=None).expired(1e10)
    assert expiry_interval(None, 5.0) is None
    assert expiry_interval(10.5, 0.0) == 11
    assert expiry_interval(10.0, 9.8) == 1
    assert expiry_interval(10.0, 20.0) == 1


_BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"id": ""}, "id: '' is not 1..64 characters"),
    ({"id": "a b"}, "id: 'a b' is not"),
    ({"id": "x" * 65}, "id: 'x+' is not"),
    ({"device": "cam/+"}, "device: 'cam/\\+' is not"),
    ({"model": ".hidden"}, "model: '.hidden' is not"),
    ({"model": None}, "model: None is not"),
    ({"version": 0}, "version: 0 is outside 1..2147483647"),
    ({"version": True}, "version: expected an int, got bool"),
    ({"cut": -1}, "cut: -1 is outside 0..999999"),
    ({"cut": 2.0}, "cut: expected an int, got float"),
    ({"route": ()}, "route: 0 hops, expected 1..4"),
    (
        {"route": (Hop("edge", 3), Hop("edge", 4), Hop("edge", 5), Hop("edge", 6), Hop("cloud"))},
        "route: 5 hops, expected 1..4",
    ),
    ({"route": [Hop("cloud")]}, "route: expected a tuple of Hop"),
    ({"route": (Hop("edge", 3), Hop("cloud", 4))}, r"route\[1\]\.to: the last hop must run"),
    ({"route": (Hop("edge"), Hop("cloud"))}, r"route\[0\]\.to: must be a cut"),
    ({"route": (Hop("edge", 4), Hop("edge", 4), Hop("cloud"))}, r"route\[1\]\.to: cuts must"),
    ({"route": (Hop("edge", 2), Hop("cloud"))}, r"route\[0\]\.to: 2 is not after cut 2"),
    ({"route": (Hop("edge", 3), Hop("cloud", codec="raw"))}, r"route\[1\]\.codec: the last hop"),
    ({"hop": 2}, "hop: 2 is outside 0..1"),
    ({"hop": 1, "cut": 3}, "t: expected the device's record and 1 hop records"),
    ({"deadline": float("nan")}, "deadline: nan is not a finite number"),
    ({"deadline": -1.0}, "deadline: -1.0 is not a finite number in \\[0, 1e\\+11\\]"),
    ({"deadline": "soon"}, "deadline: expected a float, got str"),
    ({"tensor": b"\x00"}, "tensor: expected an EncodedTensor, got bytes"),
    ({"timing": None}, "t: expected a Timing"),
]


@pytest.mark.parametrize(("changes", "message"), _BAD_REQUESTS)
def test_invalid_requests_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(WireError, match=f"^{message}"):
        replace(REQUEST, **changes)


def test_hop_records_must_match_the_route() -> None:
    at_cloud = dict(cut=3, hop=1)
    with pytest.raises(WireError, match=r"^cut: 2, but the previous hop stopped at 3"):
        replace(REQUEST, hop=1, timing=REQUEST.timing.appended(_record()))
    with pytest.raises(WireError, match=r"^t\[1\]\.tier: cloud, but route\[0\] is edge"):
        replace(REQUEST, **at_cloud, timing=REQUEST.timing.appended(_record("cloud")))
    replace(REQUEST, **at_cloud, timing=REQUEST.timing.appended(_record()))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Hop("fog"), "tier: 'fog' is not one of edge, cloud"),  # type: ignore[arg-type]
        (lambda: Hop("edge", -1), "to: -1 is outside"),
        (lambda: Hop("edge", 3, 1.5), "exit: 1.5 is not a finite number in \\[0, 1\\]"),
        (lambda: Hop("edge", 3, None, "q9"), "codec: unknown codec 'q9'"),
        (lambda: Hop("edge", 3, None, 4), "codec: 4 is not a codec name"),
        (lambda: DeviceTiming(float("inf"), 0, 0, 0), "t_start: inf is not a finite"),
        (lambda: HopTiming("edge", "", 1, 1, 1, 1, 0), "worker: '' is not"),
        (lambda: HopTiming("edge", "w", 1, 1, 1, 1, -1), "bytes: -1 is outside"),
    ],
)
def test_invalid_parts_name_the_field(make: Any, message: str) -> None:
    with pytest.raises(WireError, match=f"^{message}"):
        make()


def _mutated(mutate: Any) -> bytes:
    doc = msgpack.unpackb(VECTOR)
    mutate(doc)
    return msgpack.packb(doc)


_BAD_PAYLOADS: list[tuple[Any, type[Exception], str]] = [
    (lambda d: d.update(v=2), WireError, "v: unsupported format version 2, expected 1"),
    (lambda d: d.update(v=True), WireError, "v: unsupported format version True"),
    (lambda d: d.pop("v"), WireError, "request: missing field 'v'"),
    (lambda d: d.pop("hop"), WireError, "request: missing field 'hop'"),
    (lambda d: d.update(x=1), WireError, "request: unknown field 'x'"),
    (lambda d: d.update(route="edge"), WireError, "route: expected an array, got str"),
    (lambda d: d.update(route=[]), WireError, "route: 0 items, expected 1..4"),
    (lambda d: d["route"][0].update(x=1), WireError, r"route\[0\]: unknown field 'x'"),
    (lambda d: d["route"][1].pop("to"), WireError, r"route\[1\]: missing field 'to'"),
    (lambda d: d["route"][1].update(exit=2.0), WireError, r"route\[1\]\.exit: 2.0 is not"),
    (lambda d: d["route"][0].update(codec="Q4"), WireError, r"route\[0\]\.codec: 'Q4' is not"),
    (lambda d: d["route"].__setitem__(0, 5), WireError, r"route\[0\]: expected a map, got int"),
    (lambda d: d.update(t=[]), WireError, "t: 0 items, expected 1..5"),
    (lambda d: d["t"][0].pop("t_sent"), WireError, r"t\[0\]: missing field 't_sent'"),
    (lambda d: d["t"][0].update(t_sent="x"), WireError, r"t\[0\]\.t_sent: expected a float"),
    (lambda d: d.update(tensor=[]), WireError, "tensor: expected a map, got list"),
    (lambda d: d["tensor"].pop("data"), WireError, "tensor: missing field 'data'"),
    (lambda d: d["tensor"].update(shape="x"), WireError, r"tensor\.shape: expected an array"),
    (lambda d: d["tensor"].update(shape=[]), WireError, r"tensor\.shape: 0 items, expected 1..8"),
    (lambda d: d["tensor"].update(shape=[10**12]), CodecError, r"tensor\.shape\[0\]: 10+ is"),
    (
        lambda d: d["tensor"].update(shape=[2**32, 2**32]),
        CodecError,
        r"tensor\.shape\[0\]: 4294967296 is outside",
    ),
    (lambda d: d["tensor"].update(data="d5"), CodecError, r"tensor\.data: expected bytes, got str"),
    (lambda d: d["tensor"].update(codec="int4"), CodecError, r"tensor\.codec: unknown codec"),
    (lambda d: d["tensor"].update(dtype="f4"), CodecError, r"tensor\.dtype: 'f4' is not one of"),
    (
        lambda d: d["tensor"]["params"].update(scale=float("nan")),
        CodecError,
        r"tensor\.params\.scale: nan is not a finite float32",
    ),
    (
        lambda d: d["tensor"]["params"].update(zp=-129),
        CodecError,
        r"tensor\.params\.zp: -129 is outside \[-128, 127\]",
    ),
    (lambda d: d["tensor"].update(params=[]), CodecError, r"tensor\.params: expected a map"),
    (
        lambda d: d["tensor"].update(data=b"\x00" * 9),
        CodecError,
        r"tensor\.data: 9 bytes, but float32 \[1, 2, 2, 2\] in int8 takes 8",
    ),
]


@pytest.mark.parametrize(("mutate", "error", "message"), _BAD_PAYLOADS)
def test_invalid_payloads_name_the_field(mutate: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{message}"):
        unpack_request(_mutated(mutate))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (VECTOR + b"\x00", "payload: not a valid msgpack document"),
        (VECTOR[:-1], "payload: not a valid msgpack document"),
        (b"", "payload: not a valid msgpack document"),
        (b"\xc1", "payload: not a valid msgpack document"),
        (msgpack.packb([1, 2]), "request: expected a map, got list"),
        (msgpack.packb({1: 2}), "payload: not a valid msgpack document"),
        (msgpack.packb({"v": msgpack.ExtType(1, b"x")}), "payload: not a valid msgpack document"),
        (b"\x81\xa1v\xa2\xff\xfe", "payload: not a valid msgpack document"),  # bad UTF-8
        (b"\x82\xa1v\x01\xa1v\x01", "payload: a map has duplicate keys"),
        (b"\xdd\xff\xff\xff\xff", "payload: not a valid msgpack document"),  # 4G-item array
        ("text", "payload: expected bytes, got str"),
    ],
)
def test_malformed_payloads_are_wire_errors(payload: Any, message: str) -> None:
    with pytest.raises(WireError, match=f"^{message}"):
        unpack_request(payload)


def test_limits_apply_to_the_payload_and_the_decoded_tensor() -> None:
    with pytest.raises(WireError, match=r"^payload: 352 bytes, over the limit of 300"):
        unpack_request(VECTOR, max_bytes=300)
    small = replace(REQUEST, tensor=encode(np.zeros((1, 1000), np.float32), "raw+zstd"))
    payload = pack_request(small)
    assert len(payload) < 1000
    with pytest.raises(CodecError, match=r"^tensor\.shape: float32 \[1, 1000\] decodes to 4000"):
        unpack_request(payload, max_bytes=1000)


def _result() -> Result:
    records = REQUEST.timing.appended(_record()).appended(_record("cloud", "cloud-7", 1700000000.1))
    latency = latency_breakdown(REQUEST.device, records)
    return Result(
        id=REQUEST.id,
        device=REQUEST.device,
        model=REQUEST.model,
        version=REQUEST.version,
        top=(TopK(281, "tabby cat", 0.62), TopK(285, None, 0.2)),
        tier="cloud",
        exit="logits",
        latency=latency,
        bytes=sum(hop.bytes or 0 for hop in latency),
        t_sent=1700000000.2,
    )


def test_latency_breakdown_recovers_each_hop() -> None:
    device, edge, cloud = _result().latency
    assert device == HopLatency("device", "cam-01", None, None, 4.0, 1.0, None)
    assert edge == HopLatency("edge", "edge-1", 5.0, 1.0, 2.0, 1.0, 352)
    assert cloud.tier == "cloud" and cloud.transfer_ms == 86.0 and cloud.queue_ms == 1.0


def test_result_round_trips_as_compact_json() -> None:
    result = replace(_result(), top=(TopK(1, "café", 1.0),))
    payload = pack_result(result)
    assert "café".encode() in payload and b" " not in payload.replace(b"tabby cat", b"")
    doc = json.loads(payload)
    assert list(doc) == [
        "id", "device", "model", "version", "top", "tier", "exit", "latency", "bytes", "t_sent",
    ]  # fmt: skip
    assert doc["latency"][0]["transfer_ms"] is None
    assert unpack_result(payload) == result


def test_error_round_trips() -> None:
    error = ErrorReport(None, "cam-01", "bad_payload", "tensor.params.scale: nan is not finite")
    assert unpack_error(pack_error(error)) == error
    assert json.loads(pack_error(error)) == {
        "id": None, "device": "cam-01", "code": "bad_payload",
        "message": "tensor.params.scale: nan is not finite",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"id": null, "device": "d", "code": "nope", "message": "m"}', "code: 'nope' is not"),
        (b'{"id": null, "device": "d", "code": "internal"}', "error: missing field 'message'"),
        (b'{"id": 1, "device": "d", "code": "internal", "message": "m"}', "id: 1 is not"),
        (b'{"id": null, "device": "d", "code": "internal", "message": ""}', "message: expected"),
        (b'{"id": null, "id": null}', "payload: a map has duplicate keys"),
        (b"[1]", "error: expected a map, got list"),
        (b'{"a": NaN}', "payload: NaN is not JSON"),
        (b'{"a": -Infinity}', "payload: -Infinity is not JSON"),
        (b"\xff{}", "payload: not a valid UTF-8 JSON document"),
        (b"{", "payload: not a valid UTF-8 JSON document"),
        (b"[" * 100_000, "payload: not a valid UTF-8 JSON document"),
        ("{}", "payload: expected bytes, got str"),
    ],
)
def test_bad_error_documents(payload: Any, message: str) -> None:
    with pytest.raises(WireError, match=f"^{message}"):
        unpack_error(payload)


def _latency_entry(tier: str, **changes: Any) -> dict[str, Any]:
    entry = {"tier": tier, "id": "d", "transfer_ms": None, "queue_ms": None}
    return {**entry, "compute_ms": 1.0, "encode_ms": 1.0, "bytes": None, **changes}


def _result_doc(**changes: Any) -> bytes:
    doc = json.loads(pack_result(_result()))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"extra": 1}, "result: unknown field 'extra'"),
        ({"tier": "fog"}, "tier: 'fog' is not one of device, edge, cloud"),
        ({"cut": -1}, "cut: -1 is outside"),
        ({"codec": "gzip"}, "codec: unknown codec 'gzip'"),
        ({"route": [{"tier": "fog"}]}, r"route\[0\]: missing field 'to'"),
        (
            {"route": [{"tier": "fog", "to": None, "exit": None, "codec": None}]},
            r"route\[0\]\.tier",
        ),
        ({"sent_at": 1e300}, r"sent_at: 1e\+300 is not a finite number"),
        ({"exit": True}, "exit: expected an output name or index, got bool"),
        ({"exit": -1}, "exit: -1 is outside"),
        (
            {"top": [{"index": 1, "label": None, "score": "x"}]},
            r"top\[0\]\.score: expected a float",
        ),
        ({"top": [{"index": 1, "score": 1.0}]}, r"top\[0\]: missing field 'label'"),
        ({"latency": []}, "latency: 0 items, expected 1..5"),
        (
            {"latency": [_latency_entry("device", transfer_ms=1.0)]},
            r"latency\[0\]\.transfer_ms: must be null for the device's entry",
        ),
        (
            {"latency": [_latency_entry("edge", transfer_ms=1.0, bytes=5)]},
            r"latency\[0\]\.queue_ms: expected a float, got nil",
        ),
        ({"t_sent": 1e300}, r"t_sent: 1e\+300 is not a finite number"),
        ({"bytes": 1.5}, "bytes: expected an int, got float"),
    ],
)
def test_bad_results_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(WireError, match=f"^{message}"):
        unpack_result(_result_doc(**changes))
