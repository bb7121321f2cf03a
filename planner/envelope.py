"""Bytes that travel besides the tensor: the request's header and the JSON result.

Measured by packing real documents with the wire code itself (ids and
clock readings as long as the runtime's, the model's own labels), so the
estimate follows the format if it changes, and is the same on every run.
The calibration table's ``bytes`` counts only the tensor (its data and
codec params).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from splitmq.shared.codecs import encode
from splitmq.shared.model.outputs import TOP_K
from splitmq.shared.protocol.results import HopLatency, Result, TopK, pack_result
from splitmq.shared.protocol.wire import DeviceTiming, Hop, HopTiming, Request, Timing, pack_request

_DEVICE = "dev-" + "0" * 8  # as long as `splitmq device` names devices
_WORKER = "edge-" + "0" * 8
_ID = "0" * 32  # a request id: a uuid4 in hex
_T = 1_800_000_000.123456  # a clock reading with as many digits as a real one (JSON)


def request_overhead(model: str, version: int, route: Sequence[Hop], hops_done: int) -> int:
    """Header bytes of a request on ``route`` after ``hops_done`` hops (tensor excluded)."""
    t = _T
    tensor = encode(np.zeros((1, 8), np.float32), "raw")
    records = tuple(HopTiming(route[i].tier, _WORKER, t, t, t, t, 1) for i in range(hops_done))
    request = Request(
        id=_ID,
        device=_DEVICE,
        model=model,
        version=version,
        cut=(route[hops_done - 1].to or 1) if hops_done else 1,
        route=tuple(route),
        hop=hops_done,
        tensor=tensor,
        deadline=t + 10,
        timing=Timing(DeviceTiming(t, t, t, t), records),
    )
    tensor_bytes = len(tensor.data) + len(msgpack.packb(tensor.params, use_bin_type=True))
    return len(pack_request(request)) - tensor_bytes


def result_bytes(model: str, version: int, labels: Sequence[str] | None, hops: int) -> int:
    """Bytes of a JSON result answered after ``hops`` hops, with labels of typical length."""
    t = _T
    if labels:
        typical = sorted(labels, key=len)[len(labels) // 2]
        top = tuple(TopK(i, typical, 0.123456) for i in range(TOP_K))
    else:
        top = tuple(TopK(i, None, 0.123456) for i in range(TOP_K))
    latency = (
        HopLatency("device", _DEVICE, None, None, 1.234, 0.123, None),
        *(HopLatency("edge", _WORKER, 1.234, 0.123, 1.234, 0.123, 12345) for _ in range(hops)),
    )
    result = Result(
        id=_ID,
        device=_DEVICE,
        model=model,
        version=version,
        top=top,
        tier="edge",
        exit="logits",
        latency=latency,
        bytes=12345,
        t_sent=t,
    )
    return len(pack_result(result))
