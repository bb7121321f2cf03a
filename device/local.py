"""What a device answers itself, and how ``infer`` keeps its deadline.

A device-only plan's frames are answered here; so is a request that cannot be
offloaded in time (``fallback="local"``): when ``infer(timeout=...)`` would pass
its deadline waiting for a tier (a broker outage, a worker gone), the device runs
the whole model itself, early enough to answer by the deadline, and the answer
says why (``Answer.fallback``); with no time left to offload at all, it answers
without sending. The request still out is failed as ``deadline``, so an answer
that comes later is counted, never delivered twice, and the local result takes
its id, so a results store keeps one row for the frame. A device that is closing
does not fall back. Every answer made here is also a result on
``result/<device>`` (``tier: "device"``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Literal

import numpy as np

from splitmq.device.answers import Answer
from splitmq.device.conditions import Conditions
from splitmq.device.follow import local_plan
from splitmq.device.head import Head, Work
from splitmq.device.sender import Sender
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.protocol.results import HopLatency, Result
from splitmq.shared.protocol.telemetry import Power
from splitmq.shared.runtime.stats import Stats

#: What ``infer`` does with a request that has no answer by its deadline.
Fallback = Literal["local", "fail"]
FALLBACKS: tuple[Fallback, ...] = ("local", "fail")


class Pending(Future[Answer]):
    """A request's future, with its id once it was sent (None: answered here)."""

    request_id: str | None = None


class Local:
    """Answers on the device (see module docstring)."""

    def __init__(
        self,
        device_id: str,
        head: Head,
        stats: Stats[str],
        conditions: Conditions,
        power: Power,
        sender: Callable[[], Sender | None],
    ) -> None:
        self.id, self.head, self.stats = device_id, head, stats
        self.conditions, self.power, self._sender = conditions, power, sender
        self._runs: dict[tuple[str, int], float] = {}  # the whole model's time, per version

    def answer(
        self,
        work: Work,
        mv: ModelVersion,
        future: Future,
        why: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """End ``future`` with the answer ``work`` holds, and publish it as a result (under
        ``request_id``, the request it stands in for, so a store keeps one row a frame)."""
        answer = work.answer
        assert answer is not None
        t_done = time.time()
        ms = (t_done - work.t_start) * 1000
        self.conditions.spent(self.power, work.t_encoded - work.t_start)
        self.stats.latency("e2e", ms)
        self.stats.finished()
        self.stats.count("answered_device")
        latency = (HopLatency("device", self.id, None, None, ms, 0.0, None),)
        result = Result(
            id=request_id or uuid.uuid4().hex,
            device=self.id,
            model=mv.name,
            version=mv.version,
            top=answer.top,
            tier="device",
            exit=answer.output,
            latency=latency,
            bytes=0,
            t_sent=t_done,
            boxes=answer.boxes,
            outputs=answer.outputs,
            sent_at=work.t_start,
        )
        future.set_result(Answer.of(result, 0, ms, 1, fallback=why))
        sender = self._sender()
        if sender is not None and not sender.answered(result):
            self.stats.count("results_dropped")

    def run(
        self, frame: np.ndarray, mv: ModelVersion, why: str, request_id: str | None = None
    ) -> Answer:
        """The whole model on this device, now: ``why`` says what it stands in for."""
        started = time.monotonic()
        work = self.head.run(frame, local_plan(mv), mv)
        self._runs[(mv.name, mv.version)] = time.monotonic() - started
        future: Future[Answer] = Future()
        self.answer(work, mv, future, why, request_id)
        self.stats.count("fallback_local")
        return future.result()

    def lead_s(self, mv: ModelVersion) -> float:
        """How long before a deadline the whole model must start to end by it: its last
        run here (with a margin), else its profile at this device's speed."""
        last = self._runs.get((mv.name, mv.version))
        if last is not None:
            return 1.5 * last
        profile = next(iter(mv.manifest.profiles), None)
        full_ms = profile.heads_ms[-1] if profile and profile.heads_ms else 0.0
        return 1.5 * full_ms / 1000 / self.conditions.speed
