"""The test kit: one request factory, one way to wait, one message recorder.

- :func:`make_request` builds every hand-made :class:`Request` the tests send or pack.
- :func:`eventually` waits for a state with no event to wait on (a worker's counters,
  /proc); messages have one, so wait for them on an :class:`Inbox`.
- :class:`Inbox` records what a handler gets; ``wait`` fails the test on timeout.

A test that asserts something does *not* arrive first waits for a marker sent after
the thing under test, through the same path, so the absence is observed, not assumed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from splitmq.shared.codecs import EncodedTensor, encode
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.protocol.wire import DeviceTiming, Hop, HopTiming, Request, Timing

T = TypeVar("T")

__all__ = ["Inbox", "eventually", "hop_record", "make_request"]


def eventually(
    condition: Callable[[], T], what: str, timeout: float = 10.0, *, every: float = 0.02
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    ``what`` names what is awaited: on timeout the test fails with "timed out after
    10 s waiting for <what>" and the last value. An exception raised by ``condition``
    (an ``assert`` inside it) propagates at once. The pause between polls paces the
    polling; it is never what the test relies on.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last value: {value!r})"
            )
        time.sleep(every)


class Inbox:
    """A message handler that records what it gets; tests wait on it with a timeout.

    ``Inbox("results for dev-1")``: the name says, on timeout, what was awaited.
    """

    def __init__(self, what: str = "messages") -> None:
        self.what = what
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def arrived(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once ``count`` items are in, False if the timeout passes first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= count, timeout)

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[Any]:
        """The items, once ``count`` arrived; fails the test on timeout."""
        if not self.arrived(count, timeout):
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {count} {self.what}: "
                f"{len(self.items)} arrived"
            )
        with self._cond:
            return list(self.items)


def hop_record(tier: str, worker: str, t: float, nbytes: int = 330) -> HopTiming:
    """A worker's record of a finished hop: every clock reads ``t``."""
    return HopTiming(tier, worker, t, t, t, t, nbytes)  # type: ignore[arg-type]


def make_request(
    route: tuple[Hop, ...] = (Hop("edge"),),
    *,
    hop: int = 0,
    start: int = 4,
    tensor: EncodedTensor | None = None,
    model: str | ModelVersion = "m",
    at: float | None = None,
    **fields: Any,
) -> Request:
    """A valid request at ``hop`` of ``route``, sent by the device from cut ``start``.

    The hops before ``hop`` are done: each has a record (workers ``w0``, ``w1``, ...)
    and the request's cut is where the last of them stopped. ``model`` is a name or a
    :class:`ModelVersion`; with a model version, the default tensor is zeros of the
    shape and dtype at that cut (else a float32 [1, 4]), encoded raw. Every clock
    reads ``at`` (now by default) and the deadline is 30 s later. ``fields`` set any
    :class:`Request` field outright, e.g. ``id``, ``deadline=None`` or ``timing``.
    """
    t = time.time() if at is None else at
    cut = route[hop - 1].to if hop else start
    version = 1
    if isinstance(model, ModelVersion):
        if tensor is None and cut is not None:
            at_cut = model.cuts[cut]
            tensor = encode(np.zeros(at_cut.shape, at_cut.dtype), "raw")
        model, version = model.name, model.version
    if tensor is None:
        tensor = encode(np.zeros((1, 4), np.float32), "raw")
    records = tuple(hop_record(route[i].tier, f"w{i}", t) for i in range(hop))
    defaults: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "device": "cam-01",
        "model": model,
        "version": version,
        "cut": cut,
        "route": route,
        "hop": hop,
        "tensor": tensor,
        "deadline": t + 30,
        "timing": Timing(DeviceTiming(t, t, t, t), records),
    }
    return Request(**{**defaults, **fields})
